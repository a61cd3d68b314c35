"""Search spaces: YAML files validated against backend.knobs, turned into Optuna suggestions.

A space file lists, under ``knobs:``, each knob to search as a list of values or, for integer
knobs with a range, ``{low, high, log}``. Unlisted knobs stay at their default. ``dtype`` is not
in the file: the caller says which dtypes to try. ``restrict`` fits a space to this host (CPU
features, cores) before a study samples from it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from backend import paths
from backend.errors import KnobError
from backend.fingerprint import cpu_features, usable_cores
from backend.knobs import (INDUCTOR, KNOBS, ONNXRUNTIME, OPENVINO, TORCHSCRIPT, Knob, get_knob,
                           superseded)

from .errors import AutotuneError, SpaceError

log = logging.getLogger(__name__)

SPACE_KEYS = ("knobs", "description")
RANGE_KEYS = ("low", "high", "log")
_NARROW_FIRST = ("int8", "bfloat16", "float32")

# Known-good configs, by the names reports give them: the tuner enqueues them before any
# sampling (warm start), once per allowed dtype; `autotune compare` measures each of them.
TORCHSCRIPT_DEFAULT = "TorchScript path default"
# the TorchScript path as it was before oneDNN Graph became its default: what that default buys
WITHOUT_ONEDNN_GRAPH = "TorchScript without oneDNN Graph"
INDUCTOR_DEFAULT = "Inductor path default"
OPENVINO_LATENCY = "OpenVINO latency hint"
ONNXRUNTIME_DEFAULT = "ONNX Runtime, all optimizations"
STATIC_RECIPES: dict[str, dict[str, Any]] = {
    TORCHSCRIPT_DEFAULT: {"path": TORCHSCRIPT},              # the backend's default: oneDNN Graph
    # each engine's recommended latency setting (its defaults) next: an engine was the fastest
    # float32 recipe on most suite models, and a short budget must reach them (README, "Numbers")
    OPENVINO_LATENCY: {"path": OPENVINO},
    ONNXRUNTIME_DEFAULT: {"path": ONNXRUNTIME},
    INDUCTOR_DEFAULT: {"path": INDUCTOR},                    # torch.compile's compiler, frozen
    "Inductor with C++ wrapper": {"path": INDUCTOR, "cpp_wrapper": True},  # small batches
    "TorchScript optimize_for_inference": {"path": TORCHSCRIPT, "onednn_fusion": False,
                                           "optimize_for_inference": True},
    WITHOUT_ONEDNN_GRAPH: {"path": TORCHSCRIPT, "onednn_fusion": False},  # MKLDNN-converted ops
    # last: its compile takes minutes on a transformer
    "Inductor with max-autotune": {"path": INDUCTOR, "max_autotune": True},
}


def _recipes_in_order(dtype: str) -> list[dict[str, Any]]:
    """int8: NNCF on OpenVINO first. It beat PT2E on Inductor on every suite model (README, "int8
    beside float32"), and one vit_b_16 PT2E compile can eat a short budget."""
    recipes = list(STATIC_RECIPES.values())
    if dtype == "int8":
        recipes.sort(key=lambda recipe: recipe["path"] != OPENVINO)
    return recipes


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False

    def __contains__(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) \
            and self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A knob's searchable values: a tuple of choices or an integer range.
Dimension = tuple | IntRange


class YamlFile:
    """A YAML file kept as nodes, so every error can name the line that caused it."""

    def __init__(self, name: str, text: str, error: type[AutotuneError]):
        self.name, self.error = name, error
        self._loader = yaml.SafeLoader(text)
        try:
            self.root: Node | None = self._loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{name}:{mark.line + 1}" if mark else name
            raise error(f"{where}: malformed YAML: {getattr(exc, 'problem', None) or exc}") from None

    @classmethod
    def load(cls, path: Any, error: type[AutotuneError], what: str) -> "YamlFile":
        """Read ``path`` (a Path or an importlib.resources Traversable)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise error(f"{what} {str(path)!r} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise error(f"cannot read {what} {str(path)!r}: {exc}") from None
        return cls(str(path), text, error)

    def fail(self, node: Node | None, message: str) -> NoReturn:
        where = f"{self.name}:{node.start_mark.line + 1}" if node is not None else self.name
        raise self.error(f"{where}: {message}")

    def value(self, node: Node) -> Any:
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.fail(node, f"malformed YAML value: {getattr(exc, 'problem', None) or exc}")

    def mapping(self, node: Node | None, what: str) -> dict[str, tuple[Node, Node]]:
        """``{key: (key_node, value_node)}`` of a mapping node; duplicate keys are errors."""
        if not isinstance(node, MappingNode):
            self.fail(node, f"expected {what}")
        entries: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key_node, ScalarNode) or not isinstance(key, str):
                self.fail(key_node, f"key {key!r} in {what}: expected a name")
            if key in entries:
                self.fail(key_node, f"{key!r} appears twice in {what}")
            entries[key] = (key_node, value_node)
        return entries

    def check_keys(self, entries: Mapping[str, tuple[Node, Node]], valid: Sequence[str],
                   what: str) -> None:
        for key, (key_node, _) in entries.items():
            if key not in valid:
                self.fail(key_node, f"unknown key {key!r} in {what}; valid keys: {', '.join(valid)}")


def looks_like_path(text: str) -> bool:
    """A file path rather than the name of a shipped space ("default", "quick")."""
    return "/" in text or os.sep in text or text.endswith((".yaml", ".yml"))


def shipped_spaces() -> list[str]:
    files = importlib.resources.files("search_spaces").iterdir()
    return sorted(f.name[:-len(".yaml")] for f in files if f.name.endswith(".yaml"))


def load_space(path_or_name: str | os.PathLike) -> "SearchSpace":
    """Load a shipped space by name ("default") or a YAML file by path, fully validated."""
    text = os.fspath(path_or_name)
    if looks_like_path(text):
        source: Any = Path(text)
    else:
        source = importlib.resources.files("search_spaces") / f"{text}.yaml"
        if not source.is_file():
            raise SpaceError(f"unknown search space {text!r}; shipped spaces: "
                             f"{', '.join(shipped_spaces())}, or give a path to a YAML file")
    doc = YamlFile.load(source, SpaceError, "search space file")
    top = doc.mapping(doc.root, "a mapping with `knobs:` (and optionally `description:`)")
    doc.check_keys(top, SPACE_KEYS, "a search space")
    description = doc.value(top["description"][1]) if "description" in top else ""
    if not isinstance(description, str):
        doc.fail(top["description"][1], f"description {description!r}: expected text")
    if "knobs" not in top:
        doc.fail(doc.root, "missing `knobs:`, the mapping of knob name -> values to search")
    knobs_key, knobs_node = top["knobs"]
    entries = doc.mapping(knobs_node, "`knobs:` (knob name -> values)")
    dims = {name: _dimension(doc, _knob(doc, name, key_node), value_node)
            for name, (key_node, value_node) in entries.items()}
    if "path" not in dims:
        doc.fail(knobs_key, f"`path` must be listed under `knobs:`, e.g. path: "
                             f"[{TORCHSCRIPT}, {INDUCTOR}]")
    for name, (key_node, _) in entries.items():
        if not KNOBS[name].paths & set(dims["path"]):
            doc.fail(key_node, f"knob {name!r} applies only to path "
                               f"{' or '.join(sorted(KNOBS[name].paths))}, which `path` does not list")
    ordered = {name: dims[name] for name in KNOBS if name in dims}  # stable sampling order
    return SearchSpace(ordered, description=description, source=doc.name)


def _knob(doc: YamlFile, name: str, node: Node) -> Knob:
    if name == "dtype":
        doc.fail(node, "dtype is not part of a search space: the caller gives the dtypes to try "
                       "(e.g. --dtype float32,bfloat16)")
    try:
        return get_knob(name)
    except KnobError as exc:
        doc.fail(node, str(exc))


def _dimension(doc: YamlFile, knob: Knob, node: Node) -> Dimension:
    is_range_knob = knob.type is int and knob.choices is None
    if isinstance(node, SequenceNode):
        if not node.value:
            doc.fail(node, f"knob {knob.name!r}: empty list; give one or more of "
                           f"{_valid_values(knob)}")
        values = [_validated(doc, knob, item) for item in node.value]
        return tuple(dict.fromkeys(values))  # duplicates would skew a categorical
    if isinstance(node, MappingNode):
        if not is_range_knob:
            range_knobs = [k.name for k in KNOBS.values() if k.type is int and k.choices is None]
            doc.fail(node, f"knob {knob.name!r} takes a list of values "
                           f"({_valid_values(knob)}), not a range; ranges are for "
                           f"{', '.join(range_knobs)}")
        fields = doc.mapping(node, f"the range of {knob.name!r}")
        doc.check_keys(fields, RANGE_KEYS, f"the range of {knob.name!r}")
        for key in ("low", "high"):
            if key not in fields:
                doc.fail(node, f"the range of {knob.name!r} needs `{key}`: "
                               f"{knob.valid_values_text()}")
        low, high = (_validated(doc, knob, fields[k][1]) for k in ("low", "high"))
        use_log = doc.value(fields["log"][1]) if "log" in fields else False
        if not isinstance(use_log, bool):
            doc.fail(fields["log"][1], f"log {use_log!r} in the range of {knob.name!r}: "
                                       "expected true or false")
        if low > high:
            doc.fail(node, f"the range of {knob.name!r} has low {low} > high {high}")
        if use_log and low < 1:
            doc.fail(node, f"the range of {knob.name!r} has log: true with low {low}; "
                           "a log range needs low >= 1")
        return IntRange(low, high, use_log) if low < high else (low,)
    got = doc.value(node)
    doc.fail(node, f"knob {knob.name!r}: got {got!r}; expected a list of values "
                   f"({_valid_values(knob)})" + (" or {low, high, log}" if is_range_knob else ""))


def _say_overridden(knobs: Mapping[str, Dimension]) -> None:
    """A searched knob that an unlisted, default-on knob overrides is not searched on its path."""
    for boss in KNOBS.values():
        paths = [p for p in knobs.get("path", ()) if p in boss.paths]
        searched = [name for name in boss.supersedes if _is_sampled(knobs.get(name, ()))
                    and any(p in KNOBS[name].paths for p in paths)]
        if boss.name not in knobs and boss.default and searched:
            log.info("search space: %s not searched on the %s path: %s is on there (its default, "
                     "not listed) and overrides them; list %s: [true, false] to search them",
                     ", ".join(searched), "/".join(paths), boss.name, boss.name)


def _valid_values(knob: Knob) -> str:
    # bool knobs declare no choices, so Knob.valid_values_text() cannot describe them
    return "True, False" if knob.type is bool else knob.valid_values_text()


def _validated(doc: YamlFile, knob: Knob, node: Node) -> Any:
    try:
        return knob.validate(doc.value(node))
    except KnobError as exc:
        doc.fail(node, str(exc))


@dataclass(frozen=True)
class SearchSpace:
    """Knob name -> searchable values, in KNOBS order; ``path`` is always present."""

    knobs: Mapping[str, Dimension]
    dtypes: tuple[str, ...] = ("float32",)
    description: str = ""
    source: str = ""

    def restrict(self, features: frozenset[str] | None = None, cores: int | None = None,
                 dtypes: Sequence[str] = ("float32",)) -> "SearchSpace":
        """This space as this host can run it: one INFO line per knob whose values were dropped."""
        features = cpu_features() if features is None else frozenset(features)
        cores = usable_cores() if cores is None else cores
        allowed_dtypes = _restrict_dtypes(dtypes, features)
        knobs: dict[str, Dimension] = {}
        for name, dim in self.knobs.items():
            if name == "path":
                dim = _drop_unavailable_paths(dim)
            if isinstance(dim, tuple) and name != "threads":
                dim = _drop_unsupported(KNOBS[name], dim, features)
            if dim:
                knobs[name] = dim
        knobs["threads"] = _clip_threads(self.knobs.get("threads"), cores)
        for name in [n for n in knobs if KNOBS[n].threads_used]:
            kept = _drop_unmatched_threads(KNOBS[name], knobs[name], knobs["threads"])
            if kept:
                knobs[name] = kept
            else:
                del knobs[name]
        knobs["path"] = _drop_paths_without(knobs["path"], allowed_dtypes)
        _say_overridden(knobs)
        ordered = {name: knobs[name] for name in KNOBS if name in knobs}
        return dataclasses.replace(self, knobs=ordered, dtypes=allowed_dtypes)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample one config: path, then dtype, then only the knobs of that path.

        Optuna param names are knob names; single-valued knobs are set, not suggested. The
        result is accepted by BackendConfig.
        """
        config = {"path": _pick(trial, "path", self.knobs["path"])}
        dtypes = self.dtypes_on(config["path"])
        if dtypes:  # ONNX Runtime computes in float32 only: no dtype
            config["dtype"] = (KNOBS["dtype"].validate(trial.suggest_categorical(
                self._dtype_param(config["path"]), list(dtypes))) if len(dtypes) > 1 else dtypes[0])
        dtype = config.get("dtype", KNOBS["dtype"].default)
        names = [name for name in self.knobs
                 if name != "path" and KNOBS[name].applies(config["path"], dtype)]
        names.sort(key=lambda name: not KNOBS[name].supersedes)  # deciders first: no wasted samples
        for name in names:
            # a knob the config ignores takes its default, so equal compiles are equal configs
            config[name] = (KNOBS[name].default if name in superseded(config)
                            else _pick(trial, name, self.knobs[name]))
        config = {name: config[name] for name in ("path", "dtype", *self.knobs) if name in config}
        for name, value in config.items():
            if not KNOBS[name].fits_threads(value, config.get("threads")):
                config[name] = KNOBS[name].default  # e.g. GEMM thread factors for other threads
        return config

    def static_recipes(self, dtypes: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """STATIC_RECIPES completed to full configs (threads = the most this space allows),
        once per dtype; recipes outside this space are left out. Enqueue them with
        ``study.enqueue_trial(space.params_for(recipe))``."""
        # the narrowest dtype first, int8 being the biggest lever, but taking turns: when every
        # int8 recipe fails the gate (vit_b_16 at 97.7% agreement), a short budget spent on them
        # alone stored nothing, not even float32's default
        ordered = sorted(self.dtypes if dtypes is None else dtypes, key=_NARROW_FIRST.index)
        per_dtype = [[c for c in (self._complete({**r, "dtype": dtype}) for r in _recipes_in_order(dtype))
                      if c is not None] for dtype in ordered]
        recipes: list[dict[str, Any]] = []
        for config in itertools.chain.from_iterable(itertools.zip_longest(*per_dtype)):
            if config is not None and config not in recipes:
                recipes.append(config)
        return recipes

    def params_for(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The Optuna params ``suggest`` samples for ``config`` (for ``study.enqueue_trial``):
        knobs with a single value here are set, not sampled, so they are left out."""
        ignored = superseded(config)
        params = {name: KNOBS[name].dump(KNOBS[name].validate(value)) for name, value in config.items()
                  if name in self.knobs and _is_sampled(self.knobs[name]) and name not in ignored}
        if "dtype" in config and len(self.dtypes_on(config["path"])) > 1:
            params[self._dtype_param(config["path"])] = KNOBS["dtype"].validate(config["dtype"])
        return params

    def dtypes_on(self, path: str) -> tuple[str, ...]:
        """The dtypes of this study that ``path`` computes in (int8: the paths with a quantizer)."""
        if path not in KNOBS["dtype"].paths:
            return ()
        return tuple(d for d in self.dtypes if KNOBS["dtype"].runs_on(d, path))

    def _dtype_param(self, path: str) -> str:
        """Optuna keeps one set of choices per param name: a path that runs fewer of the study's
        dtypes samples its own."""
        return "dtype" if self.dtypes_on(path) == self.dtypes else f"dtype on {path}"

    def _complete(self, recipe: Mapping[str, Any]) -> dict[str, Any] | None:
        path = recipe["path"]
        if path not in self.knobs["path"] or recipe["dtype"] not in self.dtypes:
            return None
        if path in KNOBS["dtype"].paths and recipe["dtype"] not in self.dtypes_on(path):
            return None
        if path not in KNOBS["dtype"].paths:  # float32 only: one recipe, whatever the dtypes
            if recipe["dtype"] != self.dtypes[0]:
                return None
            recipe = {k: v for k, v in recipe.items() if k != "dtype"}
            config = {"path": path}
        else:
            config = {"path": path, "dtype": recipe["dtype"]}
        for name, dim in self.knobs.items():
            if name == "path" or not KNOBS[name].applies(path, config.get("dtype", "float32")):
                continue
            if name in superseded(recipe):  # ignored by the compile: canonical default
                config[name] = KNOBS[name].default
                continue
            value = _largest(dim) if name == "threads" else recipe.get(name, KNOBS[name].default)
            if value not in dim:
                return None
            config[name] = value
        # an override of a knob this space does not search is outside the space
        if any(name not in config and value != KNOBS[name].default for name, value in recipe.items()):
            return None
        return config

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "description": self.description,
                "dtypes": list(self.dtypes),
                "knobs": {name: dim.to_dict() if isinstance(dim, IntRange)
                          else [KNOBS[name].dump(v) for v in dim] for name, dim in self.knobs.items()}}


def _is_sampled(dim: Dimension) -> bool:
    return isinstance(dim, IntRange) or len(dim) > 1


def _pick(trial: Any, name: str, dim: Dimension) -> Any:
    if not _is_sampled(dim):
        return dim[0]
    if isinstance(dim, IntRange):
        return trial.suggest_int(name, dim.low, dim.high, log=dim.log)
    knob = KNOBS[name]  # Optuna keeps plain values: (1, 1, 2) is asked for as "1,1,2"
    return knob.validate(trial.suggest_categorical(name, [knob.dump(v) for v in dim]))


def _largest(dim: Dimension) -> int:
    return dim.high if isinstance(dim, IntRange) else max(dim)


def _drop_unsupported(knob: Knob, values: tuple, features: frozenset[str]) -> tuple:
    kept = tuple(v for v in values if not knob.missing_features(v, features))
    dropped = [v for v in values if v not in kept]
    if dropped:
        needs = sorted({f for v in dropped for f in knob.missing_features(v, features)})
        rest = "" if kept else f"; {knob.name} stays at its default {knob.default!r}"
        log.info("search space: dropped %s=%s (needs %s)%s", knob.name,
                 "/".join(str(knob.dump(v)) for v in dropped), ", ".join(needs), rest)
    return kept


def _drop_unavailable_paths(values: tuple) -> tuple:
    """Paths whose engine cannot load here leave the space, one INFO line each."""
    kept = []
    for name in values:
        why = paths.get(name).unavailable()
        if why:
            log.info("search space: dropped path=%s: %s", name, why)
        else:
            kept.append(name)
    if not kept:
        raise SpaceError(f"no path of {', '.join(values)} can run here; the torch paths "
                         f"({TORCHSCRIPT}, {INDUCTOR}) always can")
    return tuple(kept)


def _drop_paths_without(values: tuple, dtypes: tuple[str, ...]) -> tuple:
    """Paths that compute in none of the study's dtypes (int8 alone: the paths without a
    quantizer) leave the space, one INFO line each."""
    dtype = KNOBS["dtype"]
    kept = tuple(p for p in values if p not in dtype.paths or any(dtype.runs_on(d, p) for d in dtypes))
    for name in values:
        if name not in kept:
            log.info("search space: dropped path=%s: it computes in none of %s", name, ", ".join(dtypes))
    if not kept:
        raise SpaceError(f"no path of {', '.join(values)} computes in {', '.join(dtypes)}")
    return kept


def _restrict_dtypes(dtypes: Sequence[str], features: frozenset[str]) -> tuple[str, ...]:
    knob = KNOBS["dtype"]
    dtypes = [dtypes] if isinstance(dtypes, str) else dtypes
    try:
        wanted = tuple(dict.fromkeys(knob.validate(d) for d in dtypes))
    except KnobError as exc:
        raise SpaceError(f"dtypes: {exc}") from None
    if not wanted:
        raise SpaceError(f"dtypes: none given; valid values: {knob.valid_values_text()}")
    kept = tuple(d for d in wanted if not knob.missing_features(d, features))
    if not kept:
        needs = sorted({f for d in wanted for f in knob.missing_features(d, features)})
        raise SpaceError(f"dtypes {', '.join(wanted)}: none runs on this CPU (needs "
                         f"{', '.join(needs)}); valid here: "
                         f"{', '.join(knob.supported_values(features))}")
    return _drop_unsupported(knob, wanted, features)


def _clip_threads(dim: Dimension | None, cores: int) -> Dimension:
    """Threads within 1..cores (0, "leave torch alone", is no candidate: trials set it)."""
    if dim is None:
        return (cores,)
    if isinstance(dim, IntRange):
        high = max(1, min(dim.high, cores))
        low = min(max(dim.low, 1), high)
        if (low, high) != (dim.low, dim.high):
            log.info("search space: threads clipped to %d..%d (%d usable cores)", low, high, cores)
        return IntRange(low, high, dim.log) if low < high else (low,)
    kept = tuple(t for t in dim if 1 <= t <= cores)
    dropped = [t for t in dim if t not in kept]
    if dropped:
        rest = "" if kept else f"; threads fixed to {cores}"
        log.info("search space: dropped threads=%s (outside 1..%d, the usable cores)%s",
                 "/".join(map(str, dropped)), cores, rest)
    return kept or (cores,)


def _drop_unmatched_threads(knob: Knob, values: tuple, threads: Dimension) -> tuple:
    """Values that fit some thread count this space tries (GEMM thread factors)."""
    counts = range(threads.low, threads.high + 1) if isinstance(threads, IntRange) else threads
    kept = tuple(v for v in values if any(knob.fits_threads(v, t) for t in counts))
    dropped = [str(knob.dump(v)) for v in values if v not in kept]
    if dropped:
        rest = "" if kept else f"; {knob.name} stays at its default {knob.dump(knob.default)!r}"
        log.info("search space: dropped %s=%s (uses a thread count no threads value in the space "
                 "has)%s", knob.name, "/".join(dropped), rest)
    return kept
