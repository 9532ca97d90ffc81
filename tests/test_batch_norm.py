"""batch_norm op: every CPU-usable backend against torch (F.batch_norm + the activation), in float64.

How the comparisons work: pydl runs on the test's dtype; torch's F.batch_norm runs on the *same values*
upcast to float64 (so the expectation carries no rounding of its own), and the difference is measured
relative to the size of the quantity (max |expected|, at least 1).

Tolerances, by dtype of x:
* float64: 1e-10 -- the same math in fp64, only summation order differs.
* float32: 2e-5 (outputs), 5e-5 (gradients) -- fp32 accumulation over <= a few thousand values per channel,
  merged pairwise (so error ~ a few ulps * log(n)); the gradient adds a second reduction.
* float16 / bfloat16: one rounding of the fp32 result to the storage dtype dominates: 2 ulps of it at 1
  (fp16 ulp 2^-10 -> 2e-3; bf16 ulp 2^-7 -> 1.6e-2). dweight/dbias are sums over the batch of
  dy * xhat; they come out in fp32 parameters' dtype, with the same 2-ulp bound on the stored inputs.
Running stats use the output tolerance. (Ill-conditioned channels -- two nearly equal values, var ~ eps --
amplify the fp32 rounding of x - mean by invstd in every implementation, torch's included; the fixed seeds
keep the random shapes away from that corner rather than loosening every tolerance for it.)
"""
import io
import math
import random
import sys

import pytest
import torch
import torch.nn.functional as F

import pydl
from pydl.ops import _activation
from pydl.ops.batch_norm import batch_norm_reference, kernels

from helpers import per_backend, require_backend, slow

OP = "batch_norm"
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GTOL = {torch.float64: 1e-9, torch.float32: 5e-5, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}
ACTS = [("none", None, None, None), ("relu", None, None, None), ("general_relu", 0.1, 0.4, 2.0)]


def close(got, want, tol, what=""):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g}"


def torch_bn(x, rm, rv, w, b, training, momentum, eps, act, leak, sub, maxv):
    """The expectation: torch's own batch norm, then the activation (pydl/ops/_activation.py's reference)."""
    y = F.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    lk, sb, mx = _activation.params(act, leak, sub, maxv)
    return _activation.apply(y, act, lk, sb, mx)


def layout(x, kind):
    if kind == "channels_last":
        if x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        if x.dim() == 3:  # (N, L, C) memory, seen as (N, C, L): a transposed sequence
            return x.transpose(1, 2).contiguous().transpose(1, 2)
        return x
    if kind == "sliced":  # the same values, not dense: every other element of a wider tensor
        wide = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype, device=x.device)
        return wide[..., ::2].copy_(x)
    return x.contiguous()


def random_shape(rng, rank, tiny):
    n = rng.randint(2, 3 if tiny else 6)
    c = rng.randint(1, 3 if tiny else 7)
    sp = [rng.choice([1, 3, 5] if tiny else [1, 2, 3, 5, 7, 9]) for _ in range(rank - 2)]
    return (n, c, *sp)


def check_case(backend, x, training, act=("none", None, None, None), affine=True, momentum=0.1, steps=1,
               dtype=None):
    """Run `steps` training (or one eval) steps with pydl and with torch in float64; compare y, running stats,
    num_batches_tracked-free momentum updates, and all three gradients."""
    dtype = x.dtype
    C = x.shape[1]
    pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    w = (torch.rand(C, dtype=pdt) + 0.5).requires_grad_() if affine else None
    b = torch.randn(C, dtype=pdt).requires_grad_() if affine else None
    rm, rv = torch.randn(C, dtype=pdt), torch.rand(C, dtype=pdt) + 0.5
    rm64, rv64 = rm.double(), rv.double()
    name, leak, sub, maxv = act
    for step in range(steps):
        xs = x if step == 0 else layout(torch.randn(x.shape, dtype=torch.float64).to(dtype), "contiguous")
        xg = xs.detach().clone().requires_grad_()
        y = pydl.batch_norm(xg, rm, rv, w, b, training, momentum, 1e-5, name, leak, sub, maxv, backend=backend)
        x64 = xs.detach().double().requires_grad_()
        w64 = w.detach().double().requires_grad_() if affine else None
        b64 = b.detach().double().requires_grad_() if affine else None
        y64 = torch_bn(x64, rm64, rv64, w64, b64, training, momentum, 1e-5, name, leak, sub, maxv)
        assert y.dtype == dtype and y.shape == x.shape
        if xs.is_contiguous(memory_format=torch.channels_last) and not xs.is_contiguous():
            assert y.is_contiguous(memory_format=torch.channels_last), "channels_last in, channels_last out"
        close(y, y64, TOL[dtype], f"y (step {step})")
        close(rm, rm64, TOL[dtype], "running_mean")
        close(rv, rv64, TOL[dtype], "running_var")
        dy = torch.randn(x.shape, dtype=torch.float64)
        ins = [xg] + ([w, b] if affine else [])
        ins64 = [x64] + ([w64, b64] if affine else [])
        grads = torch.autograd.grad(y, ins, dy.to(dtype))
        grads64 = torch.autograd.grad(y64, ins64, dy)
        for g, g64, nm in zip(grads, grads64, ("dx", "dweight", "dbias")):
            assert g.dtype == (dtype if nm == "dx" else pdt)
            close(g, g64, GTOL[dtype], nm)


