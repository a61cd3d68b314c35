"""optimize(): model-level rewrites, the analogue of intel_extension_for_pytorch.optimize."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .config import BackendConfig

log = logging.getLogger("backend")

# Set on every parameter of the model optimize() returns; the backend reads the knobs from it.
OPTIMIZE_MARK = "_ipex_optimize_knobs"

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", "float32": "float32",
           "bfloat16": "bfloat16"}
_FOLDABLE = {nn.Conv1d: (nn.BatchNorm1d, fuse_conv_bn_eval), nn.Conv2d: (nn.BatchNorm2d, fuse_conv_bn_eval),
             nn.Conv3d: (nn.BatchNorm3d, fuse_conv_bn_eval), nn.Linear: (nn.BatchNorm1d, fuse_linear_bn_eval)}


def _fold_batchnorms(model: nn.Module, kinds: tuple[type, ...]) -> int:
    """Fold eval BatchNorms into the conv/linear feeding only them; found by an FX trace."""
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as exc:  # models with data-dependent control flow can't be traced
        log.info("optimize(): BatchNorm folding skipped, model not FX-traceable (%s)", type(exc).__name__)
        return 0
    modules = dict(model.named_modules())
    folded = 0
    for node in traced.graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or not isinstance(node.args[0], torch.fx.Node):
            continue
        producer = node.args[0]
        if producer.op != "call_module" or len(producer.users) != 1:
            continue
        first, second = modules.get(producer.target), modules.get(node.target)
        rule = _FOLDABLE.get(type(first))
        if rule is None or not isinstance(first, kinds) or type(second) is not rule[0]:
            continue
        if not second.track_running_stats or second.running_mean is None:
            continue
        fused = rule[1](first, second)
        first.weight, first.bias = fused.weight, fused.bias
        parent_name, _, child = node.target.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, nn.Identity())
        folded += 1
    return folded


def optimize(model: nn.Module, dtype: torch.dtype | str = torch.float32, *,
             weights_prepack: bool = True, conv_bn_folding: bool = True,
             linear_bn_folding: bool = True, channels_last: bool = True,
             inplace: bool = False) -> nn.Module:
    """Prepare an inference model for ``torch.compile(model, backend="ipex")``.

    Folding and channels_last are applied to the module now. ``dtype`` and ``weights_prepack``
    are recorded on the parameters and applied when the backend compiles (the frozen paths fold
    the weight casts and prepack once). On the TorchScript path oneDNN Graph (on by default)
    packs the weights it fuses whatever ``weights_prepack`` says: Intel's extension documents
    ``weights_prepack=False`` for torch.compile to keep the module traceable, not to forgo
    packing. Run bfloat16 models under
    ``torch.autocast("cpu", dtype=torch.bfloat16)`` or let the backend apply it.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"optimize(): dtype {dtype!r} is not supported; valid: torch.float32, torch.bfloat16")
    knobs = {"dtype": _DTYPES[dtype], "weights_prepack": weights_prepack,
             "channels_last": channels_last}
    BackendConfig(knobs)  # same validation (and CPU check) as the backend
    if not inplace:
        model = copy.deepcopy(model)
    if not model.training:
        kinds = tuple(k for k, on in ((nn.Conv1d, conv_bn_folding), (nn.Conv2d, conv_bn_folding),
                                      (nn.Conv3d, conv_bn_folding), (nn.Linear, linear_bn_folding)) if on)
        if kinds:
            log.info("optimize(): folded %d BatchNorm layer(s)", _fold_batchnorms(model, kinds))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for tensor in list(model.parameters()) + list(model.buffers()):
        setattr(tensor, OPTIMIZE_MARK, knobs)
    return model
