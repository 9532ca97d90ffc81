"""The recurrent ops (pydl.lstm / gru / lstm_cell / gru_cell): every CPU-usable backend against torch itself.

Tolerances, by dtype:
* float64: outputs and every gradient to 1e-10 (absolute; values are O(1)): the math is the same, only the
  order of GEMM accumulation differs.
* float32 against torch float32: 1e-5 for outputs, 1e-4 for gradients (a backward through T steps sums T
  products of O(1) terms; the C++ backend's exp is a ~2-ulp polynomial).
* float16 / bfloat16 against torch in float64 (the exact answer): h is rounded to 11 / 8 mantissa bits at
  every step and fed back into the GEMM, so errors grow with the number of steps; tiny sizes keep them at a
  few ulps: 1e-2 (fp16) and 6e-2 (bf16) absolute on outputs, 2.5x that on gradients.
"""
import random

import pytest
import torch

import pydl
from pydl import backends
from pydl.ops import rnn as R

from helpers import require_backend, slow

OP = "rnn"  # the build unit of all the rnn ops


def make_torch(kind, I, H, L, bidir, bias, dtype=torch.float64):
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    return cls(I, H, L, bias=bias, bidirectional=bidir).to(dtype)


def run_seq(kind, backend, x, weights, h0, c0, L, bidir, bias, mask=None):
    """The public op, as autograd sees it: returns (out, hn, cn-or-None)."""
    if kind == "lstm":
        out, hn, cn, _, _ = torch.ops.pydl.lstm(x, h0, c0, weights, mask, L, bidir, bias, backend)
        return out, hn, cn
    out, hn, _, _ = torch.ops.pydl.gru(x, h0, weights, mask, L, bidir, bias, backend)
    return out, hn, None


def seq_case(kind, backend, T, B, I, H, L, bidir, bias, dtype=torch.float64, ref_dtype=None, seed=0):
    """(pydl results, torch results) for outputs and all gradients; torch runs in ref_dtype (default: dtype)."""
    ref_dtype = ref_dtype or dtype
    torch.manual_seed(seed)
    m = make_torch(kind, I, H, L, bidir, bias, ref_dtype)
    D = 2 if bidir else 1
    x = torch.randn(T, B, I, dtype=ref_dtype)
    h0 = torch.randn(L * D, B, H, dtype=ref_dtype)
    c0 = torch.randn(L * D, B, H, dtype=ref_dtype)
    go = torch.randn(T, B, D * H, dtype=ref_dtype)
    gh = torch.randn(L * D, B, H, dtype=ref_dtype)
    gc = torch.randn(L * D, B, H, dtype=ref_dtype)

    def grads(outs, ins):
        loss = (outs[0].to(ref_dtype) * go).sum() + (outs[1].to(ref_dtype) * gh).sum()
        if outs[2] is not None:
            loss = loss + (outs[2].to(ref_dtype) * gc).sum()
        return [o.detach() for o in outs if o is not None], [g.to(ref_dtype) for g in torch.autograd.grad(loss, ins)]

    # torch
    tx, th0, tc0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    tw = list(m._flat_weights)
    touts = m(tx, (th0, tc0)) if kind == "lstm" else m(tx, th0)
    touts = (touts[0], touts[1][0], touts[1][1]) if kind == "lstm" else (touts[0], touts[1], None)
    tins = [tx, th0] + ([tc0] if kind == "lstm" else []) + tw
    want = grads(touts, tins)
    # pydl
    px, ph0, pc0 = (t.to(dtype).requires_grad_() for t in (x, h0, c0))
    pw = [w.detach().to(dtype).requires_grad_() for w in tw]
    pouts = run_seq(kind, backend, px, pw, ph0, pc0, L, bidir, bias)
    pins = [px, ph0] + ([pc0] if kind == "lstm" else []) + pw
    got = grads(pouts, pins)
    return got, want


def assert_close(got, want, atol, what=""):
    (go, gg), (wo, wg) = got, want
    for i, (a, b) in enumerate(zip(go, wo)):
        assert a.shape == b.shape
        err = (a.to(b.dtype) - b).abs().max().item()
        assert err <= atol, f"{what} output {i}: max error {err} > {atol}"
    assert len(gg) == len(wg)
    for i, (a, b) in enumerate(zip(gg, wg)):
        assert a.shape == b.shape, f"{what} grad {i}: shape {a.shape} vs {b.shape}"
        err = (a - b).abs().max().item()
        assert err <= 2.5 * atol, f"{what} grad {i}: max error {err} > {2.5 * atol}"


def random_configs(n, seed, tiny):
    rng = random.Random(seed)
    hi = 3 if tiny else 9
    out = []
    for _ in range(n):
        out.append(dict(T=rng.randint(1, hi), B=rng.randint(1, 3 if tiny else 5), I=rng.randint(1, hi),
                        H=rng.randint(1, hi), L=rng.randint(1, 3), bidir=rng.random() < 0.5, bias=rng.random() < 0.8))
    # always include the corners: everything 1, and a deep bidirectional stack without bias
    out.append(dict(T=1, B=1, I=1, H=1, L=1, bidir=False, bias=True))
    out.append(dict(T=2, B=2, I=3, H=2, L=3, bidir=True, bias=False))
    return out


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sequence_parity_with_torch_fp64(cpu_backend, kind):
    """Outputs, final states and ALL gradients (x, h0, c0, every weight and bias) vs torch.nn.LSTM / GRU."""
    require_backend(cpu_backend, "cpu", OP)
    tiny = slow(cpu_backend)
    for cfg in random_configs(4 if tiny else 10, seed=hash(kind) % 1000, tiny=tiny):
        got, want = seq_case(kind, cpu_backend, **cfg)
        assert_close(got, want, 1e-10, f"{kind} {cfg}")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sequence_fp32_vs_torch_fp32(cpu_backend, kind):
    require_backend(cpu_backend, "cpu", OP)
    cfg = dict(T=3, B=2, I=4, H=5, L=2, bidir=True, bias=True) if slow(cpu_backend) else \
        dict(T=7, B=5, I=9, H=33, L=2, bidir=True, bias=True)
    got, want = seq_case(kind, cpu_backend, dtype=torch.float32, **cfg)
    assert all(t.dtype == torch.float32 for t in got[0])
    assert_close(got, want, 1e-5 if cpu_backend != "cpu" else 2e-5, kind)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sequence_half_precision(cpu_backend, kind, dtype, atol):
    """fp16/bf16 in, fp32 cell state and pointwise math inside; compared with torch in float64."""
    require_backend(cpu_backend, "cpu", OP)
    cfg = dict(T=3, B=2, I=3, H=4, L=2, bidir=True, bias=True)
    got, want = seq_case(kind, cpu_backend, dtype=dtype, ref_dtype=torch.float64, **cfg)
    assert all(t.dtype == dtype for t in got[0])
    assert_close(got, want, atol, f"{kind} {dtype}")


