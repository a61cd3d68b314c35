"""Keys that decide whether a stored config applies: what the hardware is, what the workload is."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from typing import Any, Sequence

import torch

# ISA features that change the code Inductor and oneDNN generate.
CODEGEN_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


# Parsed once: every compile's store lookup asks for the hardware key, and /proc/cpuinfo runs to
# hundreds of kilobytes on large hosts.
@functools.lru_cache(maxsize=None)
def _cpuinfo() -> tuple[str, frozenset[str], int]:
    model, flags, sockets = platform.processor() or "unknown", set(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "physical id":
                    sockets.add(value.strip())
    except OSError:
        pass
    return model, frozenset(flags), max(1, len(sockets))


@functools.lru_cache(maxsize=None)
def cpu_features() -> frozenset[str]:
    """Codegen-relevant ISA flags of this CPU, plus ``mkldnn_bf16`` when oneDNN runs bfloat16."""
    _, flags, _ = _cpuinfo()
    features = {f for f in CODEGEN_FEATURES if f in flags}
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        features.add("mkldnn_bf16")
    return frozenset(features)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def hardware_info(cores: int | None = None) -> dict[str, Any]:
    """``cores``: the core count a config is tuned for (a worker's slice), else what we may use."""
    model, _, sockets = _cpuinfo()
    return {"cpu": model, "features": sorted(cpu_features()), "cores": cores or usable_cores(),
            "sockets": sockets, "machine": platform.machine()}


def hardware_key(info: dict[str, Any] | None = None) -> str:
    """Stable short hash of the hardware facts that decide which config is fastest."""
    info = info or hardware_info()
    blob = json.dumps(info, sort_keys=True).encode()
    return "hw-" + hashlib.sha256(blob).hexdigest()[:16]


def _describe_target(target: Any) -> str:
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    return f"{module}.{name}"


def _describe_value(value: Any, batch: int | None = None) -> Any:
    if isinstance(value, torch.Tensor):
        shape = [str(d) for d in value.shape]
        if batch is not None and shape and shape[0] == str(batch):
            shape[0] = "B"
        return ["T", shape, str(value.dtype)]
    if isinstance(value, (list, tuple)):
        return [_describe_value(v, batch) for v in value]
    if isinstance(value, torch.fx.Node):
        return "%"
    if isinstance(value, (int, float, bool, str)) or value is None:
        return value
    return type(value).__name__


def workload_key(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                 constant: Sequence[bool] | None = None, *, batch_free: bool = False) -> str:
    """Hash of the graph's structure and input signature.

    Node names, weight values and addresses are left out, so the same model in another process
    or with other weights gets the same key; other shapes, dtypes or ops get another. With
    ``batch_free`` the leading dimension of activations is written as "B" when it equals the
    batch size of the first data input: the family key, shared by all batch sizes of a graph.
    """
    constant = list(constant) if constant is not None else [False] * len(example_inputs)
    batch = None
    if batch_free:
        data = [x for x, c in zip(example_inputs, constant) if not c and isinstance(x, torch.Tensor)]
        batch = data[0].shape[0] if data and data[0].dim() else None
    placeholders = iter(constant)
    index = {}
    rows = []
    for i, node in enumerate(gm.graph.nodes):
        index[node] = i
        args = torch.fx.node.map_arg(node.args, lambda n: f"%{index[n]}")
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: f"%{index[n]}")
        target = "" if node.op in ("placeholder", "output") else _describe_target(node.target)
        value = node.meta.get("example_value", node.meta.get("val"))
        is_constant = node.op == "get_attr" or (node.op == "placeholder" and next(placeholders, False))
        rows.append([node.op, target, _describe_value(args), _describe_value(kwargs),
                     _describe_value(value, None if is_constant else batch)])
    signature = [_describe_value(x, None if c else batch) for x, c in zip(example_inputs, constant)]
    blob = json.dumps([rows, signature], sort_keys=True, default=str).encode()
    return ("fam-" if batch_free else "wl-") + hashlib.sha256(blob).hexdigest()[:16]
