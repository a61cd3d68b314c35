"""TorchScript path: trace the captured graph with its weights as constants, freeze, run passes."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Sequence

import torch

from .config import BackendConfig
from .errors import PathUnavailable, first_line
from .graph import (ambient_autocast_dtype, compute_autocast, constant_mask, intra_op_threads,
                    non_tensor_inputs, output_on_copies, outputs_close)
from .knobs import INDUCTOR, TORCHSCRIPT
from .notices import warn_once
from .paths import CompilePath, register

# The profiling executor optimizes (and fuses) on the second call; warm up past it at compile time.
PROFILING_RUNS = 3


class TorchScriptUnavailable(PathUnavailable):
    """This graph cannot take the TorchScript path; the reason says why."""


class OneDnnGraphUnavailable(TorchScriptUnavailable):
    """oneDNN Graph failed on this graph; the TorchScript path without it may still work."""


@contextlib.contextmanager
def _quiet_jit():
    """trace/freeze are deprecated upstream; we call them on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


@contextlib.contextmanager
def _jit_autocast_off():
    # Record autocast's casts as ordinary ops in the trace, so freezing can fold them.
    previous = torch._C._jit_set_autocast_mode(False)
    try:
        yield
    finally:
        torch._C._jit_set_autocast_mode(previous)


@contextlib.contextmanager
def onednn_fusion(enabled: bool):
    # The flag is process-global and read when the executor optimizes a graph: at compile time,
    # in the warm-up runs. A call in another thread that overlaps a flip is still correct; at
    # worst a re-optimization it triggers runs without oneDNN Graph.
    previous = torch._C._jit_llga_enabled()
    if previous == enabled:
        yield
        return
    torch._C._jit_set_llga_enabled(enabled)
    try:
        yield
    finally:
        torch._C._jit_set_llga_enabled(previous)


class _GraphWithConstants(torch.nn.Module):
    """Calls the dynamo graph with its lifted parameters held as attributes, so freeze sees them."""

    def __init__(self, gm: torch.fx.GraphModule, mask: list[bool], example_inputs: Sequence[Any],
                 channels_last: bool):
        super().__init__()
        self.gm = gm
        self.mask = mask
        self.channels_last = channels_last
        self.constant_names = []
        for i, (is_constant, value) in enumerate(zip(mask, example_inputs)):
            if is_constant:
                tensor = value.detach()
                if channels_last and tensor.dim() == 4 and tensor.is_floating_point():
                    tensor = tensor.contiguous(memory_format=torch.channels_last)
                name = f"const_{i}"
                self.register_buffer(name, tensor)
                self.constant_names.append(name)

    def forward(self, *user_inputs):
        constants = iter(self.constant_names)
        users = iter(user_inputs)
        args = []
        for is_constant in self.mask:
            if is_constant:
                args.append(getattr(self, next(constants)))
            else:
                x = next(users)
                if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                args.append(x)
        outputs = self.gm(*args)
        if self.channels_last:  # hand back the layout eager would
            outputs = tuple(o.contiguous() if isinstance(o, torch.Tensor) and o.dim() == 4 else o
                            for o in outputs)
        return outputs


def _run_passes(frozen: torch.jit.ScriptModule, config: BackendConfig) -> None:
    graph = frozen.graph
    if config.conv_bn_folding:
        torch._C._jit_pass_fold_frozen_conv_bn(graph)
        torch._C._jit_pass_fold_frozen_conv_add_or_sub(graph)
        torch._C._jit_pass_fold_frozen_conv_mul_or_div(graph)
    if config.linear_bn_folding:
        torch._C._jit_pass_fold_frozen_linear_bn(graph)
    if config.onednn_fusion:
        # oneDNN Graph compiles partitions over the plain aten ops and packs their constant
        # weights itself; on MKLDNN-converted graphs it crashes (resnet50: bad_alloc, vector
        # range check). its knob declares (supersedes) the knobs this makes irrelevant.
        return
    if config.optimize_for_inference:
        torch._C._jit_pass_optimize_for_inference(frozen._c, [])
    elif config.weights_prepack and torch.backends.mkldnn.is_available():
        torch._C._jit_pass_convert_frozen_ops_to_mkldnn(graph)


