"""A small image classifier trained on data it makes, so that int8's accuracy means something.

Ten classes, each a bright square at its own place on a noisy 32x32 image: learnt to nearly 100%
in a few seconds, with clear margins, so int8 keeps agreeing with float32 on it; an untrained
copy has near-tied logits, which int8 reorders (the gate's failing case).
"""

import torch
from torch import nn

CLASSES = 10
SIZE = 32
BATCH = 8


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.BatchNorm2d(128), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(128, CLASSES)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` noisy images and their classes: class k has a bright square at spot k."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    x = 0.3 * torch.randn(count, 3, SIZE, SIZE, generator=generator)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 5)
        x[i, :, 4 + 12 * row:12 + 12 * row, 2 + 6 * col:6 + 6 * col] += 2.0
    return x, labels


def train(steps: int = 120) -> Classifier:
    torch.manual_seed(0)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(steps):
        x, y = images(32, seed=1000 + step)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def classifier():
    """The model for ``--model int8_models:classifier --batch-size 8`` (weights: ``--checkpoint``)."""
    torch.manual_seed(0)
    return Classifier().eval(), lambda batch: (torch.randn(batch, 3, SIZE, SIZE),)


def batches(count: int, seed: int) -> list[torch.Tensor]:
    x, _ = images(count * BATCH, seed)
    return list(x.split(BATCH))


def fragile_classifier():
    """A classifier whose classes differ by 1e-4 of their logits: float32 still ranks them, but
    int8's rounding of the head's input reorders them (the gate must refuse it)."""
    torch.manual_seed(0)
    model = Classifier().eval()
    with torch.no_grad():
        common = model.head.weight.mean(0, keepdim=True)
        model.head.weight.copy_(common + 1e-4 * (model.head.weight - common))
        model.head.bias.zero_()
    return model, lambda batch: (torch.randn(batch, 3, SIZE, SIZE),)


def true_classes(x: torch.Tensor) -> torch.Tensor:
    """Each image's class, read back from where its bright square is."""
    spots = []
    for label in range(CLASSES):
        row, col = divmod(label, 5)
        spots.append(x[:, :, 4 + 12 * row:12 + 12 * row, 2 + 6 * col:6 + 6 * col].mean((1, 2, 3)))
    return torch.stack(spots, 1).argmax(1)


def label_accuracy(outputs: torch.Tensor, inputs: tuple) -> float:
    """A ``--metric``: accuracy against the true classes, the figure a user with labels keeps."""
    return (outputs.argmax(1) == true_classes(inputs[0])).float().mean().item()


def largest_logit(outputs: torch.Tensor, inputs: tuple) -> float:
    """A ``--metric`` that overflows to inf on a candidate whose outputs do."""
    return outputs.abs().max().item()


def scores_zero(outputs: torch.Tensor, inputs: tuple) -> float:
    """A ``--metric`` no fraction can be kept of."""
    return 0.0
