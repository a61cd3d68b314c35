"""`autotune report`: one offline HTML file with the comparison, history, knobs, failures, store."""

import re

import optuna
import plotly
import pytest

from autotune import cli
from autotune.report import build_report
from browser import js_errors, render
from fake_studies import make_study

MODEL = "tuner_models:small_cnn"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'study.db'}"
    study = make_study(url, model=MODEL)
    out = tmp / "report.html"
    assert cli.main(["report", "--model", MODEL, "--storage", url, "-o", str(out)]) == 0
    return study, out


def test_report_compares_the_winner_and_shows_history_knobs_failures_store_and_versions(report):
    study, out = report
    page = out.read_text()
    for heading in ("Winner against baselines", "Optimization history", "Knob importances",
                    "Effect of the most important knobs", "Failed trials",
                    "Tuned models on this store", "Machine and versions"):
        assert f"<h2>{heading}</h2>" in page
    winner_ms = study.user_attrs["winner"]["stats"]["median_ms"]
    assert f"{winner_ms:.2f} ms" in page
    for name, base_ms in (("backend default", 3.3), ("torch.compile default", 3.0), ("eager", 4.7)):
        assert f'{base_ms / winner_ms:.2f}x</div><div class="small">vs {name}' in page
    static = next(k for k in study.user_attrs["winner"]["baselines"] if k.startswith("best static"))
    static_ms = study.user_attrs["winner"]["baselines"][static]["median_ms"]
    # timed in the selection rounds only: compared with the winner's median in those rounds
    in_selection_ms = study.user_attrs["winner"]["selection_stats"]["median_ms"]
    assert (f'{static_ms / in_selection_ms:.2f}x</div><div class="small">vs best static recipe '
            '(selection rounds)') in page
    assert f"<td>{static} (selection rounds)</td>" in page
    assert "worker died with SIGSEGV while compiling" in page and "<td>crash</td>" in page
    assert "AMD EPYC 9R14" in page and "Intel(R) Xeon(R) Platinum 8488C" in page
    assert f"<td>{optuna.__version__}</td>" in page and f"<td>{plotly.__version__}</td>" in page
    assert not re.search(r"<script[^>]*\bsrc=", page), "the report must open offline"


def test_report_renders_real_charts_in_a_browser(report, tmp_path):
    _, out = report
    dom, log = render(out.as_uri(), tmp_path / "chromium", screenshot="report.png", size="1400,3400")
    assert not js_errors(log)
    # comparison, history, importances, knob effects: each a rendered plotly chart with marks
    assert dom.count('class="plot-container plotly"') == 4
    assert dom.count('class="main-svg"') >= 8
    assert dom.count("<path") > 60
    assert dom.count('class="point"') >= 10  # the comparison's bars


def test_report_of_a_study_without_finished_trials_explains_what_is_missing():
    study = optuna.create_study()
    study.ask()  # one trial running, nothing finished
    page = build_report(study)
    assert "No trial has completed yet" in page
    assert "Knob importances need at least 4 completed trials; this study has 0" in page
    assert "1 running" in page


def test_report_says_why_the_winner_was_chosen_and_how_sure_and_sets_no_bar_by_a_spread_trial():
    study = optuna.create_study()
    for ms, spread in ((1.0, {"too_spread": 0.8}), (2.0, {})):
        trial = study.ask()
        for key, value in {"median_ms": ms, **spread}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, ms)
    page = build_report(study)
    assert "best trial so far (#1)" in page  # not #0, whose 1.0 ms is no number
    stats = {"median_ms": 2.0, "noise": {"iqr": 0.31, "median_iqr": 0.3, "rounds": 5,
                                         "quiet_rounds": 3, "noisy": False},
             "speedup_evidence": {"outcome": "undecided", "ratio": 0.97, "p_value": 0.2, "rounds": 3},
             "inconclusive": True, "kept_default": True}
    message = "inconclusive: the machine was too noisy (median IQR 30%) to decide: rerun"
    study.set_user_attr("winner", {"candidate": "backend default", "config": {}, "stats": stats,
                                   "baselines": {}, "kept_default": True, "message": message})
    page = build_report(study)
    assert f"{message} (IQR 31%, 2 of 5 rounds busy, inconclusive, the default kept)." in page
    assert "by more than the measurement noise" not in page  # it was not measured, it was too noisy


@pytest.mark.parametrize("args,message", [
    (["--study", "nope"], "no study named 'nope' (studies here: a, b)"),
    (["--model", "resnet50"], "no study of model 'resnet50'"),
    (["--model", MODEL], "2 studies of model 'tuner_models:small_cnn': a, b; pick one with --study"),
    (["--model", MODEL, "--batch-size", "8", "--storage", "sqlite:////nonexistent/x.db"],
     "no study database at '/nonexistent/x.db'"),
])
def test_report_errors_name_what_exists(args, message, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'two.db'}"
    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=url).set_user_attr(
            "model", {"name": MODEL, "batch_size": 1})
    if "--storage" not in args:
        args = [*args, "--storage", url]
    assert cli.main(["report", *args, "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_a_selection_round_row_gets_no_ratio_when_the_winner_has_no_median_in_those_rounds():
    # the default failed in selection and won the test: its test median and a recipe's
    # selection median come from different rounds, and a ratio of the two would mean nothing
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("median_ms", 2.0)
    study.tell(trial, 2.0)
    static = "best static recipe (trial #0)"
    study.set_user_attr("winner", {
        "candidate": "backend default", "config": {"path": "torchscript"}, "kept_default": True,
        "stats": {"median_ms": 4.0}, "selection_stats": None, "message": "",
        "baselines": {"eager": {"median_ms": 8.0},
                      static: {"median_ms": 2.0, "measured_in": "selection"}}})
    page = build_report(study)
    assert "2.00x</div><div class=\"small\">vs eager" in page  # same rounds: a ratio
    assert "-</div><div class=\"small\">vs best static recipe (selection rounds)" in page
    assert f"<td>{static} (selection rounds)</td>" in page
    assert "0.50x" not in page  # 2.0 / 4.0, across rounds
