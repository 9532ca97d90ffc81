"""Plug a learner's passing kernel into pydl and run it inside a real model.

Each pydl op keeps its per-backend implementations in a :class:`pydl.backends.Op`; ``Op.override(backend, fn)``
swaps one in for the duration of a ``with`` block. The exercises' kernels cover the *common* case of an op
(float32, contiguous NCHW, no fused activation), so each adapter below sends that case to the learner's
kernel and everything else to pydl's own Triton implementation -- and counts how often the learner's code
ran, so a plug-in that silently never fires is reported, not passed.

A plug-in step is SKIPPED (never passed) when the op's Triton backend has a shape the adapter does not know
or cannot run here: the adapters lean on the internals of batch_norm, lstm_cell and conv2d, which may change
without the course's exercises changing. (act_stats's plug-in, in its exercise.py, is strict: any error fails
it.)
"""
from __future__ import annotations

import copy
from typing import Tuple

import torch


def _op(name: str):
    from pydl import backends

    return backends.all_ops()[name]


def _close(a, b, atol=1e-4, rtol=1e-4) -> bool:
    return torch.allclose(a.detach().cpu().double(), b.detach().cpu().double(), atol=atol, rtol=rtol)


def _simple_bn(x, weight, act, use_batch_stats) -> bool:
    return (use_batch_stats and act == "none" and x.dim() == 4 and x.is_contiguous() and x.dtype == torch.float32
            and weight is not None)


def _bn_models(device):
    import torch.nn as nn

    import pydl

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3),
                        nn.BatchNorm2d(6), nn.ReLU()).to(device)
    with torch.no_grad():
        for m in ref:
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    mine = copy.deepcopy(ref)
    for i, m in enumerate(mine):
        if isinstance(m, nn.BatchNorm2d):
            new = pydl.nn.BatchNorm2d(m.num_features).to(device)
            new.load_state_dict(m.state_dict())
            mine[i] = new
    return ref, mine


def _batch_norm(mod, device, which: str) -> Tuple[str, str]:
    """which = 'forward' (exercise batch_norm_forward) or 'backward' (batch_norm_backward)."""
    import pydl

    op = _op("batch_norm")
    try:
        own = op.impl(op.resolve("triton", device))
        own.forward, own.backward, own._replace  # noqa: B018 - the shape the adapter relies on
    except Exception as e:  # noqa: BLE001
        return "skip", f"pydl's batch_norm backend has a shape this adapter does not know ({type(e).__name__}: {e})"
    calls = []

    def forward(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub, maxv, *a, **k):
        if not (_simple_bn(x, weight, act, use_batch_stats) and bias is not None):
            return own.forward(x, weight, bias, running_mean, running_var, use_batch_stats, eps, act, leak, sub,
                               maxv, *a, **k)
        C = x.shape[1]
        y, mean, invstd = torch.empty_like(x), x.new_empty(C), x.new_empty(C)
        mod.batch_norm_forward(x, weight, bias, eps, y, mean, invstd, 64)
        calls.append(tuple(x.shape))
        var = (1.0 / (invstd * invstd) - eps).clamp_min(0)  # the running-variance update needs var
        return y, mean, invstd, var

    def backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad, *a, **k):
        if not (_simple_bn(x, weight, act, use_batch_stats) and input_grad):
            return own.backward(dy, x, mean, invstd, weight, bias, use_batch_stats, act, leak, sub, maxv, input_grad,
                                *a, **k)
        C = x.shape[1]
        dx, dw, db = torch.empty_like(x), x.new_empty(C), x.new_empty(C)
        mod.batch_norm_backward(x, dy.contiguous(), mean.float(), invstd.float(), weight, dx, dw, db, 64)
        calls.append(tuple(x.shape))
        return dx, dw, db

    kernels = own._replace(forward=forward) if which == "forward" else own._replace(backward=backward)
    ref, mine = _bn_models(device)
    x = torch.randn(4, 3, 8, 8, device=device)
    problems = []
    with op.override("triton", kernels), pydl.backend("triton"):
        if which == "forward":
            with torch.no_grad():
                y_mine, y_ref = mine(x), ref(x)
        else:
            xm, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
            y_mine, y_ref = mine(xm), ref(xr)
            g = torch.randn_like(y_ref)
            y_mine.backward(g)
            y_ref.backward(g)
            if not _close(xm.grad, xr.grad):
                problems.append("the input gradient differs from torch's")
            for (name, pm), pr in zip(mine.named_parameters(), ref.parameters()):
                if not _close(pm.grad, pr.grad):
                    problems.append(f"the gradient of {name} differs from torch's")
    if not _close(y_mine, y_ref):
        problems.append("the model's output differs from the same model with torch.nn.BatchNorm2d")
    for i in (1, 4):
        if not (_close(mine[i].running_mean, ref[i].running_mean) and _close(mine[i].running_var, ref[i].running_var)):
            problems.append(f"layer {i}: running statistics differ from torch's")
    if not calls:
        return "skip", (f"pydl's batch_norm never handed this model to your {which} kernel (its dispatch changed?): "
                        "not run, so not passed")
    if problems:
        return "fail", "\n".join(problems)
    what = "forward" if which == "forward" else "backward (a training step's gradients)"
    return "pass", (f"pydl.nn.BatchNorm2d ran YOUR {which} kernel {len(calls)} times in a Conv-BN-ReLU x2 model's "
                    f"{what}; outputs, running statistics" + (" and gradients" if which == "backward" else "")
                    + " match torch.nn.BatchNorm2d")


