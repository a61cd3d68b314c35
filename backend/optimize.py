"""optimize(): the analogue of intel_extension_for_pytorch.optimize."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import BackendConfig

# Set on every parameter of the model optimize() returns; the backend reads the knobs from it.
OPTIMIZE_MARK = "_ipex_optimize_knobs"

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", "float32": "float32",
           "bfloat16": "bfloat16"}


def optimize(model: nn.Module, dtype: torch.dtype | str = torch.float32, *,
             weights_prepack: bool = True, conv_bn_folding: bool = True,
             linear_bn_folding: bool = True, channels_last: bool = True,
             inplace: bool = False) -> nn.Module:
    """Prepare an inference model for ``torch.compile(model, backend="ipex")``.

    channels_last is applied to the module now. The other settings are recorded on the
    parameters and applied when the backend compiles: the frozen paths fold the weight casts,
    fold BatchNorms (TorchScript by these knobs; Inductor's freezing when on; the engines
    always) and prepack once. The module keeps its layers, so its graph is the one `autotune run`
    tuned, and the store's config for it applies. On the TorchScript path oneDNN Graph (on by
    default) packs the weights it fuses whatever ``weights_prepack`` says: Intel's extension
    documents ``weights_prepack=False`` for torch.compile to keep the module traceable, not to
    forgo packing. Run bfloat16 models under ``torch.autocast("cpu", dtype=torch.bfloat16)`` or
    let the backend apply it.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"optimize(): dtype {dtype!r} is not supported; valid: torch.float32, torch.bfloat16")
    knobs = {"dtype": _DTYPES[dtype], "weights_prepack": weights_prepack,
             "channels_last": channels_last, "conv_bn_folding": conv_bn_folding,
             "linear_bn_folding": linear_bn_folding}
    BackendConfig(knobs)  # same validation (and CPU check) as the backend
    if not inplace:
        model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for tensor in list(model.parameters()) + list(model.buffers()):
        setattr(tensor, OPTIMIZE_MARK, knobs)
    return model
