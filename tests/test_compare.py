"""`autotune compare`: each candidate against its own dtype's peak; a bfloat16-only comparison."""

import logging
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from autotune.compare import Comparison, candidates_for
from autotune.peak import fma_peak_gflops, model_gflop
from autotune.bench import Stats
from autotune.models import ModelSpec
from autotune.tuner import TuneRequest
from autotune.workbench import Candidate
from autotune.worker import EAGER, EAGER_BF16, IPEX_LOOKUP, WorkerProcess
from backend import BackendConfig
from backend.errors import StoreError
from backend.fingerprint import cpu_features
from tuning import QUICK_MEASURE, worker_pythonpath


def test_each_candidate_is_measured_against_the_peak_of_its_dtype():
    stats = Stats.of([10.0, 10.0, 10.0])
    candidates = {
        EAGER: Candidate(EAGER, None, stats=stats, kind=EAGER),
        EAGER_BF16: Candidate(EAGER_BF16, None, stats=stats, kind=EAGER_BF16, dtype="bfloat16"),
        "inductor bf16": Candidate("inductor bf16", BackendConfig({"path": "inductor", "dtype": "bfloat16"},
                                                                  check_cpu=False),  # naming only
                                   stats=stats),
        # the lookup applied a bfloat16 config although the comparison asked for float32 too
        IPEX_LOOKUP: Candidate(IPEX_LOOKUP, None, stats=stats, kind=IPEX_LOOKUP,
                               graphs=[{"config_id": "cfg-x", "dtype": "bfloat16", "source": "store"}]),
    }
    result = Comparison(candidates, gflop=1.0, peaks={"fma float32": 200.0, "fma bfloat16": 400.0},
                        tuned_source="store")
    assert result.fma_peak(EAGER) == 200.0
    assert result.fma_peak(EAGER_BF16) == 400.0
    assert result.fma_peak("inductor bf16") == 400.0
    assert result.fma_peak(IPEX_LOOKUP) == 400.0
    assert result.gflops(EAGER) == 100.0
    assert result.share_of_fma_peak(EAGER) == 0.5


def test_an_int8_candidate_has_no_share_of_a_float_peak():
    stats = Stats.of([10.0, 10.0, 10.0])
    int8 = BackendConfig({"path": "openvino", "dtype": "int8"}, check_cpu=False)  # naming only
    result = Comparison({"openvino int8": Candidate("openvino int8", int8, stats=stats)}, gflop=1.0,
                        peaks={"fma float32": 200.0, "fma bfloat16": 400.0}, tuned_source=None)
    assert result.gflops("openvino int8") == 100.0
    assert result.share_of_fma_peak("openvino int8") is None  # printed as "-", not nan%


@pytest.mark.parametrize("dtypes", [("float32", "int8"), ("int8", "float32")])
def test_the_lookup_is_judged_with_the_tolerance_of_the_loosest_dtype_it_may_apply(dtypes):
    # by --dtype's last, a stored int8 config failed float32's tolerance in "int8,float32"
    request = TuneRequest(model=ModelSpec("tuner_models:small_cnn"), dtypes=dtypes)
    assert candidates_for(request)[IPEX_LOOKUP].dtype == "int8"


