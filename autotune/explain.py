"""What plain ``torch.compile(model, backend="ipex")`` would apply, and why; the launch environment.

Both answers come from the backend's own resolution (``backend.compiler.resolve_config`` on the
graphs dynamo captures), so they cannot drift from what a serving process does.
"""

from __future__ import annotations

import glob
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from backend import compiler, lookup
from backend.config import BackendConfig
from backend.errors import StoreError
from backend.fingerprint import hardware_info, hardware_key
from backend.store import ConfigStore, TunedRecord, accuracy_text, default_storage_url, masked_url

from .evidence import stored_evidence
from .errors import AutotuneError
from .models import ModelSpec, build

ALLOCATORS = {"jemalloc": "libjemalloc.so*", "tcmalloc": "libtcmalloc.so*"}


@dataclass
class GraphPlan:
    """One captured graph: its keys, the config the backend would apply, and where it comes from."""

    keys: dict[str, Any]
    config: BackendConfig
    source: str
    record: TunedRecord | None  # the stored record behind a store source


def plan(spec: ModelSpec, storage: str | None = None) -> list[GraphPlan]:
    """Per graph of the model, what the backend would apply, without compiling anything."""
    model, inputs = build(spec, check=True)  # wrong input shapes: a clear error, not a trace
    plans: list[GraphPlan] = []
    url = storage or default_storage_url()

    def resolve_only(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]):
        keys = compiler.graph_keys(gm, example_inputs)
        weights = compiler.weights_of(gm, example_inputs)
        # models from autotune.models never went through optimize(): no optimize() knobs
        config, source, _, _ = compiler.resolve_config({"store": url}, None, keys, weights)
        found = lookup.find(keys, url, weights)  # cached: the same answer resolve_config got
        plans.append(GraphPlan(keys, config, source, found.record if found else None))
        return gm.forward

    lookup.clear_cache()  # answer from the store as it is now, not as this process saw it
    torch._dynamo.reset()  # graphs compiled earlier in this process would skip the backend
    try:
        with torch.no_grad():
            torch.compile(model, backend=resolve_only)(*inputs)
    finally:
        torch._dynamo.reset()
    return plans


def _host_line() -> str:
    info = hardware_info()
    return (f"this host: {hardware_key(info)} ({info['cpu']}, {info['cores']} usable cores, "
            f"{info['sockets']} socket(s), features {' '.join(info['features']) or 'none'}), "
            f"torch {torch.__version__}")


def _why_stored(record: TunedRecord, url: str) -> str:
    torch_note = "" if record.torch_version == torch.__version__ else \
        f" (this process runs torch {torch.__version__}; retune to be sure it still wins)"
    with ConfigStore(url, read_only=True) as store:
        precision = store.precision(record.id, with_model=False)
    accuracy = f"; {accuracy_text(precision.accuracy)}" if precision and precision.accuracy else ""
    return (f"record {record.id} of study {record.study_name}, tuned on {record.hardware_key} "
            f"(this host) for batch size {record.batch_size}: median "
            f"{record.latency['median_ms']:.3f} ms, {record.speedup:.2f}x over the backend "
            f"default when tuned ({stored_evidence(record.latency)}), torch "
            f"{record.torch_version}{torch_note}{accuracy}")


def _why_not_stored(spec: ModelSpec, url: str, keys: dict[str, Any]) -> str:
    """Why no stored config applies: nothing tuned, other hardware, other graphs, bad record."""
    try:
        with ConfigStore(url, read_only=True) as store:
            records = store.list(model_label=spec.name)
    except StoreError as exc:
        return f"the store cannot be read ({exc})"
    if not records:
        return (f"nothing tuned for model {spec.name!r} in {masked_url(url)}; "
                f"`autotune run --model {spec.name}` tunes it")
    here = hardware_info()
    mine = [r for r in records if r.hardware_key == hardware_key(here)]
    other_cores = sorted({r.hardware["cores"] for r in records
                          if r.hardware and {**r.hardware, "cores": here["cores"]} == here})
    if not mine and other_cores:
        cores = other_cores[0]
        return (f"model {spec.name!r} was tuned on this CPU for {', '.join(map(str, other_cores))} "
                f"core(s), and this process may use {here['cores']}: launch it on that many cores, "
                f"e.g. taskset -c 0-{cores - 1}")
    if not mine:
        elsewhere = sorted({f"{r.hardware_key} ({r.hardware.get('cpu', '?')}, "
                            f"{r.hardware.get('cores', '?')} cores)" for r in records})
        return (f"model {spec.name!r} was tuned only on other hardware: {', '.join(elsewhere)}; "
                "a config is never applied to hardware it was not tuned on")
    if any(r.workload_key == keys["workload_key"] for r in mine):
        return "a record for this graph exists but cannot be used here (see the warning above)"
    batches = sorted({str(r.batch_size) for r in mine})
    versions = sorted({r.torch_version for r in mine})
    return (f"model {spec.name!r} was tuned on this host, but for other graphs (batch size(s) "
            f"{', '.join(batches)}, torch {', '.join(versions)}): another input shape or dtype, "
            "or a torch version that captures the model differently, gives another workload key")


