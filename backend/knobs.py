"""THE list of knobs. Validation, search spaces, dashboards and docs all read from here.

A knob declares its type, its allowed values (``choices``) or integer range, its default,
the compile paths it applies to, the CPU features it needs for particular values, and one line
of documentation; ``applies_at`` says when its value takes effect (compile, call, process).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import KnobError, UnsupportedOnThisCPU

TORCHSCRIPT = "torchscript"
INDUCTOR = "inductor"
PATHS = (TORCHSCRIPT, INDUCTOR)


@dataclass(frozen=True)
class Knob:
    name: str
    type: type
    default: Any
    doc: str
    # the paths it applies to, named one by one: a new path takes on a shared knob only by choice
    paths: frozenset
    choices: tuple | None = None
    low: int | None = None
    high: int | None = None
    # value -> CPU features (as named by fingerprint.cpu_features()) that value needs
    requires: Mapping[Any, tuple[str, ...]] = field(default_factory=dict)
    # "compile": read while compiling; "call": applied around every call;
    # "process": fixed at process start, set by the launcher (autotune worker / env)
    applies_at: str = "compile"

    def valid_values_text(self) -> str:
        if self.type is bool:
            return "True, False"
        if self.choices is not None:
            return ", ".join(repr(c) for c in self.choices)
        return f"an integer from {self.low} to {self.high}"

    def validate(self, value: Any) -> Any:
        """Return ``value`` coerced to the knob's type, or raise KnobError naming it."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise KnobError(f"knob {self.name!r}: got {value!r}; valid values: {self.valid_values_text()}")
        if self.type is int and self.choices is None:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise KnobError(
                    f"knob {self.name!r}: got {value!r}; valid values: {self.valid_values_text()}")
            try:
                value = int(value)
            except ValueError:
                raise KnobError(
                    f"knob {self.name!r}: got {value!r}; valid values: {self.valid_values_text()}"
                ) from None
            if not (self.low <= value <= self.high):
                raise KnobError(
                    f"knob {self.name!r}: got {value}; valid values: {self.valid_values_text()}")
            return value
        if value not in self.choices:
            # "512" from YAML or a CLI means 512
            for choice in self.choices:
                if str(choice) == str(value):
                    return choice
            raise KnobError(
                f"knob {self.name!r}: got {value!r}; valid values: {self.valid_values_text()}")
        return value

    def check_cpu(self, value: Any, features: frozenset[str]) -> None:
        missing = [f for f in self.requires.get(value, ()) if f not in features]
        if missing:
            raise UnsupportedOnThisCPU(
                f"knob {self.name!r}={value!r} needs CPU feature(s) {', '.join(missing)}, "
                f"which this CPU lacks; valid here: {', '.join(repr(v) for v in self.supported_values(features))}")

    def supported_values(self, features: frozenset[str]) -> list:
        if self.type is bool:
            return [True, False]
        if self.choices is None:
            return [self.low, self.high]
        return [c for c in self.choices
                if all(f in features for f in self.requires.get(c, ()))]


