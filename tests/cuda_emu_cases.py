"""One small case per op and per branch of its CUDA launcher, for the emulated backend and for the GPU check.

``cases()`` returns ``[(name, fn)]``; ``fn(device, backend)`` runs one op forward and backward on tensors of
``device`` with ``backend`` and raises AssertionError on a mismatch with the reference (plain PyTorch, float64,
on the CPU). tests/test_cuda_emu.py runs them with ("cpu", "cuda_emu"); the GPU check with ("cuda", "cuda")
under compute-sanitizer, so a shape here runs every kernel the emulator runs.

The shapes are chosen by the launchers' branches, not by size (the emulator runs a kernel thread by thread on
one core): a group / channel spread over several blocks, tail blocks, the split and unsplit reductions, the
histogram in shared and in global memory, batch norm's one-read cooperative kernels on a grid of several
blocks and its two-kernel path (channels_last, and PYDL_BN_ONEPASS=0), conv2d's SIMT, tensor-core (WMMA,
fp16 / bf16 / TF32) and depthwise kernels with grad_w split over pixel ranges, the recurrent kernels in every
dtype. The coverage test checks that together they launched every __global__ function.

Tolerances (for values of order 1): fp64 1e-9 (the CUDA kernels accumulate in fp64 in another order);
fp32 1e-4 (fp32 sums of at most a few hundred terms: ~n * 6e-8, with margin); TF32 inputs 1e-2 (10-bit
mantissa: 2^-11 relative per product, over ~50-term sums); fp16 1e-2 and bf16 6e-2 (storage rounding of inputs
and outputs, 2^-11 and 2^-8 relative, on values up to ~4 after normalisation).
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Callable, List, Sequence, Tuple

import torch

import pydl
conv2d_mod = importlib.import_module("pydl.ops.conv2d")  # the module (pydl.ops.conv2d is also the function)

TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}
TF32_TOL = 1e-2


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def _tf32(on: bool):
    old = conv2d_mod.ALLOW_TF32
    conv2d_mod.ALLOW_TF32 = on
    try:
        yield
    finally:
        conv2d_mod.ALLOW_TF32 = old


def _flat(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    res = []
    for o in out:
        res += _flat(o)
    return res


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    got = got.detach().to("cpu", torch.float64)
    want = want.detach().to(torch.float64)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs()
    bad = ~((err <= tol * (1 + want.abs())) | (got.isnan() & want.isnan()) | (got == want))
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} of {want.numel()} elements differ, max error "
                                 f"{float(err[bad].max()):.3g} (tol {tol:g} x (1 + |want|))")


def _compare(name: str, f: Callable, inputs: Sequence[torch.Tensor], grads: Sequence[bool], device: str, backend: str,
             dtype: torch.dtype, tol: float, layout: Callable = lambda t: t, seed: int = 0) -> None:
    """f(*tensors, backend=...) -> tensor(s). Runs it on (device, backend, dtype) and on the reference in float64
    on the CPU, from the same values; compares the outputs and the gradients of the inputs marked in ``grads``
    (for random output gradients)."""
    # both sides start from the values rounded to `dtype`: a ReLU's mask or a bin is then decided by the same x
    inputs = [t.to(dtype).to(torch.float64) if t.is_floating_point() else t for t in inputs]

    def run(dev, be, dt):
        ts = [layout(t.to(dev, dt if t.is_floating_point() else t.dtype)) for t in inputs]
        ts = [t.detach().requires_grad_(g) for t, g in zip(ts, grads)]
        outs = _flat(f(*ts, backend=be))
        gen = torch.Generator().manual_seed(seed)
        diff = [o for o in outs if o.requires_grad]
        dys = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dev, o.dtype) for o in diff]
        need = [t for t, g in zip(ts, grads) if g]
        gs = torch.autograd.grad(diff, need, dys, allow_unused=True) if need and diff else []
        return outs, gs

    outs, gs = run(device, backend, dtype)
    routs, rgs = run("cpu", "reference", torch.float64)
    assert len(outs) == len(routs), f"{name}: {len(outs)} outputs, the reference has {len(routs)}"
    for i, (o, r) in enumerate(zip(outs, routs)):
        _close(o, r, tol, f"{name}: output {i}")
    for i, (g, r) in enumerate(zip(gs, rgs)):
        if r is None:
            assert g is None or not bool(g.any()), f"{name}: gradient {i} should be empty"
            continue
        assert g is not None, f"{name}: gradient {i} missing"
        _close(g, r, tol, f"{name}: gradient {i}")


def _randn(*shape, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


# --------------------------------------------------------------------------------------------------
# act_stats (no backward): counts and histogram exact, statistics to the dtype's tolerance
# --------------------------------------------------------------------------------------------------

def _act_stats(shape, dtype, per_channel, bins=16, layout=lambda t: t, nonfinite=False, seed=0):
    def fn(device, backend):
        x = _randn(*shape, seed=seed, scale=2.0)
        if nonfinite and x.numel() > 3:
            x.view(-1)[1], x.view(-1)[2], x.view(-1)[3] = float("nan"), float("inf"), float("-inf")
        x = layout(x.to(dtype))  # the reference sees the same rounded values
        args = dict(bins=bins, lo=-3.0, hi=3.0, eps=0.01, per_channel=per_channel)
        got = pydl.act_stats(x.to(device), backend=backend, **args)
        want = pydl.act_stats(x, backend="reference", **args)
        assert torch.equal(got.counts.cpu(), want.counts), f"counts differ:\n{got.counts}\n{want.counts}"
        assert torch.equal(got.hist_all.cpu(), want.hist_all), "histograms differ"
        # mean/min/max/M2 in the accumulator (fp32 for 16-bit input): the fp32 tolerance, scaled by the count
        # for M2 (a sum of squares)
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        _close(got.fstats[:, [0, 2, 3]], want.fstats[:, [0, 2, 3]], tol, "act_stats mean/min/max")
        _close(got.fstats[:, 1] / max(1, x.numel()), want.fstats[:, 1] / max(1, x.numel()), tol, "act_stats M2/n")
    return fn


# --------------------------------------------------------------------------------------------------
# batch_norm: the fused op (training and eval, affine or not, with an activation), forward + backward
# --------------------------------------------------------------------------------------------------

def _bn(shape, dtype, training=True, act="general_relu", affine=True, layout=lambda t: t, onepass=True, seed=0):
    C = shape[1]
    def f(x, w, b, rm, rv, backend):
        kw = dict(leak=0.1, sub=0.2, maxv=2.0) if act == "general_relu" else {}
        return pydl.batch_norm(x, None if training else rm, None if training else rv, w if affine else None,
                               b if affine else None, training, momentum=None, act=act, backend=backend, **kw)

    def fn(device, backend):
        ins = [_randn(*shape, seed=seed, scale=2.0, shift=0.5), _randn(C, seed=seed + 1, scale=0.3, shift=1.0),
               _randn(C, seed=seed + 2), _randn(C, seed=seed + 3), _randn(C, seed=seed + 4).abs() + 0.5]
        # x in `dtype`; weight/bias in x's dtype too (the parameters' dtype rule is torch's)
        with _env("PYDL_BN_ONEPASS", "1" if onepass else "0"):
            _compare(f"batch_norm{shape}", f, ins,
                     [True, affine, affine, False, False], device, backend, dtype, TOL[dtype],
                     layout=lambda t: layout(t) if t.dim() == len(shape) else t, seed=seed)
    return fn


def _bn_separable(shape, dtype, layout=lambda t: t, seed=0):
    """SyncBatchNorm's steps: stats -> apply, backward_reduce -> backward_elemt, and the running-stat update."""
    def fn(device, backend):
        x = layout(_randn(*shape, seed=seed, scale=2.0).to(dtype))
        dy = layout(_randn(*shape, seed=seed + 1).to(dtype))
        w, b = _randn(shape[1], seed=seed + 2).to(dtype), _randn(shape[1], seed=seed + 3).to(dtype)
        act = ("general_relu", 0.1, 0.2, 1.5)
        n = x.numel() // shape[1]
        res = {}
        for dev, be in ((device, backend), ("cpu", "reference")):
            X, DY, W, B = (t.to(dev) for t in (x, dy, w, b))
            mean, m2 = pydl.batch_norm_stats(X, backend=be)
            invstd = torch.rsqrt(m2 / n + 1e-5)
            y = torch.ops.pydl.batch_norm_apply(X, mean, invstd, W, B, *act, be)
            s1, s2 = torch.ops.pydl.batch_norm_backward_reduce(DY, X, mean, invstd, W, B, *act, be)
            dx = torch.ops.pydl.batch_norm_backward_elemt(DY, X, mean, invstd, W, B, s1, s2, n, *act, be)
            rm, rv = torch.zeros(shape[1], device=dev), torch.ones(shape[1], device=dev)
            torch.ops.pydl.batch_norm_update_running(rm, rv, mean, m2 / (n - 1), n, 0.1, None, be)
            res[be] = (mean, m2, y, s1, s2, dx, rm, rv)
        tol = TOL[dtype]
        for i, (g, r) in enumerate(zip(res[backend], res["reference"])):
            _close(g, r, tol, f"batch_norm separable step {i}")
    return fn