def cell_case(kind, backend, B, I, H, bias, dtype=torch.float64, unused_c=False):
    torch.manual_seed(B * 100 + I * 10 + H)
    m = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(I, H, bias=bias).to(dtype)
    x = torch.randn(B, I, dtype=dtype, requires_grad=True)
    hx = torch.randn(B, H, dtype=dtype, requires_grad=True)
    cx = torch.randn(B, H, dtype=dtype, requires_grad=True)
    params = list(m.parameters())
    if kind == "lstm":
        want = m(x, (hx, cx))
        got = pydl.lstm_cell(x, hx, cx, m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh, backend=backend)
        ins = [x, hx, cx] + params
        # unused_c: only h feeds the loss -- the grad of cy arrives as None / zeros
        loss = lambda o: (o[0] * 1.5).sum() + (0 if unused_c else (o[1] ** 2).sum())  # noqa: E731
    else:
        want = (m(x, hx),)
        got = (pydl.gru_cell(x, hx, m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh, backend=backend),)
        ins = [x, hx] + params
        loss = lambda o: (o[0] ** 2).sum()  # noqa: E731
    gw = torch.autograd.grad(loss(want), ins)
    gg = torch.autograd.grad(loss(got), ins)
    return ([g.detach() for g in got], list(gg)), ([w.detach() for w in want], list(gw))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cell_parity_with_torch(cpu_backend, kind):
    require_backend(cpu_backend, "cpu", OP)
    sizes = [(1, 1, 1), (2, 3, 5), (3, 2, 4)]
    if not slow(cpu_backend):
        sizes += [(7, 13, 33), (4, 1, 65)]
    for B, I, H in sizes:
        for bias in (True, False):
            got, want = cell_case(kind, cpu_backend, B, I, H, bias)
            assert_close(got, want, 1e-10, f"{kind}_cell {(B, I, H, bias)}")
    got, want = cell_case(kind, cpu_backend, 2, 3, 4, True, unused_c=True)
    assert_close(got, want, 1e-10, "unused c")
    got, want = cell_case(kind, cpu_backend, 3, 5, 6, True, dtype=torch.float32)
    assert_close(got, want, 2e-5, f"{kind}_cell fp32")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradcheck(cpu_backend, kind):
    """torch.autograd.gradcheck in float64 on tiny shapes: the hand-written backward vs finite differences."""
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(0)
    T, B, I, H, L = 2, 2, 2, 2, 2
    D = 2
    # the interpreter runs every launch in numpy: fast_mode (random projections instead of the full Jacobian)
    fast = slow(cpu_backend)
    m = make_torch(kind, I, H, L, True, True)
    ws = [w.detach().clone().requires_grad_() for w in m._flat_weights]
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(L * D, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(L * D, B, H, dtype=torch.float64, requires_grad=True)
    if kind == "lstm":
        f = lambda x, h0, c0, *w: run_seq("lstm", cpu_backend, x, list(w), h0, c0, L, True, True)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, h0, c0, *ws), fast_mode=fast)
        cell = lambda x, h, c, *w: pydl.lstm_cell(x, h, c, *w, backend=cpu_backend)  # noqa: E731
        cw = [w.detach().clone().requires_grad_() for w in torch.nn.LSTMCell(I, H).double().parameters()]
        assert torch.autograd.gradcheck(cell, (x[0], h0[0], c0[0], *cw), fast_mode=fast)
    else:
        f = lambda x, h0, *w: run_seq("gru", cpu_backend, x, list(w), h0, None, L, True, True)[:2]  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, h0, *ws), fast_mode=fast)
        cell = lambda x, h, *w: pydl.gru_cell(x, h, *w, backend=cpu_backend)  # noqa: E731
        cw = [w.detach().clone().requires_grad_() for w in torch.nn.GRUCell(I, H).double().parameters()]
        assert torch.autograd.gradcheck(cell, (x[0], h0[0], *cw), fast_mode=fast)


