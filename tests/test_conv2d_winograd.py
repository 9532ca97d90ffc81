"""conv2d's Winograd F(4x4, 3x3) path on the CPU backend (csrc/cpu/conv2d/winograd.cpp).

Tolerance. Winograd's rounding error is not the direct conv's: it is bounded elementwise by
gamma_{C + 29} * winograd_abs(|x|, |w|) (+ |b|) -- tests/winograd_ref.py derives it (winograd_bound) -- and
every comparison here is against the float64 conv of the same inputs with exactly that bound, computed per
element: no blanket tolerance, and no luck involved (the bound holds for any data and summation order).
The activations are 1-Lipschitz (leak <= 1), so the bound carries through them; general_relu's "- sub" in
fp32 adds one rounding of |leaky(z)| + |sub|.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import require_backend
from winograd_ref import AT, BT, G, unit_roundoff, winograd_bound, winograd_conv

import pydl

OP = "conv2d"
LEAK, SUB, MAXV = 0.1, 0.4, 1.5


@pytest.fixture(autouse=True)
def _cpu():
    require_backend("cpu", "cpu", OP)


@pytest.fixture(params=["block", "small"])
def scheme(request, monkeypatch):
    """Force one of the kernel's two schemes (winograd.cpp: run_block, run_small; "auto" picks by U's size
    and the tile count, which at test sizes is always "block"). The kernel reads the variable on every call."""
    monkeypatch.setenv("PYDL_WINOGRAD_SCHEME", request.param)
    return request.param


def torch_act(z, act):
    if act == "none":
        return z
    if act == "relu":
        return F.relu(z)
    return (F.leaky_relu(z, LEAK) - SUB).clamp_max(MAXV)


def act_kwargs(act):
    return {"act": act, "leak": LEAK, "sub": SUB, "maxv": MAXV} if act == "general_relu" else {"act": act}


def make(N, C, H, W, K, dtype=torch.float32, cl=False, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(K, C, 3, 3, generator=g, dtype=torch.float64) * (2 / (9 * C)) ** 0.5).to(dtype)
    b = torch.randn(K, generator=g, dtype=torch.float64).to(dtype) if bias else None
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b


def check_within(got, want, bound, what):
    err = (got.double() - want).abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"{what}: error exceeds the Winograd bound by {worst:.3g} (max error {err.max().item():.3g})"


def test_prototype_matches_direct_conv():
    # the matrices of tests/winograd_ref.py, in float64, against torch's conv: the prototype is the spec
    x, w, _ = make(2, 3, 9, 11, 4, torch.float64)
    for p in (0, 1, 2):
        torch.testing.assert_close(winograd_conv(x, w, p), F.conv2d(x, w, padding=p), rtol=1e-12, atol=1e-12)


SHAPES = [  # (N, C, H, W, K): odd sizes, sizes not a multiple of 4 (partial last tiles), channels not a
    (1, 3, 7, 9, 5),  # multiple of the 16-wide vector chunk, one image, and a few more than one chunk
    (2, 17, 10, 5, 20),
    (1, 1, 4, 4, 1),
    (2, 33, 6, 13, 18),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("act", ["none", "relu", "general_relu"])
def test_forward_within_bound(shape, padding, cl, act, scheme):
    N, C, H, W, K = shape
    bias = act != "relu"  # relu without bias, the other two with
    x, w, b = make(N, C, H, W, K, cl=cl, bias=bias)
    y = pydl.conv2d(x, w, b, padding=padding, backend="cpu", algo="winograd", **act_kwargs(act))
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    z64 = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=padding)
    bound = winograd_bound(x, w, b, padding)
    if act == "general_relu":  # leaky(z) - sub rounded in fp32
        bound = bound + 2 * unit_roundoff(x.dtype) * (z64.abs() + SUB)
    check_within(y, torch_act(z64, act), bound, f"forward act={act}")


def test_preactivation_output_within_bound():
    # general_relu with a gradient wanted also writes z, the pre-activation, for the backward
    x, w, b = make(2, 5, 9, 7, 6)
    with pydl.conv2d_algo("winograd"):
        _, z = torch.ops.pydl.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, "general_relu", LEAK, SUB, MAXV, True, "cpu")
    check_within(z, F.conv2d(x.double(), w.double(), b.double(), padding=1), winograd_bound(x, w, b, 1), "z")


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("act", ["none", "relu"])
def test_grad_input_within_bound(padding, cl, act, scheme):
    x, w, b = make(2, 6, 9, 11, 19, cl=cl)
    x.requires_grad_(True)
    with pydl.conv2d_algo("winograd"):
        y = pydl.conv2d(x, w, b, padding=padding, act=act, backend="cpu")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=
                                                                                     torch.channels_last if cl else
                                                                                     torch.contiguous_format)
    (gx,) = torch.autograd.grad(y, x, dy)
    assert gx.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    # grad-input is the Winograd conv of dz with the flipped, transposed filter at padding 2 - p (read out of
    # w in place, not copied; C=6 -> K=19 makes a transposition that went wrong show): its bound
    dz = dy if act == "none" else dy * (y > 0)
    wf = w.flip(2, 3).transpose(0, 1)
    want = torch.nn.grad.conv2d_input(x.shape, w.double(), dz.double(), padding=padding)
    check_within(gx, want, winograd_bound(dz, wf, None, 2 - padding), f"grad_x act={act}")


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("padding,act", [(0, "none"), (1, "relu"), (2, "general_relu")])
def test_gradcheck_fp64(cl, padding, act, scheme):
    # the kernel runs fp64 through the same code (fp16/bf16 take the direct path)
    x, w, b = make(1, 2, 5, 6, 3, torch.float64, cl=cl)
    x, w, b = (t.clone().requires_grad_(True) for t in (x, w, b))
    if cl:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)

    def f(x, w, b):
        return pydl.conv2d(x, w, b, padding=padding, backend="cpu", algo="winograd", **act_kwargs(act))

    assert torch.autograd.gradcheck(f, (x, w, b), atol=1e-8)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("act", ["none", "general_relu"])
def test_gradgradcheck_fp64(cl, act):
    # second derivatives (a gradient penalty): the backward's own autograd is made of conv2d and
    # conv2d_backward, so inside the block every one of those calls takes the Winograd path too
    x, w, b = make(1, 2, 5, 6, 3, torch.float64, cl=cl)
    x, w, b = (t.clone().requires_grad_(True) for t in (x, w, b))

    def f(x, w, b):
        return pydl.conv2d(x, w, b, padding=1, backend="cpu", **act_kwargs(act))

    with pydl.conv2d_algo("winograd"):
        assert torch.autograd.gradgradcheck(f, (x, w, b), atol=1e-8)


# grad-weight's rounding steps beyond the sum over tiles: the input transform (8, as the forward's), the
# transform of dz's 4x4 tiles by A (two passes of <= 4 terms, exact constants: 4 + 4), the elementwise
# product (1), the transform back by G^T (two passes of <= 6 terms with inexact constants: (6 + 1) * 2).
GW_ROUNDINGS = 8 + 8 + 1 + 14


def winograd_grad_weight(x, dz, padding, absolute=False):
    """The adjoint of winograd_conv in w: gw_kc = G^T (sum_t (A dz_tk A^T) (.) (B^T d_tc B)) G, over every
    tile t of every image, in x's dtype; ``absolute=True`` runs it with |B^T|, |G|, |A^T| (for the bound)."""
    bt, g, at = (torch.tensor(m, dtype=x.dtype) for m in (BT, G, AT))
    if absolute:
        bt, g, at = bt.abs(), g.abs(), at.abs()
    H, W = x.shape[2:]
    Ho, Wo = dz.shape[2:]
    th, tw = -(-Ho // 4), -(-Wo // 4)
    d = F.pad(x, (padding, 4 * tw + 2 - W - padding, padding, 4 * th + 2 - H - padding))
    V = bt @ d.unfold(2, 6, 4).unfold(3, 6, 4) @ bt.T                          # (N, C, th, tw, 6, 6)
    D = at.T @ F.pad(dz, (0, 4 * tw - Wo, 0, 4 * th - Ho)).unfold(2, 4, 4).unfold(3, 4, 4) @ at  # (N, K, ..)
    return g.T @ torch.einsum("nctwpq,nktwpq->kcpq", V, D) @ g                   # (K, C, 3, 3)


def grad_weight_bound(x, dz, padding):
    s = winograd_grad_weight(x.double().abs(), dz.double().abs(), padding, absolute=True)
    n = x.shape[0] * (-(-dz.shape[2] // 4)) * (-(-dz.shape[3] // 4)) + GW_ROUNDINGS
    u = unit_roundoff(x.dtype)
    return (n * u / (1 - n * u)) * s


def test_grad_weight_prototype_is_the_adjoint():
    x, w, _ = make(2, 3, 9, 11, 4, torch.float64)
    for p in (0, 1, 2):
        dz = torch.randn(F.conv2d(x, w, padding=p).shape, dtype=torch.float64)
        want = torch.nn.grad.conv2d_weight(x, w.shape, dz, padding=p)
        torch.testing.assert_close(winograd_grad_weight(x, dz, p), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("act", ["none", "relu"])
def test_grad_weight_within_bound(shape, padding, cl, act):
    N, C, H, W, K = shape
    x, w, b = make(N, C, H, W, K, cl=cl)
    w.requires_grad_(True)
    y = pydl.conv2d(x, w, b, padding=padding, act=act, backend="cpu", algo="winograd")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last if cl else torch.contiguous_format)
    (gw,) = torch.autograd.grad(y, w, dy)
    dz = dy if act == "none" else dy * (y > 0)
    want = torch.nn.grad.conv2d_weight(x.double(), w.shape, dz.double(), padding=padding)
    check_within(gw, want, grad_weight_bound(x, dz, padding), f"grad_w act={act}")


def test_grad_weight_in_chunks(monkeypatch):
    # the threads split grad-weight's output channels into chunks (PYDL_WINOGRAD_UKB kB of dU; 1 kB: one
    # channel per chunk), each reduced over every tile and transformed back on its own
    monkeypatch.setenv("PYDL_WINOGRAD_UKB", "1")
    x, w, _ = make(2, 35, 9, 10, 20)
    w.requires_grad_(True)
    y = pydl.conv2d(x, w, padding=1, backend="cpu", algo="winograd")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (gw,) = torch.autograd.grad(y, w, dy)
    want = torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), padding=1)
    check_within(gw, want, grad_weight_bound(x, dy, 1), "grad_w")


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("act", ["none", "relu", "general_relu"])
def test_small_batch_scheme_in_chunks(monkeypatch, cl, act):
    # The small-batch scheme splits the output channels into chunks of U (a multiple of 16 channels within
    # PYDL_WINOGRAD_UKB kB; 1 kB forces the minimum, 16): 40 output channels are chunks of 16, 16 and 8, and
    # grad-input's 35 are 16, 16 and 3 -- each chunk writes its own channels, bias and activation.
    monkeypatch.setenv("PYDL_WINOGRAD_SCHEME", "small")
    monkeypatch.setenv("PYDL_WINOGRAD_UKB", "1")
    x, w, b = make(2, 35, 9, 10, 40, cl=cl)
    x.requires_grad_(True)
    y = pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd", **act_kwargs(act))
    z64 = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    bound = winograd_bound(x, w, b, 1)
    if act == "general_relu":
        bound = bound + 2 * unit_roundoff(x.dtype) * (z64.abs() + SUB)
    check_within(y, torch_act(z64, act), bound, f"forward act={act}")
    if act == "general_relu":  # forward only: its backward runs the same grad-input conv as the others
        return
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (gx,) = torch.autograd.grad(y, x, dy)
    dz = dy if act == "none" else dy * (y > 0)
    want = torch.nn.grad.conv2d_input(x.shape, w.double(), dz.double(), padding=1)
    check_within(gx, want, winograd_bound(dz, w.flip(2, 3).transpose(0, 1), None, 1), f"grad_x act={act}")


@pytest.mark.parametrize("gemm", ["kernel", "blas"])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_gemm_paths(monkeypatch, scheme, gemm, cl):
    # The 36 GEMMs in winograd.cpp's micro-kernel (6 x 64 micro-tiles over U packed in panels of 16 output
    # channels) or in BLAS, forced in either scheme (auto: the kernel in blocks, BLAS in chunks). 27 tiles
    # (4 micro-tiles of 6 rows and one of 3), 70 output channels (a 64-wide block and a 6-wide masked panel),
    # grad-input's 37 (two panels and 5 columns); UKB=1 cuts the small scheme's U into 16-channel slices,
    # each packed from its own first channel.
    monkeypatch.setenv("PYDL_WINOGRAD_GEMM", gemm)
    monkeypatch.setenv("PYDL_WINOGRAD_UKB", "1")
    x, w, b = make(3, 37, 9, 9, 70, cl=cl)
    x.requires_grad_(True)
    y = pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd", **act_kwargs("general_relu"))
    z64 = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    bound = winograd_bound(x, w, b, 1) + 2 * unit_roundoff(x.dtype) * (z64.abs() + SUB)
    check_within(y, torch_act(z64, "general_relu"), bound, f"forward gemm={gemm}")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y2 = pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd")
    (gx,) = torch.autograd.grad(y2, x, dy)
    want = torch.nn.grad.conv2d_input(x.shape, w.double(), dy.double(), padding=1)
    check_within(gx, want, winograd_bound(dy, w.flip(2, 3).transpose(0, 1), None, 1), f"grad_x gemm={gemm}")


def test_kernel_result_independent_of_threads(monkeypatch):
    # The micro-kernel sums each output's C products in one fixed order whatever the blocking, so the block
    # scheme's blocks (their size depends on the thread count: pick_block) change nothing, bit for bit.
    monkeypatch.setenv("PYDL_WINOGRAD_GEMM", "kernel")
    monkeypatch.setenv("PYDL_WINOGRAD_SCHEME", "block")
    x, w, b = make(2, 24, 20, 20, 40)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd")
        torch.set_num_threads(2)
        y2 = pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, y2)


