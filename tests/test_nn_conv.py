"""pydl.nn.Conv2d / ConvBnAct / the BN fold: drop-in behaviour (constructor, parameters, state_dict, convert)
and parity with the torch modules. Float64 where the comparison is exact up to summation order (1e-10);
float32 module-level checks at 1e-5 (short reductions of unit-scale values)."""
import math

import pytest
import torch
import torch.nn as tnn

import pydl
from pydl.nn import Conv2d, ConvBnAct, GeneralRelu, fold_conv_bn, fuse_conv_bn_act, fuse_model

from helpers import require_backend

OP = "conv2d"

CONFIGS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
    dict(in_channels=6, out_channels=6, kernel_size=3, padding="same", groups=6, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=4, padding="same", padding_mode="reflect"),
    dict(in_channels=4, out_channels=4, kernel_size=1, padding="valid"),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="circular"),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_same_constructor_state_and_results(cpu_backend, cfg):
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(0)
    ref = tnn.Conv2d(**cfg, dtype=torch.float64)
    m = Conv2d(**cfg, dtype=torch.float64)
    assert isinstance(m, tnn.Conv2d) and m.backend is None
    assert list(m.state_dict().keys()) == list(ref.state_dict().keys())
    assert repr(m).replace("pydl.nn.conv.", "").startswith("Conv2d(")
    m.load_state_dict(ref.state_dict())
    m.backend = cpu_backend
    x = torch.randn(2, cfg["in_channels"], 7, 6, dtype=torch.float64, requires_grad=True)
    y, want = m(x), ref(x)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(want)
    got = torch.autograd.grad(y, [x] + list(m.parameters()), g)
    exp = torch.autograd.grad(want, [x] + list(ref.parameters()), g)
    for a, e in zip(got, exp):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_unbatched_input_and_backend_context():
    m = Conv2d(3, 5, 3, padding=1)
    x = torch.randn(3, 6, 6)
    with pydl.backend("reference"):
        y = m(x)
    assert y.shape == (5, 6, 6)
    torch.testing.assert_close(y, tnn.functional.conv2d(x, m.weight, m.bias, padding=1), rtol=1e-5, atol=1e-5)


def test_convert_swaps_in_and_back_sharing_parameters():
    model = tnn.Sequential(tnn.Conv2d(3, 8, 3, padding=1), tnn.ReLU(), tnn.Sequential(tnn.Conv2d(8, 4, 1)))
    w0 = model[0].weight
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    pydl.convert(model, backend="reference")
    assert type(model[0]) is Conv2d and type(model[2][0]) is Conv2d
    assert model[0].weight is w0, "convert must keep the same parameter tensors (optimizers keep working)"
    assert model[0].backend == "reference"
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    # training through the converted model updates the original parameter
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = w0.detach().clone()
    model(x).sum().backward()
    opt.step()
    assert w0.grad is not None and not torch.equal(w0.detach(), before)
    pydl.convert(model, to="torch")
    assert type(model[0]) is tnn.Conv2d and model[0].weight is w0
    assert not hasattr(model[0], "backend")


def test_state_dict_roundtrip_between_torch_and_pydl():
    a = tnn.Conv2d(4, 6, 3, groups=2)
    b = Conv2d(4, 6, 3, groups=2)
    b.load_state_dict(a.state_dict())
    a2 = tnn.Conv2d(4, 6, 3, groups=2)
    a2.load_state_dict(b.state_dict())
    assert torch.equal(a2.weight, a.weight) and torch.equal(a2.bias, a.bias)


