"""OpenVINO path: the captured graph converted by OpenVINO's PyTorch frontend, run by its CPU plugin.

The converted model is saved as OpenVINO IR in the cache and OpenVINO's own model cache keeps
the compiled blob, so a second process skips both conversion and compilation.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import Any, Callable, Sequence

import torch

from .config import BackendConfig
from .engines import (EngineUnavailable, cached, engine_graph, forget, load_engine,
                      why_unavailable, write_atomically)
from .errors import first_line
from .knobs import INDUCTOR, OPENVINO, engine_settings
from .paths import CompilePath, register

log = logging.getLogger("backend")
TITLE = "OpenVINO"
_core = None
_core_lock = threading.Lock()


def _get_core(ov: Any) -> Any:
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def _convert(ov: Any, graph, target) -> Any:
    def write(tmp):
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the frontend's TorchScript tracer warns per op
            model = ov.convert_model(graph.module, example_input=tuple(graph.user_inputs))
        ov.save_model(model, tmp, compress_to_fp16=False)
    try:
        write_atomically(target, write, suffixes=(".bin",))
    except Exception as exc:  # the frontend raises its own types for ops it lacks
        raise EngineUnavailable(f"OpenVINO cannot convert this graph: {_conversion_summary(exc)}") from exc


def _conversion_summary(error: Exception) -> str:
    """The frontend's "Summary" lines (which ops it has no rule for), else the first line."""
    lines = [line.strip("- ").strip() for line in str(error).splitlines()]
    if "Summary:" in lines:
        return "; ".join(line for line in lines[lines.index("Summary:") + 1:] if line)
    return first_line(error)


def _compile_model(core: Any, target, settings: dict, blobs: str) -> Any:
    """Compile with OpenVINO's blob cache; if that fails (two processes writing one blob), once
    more without it."""
    model = core.read_model(target)
    try:
        return core.compile_model(model, "CPU", {**settings, "CACHE_DIR": blobs})
    except Exception as exc:
        log.info("OpenVINO: compiling with the blob cache failed (%s); compiling without it",
                 first_line(exc))
        return core.compile_model(model, "CPU", settings)


def compile_openvino(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                     config: BackendConfig) -> tuple[Callable, BackendConfig]:
    ov = load_engine("openvino", TITLE)
    graph = engine_graph(gm, example_inputs, TITLE)
    settings = engine_settings(OPENVINO, config)
    settings["INFERENCE_NUM_THREADS"] = settings["INFERENCE_NUM_THREADS"] or torch.get_num_threads()
    target = graph.cache_path(OPENVINO, ".xml", ov.__version__)  # the knobs act at compile_model
    core = _get_core(ov)
    blobs = str(target.parent / "blobs")
    if cached(target):
        try:
            compiled = _compile_model(core, target, settings, blobs)
            log.info("OpenVINO: the converted graph comes from the cache (%s)", target.name)
        except Exception as exc:  # half a pruned entry, a file of another version
            log.info("OpenVINO: cached %s does not load (%s); converting again", target.name,
                     first_line(exc))
            forget(target)
    if not cached(target):
        start = time.perf_counter()
        _convert(ov, graph, target)
        log.info("OpenVINO: converted the graph in %.2f s", time.perf_counter() - start)
        try:
            compiled = _compile_model(core, target, settings, blobs)
        except Exception as exc:
            raise EngineUnavailable(f"OpenVINO cannot compile this graph: {first_line(exc)}") from exc
    requests = threading.local()  # an infer request serves one call at a time

    def run(*args):
        request = getattr(requests, "request", None)
        if request is None:
            request = requests.request = compiled.create_infer_request()
        result = request.infer(graph.numpy_inputs(args), share_inputs=True)
        return graph.outputs([result[output] for output in compiled.outputs])

    graph.check(TITLE, run, low_precision=config.dtype != "float32")
    run.engine = compiled  # for tests and tools that inspect what the engine was given
    return run, config


register(CompilePath(OPENVINO, TITLE, compile_openvino, fallback=INDUCTOR, inference_only=True,
                     unavailable=why_unavailable("openvino", TITLE)))
