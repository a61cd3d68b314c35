"""What the OpenVINO and ONNX Runtime paths share: the graph as an engine takes it, the on-disk
cache of converted models, and the check of a converted graph against the captured one.

An engine gets the captured graph with its parameters as constants (``lift_constants``) and the
user's tensors as inputs, converts it with the engine's own maintained converter, and runs it on
numpy arrays; outputs come back as torch tensors of the dtype eager gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .errors import PathUnavailable, first_line
from .fingerprint import cpu_features, workload_key
from .graph import (ambient_autocast_dtype, constant_mask, input_names, lift_constants,
                    non_tensor_inputs, output_on_copies, outputs_close)

CACHE_ENV = "IPEX_AUTOTUNE_CACHE"
CACHE_LIMIT_ENV = "IPEX_AUTOTUNE_CACHE_MB"
CACHE_LIMIT_MB = 4096  # a tuning run writes a model per engine config it tries: keep the newest
CACHE_SUFFIXES = (".xml", ".bin", ".onnx", ".blob", ".pt2")  # what the engines write, and prune


class EngineUnavailable(PathUnavailable):
    """An engine cannot take this graph (or cannot load); the reason says why."""


def why_unavailable(module: str, title: str) -> Callable[[], str | None]:
    """A path's ``unavailable`` check: None when the engine loads, else why it does not."""
    def check() -> str | None:
        try:
            load_engine(module, title)
        except EngineUnavailable as exc:
            return str(exc)
        return None
    return check


