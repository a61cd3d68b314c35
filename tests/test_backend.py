"""The backend through plain torch.compile: entry point, documented usage, training, fallbacks."""

import logging
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision
from torch import nn

import backend as ipex
from backend.errors import UnsupportedOnThisCPU
from backend.fingerprint import cpu_features
from backend.knobs import INDUCTOR, TORCHSCRIPT
from backend.paths import registered

from models import build
from tuner_models import tiny_swin

pytestmark = pytest.mark.parallel  # times nothing: runs beside other tests

# Intel's documented usage is of torch's own paths; the engines have tests/test_engines.py
TORCH_PATHS = (TORCHSCRIPT, INDUCTOR)


def test_entry_point_in_a_fresh_interpreter_that_imports_nothing_of_ours():
    code = textwrap.dedent("""
        import sys, torch
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
        x = torch.randn(1, 3, 8, 8)
        assert "backend" not in sys.modules
        with torch.no_grad():
            out = torch.compile(m, backend="ipex")(x)
            torch.testing.assert_close(out, m(x), atol=1e-5, rtol=1e-5)
        print("ok", type(sys.modules["backend"].last_compile()["config"]).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "BackendConfig"]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        x = torch.relu(self.fc(x))
        torch._dynamo.graph_break()  # dynamo reuses this frame's graph for every _Block
        return x


@pytest.mark.parametrize("path", sorted(registered()))
def test_every_module_instance_runs_with_its_own_weights(path):
    # every path bakes the weights in; dynamo passes them as inputs and would hand the first
    # instance's compiled graph to the next one of the same class
    torch.manual_seed(0)
    stack, other = nn.Sequential(_Block(), _Block()).eval(), _Block().eval()
    x = torch.randn(2, 16)
    torch._dynamo.reset()
    with torch.no_grad():
        for model in (stack, other):  # the second block, then another instance, reach the graph
            compiled = torch.compile(model, backend="ipex", options={"path": path, "autotune": False})
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.fixture
def default_path():
    yield
    ipex.set_compiler_backend(TORCHSCRIPT)


@pytest.mark.parametrize("path", TORCH_PATHS)
def test_documented_float32_usage(path, default_path):
    model, x = build("cnn")
    with torch.no_grad():
        expected = model(x)
        optimized = ipex.optimize(model, weights_prepack=False)
        # the layers stay (the graph is the one autotune run tunes); the compile folds them
        assert [type(m) for m in optimized.modules()] == [type(m) for m in model.modules()]
        ipex._set_compiler_backend(path)
        torch._dynamo.reset()
        out = torch.compile(optimized, backend="ipex")(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    applied = ipex.last_compile()
    assert applied["source"] == "optimize()"
    assert applied["config"].path == path and applied["config"].weights_prepack is False


@pytest.mark.parametrize("folding", [True, False])
def test_optimizes_batchnorm_folding_reaches_the_torchscript_compile(folding, default_path):
    model, x = build("cnn")
    with torch.no_grad():
        expected = model(x)
        torch._dynamo.reset()
        out = torch.compile(ipex.optimize(model, conv_bn_folding=folding), backend="ipex")(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    applied = ipex.last_compile()
    assert applied["source"] == "optimize()" and applied["config"].conv_bn_folding is folding


@pytest.mark.parametrize("path", TORCH_PATHS)
def test_documented_bfloat16_usage_under_autocast(path, default_path):
    model, x = build("cnn")
    if "mkldnn_bf16" not in cpu_features():  # e.g. an AVX2-only CPU: a clear refusal instead
        with pytest.raises(UnsupportedOnThisCPU, match=r"'bfloat16' needs CPU feature\(s\) "
                           r"mkldnn_bf16.*valid here: 'float32'"):
            ipex.optimize(model, dtype=torch.bfloat16, weights_prepack=False)
        return
    with torch.no_grad():
        expected = model(x)
        optimized = ipex.optimize(model, dtype=torch.bfloat16, weights_prepack=False)
        ipex._set_compiler_backend(path)
        torch._dynamo.reset()
        compiled = torch.compile(optimized, backend="ipex")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = compiled(x)
    assert out.dtype == torch.bfloat16, "under the caller's autocast, outputs follow autocast"
    # the output dtype is the caller's autocast's doing; what the backend applied is checked here
    applied = ipex.last_compile()
    assert applied["source"] == "optimize()" and applied["config"].dtype == "bfloat16"
    assert (out.float() - expected).abs().max() <= 0.05 * expected.abs().max()


def test_optimize_refuses_unknown_dtype():
    with pytest.raises(ValueError, match=r"float16.*valid: torch.float32, torch.bfloat16"):
        ipex.optimize(nn.Linear(2, 2).eval(), dtype=torch.float16)


def test_bad_option_fails_before_compiling_and_names_valid_values():
    model, x = build("cnn")
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed,
                       match=r"knob 'simdlen': got '1024'; valid values: 'auto', '256', '512'"):
        torch.compile(model, backend="ipex", options={"path": "inductor", "simdlen": "1024"})(x)


def _grads(model, x):
    model.zero_grad()
    model(x).square().mean().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("path", [INDUCTOR, TORCHSCRIPT])
def test_training_gradients_match_eager(path, caplog):
    model, x = build("cnn")
    model.train()
    expected = _grads(model, x)
    torch._dynamo.reset()
    caplog.set_level(logging.WARNING, logger="backend")
    ipex.notices._said.clear()
    compiled = torch.compile(model, backend="ipex", options={"path": path})
    actual = _grads(compiled, x)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
    inference_only = [r for r in caplog.records if "TorchScript path is inference-only" in r.message]
    assert len(inference_only) == (1 if path == TORCHSCRIPT else 0)
    assert ipex.last_compile()["config"].path == INDUCTOR


def test_onednn_fusion_runs_a_resnet_with_weights_prepack_on():
    # oneDNN Graph crashed on MKLDNN-converted residual blocks; under it that pass must not run
    model, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ipex", options={
        "path": TORCHSCRIPT, "onednn_fusion": True, "weights_prepack": True, "autotune": False})
    with torch.no_grad():
        for _ in range(3):  # past the profiling runs that form the fusion groups
            actual = compiled(x)
        graph = str(torch.jit.last_executed_optimized_graph())
        torch.testing.assert_close(actual, model(x), atol=1e-4, rtol=1e-4)
    assert ipex.last_compile()["config"].path == TORCHSCRIPT
    assert "prim::oneDNNFusionGroup" in graph and "mkldnn" not in graph


def test_a_graph_onednn_graph_fails_on_runs_on_torchscript_without_it(caplog):
    model, (x,) = tiny_swin()  # oneDNN Graph (the default) fails on it
    caplog.set_level(logging.WARNING, logger="backend")
    ipex.notices._said.clear()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ipex", options={"autotune": False})
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
    used = ipex.last_compile()["config"]
    assert used.path == TORCHSCRIPT and used.onednn_fusion is False
    warnings = [r.message for r in caplog.records if "oneDNN Graph failed" in r.message]
    assert len(warnings) == 1 and "without oneDNN Graph" in warnings[0]


def test_an_option_that_onednn_graph_overrides_turns_it_off():
    model, x = build("cnn")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ipex", options={"optimize_for_inference": True})
    with torch.no_grad():
        for _ in range(3):  # past the profiling runs
            actual = compiled(x)
        graph = str(torch.jit.last_executed_optimized_graph())
    torch.testing.assert_close(actual, model(x), atol=1e-4, rtol=1e-4)
    used = ipex.last_compile()["config"]
    assert used.path == TORCHSCRIPT and used.optimize_for_inference and not used.onednn_fusion
    assert "mkldnn" in graph and "oneDNNFusionGroup" not in graph


def test_data_dependent_control_flow_runs_correctly_on_both_branches():
    model, x = build("data_dependent")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ipex")
    with torch.no_grad():
        for sign in (1, -1):
            inp = sign * x.abs()
            torch.testing.assert_close(compiled(inp), model(inp), atol=1e-5, rtol=1e-5)


def test_untraceable_graph_falls_back_with_one_warning(caplog):
    # dynamic=True hands the backend symbolic sizes, which a trace would bake in as constants
    model, _ = build("linear_bn")
    caplog.set_level(logging.WARNING, logger="backend")
    ipex.notices._said.clear()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ipex", dynamic=True)
    with torch.no_grad():
        for batch in (3, 5, 7):
            x = torch.randn(batch, 32)
            torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
    warnings = [r.message for r in caplog.records if "TorchScript path is unavailable" in r.message]
    assert len(warnings) == 1 and "non-tensor inputs" in warnings[0]
    assert not [r for r in caplog.records if "oneDNN Graph" in r.message], "not its failure"
