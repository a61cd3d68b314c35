"""Every knob, every value: the compiled model matches eager float32, and the knob changes what runs.

Compiles are memoised per (model, options), so the correctness matrix, the effect probes and the
mutation tests share them. The matrix is generated from backend.knobs.KNOBS: a new knob is tested
without editing here, and test_every_knob_has_an_effect_probe fails until someone says how to see
its effect.

A probe asserts the knob's own effect, value by value (the vector width of the generated
kernels, which loops run in parallel, how a GEMM template splits its work over threads, the
wrapper's language, ...). "The two compiles differ" proves nothing: two compiles of the same
graph with the same options already differ (Inductor's process-wide AOT ID, object addresses,
TorchScript's mangled class names). test_same_options_compile_to_the_same_code is the control:
after normalise() they are equal. test_probe_fails_when_wiring_is_disabled is the proof: with the
knob's wiring taken out of its compile path, its probe fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import backend
import backend.compiler
import backend.config
import backend.inductor
import backend.paths
from backend.errors import KnobError, UnsupportedOnThisCPU
from backend.knobs import INDUCTOR, KNOBS, TORCHSCRIPT

from models import Branches, build

pytestmark = pytest.mark.parallel  # times nothing: runs beside other tests

# Documented tolerances (README): float32 is compared tightly; bfloat16 relative to output scale.
FLOAT32_ATOL, FLOAT32_RTOL = 1e-4, 1e-4
BFLOAT16_REL = 0.05

# Probes that look at parallel loops or GEMM thread splits pin the thread count they depend on.
THREADS = 2
# max_autotune with the C++ GEMM template as the only choice: no benchmarking picks the kernel.
TEMPLATE_BASE = {"max_autotune": True, "gemm_backends": "CPP"}
# Inductor's simdlen=auto follows ATEN_CPU_CAPABILITY; under "default" it generates scalar code
# on any CPU, so a simdlen that takes effect shows even where auto is 256 bits anyway (AVX2).
SCALAR_ENV = {"ATEN_CPU_CAPABILITY": "default"}
INT_VALUES = {"min_chunk_size": (1, 512, 65536), "max_horizontal_fusion_size": (1, 16, 64),
              "threads": (0, 1, 2), "interop_threads": (0, 1)}


@dataclass(frozen=True)
class Setting:
    """Where a knob's effect shows: the models its matrix cases and its probe compile, the other
    options they compile with (``path_base``: on that path only) and the compile's environment."""

    models: tuple[str, ...] = ("cnn", "transformer")
    base: dict = field(default_factory=dict)
    path_base: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def options(self, path: str | None) -> dict:
        return {**self.base, **self.path_base.get(path, {})}


SETTINGS = {
    # knobs of convolutions and BatchNorm: only models that have them
    "conv_bn_folding": Setting(("cnn",)),
    "linear_bn_folding": Setting(("linear_bn",)),
    # Frozen, Inductor gives convolutions to oneDNN prepacked, which is channels-last whatever
    # layout_optimization says (same code either way): the knob shows on the unfrozen graph.
    "channels_last": Setting(("cnn",), path_base={INDUCTOR: {"freezing": False}}),
    # Inductor-only knobs: one model, one where the knob has an effect
    "freezing": Setting(("cnn",)),
    "max_autotune": Setting(("mlp",), {"gemm_backends": "CPP"}),
    "gemm_backends": Setting(("mlp",), {"max_autotune": True}),
    "epilogue_fusion": Setting(("mlp",), TEMPLATE_BASE),
    "pattern_matcher": Setting(("cnn",)),
    "simdlen": Setting(("branches",), env=SCALAR_ENV),
    "tiling_heuristics": Setting(("subsample",)),
    "min_chunk_size": Setting(("transformer",), {"threads": THREADS}),
    "max_horizontal_fusion_size": Setting(("branches",)),
    "cpp_wrapper": Setting(("cnn",)),
    "gemm_max_k_slices": Setting(("head",), {**TEMPLATE_BASE, "threads": THREADS}),
    "gemm_thread_factors": Setting(("mlp",), {**TEMPLATE_BASE, "threads": THREADS}),
}
DEFAULT_SETTING = Setting()

# The torch paths: a knob's effect is read from the TorchScript graph or the Inductor code they
# produce. The engines report the settings they were given themselves (tests/test_engines.py).
TORCH_PATHS = frozenset({TORCHSCRIPT, INDUCTOR})
# int8 needs calibration data and is probed with it in tests/test_int8.py, its knobs too
TORCH_KNOBS = {name: knob for name, knob in KNOBS.items()
               if knob.paths & TORCH_PATHS and knob.dtypes is None}


