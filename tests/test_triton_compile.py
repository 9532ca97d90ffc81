"""Every Triton kernel the interpreter tests launch also compiles for a real GPU (sm_80 and sm_90).

The interpreter runs code that Triton's compiler rejects, and knows nothing of shared memory. So every
interpreted launch records the specialisation a GPU launch with the same arguments would get (see
kernels/_jit.py), and ``test_every_recorded_launch_compiles`` -- ordered last in the session by
tests/conftest.py -- compiles them all down to a cubin, no GPU needed. Run alone, it compiles only what this
file launched; in the whole suite, everything.

The other tests here check the recorder itself (what it records is what Triton's GPU launcher would compile),
the regressions the compile found, and interpreted launches from several threads.
"""
import concurrent.futures
import os
import threading
import time

import pytest
import torch

import pydl
from helpers import require_backend

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from pydl.kernels import _jit  # noqa: E402
from pydl.kernels._jit import autotune, jit  # noqa: E402

ARCHS = (80, 90)


def _have_cuda_target():
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend

        make_backend(GPUTarget("cuda", 90, 32))
        return True
    except Exception:  # noqa: BLE001
        return False


needs_target = pytest.mark.skipif(not _have_cuda_target(), reason="this Triton has no CUDA compiler backend")


@pytest.fixture
def fresh_triton_cache(tmp_path, monkeypatch):
    # an empty cache: the frontend really runs (a cached cubin would hide a frontend that the interpreter
    # left patched -- kernels/_jit.py's _call_device_function)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    return tmp_path


