"""int8: calibrated on the user's data, gated on held-out data, stored with the weights it was
calibrated for, applied by the lookup in a fresh process, refused without data."""

import base64
import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import replace

import pytest
import torch

import int8_models
from backend import BackendConfig, lookup, notices, quantization
from backend.errors import KnobError, RecordError
from autotune import cli
from autotune.workbench import Candidate
from backend.store import ConfigStore, TunedRecord
from tuning import SELECTION_ROUNDS, worker_pythonpath

TESTS = os.path.dirname(__file__)
ENV = {**os.environ, "PYTHONPATH": worker_pythonpath()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained on data it makes, its checkpoint, and a file of its inputs."""
    folder = tmp_path_factory.mktemp("int8")
    model = int8_models.train()
    checkpoint, data = folder / "trained.pt", folder / "batches.pt"
    torch.save(model.state_dict(), checkpoint)
    torch.save(int8_models.batches(32, seed=99), data)  # 16 calibrate, 16 held out
    space = folder / "space.yaml"
    space.write_text("knobs:\n  path: [openvino]\n  ov_int8_preset: [performance, mixed]\n")
    return {"folder": folder, "checkpoint": str(checkpoint), "data": str(data),
            "space": str(space), "model": model}


def _run_argv(url, study, *extra, model="int8_models:classifier"):
    return ["run", "--model", model, "--batch-size", str(int8_models.BATCH), "--trials", "2",
            "--study-name", study, "--storage", url, "--seed", "0", "--measure-seconds", "0.3",
            "--confirm-rounds", "5", "--max-confirm-rounds", "12", "--confirm-top", "1",
            "--max-wait", "5s", "--selection-rounds", str(SELECTION_ROUNDS), *extra]


def _tune(url, study, *extra, model="int8_models:classifier"):
    argv = [sys.executable, "-m", "autotune.cli", *_run_argv(url, study, *extra, model=model)]
    return subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=900)


@pytest.fixture
def autotune(capsys, caplog):
    """The CLI in this process (a refusal needs no fresh one, and saves its imports): its exit
    code, stdout, and stderr with the log's lines."""
    def run(*argv):
        caplog.clear()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err + "".join(f"{r.getMessage()}\n" for r in caplog.records)
    return run


@pytest.fixture(scope="module")
def tuned(trained):
    url = f"sqlite:///{trained['folder']}/tuned.db"
    run = _tune(url, "int8", "--checkpoint", trained["checkpoint"], "--dtype", "int8",
                "--data", trained["data"], "--space", trained["space"])
    assert run.returncode == 0, run.stdout + run.stderr
    return {**trained, "url": url, "run": run}


LOOKUP = textwrap.dedent("""
    import json, sys, torch
    import backend, int8_models
    model, _ = int8_models.classifier()
    model.load_state_dict(torch.load(sys.argv[1]))
    if sys.argv[2] == "changed":
        with torch.no_grad():
            model.head.bias += 0.01
    compiled = torch.compile(model, backend="ipex")
    batches = torch.load(sys.argv[3])[16:]
    with torch.no_grad():
        ours = torch.cat([compiled(b) for b in batches]).argmax(1)
        theirs = torch.cat([model(b) for b in batches]).argmax(1)
    print(json.dumps({"config": backend.last_compile()["config"].to_dict(),
                      "source": backend.last_compile()["source"],
                      "agreement": (ours == theirs).float().mean().item()}))
""")


def _lookup(tuned, weights: str, tmp_path):
    env = {**ENV, "IPEX_AUTOTUNE_STORAGE": tuned["url"],
           "IPEX_AUTOTUNE_CACHE": str(tmp_path / "fresh-cache")}  # nothing from the tuner's cache
    run = subprocess.run([sys.executable, "-c", LOOKUP, tuned["checkpoint"], weights, tuned["data"]],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def test_the_tuned_int8_config_passes_the_gate_is_stored_and_is_applied_in_a_fresh_process(tuned, tmp_path):
    with ConfigStore(tuned["url"], read_only=True) as store:
        [record] = store.list()
        precision = store.precision(record.id)
    assert record.config["dtype"] == "int8", tuned["run"].stdout
    assert precision.accuracy["metric"] == "top-1 agreement with float32"
    assert precision.accuracy["value"] >= 0.99 and precision.accuracy["inputs"] == 16 * 8
    assert precision.accuracy["classes"] >= 5  # a figure that could have failed
    assert 0 <= precision.accuracy["relative_error"] < 0.5
    assert precision.quantized.engine == "openvino" and precision.quantized.size > 0

    applied, log = _lookup(tuned, "same", tmp_path)
    assert applied["config"]["dtype"] == "int8" and applied["source"].startswith("store"), log
    assert "calibrated for other weights" not in log and "int8 is unavailable" not in log, log
    assert applied["agreement"] >= 0.99


def test_weights_changed_after_calibration_are_detected_and_int8_is_not_applied(tuned, tmp_path):
    applied, log = _lookup(tuned, "changed", tmp_path)
    assert applied["config"].get("dtype", "float32") == "float32"
    assert log.count("was calibrated for other weights than this model's") == 1, log
    # the same confirmation's choice without int8, stored beside it, not the defaults
    assert applied["source"].startswith("store"), log


def test_an_int8_record_of_another_checkpoint_does_not_hide_the_one_for_these_weights(tuned, tmp_path):
    two = tmp_path / "two-checkpoints.db"
    two.write_bytes(open(tuned["url"].removeprefix("sqlite:///"), "rb").read())
    with ConfigStore(f"sqlite:///{two}") as store:
        [ours] = [r for r in store.list() if r.config.get("dtype") == "int8"]
        precision = store.precision(ours.id)
        theirs = replace(precision.quantized, weights_digest="another-checkpoint")
        # faster, so it ranks first for this graph
        store.put(replace(ours, id=None, speedup=ours.speedup * 2, study_name="another-checkpoint"),
                  replace(precision, quantized=theirs))
    applied, log = _lookup({**tuned, "url": f"sqlite:///{two}"}, "same", tmp_path)
    assert applied["config"]["dtype"] == "int8" and "study int8" in applied["source"], applied
    assert "calibrated for other weights" not in log, log


def test_a_config_whose_accuracy_fails_the_gate_is_never_stored(trained):
    url = f"sqlite:///{trained['folder']}/fragile.db"
    run = _tune(url, "fragile", "--dtype", "int8", "--data", trained["data"], "--space",
                trained["space"], "--trials", "1", model="int8_models:fragile_classifier")
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        reasons = [r for (r,) in db.execute(
            "select value_json from trial_user_attributes where key = 'failure_reason'")]
        stored = [json.loads(c) for (c,) in db.execute("select config from autotune_records")]
    assert reasons and all("accuracy gate: top-1 agreement with float32" in json.loads(r)
                           and "the bound (--min-agreement); float32 answered" in json.loads(r)
                           for r in reasons), reasons
    assert not any(c.get("dtype") == "int8" for c in stored), run.stdout


def test_int8_without_data_is_refused_with_its_reason(tmp_path, autotune):
    url = f"sqlite:///{tmp_path}/none.db"
    code, _, said = autotune(*_run_argv(url, "alone", "--dtype", "int8"))
    assert code != 0
    assert "int8 is not tried: it needs --data" in said
    assert "random inputs calibrate random scales" in said
    # beside another dtype it is dropped with the same line (the missing space stops the run)
    code, _, said = autotune(*_run_argv(url, "beside", "--dtype", "float32,int8", "--space",
                                        str(tmp_path / "none.yaml")))
    assert code != 0 and said.count("int8 is not tried: it needs --data") == 1, said
    assert not os.path.exists(tmp_path / "none.db")


@pytest.mark.parametrize("bad, message", [
    ("missing.pt", "no such file, and not module:callable"),
    ("wrong_shape.pt", "batch 0 has [8, 3, 16, 16] float32; the model's example input has "
                       "[8, 3, 32, 32] float32"),
    ("one_batch.pt", "at least 2 are needed"),
])
def test_bad_data_is_refused_before_any_study_exists(tmp_path, bad, message, autotune):
    torch.save([torch.randn(8, 3, 16, 16)] * 2, tmp_path / "wrong_shape.pt")
    torch.save(torch.randn(8, 3, 32, 32), tmp_path / "one_batch.pt")
    url = f"sqlite:///{tmp_path}/bad.db"
    code, _, said = autotune(*_run_argv(url, "bad", "--dtype", "int8", "--data", str(tmp_path / bad)))
    assert code != 0 and message in said, said
    assert not os.path.exists(tmp_path / "bad.db")


def test_your_metric_judges_as_a_fraction_of_float32s_score_and_fails_below_the_bound(trained):
    from autotune import data
    from autotune.worker import FailureKind, TrialFailure, WorkerSpec, _accuracy_gate

    model = trained["model"]
    split = data.load(trained["data"], int8_models.batches(1, seed=0))
    spec = WorkerSpec(model={}, candidate={}, reference_path="", metric="int8_models:label_accuracy")
    with torch.no_grad():
        figures = _accuracy_gate(spec, model, model, split)
    assert figures["metric"] == "your metric int8_models:label_accuracy, as a fraction of float32's"
    assert figures["value"] == 1.0 and figures["float32_score"] >= 0.9  # right on its true classes
    assert figures["inputs"] == 16 * 8 and figures["bound"] == 0.99

    def shifted(x):  # every answer one class off: the user's score falls to about zero
        return model(x).roll(1, dims=1)
    with pytest.raises(TrialFailure) as failed, torch.no_grad():
        _accuracy_gate(spec, model, shifted, split)
    assert "accuracy gate: your metric int8_models:label_accuracy" in failed.value.reason
    assert "the bound (--min-agreement); your metric gave float32" in failed.value.reason

    zero = WorkerSpec(model={}, candidate={}, reference_path="", metric="int8_models:scores_zero")
    with pytest.raises(TrialFailure, match="must be a finite number above zero"), torch.no_grad():
        _accuracy_gate(zero, model, model, split)

    def overflowing(x):  # inf would be "infinitely better" than float32 and pass the bound
        return model(x) * float("inf")
    largest = WorkerSpec(model={}, candidate={}, reference_path="", metric="int8_models:largest_logit")
    with pytest.raises(TrialFailure, match="not a number the gate can keep") as failed, torch.no_grad():
        _accuracy_gate(largest, model, overflowing, split)
    assert failed.value.kind == FailureKind.ACCURACY


def test_when_float32_answers_one_class_the_gate_also_bounds_the_relative_error(trained):
    """Agreement with a model that answers one class for every input cannot tell a good int8
    model from a bad one (random weights do this): the relative error must hold as well."""
    from autotune import data
    from autotune.worker import TrialFailure, WorkerSpec, _accuracy_gate
    from backend.store import accuracy_problem

    def one_class(x):  # class 0 far ahead whatever the input, the rest following the input
        logits = trained["model"](x)
        return logits + torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long),
                                                    logits.shape[1]) * 100
    split = data.load(trained["data"], int8_models.batches(1, seed=0))
    spec = WorkerSpec(model={}, candidate={}, reference_path="", tolerance=0.1)
    with torch.no_grad():
        close = _accuracy_gate(spec, one_class, lambda x: one_class(x) * 1.02, split)
        with pytest.raises(TrialFailure) as failed:
            _accuracy_gate(spec, one_class, lambda x: one_class(x) * 1.5, split)
    assert close["classes"] == 1 and close["relative_error_bound"] == 0.1 and accuracy_problem(close) is None
    assert "float32 answered 1 class, so agreement cannot tell: relative error 0.5 > 0.1, the " \
           "bound (--tolerance)" in failed.value.reason, failed.value.reason
    assert "relative error 0.5" in accuracy_problem({**close, "relative_error": 0.5})


