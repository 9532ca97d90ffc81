"""conv2d: every backend against torch.nn.functional.conv2d and torch.nn.grad (input/weight gradients).

Tolerances (element-wise, |got - want| <= atol + rtol * |want|), justified by the dtype and the reduction
length K = Cin/groups * kh * kw (<= ~150 here):
* float64 vs torch in float64: 1e-10 -- both sum ~K products in fp64 (different orders: ~K * 1e-16);
* float32 vs torch in float64: 1e-4 -- fp32 accumulation of ~K terms of magnitude ~1 (K * 6e-8 ~ 1e-5), x10;
* float16 / bfloat16: compared with the fp64 conv of the *same rounded inputs*; the accumulation is fp32, so
  the error is the final rounding of the output (fp16 5e-4, bf16 4e-3 relative) plus fp32 accumulation:
  rtol 2e-3 / 1.6e-2 with atol scaled by sqrt(K) (the typical output magnitude for unit-normal data).
"""
import math
import random

import pytest
import torch
import torch.nn.functional as F

import pydl
from pydl.ops.conv2d import conv2d_backward_reference, conv2d_reference

from helpers import require_backend, slow

OP = "conv2d"


@pytest.fixture(autouse=True)
def _direct_algorithm():
    """This file tests the direct CPU kernels (im2col + GEMM, depthwise) at the tolerances above: pin them, so
    that "auto" does not hand 3x3 stride-1 layers to Winograd, whose own rounding bound and tests are in
    tests/test_conv2d_winograd.py. (The setting is read by the CPU backend only.)"""
    with pydl.conv2d_algo("direct"):
        yield


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def torch_act(z, act, leak=0.1, sub=0.4, maxv=1.5):
    if act == "none":
        return z
    if act == "relu":
        return F.relu(z)
    return (F.leaky_relu(z, leak) - sub).clamp_max(maxv)


def random_cases(n, seed, tiny):
    """A seeded grid of conv configurations: groups (incl. depthwise), 1x1, odd sizes, batch 1, strides,
    paddings, dilations, rectangular kernels. ``tiny`` keeps them small enough for Triton's interpreter."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        groups = rng.choice([1, 1, 2, 3])
        cg = rng.choice([1, 2, 3] if tiny else [1, 2, 3, 5, 8])
        cog = rng.choice([1, 2, 3] if tiny else [1, 2, 4, 7])
        if rng.random() < 0.2:  # depthwise (with multiplier 1)
            cg, cog, groups = 1, 1, rng.choice([2, 3, 4])
        kh, kw = rng.choice([(1, 1), (3, 3), (2, 3), (3, 1), (5, 5) if not tiny else (3, 2)])
        s = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2]))
        d = (rng.choice([1, 1, 2]), rng.choice([1, 1, 2]))
        p = (rng.choice([0, 1, 2]), rng.choice([0, 1]))
        N = rng.choice([1, 2] if tiny else [1, 2, 3])
        H = rng.randint(1, 7 if tiny else 13)
        W = rng.randint(1, 7 if tiny else 13)
        cl = rng.random() < 0.35
        ho = (H + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
        wo = (W + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
        if ho < 1 or wo < 1:
            continue
        out.append(dict(N=N, C=cg * groups, H=H, W=W, Co=cog * groups, kh=kh, kw=kw, stride=s, padding=p,
                        dilation=d, groups=groups, cl=cl))
    return out


def make_inputs(c, dtype=torch.float64, bias=True, requires_grad=False):
    x = torch.randn(c["N"], c["C"], c["H"], c["W"], dtype=dtype)
    if c.get("cl"):
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c["Co"], c["C"] // c["groups"], c["kh"], c["kw"], dtype=dtype)
    b = torch.randn(c["Co"], dtype=dtype) if bias else None
    if requires_grad:
        for t in (x, w, b):
            if t is not None:
                t.requires_grad_(True)
    return x, w, b


def conv_kw(c):
    return dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])


def close(got, want, dtype, k=1, what=""):
    tol = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-4),
           torch.float16: (2e-3, 2e-3 * math.sqrt(k)), torch.bfloat16: (1.6e-2, 1.6e-2 * math.sqrt(k))}[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=tol[0], atol=tol[1], msg=lambda m: f"{what}: {m}")


def check_case(c, backend, act="none", dtype=torch.float64, bias=True):
    """Forward and all three gradients of one configuration vs torch (in float64 on the same inputs)."""
    x, w, b = make_inputs(c, dtype, bias, requires_grad=True)
    y = pydl.conv2d(x, w, b, act=act, leak=0.1, sub=0.4, maxv=1.5, backend=backend, **conv_kw(c))
    x64, w64 = x.detach().double(), w.detach().double()
    b64 = None if b is None else b.detach().double()
    z64 = F.conv2d(x64, w64, b64, **conv_kw(c))
    k = w.shape[1] * w.shape[2] * w.shape[3]
    assert y.dtype == dtype and y.shape == z64.shape
    want_fmt = torch.channels_last if (c.get("cl") and not x.is_contiguous()) else torch.contiguous_format
    assert y.is_contiguous(memory_format=want_fmt), "output layout must follow the input's"
    close(y, torch_act(z64, act), dtype, k, f"forward {c} {act}")

    gy = torch.randn_like(z64)
    gx, gw, *gb = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], gy.to(dtype))
    # the expected gradients from torch.nn.grad (and the activation's derivative, from autograd)
    zz = z64.clone().requires_grad_(True)
    (dz,) = torch.autograd.grad(torch_act(zz, act), zz, gy)
    want_gx = torch.nn.grad.conv2d_input(x64.shape, w64, dz, **conv_kw(c))
    want_gw = torch.nn.grad.conv2d_weight(x64, w64.shape, dz, **conv_kw(c))
    ko = c["Co"] // c["groups"] * c["kh"] * c["kw"]
    close(gx, want_gx, dtype, ko, f"grad_x {c} {act}")
    close(gw, want_gw, dtype, dz.shape[0] * dz.shape[2] * dz.shape[3], f"grad_w {c} {act}")
    if b is not None:
        close(gb[0], dz.sum((0, 2, 3)), dtype, dz.numel() // dz.shape[1], f"grad_b {c} {act}")


# --------------------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------------------

def test_reference_matches_torch():
    """The ground truth itself (im2col + matmul, col2im) against torch over a wide grid."""
    for c in random_cases(25, seed=1, tiny=False):
        check_case(c, "reference")


@pytest.mark.parametrize("seed", [0, 1])
def test_random_grid_fp64(cpu_backend, seed):
    require_backend(cpu_backend, "cpu", OP)
    tiny = slow(cpu_backend)
    n = {"triton": 8, "cuda_emu": 8, "reference": 15}.get(cpu_backend, 25)
    for c in random_cases(n, seed=100 + seed, tiny=tiny):
        check_case(c, cpu_backend, bias=bool(seed))


@pytest.mark.parametrize("act", ["relu", "general_relu"])
def test_fused_activation(cpu_backend, act):
    require_backend(cpu_backend, "cpu", OP)
    tiny = slow(cpu_backend)
    for c in random_cases(4 if tiny else 12, seed=7, tiny=tiny):
        check_case(c, cpu_backend, act=act)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(cpu_backend, dtype):
    require_backend(cpu_backend, "cpu", OP)
    tiny = slow(cpu_backend)
    for c in random_cases(3 if tiny else 10, seed=11, tiny=tiny):
        check_case(c, cpu_backend, act="relu" if c["N"] == 1 else "none", dtype=dtype)


@pytest.mark.parametrize("variant", [
    pytest.param(dict(kh=1, kw=1, padding=(0, 0)), id="1x1"),  # no im2col at all on the CPU
    pytest.param(dict(kh=1, kw=1, padding=(0, 0), cl=True), id="1x1-channels_last"),
    pytest.param(dict(C=4, Co=4, groups=4), id="depthwise"),
    pytest.param(dict(C=4, Co=4, groups=4, cl=True, stride=(2, 2)), id="depthwise-channels_last-strided"),
    pytest.param(dict(C=4, Co=8, groups=4), id="depthwise-multiplier2"),
    # the NCHW stride-1 3x3 depthwise sums its nine taps in registers: dilated, and with uneven padding
    pytest.param(dict(C=4, Co=4, groups=4, H=9, W=8, dilation=(2, 3), padding=(2, 1)), id="depthwise-3x3-dilated"),
    # stride 2 on NCHW: the im2col/col2im's constant-stride-2 copy (NCHW rows kept for Wo >= 14)
    pytest.param(dict(C=16, Co=8, H=29, W=30, stride=(2, 2)), id="stride2-nchw-wide"),
    # its 3x3 copy writes the three taps of a kernel row in one pass: every padding edge of that pass
    pytest.param(dict(C=3, Co=5, H=17, W=40, stride=(2, 2), padding=(0, 0)), id="stride2-nchw-nopad"),
    pytest.param(dict(C=3, Co=5, H=12, W=37, stride=(2, 2), padding=(3, 2)), id="stride2-nchw-widepad"),
    pytest.param(dict(N=1, H=1, W=1, padding=(1, 1)), id="batch1-1x1image-all_padding"),
    pytest.param(dict(H=9, W=8, dilation=(2, 3), padding=(2, 3)), id="dilation"),
    pytest.param(dict(stride=(2, 3), cl=True, groups=2), id="strided-groups-channels_last"),
    pytest.param(dict(kh=3, kw=3, padding=(0, 0), H=3, W=3), id="kernel_is_input"),
])
def test_named_shapes(cpu_backend, variant):
    """The shapes the issue names, explicitly: 1x1, depthwise, odd sizes, batch 1, channels_last, dilation."""
    require_backend(cpu_backend, "cpu", OP)
    base = dict(N=2, C=4, H=5, W=7, Co=6, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                cl=False)
    check_case(dict(base, **variant), cpu_backend, act="general_relu")


@pytest.mark.parametrize("c", [
    pytest.param(dict(N=2, C=32, H=30, W=36, Co=24, kh=3, kw=3, stride=(1, 1), padding=(1, 1)), id="wide-nchw"),
    pytest.param(dict(N=3, C=32, H=14, W=14, Co=40, kh=3, kw=3, stride=(1, 1), padding=(1, 1)), id="small-nhwc"),
    pytest.param(dict(N=2, C=32, H=15, W=15, Co=16, kh=3, kw=3, stride=(2, 2), padding=(1, 1), cl=True),
                 id="strided-channels_last"),
    # the weight to / from the NHWC K order (transpose_blocks in conv2d.cpp): 16 channels per vector step,
    # then a tail (40 = 2 x 16 + 8; 20 per group), and a 5x5 kernel, whose grad_w goes back 25 taps at a time
    pytest.param(dict(N=2, C=40, H=11, W=9, Co=12, kh=3, kw=2, stride=(2, 2), padding=(1, 0), cl=True),
                 id="nhwc-weight-tail"),
    pytest.param(dict(N=2, C=40, H=10, W=10, Co=8, kh=3, kw=3, stride=(2, 2), padding=(1, 1), groups=2, cl=True),
                 id="nhwc-weight-groups"),
    pytest.param(dict(N=1, C=16, H=12, W=11, Co=8, kh=5, kw=5, stride=(2, 2), padding=(2, 2), cl=True),
                 id="nhwc-weight-5x5"),
    pytest.param(dict(N=2, C=48, H=9, W=9, Co=48, kh=1, kw=1, stride=(1, 1), padding=(0, 0)), id="1x1"),
    pytest.param(dict(N=2, C=32, H=20, W=20, Co=32, kh=3, kw=3, stride=(1, 1), padding=(1, 1), groups=32),
                 id="depthwise"),
])
def test_cpu_resnet_layers_fp32(c):
    """ResNet-like sizes: many parallel tasks, both CPU im2col paths (NCHW rows for wide images, the
    channels_last transpose for small ones), fp32 vs torch in fp64."""
    require_backend("cpu", "cpu", OP)
    check_case(dict(dict(dilation=(1, 1), groups=1), **c), "cpu", act="relu", dtype=torch.float32)


@pytest.mark.parametrize("im2col", ["nchw", "nhwc"])
def test_cpu_forced_im2col_paths(im2col):
    """PYDL_CONV_IM2COL forces one of the CPU kernel's two im2col layouts (read once per process, so in a
    subprocess): both must give the same results on every layout, group count and activation."""
    require_backend("cpu", "cpu", OP)
    import os
    import subprocess
    import sys

    code = """