# --------------------------------------------------------------------------------------------------
# conv2d: forward (+ fused activation) and the three gradients
# --------------------------------------------------------------------------------------------------

def _conv(x_shape, w_shape, dtype, stride=1, padding=0, dilation=1, groups=1, act="none", layout=lambda t: t,
          tf32=False, seed=0):
    def f(x, w, b, backend):
        kw = dict(leak=0.1, sub=0.2, maxv=3.0) if act == "general_relu" else {}
        return pydl.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups, act=act,
                           backend=backend, **kw)

    def fn(device, backend):
        ins = [_randn(*x_shape, seed=seed), _randn(*w_shape, seed=seed + 1, scale=0.5),
               _randn(w_shape[0], seed=seed + 2)]
        tol = TF32_TOL if tf32 else TOL[dtype]
        with _tf32(tf32):
            _compare(f"conv2d{x_shape}x{w_shape}", f, ins, [True, True, True], device, backend, dtype, tol,
                     layout=lambda t: layout(t) if t.dim() == 4 and t.shape == x_shape else t, seed=seed)
    return fn


# --------------------------------------------------------------------------------------------------
# rnn: the cells and the sequence ops (every weight, bias and state gradient)
# --------------------------------------------------------------------------------------------------

def _rnn_weights(kind, I, H, L, bidir, seed):
    G = 4 if kind == "lstm" else 3
    ws = []
    for layer in range(L):
        for _ in range(2 if bidir else 1):
            inp = I if layer == 0 else H * (2 if bidir else 1)
            s = seed + len(ws)
            ws += [_randn(G * H, inp, seed=s, scale=0.4), _randn(G * H, H, seed=s + 1, scale=0.4),
                   _randn(G * H, seed=s + 2, scale=0.2), _randn(G * H, seed=s + 3, scale=0.2)]
    return ws


