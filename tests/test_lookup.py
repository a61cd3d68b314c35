"""Tuned configs reach plain torch.compile(backend="ipex"): keys, end to end, faults, explain/env.

One real tuner run (module fixture) feeds the end-to-end, explain and env tests; the fault tests
write their stores by hand.
"""

import dataclasses
import json
import logging
import os
import random
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from autotune import cli
from autotune.explain import find_allocators, plan
from autotune.models import ModelSpec
from autotune.tuner import Tuner, TuneRequest
from backend import compiler, lookup, notices
from backend import store as store_module
from backend.config import BackendConfig
from backend.fingerprint import hardware_info, hardware_key
from backend.store import ConfigStore, TunedRecord, default_storage_url

from models import SmallCNN, _init, build
from tuner_models import small_cnn
from tuning import QUICK_MEASURE, SELECTION_ROUNDS, worker_pythonpath

SMALL_CNN = "tuner_models:small_cnn"




@pytest.fixture(autouse=True)
def fresh_lookup():
    """Every test starts like a fresh process: no cached lookups, no warning said yet."""
    lookup.clear_cache()
    notices._said.clear()
    torch._dynamo.reset()
    yield
    lookup.clear_cache()


def compile_once(model, x, options=None):
    """(output, what the backend recorded for the graph) of one fresh compile and call."""
    torch._dynamo.reset()
    with torch.no_grad(), compiler.recording() as graphs:
        out = torch.compile(model, backend="ipex", options=options)(x)
    return out, graphs[-1]


def backend_messages(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "backend" and r.levelno == level]


# -- keys --------------------------------------------------------------------------------------

KEY_CHILD = textwrap.dedent("""
    import torch
    from backend import compiler
    from models import build
    model, x = build("cnn")
    with torch.no_grad():
        torch.compile(model, backend="ipex")(x)
    print(compiler.last_compile()["workload_key"])
""")


