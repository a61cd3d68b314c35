"""The user's own inputs (``--data``): the first part calibrates int8, the rest judges accuracy.

A source is a file saved with ``torch.save`` (a tensor of inputs stacked along dimension 0, cut
into batches of the model's batch size; or a list of batches, each a tensor or a tuple of
tensors, one per forward input) or ``module:callable`` returning an iterable of such batches.
Every batch must be shaped like the model's example input: a compiled graph has fixed shapes.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from backend.quantization import Batch

from .errors import AutotuneError
from .models import cwd_on_path_for, why_not_tensors

log = logging.getLogger("autotune")

# NNCF's own default: past a few hundred inputs, calibration statistics stop moving
MAX_CALIBRATION_INPUTS = 300
FORMS = ("a file saved with torch.save holding a tensor of inputs stacked along dimension 0 or a "
         "list of batches (each a tensor, or a tuple with one tensor per forward input), or "
         "module:callable returning an iterable of such batches")
METRIC_FORM = ("module:callable taking (outputs, inputs): the first output of every held-out "
               "batch and their inputs, each concatenated along dimension 0; returning a score, "
               "higher is better and above zero (e.g. accuracy against your labels)")
NO_DATA = ("int8 is not tried: it needs --data, your own inputs (random inputs calibrate random "
           "scales, and an accuracy gate on them means nothing)")


class DataError(AutotuneError):
    """A --data source that cannot be read or does not fit the model's inputs."""


@dataclass(frozen=True)
class Split:
    calibration: list[Batch]
    held_out: list[Batch]


def load(source: str, example_inputs: Sequence[torch.Tensor]) -> Split:
    """The batches of ``source``, checked against the model's example inputs, then split: the
    first half calibrates (up to MAX_CALIBRATION_INPUTS inputs), the rest is held out."""
    batches = _batches(_read(source), source, example_inputs)
    if len(batches) < 2:
        raise DataError(f"--data {source}: {len(batches)} batch(es) of "
                        f"{example_inputs[0].shape[0]}; at least 2 are needed, one to calibrate and "
                        "one held out to judge accuracy")
    per_batch = int(example_inputs[0].shape[0])
    calibrating = min(math.ceil(len(batches) / 2), max(1, MAX_CALIBRATION_INPUTS // per_batch))
    return Split(batches[:calibrating], batches[calibrating:])


def _read(source: str) -> Any:
    if os.path.exists(source):
        try:
            return torch.load(source, weights_only=True)
        except Exception as exc:  # pickle, zip and torch all raise their own
            raise DataError(f"--data {source}: {why_not_tensors(exc)}; expected {FORMS}. Only "
                            "tensors are loaded: unpickling anything else could run code") from None
    if ":" not in source:
        raise DataError(f"--data {source}: no such file, and not module:callable; expected {FORMS}")
    target = _callable(source, "--data", FORMS)
    try:
        returned = target()
        # one stacked tensor, as a file may hold: split into batches below, not into samples here
        return returned if isinstance(returned, torch.Tensor) else list(returned)
    except Exception as exc:  # user code
        raise DataError(f"--data {source}: calling it raised {type(exc).__name__}: {exc}") from exc


def _callable(source: str, flag: str, expected: str) -> Callable:
    module_name, colon, attr = source.partition(":")
    if not colon or not module_name or not attr:
        raise DataError(f"{flag} {source}: not module:callable; expected {expected}")
    cwd_on_path_for(module_name)  # found where --model's module is: the working directory
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"{flag} {source}: cannot import it ({exc}); expected {expected}") from None
    if not callable(target):
        raise DataError(f"{flag} {source}: {attr!r} is not callable; expected {expected}")
    return target


def load_metric(source: str) -> Callable[[torch.Tensor, tuple], float]:
    """The user's ``--metric``: resolved now, so that a bad name fails before any trial."""
    return _callable(source, "--metric", METRIC_FORM)


def _batches(data: Any, source: str, example_inputs: Sequence[torch.Tensor]) -> list[Batch]:
    per_batch = int(example_inputs[0].shape[0])
    if isinstance(data, torch.Tensor):
        if len(example_inputs) != 1:
            raise DataError(f"--data {source}: one tensor, but the model takes "
                            f"{len(example_inputs)} inputs; give a list of tuples, one tensor per input")
        if data.dim() == 0:
            raise DataError(f"--data {source}: a single number; expected inputs stacked along "
                            "dimension 0, or a list of batches")
        whole, left = divmod(data.shape[0], per_batch)
        if left:
            log.warning(f"--data {source}: the last {left} of {data.shape[0]} inputs do not fill a "
                        f"batch of {per_batch} (the model's batch size); they are left out")
        data = [data[i * per_batch:(i + 1) * per_batch] for i in range(whole)]
    if not isinstance(data, (list, tuple)):
        raise DataError(f"--data {source}: got {type(data).__name__}; expected {FORMS}")
    wanted = _signature(example_inputs)
    batches = []
    for i, item in enumerate(data):
        batch = (item,) if isinstance(item, torch.Tensor) else item
        if not isinstance(batch, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in batch):
            raise DataError(f"--data {source}: batch {i} is {type(item).__name__}; expected a "
                            "tensor or a tuple of tensors")
        if _signature(batch) != wanted:
            raise DataError(f"--data {source}: batch {i} has {_signature(batch)}; the model's example "
                            f"input has {wanted} (a compiled graph has fixed shapes)")
        batches.append(tuple(t.contiguous() for t in batch))
    return batches


def _signature(tensors: Sequence[torch.Tensor]) -> str:
    return ", ".join(f"{list(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in tensors)
