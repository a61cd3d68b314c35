"""The ``ipex`` dynamo backend: resolve the config, dispatch to a compile path, wrap the runtime."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from . import lookup, paths, quantization
from .config import BackendConfig
from .errors import KnobError, PathUnavailable, first_line
from .fingerprint import workload_key
from .graph import cast_float_outputs_to_float32, constant_mask, graph_tensors, needs_output_cast
from .knobs import KNOBS, TORCHSCRIPT, check_threads, get_knob, turned_off_by_request
from .notices import warn_once
from .optimize import OPTIMIZE_MARK
from .engines import weights_digest
from .quantization import INT8, Int8Unavailable, QuantizedModel, using_stored
from .store import default_storage_url

log = logging.getLogger("backend")

# Options that steer the backend itself rather than name a knob: "autotune" (False: no store
# lookup) and "store" (the store's URL, instead of $IPEX_AUTOTUNE_STORAGE or the default).
CONTROL_OPTIONS = ("autotune", "store")

_state = threading.local()
_recorders: list[list[dict[str, Any]]] = []
_default_path = TORCHSCRIPT


@contextlib.contextmanager
def recording() -> Iterator[list[dict[str, Any]]]:
    """Collect, while the block runs, a record per graph compiled: its keys and what was applied.

    Only while asked: a serving process that compiles for days keeps nothing."""
    graphs: list[dict[str, Any]] = []
    _recorders.append(graphs)
    try:
        yield graphs
    finally:
        # by identity: two recorders holding equal lists are still two
        del _recorders[next(i for i, r in enumerate(_recorders) if r is graphs)]


def set_compiler_backend(path: str) -> None:
    """Choose the path ``torch.compile(backend="ipex")`` uses when options don't name one."""
    global _default_path
    _default_path = get_knob("path").validate(path)


def get_compiler_backend() -> str:
    return _default_path