def _seq_fn(kind, backend, L, bidir, batch_first):
    """The public functional API as a function of tensors only (what gradgradcheck differentiates)."""
    if kind == "lstm":
        def f(x, h0, c0, *w):
            out, (hn, cn) = pydl.lstm(x, list(w), h0, c0, num_layers=L, bidirectional=bidir,
                                      batch_first=batch_first, backend=backend)
            return out, hn, cn
        return f
    return lambda x, h0, *w: pydl.gru(x, list(w), h0, num_layers=L, bidirectional=bidir, batch_first=batch_first,
                                      backend=backend)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradgradcheck(cpu_backend, kind):
    """Second derivatives (create_graph=True, then differentiate again) vs finite differences of the first,
    in float64: multi-layer, bidirectional, batch_first, with h0/c0, and the cells. The first-order backward
    ops return plain tensors; a backward run with grad mode on must not use them (they would give zeros)."""
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(1)
    # The interpreter runs every step of every forward in numpy: one step, one batch row for triton. The
    # double-backward path itself is the same torch code for every backend; only the forward differs.
    T, B = (1, 1) if cpu_backend == "triton" else (2, 2)
    I, H, L, D = 2, 2, 2, 2
    m = make_torch(kind, I, H, L, True, True)
    ws = [w.detach().clone().requires_grad_() for w in m._flat_weights]
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(L * D, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(L * D, B, H, dtype=torch.float64, requires_grad=True)
    f = _seq_fn(kind, cpu_backend, L, True, True)
    args = (x, h0, c0, *ws) if kind == "lstm" else (x, h0, *ws)
    # fast_mode: random projections of the Jacobian of the gradient instead of all of it (a wrong second
    # derivative still fails: the projection of a nonzero error is nonzero with probability one)
    assert torch.autograd.gradgradcheck(f, args, fast_mode=True)
    cw = [w.detach().clone().requires_grad_() for w in
          (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(I, H).double().parameters()]
    if kind == "lstm":
        cell = lambda x, h, c, *w: pydl.lstm_cell(x, h, c, *w, backend=cpu_backend)  # noqa: E731
        cargs = (x[:, 0], h0[0], c0[0], *cw)
    else:
        cell = lambda x, h, *w: pydl.gru_cell(x, h, *w, backend=cpu_backend)  # noqa: E731
        cargs = (x[:, 0], h0[0], *cw)
    assert torch.autograd.gradgradcheck(cell, cargs, fast_mode=cpu_backend == "triton")
    # without biases, and with inputs that need no gradient (the recompute must skip them, not fail)
    nb = [w.detach().clone().requires_grad_() for w in make_torch(kind, I, H, 1, False, False)._flat_weights]
    f1 = _seq_fn(kind, cpu_backend, 1, False, False)
    h1 = h0[:1].detach()
    args1 = (x.transpose(0, 1), h1, h1.clone(), *nb) if kind == "lstm" else (x.transpose(0, 1), h1, *nb)
    assert torch.autograd.gradgradcheck(f1, args1, fast_mode=True)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradient_penalty_matches_torch(cpu_backend, kind):
    """WGAN-GP style: penalty = (|d out / d x| - 1)^2, then its gradient w.r.t. the parameters and x -- the
    second-order path -- equals torch.nn.LSTM/GRU's (float64: the same formulas, so ~1e-12 apart)."""
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(2)
    T, B = (2, 1) if cpu_backend == "triton" else (3, 2)
    tm = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(3, 2, 2, bidirectional=True, batch_first=True).double()
    pm = (pydl.nn.LSTM if kind == "lstm" else pydl.nn.GRU)(3, 2, 2, bidirectional=True, batch_first=True).double()
    pm.load_state_dict(tm.state_dict())
    pm.backend = cpu_backend
    xv = torch.randn(B, T, 3, dtype=torch.float64)
    results = []
    for m in (tm, pm):
        x = xv.clone().requires_grad_()
        out, state = m(x)
        hn = state[0] if kind == "lstm" else state
        score = out.pow(2).sum() + hn.sin().sum()
        gx, = torch.autograd.grad(score, x, create_graph=True)
        penalty = (gx.flatten(1).norm(dim=1) - 1).pow(2).mean()
        results.append(torch.autograd.grad(penalty, [x, *m.parameters()]))
    for a, b in zip(*results):
        assert b.abs().sum() > 0  # the test itself is not vacuous: torch's second derivative is nonzero
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10), (a - b).abs().max()
    # the cells, one step each
    tc = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(3, 2).double()
    pc = (pydl.nn.LSTMCell if kind == "lstm" else pydl.nn.GRUCell)(3, 2).double()
    pc.load_state_dict(tc.state_dict())
    pc.backend = cpu_backend
    hx = torch.randn(B, 2, dtype=torch.float64)  # a nonzero state: with zeros dL/dW_hh would be 0 in both
    state = (hx, hx.cos()) if kind == "lstm" else hx
    results = []
    for m in (tc, pc):
        x = xv[:, 0].clone().requires_grad_()
        h = m(x, state)
        h = h[0] if kind == "lstm" else h
        gx, = torch.autograd.grad(h.tanh().sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), [x, *m.parameters()]))
    for a, b in zip(*results):
        assert b.abs().sum() > 0
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10), (a - b).abs().max()


def test_first_order_backward_keeps_the_fused_kernels():
    """Ordinary training (no create_graph) still runs the backend's backward op, not the recompute."""
    op = backends.all_ops()["lstm_backward"]
    calls = []

    def spy(*args):
        calls.append(1)
        return R.lstm_backward_reference(*args)

    ws = [w.detach().requires_grad_() for w in make_torch("lstm", 2, 3, 1, False, True)._flat_weights]
    x = torch.randn(2, 1, 2, dtype=torch.float64, requires_grad=True)
    with op.override("reference", spy):
        out, _ = pydl.lstm(x, ws, backend="reference")
        out.sum().backward()
        assert calls == [1]
        out, _ = pydl.lstm(x, ws, backend="reference")
        torch.autograd.grad(out.sum(), x, create_graph=True)
        assert calls == [1]  # create_graph=True: the differentiable recompute, not the kernel


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_dropout_mask_semantics(cpu_backend, kind):
    """A dropout mask between layers means: layer l+1 reads (output of layer l) * mask[l]. Checked against a
    stack of single-layer torch modules fed by hand, forward and backward, and identical in every backend."""
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(1)
    T, B, I, H, L, D = 3, 2, 3, 4, 3, 2
    m = make_torch(kind, I, H, L, True, True)
    mask = torch.empty(L - 1, T, B, D * H, dtype=torch.float64).bernoulli_(0.6) / 0.6
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.zeros(L * D, B, H, dtype=torch.float64)
    c0 = torch.zeros(L * D, B, H, dtype=torch.float64)
    ws = list(m._flat_weights)
    out, hn, _ = run_seq(kind, cpu_backend, x, ws, h0, c0, L, True, True, mask=mask)
    g_pydl = torch.autograd.grad(out.sum(), [x] + ws)
    # by hand: one single-layer module per layer, weights copied from m
    inp = x
    for layer in range(L):
        single = make_torch(kind, inp.shape[2], H, 1, True, True)
        with torch.no_grad():
            for sfx in ("", "_reverse"):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(single, f"{name}_l0{sfx}").copy_(getattr(m, f"{name}_l{layer}{sfx}"))
        y = single(inp)[0]
        inp = y * mask[layer] if layer < L - 1 else y
        if layer == L - 1:
            assert torch.allclose(out, y, atol=1e-12)
    gx = torch.autograd.grad(inp.sum(), x)[0]
    assert torch.allclose(g_pydl[0], gx, atol=1e-12)
    # the public function draws the mask with torch's RNG: same seed, same result, in every backend
    wd = [w.detach() for w in ws]
    fn = pydl.lstm if kind == "lstm" else pydl.gru
    torch.manual_seed(5)
    a = fn(x.detach(), wd, num_layers=L, bidirectional=True, dropout=0.4, training=True, backend=cpu_backend)[0]
    torch.manual_seed(5)
    b = fn(x.detach(), wd, num_layers=L, bidirectional=True, dropout=0.4, training=True, backend="reference")[0]
    c = fn(x.detach(), wd, num_layers=L, bidirectional=True, dropout=0.4, training=False, backend=cpu_backend)[0]
    assert torch.allclose(a, b, atol=1e-12)
    assert not torch.allclose(a, c)  # training applied dropout, eval did not