def test_when_float32_gives_the_same_output_for_every_input_the_gate_refuses(trained):
    """A model whose answer ignores its input (torchvision's ViT head of zeros) makes every figure
    vacuous: a candidate that matches it proves nothing, so the gate fails it."""
    from autotune import data
    from autotune.worker import FailureKind, TrialFailure, WorkerSpec, _accuracy_gate

    def fixed(x):
        return trained["model"](x) * 0
    split = data.load(trained["data"], int8_models.batches(1, seed=0))
    spec = WorkerSpec(model={}, candidate={}, reference_path="", tolerance=0.1)
    with torch.no_grad(), pytest.raises(TrialFailure) as failed:
        _accuracy_gate(spec, fixed, fixed, split)
    assert failed.value.kind == FailureKind.ACCURACY
    assert "float32 answers zeros for all 128 held-out inputs (the inputs differ: the weights " \
           "ignore them" in failed.value.reason, failed.value.reason

    def labels(x):  # predicted classes: one class for every input is an answer, not a fault
        return (trained["model"](x) * 0).argmax(1)
    assert _accuracy_gate(spec, labels, labels, split)["value"] == 0.0
    with torch.no_grad():  # the control: the same model answering by its input passes
        assert _accuracy_gate(spec, trained["model"], trained["model"], split)["value"] == 1.0