def _optimize_knobs(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> dict[str, Any]:
    for tensor in graph_tensors(gm, example_inputs):
        knobs = getattr(tensor, OPTIMIZE_MARK, None)
        if knobs:
            return dict(knobs)
    return {}


def fallback_config(options: Mapping[str, Any] | None,
                    optimize_knobs: Mapping[str, Any] | None = None) -> tuple[BackendConfig, str]:
    """The config without the store: explicit options over optimize() knobs over defaults."""
    explicit = {k: v for k, v in (options or {}).items() if k not in CONTROL_OPTIONS}
    path = explicit.get("path", _default_path)
    explicit.update(turned_off_by_request(explicit, path))
    explicit_config = BackendConfig({"path": path, **explicit})  # strict: bad options fail here
    values = {"path": explicit_config.path, **(optimize_knobs or {}), **explicit}
    source = "options" if explicit else ("convert()" if (optimize_knobs or {}).get("dtype") == INT8
                                         else "optimize()" if optimize_knobs else "default")
    return BackendConfig(values, lenient_paths=True), source


def resolve_config(options: Mapping[str, Any] | None, optimize_knobs: Mapping[str, Any] | None,
                   keys: Mapping[str, Any], weights: Callable[[], str] | None = None
                   ) -> tuple[BackendConfig, str, BackendConfig | None, QuantizedModel | None]:
    """(config, where it came from, what to use if it fails to compile, the stored int8 model
    if the config is int8). ``weights()``: the graph's weights digest, for int8 records.

    Order: explicit options; the store (exact graph, then nearest batch size) unless
    ``options={"autotune": False}``; optimize() knobs; defaults.
    """
    fallback, source = fallback_config(options, optimize_knobs)
    # a model quantized by hand (quantization.convert) asked for int8: the store does not override it
    explicit = any(k not in CONTROL_OPTIONS for k in (options or {})) or \
        (optimize_knobs or {}).get("dtype") == INT8
    if explicit or not (options or {}).get("autotune", True):
        return fallback, source, None, None
    found = lookup.find(dict(keys), (options or {}).get("store") or default_storage_url(), weights)
    if found is None:
        return fallback, source, None, None
    return found.config, found.describe(), fallback, found.quantized


def _apply_process_knobs(config: BackendConfig) -> None:
    wanted = config.interop_threads
    if wanted and torch.get_num_interop_threads() != wanted:
        try:
            torch.set_num_interop_threads(wanted)
        except RuntimeError:
            warn_once("interop", f"ipex backend: interop_threads={wanted} cannot take effect, inter-op "
                      "threads are fixed once the process has started parallel work; launch with "
                      "the environment `autotune env` prints")


def _trains(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> bool:
    return torch.is_grad_enabled() and any(
        t.requires_grad for t in graph_tensors(gm, example_inputs))


def compile_graph(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                  config: BackendConfig) -> tuple[Callable, BackendConfig]:
    """Compile with ``config``'s path, else along its fallbacks (one warning per reason) rather
    than fail the model. Returns the callable and the config it actually applied."""
    check_threads(config, config.threads or torch.get_num_threads())
    _apply_process_knobs(config)
    if needs_output_cast(config.dtype):
        gm = cast_float_outputs_to_float32(gm)
    fallbacks: list[str] = []  # why each path handed the graph on, for the compile's record
    while True:
        path = paths.get(config.path)
        if path.inference_only and _trains(gm, example_inputs):
            key, why = f"{path.name}-training", "is inference-only and this graph needs gradients"
            if path.fallback is None:
                raise PathUnavailable(f"the {path.title} path {why}")
        else:
            try:
                compiled, used = path.compile(gm, example_inputs, config)
                if fallbacks:
                    compiled.fallbacks = fallbacks
                return compiled, used
            except Int8Unavailable as exc:  # the same path, in float32
                fallbacks.append(f"int8 is unavailable for this graph ({exc})")
                warn_once(f"int8-fail:{exc}", f"ipex backend: {fallbacks[-1]}; compiling it in "
                          f"float32 on the {path.title} path instead")
                config = config.replace(dtype="float32")
                continue
            except PathUnavailable as exc:
                if path.fallback is None:
                    raise
                key, why = f"{path.name}-fail:{exc}", f"is unavailable for this graph ({exc})"
        fallback = paths.get(path.fallback)
        fallbacks.append(f"the {path.title} path {why}")
        dtype = config.dtype if KNOBS["dtype"].runs_on(config.dtype, fallback.name) else "float32"
        in_dtype = f" in {dtype}" if dtype != config.dtype else ""
        warn_once(key, f"ipex backend: {fallbacks[-1]}; compiling it with the "
                  f"{fallback.title} path{in_dtype} instead")
        config = config.replace(path=fallback.name, dtype=dtype)


def ipex_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *,
                 options: Mapping[str, Any] | None = None, mode: str | None = None) -> Callable:
    """Entry point registered as ``torch.compile(backend="ipex")``."""
    if mode is not None:
        raise KnobError(f"the ipex backend takes no mode (got {mode!r}); pass knobs in options=")
    keys = graph_keys(gm, example_inputs)
    config, source, fallback, quantized = resolve_config(
        options, _optimize_knobs(gm, example_inputs), keys, weights_of(gm, example_inputs))
    marked = quantization.marked_calibration(graph_tensors(gm, example_inputs))
    by_hand = quantization.calibrating(*marked) if marked and quantization.calibration_batches() is None \
        else contextlib.nullcontext()
    try:
        stored = using_stored(quantized) if quantized else contextlib.nullcontext()
        start = time.perf_counter()
        with stored, by_hand:
            compiled, used = compile_graph(gm, example_inputs, config)
    except Exception as exc:
        if fallback is None:
            raise
        warn_once(f"stored-failed:{config.config_id}", f"ipex backend: stored config "
                  f"{config.config_id} failed to compile ({first_line(exc)}); "
                  "using the default config")
        start = time.perf_counter()
        compiled, used = compile_graph(gm, example_inputs, fallback)
        source = "default (stored config failed)"
    if not _trains(gm, example_inputs):
        _guard_weight_identity(gm, example_inputs)
    for graphs in _recorders:
        graphs.append({**keys, "config_id": used.config_id, "config": used.to_dict(),
                       "dtype": used.dtype, "source": source,
                       **({"fallbacks": compiled.fallbacks} if hasattr(compiled, "fallbacks") else {}),
                       **({"quantized": compiled.quantized.describe()} if hasattr(compiled, "quantized") else {})})
    log.info("ipex backend: graph %s compiled with %s %s, from %s", keys["workload_key"],
             used.config_id, used.non_default(), source)
    _state.last = {"config": used, "source": source, "compile_seconds": time.perf_counter() - start,
                   **keys}
    compiled.ipex_config = used  # inspectable by tests and tools
    return compiled


def _guard_weight_identity(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Make dynamo recompile when other weight tensors reach this graph.

    Every inference path bakes the weights into what it compiles (a frozen trace, an engine's
    model, Inductor's freezing), but dynamo passes them as inputs and guards only their shape:
    a second instance of the same module class would run the first one's weights. Inductor's
    own freezing guards their identity the same way."""
    from torch._dynamo.guards import GuardBuilder, install_guard
    from torch._guards import TracingContext

    if TracingContext.try_get() is None:  # called outside torch.compile: no cache to guard
        return
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    try:
        for node, is_weight in zip(placeholders, constant_mask(gm, example_inputs)):
            source = getattr(node.meta.get("grapharg"), "source", None)
            if is_weight and source is not None:
                install_guard(source.make_guard(GuardBuilder.ID_MATCH))
    except Exception as exc:  # dynamo's internals moved: the model must still run
        warn_once("weight-guard", f"ipex backend: cannot guard which weights a compiled graph "
                  f"baked in ({first_line(exc)}); another instance of the same module class "
                  "would run these weights: compile it after torch._dynamo.reset()")


def weights_of(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[[], str]:
    """The graph's weights digest, computed when asked (only an int8 record asks)."""
    return lambda: weights_digest(gm, example_inputs, constant_mask(gm, example_inputs))


def graph_keys(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> dict[str, Any]:
    """What the store is searched by: workload key, family key (batch-free) and batch size."""
    mask = constant_mask(gm, example_inputs)
    return {"workload_key": workload_key(gm, example_inputs, mask),
            "family_key": workload_key(gm, example_inputs, mask, batch_free=True),
            "batch_size": _batch_size(example_inputs, mask)}


def _batch_size(example_inputs: Sequence[Any], mask: Sequence[bool]) -> int | None:
    for x, is_constant in zip(example_inputs, mask):
        if not is_constant and isinstance(x, torch.Tensor) and x.dim():
            return int(x.shape[0])
    return None


def last_compile() -> dict[str, Any] | None:
    """What the most recent compile on this thread applied: ``{"config", "source"}``, the seconds
    its path took (``compile_seconds``, without Dynamo's capture) and the graph's keys
    (``workload_key``, ``family_key``, ``batch_size``)."""
    return getattr(_state, "last", None)
