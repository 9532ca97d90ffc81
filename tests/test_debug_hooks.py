"""pydl.debug.hooks: forward/backward hooks fire, store what they should, and are removed (twice is fine);
tuple outputs (LSTM); backward capture through an in-place ReLU."""
import pytest
import torch
from torch import nn

from pydl.debug import Hook, Hooks, hook_output, hook_outputs, leaf_modules


def _no_hooks(m: nn.Module) -> bool:
    return all(not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks
               for mod in m.modules())


def test_forward_hook_fires_stores_and_removes():
    lin = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    with Hook(lin, lambda h, m, i, o: (i[0].sum(), o.mean())) as h:
        y = lin(x)
        assert h.calls == 1
        torch.testing.assert_close(h.stored[0], x.sum())
        torch.testing.assert_close(h.stored[1], y.mean())
    assert h.removed and _no_hooks(lin)
    h.remove()  # twice: no error
    lin(x)
    assert h.calls == 1  # removed hooks don't fire


def test_default_stores_detached_output():
    lin = nn.Linear(4, 3)
    h = hook_output(lin)
    y = lin(torch.randn(2, 4))
    assert not h.stored.requires_grad
    torch.testing.assert_close(h.stored, y.detach())
    h.remove()
    h.remove()
    assert _no_hooks(lin)


def test_hooks_many_modules_context():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with Hooks([model[0], model[2]], lambda h, m, i, o: o.shape) as hs:
        model(torch.randn(3, 4))
        assert hs.stored == [torch.Size([3, 8]), torch.Size([3, 2])]
        assert len(hs) == 2 and hs[0].module is model[0]
    assert _no_hooks(model)
    hs.remove()


def test_backward_hook_gets_output_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(6, 4)
    with hook_outputs([model[0]], grad=True) as hs:
        model(x).pow(2).sum().backward()
        got = hs.stored[0]
    # reference: retain the grad of the first layer's output
    h = model[0](x)
    h.retain_grad()
    model[2](model[1](h)).pow(2).sum().backward()
    torch.testing.assert_close(got, h.grad)
    assert _no_hooks(model)


def test_backward_capture_survives_inplace_relu():
    """A full backward hook would raise here; the tensor hook gets d loss / d (conv output)."""
    torch.manual_seed(0)
    conv, relu = nn.Conv2d(2, 3, 3), nn.ReLU(inplace=True)
    model = nn.Sequential(conv, relu)
    x = torch.randn(2, 2, 6, 6)
    with Hook(conv, kind="backward") as h:
        model(x).pow(2).sum().backward()
        got = h.stored
    o = conv(x)
    o.retain_grad()
    torch.relu(o).pow(2).sum().backward()
    assert got is not None and got.abs().sum() > 0
    torch.testing.assert_close(got, o.grad)


def test_lstm_tuple_output_forward_and_backward():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, batch_first=True)
    x = torch.randn(2, 7, 3)
    fwd = Hook(lstm, lambda h, m, i, o: (type(o).__name__, o[0].shape, o[1][0].shape))
    bwd = Hook(lstm, kind="backward")
    out, (hn, cn) = lstm(x)
    out.sum().backward()
    assert fwd.stored == ("tuple", torch.Size([2, 7, 5]), torch.Size([1, 2, 5]))
    torch.testing.assert_close(bwd.stored, torch.ones(2, 7, 5))  # d sum(out) / d out
    # output_index picks another tensor of the flattened output: (out, h, c) -> h
    bh = Hook(lstm, kind="backward", output_index=1)
    out, (hn, cn) = lstm(x)
    (3 * hn).sum().backward()
    torch.testing.assert_close(bh.stored, torch.full((1, 2, 5), 3.0))
    for h in (fwd, bwd, bh):
        h.remove()
        h.remove()
    assert _no_hooks(lstm)


def test_removed_backward_hook_ignores_pending_graph():
    lin = nn.Linear(3, 2)
    h = Hook(lin, kind="backward")
    y = lin(torch.randn(4, 3))
    h.remove()  # the tensor hook is already attached to y's graph
    y.sum().backward()
    assert h.stored is None and h.calls == 0


def test_no_grad_forward_backward_hook_is_noop():
    lin = nn.Linear(3, 2)
    with Hook(lin, kind="backward") as h, torch.no_grad():
        lin(torch.randn(4, 3))
    assert h.stored is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        Hook(nn.Linear(2, 2), kind="sideways")
    with pytest.raises(TypeError, match="nn.Module"):
        Hook(lambda x: x)
    h = Hook(nn.Linear(2, 2), kind="backward", output_index=3)
    with pytest.raises(IndexError, match="output_index"):
        h.module(torch.randn(1, 2, requires_grad=True))
    h.remove()


def test_leaf_modules_selection():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.Linear(2, 2), nn.Dropout()))
    assert leaf_modules(model) == [model[0], model[2][0]]
    assert leaf_modules(model, include_parameterless=True) == [model[0], model[1], model[2][0], model[2][1]]