def _rnn_seq(kind, T, B, I, H, L, bidir, dtype, seed=0):
    nw = len(_rnn_weights(kind, I, H, L, bidir, seed))

    def f(x, h0, c0, *ws, backend):
        if kind == "lstm":
            out, (hn, cn) = pydl.lstm(x, list(ws), h0, c0, num_layers=L, bidirectional=bidir, backend=backend)
            return out, hn, cn
        out, hn = pydl.gru(x, list(ws), h0, num_layers=L, bidirectional=bidir, backend=backend)
        return out, hn

    def fn(device, backend):
        D = 2 if bidir else 1
        ins = [_randn(T, B, I, seed=seed), _randn(L * D, B, H, seed=seed + 1, scale=0.5),
               _randn(L * D, B, H, seed=seed + 2, scale=0.5)] + _rnn_weights(kind, I, H, L, bidir, seed + 3)
        _compare(f"{kind}(T={T}, B={B}, I={I}, H={H}, L={L}, bidir={bidir})", f, ins,
                 [True, True, kind == "lstm"] + [True] * nw, device, backend, dtype, TOL[dtype], seed=seed)
    return fn


def _rnn_cell(kind, B, I, H, dtype, seed=0):
    def f(x, hx, cx, w_ih, w_hh, b_ih, b_hh, backend):
        if kind == "lstm":
            return pydl.lstm_cell(x, hx, cx, w_ih, w_hh, b_ih, b_hh, backend=backend)
        return pydl.gru_cell(x, hx, w_ih, w_hh, b_ih, b_hh, backend=backend)

    def fn(device, backend):
        ins = [_randn(B, I, seed=seed), _randn(B, H, seed=seed + 1, scale=0.5), _randn(B, H, seed=seed + 2, scale=0.5)]
        ins += _rnn_weights(kind, I, H, 1, False, seed + 3)
        _compare(f"{kind}_cell(B={B}, I={I}, H={H})", f, ins, [True, True, kind == "lstm", True, True, True, True],
                 device, backend, dtype, TOL[dtype], seed=seed)
    return fn


# --------------------------------------------------------------------------------------------------

