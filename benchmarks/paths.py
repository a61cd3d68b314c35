"""resnet50 latency through each compile path, interleaved in one run.

    python benchmarks/paths.py [--batch-size 1] [--threads 2] [--rounds 5]

Prints median latency, spread and the ratio to eager float32 for: eager, stock torch.compile,
the TorchScript path default, the Inductor path default (freezing on), and the Inductor path
with freezing off.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torchvision

from autotune.bench import interleaved




def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs-per-round", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    model = getattr(torchvision.models, args.model)(weights=None).eval()
    x = torch.randn(args.batch_size, 3, 224, 224)
    candidates = {
        "eager": model,
        "torch.compile default": torch.compile(model),
        "torchscript path default": torch.compile(model, backend="ipex", options={"path": "torchscript"}),
        "inductor path default": torch.compile(model, backend="ipex", options={"path": "inductor"}),
        "inductor, freezing off": torch.compile(model, backend="ipex",
                                                options={"path": "inductor", "freezing": False}),
    }
    calls = {}
    with torch.no_grad():
        reference = model(x)
        for name, fn in candidates.items():
            torch._dynamo.reset()
            t0 = time.perf_counter()
            out = fn(x)
            compile_s = time.perf_counter() - t0
            err = (out - reference).abs().max().item()
            print(f"{name:28s} first call {compile_s:6.1f} s   max abs error vs eager {err:.2e}")
            calls[name] = (lambda f=fn: f(x))
        stats = interleaved(calls, rounds=args.rounds, runs_per_round=args.runs_per_round)
    eager = stats["eager"].median_ms
    print(f"\n{args.model} batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}, "
          f"{args.rounds} interleaved rounds x {args.runs_per_round} runs")
    print(f"{'config':28s} {'median ms':>10s} {'IQR %':>7s} {'vs eager':>9s}")
    for name, s in stats.items():
        print(f"{name:28s} {s.median_ms:10.2f} {100 * s.spread:6.1f}% {eager / s.median_ms:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
