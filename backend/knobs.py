"""THE list of knobs. Validation, search spaces, the compile paths and the docs all read from here.

A knob declares its type, its allowed values (``choices``) or integer range, its default, the
compile paths it applies to, the CPU features particular values need, where its value lands
(``lands``: an Inductor config key, a TorchScript pass, a scope around each call, the process),
and one line of documentation. Values are parsed to their real types once, in ``validate``;
``dump`` gives the plain form that JSON, YAML and Optuna keep. Rules between knobs are data
here too: ``supersedes`` (knobs a knob makes irrelevant) and ``threads_used`` (a value that
fixes the thread count).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import KnobError, UnsupportedOnThisCPU

TORCHSCRIPT = "torchscript"
INDUCTOR = "inductor"
OPENVINO = "openvino"
ONNXRUNTIME = "onnxruntime"
PATHS = (TORCHSCRIPT, INDUCTOR, OPENVINO, ONNXRUNTIME)
ENGINE_TITLES = {OPENVINO: "OpenVINO", ONNXRUNTIME: "ONNX Runtime"}
AUTO = "auto"  # "let the compiler choose", for knobs whose other values are numbers
UNSET = object()  # an InductorOption converter's "leave Inductor's own setting alone"


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class InductorOption:
    """The value lands in ``torch._inductor.config[key]``, through ``convert``; with ``only_with``,
    only while that knob is on."""
    key: str
    convert: Callable[[Any], Any] = _same
    only_with: str | None = None

    def describe(self) -> str:
        return f"Inductor `{self.key}`"


@dataclass(frozen=True)
class EngineOption:
    """The value lands in another runtime's settings: an OpenVINO compile property or an ONNX
    Runtime session option (``key``), through ``convert``."""
    engine: str
    key: str
    convert: Callable[[Any], Any] = _same

    def describe(self) -> str:
        return f"{ENGINE_TITLES[self.engine]} `{self.key}`"


def engine_settings(engine: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: value}`` of ``engine``'s options for this config, as the knobs declare them."""
    settings: dict[str, Any] = {}
    for knob in KNOBS.values():
        if engine not in knob.paths:
            continue
        for landing in knob.lands:
            if isinstance(landing, EngineOption) and landing.engine == engine:
                value = landing.convert(config.get(knob.name, knob.default))
                if value is not UNSET:
                    settings[landing.key] = value
    return settings


@dataclass(frozen=True)
class Effect:
    """The value is read by a path's own code: a TorchScript pass, a scope around calls."""
    text: str

    def describe(self) -> str:
        return self.text