def test_noncontiguous_and_broadcast_inputs(cpu_backend):
    """Transposed x and h0, and an expanded (stride-0) upstream gradient, give the contiguous results."""
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(2)
    T, B, I, H = 3, 2, 3, 4
    m = make_torch("lstm", I, H, 1, False, True)
    ws = list(m._flat_weights)
    x = torch.randn(B, T, I, dtype=torch.float64).transpose(0, 1).requires_grad_()
    h0 = torch.randn(B, 1, H, dtype=torch.float64).transpose(0, 1)
    c0 = torch.randn(1, B, H, dtype=torch.float64)
    out, hn, cn = run_seq("lstm", cpu_backend, x, ws, h0, c0, 1, False, True)
    want_out, (want_hn, want_cn) = m(x, (h0, c0))
    assert torch.allclose(out, want_out, atol=1e-12) and torch.allclose(hn, want_hn, atol=1e-12)
    g = torch.autograd.grad(out.sum(), x)[0]  # sum's backward hands in an expanded gradient
    gw = torch.autograd.grad(want_out.sum(), x)[0]
    assert torch.allclose(g, gw, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_input_without_grad_skips_dx(cpu_backend, kind):
    """x needs no gradient: the backward skips layer 0's dX GEMM (need_dx=False), every weight grad unchanged."""
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(6)
    T, B, I, H, L = 3, 2, 3, 4, 2
    m = make_torch(kind, I, H, L, True, True)
    ws = list(m._flat_weights)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.zeros(L * 2, B, H, dtype=torch.float64)
    out, hn, cn = run_seq(kind, cpu_backend, x, ws, h0, h0, L, True, True)
    got = torch.autograd.grad(out.sum() + hn.sum(), ws)
    want_out, want_state = m(x)
    want_hn = want_state[0] if kind == "lstm" else want_state
    want = torch.autograd.grad(want_out.sum() + want_hn.sum(), ws)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(got, want))
    # the backward op itself: an empty grad_x, the same grad_h0 as with need_dx=True
    if kind == "lstm":
        _, _, _, reserve, layer_outs = torch.ops.pydl.lstm(x, h0, h0, ws, None, L, True, True, cpu_backend)
        args = (torch.ones_like(out), torch.zeros_like(hn), torch.zeros_like(hn), x, h0, h0, ws, None, out.detach(),
                reserve, layer_outs, L, True, True)
    else:
        _, _, reserve, layer_outs = torch.ops.pydl.gru(x, h0, ws, None, L, True, True, cpu_backend)
        args = (torch.ones_like(out), torch.zeros_like(hn), x, h0, ws, None, out.detach(), reserve, layer_outs, L,
                True, True)
    bwd = getattr(torch.ops.pydl, f"{kind}_backward")
    skipped = bwd(*args, False, cpu_backend)
    full = bwd(*args, True, cpu_backend)
    assert skipped[0].numel() == 0 and full[0].shape == x.shape
    assert torch.allclose(skipped[1], full[1]) and all(torch.equal(a, b) for a, b in zip(skipped[-1], full[-1]))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_inference_without_reserve(cpu_backend, kind):
    """need_reserve=False (what the public functions pass under no_grad): same outputs, nothing saved, and a
    backward through such a call is refused with a clear error instead of reading an empty reserve."""
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(7)
    T, B, I, H, L = 3, 2, 3, 4, 2
    m = make_torch(kind, I, H, L, True, True)
    ws = list(m._flat_weights)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(L * 2, B, H, dtype=torch.float64)
    op = getattr(torch.ops.pydl, kind)
    args = (x, h0, h0, ws) if kind == "lstm" else (x, h0, ws)
    full = op(*args, None, L, True, True, cpu_backend, True)
    lean = op(*args, None, L, True, True, cpu_backend, False)
    assert lean[-2].shape == (L * 2, 0) and full[-2].shape[1] > 0
    for a, b in zip(full[:-2], lean[:-2]):  # out, hn (, cn) identical; layer_outs too
        assert torch.equal(a, b)
    assert torch.equal(full[-1], lean[-1])
    fn = pydl.lstm if kind == "lstm" else pydl.gru
    with torch.no_grad():
        got = fn(x, ws, num_layers=L, bidirectional=True, backend=cpu_backend)[0]
        want = m(x)[0]
    assert torch.allclose(got, want, atol=1e-12)
    xr = x.clone().requires_grad_()
    out = op(*((xr,) + args[1:]), None, L, True, True, cpu_backend, False)[0]
    with pytest.raises(RuntimeError, match="need_reserve"):
        out.sum().backward()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_triton_tilings_and_poison(poison, kind):
    """Two tilings of the Triton kernels give the same numbers; `poison` NaN-fills every torch.empty first,
    so an element a kernel forgot to write (a masked-off edge) shows up as NaN."""
    require_backend("triton", "cpu", OP)
    from pydl.kernels.rnn import TritonPointwise

    try:
        for bb, bh in ((1, 2), (4, 8)):
            TritonPointwise.block_b, TritonPointwise.block_h = bb, bh
            got, want = seq_case(kind, "triton", T=2, B=3, I=2, H=5, L=2, bidir=True, bias=True)
            assert_close(got, want, 1e-10, f"triton {kind} block {(bb, bh)}")
    finally:
        TritonPointwise.block_b = TritonPointwise.block_h = None


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cpu_poison_and_multithreaded_rows(poison, kind):
    """Sizes where the C++ pointwise loops split rows across threads (B*H >> 4k), with poisoned buffers."""
    require_backend("cpu", "cpu", OP)
    got, want = seq_case(kind, "cpu", T=2, B=70, I=5, H=300, L=1, bidir=True, bias=True, dtype=torch.float32)
    assert_close(got, want, 2e-5, f"cpu {kind} large")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_opcheck(cpu_backend, kind):
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(3)
    T, B, I, H, L = 2, 2, 3, 2, 2
    m = make_torch(kind, I, H, L, True, True, torch.float32)
    ws = [w.detach().clone().requires_grad_() for w in m._flat_weights]
    x = torch.randn(T, B, I, requires_grad=True)
    h0 = torch.randn(L * 2, B, H, requires_grad=True)
    mask = torch.ones(L - 1, T, B, 2 * H)
    if kind == "lstm":
        args = (x, h0, torch.randn(L * 2, B, H, requires_grad=True), ws, mask, L, True, True, cpu_backend)
    else:
        args = (x, h0, ws, mask, L, True, True, cpu_backend)
    torch.library.opcheck(getattr(torch.ops.pydl, kind).default, args)
    # the cell op
    cell = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(I, H)
    ps = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    x, hx = torch.randn(B, I, requires_grad=True), torch.randn(B, H, requires_grad=True)
    assert ps[0].shape == ({"lstm": 4, "gru": 3}[kind] * H, I)
    if kind == "lstm":
        args = (x, hx, torch.randn(B, H, requires_grad=True), *ps, cpu_backend)
    else:
        args = (x, hx, *ps, cpu_backend)
    torch.library.opcheck(getattr(torch.ops.pydl, f"{kind}_cell").default, args)
    # and without biases (Tensor? arguments as None)
    nb = args[:-3] + (None, None, cpu_backend)
    torch.library.opcheck(getattr(torch.ops.pydl, f"{kind}_cell").default, nb)