def setting_of(knob_name: str) -> Setting:
    return SETTINGS.get(knob_name, DEFAULT_SETTING)


def values_of(knob):
    if knob.name == "path":
        return tuple(path for path in knob.choices if path in TORCH_PATHS)
    if knob.type is bool:
        return (True, False)
    if knob.choices is not None:
        return tuple(c for c in knob.choices if not (knob.name == "dtype" and c == "int8"))
    return INT_VALUES[knob.name]


def cpu_refusal(options: dict) -> str | None:
    """Why this CPU cannot run these options (a value needing an ISA it lacks), else None."""
    try:
        backend.BackendConfig(options)
    except UnsupportedOnThisCPU as exc:
        return str(exc)
    except KnobError:  # not the CPU's doing (factors for other threads): the caller checks it
        return None
    return None


def cases():
    for knob in TORCH_KNOBS.values():
        setting = setting_of(knob.name)
        for path in ([None] if knob.name == "path" else sorted(knob.paths & TORCH_PATHS)):
            for value in values_of(knob):
                options = {**setting.options(path), knob.name: value}
                if path is not None:
                    options["path"] = path
                for model in setting.models:
                    yield pytest.param(model, knob.name, options, id=f"{model}-{knob.name}={value}-{path or value}")


@dataclass
class Compiled:
    output: object
    artifact: str  # TorchScript: optimized graph; Inductor: generated code
    config: backend.BackendConfig


@contextlib.contextmanager
def environment(env: dict):
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _compile_now(model_name: str, options: dict, env: dict, fresh: bool = False) -> Compiled:
    model, x = build(model_name)
    torch._dynamo.reset()
    fn = torch.compile(model, backend="ipex", options=options)
    # Inductor's FX graph cache keys a graph without the environment; ``fresh`` regenerates code
    with environment(env), torch._inductor.config.patch(fx_graph_cache=not (env or fresh)), torch.no_grad():
        output, codes = run_and_get_code(fn, x)
        used = backend.last_compile()["config"]
        if used.path == TORCHSCRIPT:
            fn(x)
            artifact = str(torch.jit.last_executed_optimized_graph())
        else:
            artifact = "\n".join(codes)
    return Compiled(output, artifact, used)


@functools.lru_cache(maxsize=None)
def _compile(model_name: str, options_items: tuple, env_items: tuple, mutation: tuple | None) -> Compiled:
    return _compile_now(model_name, dict(options_items), dict(env_items))


# (knob, path) whose wiring test_probe_fails_when_wiring_is_disabled has taken out, if any
_mutation: tuple[str, str] | None = None


def compile_with(model_name: str, *, env: dict | None = None, fresh: bool = False, **options) -> Compiled:
    # a knob set to its default compiles the same as leaving it out: share that compile. The
    # path stays explicit, so the store and the process-wide default path never take part.
    options = {k: v for k, v in options.items() if k == "path" or v != KNOBS[k].default}
    if fresh:
        return _compile_now(model_name, options, env or {}, fresh=True)
    mutation = _mutation if _mutation and options["path"] == _mutation[1] else None
    return _compile(model_name, tuple(sorted(options.items())), tuple(sorted((env or {}).items())), mutation)


def knob_compile(knob_name: str, value, model_name: str | None = None, path: str = INDUCTOR) -> Compiled:
    """Compile ``value`` of the knob in its setting (the matrix's compile: probes share it)."""
    setting = setting_of(knob_name)
    return compile_with(model_name or setting.models[0], env=setting.env,
                        **{**setting.options(path), knob_name: value, "path": path})


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
    if cpu_refusal(options):
        # this CPU lacks what the value needs: then the check is that the backend refuses it,
        # naming the missing feature, rather than compiling something else silently
        model, x = build(model_name)
        torch._dynamo.reset()
        with pytest.raises(Exception, match=r"needs CPU feature\(s\) .* which this CPU lacks"):
            with torch.no_grad():
                torch.compile(model, backend="ipex", options=options)(x)
        return
    env = setting_of(knob_name).env
    factors = options.get("gemm_thread_factors", "auto")
    if not KNOBS["gemm_thread_factors"].fits_threads(factors, options.get("threads")):
        with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="gemm_thread_factors"):
            compile_with(model_name, env=env, **options)
        return
    result = compile_with(model_name, env=env, **options)
    assert result.config[knob_name] == options[knob_name]
    if "path" in options:
        assert result.config.path == options["path"], "no silent fallback for these models"
    assert_matches_eager(model_name, result)