def test_the_same_model_in_another_process_has_the_same_workload_key():
    child = subprocess.run([sys.executable, "-c", KEY_CHILD], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PYTHONPATH": worker_pythonpath()})
    assert child.returncode == 0, child.stderr[-3000:]
    _, here = compile_once(*build("cnn"))
    assert child.stdout.split()[-1] == here["workload_key"]


def test_keys_follow_structure_and_signature_not_weights():
    model, x = build("cnn")
    _, base = compile_once(model, x)

    torch.manual_seed(1)
    reweighted = _init(SmallCNN())
    assert not torch.equal(reweighted.conv.weight, model.conv.weight)
    _, new_weights = compile_once(reweighted, x)
    assert new_weights["workload_key"] == base["workload_key"]

    _, batch4 = compile_once(model, torch.randn(4, *x.shape[1:]))
    assert batch4["workload_key"] != base["workload_key"]
    assert batch4["family_key"] == base["family_key"]
    assert (base["batch_size"], batch4["batch_size"]) == (2, 4)

    _, float64 = compile_once(model.double(), x.double())
    assert float64["workload_key"] != base["workload_key"]
    assert float64["family_key"] != base["family_key"]

    _, transformer = compile_once(*build("transformer"))
    assert transformer["workload_key"] != base["workload_key"]
    assert transformer["family_key"] != base["family_key"]


# -- end to end: a real tuner run, then plain torch.compile ------------------------------------

@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The one tuner run of this module: small_cnn, quick space, 4 trials."""
    url = f"sqlite:///{tmp_path_factory.mktemp('tuned') / 'store.db'}"
    request = TuneRequest(model=ModelSpec(SMALL_CNN), space="quick", trials=4, timeout_s=None,
                          storage=url, seed=0, measure=QUICK_MEASURE,
                          confirm_measure=QUICK_MEASURE, confirm_rounds=2, confirm_top=1,
                          confirm_max_rounds=2, max_wait_s=5, selection_rounds=SELECTION_ROUNDS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", worker_pythonpath())  # workers import tuner_models
        result = Tuner(request).run()
    assert result.stored_ids, result.message
    with ConfigStore(url, read_only=True) as store:
        [record] = store.list(model_label=SMALL_CNN)
    return SimpleNamespace(url=url, record=record)


APPLY_CHILD = textwrap.dedent("""
    import json, logging, torch
    import backend
    from backend import compiler
    from autotune.models import ModelSpec, build

    lines = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("backend").addHandler(handler)
    logging.getLogger("backend").setLevel(logging.INFO)

    model, inputs = build(ModelSpec("tuner_models:small_cnn"))
    with torch.no_grad(), compiler.recording() as graphs:
        out = torch.compile(model, backend="ipex")(*inputs)
        error = (out - model(*inputs)).abs().max().item()
    print(json.dumps({"graphs": graphs, "log": lines, "error": error,
                      "config": backend.last_compile()["config"].to_dict()}))
""")


def test_a_fresh_process_applies_the_stored_winner(tuned):
    child = subprocess.run([sys.executable, "-c", APPLY_CHILD], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PYTHONPATH": worker_pythonpath(),
                                             "IPEX_AUTOTUNE_STORAGE": tuned.url})
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.splitlines()[-1])
    [graph] = report["graphs"]
    assert graph["workload_key"] == tuned.record.workload_key
    assert graph["config_id"] == tuned.record.config_id
    assert graph["source"].startswith("store (exact")
    assert report["config"] == BackendConfig(tuned.record.config).to_dict()
    [line] = [m for m in report["log"] if "compiled with" in m]
    assert tuned.record.config_id in line and "from store (exact" in line
    assert report["error"] < 1e-4


def test_the_fastest_record_wins_and_its_knobs_take_effect(tuned, tmp_path, monkeypatch):
    copy = tmp_path / "store.db"
    with sqlite3.connect(tuned.url.removeprefix("sqlite:///")) as source, \
            sqlite3.connect(copy) as target:
        source.backup(target)
    # the stored config turns oneDNN Graph off, which the default has on
    plain = BackendConfig({"path": "torchscript", "onednn_fusion": False})
    faster = {**tuned.record.latency, "median_ms": tuned.record.latency["median_ms"] / 10}
    with ConfigStore(f"sqlite:///{copy}") as store:
        store.put(dataclasses.replace(tuned.record, config=plain.to_dict(),
                                      config_id=plain.config_id, latency=faster))
    monkeypatch.setenv("IPEX_AUTOTUNE_STORAGE", f"sqlite:///{copy}")
    model, (x,) = small_cnn()

    def fusion_groups(options):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="ipex", options=options)
        with torch.no_grad():
            for _ in range(2):  # the profiling executor optimizes on the second call
                torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
        return "oneDNNFusionGroup" in str(torch.jit.last_executed_optimized_graph())

    assert not fusion_groups(None)
    assert compiler.last_compile()["config"].config_id == plain.config_id
    assert fusion_groups({"autotune": False})


def test_autotune_false_and_explicit_options_bypass_the_store(tuned, monkeypatch):
    monkeypatch.setenv("IPEX_AUTOTUNE_STORAGE", tuned.url)
    model, (x,) = small_cnn()
    _, looked_up = compile_once(model, x)
    assert looked_up["source"].startswith("store (exact")

    _, off = compile_once(model, x, {"autotune": False})
    assert off["source"] == "default"
    assert off["config_id"] == BackendConfig({}).config_id != tuned.record.config_id

    explicit = {"path": "torchscript", "conv_bn_folding": False}
    _, given = compile_once(model, x, explicit)
    assert given["source"] == "options"
    assert given["config_id"] == BackendConfig(explicit).config_id != tuned.record.config_id


def test_an_untuned_batch_size_uses_the_nearest_tuned_one(tuned, monkeypatch, caplog):
    monkeypatch.setenv("IPEX_AUTOTUNE_STORAGE", tuned.url)
    caplog.set_level(logging.INFO, logger="backend")
    model, (x,) = small_cnn()
    batch2 = torch.cat([x, -x])
    out, graph = compile_once(model, batch2)
    torch.testing.assert_close(out, model(batch2), atol=1e-4, rtol=1e-4)
    assert (graph["batch_size"], tuned.record.batch_size) == (2, 1)
    assert graph["workload_key"] != tuned.record.workload_key
    assert graph["config_id"] == tuned.record.config_id
    assert graph["source"].startswith("store (nearest tuned batch size 1")
    assert ("ipex backend: no config tuned for batch size 2; using the one tuned for batch size 1"
            in backend_messages(caplog, logging.INFO))


# -- faults: the compile always works, with exactly one warning -----------------------------------

def make_record(keys, config, median_ms=0.1) -> TunedRecord:
    stats = {"median_ms": median_ms, "p10_ms": median_ms, "p90_ms": median_ms, "iqr_ms": 0.0,
             "runs": 10}
    return TunedRecord(
        workload_key=keys["workload_key"], hardware_key=hardware_key(),
        family_key=keys["family_key"], batch_size=keys["batch_size"], model_label="cnn",
        config=config, config_id="cfg-handwritten", latency=stats, baselines={}, speedup=2.0,
        torch_version=torch.__version__, study_name="handwritten", hardware={})


@pytest.fixture(scope="module")
def cnn_keys():
    torch._dynamo.reset()
    return compile_once(*build("cnn"), {"autotune": False})[1]


def compile_under_fault(name, caplog):
    """(warnings on logger "backend", where the config came from, compile seconds)."""
    lookup.clear_cache()
    notices._said.clear()
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="backend")
    model, x = build(name)
    start = time.perf_counter()
    out, graph = compile_once(model, x)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)
    return backend_messages(caplog, logging.WARNING), graph["source"], seconds


def test_a_lookup_that_answered_before_a_clear_does_not_cache_its_stale_answer(tmp_path, cnn_keys,
                                                                               monkeypatch):
    # a lookup reads an empty store; meanwhile a tool stores a config and clears the cache
    url = f"sqlite:///{tmp_path / 'store.db'}"
    ConfigStore(url).close()
    answered, go_on, found_first = threading.Event(), threading.Event(), []
    read_store = lookup._find_in

    def slow_read(store, keys, weights_digest):
        found = read_store(store, keys, weights_digest)
        answered.set()
        go_on.wait(10)
        return found

    monkeypatch.setattr(lookup, "_find_in", slow_read)
    reader = threading.Thread(target=lambda: found_first.append(lookup.find(cnn_keys, url)))
    reader.start()
    assert answered.wait(10)
    with ConfigStore(url) as store:
        store.put(make_record(cnn_keys, {"threads": 1}))
    lookup.clear_cache()
    go_on.set()
    reader.join(10)
    assert found_first == [None]
    monkeypatch.setattr(lookup, "_find_in", read_store)
    found = lookup.find(cnn_keys, url)
    assert found is not None and found.record.study_name == "handwritten"


def test_a_lookup_between_its_reads_when_clear_cache_closes_its_store_still_answers(
        tmp_path, cnn_keys, monkeypatch, caplog):
    # another thread's tool clears the cache while this lookup has read the tables, not the record
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with ConfigStore(url) as store:
        store.put(make_record(cnn_keys, {"threads": 1}))
    lookup.clear_cache()
    reading, go_on, answers = threading.Event(), threading.Event(), []
    read_best = ConfigStore.best

    def paused_best(store, *args, **kwargs):
        reading.set()
        go_on.wait(10)
        return read_best(store, *args, **kwargs)

    monkeypatch.setattr(ConfigStore, "best", paused_best)
    monkeypatch.setattr(notices, "_said", set())  # a warning said by an earlier test is said again
    caplog.set_level(logging.WARNING, logger="backend")
    reader = threading.Thread(target=lambda: answers.append(lookup.find(cnn_keys, url)))
    reader.start()
    assert reading.wait(10)
    lookup.clear_cache()
    go_on.set()
    reader.join(10)
    assert not reader.is_alive()
    [found] = answers
    assert found is not None and found.record.study_name == "handwritten"
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_missing_store_is_silent(tmp_path, monkeypatch, caplog):
    # Before the first `autotune run` there is no store; that is normal, not worth a warning.
    monkeypatch.setenv("IPEX_AUTOTUNE_STORAGE", f"sqlite:///{tmp_path / 'none' / 'store.db'}")
    warnings, source, _ = compile_under_fault("cnn", caplog)
    assert (warnings, source) == ([], "default")
    assert list(tmp_path.iterdir()) == [], "a lookup never creates the store"


def _empty(path, keys):
    path.write_bytes(b"")


def _corrupt(path, keys):
    path.write_bytes(random.Random(0).randbytes(4096))


def _future_schema(path, keys):
    with ConfigStore(f"sqlite:///{path}") as store:
        store.put(make_record(keys, {"path": "torchscript"}))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE autotune_meta SET value = '99' WHERE key = 'schema_version'")


def _unknown_knob(path, keys):
    # a knob of a newer ipex-autotune: put() refuses it, so write it as that version would
    with ConfigStore(f"sqlite:///{path}") as store:
        store.put(make_record(keys, {"path": "inductor"}))
    with sqlite3.connect(path) as db:
        db.execute("""UPDATE autotune_records SET config = json_set(config, '$.no_such_knob', 1)""")


def _hand_edited_speedup(path, keys):
    with ConfigStore(f"sqlite:///{path}") as store:
        store.put(make_record(keys, {"path": "inductor"}))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE autotune_records SET speedup = 'fast'")


def _config_not_a_mapping_at_another_batch_size(path, keys):
    # the nearest-batch query reads every row's config before any validation
    with ConfigStore(f"sqlite:///{path}") as store:
        store.put(make_record({**keys, "workload_key": "wl-other", "batch_size": keys["batch_size"] + 1},
                              {"path": "inductor"}))
    with sqlite3.connect(path) as db:
        db.execute("""UPDATE autotune_records SET config = '["inductor"]'""")


@pytest.mark.parametrize("make_store, warning", [
    (_empty, "holds no autotune tables"),
    (_corrupt, "file is not a database"),
    (_future_schema, "written by a newer ipex-autotune (schema 99"),
    (_unknown_knob, "unknown knob 'no_such_knob'"),
    (_hand_edited_speedup, "speedup: got 'fast'; expected a positive number"),
    (_config_not_a_mapping_at_another_batch_size, "config: got ['inductor']; expected a mapping"),
], ids=["empty-file", "corrupt-file", "future-schema", "unknown-knob", "speedup-not-a-number",
        "config-not-a-mapping"])
def test_a_broken_store_costs_one_warning_and_the_defaults(make_store, warning, cnn_keys,
                                                             tmp_path, monkeypatch, caplog):
    path = tmp_path / "store.db"
    make_store(path, cnn_keys)
    monkeypatch.setenv("IPEX_AUTOTUNE_STORAGE", f"sqlite:///{path}")
    warnings, source, _ = compile_under_fault("cnn", caplog)
    assert len(warnings) == 1 and warning in warnings[0], warnings
    assert warnings[0].startswith("ipex backend: tuned-config lookup failed, using defaults")
    assert source == "default"


def test_a_locked_store_costs_one_warning_and_well_under_a_second(cnn_keys, tmp_path,
                                                                   monkeypatch, caplog):
    path = tmp_path / "store.db"
    with ConfigStore(f"sqlite:///{path}") as store:
        store.put(make_record(cnn_keys, {"path": "torchscript", "weights_prepack": False}))
    monkeypatch.setenv("IPEX_AUTOTUNE_STORAGE", f"sqlite:///{path}")
    _, unlocked_source, _ = compile_under_fault("cnn", caplog)
    assert unlocked_source.startswith("store (exact"), "the record is valid when not locked"

    db = sqlite3.connect(path, isolation_level=None)
    # A rollback journal, not WAL: then an exclusive writer blocks readers too.
    assert db.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    db.execute("BEGIN EXCLUSIVE")
    try:
        warnings, source, _ = compile_under_fault("cnn", caplog)
        # the lookup alone, timed: a compile's own time swings by seconds on a loaded machine
        lookup.clear_cache()
        start = time.perf_counter()
        found = lookup.find(cnn_keys, default_storage_url())
        lookup_s = time.perf_counter() - start
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert len(warnings) == 1 and "database is locked" in warnings[0], warnings
    assert source == "default" and found is None
    assert lookup_s < 1.0, f"a locked lookup took {lookup_s:.2f} s"


def test_a_postgres_server_that_never_answers_costs_the_connect_timeout_not_minutes(cnn_keys, monkeypatch,
                                                                                    caplog):
    # a firewalled database host: TCP connects, nothing answers; without a timeout libpq waits
    # for ever (or for the kernel's minutes), inside every torch.compile of every new graph
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setattr(store_module, "CONNECT_TIMEOUT_S", 1)
    url = f"postgresql+psycopg://nobody@127.0.0.1:{silent.getsockname()[1]}/autotune"
    caplog.set_level(logging.WARNING, logger="backend")
    lookup.clear_cache()
    notices._said.clear()
    answers = []
    # in a thread: without the timeout it would hang this test run, not fail it
    looking = threading.Thread(target=lambda: answers.append(lookup.find(cnn_keys, url)), daemon=True)
    try:
        looking.start()
        looking.join(10)
        assert answers == [None], "the lookup was still waiting for the server after 10 s"
        # the next graph of the same model does not wait for the same silent server again
        start = time.perf_counter()
        assert lookup.find({**cnn_keys, "workload_key": "wl-next-graph"}, url) is None
        again_s = time.perf_counter() - start
    finally:
        silent.close()
    assert again_s < 0.5, f"the next graph's lookup waited {again_s:.1f} s"
    warnings = [r.getMessage() for r in caplog.records if r.name == "backend"]
    assert len(warnings) == 1 and "lookup failed, using defaults" in warnings[0], warnings
    assert "so this process asks that store again only after 60 s" in warnings[0]


def test_a_stored_config_that_fails_to_compile_falls_back_with_one_warning(tmp_path, monkeypatch,
                                                                           caplog):
    # The transformer's attention bmm has no C++ GEMM template: CPP alone leaves no choice.
    # freezing off: weight prepacking (fixed per process) stays out of this test's warnings
    failing = {"path": "inductor", "max_autotune": True, "gemm_backends": "CPP", "freezing": False}
    model, x = build("transformer")
    with pytest.raises(Exception, match="NoValidChoicesError"):
        compile_once(model, x, failing)
    _, keys = compile_once(model, x, {"autotune": False})
    with ConfigStore(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.put(make_record(keys, failing))
    monkeypatch.setenv("IPEX_AUTOTUNE_STORAGE", f"sqlite:///{tmp_path / 'store.db'}")
    warnings, source, _ = compile_under_fault("transformer", caplog)
    assert len(warnings) == 1 and "failed to compile" in warnings[0], warnings
    assert "NoValidChoicesError" in warnings[0] and "\n" not in warnings[0], "one line, with the cause"
    assert source == "default (stored config failed)"
    assert compiler.last_compile()["config"] == BackendConfig({})


# -- autotune explain / autotune env -----------------------------------------------------------

def test_explain_shows_the_stored_config_where_it_comes_from_and_why(tuned, capsys):
    assert cli.main(["explain", "--model", SMALL_CNN, "--storage", tuned.url]) == 0
    out = capsys.readouterr().out
    record = tuned.record
    assert f"graph 1/1: {record.workload_key}" in out
    assert f"applies {record.config_id} {BackendConfig(record.config).non_default()}" in out
    assert "from    store (exact" in out
    assert f"this host: {hardware_key()}" in out
    assert (f"study {record.study_name}, tuned on {record.hardware_key} (this host)" in out
            and f"{record.speedup:.2f}x over the backend default" in out
            and f"torch {record.torch_version}" in out)


INPUT_FN_MODEL = "user_models:with_input_fn"


@pytest.fixture
def input_fn_store(tmp_path):
    """A store for INPUT_FN_MODEL at batch size 3, and that graph's keys."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    ConfigStore(url).close()
    [graph] = plan(ModelSpec(INPUT_FN_MODEL, batch_size=3), url)
    return SimpleNamespace(url=url, keys=graph.keys)


def _put(url, keys, config, **changes):
    from backend.knobs import KNOBS

    newer = {k: v for k, v in config.items() if k not in KNOBS}  # knobs of a newer version
    known = {k: v for k, v in config.items() if k in KNOBS}
    record = dataclasses.replace(make_record(keys, known), model_label=INPUT_FN_MODEL, **changes)
    with ConfigStore(url) as store:
        store.put(record)  # put() refuses unknown knobs: write them as a newer version would
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        for knob, value in newer.items():
            db.execute("UPDATE autotune_records SET config = json_set(config, ?, ?)",
                       (f"$.{knob}", value))


@pytest.mark.parametrize("stored, why", [
    (None, "nothing tuned for model 'user_models:with_input_fn'"),
    ({"hardware_key": "hw-elsewhere", "hardware": {"cpu": "Other CPU", "cores": 64}},
     "tuned only on other hardware: hw-elsewhere (Other CPU, 64 cores)"),
    ({"hardware_key": hardware_key({**hardware_info(), "cores": 64}),
      "hardware": {**hardware_info(), "cores": 64}},
     "tuned on this CPU for 64 core(s), and this process may use"),
    ({"workload_key": "wl-other", "family_key": "fam-other", "batch_size": 5},
     "tuned on this host, but for other graphs (batch size(s) 5"),
    ({"config": {"path": "inductor", "no_such_knob": 1}},
     "a record for this graph exists but cannot be used here"),
], ids=["nothing", "other-hardware", "other-core-count", "other-graph", "unusable"])
def test_explain_says_why_no_stored_config_applies(stored, why, input_fn_store, capsys):
    if stored is not None:
        changes = dict(stored)
        _put(input_fn_store.url, input_fn_store.keys, changes.pop("config", {"path": "inductor"}),
             **changes)
    argv = ["explain", "--model", INPUT_FN_MODEL, "--batch-size", "3",
            "--storage", input_fn_store.url]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "from    default" in out
    assert why in out


def test_env_exports_the_tuned_threads_and_names_allocators(tuned, capsys):
    assert cli.main(["env", "--model", SMALL_CNN, "--storage", tuned.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith(("export ", "# ")) for line in lines), lines
    threads = BackendConfig(tuned.record.config).threads
    assert threads, "the quick space and the backend default both set threads"
    assert f"export OMP_NUM_THREADS={threads}" in lines
    assert "# export OMP_PROC_BIND=close" in lines and "# export OMP_PLACES=cores" in lines
    for name, path in find_allocators().items():
        expected = f"# export LD_PRELOAD={path}  # {name}" if path else f"# {name}: not installed"
        assert expected in lines


def test_env_tells_how_to_set_stored_interop_threads(input_fn_store, capsys):
    _put(input_fn_store.url, input_fn_store.keys,
         {"path": "torchscript", "threads": 1, "interop_threads": 2})
    argv = ["env", "--model", INPUT_FN_MODEL, "--batch-size", "3", "--storage", input_fn_store.url]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "export OMP_NUM_THREADS=1" in out.splitlines()
    assert "torch.set_num_interop_threads(2)" in out


def test_env_without_a_tuned_config_is_an_error_that_points_to_explain(input_fn_store, capsys):
    argv = ["env", "--model", INPUT_FN_MODEL, "--batch-size", "3", "--storage", input_fn_store.url]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no tuned config for model 'user_models:with_input_fn' on this hardware" in captured.err
    assert "autotune explain --model user_models:with_input_fn" in captured.err


def test_allocators_are_found_in_the_given_folders(tmp_path):
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    assert find_allocators([str(tmp_path / "empty"), str(tmp_path)]) == {
        "jemalloc": str(tmp_path / "libjemalloc.so.2"), "tcmalloc": None}
