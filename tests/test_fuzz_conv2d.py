"""conv2d fuzz: seeded random valid cases against torch.nn.functional.conv2d (+ the activation), forward and
all three gradients, on the reference and cpu backends (and a few tiny ones on Triton's interpreter); then
invalid arguments of every type, each required to raise a clear error naming the argument. The outcome of
each case is classified by tests/fuzzing.py; `pytest -s` prints the tallies.

What a valid case draws: N in {0, 1, 2}; C = 1, grouped and depthwise convolutions; kernels larger than the
input (covered by padding); strides and dilations; x contiguous, channels_last, non-contiguous (transposed
or strided) or expanded (a stride-0 dimension); every float dtype; values normal, with NaN/Inf sprinkled in,
huge (results near the dtype's top: the outputs may overflow to Inf, as torch's do) or denormal.

What torch's answer is: the convolution in float64 from the same (rounded) inputs, then the activation and
its derivative in the case's dtype -- the way torch itself rounds the output before the activation sees it.

Tolerances (|got - want| <= atol + rtol*|want|, per output): rtol = 2 ulp of the dtype (the final rounding,
done by both sides); atol = 8 * (eps_dtype + K * eps_acc) * S, where S is the largest |x|-|w| convolution
of that output (the size an accumulation error scales with: K products of fp32, or fp64, rounding error
each) -- a wrong index or a missed tap is an error of order S, far above this.
"""
import math
import random

import pytest
import torch
import torch.nn.functional as F

import pydl
from helpers import require_backend
from fuzzing import Tally, check, run_isolated

OP = "conv2d"
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
EPS_ACC = {torch.float64: 2.0 ** -53}  # fp16/bf16/fp32 accumulate in fp32
HUGE = {torch.float16: 1e3, torch.bfloat16: 1e35, torch.float32: 1e35, torch.float64: 1e300}
# in the subnormal range of each dtype (below its smallest normal number)
DENORMAL = {torch.float16: 1e-6, torch.bfloat16: 1e-39, torch.float32: 1e-39, torch.float64: 1e-310}
ACT = dict(leak=0.1, sub=0.4, maxv=1.5)
# written down in pydl/ops/conv2d.py's docstring: not pydl's kernel, Triton's CPU interpreter
INTERPRETER_BF16_SUBNORMALS = "Triton's CPU interpreter converts bfloat16 subnormals to float32 wrongly"


def torch_act(z, act):
    if act == "none":
        return z
    if act == "relu":
        return F.relu(z)
    return (F.leaky_relu(z, ACT["leak"]) - ACT["sub"]).clamp_max(ACT["maxv"])


# --------------------------------------------------------------------------------------------------
# drawing valid cases
# --------------------------------------------------------------------------------------------------