# --- what the probes read -------------------------------------------------------------------

def normalise(artifact: str) -> str:
    """The artifact without what differs between two compiles of one graph with the same options:
    Inductor's process-wide AOT ID, object addresses, TorchScript's mangled class names and the
    names of FX's generated modules."""
    artifact = re.sub(r"^# AOT ID: .*$", "# AOT ID", artifact, flags=re.M)
    artifact = re.sub(r"\b(?:0x)?[0-9a-f]{10,16}\b", "<address>", artifact)
    artifact = re.sub(r"___torch_mangle_\d+", "___torch_mangle", artifact)
    return re.sub(r"<eval_with_key>\.\d+", "<eval_with_key>", artifact)


def ops(artifact: str) -> set[str]:
    return set(re.findall(r"(?:aten|prim|mkldnn)::\w+", artifact))


def kernels(code: str) -> list[str]:
    """The C++ source of each kernel in Inductor's (Python) wrapper code."""
    return re.findall(r"^cpp_fused_\w+ = async_compile\.cpp_pybinding\(\[.*?\], r'''(.*?)'''\)", code,
                      flags=re.M | re.S)


_SHAPE_STRIDE = re.compile(r"\((\d+), (\d+), (\d+), (\d+)\), \((\d+), (\d+), (\d+), (\d+)\)"  # Inductor
                           r"|\((\d+), (\d+), (\d+), (\d+), strides=\[(\d+), (\d+), (\d+), (\d+)\]")  # TorchScript


def memory_formats(artifact: str) -> set[str]:
    """Layouts of the 4-D tensors the artifact states sizes and strides for (Inductor's buffers,
    TorchScript's profiled types); tensors whose strides fit both layouts are left out."""
    found = set()
    for match in _SHAPE_STRIDE.finditer(artifact):
        numbers = [int(g) for g in match.groups() if g is not None]
        (n, c, h, w), strides = numbers[:4], tuple(numbers[4:])
        if c == 1 or h * w == 1:
            continue
        if strides == (c * h * w, h * w, w, 1):
            found.add("contiguous")
        elif strides == (h * w * c, 1, w * c, c):
            found.add("channels_last")
    return found


def conv_calls(code: str) -> list[str]:
    """Arguments of the oneDNN convolution calls in Inductor's wrapper."""
    return re.findall(r"^\s*\w+ = torch\.ops\.mkldnn\._convolution_pointwise\.\w+\((.*)\)$", code, flags=re.M)


def fused_into_convolutions(code: str) -> set[str]:
    """The pointwise ops oneDNN's convolutions apply themselves (their unary/binary attributes)."""
    return {name for call in conv_calls(code) for name in re.findall(r"'(\w+)'", call)} - {"none"}


def vector_widths(code: str) -> set[int]:
    """Lanes of the full-width float vector loads of the generated kernels (tails excluded)."""
    return {int(n) for n in re.findall(r"Vectorized<float>::loadu\([^;]*, static_cast<int64_t>\((\d+)\)\);", code)}


def loop_parallelism(code: str) -> tuple[int, int]:
    """(loops shared out over threads, kernels or loops one thread runs alone)."""
    sources = kernels(code)
    shared = sum(src.count("#pragma omp for") for src in sources)
    alone = sum(src.count("#pragma omp single") + ("#pragma omp parallel" not in src) for src in sources)
    return shared, alone


def loop_nests(code: str) -> int:
    return sum(len(re.findall(r"for\(int64_t x0=", src)) for src in kernels(code))


def gemm_thread_splits(code: str) -> list[tuple[int, int, int]]:
    """For each C++ GEMM template kernel: into how many thread blocks it splits M, N and K."""
    splits = []
    for src in kernels(code):
        if "micro_gemm" not in src:
            continue
        const = {name: int(v) for name, v in
                 re.findall(r"constexpr int64_t (\w+) = (?:static_cast<int64_t>\()?(\d+)L?\)?;", src)}
        splits.append(tuple(math.ceil(math.ceil(const[d] / const[f"{d}r"]) / const[f"{d}t_blocks"])
                            for d in "MNK"))
    return splits


# --- one probe per knob: passes only if the knob has its own effect ----------------------------
# A probe checks a non-default value first, so that with the wiring taken out it fails at once.

