"""One self-contained HTML report of a study: the winner against baselines, the search history,
which knobs mattered and how, failed trials, the tuned models of the store, machine and versions.

``build_report`` is pure (a study and store records in, HTML out); ``report_for`` reads them from
a storage URL without writing, so it is safe on the database of a running tuner.
"""

from __future__ import annotations

import html
import platform
from collections import defaultdict
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Iterable, Mapping, Sequence

import optuna
import plotly
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from backend.knobs import KNOBS
from backend.store import ConfigStore, TunedRecord, accuracy_text, default_storage_url

from . import trial_attrs as attrs
from .reading import find_study, read_only_storage
from .confirmation import BACKEND_DEFAULT, BEST_STATIC, STATIC_RECIPE
from .evidence import stored_evidence
from .worker import EAGER, TORCH_COMPILE_DEFAULT

MIN_TRIALS_FOR_IMPORTANCE = 4
TOP_KNOBS = 3
WINNER, BASELINE, STATIC = "#2a9d8f", "#8d99ae", "#e9a23b"
BASELINE_ORDER = (BACKEND_DEFAULT, BEST_STATIC, STATIC_RECIPE, TORCH_COMPILE_DEFAULT, EAGER)


# ---------------------------------------------------------------------------------- formatting
def _esc(value: Any) -> str:
    return html.escape(str(value))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _knobs_text(config: dict | None) -> str:
    """The knobs a config sets away from their defaults (path always), e.g. 'inductor, threads=2'."""
    if not config:
        return ""
    parts = [str(config.get("path", "?"))]
    for name, value in config.items():
        if name != "path" and (name not in KNOBS or value != KNOBS[name].default):
            parts.append(f"{name}={value}")
    return ", ".join(parts)


