"""Inductor path: compile_fx with the config's knobs patched into torch._inductor.config."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .config import BackendConfig
from .graph import compute_autocast, intra_op_threads


def inductor_patches(config: BackendConfig) -> dict[str, Any]:
    """torch._inductor.config entries for this config; the only reader of Inductor knobs."""
    patches: dict[str, Any] = {
        "freezing": config.freezing,
        "cpp.weight_prepack": config.weights_prepack,
        "layout_optimization": config.channels_last,
        "epilogue_fusion": config.epilogue_fusion,
        "pattern_matcher": config.pattern_matcher,
        "cpp.simdlen": None if config.simdlen == "auto" else int(config.simdlen),
        "cpp.enable_tiling_heuristics": config.tiling_heuristics,
        "cpp.min_chunk_size": config.min_chunk_size,
        "cpp.max_horizontal_fusion_size": config.max_horizontal_fusion_size,
        "cpp_wrapper": config.cpp_wrapper,
        "cpp.gemm_max_k_slices": config.gemm_max_k_slices,
        "cpp.gemm_thread_factors": None if config.gemm_thread_factors == "auto"
        else config.gemm_thread_factors,
    }
    if config.max_autotune:
        patches["max_autotune"] = True
        patches["max_autotune_gemm_backends"] = "CPP,ATEN"
    if config.threads:
        patches["cpp.threads"] = config.threads
    return patches


def compile_inductor(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                     config: BackendConfig) -> Callable:
    from torch._inductor.compile_fx import compile_fx

    with intra_op_threads(config.threads), compute_autocast(config.dtype):
        compiled = compile_fx(gm, list(example_inputs), config_patches=inductor_patches(config))
    if not config.threads:
        return compiled

    threads = config.threads

    def run(*args):
        with intra_op_threads(threads):
            return compiled(*args)
    return run
