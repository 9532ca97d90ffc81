"""Whole models, ``pydl.convert``-ed vs the same torch model: what a user swapping layers sees.

* ResNet-18 (He et al. 2016: basic blocks [2, 2, 2, 2], 64-128-256-512 channels; written here, no
  torchvision needed) at 3x112x112, N=8, fp32, train mode (batch statistics), forward and
  forward+backward (gradients of every parameter, as an optimizer step needs them).

Both sides run the same weights and inputs in one process; ``pydl`` is a deep copy of the torch model with
its Conv2d/BatchNorm2d/... swapped by ``pydl.convert`` (so every conv goes through pydl's CPU kernels, and
the 3x3 stride-1 ones through Winograd where the crossover table picks it).

Run: ``pydl bench models`` or ``python -m benchmarks.bench_models [--threads 2]``.
"""
import copy

import torch
from torch import nn

try:
    from benchmarks.common import Case, main_for
except ImportError:  # run as a script
    from common import Case, main_for

import pydl


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


def _flops(n, size):
    """Multiply-adds x 2 of the convolutions of one forward (ResNet-18 at 224 px: 1.8 GMAC per image)."""
    return 2 * 1.82e9 * n * (size / 224) ** 2


def cases(quick: bool, device: str):
    if device != "cpu":
        return []
    n, size = 8, 112

    def models():
        torch.manual_seed(0)
        ref = ResNet18().train()
        mine = pydl.convert(copy.deepcopy(ref))
        x = torch.randn(n, 3, size, size)
        return ref, mine, x

    def s_fwd():
        ref, mine, x = models()
        return {"torch": lambda: ref(x), "pydl": lambda be: (lambda: mine(x))}

    def s_train():
        ref, mine, x = models()

        def step(m):
            loss = m(x).square().mean()
            return torch.autograd.grad(loss, list(m.parameters()))

        return {"torch": lambda: step(ref), "pydl": lambda be: (lambda: step(mine))}

    shape = f"ResNet-18 3x{size}x{size} N={n}"
    fl = _flops(n, size)
    return [Case("conv2d", "model forward (train mode)", shape, "float32", s_fwd, flops=fl),
            Case("conv2d", "model forward+backward", shape, "float32", s_train, flops=3 * fl)]


if __name__ == "__main__":
    main_for(cases)