@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("training", [True, False])
def test_parity_with_torch_random_shapes(cpu_backend, rank, kind, training):
    require_backend(cpu_backend, "cpu", OP)
    tiny = slow(cpu_backend)
    rng = random.Random(1000 * rank + len(kind) + training)
    for _ in range(2 if tiny else 4):
        shape = random_shape(rng, rank, tiny)
        x = layout(torch.randn(shape) * 2 + 0.5, kind)
        check_case(cpu_backend, x, training)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act", ACTS, ids=[a[0] for a in ACTS])
@pytest.mark.parametrize("affine", [True, False])
def test_fused_activation(cpu_backend, act, affine, training, kind):
    require_backend(cpu_backend, "cpu", OP)
    shape = (3, 2, 3, 5) if slow(cpu_backend) else (5, 4, 7, 9)
    check_case(cpu_backend, layout(torch.randn(shape), kind), training, act=act, affine=affine)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(cpu_backend, dtype, kind):
    require_backend(cpu_backend, "cpu", OP)
    shape = (3, 2, 3, 3) if slow(cpu_backend) else (4, 5, 6, 7)
    x = layout(torch.randn(shape, dtype=torch.float64).to(dtype), kind)
    check_case(cpu_backend, x, True, act=ACTS[2])
    check_case(cpu_backend, x, False)


@pytest.mark.parametrize("momentum", [0.1, None, 0.0, 1.0])
def test_running_stats_over_steps(cpu_backend, momentum):
    """Several training steps: running stats (momentum or the cumulative average) track torch's module."""
    require_backend(cpu_backend, "cpu", OP)
    shape = (3, 2, 3, 3) if slow(cpu_backend) else (6, 5, 4, 3)
    ours = pydl.nn.BatchNorm2d(shape[1], momentum=momentum, backend=cpu_backend)
    ref = torch.nn.BatchNorm2d(shape[1], momentum=momentum).double()
    for step in range(4):
        x = torch.randn(shape) * (step + 1) + step
        close(ours(x), ref(x.double()), TOL[torch.float32], f"y step {step}")
        close(ours.running_mean, ref.running_mean, TOL[torch.float32], "running_mean")
        close(ours.running_var, ref.running_var, TOL[torch.float32], "running_var")
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
    ours.eval(), ref.eval()
    x = torch.randn(shape)
    close(ours(x), ref(x.double()), TOL[torch.float32], "eval y")