def probe_path():
    assert compile_with("cnn", path=TORCHSCRIPT).config.path == TORCHSCRIPT
    assert "def call(" in compile_with("cnn", path=INDUCTOR).artifact  # Inductor wrapper code
    assert "prim::Constant" in compile_with("cnn", path=TORCHSCRIPT).artifact


def probe_dtype():
    with pytest.MonkeyPatch.context() as patch:
        # A host without oneDNN bf16 support refuses bfloat16 (the matrix skips it); it still
        # compiles and runs it, emulated and slowly, which is enough to read what runs.
        features = backend.config.cpu_features
        needed = set(KNOBS["dtype"].requires["bfloat16"])
        patch.setattr(backend.config, "cpu_features", lambda: features() | needed)
        ts = compile_with("cnn", path=TORCHSCRIPT, dtype="bfloat16").artifact
        assert "BFloat16" in ts and "BFloat16" not in compile_with("cnn", path=TORCHSCRIPT).artifact
        ind = compile_with("cnn", path=INDUCTOR, dtype="bfloat16").artifact
        assert "bfloat16" in ind and "bfloat16" not in compile_with("cnn", path=INDUCTOR).artifact


def probe_weights_prepack():
    off = ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False, weights_prepack=False).artifact)
    on = ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False, weights_prepack=True).artifact)
    assert "prim::mkldnn_convolution" in on and "prim::mkldnn_convolution" not in off
    # Inductor fixes weight packing per process: each value gets a fresh interpreter, side by side
    children = {}
    for prepack in (True, False):
        code = ("import torch, sys; sys.path.insert(0, 'tests'); from models import build; "
                "from torch._inductor.utils import run_and_get_code; m, x = build('cnn'); "
                f"f = torch.compile(m, backend='ipex', options={{'path': 'inductor', 'weights_prepack': {prepack}}}); "
                "torch.no_grad().__enter__(); out, code = run_and_get_code(f, x); "
                "print(code[0].count('_reorder_convolution_weight'), (out - m(x)).abs().max().item())")
        children[prepack] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True,
                                             cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        for prepack, child in children.items():
            out, err_text = child.communicate(timeout=300)
            assert child.returncode == 0, err_text[-2000:]
            reorders, err = out.split()[-2:]
            assert (int(reorders) > 0) == prepack and float(err) < 1e-4
    finally:
        for child in children.values():
            child.kill()
            child.wait()


def probe_channels_last():
    # TorchScript converts the input and weights; Inductor's layout optimisation (unfrozen graph,
    # see SETTINGS) gives the convolutions channels-last buffers
    for path in (TORCHSCRIPT, INDUCTOR):
        off = memory_formats(knob_compile("channels_last", False, "cnn", path).artifact)
        on = memory_formats(knob_compile("channels_last", True, "cnn", path).artifact)
        assert off == {"contiguous"}, (path, off)
        assert "channels_last" in on, (path, on)


def probe_conv_bn_folding():
    assert "aten::batch_norm" in compile_with("cnn", path=TORCHSCRIPT, conv_bn_folding=False).artifact
    assert "aten::batch_norm" not in compile_with("cnn", path=TORCHSCRIPT, conv_bn_folding=True).artifact


def probe_linear_bn_folding():
    assert "aten::batch_norm" in compile_with("linear_bn", path=TORCHSCRIPT, linear_bn_folding=False).artifact
    assert "aten::batch_norm" not in compile_with("linear_bn", path=TORCHSCRIPT, linear_bn_folding=True).artifact


def probe_optimize_for_inference():
    on = ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False, optimize_for_inference=True,
                          weights_prepack=False).artifact)
    off = ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False, optimize_for_inference=False,
                           weights_prepack=False).artifact)
    assert "prim::mkldnn_convolution" in on and "prim::mkldnn_convolution" not in off


def probe_onednn_fusion():
    assert not any(o.startswith("prim::oneDNNFusionGroup") for o in
                   ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=False).artifact))
    assert any(o.startswith("prim::oneDNNFusionGroup") for o in
               ops(compile_with("cnn", path=TORCHSCRIPT, onednn_fusion=True).artifact))


def probe_freezing():
    # frozen weights become constants baked into the compiled module
    assert "_frozen_param" in knob_compile("freezing", True).artifact
    assert "_frozen_param" not in knob_compile("freezing", False).artifact