def test_torch_compile_fullgraph_functional():
    """The functional API traces into one graph (forward and backward ops through their fake impls)."""
    torch.manual_seed(4)
    m = make_torch("gru", 3, 4, 2, True, True, torch.float32)
    ws = list(m._flat_weights)

    def f(x, *w):
        out, hn = pydl.gru(x, list(w), num_layers=2, bidirectional=True, batch_first=True)
        return out.sum() + hn.sum()

    x = torch.randn(2, 5, 3, requires_grad=True)
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = cf(x, *ws)
    g = torch.autograd.grad(loss, [x] + ws)
    want = m(x.transpose(0, 1))
    wl = want[0].sum() + want[1].sum()
    gw = torch.autograd.grad(wl, [x] + ws)
    assert torch.allclose(loss, wl, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g, gw))


BAD = [
    ("x dtype", dict(x=torch.randn(2, 1, 3).long()), TypeError, "x must be float16"),
    ("w dtype", dict(w0=torch.randn(8, 3).double()), TypeError, "dtype"),
    ("x rank", dict(x=torch.randn(2, 3)), ValueError, "3-D"),
    ("w_ih shape", dict(w0=torch.randn(8, 4)), ValueError, "w_ih of layer 0"),
    ("h0 shape", dict(h0=torch.zeros(2, 1, 2)), ValueError, "h0"),
    ("empty", dict(x=torch.randn(0, 1, 3)), ValueError, "empty"),
    ("input_size 0", dict(x=torch.randn(2, 1, 0), w0=torch.randn(8, 0)), ValueError, "empty"),
    ("mask shape", dict(mask=torch.ones(1, 2, 1, 2)), ValueError, "dropout_mask"),
    ("weights count", dict(drop_last=True), ValueError, "weight tensors"),
]


