"""Fuzz batch_norm: seeded random valid inputs against torch.nn.functional.batch_norm -- forward output,
running statistics, and the backward (dx, dweight, dbias) -- in training and eval, and invalid arguments of
every type for the public function, the ops, the compiled ops and the modules (tests/fuzzing.py classifies;
no WRONG, no CRASH; the tally is printed).

The expectation is torch on the same values: float32/float64 in their own dtype, float16/bfloat16 through
float32 (the dtype pydl's kernels compute in, as torch's CPU kernels do) rounded back to the input dtype.
momentum=None is torch's module rule: factor 1 / num_batches_tracked. torch runs on a contiguous copy of x:
its answer can depend on the layout where it should not (a channel whose float32 var overflows gets var inf
and y = bias on the contiguous path, a float64 var and normalised y on the strided one; a (N, C, 1, W)
tensor with channel stride 1 got a different dx), and pydl's contract is the contiguous path's.

Tolerances (as tests/test_batch_norm.py argues them): every output is compared relative to
max(1, max |expected|), rounded to a power of two: float64 1e-9, float32 5e-5 (fp32 accumulation over a few
hundred values plus a second reduction in the backward), float16 4e-3 and bfloat16 3.2e-2 (two ulps of the
stored result). Channels whose values are all equal in training are left out of the random draw (an ulp of
difference in the mean, times 1/sqrt(eps), is any implementation's noise -- torch's included).
"""
import math
import random

import torch
import torch.nn.functional as F

import pydl
from fuzzing import Tally, check, run_cpu_backends, run_isolated

OP = "batch_norm"
SEED = 14
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TOL = {torch.float64: 1e-9, torch.float32: 5e-5, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}
BIG = {torch.float16: 1e3, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e150}
TINY = {torch.float16: 1e-6, torch.bfloat16: 1e-39, torch.float32: 1e-40, torch.float64: 1e-310}  # denormals