def _lstm_cell(mod, device) -> Tuple[str, str]:
    import torch.nn as nn

    import pydl

    op = _op("lstm_cell")
    try:
        own = op.impl(op.resolve("triton", device))
        LSTMCell = pydl.nn.LSTMCell
    except Exception as e:  # noqa: BLE001
        return "skip", f"pydl's lstm_cell is not usable here ({type(e).__name__}: {e})"
    calls = []

    def cell(x, hx, cx, w_ih, w_hh, b_ih, b_hh):
        if x.dtype != torch.float32:
            return own(x, hx, cx, w_ih, w_hh, b_ih, b_hh)
        # pydl's op also returns a workspace its backward uses; it comes from pydl's own kernel (no grad here)
        extra = own(x, hx, cx, w_ih, w_hh, b_ih, b_hh)[2]
        B, H = cx.shape
        zeros = torch.zeros(4 * H, device=x.device)
        h, c = torch.empty_like(cx), torch.empty_like(cx)
        mod.lstm_cell(x.contiguous(), hx.contiguous(), cx.contiguous(), w_ih, w_hh,
                      zeros if b_ih is None else b_ih, zeros if b_hh is None else b_hh, h, c, 64)
        calls.append((B, H))
        return h, c, extra

    torch.manual_seed(0)
    ref = nn.LSTMCell(5, 7).to(device)
    mine = LSTMCell(5, 7).to(device)
    mine.load_state_dict(ref.state_dict())
    xs = torch.randn(6, 3, 5, device=device)
    h_r = c_r = h_m = c_m = torch.zeros(3, 7, device=device)
    with torch.no_grad(), op.override("triton", cell), pydl.backend("triton"):
        for t in range(xs.shape[0]):  # a 6-step recurrence: errors would compound
            h_r, c_r = ref(xs[t], (h_r, c_r))
            h_m, c_m = mine(xs[t], (h_m, c_m))
    if not calls:
        return "skip", "pydl.nn.LSTMCell never called your kernel (its dispatch changed?): not run, so not passed"
    if not (_close(h_m, h_r, 1e-5, 1e-4) and _close(c_m, c_r, 1e-5, 1e-4)):
        return "fail", "after 6 steps, h or c differs from torch.nn.LSTMCell's"
    return "pass", (f"pydl.nn.LSTMCell ran YOUR kernel for all {len(calls)} steps of a recurrence; h and c match "
                    "torch.nn.LSTMCell")


def _conv2d(mod, device) -> Tuple[str, str]:
    import torch.nn as nn

    import pydl

    op = _op("conv2d")
    try:
        own = op.impl(op.resolve("triton", device))
        Conv2d = pydl.nn.Conv2d
    except Exception as e:  # noqa: BLE001
        return "skip", f"pydl's conv2d is not usable here ({type(e).__name__}: {e})"
    calls = []

    def conv(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact, *a, **k):
        simple = (groups == 1 and list(dilation) == [1, 1] and stride[0] == stride[1] and padding[0] == padding[1]
                  and act == "none" and x.dtype == torch.float32 and x.is_contiguous() and not a and not k)
        if not simple:
            return own(x, w, b, stride, padding, dilation, groups, act, leak, sub, maxv, save_preact, *a, **k)
        N, _, H, W = x.shape
        K, _, R, S = w.shape
        P = (H + 2 * padding[0] - R) // stride[0] + 1
        Q = (W + 2 * padding[1] - S) // stride[1] + 1
        y = x.new_empty((N, K, P, Q))
        mod.conv2d(x, w.contiguous(), y, stride[0], padding[0], 32, 32, 32)
        if b is not None:
            y += b[None, :, None, None]  # the exercise's kernel has no bias: the adapter adds it
        calls.append(tuple(x.shape))
        return y, x.new_empty((0,))

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2),
                        nn.ReLU(), nn.Conv2d(6, 5, 1)).to(device)
    mine = copy.deepcopy(ref)
    for i, m in enumerate(mine):
        if isinstance(m, nn.Conv2d):
            new = Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding).to(device)
            new.load_state_dict(m.state_dict())
            mine[i] = new
    x = torch.randn(2, 3, 9, 9, device=device)
    with torch.no_grad(), op.override("triton", conv), pydl.backend("triton"):
        y_mine, y_ref = mine(x), ref(x)
    if not calls:
        return "skip", "pydl.nn.Conv2d never called your kernel (its dispatch changed?): not run, so not passed"
    tol = 1e-4 if device == "cpu" else 3e-2
    if not _close(y_mine, y_ref, tol, tol):
        return "fail", "the model's output differs from the same model with torch.nn.Conv2d"
    return "pass", (f"pydl.nn.Conv2d ran YOUR kernel for {len(calls)} convolutions (3x3 pad 1, 3x3 stride 2, 1x1; "
                    "bias added by the adapter) in a small CNN; the output matches torch.nn.Conv2d")


def _guarded(fn, op_name, *args):
    """These ops belong to other parts of pydl and may change shape: an adapter that no longer fits is
    reported as SKIPPED with the reason (the learner's kernel already passed the CPU level), never as passed."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0][:300] if str(e) else ""
        return "skip", (f"pydl's {op_name} did not accept the plug-in ({type(e).__name__}: {first}); "
                        "not run, so not passed")


def batch_norm(mod, device, which: str) -> Tuple[str, str]:
    """which = 'forward' (exercise batch_norm_forward) or 'backward' (batch_norm_backward)."""
    return _guarded(_batch_norm, "batch_norm", mod, device, which)


def lstm_cell(mod, device) -> Tuple[str, str]:
    return _guarded(_lstm_cell, "lstm_cell", mod, device)


def conv2d(mod, device) -> Tuple[str, str]:
    return _guarded(_conv2d, "conv2d", mod, device)
