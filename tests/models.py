"""Tiny models for tests: each small enough to compile in seconds, each exercising some knobs."""

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv-bn-relu blocks, a residual add, pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.bn(self.conv(x)) + x)
        return self.head(x.mean((2, 3)))


class SmallTransformer(nn.Module):
    """One pre-norm attention block with an MLP, on (batch, tokens, features) input."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.out = nn.Linear(dim, 10)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.out(x.mean(1))


class LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 64)
        self.bn = nn.BatchNorm1d(64)
        self.out = nn.Linear(64, 8)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc(x))))


class DataDependent(nn.Module):
    """Python control flow on a tensor value: dynamo must split the graph."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:
            return self.b(y)
        return -self.b(y)


class Branches(nn.Module):
    """Twenty independent element-wise branches over one input, concatenated: loops that
    Inductor's horizontal fusion merges, at most max_horizontal_fusion_size to a loop."""

    OPS = (torch.sin, torch.cos, torch.exp, torch.expm1, torch.tanh, torch.sigmoid, torch.relu,
           torch.abs, torch.neg, torch.erf, torch.atan, torch.sinh, torch.cosh, torch.square,
           torch.floor, torch.ceil, torch.trunc, torch.sign, nn.functional.silu, nn.functional.gelu)

    def forward(self, x):
        return torch.cat([op(x) for op in self.OPS], 1)


class Subsample(nn.Module):
    """Stride-2 subsampling (as in a strided shortcut) and a pointwise op: every load is strided."""

    def forward(self, x):
        return torch.relu(x[:, :, ::2, ::2]) + 1


class TokensFirstLinear(nn.Module):
    """A linear layer on a (tokens, batch, features) view, as in MultiheadAttention's in-projection:
    Inductor lowers it to a bmm, which the C++ GEMM template has no kernel for."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 96)

    def forward(self, x):
        return self.fc(x.transpose(0, 1))


def _init(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            # non-trivial running statistics, so folding has something to fold
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def build(name):
    """(model, input) pairs with fixed seeds."""
    torch.manual_seed(0)
    if name == "cnn":
        return _init(SmallCNN()), torch.randn(2, 3, 16, 16)
    if name == "transformer":
        return _init(SmallTransformer()), torch.randn(2, 8, 64)
    if name == "linear_bn":
        return _init(LinearBN()), torch.randn(4, 32)
    if name == "mlp":
        return _init(nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))), torch.randn(16, 64)
    if name == "branches":
        return Branches(), torch.randn(16, 64)
    if name == "subsample":
        return Subsample(), torch.randn(2, 16, 32, 32)
    if name == "head":
        # M and N fit one register block of the C++ GEMM template on any ISA: only K can be split
        return _init(nn.Linear(512, 8)), torch.randn(1, 512)
    if name == "tokens_first_linear":
        return _init(TokensFirstLinear()), torch.randn(2, 8, 32)
    if name == "thread_probe":
        return _init(ThreadProbe()), torch.randn(4, 8)
    if name == "data_dependent":
        return _init(DataDependent()), torch.randn(4, 16)
    raise KeyError(name)


SEEN_THREADS: list[int] = []


@torch.library.custom_op("autotune_test::record_threads", mutates_args=())
def record_threads(x: torch.Tensor) -> torch.Tensor:
    """Identity that records the intra-op thread count it runs with."""
    SEEN_THREADS.append(torch.get_num_threads())
    return x.clone()


@record_threads.register_fake
def _(x):
    return torch.empty_like(x)


class ThreadProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.ops.autotune_test.record_threads(self.fc(x))