@dataclass(frozen=True)
class Knob:
    name: str
    type: type
    default: Any
    doc: str
    # the paths it applies to, named one by one: a new path takes on a shared knob only by choice
    paths: frozenset
    lands: tuple = ()
    choices: tuple | None = None
    low: int | None = None
    high: int | None = None
    # value -> CPU features (as named by fingerprint.cpu_features()) that value needs
    requires: Mapping[Any, tuple[str, ...]] = field(default_factory=dict)
    # value -> the only paths that value runs on (int8: the paths with a quantizer)
    value_paths: Mapping[Any, frozenset] = field(default_factory=dict)
    # the dtypes this knob applies to (None: all); at another dtype it is left out of a config
    dtypes: frozenset | None = None
    # knobs whose values the compile ignores while this one is on
    supersedes: tuple[str, ...] = ()
    # value -> knobs the compile ignores at that value (int8 on Inductor always freezes)
    ignores_at: Mapping[Any, tuple[str, ...]] = field(default_factory=dict)
    # value -> the intra-op thread count it only works with (None: any)
    threads_used: Callable[[Any], int | None] | None = None
    parse: Callable[[Any], Any] = _same   # text or JSON form -> the real type (may raise ValueError)
    dump: Callable[[Any], Any] = _same    # the real type -> a plain value for JSON, YAML, Optuna

    def valid_values_text(self) -> str:
        if self.type is bool:
            return "True, False"
        if self.choices is not None:
            return ", ".join(repr(self.dump(c)) for c in self.choices)
        return f"an integer from {self.low} to {self.high}"

    def _refuse(self, value: Any) -> KnobError:
        return KnobError(f"knob {self.name!r}: got {value!r}; valid values: {self.valid_values_text()}")

    def validate(self, value: Any) -> Any:
        """Return ``value`` parsed to the knob's type, or raise KnobError naming it."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise self._refuse(value)
        if self.type is int and self.choices is None:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise self._refuse(value)
            try:
                number = int(value)
            except ValueError:
                raise self._refuse(value) from None
            if not (self.low <= number <= self.high):
                raise self._refuse(number)
            return number
        try:
            parsed = self.parse(value)
        except (TypeError, ValueError):
            raise self._refuse(value) from None
        if isinstance(parsed, bool):  # True == 1, but True is no thread count
            raise self._refuse(value)
        for choice in self.choices:
            if parsed == choice or str(parsed) == str(choice):  # "512" from YAML or a CLI is 512
                return choice
        raise self._refuse(value)

    def applies(self, path: str, dtype: str) -> bool:
        return path in self.paths and (self.dtypes is None or dtype in self.dtypes)

    def runs_on(self, value: Any, path: str) -> bool:
        return path in self.value_paths.get(value, self.paths)

    def missing_features(self, value: Any, features: frozenset[str]) -> list[str]:
        return [f for f in self.requires.get(value, ()) if f not in features]

    def check_cpu(self, value: Any, features: frozenset[str]) -> None:
        missing = self.missing_features(value, features)
        if missing:
            raise UnsupportedOnThisCPU(
                f"knob {self.name!r}={self.dump(value)!r} needs CPU feature(s) {', '.join(missing)}, "
                f"which this CPU lacks; valid here: "
                f"{', '.join(repr(self.dump(v)) for v in self.supported_values(features))}")

    def supported_values(self, features: frozenset[str]) -> list:
        if self.type is bool:
            return [True, False]
        if self.choices is None:
            return [self.low, self.high]
        return [c for c in self.choices if not self.missing_features(c, features)]

    def fits_threads(self, value: Any, threads: int) -> bool:
        """Whether ``value`` can run on ``threads`` intra-op threads."""
        needed = self.threads_used(value) if self.threads_used else None
        return needed is None or needed == threads


def _factors(value: Any) -> Any:
    """'1,1,2', [1, 1, 2] or (1, 1, 2) -> (1, 1, 2); 'auto' stays."""
    if value == AUTO:
        return AUTO
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(int(p) for p in parts)


def _factors_text(value: Any) -> str:
    return AUTO if value == AUTO else ",".join(map(str, value))


def _auto_is_none(value: Any) -> Any:
    return None if value == AUTO else value


_GEMM_FACTORS = ((1, 1, 2), (1, 2, 1), (2, 1, 1), (1, 1, 4), (1, 2, 2), (2, 2, 1), (4, 1, 1))

_KNOB_LIST = [
    # --- both paths -------------------------------------------------------------------------
    Knob("path", str, TORCHSCRIPT, paths=frozenset(PATHS), choices=PATHS,
         lands=(Effect("the compile-path registry (backend/paths.py)"),),
         doc="Compile path: TorchScript trace+freeze, TorchInductor, or the graph converted to "
             "OpenVINO or ONNX Runtime. All but Inductor are inference-only: a graph that needs "
             "gradients, or one a path cannot take, compiles on Inductor with one warning."),
    # ONNX Runtime's CPU provider computes in float32 only: its configs are float32 configs
    Knob("dtype", str, "float32", paths=frozenset({TORCHSCRIPT, INDUCTOR, OPENVINO}),
         choices=("float32", "bfloat16", "int8"),
         requires={"bfloat16": ("mkldnn_bf16",)},
         value_paths={"int8": frozenset({OPENVINO, INDUCTOR})},
         ignores_at={"int8": ("freezing",)},
         lands=(Effect("CPU autocast around trace and compile"),
                Effect("int8: post-training quantization calibrated on the user's data, by NNCF "
                       "(OpenVINO) or torchao's PT2E X86InductorQuantizer (Inductor, frozen)"),
                # an int8 model runs its quantized ops in int8 and the rest in f32
                EngineOption(OPENVINO, "INFERENCE_PRECISION_HINT",
                             {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}.get)),
         doc="Compute dtype; bfloat16 runs the graph under CPU autocast (OpenVINO: bf16 "
             "inference precision), outputs stay float32. int8 (OpenVINO, Inductor): "
             "post-training quantization by NNCF or torchao's PT2E flow (Inductor then freezes, "
             "whatever `freezing` says), calibrated on the data given to `autotune run --data` or "
             "`prepare`/`convert`; a lookup applies the stored quantized model only to the weights "
             "it was calibrated for."),
    Knob("weights_prepack", bool, True, paths=frozenset({TORCHSCRIPT, INDUCTOR}),
         lands=(Effect("TorchScript MKLDNN conversion pass"), InductorOption("cpp.weight_prepack")),
         doc="Prepack conv/linear weights into oneDNN blocked layouts at compile time "
             "(TorchScript: MKLDNN conversion pass, skipped under onednn_fusion, which packs its "
             "own; Inductor: with freezing, fixed per process at its first frozen compile)."),
    Knob("channels_last", bool, True, paths=frozenset({TORCHSCRIPT, INDUCTOR}),
         lands=(Effect("TorchScript: NHWC weights and 4-D inputs"),
                InductorOption("layout_optimization")),
         doc="NHWC activations for convolutions."),
    # --- TorchScript path ---------------------------------------------------------------------
    Knob("conv_bn_folding", bool, True, paths=frozenset({TORCHSCRIPT}),
         lands=(Effect("TorchScript frozen conv folding passes"),),
         doc="Fold eval BatchNorm and constant add/sub/mul/div into the preceding convolution."),
    Knob("linear_bn_folding", bool, True, paths=frozenset({TORCHSCRIPT}),
         lands=(Effect("TorchScript frozen linear-BN folding pass"),),
         doc="Fold eval BatchNorm into the preceding linear layer."),
    Knob("optimize_for_inference", bool, False, paths=frozenset({TORCHSCRIPT}),
         lands=(Effect("torch.jit.optimize_for_inference"),),
         doc="Conv-add-relu fusion and MKLDNN conversion on the frozen module, whatever "
             "weights_prepack says."),
    # on by default: 1.11x-2.08x over the MKLDNN passes on 14 torchvision models here
    # (benchmarks/onednn_graph_default.py); a graph it fails on is compiled without it
    Knob("onednn_fusion", bool, True, paths=frozenset({TORCHSCRIPT}),
         supersedes=("weights_prepack", "optimize_for_inference"),
         lands=(Effect("TorchScript oneDNN Graph (LLGA) fuser"),),
         doc="oneDNN Graph: fused partitions (conv+bias+relu+add chains, whole residual "
             "stages), compiled once with their constant weights packed; replaces the MKLDNN "
             "passes. A graph it fails on is compiled without it, with one warning."),
    # --- Inductor path ------------------------------------------------------------------------
    Knob("freezing", bool, True, paths=frozenset({INDUCTOR}),
         lands=(InductorOption("freezing"),),
         doc="Treat parameters as constants (inference only): constant folding and weight prepacking."),
    Knob("max_autotune", bool, False, paths=frozenset({INDUCTOR}),
         lands=(InductorOption("max_autotune", lambda on: on or UNSET),),  # off: Inductor's own
         doc="Benchmark GEMM/conv choices at compile time, with the C++ GEMM template."),
    Knob("gemm_backends", str, "CPP,ATEN", paths=frozenset({INDUCTOR}), choices=("CPP,ATEN", "CPP"),
         lands=(InductorOption("max_autotune_gemm_backends", only_with="max_autotune"),),
         doc="GEMM implementations max_autotune chooses from; CPP alone forces the C++ GEMM "
             "template and fails on ops it lacks (bmm)."),
    Knob("epilogue_fusion", bool, True, paths=frozenset({INDUCTOR}),
         lands=(InductorOption("epilogue_fusion"),),
         doc="Fuse pointwise epilogues into GEMM templates (effective with max_autotune)."),
    Knob("pattern_matcher", bool, True, paths=frozenset({INDUCTOR}),
         lands=(InductorOption("pattern_matcher"),),
         doc="Inductor's pattern-matcher passes (oneDNN conv/linear + unary/binary fusions)."),
    # plain form "256": the config ids and Optuna choices of earlier studies stay valid
    Knob("simdlen", int, AUTO, paths=frozenset({INDUCTOR}), choices=(AUTO, 256, 512),
         requires={256: ("avx2",), 512: ("avx512f",)}, dump=str,
         lands=(InductorOption("cpp.simdlen", _auto_is_none),),
         doc="Vector width of generated C++ kernels in bits (auto: best the CPU supports)."),
    Knob("pt2e_int8_activations", str, "static", paths=frozenset({INDUCTOR}),
         dtypes=frozenset({"int8"}), choices=("static", "dynamic"),
         lands=(Effect("torchao X86InductorQuantizer config (is_dynamic)"),),
         doc="int8 on Inductor: activation scales calibrated once (static, for convolutions) or "
             "computed per call (dynamic, for linear-heavy graphs such as transformers)."),
    Knob("tiling_heuristics", bool, True, paths=frozenset({INDUCTOR}),
         lands=(InductorOption("cpp.enable_tiling_heuristics"),),
         doc="Inductor's C++ tiling heuristics (2-D tiling for transposes and reductions)."),
    Knob("min_chunk_size", int, 512, paths=frozenset({INDUCTOR}), low=1, high=65536,
         lands=(InductorOption("cpp.min_chunk_size"),),
         doc="Minimum work per thread before a C++ kernel is parallelised."),
    Knob("max_horizontal_fusion_size", int, 16, paths=frozenset({INDUCTOR}), low=1, high=64,
         lands=(InductorOption("cpp.max_horizontal_fusion_size"),),
         doc="How many independent kernels the C++ backend may fuse horizontally."),
    Knob("cpp_wrapper", bool, False, paths=frozenset({INDUCTOR}),
         lands=(InductorOption("cpp_wrapper"),),
         doc="Generate the graph's wrapper in C++ instead of Python (less per-call overhead)."),
    Knob("gemm_max_k_slices", int, 1, paths=frozenset({INDUCTOR}), choices=(1, 2, 4),
         lands=(InductorOption("cpp.gemm_max_k_slices"),),
         doc="C++ GEMM template: maximum K-dimension slices per thread (with max_autotune)."),
    Knob("gemm_thread_factors", tuple, AUTO, paths=frozenset({INDUCTOR}),
         choices=(AUTO, *_GEMM_FACTORS), parse=_factors, dump=_factors_text,
         threads_used=lambda v: None if v == AUTO else math.prod(v),
         lands=(InductorOption("cpp.gemm_thread_factors",
                               lambda v: None if v == AUTO else _factors_text(v)),),
         doc="C++ GEMM template: threads split over M,N,K (with max_autotune)."),
    # --- OpenVINO path -------------------------------------------------------------------------
    # streams are not a knob: one synchronous request runs on one stream, and more streams only
    # split the threads between requests nobody sends
    Knob("ov_performance_hint", str, "LATENCY", paths=frozenset({OPENVINO}),
         choices=("LATENCY", "THROUGHPUT"),
         lands=(EngineOption(OPENVINO, "PERFORMANCE_HINT"),),
         doc="OpenVINO's performance hint: LATENCY (one stream, all threads) or THROUGHPUT."),
    Knob("ov_cpu_pinning", bool, True, paths=frozenset({OPENVINO}),
         lands=(EngineOption(OPENVINO, "ENABLE_CPU_PINNING"),),
         doc="Pin OpenVINO's inference threads to cores."),
    Knob("ov_denormals_as_zero", bool, False, paths=frozenset({OPENVINO}),
         lands=(EngineOption(OPENVINO, "CPU_DENORMALS_OPTIMIZATION"),),
         doc="Flush denormal floats to zero (faster where weights or activations underflow)."),
    Knob("ov_int8_preset", str, "performance", paths=frozenset({OPENVINO}),
         dtypes=frozenset({"int8"}), choices=("performance", "mixed"),
         lands=(Effect("NNCF quantization preset"),),
         doc="int8: symmetric weights and activations (performance), or asymmetric activations "
             "(mixed: closer to float32 where activations are not centred on zero)."),
    Knob("ov_int8_model_type", str, "cnn", paths=frozenset({OPENVINO}),
         dtypes=frozenset({"int8"}), choices=("cnn", "transformer"),
         lands=(Effect("NNCF model type"),),
         doc="int8: which layers NNCF quantizes; transformer keeps the attention's softmax, "
             "normalizations and their neighbours in float, as transformers need."),
    # --- ONNX Runtime path ---------------------------------------------------------------------
    Knob("ort_optimization_level", str, "all", paths=frozenset({ONNXRUNTIME}),
         choices=("basic", "extended", "all"),
         lands=(EngineOption(ONNXRUNTIME, "graph_optimization_level"),),
         doc="ONNX Runtime graph optimizations: basic (constant folding, redundant nodes), "
             "extended (fusions), all (plus NCHWc layouts)."),
    Knob("ort_execution_mode", str, "sequential", paths=frozenset({ONNXRUNTIME}),
         choices=("sequential", "parallel"),
         lands=(EngineOption(ONNXRUNTIME, "execution_mode"),),
         doc="Run independent ONNX nodes one after another or in parallel (inter-op threads)."),
    Knob("ort_memory_pattern", bool, True, paths=frozenset({ONNXRUNTIME}),
         lands=(EngineOption(ONNXRUNTIME, "enable_mem_pattern"),),
         doc="Plan activation memory once from the first run's shapes."),
    Knob("ort_cpu_arena", bool, True, paths=frozenset({ONNXRUNTIME}),
         lands=(EngineOption(ONNXRUNTIME, "enable_cpu_mem_arena"),),
         doc="Reuse CPU memory from ONNX Runtime's own arena."),
    Knob("ort_spinning", bool, True, paths=frozenset({ONNXRUNTIME}),
         lands=(EngineOption(ONNXRUNTIME, "session.intra_op.allow_spinning"),),
         doc="Intra-op threads spin while waiting for work (off: yield the core, kinder to a "
             "busy machine)."),
    # --- runtime ------------------------------------------------------------------------------
    Knob("threads", int, 0, paths=frozenset(PATHS), low=0, high=1024,
         lands=(Effect("torch.set_num_threads around every call"),
                InductorOption("cpp.threads", lambda v: v or UNSET),
                # the engines run their own thread pools: 0 means as many as torch has
                EngineOption(OPENVINO, "INFERENCE_NUM_THREADS"),
                EngineOption(ONNXRUNTIME, "intra_op_num_threads")),
         doc="Intra-op threads used by the compiled graph (0: leave torch's setting alone)."),
    Knob("interop_threads", int, 0, paths=frozenset({TORCHSCRIPT, INDUCTOR}), low=0, high=1024,
         lands=(Effect("torch.set_num_interop_threads at process start"),),
         doc="Inter-op threads (0: torch's default); fixed at process start, so set by the launcher."),
]

KNOBS: dict[str, Knob] = {k.name: k for k in _KNOB_LIST}


def superseded(config: Mapping[str, Any]) -> set[str]:
    """The knobs whose values ``config`` ignores (a knob it leaves out is at its default)."""
    path = config.get("path", KNOBS["path"].default)
    ignored = {name for boss in KNOBS.values() if boss.supersedes and path in boss.paths
               and config.get(boss.name, boss.default) for name in boss.supersedes}
    for knob in (k for k in KNOBS.values() if k.ignores_at):
        at_value = knob.ignores_at.get(config.get(knob.name, knob.default), ())
        ignored.update(name for name in at_value if path in KNOBS[name].paths)
    return ignored


def turned_off_by_request(explicit: Mapping[str, Any], path: str) -> dict[str, bool]:
    """Asking for a non-default value of a knob that a default-on knob overrides means "not that
    one": ``{"optimize_for_inference": True}`` alone turns oneDNN Graph off."""
    return {boss.name: False for boss in KNOBS.values()
            if boss.supersedes and boss.name not in explicit and path in boss.paths
            and any(name in explicit and KNOBS[name].validate(explicit[name]) != KNOBS[name].default
                    for name in boss.supersedes)}


