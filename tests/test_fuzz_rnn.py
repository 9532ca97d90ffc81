"""Fuzz the recurrent ops: seeded random valid cases compared with torch.nn.LSTM/GRU/LSTMCell/GRUCell, and
invalid arguments of every kind, each required to raise a clear error naming the argument (tests/fuzzing.py
classifies the outcomes). Direct calls of the backward ops with wrong shapes could corrupt memory if a check
were missing, so they run in a subprocess.

Valid cases draw: LSTM or GRU, cell or sequence; T in 1..3, B in 0..3, I and H in 1..4, 1-2 layers, either
direction, batch_first, with or without biases and initial states; every float dtype; contiguous, strided
(a slice of a wider tensor), transposed or expanded (stride-0) inputs; normal, huge (saturating the gates),
NaN or +-Inf values in x. The Triton interpreter is ~1000x slower than the compiled backends: it gets the
smallest cases only.

Tolerances, against torch in float64 on the same (rounded) inputs: float64 1e-9; float32 5e-5 for outputs
and gradients (a few fp32 roundings per step through <= 3 steps x 2 layers of O(1) values, with ~6-term
dot products); float16 2e-2 and bfloat16 8e-2 (h is rounded to the input dtype every step, as in torch: a
few ulps of 2^-11 / 2^-8 of |h| <= 1). Huge inputs: the gate pre-activations (~|x| |w| I) are rounded to the
dtype, so the tolerance grows to |x| I eps; forward only. Gradients are compared for float32/float64.
Cases with NaN/Inf compare against torch in the same dtype (where a saturated sigmoid is exactly 0 in one
library and 4e-39 in another, Inf * that differs) and only the forward, with float32/float64 inputs.
"""
import random

import torch

import pydl
from pydl import backends

from helpers import require_backend
from fuzzing import Tally, check, run_isolated
from test_rnn import BACKWARD_HARNESS

