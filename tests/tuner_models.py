"""module:callable models for tuner tests. Faults are chosen per trial by $FAULT_PLAN,
e.g. "1:segfault,2:hang,3:wrong=0.002", so a real worker process crashes, hangs, raises, bloats
or answers wrong; "jitter" makes every other call slower; "pause" stops until the test creates $FAULT_MARKER_DIR/resume-N ("wrong=E": every output is off by the relative error E, for the accuracy gate)."""

import ctypes
import os
import time

import torch

from models import SmallCNN, _init


def _planned_fault() -> str | None:
    """This worker's fault: the plan's entry for its trial number (None outside trials)."""
    plan = dict(item.split(":") for item in os.environ.get("FAULT_PLAN", "").split(",") if item)
    return plan.get(os.environ.get("AUTOTUNE_TRIAL_NUMBER", ""))


_calls: list[None] = []


@torch.compiler.disable  # run eagerly: traced, the unused allocations would be optimised away
def _fault():
    fault = _planned_fault()
    if fault == "segfault":
        ctypes.string_at(0)
    elif fault in ("hang", "pause"):
        markers, trial = os.environ.get("FAULT_MARKER_DIR"), os.environ["AUTOTUNE_TRIAL_NUMBER"]
        if markers:  # tells a test the worker is stopped now, so it need not guess with a sleep
            open(os.path.join(markers, "hanging-" + trial), "w").close()
        # "pause": until the test creates resume-N (once: the marker goes, the trial goes on)
        resume = os.path.join(markers or "", "resume-" + trial)
        deadline = time.monotonic() + (300 if fault == "pause" and markers else 3600)
        while time.monotonic() < deadline and not (fault == "pause" and os.path.exists(resume)):
            time.sleep(0.05)
        if fault == "pause":
            os.environ["FAULT_PLAN"] = ""
    elif fault == "jitter":  # every other call 3 ms longer: an IQR as wide as the median
        _calls.append(None)
        if len(_calls) % 2:
            time.sleep(0.003)
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
    model = _init(FaultyCNN())
    fault = _planned_fault() or ""
    if fault.startswith("wrong="):
        # the linear head scaled by 1 + E scales every output by it: the graph (and so the
        # workload key) stays the same, only the numbers are off by the relative error E
        scale = 1 + float(fault.partition("=")[2])
        with torch.no_grad():
            model.head.weight.mul_(scale)
            model.head.bias.mul_(scale)
    return model, (torch.randn(1, 3, 16, 16),)


def tiny_swin():
    """torchvision's Swin, tiny: oneDNN Graph fails on it (vector::_M_range_check)."""
    from torchvision.models import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                            window_size=[2, 2], num_classes=4).eval()
    return model, (torch.randn(1, 3, 32, 32),)


class _Unconvertible(torch.nn.Module):
    """A linear layer and an SVD: neither OpenVINO nor torch's ONNX exporter has a rule for it."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.linalg.svd(self.linear(x))[1]


def unconvertible():
    torch.manual_seed(0)
    return _Unconvertible().eval(), (torch.randn(1, 8, 8),)