def test_large_mean_does_not_cancel(cpu_backend):
    """|mean| >> std: a one-pass sum-of-squares variance would lose every digit here (and may go negative)."""
    require_backend(cpu_backend, "cpu", OP)
    shape = (4, 2, 5, 5) if slow(cpu_backend) else (16, 3, 33, 31)
    x = torch.randn(shape) + 3e3
    mean, m2 = pydl.batch_norm_stats(x, backend=cpu_backend)
    x64 = x.double()
    close(mean, x64.mean((0, 2, 3)), 1e-6)
    var = m2 / (x.numel() // x.shape[1])
    want = x64.var((0, 2, 3), correction=0)
    assert float(((var - want).abs() / want).max()) < 1e-3  # fp32 inputs near 3e3 carry ~2e-4 absolute error


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_separable_steps_compose_to_the_fused_op(cpu_backend, kind):
    """stats -> apply and backward_reduce -> backward_elemt (SyncBatchNorm's building blocks) give what the
    fused forward/backward give."""
    require_backend(cpu_backend, "cpu", OP)
    shape = (3, 3, 3, 5) if slow(cpu_backend) else (5, 4, 7, 6)
    x = layout(torch.randn(shape), kind)
    w, b = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
    dy = layout(torch.randn(shape), kind)
    n = x.numel() // shape[1]
    mean, m2 = pydl.batch_norm_stats(x, backend=cpu_backend)
    invstd = torch.rsqrt(m2 / n + 1e-5)
    y = pydl.batch_norm_apply(x, mean, invstd, w, b, act="general_relu", leak=0.2, sub=0.3, maxv=1.5,
                              backend=cpu_backend)
    y_ref, mean_ref, invstd_ref, var_ref = torch.ops.pydl.batch_norm(x, w, b, None, None, True, 1e-5,
                                                                     "general_relu", 0.2, 0.3, 1.5, "reference")
    close(mean, mean_ref, 1e-6, "mean")
    close(m2 / n, var_ref, 1e-5, "var")
    close(y, y_ref, 2e-5, "apply")
    s1, s2 = pydl.batch_norm_backward_reduce(dy, x, mean, invstd, w, b, act="general_relu", leak=0.2, sub=0.3,
                                             maxv=1.5, backend=cpu_backend)
    dx = pydl.batch_norm_backward_elemt(dy, x, mean, invstd, w, b, s1, s2, n, act="general_relu", leak=0.2,
                                        sub=0.3, maxv=1.5, backend=cpu_backend)
    dx_ref, dw_ref, db_ref = torch.ops.pydl.batch_norm_backward(dy, x, mean, invstd, w, b, True, "general_relu",
                                                                0.2, 0.3, 1.5, True, "reference")
    close(s1, db_ref, 5e-5, "sum_dz")
    close(s2 * invstd, dw_ref, 5e-5, "sum_dz_xmu")
    close(dx, dx_ref, 5e-5, "dx")


def _gradcheck_case(case):
    training, act, kind = case
    return f"{'train' if training else 'eval'}-{act[0]}-{kind}"


def _bn_float64(backend, training, act):
    """f(x, w, b) -> batch_norm on `backend` with fixed float64 running stats, and its inputs (3x2x2x3)."""
    x = torch.randn(3, 2, 2, 3, dtype=torch.float64)
    w = (torch.rand(2, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(2, dtype=torch.float64).requires_grad_()
    rm, rv = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5

    def f(x, w, b):
        return pydl.batch_norm(x, None if training else rm, None if training else rv, w, b, training,
                               act=act[0], leak=act[1], sub=act[2], maxv=act[3], backend=backend)

    return f, x, w, b


# the interpreter and the emulator run each of gradcheck's ~100 launches slowly: a cover, not every case
@pytest.mark.parametrize("backend, training, act, kind", per_backend(
    [(t, a, k) for t in (True, False) for a in ACTS for k in ("contiguous", "channels_last")],
    [(True, ACTS[2], "channels_last"), (True, ACTS[1], "contiguous"), (False, ACTS[2], "contiguous")],
    _gradcheck_case))
def test_gradcheck_float64(backend, training, act, kind):
    require_backend(backend, "cpu", OP)
    f, x, w, b = _bn_float64(backend, training, act)
    x = layout(x, kind).requires_grad_()
    # fast_mode checks random projections of the Jacobian: the same bug-finding power here, far
    # fewer backward calls
    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=slow(backend))


def test_gradcheck_float64_no_affine_2d(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pydl.batch_norm(x, training=True, backend=cpu_backend), (x,))


@pytest.mark.parametrize("backend, training, act", per_backend(
    [(t, a) for t in (True, False) for a in (ACTS[0], ACTS[2])], [(True, ACTS[2])],
    lambda case: f"{'train' if case[0] else 'eval'}-{case[1][0]}"))
def test_gradgradcheck_float64(backend, training, act):
    """Double backward (e.g. gradient penalties) must be right, not silently zero: it differentiates the
    reference formulas of the backward, with mean and invstd as functions of x in training."""
    require_backend(backend, "cpu", OP)
    f, x, w, b = _bn_float64(backend, training, act)
    assert torch.autograd.gradgradcheck(f, (x.requires_grad_(), w, b), fast_mode=slow(backend))


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_opcheck(cpu_backend, kind):
    require_backend(cpu_backend, "cpu", OP)
    x = layout(torch.randn(2, 3, 2, 3), kind)
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    ops = torch.ops.pydl
    xg = x.clone().requires_grad_()
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    act = ("general_relu", 0.1, 0.2, 1.0)
    torch.library.opcheck(ops.batch_norm.default, (xg, wg, bg, None, None, True, 1e-5, *act, cpu_backend))
    torch.library.opcheck(ops.batch_norm.default, (xg, wg, bg, rm, rv, False, 1e-5, *act, cpu_backend))
    y, mean, invstd, var = ops.batch_norm(x, w, b, None, None, True, 1e-5, *act, cpu_backend)
    dy = torch.randn_like(x)
    torch.library.opcheck(ops.batch_norm_backward.default,
                          (dy, x, mean, invstd, w, b, True, *act, True, cpu_backend))
    if kind == "channels_last":
        return  # the layout matters to the ops above; the steps below are checked once
    torch.library.opcheck(ops.batch_norm_update_running.default,
                          (rm.clone(), rv.clone(), mean, var, 12, 0.1, None, cpu_backend))
    torch.library.opcheck(ops.batch_norm_update_running.default,
                          (rm.clone(), rv.clone(), mean, var, 12, None, torch.tensor(3), cpu_backend))
    torch.library.opcheck(ops.batch_norm_stats.default, (x, cpu_backend))
    torch.library.opcheck(ops.batch_norm_apply.default, (x, mean, invstd, w, b, *act, cpu_backend))
    s1, s2 = ops.batch_norm_backward_reduce(dy, x, mean, invstd, w, b, *act, cpu_backend)
    torch.library.opcheck(ops.batch_norm_backward_reduce.default, (dy, x, mean, invstd, w, b, *act, cpu_backend))
    torch.library.opcheck(ops.batch_norm_backward_elemt.default,
                          (dy, x, mean, invstd, w, b, s1, s2, 12, *act, cpu_backend))


def test_torch_compile_fullgraph():
    """The auto path, traced without graph breaks: forward, running update (a mutating op) and backward."""
    rm, rv = torch.zeros(3), torch.ones(3)
    rm2, rv2 = rm.clone(), rv.clone()
    w = torch.rand(3, requires_grad=True)

    def f(x, rm, rv):
        return pydl.batch_norm(x * 2, rm, rv, w, None, True, 0.1, act="relu").sum()

    x = torch.randn(4, 3, 5)
    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(x, rm, rv)
    loss.backward()
    want = F.relu(F.batch_norm(x * 2, rm2, rv2, w.detach(), None, True, 0.1)).sum()
    assert torch.allclose(loss, want, atol=1e-4)
    assert torch.allclose(rm, rm2, atol=1e-6) and torch.allclose(rv, rv2, atol=1e-6)
    assert w.grad is not None and w.grad.shape == (3,)


def test_zero_channels_and_zero_length(cpu_backend):
    """C = 0 and L = 0: empty outputs of the right shape, no crash."""
    require_backend(cpu_backend, "cpu", OP)
    x = torch.randn(3, 0, 4, requires_grad=True)
    y = pydl.batch_norm(x, torch.zeros(0), torch.ones(0), torch.ones(0), torch.zeros(0), True, backend=cpu_backend)
    assert y.shape == (3, 0, 4)
    y.sum().backward()
    x = torch.randn(3, 2, 0)
    y = pydl.batch_norm(x, torch.zeros(2), torch.ones(2), None, None, False, backend=cpu_backend)
    assert y.shape == (3, 2, 0)


def test_empty_batch(cpu_backend):
    """N = 0: an empty output; running stats untouched, as torch leaves them."""
    require_backend(cpu_backend, "cpu", OP)
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = pydl.batch_norm(x, rm, rv, torch.ones(3), torch.zeros(3), True, backend=cpu_backend)
    assert y.shape == x.shape
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("training", [True, False])
def test_reference_function_matches_torch(training):
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 1
    rm2, rv2 = rm.clone(), rv.clone()
    w, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    got = batch_norm_reference(x, rm, rv, w, b, training, 0.3, 1e-3, "general_relu", 0.1, 0.2, 1.0)
    want = torch_bn(x, rm2, rv2, w, b, training, 0.3, 1e-3, "general_relu", 0.1, 0.2, 1.0)
    close(got, want, 1e-12), close(rm, rm2, 1e-12), close(rv, rv2, 1e-12)


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, exc, match", [
    (dict(x=torch.randn(1, 3)), ValueError, "Expected more than 1 value per channel when training"),
    (dict(x=torch.randn(1, 3, 1, 1)), ValueError, "Expected more than 1 value per channel when training"),
    (dict(x=torch.arange(24).reshape(2, 3, 4)), TypeError, "x must be float16"),
    (dict(x=torch.randn(6)), ValueError, "rank >= 2"),
    (dict(weight=torch.ones(4)), ValueError, "weight must have shape \\(3,\\)"),
    (dict(bias=torch.ones(3, 1)), ValueError, "bias must have shape"),
    (dict(running_mean=torch.zeros(5)), ValueError, "running_mean must have shape"),
    (dict(running_var=torch.ones(2)), ValueError, "running_var must have shape"),
    (dict(weight=torch.ones(3, dtype=torch.float64)), TypeError, "weight has dtype torch.float64"),
    (dict(running_var=torch.ones(3, dtype=torch.float16)), TypeError, "running_var has dtype"),
    (dict(weight=torch.ones(3, device="meta")), ValueError, "weight is on meta"),
    (dict(act="gelu"), ValueError, "act must be one of"),
    (dict(eps=-1.0), ValueError, "eps must be > 0 in training"),
    (dict(eps=0.0), ValueError, "eps must be > 0 in training"),  # torch's rule: eps > 0 when training
    (dict(eps=-1.0, training=False), ValueError, "eps must be >= 0"),
    (dict(running_var=None), ValueError, "both running_mean and running_var"),
])
def test_bad_input(cpu_backend, bad, exc, match):
    require_backend(cpu_backend, "cpu", OP)
    args = dict(x=torch.randn(2, 3, 4), running_mean=torch.zeros(3), running_var=torch.ones(3),
                weight=torch.ones(3), bias=torch.zeros(3), training=True, eps=1e-5, act="none")
    args.update(bad)
    x = args.pop("x")
    with pytest.raises(exc, match=match):
        pydl.batch_norm(x, backend=cpu_backend, **args)