def comp_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def random_input(rng, g, dtype, tiny):
    rank = rng.randint(2, 4)
    dims = (1, 2, 3) if tiny else (1, 2, 3, 4, 5)
    shape = [rng.choice(dims) for _ in range(rank)]
    if rng.random() < 0.08:
        shape[rng.randrange(rank)] = 0  # empty batch / no channels / zero length
    kind = rng.choice(("randn", "randn", "offset", "nonfinite", "huge", "denormal", "near_max"))
    n = math.prod(shape)
    v = torch.randn(n, generator=g, dtype=torch.float64) * rng.choice((0.5, 1.0, 4.0))
    if kind == "offset":  # |mean| >> std: a sum of squares would cancel
        v = v + 1000.0
    elif kind == "huge":  # float32 var overflows: torch and pydl give var inf, invstd 0
        v = v * BIG[dtype]
    elif kind == "denormal":
        v = v * TINY[dtype]
    elif kind == "near_max":
        v = torch.sign(v) * torch.finfo(dtype).max / 2
    if kind == "nonfinite" and n:
        idx = torch.randperm(n, generator=g)
        v[idx[: max(1, n // 6)]] = rng.choice((float("nan"), float("inf"), -float("inf")))
    x = v.to(dtype).reshape(shape)
    layout = rng.choice(("contiguous", "contiguous", "channels_last", "transposed", "sliced", "expanded"))
    if layout == "channels_last" and rank == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed" and rank >= 3:
        x = x.transpose(1, -1).contiguous().transpose(1, -1)  # (N, L, C) memory: channels last for rank 3
    elif layout == "sliced":
        x = torch.cat([x, x], dim=-1)[..., : x.shape[-1]]
    elif layout == "expanded" and rank >= 3 and shape[0] >= 2:
        x = x[..., :1].expand(*shape[:-1], shape[-1])  # stride 0 along the last dim; values still vary over N
    else:
        layout = "contiguous"
    return x, kind, layout


def torch_outputs(x, w, b, rm, rv, dy, training, momentum, eps, nbt):
    """[y, running_mean, running_var, dx, dweight, dbias] from torch (None where absent)."""
    comp = comp_dtype(x.dtype)
    xx = x.detach().to(comp).contiguous().requires_grad_()  # see the module docstring: torch's main path
    ww = None if w is None else w.detach().to(comp).requires_grad_()
    bb = None if b is None else b.detach().to(comp).requires_grad_()
    rm2 = None if rm is None else rm.to(comp, copy=True)
    rv2 = None if rv is None else rv.to(comp, copy=True)
    factor = momentum if momentum is not None else (1.0 / float(nbt) if nbt is not None else 0.0)
    y = F.batch_norm(xx, rm2, rv2, ww, bb, training, factor, eps)
    y.backward(dy.to(comp))
    return [y.detach().to(x.dtype), None if rm is None else rm2.to(rm.dtype), None if rv is None else rv2.to(rv.dtype),
            xx.grad.to(x.dtype), None if ww is None else ww.grad.to(w.dtype),
            None if bb is None else bb.grad.to(b.dtype)]


def pydl_outputs(x, w, b, rm, rv, dy, training, momentum, eps, nbt, backend):
    xx = x.detach().requires_grad_()
    ww = None if w is None else w.detach().clone().requires_grad_()
    bb = None if b is None else b.detach().clone().requires_grad_()
    rm2 = None if rm is None else rm.clone()
    rv2 = None if rv is None else rv.clone()
    y = pydl.batch_norm(xx, rm2, rv2, ww, bb, training, momentum, eps,
                        num_batches_tracked=None if nbt is None else nbt.clone(), backend=backend)
    y.backward(dy)
    return [y.detach(), rm2, rv2, xx.grad, None if ww is None else ww.grad, None if bb is None else bb.grad]


def normalised(outs, scales):
    """Each output in float64 divided by its power-of-two scale (exact), so one rtol/atol fits them all."""
    return [None if o is None else o.detach().double() / s for o, s in zip(outs, scales)]


def scale_of(t):
    if t is None:
        return 1.0
    fin = t.detach().double()[torch.isfinite(t.detach().double())].abs()
    biggest = max(1.0, float(fin.max()) if fin.numel() else 1.0)
    return math.ldexp(1.0, math.frexp(biggest)[1])  # a power of two above biggest


def valid_case(tally, rng, g, backend, tiny):
    dtype = rng.choice(DTYPES)
    x, kind, layout = random_input(rng, g, dtype, tiny)
    C = x.shape[1]
    pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) and rng.random() < 0.7 else dtype
    affine = rng.random() < 0.7
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(pdt) if affine else None
    b = torch.randn(C, generator=g, dtype=torch.float64).to(pdt) if affine else None
    training = rng.random() < 0.7
    track = rng.random() < 0.8 or not training
    rm = torch.randn(C, generator=g, dtype=torch.float64).to(pdt) if track else None
    rv = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(pdt) if track else None
    momentum = rng.choice((0.1, 0.5, 1.0, None)) if training else 0.1
    nbt = torch.tensor(rng.randint(1, 5)) if momentum is None else None
    eps = rng.choice((1e-5, 1e-3, 0.1))
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    args = (x, w, b, rm, rv, dy, training, momentum, eps, nbt)
    name = (f"{backend} {dtype} {tuple(x.shape)} {layout} {kind} training={training} affine={affine} "
            f"running={track} momentum={momentum} eps={eps}")
    if kind == "near_max" and training and x.numel():
        # torch's float32 training forward sums a channel before dividing: the sum overflows, the channel
        # turns inf/NaN; pydl computes the true mean (pydl/ops/batch_norm.py docstring)
        return check(tally, name, None, by_design="true mean where torch's float32 channel sum overflows")
    if C == 0:  # torch's eval path indexes channel 0 (IndexError); pydl returns the empty outputs
        return check(tally, name, None, by_design="zero channels: empty outputs (torch: IndexError in eval)")
    try:
        want = torch_outputs(*args)
        scales = [scale_of(t) for t in want]
        expect = lambda: normalised(want, scales)  # noqa: E731
    except Exception as e:  # noqa: BLE001 - torch refuses: pydl must refuse too (check() records an agreeing refusal)
        err = e

        def expect():
            raise err
        scales = [1.0] * 6
    tol = TOL[dtype]
    check(tally, name, lambda: normalised(pydl_outputs(*args, backend), scales), expect, rtol=tol, atol=tol)


def invalid_cases(backend):
    """(case, call, the argument its error must name), for the public function and the module."""
    x = torch.randn(4, 3, 5)
    base = dict(running_mean=torch.zeros(3), running_var=torch.ones(3), weight=torch.ones(3), bias=torch.zeros(3),
                training=True, momentum=0.1, eps=1e-5, backend=backend)

    def call(**kw):
        a = {**base, **kw}
        xx = a.pop("x", x)
        return lambda: pydl.batch_norm(xx, **a)

    cases = [(f"x={v!r:.30}", call(x=v), "x") for v in ([1.0, 2.0], None, torch.arange(24).reshape(4, 3, 2),
                                                     torch.randn(6))]
    cases += [(f"weight={v!r:.40}", call(weight=v), "weight") for v in ("w", torch.ones(3, 1), torch.ones(4),
                                                                      torch.ones(3, dtype=torch.float64))]
    cases += [("bias (1, 3)", call(bias=torch.zeros(1, 3)), "bias")]
    cases += [("running_mean (5,)", call(running_mean=torch.zeros(5)), "running_mean"),
              ("running_var only", call(running_mean=None), "running_mean")]
    cases += [(f"eps={v!r}", call(eps=v), "eps") for v in (0.0, -1.0, float("nan"), "1e-5", None)]
    cases += [("eps=-1 eval", call(eps=-1.0, training=False), "eps")]
    cases += [(f"momentum={v!r}", call(momentum=v), "momentum") for v in ("fast", float("nan"), math.inf, [0.1])]
    cases += [(f"num_batches_tracked={v!r}", call(momentum=None, num_batches_tracked=v), "num_batches_tracked")
              for v in (torch.tensor(0), torch.tensor(-2), torch.tensor([1, 2]), torch.tensor(1.0), 3, None)]
    cases += [(f"training={v!r}", call(training=v), "training") for v in ("yes", None)]
    cases += [(f"act={v!r}", call(act=v), "act") for v in ("gelu", 3)]
    cases += [("leak='x'", call(act="general_relu", leak="x"), "leak"),
              ("maxv='big'", call(act="general_relu", maxv="big"), "maxv")]
    cases += [(f"backend={v!r}", call(backend=v), "backend") for v in (3, "bogus")]
    # the ops: the running update and the separable backward take a count
    op = torch.ops.pydl
    cases += [("update_running count=-1", lambda: op.batch_norm_update_running(
        torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3), -1, 0.1, None, backend), "count"),
        ("update_running nbt=0", lambda: op.batch_norm_update_running(
            torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3), 8, None, torch.tensor(0), backend),
         "num_batches_tracked"),
        ("backward_elemt count=-1", lambda: op.batch_norm_backward_elemt(
            x, x, torch.zeros(3), torch.ones(3), None, None, torch.zeros(3), torch.zeros(3), -1, "none", 0.0, 0.0,
            math.inf, backend), "count"),
        ("backward dy shape", lambda: op.batch_norm_backward(
            torch.randn(4, 3, 6), x, torch.zeros(3), torch.ones(3), None, None, True, "none", 0.0, 0.0, math.inf,
            True, backend), "dy"),
        ("backward_reduce mean shape", lambda: op.batch_norm_backward_reduce(
            x, x, torch.zeros(2), torch.ones(3), None, None, "none", 0.0, 0.0, math.inf, backend), "mean")]
    # the separable steps' public functions (a SyncBatchNorm's building blocks)
    from pydl.ops.batch_norm import batch_norm_apply, batch_norm_backward_elemt, batch_norm_stats
    cases += [("batch_norm_stats x=list", lambda: batch_norm_stats([1.0], backend=backend), "x"),
              ("batch_norm_apply mean=list", lambda: batch_norm_apply(x, [0.0], torch.ones(3), backend=backend),
               "mean"),
              ("batch_norm_backward_elemt count=2.5", lambda: batch_norm_backward_elemt(
                  x, x, torch.zeros(3), torch.ones(3), None, None, torch.zeros(3), torch.zeros(3), 2.5,
                  backend=backend), "count")]
    # the modules (torch's constructor; pydl's forward)

    def module(eps=1e-5, momentum=0.1, inp=x, train=True):
        def f():
            m = pydl.nn.BatchNorm1d(3, eps=eps, momentum=momentum, backend=backend)
            m.train(train)
            return m(inp)
        return f

    cases += [("BatchNorm1d momentum='fast'", module(momentum="fast"), "momentum"),
              ("BatchNorm1d eps=0 training", module(eps=0.0), "eps"),
              ("BatchNorm1d 4-D input", module(inp=torch.randn(2, 3, 4, 5)), "input"),
              ("BatchNorm1d 5 channels", module(inp=torch.randn(2, 5, 4)), "weight")]
    return cases


