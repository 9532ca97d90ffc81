"""act_stats: every backend against the reference and against torch itself.

Tolerances: counts and histograms are compared EXACTLY (they are integers; the bin rule is the same
formula in every backend). Float statistics: mean/min/max of float32 data to 1e-5 relative (fp32
accumulation over <= ~1e5 values, merged pairwise), M2 (sum of squared deviations) to 1e-4 relative;
float64 to 1e-10.
"""
import math

import numpy as np
import pytest
import torch

import pydl
from pydl.ops.act_stats import act_stats_reference

from helpers import require_backend, slow

OP = "act_stats"


def run(x, backend, **kw):
    args = dict(bins=40, lo=0.0, hi=10.0, eps=0.05, per_channel=False)
    args.update(kw)
    return pydl.act_stats(x, backend=backend, **args)


def assert_same(a, b, dtype):
    """a, b: ActStats. Counts exact, float stats to the documented tolerance."""
    assert torch.equal(a.counts.cpu(), b.counts.cpu()), f"counts differ:\n{a.counts}\n{b.counts}"
    assert torch.equal(a.hist_all.cpu(), b.hist_all.cpu()), "histograms differ"
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    fa, fb = a.fstats.double().cpu(), b.fstats.double().cpu()
    for col, name in enumerate(("mean", "m2", "min", "max")):
        scale = fb[:, col].abs().clamp_min(1.0)
        tol = (10 if name == "m2" else 1) * rtol * scale
        both_nan = fa[:, col].isnan() & fb[:, col].isnan()
        equal = fa[:, col] == fb[:, col]  # an inf M2 on both sides: inf - inf would read as an error
        err = (fa[:, col] - fb[:, col]).abs()
        assert bool(((err <= tol) | both_nan | equal).all()), f"{name}: {fa[:, col]} vs {fb[:, col]}"