def test_bad_gemm(monkeypatch):
    monkeypatch.setenv("PYDL_WINOGRAD_GEMM", "mkl")
    x, w, b = make(1, 2, 5, 5, 2)
    with pytest.raises(ValueError, match="PYDL_WINOGRAD_GEMM must be"):
        pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd")


def test_large_transform_buffers(monkeypatch):
    # V of all tiles over 4 Mi elements (1960 tiles x 64 channels x 36) is allocated per call rather than
    # kept by the calling thread (winograd.cpp: scratch): the small-batch forward and grad-weight on it
    monkeypatch.setenv("PYDL_WINOGRAD_SCHEME", "small")
    x, w, b = make(10, 64, 56, 56, 16)
    w.requires_grad_(True)
    y = pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd")
    check_within(y, F.conv2d(x.double(), w.double(), b.double(), padding=1), winograd_bound(x, w, b, 1), "y")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (gw,) = torch.autograd.grad(y, w, dy)
    want = torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), padding=1)
    check_within(gw, want, grad_weight_bound(x, dy, 1), "grad_w")


def test_bad_scheme(monkeypatch):
    monkeypatch.setenv("PYDL_WINOGRAD_SCHEME", "fast")
    x, w, b = make(1, 2, 5, 5, 2)
    with pytest.raises(ValueError, match="PYDL_WINOGRAD_SCHEME must be"):
        pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd")