@jit
def _scale_kernel(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    tl.store(y_ptr + i, tl.load(x_ptr + i, mask=m) * scale, mask=m)


@jit
def _sum_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # a reduction across warps: goes through shared memory on a GPU
    i = tl.arange(0, BLOCK)
    tl.store(out_ptr, tl.sum(tl.load(x_ptr + i, mask=i < n, other=0.0), axis=0))


_TUNE_CONFIGS = [triton.Config({"BLOCK": 32}, num_warps=1), triton.Config({"BLOCK": 64}, num_warps=2)]
_scale_tuned = autotune(_TUNE_CONFIGS, key=["n"], interpreter_config=triton.Config({"BLOCK": 16}))(_scale_kernel)


def _launches_of(kernel, **constexprs):
    """Recorded launches of ``kernel`` whose named constexprs have the given values."""
    out = []
    for launch in _jit.recorded_launches():
        if launch.kernel is not kernel:
            continue
        names = [n for n, _ in launch.signature]
        const = {names[p[0]]: v for p, v in launch.constexprs}
        if all(k in const and const[k] == v for k, v in constexprs.items()):
            out.append(launch)
    return out


def _types(launch):
    return dict(launch.signature)


def _divisible(launch):
    names = [n for n, _ in launch.signature]
    return {names[p[0]] for p, a in launch.attrs if ("tt.divisibility", 16) in a}


def test_recorder_specialises_like_a_gpu_launch():
    """What a GPU launch would compile: pointer dtypes, an int equal to 1 as a constexpr, i64 for an int beyond
    int32, 16-byte divisibility of pointers (a view one element in is not) and of ints, floats as fp32."""
    x = torch.arange(40, dtype=torch.float16)
    y = torch.empty(40, dtype=torch.float16)
    _scale_kernel[(1,)](x, y, 1, 2.0, BLOCK=16)
    assert y[0] == 0.0
    _scale_kernel[(1,)](x[1:], y[1:], 32, 2.0, BLOCK=32)
    assert torch.equal(y[1:33], x[1:33] * 2)
    big = 2**31 + 16  # only the type matters: the kernel is never launched with it on a GPU
    _scale_kernel[(0,)](x, y, big, 2.0, BLOCK=16)

    one = _launches_of(_scale_kernel, n=1, BLOCK=16)
    assert len(one) == 1 and _types(one[0])["n"] == "constexpr" and _types(one[0])["x_ptr"] == "*fp16"
    assert _types(one[0])["scale"] == "fp32"
    assert {"x_ptr", "y_ptr"} <= _divisible(one[0])
    view = _launches_of(_scale_kernel, BLOCK=32)
    assert len(view) == 1 and _types(view[0])["n"] == "i32"
    assert _divisible(view[0]) == {"n"}, "x[1:] is 2 bytes past a 16-byte boundary; n = 32 is divisible"
    wide = [la for la in _launches_of(_scale_kernel, BLOCK=16) if _types(la)["n"] == "i64"]
    assert len(wide) == 1
    # the same specialisation again is one record, not two
    _scale_kernel[(1,)](x, y, 1, 3.0, BLOCK=16)
    assert len(_launches_of(_scale_kernel, n=1, BLOCK=16)) == 1


def test_autotune_records_every_config_not_the_interpreters():
    """A GPU compiles every autotune config while tuning; the interpreter runs only its own fixed config."""
    x = torch.randn(50)
    y = torch.empty(50)
    _scale_tuned[lambda m: (triton.cdiv(50, m["BLOCK"]),)](x, y, 50, 0.5)
    torch.testing.assert_close(y, x * 0.5, rtol=0, atol=0)
    recorded = {(dict(la.constexprs)[(4,)], dict(la.options).get("num_warps"))
                for la in _launches_of(_scale_kernel) if dict(la.options).get("num_warps")}
    assert {(32, 1), (64, 2)} <= recorded
    assert not _launches_of(_scale_kernel, n=50, BLOCK=16), "the interpreter's config is not a GPU launch"


def test_gpu_twin_records_the_gpus_constexprs():
    x = torch.randn(20)
    y = torch.empty(20)
    _scale_kernel[(3,)](x, y, 20, 1.5, BLOCK=8, **_jit.gpu_twin(x.device, BLOCK=128))
    torch.testing.assert_close(y, x * 1.5, rtol=0, atol=0)
    assert _launches_of(_scale_kernel, BLOCK=128) and not _launches_of(_scale_kernel, BLOCK=8)
    assert _jit.gpu_twin(torch.device("cpu")) == {}


@needs_target
def test_compile_for_checks_shared_memory(fresh_triton_cache, monkeypatch):
    """The limit check itself: _sum_kernel needs a few bytes of shared memory for its cross-warp reduction;
    with the limit set below that, compile_for must refuse it (with the real limits, it must pass)."""
    x = torch.randn(100)
    out = torch.empty(1)
    _sum_kernel[(1,)](x, out, 100, BLOCK=128)
    torch.testing.assert_close(out[0], x.sum(), rtol=1e-6, atol=1e-5)
    (launch,) = _launches_of(_sum_kernel, BLOCK=128)
    compiled = _jit.compile_for(launch, 90)
    assert compiled.metadata.shared > 0 and len(compiled.asm["cubin"]) > 0
    monkeypatch.setitem(_jit.SHARED_MEMORY_LIMIT, 90, compiled.metadata.shared - 1)
    with pytest.raises(ValueError, match="shared memory"):
        _jit.compile_for(launch, 90)
    with pytest.raises(ValueError, match="arch must be one of"):
        _jit.compile_for(launch, 75)
    assert any(fresh_triton_cache.iterdir()), "compiled into the empty cache (not served from an old one)"


@needs_target
@pytest.mark.parametrize("shape, per_channel", [((7, 5), False), ((1, 3, 4, 2), True)])
def test_act_stats_compiles_when_outer_is_one(shape, per_channel, fresh_triton_cache):
    """Regression: whole-tensor act_stats and per-channel with N == 1 pass outer == 1, which a GPU launch makes
    a compile-time constant -- ``outer.to(tl.int64)`` then failed to compile ("'int' object has no attribute
    'to'") for every GPU, while the interpreter ran it fine."""
    from pydl.kernels import act_stats as ka

    require_backend("triton", "cpu", "act_stats")
    x = torch.randn(shape)
    got = pydl.act_stats(x, per_channel=per_channel, backend="triton")
    want = pydl.act_stats(x, per_channel=per_channel, backend="reference")
    torch.testing.assert_close(got.counts, want.counts, rtol=0, atol=0)
    launches = _launches_of(ka._partial_kernel, outer=1)
    assert launches, "the launch was recorded with outer specialised to 1"
    for launch in launches:
        for arch in ARCHS:
            assert len(_jit.compile_for(launch, arch).asm["cubin"]) > 0


@needs_target
def test_act_stats_offsets_are_int64():
    """Regression: g * sg and g * BINS were int32 products (the group index is int32), which wrap past 2**31
    -- channel 2 of a (1, 3, 2**30) tensor was read from a negative offset. The GPU test below runs such a
    tensor; here (where a 6 GB tensor does not fit) the compiled kernels must do every multiply in i64."""
    from pydl.kernels import act_stats as ka

    require_backend("triton", "cpu", "act_stats")
    pydl.act_stats(torch.randn(2, 3, 4), per_channel=True, backend="triton")
    for kernel in (ka._partial_kernel, ka._finalize_kernel):
        launch = [la for la in _launches_of(kernel) if _types(la)["ws_f_ptr"] == "*fp32"
                  and _types(la).get("outer", "i32") == "i32" and _types(la).get("groups", "i32") == "i32"][0]
        ttir = _jit.compile_for(launch, 90).asm["ttir"]
        muls = [line.strip() for line in ttir.splitlines() if "arith.muli" in line]
        assert muls, "the kernel computes offsets by multiplication"
        narrow = [m for m in muls if m.split(" loc(")[0].endswith(("i32", "xi32>"))]
        assert not narrow, f"{kernel.fn.__name__}: int32 products that can overflow: {narrow}"


@pytest.mark.gpu
def test_act_stats_channel_offsets_past_int32_on_gpu():
    """Channel 2 of a (1, 3, 2**30) fp16 tensor starts at element 2**31: its offset g * sg overflows int32."""
    require_backend("triton", "cuda", "act_stats")
    if torch.cuda.get_device_properties(0).total_memory < 16 * 2**30:
        pytest.skip("needs 16 GB")
    n = 2**30
    x = torch.empty((1, 3, n), dtype=torch.float16, device="cuda")
    for c in range(3):
        x[0, c].fill_(c + 0.5)
    s = pydl.act_stats(x, per_channel=True, bins=4, lo=0.0, hi=4.0, backend="triton")
    # every element of a channel is the same fp16-exact value: its mean is exact in the fp32 accumulator
    torch.testing.assert_close(s.mean.cpu().double(), torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64),
                               rtol=0, atol=0)
    assert s.hist.cpu().tolist() == [[n if b == c else 0 for b in range(4)] for c in range(3)]