import torch, torch.nn.functional as F, pydl
pydl.set_conv2d_algo("direct")  # the im2col paths, not Winograd
torch.manual_seed(0)
for N, C, H, W, Co, k, s, p, g, cl in [(2, 32, 9, 10, 16, 3, 1, 1, 1, 0), (2, 32, 9, 10, 16, 3, 2, 1, 2, 1),
                                        (1, 6, 7, 7, 6, 3, 1, 1, 6, 0), (2, 16, 5, 6, 8, 1, 1, 0, 1, 1)]:
    x = torch.randn(N, C, H, W, dtype=torch.float64)
    x = (x.contiguous(memory_format=torch.channels_last) if cl else x).requires_grad_(True)
    w = torch.randn(Co, C // g, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(Co, dtype=torch.float64, requires_grad=True)
    y = pydl.conv2d(x, w, b, s, p, 1, g, act="relu", backend="cpu")
    r = F.relu(F.conv2d(x, w, b, s, p, 1, g))
    gy = torch.randn_like(r)
    for u, v in zip((y,) + torch.autograd.grad(y, (x, w, b), gy), (r,) + torch.autograd.grad(r, (x, w, b), gy)):
        assert (u - v).abs().max().item() < 1e-10, (N, C, H, W, Co, k, s, p, g, cl)
print("ok")
"""
    env = dict(os.environ, PYDL_CONV_IM2COL=im2col)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.parametrize("whole", ["0", "1"])
def test_cpu_forced_whole_batch(whole):
    """PYDL_CONV_WHOLE forces the CPU direct path's whole-batch scheme (im2col of every pixel of the batch,
    one threaded GEMM per group, col2im per image) off or on; read once per process, so in a subprocess, at 2
    threads so the parallel loops split. The cases walk its branches: NCHW output from the NHWC im2col,
    channels_last with one group (the GEMM writes y, epilogue in place) and two, 1x1 stride 1 (the input is
    the im2col; its backward is in-place GEMMs, NCHW and channels_last), 1x1 stride 2, N=1 -- each with
    every activation (general_relu keeps the pre-activation), forward and all three gradients vs torch.
    fp64 must match torch to rounding; fp32 and bf16 (accumulated in fp32, no activation) within their own
    precision."""
    require_backend("cpu", "cpu", OP)
    import os
    import subprocess
    import sys

    code = """
