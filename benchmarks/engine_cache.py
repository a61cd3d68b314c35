"""Cold and cached compiles of the engine paths: the same graph compiled in two fresh processes.

    python benchmarks/engine_cache.py [--model resnet50] [--repeats 2]

Per engine, with an empty cache folder: a fresh process compiles the model (conversion from
scratch), then another fresh process compiles the same model with the same weights (the cache).
Prints the time of the first call of `torch.compile(model, backend="ipex")`, which includes
dynamo's capture in both, the median of `--repeats` pairs, and their ratio.
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
from autotune.models import ModelSpec, build
model, inputs = build(ModelSpec(sys.argv[1]))
start = time.perf_counter()
with torch.no_grad():
    torch.compile(model, backend="ipex", options={"path": sys.argv[2], "threads": 2})(*inputs)
import backend
print(json.dumps({"seconds": time.perf_counter() - start,
                  "path": backend.last_compile()["config"].path}))
"""


def compile_in_fresh_process(model: str, engine: str, cache: str) -> float:
    env = {**os.environ, "IPEX_AUTOTUNE_CACHE": cache}
    child = subprocess.run([sys.executable, "-c", CHILD, model, engine], env=env,
                           capture_output=True, text=True, check=True)
    report = json.loads(child.stdout.splitlines()[-1])
    if report["path"] != engine:
        raise SystemExit(f"{engine} fell back to {report['path']}: {child.stderr[-500:]}")
    return report["seconds"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"`python benchmarks/engine_cache.py {' '.join(argv or sys.argv[1:])}`: first call of "
          f"torch.compile(backend=\"ipex\") on {args.model}, median of {args.repeats} pairs\n")
    print("| engine | cold (s) | from the cache (s) | cold / cached |\n|---|---|---|---|")
    for engine in ("openvino", "onnxruntime"):
        cold, warm = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(compile_in_fresh_process(args.model, engine, cache))
                warm.append(compile_in_fresh_process(args.model, engine, cache))
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"| {engine} | {c:.1f} | {w:.1f} | {c / w:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