def cpp_invalid_cases():
    """The compiled ops called directly: they check their own arguments."""
    k = torch.ops.pydl_cpu
    x = torch.randn(4, 3, 5)
    inf = math.inf
    z, o = torch.zeros(3), torch.ones(3)
    return [
        ("cpp forward eps=0 training", lambda: k.batch_norm_forward(x, None, None, None, None, True, 0.0, "none", 0, 0,
                                                                    inf), "eps"),
        ("cpp forward eps=-1 eval", lambda: k.batch_norm_forward(x, None, None, z, o, False, -1.0, "none", 0, 0, inf),
         "eps"),
        ("cpp forward weight (3, 1)", lambda: k.batch_norm_forward(x, torch.ones(3, 1), None, None, None, True, 1e-5,
                                                                   "none", 0, 0, inf), "weight"),
        ("cpp update_running count=-1", lambda: k.batch_norm_update_running(z.clone(), o.clone(), z, o, -1, 0.1,
                                                                            None), "count"),
        ("cpp update_running nbt=0", lambda: k.batch_norm_update_running(z.clone(), o.clone(), z, o, 8, None,
                                                                         torch.tensor(0)), "num_batches_tracked"),
        ("cpp update_running nbt (2,)", lambda: k.batch_norm_update_running(z.clone(), o.clone(), z, o, 8, None,
                                                                            torch.tensor([1, 2])),
         "num_batches_tracked"),
        ("cpp update_running momentum=nan", lambda: k.batch_norm_update_running(z.clone(), o.clone(), z, o, 8,
                                                                                float("nan"), None), "momentum"),
        ("cpp backward_elemt count=-1", lambda: k.batch_norm_backward_elemt(x, x, z, o, None, None, z, z, -1, "none",
                                                                            0, 0, inf), "count"),
        ("cpp backward dy shape", lambda: k.batch_norm_backward(torch.randn(4, 3, 6), x, z, o, None, None, True,
                                                                "none", 0, 0, inf, True), "dy"),
        ("cpp backward_reduce invstd shape", lambda: k.batch_norm_backward_reduce(x, x, z, torch.ones(4), None, None,
                                                                                  "none", 0, 0, inf), "invstd"),
        ("cpp stats int x", lambda: k.batch_norm_stats(torch.arange(6).reshape(2, 3)), "x"),
        ("cpp apply act", lambda: k.batch_norm_apply(x, z, o, None, None, "swish", 0, 0, inf), "act"),
    ]


