"""pydl/debug/gradflow.py: the gradient-flow numbers and the dead/saturated unit report, against plain PyTorch
on models with known answers (the plots are rendered in tests/test_debug_plots.py)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pydl.debug import dead_units, grad_stats

from helpers import small_cnn


def test_grad_stats_values():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 2))
    model[3].weight.requires_grad_(False)
    x = torch.randn(5, 3)
    model(x).pow(2).sum().backward()
    st = grad_stats(model)
    assert list(st) == ["0.weight", "2.weight"]   # biases skipped, frozen weight skipped
    for name in st:
        g = dict(model.named_parameters())[name].grad.abs()
        assert st[name] == pytest.approx((g.mean().item(), g.max().item()))
    model[0].weight.grad = None
    st = grad_stats(model, skip_bias=False)
    assert list(st) == ["0.weight", "0.bias", "2.weight", "2.bias", "3.bias"]
    assert all(math.isnan(v) for v in st["0.weight"])


def test_dead_units_report():
    torch.manual_seed(0)
    lin = nn.Linear(4, 5)
    with torch.no_grad():
        lin.bias[1] = -100.0   # unit 1 of the ReLU is dead for any reasonable input
        lin.bias[3] = +100.0   # unit 3 of the sigmoid saturates at 1
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(5, 5), nn.Sigmoid())
    model[2].weight.data.zero_()
    model[2].bias.data.copy_(torch.tensor([0.0, 0.0, 0.0, 100.0, -100.0]))
    x = torch.randn(64, 4)
    batches = [(x[:32], None), (x[32:], None)]
    rep = dead_units(model, batches, batches=None)
    assert rep.names == ["1", "3"]
    h = torch.relu(lin(x))
    np.testing.assert_allclose(rep.dead_frac["1"], (h == 0).float().mean(0).numpy())
    assert rep.dead()["1"] == [1]
    assert rep.bounds["1"] is None and np.isnan(rep.saturated_frac["1"]).all()
    assert rep.bounds["3"] == (0.0, 1.0)
    assert rep.saturated()["3"] == [3, 4]       # sigmoid(100) = 1, sigmoid(-100) ~ 0
    np.testing.assert_allclose(rep.saturated_frac["3"], [0, 0, 0, 1, 1])
    assert rep.count["1"].tolist() == [64] * 5
    d = rep.to_dict()
    assert d["1"]["dead"] == [1] and d["3"]["saturated"] == [3, 4]
    assert "dead" in rep.summary()
    # one batch only
    assert dead_units(model, batches, batches=1).count["1"].tolist() == [32] * 5


def test_dead_units_explicit_modules_and_conv_channels():
    model = small_cnn()
    x = torch.randn(3, 3, 6, 6)
    rep = dead_units(model, x, modules=[model[0]], eps=0.5)
    with torch.no_grad():
        o = F.conv2d(x, model[0].weight, model[0].bias, padding=1)
    np.testing.assert_allclose(rep.dead_frac["0"], (o.abs() <= 0.5).float().mean((0, 2, 3)).numpy(), rtol=1e-6)
    assert model.training