def check_threads(config: Mapping[str, Any], threads: int) -> None:
    """Refuse a value that only works with another intra-op thread count than ``threads``."""
    for name, value in config.items():
        knob = KNOBS[name]
        if not knob.fits_threads(value, threads):
            raise KnobError(
                f"knob {name!r}={knob.dump(value)!r} uses {knob.threads_used(value)} threads, but "
                f"the graph runs on {threads}; choose a value for {threads} threads or "
                f"{knob.dump(knob.default)!r}")


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


def _values_cell(knob: Knob) -> str:
    if knob.type is bool:
        values = "bool"
    elif knob.choices is not None:
        values = " / ".join(str(knob.dump(c)) for c in knob.choices)
    else:
        values = f"{knob.low}..{knob.high}"
    return f"{values} ({knob.dump(knob.default)})"


def markdown_table() -> str:
    """The README's knob table, made from the declarations."""
    rows = ["| knob | values (default) | paths | where it lands | what it does |",
            "| --- | --- | --- | --- | --- |"]
    for knob in _KNOB_LIST:
        paths = ", ".join(p for p in PATHS if p in knob.paths)
        lands = "; ".join(landing.describe() for landing in knob.lands)
        doc = knob.doc
        if knob.supersedes:
            doc += (f" Overrides {', '.join(knob.supersedes)} while on; options that set one of "
                    "them to a non-default value without naming this knob turn it off.")
        if knob.threads_used:
            doc += " A value must use as many threads as `threads`."
        rows.append(f"| {knob.name} | {_values_cell(knob)} | {paths} | {lands} | {doc} |")
    return "\n".join(rows) + "\n"