OP = "rnn"
SEED = 1414
N_VALID = 140
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
TOL = {torch.float64: 1e-9, torch.float32: 5e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def _backends():
    names = ["reference", "triton"]
    if backends.available("cpu", "cpu", OP)[0]:
        names.append("cpu")
    return names


def _layout(rng, t):
    """The same values as ``t`` in another memory layout (the ops must not depend on strides)."""
    how = rng.choice(["contiguous", "strided", "transposed"])
    if how == "strided" and t.dim() >= 1:  # every other element of a tensor twice as wide
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if how == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t


def _values(rng, shape, dtype, special):
    x = torch.randn(shape, dtype=torch.float64)
    if special == "huge":  # saturates most gates without overflowing the GEMM in the dtype
        x = x * (100.0 if dtype == torch.float16 else 1e4)
    elif special in ("nan", "inf") and x.numel():
        flat = x.view(-1)
        for _ in range(rng.randint(1, 2)):
            flat[rng.randrange(flat.numel())] = float("nan") if special == "nan" else rng.choice([1, -1]) * float("inf")
    return x.to(dtype)


def _torch_module(kind, cell, I, H, L, bidir, bias, dtype):
    if cell:
        return (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(I, H, bias=bias).to(dtype)
    return (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H, L, bias=bias, bidirectional=bidir).to(dtype)


def _valid_case(tally, rng, i, backend):
    kind = rng.choice(["lstm", "gru"])
    cell = rng.random() < 0.35
    tiny = backend == "triton"
    T, B = rng.randint(1, 2 if tiny else 3), rng.choice([0, 1, 2] if tiny else [0, 1, 2, 3])
    I, H = rng.randint(1, 2 if tiny else 4), rng.randint(1, 2 if tiny else 4)
    L, bidir = (1 if tiny else rng.randint(1, 2)), rng.random() < 0.5
    bias, batch_first, with_state = rng.random() < 0.8, rng.random() < 0.4, rng.random() < 0.6
    dtype = rng.choice(DTYPES)
    special = rng.choice(["normal"] * 4 + ["huge", "nan", "inf"])
    if special in ("nan", "inf") and dtype in (torch.float16, torch.bfloat16):
        special = "normal"  # see the module docstring: Inf/NaN cases compare in fp32/fp64 against torch's dtype
    expanded = rng.random() < 0.2
    D = 2 if bidir and not cell else 1
    name = (f"#{i} {backend} {kind}{'_cell' if cell else ''} T={T} B={B} I={I} H={H} L={L} D={D} bias={bias} "
            f"bf={batch_first} state={with_state} {dtype} {special}{' expanded' if expanded else ''}")
    # torch's module and its weights; pydl gets the same values, some in other layouts
    m = _torch_module(kind, cell, I, H, L, bidir, bias, torch.float64)
    weights = [w.detach().to(dtype) for w in (m.parameters() if cell else m._flat_weights)]
    if cell:
        x = _values(rng, (1, I) if expanded else (B, I), dtype, special)
        x = x.expand(B, I) if expanded else x
    else:
        x = _values(rng, (T, 1, I) if expanded else (T, B, I), dtype, special)
        x = x.expand(T, B, I) if expanded else x
        x = x.transpose(0, 1) if batch_first else x
    states = None
    if with_state:
        shape = (B, H) if cell else (L * D, B, H)
        states = [torch.randn(shape, dtype=torch.float64).to(dtype) for _ in range(2 if kind == "lstm" else 1)]
    grad_ok = special == "normal" and dtype in (torch.float32, torch.float64)
    # Inf/NaN: torch in the same dtype (see the module docstring); finite values: torch in float64
    ref_dtype = dtype if special in ("nan", "inf") else torch.float64
    gen = torch.Generator().manual_seed(i)

    def run_pydl():
        px = _layout(rng_fixed(i), x).requires_grad_(grad_ok)
        pw = [_layout(rng_fixed(1000 * i + j + 1), w).requires_grad_(grad_ok) for j, w in enumerate(weights)]
        ps = None if states is None else [s.requires_grad_(grad_ok) for s in (s_.clone() for s_ in states)]
        if cell:
            w4 = pw + [None, None] if not bias else pw
            if kind == "lstm":
                h, c = (None, None) if ps is None else ps
                outs = pydl.lstm_cell(px, h, c, *w4, backend=backend)
            else:
                outs = (pydl.gru_cell(px, None if ps is None else ps[0], *w4, backend=backend),)
        elif kind == "lstm":
            h, c = (None, None) if ps is None else ps
            out, (hn, cn) = pydl.lstm(px, pw, h, c, num_layers=L, bidirectional=bidir, batch_first=batch_first,
                                      backend=backend)
            outs = (out, hn, cn)
        else:
            out, hn = pydl.gru(px, pw, None if ps is None else ps[0], num_layers=L, bidirectional=bidir,
                               batch_first=batch_first, backend=backend)
            outs = (out, hn)
        return _with_grads(outs, [px] + pw + (ps or []), grad_ok, gen)

    def run_torch():
        tm = m.to(ref_dtype)
        tx = x.to(ref_dtype).detach().requires_grad_(grad_ok)
        ts = None if states is None else [s.to(ref_dtype).requires_grad_(grad_ok) for s in states]
        params = list(tm.parameters()) if cell else list(tm._flat_weights)
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w.to(ref_dtype))
        if cell:
            hx = None if ts is None else (tuple(ts) if kind == "lstm" else ts[0])
            outs = tm(tx, hx)
            outs = outs if kind == "lstm" else (outs,)
        else:
            xt = tx.transpose(0, 1) if batch_first else tx
            hx = None if ts is None else (tuple(ts) if kind == "lstm" else ts[0])
            out, state = tm(xt, hx)
            out = out.transpose(0, 1) if batch_first else out
            outs = (out, *state) if kind == "lstm" else (out, state)
        got = _with_grads(outs, [tx] + params + (ts or []), grad_ok, torch.Generator().manual_seed(i))
        # the answer in the case's dtype, as pydl returns it (compared at the dtype's tolerance)
        return [t.to(dtype) if t.is_floating_point() else t for t in got]

    tol = TOL[dtype]
    if special == "huge":  # pre-activations of size ~|x| |w| I: rounded to the dtype, a gate moves by ~that * eps
        tol = max(tol, (100.0 if dtype == torch.float16 else 1e4) * I * torch.finfo(dtype).eps)
    return check(tally, name, run_pydl, run_torch, rtol=tol, atol=tol)


def rng_fixed(seed):
    return random.Random(seed)


def _with_grads(outs, inputs, grad_ok, gen):
    """The outputs, and when asked the gradients of a random projection of them w.r.t. every input."""
    outs = [o for o in outs]
    if not grad_ok:
        return [o.detach() for o in outs]
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [o.detach() for o in outs] + [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


# --------------------------------------------------------------------------------------------------
# Invalid arguments: (case, the argument the message must name, the call)
# --------------------------------------------------------------------------------------------------

def _invalid_cases(backend):
    x = torch.randn(3, 2, 4)
    lw = [w.detach() for w in torch.nn.LSTM(4, 3)._flat_weights]
    lw2 = [w.detach() for w in torch.nn.LSTM(4, 3, 2)._flat_weights]
    gw = [w.detach() for w in torch.nn.GRU(4, 3)._flat_weights]
    xc, h = torch.randn(2, 4), torch.randn(2, 3)
    cw = [w.detach() for w in torch.nn.LSTMCell(4, 3).parameters()]
    gcw = [w.detach() for w in torch.nn.GRUCell(4, 3).parameters()]
    b = dict(backend=backend)
    return [
        ("lstm weights count", "weights", lambda: pydl.lstm(x, lw[:1], **b)),
        ("lstm weights not a list", "weights", lambda: pydl.lstm(x, lw[0], **b)),
        ("gru weights element", "weights[1]", lambda: pydl.gru(x, [gw[0], 3.0], **b)),
        ("lstm weights with has_bias=False", "weights", lambda: pydl.lstm(x, lw, has_bias=False, **b)),
        ("lstm x int", "x", lambda: pydl.lstm(x.long(), lw, **b)),
        ("lstm x list", "x", lambda: pydl.lstm([[1.0]], lw, **b)),
        ("gru x 2-D", "x", lambda: pydl.gru(x[0], gw, **b)),
        ("gru x 4-D", "x", lambda: pydl.gru(x[None], gw, **b)),
        ("lstm T=0", "x", lambda: pydl.lstm(x[:0], lw, **b)),
        ("lstm input_size mismatch", "w_ih", lambda: pydl.lstm(torch.randn(3, 2, 5), lw, **b)),
        ("lstm h0 shape", "h0", lambda: pydl.lstm(x, lw, torch.zeros(2, 2, 3), **b)),
        ("lstm c0 dtype", "c0", lambda: pydl.lstm(x, lw, torch.zeros(1, 2, 3), torch.zeros(1, 2, 3).double(), **b)),
        ("gru h0 device-less list", "h0", lambda: torch.ops.pydl.gru(x, [1], gw, None, 1, False, True, backend)),
        ("lstm num_layers 0", "num_layers", lambda: pydl.lstm(x, lw, num_layers=0, **b)),
        ("lstm num_layers float", "num_layers", lambda: pydl.lstm(x, lw, num_layers=1.5, **b)),
        ("gru dropout 2", "dropout", lambda: pydl.gru(x, gw, dropout=2.0, training=True, **b)),
        ("gru dropout str", "dropout", lambda: pydl.gru(x, gw, dropout="fast", **b)),
        ("lstm w_hh shape", "w_hh", lambda: pydl.lstm(x, [lw[0], lw[1][:, :2], lw[2], lw[3]], **b)),
        ("lstm b_ih shape", "b_ih", lambda: pydl.lstm(x, [lw[0], lw[1], lw[2][:5], lw[3]], **b)),
        ("gru w dtype", "dtype", lambda: pydl.gru(x, [gw[0].double()] + gw[1:], **b)),
        ("lstm mask shape", "dropout_mask",
         lambda: torch.ops.pydl.lstm(x, torch.zeros(2, 2, 3), torch.zeros(2, 2, 3), lw2, torch.ones(1, 3, 2, 4), 2,
                                     False, True, backend)),
        ("lstm_cell x 3-D", "x", lambda: pydl.lstm_cell(x, h, h, *cw, **b)),
        ("lstm_cell hx shape", "hx", lambda: pydl.lstm_cell(xc, h[:1], h, *cw, **b)),
        ("lstm_cell cx dtype", "cx", lambda: pydl.lstm_cell(xc, h, h.double(), *cw, **b)),
        ("lstm_cell w_ih missing", "w_ih", lambda: pydl.lstm_cell(xc, h, h, None, cw[1], **b)),
        ("gru_cell w_hh 1-D", "w_hh", lambda: pydl.gru_cell(xc, h, gcw[0], gcw[2], **b)),
        ("gru_cell one bias", "biases", lambda: pydl.gru_cell(xc, h, *gcw[:3], None, **b)),
        ("gru_cell w_ih width", "w_ih", lambda: pydl.gru_cell(xc, h, gcw[0][:, :3], *gcw[1:], **b)),
        ("gru_cell x int", "x", lambda: pydl.gru_cell(xc.int(), h, *gcw, **b)),
        ("nn.LSTM input size", "input_size", lambda: _module(pydl.nn.LSTM(3, 4), backend)(torch.randn(5, 2, 5))),
        ("nn.GRU input size", "input_size", lambda: _module(pydl.nn.GRU(3, 4), backend)(torch.randn(5, 5))),
        ("nn.LSTM hidden size", "hidden[0]",
         lambda: _module(pydl.nn.LSTM(3, 4), backend)(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4),) * 2)),
        ("nn.GRU hidden size", "hidden size",
         lambda: _module(pydl.nn.GRU(3, 4), backend)(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))),
        ("nn.LSTM 4-D input", "input", lambda: _module(pydl.nn.LSTM(3, 4), backend)(torch.randn(1, 5, 2, 3))),
        ("nn.LSTMCell input size", "input_size", lambda: _module(pydl.nn.LSTMCell(3, 4), backend)(torch.randn(2, 5))),
        ("nn.GRUCell 3-D", "input", lambda: _module(pydl.nn.GRUCell(3, 4), backend)(torch.randn(1, 2, 3))),
        ("nn.LSTM proj_size", "proj_size", lambda: pydl.nn.LSTM(3, 4, proj_size=2)),
        ("nn.LSTM packed", "PackedSequence", lambda: _module(pydl.nn.LSTM(3, 4), backend)(
            torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3]))),
        ("lstm backend", "backend", lambda: pydl.lstm(x, lw, backend="bogus")),
    ]


