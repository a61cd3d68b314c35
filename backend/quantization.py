"""int8: what a compile quantizes with, and what it hands back for the store.

A graph is quantized while calibration batches are given (``calibrating``: the tuner's workers,
``prepare``/``convert``); the result is a ``QuantizedModel``, bound to the weights it was
calibrated for. The lookup hands a stored one back (``using_stored``), so that
``torch.compile(backend="ipex")`` applies int8 with no data at hand. Quantization itself is
NNCF's (backend/openvino_path.py); nothing here computes a scale.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .errors import PathUnavailable

INT8 = "int8"
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
    source: str = ""         # the engine's own file of it, in the engines' cache

    def describe(self) -> dict[str, str]:
        """What a compile's record keeps of it (the tuner stores the files from ``source``)."""
        return {"engine": self.engine, "weights_digest": self.weights_digest, "source": self.source}

    @classmethod
    def from_description(cls, described: dict[str, str]) -> "QuantizedModel":
        """Back from ``describe``: the files read from the cache (FileNotFoundError if gone)."""
        main = Path(described["source"])
        files = {"model.xml": main.read_bytes(), "model.bin": main.with_suffix(".bin").read_bytes()}
        return cls(described["engine"], described["weights_digest"], files, str(main))

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


def stored_model() -> QuantizedModel | None:
    return getattr(_state, "stored", None)


def as_batch(batch: Any) -> Batch:
    return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)


def matching_batches(batches: list[Batch], user_inputs: Sequence[torch.Tensor]) -> list[Batch]:
    """The calibration batches, checked against what the graph takes: same count, shapes, dtypes."""
    wanted = [(tuple(t.shape), t.dtype) for t in user_inputs]
    for batch in batches:
        got = [(tuple(t.shape), t.dtype) for t in batch]
        if got != wanted:
            raise Int8Unavailable(
                f"the calibration batches do not match this graph's inputs (a batch has "
                f"{_shapes(got)}; the graph takes {_shapes(wanted)}): int8 calibrates a model "
                "that compiles to one graph, on batches shaped like its example input")
    return batches


def _shapes(signature: list[tuple[tuple[int, ...], torch.dtype]]) -> str:
    return ", ".join(f"{list(shape)} {str(dtype).replace('torch.', '')}" for shape, dtype in signature)
