"""Bad input and races that used to hide a tuned config, store a wrong number or print a traceback.

Each test drives the real CLI (in this process or as `autotune` in a subprocess), real stores
and real processes; none mocks the store or the filesystem.
"""

import io
import multiprocessing
import os
import re
import sqlite3
import subprocess
import sys

import pytest
import torch
import yaml

from autotune import cli
from autotune.models import ModelSpec
from autotune.confirmation import BACKEND_DEFAULT, choose_winner, store_winner
from autotune.tuner import TuneRequest, open_study
from autotune.workbench import Candidate
from autotune.bench import Stats
from autotune.worker import TORCH_COMPILE_DEFAULT
from backend import BackendConfig
from backend.fingerprint import hardware_info, hardware_key
from backend.store import ConfigStore, TunedRecord

import racers
from tuning import worker_pythonpath

AUTOTUNE = os.path.join(os.path.dirname(sys.executable), "autotune")


@pytest.fixture(autouse=True)
def processes_import_test_models(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", worker_pythonpath())


def good_record(workload_key="wl-good", model_label="tuned", median_ms=1.0) -> TunedRecord:
    config = BackendConfig({"path": "torchscript", "channels_last": False})
    hardware = hardware_info()
    stats = {"median_ms": median_ms, "p10_ms": median_ms, "p90_ms": median_ms, "iqr_ms": 0.01,
             "runs": 20}
    return TunedRecord(workload_key=workload_key, hardware_key=hardware_key(hardware),
                       family_key="fam-good", batch_size=1, model_label=model_label,
                       config=config.to_dict(), config_id=config.config_id, latency=stats,
                       baselines={BACKEND_DEFAULT: dict(stats, median_ms=2 * median_ms)},
                       speedup=2.0, torch_version=torch.__version__, study_name="s",
                       hardware=hardware)


def stored(url):
    return [r.to_dict() for r in ConfigStore(url, read_only=True).list()]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("autotune: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- 1. `autotune import` validates every record -------------------------------------------------

@pytest.fixture
def exported(tmp_path):
    """A store holding one good record, and an export file of it."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with ConfigStore(url) as store:
        store.put(good_record())
    path = tmp_path / "tuned.yaml"
    assert cli.main(["export", "-o", str(path), "--storage", url]) == 0
    return url, path


@pytest.mark.parametrize("knob, value, pieces", [
    ("turbo_mode", True, ["unknown knob 'turbo_mode'"]),
    ("threads", "two", ["knob 'threads'", "'two'", "an integer from 0 to"]),
    ("channels_last", "yes please", ["knob 'channels_last'", "'yes please'", "True, False"]),
])
def test_import_rejects_a_file_with_one_bad_record_and_writes_nothing(exported, knob, value, pieces,
                                                                       capsys):
    url, path = exported
    data = yaml.safe_load(path.read_text())
    bad = dict(data["records"][0], config={**data["records"][0]["config"], knob: value})
    # the bad record would tie with the good one and be newer: the lookup would pick it
    data["records"] = [data["records"][0], bad]
    path.write_text(yaml.safe_dump(data))
    before = stored(url)
    assert cli.main(["import", str(path), "--storage", url]) == 2
    err = one_line_error(capsys)
    assert f"{path}: record 1: config: " in err and "nothing imported" in err
    for piece in pieces:
        assert piece in err
    assert stored(url) == before


def refused_import(exported, edit, capsys) -> str:
    """The error of importing the export with ``edit`` applied to its record; nothing stored."""
    url, path = exported
    data = yaml.safe_load(path.read_text())
    edit(data["records"][0])
    path.write_text(yaml.safe_dump(data))
    before = stored(url)
    assert cli.main(["import", str(path), "--storage", url]) == 2
    err = one_line_error(capsys)
    assert stored(url) == before
    return err


@pytest.mark.parametrize("field, value, pieces", [
    ("noise", {"iqr": 0.03}, ["latency.noise: got {'iqr': 0.03}", "quiet_rounds"]),
    ("speedup_evidence", {"outcome": "maybe"}, ["latency.speedup_evidence", "faster, slower or undecided"]),
])
def test_import_rejects_evidence_that_ls_and_show_could_not_read(exported, field, value, pieces, capsys):
    # imported, {"iqr": 0.03} made `autotune ls` fail with a KeyError on every later run
    err = refused_import(exported, lambda record: record["latency"].update({field: value}), capsys)
    assert all(piece in err for piece in pieces), err


@pytest.mark.parametrize("fact, value, expected", [
    ("features", 5, "expected a list of CPU flags"), ("cores", "2", "expected a positive integer"),
    ("cpu", None, "expected text"),
])
def test_import_rejects_hardware_facts_no_host_has(exported, fact, value, expected, capsys):
    # their recomputed hardware key matched no host: the record was stored and never applied
    err = refused_import(exported, lambda record: record["hardware"].update({fact: value}), capsys)
    assert f"record 0: hardware.{fact}: got {value!r}; {expected}" in err, err


def test_import_recomputes_the_ids_of_a_record(exported, tmp_path):
    _, path = exported
    data = yaml.safe_load(path.read_text())
    record = data["records"][0]
    record.update(config_id="cfg-edited", hardware_key="hw-edited",
                  config={**record["config"], "channels_last": True})
    path.write_text(yaml.safe_dump(data))
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert cli.main(["import", str(path), "--storage", other]) == 0
    [imported] = ConfigStore(other, read_only=True).list()
    assert imported.config_id == BackendConfig(imported.config).config_id != "cfg-edited"
    assert imported.config["channels_last"] is True
    assert imported.hardware_key == hardware_key(hardware_info()), "lookups must find it here"


def test_export_pipes_into_import(exported, tmp_path):
    url, _ = exported
    other = f"sqlite:///{tmp_path / 'other.db'}"
    exporting = subprocess.Popen([AUTOTUNE, "export", "--storage", url], stdout=subprocess.PIPE)
    importing = subprocess.run([AUTOTUNE, "import", "-", "--storage", other], stdin=exporting.stdout,
                               capture_output=True, text=True, timeout=300)
    assert exporting.wait(timeout=60) == 0 and importing.returncode == 0, importing.stderr
    assert "imported 1 record(s)" in importing.stdout
    assert [r["config_id"] for r in stored(other)] == [r["config_id"] for r in stored(url)]


def test_import_refuses_an_export_of_a_newer_format(exported, capsys):
    url, path = exported
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "ipex_autotune_export": 2}))
    before = stored(url)
    assert cli.main(["import", str(path), "--storage", url]) == 2
    assert "export format 2; this ipex-autotune reads format 1" in one_line_error(capsys)
    assert stored(url) == before


def test_import_from_standard_input_names_it_in_its_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("just some text\n"))
    assert cli.main(["import", "-", "--storage", f"sqlite:///{tmp_path / 'store.db'}"]) == 2
    assert "standard input is not an `autotune export` file" in one_line_error(capsys)


def test_import_of_a_binary_file_is_a_clear_error(exported, tmp_path, capsys):
    url, _ = exported
    before = stored(url)
    assert cli.main(["import", str(tmp_path / "store.db"), "--storage", url]) == 2
    err = one_line_error(capsys)
    assert "store.db is binary, not text" in err and "autotune export" in err
    assert stored(url) == before


# -- 2. any number of processes open a new store at the same moment ------------------------------

def test_tuners_stores_and_readers_opening_one_new_store_together_all_join(tmp_path):
    # Without the retry this failed every round ("table autotune_meta already exists", and with
    # our tables in place "table studies already exists" from optuna's).
    rounds = 4
    urls = [f"sqlite:///{tmp_path / f'race{i}.db'}" for i in range(rounds)]
    for url in urls[rounds // 2:]:
        ConfigStore(url).close()  # these rounds race on optuna's tables alone
    kinds = ["tuner", "tuner", "store", "reader"]
    spawn = multiprocessing.get_context("spawn")
    barrier, errors = spawn.Barrier(len(kinds)), spawn.Queue()
    racing = [spawn.Process(target=racers.open_together, args=(kind, urls, barrier, errors))
              for kind in kinds]
    for process in racing:
        process.start()
    for process in racing:
        process.join(timeout=900)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    assert [p.exitcode for p in racing] == [0] * len(kinds)


# -- 3. every flag the user gives wins, whatever its syntax ---------------------------------------

@pytest.mark.parametrize("flags", [["--batch-size=4"], ["--batch-size", "4"]])
def test_batch_size_overrides_the_input_shape_and_the_study_file(flags, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("model: user_models:module_only\nbatch_size: 2\ninput_shape: [3, 8, 8]\n")
    parser = cli.build_parser()
    for argv in (["run", "--model", "user_models:module_only", "--input-shape", "1,3,8,8", *flags],
                 ["run", "--study", str(study), *flags],
                 ["run", "--study", str(study), "--input-shape", "1,3,8,8", *flags]):
        spec = cli._request_from_args(parser.parse_args(argv)).model
        assert (spec.batch_size, spec.input_shapes) == (4, ((3, 8, 8),)), argv
    given_shape = ["run", "--study", str(study), "--input-shape", "3,3,16,16"]
    spec = cli._request_from_args(parser.parse_args(given_shape)).model
    assert (spec.batch_size, spec.input_shapes) == (3, ((3, 16, 16),))


# -- 4. a module:callable whose package is missing -------------------------------------------------

@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_missing_package_is_a_clear_error(command, capsys):
    assert cli.main([command, "--model", "nosuchpkg.mod:build"]) == 2
    err = one_line_error(capsys)
    assert "cannot import module 'nosuchpkg.mod' (No module named 'nosuchpkg')" in err


# -- 5. --jobs outside 1..cores ------------------------------------------------------------------

@pytest.mark.parametrize("jobs", ["0", "-1", "too many"])
def test_jobs_outside_the_usable_cores_are_refused_alike(jobs, tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    jobs = str(cores + 1) if jobs == "too many" else jobs
    code = cli.main(["run", "--model", "user_models:module_only", "--input-shape", "1,3,8,8",
                     "--trials", "1", "--jobs", jobs, "--storage", f"sqlite:///{tmp_path / 's.db'}"])
    assert code == 2
    err = one_line_error(capsys)
    assert f"--jobs {jobs}: this process may use {cores} core(s)" in err
    assert f"choose 1 to {cores}" in err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("args", [
    ["--model", "user_models:module_only", "--input-shape", "1,3,8,8", "--jobs", "0"],
    ["--model", "nosuchmod:build"],  # found out in the preflight, beside the zygote's imports
])
def test_a_run_refused_leaves_no_zygote_importing_beside_what_runs_next(args, tmp_path, capsys):
    # a zygote left importing torch (seconds of a core) made the next tests here twice as slow
    from autotune import zygote
    zygote.shutdown()
    assert cli.main(["run", *args, "--storage", f"sqlite:///{tmp_path / 's.db'}"]) == 2
    capsys.readouterr()
    children = subprocess.run(["ps", "-o", "args=", "--ppid", str(os.getpid())],
                              capture_output=True, text=True).stdout
    assert "autotune.zygote" not in children, children


# -- 7. output into a closed pipe ----------------------------------------------------------------

# Records enough for about 4x a pipe's 64 KiB buffer of each command's output (export and show
# print ~800 bytes a record, ls ~130): the command is still writing when the reader goes. Not
# more: export and show render every record before their first write.
@pytest.mark.parametrize("command,records", [(["show", "tuned"], 300), (["export"], 300),
                                             (["ls"], 2000)])
def test_every_command_can_be_piped_into_head(command, records, tmp_path):
    url = f"sqlite:///{tmp_path / 'many.db'}"
    with ConfigStore(url) as store:
        store.put_many([good_record(f"wl-{i:04d}") for i in range(records)])
    process = subprocess.Popen([AUTOTUNE, *command, "--storage", url], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline()
    process.stdout.close()  # what `| head -1` does once it has its line
    err = process.stderr.read()
    code = process.wait(timeout=120)
    # 128 + SIGPIPE, as `yes | head` ends; export's one large write may end before the close
    assert code == 141 or (command == ["export"] and code == 0), (code, err)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


# -- 8. a typo in a store URL ---------------------------------------------------------------------

def test_a_store_url_in_a_missing_folder_is_an_error_and_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "nonexistent-dir" / "x.db"
    assert cli.main(["run", "--model", "resnet18", "--storage", f"sqlite:///{typo}"]) == 2
    err = one_line_error(capsys)
    assert f"folder {typo.parent} does not exist" in err
    assert not typo.parent.exists()


# -- 9. a damaged schema version ------------------------------------------------------------------

def test_a_schema_version_that_is_not_a_number_is_a_clear_error(exported, capsys):
    url, _ = exported
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE autotune_meta SET value = 'one' WHERE key = 'schema_version'")
    for command in (["show", "tuned"], ["ls"]):
        assert cli.main([*command, "--storage", url]) == 2
        err = one_line_error(capsys)
        assert "damaged schema version 'one'" in err


# -- 10. weak messages ----------------------------------------------------------------------------

def test_a_file_that_is_not_a_checkpoint_gets_our_advice_not_torchs(tmp_path, capsys):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole_model.pt")
    (tmp_path / "notes.pt").write_text("hello")
    for name, what in [("whole_model.pt", "holds a pickled torch.nn.modules.linear.Linear object"),
                       ("notes.pt", "is not a file torch.save wrote")]:
        assert cli.main(["run", "--model", "resnet18", "--checkpoint", str(tmp_path / name)]) == 2
        err = one_line_error(capsys)
        assert what in err and "torch.save(model.state_dict(), path)" in err
        assert "weights_only" not in err and "Re-running" not in err


def test_a_module_in_the_working_directory_is_found_as_python_m_finds_it(tmp_path):
    (tmp_path / "my_local_model.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([AUTOTUNE, "explain", "--model", "my_local_model:build",
                             "--input-shape", "1,3,2,2"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "graph 1/1" in result.stdout
    elsewhere = subprocess.run([AUTOTUNE, "explain", "--model", "my_local_model:build",
                                "--input-shape", "1,3,2,2"], cwd=tmp_path.parent, env=env,
                               capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 2
    assert "run autotune from the folder that holds 'my_local_model'" in elsewhere.stderr


def test_data_and_metric_modules_in_the_working_directory_are_found_as_the_models_are(tmp_path):
    (tmp_path / "my_local_data.py").write_text(  # the model is not from there: its lookup would add it
        "import torch\n"
        "def batches():\n"
        "    return [torch.randn(1, 3, 224, 224) for _ in range(4)]\n"
        "def score(output, batch):\n"
        "    return 1.0\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    missing = tmp_path / "missing" / "x.db"  # fails after --data and --metric are resolved
    result = subprocess.run([AUTOTUNE, "run", "--model", "resnet18", "--data", "my_local_data:batches", "--metric",
                             "my_local_data:score", "--storage", f"sqlite:///{missing}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and f"folder {missing.parent} does not exist" in result.stderr, \
        result.stderr


def test_a_data_file_that_is_not_tensors_gets_our_advice_not_torchs(tmp_path, capsys):
    torch.save({"batches": [torch.nn.Linear(2, 2)]}, tmp_path / "objects.pt")
    (tmp_path / "notes.pt").write_text("hello")
    for name, what in [("objects.pt", "holds a pickled torch.nn.modules.linear.Linear object"),
                       ("notes.pt", "is not a file torch.save wrote")]:
        assert cli.main(["run", "--model", "resnet18", "--dtype", "float32,int8",
                         "--data", str(tmp_path / name)]) == 2
        err = one_line_error(capsys)
        assert what in err and "weights_only" not in err, err


@pytest.mark.parametrize("shape, expected", [
    ("2", "expected the batch dimension and a sample's"), ("1,3,x", "expected comma-separated integers"),
    ("1,0,4", "every dimension must be positive"),
])
def test_a_bad_input_shape_is_named_as_typed(shape, expected, capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--model", "resnet18", "--input-shape", shape])
    err = capsys.readouterr().err
    assert f"bad shape {shape!r}: {expected}" in err and "((),)" not in err, err


def test_a_model_with_two_inputs_takes_one_input_shape_per_input(tmp_path, capsys):
    one = ["explain", "--model", "user_models:two_inputs", "--input-shape", "1,3,8,8"]
    assert cli.main(one) == 2
    err = one_line_error(capsys)
    assert "does not take 1 input of shape (1, 3, 8, 8)" in err
    assert "give one --input-shape per forward input" in err
    assert cli.main([*one, "--input-shape", "1,5"]) == 0
    assert "graph 1/1" in capsys.readouterr().out
    study = tmp_path / "study.yaml"
    study.write_text("model: user_models:two_inputs\nbatch_size: 2\ninput_shape: [[3, 8, 8], [5]]\n")
    request = cli._request_from_args(cli.build_parser().parse_args(["run", "--study", str(study)]))
    assert request.model == ModelSpec("user_models:two_inputs", 2, ((3, 8, 8), (5,)))
    assert cli.main(["explain", "--model", "user_models:two_inputs", "--input-shape", "1,3,8,8",
                     "--input-shape", "2,5"]) == 2
    assert "the inputs have different batch sizes (1, 2)" in one_line_error(capsys)


# -- 11. the default's speedup over itself --------------------------------------------------------

def test_a_winner_with_the_default_config_is_stored_at_speedup_one(tmp_path):
    # On a busy machine a trial of the default config measured 82 ms and the backend default, a
    # second process of the same config, 180 ms: 2.19x was stored, a ratio of noise.
    request = TuneRequest(model=ModelSpec("user_models:module_only", input_shapes=(3, 8, 8)),
                          storage=f"sqlite:///{tmp_path / 'store.db'}", space="quick")
    default = request.default_config()

    def measured(name, config, ms):
        stats = Stats.of([ms] * 10)
        return Candidate(name, config, stats=stats, round_medians=[ms, ms],
                         graphs=[{"workload_key": "wl-self", "family_key": "fam-self",
                                  "batch_size": 1, "config": default.to_dict()}])

    candidates = {"trial #0": measured("trial #0", default, 82.0),
                  BACKEND_DEFAULT: measured(BACKEND_DEFAULT, default, 180.0)}
    outcome = choose_winner(candidates)
    assert outcome.winner is candidates[BACKEND_DEFAULT]
    study = open_study(request)
    store_winner(study, outcome, storage_url=request.storage_url, hardware=request.hardware,
                 model_label=request.model.name)
    [record] = ConfigStore(request.storage_url, read_only=True).list()
    assert record.config_id == default.config_id and record.speedup == 1.0
    assert re.search(r"\s1\.00x\s", _ls(request.storage_url))



def test_a_leader_stored_without_a_shown_gain_claims_no_speedup(tmp_path):
    # Not shown faster than the default, but stored because the default lost to torch.compile's
    # default: its median ratio (1.05x) was stored as its speedup, and the lookup printed it.
    request = TuneRequest(model=ModelSpec("user_models:module_only", input_shapes=(3, 8, 8)),
                          storage=f"sqlite:///{tmp_path / 'store.db'}", space="quick")
    default = request.default_config()
    leader = BackendConfig({**default.to_dict(), "channels_last": False})

    def measured(name, config, rounds, kind=""):
        return Candidate(name, config, stats=Stats.of(rounds), round_medians=rounds, kind=kind,
                         graphs=[{"workload_key": "wl-self", "family_key": "fam-self",
                                  "batch_size": 1, "config": (config or default).to_dict()}])

    candidates = {"trial #0": measured("trial #0", leader, [9.0, 10.5] * 5),
                  BACKEND_DEFAULT: measured(BACKEND_DEFAULT, default, [10.0] * 10),
                  TORCH_COMPILE_DEFAULT: measured(TORCH_COMPILE_DEFAULT, None, [8.0] * 10,
                                                  TORCH_COMPILE_DEFAULT)}
    outcome = choose_winner(candidates)
    assert outcome.winner.name == "trial #0" and outcome.verdict.outcome == "undecided"
    store_winner(open_study(request), outcome, storage_url=request.storage_url,
                 hardware=request.hardware, model_label=request.model.name)
    [record] = ConfigStore(request.storage_url, read_only=True).list()
    assert record.config_id == leader.config_id and record.speedup == 1.0


def _ls(url) -> str:
    result = subprocess.run([AUTOTUNE, "ls", "--storage", url], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- 11. what a store URL or an output path shows ---------------------------------------------------

SECRET_URL = "postgresql://svc:S3cretPW@127.0.0.1:1/db"  # port 1: refused at once


@pytest.mark.parametrize("command", [["explain", "--model", "tuner_models:small_cnn"],
                                     ["env", "--model", "tuner_models:small_cnn"], ["ls"]])
def test_no_command_prints_the_store_password(command, capsys, caplog):
    cli.main([*command, "--storage", SECRET_URL])
    out, err = capsys.readouterr()
    shown = out + err + caplog.text
    assert "svc:***@127.0.0.1" in shown and "S3cretPW" not in shown, shown


def test_env_says_the_store_cannot_be_read_rather_than_that_nothing_is_tuned(capsys):
    assert cli.main(["env", "--model", "tuner_models:small_cnn", "--storage", SECRET_URL]) == 2
    err = capsys.readouterr().err
    assert "the store cannot be read" in err and "Connection refused" in err, err


@pytest.mark.parametrize("url", ["postgresql://u@h:notaport/db", "postgresql://[::1/db"])
def test_a_store_url_whose_port_is_no_number_is_a_clear_error(url, capsys):
    assert cli.main(["ls", "--storage", url]) == 2
    err = one_line_error(capsys)
    assert "invalid store URL" in err and "use for example" in err


def test_an_empty_or_mistyped_store_is_named_by_ls_show_and_export(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    assert cli.main(["ls", "--storage", url]) == 0
    assert f"no tuned configs in {url}" in capsys.readouterr().out
    for command in (["show", "tuned"], ["export"], ["export", "--model", "tuned"]):
        assert cli.main([*command, "--storage", url]) == 2
        assert url in one_line_error(capsys)
    assert not (tmp_path / "typo.db").exists()


def test_export_to_a_path_it_cannot_write_is_a_clear_error(exported, tmp_path, capsys):
    url, _ = exported
    for output in (tmp_path / "missing" / "x.yaml", tmp_path):
        assert cli.main(["export", "-o", str(output), "--storage", url]) == 2
        assert f"cannot write {output}" in one_line_error(capsys)