def _module(m, backend):
    m.backend = backend
    return m


# Direct calls of the backward ops with random wrong shapes/dtypes, in one subprocess: (op, argument,
# mutation, k) each.
# x is not mutated: the ops take the sizes (and the dtype) from x, so a changed x is rightly reported as a
# mismatch of whichever other argument no longer fits it (the forward cases above cover a bad x).
_BACKWARD_ARGS = {
    "lstm_cell_backward": ["grad_hy", "grad_cy", "hx", "cx", "w_ih", "w_hh", "gates", "cy"],
    "gru_cell_backward": ["grad_hy", "hx", "w_ih", "w_hh", "ws"],
    "lstm_backward": ["grad_out", "grad_hn", "grad_cn", "h0", "c0", "out", "reserve", "layer_outs"],
    "gru_backward": ["grad_out", "grad_hn", "h0", "out", "reserve", "layer_outs"],
}
_MUTATIONS = ["narrow_last", "widen_last", "drop_row", "add_dim", "drop_dim", "wrong_dtype", "int_dtype"]

# The mutations applied to one argument (k = 1..3 elements or rows); the harness (tests/test_rnn.py) builds
# valid arguments from a real forward and requires a clear error naming the argument from every backend.
_MUTATE = r"""
def mutate(t, how, k):
    if how == "narrow_last":
        return t[..., : max(t.shape[-1] - k, 0)]
    if how == "widen_last":
        return torch.cat([t, t[..., :1].expand(*t.shape[:-1], k)], -1) if t.shape[-1] else t.new_ones(*t.shape[:-1], k)
    if how == "drop_row":
        return t[min(k, t.shape[0]):]
    if how == "add_dim":
        return t.unsqueeze(0)
    if how == "drop_dim":
        return t[0]
    if how == "wrong_dtype":
        return t.half() if t.dtype != torch.float16 else t.double()
    return t.to(torch.int32)
"""