def _fwd_bwd(x, w, b, algo, **kw):
    x = x.detach().clone().requires_grad_(True)
    y = pydl.conv2d(x, w, b, backend="cpu", algo=algo, **kw)
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), gx


def test_algo_switch_is_honoured():
    # Winograd and direct round differently: in fp32 their results differ in the last bits, so bitwise
    # equality tells which ran.
    x, w, b = make(2, 16, 12, 12, 16)
    yd, gd = _fwd_bwd(x, w, b, "direct", padding=1)
    yw, gw = _fwd_bwd(x, w, b, "winograd", padding=1)
    assert not torch.equal(yd, yw) and not torch.equal(gd, gw)
    # every way of choosing gives the same answer as the per-call argument
    with pydl.conv2d_algo("winograd"):
        assert torch.equal(pydl.conv2d(x, w, b, padding=1, backend="cpu"), yw)
        assert torch.equal(pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="direct"), yd)  # call beats block
    m = pydl.nn.Conv2d(16, 16, 3, padding=1, algo="direct")
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    m.backend = "cpu"
    with pydl.conv2d_algo("winograd"):
        assert torch.equal(m(x), yd)
    assert "algo='direct'" in repr(m)
    try:
        pydl.set_conv2d_algo("winograd")
        assert pydl.get_conv2d_algo() == "winograd"
        assert torch.equal(pydl.conv2d(x, w, b, padding=1, backend="cpu"), yw)
    finally:
        pydl.set_conv2d_algo("auto")