def cases() -> List[Tuple[str, Callable[[str, str], None]]]:
    f32, f16, bf16, f64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
    out = [
        # act_stats: a whole tensor over 3 blocks (splits) with a ragged last one; per channel (outer > 1) in
        # every dtype and in channels_last; > 8187 bins: the histogram in global memory; an empty batch
        ("act_stats/whole/splits/fp32", _act_stats((5000,), f32, False, nonfinite=True)),
        ("act_stats/per_channel/fp16", _act_stats((3, 4, 37), f16, True)),
        ("act_stats/per_channel/channels_last/bf16", _act_stats((2, 3, 5, 7), bf16, True, layout=_channels_last)),
        ("act_stats/per_channel/fp64", _act_stats((2, 3, 300), f64, True)),
        ("act_stats/global_histogram/fp32", _act_stats((2, 2, 150), f32, True, bins=8200)),
        ("act_stats/global_histogram/fp16", _act_stats((300,), f16, False, bins=9000)),
        ("act_stats/empty/fp32", _act_stats((0, 3, 4), f32, True)),
        # batch_norm: the one-read cooperative forward/backward on a grid of 6 blocks (NCL); the two-kernel
        # path (PYDL_BN_ONEPASS=0) with several blocks per channel (N = 9 planes > 1 split); channels_last
        # (NLC kernels, refused by the one-read path); eval mode; the separable steps
        ("batch_norm/onepass/fp32", _bn((2, 3, 5, 7), f32)),
        ("batch_norm/onepass/fp16", _bn((2, 3, 40), f16, act="relu")),
        ("batch_norm/onepass/bf16", _bn((3, 2, 9), bf16)),
        ("batch_norm/onepass/fp64", _bn((2, 3, 4), f64, affine=False, act="none")),
        ("batch_norm/two_pass/fp32", _bn((9, 2, 300), f32, onepass=False)),
        ("batch_norm/two_pass/fp16", _bn((4, 3, 10), f16, onepass=False, act="relu")),
        ("batch_norm/channels_last/fp32", _bn((3, 35, 2, 3), f32, layout=_channels_last)),
        ("batch_norm/channels_last/bf16", _bn((2, 3, 3, 3), bf16, layout=_channels_last, act="relu")),
        ("batch_norm/eval/fp32", _bn((2, 3, 5), f32, training=False)),
        ("batch_norm/eval/fp16", _bn((2, 3, 5), f16, training=False, act="relu")),
        ("batch_norm/separable/fp32", _bn_separable((3, 4, 6), f32)),
        ("batch_norm/separable/channels_last/fp16", _bn_separable((2, 3, 2, 3), f16, layout=_channels_last)),
        # conv2d: SIMT (fp32 exact, fp64), tensor cores (fp16, bf16, TF32) with tail tiles (M, N, K not
        # multiples of 64 / 32) and grad_w split over pixel ranges; groups; depthwise; channels_last
        ("conv2d/simt/fp32", _conv((2, 3, 9, 9), (5, 3, 3, 3), f32, padding=1, act="general_relu")),
        ("conv2d/simt/fp64/strided", _conv((1, 2, 7, 8), (3, 2, 3, 2), f64, stride=2, dilation=(1, 2))),
        ("conv2d/wmma/fp16", _conv((2, 4, 9, 9), (6, 4, 3, 3), f16, padding=1, act="relu")),
        ("conv2d/wmma/bf16/groups", _conv((1, 4, 6, 6), (4, 2, 3, 3), bf16, groups=2)),
        ("conv2d/wmma/tf32/channels_last", _conv((2, 3, 8, 8), (4, 3, 3, 3), f32, tf32=True, layout=_channels_last)),
        ("conv2d/depthwise/fp32", _conv((2, 3, 7, 7), (3, 1, 3, 3), f32, padding=1, groups=3)),
        ("conv2d/depthwise/fp16", _conv((1, 2, 6, 5), (2, 1, 3, 3), f16, groups=2, act="relu")),
        # rnn: the fused gate kernels, B*H = 300 > 256 (two blocks, a ragged one) and tiny; every dtype
        ("rnn/lstm/fp32", _rnn_seq("lstm", 2, 3, 4, 100, 1, False, f32)),
        ("rnn/gru/fp32", _rnn_seq("gru", 2, 3, 4, 100, 1, False, f32)),
        ("rnn/lstm/fp16/bidir", _rnn_seq("lstm", 2, 2, 3, 4, 2, True, f16)),
        ("rnn/gru/bf16/bidir", _rnn_seq("gru", 2, 2, 3, 4, 2, True, bf16)),
        ("rnn/lstm/fp64", _rnn_seq("lstm", 2, 2, 3, 5, 1, False, f64)),
        ("rnn/gru/fp64", _rnn_seq("gru", 2, 2, 3, 5, 1, False, f64)),
        ("rnn/lstm_cell/fp32", _rnn_cell("lstm", 3, 4, 5, f32)),
        ("rnn/gru_cell/fp16", _rnn_cell("gru", 3, 4, 5, f16)),
        ("rnn/lstm_cell/bf16", _rnn_cell("lstm", 2, 3, 4, bf16)),
        ("rnn/gru_cell/fp64", _rnn_cell("gru", 2, 3, 4, f64)),
    ]
    return out