def test_a_config_tuned_with_your_metric_is_stored_with_its_figures(trained):
    url = f"sqlite:///{trained['folder']}/metric.db"
    run = _tune(url, "metric", "--checkpoint", trained["checkpoint"], "--dtype", "int8",
                "--data", trained["data"], "--space", trained["space"], "--trials", "1",
                "--metric", "int8_models:label_accuracy")
    assert run.returncode == 0, run.stdout + run.stderr
    with ConfigStore(url, read_only=True) as store:
        [record] = store.list()
        accuracy = store.precision(record.id).accuracy
    assert record.config["dtype"] == "int8"
    assert accuracy["metric"].startswith("your metric int8_models:label_accuracy")
    assert accuracy["value"] >= 0.99 and accuracy["score"] >= 0.9 and accuracy["higher_is_better"]


def stacked_inputs():
    return torch.randn(4 * int8_models.BATCH, 3, int8_models.SIZE, int8_models.SIZE)


def test_data_from_a_callable_takes_one_stacked_tensor_as_a_file_does_and_refuses_a_scalar(tmp_path):
    from autotune import data
    example = int8_models.batches(1, seed=0)
    # list(tensor) split it into samples, each then refused for its shape
    split = data.load(f"{__name__}:stacked_inputs", example)
    assert len(split.calibration) + len(split.held_out) == 4
    torch.save(torch.tensor(1.0), tmp_path / "scalar.pt")
    with pytest.raises(data.DataError, match="a single number; expected inputs stacked"):
        data.load(str(tmp_path / "scalar.pt"), example)  # an IndexError with a traceback before


