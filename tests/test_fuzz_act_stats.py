"""Fuzz act_stats: seeded random valid inputs against torch's own mean/var/min/max/histc, and invalid
arguments of every type, classified by tests/fuzzing.py (no WRONG, no CRASH; the tally is printed).

The expectation is torch's sequence on the group's finite values: ``mean``, ``var(correction=0)``, ``min``,
``max`` and ``histc`` (on float32 for float16/bfloat16 input, as the op's docstring says), plus plain torch
counts for the NaN/Inf/near-zero/below/above columns. Two points of the op's documented contract shape it:

* statistics are those of the exact values rounded to the accumulation dtype, so the expectation is
  computed in float64 and rounded: M2 (= var * n) is rounded to the accumulation dtype before the division
  (it is what the op stores: a float32 M2 of 1e30-scale data is inf, and so is its var), and the mean of
  data whose float64 *sum* overflows (float64 values near its maximum) averages pre-scaled values, where
  torch.mean returns inf;
* var of a group with no finite value is NaN (0 / 0), min/max NaN.

Tolerances: counts and histograms exactly. Float statistics are divided by a power of two near the group's
largest |value| (exact) and compared to ``64 * eps(acc)`` absolute: fp32 sums of <= ~500 values merged
pairwise stay well inside that; var is divided by the square of that scale.
"""
import math
import random

import torch

import pydl
from fuzzing import Tally, check, run_cpu_backends, run_isolated

OP = "act_stats"
SEED = 14
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BIG = {torch.float16: 6e4, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e150}
TINY = {torch.float16: 1e-6, torch.bfloat16: 1e-39, torch.float32: 1e-40, torch.float64: 1e-310}  # denormals


