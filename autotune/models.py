"""Model registry: torchvision classification names or "module:callable", plus example inputs.

Every process that builds the same ``ModelSpec`` gets identical weights and inputs (fixed seeds),
so a trial worker, the reference run and the confirmation round all measure the same thing.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torchvision

from .errors import ModelError

SEED = 0
DEFAULT_IMAGE_SIZE = 224
_CALLABLE_CONTRACT = ("module:callable returning an nn.Module, (nn.Module, example_inputs) "
                      "or (nn.Module, example_input_fn(batch_size))")


@dataclass(frozen=True)
class ModelSpec:
    """What to build: ``name`` is a torchvision classification model or "module:callable"."""

    name: str
    batch_size: int = 1
    input_shape: tuple[int, ...] | None = None  # per sample, without the batch dimension
    checkpoint: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ModelError(f"model name {self.name!r}: expected a torchvision model name "
                             f"(`autotune models` lists them) or {_CALLABLE_CONTRACT}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise ModelError(f"batch size {self.batch_size!r}: expected a positive integer")
        if self.input_shape is not None:
            shape = tuple(self.input_shape) if isinstance(self.input_shape, (list, tuple)) else ()
            if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                for d in shape):
                raise ModelError(f"input shape {self.input_shape!r}: expected positive integers "
                                 "per sample without the batch dimension, e.g. (3, 224, 224)")
            object.__setattr__(self, "input_shape", shape)

    @property
    def label(self) -> str:
        return self.name

    @property
    def study_label(self) -> str:
        return f"{self.name}-bs{self.batch_size}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        fields = ("name", "batch_size", "input_shape", "checkpoint")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ModelError(f"model spec: unknown key(s) {', '.join(unknown)}; "
                             f"valid keys: {', '.join(fields)}")
        return cls(**data)


def list_models() -> list[str]:
    """The torchvision classification models ``build`` accepts by name."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def default_input_shape(name: str) -> tuple[int, int, int]:
    """(3, size, size) with the smallest crop size among the model's published weights.

    The smallest, not DEFAULT's: a ViT built without weights takes 224 even where its DEFAULT
    weights are a 518-pixel checkpoint; models trained at one size only (inception_v3: 299,
    efficientnet_b7: 600) get that size.
    """
    try:
        weights = list(torchvision.models.get_model_weights(name))
    except ValueError:
        weights = []
    sizes = [w.transforms.keywords["crop_size"] for w in weights
             if "crop_size" in getattr(w.transforms, "keywords", {})]
    size = min(sizes, default=DEFAULT_IMAGE_SIZE)
    return (3, size, size)


