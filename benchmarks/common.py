"""The benchmark method, shared by every benchmarks/bench_<op>.py.

* pydl and the native torch op run in the same process, on the same inputs, with the same thread count.
* CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (median of blocks, warm-up excluded), the thread
  count set and recorded. GPU: ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs, median).
* Interpreter backends are never timed (Triton on CPU tensors is an emulator, ~1000x slower).
* torch and pydl are timed in alternating rounds (torch block, pydl block, torch block, ...), so a burst of
  load from another job hits both sides alike, and the ratio is taken per round: each row carries the median
  ratio and its spread (the 25th-75th percentile of the per-round ratios), next to each side's median and
  IQR. A machine that is busy (load average per core) or a ratio whose spread is wide is reported as
  unreliable rather than printed as if it were a clean number.
* Each row carries the median, the spread (IQR), the ratio to torch (torch time / pydl time: > 1 means
  pydl is faster), achieved GB/s (minimal bytes: each input read once, each output written once) or
  TFLOP/s, and those as a percentage of the machine's ceiling measured in the same run (a big copy, a big
  matmul).

A bench module defines ``cases(quick: bool, device: str) -> list[Case]``; :func:`run_cases` times them.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Dict, List, Optional, Sequence

import torch

from pydl.results import blank_or, environment, machine_load, markdown_row, markdown_table, ratio_text, stamp_line

__all__ = ["Case", "Row", "set_threads", "time_cpu", "time_cuda", "time_pair", "time_fn", "busy_warning",
           "ceilings", "usable_backends", "run_cases", "format_table", "run_interleaved", "main_for",
           "environment", "machine_load", "COLUMNS", "ALIGN"]


@dataclasses.dataclass
class Case:
    """One thing to time: ``torch_fn`` and ``pydl_fn(backend)`` are zero-argument callables built on the same
    inputs by ``setup()``. ``bytes``/``flops`` are the minimal traffic/work of one call (for GB/s, TFLOP/s)."""
    op: str
    variant: str                  # "forward", "forward+backward", "eval", ...
    shape: str                    # human-readable shape description
    dtype: str
    setup: Callable[[], Dict[str, Callable]]  # returns {"torch": fn, "pydl": fn(backend) -> callable}
    bytes: float = 0.0
    flops: float = 0.0
    backends: Sequence[str] = ("cpu",)
    note: str = ""


@dataclasses.dataclass
class Row:
    op: str
    variant: str
    backend: str
    shape: str
    dtype: str
    device: str
    threads: int
    median_ms: float
    iqr_ms: float
    torch_ms: float
    torch_iqr_ms: float
    ratio: float                  # torch_ms / median_ms (> 1: pydl faster)
    gbps: Optional[float] = None
    tflops: Optional[float] = None
    pct_of_ceiling: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    note: str = ""
    ratio_q1: Optional[float] = None   # 25th / 75th percentile of the per-round ratios (interleaved timing)
    ratio_q3: Optional[float] = None

    def ratio_text(self) -> str:
        """``1.23x (1.10-1.30)``: the ratio with its spread, the way every printed ratio is shown."""
        return ratio_text(self.ratio, self.ratio_q1, self.ratio_q3)


def set_threads(n: Optional[int]) -> int:
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def time_cpu(fn: Callable, min_run_time: float = 0.5) -> tuple:
    """(median seconds, IQR seconds) of fn() on the CPU."""
    from torch.utils import benchmark

    fn()  # warm-up: first-call costs (a JIT build, allocator growth) stay out of the numbers
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    return m.median, m.iqr


def time_cuda(fn: Callable, rep_ms: int = 100) -> tuple:
    """(median seconds, IQR seconds) of fn() on the GPU, with CUDA events and an L2 flush per run."""
    import triton.testing

    q = triton.testing.do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.25, 0.5, 0.75])
    return q[1] / 1e3, (q[2] - q[0]) / 1e3


def _calls_per_block(fn: Callable, target_s: float) -> int:
    """How many back-to-back calls of fn fill about ``target_s`` (at least 1)."""
    import time

    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(10_000, int(target_s / one)))


def time_pair(torch_fn: Callable, pydl_fn: Callable, device: str, quick: bool = False) -> dict:
    """Time torch and pydl in alternating rounds and compare them round by round.

    Why rounds and per-round ratios: on a shared machine another job's burst slows whichever side happens to
    run at that moment. Blocked timing of one side and then the other lets a burst land on one side only,
    which is how one layer once read 0.39x and 8.97x in two runs. Alternating short blocks and taking the
    ratio inside each round puts both sides under the same conditions; the median of those ratios is the
    estimate and their quartiles are its spread.

    Returns seconds per call (median and IQR of each side) and the ratio torch/pydl (median, q1, q3).
    """
    import time

    import numpy as np

    if device == "cuda":
        sync = torch.cuda.synchronize
        rounds, block_s, budget_s = (5, 0.01, 0.5) if quick else (9, 0.02, 1.5)
    else:
        def sync():
            return None

        rounds, block_s, budget_s = (7, 0.01, 0.4) if quick else (15, 0.02, 1.0)
    for fn in (torch_fn, pydl_fn):  # warm-up: first-call costs (a JIT build, allocator growth) stay out
        fn()
    sync()
    kt, kp = _calls_per_block(torch_fn, block_s), _calls_per_block(pydl_fn, block_s)

    def block(fn, k):
        sync()
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        sync()
        return (time.perf_counter() - t0) / k

    tt, tp = [], []
    start = time.perf_counter()
    while len(tt) < rounds or (time.perf_counter() - start < budget_s and len(tt) < 200):
        tt.append(block(torch_fn, kt))
        tp.append(block(pydl_fn, kp))
    tt, tp = np.array(tt), np.array(tp)
    r = tt / tp
    q = lambda a, p: float(np.percentile(a, p))  # noqa: E731
    return {"pydl": (q(tp, 50), q(tp, 75) - q(tp, 25)), "torch": (q(tt, 50), q(tt, 75) - q(tt, 25)),
            "ratio": (q(r, 50), q(r, 25), q(r, 75)), "rounds": len(r)}


def busy_warning(env: dict, rows: Sequence["Row"] = ()) -> Optional[str]:
    """A sentence saying why these numbers should not be trusted, or None.

    Two signs: other work on the machine before we started (1-minute load average above a third of a core per
    core: our own process then shares the cores with it), and a wide spread of the per-round ratios (the
    quartiles more than 30% apart relative to the median) on some row, whatever the load said.
    """
    why = []
    load, cores = env.get("load1"), env.get("cores") or 1
    if load is not None and load == load and load / cores > 0.33:
        why.append(f"load average {load:.2f} on {cores} cores before the run")
    wide = [r for r in rows if r.ratio_q1 is not None and r.ratio > 0 and (r.ratio_q3 - r.ratio_q1) / r.ratio > 0.3]
    if wide:
        why.append(f"{len(wide)} of {len(rows)} ratios with a spread over 30% of their value")
    if not why:
        return None
    return ("WARNING: this machine looks busy (" + "; ".join(why) + "): the speed numbers are unreliable; rerun "
            "on a quiet machine before quoting them.")


def time_fn(fn: Callable, device: str, quick: bool = False) -> tuple:
    if device == "cuda":
        return time_cuda(fn, rep_ms=40 if quick else 100)
    return time_cpu(fn, min_run_time=0.2 if quick else 0.5)


_ceilings: Dict[str, Dict[str, float]] = {}


def ceilings(device: str, quick: bool = False) -> Dict[str, float]:
    """This machine's measured ceilings, once per run: copy bandwidth (bytes read + written per second) and
    fp32 matmul TFLOP/s (bf16 too on a GPU)."""
    if device in _ceilings:
        return _ceilings[device]
    n = (1 << 24) if device == "cpu" else (1 << 28)  # 64 MB / 1 GB of fp32: far beyond the caches
    a = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    t, _ = time_fn(lambda: b.copy_(a), device, quick)
    out = {"copy_gbps": 2 * a.numel() * 4 / t / 1e9}
    m = 1024 if device == "cpu" else 8192
    x = torch.randn(m, m, device=device)
    y = torch.randn(m, m, device=device)
    t, _ = time_fn(lambda: x @ y, device, quick)
    out["matmul_fp32_tflops"] = 2 * m ** 3 / t / 1e12
    if device == "cuda":
        xb, yb = x.bfloat16(), y.bfloat16()
        t, _ = time_fn(lambda: xb @ yb, device, quick)
        out["matmul_bf16_tflops"] = 2 * m ** 3 / t / 1e12
    _ceilings[device] = out
    return out


def usable_backends(case: Case, device: str) -> List[str]:
    """The case's backends that can be timed here (compiled, not interpreted)."""
    from pydl import backends

    out = []
    for b in case.backends:
        if b == "triton" and device == "cpu":
            continue  # the interpreter is never timed
        ok, _ = backends.available(b, device, case.op if b in ("cpu", "cuda") else None)
        if ok:
            out.append(b)
    return out


