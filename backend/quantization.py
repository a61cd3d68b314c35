"""int8: what a compile quantizes with, and what it hands back for the store.

A graph is quantized while calibration batches are given (``calibrating``: the tuner's workers,
``prepare``/``convert``); the result is a ``QuantizedModel``, bound to the weights it was
calibrated for. The lookup hands a stored one back (``using_stored``), so that
``torch.compile(backend="ipex")`` applies int8 with no data at hand. Quantization itself is
NNCF's (backend/openvino_path.py) or torchao's PT2E flow (backend/inductor.py); nothing here
computes a scale.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .errors import PathUnavailable
from .notices import warn_once

INT8 = "int8"
NO_CALIBRATION = ("int8 needs calibration data, and none was given: tune with `autotune run "
                  "--dtype int8 --data BATCHES`, or quantize by hand with backend.prepare/convert")
_state = threading.local()


class Int8Unavailable(PathUnavailable):
    """int8 cannot apply to this graph now (no data, other weights): its path compiles it in
    float32 instead, with one warning naming the reason."""


@dataclass(frozen=True)
class QuantizedModel:
    """A quantized graph as its engine saved it, and the weights it was calibrated for."""
    engine: str
    weights_digest: str
    files: dict[str, bytes]  # file name -> contents (OpenVINO: model.xml, model.bin)
    paths: tuple[tuple[str, str], ...] = ()  # file name -> its copy in the engines' cache

    def describe(self) -> dict[str, Any]:
        """What a compile's record keeps of it: the tuner stores the files from the cache."""
        return {"engine": self.engine, "weights_digest": self.weights_digest,
                "files": dict(self.paths)}

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> "QuantizedModel":
        """Back from ``describe``: the files read from the cache (FileNotFoundError if gone)."""
        files = {name: Path(path).read_bytes() for name, path in described["files"].items()}
        return cls(described["engine"], described["weights_digest"], files,
                   tuple(described["files"].items()))

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


Batch = tuple[torch.Tensor, ...]


@contextlib.contextmanager
def calibrating(batches: Sequence[Sequence[torch.Tensor] | torch.Tensor]) -> Iterator[None]:
    """int8 compiles inside this block calibrate on ``batches`` (the model's inputs, one tuple
    per call): the model must compile to one graph that takes exactly those tensors."""
    previous = getattr(_state, "batches", None)
    _state.batches = [as_batch(b) for b in batches]
    try:
        yield
    finally:
        _state.batches = previous


def calibration_batches() -> list[Batch] | None:
    return getattr(_state, "batches", None)


@contextlib.contextmanager
def using_stored(model: QuantizedModel | None) -> Iterator[None]:
    """An int8 compile inside this block loads ``model`` instead of calibrating."""
    previous = getattr(_state, "stored", None)
    _state.stored = model
    try:
        yield
    finally:
        _state.stored = previous


def stored_model(engine: str, weights: str) -> QuantizedModel | None:
    """The stored model the lookup handed over, if any; refused (Int8Unavailable) when it was
    quantized by another engine (its path fell back) or for other weights."""
    stored = getattr(_state, "stored", None)
    if stored is not None and stored.engine != engine:
        raise Int8Unavailable(f"the stored int8 model is {stored.engine}'s, and this graph is "
                              f"compiling on {engine}")
    if stored is not None and stored.weights_digest != weights:
        raise Int8Unavailable("the weights changed since the stored int8 model was calibrated "
                              "(tune again with --data to quantize these weights)")
    return stored


def as_batch(batch: Any) -> Batch:
    return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)