def probe_max_autotune():
    # the MLP's two GEMMs: C++ template kernels, or oneMKL's linear without max_autotune
    on = knob_compile("max_autotune", True).artifact
    assert len(gemm_thread_splits(on)) == 2 and "_mkl_linear" not in on
    off = knob_compile("max_autotune", False).artifact
    assert gemm_thread_splits(off) == [] and off.count("torch.ops.mkl._mkl_linear.default(") == 2


def probe_gemm_backends():
    # CPP alone: every GEMM is the template, and a bmm it has no kernel for fails to compile;
    # with ATEN, ATen's bmm takes that one
    template_only = knob_compile("gemm_backends", "CPP").artifact
    assert len(gemm_thread_splits(template_only)) == 2 and "_mkl_linear" not in template_only
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="No choices"):
        knob_compile("gemm_backends", "CPP", "tokens_first_linear")
    assert "extern_kernels.bmm(" in knob_compile("gemm_backends", "CPP,ATEN", "tokens_first_linear").artifact


def probe_epilogue_fusion():
    # the GELU after the first GEMM: computed inside the template's kernel, or by a kernel of its own
    for fused in (False, True):
        sources = kernels(knob_compile("epilogue_fusion", fused).artifact)
        templates = [src for src in sources if "micro_gemm" in src]
        assert len(templates) == 2
        assert any("erf()" in src for src in templates) == fused, fused
        assert any("erf()" in src for src in sources if src not in templates) == (not fused), fused


def probe_pattern_matcher():
    # oneDNN fusion patterns: the CNN's ReLU and residual add go into the convolution calls
    off = knob_compile("pattern_matcher", False).artifact
    assert len(conv_calls(off)) == 2 and fused_into_convolutions(off) == set()
    on = knob_compile("pattern_matcher", True).artifact
    assert len(conv_calls(on)) == 2 and fused_into_convolutions(on) == {"relu", "add"}


def probe_simdlen():
    # under SCALAR_ENV auto generates scalar code; a simdlen vectorises at its own width
    lanes = {256: {8}, 512: {16}, "auto": set()}
    for value in (256, 512, "auto"):
        if cpu_refusal({"path": INDUCTOR, "simdlen": value}):
            continue
        code = knob_compile("simdlen", value).artifact
        assert vector_widths(code) == lanes[value], value
        assert ("at::vec::" in code) == (value != "auto"), value


def probe_tiling_heuristics():
    # every load of the subsampled input is strided: the heuristics keep that loop scalar;
    # without them it is vectorised anyway
    assert "at::vec::Vectorized<float>" in knob_compile("tiling_heuristics", False).artifact
    assert "at::vec::" not in knob_compile("tiling_heuristics", True).artifact


def probe_min_chunk_size():
    # the transformer's kernels are 20 to 4096 elements: 65536 per thread runs them all on one
    # thread, 1 shares every loop out, the default 512 some of them
    shared, alone = loop_parallelism(knob_compile("min_chunk_size", 65536).artifact)
    assert shared == 0 and alone > 0
    shared, alone = loop_parallelism(knob_compile("min_chunk_size", 1).artifact)
    assert shared > 0 and alone == 0
    shared, alone = loop_parallelism(knob_compile("min_chunk_size", 512).artifact)
    assert shared > 0 and alone > 0


def probe_max_horizontal_fusion_size():
    # the 20 independent branches share loops, at most max_horizontal_fusion_size to a loop
    for size in (64, 1, 16):
        assert loop_nests(knob_compile("max_horizontal_fusion_size", size).artifact) == math.ceil(
            len(Branches.OPS) / size), size


def probe_cpp_wrapper():
    # the graph's entry point is C++ (built and loaded as a module) calling the kernels, or Python
    cpp = knob_compile("cpp_wrapper", True).artifact
    assert "void inductor_entry_impl(" in cpp and "def call(" not in cpp
    assert re.search(r"^\s+cpp_fused_\w+\(\(const float\*\)", cpp, flags=re.M)
    python = knob_compile("cpp_wrapper", False).artifact
    assert "def call(" in python and "inductor_entry_impl" not in python


def probe_gemm_max_k_slices():
    # the head's GEMM fits one register block in M and N: only a K split uses the second thread
    for slices in (2, 4, 1):
        splits = gemm_thread_splits(knob_compile("gemm_max_k_slices", slices).artifact)
        assert splits == [(1, 1, min(slices, THREADS))], (slices, splits)


