"""What this machine can do: measured FLOP rates, for 'fraction of peak' figures."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
import time

import torch

from backend.fingerprint import cpu_features

# Independent FMA chains on registers only: no memory traffic, so the rate is the FMA limit.
_FMA_KERNEL = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
int main(int argc, char **argv) {
    long iters = atol(argv[1]);
    double start = omp_get_wtime();
    float sink = 0;
    #pragma omp parallel reduction(+:sink)
    {
        /* distinct starting values, or the compiler merges the ten chains into one */
        VEC a0 = SET1(1.0f), a1 = SET1(1.1f), a2 = SET1(1.2f), a3 = SET1(1.3f),
            a4 = SET1(1.4f), a5 = SET1(1.5f), a6 = SET1(1.6f), a7 = SET1(1.7f),
            a8 = SET1(1.8f), a9 = SET1(1.9f);
        const VEC m = SET1(0.999999f), c = SET1(1e-7f);
        for (long i = 0; i < iters; i++) {
            a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c);
            a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c);
            a8 = FMA(a8, m, c); a9 = FMA(a9, m, c);
        }
        VEC s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(ADD(a6, a7), ADD(a8, a9))));
        float out[LANES]; STORE(out, s);
        sink += out[0];
    }
    double seconds = omp_get_wtime() - start;
    printf("%f %d %f\n", seconds, omp_get_max_threads(), sink);
    return 0;
}
"""
# per ISA: flags, vector type, set1, FMA(a, m, c) body, add, store, multiply-adds per instruction.
# The bfloat16 dot product adds two bf16 products into each float32 lane: 32 per instruction.
_BF16_ONES = "(__m512bh)_mm512_set1_epi16(0x3f80)"
_ISAS = {
    "float32": {
        "avx512f": ("-mavx512f", "__m512", "_mm512_set1_ps", "_mm512_fmadd_ps(a, m, c)",
                    "_mm512_add_ps", "_mm512_storeu_ps", 16),
        "avx2": ("-mavx2 -mfma", "__m256", "_mm256_set1_ps", "_mm256_fmadd_ps(a, m, c)",
                 "_mm256_add_ps", "_mm256_storeu_ps", 8),
    },
    "bfloat16": {
        "avx512_bf16": ("-mavx512f -mavx512bf16", "__m512", "_mm512_set1_ps",
                        f"_mm512_dpbf16_ps(a, {_BF16_ONES}, {_BF16_ONES})", "_mm512_add_ps",
                        "_mm512_storeu_ps", 32),
    },
}


def fma_peak_gflops(threads: int, dtype: str = "float32") -> float | None:
    """Multiply-add limit of ``threads`` cores for ``dtype``, from a register-only loop; None
    without a compiler or the instructions (bfloat16 needs AVX512-BF16).

    Both float32 vector widths are tried: some cores (Zen 4) run 512-bit FMAs as two 256-bit halves.
    """
    rates = [_fma_rate(dtype, isa, threads) for isa in _ISAS[dtype] if isa in cpu_features()]
    rates = [r for r in rates if r]
    return max(rates) if rates else None


@functools.lru_cache(maxsize=None)
def _fma_binary(dtype: str, isa: str) -> str | None:
    """The FMA loop for one ISA, built once per process: compare samples the peak every round."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    flag, vec, set1, fma, add, store, _ = _ISAS[dtype][isa]
    build_dir = tempfile.mkdtemp(prefix="autotune-fma-")
    atexit.register(shutil.rmtree, build_dir, ignore_errors=True)
    source, binary = os.path.join(build_dir, "fma.c"), os.path.join(build_dir, "fma")
    with open(source, "w") as f:
        f.write(_FMA_KERNEL)
    floats = 16 if vec == "__m512" else 8
    defines = [f"-DVEC={vec}", f"-DSET1={set1}", f"-DFMA(a, m, c)={fma}", f"-DADD={add}",
               f"-DSTORE={store}", f"-DLANES={floats}"]
    build = subprocess.run([compiler, "-O2", "-fopenmp", *flag.split(), *defines, source, "-o",
                            binary], capture_output=True)
    return binary if build.returncode == 0 else None


def _fma_rate(dtype: str, isa: str, threads: int) -> float | None:
    binary = _fma_binary(dtype, isa)
    if binary is None:
        return None
    macs = _ISAS[dtype][isa][-1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    iters = 20_000_000
    best = 0.0
    for _ in range(3):  # best of three: the machine is shared
        out = subprocess.run([binary, str(iters)], capture_output=True, text=True, env=env)
        seconds, used, _ = out.stdout.split()
        flops = 2 * macs * 10 * iters * int(used)
        best = max(best, flops / float(seconds) / 1e9)
    return best


def matmul_gflops(dtype: torch.dtype, threads: int, n: int = 2048) -> float:
    """Rate of a large square matrix multiply (oneDNN/MKL), best of a few runs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return 2 * n ** 3 / best / 1e9
    finally:
        torch.set_num_threads(previous)


def model_gflop(model: torch.nn.Module, inputs: tuple) -> float:
    """FLOPs of one forward pass (multiply-add counted as 2), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    # The counter knows the GPU attention kernels, not the CPU one.
    uncounted = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    # nn.MultiheadAttention's fused fast path hides its matmuls from the counter too
    # (vit_b_16: 22.5 GFLOP counted instead of 35.1)
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=uncounted) as counter:
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return counter.get_total_flops() / 1e9
