"""The emulated CUDA backend (``cuda_emu``): pydl's own csrc/cuda kernels compiled unchanged with the host
C++ compiler against the CPU emulator (csrc/emu/, docs/ARCHITECTURE.md "The CUDA emulator") and run on CPU
tensors.

* The CUDA math-library stand-ins (csrc/emu/cuda_fp16.h, cuda_bf16.h, mma.h) are checked bit for bit against
  torch's own conversions: the emulated kernels are only as faithful as their arithmetic.
* ``tests/cuda_emu_cases.py`` holds one small case per op and branch of its launcher; each runs forward and
  backward on ``cuda_emu`` and compares with the reference (the GPU check runs the same cases on a GPU).
* The coverage test fails when a ``__global__`` function of csrc/cuda/*.cu, or one of its fp32 / 16-bit
  instantiations, was never launched by those cases.

Every parametrised test of the op test files also runs on ``cuda_emu`` (conftest's ``cpu_backend``):
``pytest -k cuda_emu`` selects the whole emulated suite.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pydl import _emu

# --------------------------------------------------------------------------------------------------
# fp16 / bf16 stand-ins: bit-exact conversions
# --------------------------------------------------------------------------------------------------

_SHIM = r"""
#include "cuda_bf16.h"
#define CONVERT(name, T, fn, conv)                                                    \
  extern "C" void name(const T* x, unsigned short* out, long n, int mode) {         \
    for (long i = 0; i < n; ++i) out[i] = conv;                                     \
  }
CONVERT(f2h, float, 0, __half_as_ushort(mode == 0 ? __float2half_rn(x[i]) : mode == 1 ? __float2half_rz(x[i])
                       : mode == 2 ? __float2half_rd(x[i]) : __float2half_ru(x[i])))
CONVERT(f2b, float, 0, __bfloat16_as_ushort(mode == 0 ? __float2bfloat16_rn(x[i])
                                            : mode == 1 ? __float2bfloat16_rz(x[i])
                                            : mode == 2 ? __float2bfloat16_rd(x[i]) : __float2bfloat16_ru(x[i])))
