"""ONNX Runtime path: the captured graph exported by torch's ONNX exporter, run by ONNX Runtime's
CPU provider.

ONNX Runtime writes the model it optimized for this config into the cache; a second process
loads that file with optimization off instead of exporting and optimizing again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from typing import Any, Callable, Sequence

import torch

from .config import BackendConfig
from .engines import (EngineUnavailable, cached, engine_graph, forget, load_engine,
                      why_unavailable, write_atomically)
from .errors import first_line
from .knobs import INDUCTOR, ONNXRUNTIME, engine_settings
from .paths import CompilePath, register

log = logging.getLogger("backend")
TITLE = "ONNX Runtime"
SPINNING = "session.intra_op.allow_spinning"


def _export(graph, target) -> None:
    names = [f"input_{i}" for i in range(len(graph.user_inputs))]

    def write(tmp):
        # the exporter reports each step on stdout and warns about what it decomposes
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph.module, tuple(graph.user_inputs), str(tmp), dynamo=True,
                              input_names=names, external_data=False, verbose=False)
    try:
        write_atomically(target, write)
    except Exception as exc:
        root = exc  # the exporter wraps the op it has no function for in two layers of advice
        while root.__cause__ is not None:
            root = root.__cause__
        raise EngineUnavailable(f"torch.onnx.export cannot export this graph: {first_line(root)}") from exc


def _session_options(ort: Any, config: BackendConfig, optimized_to: str | None) -> Any:
    settings = engine_settings(ONNXRUNTIME, config)
    options = ort.SessionOptions()
    threads = settings["intra_op_num_threads"] or torch.get_num_threads()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads  # parallel mode's pool: no more cores than asked for
    options.enable_mem_pattern = settings["enable_mem_pattern"]
    options.enable_cpu_mem_arena = settings["enable_cpu_mem_arena"]
    options.execution_mode = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
                              "parallel": ort.ExecutionMode.ORT_PARALLEL}[settings["execution_mode"]]
    options.add_session_config_entry(SPINNING, "1" if settings[SPINNING] else "0")
    options.log_severity_level = 3  # its warnings are about its own file format, not the user's model
    if optimized_to is None:  # a cached model is already optimized for this config
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[settings["graph_optimization_level"]]
        options.optimized_model_filepath = optimized_to
    return options


def _session(ort: Any, graph, config: BackendConfig) -> Any:
    # only the optimization level changes the optimized file; the other knobs act on the session
    optimized = graph.cache_path(ONNXRUNTIME, ".onnx",
                                 [config.ort_optimization_level, ort.__version__, torch.__version__])
    try:
        if cached(optimized):
            try:
                session = ort.InferenceSession(str(optimized), _session_options(ort, config, None),
                                               providers=["CPUExecutionProvider"])
                log.info("ONNX Runtime: the optimized model comes from the cache (%s)",
                         optimized.name)
                return session
            except Exception as exc:  # a file of another version, a disk error
                log.info("ONNX Runtime: cached %s does not load (%s); optimizing again",
                         optimized.name, first_line(exc))
                forget(optimized)
        exported = graph.cache_path(ONNXRUNTIME, ".exported.onnx", torch.__version__)
        start = time.perf_counter()
        if not cached(exported):
            _export(graph, exported)

        def optimize(tmp):
            ort.InferenceSession(str(exported), _session_options(ort, config, str(tmp)),
                                 providers=["CPUExecutionProvider"])
        write_atomically(optimized, optimize)
        log.info("ONNX Runtime: exported and optimized the graph in %.2f s",
                 time.perf_counter() - start)
        return ort.InferenceSession(str(optimized), _session_options(ort, config, None),
                                    providers=["CPUExecutionProvider"])
    except EngineUnavailable:
        raise
    except Exception as exc:
        raise EngineUnavailable(f"ONNX Runtime cannot load this graph: {first_line(exc)}") from exc


def compile_onnxruntime(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                        config: BackendConfig) -> tuple[Callable, BackendConfig]:
    ort = load_engine("onnxruntime", TITLE)
    graph = engine_graph(gm, example_inputs, TITLE)
    session = _session(ort, graph, config)
    # by name: the model's inputs are whatever the exporter kept, in its order
    positions = {f"input_{i}": p for i, p in enumerate(graph.user_positions)}
    wanted = [(i.name, positions[i.name]) for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]

    def run(*args):
        feeds = {name: args[p].detach().contiguous().numpy() for name, p in wanted}
        return graph.outputs(session.run(output_names, feeds))

    graph.check(TITLE, run, low_precision=False)
    run.engine = session  # for tests and tools that inspect what the engine was given
    return run, config


register(CompilePath(ONNXRUNTIME, TITLE, compile_onnxruntime, fallback=INDUCTOR,
                     inference_only=True, unavailable=why_unavailable("onnxruntime", TITLE)))