def run_cases(cases: Sequence[Case], device: str, quick: bool = False, progress=None) -> List[Row]:
    """Time every case against torch on the same inputs: for each usable pydl backend, torch and pydl in
    alternating rounds (:func:`time_pair`)."""
    ceil = ceilings(device, quick)
    rows = []
    for case in cases:
        fns = case.setup()
        for b in usable_backends(case, device):
            fn = fns["pydl"](b)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            m = time_pair(fns["torch"], fn, device, quick)
            (t, iqr), (t_torch, iqr_torch) = m["pydl"], m["torch"]
            ratio, r1, r3 = m["ratio"]
            row = Row(case.op, case.variant, b, case.shape, case.dtype, device, torch.get_num_threads(),
                      t * 1e3, iqr * 1e3, t_torch * 1e3, iqr_torch * 1e3, ratio, note=case.note,
                      ratio_q1=r1, ratio_q3=r3)
            if case.bytes:
                row.gbps = case.bytes / t / 1e9
                row.pct_of_ceiling = 100 * row.gbps / ceil["copy_gbps"]
            if case.flops:
                row.tflops = case.flops / t / 1e12
                key = "matmul_bf16_tflops" if case.dtype in ("bfloat16", "float16") and device == "cuda" \
                    else "matmul_fp32_tflops"
                row.pct_of_ceiling = 100 * row.tflops / ceil[key]
            if device == "cuda":
                row.peak_mem_mb = torch.cuda.max_memory_allocated() / 2 ** 20
            rows.append(row)
            if progress:
                progress(row)
        del fns
    return rows


