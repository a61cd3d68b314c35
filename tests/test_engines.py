"""The OpenVINO and ONNX Runtime paths: every knob value against eager, the settings each engine
was really given, fallbacks, the on-disk cache across processes, and stored configs of each."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from backend import compiler, lookup, notices
from backend.config import BackendConfig
from backend.errors import UnsupportedOnThisCPU
from backend.fingerprint import cpu_features
from backend.knobs import INDUCTOR, KNOBS, ONNXRUNTIME, OPENVINO, TORCHSCRIPT, engine_settings
from backend.store import ConfigStore

from models import build
from test_lookup import make_record
from tuner_models import unconvertible
from tuning import QUICK_MEASURE, worker_pythonpath

ENGINES = (OPENVINO, ONNXRUNTIME)


def capture(model, x):
    """(graph, example inputs) as dynamo hands them to a backend."""
    seen = []

    def grab(gm, example_inputs):
        seen.append((gm, example_inputs))
        return gm
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=grab)(x)
    [graph] = seen
    return graph


def fallback_warnings(model, x, caplog, **compile_kwargs):
    """Compile and run ``model`` afresh; check eager's output; the backend's warnings."""
    notices._said.clear()
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="backend")
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="ipex", **compile_kwargs)(x)
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)
    return [r.getMessage() for r in caplog.records if r.name == "backend"]


def one_value_each():
    """Each engine's defaults, then every other value of every knob it declares, one at a time."""
    cases = []
    for engine in ENGINES:
        cases.append((engine, {}))
        for knob in KNOBS.values():
            # int8 and its knobs need calibration data: tests/test_int8.py runs each value
            if engine not in knob.paths or knob.name in ("path", "dtype", "threads") or knob.dtypes:
                continue
            values = (True, False) if knob.type is bool else knob.choices
            cases += [(engine, {knob.name: v}) for v in values if v != knob.default]
        cases.append((engine, {"threads": 1}))
    return cases


CASES = one_value_each()


@pytest.fixture(scope="module")
def graphs():
    return {name: capture(*build(name)) + (build(name)[0],) for name in ("cnn", "transformer")}


@pytest.mark.parametrize("model_name", ["cnn", "transformer"])
@pytest.mark.parametrize("engine,knobs", CASES,
                         ids=[f"{e}-{','.join(f'{k}={v}' for k, v in c.items()) or 'default'}"
                              for e, c in CASES])
@pytest.mark.parallel
def test_every_knob_value_compiles_to_eagers_output_and_reaches_the_engine(engine, knobs, model_name,
                                                                          graphs):
    gm, example_inputs, model = graphs[model_name]
    config = BackendConfig({"path": engine, **knobs})
    with torch.no_grad():
        run, used = compiler.compile_graph(gm, example_inputs, config)
    assert used == config, "no fallback"
    x = build(model_name)[1]
    with torch.no_grad():
        expected = model(x)
    [out] = run(*example_inputs)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    # what the engine itself reports it was given
    settings = engine_settings(engine, config)
    if engine == OPENVINO:
        compiled = run.engine
        assert str(compiled.get_property("PERFORMANCE_HINT")).endswith(settings["PERFORMANCE_HINT"])
        assert compiled.get_property("ENABLE_CPU_PINNING") == settings["ENABLE_CPU_PINNING"]
        assert compiled.get_property("INFERENCE_NUM_THREADS") == (config.threads or torch.get_num_threads())
    else:
        options = run.engine.get_session_options()
        assert options.intra_op_num_threads == (config.threads or torch.get_num_threads())
        assert options.enable_mem_pattern == settings["enable_mem_pattern"]
        assert options.enable_cpu_mem_arena == settings["enable_cpu_mem_arena"]
        assert options.execution_mode.name.lower().endswith(settings["execution_mode"])
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == \
            ("1" if settings["session.intra_op.allow_spinning"] else "0")