def _bn_with_stats(c, dtype=torch.float64):
    bn = tnn.BatchNorm2d(c, dtype=dtype)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_fold_conv_bn(bias):
    conv = tnn.Conv2d(4, 6, 3, padding=1, bias=bias, dtype=torch.float64)
    bn = _bn_with_stats(6)
    w, b = fold_conv_bn(conv, bn)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(tnn.functional.conv2d(x, w, b, padding=1), bn(conv(x)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act", [tnn.ReLU(), GeneralRelu(0.1, 0.4, 2.0), None])
def test_fuse_conv_bn_act_is_one_fused_conv(cpu_backend, act):
    require_backend(cpu_backend, "cpu", OP)
    conv = tnn.Conv2d(4, 6, 3, padding=1, dtype=torch.float64)
    bn = _bn_with_stats(6)
    seq = tnn.Sequential(conv, bn, act if act is not None else tnn.Identity()).eval()
    fused = fuse_conv_bn_act(conv, bn, act)
    fused.backend = cpu_backend
    assert fused.act[0] == {tnn.ReLU: "relu", GeneralRelu: "general_relu"}.get(type(act), "none")
    x = torch.randn(3, 4, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(fused(x), seq(x), rtol=1e-10, atol=1e-10)
    # and back to torch modules: the act becomes a following module
    back = fused.to_torch()
    torch.testing.assert_close(back(x), seq(x), rtol=1e-10, atol=1e-10)


def test_fuse_model_folds_sequential_runs():
    torch.manual_seed(0)
    model = tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(),
        tnn.Conv2d(8, 8, 3, padding=1, groups=8), tnn.BatchNorm2d(8), GeneralRelu(0.1, 0.4),
        tnn.Conv2d(8, 4, 1), tnn.ReLU(), tnn.Flatten(),
    ).double()
    model.train()
    for _ in range(3):  # give the BNs real running statistics
        model(torch.randn(4, 3, 6, 6, dtype=torch.float64))
    model.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    want = model(x)
    fuse_model(model)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "Identity", "Identity", "Conv2d", "Identity", "Identity", "Conv2d", "Identity",
                     "Flatten"]
    assert [model[i].act[0] for i in (0, 3, 6)] == ["relu", "general_relu", "relu"]
    torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act", ["relu", "general_relu", "none"])
def test_conv_bn_act_train_and_eval(cpu_backend, act):
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(0)
    m = ConvBnAct(4, 6, 3, stride=1, act=act, leak=0.1, sub=0.4, maxv=2.0, dtype=torch.float64)
    m.backend = cpu_backend
    # pydl's BN fuses the activation in training
    assert isinstance(m.bn, pydl.nn.BatchNorm2d) and m.bn.act == act and m.bn.backend == cpu_backend
    conv = tnn.Conv2d(4, 6, 3, padding=1, bias=False, dtype=torch.float64)
    bn = tnn.BatchNorm2d(6, dtype=torch.float64)
    conv.load_state_dict(m.conv.state_dict())
    bn.load_state_dict(m.bn.state_dict())
    post = {"relu": tnn.ReLU(), "general_relu": GeneralRelu(0.1, 0.4, 2.0), "none": tnn.Identity()}[act]
    seq = tnn.Sequential(conv, bn, post)
    x = torch.randn(3, 4, 7, 5, dtype=torch.float64, requires_grad=True)
    # training: conv -> BN with batch statistics -> act, with gradients
    y, want = m(x), seq(x)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    gx, gw = torch.autograd.grad(y.sum(), (x, m.conv.weight))
    ex, ew = torch.autograd.grad(want.sum(), (x, conv.weight))
    torch.testing.assert_close(gx, ex, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gw, ew, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(m.bn.running_mean, bn.running_mean, rtol=1e-10, atol=1e-10)
    # eval: ONE conv with BN folded in and the activation fused
    m.eval()
    seq.eval()
    torch.testing.assert_close(m(x), seq(x), rtol=1e-10, atol=1e-10)
    assert m.backend == cpu_backend


def test_conv_bn_act_bad_activation():
    with pytest.raises(ValueError, match="act must be"):
        ConvBnAct(3, 4, act="swish")
    with pytest.raises(TypeError, match="cannot fuse"):
        ConvBnAct(3, 4, act=tnn.Sigmoid())


def test_default_padding_keeps_size():
    m = ConvBnAct(3, 4, kernel_size=5, dilation=2)
    assert m.conv.padding == (4, 4)
    assert m(torch.randn(2, 3, 9, 9)).shape == (2, 4, 9, 9)
    assert m.act[0] == "relu" and math.isinf(m.act[3])


def test_autocast_and_parametrizations():
    """Under autocast the conv runs in the autocast dtype (as F.conv2d); weight_norm-style parametrizations go
    through _conv_forward, which pydl's Conv2d also routes to its kernels."""
    m = Conv2d(3, 4, 3, padding=1)
    m.backend = "reference"
    x = torch.randn(2, 3, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        want = tnn.functional.conv2d(x, m.weight, m.bias, padding=1)
    assert y.dtype == torch.bfloat16 == want.dtype
    torch.testing.assert_close(y.float(), want.float(), rtol=2e-2, atol=2e-2)
    wn = torch.nn.utils.parametrizations.weight_norm(Conv2d(3, 4, 3, padding=1))
    wn.backend = "reference"
    ref = tnn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        ref.weight.copy_(wn.weight)
        ref.bias.copy_(wn.bias)
    from pydl import backends
    from pydl.ops.conv2d import conv2d_reference

    calls = []

    def spy(*args):
        calls.append(1)
        return conv2d_reference(*args)

    with backends.all_ops()["conv2d"].override("reference", spy):
        out = wn(x)
    assert calls, "the parametrized module must run pydl's conv2d"
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)


def test_gradient_penalty_through_the_module_matches_torch():
    """A WGAN-GP critic step through pydl.nn.Conv2d (+ fused ReLU) gives torch.nn.Conv2d's weight gradient:
    the second derivative through the module's conv is not silently zero."""
    require_backend("cpu", "cpu", "conv2d")
    torch.manual_seed(0)
    ref = tnn.Conv2d(2, 4, 3, padding=1, stride=(1, 2), groups=2).double()
    mine = Conv2d(2, 4, 3, padding=1, stride=(1, 2), groups=2).double()
    mine.load_state_dict(ref.state_dict())
    mine.backend, mine.act = "cpu", ("relu", 0.0, 0.0, math.inf)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)

    def penalty(conv):
        (gx,) = torch.autograd.grad(conv(x).pow(2).sum(), x, create_graph=True)
        return (gx.flatten(1).norm(dim=1) - 1).pow(2).mean()

    got = torch.autograd.grad(penalty(mine), (mine.weight, mine.bias))
    want = torch.autograd.grad(penalty(lambda t: torch.relu(ref(t))), (ref.weight, ref.bias))
    for g, e in zip(got, want):
        assert e.abs().max() > 0
        # fp64 sums of <= ~60 products, in different orders: ~1e-14 relative
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