def trace_and_freeze(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                     config: BackendConfig) -> torch.jit.ScriptModule:
    """Trace + freeze + passes. Raises TorchScriptUnavailable with the reason when it can't."""
    mask = constant_mask(gm, example_inputs)
    user_inputs = [x for x, c in zip(example_inputs, mask) if not c]
    bad = non_tensor_inputs(example_inputs, mask)
    if bad:
        raise TorchScriptUnavailable(f"graph takes non-tensor inputs ({', '.join(bad)}), "
                                     "which a trace would bake in as constants")
    wrapper = _GraphWithConstants(gm, mask, example_inputs, config.channels_last).eval()
    try:
        with _quiet_jit(), torch.no_grad(), _jit_autocast_off(), compute_autocast(config.dtype):
            traced = torch.jit.trace(wrapper, tuple(user_inputs), check_trace=False, strict=False)
            frozen = torch.jit.freeze(traced, optimize_numerics=False)
            _run_passes(frozen, config)
    except Exception as exc:  # the tracer raises many types; all mean "not traceable"
        raise TorchScriptUnavailable(f"torch.jit.trace/freeze failed: {first_line(exc)}") from exc
    return frozen, mask


def compile_torchscript(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                        config: BackendConfig) -> tuple[Callable, BackendConfig]:
    """The TorchScript path; where oneDNN Graph fails on a graph, the path without it."""
    try:
        return _compile(gm, example_inputs, config), config
    except OneDnnGraphUnavailable as exc:
        plain = config.replace(onednn_fusion=False)
        compiled = _compile(gm, example_inputs, plain)
        # said only once the retry worked; keyed by kind, not by the message's numbers
        kind = type(exc.__cause__).__name__ if exc.__cause__ else "disagreement"
        warn_once(f"llga-fail:{kind}", f"ipex backend: {exc}; compiled this graph on "
                  "the TorchScript path without oneDNN Graph")
        return compiled, plain


def _compile(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
             config: BackendConfig) -> Callable:
    with torch.no_grad(), compute_autocast(config.dtype):
        expected, wrote = output_on_copies(gm, example_inputs, constant_mask(gm, example_inputs))
    if wrote:  # the trace and the check below would each write into the caller's tensors again
        raise TorchScriptUnavailable("graph modifies its inputs in place, which tracing it would "
                                     "repeat on the caller's tensors")
    frozen, mask = trace_and_freeze(gm, example_inputs, config)
    user_positions = [i for i, c in enumerate(mask) if not c]
    user_inputs = [example_inputs[i] for i in user_positions]
    try:
        with _quiet_jit(), torch.no_grad(), onednn_fusion(config.onednn_fusion), \
                intra_op_threads(config.threads):
            for _ in range(PROFILING_RUNS):  # the executor (and oneDNN Graph) compiles here
                actual = frozen(*user_inputs)
    except Exception as exc:  # e.g. oneDNN Graph on swin_t: vector::_M_range_check
        if config.onednn_fusion:
            raise OneDnnGraphUnavailable(f"oneDNN Graph failed: {first_line(exc)}") from exc
        raise TorchScriptUnavailable(f"the TorchScript executor failed: {first_line(exc)}") from exc
    low_precision = config.dtype == "bfloat16" or ambient_autocast_dtype() is not None
    problem = outputs_close(expected, actual, rtol=5e-2 if low_precision else 1e-3,
                            atol=5e-2 if low_precision else 1e-4)
    if problem:
        if config.onednn_fusion:
            raise OneDnnGraphUnavailable(f"under oneDNN Graph the traced graph disagrees with the "
                                         f"captured graph ({problem})")
        raise TorchScriptUnavailable(f"traced graph disagrees with the captured graph ({problem})")

    threads = config.threads

    fusion = config.onednn_fusion

    def run(*args):
        # the executor may re-optimize (new shapes): keep the fusion setting it was compiled with
        with torch.no_grad(), intra_op_threads(threads), onednn_fusion(fusion):
            return frozen(*[args[i] for i in user_positions])

    run.frozen_module = frozen
    return run


register(CompilePath(TORCHSCRIPT, "TorchScript", compile_torchscript, fallback=INDUCTOR,
                     inference_only=True))