_KNOB_LIST = [
    # --- both paths -------------------------------------------------------------------------
    Knob("path", str, TORCHSCRIPT, paths=frozenset(PATHS), choices=PATHS,
         doc="Compile path: TorchScript trace+freeze (inference only) or TorchInductor."),
    Knob("dtype", str, "float32", paths=frozenset({TORCHSCRIPT, INDUCTOR}),
         choices=("float32", "bfloat16"),
         requires={"bfloat16": ("mkldnn_bf16",)},
         doc="Compute dtype; bfloat16 runs the graph under CPU autocast, outputs stay float32."),
    Knob("weights_prepack", bool, True, paths=frozenset({TORCHSCRIPT, INDUCTOR}),
         doc="Prepack conv/linear weights into oneDNN blocked layouts at compile time "
             "(TorchScript: MKLDNN conversion pass, skipped under onednn_fusion, which packs its "
             "own; Inductor: cpp.weight_prepack with freezing, fixed per process at its first "
             "frozen compile)."),
    Knob("channels_last", bool, True, paths=frozenset({TORCHSCRIPT, INDUCTOR}),
         doc="NHWC activations for convolutions (TorchScript: weights and 4-D inputs converted; "
             "Inductor: layout_optimization)."),
    # --- TorchScript path ---------------------------------------------------------------------
    Knob("conv_bn_folding", bool, True, paths=frozenset({TORCHSCRIPT}),
         doc="Fold eval BatchNorm and constant add/sub/mul/div into the preceding convolution."),
    Knob("linear_bn_folding", bool, True, paths=frozenset({TORCHSCRIPT}),
         doc="Fold eval BatchNorm into the preceding linear layer."),
    Knob("optimize_for_inference", bool, False, paths=frozenset({TORCHSCRIPT}),
         doc="Run torch.jit.optimize_for_inference on the frozen module "
             "(conv-add-relu fusion and MKLDNN conversion, whatever weights_prepack says; "
             "skipped under onednn_fusion)."),
    # on by default: 1.11x-2.08x over the MKLDNN passes on 14 torchvision models here
    # (benchmarks/onednn_graph_default.py); a graph it fails on is compiled without it
    Knob("onednn_fusion", bool, True, paths=frozenset({TORCHSCRIPT}),
         doc="oneDNN Graph (LLGA): fused partitions (conv+bias+relu+add chains, whole residual "
             "stages), compiled once with their constant weights packed; replaces the MKLDNN passes."),
    # --- Inductor path ------------------------------------------------------------------------
    Knob("freezing", bool, True, paths=frozenset({INDUCTOR}),
         doc="Treat parameters as constants (inference only): constant folding and weight prepacking."),
    Knob("max_autotune", bool, False, paths=frozenset({INDUCTOR}),
         doc="Benchmark GEMM/conv choices at compile time, with the C++ GEMM template (backends CPP,ATEN)."),
    Knob("gemm_backends", str, "CPP,ATEN", paths=frozenset({INDUCTOR}), choices=("CPP,ATEN", "CPP"),
         doc="GEMM implementations max_autotune chooses from; CPP alone forces the C++ GEMM template."),
    Knob("epilogue_fusion", bool, True, paths=frozenset({INDUCTOR}),
         doc="Fuse pointwise epilogues into GEMM templates (effective with max_autotune)."),
    Knob("pattern_matcher", bool, True, paths=frozenset({INDUCTOR}),
         doc="Inductor's pattern-matcher passes (oneDNN conv/linear + unary/binary fusions)."),
    Knob("simdlen", str, "auto", paths=frozenset({INDUCTOR}), choices=("auto", "256", "512"),
         requires={"256": ("avx2",), "512": ("avx512f",)},
         doc="Vector width of generated C++ kernels in bits (auto: best the CPU supports)."),
    Knob("tiling_heuristics", bool, True, paths=frozenset({INDUCTOR}),
         doc="Inductor's C++ tiling heuristics (2-D tiling for transposes and reductions)."),
    Knob("min_chunk_size", int, 512, paths=frozenset({INDUCTOR}), low=1, high=65536,
         doc="Minimum work per thread before a C++ kernel is parallelised."),
    Knob("max_horizontal_fusion_size", int, 16, paths=frozenset({INDUCTOR}), low=1, high=64,
         doc="How many independent kernels the C++ backend may fuse horizontally."),
    Knob("cpp_wrapper", bool, False, paths=frozenset({INDUCTOR}),
         doc="Generate the graph's wrapper in C++ instead of Python (less per-call overhead)."),
    Knob("gemm_max_k_slices", int, 1, paths=frozenset({INDUCTOR}), choices=(1, 2, 4),
         doc="C++ GEMM template: maximum K-dimension slices per thread (with max_autotune)."),
    Knob("gemm_thread_factors", str, "auto", paths=frozenset({INDUCTOR}),
         choices=("auto", "1,1,2", "1,2,1", "2,1,1", "1,1,4", "1,2,2", "2,2,1", "4,1,1"),
         doc="C++ GEMM template: threads split over M,N,K (product must equal threads; with max_autotune)."),
    # --- runtime ------------------------------------------------------------------------------
    Knob("threads", int, 0, paths=frozenset({TORCHSCRIPT, INDUCTOR}), low=0, high=1024, applies_at="call",
         doc="Intra-op threads used by the compiled graph (0: leave torch's setting alone)."),
    Knob("interop_threads", int, 0, paths=frozenset({TORCHSCRIPT, INDUCTOR}), low=0, high=1024,
         applies_at="process",
         doc="Inter-op threads (0: torch's default); fixed at process start, so set by the launcher."),
]

KNOBS: dict[str, Knob] = {k.name: k for k in _KNOB_LIST}

# knob -> the knobs it makes irrelevant when it is on (the compile ignores their values)
SUPERSEDES: dict[str, tuple[str, ...]] = {
    "onednn_fusion": ("weights_prepack", "optimize_for_inference"),
}


def superseded(config: Mapping[str, Any]) -> set[str]:
    """The knobs whose values ``config`` ignores (a knob it leaves out is at its default)."""
    path = config.get("path", KNOBS["path"].default)
    return {name for boss, ruled in SUPERSEDES.items()
            if path in KNOBS[boss].paths and config.get(boss, KNOBS[boss].default)
            for name in ruled}


def get_knob(name: str) -> Knob:
    try:
        return KNOBS[name]
    except KeyError:
        close = difflib.get_close_matches(name, KNOBS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KnobError(
            f"unknown knob {name!r}{hint}. Valid knobs: {', '.join(KNOBS)} "
            "(`autotune knobs` lists them with their values)") from None


def knobs_for_path(path: str) -> list[Knob]:
    return [k for k in _KNOB_LIST if path in k.paths]