def test_stacked_inputs_that_do_not_fill_the_last_batch_are_left_out_with_one_warning(tmp_path, caplog):
    from autotune import data
    example = int8_models.batches(1, seed=0)
    torch.save(torch.cat([stacked_inputs(), stacked_inputs()[:3]]), tmp_path / "ragged.pt")
    caplog.set_level(logging.WARNING, logger="autotune")
    split = data.load(str(tmp_path / "ragged.pt"), example)
    assert len(split.calibration) + len(split.held_out) == 4
    total = 4 * int8_models.BATCH + 3
    assert [r.getMessage() for r in caplog.records] == [
        f"--data {tmp_path / 'ragged.pt'}: the last 3 of {total} inputs do not fill a batch of "
        f"{int8_models.BATCH} (the model's batch size); they are left out"]


@pytest.mark.parametrize("extra, message", [
    (("--metric", "int8_models:no_such_metric"), "--metric int8_models:no_such_metric: cannot "
                                                  "import it"),
    (("--metric", "label_accuracy"), "--metric label_accuracy: not module:callable"),
])
def test_a_bad_metric_is_refused_before_any_study_exists(trained, tmp_path, extra, message, autotune):
    url = f"sqlite:///{tmp_path}/bad.db"
    code, _, said = autotune(*_run_argv(url, "bad", "--dtype", "int8", "--data", trained["data"], *extra))
    assert code != 0 and message in said, said
    assert not os.path.exists(tmp_path / "bad.db")


def test_a_metric_without_data_is_refused(tmp_path, autotune):
    url = f"sqlite:///{tmp_path}/bad.db"
    code, _, said = autotune(*_run_argv(url, "bad", "--dtype", "float32,bfloat16", "--metric",
                                        "int8_models:label_accuracy"))
    assert code != 0 and "it scores the held-out part of your inputs" in said, said
    assert not os.path.exists(tmp_path / "bad.db")


def test_onnx_runtimes_own_int8_is_a_peer_calibrated_and_gated_on_the_same_data(trained, tmp_path,
                                                                              monkeypatch):
    from autotune.compare import candidates_for
    from autotune.models import ModelSpec
    from autotune.tuner import TuneRequest
    from autotune.worker import INT8_PEERS, ONNXRUNTIME_INT8_EXPORTED
    from tuning import QUICK_MEASURE

    monkeypatch.setenv("PYTHONPATH", ENV["PYTHONPATH"])
    spec = ModelSpec("int8_models:classifier", batch_size=int8_models.BATCH,
                     checkpoint=trained["checkpoint"])
    request = TuneRequest(model=spec, dtypes=("float32", "int8"), data=trained["data"],
                          storage=f"sqlite:///{tmp_path / 'store.db'}", confirm_rounds=1,
                          max_wait_s=5, confirm_measure=QUICK_MEASURE)
    assert set(INT8_PEERS) <= set(candidates_for(request))
    assert not set(INT8_PEERS) & set(candidates_for(replace(request, dtypes=("float32",))))
    bench = request.bench()
    bench.ensure_reference()
    peer = Candidate(ONNXRUNTIME_INT8_EXPORTED, None, kind=ONNXRUNTIME_INT8_EXPORTED, dtype="int8")
    [measured] = bench.measure_interleaved({peer.name: peer}).values()
    assert measured.stats is not None, measured.failure
    assert measured.accuracy["metric"] == "top-1 agreement with float32"
    assert measured.accuracy["value"] >= 0.99 and measured.accuracy["classes"] >= 5
    assert measured.accuracy["relative_error"] > 0  # quantized: not float32's numbers