def test_eval_needs_running_stats_and_one_value_is_fine_in_eval(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        torch.ops.pydl.batch_norm(torch.randn(2, 3), None, None, None, None, False, 1e-5, "none", 0.0, 0.0,
                                  math.inf, cpu_backend)
    x = torch.randn(1, 3)  # one value per channel is fine with running stats
    y = pydl.batch_norm(x, torch.zeros(3), torch.ones(3), training=False, backend=cpu_backend)
    close(y, x / math.sqrt(1 + 1e-5), 1e-6)


def test_mixed_precision_params(cpu_backend):
    """fp16/bf16 activations with fp32 parameters and running stats (what autocast gives you)."""
    require_backend(cpu_backend, "cpu", OP)
    x = torch.randn(3, 2, 3, 3).to(torch.bfloat16)
    check_case(cpu_backend, x, True)  # check_case uses fp32 params for half dtypes


def test_cpu_statistics_are_ordinary_tensors():
    """The CPU forward allocates mean / invstd / var with malloc (csrc/cpu/batch_norm.cpp, SmallAllocator: it
    keeps glibc from carving them out of the previous output's free chunk). They must still behave as any
    CPU tensor: separate storages (no output aliases another), resizable, copyable, serialisable, freed."""
    require_backend("cpu", "cpu", OP)
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    y, mean, invstd, var = torch.ops.pydl_cpu.batch_norm_forward(x, None, None, None, None, True, 1e-5, "none",
                                                                 0, 0, math.inf)
    want_var, want_mean = torch.var_mean(x, dim=(0, 2), correction=0)
    assert torch.allclose(mean, want_mean) and torch.allclose(var, want_var)
    assert len({t.untyped_storage().data_ptr() for t in (mean, invstd, var)}) == 3
    buf = io.BytesIO()
    torch.save((mean, var), buf)
    buf.seek(0)
    m2, v2 = torch.load(buf)
    assert torch.equal(m2, mean) and torch.equal(v2, var)
    keep = mean.clone()
    mean.resize_(1000)  # through the tensor's own allocator
    assert torch.equal(mean[:3], keep) and mean.numel() == 1000
    assert torch.equal(invstd, torch.rsqrt(var + 1e-5))


def test_cpp_kernels_check_their_own_arguments():
    """The compiled op is callable directly (torch.ops.pydl_cpu.*): it must validate, not crash."""
    require_backend("cpu", "cpu", OP)
    x = torch.randn(2, 3, 4)
    k = torch.ops.pydl_cpu
    inf = math.inf
    with pytest.raises(TypeError, match="batch_norm"):
        k.batch_norm_forward(torch.arange(6).reshape(2, 3), None, None, None, None, True, 1e-5, "none", 0, 0, inf)
    with pytest.raises(ValueError, match="weight"):
        k.batch_norm_forward(x, torch.ones(5), None, None, None, True, 1e-5, "none", 0, 0, inf)
    with pytest.raises(ValueError, match="running_mean"):
        k.batch_norm_forward(x, None, None, None, None, False, 1e-5, "none", 0, 0, inf)
    with pytest.raises(ValueError, match="act"):
        k.batch_norm_forward(x, None, None, None, None, True, 1e-5, "swish", 0, 0, inf)
    with pytest.raises(ValueError, match="mean"):
        k.batch_norm_apply(x, torch.zeros(2), torch.ones(3), None, None, "none", 0, 0, inf)
    with pytest.raises(ValueError, match="dy"):
        k.batch_norm_backward(torch.randn(2, 3, 5), x, torch.zeros(3), torch.ones(3), None, None, True, "none",
                              0, 0, inf, True)


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(8, 64, 33, 31), (2, 3, 181, 177), (4096, 33)])
def test_cpu_large_multithreaded(shape, kind):
    """Sizes that split into many parallel tasks, both layouts and the fused per-channel path."""
    require_backend("cpu", "cpu", OP)
    x = layout(torch.randn(shape) * 3 + 1, kind)
    check_case("cpu", x, True, act=ACTS[2])


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_triton_block_sizes(poison, kind):
    """Results must not depend on the launch shape; `poison` NaN-fills every torch.empty first, so an
    element a kernel forgot to write shows up."""
    require_backend("triton", "cpu", OP)
    from pydl.kernels import batch_norm as tk

    x = layout(torch.randn(3, 5, 3, 7), kind)
    w, b = torch.rand(5) + 0.5, torch.randn(5)
    dy = layout(torch.randn(3, 5, 3, 7), kind)
    want = kernels("reference", "cpu").forward(x, w, b, None, None, True, 1e-5, "relu", 0.0, 0.0, math.inf)
    want_b = kernels("reference", "cpu").backward(dy, x, want[1], want[2], w, b, True, "relu", 0.0, 0.0,
                                                  math.inf, True)
    # two tile sizes x one or several programs per channel (splits > 1 exercises the partial/finalize
    # merge, which a GPU always uses and the interpreter's default of one split would skip)
    for block, splits in ((16, 3), (64, 1)) if kind == "contiguous" else ((16, 1), (64, 2)):
        got = tk.forward(x, w, b, None, None, True, 1e-5, "relu", 0.0, 0.0, math.inf, block=block,
                         splits=splits)
        for g, r, nm in zip(got, want, ("y", "mean", "invstd", "var")):
            close(g, r, 2e-5, f"{nm} block={block} splits={splits}")
        got_b = tk.backward(dy, x, want[1], want[2], w, b, True, "relu", 0.0, 0.0, math.inf, True, block=block,
                            splits=splits)
        for g, r, nm in zip(got_b, want_b, ("dx", "dw", "db")):
            close(g, r, 5e-5, f"{nm} block={block} splits={splits}")
        mean, m2 = tk.stats(x, block=block, splits=splits)
        close(m2 / (x.numel() // 5), want[3], 2e-5, "stats M2")


# --------------------------------------------------------------------------------------------------
# GPU (skipped here; scripts/gpu_check.sh runs them)
# --------------------------------------------------------------------------------------------------

def _gpu_case(backend, shape, kind, dtype, training, act):
    # built on the GPU: .cuda() of a non-dense CPU tensor would hand back a contiguous copy
    x = layout(torch.randn(shape, dtype=torch.float64, device="cuda").to(dtype), kind)
    if kind == "sliced":
        assert not x.is_contiguous()
    C = shape[1]
    pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    w = (torch.rand(C, dtype=pdt, device="cuda") + 0.5).requires_grad_()
    b = torch.randn(C, dtype=pdt, device="cuda").requires_grad_()
    rm, rv = torch.randn(C, dtype=pdt, device="cuda"), torch.rand(C, dtype=pdt, device="cuda") + 0.5
    rm64, rv64 = rm.double().cpu(), rv.double().cpu()
    xg = x.detach().clone().requires_grad_()
    y = pydl.batch_norm(xg, rm, rv, w, b, training, 0.1, 1e-5, *act, backend=backend)
    x64 = x.detach().double().cpu().requires_grad_()
    w64, b64 = w.detach().double().cpu().requires_grad_(), b.detach().double().cpu().requires_grad_()
    y64 = torch_bn(x64, rm64, rv64, w64, b64, training, 0.1, 1e-5, *act)
    if kind == "channels_last" and len(shape) == 4:
        assert y.is_contiguous(memory_format=torch.channels_last)
    close(y, y64, TOL[dtype], "y")
    close(rm, rm64, TOL[dtype], "running_mean")
    close(rv, rv64, TOL[dtype], "running_var")
    dy = torch.randn(shape, dtype=torch.float64)
    g = torch.autograd.grad(y, (xg, w, b), dy.to(dtype).cuda())
    g64 = torch.autograd.grad(y64, (x64, w64, b64), dy)
    for a, e, nm in zip(g, g64, ("dx", "dweight", "dbias")):
        close(a, e, GTOL[dtype], nm)


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("onepass", ["1", "0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_gpu_parity(gpu_backend, dtype, onepass, kind, training, monkeypatch):
    """onepass: the CUDA backend's one-read training forward (x kept in shared memory across a grid barrier)
    or, with PYDL_BN_ONEPASS=0, its two-kernel forward."""
    require_backend(gpu_backend, "cuda", OP)
    if gpu_backend != "cuda" and onepass == "0":
        pytest.skip("the switch is the CUDA backend's")
    monkeypatch.setenv("PYDL_BN_ONEPASS", onepass)
    for shape in [(8, 32, 17, 19), (2, 3, 5, 7), (64, 16), (4, 7, 33), (3, 1, 1, 1), (2, 5, 128, 129)]:
        for act in ACTS:
            _gpu_case(gpu_backend, shape, kind, dtype, training, act)


@pytest.mark.gpu
def test_gpu_large_and_cancellation(gpu_backend):
    require_backend(gpu_backend, "cuda", OP)
    for kind in ("contiguous", "channels_last"):
        _gpu_case(gpu_backend, (64, 64, 32, 32), kind, torch.float32, True, ACTS[2])
        _gpu_case(gpu_backend, (32, 8, 64, 64), kind, torch.bfloat16, True, ACTS[1])
    # too big for the one-pass forward's shared memory (~30 MB on an H100): the two-kernel path
    _gpu_case(gpu_backend, (64, 128, 32, 32), "contiguous", torch.float32, True, ACTS[0])
    x = (torch.randn(16, 3, 65, 63, device="cuda") + 3e3)
    mean, m2 = pydl.batch_norm_stats(x, backend=gpu_backend)
    want = x.double().var((0, 2, 3), correction=0)
    assert float(((m2 / (x.numel() // 3) - want).abs() / want).max()) < 1e-3
    close(mean, x.double().mean((0, 2, 3)), 1e-6)


@pytest.mark.gpu
def test_gpu_running_stats_opcheck_compile(gpu_backend):
    require_backend(gpu_backend, "cuda", OP)
    for momentum in (0.1, None):
        ours = pydl.nn.BatchNorm2d(4, momentum=momentum, backend=gpu_backend).cuda()
        ref = torch.nn.BatchNorm2d(4, momentum=momentum).cuda()
        for step in range(3):
            x = torch.randn(5, 4, 6, 7, device="cuda") * (step + 1)
            close(ours(x), ref(x), 2e-5)
            close(ours.running_var, ref.running_var, 2e-5)
        assert int(ours.num_batches_tracked) == 3
    x = torch.randn(2, 3, 4, 5, device="cuda")
    w, b = torch.rand(3, device="cuda"), torch.randn(3, device="cuda")
    act = ("general_relu", 0.1, 0.2, 1.0)
    torch.library.opcheck(torch.ops.pydl.batch_norm.default,
                          (x.requires_grad_(), w, b, None, None, True, 1e-5, *act, gpu_backend))
    m = pydl.nn.BatchNorm2d(3, backend=gpu_backend).cuda()
    f = torch.compile(m, fullgraph=True)
    close(f(x), torch.nn.functional.batch_norm(x, None, None, m.weight, m.bias, True), 2e-5)


@pytest.mark.gpu
def test_gpu_triton_block_sizes():
    require_backend("triton", "cuda", OP)
    from pydl.kernels import batch_norm as tk

    x = torch.randn(4, 6, 9, 11, device="cuda")
    want = kernels("reference", "cuda").forward(x, None, None, None, None, True, 1e-5, "none", 0.0, 0.0, math.inf)
    for block in (128, 1024):
        got = tk.forward(x, None, None, None, None, True, 1e-5, "none", 0.0, 0.0, math.inf, block=block)
        close(got[0], want[0], 2e-5)


def test_cuda_extension_compiles_and_links():
    """The CUDA backend must build on a machine without a GPU (explicit archs) and register its ops; the GPU
    tests above run it."""
    from pydl import _build

    ok, why = _build.cuda_toolchain()
    if not ok:
        pytest.skip(f"no CUDA toolchain here: {why}")
    res = _build.load(OP, "cuda")
    assert res.ok, res.error[-3000:]
    for name in ("forward", "update_running", "backward", "stats", "apply", "backward_reduce", "backward_elemt"):
        assert hasattr(torch.ops.pydl_cuda, "batch_norm_" + name)


# --------------------------------------------------------------------------------------------------
# extreme values and arguments (regressions; tests/test_fuzz_batch_norm.py draws many more)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
def test_overflowing_variance_matches_torch(cpu_backend, kind):
    """1e30-scale float32 data: torch's var is inf, so invstd 0, y = bias, running_var inf. The triton and
    cpu merges used to make that NaN (outputs and running stats)."""
    require_backend(cpu_backend, "cpu", OP)
    g = torch.Generator().manual_seed(3)
    x = layout(torch.randn(4, 3, 2, 5, generator=g) * 1e30, kind)
    w, b = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    rm, rv = torch.zeros(3), torch.ones(3)
    rm_t, rv_t = rm.clone(), rv.clone()
    y = pydl.batch_norm(x, rm, rv, w, b, training=True, backend=cpu_backend)
    want = F.batch_norm(x.contiguous(), rm_t, rv_t, w, b, True)
    assert torch.equal(y, want) and torch.equal(rv, rv_t) and torch.all(rv == math.inf)
    close(rm, rm_t, 1e-6, "running_mean")


def test_channel_near_float32_max_gets_its_true_statistics(cpu_backend):
    """A channel of values near float32's max: its float32 sum overflows, its mean does not. pydl's
    statistics are the true ones (mean, var 0: running stats finite); torch's float32 training forward returns
    NaN there. (y itself overflows in the compiled backends' x * scale + shift form: batch_norm's docstring.)"""
    require_backend(cpu_backend, "cpu", OP)
    big = torch.finfo(torch.float32).max / 2
    x = torch.full((6, 2, 3), big)
    x[:, 1] = torch.randn(6, 3)
    rm, rv = torch.zeros(2), torch.ones(2)
    y = pydl.batch_norm(x, rm, rv, None, None, training=True, momentum=1.0, backend=cpu_backend)
    assert float(rm[0]) == big and float(rv[0]) == 0.0
    want = F.batch_norm(x[:, 1:], None, None, training=True)  # the ordinary channel is untouched by it
    close(y[:, 1:], want, 2e-5, "y of the ordinary channel")


def test_eval_gradient_of_inf_input_is_finite(cpu_backend):
    """In eval the statistics are constants: dx = weight * invstd * dy, finite even where x is inf (the
    kernels used to form (x - mean) * 0 = NaN there)."""
    require_backend(cpu_backend, "cpu", OP)
    x = torch.tensor([[math.inf, 1.0], [2.0, -math.inf], [math.nan, 3.0]], requires_grad=True)
    w = torch.tensor([2.0, 3.0])
    pydl.batch_norm(x, torch.zeros(2), torch.full((2,), 4.0), w, None, training=False, eps=0.0,
                    backend=cpu_backend).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 1.5]] * 3))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(momentum="fast"), TypeError, "momentum must be a finite float"),
    (dict(momentum=math.nan), ValueError, "momentum must be a finite float"),
    (dict(momentum=None, num_batches_tracked=torch.tensor(0)), ValueError, "num_batches_tracked must be >= 1"),
    (dict(momentum=None, num_batches_tracked=torch.tensor([1, 2])), ValueError, "num_batches_tracked must be a one"),
    (dict(training="yes"), TypeError, "training must be True or False"),
    (dict(eps="1e-5"), TypeError, "eps must be"),
    (dict(act="general_relu", leak="x"), TypeError, "leak must be"),
    (dict(backend=3), TypeError, "backend must be a str"),
    (dict(weight=torch.ones(3, 1)), ValueError, "reads any weight with 3 elements flat.*reshape"),
])
def test_arguments_are_named(cpu_backend, kw, exc, match):
    require_backend(cpu_backend, "cpu", OP)
    args = dict(running_mean=torch.zeros(3), running_var=torch.ones(3), training=True, backend=cpu_backend)
    args.update(kw)
    with pytest.raises(exc, match=match):
        pydl.batch_norm(torch.randn(4, 3, 2), **args)


def test_ops_check_count_and_num_batches_tracked(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    x, z, o = torch.randn(4, 3, 2), torch.zeros(3), torch.ones(3)
    ops = [torch.ops.pydl]
    if cpu_backend == "cpu":
        ops.append(torch.ops.pydl_cpu)
    for ns in ops:
        tail = (cpu_backend,) if ns is torch.ops.pydl else ()
        with pytest.raises(ValueError, match="count must be an int >= 0"):
            ns.batch_norm_update_running(z.clone(), o.clone(), z, o, -1, 0.1, None, *tail)
        with pytest.raises(ValueError, match="num_batches_tracked must be >= 1"):
            ns.batch_norm_update_running(z.clone(), o.clone(), z, o, 8, None, torch.tensor(0), *tail)
        with pytest.raises(ValueError, match="count must be an int >= 0"):
            ns.batch_norm_backward_elemt(x, x, z, o, None, None, z, z, -1, "none", 0.0, 0.0, math.inf, *tail)
    if cpu_backend == "cpu":
        with pytest.raises(ValueError, match="eps must be > 0 in training"):
            torch.ops.pydl_cpu.batch_norm_forward(x, None, None, None, None, True, 0.0, "none", 0, 0, math.inf)
        with pytest.raises(ValueError, match="momentum must be a finite float"):
            torch.ops.pydl_cpu.batch_norm_update_running(z.clone(), o.clone(), z, o, 8, math.inf, None)


def _op_path(monkeypatch):
    """Send pydl.batch_norm through the registered op (torch.ops.pydl.batch_norm), as under torch.compile,
    instead of its eager door."""
    # the module by its sys.modules name: pydl.ops.batch_norm the attribute is the function
    monkeypatch.setattr(sys.modules["pydl.ops.batch_norm"], "plain_eager", lambda *tensors: False)


def _bn_run(x, training, affine, running, act, backend):
    """One batch_norm call with fresh parameters and its three gradients; everything it produced."""
    C = x.shape[1]
    g = torch.Generator().manual_seed(3)
    w = (torch.rand(C, generator=g) + 0.5).requires_grad_() if affine else None
    b = torch.randn(C, generator=g).requires_grad_() if affine else None
    rm, rv = (torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5) if running else (None, None)
    xg = x.detach().clone().requires_grad_()
    y = pydl.batch_norm(xg, rm, rv, w, b, training, 0.1, 1e-5, *act, backend=backend)
    dy = torch.randn(x.shape, generator=g).to(x.dtype)
    ins = [xg] + ([w, b] if affine else [])
    return y, torch.autograd.grad(y, ins, dy), rm, rv


@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training, running", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("affine", [True, False])
def test_eager_door_and_the_op_agree(cpu_backend, kind, training, running, affine, monkeypatch):
    """A plain eager call takes the eager door (an autograd.Function calling the kernels directly); the
    registered op is what torch.compile and opcheck see. The same kernels run on both paths: y, the
    running stats and every gradient must be bit-identical, with y's strides the same."""
    require_backend(cpu_backend, "cpu", OP)
    x = layout(torch.randn(3, 4, 2, 3), kind)
    act = ACTS[2] if affine else ACTS[1]
    door = _bn_run(x, training, affine, running, act, cpu_backend)
    assert type(door[0].grad_fn).__name__ == "_EagerBatchNormBackward", "a plain eager call takes the door"
    with monkeypatch.context() as m:
        _op_path(m)
        op = _bn_run(x, training, affine, running, act, cpu_backend)
    assert type(op[0].grad_fn).__name__ != "_EagerBatchNormBackward"
    assert door[0].stride() == op[0].stride() == x.stride()
    assert torch.equal(door[0], op[0]), "y"
    for g_door, g_op, name in zip(door[1], op[1], ("dx", "dweight", "dbias")):
        assert torch.equal(g_door, g_op), name
    if running:
        assert torch.equal(door[2], op[2]) and torch.equal(door[3], op[3]), "running stats"


def test_eager_door_is_only_for_plain_eager_calls():
    """No door under a TorchFunctionMode, for a tensor subclass or inside vmap: those must see the registered
    op (what they know how to handle). Without a gradient to track there is no autograd node at all."""
    from torch.overrides import TorchFunctionMode

    from pydl.ops._common import plain_eager

    x, w = torch.randn(2, 3, 4), torch.ones(3, requires_grad=True)
    assert plain_eager(x, w, None)

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class Sub(torch.Tensor):
        pass

    with Mode():
        assert not plain_eager(x)
        y = pydl.batch_norm(x, weight=w, training=True, backend="reference")
    assert type(y.grad_fn).__name__ != "_EagerBatchNormBackward"
    assert not plain_eager(x.as_subclass(Sub))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():  # a TorchDispatchMode, as functionalization and proxy tracing are
        assert not plain_eager()
    seen = []
    torch.vmap(lambda t: seen.append(plain_eager(t)) or t)(x)
    assert seen == [False]
    with torch.no_grad():
        assert pydl.batch_norm(x, weight=w, training=True, backend="reference").grad_fn is None


def test_gradgradcheck_float64_through_the_op(monkeypatch):
    """The double backward of the registered op path (test_gradgradcheck_float64 takes the eager door)."""
    _op_path(monkeypatch)
    f, x, w, b = _bn_float64("reference", True, ACTS[2])
    assert torch.autograd.gradgradcheck(f, (x.requires_grad_(), w, b))


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 3, 4, 1), (2, 3, 1, 4), (1, 3, 2, 1), (3, 1, 2, 2)])
@pytest.mark.parametrize("kind", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_cpu_layout_with_size_one_dims(cpu_backend, shape, kind, training):
    """Size-1 dims make a tensor's layout ambiguous (their strides are arbitrary, and (N, C, 1, 1) is both
    contiguous and channels_last): the kernels must classify it by the strides that matter, and give y
    x's strides."""
    require_backend(cpu_backend, "cpu", OP)
    x = layout(torch.randn(shape), kind)
    if training and channel_count_of(shape) == 1:
        return
    check_case(cpu_backend, x, training)
    rm, rv = torch.zeros(shape[1]), torch.ones(shape[1])
    y = pydl.batch_norm(x, rm, rv, training=training, backend=cpu_backend)
    assert y.stride() == x.stride()
    # the same memory with arbitrary strides on the size-1 dims: the same answer
    odd = x.as_strided(x.shape, [st if n != 1 else 1000 + d for d, (n, st) in enumerate(zip(x.shape, x.stride()))])
    y_odd = pydl.batch_norm(odd, rm, rv, training=training, backend=cpu_backend)
    close(y_odd, y, TOL[torch.float32], "odd strides")


def channel_count_of(shape):
    return math.prod(shape) // shape[1]
