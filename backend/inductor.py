"""Inductor path: compile_fx with the config's knobs patched into torch._inductor.config."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .config import BackendConfig
from .graph import compute_autocast, intra_op_threads, lift_constants
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
    return _compile(gm, example_inputs, config), config


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
