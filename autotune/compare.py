"""`autotune compare`: every static recipe, the baselines and the tuned config, in fresh processes,
interleaved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from backend import BackendConfig
from backend.fingerprint import cpu_features
from backend.knobs import KNOBS

from .peak import fma_peak_gflops, matmul_gflops, model_gflop
from .models import build
from .confirmation import median_noise
from .space import STATIC_RECIPES
from .tuner import TuneRequest
from .workbench import Candidate
from .worker import EAGER, EAGER_BF16, INT8_PEERS, IPEX_LOOKUP, PEERS, TOLERANCES, TORCH_COMPILE_DEFAULT


NOISY_IQR = 0.10  # a median relative IQR above this: the run's ratios are not to be trusted


@dataclass
class Comparison:
    candidates: dict[str, Candidate]
    gflop: float
    peaks: dict[str, float | None]  # "fma float32", "fma bfloat16", "matmul float32", ...
    tuned_source: str | None        # where the lookup candidate's config came from

    def gflops(self, name: str) -> float | None:
        stats = self.candidates[name].stats
        return self.gflop / (stats.median_ms / 1e3) if stats else None

    def fma_peak(self, name: str) -> float | None:
        """The multiply-add limit for the dtype the candidate computed in."""
        cand = self.candidates[name]
        dtype = cand.config.dtype if cand.config is not None else cand.dtype
        if cand.graphs and "dtype" in cand.graphs[0]:  # the lookup: what the store applied
            dtype = cand.graphs[0]["dtype"]
        return self.peaks.get(f"fma {dtype}")

    def share_of_fma_peak(self, name: str) -> float | None:
        """The candidate's rate over its dtype's FMA peak; None where there is none (int8)."""
        rate, peak = self.gflops(name), self.fma_peak(name)
        return rate / peak if rate and peak else None

    def noise_note(self) -> str:
        """Whether this run's ratios can be trusted, and why not."""
        noise = median_noise(self.candidates)
        rounds = max((len(c.round_medians) for c in self.candidates.values()), default=0)
        busy = max((sum(m is None for m in c.round_medians) for c in self.candidates.values()
                    if c.stats), default=0)
        if busy == rounds and rounds:
            return (f"too noisy: every round ran on a busy machine (median IQR {100 * noise:.0f}%); "
                    "these ratios mean nothing: rerun on a quieter machine")
        if busy or noise > NOISY_IQR:
            return (f"noisy: {busy} of {rounds} rounds on a busy machine, median IQR "
                    f"{100 * noise:.0f}%: ratios within that are not differences")
        return f"quiet: median IQR {100 * noise:.1f}% over {rounds} rounds"

    def best_static(self, dtype: str) -> str | None:
        """The name of the fastest static recipe measured in ``dtype``."""
        names = [named_for(name, dtype) for name in STATIC_RECIPES]
        measured = [n for n in names if n in self.candidates and self.candidates[n].stats]
        return min(measured, key=lambda n: self.candidates[n].stats.median_ms, default=None)


def named_for(name: str, dtype: str) -> str:
    """compare's name of a static candidate in ``dtype`` ("best static recipe bfloat16")."""
    return name if dtype == "float32" else f"{name} {dtype}"


def candidates_for(request: TuneRequest) -> dict[str, Candidate]:
    threads = request.threads
    found: dict[str, Candidate] = {EAGER: Candidate(EAGER, None, kind=EAGER)}
    if "bfloat16" in request.dtypes:
        found[EAGER_BF16] = Candidate(EAGER_BF16, None, kind=EAGER_BF16, dtype="bfloat16")
    found[TORCH_COMPILE_DEFAULT] = Candidate(TORCH_COMPILE_DEFAULT, None, kind=TORCH_COMPILE_DEFAULT)
    for peer in PEERS:  # float32, as each engine runs by default
        found[peer] = Candidate(peer, None, kind=peer)
    if "int8" in request.dtypes:  # calibrated on the same data as ours
        for peer in INT8_PEERS:
            found[peer] = Candidate(peer, None, kind=peer, dtype="int8")
    for dtype in request.dtypes:
        for name, recipe in STATIC_RECIPES.items():
            if recipe["path"] not in KNOBS["dtype"].paths and dtype != request.dtypes[0]:
                continue  # ONNX Runtime takes no dtype: once, as the search space has it
            if recipe["path"] in KNOBS["dtype"].paths and not KNOBS["dtype"].runs_on(dtype, recipe["path"]):
                continue  # int8 on a path without a quantizer
            dtype_knob = {"dtype": dtype} if recipe["path"] in KNOBS["dtype"].paths else {}
            config = BackendConfig({**recipe, "threads": threads, **dtype_knob})
            named = named_for(name, config.dtype)  # ONNX Runtime's is float32 in any study
            found[named] = Candidate(named, config)
    # the store may apply any of the dtypes: judged with the loosest one's tolerance, whatever
    # order --dtype gave them in
    loosest = max(request.dtypes, key=TOLERANCES.__getitem__)
    found[IPEX_LOOKUP] = Candidate(IPEX_LOOKUP, None, kind=IPEX_LOOKUP, dtype=loosest)
    return found


def compare(request: TuneRequest, *, with_peaks: bool = True,
            on_start: Callable[[], None] | None = None) -> Comparison:
    """Measure all candidates interleaved (request.confirm_rounds rounds) and the machine's peaks.
    ``on_start`` runs once the model and the store have been checked, before any measurement."""
    candidates = candidates_for(request)  # a dtype this CPU cannot run fails here, before any work
    bench = request.bench()
    bench.preflight(writes_store=False)  # compare reads the store; it never creates one
    if on_start:
        on_start()
    bench.ensure_reference()
    # The FMA peak is a limit, so the best of one measurement per round: a busy moment on a
    # shared machine only lowers it (one measurement once put a model at 120% of its "peak").
    fma_samples: dict[str, list[float | None]] = {"float32": [], "bfloat16": []}

    def measure_fma_peaks() -> None:
        for dtype, samples in fma_samples.items():
            samples.append(fma_peak_gflops(request.threads, dtype))

    candidates = bench.measure_interleaved(candidates,
                                           after_round=measure_fma_peaks if with_peaks else None)
    model, inputs = build(request.model)
    peaks = {}
    if with_peaks:
        peaks = {f"fma {dtype}": max(filter(None, samples), default=None)
                 for dtype, samples in fma_samples.items()}
        peaks["matmul float32"] = matmul_gflops(torch.float32, request.threads)
        # without oneDNN bfloat16 a bfloat16 matmul takes a slow reference path: minutes, no peak
        if "mkldnn_bf16" in cpu_features():
            peaks["matmul bfloat16"] = matmul_gflops(torch.bfloat16, request.threads)
    lookup = candidates[IPEX_LOOKUP]
    source = lookup.graphs[0]["source"] if lookup.graphs else None
    return Comparison(candidates, model_gflop(model, inputs), peaks, source)
