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
import inspect
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
def calibrating(batches: Sequence[Sequence[torch.Tensor] | torch.Tensor],
                names: Sequence[str] | None = None) -> Iterator[None]:
    """int8 compiles inside this block calibrate on ``batches`` (the model's inputs, one tuple
    per call): the model must compile to one graph that takes exactly those tensors. ``names``:
    the forward arguments a batch's tensors are, in order (``argument_names``), since dynamo
    orders a graph's inputs as the code first reads them; without names, in call order."""
    previous = getattr(_state, "batches", None), getattr(_state, "names", None)
    _state.batches = [as_batch(b) for b in batches]
    _state.names = tuple(names) if names else None
    try:
        yield
    finally:
        _state.batches, _state.names = previous


def calibration_batches() -> list[Batch] | None:
    return getattr(_state, "batches", None)


def argument_names(model: Any) -> tuple[str, ...] | None:
    """The names of ``model``'s positional forward arguments, in order, up to any ``*args``."""
    try:
        parameters = inspect.signature(model.forward if isinstance(model, torch.nn.Module)
                                       else model).parameters.values()
    except (TypeError, ValueError):  # a builtin or C extension: no signature to read
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = []
    for parameter in parameters:
        if parameter.kind not in positional:
            break
        names.append(parameter.name)
    return tuple(names) or None


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


def matching_batches(batches: list[Batch], user_inputs: Sequence[torch.Tensor],
                     input_names: Sequence[str | None] = ()) -> list[Batch]:
    """The calibration batches in the graph's input order (by argument name, where both are
    known) and shaped as its inputs (count, shapes, dtypes). The others (a data loader's short
    last batch) are left out with one warning; none left is an error."""
    batches = _in_graph_order(batches, input_names)
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


def _in_graph_order(batches: list[Batch], input_names: Sequence[str | None]) -> list[Batch]:
    names = getattr(_state, "names", None)
    if not names or not input_names or not set(input_names) <= set(names):
        return batches  # unnamed on either side (None among them): call order
    order = [names.index(name) for name in input_names]
    return [tuple(batch[i] for i in order) if len(batch) > max(order) else batch for batch in batches]


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
    calibration = (prepared.batches, argument_names(model))
    for tensor in list(model.parameters()) + list(model.buffers()):
        setattr(tensor, OPTIMIZE_MARK, dict(prepared.knobs))
        setattr(tensor, CALIBRATION_MARK, calibration)
    return model


def marked_calibration(tensors: Sequence[Any]) -> tuple[list[Batch], tuple[str, ...] | None] | None:
    """The calibration batches ``convert`` put on a graph's weights and their argument names."""
    for tensor in tensors:
        calibration = getattr(tensor, CALIBRATION_MARK, None)
        if not calibration:
            continue
        if isinstance(calibration, tuple) and len(calibration) == 2 and isinstance(calibration[0], list):
            return calibration
        return list(calibration), None  # an older version's mark (a model saved whole): batches alone
    return None
