"""Study files: keys, types, durations; errors name the file, the line and what is valid."""

import pathlib
import textwrap

import pytest

from autotune.errors import AutotuneError, StudyError
from autotune.space import load_space
from autotune.study_file import RunOptions, load_study_file, parse_duration, tune_request
from tuning import assert_file_line_error

pytestmark = pytest.mark.parallel  # times nothing: runs beside other tests

STUDIES = sorted((pathlib.Path(__file__).parent.parent / "studies").glob("*.yaml"))


def write(tmp_path, text, name="study.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize("text,seconds", [
    ("90s", 90.0), ("20m", 1200.0), ("1h", 3600.0), ("1h30m", 5400.0), ("1.5h", 5400.0),
    ("2 m", 120.0), ("600", 600.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "10x", "0s", "m", "-5m", "1h-"])
def test_parse_duration_names_bad_value_and_examples(text):
    with pytest.raises(StudyError) as err:
        parse_duration(text)
    assert repr(text) in str(err.value) and "'20m'" in str(err.value)
    assert issubclass(StudyError, AutotuneError)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    study = load_study_file(path)
    assert study["objective"] == "latency"
    assert study["budget"]["trials"] and study["budget"]["timeout"]
    load_space(study["space"])
    assert study["source"] == str(path)


def test_shipped_studies_exist():
    assert {p.stem for p in STUDIES} >= {"resnet50", "mobilenet_v3_large", "vit_b_16"}


def test_defaults_and_relative_paths(tmp_path):
    study = load_study_file(write(tmp_path, """
        model: mypkg.models:build
        checkpoint: weights.pt
        space: spaces/small.yaml
    """))
    assert study == {
        "model": "mypkg.models:build", "batch_size": 1, "input_shape": None,
        "checkpoint": str(tmp_path / "weights.pt"), "dtypes": ["float32"],
        "objective": "latency", "budget": {"trials": None, "timeout": None},
        "space": str(tmp_path / "spaces/small.yaml"), "description": "",
        "data": None, "min_agreement": 0.99, "metric": None, "source": str(tmp_path / "study.yaml")}


def test_selection_rounds_come_from_the_flag_else_the_default():
    from autotune import cli
    from autotune.confirmation import SELECTION_ROUNDS

    assert tune_request(RunOptions(model="resnet50")).selection_rounds == SELECTION_ROUNDS
    args = cli.build_parser().parse_args(["run", "--model", "resnet50", "--selection-rounds", "5"])
    assert tune_request(cli._options(args)).selection_rounds == 5


def test_measure_seconds_sets_the_timed_part_and_caps_the_warm_up():
    quick = tune_request(RunOptions(model="resnet50", measure_seconds=0.2))
    assert (quick.measure.min_seconds, quick.measure.warmup_seconds) == (0.2, 0.2)
    assert (quick.confirm_measure.min_seconds, quick.confirm_measure.warmup_seconds) == (0.1, 0.1)
    default = tune_request(RunOptions(model="resnet50"))
    assert (default.measure.min_seconds, default.measure.warmup_seconds) == (2.0, 1.0)
    assert (default.confirm_measure.min_seconds, default.confirm_measure.warmup_seconds) == (1.0, 1.0)


def test_a_metric_with_only_float32_tuned_says_it_is_unused(caplog):
    options = dict(model="resnet50", data="mydata:batches", metric="mymetric:score")
    with caplog.at_level("WARNING"):
        tune_request(RunOptions(**options, dtypes=("float32", "bfloat16")))
    assert "is unused" not in caplog.text  # the control: bfloat16 is gated by it
    with caplog.at_level("WARNING"):
        tune_request(RunOptions(**options))
    assert "--metric mymetric:score is unused" in caplog.text


def test_full_study(tmp_path):
    study = load_study_file(write(tmp_path, """
        model: vit_b_16
        batch_size: 4
        input_shape: [3, 224, 224]
        dtypes: [float32, bfloat16, float32]
        objective: latency
        budget: {trials: 10, timeout: 600}
        space: quick
        description: a test
    """))
    assert study["batch_size"] == 4 and study["input_shape"] == ((3, 224, 224),)
    assert study["dtypes"] == ["float32", "bfloat16"]
    assert study["budget"] == {"trials": 10, "timeout": 600.0}
    assert study["space"] == "quick"


@pytest.mark.parametrize("text,line,pieces", [
    ("model: resnet50\nbatchsize: 8\n", 2,
     ["unknown key 'batchsize'", "valid keys: model, batch_size, input_shape"]),
    ("batch_size: 8\n", 1, ["missing `model:`"]),
    ("model: resnet50\nbatch_size: two\n", 2, ["batch_size 'two'", "positive integer"]),
    ("model: resnet50\nbatch_size: 0\n", 2, ["batch_size 0"]),
    ("model: 50\n", 1, ["model 50", "autotune models", "module:callable"]),
    ("model: resnet50\ninput_shape: [3, 0, 224]\n", 2, ["input_shape [3, 0, 224]", "[3, 224, 224]"]),
    ("model: resnet50\ndtypes:\n  - float32\n  - float16\n", 4,
     ["dtype 'float16'", "valid values: 'float32', 'bfloat16'"]),
    ("model: resnet50\ndtypes: float32\n", 2, ["dtypes 'float32'", "non-empty list"]),
    ("model: resnet50\nobjective: throughput\n", 2,
     ["objective 'throughput'", "valid objectives: latency"]),
    ("model: resnet50\nbudget:\n  trials: 10\n  timeout: 20 minutes\n", 4,
     ["budget timeout", "'20 minutes'", "'90s', '20m', '1h'"]),
    ("model: resnet50\nbudget:\n  trials: -1\n", 3, ["budget trials -1", "positive integer"]),
    ("model: resnet50\nbudget:\n  trails: 10\n", 3,
     ["unknown key 'trails' in budget", "valid keys: trials, timeout"]),
    ("model: resnet50\nbudget: {}\n", 2, ["budget is empty"]),
    ("model: resnet50\nbudget: 10\n", 2, ["expected budget: a mapping with trials"]),
    ("model: resnet50\nspace: 3\n", 2, ["space 3", "default, quick"]),
    ("model: resnet50\nmodel: vit_b_16\n", 2, ["'model' appears twice"]),
    ("model: [resnet50\n", 2, ["malformed YAML"]),
])
def test_study_errors_name_file_line_and_valid_values(tmp_path, text, line, pieces):
    assert_file_line_error(StudyError, load_study_file, write(tmp_path, text, "bad.yaml"), line, pieces)


def test_missing_study_file(tmp_path):
    with pytest.raises(StudyError, match=r"study file '.*nope\.yaml' not found"):
        load_study_file(tmp_path / "nope.yaml")