def make(shape, kind="randn", dtype=torch.float32, layout="contiguous"):
    if kind == "randn":
        x = torch.randn(shape) * 3 + 1
    elif kind == "relu":  # heavy ties: half the values are exactly 0 (one bin)
        x = torch.relu(torch.randn(shape) * 4)
    elif kind == "edges":  # values exactly on bin edges, on lo and hi, and just outside
        edges = torch.linspace(0, 10, 41)
        pool = torch.cat([edges, torch.tensor([-1e-7, 10 + 1e-6, 0.0, 10.0, -0.0])])
        x = pool[torch.randint(len(pool), shape)]
    elif kind == "nonfinite":
        x = torch.randn(shape) * 5
        flat = x.view(-1)
        n = flat.numel()
        if n:
            idx = torch.randperm(n)
            flat[idx[: max(1, n // 7)]] = float("nan")
            flat[idx[n // 7: n // 7 + n // 11]] = float("inf")
            flat[idx[n // 7 + n // 11: n // 7 + n // 11 + n // 13]] = float("-inf")
    x = x.to(dtype)
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed" and x.dim() >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)  # same values, dense but permuted strides
    elif layout == "sliced" and x.dim() >= 2:
        big = torch.cat([x, x], dim=-1)
        x = big[..., : x.shape[-1]]  # non-contiguous, not dense
    return x


SHAPES = [(1,), (7,), (1, 1, 1, 1), (2, 3, 5, 7), (3, 1, 9), (4, 6, 11, 13), (5, 17)]
# the interpreter is ~1000x slower: keep its shapes tiny
TRITON_SHAPES = [(1,), (7,), (1, 1, 1, 1), (2, 3, 5, 7), (3, 1, 9), (5, 17)]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", ["randn", "relu", "edges", "nonfinite"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "sliced"])
def test_parity_with_reference(cpu_backend, per_channel, kind, layout):
    require_backend(cpu_backend, "cpu", OP)
    shapes = TRITON_SHAPES if slow(cpu_backend) else SHAPES
    for shape in shapes:
        if per_channel and len(shape) < 2:
            continue
        x = make(shape, kind, layout=layout)
        got = run(x, cpu_backend, per_channel=per_channel)
        want = act_stats_reference(x, 40, 0.0, 10.0, 0.05, per_channel)
        assert_same(got, pydl.ActStats(*want, 40, 0.0, 10.0, 0.05, per_channel), x.dtype)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(cpu_backend, dtype, per_channel):
    require_backend(cpu_backend, "cpu", OP)
    x = make((3, 4, 5, 6), "nonfinite", dtype=dtype)
    got = run(x, cpu_backend, per_channel=per_channel, lo=-4.0, hi=4.0)
    assert got.fstats.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = act_stats_reference(x, 40, -4.0, 4.0, 0.05, per_channel)
    assert_same(got, pydl.ActStats(*want, 40, -4.0, 4.0, 0.05, per_channel), dtype)
    # fp16/bf16 are binned after an exact upcast: the same counts as histc of the float32 copy
    if not per_channel:
        fin = x.float()[torch.isfinite(x.float())]
        assert torch.equal(got.hist.cpu(), torch.histc(fin, 40, -4.0, 4.0).long())


@pytest.mark.parametrize("shape", [(1,), (10,), (4, 5, 6, 7), (64, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_matches_torch(dtype, shape):
    """The ground truth itself, checked against torch's own ops."""
    x = make(shape, "randn", dtype=dtype)
    s = run(x, "reference", lo=-5.0, hi=5.0, bins=33)
    assert torch.equal(s.hist, torch.histc(x, 33, -5.0, 5.0).long())
    assert int(s.count) == x.numel()
    x64 = x.double()
    assert math.isclose(float(s.mean), float(x64.mean()), rel_tol=1e-6, abs_tol=1e-6)
    if x.numel() > 1:
        assert math.isclose(float(s.var_unbiased), float(x64.var()), rel_tol=1e-5)
        assert math.isclose(float(s.std), float(x64.std(correction=0)), rel_tol=1e-5)
    mn, mx = torch.aminmax(x)
    assert float(s.min) == float(mn) and float(s.max) == float(mx)
    assert int(s.near_zero) == int((x.abs() <= 0.05).sum())
    assert int(s.below) == int((x < -5).sum()) and int(s.above) == int((x > 5).sum())


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_torch_directly(cpu_backend, layout):
    """Every backend against torch.histc / mean / var / aminmax, per channel too."""
    require_backend(cpu_backend, "cpu", OP)
    shape = (3, 4, 5, 7) if slow(cpu_backend) else (8, 16, 13, 11)
    x = make(shape, "randn", layout=layout)
    s = run(x, cpu_backend, per_channel=True, lo=-6.0, hi=8.0, bins=17)
    for c in range(x.shape[1]):
        xc = x[:, c]
        assert torch.equal(s.hist[c].cpu(), torch.histc(xc, 17, -6.0, 8.0).long())
        assert math.isclose(float(s.mean[c]), float(xc.double().mean()), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(float(s.var_unbiased[c]), float(xc.double().var()), rel_tol=1e-4)
        mn, mx = torch.aminmax(xc)
        assert float(s.min[c]) == float(mn) and float(s.max[c]) == float(mx)


def test_every_element_is_counted_once(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    x = make((3, 5, 4, 6), "nonfinite")
    s = run(x, cpu_backend, per_channel=True, lo=-1.0, hi=1.0)
    total = s.hist.sum(1) + s.below + s.above + s.nan + s.posinf + s.neginf
    assert torch.equal(total, s.count)
    assert int(s.count.sum()) == x.numel()
    assert int(s.nan.sum()) == int(x.isnan().sum())
    assert int(s.posinf.sum()) == int((x == math.inf).sum())
    assert int(s.neginf.sum()) == int((x == -math.inf).sum())


def test_value_equal_to_hi_goes_in_last_bin(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    x = torch.tensor([0.0, 10.0, 10.0, 5.0, 9.999999, 10.000001, -0.0])
    s = run(x, cpu_backend, bins=4)
    assert s.hist.tolist() == [2, 0, 1, 3] and int(s.above) == 1
    assert torch.equal(s.hist, torch.histc(x, 4, 0.0, 10.0).long())


def test_empty_and_all_nonfinite(cpu_backend):
    require_backend(cpu_backend, "cpu", OP)
    s = run(torch.empty(0), cpu_backend)
    assert int(s.count) == 0 and math.isnan(float(s.mean)) and math.isnan(float(s.min))
    assert int(s.hist.sum()) == 0
    s = run(torch.empty(0, 3, 4), cpu_backend, per_channel=True)
    assert s.count.tolist() == [0, 0, 0] and bool(s.mean.isnan().all())
    s = run(torch.empty(2, 0, 4), cpu_backend, per_channel=True)
    assert s.count.shape == (0,)
    s = run(torch.tensor([float("nan"), float("inf")]), cpu_backend)
    assert int(s.count) == 2 and int(s.finite) == 0 and math.isnan(float(s.mean))
    assert int(s.nan) == 1 and int(s.posinf) == 1 and float(s.m2) == 0.0


def test_large_values_do_not_cancel(cpu_backend):
    """|mean| >> std: a sum-of-squares variance would return garbage (or a negative number) here."""
    require_backend(cpu_backend, "cpu", OP)
    n = 300 if slow(cpu_backend) else 100_000
    x = 1e4 + torch.randn(n)
    s = run(x, cpu_backend, lo=0.0, hi=2e4)
    want = x.double().var(correction=0)
    assert math.isclose(float(s.var), float(want), rel_tol=1e-3)


@pytest.mark.parametrize("per_channel", [False, True])
def test_triton_block_sizes_and_splits(poison, per_channel):
    """Results must not depend on the launch shape; `poison` makes every torch.empty NaN/sentinel first."""
    require_backend("triton", "cpu", OP)
    from pydl.kernels.act_stats import act_stats_triton

    x = make((3, 5, 6, 7), "nonfinite")
    want = act_stats_reference(x, 40, -3.0, 3.0, 0.05, per_channel)
    for block, splits in [(16, 1), (32, 3), (64, 7)]:
        got = act_stats_triton(x, 40, -3.0, 3.0, 0.05, per_channel, block=block, splits=splits)
        assert_same(pydl.ActStats(*got, 40, -3.0, 3.0, 0.05, per_channel),
                    pydl.ActStats(*want, 40, -3.0, 3.0, 0.05, per_channel), x.dtype)
    # a histogram too large for registers takes the per-element atomic path
    got = act_stats_triton(x, 5000, -3.0, 3.0, 0.05, per_channel, block=32)
    want_big = act_stats_reference(x, 5000, -3.0, 3.0, 0.05, per_channel)
    assert torch.equal(got[1], want_big[1]) and torch.equal(got[2], want_big[2])


def test_cpu_large_tensor_multithreaded():
    """Sizes that split into many parallel tasks; exact counts vs torch.histc."""
    require_backend("cpu", "cpu", OP)
    x = torch.relu(torch.randn(2_000_003))
    s = run(x, "cpu")
    assert torch.equal(s.hist, torch.histc(x, 40, 0, 10).long())
    assert int(s.near_zero) == int((x.abs() <= 0.05).sum())
    x4 = torch.randn(16, 64, 33, 31).contiguous(memory_format=torch.channels_last)
    s = run(x4, "cpu", per_channel=True, lo=-3, hi=3)
    want = act_stats_reference(x4, 40, -3.0, 3.0, 0.05, True)
    assert_same(s, pydl.ActStats(*want, 40, -3.0, 3.0, 0.05, True), torch.float32)


@pytest.mark.parametrize("per_channel", [False, True])
def test_cpu_task_split_does_not_depend_on_threads(per_channel):
    """Tasks (2^16 values, or whole rows of N) go to threads in runs of about equal work, with a small remainder
    task at the end (here 6 full tasks + one of 8192 values, the course CNN's 512x16x7x7): which thread runs a
    task must change nothing, so 1, 2 and 3 threads give bit-identical results (a run per thread, or fewer
    runs than threads when there are few tasks)."""
    require_backend("cpu", "cpu", OP)
    x = torch.randn(512, 16, 7, 7)
    threads = torch.get_num_threads()
    try:
        got = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            got.append(torch.ops.pydl.act_stats(x, 40, 0.0, 10.0, 0.05, per_channel, "cpu"))
    finally:
        torch.set_num_threads(threads)
    for r in got[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got[0], r))
    want = act_stats_reference(x, 40, 0.0, 10.0, 0.05, per_channel)
    assert torch.equal(got[0][1], want[1]) and torch.equal(got[0][2], want[2])


@pytest.mark.parametrize("C", [3, 16, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cpu_channels_last_channel_blocks(C, dtype):
    """Per-channel channels_last (and (N, C) rows) transposes a tile 16 channels at a time: a channel count
    below one block, exactly one, and 2.5 blocks (a partial last block); several tiles and tasks per channel,
    NaN/Inf in some channels. Counts exact, statistics to the reference's tolerance."""
    require_backend("cpu", "cpu", OP)
    gen = torch.Generator().manual_seed(C)
    x = (torch.randn(6, C, 19, 23, generator=gen) * 3 + 1)
    x[1, C // 2, 3, 4:9] = float("nan")
    x[4, C - 1, 7, 2] = float("-inf")
    x = x.to(dtype)
    for y in (x.contiguous(memory_format=torch.channels_last), x.permute(0, 2, 3, 1).reshape(-1, C)):
        got = run(y, "cpu", per_channel=True, lo=-2.0, hi=6.0)
        want = pydl.ActStats(*act_stats_reference(y, 40, -2.0, 6.0, 0.05, True), 40, -2.0, 6.0, 0.05, True)
        assert_same(got, want, dtype)


CPU_CHUNK = 2048  # csrc/cpu/act_stats.cpp's kChunk: the unit its fast pass may hand to the careful one


@pytest.mark.parametrize("where", ["none", "first", "middle", "last_partial"])
@pytest.mark.parametrize("what", ["nan", "inf", "-inf", "overflow"])
@pytest.mark.parametrize("per_channel", [False, True])
# the pair scatter (few bins, tasks of >= 32 (bins + 5)^2 values: all of them here) and the one-per-value one
@pytest.mark.parametrize("bins", [10, 100])
def test_cpu_fast_pass_and_careful_redo(where, what, per_channel, bins):
    """The CPU kernel's first pass over a chunk assumes finite values; a chunk holding NaN/Inf (or finite values
    whose sums overflow) is redone by a careful pass. Signed data spanning below lo and above hi, several
    chunks per group (sizes not multiples of any vector width), the odd values in one chunk only: the
    first of a task (no running mean yet), one in the middle (shifted sums before and after it), or the
    partial last one (an odd count: the pair scatter's lone last value). Counts exact, statistics to the
    reference's tolerance."""
    require_backend("cpu", "cpu", OP)
    gen = torch.Generator().manual_seed(7)
    inner = 4 * CPU_CHUNK + 37
    x = torch.randn(2, 3, inner, generator=gen) * 4 + 1  # below lo = 0 and above hi = 10 both occur
    chunk = {"first": 0, "middle": 2, "last_partial": inner // CPU_CHUNK}.get(where)
    if chunk is not None:
        start = chunk * CPU_CHUNK
        span = x[1, 2, start: start + 29]  # group (1, 2) per channel; the whole tensor's chunk too
        if what == "overflow":
            span.copy_(torch.linspace(-3e37, 3e37, span.numel()))  # finite; the float32 sum of squares is inf
        else:
            span[::3] = float(what)
    got = run(x, "cpu", per_channel=per_channel, bins=bins)
    want = pydl.ActStats(*act_stats_reference(x, bins, 0.0, 10.0, 0.05, per_channel), bins, 0.0, 10.0, 0.05,
                         per_channel)
    assert_same(got, want, x.dtype)
    finite = x[x.isfinite()]  # below / above count finite values only
    assert int(got.below.sum()) == int((finite < 0).sum()) and int(got.above.sum()) == int((finite > 10).sum())
    assert torch.equal(got.hist.sum(0) if per_channel else got.hist, torch.histc(finite, bins, 0, 10).long())


@pytest.mark.parametrize("bad, exc, match", [
    (dict(x=torch.arange(5)), TypeError, "float16, bfloat16, float32 or float64"),
    (dict(bins=0), ValueError, "bins"),
    (dict(lo=1.0, hi=1.0), ValueError, "lo < hi"),
    (dict(lo=0.0, hi=float("inf")), ValueError, "finite"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(x=torch.randn(5), per_channel=True), ValueError, "rank >= 2"),
    (dict(lo=1.0, hi=1.0 + 1e-12), ValueError, "float32"),
])
def test_bad_input(cpu_backend, bad, exc, match):
    require_backend(cpu_backend, "cpu", OP)
    args = dict(x=torch.randn(4, 3), bins=10, lo=0.0, hi=1.0, eps=0.0, per_channel=False)
    args.update(bad)
    x = args.pop("x")
    with pytest.raises(exc, match=match):
        pydl.act_stats(x, backend=cpu_backend, **args)


def test_cpp_kernel_checks_its_own_arguments():
    """The C++ op is callable directly (torch.ops.pydl_cpu.act_stats): it must validate too."""
    require_backend("cpu", "cpu", OP)
    with pytest.raises(TypeError, match="act_stats"):
        torch.ops.pydl_cpu.act_stats(torch.arange(3), 4, 0.0, 1.0, 0.0, False)
    with pytest.raises(ValueError, match="bins"):
        torch.ops.pydl_cpu.act_stats(torch.randn(3), 0, 0.0, 1.0, 0.0, False)
    with pytest.raises(ValueError, match="rank"):
        torch.ops.pydl_cpu.act_stats(torch.randn(3), 4, 0.0, 1.0, 0.0, True)


@pytest.mark.parametrize("per_channel", [False, True])
def test_opcheck(cpu_backend, per_channel):
    require_backend(cpu_backend, "cpu", OP)
    x = torch.randn(2, 3, 4, 5)
    torch.library.opcheck(torch.ops.pydl.act_stats.default, (x, 10, -1.0, 1.0, 0.1, per_channel, cpu_backend))


def test_torch_compile_fullgraph():
    def f(x):
        s = pydl.act_stats(x * 2, bins=8, lo=-2.0, hi=2.0, per_channel=True)
        return s.mean, s.hist

    x = torch.randn(4, 3, 5)
    mean, hist = torch.compile(f, fullgraph=True, backend="eager")(x)
    want = pydl.act_stats(x * 2, bins=8, lo=-2.0, hi=2.0, per_channel=True, backend="reference")
    assert torch.equal(hist, want.hist) and torch.allclose(mean, want.mean)


def test_to_dict_and_fields():
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, float("nan"), 5.0]])
    d = run(x, "reference", bins=5, lo=0.0, hi=5.0).to_dict()
    assert d["count"] == 6 and d["nan"] == 1 and d["hist"] == [1, 1, 1, 1, 1]
    assert d["mean"] == pytest.approx(2.2) and d["min"] == 0.0 and d["max"] == 5.0
    assert d["var_unbiased"] == pytest.approx(torch.tensor([0.0, 1, 2, 3, 5]).var().item())
    pc = run(x, "reference", bins=5, lo=0.0, hi=5.0, per_channel=True).to_dict()
    assert pc["count"] == [2, 2, 2] and pc["nan"] == [0, 1, 0] and len(pc["hist"]) == 3


# --------------------------------------------------------------------------------------------------
# GPU (skipped here; scripts/gpu_check.sh runs them)
# --------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_gpu_parity(gpu_backend, dtype, layout, per_channel):
    require_backend(gpu_backend, "cuda", OP)
    for kind in ("randn", "relu", "edges", "nonfinite"):
        x = make((8, 32, 17, 19), kind, dtype=dtype, layout=layout).cuda()
        got = run(x, gpu_backend, per_channel=per_channel)
        want = act_stats_reference(x.cpu(), 40, 0.0, 10.0, 0.05, per_channel)
        assert_same(got, pydl.ActStats(*want, 40, 0.0, 10.0, 0.05, per_channel), dtype)


@pytest.mark.gpu
def test_gpu_large_and_tied(gpu_backend):
    require_backend(gpu_backend, "cuda", OP)
    x = torch.relu(torch.randn(64, 64, 32, 32, device="cuda"))
    s = run(x, gpu_backend)
    assert torch.equal(s.hist, torch.histc(x.cpu(), 40, 0, 10).long().cuda())
    s = run(x, gpu_backend, bins=20000, lo=0.0, hi=5.0)  # too many bins for shared memory / registers
    assert torch.equal(s.hist, torch.histc(x.cpu(), 20000, 0, 5).long().cuda())
    s = run(x, gpu_backend, per_channel=True)
    want = act_stats_reference(x.cpu(), 40, 0.0, 10.0, 0.05, True)
    assert_same(s, pydl.ActStats(*want, 40, 0.0, 10.0, 0.05, True), torch.float32)


@pytest.mark.gpu
def test_gpu_opcheck_and_compile(gpu_backend):
    require_backend(gpu_backend, "cuda", OP)
    x = torch.randn(2, 3, 4, 5, device="cuda")
    torch.library.opcheck(torch.ops.pydl.act_stats.default, (x, 10, -1.0, 1.0, 0.1, True, gpu_backend))
    f = torch.compile(lambda t: pydl.act_stats(t, per_channel=True).hist, fullgraph=True)
    assert torch.equal(f(x), run(x, "reference", per_channel=True).hist)


# --------------------------------------------------------------------------------------------------
# extreme values and argument types (regressions; tests/test_fuzz_act_stats.py draws many more)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lo, hi, bins", [(-3e38, 3e38, 10), (-1e39, 1e39, 10), (0.0, 1e38, 10), (0.0, 3e37, 16)])
def test_range_whose_width_overflows_is_refused(cpu_backend, lo, hi, bins):
    """(hi - lo) * bins past float32's max used to put everything in the last bin (cpu), lose the values
    (triton: the counters no longer added up) or fail inside bincount (reference)."""
    require_backend(cpu_backend, "cpu", OP)
    with pytest.raises(ValueError, match="lo"):
        run(torch.randn(64), cpu_backend, bins=bins, lo=lo, hi=hi)
    if cpu_backend == "cpu":
        with pytest.raises(ValueError, match="lo"):  # the compiled op refuses it on its own
            torch.ops.pydl_cpu.act_stats(torch.randn(64), bins, lo, hi, 0.0, False)


def test_wide_range_that_fits_is_binned_right(cpu_backend):
    """Just inside the limit every value is binned, and by the same rule as float64 would."""
    require_backend(cpu_backend, "cpu", OP)
    x = torch.tensor([-1e36, -5e35, -1.0, 0.0, 3e35, 9.9e35, 1e36, 2e36, -3e38, float("inf")])
    s = run(x, cpu_backend, bins=16, lo=-1e36, hi=1e36)
    assert int(s.hist.sum() + s.below + s.above + s.posinf) == x.numel()
    assert torch.equal(s.hist, torch.histc(x[:7].double(), 16, -1e36, 1e36).long())
    s64 = run(x.double(), cpu_backend, bins=16, lo=-1e39, hi=1e39)  # float64 input: float64 range
    assert int(s64.hist.sum()) == 9


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_overflowing_statistics_are_inf_not_nan(cpu_backend, per_channel, layout):
    """1e30-scale data (var overflows float32) and values near float32's max (sums overflow, means do not):
    torch's var is inf there; the merges used to form inf - inf = NaN (triton, cpu per channel)."""
    require_backend(cpu_backend, "cpu", OP)
    big = torch.finfo(torch.float32).max / 2
    x = torch.tensor([1e30, -2e30, 3e30, 5e29, big, big, big, big, -big, big, -big, big]).reshape(3, 2, 2, 1)
    x = x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)  # channel 0: the 1e30 values
    x = make_layout(x, layout)
    s = run(x, cpu_backend, per_channel=per_channel, lo=-1.0, hi=1.0)
    groups = x.transpose(0, 1).reshape(2, -1) if per_channel else x.reshape(1, -1)
    for i, g64 in enumerate(groups.double()):
        mean = s.mean[i] if per_channel else s.mean
        var = s.var[i] if per_channel else s.var
        assert torch.isfinite(mean) and math.isclose(float(mean), float(g64.mean()), rel_tol=1e-6)
        assert float(var) == math.inf == float(g64.var(correction=0).float())  # float32 overflow: inf, not NaN
    const = run(torch.full((4, 3), big), cpu_backend, per_channel=per_channel)  # sums overflow; var is 0
    assert torch.all(const.mean == big) and torch.all(const.var == 0)


def make_layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("kw, exc, arg", [
    (dict(bins=3.7), TypeError, "bins"), (dict(bins="10"), TypeError, "bins"), (dict(bins=True), TypeError, "bins"),
    (dict(lo="0"), TypeError, "lo"), (dict(hi=None), TypeError, "hi"), (dict(eps="0.1"), TypeError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"), (dict(per_channel="yes"), TypeError, "per_channel"),
    (dict(backend=3), TypeError, "backend"), (dict(backend="bogus"), ValueError, "backend"),
])
def test_argument_types_are_named(kw, exc, arg):
    """A wrong type is a TypeError naming the argument and what it accepts -- not a silent int(3.7) == 3 and
    not the dispatcher's schema dump."""
    args = dict(bins=10, lo=0.0, hi=1.0, eps=0.0, per_channel=False, backend="reference")
    args.update(kw)
    with pytest.raises(exc, match=arg):
        pydl.act_stats(torch.randn(4, 3), **args)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        pydl.act_stats([1, 2, 3])


def test_count_columns_match_the_kernels_header():
    """COUNT_COLS (Python) and csrc/act_stats_slots.h (every compiled kernel) name the counts columns in one
    order: a column added or swapped on one side only would mislabel counts without any kernel failing."""
    import pathlib
    import re

    from pydl._build import csrc_dir
    from pydl.ops.act_stats import COUNT_COLS

    text = (pathlib.Path(csrc_dir()) / "act_stats_slots.h").read_text()
    body = re.search(r"enum ActStatsCol : int \{(.*?)\};", text, re.DOTALL).group(1)
    cols = {name: int(v) for name, v in re.findall(r"\bkCol(\w+) = (\d+)", body)}
    ncols = int(re.search(r"\bkCountCols = (\d+)", body).group(1))
    assert ncols == len(COUNT_COLS)
    assert sorted(cols.values()) == list(range(ncols))
    by_index = {v: k.lower() for k, v in cols.items()}
    assert [by_index[i] for i in range(ncols)] == [c.replace("_", "") for c in COUNT_COLS]


def test_argument_checks_fast_path_and_cache():
    """The common call's exact types take a fast path, and a (bins, lo, hi, eps, dtype) that passed its value
    checks is remembered: neither may let a bad argument through. Every bad value still raises, also right
    after the same values passed with another dtype and when asked twice; other accepted types (ints,
    numpy scalars) take the general path and give the same result."""
    x = torch.randn(4, 3)
    good = pydl.act_stats(x, bins=10, lo=0.0, hi=1.0, eps=0.0, backend="reference")
    for bins in (0, (1 << 24) + 1, -3):
        for _ in range(2):
            with pytest.raises(ValueError, match="bins"):
                pydl.act_stats(x, bins=bins, lo=0.0, hi=1.0, eps=0.0, backend="reference")
    for _ in range(2):
        with pytest.raises(ValueError, match="lo < hi"):
            pydl.act_stats(x, bins=10, lo=1.0, hi=0.0, backend="reference")
        with pytest.raises(ValueError, match="eps"):
            pydl.act_stats(x, bins=10, lo=0.0, hi=1.0, eps=-0.5, backend="reference")
        with pytest.raises(ValueError, match="rank >= 2"):
            pydl.act_stats(torch.randn(5), bins=10, lo=0.0, hi=1.0, eps=0.0, per_channel=True, backend="reference")
    # a range that fits float64 but not float32: accepted for float64 input, then refused for float32
    lo, hi = 1.0, 1.0 + 1e-12
    pydl.act_stats(x.double(), bins=10, lo=lo, hi=hi, backend="reference")
    with pytest.raises(ValueError, match="float32"):
        pydl.act_stats(x, bins=10, lo=lo, hi=hi, backend="reference")
    with pytest.raises(TypeError, match="x must be"):
        pydl.act_stats(x.long(), bins=10, lo=0.0, hi=1.0, backend="reference")
    for kw in (dict(lo=0, hi=1), dict(lo=np.float32(0.0), hi=np.float64(1.0)), dict(bins=np.int64(10))):
        args = dict(bins=10, lo=0.0, hi=1.0, eps=0.0)
        args.update(kw)
        s = pydl.act_stats(x, backend="reference", **args)
        assert torch.equal(s.hist, good.hist) and torch.equal(s.counts, good.counts)