def draw_geometry(rng, tiny=False):
    """A valid conv configuration (the output has at least one pixel)."""
    while True:
        kind = rng.choice(["plain", "grouped", "depthwise", "one_channel"])
        if kind == "depthwise":
            groups = rng.choice([2, 3])
            cg, cog = 1, rng.choice([1, 2])
        elif kind == "one_channel":
            groups, cg, cog = 1, 1, rng.choice([1, 2, 3])
        else:
            groups = 1 if kind == "plain" else rng.choice([2, 3])
            cg, cog = rng.choice([1, 2, 3]), rng.choice([1, 2])
        kh, kw = rng.randint(1, 3 if tiny else 4), rng.randint(1, 3 if tiny else 4)
        H, W = rng.randint(1, 4 if tiny else 6), rng.randint(1, 4 if tiny else 6)
        s = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2]))
        d = (rng.choice([1, 1, 2]), rng.choice([1, 1, 2]))
        p = (rng.randint(0, 3), rng.randint(0, 2))
        N = rng.choice([0, 1, 1, 2] if not tiny else [1, 1, 0])
        ho = (H + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
        wo = (W + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
        if ho >= 1 and wo >= 1:
            return dict(N=N, C=cg * groups, H=H, W=W, Co=cog * groups, kh=kh, kw=kw, stride=s, padding=p,
                        dilation=d, groups=groups)


def special(rng, t, kind, dtype):
    """t (float64) with the case's special values, rounded to dtype."""
    if kind == "nan_inf" and t.numel():
        t = t.clone().flatten()
        for v in (math.nan, math.inf, -math.inf):
            t[rng.randrange(t.numel())] = v
        t = t.view(-1)
    elif kind == "huge":
        t = t * HUGE[dtype]
    elif kind == "denormal":
        t = t * DENORMAL[dtype]
    return t.to(dtype)


def make_x(rng, g, dtype, layout, values):
    N, C, H, W = g["N"], g["C"], g["H"], g["W"]
    base_shape = {"transposed": (N, C, W, H), "strided": (N, C, H, 2 * W), "expanded": (1, C, 1, W)}
    shape = base_shape.get(layout, (N, C, H, W))
    base = special(rng, torch.randn(shape, dtype=torch.float64), values, dtype).view(shape)
    if layout == "channels_last":
        return base.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # the last two dims swapped in memory
        return base.transpose(2, 3)
    if layout == "strided":  # every other column of a wider tensor
        return base[..., ::2]
    if layout == "expanded":  # stride 0 along N and H: one row read many times
        return base.expand(N, C, H, W)
    return base


def _clean_abs(t):
    return t.double().abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)


def expected(x, w, b, gy, g, act):
    """torch's answer: (y, grad_x, grad_w, grad_b), and the scale S of each (see the module docstring)."""
    kw = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"], groups=g["groups"])
    dtype = x.dtype
    x64, w64 = x.double(), w.double()
    b64 = None if b is None else b.double()
    z64 = F.conv2d(x64, w64, b64, **kw)
    # the activation in the case's dtype, on the rounded pre-activation (what torch does after a conv in dtype)
    zt = z64.to(dtype).requires_grad_(True)
    yt = torch_act(zt, act)
    (dz,) = torch.autograd.grad(yt, zt, gy)
    dz64 = dz.double()
    gx = torch.nn.grad.conv2d_input(x.shape, w64, dz64, **kw)
    gw = torch.nn.grad.conv2d_weight(x64, w.shape, dz64, **kw)
    gb = dz64.sum((0, 2, 3))
    ax, aw, ag = _clean_abs(x), _clean_abs(w), _clean_abs(gy)
    scale = (F.conv2d(ax, aw, None if b is None else _clean_abs(b), **kw),
             torch.nn.grad.conv2d_input(x.shape, aw, ag, **kw), torch.nn.grad.conv2d_weight(ax, w.shape, ag, **kw),
             ag.sum((0, 2, 3)))
    out = (yt.detach(), gx.to(dtype), gw.to(dtype), gb.to(dtype))
    return out, [float(s.max()) if s.numel() else 0.0 for s in scale]


def normalise(outs, scales, dtype):
    """Each output divided by its scale S, so one (rtol, atol) pair serves all four outputs: atol is then
    8 * (eps_dtype + K * eps_acc) for the longest reduction K, and rtol 2 ulp (module docstring)."""
    res = []
    for o, s in zip(outs, scales):
        assert o.dtype == dtype, f"dtype {o.dtype}, expected {dtype}"
        res.append(o.double() / s if s > 0 else o.double())
    return tuple(res)


def valid_case(rng, backend, tiny=False):
    g = draw_geometry(rng, tiny)
    dtype = rng.choice(DTYPES)
    layout = rng.choice(["contiguous", "channels_last", "transposed", "strided", "expanded"])
    values = rng.choice(["normal", "normal", "nan_inf", "huge", "denormal"])
    act = rng.choice(["none", "relu", "general_relu"])
    bias = rng.random() < 0.7
    x = make_x(rng, g, dtype, layout, values)
    w = torch.randn(g["Co"], g["C"] // g["groups"], g["kh"], g["kw"], dtype=torch.float64).to(dtype)
    if rng.random() < 0.2 and g["kh"] == g["kw"]:  # a non-contiguous weight
        w = w.transpose(2, 3)
    b = torch.randn(g["Co"], dtype=torch.float64).to(dtype) if bias else None
    kw = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"], groups=g["groups"])
    ho = (g["H"] + 2 * g["padding"][0] - g["dilation"][0] * (g["kh"] - 1) - 1) // g["stride"][0] + 1
    wo = (g["W"] + 2 * g["padding"][1] - g["dilation"][1] * (g["kw"] - 1) - 1) // g["stride"][1] + 1
    gy = torch.randn(g["N"], g["Co"], ho, wo, dtype=torch.float64).to(dtype)
    n_out = 4 if bias else 3
    name = f"{backend} {dtype} {layout} {values} act={act} bias={bias} {g}"
    want, scales = expected(x, w, b, gy, g, act)

    def run():
        xs, ws = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
        bs = None if b is None else b.detach().requires_grad_(True)
        y = pydl.conv2d(xs, ws, bs, act=act, backend=backend, **ACT, **kw)
        leaves = [t for t in (xs, ws, bs) if t is not None]
        grads = torch.autograd.grad(y, leaves, gy)
        return normalise((y.detach(),) + tuple(grads), scales, dtype)

    eps_dtype = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: 2.0 ** -24,
                 torch.float64: 2.0 ** -53}[dtype]
    red = max(g["C"] // g["groups"] * g["kh"] * g["kw"], g["Co"] // g["groups"] * g["kh"] * g["kw"],
              g["N"] * ho * wo, 1)
    atol = 8 * (eps_dtype + red * EPS_ACC.get(dtype, 2.0 ** -24))
    by_design = None
    if backend == "triton" and dtype == torch.bfloat16 and values == "denormal":
        by_design = INTERPRETER_BF16_SUBNORMALS
    check(TALLY[backend], name, run, lambda: normalise(want[:n_out], scales, dtype), rtol=2 * 2 * eps_dtype,
          atol=atol, by_design=by_design)


def zero_channel_case(rng, backend):
    """An input with 0 channels: torch returns an empty (N, 0, Ho, Wo) output and zero gradients."""
    groups = rng.choice([1, 2])
    co, kh, kw = groups * rng.choice([1, 2]), rng.randint(1, 3), rng.randint(1, 3)
    n, h, w_ = rng.choice([0, 1, 2]), rng.randint(3, 5), rng.randint(3, 5)
    dtype = rng.choice(DTYPES)
    kw_ = dict(stride=rng.choice([1, 2]), padding=rng.randint(0, 1), groups=groups)
    args = (torch.randn(n, 0, h, w_).to(dtype), torch.randn(co, 0, kh, kw).to(dtype), torch.randn(co).to(dtype))
    act = rng.choice(["none", "relu", "general_relu"])

    def grads(conv):
        leaves = [t.detach().clone().requires_grad_(True) for t in args]
        y = conv(*leaves)
        return (y.detach(),) + torch.autograd.grad(y.sum(), leaves)

    check(TALLY[backend], f"{backend} 0 input channels {dtype} act={act} N={n} groups={groups}",
          lambda: grads(lambda x, w, b: pydl.conv2d(x, w, b, act=act, backend=backend, **ACT, **kw_)),
          lambda: grads(lambda x, w, b: torch_act(F.conv2d(x, w, b, **kw_), act)))


TALLY = {}


@pytest.mark.parametrize("backend, n", [("reference", 120), ("cpu", 120), ("triton", 6)])
def test_fuzz_valid(backend, n):
    require_backend(backend, "cpu", OP)
    TALLY[backend] = tally = Tally()
    rng = random.Random(f"conv2d-{backend}")
    torch.manual_seed(1234)
    for _ in range(n):
        valid_case(rng, backend, tiny=backend == "triton")
    for _ in range(3 if backend == "triton" else 8):
        zero_channel_case(rng, backend)
    tally.assert_clean(f"conv2d valid [{backend}]")


# --------------------------------------------------------------------------------------------------
# invalid arguments: each must raise a clear error that names the argument
# --------------------------------------------------------------------------------------------------

def _invalid_public_cases():
    """(case name, kwargs overriding a valid call, the argument the error must name)."""
    import numpy as np

    x, w = torch.randn(2, 4, 6, 6), torch.randn(4, 2, 3, 3)
    bad_types = [1.5, "2", None, [1, 2, 3], (1.0, 1), True, object()]
    cases = []
    for arg in ("stride", "padding", "dilation"):
        for v in bad_types:
            cases.append((f"{arg}={v!r}", {arg: v}, arg))
        cases.append((f"{arg} negative", {arg: -1}, arg))
    cases += [("stride=0", {"stride": 0}, "stride"), ("dilation=0", {"dilation": 0}, "dilation"),
              ("padding='full'", {"padding": "full"}, "padding"),
              ("padding='same' strided", {"padding": "same", "stride": 2}, "padding"),
              ("padding (-1, 0) reflect", {"padding": (-1, 0), "padding_mode": "reflect"}, "padding")]
    for v in (2.0, 0, -2, "2", None, True, 3, np.float64(2.0)):
        cases.append((f"groups={v!r}", {"groups": v}, "groups"))
    for v in ("mirror", None, 1, ""):
        cases.append((f"padding_mode={v!r}", {"padding_mode": v}, "padding_mode"))
    for v in ("gelu", None, 3, "RELU"):
        cases.append((f"act={v!r}", {"act": v}, "act"))
    for arg in ("leak", "sub", "maxv"):
        for v in ("fast", [1.0], True):
            cases.append((f"{arg}={v!r}", {"act": "general_relu", arg: v}, arg))
    cases += [("leak=-1", {"act": "general_relu", "leak": -1.0}, "leak"),
              ("sub=inf", {"act": "general_relu", "sub": math.inf}, "sub"),
              ("maxv=nan", {"act": "general_relu", "maxv": math.nan}, "maxv"),
              ("backend='bogus'", {"backend": "bogus"}, "backend"), ("backend=3", {"backend": 3}, "backend")]
    for v in ([[1.0]], np.zeros((2, 4, 6, 6), np.float32), torch.zeros(2, 4, 6, 6, dtype=torch.int64),
              torch.zeros(2, 4, 6, 6, dtype=torch.complex64), torch.zeros(6, 6), torch.zeros(1, 2, 4, 6, 6),
              torch.zeros(2, 3, 6, 6), torch.zeros(2, 4, 6, 6, dtype=torch.float64), None, 3.0):
        cases.append((f"x={type(v).__name__} {getattr(v, 'shape', '')} {getattr(v, 'dtype', '')}", {"x": v}, "x"))
    for v in ([[1.0]], torch.zeros(4, 2, 3), torch.zeros(4, 2, 3, 3, dtype=torch.float64), torch.zeros(4, 3, 3, 3),
              torch.zeros(0, 2, 3, 3), torch.zeros(4, 2, 0, 3), torch.zeros(4, 2, 9, 9), torch.zeros(3, 2, 3, 3),
              torch.zeros(4, 2, 3, 3, dtype=torch.int32), None):
        cases.append((f"weight={type(v).__name__} {getattr(v, 'shape', '')} {getattr(v, 'dtype', '')}",
                      {"weight": v}, "weight" if not (isinstance(v, torch.Tensor) and v.shape[0] == 3) else "groups"))
    for v in ([0.0] * 4, torch.zeros(5), torch.zeros(4, 1), torch.zeros(4, dtype=torch.float64), 1.0,
              torch.zeros(4, dtype=torch.int64)):
        cases.append((f"bias={type(v).__name__} {getattr(v, 'shape', '')}", {"bias": v}, "bias"))
    return x, w, cases


def test_fuzz_invalid_arguments():
    tally = Tally()
    x, w, cases = _invalid_public_cases()
    for name, bad, arg in cases:
        kw = dict(x=x, weight=w, bias=torch.zeros(4), stride=1, padding=1, dilation=1, groups=2, act="none",
                  backend="reference")
        kw.update(bad)
        check(tally, f"conv2d {name}", lambda kw=kw: pydl.conv2d(**kw), invalid_arg=arg)
    # the public ops called directly: the schema parses the types, pydl checks every value and shape
    a = dict(grad_y=torch.randn(2, 6, 3, 6), x=torch.randn(2, 4, 5, 6), w=torch.randn(6, 2, 3, 3),
             z=torch.randn(2, 6, 3, 6), stride=[2, 1], padding=[1, 1], dilation=[1, 1], groups=2,
             act="general_relu", leak=0.1, sub=0.4, maxv=1.5, output_mask=[True, True, True])
    bwd_bad = [("grad_y", torch.randn(2, 6, 3, 5)), ("grad_y", torch.randn(2, 6, 3, 6, 1)),
               ("grad_y", torch.randn(2, 6, 3, 6, dtype=torch.float64)), ("grad_y", torch.zeros(2, 6, 3, 6).long()),
               ("z", torch.randn(2, 6, 4, 6)), ("z", torch.randn(2, 6, 3, 6).half()), ("z", None),
               ("w", torch.randn(6, 3, 3, 3)), ("w", torch.randn(5, 2, 3, 3)), ("stride", [0, 1]),
               ("padding", [-1, 0]), ("groups", 4), ("act", "tanh")]
    names = {"w": "weight", "z": "z", "act": "act"}
    for arg, v in bwd_bad:
        kw = dict(a, **{arg: v})
        for ns, extra in (("pydl", ["reference"]), ("pydl_cpu", [])):
            if ns == "pydl_cpu" and not backends_cpu_ok():
                continue
            fn = getattr(torch.ops, ns).conv2d_backward
            want = names.get(arg, arg) if not (arg == "w" and v.shape[0] == 5) else "groups"
            check(tally, f"{ns}.conv2d_backward {arg}={getattr(v, 'shape', v)}",
                  lambda fn=fn, kw=kw, extra=extra: fn(*kw.values(), *extra), invalid_arg=want)
    # the compiled op once read out of bounds here: run it where a crash cannot take the test run down
    if backends_cpu_ok():
        run_isolated(tally, "pydl_cpu.conv2d_backward inconsistent shapes (subprocess)", """
            import torch, pydl
            from pydl import backends
            assert backends.available("cpu", "cpu", "conv2d")[0]
            x, w = torch.randn(2, 4, 5, 6), torch.randn(6, 2, 3, 3)
            a = ([2, 1], [1, 1], [1, 1], 2, "general_relu", 0.1, 0.4, 1.5, [True, True, True])
            for gy, z in ((torch.randn(1, 6, 2, 2), torch.randn(1, 6, 2, 2)), (torch.randn(2, 6, 3, 6), torch.randn(1)),
                          (torch.randn(2, 6, 3, 6), torch.randn(2, 6, 3, 6, dtype=torch.float64))):
                try:
                    torch.ops.pydl_cpu.conv2d_backward(gy, x, w, z, *a)
                except (ValueError, TypeError) as e:
                    assert "grad_y" in str(e) or "z" in str(e), e
                else:
                    raise SystemExit("accepted")
            """)
    tally.assert_clean("conv2d invalid arguments")


def backends_cpu_ok():
    from pydl import backends

    return backends.available("cpu", "cpu", OP)[0]