def acc_of(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def random_shape(rng, per_channel):
    rank = rng.randint(2 if per_channel else 1, 4)
    return tuple(rng.choice((0, 1, 1, 2, 3, 5, 7)) if rng.random() < 0.15 else rng.choice((1, 2, 3, 4, 6))
                 for _ in range(rank))


VALUE_KINDS = ("randn", "randn", "relu", "nonfinite", "huge", "near_max", "denormal", "const", "const_big")
# float32-accumulating backends round a block's mean to float32: with little spread at ~1e26+ that alone
# overflows M2 (the op's docstring); those value kinds are counted BY_DESIGN for triton, not compared
FP32_BLOCK_LIMIT = ("near_max", "const_big")


def random_values(rng, g, shape, dtype, kinds=VALUE_KINDS):
    kind = rng.choice(kinds)
    n = math.prod(shape)
    v = torch.randn(n, generator=g, dtype=torch.float64) * rng.choice((1.0, 3.0, 100.0)) + rng.choice((0.0, 1.0, -50.0))
    if kind == "relu":
        v = v.clamp_min(0)
    elif kind == "huge":
        v = v * BIG[dtype]
    elif kind == "near_max":  # alternating signs near the maximum: sums and deviations overflow, means do not
        sign = 1.0 - 2.0 * (torch.arange(n) % 2).double()
        v = sign * torch.finfo(dtype).max / rng.choice((1.0, 2.0, 4.0))
    elif kind == "denormal":
        v = v * TINY[dtype]
    elif kind == "const":
        v = torch.full((n,), rng.choice((0.0, 2.5, -7.0)), dtype=torch.float64)
    elif kind == "const_big":
        v = torch.full((n,), float(BIG[dtype]) * rng.choice((1.0, -3.0)), dtype=torch.float64)
    if kind == "nonfinite" and n:
        idx = torch.randperm(n, generator=g)
        v[idx[: max(1, n // 5)]] = float("nan")
        v[idx[n // 5: n // 5 + n // 7]] = float("inf")
        v[idx[n // 5 + n // 7: n // 5 + n // 7 + n // 9]] = -float("inf")
    with torch.no_grad():
        x = v.to(dtype).reshape(shape)
    return x, kind


def random_layout(rng, x):
    """The same values in another memory layout (the op must read any of them in place or copy)."""
    kind = rng.choice(("contiguous", "contiguous", "transposed", "sliced", "expanded", "channels_last"))
    if kind == "transposed" and x.dim() >= 2:
        return x.transpose(0, -1).contiguous().transpose(0, -1), kind
    if kind == "sliced" and x.dim() >= 1:
        return torch.cat([x, x], dim=-1)[..., : x.shape[-1]], kind
    if kind == "expanded" and x.dim() >= 2 and x.shape[0] >= 1:
        return x[:1].expand(x.shape[0] * 2, *x.shape[1:]), kind  # stride 0 over dim 0
    if kind == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last), kind
    return x, "contiguous"


def random_range(rng, dtype):
    kind = rng.random()
    if kind < 0.7:
        lo = rng.choice((0.0, -3.0, -1.0, -0.5, 1.0))
        return lo, lo + rng.choice((0.5, 1.0, 4.0, 10.0, 60.0))
    if kind < 0.85:  # wide but allowed: (hi - lo) * bins stays below float32's max for <= 16 bins
        return -1e36, 1e36
    return -BIG[dtype], BIG[dtype]


def expected(x, bins, lo, hi, eps, per_channel):
    """torch's answer, group by group, in the fields :class:`pydl.ActStats` exposes."""
    acc = acc_of(x.dtype)
    G = x.shape[1] if per_channel else 1
    rows = x.transpose(0, 1).reshape(G, x.numel() // G if G else 0) if per_channel else x.reshape(1, -1)
    out = {k: [] for k in ("count", "mean", "var", "min", "max", "near_zero", "nan", "posinf", "neginf",
                           "below", "above", "hist")}
    lo_a, hi_a = torch.tensor(lo, dtype=acc), torch.tensor(hi, dtype=acc)
    for r in rows:
        v = r.to(acc)
        fin = v[torch.isfinite(v)]
        f64 = fin.double()
        n = fin.numel()
        nan = torch.tensor(float("nan"), dtype=acc)
        if n:
            mean64 = f64.mean()
            if not torch.isfinite(mean64):  # the sum overflowed, the mean does not: average pre-scaled values
                mean64 = (f64 / n).sum()
            m2 = (f64.var(correction=0) * n).to(acc)
            if not torch.isfinite(f64.var(correction=0)):
                m2 = ((f64 - mean64) ** 2).sum().to(acc)
            out["mean"].append(mean64.to(acc))
            out["var"].append(m2 / torch.tensor(n, dtype=acc))
            out["min"].append(fin.min())
            out["max"].append(fin.max())
        else:
            out["mean"] += [nan]
            out["var"] += [nan]
            out["min"] += [nan]
            out["max"] += [nan]
        out["count"].append(torch.tensor(r.numel()))
        out["near_zero"].append((v.abs() <= torch.tensor(eps, dtype=acc)).sum())
        out["nan"].append(torch.isnan(v).sum())
        out["posinf"].append((v == math.inf).sum())
        out["neginf"].append((v == -math.inf).sum())
        out["below"].append((fin < lo_a).sum())
        out["above"].append((fin > hi_a).sum())
        out["hist"].append(torch.histc(fin, bins, lo, hi).long() if n else torch.zeros(bins, dtype=torch.long))
    if G == 0:  # no channels: (0,) fields and a (0, bins) histogram
        return {k: torch.zeros((0, bins) if k == "hist" else (0,),
                               dtype=acc if k in ("mean", "var", "min", "max") else torch.long) for k in out}
    return {k: torch.stack(v) if per_channel else v[0] for k, v in out.items()}


def fields(s, scale):
    """A result as comparable tensors: integers as they are, float statistics scaled (exactly) to ~1."""
    sc = torch.tensor(scale, dtype=torch.float64)
    t = lambda a: torch.as_tensor(a).detach().cpu()  # noqa: E731
    return ([t(s["count"]), t(s["near_zero"]), t(s["nan"]), t(s["posinf"]), t(s["neginf"]), t(s["below"]),
             t(s["above"]), t(s["hist"])],
            [t(s["mean"]).double() / sc, t(s["min"]).double() / sc, t(s["max"]).double() / sc,
             t(s["var"]).double() / sc / sc])


def as_dict(s):
    return {k: getattr(s, k) for k in ("count", "mean", "var", "min", "max", "near_zero", "nan", "posinf",
                                       "neginf", "below", "above", "hist")}


def valid_case(tally, rng, g, backend, tiny):
    per_channel = rng.random() < 0.5
    dtype = rng.choice(DTYPES)
    shape = random_shape(rng, per_channel)
    if tiny:
        shape = tuple(min(d, 3) for d in shape)
    x, vkind = random_values(rng, g, shape, dtype,
                             tuple(k for k in VALUE_KINDS if k not in FP32_BLOCK_LIMIT) if tiny else VALUE_KINDS)
    x, lkind = random_layout(rng, x)
    bins = rng.choice((1, 2, 3, 7, 10, 16))
    lo, hi = random_range(rng, dtype)
    eps = rng.choice((0.0, 0.05, 1.0))
    fin = x[torch.isfinite(x)].double().abs()
    biggest = float(fin.max()) if fin.numel() else 0.0
    scale = math.ldexp(1.0, math.frexp(biggest)[1] - 1) if biggest > 0 else 1.0  # a power of two <= biggest
    tol = 64 * torch.finfo(acc_of(dtype)).eps
    name = (f"{backend} {dtype} {tuple(x.shape)} {lkind} {vkind} per_channel={per_channel} bins={bins} "
            f"[{lo}, {hi}] eps={eps}")
    args = (x, bins, lo, hi, eps, per_channel)
    ints = lambda r: fields(r, scale)[0]  # noqa: E731
    floats = lambda r: fields(r, scale)[1]  # noqa: E731
    check(tally, name + " counts", lambda: ints(as_dict(pydl.act_stats(*args, backend=backend))),
          lambda: ints(expected(*args)), rtol=0, atol=0)
    check(tally, name + " stats", lambda: floats(as_dict(pydl.act_stats(*args, backend=backend))),
          lambda: floats(expected(*args)), rtol=tol, atol=tol)


def invalid_cases(backend):
    """(case, call, the argument its error must name)."""
    x = torch.randn(3, 4)
    call = lambda **kw: (lambda: pydl.act_stats(**{**dict(x=x, bins=10, lo=0.0, hi=1.0, eps=0.05,  # noqa: E731
                                                            per_channel=False, backend=backend), **kw}))
    bad_x = ([1.0, 2.0], None, 3.0, torch.arange(6), torch.ones(3, dtype=torch.bool),
             torch.ones(3, dtype=torch.complex64))
    cases = [(f"x={v!r}", call(x=v), "x") for v in bad_x]
    cases += [(f"bins={v!r}", call(bins=v), "bins") for v in (0, -1, 2 ** 24 + 1, 3.7, 3.0, "10", True, None)]
    cases += [(f"lo={v!r}", call(lo=v), "lo") for v in ("0", None, float("nan"), -math.inf, 1.0, 2.0, True)]
    cases += [(f"hi={v!r}", call(hi=v), "hi") for v in ("1", None, math.inf, 0.0)]
    cases += [(f"lo, hi={r}", call(lo=r[0], hi=r[1]), "lo") for r in
              ((-3e38, 3e38), (-1e39, 1e39), (0.0, 1e38), (1.0, 1.0 + 1e-12), (-1e300, 1e300))]
    cases += [(f"eps={v!r}", call(eps=v), "eps") for v in (-1.0, float("nan"), "0.1", None)]
    cases += [(f"per_channel={v!r}", call(per_channel=v), "per_channel") for v in ("yes", 1, None)]
    cases += [("per_channel rank 1", call(x=torch.randn(5), per_channel=True), "per_channel")]
    cases += [(f"backend={v!r}", call(backend=v), "backend") for v in (3, "bogus", ["cpu"])]
    return cases


def cpp_invalid_cases():
    k = torch.ops.pydl_cpu.act_stats
    x = torch.randn(3, 4)
    return [
        ("cpp bins=0", lambda: k(x, 0, 0.0, 1.0, 0.0, False), "bins"),
        ("cpp wide range", lambda: k(x, 10, -3e38, 3e38, 0.0, False), "lo"),
        ("cpp lo beyond float32", lambda: k(x, 10, -1e39, 1.0, 0.0, False), "lo"),
        ("cpp lo == hi in float32", lambda: k(x, 10, 1.0, 1.0 + 1e-12, 0.0, False), "lo"),
        ("cpp eps<0", lambda: k(x, 10, 0.0, 1.0, -1.0, False), "eps"),
        ("cpp eps nan", lambda: k(x, 10, 0.0, 1.0, float("nan"), False), "eps"),
        ("cpp per_channel rank 1", lambda: k(torch.randn(4), 10, 0.0, 1.0, 0.0, True), "per_channel"),
        ("cpp int x", lambda: k(torch.arange(4), 10, 0.0, 1.0, 0.0, False), "x"),
    ]


def test_fuzz_act_stats():
    rng = random.Random(SEED)
    g = torch.Generator().manual_seed(SEED)
    tally = Tally()
    runnable = run_cpu_backends(tally, OP, (("reference", 120), ("cpu", 120), ("triton", 8)),
                                lambda b: valid_case(tally, rng, g, b, tiny=b == "triton"), invalid_cases)
    if "triton" in runnable:
        for kind in FP32_BLOCK_LIMIT:
            check(tally, f"triton {kind}", None, by_design="float32 block mean rounding can overflow M2 at "
                                                         "|x| > ~1e26 (pydl/ops/act_stats.py docstring)")
    if "cpu" in runnable:
        for case, run, arg in cpp_invalid_cases():
            check(tally, case, run, invalid_arg=arg)
        # the compiled op called directly with the ranges that used to misbin, in a process of its own: a
        # kernel that indexed a histogram slot out of range there could take the test process down with it
        run_isolated(tally, "cpp extreme ranges, isolated", """
            import torch, pydl
            from pydl import backends
            backends.available("cpu", "cpu", "act_stats")
            x = torch.tensor([-3e38, -1.0, 0.0, 1.0, 3e38, float("inf"), float("nan")])
            for lo, hi, bins in ((-3e38, 3e38, 10), (0.0, 1e38, 10), (-1e36, 1e36, 16)):
                try:
                    f, c, h = torch.ops.pydl_cpu.act_stats(x, bins, lo, hi, 0.0, False)
                except ValueError as e:
                    assert "lo" in str(e), e
                    continue
                assert int(h.sum() + c[0, 2:].sum()) == x.numel(), (lo, hi, h, c)
        """)
    tally.assert_clean(OP)