@pytest.mark.parallel
def test_openvino_bfloat16_runs_where_the_cpu_has_it():
    if "mkldnn_bf16" not in cpu_features():  # an AVX2 host: a clear refusal
        with pytest.raises(UnsupportedOnThisCPU, match="'bfloat16' needs CPU feature"):
            BackendConfig({"path": OPENVINO, "dtype": "bfloat16"})
        return
    import openvino

    model, x = build("cnn")
    gm, example_inputs = capture(model, x)
    with torch.no_grad():
        run, used = compiler.compile_graph(gm, example_inputs, BackendConfig({"path": OPENVINO,
                                                                              "dtype": "bfloat16"}))
        control, _ = compiler.compile_graph(gm, example_inputs, BackendConfig({"path": OPENVINO,
                                                                               "dtype": "float32"}))
    assert used.path == OPENVINO
    assert run.engine.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    assert control.engine.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    with torch.no_grad():
        torch.testing.assert_close(run(*example_inputs)[0], model(x), atol=5e-2, rtol=5e-2)


@pytest.mark.parallel
def test_onnxruntime_takes_no_dtype():
    with pytest.raises(Exception, match="knob 'dtype' applies only to path"):
        BackendConfig({"path": ONNXRUNTIME, "dtype": "float32"})


@pytest.mark.parallel
@pytest.mark.parametrize("engine", ENGINES)
def test_an_unconvertible_graph_falls_back_to_inductor_with_one_warning(engine, caplog):
    model, (x,) = unconvertible()
    warnings = fallback_warnings(model, x, caplog, options={"path": engine})
    assert len(warnings) == 1 and "svd" in warnings[0], warnings
    assert "compiling it with the Inductor path instead" in warnings[0]
    assert compiler.last_compile()["config"].path == INDUCTOR


@pytest.mark.parallel
@pytest.mark.parametrize("engine", ENGINES)
def test_a_training_graph_goes_to_inductor(engine, caplog):
    notices._said.clear()
    caplog.set_level(logging.WARNING, logger="backend")
    model, x = build("cnn")
    model.train()
    torch._dynamo.reset()
    out = torch.compile(model, backend="ipex", options={"path": engine})(x)
    out.sum().backward()
    assert model.head.weight.grad is not None
    assert any("inference-only" in r.getMessage() for r in caplog.records)


CACHE_CHILD = textwrap.dedent("""
    import json, logging, sys, torch
    import backend
    sys.path.insert(0, {tests!r})
    from models import build

    lines = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("backend").addHandler(handler)
    logging.getLogger("backend").setLevel(logging.INFO)
    model, x = build("transformer")
    with torch.no_grad():
        torch.compile(model, backend="ipex", options={{"path": sys.argv[1]}})(x)
    last = backend.last_compile()
    print(json.dumps({{"seconds": last["compile_seconds"], "log": lines, "path": last["config"].path}}))
""").format(tests=os.path.dirname(__file__))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_second_process_loads_the_compiled_graph_from_the_cache(engine, tmp_path):
    env = {**os.environ, "IPEX_AUTOTUNE_CACHE": str(tmp_path), "PYTHONPATH": worker_pythonpath()}
    runs = []
    for _ in range(2):
        child = subprocess.run([sys.executable, "-c", CACHE_CHILD, engine], capture_output=True,
                               text=True, timeout=300, env=env)
        assert child.returncode == 0, child.stderr[-3000:]
        runs.append(json.loads(child.stdout.splitlines()[-1]))
    first, second = runs
    assert first["path"] == second["path"] == engine
    assert any("converted the graph" in m or "exported and optimized" in m for m in first["log"])
    assert any("comes from the cache" in m for m in second["log"]), second["log"]
    assert second["seconds"] < first["seconds"], (first["seconds"], second["seconds"])


