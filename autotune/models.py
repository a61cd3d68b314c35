"""Model registry: torchvision classification names or "module:callable", plus example inputs.

Every process that builds the same ``ModelSpec`` gets identical weights and inputs (fixed seeds),
so a trial worker, the reference run and the confirmation round all measure the same thing.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from .errors import ModelError

SEED = 0
DEFAULT_IMAGE_SIZE = 224
_CALLABLE_CONTRACT = ("module:callable returning an nn.Module, (nn.Module, example_inputs) "
                      "or (nn.Module, example_input_fn(batch_size))")


Shape = tuple[int, ...]


def _shape_or_none(value: Any) -> Shape | None:
    shape = tuple(value) if isinstance(value, (list, tuple)) else ()
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        return None
    return shape


@dataclass(frozen=True)
class ModelSpec:
    """What to build: ``name`` is a torchvision classification model or "module:callable".

    ``input_shapes`` holds one shape per forward input, each per sample (without the batch
    dimension); one flat shape is taken as the shape of a single input.
    """

    name: str
    batch_size: int = 1
    input_shapes: tuple[Shape, ...] | None = None
    checkpoint: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ModelError(f"model name {self.name!r}: expected a torchvision model name "
                             f"(`autotune models` lists them) or {_CALLABLE_CONTRACT}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise ModelError(f"batch size {self.batch_size!r}: expected a positive integer")
        if self.input_shapes is not None:
            given = self.input_shapes
            if _shape_or_none(given) is not None:  # one input, written flat
                given = (given,)
            shapes = tuple(_shape_or_none(s) for s in given) if isinstance(given, (list, tuple)) else ()
            if not shapes or None in shapes:
                raise ModelError(f"input shape {self.input_shapes!r}: expected positive integers "
                                 "per sample without the batch dimension, e.g. (3, 224, 224), or "
                                 "one such shape per input")
            object.__setattr__(self, "input_shapes", shapes)

    @property
    def label(self) -> str:
        return self.name

    @property
    def study_label(self) -> str:
        return f"{self.name}-bs{self.batch_size}"

    def to_dict(self) -> dict[str, Any]:
        # one input keeps the flat form older studies and references were keyed with
        shapes = self.input_shapes
        flat = list(shapes[0]) if shapes and len(shapes) == 1 else None
        return {"name": self.name, "batch_size": self.batch_size,
                "input_shape": flat if flat else ([list(s) for s in shapes] if shapes else None),
                "checkpoint": self.checkpoint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        fields = ("name", "batch_size", "input_shape", "checkpoint")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ModelError(f"model spec: unknown key(s) {', '.join(unknown)}; "
                             f"valid keys: {', '.join(fields)}")
        values = dict(data)
        return cls(input_shapes=values.pop("input_shape", None), **values)


def list_models() -> list[str]:
    """The torchvision classification models ``build`` accepts by name."""
    import torchvision  # here, not at the top: a worker for the user's own model skips its import

    return sorted(torchvision.models.list_models(module=torchvision.models))


def default_input_shape(name: str) -> tuple[int, int, int]:
    """(3, size, size) with the smallest crop size among the model's published weights.

    The smallest, not DEFAULT's: a ViT built without weights takes 224 even where its DEFAULT
    weights are a 518-pixel checkpoint; models trained at one size only (inception_v3: 299,
    efficientnet_b7: 600) get that size.
    """
    import torchvision

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
    if _random_torchvision_weights(spec):
        _randomize_zero_layers(model)
    model.eval()
    if inputs is None:
        generator = torch.Generator().manual_seed(SEED)
        shapes = spec.input_shapes or (default_input_shape(spec.name),)
        inputs = tuple(torch.randn((spec.batch_size, *shape), generator=generator) for shape in shapes)
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
    import torchvision

    return torchvision.models.get_model(spec.name, weights=None)


def randomized_layers(spec: ModelSpec) -> list[str]:
    """The zero-initialised layers ``build`` gives random values: part of what a study's trials
    measured, so a rerun of an older study can tell its weights were other."""
    if not _random_torchvision_weights(spec):
        return []
    return [name for name, _ in _zero_linear_layers(_build_torchvision(spec))]


def _random_torchvision_weights(spec: ModelSpec) -> bool:
    # a checkpoint's weights are trained, and a callable's are the user's: both are left as given
    return not spec.checkpoint and ":" not in spec.name


def _zero_linear_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not module.weight.any()]


def _randomize_zero_layers(model: torch.nn.Module) -> None:
    """Seeded random values for weights initialised to zeros (torchvision's ViT heads): a zero head
    answers zeros for every input, and no accuracy gate can judge a model whose answer is fixed.
    A standard deviation of fan_in ** -0.5 keeps the logits near 1, so the answers spread over
    classes."""
    with torch.no_grad():
        for _, layer in _zero_linear_layers(model):
            torch.nn.init.normal_(layer.weight, std=layer.weight.shape[1] ** -0.5)


def cwd_on_path_for(module_name: str) -> None:
    """Put the working directory first on sys.path, as ``python -m`` does, when the user's module
    lives there: the ``autotune`` script's own folder is what Python puts there instead."""
    top = module_name.partition(".")[0]
    cwd = os.getcwd()
    if cwd in sys.path or "" in sys.path:
        return
    if os.path.exists(os.path.join(cwd, top + ".py")) or os.path.isdir(os.path.join(cwd, top)):
        sys.path.insert(0, cwd)


def module_origin(spec: ModelSpec) -> str | None:
    """The file that defines a module:callable model, or None (torchvision name, not importable)."""
    if ":" not in spec.name:
        return None
    module_name = spec.name.partition(":")[0]
    cwd_on_path_for(module_name)
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):  # a missing parent package, or an empty name
        return None
    return found.origin if found else None