def probe_gemm_thread_factors():
    # both GEMMs of the MLP are split over the threads as the factors say
    for factors in ((2, 1, 1), (1, 1, 2), (1, 2, 1)):
        splits = gemm_thread_splits(knob_compile("gemm_thread_factors", factors).artifact)
        assert splits == [factors] * 2, (factors, splits)
    splits = gemm_thread_splits(knob_compile("gemm_thread_factors", "auto").artifact)
    assert len(splits) == 2 and all(math.prod(split) == THREADS for split in splits)


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
    assert set(TORCH_KNOBS) == set(PROBES)


@pytest.mark.parametrize("knob_name", sorted(TORCH_KNOBS))
def test_knob_changes_what_runs(knob_name):
    PROBES[knob_name]()


# --- the control: what a probe reads is the same in two compiles of the same options ----------

CONTROLS = [("cnn", {"path": TORCHSCRIPT}), ("cnn", {"path": INDUCTOR}),
            ("transformer", {"path": INDUCTOR, "threads": THREADS}),
            ("mlp", {"path": INDUCTOR, **TEMPLATE_BASE, "threads": THREADS}),
            ("head", {"path": INDUCTOR, **TEMPLATE_BASE, "threads": THREADS}),
            ("branches", {"path": INDUCTOR}), ("subsample", {"path": INDUCTOR})]


@pytest.mark.parametrize("model_name,options", CONTROLS,
                         ids=[f"{model}-{'-'.join(f'{k}={v}' for k, v in options.items())}"
                              for model, options in CONTROLS])
def test_same_options_compile_to_the_same_code(model_name, options):
    first = compile_with(model_name, **options).artifact
    again = compile_with(model_name, fresh=True, **options).artifact  # regenerated, not from a cache
    assert normalise(again) == normalise(first)


# --- the proof: with a knob's wiring taken out, its probe fails --------------------------------

NOT_MUTATED = {
    ("path", TORCHSCRIPT): "the path is the dispatch itself, not a setting a path applies",
    ("path", INDUCTOR): "the path is the dispatch itself, not a setting a path applies",
    ("interop_threads", TORCHSCRIPT): "process-wide: its probe runs in a fresh process",
    ("interop_threads", INDUCTOR): "process-wide: its probe runs in a fresh process",
    ("weights_prepack", INDUCTOR): "fixed per process: its Inductor probe runs in fresh processes",
}


def inductor_wiring(knob_name: str) -> set[str]:
    """The torch._inductor.config keys that inductor_patches sets from this knob."""
    base = {"path": INDUCTOR, "max_autotune": True}
    default = backend.inductor.inductor_patches(backend.BackendConfig(base, check_cpu=False))
    keys = set()
    for value in values_of(KNOBS[knob_name]):
        patches = backend.inductor.inductor_patches(
            backend.BackendConfig({**base, knob_name: value}, check_cpu=False))
        keys |= {key for key in default.keys() | patches.keys() if default.get(key) != patches.get(key)}
    return keys


def disable_wiring(knob_name: str, path: str, monkeypatch) -> None:
    knob = KNOBS[knob_name]
    if knob.paths == {INDUCTOR}:
        # its only wiring: the keys inductor_patches sets from it
        keys = inductor_wiring(knob_name)
        assert keys, f"inductor_patches sets nothing from {knob_name!r}"
        patches = backend.inductor.inductor_patches
        monkeypatch.setattr(backend.inductor, "inductor_patches",
                            lambda config: {k: v for k, v in patches(config).items() if k not in keys})
    else:
        # the path compiles (and runs) as if the knob were at its default, yet reports it applied
        registered = backend.paths.get(path)
        monkeypatch.setitem(backend.paths._registry, path, dataclasses.replace(
            registered, compile=lambda gm, inputs, config: (registered.compile(
                gm, inputs, config.replace(**{knob_name: knob.default}))[0], config)))
    monkeypatch.setitem(globals(), "_mutation", (knob_name, path))


def mutations():
    for name, knob in TORCH_KNOBS.items():
        paths = sorted(knob.paths & TORCH_PATHS)
        for path in paths:
            if (name, path) in NOT_MUTATED:
                continue
            yield pytest.param(name, path, id=name if len(paths) == 1 else f"{name}-{path}")


@pytest.mark.parametrize("knob_name,path", list(mutations()))
def test_probe_fails_when_wiring_is_disabled(knob_name, path, monkeypatch):
    disable_wiring(knob_name, path, monkeypatch)
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        PROBES[knob_name]()
