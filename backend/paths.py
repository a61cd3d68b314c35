"""The compile-path registry: each path module registers how it compiles and where it falls back.

A path is one module that calls ``register`` at import; the package's ``__init__`` imports each
one, so the registry is complete once ``backend`` is imported. The dispatcher
(``compiler.compile_graph``) walks the fallback chain: a path that raises ``PathUnavailable`` for
a graph, or is inference-only and meets a graph that needs gradients, hands the graph to its
fallback with one warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class CompilePath:
    name: str          # the value of the ``path`` knob
    title: str         # how messages name it
    # compile(graph, example_inputs, config) -> (callable, the config it actually applied)
    compile: Callable[[Any, Sequence[Any], Any], tuple[Callable, Any]]
    fallback: str | None = None  # where a graph this path cannot take goes
    inference_only: bool = False
    # None when the path can run in this process, else why not (an engine that cannot load)
    unavailable: Callable[[], str | None] = lambda: None


_registry: dict[str, CompilePath] = {}


def register(path: CompilePath) -> CompilePath:
    if path.name in _registry and _registry[path.name] != path:
        raise ValueError(f"compile path {path.name!r} is registered twice")
    _registry[path.name] = path
    return path


def registered() -> dict[str, CompilePath]:
    return dict(_registry)


def get(name: str) -> CompilePath:
    if name not in _registry:
        raise KeyError(f"no compile path {name!r}; registered: {', '.join(_registry)}")
    return _registry[name]