def test_a_dtype_this_cpu_cannot_run_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("backend.config.cpu_features", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setenv("PYTHONPATH", worker_pythonpath())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where the eager reference goes
    from autotune import cli
    assert cli.main(["compare", "--model", "tuner_models:small_cnn", "--dtype", "bfloat16",
                     "--storage", f"sqlite:///{tmp_path / 'store.db'}"]) == 2
    err = capsys.readouterr().err
    assert "'bfloat16' needs CPU feature(s) mkldnn_bf16" in err and "valid here: 'float32'" in err
    assert "comparing" not in err and not (tmp_path / "cache").exists(), err


@pytest.mark.parallel
def test_compare_reads_the_store_without_creating_it_and_says_when_nothing_was_tuned(tmp_path, caplog):
    store = tmp_path / "store.db"
    bench = TuneRequest(model=ModelSpec("tuner_models:small_cnn"), storage=f"sqlite:///{store}").bench()
    with caplog.at_level(logging.WARNING, logger="autotune"):
        bench.preflight(writes_store=False)
    assert not store.exists()
    assert f"the store sqlite:///{store} holds no tuned configs" in caplog.text
    bad = TuneRequest(model=ModelSpec("tuner_models:small_cnn"), storage="postgresql://u@localhost:port/db")
    with pytest.raises(StoreError, match="port"):
        bad.bench().preflight(writes_store=False)


def test_the_bfloat16_peak_is_measured_only_where_the_cpu_has_the_instruction():
    peak = fma_peak_gflops(1, "bfloat16")
    if "avx512_bf16" in cpu_features():
        # two bf16 products per float32 lane: above the float32 limit of the same core
        assert peak is not None and peak > fma_peak_gflops(1)
    else:
        assert peak is None


@pytest.mark.skipif("mkldnn_bf16" not in cpu_features(), reason="the CPU has no oneDNN bfloat16")
def test_compare_of_bfloat16_alone_prints_its_table(tmp_path):
    # the static recipes are named per dtype ("best static recipe bfloat16")
    argv = [sys.executable, "-m", "autotune.cli", "compare", "--model", "tuner_models:small_cnn",
            "--dtype", "bfloat16", "--rounds", "1", "--measure-seconds", "0.1",
            "--storage", f"sqlite:///{tmp_path / 'store.db'}"]
    run = subprocess.run(argv, env={**os.environ, "PYTHONPATH": worker_pythonpath()},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "best static recipe bfloat16" in run.stdout
    assert "TorchScript without oneDNN Graph bfloat16" in run.stdout


def test_flop_count_includes_the_attention_projections():
    # eval-mode nn.MultiheadAttention runs a fused fast path under no_grad that hides these matmuls
    tokens, width = 10, 32
    attention = torch.nn.MultiheadAttention(width, num_heads=4, batch_first=True).eval()

    class SelfAttention(torch.nn.Module):
        def forward(self, x):
            return attention(x, x, x, need_weights=False)[0]

    x = torch.randn(1, tokens, width)
    projections = 2 * tokens * width * (3 * width) + 2 * tokens * width * width
    scores_and_mix = 2 * 2 * tokens * tokens * width
    assert model_gflop(SelfAttention(), (x,)) * 1e9 == projections + scores_and_mix


def test_peaks_are_sampled_between_the_rounds_they_share_drift_with(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", worker_pythonpath())
    request = TuneRequest(model=ModelSpec("tuner_models:small_cnn"), space="quick",
                          storage=f"sqlite:///{tmp_path / 'store.db'}", confirm_rounds=3, max_wait_s=5,
                          confirm_measure=QUICK_MEASURE)
    bench = request.bench()
    bench.ensure_reference()
    candidates = {EAGER: Candidate(EAGER, None, kind=EAGER),
                  "default": Candidate("default", BackendConfig({"path": "torchscript"}))}
    measured_by = []  # the worker of every timed measurement so far
    real_measure = WorkerProcess.measure

    def measure(worker, *args, **kwargs):
        measured_by.append(worker)
        return real_measure(worker, *args, **kwargs)

    monkeypatch.setattr(WorkerProcess, "measure", measure)
    rounds_done_at_each_call = []
    measured = bench.measure_interleaved(candidates, after_round=lambda: rounds_done_at_each_call.append(
        sorted(Counter(measured_by).values())))
    assert rounds_done_at_each_call == [[1, 1], [2, 2], [3, 3]]
    assert [len(c.round_medians) for c in measured.values()] == [3, 3]


def test_the_suite_names_the_tuned_config_and_says_when_it_is_the_default():
    from benchmarks.suite import tuned_knobs

    def comparison(applied: dict, source: str = "store (exact, study s, 1.00x ...)") -> Comparison:
        default = BackendConfig({"path": "torchscript", "threads": 2})
        lookup = Candidate(IPEX_LOOKUP, None, kind=IPEX_LOOKUP,
                           graphs=({"config": applied, "source": source},))
        return Comparison({"TorchScript path default": Candidate("TorchScript path default", default),
                           IPEX_LOOKUP: lookup}, gflop=1.0, peaks={}, tuned_source=source)

    default = {"path": "torchscript", "threads": 2}
    assert tuned_knobs(comparison(default), "float32") == "the TorchScript path default"
    assert tuned_knobs(comparison({**default, "threads": 0}), "float32") == "the TorchScript path default"
    assert tuned_knobs(comparison({**default, "threads": 1}), "float32") == "path=torchscript, threads=1"
    assert tuned_knobs(comparison({**default, "channels_last": False}), "float32") == \
        "path=torchscript, channels_last=False"
    assert tuned_knobs(comparison(default, source="default"), "float32") == \
        "the TorchScript path default (not from the store: default)"


@pytest.mark.parametrize("skip_guards", [False, True])
def test_skip_guards_times_the_calls_under_torchs_serving_stance(skip_guards):
    """Each timed call takes a new shape, so a call whose guards are checked recompiles, and one
    under skip_guard_eval_unsafe is refused by torch instead (the warm-up checks them as usual,
    and the stance ends with the measurement)."""
    from autotune.bench import MeasureSettings
    from autotune.worker import _measure

    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(example_inputs[0].shape)
        return gm.forward

    torch._dynamo.reset()
    try:
        compiled = torch.compile(lambda x: x.sum(), backend=counting_backend, dynamic=False)
        sizes = iter(range(1, 100))
        call = lambda: compiled(torch.ones(next(sizes)))  # noqa: E731
        # the worker gets its settings as the command dict the parent sends
        command = MeasureSettings(warmup_count=2, warmup_seconds=0.0, min_runs=3, min_seconds=0.0,
                                  skip_guards=skip_guards).to_dict()
        if skip_guards:
            with pytest.raises(RuntimeError, match="skip_guard_eval_unsafe"):
                _measure(call, command, warmed=False)
            assert len(compiles) == 2  # the warm-up's calls, with their guards checked
            call()
            assert len(compiles) == 3  # after the measurement, guards are checked again
        else:
            assert _measure(call, command, warmed=False)["stats"]["runs"] == 3
            assert len(compiles) == 5
    finally:
        torch._dynamo.reset()
