"""Inductor path: compile_fx with the config's knobs patched into torch._inductor.config; int8
through torchao's PT2E quantization first."""

from __future__ import annotations

import hashlib
import io
import warnings
from typing import Any, Callable, Sequence

import torch

from . import quantization
from .config import BackendConfig
from .engines import cache_root, load_engine, weights_digest, write_atomically
from .errors import first_line
from .graph import (LIFTED_PREFIX, compute_autocast, constant_mask, graph_tensors, input_names,
                    intra_op_threads, lift_constants, non_tensor_inputs)
from .knobs import INDUCTOR, UNSET, InductorOption, knobs_for_path
from .notices import warn_once
from .paths import CompilePath, register


def inductor_patches(config: BackendConfig) -> dict[str, Any]:
    """torch._inductor.config entries for this config, as the knobs declare them (``lands``)."""
    patches: dict[str, Any] = {}
    for knob in knobs_for_path(INDUCTOR):
        for landing in knob.lands:
            if isinstance(landing, InductorOption) and (
                    landing.only_with is None or config[landing.only_with]):
                value = landing.convert(config[knob.name])
                if value is not UNSET:
                    patches[landing.key] = value
    return patches


# Inductor registers its weight-packing patterns once per process, at the first frozen compile,
# reading cpp.weight_prepack then; later compiles cannot change it. Remember what took effect.
_prepack_registered: bool | None = None


def _note_weight_prepack(wanted: bool) -> None:
    global _prepack_registered
    from torch._inductor.fx_passes import freezing_patterns

    if _prepack_registered is None:
        cache_info = getattr(freezing_patterns.lazy_init, "cache_info", None)
        already = cache_info is not None and cache_info().currsize > 0
        _prepack_registered = torch._inductor.config.cpp.weight_prepack if already else wanted
    if _prepack_registered != wanted:
        warn_once("prepack", f"ipex backend: weights_prepack={wanted} cannot take effect on the "
                  f"Inductor path in this process (Inductor fixed it to {_prepack_registered} at the "
                  "first frozen compile); run the model in its own process to change it")


def compile_inductor(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                     config: BackendConfig) -> tuple[Callable, BackendConfig]:
    if config.dtype == quantization.INT8:
        return _compile_int8(gm, example_inputs, config), config
    return _compile(gm, example_inputs, config), config


def _compile_int8(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                  config: BackendConfig) -> Callable:
    """torchao's PT2E flow (export, X86InductorQuantizer, calibrate, convert), then Inductor with
    freezing, which lowers the quantized patterns to oneDNN's int8 kernels."""
    from torch._inductor.compile_fx import compile_fx

    if torch.is_grad_enabled() and any(t.requires_grad for t in graph_tensors(gm, example_inputs)):
        raise quantization.Int8Unavailable("int8 is for inference; this graph needs gradients")
    mask = constant_mask(gm, example_inputs)
    bad = non_tensor_inputs(example_inputs, mask)
    if bad:
        raise quantization.Int8Unavailable(f"graph takes non-tensor inputs ({', '.join(bad)}: "
                                           "symbolic shapes), and a quantized graph has fixed ones")
    module, positions = _with_weights_as_parameters(*lift_constants(gm, example_inputs))
    user_inputs = [example_inputs[i] for i in positions]
    converted, quantized = _quantized(module, user_inputs, input_names(gm, positions),
                                      weights_digest(gm, example_inputs, mask), config)
    load_engine("torchao.quantization.pt2e.inductor_passes.x86", "torchao")  # its lowering passes
    with intra_op_threads(config.threads), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the int8 lowering warns per weight about tensor copies
        compiled = compile_fx(converted, list(user_inputs),
                              config_patches={**inductor_patches(config), "freezing": True})
    threads = config.threads

    def run(*args):
        with intra_op_threads(threads):
            return compiled(*[args[i] for i in positions])
    run.quantized = quantized
    return run


def _with_weights_as_parameters(module: torch.fx.GraphModule, positions: list[int]):
    """PT2E folds batch norms into convolution weights it registers as parameters."""
    for name, tensor in list(module.named_buffers()):
        if name.startswith(LIFTED_PREFIX):
            del module._buffers[name]
            module.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
    return module, positions


def _quantized(module: torch.fx.GraphModule, user_inputs: list[torch.Tensor],
               user_names: list[str | None], weights: str, config: BackendConfig) -> tuple[torch.fx.GraphModule, quantization.QuantizedModel]:
    """The converted graph: the stored one the lookup handed over if its weights are these,
    else quantized on the calibration batches. Both as a saved ExportedProgram."""
    stored = quantization.stored_model(INDUCTOR, weights)
    if stored is not None:
        program = torch.export.load(io.BytesIO(stored.files["model.pt2"]))
        return program.module(), stored
    batches = quantization.calibration_batches()
    if batches is None:
        raise quantization.Int8Unavailable(quantization.NO_CALIBRATION)
    batches = quantization.matching_batches(batches, user_inputs, user_names)
    pt2e = load_engine("torchao.quantization.pt2e.quantize_pt2e", "torchao")
    x86 = load_engine("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "torchao")
    quantizer = x86.X86InductorQuantizer().set_global(
        x86.get_default_x86_inductor_quantization_config(
            is_dynamic=config.pt2e_int8_activations == "dynamic"))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = torch.export.export(module, tuple(user_inputs), strict=False).module()
            prepared = pt2e.prepare_pt2e(exported, quantizer)
            for batch in batches:
                prepared(*batch)
            converted = pt2e.convert_pt2e(prepared)
            saved = io.BytesIO()
            torch.export.save(torch.export.export(converted, tuple(user_inputs), strict=False), saved)
    except Exception as exc:  # export and the quantizer raise their own types
        raise quantization.Int8Unavailable(f"torchao could not quantize this graph: "
                                           f"{first_line(exc)}") from exc
    blob = saved.getvalue()
    # a file for the tuner to store with the record, as the engines leave theirs
    target = cache_root() / INDUCTOR / f"{hashlib.blake2b(blob, digest_size=16).hexdigest()}.pt2"
    write_atomically(target, lambda tmp: tmp.write_bytes(blob))
    return converted, quantization.QuantizedModel(INDUCTOR, weights, {"model.pt2": blob},
                                                  (("model.pt2", str(target)),))


def _compile(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
             config: BackendConfig) -> Callable:
    from torch._inductor.compile_fx import compile_fx

    positions = None
    if config.freezing and not torch.is_grad_enabled():
        _note_weight_prepack(config.weights_prepack)
        gm, positions = lift_constants(gm, example_inputs)
        example_inputs = [example_inputs[i] for i in positions]
    with intra_op_threads(config.threads), compute_autocast(config.dtype):
        compiled = compile_fx(gm, list(example_inputs), config_patches=inductor_patches(config))
    if not config.threads and positions is None:
        return compiled

    threads = config.threads

    def run(*args):
        if positions is not None:
            args = [args[i] for i in positions]
        with intra_op_threads(threads):
            return compiled(*args)
    return run


register(CompilePath(INDUCTOR, "Inductor", compile_inductor))