CONVERT(d2h, double, 0, __half(x[i]).__x)
CONVERT(d2b, double, 0, __nv_bfloat16(x[i]).__x)
extern "C" void h2f(const unsigned short* x, float* out, long n) {
  for (long i = 0; i < n; ++i) out[i] = __half2float(__ushort_as_half(x[i]));
}
extern "C" void b2f(const unsigned short* x, float* out, long n) {
  for (long i = 0; i < n; ++i) out[i] = __bfloat162float(__ushort_as_bfloat16(x[i]));
}
// binary ops: 0 add, 1 sub, 2 mul, 3 div, 4 fma(a, b, a)
extern "C" void hop(const unsigned short* a, const unsigned short* b, unsigned short* out, long n, int op, int bf) {
  for (long i = 0; i < n; ++i) {
    if (bf) {
      __nv_bfloat16 x = __ushort_as_bfloat16(a[i]), y = __ushort_as_bfloat16(b[i]);
      out[i] = __bfloat16_as_ushort(op == 0 ? x + y : op == 1 ? x - y : op == 2 ? x * y : op == 3 ? x / y
                                                                                          : __hfma(x, y, x));
    } else {
      __half x = __ushort_as_half(a[i]), y = __ushort_as_half(b[i]);
      out[i] = __half_as_ushort(op == 0 ? x + y : op == 1 ? x - y : op == 2 ? x * y : op == 3 ? x / y
                                                                                      : __hfma(x, y, x));
    }
  }
}
"""


@pytest.fixture(scope="module")
def fp_shim(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("fp_shim")
    (d / "shim.cpp").write_text(_SHIM)
    subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-I", _emu.INCLUDE_DIR,
                    str(d / "shim.cpp"), "-o", str(d / "shim.so")], check=True, capture_output=True)
    return ctypes.CDLL(str(d / "shim.so"))


def _call(lib, fn, x, out_dtype, *extra):
    out = np.empty(x.size, out_dtype)
    getattr(lib, fn)(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(x.size),
                     *extra)
    return out


_ALL16 = np.arange(1 << 16, dtype=np.uint16)


def _as(bits16: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(bits16.view(np.int16).copy()).view(dtype)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def _probe_floats(dtype: torch.dtype) -> np.ndarray:
    """fp32 values that exercise every rounding decision of fp32 -> dtype: every finite value of dtype, the
    exact midpoint between each pair of neighbours (ties: even wins) and the fp32 values one ulp either side of
    it, random bit patterns over the whole fp32 range (subnormals included), and the edge cases."""
    v = np.sort(_as(_ALL16, dtype).double().numpy())
    v = np.unique(v[np.isfinite(v)])
    mids = ((v[1:] + v[:-1]) / 2).astype(np.float32)  # exact: a 16-bit value's neighbours' mean fits fp32
    m32 = mids.view(np.uint32)
    near = np.concatenate([m32, m32 + 1, m32 - 1]).view(np.float32)
    rnd = np.random.default_rng(0).integers(0, 1 << 32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edge = np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 65504, 65519.996, 65520, 65536, -65520, 2.0 ** -24,
                     2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -25 * 1.0000001, 3.4028235e38, -3.4028235e38, 1e-45, -1e-45,
                     1.1754942e-38], dtype=np.float32)
    return np.concatenate([v.astype(np.float32), near, rnd, edge])


@pytest.mark.parametrize("dtype,fn", [(torch.float16, "f2h"), (torch.bfloat16, "f2b")])
def test_float_to_16bit_round_to_nearest_even_is_torchs(fp_shim, dtype, fn):
    x = _probe_floats(dtype)
    got = _call(fp_shim, fn, x, np.uint16, ctypes.c_int(0))
    want = _bits(torch.from_numpy(x).to(dtype))
    nan = np.isnan(x)
    # NaN: the device gives the canonical NaN 0x7fff (torch keeps a quiet NaN of its own making): NaN either way
    assert np.all(got[nan] == 0x7FFF)
    bad = np.nonzero((got != want) & ~nan)[0]
    few = bad[:4]
    assert bad.size == 0, f"{bad.size} of {x.size} differ, e.g. x={x[few]} torch={want[few]} ours={got[few]}"


@pytest.mark.parametrize("mode", [1, 2, 3], ids=["rz", "rd", "ru"])
@pytest.mark.parametrize("dtype,fn", [(torch.float16, "f2h"), (torch.bfloat16, "f2b")])
def test_float_to_16bit_directed_rounding(fp_shim, dtype, fn, mode):
    """_rz/_rd/_ru against an oracle built from torch's round-to-nearest: the directed result is the nearest
    result, moved one step toward zero / -inf / +inf when nearest went past x the other way. (Stepping the
    magnitude's bits by one is stepping to the neighbouring value, across the subnormal/normal and
    largest-finite/inf boundaries too.)"""
    x = _probe_floats(dtype)
    x = x[~np.isnan(x)]
    rn = _bits(torch.from_numpy(x).to(dtype))
    rnv = _as(rn, dtype).double().numpy()
    xd = x.astype(np.float64)
    mag, neg = (rn & 0x7FFF).astype(np.int64), (rn >> 15).astype(bool)
    out = (np.abs(rnv) > np.abs(xd)).astype(np.int64)
    inw = (np.abs(rnv) < np.abs(xd)).astype(np.int64)
    pos = (~neg).astype(np.int64)
    negi = neg.astype(np.int64)
    if mode == 1:
        step = -out
    elif mode == 2:  # toward -inf: a positive x rounded up comes back; a negative one rounded in goes out
        step = -(out * pos) + inw * negi
    else:
        step = -(out * negi) + inw * pos
    want = ((mag + step) | (neg.astype(np.int64) << 15)).astype(np.uint16)
    got = _call(fp_shim, fn, x, np.uint16, ctypes.c_int(mode))
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"{bad.size} of {x.size} differ, e.g. x={x[bad[:4]]} want={want[bad[:4]]} ours={got[bad[:4]]}"


@pytest.mark.parametrize("dtype,fn", [(torch.float16, "h2f"), (torch.bfloat16, "b2f")])
def test_16bit_to_float_is_exact_for_every_value(fp_shim, dtype, fn):
    got = _call(fp_shim, fn, _ALL16, np.float32)
    want = _as(_ALL16, dtype).float().numpy()
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{(~same).sum()} of 65536 differ, e.g. bits {_ALL16[~same][:4]}"


def test_double_to_half_rounds_once(fp_shim):
    """__half(double) must not round through fp32 first (a tie in fp16 can be decided by bits that fp32
    drops). numpy's float64 -> float16 rounds once: the oracle."""
    v = np.sort(_as(_ALL16, torch.float16).double().numpy())
    v = v[np.isfinite(v)]
    mids = (v[1:] + v[:-1]) / 2
    rng = np.random.default_rng(1)
    d = np.concatenate([mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf), mids + np.abs(mids) * 2.0 ** -40,
                        rng.standard_normal(50_000) * 10.0 ** rng.integers(-9, 6, 50_000)])
    got = _call(fp_shim, "d2h", d, np.uint16)
    with np.errstate(over="ignore"):
        want = d.astype(np.float16).view(np.uint16)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"{bad.size} differ, e.g. d={d[bad[:4]]}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", [0, 1, 2, 3], ids=["add", "sub", "mul", "div"])