INT8_CONFIGS = [{"path": "openvino", "dtype": "int8"},
                {"path": "openvino", "dtype": "int8", "ov_int8_preset": "mixed",
                 "ov_int8_model_type": "transformer"},
                {"path": "inductor", "dtype": "int8"},
                {"path": "inductor", "dtype": "int8", "pt2e_int8_activations": "dynamic"}]


def _calibrated(model, options, batches):
    """Compiled with ``options`` on the calibration ``batches``: the callable and its record."""
    from backend import compiler
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="ipex", options=options)
    with quantization.calibrating(batches), torch.no_grad(), compiler.recording() as graphs:
        compiled(batches[0])
    return compiled, graphs


@pytest.mark.parametrize("options", INT8_CONFIGS, ids=lambda o: "-".join(map(str, o.values())))
def test_every_int8_knob_value_compiles_on_the_calibration_batches_and_agrees_with_float32(
        trained, options):
    model = trained["model"]
    batches = int8_models.batches(8, seed=3)
    compiled, graphs = _calibrated(model, options, batches[:4])
    with torch.no_grad():
        ours = torch.cat([compiled(b) for b in batches[4:]])
        assert (ours.argmax(1) == model(torch.cat(batches[4:])).argmax(1)).float().mean() >= 0.99
    [graph] = graphs
    assert BackendConfig(graph["config"]) == BackendConfig(options)  # applied, no fallback
    assert graph["quantized"]["engine"] == options["path"]


def test_a_stored_inductor_int8_model_is_applied_in_a_fresh_process(trained, tmp_path):
    """The tuner's path into the store, step by step: a calibrated compile's record, its
    quantized model read from the cache, put with the record; then a fresh process looks it up."""
    from backend.fingerprint import hardware_info, hardware_key
    from backend.store import Precision
    _, [graph] = _calibrated(trained["model"], INT8_CONFIGS[2], int8_models.batches(8, seed=3))
    quantized = quantization.QuantizedModel.from_description(graph["quantized"])
    url = f"sqlite:///{tmp_path}/inductor.db"
    with ConfigStore(url) as store:
        record = _record(graph["config"])
        record.workload_key, record.family_key = graph["workload_key"], graph["family_key"]
        record.hardware_key = hardware_key(hardware_info())
        store.put(record, Precision({"metric": "top-1 agreement with float32", "value": 1.0,
                                     "bound": 0.99, "inputs": 32}, quantized))
    applied, log = _lookup({**trained, "url": url}, "same", tmp_path)
    assert applied["config"]["path"] == "inductor" and applied["config"]["dtype"] == "int8", log
    assert applied["agreement"] >= 0.99