def matching_batches(batches: list[Batch], user_inputs: Sequence[torch.Tensor]) -> list[Batch]:
    """The calibration batches shaped as the graph's inputs (count, shapes, dtypes). The others
    (a data loader's short last batch) are left out with one warning; none left is an error."""
    wanted = [(tuple(t.shape), t.dtype) for t in user_inputs]
    signatures = [[(tuple(t.shape), t.dtype) for t in batch] for batch in batches]
    matching = [batch for batch, got in zip(batches, signatures) if got == wanted]
    other = next((got for got in signatures if got != wanted), None)
    if not matching:
        raise Int8Unavailable(
            f"the calibration batches do not match this graph's inputs (a batch has "
            f"{_shapes(other)}; the graph takes {_shapes(wanted)}): int8 calibrates a model "
            "that compiles to one graph, on batches shaped like its example input")
    if other is not None:
        warn_once(f"int8-calibration-shapes:{_shapes(wanted)}",
                  f"ipex backend: int8 calibrates on the {len(matching)} of {len(batches)} batches "
                  f"shaped as this graph's inputs ({_shapes(wanted)}); left out: "
                  f"{len(batches) - len(matching)} of other shapes, such as {_shapes(other)}")
    return matching


def _shapes(signature: list[tuple[tuple[int, ...], torch.dtype]]) -> str:
    return ", ".join(f"{list(shape)} {str(dtype).replace('torch.', '')}" for shape, dtype in signature)


# --- by hand, in the spirit of ipex.quantization: prepare, calibrate, convert, torch.compile ---

CALIBRATION_MARK = "_ipex_int8_calibration"  # on every parameter and buffer of a converted model


class Prepared(torch.nn.Module):
    """The float model; each call also keeps its inputs, as calibration data for ``convert``."""

    def __init__(self, model: torch.nn.Module, knobs: dict[str, Any]):
        super().__init__()
        self.model = model
        self.knobs = knobs
        self.batches: list[Batch] = []

    def forward(self, *inputs: torch.Tensor) -> Any:
        self.batches.append(tuple(t.detach().clone() for t in inputs))
        return self.model(*inputs)


def prepare(model: torch.nn.Module, *, preset: str = "performance", model_type: str = "cnn",
            inplace: bool = False) -> Prepared:
    """Wrap an inference model for calibration: run your calibration batches through the result,
    then ``convert`` it. ``preset`` and ``model_type`` are the ov_int8_* knobs. A copy of the model
    is prepared; with ``inplace=True`` the model itself is (``convert`` then turns its gradients
    off)."""
    from .config import BackendConfig  # here: config imports this module's siblings

    knobs = {"path": "openvino", "dtype": INT8, "ov_int8_preset": preset,
             "ov_int8_model_type": model_type}
    BackendConfig(knobs)  # the knobs' own validation: a bad value names the valid ones
    model = model if inplace else copy.deepcopy(model)
    return Prepared(model.eval(), knobs)


def convert(prepared: Prepared) -> torch.nn.Module:
    """The calibrated model, marked so that ``torch.compile(model, backend="ipex")`` quantizes
    it to int8 on the batches it saw (explicit ``options=`` still win over the mark). Its
    parameters stop requiring gradients: an int8 model does not train, and a graph that needs
    them would compile in float32 when called outside ``torch.no_grad()``."""
    if not isinstance(prepared, Prepared):
        raise TypeError(f"convert() takes what prepare() returned, not {type(prepared).__name__}")
    if not prepared.batches:
        raise ValueError("convert(): the prepared model has seen no inputs; run your calibration "
                         "batches through it first (prepared(batch) for each)")
    from .optimize import OPTIMIZE_MARK

    model = prepared.model.requires_grad_(False)
    for tensor in list(model.parameters()) + list(model.buffers()):
        setattr(tensor, OPTIMIZE_MARK, dict(prepared.knobs))
        setattr(tensor, CALIBRATION_MARK, prepared.batches)
    return model


def marked_batches(tensors: Sequence[Any]) -> list[Batch] | None:
    """The calibration batches ``convert`` put on a graph's weights, if any."""
    for tensor in tensors:
        batches = getattr(tensor, CALIBRATION_MARK, None)
        if batches:
            return batches
    return None