@pytest.mark.parametrize("name, bad, exc, match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(cpu_backend, name, bad, exc, match):
    require_backend(cpu_backend, "cpu", OP)
    x = bad.get("x", torch.randn(2, 1, 3))
    ws = [bad.get("w0", torch.randn(8, 3)), torch.randn(8, 2), torch.randn(8), torch.randn(8)]
    if bad.get("drop_last"):
        ws = ws[:3]
    h0 = bad.get("h0", torch.zeros(1, 1, 2))
    with pytest.raises(exc, match=match):
        torch.ops.pydl.lstm(x, h0, torch.zeros(1, 1, 2), ws, bad.get("mask"), 1, False, True, cpu_backend)


def test_bad_cell_input(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    with pytest.raises(ValueError, match="w_hh"):
        pydl.lstm_cell(x, h, h, torch.randn(16, 3), torch.randn(15, 4), backend=cpu_backend)
    with pytest.raises(ValueError, match="hx"):
        pydl.gru_cell(x, torch.randn(3, 4), torch.randn(12, 3), torch.randn(12, 4), backend=cpu_backend)
    with pytest.raises(ValueError, match="both biases"):
        pydl.gru_cell(x, h, torch.randn(12, 3), torch.randn(12, 4), torch.randn(12), None, backend=cpu_backend)
    with pytest.raises(TypeError, match="dtype"):
        pydl.gru_cell(x, h.double(), torch.randn(12, 3), torch.randn(12, 4), backend=cpu_backend)


def test_cpp_kernels_check_their_own_arguments():
    """The compiled ops are callable directly (torch.ops.pydl_cpu.*): they must validate too."""
    require_backend("cpu", "cpu", OP)
    ws = [torch.randn(8, 3), torch.randn(8, 2), torch.randn(8), torch.randn(8)]
    with pytest.raises(ValueError, match="weight tensors"):
        torch.ops.pydl_cpu.lstm(torch.randn(2, 1, 3), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), ws[:3], None, 1,
                                False, True)
    with pytest.raises(ValueError, match="h0"):
        torch.ops.pydl_cpu.gru(torch.randn(2, 1, 3), torch.zeros(1, 2, 2), [torch.randn(6, 3), torch.randn(6, 2)],
                               None, 1, False, False)
    with pytest.raises(TypeError, match="float"):
        torch.ops.pydl_cpu.lstm_cell(torch.randn(2, 3).int(), torch.zeros(2, 2), torch.zeros(2, 2), ws[0], ws[1],
                                     None, None)
    with pytest.raises(ValueError, match="empty"):
        torch.ops.pydl_cpu.gru(torch.randn(0, 1, 3), torch.zeros(1, 1, 2), [torch.randn(6, 3), torch.randn(6, 2)],
                               None, 1, False, False)


# Direct calls of the backward ops with arguments no forward produced: each (op, argument to break, how) must
# raise a clear error naming the argument, on every backend and from the compiled op called directly. Before
# these checks, a narrow `gates` overflowed the heap (the buffer is sized from `gates`, the kernel writes 4H
# columns from `cy`'s width) and a wrong `cy` or `ws` was read out of bounds -- so the cases run in a
# subprocess: a regression kills that process, not the test run.
BACKWARD_HARNESS = r"""
import torch, pydl
from pydl import backends

def cell_args(kind, dtype=torch.float32):
    torch.manual_seed(0)
    B, I, H, G = 3, 5, 4, (4 if kind == "lstm" else 3)
    x, hx, cx = torch.randn(B, I, dtype=dtype), torch.randn(B, H, dtype=dtype), torch.randn(B, H, dtype=dtype)
    w_ih, w_hh = torch.randn(G * H, I, dtype=dtype), torch.randn(G * H, H, dtype=dtype)
    if kind == "lstm":
        hy, cy, gates = torch.ops.pydl.lstm_cell(x, hx, cx, w_ih, w_hh, None, None, "reference")
        return dict(grad_hy=torch.randn_like(hy), grad_cy=torch.randn_like(cy), x=x, hx=hx, cx=cx, w_ih=w_ih,
                    w_hh=w_hh, gates=gates, cy=cy, need_dx=True, need_dh=True)
    hy, ws = torch.ops.pydl.gru_cell(x, hx, w_ih, w_hh, None, None, "reference")
    return dict(grad_hy=torch.randn_like(hy), x=x, hx=hx, w_ih=w_ih, w_hh=w_hh, ws=ws, need_dx=True, need_dh=True)

def seq_args(kind, L=2, bidir=True):
    torch.manual_seed(1)
    m = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(3, 2, L, bidirectional=bidir)
    ws = [w.detach() for w in m._flat_weights]
    D = 2 if bidir else 1
    x, h0 = torch.randn(4, 2, 3), torch.randn(L * D, 2, 2)
    if kind == "lstm":
        c0 = torch.randn(L * D, 2, 2)
        out, hn, cn, reserve, layer_outs = torch.ops.pydl.lstm(x, h0, c0, ws, None, L, bidir, True, "reference")
        return dict(grad_out=torch.randn_like(out), grad_hn=torch.randn_like(hn), grad_cn=torch.randn_like(cn), x=x,
                    h0=h0, c0=c0, weights=ws, dropout_mask=None, out=out, reserve=reserve, layer_outs=layer_outs,
                    num_layers=L, bidirectional=bidir, has_bias=True, need_dx=True)
    out, hn, reserve, layer_outs = torch.ops.pydl.gru(x, h0, ws, None, L, bidir, True, "reference")
    return dict(grad_out=torch.randn_like(out), grad_hn=torch.randn_like(hn), x=x, h0=h0, weights=ws,
                dropout_mask=None, out=out, reserve=reserve, layer_outs=layer_outs, num_layers=L, bidirectional=bidir,
                has_bias=True, need_dx=True)

def run_cases(cases):
    # each (op, argument, breaker) on every backend and the compiled op: a clear error naming the argument
    names = ["reference", "triton"] + (["cpu"] if backends.available("cpu", "cpu", "rnn")[0] else [])
    bad = []
    for op, arg, breaker in cases:
        kind = op.split("_")[0]
        args = cell_args(kind) if "cell" in op else seq_args(kind)
        args[arg] = breaker(args)
        calls = [(b, lambda b=b: getattr(torch.ops.pydl, op)(*args.values(), b)) for b in names]
        if "cpu" in names:  # the compiled op, called directly: its own C++ checks
            calls.append(("pydl_cpu", lambda: getattr(torch.ops.pydl_cpu, op)(*args.values())))
        for who, call in calls:
            try:
                call()
                bad.append(f"{who} {op}: accepted a bad {arg}")
            except (ValueError, TypeError) as e:
                if arg not in str(e):
                    bad.append(f"{who} {op}: error does not name {arg}: {e}")
            except Exception as e:
                bad.append(f"{who} {op}: unclear {type(e).__name__}: {str(e)[:150]}")
    print(len(cases), "cases")
    assert not bad, "\n".join(bad)
"""
BACKWARD_CASES = BACKWARD_HARNESS + r"""
H = 4
CASES = [  # (op, argument, how to break it)
    ("lstm_cell_backward", "gates", lambda a: a["gates"][:, : 2 * H]),           # the heap overflow
    ("lstm_cell_backward", "gates", lambda a: a["gates"][:2]),
    ("lstm_cell_backward", "gates", lambda a: a["gates"].double()),
    ("lstm_cell_backward", "cy", lambda a: torch.randn(3, H + 3)),               # the out-of-bounds read
    ("lstm_cell_backward", "cy", lambda a: torch.randn(5, H)),
    ("lstm_cell_backward", "grad_hy", lambda a: torch.randn(3, H - 1)),
    ("lstm_cell_backward", "grad_cy", lambda a: torch.randn(2, H)),
    ("lstm_cell_backward", "hx", lambda a: torch.randn(3, H + 1)),
    ("lstm_cell_backward", "cx", lambda a: torch.randn(3, H).double()),
    ("lstm_cell_backward", "w_ih", lambda a: torch.randn(4 * H, 2)),
    ("gru_cell_backward", "ws", lambda a: a["ws"][:, : 3 * H]),                  # the out-of-bounds read
    ("gru_cell_backward", "ws", lambda a: torch.randn(2, 4 * H)),
    ("gru_cell_backward", "ws", lambda a: a["ws"].half()),
    ("gru_cell_backward", "grad_hy", lambda a: torch.randn(3, 2 * H)),
    ("gru_cell_backward", "hx", lambda a: torch.randn(1, H)),
    ("gru_cell_backward", "w_hh", lambda a: torch.randn(3 * H, H + 1)),
    ("lstm_backward", "reserve", lambda a: a["reserve"][:, :-7]),
    ("lstm_backward", "reserve", lambda a: a["reserve"][:1]),
    ("lstm_backward", "reserve", lambda a: a["reserve"][:, :0]),
    ("lstm_backward", "reserve", lambda a: a["reserve"].double()),
    ("lstm_backward", "out", lambda a: a["out"][:, :1]),
    ("lstm_backward", "layer_outs", lambda a: a["layer_outs"][:, :2]),
    ("lstm_backward", "grad_out", lambda a: a["grad_out"][..., :2]),
    ("lstm_backward", "grad_hn", lambda a: a["grad_hn"][:1]),
    ("lstm_backward", "grad_cn", lambda a: a["grad_cn"].double()),
    ("lstm_backward", "h0", lambda a: a["h0"][:, :1]),
    ("gru_backward", "reserve", lambda a: a["reserve"][:, 1:]),
    ("gru_backward", "out", lambda a: torch.randn(4, 2, 5)),
    ("gru_backward", "layer_outs", lambda a: torch.randn(2, 4, 2, 4)),
    ("gru_backward", "grad_hn", lambda a: torch.randn(4, 2, 3)),
]
run_cases(CASES)
"""


def test_backward_ops_validate_every_argument():
    """Every backward op, on every CPU backend and called directly as a compiled op, refuses arguments no
    forward produced, naming them; in a subprocess (see BACKWARD_CASES)."""
    from fuzzing import OK, Tally, run_isolated

    tally = Tally()
    assert run_isolated(tally, "backward ops with bad saved tensors", BACKWARD_CASES, timeout=300) == OK, \
        tally.failures


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_backward_ops_read_strided_saved_tensors(cpu_backend, kind):
    """A directly called backward op given the right shapes with other strides computes the same result (the
    kernels assume unit column stride: the drivers make the saved tensors row-contiguous first)."""
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(5)
    B, I, H = 2, 3, 4
    G = 4 if kind == "lstm" else 3
    x, hx, cx = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    w_ih, w_hh = torch.randn(G * H, I), torch.randn(G * H, H)
    strided = lambda t: t.t().contiguous().t()  # noqa: E731 - same values, column stride != 1
    gy = torch.randn(B, H)
    if kind == "lstm":
        _, cy, gates = torch.ops.pydl.lstm_cell(x, hx, cx, w_ih, w_hh, None, None, cpu_backend)
        run = lambda g: torch.ops.pydl.lstm_cell_backward(gy, gy, x, hx, cx, w_ih, w_hh, g, cy, True, True,  # noqa
                                                          cpu_backend)
    else:
        _, gates = torch.ops.pydl.gru_cell(x, hx, w_ih, w_hh, None, None, cpu_backend)
        run = lambda g: torch.ops.pydl.gru_cell_backward(gy, x, hx, w_ih, w_hh, g, True, True, cpu_backend)  # noqa
    for a, b in zip(run(gates), run(strided(gates))):
        assert torch.equal(a, b)
    m = make_torch(kind, I, H, 1, True, True, torch.float32)
    ws = [w.detach() for w in m._flat_weights]
    xs, h0 = torch.randn(3, B, I), torch.randn(2, B, H)
    go, gh = torch.randn(3, B, 2 * H), torch.randn(2, B, H)
    if kind == "lstm":
        out, _, _, res, lo = torch.ops.pydl.lstm(xs, h0, h0, ws, None, 1, True, True, cpu_backend)
        run = lambda o, r: torch.ops.pydl.lstm_backward(go, gh, gh, xs, h0, h0, ws, None, o, r, lo, 1, True,  # noqa
                                                        True, True, cpu_backend)
    else:
        out, _, res, lo = torch.ops.pydl.gru(xs, h0, ws, None, 1, True, True, cpu_backend)
        run = lambda o, r: torch.ops.pydl.gru_backward(go, gh, xs, h0, ws, None, o, r, lo, 1, True, True, True,  # noqa
                                                       cpu_backend)
    want = run(out, res)
    got = run(out.transpose(0, 1).contiguous().transpose(0, 1), strided(res))
    for a, b in zip(want[:-1] + tuple(want[-1]), got[:-1] + tuple(got[-1])):
        assert torch.equal(a, b)


def test_public_functions_name_bad_arguments():
    x = torch.randn(5, 2, 3)
    ws = list(make_torch("lstm", 3, 4, 1, False, True, torch.float32)._flat_weights)
    with pytest.raises(ValueError, match=r"weights must hold 4 tensors .* got 1"):
        pydl.lstm(x, [ws[0]])  # was an IndexError
    with pytest.raises(TypeError, match="weights must be a list of tensors"):
        pydl.gru(x, ws[0])
    with pytest.raises(TypeError, match=r"weights\[1\] must be a torch.Tensor"):
        pydl.lstm(x, [ws[0], "w_hh"])
    with pytest.raises(ValueError, match="dropout must be"):
        pydl.lstm(x, ws, dropout="fast", training=True)
    with pytest.raises(ValueError, match="num_layers"):
        pydl.gru(x, ws[:2], num_layers=0)
    with pytest.raises(ValueError, match="x must be 3-D"):
        pydl.lstm(x[0], ws, batch_first=True)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        pydl.lstm_cell([1.0], w_ih=ws[0], w_hh=ws[1])
    with pytest.raises(ValueError, match="w_hh must be 2-D"):
        pydl.gru_cell(x[0], w_ih=ws[0], w_hh=ws[2])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_empty_batch_and_sizes_match_torch(cpu_backend, kind):
    """Batch 0 (sequences and cells), hidden size 0 and input size 0 (cells): torch's outputs and gradients."""
    require_backend(cpu_backend, "cpu", OP)
    torch.manual_seed(6)
    m = make_torch(kind, 3, 2, 2, True, True, torch.float32)
    ws = [w.detach().requires_grad_() for w in m._flat_weights]
    x = torch.randn(4, 0, 3, requires_grad=True)
    if kind == "lstm":
        out, (hn, cn) = pydl.lstm(x, ws, num_layers=2, bidirectional=True, backend=cpu_backend)
        want_out, (want_hn, _) = m(x)
        assert cn.shape == want_hn.shape
    else:
        out, hn = pydl.gru(x, ws, num_layers=2, bidirectional=True, backend=cpu_backend)
        want_out, want_hn = m(x)
    assert out.shape == want_out.shape and hn.shape == want_hn.shape
    grads = torch.autograd.grad(out.sum() + hn.sum(), [x] + ws)
    assert grads[0].shape == x.shape and all(g.shape == w.shape and not g.any() for g, w in zip(grads[1:], ws))
    for B, I, H in ((0, 3, 4), (2, 3, 0), (2, 0, 4)):
        tc = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(I, H)
        ps = [p.detach().requires_grad_() for p in tc.parameters()]
        xc = torch.randn(B, I, requires_grad=True)
        hc = torch.randn(B, H, requires_grad=True)
        if kind == "lstm":
            got = pydl.lstm_cell(xc, hc, hc * 2, *ps, backend=cpu_backend)
            want = tc(xc, (hc, hc * 2))
        else:
            got = (pydl.gru_cell(xc, hc, *ps, backend=cpu_backend),)
            want = (tc(xc, hc),)
        for a, b in zip(got, want):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
        gg = torch.autograd.grad(sum(o.sum() for o in got), [xc, hc] + ps, allow_unused=True)
        gw = torch.autograd.grad(sum(o.sum() for o in want), [xc, hc] + list(tc.parameters()), allow_unused=True)
        for a, b in zip(gg, gw):
            b = torch.zeros_like(a) if b is None else b
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)


