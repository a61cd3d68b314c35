"""Every knob, every value: the compiled model matches eager float32, and the knob changes what runs.

Compiles are memoised per (model, options), so the correctness matrix and the effect tests share
them. The matrix is generated from backend.knobs.KNOBS: a new knob is tested without editing here,
and test_every_knob_has_an_effect_probe fails until someone says how to see its effect.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import backend
from backend.knobs import INDUCTOR, KNOBS, TORCHSCRIPT

from models import build

# Documented tolerances (README): float32 is compared tightly; bfloat16 relative to output scale.
FLOAT32_ATOL, FLOAT32_RTOL = 1e-4, 1e-4
BFLOAT16_REL = 0.05

# Knobs that only act inside max_autotune's GEMM template get it switched on; the probes also
# force the template (gemm_backends=CPP) on a linear-only model, which it can cover.
AUTOTUNE_BASE = {"max_autotune": True}
TEMPLATE_BASE = {"max_autotune": True, "gemm_backends": "CPP"}
BASE = {"epilogue_fusion": AUTOTUNE_BASE, "gemm_max_k_slices": AUTOTUNE_BASE, "gemm_backends": AUTOTUNE_BASE,
        "gemm_thread_factors": {**AUTOTUNE_BASE, "threads": 2}}
INT_VALUES = {"min_chunk_size": (1, 512, 65536), "max_horizontal_fusion_size": (1, 16, 64),
              "threads": (0, 1, 2), "interop_threads": (0, 1)}


def values_of(knob):
    if knob.type is bool:
        return (True, False)
    if knob.choices is not None:
        return knob.choices
    return INT_VALUES[knob.name]


def cases():
    for knob in KNOBS.values():
        # GEMM-template knobs act only on GEMMs the template covers: the MLP
        models = ("mlp",) if knob.name in BASE else ("cnn", "transformer")
        for path in sorted(knob.paths):
            if knob.name == "path":
                path = None
            for value in values_of(knob):
                options = {**BASE.get(knob.name, {}), knob.name: value}
                if path is not None:
                    options["path"] = path
                for model in models:
                    yield pytest.param(model, knob.name, options, id=f"{model}-{knob.name}={value}-{path or value}")
            if knob.name == "path":
                break


@dataclass
class Compiled:
    output: object
    artifact: str  # TorchScript: optimized graph; Inductor: generated code
    config: backend.BackendConfig


@functools.lru_cache(maxsize=None)
def _compile(model_name: str, options_items: tuple) -> Compiled:
    model, x = build(model_name)
    torch._dynamo.reset()
    fn = torch.compile(model, backend="ipex", options=dict(options_items))
    with torch.no_grad():
        output, codes = run_and_get_code(fn, x)
        used = backend.last_compile()["config"]
        if used.path == TORCHSCRIPT:
            fn(x)
            artifact = str(torch.jit.last_executed_optimized_graph())
        else:
            artifact = "\n".join(codes)
    return Compiled(output, artifact, used)


def compile_with(model_name: str, **options) -> Compiled:
    # a knob set to its default compiles the same as leaving it out: share that compile. The
    # path stays explicit, so the store and the process-wide default path never take part.
    options = {k: v for k, v in options.items() if k == "path" or v != KNOBS[k].default}
    return _compile(model_name, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=None)
def reference(model_name: str) -> torch.Tensor:
    model, x = build(model_name)
    with torch.no_grad():
        return model(x)


def assert_matches_eager(model_name: str, result: Compiled):
    expected = reference(model_name)
    actual = result.output
    assert actual.dtype == expected.dtype, "outputs keep the caller's dtype"
    if result.config.dtype == "bfloat16":
        err = (actual - expected).abs().max().item()
        assert err <= BFLOAT16_REL * expected.abs().max().item(), err
    else:
        torch.testing.assert_close(actual, expected, atol=FLOAT32_ATOL, rtol=FLOAT32_RTOL)


@pytest.mark.parametrize("model_name,knob_name,options", list(cases()))
def test_every_knob_value_matches_eager(model_name, knob_name, options):
    factors = options.get("gemm_thread_factors", "auto")
    if factors != "auto" and eval(factors.replace(",", "*")) != options["threads"]:
        with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="gemm_thread_factors"):
            compile_with(model_name, **options)
        return
    result = compile_with(model_name, **options)
    assert result.config[knob_name] == options[knob_name]
    if "path" in options:
        assert result.config.path == options["path"], "no silent fallback for these models"
    assert_matches_eager(model_name, result)


def ops(artifact: str) -> set[str]:
    return set(re.findall(r"(?:aten|prim|mkldnn)::\w+", artifact))


def differs(model, knob, a, b, **base):
    return compile_with(model, **base, **{knob: a}).artifact != compile_with(model, **base, **{knob: b}).artifact


# One probe per knob: passes only if the knob changes what runs.
def probe_path():
    assert compile_with("cnn", path=TORCHSCRIPT).config.path == TORCHSCRIPT
    assert "def call(" in compile_with("cnn", path=INDUCTOR).artifact  # Inductor wrapper code
    assert "prim::Constant" in compile_with("cnn", path=TORCHSCRIPT).artifact


def probe_dtype():
    ts = compile_with("cnn", path=TORCHSCRIPT, dtype="bfloat16").artifact
    assert "BFloat16" in ts and "BFloat16" not in compile_with("cnn", path=TORCHSCRIPT).artifact
    ind = compile_with("cnn", path=INDUCTOR, dtype="bfloat16").artifact
    assert "bfloat16" in ind and "bfloat16" not in compile_with("cnn", path=INDUCTOR).artifact


def probe_weights_prepack():
    on = ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False, weights_prepack=True).artifact)
    off = ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False, weights_prepack=False).artifact)
    assert "prim::mkldnn_convolution" in on and "prim::mkldnn_convolution" not in off
    # Inductor fixes weight packing per process: each value gets a fresh interpreter
    for prepack in (True, False):
        code = ("import torch, sys; sys.path.insert(0, 'tests'); from models import build; "
                "from torch._inductor.utils import run_and_get_code; m, x = build('cnn'); "
                f"f = torch.compile(m, backend='ipex', options={{'path': 'inductor', 'weights_prepack': {prepack}}}); "
                "torch.no_grad().__enter__(); out, code = run_and_get_code(f, x); "
                "print(code[0].count('_reorder_convolution_weight'), (out - m(x)).abs().max().item())")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                                cwd=os.path.dirname(os.path.dirname(__file__)))
        assert result.returncode == 0, result.stderr[-2000:]
        reorders, err = result.stdout.split()[-2:]
        assert (int(reorders) > 0) == prepack and float(err) < 1e-4


def probe_channels_last():
    assert differs("cnn", "channels_last", True, False, path=TORCHSCRIPT)
    assert differs("cnn", "channels_last", True, False, path=INDUCTOR)


def probe_conv_bn_folding():
    assert "aten::batch_norm" not in compile_with("cnn", path=TORCHSCRIPT, conv_bn_folding=True).artifact
    assert "aten::batch_norm" in compile_with("cnn", path=TORCHSCRIPT, conv_bn_folding=False).artifact


def probe_linear_bn_folding():
    assert "aten::batch_norm" not in compile_with("linear_bn", path=TORCHSCRIPT, linear_bn_folding=True).artifact
    assert "aten::batch_norm" in compile_with("linear_bn", path=TORCHSCRIPT, linear_bn_folding=False).artifact


def probe_optimize_for_inference():
    on = ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False, optimize_for_inference=True,
                       weights_prepack=False).artifact)
    off = ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False, optimize_for_inference=False,
                        weights_prepack=False).artifact)
    assert "prim::mkldnn_convolution" in on and "prim::mkldnn_convolution" not in off


def probe_onednn_fusion():
    assert any(o.startswith("prim::oneDNNFusionGroup") for o in
               ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=True).artifact))
    assert not any(o.startswith("prim::oneDNNFusionGroup") for o in
                   ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False).artifact))


def probe_freezing():
    # frozen weights become constants baked into the compiled module
    assert "_frozen_param" in compile_with("cnn", path=INDUCTOR, freezing=True).artifact
    assert "_frozen_param" not in compile_with("cnn", path=INDUCTOR, freezing=False).artifact


def probe_max_autotune():
    assert "kernel_micro_gemm" in compile_with("mlp", path=INDUCTOR, **TEMPLATE_BASE).artifact
    assert "kernel_micro_gemm" not in compile_with("mlp", path=INDUCTOR, max_autotune=False).artifact


def probe_gemm_backends():
    # CPP alone forces the template, and fails where it has no kernel (the attention bmm)
    assert "kernel_micro_gemm" in compile_with("mlp", path=INDUCTOR, **TEMPLATE_BASE).artifact
    compile_with("transformer", path=INDUCTOR, max_autotune=True, gemm_backends="CPP,ATEN")
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="No choices"):
        compile_with("transformer", path=INDUCTOR, **TEMPLATE_BASE)


def probe_epilogue_fusion():
    assert differs("mlp", "epilogue_fusion", True, False, path=INDUCTOR, **TEMPLATE_BASE)


def probe_pattern_matcher():
    assert differs("cnn", "pattern_matcher", True, False, path=INDUCTOR)


def probe_simdlen():
    assert differs("transformer", "simdlen", "256", "512", path=INDUCTOR)


def probe_tiling_heuristics():
    assert differs("transformer", "tiling_heuristics", True, False, path=INDUCTOR)


def probe_min_chunk_size():
    assert differs("transformer", "min_chunk_size", 1, 65536, path=INDUCTOR)


def probe_max_horizontal_fusion_size():
    assert differs("transformer", "max_horizontal_fusion_size", 1, 64, path=INDUCTOR)


def probe_cpp_wrapper():
    assert differs("cnn", "cpp_wrapper", True, False, path=INDUCTOR)


def probe_gemm_max_k_slices():
    assert differs("mlp", "gemm_max_k_slices", 1, 4, path=INDUCTOR, **TEMPLATE_BASE)


def probe_gemm_thread_factors():
    assert differs("mlp", "gemm_thread_factors", "1,2,1", "2,1,1", path=INDUCTOR,
                   **TEMPLATE_BASE, threads=2)


def probe_threads():
    from models import SEEN_THREADS
    for path in (TORCHSCRIPT, INDUCTOR):
        for threads in (1, 2):
            model, x = build("thread_probe")
            torch._dynamo.reset()
            fn = torch.compile(model, backend="ipex", options={"path": path, "threads": threads})
            with torch.no_grad():
                fn(x)
                SEEN_THREADS.clear()
                fn(x)
            assert SEEN_THREADS == [threads], (path, threads)


def probe_interop_threads():
    # inter-op threads are process-wide and fixed once used: only a fresh process shows the effect
    code = ("import torch; m = torch.nn.Linear(4, 4).eval(); "
            "f = torch.compile(m, backend='ipex', options={'interop_threads': 3}); "
            "f(torch.randn(2, 4)); print(torch.get_num_interop_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "3"


PROBES = {name[len("probe_"):]: fn for name, fn in globals().items() if name.startswith("probe_")}


def test_every_knob_has_an_effect_probe():
    assert set(KNOBS) == set(PROBES)


@pytest.mark.parametrize("knob_name", sorted(KNOBS))
def test_knob_changes_what_runs(knob_name):
    PROBES[knob_name]()
