"""Models given as "module:callable" in tests: each build function shows one contract."""

import torch
from torch import nn


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def module_only():
    return _tiny()


def with_inputs():
    return _tiny(), torch.randn(1, 3, 8, 8)


def with_input_fn():
    return _tiny(), lambda batch_size: (torch.randn(batch_size, 3, 8, 8),)


def broken():
    raise RuntimeError("weights server unreachable")


def not_a_module():
    return "resnet50"


class Factories:
    tiny = staticmethod(module_only)


not_callable = 42


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = _tiny()
        self.extra = nn.Linear(5, 2)

    def forward(self, image, extra):
        return self.image(image) + self.extra(extra)


def two_inputs():
    return _TwoInputs()


def zero_head():
    head = torch.nn.Linear(4, 3)
    torch.nn.init.zeros_(head.weight)
    return head