# The result table's columns (the terminal's, results.md's): which case, then times, ratio, throughput.
COLUMNS = ("op", "variant", "backend", "shape", "dtype", "pydl ms", "torch ms", "speed-up (q1-q3)", "GB/s",
           "TFLOP/s", "% ceiling")
ALIGN = "lllllrrrrrr"


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table (also readable on a terminal); speed-up is the median per-round ratio (quartiles)."""
    return markdown_table(COLUMNS, [
        (r.op, r.variant, r.backend, r.shape, r.dtype, f"{r.median_ms:.3f} ± {r.iqr_ms:.3f}",
         f"{r.torch_ms:.3f} ± {r.torch_iqr_ms:.3f}", r.ratio_text(), blank_or(r.gbps, ".1f"), blank_or(r.tflops, ".3f"),
         blank_or(r.pct_of_ceiling, ".0f", "%")) for r in rows], ALIGN)


def run_interleaved(cases: Sequence[Case], device: str, rounds: int = 7, per_round: int = 1) -> List[tuple]:
    """A second timing method, for a machine shared with other jobs (as pydl's 2-core CI box is): torch and
    pydl are timed alternately, ``rounds`` times (each the best of ``per_round`` calls), and each side keeps
    its fastest. Other jobs only ever add time, so the minimum is the estimate they disturb least, and
    alternating gives both sides the same luck. The blocked medians of :func:`run_cases` are the better
    method on a quiet machine. Prints a Markdown table; returns (case, backend, pydl s, torch s) tuples."""
    import time

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def best(fn):
        t = float("inf")
        for _ in range(per_round):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            t = min(t, time.perf_counter() - t0)
        return t

    print(f"method: interleaved, min of {rounds} x {per_round}")
    print(markdown_table(COLUMNS[:7] + ("speed-up",), [], ALIGN[:8]))
    out = []
    for case in cases:
        fns = case.setup()
        for b in usable_backends(case, device):
            mine, theirs = fns["pydl"](b), fns["torch"]
            mine(), theirs()  # warm-up
            tp = tt = float("inf")
            for _ in range(rounds):
                tt = min(tt, best(theirs))
                tp = min(tp, best(mine))
            print(markdown_row((case.op, case.variant, b, case.shape, case.dtype, f"{tp * 1e3:.3f}",
                                f"{tt * 1e3:.3f}", f"{tt / tp:.2f}x")), flush=True)
            out.append((case, b, tp, tt))
    return out


def main_for(cases_fn: Callable[[bool, str], List[Case]], argv=None) -> List[Row]:
    """`python -m benchmarks.bench_<op> [--quick] [--device cuda] [--threads N] [--interleaved]`, from the
    repository root."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--interleaved", action="store_true", help="alternate torch/pydl, keep minima (busy machines)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    env = environment(args.device)
    print(stamp_line(env))
    if args.interleaved:
        return run_interleaved(cases_fn(args.quick, args.device), args.device)
    rows = run_cases(cases_fn(args.quick, args.device), args.device, args.quick)
    print(f"ceilings: {ceilings(args.device)}")
    print(format_table(rows))
    warning = busy_warning(env, rows)
    if warning:
        print(warning, file=sys.stderr)
    return rows