def test_16bit_arithmetic_is_correctly_rounded(fp_shim, dtype, op):
    """fp16/bf16 + - * / in the stand-ins = the exact result rounded once. The oracle: fp64 arithmetic (exact for
    + - * of 16-bit values, and 53 >= 2 * 11 + 2 bits make the fp64 quotient round to the same 16-bit value),
    then numpy's single fp64 -> fp16 rounding, or, for bf16, torch's fp32 -> bf16 of an fp32 rounded to odd."""
    rng = np.random.default_rng(op)
    n = 60_000
    a = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    b = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    got = np.empty(n, np.uint16)
    fp_shim.hop(a.ctypes.data_as(ctypes.c_void_p), b.ctypes.data_as(ctypes.c_void_p),
                got.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(n), ctypes.c_int(op),
                ctypes.c_int(dtype == torch.bfloat16))
    x, y = _as(a, dtype).double().numpy(), _as(b, dtype).double().numpy()
    with np.errstate(all="ignore"):
        r = [x + y, x - y, x * y, x / y][op]
    if dtype == torch.float16:
        with np.errstate(all="ignore"):
            want = r.astype(np.float16).view(np.uint16)
    else:
        want = _bits(torch.from_numpy(_round_to_odd_f32(r)).to(dtype))
    nan = np.isnan(r)
    assert np.all(got[nan] == 0x7FFF)
    bad = np.nonzero((got != want) & ~nan)[0]
    assert bad.size == 0, f"{bad.size} of {n} differ, e.g. a={x[bad[:3]]} b={y[bad[:3]]}"