@pytest.mark.parallel
def test_the_cache_prunes_whole_entries_least_recently_used_first_never_the_fresh_one(tmp_path,
                                                                                    monkeypatch):
    from backend import engines

    monkeypatch.setenv("IPEX_AUTOTUNE_CACHE", str(tmp_path))
    folder = engines.cache_root() / "openvino"
    folder.mkdir(parents=True)
    for age, name in enumerate(["newest", "middle", "oldest"]):
        for suffix in (".xml", ".bin"):  # one entry: both files go, or neither
            path = folder / f"{name}{suffix}"
            path.write_bytes(b"x" * 300_000)
            os.utime(path, (1e9 - age, 1e9 - age))
    other = tmp_path / "reference.pt"  # not ours to prune
    other.write_bytes(b"x" * 2_000_000)
    assert engines.cached(folder / "oldest.xml")  # a use makes the entry the newest
    engines.prune_cache(limit_mb=1)
    assert sorted(p.name for p in folder.iterdir()) == ["oldest.bin", "oldest.xml"]
    engines.prune_cache(limit_mb=0, keep=folder / "oldest")
    assert sorted(p.name for p in folder.iterdir()) == ["oldest.bin", "oldest.xml"]
    assert other.exists()


@pytest.mark.parallel
def test_graphs_that_differ_only_in_a_constant_argument_get_their_own_cached_model():
    first = capture(torch.nn.Sequential(Slice(0)), torch.ones(2, 4))
    second = capture(torch.nn.Sequential(Slice(2)), torch.ones(2, 4))
    with torch.no_grad():
        run_first, _ = compiler.compile_graph(*first, BackendConfig({"path": OPENVINO}))
        run_second, used = compiler.compile_graph(*second, BackendConfig({"path": OPENVINO}))
    x = torch.arange(8.0).reshape(2, 4)
    assert used.path == OPENVINO
    torch.testing.assert_close(run_second(x)[0], x[:, 2:4] * 2)
    torch.testing.assert_close(run_first(x)[0], x[:, 0:2] * 2)


class Slice(torch.nn.Module):
    def __init__(self, start):
        super().__init__()
        self.start = start

    def forward(self, x):
        return x[:, self.start:self.start + 2] * 2


class AddsInPlace(torch.nn.Module):
    def forward(self, x):
        x.add_(1)
        return x * 2


# TorchScript runs the graph at compile time too (the trace, the check against it)
@pytest.mark.parallel
@pytest.mark.parametrize("path", (*ENGINES, TORCHSCRIPT))
def test_a_graph_that_writes_into_its_input_falls_back_and_writes_once(path, caplog):
    notices._said.clear()
    caplog.set_level(logging.WARNING, logger="backend")
    torch._dynamo.reset()
    x = torch.zeros(2, 3)
    with torch.no_grad():
        out = torch.compile(AddsInPlace(), backend="ipex", options={"path": path})(x)
    assert torch.equal(x, torch.ones(2, 3)) and torch.equal(out, torch.full((2, 3), 2.0))
    warnings = [r.getMessage() for r in caplog.records if r.name == "backend"]
    assert len(warnings) == 1 and "modifies its inputs in place" in warnings[0], warnings


@pytest.mark.parallel
@pytest.mark.parametrize("engine", ENGINES)
def test_bfloat16_inputs_fall_back_with_the_reason(engine, caplog):
    model = torch.nn.Linear(4, 4).to(torch.bfloat16).eval()
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    warnings = fallback_warnings(model, x, caplog, options={"path": engine})
    assert len(warnings) == 1 and "torch.bfloat16 inputs" in warnings[0], warnings


APPLY_CHILD = textwrap.dedent("""
    import json, sys, torch
    import backend
    sys.path.insert(0, {tests!r})
    from models import build

    model, x = build("cnn")
    with torch.no_grad():
        out = torch.compile(model, backend="ipex")(x)
        error = (out - model(x)).abs().max().item()
    applied = backend.last_compile()
    print(json.dumps({{"config": applied["config"].to_dict(), "source": applied["source"],
                      "error": error}}))
""").format(tests=os.path.dirname(__file__))


@pytest.mark.parametrize("config", [{"path": OPENVINO, "ov_performance_hint": "THROUGHPUT"},
                                    {"path": ONNXRUNTIME, "ort_optimization_level": "extended"}],
                         ids=ENGINES)