import torch, torch.nn.functional as F, pydl
torch.set_num_threads(2)
pydl.set_conv2d_algo("direct")  # the im2col paths, not Winograd
torch.manual_seed(0)
acts = {"none": lambda z: z, "relu": F.relu,
        "general_relu": lambda z: (F.leaky_relu(z, 0.1) - 0.4).clamp(max=2.0)}
cases = [(2, 32, 9, 10, 16, 3, 1, 1, 1, 0), (2, 32, 9, 10, 16, 3, 2, 1, 2, 1), (3, 16, 7, 7, 24, 3, 2, 1, 1, 1),
         (2, 16, 5, 6, 8, 1, 1, 0, 1, 1), (2, 16, 5, 6, 8, 1, 1, 0, 2, 0), (2, 16, 5, 6, 8, 1, 2, 0, 1, 0),
         (1, 32, 6, 6, 16, 3, 1, 1, 1, 1)]
for N, C, H, W, Co, k, s, p, g, cl in cases:
    for act, f in acts.items():
        for dt in (torch.float64, torch.float32, torch.bfloat16):
            if dt == torch.bfloat16 and act != "none":  # a bf16 z flips act' near its kinks: not a tolerance
                continue
            x = torch.randn(N, C, H, W, dtype=torch.float64)
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            w = torch.randn(Co, C // g, k, k, dtype=torch.float64) * (C // g * k * k) ** -0.5
            b = torch.randn(Co, dtype=torch.float64)
            gy = torch.randn(N, Co, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1, dtype=torch.float64)
            # the inputs rounded to dt, so the reference (fp64, from the same values) sees what pydl sees
            xs, ws, bs, gys = (t.to(dt) for t in (x, w, b, gy))
            ins = [t.detach().requires_grad_(True) for t in (xs, ws, bs)]
            refs = [t.to(torch.float64).detach().requires_grad_(True) for t in (xs, ws, bs)]
            extra = dict(leak=0.1, sub=0.4, maxv=2.0) if act == "general_relu" else {}
            y = pydl.conv2d(*ins, s, p, 1, g, act=act, backend="cpu", **extra)
            assert y.is_contiguous(memory_format=torch.channels_last) == bool(cl)
            r = f(F.conv2d(*refs, s, p, 1, g))
            got = (y,) + torch.autograd.grad(y, ins, gys)
            want = (r,) + torch.autograd.grad(r, refs, gys.to(torch.float64))
            # fp64: rounding only. fp32: K-term sums of O(1) terms; bf16: the output's own rounding (2^-8)
            tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dt]
            for u, v in zip(got, want):
                err = (u.to(torch.float64) - v).abs().max().item()
                assert err <= tol * max(1.0, v.abs().max().item()), (N, C, H, W, Co, k, s, p, g, cl, act, dt, err)
print("ok")
"""
    env = dict(os.environ, PYDL_CONV_WHOLE=whole)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_backward_op_output_mask(cpu_backend):
    """The backward op computes only what the mask asks for (empty tensors elsewhere), and each gradient does
    not depend on which others were asked for."""
    require_backend(cpu_backend, "cpu", OP)
    x, w, _ = make_inputs(dict(N=2, C=4, H=5, W=5, Co=4, kh=3, kw=3, groups=2))
    gy = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    args = ([1, 1], [1, 1], [1, 1], 2, "none", 0.0, 0.0, math.inf)
    full = torch.ops.pydl.conv2d_backward(gy, x, w, None, *args, [True, True, True], cpu_backend)
    for mask in ([True, False, False], [False, True, False], [False, False, True]):
        got = torch.ops.pydl.conv2d_backward(gy, x, w, None, *args, mask, cpu_backend)
        for i in range(3):
            if mask[i]:
                torch.testing.assert_close(got[i], full[i], rtol=1e-12, atol=1e-12)
            else:
                assert got[i].numel() == 0


# --------------------------------------------------------------------------------------------------
# gradcheck, opcheck, compile
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["none", "general_relu"])
def test_gradcheck(cpu_backend, act):
    require_backend(cpu_backend, "cpu", OP)
    c = dict(N=2, C=4, H=4, W=5, Co=4, kh=3, kw=2, stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
    # the interpreter runs ~1000x slower: a smaller problem and gradcheck's fast mode (random projections,
    # two evaluations per input instead of two per input *element*)
    fast = slow(cpu_backend)
    c.update(N=1, H=3, W=4)  # ~70 input elements: each costs gradcheck two forward calls
    x, w, b = make_inputs(c, requires_grad=True)
    # maxv = 3: the clamp is active somewhere, but no z sits within gradcheck's eps of a kink (seeded data)
    fn = lambda x, w, b: pydl.conv2d(x, w, b, act=act, leak=0.1, sub=0.4, maxv=3.0, backend=cpu_backend,  # noqa
                                     **conv_kw(c))
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-7, fast_mode=fast)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (xc, w, b), eps=1e-6, atol=1e-7, fast_mode=fast)


# Second derivatives (gradient penalties, gradgradcheck). Geometries cover stride, padding, dilation, groups
# (incl. depthwise) and channels_last; acts and bias on/off rotate over them. maxv = 3 clamps somewhere while
# no seeded z lies within gradgradcheck's eps of a kink.
_GG_CASES = [
    (dict(N=1, C=2, H=4, W=3, Co=3, kh=2, kw=2, stride=(2, 1), padding=(1, 0), dilation=(1, 1), groups=1),
     "none", True),
    (dict(N=1, C=4, H=3, W=2, Co=2, kh=2, kw=1, stride=(1, 1), padding=(1, 1), dilation=(2, 1), groups=2),
     "relu", False),
    (dict(N=1, C=2, H=3, W=3, Co=2, kh=3, kw=3, stride=(1, 2), padding=(1, 1), dilation=(1, 1), groups=2,
          cl=True), "general_relu", True),
    (dict(N=1, C=2, H=3, W=4, Co=2, kh=2, kw=2, stride=(1, 1), padding=(0, 1), dilation=(1, 2), groups=1),
     "general_relu", False),
    (dict(N=1, C=3, H=3, W=2, Co=3, kh=2, kw=2, stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=3),
     "relu", True),
    (dict(N=1, C=2, H=2, W=3, Co=2, kh=3, kw=2, stride=(1, 1), padding=(1, 0), dilation=(1, 1), groups=1),
     "none", False),
]


def _gg_fn(c, act, backend):
    return lambda x, w, *b: pydl.conv2d(x, w, b[0] if b else None, act=act, leak=0.1, sub=0.4, maxv=3.0,  # noqa
                                        backend=backend, **conv_kw(c))


@pytest.mark.parametrize("case", range(len(_GG_CASES)))
def test_gradgradcheck(cpu_backend, case):
    """The backward of the backward, against finite differences of the backward (fp64)."""
    require_backend(cpu_backend, "cpu", OP)
    c, act, bias = _GG_CASES[case]
    if cpu_backend == "triton" and case not in (1, 2, 3):
        pytest.skip("the interpreter is ~1000x slower: cases 1-3 cover every act, bias on/off, groups, "
                    "dilation and channels_last")
    x, w, b = make_inputs(c, bias=bias, requires_grad=True)
    inputs = (x, w) if b is None else (x, w, b)
    # Full mode (every element) on the compiled backend; fast mode (random projections: two evaluations per
    # input instead of two per element) elsewhere -- the double-backward formulas are the same Python code for
    # every backend, so the full check of one plus a projected check of the others keeps the suite fast.
    assert torch.autograd.gradgradcheck(_gg_fn(c, act, cpu_backend), inputs, eps=1e-6, atol=1e-6,
                                        fast_mode=cpu_backend != "cpu")


@pytest.mark.parametrize("act", ["none", "relu", "general_relu"])
def test_gradient_penalty_matches_torch(cpu_backend, act):
    """WGAN-GP style: penalise the input gradient's norm, then train the weights on it. Every second
    derivative (w.r.t. x, weight and bias) must equal torch's -- they were silently zero once."""
    require_backend(cpu_backend, "cpu", OP)
    c = dict(N=2, C=2, H=4, W=4, Co=4, kh=3, kw=3, stride=(1, 2), padding=(1, 1), dilation=(1, 1), groups=2)
    x, w, b = make_inputs(c, requires_grad=True)

    def penalty(conv):
        y = conv(x, w, b)
        # a loss nonlinear in y: with a linear one, x's gradient would not depend on x, b or the activation
        (gx,) = torch.autograd.grad((y.pow(2) * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(),
                                    x, create_graph=True)
        return (gx.flatten(1).norm(dim=1) - 1).pow(2).mean()

    got = torch.autograd.grad(penalty(lambda x, w, b: pydl.conv2d(x, w, b, act=act, leak=0.1, sub=0.4, maxv=1.5,
                                                                  backend=cpu_backend, **conv_kw(c))), (x, w, b))
    want = torch.autograd.grad(penalty(lambda x, w, b: torch_act(F.conv2d(x, w, b, **conv_kw(c)), act)), (x, w, b))
    for name, g, e in zip(("x", "weight", "bias"), got, want):
        # fp64 sums of ~50 products each, in different orders: ~1e-14 relative; 1e-10 leaves room
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"d penalty / d {name}: {m}")
    assert all(g.abs().max() > 0 for g in got), "a zero second derivative would make this test blind"