def test_backward_runs_with_the_forwards_algo():
    x, w, b = make(2, 16, 12, 12, 16)
    _, gw = _fwd_bwd(x, w, b, "winograd", padding=1)
    x = x.clone().requires_grad_(True)
    with pydl.conv2d_algo("winograd"):
        y = pydl.conv2d(x, w, b, padding=1, backend="cpu")
    with pydl.conv2d_algo("direct"):  # the backward runs outside: it keeps the forward's choice
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(gx, gw)


@pytest.mark.parametrize("case", [
    {"stride": 2, "padding": 1}, {"dilation": 2, "padding": 2}, {"groups": 2, "padding": 1},
    {"kernel": 5, "padding": 2},
    {"dtype": torch.bfloat16, "padding": 1}, {"dtype": torch.float16, "padding": 1}, {"kernel": 1, "padding": 0},
])
def test_unsupported_shapes_run_direct(case):
    case = dict(case)
    dtype, k, groups = case.pop("dtype", torch.float32), case.pop("kernel", 3), case.get("groups", 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 11, 11, generator=g).to(dtype)
    w = torch.randn(8, 8 // groups, k, k, generator=g).to(dtype)
    yd, gd = _fwd_bwd(x, w, None, "direct", **case)
    yw, gw = _fwd_bwd(x, w, None, "winograd", **case)
    assert torch.equal(yd, yw) and torch.equal(gd, gw)


def test_grad_input_with_padding_above_2_runs_direct():
    # grad-input as a Winograd conv needs padding 2 - p >= 0; the forward itself takes any padding
    x, w, b = make(1, 16, 6, 6, 16)
    yd, gd = _fwd_bwd(x, w, b, "direct", padding=3)
    yw, gw = _fwd_bwd(x, w, b, "winograd", padding=3)
    assert not torch.equal(yd, yw) and torch.equal(gd, gw)
    check_within(yw, F.conv2d(x.double(), w.double(), b.double(), padding=3), winograd_bound(x, w, b, 3), "p=3")


def _auto_picks(N, C, H, K):
    """Which algorithm "auto" ran: its output equals one path's bitwise (and the two differ, or the
    question could not be answered)."""
    x, w, b = make(N, C, H, H, K)
    auto, direct, wino = (_fwd_bwd(x, w, b, a, padding=1)[0] for a in ("auto", "direct", "winograd"))
    assert not torch.equal(direct, wino), "fp32 Winograd and direct should differ in rounding here"
    return "direct" if torch.equal(auto, direct) else "winograd" if torch.equal(auto, wino) else "neither"


def test_auto_uses_the_crossover_table():
    assert _auto_picks(2, 8, 16, 8) == "direct"        # below 16 channels: nothing measured there
    assert _auto_picks(2, 64, 56, 64) == "winograd"    # 2 x 14 x 14 = 392 tiles
    assert _auto_picks(2, 64, 7, 64) == "winograd"     # from 2 x 2 x 2 = 8 tiles
    assert _auto_picks(2, 16, 7, 16) == "winograd"
    assert _auto_picks(1, 64, 7, 64) == "direct"       # 4 tiles do not repay the filter transform reliably
    assert _auto_picks(1, 32, 4, 32) == "direct"       # nor 1 tile


def test_deterministic():
    x, w, b = make(2, 20, 13, 9, 24)
    torch.use_deterministic_algorithms(True)
    try:
        r1 = _fwd_bwd(x, w, b, "winograd", padding=1)
        r2 = _fwd_bwd(x, w, b, "winograd", padding=1)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])


def test_bad_algo():
    x, w, b = make(1, 2, 5, 5, 2)
    with pytest.raises(ValueError, match="algo must be one of"):
        pydl.conv2d(x, w, b, algo="fft")
    with pytest.raises(ValueError, match="algo must be one of"), pydl.conv2d_algo("Winograd"):
        pass
    with pytest.raises(ValueError, match="algo must be"):
        torch.ops.pydl_cpu.conv2d_set_algo(7)


def test_compile_fullgraph_with_algo_context():
    x, w, b = make(1, 4, 8, 8, 4)
    f = torch.compile(lambda x: pydl.conv2d(x, w, b, padding=1, backend="cpu"), fullgraph=True)
    with pydl.conv2d_algo("winograd"):
        got = f(x)
    assert torch.equal(got, pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd"))
    assert math.isfinite(got.sum().item())