def test_a_stored_model_of_another_engine_is_not_loaded_by_the_path_a_fallback_reached(
        trained, caplog):
    """An OpenVINO int8 record whose path fell back to Inductor: Inductor must not read
    OpenVINO's files as its own program; it compiles float32 and says why, once."""
    import backend
    x = int8_models.batches(1, seed=4)[0]
    _, [graph] = _calibrated(trained["model"], INT8_CONFIGS[0], int8_models.batches(4, seed=3))
    openvino_model = quantization.QuantizedModel.from_description(graph["quantized"])
    torch._dynamo.reset()
    compiled = torch.compile(trained["model"], backend="ipex", options=INT8_CONFIGS[2])
    with caplog.at_level(logging.WARNING, logger="backend"), \
            quantization.using_stored(openvino_model), torch.no_grad():
        compiled(x)
    assert backend.last_compile()["config"].to_dict()["dtype"] == "float32"
    warnings = [r.getMessage() for r in caplog.records if "int8 is unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "the stored int8 model is openvino's" in warnings[0], warnings


def _zip_of_an_unknown_compression() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.xml", b"<net/>")
    blob = bytearray(buffer.getvalue())
    central = blob.index(b"PK\x01\x02")
    blob[8:10] = blob[central + 10:central + 12] = (99).to_bytes(2, "little")  # no such method
    return bytes(blob)


def _zip_with_a_damaged_stream(method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("model.bin", bytes(range(256)) * 40)
    blob = bytearray(buffer.getvalue())
    data = 30 + len("model.bin") + 4  # past the local header, into the compressed stream
    blob[data:data + 20] = bytes(b ^ 0xFF for b in blob[data:data + 20])
    return bytes(blob)


@pytest.mark.parametrize("model", [b"PK\x03\x04\xde\xad\xbe\xef", _zip_of_an_unknown_compression()],
                         ids=["truncated", "unknown-compression"])
def test_a_damaged_stored_model_leaves_the_model_running_with_one_warning(tuned, tmp_path, model):
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(open(tuned["url"].removeprefix("sqlite:///"), "rb").read())
    with sqlite3.connect(damaged) as db:
        db.execute("update autotune_precision set model = ?", (model,))
    applied, log = _lookup({**tuned, "url": f"sqlite:///{damaged}"}, "same", tmp_path)
    assert applied["config"].get("dtype", "float32") == "float32" and applied["agreement"] == 1.0
    assert log.count("a stored int8 model is damaged") == 1, log
    # the float record stored beside it for other weights, not the defaults
    assert applied["source"].startswith("store"), log


class _ReadsItsSecondArgumentFirst(torch.nn.Module):
    """dynamo orders a graph's inputs as the code first reads them: here ``mask``, then ``x``."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = torch.nn.Linear(4, 16), torch.nn.Linear(16, 3)

    def forward(self, x, mask):
        gate = torch.sigmoid(mask.sum(1, keepdim=True))
        return self.head(torch.relu(self.embed(x))) * gate


@pytest.mark.parametrize("config", [INT8_CONFIGS[0], INT8_CONFIGS[2], "by hand"],
                         ids=["openvino", "inductor", "prepare-convert"])
def test_calibration_batches_reach_a_graph_that_reads_its_arguments_out_of_order(config, caplog):
    torch.manual_seed(0)
    model = _ReadsItsSecondArgumentFirst().eval()
    batches = [(torch.randn(2, 4), torch.randn(2, 5)) for _ in range(4)]
    torch._dynamo.reset()
    if config == "by hand":
        prepared = quantization.prepare(model)
        with torch.no_grad():
            for batch in batches:
                prepared(*batch)
        compiled, scope = torch.compile(quantization.convert(prepared), backend="ipex"), torch.no_grad()
    else:  # as `autotune run --data` calibrates
        compiled = torch.compile(model, backend="ipex", options=config)
        scope = quantization.calibrating(batches, quantization.argument_names(model))
    with caplog.at_level(logging.WARNING, logger="backend"), scope, torch.no_grad():
        out = compiled(*batches[0])
    import backend
    assert backend.last_compile()["config"].dtype == "int8", caplog.text
    with torch.no_grad():
        torch.testing.assert_close(out, model(*batches[0]), atol=0.1, rtol=0.1)


def test_int8_without_calibration_or_with_other_shapes_compiles_in_float32_with_one_warning(
        trained, caplog):
    model = trained["model"]
    x = int8_models.batches(1, seed=4)[0]
    cases = [(None, "int8 needs calibration data, and none was given"),
             ([torch.randn(2, 3, 32, 32)] * 2, "the calibration batches do not match this "
                                               "graph's inputs (a batch has [2, 3, 32, 32] float32")]
    for batches, message in cases:
        torch._dynamo.reset()
        caplog.clear()
        compiled = torch.compile(model, backend="ipex", options={"path": "openvino", "dtype": "int8"})
        scope = quantization.calibrating(batches) if batches else torch.no_grad()
        with caplog.at_level(logging.WARNING, logger="backend"), scope, torch.no_grad():
            compiled(x)
            compiled(x)
        import backend
        assert backend.last_compile()["config"].dtype == "float32"
        warnings = [r.getMessage() for r in caplog.records if "int8 is unavailable" in r.getMessage()]
        assert len(warnings) == 1 and message in warnings[0], warnings
        assert "compiling it in float32 on the OpenVINO path instead" in warnings[0]


def test_int8_calibrates_on_the_batches_shaped_as_the_graph_and_says_what_it_left_out(trained, caplog):
    # a data loader's short last batch made the whole calibration fall back to float32
    x = int8_models.batches(1, seed=4)[0]
    batches = [*int8_models.batches(3, seed=5), torch.randn(2, 3, 32, 32)]
    torch._dynamo.reset()
    notices._said.clear()
    compiled = torch.compile(trained["model"], backend="ipex", options={"path": "openvino", "dtype": "int8"})
    with caplog.at_level(logging.WARNING, logger="backend"), quantization.calibrating(batches), torch.no_grad():
        compiled(x)
    import backend
    assert backend.last_compile()["config"].dtype == "int8"
    warnings = [r.getMessage() for r in caplog.records if r.name == "backend"]
    assert warnings == ["ipex backend: int8 calibrates on the 3 of 4 batches shaped as this graph's "
                        "inputs ([8, 3, 32, 32] float32); left out: 1 of other shapes, such as "
                        "[2, 3, 32, 32] float32"], warnings


def test_int8_runs_only_on_a_path_with_a_quantizer():
    with pytest.raises(KnobError, match="'int8' runs only on path inductor or openvino, but path "
                                        "is 'torchscript'"):
        BackendConfig({"path": "torchscript", "dtype": "int8"})
    with pytest.raises(KnobError, match="applies only to dtype int8, but dtype is 'float32'"):
        BackendConfig({"path": "openvino", "ov_int8_preset": "mixed"})
    from autotune.space import load_space
    space = load_space("default").restrict(dtypes=("int8",))
    assert space.knobs["path"] == ("inductor", "openvino", "onnxruntime")


def _record(config):
    return TunedRecord(workload_key="wl-x", hardware_key="hw-x", family_key="fam", batch_size=8,
                       model_label="m", config=config, config_id="", latency={"median_ms": 1.0},
                       baselines={}, speedup=2.0, torch_version=str(torch.__version__),
                       study_name="s", hardware={"cpu": "c"})


def test_an_int8_record_without_its_quantized_model_is_refused_by_every_path_into_the_store(tmp_path,
                                                                                           autotune):
    url = f"sqlite:///{tmp_path}/store.db"
    with ConfigStore(url) as store:
        with pytest.raises(RecordError, match="is int8 but comes without its quantized model"):
            store.put(_record({"path": "openvino", "dtype": "int8"}))
        assert store.list() == []
    export = tmp_path / "export.yaml"
    import yaml
    record = _record({"path": "openvino", "dtype": "int8"}).to_dict()
    record["hardware"] = {"cpu": "c", "features": [], "cores": 2, "sockets": 1, "machine": "x86_64"}
    export.write_text(yaml.safe_dump({"records": [record]}))
    code, _, said = autotune("import", str(export), "--storage", url)
    assert code != 0 and "without its quantized model" in said, said
    with ConfigStore(url) as store:
        assert store.list() == []


def test_an_int8_record_without_passing_gate_figures_is_refused_by_every_path_into_the_store(
        tuned, tmp_path, autotune):
    from backend.store import Precision
    model = quantization.QuantizedModel("openvino", "digest", {"model.xml": b"x", "model.bin": b"y"})
    failing = {"metric": "top-1 agreement with float32", "value": 0.5, "bound": 0.99, "inputs": 8}
    url = f"sqlite:///{tmp_path}/store.db"
    with ConfigStore(url) as store:
        for accuracy, message in [(None, "without the accuracy gate's figures"),
                                  (failing, "the accuracy gate failed"),
                                  ({"metric": "top-1"}, "need numbers for value, bound, inputs"),
                                  ({**failing, "value": 1.0, "classes": "many"},
                                   "need numbers for classes")]:
            with pytest.raises(RecordError, match=message):
                store.put(_record({"path": "openvino", "dtype": "int8"}), Precision(accuracy, model))
        assert store.list() == []
    import yaml
    export = tmp_path / "export.yaml"
    assert autotune("export", "-o", str(export), "--storage", tuned["url"])[0] == 0
    exported = export.read_text()
    document = yaml.safe_load(exported)
    document["records"][0]["precision"]["accuracy"]["value"] = 0.5
    export.write_text(yaml.safe_dump(document))
    code, _, said = autotune("import", str(export), "--storage", url)
    assert code != 0 and "the accuracy gate failed (top-1 agreement" in said, said
    for damaged in (b"PK\x03\x04\xde\xad\xbe\xef", _zip_of_an_unknown_compression(),
                    _zip_with_a_damaged_stream(zipfile.ZIP_BZIP2), _zip_with_a_damaged_stream(zipfile.ZIP_LZMA)):
        document = yaml.safe_load(exported)
        document["records"][0]["precision"]["model_zip_base64"] = base64.b64encode(damaged).decode()
        export.write_text(yaml.safe_dump(document))
        code, _, said = autotune("import", str(export), "--storage", url)
        assert code != 0 and f"{export}: record 0: precision.model_zip_base64: not a base64 zip" in said \
            and said.rstrip().endswith("nothing imported"), said
    with ConfigStore(url) as store:
        assert store.list() == []


def test_a_store_made_before_the_precision_table_still_answers_the_lookup(tmp_path):
    path = tmp_path / "old.db"
    with ConfigStore(f"sqlite:///{path}") as store:
        store.put(_record({"path": "inductor"}))
    with sqlite3.connect(path) as db:
        db.execute("drop table autotune_precision")
    with ConfigStore(f"sqlite:///{path}", read_only=True) as store:
        [record] = store.list()
        assert store.best("wl-x", "hw-x").config["path"] == "inductor"
        assert store.precision(record.id) is None
    lookup.clear_cache()


def test_prepare_calibrate_convert_then_torch_compile_runs_int8_by_hand(trained):
    import backend as ipex
    torch._dynamo.reset()
    prepared = ipex.prepare(trained["model"])
    calibration, held_out = int8_models.batches(4, seed=11), int8_models.batches(4, seed=12)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
        compiled = torch.compile(ipex.convert(prepared), backend="ipex", options={"autotune": False})
        ours = torch.cat([compiled(b) for b in held_out]).argmax(1)
        theirs = torch.cat([trained["model"](b) for b in held_out]).argmax(1)
    assert ipex.last_compile()["config"].dtype == "int8"
    assert ipex.last_compile()["source"] == "convert()"
    assert (ours == theirs).float().mean() >= 0.99
    torch._dynamo.reset()  # called outside no_grad, as a server may: still int8, not a training graph
    compiled(held_out[0])
    assert ipex.last_compile()["config"].dtype == "int8"
    with pytest.raises(ValueError, match="has seen no inputs"):
        ipex.convert(ipex.prepare(trained["model"]))
    with pytest.raises(KnobError, match="valid values: 'performance', 'mixed'"):
        ipex.prepare(trained["model"], preset="fast")


def test_show_export_and_import_keep_the_accuracy_figures_and_the_quantized_model(tuned, tmp_path,
                                                                                  autotune):
    def cli(*argv):
        code, out, said = autotune(*argv)
        assert code == 0, said
        return out
    shown = cli("show", "int8_models:classifier", "--storage", tuned["url"])
    assert "accuracy: top-1 agreement with float32" in shown
    cli("export", "-o", str(tmp_path / "export.yaml"), "--storage", tuned["url"])
    copy = f"sqlite:///{tmp_path}/copy.db"
    cli("import", str(tmp_path / "export.yaml"), "--storage", copy)
    with ConfigStore(tuned["url"], read_only=True) as a, ConfigStore(copy, read_only=True) as b:
        [original], [imported] = a.list(), b.list()
        assert b.precision(imported.id) == a.precision(original.id)
        # the record for other weights came along: without it they would get the defaults
        fallback = a.best(original.workload_key, original.hardware_key, int8=False)
        copied = b.best(imported.workload_key, imported.hardware_key, int8=False)
        assert fallback and copied and copied.config == fallback.config
    # ls and show name that record too: it is what most weights of this model get
    heading = "# what the lookup applies to weights the int8 config above was not calibrated for"
    assert shown.index(original.config_id) < shown.index(heading) < shown.index(fallback.config_id)
    listed = cli("ls", "--storage", tuned["url"]).splitlines()
    [row] = [i for i, line in enumerate(listed) if original.config_id in line]
    assert listed[row + 1].startswith("  other weights") and fallback.config_id in listed[row + 1]


def test_dynamic_activations_compute_their_scales_per_call_and_static_ones_do_not(trained):
    """pt2e_int8_activations reaches torchao's quantizer: only the dynamic program chooses its
    activation scales at run time (the static one carries them as constants)."""
    batches = int8_models.batches(4, seed=3)
    programs = {}
    for mode in ("static", "dynamic"):
        _, [graph] = _calibrated(trained["model"], {**INT8_CONFIGS[2], "pt2e_int8_activations": mode},
                                 batches)
        path = graph["quantized"]["files"]["model.pt2"]
        programs[mode] = str(torch.export.load(path).graph)
    assert "choose_qparams" in programs["dynamic"]
    assert "choose_qparams" not in programs["static"]


def test_a_calibration_mark_of_an_older_version_is_read_as_its_batches():
    """A model converted and saved whole by a version that marked batches without their names."""
    batches = [(torch.randn(2, 4), torch.randn(2, 5)) for _ in range(3)]
    weight = torch.nn.Parameter(torch.randn(3))
    setattr(weight, quantization.CALIBRATION_MARK, batches)
    marked, names = quantization.marked_calibration([weight])
    assert names is None and [b for batch in marked for b in batch] == [b for batch in batches for b in batch]
    with quantization.calibrating(marked, names):
        assert [len(batch) for batch in quantization.calibration_batches()] == [2, 2, 2]
