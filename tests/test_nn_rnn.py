"""pydl.nn.LSTM / GRU / LSTMCell / GRUCell as drop-ins for their torch.nn twins.

Tolerances: float32 outputs 1e-5, gradients 1e-4 (see tests/test_rnn.py); the training run compares every
loss of 30 Adam steps to 1e-4 relative (fp32 rounding differences grow slowly through the updates).
"""
import pytest
import torch
import torch.nn as tnn
from torch.nn.utils.rnn import pack_padded_sequence

import pydl
from pydl import backends

from helpers import require_backend, slow

OP = "rnn"
PAIRS = [(tnn.LSTM, pydl.nn.LSTM), (tnn.GRU, pydl.nn.GRU)]
CELLS = [(tnn.LSTMCell, pydl.nn.LSTMCell), (tnn.GRUCell, pydl.nn.GRUCell)]


@pytest.mark.parametrize("defaults", [True, False])
@pytest.mark.parametrize("tcls, pcls", PAIRS + CELLS)
def test_same_parameters_and_state_dict(tcls, pcls, defaults):
    kw = dict(num_layers=3, bidirectional=True, bias=False) if tcls in (tnn.LSTM, tnn.GRU) else dict(bias=False)
    extra = {} if defaults else kw
    t, p = tcls(5, 7, **extra), pcls(5, 7, **extra)
    assert [n for n, _ in t.named_parameters()] == [n for n, _ in p.named_parameters()]
    assert [v.shape for v in t.state_dict().values()] == [v.shape for v in p.state_dict().values()]
    p.load_state_dict(t.state_dict())  # strict: same keys
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), p.state_dict().values()))
    assert repr(t) == repr(p)
    assert p.backend is None


@pytest.mark.parametrize("given_state", [False, True])
@pytest.mark.parametrize("tcls, pcls", PAIRS)
@pytest.mark.parametrize("config", [
    dict(num_layers=1), dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(num_layers=3, bias=False), dict(num_layers=2, bidirectional=True, dropout=0.3)])
def test_sequence_modules_match_torch(cpu_backend, tcls, pcls, config, given_state):
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(0)
    I, H, T, B = (3, 4, 3, 2) if slow(cpu_backend) else (5, 16, 6, 3)
    t = tcls(I, H, **config)
    p = pcls.from_torch(t)
    p.backend = cpu_backend
    t.eval(), p.eval()  # dropout is only equal to torch's when off (eval or p = 0)
    x = torch.randn(B, T, I) if config.get("batch_first") else torch.randn(T, B, I)
    D = 2 if config.get("bidirectional") else 1
    h0 = torch.randn(config["num_layers"] * D, B, H)
    state = (h0, torch.randn_like(h0)) if tcls is tnn.LSTM else h0
    hx = state if given_state else None
    xt, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    ot, st = t(xt, hx)
    op, sp = p(xp, hx)
    assert op.shape == ot.shape and torch.allclose(op, ot, atol=1e-5)
    flat_t = st if isinstance(st, tuple) else (st,)
    flat_p = sp if isinstance(sp, tuple) else (sp,)
    for a, b in zip(flat_p, flat_t):
        assert torch.allclose(a, b, atol=1e-5)
    (ot.sum() + sum(s.sum() for s in flat_t)).backward()
    (op.sum() + sum(s.sum() for s in flat_p)).backward()
    assert torch.allclose(xp.grad, xt.grad, atol=1e-4)
    for (_, a), (_, b) in zip(t.named_parameters(), p.named_parameters()):
        assert a is b  # from_torch shares the tensors: torch's grads were accumulated twice, once by each
        assert a.grad is not None


@pytest.mark.parametrize("tcls, pcls", PAIRS)
def test_unbatched_input(tcls, pcls):
    torch.manual_seed(1)
    t = tcls(3, 4, num_layers=2)
    p = pcls.from_torch(t)
    x = torch.randn(5, 3)
    ot, st = t(x)
    op, sp = p(x)
    assert op.shape == (5, 4) and torch.allclose(op, ot, atol=1e-6)
    if tcls is tnn.LSTM:
        assert sp[0].shape == (2, 4) and torch.allclose(sp[1], st[1], atol=1e-6)
        h = (torch.randn(2, 4), torch.randn(2, 4))
    else:
        assert sp.shape == (2, 4)
        h = torch.randn(2, 4)
    assert torch.allclose(p(x, h)[0], t(x, h)[0], atol=1e-6)