def test_third_derivative_matches_torch():
    """The double backward is made of differentiable pydl ops, so higher orders work too."""
    require_backend("cpu", "cpu", OP)
    c = dict(N=1, C=2, H=4, W=4, Co=2, kh=2, kw=2, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    x, w, _ = make_inputs(c, requires_grad=True)

    def third(conv):
        (gx,) = torch.autograd.grad(conv(x, w).pow(3).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.pow(2).sum(), w, create_graph=True)
        return torch.autograd.grad(gw.sum(), x)[0]

    torch.testing.assert_close(third(lambda x, w: pydl.conv2d(x, w, backend="cpu", **conv_kw(c))),
                               third(lambda x, w: F.conv2d(x, w, **conv_kw(c))), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act, maxv", [("relu", None), ("general_relu", 1.5), ("general_relu", None)])
def test_nan_passes_through_the_fused_activation_as_in_torch(cpu_backend, act, maxv):
    """NaN in, NaN out: a fused relu must not turn a NaN pre-activation into 0 (nor the clamp into maxv),
    and the gradient follows torch's formulas at NaN (relu passes it, a clamp stops it)."""
    require_backend(cpu_backend, "cpu", OP)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 2] = math.nan
    x[0, 1, 3, 0] = -math.inf
    x.requires_grad_(True)
    w = torch.randn(2, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    y = pydl.conv2d(x, w, b, act=act, leak=0.1, sub=0.4, maxv=maxv, backend=cpu_backend)
    z = F.conv2d(x, w, b)
    want = F.relu(z) if act == "relu" else F.leaky_relu(z, 0.1) - 0.4
    if maxv is not None:  # no clamp at all without maxv (fastai's GeneralRelu), so none to stop a NaN's gradient
        want = want.clamp_max(maxv)
    assert torch.isnan(want).any()
    torch.testing.assert_close(y, want, equal_nan=True)
    for g, e in zip(torch.autograd.grad(y, (x, w, b), gy), torch.autograd.grad(want, (x, w, b), gy)):
        torch.testing.assert_close(g, e, equal_nan=True)


def test_general_relu_backward_recomputes_z_if_not_saved(cpu_backend):
    """Calling the op with save_preact=False and then differentiating: the backward recomputes z."""
    require_backend(cpu_backend, "cpu", OP)
    x, w, b = make_inputs(dict(N=1, C=2, H=4, W=4, Co=3, kh=3, kw=3, groups=1), requires_grad=True)
    y, z = torch.ops.pydl.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, "general_relu", 0.1, 0.4, 1.5, False,
                                 cpu_backend)
    assert z.numel() == 0
    g = torch.autograd.grad(y.sum(), (x, w, b))
    y2 = pydl.conv2d(x, w, b, padding=1, act="general_relu", leak=0.1, sub=0.4, maxv=1.5, backend="reference")
    want = torch.autograd.grad(y2.sum(), (x, w, b))
    for a, e in zip(g, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_opcheck(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    x = torch.randn(2, 4, 5, 6)
    w = torch.randn(6, 2, 3, 3)
    b = torch.randn(6)
    for xx, act, save in ((x, "none", False), (x.contiguous(memory_format=torch.channels_last), "general_relu", True),
                          (x, "relu", False)):
        torch.library.opcheck(torch.ops.pydl.conv2d.default,
                              (xx, w, b, [2, 1], [1, 1], [1, 1], 2, act, 0.1, 0.4, 1.5, save, cpu_backend))
    gy = torch.randn(2, 6, 3, 6)
    z = torch.randn(2, 6, 3, 6)
    torch.library.opcheck(torch.ops.pydl.conv2d_backward.default,
                          (gy, x, w, z, [2, 1], [1, 1], [1, 1], 2, "general_relu", 0.1, 0.4, 1.5,
                           [True, True, True], cpu_backend), test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    """aot_eager: dynamo captures the whole function (no graph break), AOTAutograd traces the op's fake and its
    registered autograd (the general_relu path saves z as the op's second output)."""
    conv = pydl.nn.Conv2d(3, 4, 3, padding=1)

    def f(x):
        y = pydl.conv2d(x * 2, conv.weight, conv.bias, padding="same", act="general_relu", leak=0.1, sub=0.4,
                        maxv=1.0)
        return y.sum() + conv(x).sum()

    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    (g,) = torch.autograd.grad(out, x)
    want = torch_act(F.conv2d(x * 2, conv.weight, conv.bias, padding=1), "general_relu", 0.1, 0.4, 1.0).sum() + \
        F.conv2d(x, conv.weight, conv.bias, padding=1).sum()
    (wg,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g, wg, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# the Python-side conveniences: padding strings and modes, unbatched input, empty batch, layouts
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pad, mode", [(p, m) for p in ("same", "valid", 1, (2, 1))
                                        for m in ("zeros", "reflect", "replicate", "circular")
                                        if p != "valid" or m == "zeros"])  # valid: no padding to mode
@pytest.mark.parametrize("k, d", [(3, 1), (4, 1), (2, 3), (5, 2)])  # even kernels give asymmetric "same"
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_padding_strings_and_modes(backend, k, d, pad, mode):
    require_backend(backend, "cpu", OP)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    w = torch.randn(6, 2, k, k, dtype=torch.float64)
    m = torch.nn.Conv2d(4, 6, k, padding=pad, dilation=d, groups=2, padding_mode=mode, bias=False,
                        dtype=torch.float64)

    def conv():
        return pydl.conv2d(x, w, None, padding=pad, dilation=d, groups=2, padding_mode=mode, backend=backend)

    try:
        want = m._conv_forward(x, w, None)
    except RuntimeError:  # torch itself refuses (a dilated kernel wider than the padded input): pydl too
        with pytest.raises(ValueError, match="larger than the padded"):
            conv()
        return
    torch.testing.assert_close(conv(), want, rtol=1e-10, atol=1e-10)


def test_unbatched_empty_and_noncontiguous(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    x3 = torch.randn(3, 5, 6, dtype=torch.float64)
    got = pydl.conv2d(x3, w, padding=1, backend=cpu_backend)
    torch.testing.assert_close(got, F.conv2d(x3, w, padding=1), rtol=1e-10, atol=1e-10)
    e = pydl.conv2d(torch.empty(0, 3, 5, 6, dtype=torch.float64), w, padding=1, backend=cpu_backend)
    assert e.shape == (0, 4, 5, 6)
    big = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    xs = big[:, ::2, 1:, ::2]  # neither contiguous nor channels_last
    torch.testing.assert_close(pydl.conv2d(xs, w, stride=2, backend=cpu_backend), F.conv2d(xs, w, stride=2),
                               rtol=1e-10, atol=1e-10)


def test_triton_block_sizes(poison):
    """Results must not depend on the launch shape (interpreter: two block sizes, two splits of grad_w);
    `poison` NaN-fills every torch.empty, so an output element a program forgot shows up."""
    require_backend("triton", "cpu", OP)
    from pydl.kernels.conv2d import conv2d_backward_triton, conv2d_triton

    for c in [dict(N=2, C=6, H=5, W=7, Co=6, kh=3, kw=3, stride=(2, 1), padding=(1, 1), dilation=(1, 1), groups=3,
                   cl=False),
              dict(N=1, C=5, H=6, W=4, Co=20, kh=2, kw=3, stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=1,
                   cl=True),
              # depthwise: the direct kernels (block = (pixels, channels), split of the grad_w reduction)
              dict(N=2, C=20, H=6, W=5, Co=20, kh=3, kw=3, stride=(1, 2), padding=(1, 1), dilation=(2, 1), groups=20,
                   cl=True)]:
        x, w, b = make_inputs(c)
        args = (list(c["stride"]), list(c["padding"]), list(c["dilation"]), c["groups"])
        want_y, want_z = conv2d_reference(x, w, b, *args, "general_relu", 0.1, 0.4, 1.5, True)
        gy = torch.randn_like(want_y)
        want_g = conv2d_backward_reference(gy, x, w, want_z, *args, "general_relu", 0.1, 0.4, 1.5, [True] * 3)
        for block, split in [((16, 16, 16), 1), ((32, 16, 32), 3)]:
            y, z = conv2d_triton(x, w, b, *args, "general_relu", 0.1, 0.4, 1.5, True, block=block)
            torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(z, want_z, rtol=1e-10, atol=1e-10)
            g = conv2d_backward_triton(gy, x, w, want_z, *args, "general_relu", 0.1, 0.4, 1.5, [True] * 3,
                                       block=block, split=split)
            for a, e in zip(g, want_g):
                torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, exc, match", [
    (dict(x=torch.randn(2, 5, 6, 6)), ValueError, "divisible by groups"),             # 5 channels, groups 2
    (dict(w=torch.randn(5, 2, 3, 3)), ValueError, "divisible by groups"),             # 5 out channels, groups 2
    (dict(w=torch.randn(4, 3, 3, 3)), ValueError, "input channels"),                  # Cin/groups mismatch
    (dict(w=torch.randn(4, 2, 9, 9)), ValueError, "larger than the padded input"),
    (dict(x=torch.randn(6, 6, 6)), ValueError, "input channels"),                     # unbatched, 6 channels
    (dict(x=torch.randn(2, 2, 4, 6, 6)), ValueError, "4-D"),
    (dict(x=torch.randn(6, 6)), ValueError, "4-D"),
    (dict(w=torch.randn(4, 2, 3)), ValueError, "weight must be 4-D"),
    (dict(w=torch.randn(4, 2, 3, 3, dtype=torch.float64)), TypeError, "weight dtype"),
    (dict(b=torch.randn(4, dtype=torch.float64)), TypeError, "bias dtype"),
    (dict(b=torch.randn(5)), ValueError, "bias must have shape"),
    (dict(x=torch.randint(0, 3, (2, 4, 6, 6))), TypeError, "x must be float16"),
    (dict(stride=0), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(padding="full"), ValueError, "padding must be"),
    (dict(padding="same", stride=2), ValueError, "strided"),
    (dict(padding_mode="mirror"), ValueError, "padding_mode"),
    (dict(act="gelu"), ValueError, "act must be"),
    (dict(act=3), TypeError, "act must be one of"),
    (dict(stride=1.5), TypeError, "stride must be an int or a pair of ints, got 1.5"),
    (dict(stride=(1, 2, 3)), ValueError, "stride must be an int or a pair of ints, got 3 entries"),
    (dict(stride=(1, True)), TypeError, "stride must be an int or a pair"),
    (dict(dilation="2"), TypeError, "dilation must be an int or a pair"),
    (dict(padding=1.0), TypeError, "padding must be an int, a pair of ints, 'same' or 'valid'"),
    (dict(padding=(-1, 0), padding_mode="reflect"), ValueError, "padding must be >= 0"),
    (dict(padding_mode=None), ValueError, "padding_mode must be"),
    (dict(b=[0.0, 1.0, 2.0, 3.0]), TypeError, "bias must be a torch.Tensor or None, got list"),
    (dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor, got list"),
    (dict(act="general_relu", leak="fast"), TypeError, "leak must be a float or None"),
    (dict(act="general_relu", maxv=[1.0]), TypeError, "maxv must be a float or None"),
    (dict(groups=2.0), TypeError, "groups must be a positive int, got 2.0"),
    (dict(groups=True), TypeError, "groups must be a positive int"),
    (dict(groups=0), ValueError, "groups must be a positive int, got 0"),
])
def test_bad_input(cpu_backend, bad, exc, match):
    require_backend(cpu_backend, "cpu", OP)
    args = dict(x=torch.randn(2, 4, 6, 6), w=torch.randn(4, 2, 3, 3), b=torch.randn(4), stride=1, padding=0,
                dilation=1, groups=2, padding_mode="zeros", act="none")
    args.update(bad)
    with pytest.raises(exc, match=match):
        pydl.conv2d(args.pop("x"), args.pop("w"), args.pop("b"), backend=cpu_backend, **args)


def test_int_likes_are_accepted_like_torch():
    """numpy integers and a 1-element sequence are valid (F.conv2d takes them); the result is the same."""
    import numpy as np

    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 2, 3, 3)
    got = pydl.conv2d(x, w, stride=(np.int64(2),), padding=np.int32(1), groups=np.int64(2), backend="reference")
    torch.testing.assert_close(got, F.conv2d(x, w, stride=2, padding=1, groups=2))


@pytest.mark.parametrize("groups, act", [(1, "relu"), (2, "general_relu")])  # general_relu: z is saved too
def test_zero_input_channels_matches_torch(cpu_backend, groups, act):
    """F.conv2d's answer for an input with no channels is an empty (N, 0, Ho, Wo) output, zero gradients and
    a zero bias gradient: every backend, the fake and the compiled ops give the same."""
    require_backend(cpu_backend, "cpu", OP)
    x = torch.randn(2, 0, 5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 0, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    kw = dict(stride=(2, 1), padding=1, groups=groups)
    y = pydl.conv2d(x, w, b, act=act, leak=0.1, sub=0.4, maxv=1.5, backend=cpu_backend, **kw)
    want = torch_act(F.conv2d(x, w, b, **kw), act)
    assert y.shape == want.shape == (2, 0, 3, 8)
    got_g = torch.autograd.grad(y.sum(), (x, w, b))
    want_g = torch.autograd.grad(want.sum(), (x, w, b))
    for g, e in zip(got_g, want_g):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e)
    torch.library.opcheck(torch.ops.pydl.conv2d.default, (x.detach(), w.detach(), b.detach(), [2, 1], [1, 1], [1, 1],
                                                          groups, act, 0.1, 0.4, 1.5, True, cpu_backend))
    if cpu_backend == "cpu":
        a = ([2, 1], [1, 1], [1, 1], groups, act, 0.1, 0.4, 1.5)
        y2, z2 = torch.ops.pydl_cpu.conv2d(x.detach(), w.detach(), b.detach(), *a, True)
        assert y2.shape == want.shape and z2.shape == (want.shape if act == "general_relu" else (0,))
        gx, gw, gb = torch.ops.pydl_cpu.conv2d_backward(torch.ones_like(y2), x.detach(), w.detach(), y2, *a,
                                                       [True, True, True])
        assert gx.shape == x.shape and gw.shape == w.shape and torch.equal(gb, torch.zeros_like(b))


def _bwd_args():
    """A valid conv2d_backward call (groups 2, general_relu) to break one argument of at a time."""
    x, w = torch.randn(2, 4, 5, 6), torch.randn(6, 2, 3, 3)
    gy, z = torch.randn(2, 6, 3, 6), torch.randn(2, 6, 3, 6)
    return dict(grad_y=gy, x=x, w=w, z=z, stride=[2, 1], padding=[1, 1], dilation=[1, 1], groups=2,
                act="general_relu", leak=0.1, sub=0.4, maxv=1.5, output_mask=[True, True, True])


@pytest.mark.parametrize("ns", ["pydl", "pydl_cpu"])
@pytest.mark.parametrize("bad, exc, match", [
    (dict(grad_y=torch.randn(2, 6, 3, 5)), ValueError, r"grad_y must have shape .2, 6, 3, 6."),
    (dict(grad_y=torch.randn(2, 6, 3)), ValueError, "grad_y must have shape"),
    (dict(grad_y=torch.randn(2, 6, 3, 6, dtype=torch.float64)), TypeError, "grad_y dtype"),
    (dict(grad_y=torch.randn(2, 6, 3, 6, device="meta")), ValueError, "grad_y is on meta"),
    (dict(z=torch.randn(2, 6, 2, 6)), ValueError, "z must have shape|needs z"),
    (dict(z=torch.randn(2, 6, 3, 6, dtype=torch.float16)), TypeError, "z dtype"),
    (dict(z=None), ValueError, "needs z"),
    (dict(w=torch.randn(6, 3, 3, 3)), ValueError, "input channels"),
    (dict(x=torch.randn(2, 4, 5, 6, dtype=torch.float64)), TypeError, "weight dtype"),
    (dict(groups=4), ValueError, "divisible by groups"),
    (dict(stride=[0, 1]), ValueError, "stride must be >= 1"),
])
def test_backward_op_checks_shapes(ns, bad, exc, match):
    """conv2d_backward is public (and so is the compiled op): an inconsistent call is a clear error that names
    the argument, never an out-of-bounds read."""
    if ns == "pydl_cpu":
        require_backend("cpu", "cpu", OP)
        if any(isinstance(v, torch.Tensor) and v.is_meta for v in bad.values()):
            pytest.skip("a meta tensor dispatches the compiled op to Meta, not to its CPU kernel")
    args = _bwd_args()
    args.update(bad)
    call = list(args.values())
    if ns == "pydl":
        fn, call = torch.ops.pydl.conv2d_backward, call + ["reference"]
    else:
        fn = torch.ops.pydl_cpu.conv2d_backward
    with pytest.raises(exc, match=match):
        fn(*call)


def test_backward_op_is_registered_under_its_own_name():
    """The backward op is its own backends.Op ("conv2d_backward", built from the conv2d unit): doctor lists it,
    reset_caches() forgets what it resolved, and a fallback warning would name it."""
    from pydl import backends

    ops = backends.all_ops()
    op = ops["conv2d_backward"]
    assert op is not ops["conv2d"] and op.build_unit == "conv2d" and ops["conv2d"].build_unit == "conv2d"
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    pydl.conv2d(x, torch.randn(2, 2, 3, 3), backend="reference").sum().backward()
    assert ("reference", "cpu") in op._resolved
    backends.reset_caches()
    assert not op._resolved


def test_device_mismatch_is_named():
    x = torch.randn(1, 2, 4, 4)
    w = torch.randn(2, 2, 3, 3, device="meta")
    with pytest.raises(ValueError, match="weight is on meta"):
        pydl.conv2d(x, w, backend="reference")


def test_cpp_kernel_checks_its_own_arguments():
    """The compiled op is callable directly (torch.ops.pydl_cpu.conv2d): it validates too."""
    require_backend("cpu", "cpu", OP)
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3)
    a = ([1, 1], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="divisible by groups"):
        torch.ops.pydl_cpu.conv2d(x, w, None, *a, 3, "none", 0.0, 0.0, math.inf, False)
    with pytest.raises(TypeError, match="weight dtype"):
        torch.ops.pydl_cpu.conv2d(x, w.double(), None, *a, 2, "none", 0.0, 0.0, math.inf, False)
    with pytest.raises(ValueError, match="larger than the padded input"):
        torch.ops.pydl_cpu.conv2d(x, torch.randn(4, 2, 7, 7), None, *a, 2, "none", 0.0, 0.0, math.inf, False)
    with pytest.raises(ValueError, match="act must be"):
        torch.ops.pydl_cpu.conv2d(x, w, None, *a, 2, "tanh", 0.0, 0.0, math.inf, False)
    with pytest.raises(ValueError, match="grad_y must have shape"):
        torch.ops.pydl_cpu.conv2d_backward(torch.randn(1, 4, 2, 2), x, w, None, *a, 2, "none", 0.0, 0.0, math.inf,
                                           [True, True, True])


# --------------------------------------------------------------------------------------------------
# The CUDA kernels' index math, checked on the host (no GPU needed, only nvcc)
# --------------------------------------------------------------------------------------------------

_EMU_SRC = r"""
#define PYDL_CONV_INDEX_MATH_ONLY
#include "cuda/conv2d.cu"
using namespace pydl::cuda;
// The GEMM of one mode, as a plain host loop over the SAME loaders/epilogue the kernels use.
template <typename T, int MODE> void run(const ConvArgs& a) {
  const int64_t M = size_m<MODE>(a), N = size_n<MODE>(a), Z = MODE == kWgrad ? a.G * a.split : a.G;
  for (int64_t z = 0; z < Z; ++z) {
    const int64_t g = MODE == kWgrad ? z / a.split : z, s = MODE == kWgrad ? z % a.split : 0;
    const int64_t K = size_k<MODE>(a, s);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k)
          acc += double(load_a<T, MODE>(a, g, s, m, k, M, K)) * double(load_b<T, MODE>(a, g, s, k, n, K, N));
        store_c<T, MODE>(a, g, s, m, n, typename Acc<T>::type(acc));
      }
  }
}
extern "C" size_t conv_args_size() { return sizeof(ConvArgs); }
extern "C" void emulate(int mode, const ConvArgs* a) {
  if (is_depthwise(*a)) {  // the direct depthwise kernels' per-element functions
    if (mode == 0) {
      for (int64_t e = 0; e < a->N * a->Co * a->Ho * a->Wo; ++e) dw_fwd_elem<double>(*a, e);
    } else if (mode == 1) {
      for (int64_t e = 0; e < a->N * a->C * a->H * a->W; ++e) dw_dgrad_elem<double>(*a, e);
    } else {
      const int64_t KK = a->KH * a->KW;
      for (int64_t c = 0; c < a->Co; ++c)
        for (int64_t t = 0; t < KK; ++t) {
          double s = 0;
          for (int64_t p = 0; p < a->N * a->Ho * a->Wo; ++p) s += dw_wgrad_term<double>(*a, c, t, p);
          static_cast<double*>(a->ws)[c * KK + t] = s;
        }
    }
    return;
  }
  if (mode == 0) run<double, kFwd>(*a); else if (mode == 1) run<double, kDgrad>(*a); else run<double, kWgrad>(*a);
}
"""


def _emulator(tmp_path_factory):
    import ctypes
    import shutil
    import subprocess

    from pydl import _build

    home = _build._find_cuda_home()
    if home is None:
        pytest.skip("no nvcc: cannot compile the CUDA index math for the host")
    d = tmp_path_factory.mktemp("conv_emu")
    (d / "emu.cu").write_text(_EMU_SRC)
    cmd = [f"{home}/bin/nvcc", "-std=c++17", "-O1", "-shared", "-Xcompiler", "-fPIC", "-I", _build.csrc_dir(),
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-gencode=arch=compute_80,code=sm_80", str(d / "emu.cu"), "-o", str(d / "emu.so")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lib = ctypes.CDLL(str(d / "emu.so"))
    I64 = ctypes.c_int64

    class ConvArgs(ctypes.Structure):  # mirrors csrc/cuda/conv2d.h (the size check below catches drift)
        _fields_ = ([("dtype", ctypes.c_int)]
                    + [(n, I64) for n in "N C H W Co Cg Cog G KH KW Ho Wo sh sw ph pw dh dw".split()]
                    + [("sx", I64 * 4), ("sy", I64 * 4), ("sdx", I64 * 4)]
                    + [(n, ctypes.c_void_p) for n in "x w b y z dy zs dx ws gb".split()]
                    + [("split", I64), ("per_split", I64), ("act", ctypes.c_int), ("leak", ctypes.c_double),
                       ("sub", ctypes.c_double), ("maxv", ctypes.c_double), ("save_z", ctypes.c_bool),
                       ("ci_inner", ctypes.c_bool), ("allow_tf32", ctypes.c_bool)])

    lib.conv_args_size.restype = ctypes.c_size_t
    assert lib.conv_args_size() == ctypes.sizeof(ConvArgs), "ConvArgs layout changed: update this mirror"
    shutil.rmtree(d, ignore_errors=True)
    return lib, ConvArgs


def test_cuda_index_math_on_host(tmp_path_factory):
    """csrc/cuda/conv2d.cu's loaders and epilogue (the error-prone part of an implicit GEMM: which element each
    (m, k) reads, the dgrad gather's divisibility test, the wgrad pixel split, strides of every layout) run in
    a host loop and are compared with torch. Catches index bugs on a machine without a GPU."""
    import ctypes

    lib, ConvArgs = _emulator(tmp_path_factory)
    rng = random.Random(3)
    done = 0
    while done < 60:
        g, cg, cog = rng.choice([1, 2, 3]), rng.randint(1, 3), rng.randint(1, 3)
        if done % 4 == 0:  # depthwise: the direct kernels
            g, cg, cog = rng.randint(2, 5), 1, 1
        kh, kw = rng.randint(1, 3), rng.randint(1, 3)
        s, d = (rng.randint(1, 3), rng.randint(1, 2)), (rng.randint(1, 2), rng.randint(1, 2))
        p, N, H, W = (rng.randint(0, 2), rng.randint(0, 2)), rng.randint(1, 2), rng.randint(1, 7), rng.randint(1, 7)
        if (H + 2 * p[0] - d[0] * (kh - 1) - 1) < 0 or (W + 2 * p[1] - d[1] * (kw - 1) - 1) < 0:
            continue
        done += 1
        layout, act = rng.choice(["nchw", "cl", "sliced"]), rng.choice(["none", "relu", "general_relu"])
        x = torch.randn(N, cg * g, H, (2 if layout == "sliced" else 1) * W, dtype=torch.float64)
        x = x[..., ::2] if layout == "sliced" else x
        fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
        x = x.contiguous(memory_format=fmt) if layout == "cl" else x
        w = torch.randn(cog * g, cg, kh, kw, dtype=torch.float64)
        b = torch.randn(cog * g, dtype=torch.float64)
        z_t = F.conv2d(x, w, b, s, p, d, g)
        a = ConvArgs()
        a.dtype = 3  # double
        a.N, a.C, a.H, a.W = x.shape
        a.Co, a.Cg, a.KH, a.KW = w.shape
        a.G, a.Cog = g, cog
        a.sh, a.sw, a.ph, a.pw, a.dh, a.dw = *s, *p, *d
        a.Ho, a.Wo = z_t.shape[2], z_t.shape[3]
        a.ci_inner = x.stride(1) == 1 and x.shape[1] > 1
        a.act, a.leak, a.sub, a.maxv = {"none": 0, "relu": 1, "general_relu": 2}[act], 0.1, 0.4, 1.5
        y = torch.full_like(z_t, math.nan).contiguous(memory_format=fmt)
        z = torch.full_like(y, math.nan)
        for i in range(4):
            a.sx[i], a.sy[i] = x.stride(i), y.stride(i)
        a.x, a.w, a.b, a.y, a.z, a.save_z = x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), z.data_ptr(), True
        lib.emulate(0, ctypes.byref(a))
        torch.testing.assert_close(z, z_t, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(y, torch_act(z_t, act), rtol=1e-10, atol=1e-10)

        dy = torch.randn_like(z_t).contiguous(memory_format=fmt)
        zz = z_t.clone().requires_grad_(True)
        (dz,) = torch.autograd.grad(torch_act(zz, act), zz, dy)
        zs = torch.empty_like(dy).copy_(torch_act(z_t, act) if act == "relu" else z_t)  # y stands in for z (relu)
        dx = torch.full(x.shape, math.nan, dtype=x.dtype).contiguous(memory_format=fmt)
        split = 1 if cg == cog == 1 else rng.randint(1, 4)  # as conv2d_wgrad_split_for
        ws = torch.full((split, w.shape[0], cg * kh * kw), math.nan, dtype=torch.float64)
        for i in range(4):
            a.sy[i], a.sdx[i] = dy.stride(i), dx.stride(i)
        a.dy, a.zs, a.dx, a.ws = dy.data_ptr(), zs.data_ptr(), dx.data_ptr(), ws.data_ptr()
        a.split, a.per_split = split, -(-(N * a.Ho * a.Wo) // split)
        lib.emulate(1, ctypes.byref(a))
        lib.emulate(2, ctypes.byref(a))
        torch.testing.assert_close(dx, torch.nn.grad.conv2d_input(x.shape, w, dz, s, p, d, g), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ws.sum(0).view(w.shape), torch.nn.grad.conv2d_weight(x, w.shape, dz, s, p, d, g),
                                   rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# GPU (skipped without one; run by scripts/gpu_check.sh)
# --------------------------------------------------------------------------------------------------

GPU_CASES = [
    dict(N=2, C=64, H=28, W=28, Co=64, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1),
    dict(N=3, C=32, H=15, W=17, Co=48, kh=3, kw=3, stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1),
    dict(N=2, C=64, H=14, W=14, Co=128, kh=1, kw=1, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1),
    dict(N=2, C=32, H=20, W=20, Co=32, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=32),
    dict(N=1, C=12, H=9, W=11, Co=18, kh=3, kw=2, stride=(2, 1), padding=(2, 1), dilation=(2, 2), groups=3),
    dict(N=2, C=3, H=33, W=31, Co=24, kh=7, kw=7, stride=(2, 2), padding=(3, 3), dilation=(1, 1), groups=1),
]


def _to_cuda(c, dtype, bias=True):
    x, w, b = make_inputs(c, dtype, bias)
    return x.cuda(), w.cuda(), (None if b is None else b.cuda())


@pytest.fixture
def no_autotune(monkeypatch):
    """Correctness on many shapes without compiling every autotune config for each (minutes on a GPU)."""
    import pydl.kernels.conv2d as kc

    monkeypatch.setattr(kc, "AUTOTUNE", False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("act", ["none", "relu", "general_relu"])
def test_gpu_parity(gpu_backend, dtype, cl, act, no_autotune):
    require_backend(gpu_backend, "cuda", OP)
    for c in GPU_CASES:
        c = dict(c, cl=cl)
        x, w, b = _to_cuda(c, dtype)
        x.requires_grad_(True)
        w.requires_grad_(True)
        b.requires_grad_(True)
        y = pydl.conv2d(x, w, b, act=act, leak=0.1, sub=0.4, maxv=1.5, backend=gpu_backend, **conv_kw(c))
        z64 = F.conv2d(x.detach().double(), w.detach().double(), b.detach().double(), **conv_kw(c))
        k = w.shape[1] * w.shape[2] * w.shape[3]
        close(y, torch_act(z64, act), dtype, k, f"gpu forward {c} {act}")
        gy = torch.randn_like(z64)
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy.to(dtype))
        zz = z64.clone().requires_grad_(True)
        (dz,) = torch.autograd.grad(torch_act(zz, act), zz, gy)
        # fp16/bf16: dz is rounded to the input dtype before its GEMMs (as cuDNN does): compare loosely
        close(gx, torch.nn.grad.conv2d_input(x.shape, w.detach().double(), dz, **conv_kw(c)), dtype,
              4 * c["Co"] // c["groups"] * c["kh"] * c["kw"], f"gpu grad_x {c} {act}")
        close(gw, torch.nn.grad.conv2d_weight(x.detach().double(), w.shape, dz, **conv_kw(c)), dtype,
              4 * dz.numel() // dz.shape[1], f"gpu grad_w {c} {act}")
        close(gb, dz.sum((0, 2, 3)), dtype, 4 * dz.numel() // dz.shape[1], f"gpu grad_b {c} {act}")


@pytest.mark.gpu
def test_gpu_big_index_math(gpu_backend):
    """An activation past 2**31 elements: int64 index math (forward only, fp16, one output channel)."""
    require_backend(gpu_backend, "cuda", OP)
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2 ** 30:
        pytest.skip("needs 24 GB")
    x = torch.randn(1, 1, 2 ** 16, 2 ** 15 + 8, device="cuda", dtype=torch.float16)
    w = torch.randn(1, 1, 1, 1, device="cuda", dtype=torch.float16)
    y = pydl.conv2d(x, w, backend=gpu_backend)
    assert torch.equal(y[0, 0, -1, -5:], (x[0, 0, -1, -5:].float() * w.float().view(())).half())


@pytest.mark.gpu
def test_gpu_opcheck_and_compile(gpu_backend, exact_fp32):
    require_backend(gpu_backend, "cuda", OP)
    x = torch.randn(2, 4, 9, 8, device="cuda")
    w = torch.randn(6, 2, 3, 3, device="cuda")
    b = torch.randn(6, device="cuda")
    torch.library.opcheck(torch.ops.pydl.conv2d.default,
                          (x, w, b, [1, 2], [1, 1], [1, 1], 2, "general_relu", 0.1, 0.4, 1.5, True, gpu_backend))
    f = torch.compile(lambda t: pydl.conv2d(t, w, b, padding=1, groups=2, act="relu", backend=gpu_backend),
                      fullgraph=True)
    torch.testing.assert_close(f(x), F.relu(F.conv2d(x, w, b, padding=1, groups=2)), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["none", "relu", "general_relu"])
def test_gpu_double_backward(gpu_backend, act):
    """gradgradcheck in fp64 on CUDA tensors, and a gradient penalty in fp32 against torch's."""
    require_backend(gpu_backend, "cuda", OP)
    c, _, _ = _GG_CASES[2]
    x, w, b = (t.cuda().requires_grad_(True) for t in make_inputs(c))
    assert torch.autograd.gradgradcheck(_gg_fn(c, act, gpu_backend), (x, w, b), eps=1e-6, atol=1e-6)

    def pen(conv, dtype):
        xx, ww, bb = (t.detach().to(dtype).requires_grad_(True) for t in (x, w, b))
        (gx,) = torch.autograd.grad(conv(xx, ww, bb).pow(2).sum(), xx, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), (ww, bb))

    got = pen(lambda x, w, b: pydl.conv2d(x, w, b, act=act, leak=0.1, sub=0.4, maxv=3.0, backend=gpu_backend,
                                          **conv_kw(c)), torch.float32)
    # torch in fp64 (cuDNN's fp32 would use TF32 by default)
    want = pen(lambda x, w, b: torch_act(F.conv2d(x, w, b, **conv_kw(c)), act, maxv=3.0), torch.float64)
    for g, e in zip(got, want):  # fp32 with ~20-term sums, two levels deep: 1e-4 as the fp32 parity tests
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_gpu_tf32_switch(gpu_backend):
    """Off by default: exact fp32 (tight tolerance). On: TF32 (loose tolerance), still correct."""
    require_backend(gpu_backend, "cuda", OP)
    from pydl.ops import conv2d as op

    x = torch.randn(4, 64, 16, 16, device="cuda")
    w = torch.randn(64, 64, 3, 3, device="cuda")
    want = F.conv2d(x.double(), w.double(), padding=1)
    assert not op.ALLOW_TF32
    torch.testing.assert_close(pydl.conv2d(x, w, padding=1, backend=gpu_backend).double(), want, rtol=1e-4, atol=1e-3)
    op.ALLOW_TF32 = True
    try:
        torch.testing.assert_close(pydl.conv2d(x, w, padding=1, backend=gpu_backend).double(), want, rtol=2e-2,
                                   atol=0.5)
    finally:
        op.ALLOW_TF32 = False