def _round_to_odd_f32(r: np.ndarray) -> np.ndarray:
    """fp64 -> fp32 rounded to odd (toward zero, last bit set when inexact): rounding that to bf16 once more
    equals rounding the fp64 value to bf16 directly (fp32 keeps 16 > 2 extra bits)."""
    with np.errstate(all="ignore"):
        f = r.astype(np.float32)
        fd = f.astype(np.float64)
        fin = np.isfinite(f) & np.isfinite(r)
        outward = fin & (np.abs(fd) > np.abs(r))
        u = f.view(np.uint32).copy()
        u[outward] -= 1
        inexact = fin & (u.view(np.float32).astype(np.float64) != r)
        u[inexact] |= 1
    return u.view(np.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_fma_rounds_once(fp_shim, dtype):
    """__hfma(a, b, a): a * b + a rounded once. Oracle: the exact value as a Fraction, rounded to an fp64 with an
    odd last bit when inexact (which then rounds to the 16-bit format as the exact value would)."""
    from fractions import Fraction

    rng = np.random.default_rng(7)
    n = 3000
    a = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    b = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    x, y = _as(a, dtype).double().numpy(), _as(b, dtype).double().numpy()
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(x * y + x)
    a, b, x, y = a[keep], b[keep], x[keep], y[keep]
    got = np.empty(a.size, np.uint16)
    fp_shim.hop(a.ctypes.data_as(ctypes.c_void_p), b.ctypes.data_as(ctypes.c_void_p),
                got.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(a.size), ctypes.c_int(4),
                ctypes.c_int(dtype == torch.bfloat16))
    odd = np.empty(a.size)
    for i, (p, q) in enumerate(zip(x.tolist(), y.tolist())):
        exact = Fraction(p) * Fraction(q) + Fraction(p)
        d = float(exact)
        if Fraction(d) != exact and (np.float64(d).view(np.uint64) & 1) == 0:
            d = float(np.nextafter(d, np.inf if Fraction(d) < exact else -np.inf))
        odd[i] = d
    with np.errstate(all="ignore"):
        want = (odd.astype(np.float16).view(np.uint16) if dtype == torch.float16
                else _bits(torch.from_numpy(_round_to_odd_f32(odd)).to(dtype)))
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"{bad.size} of {a.size} differ, e.g. a={x[bad[:3]]} b={y[bad[:3]]}"


# --------------------------------------------------------------------------------------------------
# The emulated backend: every case of tests/cuda_emu_cases.py, then the coverage of csrc/cuda's kernels
# --------------------------------------------------------------------------------------------------

from helpers import require_backend  # noqa: E402
from cuda_emu_cases import cases  # noqa: E402

_CASES = cases()
_UNIT = {"act_stats": "act_stats", "batch_norm": "batch_norm", "conv2d": "conv2d", "rnn": "rnn"}


@pytest.mark.parametrize("name,fn", _CASES, ids=[n for n, _ in _CASES])
def test_case_on_cuda_emu(name, fn):
    require_backend("cuda_emu", "cpu", _UNIT[name.split("/")[0]])
    fn("cpu", "cuda_emu")


def _global_functions() -> dict:
    """{unit: [kernel names]}: every __global__ function defined in csrc/cuda/<unit>.cu and its parts
    (csrc/cuda/<unit>/*.cu)."""
    import re

    from pydl import _build

    out = {}
    for unit in _build.compiled_ops("cuda"):
        names = set()
        for path in _build.sources(unit, "cuda"):
            if not path.endswith(".cu"):
                continue
            with open(path) as f:
                src = re.sub(r"//[^\n]*|/\*.*?\*/", "", f.read(), flags=re.DOTALL)
            names.update(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", src))
        out[unit] = sorted(names)
    return out


def _launched() -> tuple:
    """([(what ran, launches)], [every function symbol of the libraries]) from the launch logs of the loaded
    emulated libraries. `what ran` is the demangled symbol at the launch's key (the kernel itself) or, for a
    kernel template launched with deduced arguments (key = the launch site), "<name> in <the launching
    function>": the latter's template arguments say which instantiation ran."""
    import bisect
    import glob

    from pydl import _build

    out, symbols = [], []
    for unit in _build.compiled_ops("cuda"):
        res = _build.status(unit, "cuda_emu")
        if res is None or not res.ok:
            continue
        for so in glob.glob(os.path.join(_build.cache_dir(), _build.ext_name(unit, "cuda_emu"), "*.so")):
            lib = ctypes.CDLL(so)
            # the kernels' loads and stores reach the checks (an uninstrumented build would pass everything)
            assert lib.pydl_emu_memory_checks_active() == 1, f"{so}: memcheck/racecheck/initcheck saw no access"
            lib.pydl_emu_launch_log.restype = ctypes.c_char_p
            rows = [ln.split("\t") for ln in lib.pydl_emu_launch_log().decode().splitlines() if ln]
            nm = subprocess.run(["nm", "-C", "--defined-only", so], capture_output=True, text=True, check=True)
            every = [(int(p[0], 16), p[1], p[2]) for p in (ln.split(" ", 2) for ln in nm.stdout.splitlines())
                     if len(p) == 3]
            at = {a: name for a, _, name in every}  # a kernel, or a deduced launch's site (a static in the launcher)
            code = sorted((a, name) for a, kind, name in every if kind in "tTwW")
            starts = [a for a, _ in code]
            symbols += [name for _, name in code]
            for path, off, name, n in rows:
                if os.path.realpath(path) != os.path.realpath(so):
                    continue
                o = int(off, 16)
                if o in at:
                    out.append((at[o] if name in at[o] else f"{name} in {at[o]}", int(n)))
                else:
                    i = bisect.bisect_right(starts, o) - 1
                    out.append((f"{name} in {code[i][1] if i >= 0 else '?'}", int(n)))
    return out, symbols


def test_coverage_every_kernel_launched():
    """Runs after the cases above (pytest keeps file order; the launch log is per process): every __global__
    function of csrc/cuda ran on the emulator, for fp32 and for a 16-bit type wherever the library holds such an
    instantiation of it (conv2d's SIMT kernel, say, exists for fp32 and fp64 only)."""
    import re

    for unit in _UNIT:
        require_backend("cuda_emu", "cpu", unit)
    log, symbols = _launched()
    launched = [what for what, n in log if n > 0]
    assert launched, "the launch log is empty: run the cuda_emu cases first (pytest tests/test_cuda_emu.py)"
    missing = []
    for unit, kernels in _global_functions().items():
        for k in kernels:
            ran = [w for w in launched if re.search(rf"(::|^){k}(<|\(| in )", w)]
            if not ran:
                missing.append(f"{unit}: {k} never launched")
                continue
            exists = [sym for sym in symbols if re.search(rf"::{k}<", sym)]
            for label, pattern in (("fp32", r"\bfloat\b"), ("a 16-bit type", r"__half|__nv_bfloat16")):
                if any(re.search(pattern, sym) for sym in exists) and not any(re.search(pattern, w) for w in ran):
                    missing.append(f"{unit}: {k} never launched for {label} (launched: {ran})")
    assert not missing, "kernels the emulated cases did not run:\n" + "\n".join(missing)


_MUTANT_RUN = r"""
import sys, torch, pydl
from pydl import _build
_build.csrc_dir = lambda: sys.argv[1]
res = _build.load("act_stats", "cuda_emu")
assert res.ok, res.error
x = torch.randn(2, 3, 40)[:, :, :37]  # a sliced view: the kernels may touch its elements only
try:
    pydl.act_stats(x, per_channel=True, backend="cuda_emu")
except RuntimeError as e:
    print(e)
"""


def test_memcheck_sees_the_ops_tensors(tmp_path):
    """The glue registers each tensor argument's extent (not its whole storage) with the emulator: a kernel that
    reads one element past a sliced view's group -- act_stats.cu with `e <= e_end` for `e < e_end`, in a copy
    of csrc/ -- is stopped by memcheck, which names the schema's argument and the source line. (A subprocess:
    the mutant registers the same torch ops as the real library.)"""
    import shutil as sh

    from pydl import _build

    require_backend("cuda_emu", "cpu", "act_stats")
    src = tmp_path / "csrc"
    sh.copytree(_build.csrc_dir(), src)
    cu = src / "cuda" / "act_stats.cu"
    text = cu.read_text()
    assert text.count("    if (e < e_end) {") == 1
    cu.write_text(text.replace("    if (e < e_end) {", "    if (e <= e_end) {"))
    env = dict(os.environ, PYDL_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", _MUTANT_RUN, str(src)], capture_output=True, text=True, env=env,
                       timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "memcheck" in r.stdout and "past the end of `x`" in r.stdout and "act_stats.cu:" in r.stdout, r.stdout
