"""Study files: which model to tune, with which dtypes, objective, budget and search space.

    model: resnet50            # torchvision name or module:callable (required)
    batch_size: 1
    input_shape: [3, 224, 224] # per sample, optional; one list per input: [[3, 32, 32], [10]]
    checkpoint: weights.pt     # optional state_dict; relative to the study file
    dtypes: [float32, bfloat16]
    objective: latency
    budget: {trials: 60, timeout: 30m}
    space: default             # shipped name, or a path relative to the study file
    data: batches.pt           # your inputs (int8 needs them): a file relative to the study
                               # file, or module:callable
    min_agreement: 0.99        # top-1 agreement with float32 a reduced dtype must keep
    metric: mypkg.eval:score   # optional: your own score instead, of which a reduced dtype must
                               # keep min_agreement of float32's (see autotune.data.METRIC_FORM)

and ``tune_request``, which merges one with the options a user gave into a TuneRequest.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaml.nodes import Node, SequenceNode

from backend.errors import KnobError
from backend.knobs import KNOBS

from .data import FORMS, METRIC_FORM, NO_DATA
from .errors import StudyError
from .evidence import MAX_ROUNDS
from .models import ModelSpec
from .space import YamlFile, looks_like_path
from .tuner import TuneRequest
from .worker import MIN_AGREEMENT

log = logging.getLogger("autotune")

STUDY_KEYS = ("model", "batch_size", "input_shape", "checkpoint", "dtypes", "objective",
              "budget", "space", "description", "data", "min_agreement", "metric")
BUDGET_KEYS = ("trials", "timeout")
OBJECTIVES = ("latency",)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_EXAMPLES = "e.g. '90s', '20m', '1h' or '1h30m' (a bare number is seconds)"


def parse_duration(text: str) -> float:
    """Seconds in "90s", "20m", "1h", "1h30m", "1.5h" or "600"."""
    compact = text.replace(" ", "").lower() if isinstance(text, str) else ""
    if re.fullmatch(r"\d+(\.\d+)?", compact):
        seconds = float(compact)
    elif re.fullmatch(r"(\d+(\.\d+)?[hms])+", compact):
        seconds = sum(float(n) * _UNIT_SECONDS[u]
                      for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", compact))
    else:
        seconds = 0.0
    if seconds <= 0:
        raise StudyError(f"duration {text!r}: expected a positive time, {_DURATION_EXAMPLES}")
    return seconds


def load_study_file(path: str | os.PathLike) -> dict[str, Any]:
    """The validated study, with defaults filled in and relative paths resolved.

    Keys: model, batch_size, input_shape (one shape tuple per input, or None), checkpoint (str or None), dtypes
    (list), objective, budget ({"trials": int|None, "timeout": seconds|None}), space (a shipped
    name or a path), description, source (this file).
    """
    doc = YamlFile.load(Path(path), StudyError, "study file")
    top = doc.mapping(doc.root, f"a study mapping with keys {', '.join(STUDY_KEYS)}")
    doc.check_keys(top, STUDY_KEYS, "a study file")
    if "model" not in top:
        doc.fail(doc.root, "missing `model:` (a torchvision name such as resnet50, "
                           "or module:callable)")
    here = Path(path).parent

    def get(key: str, default: Any = None) -> tuple[Any, Node | None]:
        return (doc.value(top[key][1]), top[key][1]) if key in top else (default, None)

    model, node = get("model")
    if not isinstance(model, str) or not model.strip():
        doc.fail(node, f"model {model!r}: expected a torchvision name (`autotune models` lists "
                       "them) or module:callable")
    batch_size, node = get("batch_size", 1)
    if not _positive_int(batch_size):
        doc.fail(node, f"batch_size {batch_size!r}: expected a positive integer")
    return {
        "model": model,
        "batch_size": batch_size,
        "input_shape": _input_shapes(doc, *get("input_shape")),
        "checkpoint": _checkpoint(doc, *get("checkpoint"), here),
        "dtypes": _dtypes(doc, *get("dtypes", ["float32"])),
        "objective": _objective(doc, *get("objective", "latency")),
        "budget": _budget(doc, top["budget"][1]) if "budget" in top
        else {"trials": None, "timeout": None},
        "space": _space(doc, *get("space", "default"), here),
        "description": _text(doc, *get("description", "")),
        "data": _data(doc, *get("data"), here),
        "min_agreement": _agreement(doc, *get("min_agreement", MIN_AGREEMENT)),
        "metric": _metric(doc, *get("metric")),
        "source": doc.name,
    }


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _input_shapes(doc: YamlFile, input_shape: Any, node: Node | None) -> tuple | None:
    if input_shape is None:
        return None
    shapes = input_shape if isinstance(input_shape, list) and input_shape \
        and all(isinstance(s, list) for s in input_shape) else [input_shape]
    if not all(isinstance(s, list) and s and all(_positive_int(d) for d in s) for s in shapes):
        doc.fail(node, f"input_shape {input_shape!r}: expected a list of positive integers "
                       "per sample, without the batch dimension, e.g. [3, 224, 224], or one "
                       "such list per input, e.g. [[3, 32, 32], [10]]")
    return tuple(tuple(s) for s in shapes)


def _checkpoint(doc: YamlFile, checkpoint: Any, node: Node | None, here: Path) -> str | None:
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, str):
        doc.fail(node, f"checkpoint {checkpoint!r}: expected the path of a state_dict file")
    return str(here / checkpoint)


def _data(doc: YamlFile, data: Any, node: Node | None, here: Path) -> str | None:
    if data is None:
        return None
    if not isinstance(data, str) or not data.strip():
        doc.fail(node, f"data {data!r}: expected {FORMS}")
    return resolve_data(data, here)


def resolve_data(data: str, here: Path) -> str:
    """A file (relative to ``here``) as an absolute path, for workers; module:callable as is."""
    path = here / data
    return str(path.resolve()) if path.exists() or ":" not in data else data


def _metric(doc: YamlFile, metric: Any, node: Node | None) -> str | None:
    if metric is not None and not (isinstance(metric, str) and metric.count(":") == 1):
        doc.fail(node, f"metric {metric!r}: expected {METRIC_FORM}")
    return metric


def _agreement(doc: YamlFile, value: Any, node: Node | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        doc.fail(node, f"min_agreement {value!r}: expected a fraction in (0, 1], e.g. 0.99")
    return float(value)


def _dtypes(doc: YamlFile, dtypes: Any, node: Node | None) -> list[str]:
    if node is None:
        return list(dtypes)
    valid = KNOBS["dtype"].valid_values_text()
    if not isinstance(node, SequenceNode) or not node.value:
        doc.fail(node, f"dtypes {dtypes!r}: expected a non-empty list of {valid}")
    result = []
    for item_node, dtype in zip(node.value, dtypes):
        try:
            result.append(KNOBS["dtype"].validate(dtype))
        except KnobError:
            doc.fail(item_node, f"dtype {dtype!r}: valid values: {valid}")
    return list(dict.fromkeys(result))


def _objective(doc: YamlFile, objective: Any, node: Node | None) -> str:
    if objective not in OBJECTIVES:
        doc.fail(node, f"objective {objective!r}: valid objectives: {', '.join(OBJECTIVES)}")
    return objective


def _budget(doc: YamlFile, node: Node) -> dict[str, Any]:
    entries = doc.mapping(node, "budget: a mapping with trials and/or timeout")
    doc.check_keys(entries, BUDGET_KEYS, "budget")
    if not entries:
        doc.fail(node, "budget is empty: give trials, timeout or both")
    budget: dict[str, Any] = {"trials": None, "timeout": None}
    if "trials" in entries:
        trials = doc.value(entries["trials"][1])
        if not _positive_int(trials):
            doc.fail(entries["trials"][1], f"budget trials {trials!r}: expected a positive integer")
        budget["trials"] = trials
    if "timeout" in entries:
        timeout_node = entries["timeout"][1]
        timeout = doc.value(timeout_node)
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
            timeout = str(timeout)  # YAML numbers are seconds
        try:
            budget["timeout"] = parse_duration(timeout)
        except StudyError as exc:
            doc.fail(timeout_node, f"budget timeout: {exc}")
    return budget


def _space(doc: YamlFile, space: Any, node: Node | None, here: Path) -> str:
    if not isinstance(space, str) or not space:
        doc.fail(node, f"space {space!r}: expected a shipped space name (e.g. default, quick) "
                       "or the path of a YAML file")
    return str(here / space) if looks_like_path(space) else space


def _text(doc: YamlFile, text: Any, node: Node | None) -> str:
    if not isinstance(text, str):
        doc.fail(node, f"description {text!r}: expected text")
    return text


@dataclass(frozen=True)
class RunOptions:
    """What the user gave for a run (command-line flags); None means not given, so the study
    file, then the defaults decide."""
    model: str | None = None
    batch_size: int | None = None
    input_shapes: tuple[tuple[int, ...], ...] = ()  # full shapes, with the batch dimension
    checkpoint: str | None = None
    dtypes: tuple[str, ...] | None = None
    trials: int | None = None
    timeout: str | float | None = None             # "20m" or seconds
    trial_timeout: str | float | None = None
    memory_limit_mb: float | None = None
    tolerance: float | None = None
    space: str | None = None
    storage: str | None = None
    study_name: str | None = None
    seed: int | None = None
    measure_seconds: float | None = None           # per trial; confirmation rounds take half
    confirm_rounds: int | None = None
    confirm_top: int | None = None
    confirm_max_rounds: int | None = None
    selection_rounds: int | None = None
    max_wait: str | float | None = None            # for a quiet machine: "3m" or seconds
    cpus: list[int] | None = None
    jobs: int = 1
    data: str | None = None                        # --data: a file or module:callable
    min_agreement: float | None = None
    metric: str | None = None                      # --metric module:callable


def model_spec(options: RunOptions, study: dict[str, Any] | None = None) -> ModelSpec:
    """The model to build: options win over the study file, which wins over the defaults.
    Each of ``options.input_shapes`` includes the batch dimension."""
    study = study or {}
    batches = sorted({shape[0] for shape in options.input_shapes})
    if options.batch_size is not None:
        batch = options.batch_size
    elif len(batches) > 1:
        raise StudyError(f"--input-shape: the inputs have different batch sizes "
                         f"({', '.join(map(str, batches))}); give each the same first "
                         "dimension, or set it with --batch-size")
    else:
        batch = batches[0] if batches else study.get("batch_size", 1)
    per_sample = tuple(shape[1:] for shape in options.input_shapes) or study.get("input_shape")
    return ModelSpec(name=options.model or study["model"], batch_size=batch,
                     input_shapes=per_sample, checkpoint=options.checkpoint or study.get("checkpoint"))


def _seconds(value: str | float) -> float:
    return parse_duration(value) if isinstance(value, str) else float(value)


def tune_request(options: RunOptions, study_path: str | os.PathLike | None = None) -> TuneRequest:
    """The TuneRequest for a run: the study file (if any) merged under the given options."""
    study: dict[str, Any] = {}
    if study_path:
        if options.model:
            raise StudyError("give either --model or --study, not both")
        study = load_study_file(study_path)
    elif not options.model:
        raise StudyError("no model: give --model NAME (see `autotune models`) or --study FILE")
    if (options.confirm_max_rounds or 0) > MAX_ROUNDS:
        # the per-look threshold keeps a wrong verdict under 5% for looks up to MAX_ROUNDS only
        raise StudyError(f"--max-confirm-rounds {options.confirm_max_rounds}: at most {MAX_ROUNDS}, "
                         "the most rounds whose verdicts keep their stated confidence")
    budget = study.get("budget", {})
    data = resolve_data(options.data, Path.cwd()) if options.data else study.get("data")
    dtypes = options.dtypes or tuple(study.get("dtypes", ["float32"]))
    if "int8" in dtypes and not data:
        if len(dtypes) == 1:
            raise StudyError(NO_DATA)
        log.warning(NO_DATA)
        dtypes = tuple(d for d in dtypes if d != "int8")
    model = model_spec(options, study)
    if "int8" in dtypes and ":" not in model.name and not model.checkpoint:
        log.warning("int8 on %s's random weights: its record is bound to them, and your trained "
                    "weights will not match it; give them with --checkpoint", model.name)
    metric = options.metric or study.get("metric")
    if metric and not data:
        raise StudyError(f"--metric {metric}: it scores the held-out part of your inputs; give "
                         "them with --data (or data: in the study file)")
    if metric and set(dtypes) == {"float32"}:
        log.warning("--metric %s is unused: it gates bfloat16 and int8 against float32, and only "
                    "float32 is tuned (add --dtype float32,bfloat16 or int8)", metric)
    if options.min_agreement is not None and not 0 < options.min_agreement <= 1:
        raise StudyError(f"--min-agreement {options.min_agreement}: expected a fraction in (0, 1], "
                         "e.g. 0.99")
    given = {
        "dtypes": dtypes, "data": data,
        "min_agreement": options.min_agreement or study.get("min_agreement"),
        "metric": metric,
        "space": options.space or study.get("space") or "default",
        "trials": options.trials or budget.get("trials"),
        "timeout_s": _seconds(options.timeout) if options.timeout else budget.get("timeout"),
        "trial_timeout_s": options.trial_timeout and _seconds(options.trial_timeout),
        "memory_limit_mb": options.memory_limit_mb, "tolerance": options.tolerance,
        "confirm_rounds": options.confirm_rounds, "confirm_top": options.confirm_top,
        "confirm_max_rounds": options.confirm_max_rounds, "selection_rounds": options.selection_rounds,
        "max_wait_s": options.max_wait and _seconds(options.max_wait),
    }
    request = TuneRequest(model=model, storage=options.storage,
                          study_name=options.study_name, seed=options.seed, cpus=options.cpus,
                          jobs=options.jobs, **{k: v for k, v in given.items() if v})
    if options.measure_seconds:
        request.measure = request.measure.timed_for(options.measure_seconds)
        request.confirm_measure = request.confirm_measure.timed_for(options.measure_seconds / 2)
    return request