def _table(headers: Sequence[str] | None, rows: Iterable[Sequence[Any]],
           numeric: Sequence[int] = (), row_class: Sequence[str] | None = None) -> str:
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{_esc(h)}</th>"
                   for i, h in enumerate(headers or ()))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_class[r]}"' if row_class and row_class[r] else ""
        cells = "".join(f"<td{' class=num' if i in numeric else ''}>{_esc(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _figure(fig: go.Figure, height: int, top: int = 40) -> str:
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=10, r=20, t=top, b=10),
                      font=dict(size=13), legend=dict(orientation="h", y=-0.15))
    return fig.to_html(full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


# ---------------------------------------------------------------------------------- study facts
def _value(trial: FrozenTrial) -> float | None:
    """Median latency: the objective, or what a pruned trial measured before it was stopped."""
    return trial.value if trial.value is not None else trial.user_attrs.get("median_ms")


def _stats(trial: FrozenTrial) -> dict:
    """A trial's latency statistics; a duplicate config has only the value it copied."""
    stats = {k: trial.user_attrs[k] for k in attrs.STATS_KEYS if k in trial.user_attrs}
    return stats if "median_ms" in stats else {"median_ms": _value(trial)}


def _is_static(trial: FrozenTrial) -> bool:
    # the tuner enqueues the static recipes first, with their knobs fixed
    return bool(trial.system_attrs.get("fixed_params"))


def _comparison(study: optuna.Study, trials: list[FrozenTrial]) -> list[dict]:
    """Rows of {label, stats, role, config}: the winner first, then what it is compared with."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    configs = {f"trial #{t.number}": t.user_attrs.get(attrs.CONFIG) for t in trials}  # pruned too
    winner = study.user_attrs.get("winner")
    if winner:  # confirmed: interleaved rounds
        baselines = winner.get("baselines", {})
        rows = [{"label": f"winner ({winner['candidate']})", "stats": winner["stats"],
                 "role": "winner"}]
        for name, stats in sorted(baselines.items(), key=lambda item: _baseline_rank(item[0])):
            if name != winner["candidate"] and _baseline_rank(name) < len(BASELINE_ORDER):
                trial = name.partition("(")[2].rstrip(")")
                rows.append({"label": _labelled(name, stats), "stats": stats, "config": configs.get(trial),
                             "role": "static" if name.startswith((BEST_STATIC, STATIC_RECIPE))
                             else "baseline"})
        return [r for r in rows if r["stats"] and r["stats"].get("median_ms")]
    # no confirmed winner yet (running or interrupted): the search-phase numbers
    if not complete:
        return []
    # a trial whose runs spread too widely is a number the tuner itself does not compare by
    numbers = [t for t in complete if attrs.TOO_SPREAD not in t.user_attrs]
    best = min(numbers or complete, key=lambda t: t.value)
    spread = "" if numbers else ", its runs spread too widely to be a number"
    rows = [{"label": f"best trial so far (#{best.number}{spread})", "stats": _stats(best),
             "role": "winner"}]
    for t in complete:
        if _is_static(t) and t is not best:
            rows.append({"label": f"static recipe (trial #{t.number})", "stats": _stats(t),
                         "role": "static", "config": t.user_attrs.get(attrs.CONFIG)})
    return [r for r in rows if r["stats"].get("median_ms")]


def _baseline_rank(name: str) -> int:
    """Position in BASELINE_ORDER ('best static recipe (trial #3)' counts as the recipe)."""
    for rank, prefix in enumerate(BASELINE_ORDER):
        if name == prefix or name.startswith(f"{prefix} ("):
            return rank
    return len(BASELINE_ORDER)  # other confirmed trials: not shown


def _in_selection(stats: dict) -> bool:
    return stats.get("measured_in") == "selection"


def _labelled(name: str, stats: dict) -> str:
    # not tested against the winner: timed in the rounds that picked it
    return name + (" (selection rounds)" if _in_selection(stats) else "")


def _ratio_to_winner(study: optuna.Study, row: dict, confirmed_ms: float) -> float | None:
    """A row's median over the winner's in the same rounds; None when the winner has no median
    in the row's rounds (it failed in selection and won the test): no ratio across rounds."""
    if not _in_selection(row["stats"]):
        return row["stats"]["median_ms"] / confirmed_ms
    selected = (study.user_attrs.get("winner") or {}).get("selection_stats")
    return row["stats"]["median_ms"] / selected["median_ms"] if selected else None


# ---------------------------------------------------------------------------------- sections
def _summary(study: optuna.Study, rows: list[dict]) -> str:
    winner = study.user_attrs.get("winner")
    if not rows:
        return _note("No trial has completed yet: nothing to compare.")
    top = rows[0]["stats"]["median_ms"]
    cards = [("winner" if winner else "best so far", _ms(top))]
    for row in rows[1:]:
        if row["role"] in ("baseline", "static") and not row["label"].startswith(STATIC_RECIPE):
            label = _labelled(row["label"].split(" (")[0], row["stats"])
            cards.append((f"vs {label}", _x(_ratio_to_winner(study, row, top))))
    html_cards = "".join(f'<div class="card"><div class="big">{_esc(v)}</div>'
                         f'<div class="small">{_esc(k)}</div></div>' for k, v in cards)
    text = ""
    if not winner:
        text = _note("No confirmed winner yet: the study is still running or was interrupted "
                     "before its confirmation round. Numbers are search-phase medians.")
    elif winner.get("message"):  # the confirmation's own words: inconclusive or decided, and why
        text = _note(f"{winner['message']} ({stored_evidence(winner['stats'])}).")
    elif winner.get("kept_default"):
        text = _note("No config beat the backend default by more than the measurement noise, "
                     "so the backend default was kept.")
    return f'<div class="cards">{html_cards}</div>{text}'


def _winner_section(study: optuna.Study, rows: list[dict]) -> str:
    if not rows:
        return ""
    top = rows[0]["stats"]["median_ms"]
    color = {"winner": WINNER, "baseline": BASELINE, "static": STATIC}
    labels = [r["label"] for r in rows]
    med = [r["stats"]["median_ms"] for r in rows]
    p10 = [r["stats"].get("p10_ms", m) for r, m in zip(rows, med)]
    p90 = [r["stats"].get("p90_ms", m) for r, m in zip(rows, med)]
    fig = go.Figure(go.Bar(
        x=med, y=labels, orientation="h", marker_color=[color[r["role"]] for r in rows],
        error_x=dict(type="data", symmetric=False, array=[b - m for b, m in zip(p90, med)],
                     arrayminus=[m - a for a, m in zip(p10, med)], color="#555"),
        text=[f"{m:.2f} ms" for m in med], textposition="inside", insidetextanchor="start",
        textfont=dict(color="white"), hovertemplate="%{y}: %{x:.2f} ms<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="median latency (ms), whiskers p10-p90", rangemode="tozero")
    if max(p90) > 1.5 * max(med):  # one noisy tail must not squash every bar
        fig.update_xaxes(range=[0, 1.5 * max(med)],
                         title="median latency (ms), whiskers p10-p90 (cut at the right edge)")
    fig.update_layout(title="Median latency, lower is better", showlegend=False)
    table = _table(
        ["candidate", "median", "p10", "p90", "IQR", "runs", "winner's speedup"],
        [[r["label"], _ms(r["stats"]["median_ms"]), _ms(r["stats"].get("p10_ms")),
          _ms(r["stats"].get("p90_ms")), _ms(r["stats"].get("iqr_ms")), r["stats"].get("runs", "-"),
          "" if r["role"] == "winner" else _x(_ratio_to_winner(study, r, top))]
         for r in rows],
        numeric=(1, 2, 3, 4, 5, 6))
    winner = study.user_attrs.get("winner")
    config = winner["config"] if winner else None
    if config is None:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        config = min(complete, key=lambda t: t.value).user_attrs.get(attrs.CONFIG) if complete else None
    config_html = ""
    if config:
        names = list(config)
        config_html = ("<h3>Winning config</h3>" + _table(
            ["knob", "value", "default"],
            [[n, config[n], KNOBS[n].default if n in KNOBS else "-"] for n in names],
            row_class=["changed" if n in KNOBS and config[n] != KNOBS[n].default else ""
                       for n in names]))
    static = [r for r in rows if r["role"] == "static"]
    note = "".join(_note(f"{r['label']}: {_knobs_text(r.get('config'))}") for r in static)
    return _figure(fig, 90 + 45 * len(rows)) + note + table + config_html


def _history(trials: list[FrozenTrial]) -> str:
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and _value(t)]
    if not done:
        return _note("No trial has finished with a measurement yet.")
    fig = go.Figure()
    for state, name, symbol, color in ((TrialState.COMPLETE, "complete", "circle", "#264653"),
                                       (TrialState.PRUNED, "pruned (stopped early)", "x", "#e76f51")):
        group = [t for t in done if t.state == state]
        if group:
            fig.add_trace(go.Scatter(
                x=[t.number for t in group], y=[_value(t) for t in group], mode="markers",
                name=name, marker=dict(symbol=symbol, size=9, color=color),
                customdata=[_knobs_text(t.user_attrs.get(attrs.CONFIG)) for t in group],
                hovertemplate="trial %{x}: %{y:.2f} ms<br>%{customdata}<extra></extra>"))
    best, xs, ys = None, [], []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = t.value if best is None else min(best, t.value)
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="best so far",
                             line=dict(shape="hv", color=WINNER, width=3),
                             hovertemplate="best after trial %{x}: %{y:.2f} ms<extra></extra>"))
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    for number in failed:
        fig.add_vline(x=number, line=dict(color="rgba(214,39,40,0.4)", dash="dot"))
    if failed:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="failed trial",
                                 line=dict(color="rgba(214,39,40,0.6)", dash="dot")))
    values = [_value(t) for t in done]
    fig.update_yaxes(title="median latency (ms)",
                     type="log" if max(values) > 10 * min(values) else "linear")
    fig.update_xaxes(title="trial", dtick=max(1, len(trials) // 15))
    fig.update_layout(title="Latency per trial")
    return _figure(fig, 420)


def _importances(study: optuna.Study, complete: list[FrozenTrial]) -> tuple[str, dict[str, float]]:
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return _note(f"Knob importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed "
                     f"trials; this study has {len(complete)}."), {}
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError) as exc:
        return _note(f"Knob importances could not be computed: {exc}"), {}
    if not importances:
        return _note("No knob varied across every completed trial: no importances."), {}
    names = list(importances)
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h",
                           marker_color=WINNER, text=[f"{importances[n]:.2f}" for n in names],
                           textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="importance (PED-ANOVA: what sets the fastest trials apart; sums to 1)",
                     range=[0, 1.1])
    fig.update_layout(title="Which knobs mattered")
    note = _note("Knobs that only one compile path has are included when every completed trial "
                 "took that path.")
    return _figure(fig, 90 + 40 * len(names)) + note, importances


