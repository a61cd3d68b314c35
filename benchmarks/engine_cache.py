"""Cold and cached compiles of the engine paths: the same graph compiled in two fresh processes.

    python benchmarks/engine_cache.py [--model resnet50] [--repeats 2]

Per engine, with an empty cache folder: a fresh process compiles the model (conversion from
scratch), then another fresh process compiles the same model with the same weights (the cache).
Prints the time of the first call of `torch.compile(model, backend="ipex")`, which includes
dynamo's capture in both, the median of `--repeats` pairs, and their ratio. Inductor is a row
too, with and without weight prepacking, its cache folder as empty at first: with prepacking
torch bypasses its FX graph cache (the packed weights cannot be pickled), so the second process
gets only the C++ kernels from the cache; the last column counts the graph-cache hits.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import json, sys, time, torch
from torch._dynamo.utils import counters
from autotune.models import ModelSpec, build
model, inputs = build(ModelSpec(sys.argv[1]))
start = time.perf_counter()
with torch.no_grad():
    torch.compile(model, backend="ipex", options=json.loads(sys.argv[2]))(*inputs)
import backend
print(json.dumps({"seconds": time.perf_counter() - start,
                  "path": backend.last_compile()["config"].path,
                  "graph_cache_hits": counters["inductor"]["fxgraph_cache_hit"]}))
"""
ROWS = [("openvino", {"path": "openvino"}), ("onnxruntime", {"path": "onnxruntime"}),
        ("inductor", {"path": "inductor"}),
        ("inductor, weights_prepack=False", {"path": "inductor", "weights_prepack": False})]


def compile_in_fresh_process(model: str, options: dict, cache: str) -> dict:
    env = {**os.environ, "IPEX_AUTOTUNE_CACHE": cache, "TORCHINDUCTOR_CACHE_DIR": cache}
    child = subprocess.run([sys.executable, "-c", CHILD, model, json.dumps({**options, "threads": 2})],
                           env=env, capture_output=True, text=True, check=True)
    report = json.loads(child.stdout.splitlines()[-1])
    if report["path"] != options["path"]:
        raise SystemExit(f"{options['path']} fell back to {report['path']}: {child.stderr[-500:]}")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"`python benchmarks/engine_cache.py {' '.join(argv or sys.argv[1:])}`: first call of "
          f"torch.compile(backend=\"ipex\") on {args.model}, median of {args.repeats} pairs\n")
    print("| path | cold (s) | from the cache (s) | cold / cached | graph-cache hits, second process |\n"
          "|---|---|---|---|---|")
    for label, options in ROWS:
        cold, warm, hits = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(compile_in_fresh_process(args.model, options, cache)["seconds"])
                second = compile_in_fresh_process(args.model, options, cache)
                warm.append(second["seconds"])
                hits.append(second["graph_cache_hits"])
        c, w = statistics.median(cold), statistics.median(warm)
        shown_hits = "-" if options["path"] != "inductor" else "/".join(map(str, hits))
        print(f"| {label} | {c:.1f} | {w:.1f} | {c / w:.1f}x | {shown_hits} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