def _resolve_callable(spec: ModelSpec) -> Callable[[], Any]:
    """The object ``module:attr.path`` names, imported and checked to be callable."""
    module_name, _, attr_path = spec.name.partition(":")
    if not module_name or not attr_path:
        raise ModelError(f"model {spec.name!r}: expected {_CALLABLE_CONTRACT}")
    cwd_on_path_for(module_name)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name and (
                exc.name == module_name or module_name.startswith(exc.name + ".")):
            hint = (f"; run autotune from the folder that holds {exc.name.partition('.')[0]!r}, "
                    "add that folder to PYTHONPATH, or pip install its package")
        raise ModelError(f"model {spec.name!r}: cannot import module {module_name!r} ({exc}){hint}; "
                         f"expected {_CALLABLE_CONTRACT}") from None
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ModelError(f"model {spec.name!r}: module {module_name!r} has no attribute "
                             f"{attr_path!r}; expected {_CALLABLE_CONTRACT}")
        target = getattr(target, attr)
    if not callable(target):
        raise ModelError(f"model {spec.name!r}: {attr_path!r} is not callable; "
                         f"expected {_CALLABLE_CONTRACT}")
    return target


def _build_callable(spec: ModelSpec) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...] | None]:
    target = _resolve_callable(spec)
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
        if spec.input_shapes is None:
            raise ModelError(f"model {spec.name!r} returns only a module, so its input shape is "
                             "unknown: give one --input-shape per input (or input_shape in a study "
                             "file) or return (module, example_inputs)")
        return result, None
    if spec.input_shapes is not None:
        raise ModelError(f"model {spec.name!r} returns its own example inputs; input shape(s) "
                         f"{', '.join(map(str, spec.input_shapes))} would be ignored, so drop "
                         "--input-shape")
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
        raise ModelError(f"checkpoint file {path!r} not found (expected {_STATE_DICT})") from None
    except IsADirectoryError:
        raise ModelError(f"checkpoint {path!r} is a folder; expected {_STATE_DICT}") from None
    except Exception as exc:  # unreadable, corrupt or not weights-only: all the file's fault
        raise ModelError(f"checkpoint {path!r} {why_not_tensors(exc)}; expected {_STATE_DICT}. "
                         "Only tensors are loaded from a checkpoint: unpickling anything else "
                         "could run code") from None
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


_STATE_DICT = "a state_dict saved with torch.save(model.state_dict(), path)"


def why_not_tensors(error: Exception) -> str:
    """What is in the file, in our words: torch's own message advises weights_only=False."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    if found:
        return f"holds a pickled {found.group(1)} object, not only tensors"
    if isinstance(error, EOFError):
        return "is empty or cut short"
    return f"is not a file torch.save wrote ({type(error).__name__})"


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
        count = "input" if len(inputs) == 1 else "inputs"
        if isinstance(exc, TypeError) and "positional argument" in first_line:
            raise ModelError(f"model {spec.name!r} does not take {len(inputs)} {count} of shape "
                             f"{shapes}: {first_line} (give one --input-shape per forward input, "
                             "e.g. --input-shape 1,3,32,32 --input-shape 1,10)") from None
        raise ModelError(f"model {spec.name!r} cannot run inputs of shape {shapes}: {first_line} "
                         "(give the shape it expects with --input-shape, one per forward "
                         "input)") from None