def _effects(complete: list[FrozenTrial], importances: dict[str, float]) -> str:
    by_knob: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in complete:
        for name, value in t.params.items():
            by_knob[name][str(value)].append(t.value)
    varied = {n: v for n, v in by_knob.items() if len(v) > 1}

    def spread(name: str) -> float:  # without importances: how far the per-value medians lie apart
        medians = [sorted(v)[len(v) // 2] for v in varied[name].values()]
        return max(medians) - min(medians)

    ranked = [n for n in importances if n in varied] or sorted(varied, key=spread, reverse=True)
    top = ranked[:TOP_KNOBS]
    if not top:
        return _note("No knob took more than one value among the completed trials yet.")
    fig = make_subplots(rows=1, cols=len(top), subplot_titles=top, shared_yaxes=True)
    for col, name in enumerate(top, start=1):
        values = sorted(varied[name], key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
        for value in values:
            fig.add_trace(go.Box(y=varied[name][value], name=value, boxpoints="all", jitter=0.4,
                                 pointpos=0, marker=dict(color=WINNER, size=7),
                                 line=dict(color="#264653"), fillcolor="rgba(42,157,143,0.15)",
                                 showlegend=False,
                                 hovertemplate=f"{name}={value}: %{{y:.2f}} ms<extra></extra>"),
                          row=1, col=col)
    fig.update_yaxes(title_text="median latency (ms)", row=1, col=1)
    note = _note("One point per completed trial; each box spans the middle half of the trials "
                 "that took that value.")
    return _figure(fig, 380, top=70) + note


def _failures(trials: list[FrozenTrial]) -> str:
    failed = [t for t in trials if t.state == TrialState.FAIL]
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    text = _note(f"{pruned} trial(s) were pruned: stopped early because they were clearly slower "
                 "than the best so far. Pruning is not a failure.") if pruned else ""
    if not failed:
        return _note("No trial failed.") + text
    rows = []
    for t in failed:
        reason = " ".join(str(t.user_attrs.get(attrs.FAILURE_REASON, "no reason recorded")).split())
        rows.append([f"#{t.number}", t.user_attrs.get(attrs.FAILURE_KIND, "-"),
                     reason if len(reason) <= 400 else reason[:400] + " ...",
                     _knobs_text(t.user_attrs.get(attrs.CONFIG)),
                     f"{t.user_attrs[attrs.PEAK_RSS_MB]:.0f} MB" if attrs.PEAK_RSS_MB in t.user_attrs else "-"])
    return _table(["trial", "kind", "reason", "config", "peak memory"], rows, numeric=(4,)) + text


def _store_section(records: Sequence[TunedRecord], study_name: str,
                   accuracies: Mapping[int, dict] | None = None) -> str:
    if not records:
        return _note("The store holds no tuned config yet.")
    by_hw: dict[str, list[TunedRecord]] = defaultdict(list)
    for r in records:
        by_hw[r.hardware_key].append(r)
    parts = []
    for hw_key, group in by_hw.items():
        hw = group[0].hardware or {}
        parts.append(f"<h3>{_esc(hw.get('cpu', 'unknown CPU'))} &middot; {_esc(hw.get('cores', '?'))} "
                     f"cores &middot; <code>{_esc(hw_key)}</code></h3>")
        group.sort(key=lambda r: (r.model_label, r.batch_size or 0))
        rows = []
        for r in group:
            base = {n: (r.baselines.get(n) or {}).get("median_ms") for n in (TORCH_COMPILE_DEFAULT, EAGER)}
            rows.append([r.model_label, r.batch_size or "-", _ms(r.latency.get("median_ms")),
                         _x(r.speedup),
                         *[_x(b / r.latency["median_ms"]) if b else "-" for b in base.values()],
                         stored_evidence(r.latency), _knobs_text(r.config),
                         accuracy_text((accuracies or {}).get(r.id)) or "-", r.torch_version,
                         r.study_name, _as_utc(r.created_at).strftime("%Y-%m-%d %H:%M")])
        parts.append(_table(["model", "batch", "median", "vs backend default",
                             "vs torch.compile default", "vs eager", "evidence", "config",
                             "accuracy (reduced precision)", "torch", "study",
                             "stored (UTC)"], rows, numeric=(1, 2, 3, 4, 5),
                            row_class=["this" if r.study_name == study_name else "" for r in group]))
    return "".join(parts)


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _machine(study: optuna.Study) -> str:
    study_attrs = study.user_attrs
    hw = study_attrs.get("hardware") or {}
    rows = [["CPU", hw.get("cpu", "-")], ["usable cores", hw.get("cores", "-")],
            ["sockets", hw.get("sockets", "-")], ["architecture", hw.get("machine", "-")],
            ["ISA features", ", ".join(hw.get("features", [])) or "-"],
            ["hardware key", study_attrs.get("hardware_key", "-")],
            ["torch (tuned with)", study_attrs.get("torch_version", "-")],
            ["optuna", optuna.__version__], ["plotly", plotly.__version__],
            ["optuna-dashboard", _version("optuna-dashboard")],
            ["ipex-autotune", _version("ipex-autotune")],
            ["python (report)", platform.python_version()]]
    return _table(None, rows)


# ---------------------------------------------------------------------------------- the page
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2733;margin:0;
  background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:28px;margin:8px 0 4px}h2{font-size:21px;margin:36px 0 10px;padding-top:14px;
  border-top:1px solid #e3e6ea}h3{font-size:16px;margin:18px 0 8px}
.sub{color:#5b6673;margin:0 0 18px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #dfe3e8;border-radius:8px;padding:12px 18px;min-width:150px}
.card:first-child{border-color:#2a9d8f;background:#eef8f6}
.big{font-size:26px;font-weight:650}.small{color:#5b6673;font-size:13px}
table{border-collapse:collapse;width:100%;font-size:13.5px;margin:8px 0 4px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e8ebee;vertical-align:top}
th{background:#f1f3f5;font-weight:600}.num{text-align:right;white-space:nowrap}
tr.changed td,tr.this td{background:#eef8f6}tr.changed td:first-child{font-weight:600}
.note{color:#5b6673;font-size:13.5px;margin:6px 0}code{font-size:12.5px}
"""


def build_report(study: optuna.Study, records: Sequence[TunedRecord] = (), *,
                 generated: datetime | None = None,
                 accuracies: Mapping[int, dict] | None = None) -> str:
    """The whole report as one HTML page; plotly.js is inlined, so it opens offline."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    model = study.user_attrs.get("model") or {}
    title = model.get("name") or study.study_name
    generated = generated or datetime.now(timezone.utc)
    sub = (f"study <b>{_esc(study.study_name)}</b> &middot; batch {_esc(model.get('batch_size', '?'))}"
           f" &middot; {_esc('+'.join(study.user_attrs.get('dtypes', [])) or '?')} &middot; "
           f"{len(trials)} trials ({counts[TrialState.COMPLETE]} complete, "
           f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed, "
           f"{counts[TrialState.RUNNING]} running) &middot; generated "
           f"{generated.strftime('%Y-%m-%d %H:%M')} UTC")
    rows = _comparison(study, trials)
    importance_html, importances = _importances(study, complete)
    sections = [
        ("Winner against baselines", _winner_section(study, rows) or _note("Nothing measured yet.")),
        ("Optimization history", _history(trials)),
        ("Knob importances", importance_html),
        ("Effect of the most important knobs", _effects(complete, importances)),
        ("Failed trials", _failures(trials)),
        ("Tuned models on this store", _store_section(records, study.study_name, accuracies)),
        ("Machine and versions", _machine(study)),
    ]
    body = "".join(f"<section><h2>{_esc(h)}</h2>{content}</section>" for h, content in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>ipex-autotune report: {_esc(title)}</title><style>{CSS}</style>"
            f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head>'
            f"<body><main><h1>ipex-autotune report: {_esc(title)}</h1><p class=sub>{sub}</p>"
            f"{_summary(study, rows)}{body}</main></body></html>")


def report_for(storage_url: str | None = None, *, study_name: str | None = None,
               model: str | None = None, batch_size: int | None = None) -> str:
    """Read a study and the store from ``storage_url`` (read-only) and build its report."""
    url = storage_url or default_storage_url()
    study = find_study(read_only_storage(url), study_name=study_name, model=model,
                       batch_size=batch_size)
    with ConfigStore(url, read_only=True) as store:
        records = store.list()
        accuracies = {r.id: p.accuracy for r in records
                      if (p := store.precision(r.id, with_model=False)) and p.accuracy}
    return build_report(study, records, accuracies=accuracies)
