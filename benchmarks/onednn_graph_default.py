"""The TorchScript path with and without oneDNN Graph on many torchvision models, in one process.

    python benchmarks/onednn_graph_default.py [--models resnet18,swin_t,...] [--rounds 7]

The evidence behind `onednn_fusion` being on by default: per model, both configs are compiled
through `torch.compile(backend="ipex")`, checked against eager, and timed in alternating rounds
(median of per-round means). A model oneDNN Graph fails on shows the config the backend fell
back to. A screen, not a tuning: one process, random weights (zero-initialised heads
re-drawn so the outputs are not all zero), batch 1 unless named.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
import torchvision

import backend

tv = torchvision.models
MODELS = {
    "resnet18": (tv.resnet18, (1, 3, 224, 224)),
    "resnet50_bs8": (tv.resnet50, (8, 3, 224, 224)),
    "mobilenet_v2": (tv.mobilenet_v2, (1, 3, 224, 224)),
    "efficientnet_b0": (tv.efficientnet_b0, (1, 3, 224, 224)),
    "densenet121": (tv.densenet121, (1, 3, 224, 224)),
    "squeezenet1_0": (tv.squeezenet1_0, (1, 3, 224, 224)),
    "convnext_tiny": (tv.convnext_tiny, (1, 3, 224, 224)),
    "regnet_y_400mf": (tv.regnet_y_400mf, (1, 3, 224, 224)),
    "shufflenet_v2_x1_0": (tv.shufflenet_v2_x1_0, (1, 3, 224, 224)),
    "googlenet": (lambda: tv.googlenet(init_weights=True, aux_logits=False), (1, 3, 224, 224)),
    "inception_v3": (lambda: tv.inception_v3(init_weights=True, aux_logits=False), (1, 3, 299, 299)),
    "mnasnet1_0": (tv.mnasnet1_0, (1, 3, 224, 224)),
    "vgg11": (tv.vgg11, (1, 3, 224, 224)),
    "vit_b_16": (tv.vit_b_16, (1, 3, 224, 224)),
    "swin_t": (tv.swin_t, (1, 3, 224, 224)),
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def screen(name: str, rounds: int) -> str:
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(*shape)
    for layer in model.modules():  # torchvision zero-initialises some heads: outputs all zero
        if isinstance(layer, torch.nn.Linear) and not layer.weight.any():
            torch.nn.init.normal_(layer.weight, std=0.01)
    with torch.no_grad():
        expected = model(x)
    compiled, used, errors = {}, {}, {}
    for fusion in (False, True):
        torch._dynamo.reset()
        fn = torch.compile(model, backend="ipex", options={
            "path": "torchscript", "onednn_fusion": fusion, "autotune": False})
        with torch.no_grad():
            for _ in range(3):  # past the profiling runs
                out = fn(x)
        compiled[fusion], errors[fusion] = fn, relative_error(out, expected)
        used[fusion] = backend.last_compile()["config"]
    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.no_grad():
        for round_ in range(rounds):
            for fusion in (False, True) if round_ % 2 else (True, False):
                start, runs = time.perf_counter(), 0
                while runs < 3 or time.perf_counter() - start < 0.3:
                    compiled[fusion](x)
                    runs += 1
                times[fusion].append((time.perf_counter() - start) / runs * 1e3)
    plain, fused = statistics.median(times[False]), statistics.median(times[True])
    ran = used[True]
    note = ("" if ran.path == "torchscript" and ran.onednn_fusion else
            f" (with oneDNN Graph asked for, ran {ran.path}"
            f"{' without it' if ran.path == 'torchscript' else ''})")
    return (f"| {name} | {plain:.2f} | {fused:.2f} | {plain / fused:.2f}x | "
            f"{errors[False]:.1e} / {errors[True]:.1e}{note} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, torch {torch.__version__}, {args.rounds} alternating rounds\n")
    print("| model | without oneDNN Graph (ms) | with (ms) | speedup | max rel. error vs eager |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        print(screen(name, args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
