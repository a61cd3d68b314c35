"""What the tuned-config lookup costs at compile time and per call.

    python benchmarks/lookup_cost.py [--model resnet18] [--input-shape 3,64,64] [--repeats 7]

Compile time: the first call of torch.compile(model, backend="ipex") reading a store that holds
this graph's config (hit) or only another graph's (miss), against options={"autotune": False};
interleaved, with dynamo reset and the lookup cache cleared before every compile, so each one
pays what the first compile of a fresh process pays. The stored config is the default config, so
all three compile the same way and differ only by the lookup. The lookup alone is timed too.
Per call: the lookup-applied config against the same config passed as options, interleaved.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import tempfile
import time

import torch

from autotune.bench import Stats, interleaved
from autotune.models import ModelSpec, build
from backend import compiler, lookup
from backend.config import BackendConfig
from backend.fingerprint import hardware_key
from backend.store import STORAGE_ENV, ConfigStore, TunedRecord


def _record(keys: dict, config: BackendConfig) -> TunedRecord:
    stats = {"median_ms": 1.0, "p10_ms": 1.0, "p90_ms": 1.0, "iqr_ms": 0.0, "runs": 1}
    return TunedRecord(workload_key=keys["workload_key"], hardware_key=hardware_key(),
                       family_key=keys["family_key"], batch_size=keys["batch_size"],
                       model_label="benchmark", config=config.to_dict(), config_id=config.config_id,
                       latency=stats, baselines={}, speedup=1.0, torch_version=torch.__version__,
                       study_name="lookup_cost", hardware={})


def _first_call_s(model, inputs, options) -> float:
    torch._dynamo.reset()
    lookup.clear_cache()
    start = time.perf_counter()
    with torch.no_grad():
        torch.compile(model, backend="ipex", options=options)(*inputs)
    return time.perf_counter() - start


def _lookup_ms(keys: dict, url: str, repeats: int, cold: bool) -> float:
    times = []
    for _ in range(repeats):
        if cold:
            lookup.clear_cache()
        start = time.perf_counter()
        lookup.find(keys, url)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-shape", default="3,64,64", help="per sample, without the batch")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7, help="compiles per variant")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs-per-round", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    spec = ModelSpec(args.model, batch_size=args.batch_size,
                     input_shapes=tuple(int(d) for d in args.input_shape.split(",")))
    model, inputs = build(spec)
    folder = tempfile.mkdtemp(prefix="lookup-cost-")
    stores = {"hit": f"sqlite:///{folder}/hit.db", "miss": f"sqlite:///{folder}/miss.db"}
    os.environ[STORAGE_ENV] = stores["miss"]
    with compiler.recording() as graphs:
        _first_call_s(model, inputs, {"autotune": False})  # warm-up; records this model's graphs
    config = BackendConfig({})  # what options={"autotune": False} compiles with
    with ConfigStore(stores["hit"]) as hit, ConfigStore(stores["miss"]) as miss:
        for keys in graphs:
            hit.put(_record(keys, config))
            miss.put(dataclasses.replace(_record(keys, config), workload_key="wl-other",
                                         family_key="fam-other"))

    variants = {"lookup hit": (stores["hit"], None), "lookup miss": (stores["miss"], None),
                "autotune off": (stores["hit"], {"autotune": False})}
    compile_s: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(args.repeats):
        for name in order[repeat % len(order):] + order[:repeat % len(order)]:
            url, options = variants[name]
            os.environ[STORAGE_ENV] = url
            compile_s[name].append(_first_call_s(model, inputs, options))
            if options is None:
                expected = "store (exact" if name == "lookup hit" else "default"
                assert compiler.last_compile()["source"].startswith(expected), name

    keys = graphs[0]
    lookup_ms = {}
    for name in ("hit", "miss"):
        lookup_ms[f"{name}, first in process"] = _lookup_ms(keys, stores[name], 50, cold=True)
        lookup_ms[f"{name}, cached"] = _lookup_ms(keys, stores[name], 1000, cold=False)
    lookup_ms["no store file"] = _lookup_ms(keys, f"sqlite:///{folder}/missing.db", 50, cold=True)

    os.environ[STORAGE_ENV] = stores["hit"]
    torch._dynamo.reset()
    lookup.clear_cache()
    applied = torch.compile(model, backend="ipex")
    explicit = torch.compile(model, backend="ipex", options=config.to_dict())
    with torch.no_grad():
        applied(*inputs)
        assert compiler.last_compile()["source"].startswith("store (exact")
        explicit(*inputs)
        assert compiler.last_compile()["source"] == "options"
        stats = interleaved({"lookup-applied": lambda: applied(*inputs),
                             "explicit options": lambda: explicit(*inputs)},
                            rounds=args.rounds, runs_per_round=args.runs_per_round)

    print(f"{args.model} {tuple(inputs[0].shape)}, {len(graphs)} graph(s), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    compile_stats = {name: Stats.of([t * 1e3 for t in times]) for name, times in compile_s.items()}
    off = compile_stats["autotune off"].median_ms
    print(f"\nfirst call (compile) time, median of {args.repeats}, interleaved:")
    for name, s in compile_stats.items():
        print(f"  {name:14s} {s.median_ms:8.1f} ms  IQR {100 * s.spread:5.1f}%  "
              f"({s.median_ms - off:+7.1f} ms, {s.median_ms / off:.3f}x of autotune off)")
    print("\nlookup.find alone, median:")
    for name, ms in lookup_ms.items():
        print(f"  {name:24s} {ms:8.3f} ms")
    print(f"\nper call, {args.rounds} interleaved rounds x {args.runs_per_round} runs:")
    for name, s in stats.items():
        print(f"  {name:17s} median {s.median_ms:7.3f} ms  IQR {100 * s.spread:5.1f}%")
    ratio = stats["lookup-applied"].median_ms / stats["explicit options"].median_ms
    print(f"  lookup-applied / explicit options: {ratio:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