def test_interpreted_launches_from_threads():
    """The interpreter patches module globals for a launch; kernels/_jit.py serialises interpreted launches,
    so four threads get the same results as one."""
    require_backend("triton", "cpu", "act_stats")
    xs = [torch.randn(3, 4, 5, 5) * (i + 1) for i in range(4)]
    want = [pydl.act_stats(x, per_channel=True, backend="reference") for x in xs]
    got, errors = [None] * 4, []
    start = threading.Barrier(4)

    def work(i):
        try:
            start.wait()
            for _ in range(2):
                got[i] = pydl.act_stats(xs[i], per_channel=True, backend="triton")
        except Exception as e:  # noqa: BLE001 -- reported below with the thread's index
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for g, w in zip(got, want):
        torch.testing.assert_close(g.counts, w.counts, rtol=0, atol=0)
        torch.testing.assert_close(g.hist, w.hist, rtol=0, atol=0)
        # fp32 Welford merges in another order than the reference's two-pass mean: a few ulps of the mean
        torch.testing.assert_close(g.mean, w.mean, rtol=1e-5, atol=1e-6)


def _elem_bits(launch):
    return max([int("".join(c for c in t if c.isdigit()) or 8) for _, t in launch.signature if t.startswith("*")]
               or [0])


def _features(launch, arch):
    """What one launch exercises on ``arch``. For sm_90: each argument's type (pointer dtype, i32/i64, constexpr)
    and constexpr value, each argument's divisibility hint, and the tile (BLOCK* constexprs with num_warps and
    num_stages). The frontend, where a type or a constexpr breaks a kernel, does not depend on the arch, so
    sm_80 only adds what does: each tile (shared memory: 163 KB there) and each set of pointer dtypes (the
    tensor-core instructions differ)."""
    names = [n for n, _ in launch.signature]
    const = {names[p[0]]: repr(v) for p, v in launch.constexprs}
    tile = ("tile", tuple(sorted((n, v) for n, v in const.items() if n.startswith("BLOCK"))), launch.options)
    feats = {tile, ("dtypes", tuple(t for _, t in launch.signature if t.startswith("*")))}
    if arch == 90:
        div = _divisible(launch)
        feats |= {("arg", n, t, const.get(n)) for n, t in launch.signature}
        feats |= {("div", n, n in div) for n, t in launch.signature if t != "constexpr"}
    return {(launch.name,) + f for f in feats}