def explain_lines(spec: ModelSpec, storage: str | None = None) -> list[str]:
    url = storage or default_storage_url()
    plans = plan(spec, storage)
    lines = [f"model {spec.name}; store {masked_url(url)}", _host_line()]
    for number, p in enumerate(plans, 1):
        why = _why_stored(p.record, url) if p.record else _why_not_stored(spec, url, p.keys)
        lines += [f"graph {number}/{len(plans)}: {p.keys['workload_key']} "
                  f"(family {p.keys['family_key']}, batch size {p.keys['batch_size']})",
                  f"  applies {p.config.config_id} {p.config.non_default()}",
                  f"  from    {p.source}",
                  f"  why     {why}"]
    if not plans:
        lines.append("dynamo captured no graph: torch.compile would run the model eagerly")
    return lines


def find_allocators(folders: Sequence[str] | None = None) -> dict[str, str | None]:
    """Path of each allocator library in the usual install folders, or None when not installed."""
    if folders is None:
        multiarch = f"/usr/lib/{platform.machine()}-linux-gnu"
        folders = [os.path.join(sys.prefix, "lib"), os.environ.get("CONDA_PREFIX", "") + "/lib",
                   "/usr/local/lib", multiarch, "/usr/lib64", "/usr/lib"]
    found: dict[str, str | None] = {}
    for name, pattern in ALLOCATORS.items():
        matches = (sorted(glob.glob(os.path.join(folder, pattern))) for folder in folders if folder)
        found[name] = next((m[0] for m in matches if m), None)
    return found


def env_lines(spec: ModelSpec, storage: str | None = None) -> list[str]:
    """``export`` lines for the process-level knobs of the stored config, plus suggestions."""
    url = storage or default_storage_url()
    plans = plan(spec, storage)
    stored = [p for p in plans if p.record is not None]
    if not stored:  # why, as explain says it: an unreadable store is not an untuned model
        why = _why_not_stored(spec, url, plans[0].keys) if plans else "dynamo captured no graph"
        raise AutotuneError(f"no tuned config for model {spec.name!r} on this hardware "
                            f"({hardware_key()}): {why}; `autotune explain --model {spec.name}` "
                            "says more")
    chosen = stored[0]
    config = chosen.config
    lines = [f"# launch environment for {spec.name} on {hardware_key()}",
             f"# config {config.config_id} from {chosen.source}"]
    others = sorted({p.config.config_id for p in stored} - {config.config_id})
    if others:
        lines.append(f"# other graphs of this model use {', '.join(others)}; the variables "
                     "below follow the first graph's config")
    if config.threads:
        lines.append(f"export OMP_NUM_THREADS={config.threads}")
    else:
        lines.append(f"# intra-op threads were not tuned: torch's default "
                     f"({torch.get_num_threads()} here)")
    if config.interop_threads:
        lines += [f"# inter-op threads: {config.interop_threads}. torch reads no variable for "
                  "them: the backend calls "
                  f"torch.set_num_interop_threads({config.interop_threads}) when it compiles,",
                  "# which fails once the process has run parallel work; then call it first "
                  "thing in the server"]
    threads = config.threads or torch.get_num_threads()
    lines += ["# thread affinity (not measured by the tuner; measure it under your load).",
              "# One server process per machine: bind OpenMP threads to cores",
              "# export OMP_PROC_BIND=close",
              "# export OMP_PLACES=cores",
              f"# several processes: give each its own {threads} core(s) instead, e.g. taskset "
              f"-c 0-{threads - 1} (numactl -C 0-{threads - 1} -m 0 on multi-socket hosts)",
              "# a server that shares its cores with other busy processes: libgomp's spinning "
              "threads fight them; on the 2-core host",
              "# benchmarks/omp_wait.py (one 3-round run) measured resnet18 at 0.73x the "
              "latency beside one busy core with PASSIVE, but 1.17x on a quiet machine:",
              "# export OMP_WAIT_POLICY=PASSIVE",
              "# allocator (not measured by the tuner; often faster for CPU inference):"]
    for name, path in find_allocators().items():
        lines.append(f"# export LD_PRELOAD={path}  # {name}" if path else
                     f"# {name}: not installed")
    return lines
