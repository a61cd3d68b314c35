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
from .fingerprint import hardware_key, workload_key
from .graph import ambient_autocast_dtype, constant_mask, lift_constants, outputs_close

CACHE_ENV = "IPEX_AUTOTUNE_CACHE"
CACHE_LIMIT_ENV = "IPEX_AUTOTUNE_CACHE_MB"
CACHE_LIMIT_MB = 4096  # a tuning run writes a model per engine config it tries: keep the newest


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
    """``$IPEX_AUTOTUNE_CACHE``, else ``$XDG_CACHE_HOME/ipex-autotune`` (~/.cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(home) / "ipex-autotune"


@dataclass
class EngineGraph:
    """The captured graph as an engine takes it."""
    module: torch.fx.GraphModule        # parameters held as constants
    user_positions: list[int]           # where the user's tensors sit among dynamo's inputs
    user_inputs: list[torch.Tensor]
    expected: tuple[torch.Tensor, ...]  # the captured graph's outputs on the example inputs
    key: str                            # graph structure + weights + hardware: the cache key

    def cache_path(self, engine: str, suffix: str, made_by: Any) -> Path:
        """Where this graph's file lies, as made by ``made_by`` (versions, settings: JSON)."""
        blob = json.dumps(made_by, sort_keys=True).encode()
        return cache_root() / engine / f"{self.key}-{hashlib.sha256(blob).hexdigest()[:12]}{suffix}"

    def check(self, title: str, actual: Sequence[Any], low_precision: bool) -> None:
        problem = outputs_close(self.expected, tuple(actual), rtol=5e-2 if low_precision else 1e-3,
                                atol=5e-2 if low_precision else 1e-4)
        if problem:
            raise EngineUnavailable(f"{title}'s converted graph disagrees with the captured graph "
                                    f"({problem})")

    def numpy_inputs(self, args: Sequence[Any]) -> list[Any]:
        return [args[i].detach().contiguous().numpy() for i in self.user_positions]

    def outputs(self, arrays: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        """Torch tensors of eager's dtypes, owning their memory (engines reuse their buffers)."""
        return tuple(torch.from_numpy(a.copy()).to(e.dtype) for a, e in zip(arrays, self.expected))


def engine_graph(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], title: str) -> EngineGraph:
    """Refuse what an engine cannot take; otherwise the graph, its outputs and its cache key."""
    if ambient_autocast_dtype() is not None:
        raise EngineUnavailable(f"{title} takes its precision from the dtype knob, not from "
                                "torch.autocast around the call")
    mask = constant_mask(gm, example_inputs)
    bad = [type(x).__name__ for x, c in zip(example_inputs, mask)
           if not c and not isinstance(x, torch.Tensor)]
    if bad:
        raise EngineUnavailable(f"graph takes non-tensor inputs ({', '.join(bad)}: symbolic "
                                "shapes or Python values), which a converted graph would fix")
    with torch.no_grad():
        expected = gm(*example_inputs)
    expected = tuple(expected) if isinstance(expected, (list, tuple)) else (expected,)
    if not expected or not all(isinstance(o, torch.Tensor) for o in expected):
        raise EngineUnavailable("graph returns non-tensor outputs")
    module, positions = lift_constants(gm, example_inputs)
    user_inputs = [example_inputs[i] for i in positions]
    key = _cache_key(gm, example_inputs, mask)
    return EngineGraph(module.eval(), positions, user_inputs, expected, key)


def _cache_key(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], mask: list[bool]) -> str:
    # a cached model holds its weights: the structure alone would hand one model's weights to another
    digest = hashlib.blake2b(digest_size=16)
    digest.update(workload_key(gm, example_inputs, mask).encode())
    digest.update(hardware_key().encode())
    for value, is_constant in zip(example_inputs, mask):
        if is_constant:
            digest.update(value.detach().contiguous().cpu().numpy().tobytes())
    for tensor in list(gm.parameters()) + list(gm.buffers()):
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
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
    prune_cache()


def cached(target: Path) -> bool:
    """Whether ``target`` is in the cache; a hit counts as a use of it and its siblings (an IR's
    .bin) for ``prune_cache``."""
    if not target.exists():
        return False
    for path in [target, *target.parent.glob(target.stem + ".*")]:
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
    return target.exists()


def prune_cache(limit_mb: int | None = None) -> None:
    """Delete the least recently used cached models beyond the size limit."""
    limit = limit_mb if limit_mb is not None else int(os.environ.get(CACHE_LIMIT_ENV, CACHE_LIMIT_MB))
    files = []
    for path in cache_root().rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # another process may prune too
            if path.is_file():
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= limit * 1024 * 1024:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        total -= size