def test_fuzz_batch_norm():
    rng = random.Random(SEED)
    g = torch.Generator().manual_seed(SEED)
    tally = Tally()
    runnable = run_cpu_backends(tally, OP, (("reference", 70), ("cpu", 70), ("triton", 6)),
                                lambda b: valid_case(tally, rng, g, b, tiny=b == "triton"), invalid_cases)
    if "cpu" in runnable:
        for case, run, arg in cpp_invalid_cases():
            check(tally, case, run, invalid_arg=arg)
        # the compiled ops called directly with the arguments that once read or wrote out of range, in a
        # process of their own (a heap overflow there must not take the test run down)
        run_isolated(tally, "cpp backward ops with bad shapes, isolated", """
            import math, torch, pydl
            from pydl import backends
            backends.available("cpu", "cpu", "batch_norm")
            k = torch.ops.pydl_cpu
            x = torch.randn(4, 3, 5)
            bad = [lambda: k.batch_norm_backward_elemt(x, x, torch.zeros(3), torch.ones(3), None, None,
                                                       torch.zeros(2), torch.zeros(3), 20, "none", 0, 0, math.inf),
                   lambda: k.batch_norm_backward(x, x, torch.zeros(3), torch.ones(3), torch.ones(2), None, True,
                                                 "none", 0, 0, math.inf, True),
                   lambda: k.batch_norm_update_running(torch.zeros(3), torch.ones(2), torch.zeros(3),
                                                       torch.ones(3), 8, 0.1, None)]
            for f in bad:
                try:
                    f()
                except ValueError:
                    continue
                raise SystemExit("accepted a wrong shape")
        """)
    tally.assert_clean(OP)
