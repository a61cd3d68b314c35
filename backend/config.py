"""BackendConfig: a frozen, validated set of knob values."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator, Mapping

from .errors import KnobError
from .fingerprint import cpu_features
from .knobs import KNOBS, check_threads, get_knob


class BackendConfig(Mapping[str, Any]):
    """Knob values for one compile. Validated at construction; immutable; hashable.

    Only knobs that apply to the chosen path are kept, so two configs that compile the same
    way compare equal and share one ``config_id``. A knob of the other path reads as its
    default. Values have their real types (``simdlen`` 256, ``gemm_thread_factors`` (1, 1, 2));
    ``to_dict`` gives their plain JSON form.
    """

    # one typed attribute per knob (tests/test_knobs.py checks these against KNOBS)
    path: str
    dtype: str
    weights_prepack: bool
    channels_last: bool
    conv_bn_folding: bool
    linear_bn_folding: bool
    optimize_for_inference: bool
    onednn_fusion: bool
    freezing: bool
    max_autotune: bool
    gemm_backends: str
    epilogue_fusion: bool
    pattern_matcher: bool
    simdlen: int | str
    pt2e_int8_activations: str
    tiling_heuristics: bool
    min_chunk_size: int
    max_horizontal_fusion_size: int
    cpp_wrapper: bool
    gemm_max_k_slices: int
    gemm_thread_factors: tuple[int, ...] | str
    ov_performance_hint: str
    ov_cpu_pinning: bool
    ov_denormals_as_zero: bool
    ov_int8_preset: str
    ov_int8_model_type: str
    ort_optimization_level: str
    ort_execution_mode: str
    ort_memory_pattern: bool
    ort_cpu_arena: bool
    ort_spinning: bool
    threads: int
    interop_threads: int

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None, *, check_cpu: bool = True,
                 lenient_paths: bool = False):
        given = dict(values or {})
        for name in given:
            get_knob(name)  # unknown names fail before anything else
        path = get_knob("path").validate(given.get("path", KNOBS["path"].default))
        dtype = KNOBS["dtype"].validate(given["dtype"]) if "dtype" in given and \
            path in KNOBS["dtype"].paths else KNOBS["dtype"].default
        resolved: dict[str, Any] = {}
        for name, knob in KNOBS.items():
            if name in given:
                if not knob.applies(path, dtype):
                    if lenient_paths:
                        continue
                    raise KnobError(_not_here(knob, path, dtype))
                value = knob.validate(given[name])
                if not knob.runs_on(value, path):
                    raise KnobError(
                        f"knob {name!r}={knob.dump(value)!r} runs only on path "
                        f"{' or '.join(sorted(knob.value_paths[value]))}, but path is {path!r}")
                if check_cpu:
                    knob.check_cpu(value, cpu_features())
                resolved[name] = value
            elif knob.applies(path, dtype):
                resolved[name] = knob.default
        resolved["path"] = path
        if resolved["threads"]:
            check_threads(resolved, resolved["threads"])
        object.__setattr__(self, "_values", resolved)

    def __setattr__(self, name, value):
        raise AttributeError("BackendConfig is immutable; use .replace(...)")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackendConfig) and self._values == other._values

    def __hash__(self) -> int:
        return hash(self.config_id)

    def __repr__(self) -> str:
        return f"BackendConfig({self.non_default()!r})"

    def replace(self, **changes: Any) -> "BackendConfig":
        values = dict(self._values)
        if "path" in changes and changes["path"] != values["path"]:
            values = {k: v for k, v in values.items() if k in changes or self._is_shared(k)}
        values.update(changes)
        return BackendConfig(values, lenient_paths=True)

    @staticmethod
    def _is_shared(name: str) -> bool:
        return len(KNOBS[name].paths) > 1

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON, YAML, Optuna params); ``BackendConfig(to_dict())`` is equal."""
        return {name: KNOBS[name].dump(value) for name, value in self._values.items()}

    def non_default(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items()
                if k == "path" or v != KNOBS[k].dump(KNOBS[k].default)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **kwargs: Any) -> "BackendConfig":
        return cls(values, **kwargs)

    @property
    def config_id(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return "cfg-" + hashlib.sha256(blob).hexdigest()[:12]


def _not_here(knob, path: str, dtype: str) -> str:
    if path not in knob.paths:
        return (f"knob {knob.name!r} applies only to path {' or '.join(sorted(knob.paths))}, "
                f"but path is {path!r}")
    return (f"knob {knob.name!r} applies only to dtype {' or '.join(sorted(knob.dtypes))}, "
            f"but dtype is {dtype!r}")


def _knob_reader(name: str) -> property:
    default = KNOBS[name].default

    def read(self: BackendConfig) -> Any:
        return self._values.get(name, default)
    return property(read, doc=KNOBS[name].doc)


for _name in KNOBS:
    setattr(BackendConfig, _name, _knob_reader(_name))
