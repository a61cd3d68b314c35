"""module:callable models for tuner tests. Faults are chosen per trial by $FAULT_PLAN,
e.g. "1:segfault,2:hang", so a real worker process crashes, hangs, raises or bloats."""

import ctypes
import os
import time

import torch

from models import SmallCNN, _init


@torch.compiler.disable  # run eagerly: traced, the unused allocations would be optimised away
def _fault():
    plan = dict(item.split(":") for item in os.environ.get("FAULT_PLAN", "").split(",") if item)
    fault = plan.get(os.environ.get("AUTOTUNE_TRIAL_NUMBER", ""))
    if fault == "segfault":
        ctypes.string_at(0)
    elif fault == "hang":
        time.sleep(3600)
    elif fault == "raise":
        raise RuntimeError("this model refuses trial " + os.environ["AUTOTUNE_TRIAL_NUMBER"])
    elif fault == "memory":
        hog = []
        for _ in range(64):  # 16 GB, 256 MB at a time
            hog.append(torch.ones(64 * 1024 * 1024))


class FaultyCNN(SmallCNN):
    def forward(self, x):
        _fault()
        return super().forward(x)


def small_cnn():
    torch.manual_seed(0)
    return _init(SmallCNN()), (torch.randn(1, 3, 16, 16),)


def faulty_cnn():
    torch.manual_seed(0)
    return _init(FaultyCNN()), (torch.randn(1, 3, 16, 16),)


def tiny_swin():
    """torchvision's Swin, tiny: oneDNN Graph fails on it (vector::_M_range_check)."""
    from torchvision.models import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                            window_size=[2, 2], num_classes=4).eval()
    return model, (torch.randn(1, 3, 32, 32),)