@pytest.mark.parametrize("given_state", [False, True])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tcls, pcls", CELLS)
def test_cells_match_torch(cpu_backend, tcls, pcls, bias, batched, given_state):
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(2)
    t = tcls(6, 9, bias=bias)
    p = pcls.from_torch(t)
    p.backend = cpu_backend
    x = torch.randn(4, 6) if batched else torch.randn(6)
    hx = None
    if given_state:
        h = torch.randn(4, 9) if batched else torch.randn(9)
        hx = (h, torch.randn_like(h)) if tcls is tnn.LSTMCell else h
    xt, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = t(xt, hx), p(xp, hx)
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    for u, v in zip(a, b):
        assert u.shape == v.shape and torch.allclose(u, v, atol=1e-5)
    sum(u.sum() for u in a).backward()
    sum(v.sum() for v in b).backward()
    assert torch.allclose(xp.grad, xt.grad, atol=1e-5)


def test_convert_swaps_and_shares_parameters():
    torch.manual_seed(3)
    model = tnn.Sequential(tnn.Linear(3, 3), tnn.LSTM(3, 4), tnn.ModuleList([tnn.GRUCell(4, 4), tnn.GRU(4, 2)]))
    lstm_w = model[1].weight_ih_l0
    pydl.convert(model, backend="cpu")
    assert type(model[1]) is pydl.nn.LSTM and type(model[2][0]) is pydl.nn.GRUCell and type(model[2][1]) is pydl.nn.GRU
    assert model[1].weight_ih_l0 is lstm_w and model[1].backend == "cpu"
    assert type(model[0]) is tnn.Linear
    pydl.convert(model, to="torch")
    assert type(model[1]) is tnn.LSTM and type(model[2][0]) is tnn.GRUCell and model[1].weight_ih_l0 is lstm_w
    # a bare module converts to its twin, training flag kept
    m = tnn.LSTMCell(2, 3).eval()
    pm = pydl.convert(m)
    assert type(pm) is pydl.nn.LSTMCell and not pm.training and pm.weight_hh is m.weight_hh


def test_unsupported_configurations_raise_clearly():
    with pytest.raises(ValueError, match="proj_size"):
        pydl.nn.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        pydl.convert(tnn.LSTM(3, 4, proj_size=2))
    m = pydl.nn.LSTM(3, 4)
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 3]))
    with pytest.raises(TypeError, match="PackedSequence"):
        m(packed)
    with pytest.raises(ValueError, match="2-D .unbatched. or 3-D"):
        m(torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match="dtype"):
        m(torch.randn(2, 1, 3, dtype=torch.float64))


def test_dropout_only_in_training():
    torch.manual_seed(4)
    m = pydl.nn.GRU(3, 8, num_layers=3, dropout=0.5)
    t = m.to_torch()
    x = torch.randn(4, 2, 3)
    torch.manual_seed(0)
    a = m(x)[0]
    torch.manual_seed(0)
    b = m(x)[0]
    assert torch.equal(a, b)  # same seed, same masks
    assert not torch.allclose(a, m(x)[0])  # new masks
    m.eval(), t.eval()
    assert torch.allclose(m(x)[0], t(x)[0], atol=1e-6)


def test_module_backend_attribute_is_used():
    op = backends.all_ops()["gru"]
    from pydl.ops.rnn import gru_reference

    seen = []
    m = pydl.nn.GRU(2, 3)
    m.backend = "reference"
    with op.override("reference", lambda *a: seen.append(1) or gru_reference(*a)):
        m(torch.randn(2, 1, 2))
        assert seen == [1]
        m.backend = None
        with pydl.backend("reference"):
            m(torch.randn(2, 1, 2))
        assert seen == [1, 1]


def test_torch_compile_fullgraph_module(monkeypatch):
    """The module compiles to one graph with the default (inductor) compiler, backward included."""
    # Inductor's on-disk caches key on the traced graph, not on the custom ops' schemas: after a schema change
    # they would replay a graph calling the op with the old arguments. Compile afresh.
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._functorch.config, "enable_autograd_cache", False)
    torch.manual_seed(5)
    t = tnn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    p = pydl.nn.LSTM.from_torch(t)
    x = torch.randn(2, 4, 3, requires_grad=True)
    f = torch.compile(p, fullgraph=True)
    out, (hn, cn) = f(x)
    (out.sum() + cn.sum()).backward()
    g = x.grad.clone()
    x.grad = None
    ot, (_, ct) = t(x)
    (ot.sum() + ct.sum()).backward()
    assert torch.allclose(out, ot, atol=1e-5) and torch.allclose(g, x.grad, atol=1e-4)