def _representatives(launches, arch):
    """The launches worth a compile for ``arch``: a greedy cover of every feature (see _features) that any
    recorded launch has. A compile failure is a property of a type, a constexpr value or a tile, so a launch
    that adds none of them repeats a program already compiled, up to argument values that never reach the
    compiler. Widest element types go first, so each tile is compiled with the dtype that needs the most
    shared memory. PYDL_TRITON_COMPILE_ALL=1 compiles every recorded launch instead (many minutes)."""
    if os.environ.get("PYDL_TRITON_COMPILE_ALL") == "1":
        return list(launches)
    seen, out = set(), []
    for la in sorted(launches, key=lambda la: (-_elem_bits(la), la.describe())):
        new = {("error", la.name, la.error)} if la.error else _features(la, arch)
        if not new <= seen:
            seen |= new
            out.append(la)
    return out


@needs_target
@pytest.mark.triton_compile_last
def test_every_recorded_launch_compiles(tmp_path_factory, monkeypatch):
    """Compiles the launches the session's interpreter tests recorded (see _representatives) for sm_80 and
    sm_90, and checks shared memory against each target's per-block limit. Ordered last by tests/conftest.py.
    Compiles run on a thread per core: Triton's compiler is made for that (its own async compile mode uses a
    thread pool) and ptxas runs as a subprocess."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton-cache")))
    recorded = _jit.recorded_launches()
    assert recorded, "no interpreted launch was recorded (is the recorder wired into kernels/_jit.py?)"
    jobs = [(la, arch) for arch in ARCHS for la in _representatives(recorded, arch)]
    t0 = time.perf_counter()

    def compile_one(job):
        launch, arch = job
        try:
            _jit.compile_for(launch, arch)
            return None
        except Exception as e:  # noqa: BLE001 -- collected so that one run lists every failure
            last = (str(e).strip().splitlines() or [""])[-1]
            return f"sm_{arch}: {launch.describe()}\n    {type(e).__name__}: {last[:300]}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        failures = [f for f in pool.map(compile_one, jobs) if f]
    kernels = sorted({la.name for la in recorded})
    print(f"{len(recorded)} recorded launches of {len(kernels)} kernels: {len(jobs)} compiles "
          f"({', '.join(f'sm_{a}: {sum(1 for _, b in jobs if b == a)}' for a in ARCHS)}) in "
          f"{time.perf_counter() - t0:.0f} s")
    assert not failures, f"{len(failures)} GPU compiles failed:\n" + "\n".join(failures)