def test_fuzz_rnn():
    for b in _backends():
        require_backend(b, "cpu", OP)
    tally = Tally()
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    names = _backends()
    # valid cases: the compiled and reference backends take most, the interpreter a few tiny ones
    weights = [0.12 if b == "triton" else 1.0 for b in names]
    for i in range(N_VALID):
        _valid_case(tally, rng, i, rng.choices(names, weights)[0])
    # invalid arguments, on every backend (the checks differ: Python for reference/triton, C++ for cpu)
    for b in names:
        for case, arg, call in _invalid_cases(b):
            check(tally, f"{b} {case}", call, invalid_arg=arg)
    # backward ops called directly with wrong shapes: crash-prone, so in a subprocess
    specs = []
    for op, args in _BACKWARD_ARGS.items():
        for arg in args:
            specs.append((op, arg, rng.choice(_MUTATIONS), rng.randint(1, 3)))
    code = (BACKWARD_HARNESS + _MUTATE + f"specs = {specs!r}\n"
            "run_cases([(op, arg, lambda a, arg=arg, how=how, k=k: mutate(a[arg], how, k)) "
            "for op, arg, how, k in specs])\n")
    run_isolated(tally, f"{len(specs)} direct backward-op calls with wrong arguments x every backend", code,
                 timeout=300)
    tally.assert_clean("rnn")