def build(spec: ModelSpec, *, check: bool = False) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The model in eval mode and its example inputs, shaped (batch_size, *input_shape).

    Weights are random (seeded) unless ``spec.checkpoint`` names a state_dict. With ``check``,
    one eager forward proves the inputs fit the model.
    """
    torch.manual_seed(SEED)
    if ":" in spec.name:
        model, inputs = _build_callable(spec)
    else:
        model, inputs = _build_torchvision(spec), None
    if spec.checkpoint:
        _load_checkpoint(model, spec)
    model.eval()
    if inputs is None:
        shape = spec.input_shape or default_input_shape(spec.name)
        inputs = (torch.randn((spec.batch_size, *shape), generator=torch.Generator().manual_seed(SEED)),)
    if check:
        _check_forward(model, inputs, spec)
    return model, inputs


def _build_torchvision(spec: ModelSpec) -> torch.nn.Module:
    names = list_models()
    if spec.name not in names:
        close = difflib.get_close_matches(spec.name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model {spec.name!r}{hint} (`autotune models` lists the torchvision names; "
            f"for your own model give {_CALLABLE_CONTRACT}, e.g. mypkg.models:build)")
    return torchvision.models.get_model(spec.name, weights=None)


def _build_callable(spec: ModelSpec) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...] | None]:
    module_name, _, attr_path = spec.name.partition(":")
    if not module_name or not attr_path:
        raise ModelError(f"model {spec.name!r}: expected {_CALLABLE_CONTRACT}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model {spec.name!r}: cannot import module {module_name!r} ({exc}); "
                         f"expected {_CALLABLE_CONTRACT}") from None
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ModelError(f"model {spec.name!r}: module {module_name!r} has no attribute "
                             f"{attr_path!r}; expected {_CALLABLE_CONTRACT}")
        target = getattr(target, attr)
    if not callable(target):
        raise ModelError(f"model {spec.name!r}: {attr_path!r} is not callable; "
                         f"expected {_CALLABLE_CONTRACT}")
    try:
        result = target()
    except Exception as exc:  # user code: any failure is a model-spec problem
        raise ModelError(f"model {spec.name!r}: calling it raised {type(exc).__name__}: {exc}") from exc

    example: Any = None
    if isinstance(result, tuple) and len(result) == 2:
        result, example = result
    if not isinstance(result, torch.nn.Module):
        raise ModelError(f"model {spec.name!r} returned {type(result).__name__}; "
                         f"expected {_CALLABLE_CONTRACT}")
    if example is None:
        if spec.input_shape is None:
            raise ModelError(f"model {spec.name!r} returns only a module, so its input shape is "
                             "unknown: give an input shape (--input-shape, or input_shape in a study "
                             "file) or return (module, example_inputs)")
        return result, None
    if spec.input_shape is not None:
        raise ModelError(f"model {spec.name!r} returns its own example inputs; input shape "
                         f"{spec.input_shape} would be ignored, so drop --input-shape")
    if callable(example):
        torch.manual_seed(SEED)
        try:
            example = example(spec.batch_size)
        except Exception as exc:  # user code
            raise ModelError(f"model {spec.name!r}: example_input_fn({spec.batch_size}) raised "
                             f"{type(exc).__name__}: {exc}") from exc
    return result, _as_inputs(example, spec)


def _as_inputs(example: Any, spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    inputs = (example,) if isinstance(example, torch.Tensor) else example
    if not isinstance(inputs, (tuple, list)) or not inputs \
            or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise ModelError(f"model {spec.name!r}: example inputs are {type(example).__name__}; "
                         "expected a tensor or a tuple of tensors")
    # fixed tensors cannot follow --batch-size; a wrong batch would be measured silently
    wrong = [tuple(x.shape) for x in inputs if x.dim() and x.shape[0] != spec.batch_size]
    if wrong:
        raise ModelError(f"model {spec.name!r}: example inputs of shape {wrong[0]} do not have "
                         f"batch size {spec.batch_size}; return (module, example_input_fn) so "
                         "inputs follow the batch size")
    return tuple(inputs)


def _load_checkpoint(model: torch.nn.Module, spec: ModelSpec) -> None:
    path = spec.checkpoint
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"checkpoint file {path!r} not found (expected a state_dict saved "
                         "with torch.save(model.state_dict(), path))") from None
    except Exception as exc:  # unreadable, corrupt or not weights-only: all the file's fault
        raise ModelError(f"checkpoint {path!r} cannot be loaded with weights_only=True: {exc}") from None
    if not isinstance(state, Mapping):
        raise ModelError(f"checkpoint {path!r} holds a {type(state).__name__}; "
                         "expected a state_dict (torch.save(model.state_dict(), path))")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        detail = " ".join(str(exc).split())  # torch's message spans lines
        raise ModelError(f"checkpoint {path!r} does not fit model {spec.name!r}: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"checkpoint {path!r} does not fit model {spec.name!r}: "
            f"missing keys {_few(result.missing_keys)}, unexpected keys {_few(result.unexpected_keys)}")


def _few(keys: list[str], n: int = 5) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _check_forward(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], spec: ModelSpec) -> None:
    shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:  # whatever the model raises, the inputs do not fit it
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model {spec.name!r} cannot run inputs of shape {shapes}: {first_line} "
                         "(give the input shape it expects with --input-shape)") from None
