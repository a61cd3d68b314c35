"""OpenVINO path: the captured graph converted by OpenVINO's PyTorch frontend, run by its CPU plugin.

The converted model is saved as OpenVINO IR in the cache and OpenVINO's own model cache keeps
the compiled blob, so a second process skips both conversion and compilation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import threading
import time
import warnings
from typing import Any, Callable, Sequence

import torch

from . import quantization
from .config import BackendConfig
from .engines import (EngineUnavailable, cached, engine_graph, forget, load_engine,
                      why_unavailable, write_atomically)
from .errors import first_line
from .knobs import INDUCTOR, OPENVINO, engine_settings
from .paths import CompilePath, register
from .quantization import Int8Unavailable

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


def _ensure_converted(ov: Any, graph, target) -> None:
    if not cached(target):
        start = time.perf_counter()
        _convert(ov, graph, target)
        log.info("OpenVINO: converted the graph in %.2f s", time.perf_counter() - start)


def _int8_model(ov: Any, core: Any, graph, float_target, config: BackendConfig) -> tuple[Any, Any]:
    """(the quantized IR's path, the QuantizedModel for the store): the stored one the lookup
    handed over if its weights are these, else NNCF's quantization on the calibration batches."""
    stored = quantization.stored_model(OPENVINO, graph.weights_digest)
    if stored is not None:
        target = graph.cache_path(OPENVINO, ".xml", [ov.__version__, "int8 stored",
                                                     _digest(*stored.files.values())])
        if not cached(target):
            write_atomically(target, lambda tmp: _write_files(tmp, stored.files), suffixes=(".bin",))
        log.info("OpenVINO: int8 model from the store (%.1f MB)", stored.size / 1e6)
        return target, dataclasses.replace(stored, paths=_ir_paths(target))
    batches = quantization.calibration_batches()
    if batches is None:
        raise Int8Unavailable(quantization.NO_CALIBRATION)
    batches = quantization.matching_batches(batches, graph.user_inputs, graph.user_names)
    nncf = load_engine("nncf", "NNCF")
    target = graph.cache_path(OPENVINO, ".xml", [
        ov.__version__, nncf.__version__, "int8", config.ov_int8_preset, config.ov_int8_model_type,
        _digest(*(t.contiguous().numpy().tobytes() for batch in batches for t in batch))])
    if not cached(target):
        _ensure_converted(ov, graph, float_target)
        start = time.perf_counter()

        def quantize(tmp):
            dataset = nncf.Dataset([[t.contiguous().numpy() for t in batch] for batch in batches])
            model_type = nncf.ModelType.TRANSFORMER if config.ov_int8_model_type == "transformer" else None
            preset = nncf.QuantizationPreset(config.ov_int8_preset)
            # NNCF draws progress bars on stdout, which belongs to the user's program
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                quantized = nncf.quantize(core.read_model(float_target), dataset, preset=preset,
                                          model_type=model_type, subset_size=len(batches))
            ov.save_model(quantized, tmp, compress_to_fp16=False)
        try:
            write_atomically(target, quantize, suffixes=(".bin",))
        except Exception as exc:
            raise Int8Unavailable(f"NNCF could not quantize this graph: {first_line(exc)}") from exc
        log.info("OpenVINO: NNCF quantized the graph to int8 on %d batches in %.2f s",
                 len(batches), time.perf_counter() - start)
    files = {name: target.with_suffix(suffix).read_bytes()
             for name, suffix in (("model.xml", ".xml"), ("model.bin", ".bin"))}
    return target, quantization.QuantizedModel(OPENVINO, graph.weights_digest, files, _ir_paths(target))


def _ir_paths(target) -> tuple[tuple[str, str], ...]:
    return (("model.xml", str(target)), ("model.bin", str(target.with_suffix(".bin"))))


def _digest(*blobs: bytes) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for blob in blobs:
        digest.update(blob)
    return digest.hexdigest()


def _write_files(tmp, files: dict) -> None:
    tmp.with_suffix(".bin").write_bytes(files["model.bin"])
    tmp.write_bytes(files["model.xml"])


def _compiled_float(ov: Any, core: Any, graph, target, settings: dict, blobs: str) -> Any:
    if cached(target):
        try:
            compiled = _compile_model(core, target, settings, blobs)
            log.info("OpenVINO: the converted graph comes from the cache (%s)", target.name)
            return compiled
        except Exception as exc:  # half a pruned entry, a file of another version
            log.info("OpenVINO: cached %s does not load (%s); converting again", target.name,
                     first_line(exc))
            forget(target)
    _ensure_converted(ov, graph, target)
    try:
        return _compile_model(core, target, settings, blobs)
    except Exception as exc:
        raise EngineUnavailable(f"OpenVINO cannot compile this graph: {first_line(exc)}") from exc


def compile_openvino(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                     config: BackendConfig) -> tuple[Callable, BackendConfig]:
    ov = load_engine("openvino", TITLE)
    graph = engine_graph(gm, example_inputs, TITLE)
    settings = engine_settings(OPENVINO, config)
    settings["INFERENCE_NUM_THREADS"] = settings["INFERENCE_NUM_THREADS"] or torch.get_num_threads()
    target = graph.cache_path(OPENVINO, ".xml", ov.__version__)  # the knobs act at compile_model
    core = _get_core(ov)
    blobs = str(target.parent / "blobs")
    quantized = None
    if config.dtype == quantization.INT8:
        target, quantized = _int8_model(ov, core, graph, target, config)
        try:
            compiled = _compile_model(core, target, settings, blobs)
        except Exception as exc:
            forget(target)  # made again by the next compile
            raise EngineUnavailable(f"OpenVINO cannot compile the int8 model: {first_line(exc)}") from exc
    else:
        compiled = _compiled_float(ov, core, graph, target, settings, blobs)
    requests = threading.local()  # an infer request serves one call at a time

    def run(*args):
        request = getattr(requests, "request", None)
        if request is None:
            request = requests.request = compiled.create_infer_request()
        result = request.infer(graph.numpy_inputs(args), share_inputs=True)
        return graph.outputs([result[output] for output in compiled.outputs])

    # int8 answers to the accuracy gate on the user's data, not to random example inputs
    graph.check(TITLE, run, low_precision=config.dtype != "float32", compare=quantized is None)
    run.engine = compiled  # for tests and tools that inspect what the engine was given
    if quantized is not None:
        run.quantized = quantized
    return run, config


register(CompilePath(OPENVINO, TITLE, compile_openvino, fallback=INDUCTOR, inference_only=True,
                     unavailable=why_unavailable("openvino", TITLE)))