def _char_lm_losses(rnn_cls, steps=30):
    """A 2-layer character-level LSTM language model on a fixed text, 30 Adam steps, fixed seed."""
    text = ("the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs. " * 4)
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(ch) for ch in text])
    torch.manual_seed(0)
    emb = tnn.Embedding(len(vocab), 16)
    rnn = rnn_cls(16, 32, num_layers=2, batch_first=True)
    head = tnn.Linear(32, len(vocab))
    params = list(emb.parameters()) + list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    g = torch.Generator().manual_seed(1)
    T, B = 24, 8
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - T - 1, (B,), generator=g)
        xb = torch.stack([ids[s: s + T] for s in starts])
        yb = torch.stack([ids[s + 1: s + T + 1] for s in starts])
        out, _ = rnn(emb(xb))
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, len(vocab)), yb.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_char_lm_training_matches_torch(backend):
    require_backend(backend, "cpu", OP)
    want = _char_lm_losses(tnn.LSTM)

    def pydl_lstm(*a, **k):
        m = pydl.nn.LSTM(*a, **k)
        m.backend = backend
        return m

    got = _char_lm_losses(pydl_lstm)
    assert want[-1] < want[0] * 0.8  # it learns something
    for i, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= 1e-4 * abs(b), f"step {i}: pydl {a} vs torch {b}"


@pytest.mark.gpu
@pytest.mark.parametrize("tcls, pcls", PAIRS)
def test_gpu_modules(gpu_backend, tcls, pcls, exact_fp32):
    require_backend(gpu_backend, "cuda", OP)
    torch.manual_seed(6)
    t = tcls(32, 64, num_layers=2, bidirectional=True, batch_first=True).cuda()
    p = pcls.from_torch(t)
    p.backend = gpu_backend
    x = torch.randn(8, 20, 32, device="cuda")
    assert torch.allclose(p(x)[0], t(x)[0], atol=1e-4)
    with torch.autocast("cuda", enabled=False):
        xb, pb = x.bfloat16(), pcls.from_torch(tcls(32, 64, batch_first=True).cuda().bfloat16())
        pb.backend = gpu_backend
        assert pb(xb)[0].dtype == torch.bfloat16


@pytest.mark.parametrize("tcls, pcls", PAIRS + CELLS)
def test_wrong_input_size_blames_the_input_as_torch_does(tcls, pcls):
    t, p = tcls(3, 4), pcls(3, 4)
    x = torch.randn(2, 5) if tcls in (tnn.LSTMCell, tnn.GRUCell) else torch.randn(6, 2, 5)
    with pytest.raises(Exception) as want:
        t(x)
    with pytest.raises((ValueError, RuntimeError)) as got:
        p(x)
    # torch: "input.size(-1) must be equal to input_size. Expected 3, got 5" (sequences) / "input has
    # inconsistent input_size: got 5 expected 3" (cells); pydl says the same about the input, not the weights
    text = str(want.value).split(". Expected")[0] if "Expected" in str(want.value) else "inconsistent input_size"
    assert text in str(got.value) and "5" in str(got.value) and "weight" not in str(got.value)


@pytest.mark.parametrize("tcls, pcls", PAIRS)
def test_wrong_hidden_state_shape_is_named_as_torch_does(tcls, pcls):
    t, p = tcls(3, 4, 2), pcls(3, 4, 2)
    x, h = torch.randn(6, 2, 3), torch.zeros(1, 2, 4)
    hx = (h, h) if tcls is tnn.LSTM else h
    with pytest.raises(RuntimeError) as want:
        t(x, hx)
    with pytest.raises(RuntimeError) as got:
        p(x, hx)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("tcls, pcls", PAIRS + CELLS)
def test_empty_batch_gives_torch_empty_outputs(cpu_backend, tcls, pcls):
    require_backend(cpu_backend, "cpu", OP)
    seq = tcls in (tnn.LSTM, tnn.GRU)
    kw = dict(num_layers=2, bidirectional=True) if seq else {}
    t = tcls(3, 4, **kw)
    p = pcls(3, 4, **kw)
    p.load_state_dict(t.state_dict())
    p.backend = cpu_backend
    x = torch.randn(5, 0, 3) if seq else torch.randn(0, 3)
    want, got = t(x), p(x)
    flat = lambda o: [o] if isinstance(o, torch.Tensor) else [a for b in o for a in flat(b)]  # noqa: E731
    assert [tuple(a.shape) for a in flat(got)] == [tuple(a.shape) for a in flat(want)]