@pytest.mark.parallel
def test_the_lookup_applies_a_stored_engine_config_in_a_fresh_process(config, tmp_path):
    torch._dynamo.reset()
    lookup.clear_cache()
    with torch.no_grad(), compiler.recording() as graphs:
        torch.compile(build("cnn")[0], backend="ipex", options={"autotune": False})(build("cnn")[1])
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with ConfigStore(url) as store:
        store.put(make_record(graphs[-1], config))
    child = subprocess.run([sys.executable, "-c", APPLY_CHILD], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "IPEX_AUTOTUNE_STORAGE": url})
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.splitlines()[-1])
    assert report["source"].startswith("store (exact"), report
    assert report["config"] == BackendConfig(config).to_dict()
    assert report["error"] < 1e-4


@pytest.mark.parallel
def test_an_engine_that_cannot_load_compiles_on_inductor_with_one_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    warnings = fallback_warnings(*build("cnn"), caplog, options={"path": ONNXRUNTIME})
    assert len(warnings) == 1 and "ONNX Runtime cannot load" in warnings[0], warnings
    assert compiler.last_compile()["config"].path == INDUCTOR


@pytest.mark.parallel
@pytest.mark.parametrize("engine", ENGINES)
def test_symbolic_shapes_fall_back_to_inductor_with_one_warning(engine, caplog):
    warnings = fallback_warnings(*build("cnn"), caplog, dynamic=True, options={"path": engine})
    assert len(warnings) == 1 and "symbolic shapes" in warnings[0], warnings
    assert compiler.last_compile()["config"].path == INDUCTOR


def test_an_engine_trial_whose_graph_fell_back_fails_as_a_config_not_a_number_for_the_engine(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", worker_pythonpath())  # workers import tuner_models
    from autotune.models import ModelSpec
    from autotune.trial_attrs import FailureKind
    from autotune.tuner import TuneRequest
    from autotune.workbench import Candidate

    def measured(model, config):
        request = TuneRequest(model=ModelSpec(model), storage=f"sqlite:///{tmp_path / 'store.db'}",
                              confirm_measure=QUICK_MEASURE, confirm_rounds=1, max_wait_s=5)
        bench = request.bench()
        bench.preflight()
        bench.ensure_reference()
        candidate = Candidate("engine", BackendConfig({**config, "threads": 1}))
        return bench.measure_interleaved({"engine": candidate})["engine"]

    failed = measured("tuner_models:unconvertible", {"path": OPENVINO})
    assert failed.stats is None
    assert "OpenVINO could not take 1 of 1 graphs (they ran on the inductor path" in failed.failure
    ran = measured("tuner_models:small_cnn", {"path": OPENVINO})  # the control: a graph it takes
    assert ran.stats is not None, ran.failure


@pytest.mark.parallel
def test_an_unchecked_int8_graph_is_still_refused_when_its_outputs_are_not_finite():
    """A stored int8 model is not compared on random inputs, but NaN where eager is finite is
    no answer at all."""
    from backend.engines import EngineUnavailable, engine_graph
    model, x = build("cnn")
    gm, example_inputs = capture(model, x)

    def outputs(value):
        return lambda *args: (torch.full_like(model(x), value),)
    engine_graph(gm, example_inputs, "T").check("T", outputs(123.0), low_precision=True, compare=False)
    with pytest.raises(EngineUnavailable, match="non-finite outputs on the example input"):
        engine_graph(gm, example_inputs, "T").check("T", outputs(float("nan")), low_precision=True,
                                                    compare=False)


@pytest.mark.parallel
def test_the_weights_digest_reads_scalar_parameters_and_tells_their_values_apart():
    from backend.engines import weights_digest

    class Scaled(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(scale))  # 0-dim

        def forward(self, x):
            return x * self.scale
    one, two = (torch.fx.symbolic_trace(Scaled(s)) for s in (1.0, 2.0))
    assert weights_digest(one, [], []) != weights_digest(two, [], [])