def test_backend_selection_runs_the_chosen_kernel():
    """`backend=` and the context both reach the op (checked by swapping in a recording implementation)."""
    op = backends.all_ops()["lstm"]
    calls = []

    def spy(*args):
        calls.append(1)
        return R.lstm_reference(*args)

    ws = list(make_torch("lstm", 2, 3, 1, False, True, torch.float32)._flat_weights)
    x = torch.randn(2, 1, 2)
    with op.override("reference", spy):
        pydl.lstm(x, ws, backend="reference")
        with pydl.backend("reference"):
            pydl.lstm(x, ws)
        assert len(calls) == 2
        pydl.lstm(x, ws, backend="cpu" if backends.available("cpu", "cpu", OP)[0] else "triton")
    assert len(calls) == 2


# --------------------------------------------------------------------------------------------------
# GPU (skipped without one): cuda and triton on CUDA tensors, fp32 and bf16
# --------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-4), (torch.bfloat16, 1e-1)])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gpu_sequence_parity(gpu_backend, kind, dtype, atol):
    require_backend(gpu_backend, "cuda", OP)
    for cfg in random_configs(4, seed=7, tiny=False) + [dict(T=20, B=16, I=64, H=128, L=2, bidir=True, bias=True)]:
        torch.manual_seed(0)
        m = make_torch(kind, cfg["I"], cfg["H"], cfg["L"], cfg["bidir"], cfg["bias"], torch.float64)
        D = 2 if cfg["bidir"] else 1
        x = torch.randn(cfg["T"], cfg["B"], cfg["I"], dtype=torch.float64)
        h0 = torch.randn(cfg["L"] * D, cfg["B"], cfg["H"], dtype=torch.float64)
        c0 = torch.randn_like(h0)
        want = run_seq(kind, "reference", x, list(m._flat_weights), h0, c0, cfg["L"], cfg["bidir"], cfg["bias"])
        ws = [w.detach().to("cuda", dtype).requires_grad_() for w in m._flat_weights]
        xc = x.to("cuda", dtype).requires_grad_()
        got = run_seq(kind, gpu_backend, xc, ws, h0.to("cuda", dtype), c0.to("cuda", dtype), cfg["L"],
                      cfg["bidir"], cfg["bias"])
        for a, b in zip(got, want):
            if a is not None:
                assert (a.double().cpu() - b).abs().max().item() < atol, (kind, cfg, dtype)
        got[0].float().sum().backward()
        assert xc.grad is not None and torch.isfinite(xc.grad.float()).all()
        # fp32 gradients against the float64 reference backward
        if dtype == torch.float32:
            xr = x.clone().requires_grad_()
            wr = [w.detach().clone().requires_grad_() for w in m._flat_weights]
            o = run_seq(kind, "reference", xr, wr, h0, c0, cfg["L"], cfg["bidir"], cfg["bias"])[0]
            gr = torch.autograd.grad(o.sum(), [xr] + wr)
            for a, b in zip([xc.grad] + [w.grad for w in ws], gr):
                assert (a.double().cpu() - b).abs().max().item() < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gpu_cells(gpu_backend, kind, dtype, atol):
    require_backend(gpu_backend, "cuda", OP)
    cell = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(17, 33).cuda().to(dtype)
    x, h = torch.randn(5, 17, device="cuda", dtype=dtype), torch.randn(5, 33, device="cuda", dtype=dtype)
    c = torch.randn_like(h)
    if kind == "lstm":
        want = cell(x, (h, c))[0]
        got = pydl.lstm_cell(x, h, c, *cell.parameters(), backend=gpu_backend)[0]
    else:
        want = cell(x, h)
        got = pydl.gru_cell(x, h, *cell.parameters(), backend=gpu_backend)
    assert (got.float() - want.float()).abs().max().item() < atol


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gpu_opcheck_and_compile(gpu_backend, kind):
    require_backend(gpu_backend, "cuda", OP)
    m = make_torch(kind, 3, 4, 2, True, True, torch.float32).cuda()
    ws = [w.detach().clone().requires_grad_() for w in m._flat_weights]
    x = torch.randn(2, 2, 3, device="cuda", requires_grad=True)
    h0 = torch.randn(4, 2, 4, device="cuda")
    args = (x, h0, torch.randn_like(h0), ws, None, 2, True, True, gpu_backend) if kind == "lstm" else \
        (x, h0, ws, None, 2, True, True, gpu_backend)
    torch.library.opcheck(getattr(torch.ops.pydl, kind).default, args)
    fn = pydl.lstm if kind == "lstm" else pydl.gru
    f = torch.compile(lambda t: fn(t, ws, num_layers=2, bidirectional=True)[0], fullgraph=True)
    assert torch.allclose(f(x), fn(x, ws, num_layers=2, bidirectional=True, backend="reference")[0], atol=1e-4)