def load_engine(module: str, title: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as exc:  # a broken native library raises more than ImportError
        raise EngineUnavailable(f"{title} cannot load ({first_line(exc)}); "
                                f"`pip install {module}` brings it") from exc


def cache_root() -> Path:
    """The engines' own folder: ``$IPEX_AUTOTUNE_CACHE/engines``, else under
    ``$XDG_CACHE_HOME/ipex-autotune`` (~/.cache). Pruning never leaves it."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "engines"
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(home) / "ipex-autotune" / "engines"


@dataclass
class EngineGraph:
    """The captured graph as an engine takes it."""
    module: torch.fx.GraphModule        # parameters held as constants
    user_positions: list[int]           # where the user's tensors sit among dynamo's inputs
    user_names: list[str | None]        # the forward argument each of them is, where known
    key: str                            # exact graph + weights + CPU: the cache key
    weights_digest: str                 # the weights alone: what an int8 calibration is bound to
    output_dtypes: list[torch.dtype]    # eager's
    # until ``check``: copies of the example inputs (for converters to trace, for the check)
    # and the captured graph's outputs on them
    user_inputs: list[torch.Tensor]
    example_args: list[Any]
    expected: tuple[torch.Tensor, ...]

    def cache_path(self, engine: str, suffix: str, made_by: Any) -> Path:
        """Where this graph's file lies, as made by ``made_by`` (versions, settings: JSON)."""
        blob = json.dumps(made_by, sort_keys=True).encode()
        return cache_root() / engine / f"{self.key}-{hashlib.sha256(blob).hexdigest()[:12]}{suffix}"

    def check(self, title: str, run: Callable, low_precision: bool, compare: bool = True) -> None:
        """Run the compiled graph on copies of the example inputs; refuse it unless it gives the
        captured graph's outputs (or, without ``compare``, unless it runs). Then let go of the
        examples: ``run`` keeps only dtypes."""
        try:
            actual = run(*self.example_args)
        except Exception as exc:
            raise EngineUnavailable(f"{title} failed to run the converted graph: "
                                    f"{first_line(exc)}") from exc
        problem = compare and outputs_close(self.expected, tuple(actual), rtol=5e-2 if low_precision else 1e-3,
                                atol=5e-2 if low_precision else 1e-4)
        if problem:
            raise EngineUnavailable(f"{title}'s converted graph disagrees with the captured graph "
                                    f"({problem})")
        if not compare and any(t.is_floating_point() and not torch.isfinite(t).all()
                               and torch.isfinite(e).all() for t, e in zip(actual, self.expected)):
            raise EngineUnavailable(f"{title}'s compiled graph gives non-finite outputs on the "
                                    "example input, where the captured graph's are finite")
        self.user_inputs, self.expected, self.example_args = [], (), ()

    def numpy_inputs(self, args: Sequence[Any]) -> list[Any]:
        return [args[i].detach().contiguous().numpy() for i in self.user_positions]

    def outputs(self, arrays: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        """Torch tensors of eager's dtypes (both engines hand back arrays of their own)."""
        return tuple(torch.from_numpy(a).to(dtype) for a, dtype in zip(arrays, self.output_dtypes))


def engine_graph(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], title: str) -> EngineGraph:
    """Refuse what an engine cannot take; otherwise the graph, its outputs and its cache key."""
    if ambient_autocast_dtype() is not None:
        raise EngineUnavailable(f"{title} takes its precision from the dtype knob, not from "
                                "torch.autocast around the call")
    mask = constant_mask(gm, example_inputs)
    bad = non_tensor_inputs(example_inputs, mask)
    if bad:
        raise EngineUnavailable(f"graph takes non-tensor inputs ({', '.join(bad)}: symbolic "
                                "shapes or Python values), which a converted graph would fix")
    users = [x for x, c in zip(example_inputs, mask) if not c]
    no_numpy = sorted({str(x.dtype) for x in users if x.dtype in (torch.bfloat16, torch.float8_e4m3fn)})
    if no_numpy:
        raise EngineUnavailable(f"graph takes {', '.join(no_numpy)} inputs, which the engines' "
                                "numpy interface cannot pass")
    with torch.no_grad():
        expected, wrote = output_on_copies(gm, example_inputs, mask)
    if wrote:
        raise EngineUnavailable("graph modifies its inputs in place, which a converted graph "
                                "cannot do to the caller's tensors")
    expected = tuple(expected) if isinstance(expected, (list, tuple)) else (expected,)
    if not expected or not all(isinstance(o, torch.Tensor) for o in expected):
        raise EngineUnavailable("graph returns non-tensor outputs")
    module, positions = lift_constants(gm, example_inputs)
    weights = weights_digest(gm, example_inputs, mask)
    return EngineGraph(module.eval(), positions, input_names(gm, positions), _cache_key(gm, example_inputs, mask, weights), weights,
                       [o.dtype for o in expected], [example_inputs[i].clone() for i in positions],
                       [x.clone() if not c else x for x, c in zip(example_inputs, mask)], expected)


def _cache_key(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], mask: list[bool],
               weights: str) -> str:
    """The exact graph (its code, with every constant argument), its input signature, its
    weights and the CPU's features: a cached model holds its weights, and the store's coarser
    workload key would hand one graph's model to another."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(gm.code.encode())
    digest.update(workload_key(gm, example_inputs, mask).encode())
    digest.update(json.dumps(sorted(cpu_features())).encode())
    digest.update(weights.encode())
    return digest.hexdigest()


def weights_digest(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], mask: list[bool]) -> str:
    """The bytes of the graph's weights: its constant inputs, parameters and buffers."""
    digest = hashlib.blake2b(digest_size=16)
    constants = [v for v, c in zip(example_inputs, mask) if c]
    for tensor in constants + list(gm.parameters()) + list(gm.buffers()):
        data = tensor.detach().contiguous().cpu()
        digest.update(str(data.dtype).encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def write_atomically(target: Path, write: Callable[[Path], None], suffixes: Sequence[str] = ()) -> None:
    """``write(tmp)`` then rename into place, so a second process never reads half a file.

    ``suffixes``: sibling files the writer makes next to ``tmp`` (OpenVINO's .bin beside .xml)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        tmp = Path(scratch) / target.name
        write(tmp)
        for suffix in suffixes:  # siblings first: the main file appearing means all are there
            os.replace(tmp.with_suffix(suffix), target.with_suffix(suffix))
        os.replace(tmp, target)
    prune_cache(keep=_entry(target))


def _entry(path: Path) -> Path:
    """A cached model's files share their name up to the first dot."""
    return path.parent / path.name.split(".")[0]


def cached(target: Path) -> bool:
    """Whether ``target`` is in the cache; a hit counts as a use of its whole entry (an IR's
    .bin too) for ``prune_cache``."""
    if not target.exists():
        return False
    for path in target.parent.glob(_entry(target).name + ".*"):
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
    return target.exists()


def forget(target: Path) -> None:
    """Delete a cached entry that failed to load, so the next compile makes it again."""
    for path in target.parent.glob(_entry(target).name + ".*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def prune_cache(limit_mb: int | None = None, keep: Path | None = None) -> None:
    """Delete the least recently used cached models beyond the size limit, whole entries at a
    time, never ``keep`` (the one just written)."""
    limit = limit_mb if limit_mb is not None else int(os.environ.get(CACHE_LIMIT_ENV, CACHE_LIMIT_MB))
    entries: dict[Path, list] = {}
    for path in cache_root().rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # another process may prune too
            if path.suffix in CACHE_SUFFIXES and path.is_file():
                stat = path.stat()
                entry = entries.setdefault(_entry(path), [0.0, 0, []])
                entry[0] = max(entry[0], stat.st_mtime)
                entry[1] += stat.st_size
                entry[2].append(path)
    total = sum(size for _, size, _ in entries.values())
    for entry, (_, size, files) in sorted(entries.items(), key=lambda item: item[1][0]):
        if total <= limit * 1024 * 1024:
            break
        if entry == keep:
            continue
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        total -= size
