"""Test cases, poisoned guard regions and readable diffs: the pieces every exercise checker shares.

A :class:`Case` is one call of the learner's function: named inputs, named outputs the checker allocates,
launch parameters (block sizes) and the expected results. Outputs are not handed over as bare tensors: each
is a view into a bigger buffer whose every element -- inside and around the view -- holds *poison* (NaN for
floats, a sentinel for integers). After the call:

Output poison is a NaN with a recognisable bit pattern (0x7FC0DEAD for float32), compared bit for bit: a
kernel that copies *input* guard values (plain NaN) into the output's guard is caught too.

* poison left *inside* the view means the kernel never wrote those elements (grid too small, a mask too
  strict, a missing store);
* anything but poison in the *guard* around the view means the kernel wrote outside its output (a store
  without a mask). Triton's interpreter and a CPU would often not fault on such a write: the guard is how
  the checker sees it anyway.

Inputs sit in guarded buffers too (NaN / a sentinel around them), so an unmasked *load* pulls poison into
the result instead of a harmless number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

GUARD = 1024  # elements of poison before and after each buffer (more than any BLOCK the checker uses)
INT_POISON = -123456789

__all__ = ["Case", "GUARD", "INT_POISON", "guarded", "guarded_like", "guard_report", "compare", "Mismatch"]


@dataclass
class Case:
    label: str
    args: Dict[str, object]                        # inputs: tensors (guarded copies are made) or Python scalars
    outs: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = field(default_factory=dict)  # outputs we allocate
    params: Dict[str, object] = field(default_factory=dict)   # launch parameters (block sizes ...)
    expected: Dict[str, torch.Tensor] = field(default_factory=dict)
    tol: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # name -> (atol, rtol); ints are exact
    returns: Tuple[str, ...] = ()                  # names of the results the function *returns* instead
    note: str = ""                                 # why this case exists (printed when it fails)


# output poison: NaN payloads no arithmetic produces (x86 keeps an input NaN's payload, GPUs return a canonical NaN)
POISON_BITS = {torch.float32: (torch.int32, np.uint32, 0x7FC0DEAD),
               torch.float64: (torch.int64, np.uint64, 0x7FF8DEADDEADDEAD)}


def poison_value(dtype: torch.dtype):
    """What the checker puts around INPUTS: a plain NaN (floats) or a sentinel (integers)."""
    return float("nan") if dtype.is_floating_point else INT_POISON


def poison_fill_(buf: torch.Tensor) -> torch.Tensor:
    """Fill an OUTPUT buffer with poison: the NaN bit pattern of POISON_BITS (floats) or INT_POISON."""
    if buf.dtype in POISON_BITS:
        ity, _, bits = POISON_BITS[buf.dtype]
        buf.view(ity).fill_(bits)
    elif buf.is_floating_point():
        buf.fill_(float("nan"))
    else:
        buf.fill_(INT_POISON)
    return buf


def poison_np(n: int, npdtype) -> np.ndarray:
    """n elements of output poison as a numpy array (the CUDA track writes these to files)."""
    npdtype = np.dtype(npdtype)
    for _, (_, uty, bits) in POISON_BITS.items():
        if np.dtype(uty).itemsize == npdtype.itemsize and npdtype.kind == "f":
            return np.full(n, bits, dtype=uty).view(npdtype)
    return np.full(n, INT_POISON, dtype=np.int64).astype(npdtype)


def guarded(t: torch.Tensor, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(view, buffer): a contiguous copy of ``t`` on ``device`` living GUARD elements into a poisoned buffer."""
    n = t.numel()
    buf = torch.full((n + 2 * GUARD,), poison_value(t.dtype), dtype=t.dtype, device=device)
    view = buf[GUARD:GUARD + n].view(t.shape)
    view.copy_(t.to(device))
    return view, buf


def guarded_like(shape, dtype, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(view, buffer): an output of ``shape`` full of poison, inside a poisoned buffer."""
    n = math.prod(shape)
    buf = poison_fill_(torch.empty((n + 2 * GUARD,), dtype=dtype, device=device))
    return buf[GUARD:GUARD + n].view(shape), buf


def _is_poison(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.dtype.kind == "f":
        for _, (_, uty, bits) in POISON_BITS.items():
            if np.dtype(uty).itemsize == a.dtype.itemsize:
                return a.view(uty) == np.array(bits, dtype=uty)
        return np.isnan(a)
    return a == np.array(INT_POISON).astype(a.dtype)


def guard_report(name: str, buf: torch.Tensor, n: int) -> Optional[str]:
    """A message if the guard regions of an output buffer were written, else None."""
    a = buf.detach().cpu().numpy()
    before = np.flatnonzero(~_is_poison(a[:GUARD]))
    after = np.flatnonzero(~_is_poison(a[GUARD + n:]))
    if before.size == 0 and after.size == 0:
        return None
    parts = []
    if after.size:
        parts.append(f"{after.size} element(s) AFTER the end of `{name}` (offsets {_ranges(after + n)} "
                     f"of a {n}-element output)")
    if before.size:
        parts.append(f"{before.size} element(s) BEFORE the start of `{name}` (offsets "
                     f"{_ranges(before - GUARD)})")
    return ("your kernel wrote " + " and ".join(parts) + ". On a GPU that corrupts other memory or "
            "faults. Usually a store without `mask=` (or a bounds check `if (i < n)` missing): lanes past "
            "the end of the data must not store.")


def _ranges(idx: np.ndarray, limit: int = 4) -> str:
    idx = np.sort(idx)
    runs, start, prev = [], idx[0], idx[0]
    for i in idx[1:]:
        if i != prev + 1:
            runs.append((start, prev))
            start = i
        prev = i
    runs.append((start, prev))
    txt = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in runs[:limit])
    return txt + (", ..." if len(runs) > limit else "")


@dataclass
class Mismatch:
    name: str
    text: str


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.6g}"
    return str(v)


def compare(name: str, got: torch.Tensor, exp: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5,
            show: int = 6, poisoned: bool = True) -> Optional[Mismatch]:
    """None if ``got`` matches ``exp``; else a readable account of where and how it differs."""
    if tuple(got.shape) != tuple(exp.shape):
        return Mismatch(name, f"`{name}` has shape {tuple(got.shape)}, expected {tuple(exp.shape)}")
    g = got.detach().cpu().numpy()
    e = exp.detach().cpu().numpy()
    if e.dtype.kind == "f" or g.dtype.kind == "f":
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            close = np.isclose(g64, e64, atol=atol, rtol=rtol, equal_nan=True)
        poison = _is_poison(g) & ~np.isnan(e64)
    else:
        close = g == e
        poison = _is_poison(g) & (e != INT_POISON)
    if not poisoned:  # an output the learner's code allocated itself: NaN there is not the checker's poison
        poison = np.zeros_like(close)
    bad = np.flatnonzero(~close.reshape(-1))
    if bad.size == 0:
        return None
    total = close.size
    lines = [f"`{name}`: {bad.size} of {total} element(s) wrong"]
    n_poison = int(poison.reshape(-1)[bad].sum())
    if n_poison == bad.size:
        lines[0] += " -- all of them still hold the poison the checker put there: your kernel never wrote them"
        lines.append("  (a grid that does not cover every element, a mask that is too strict, or a missing store)")
    elif n_poison:
        lines[0] += f" ({n_poison} never written: still poison)"
    if g.dtype.kind == "f" and np.isnan(g64.reshape(-1)[bad]).any() and n_poison < bad.size:
        lines.append("  NaN where a number was expected comes from: a load past the end of an input without a "
                     "mask (the checker puts NaN around every input); a masked load without `other=` whose lanes "
                     "are then used (NaN here, garbage on a GPU); or (CUDA) a read of shared memory nobody wrote "
                     "yet (the emulation fills it with NaN -- a missing __syncthreads()?)")
    lines.append(f"  {'index':<18}{'expected':>16}{'got':>16}")
    for flat in bad[:show]:
        idx = np.unravel_index(flat, g.shape) if g.ndim else ()
        ix = "[" + ", ".join(str(int(i)) for i in idx) + "]"
        gv, ev = g.reshape(-1)[flat], e.reshape(-1)[flat]
        lines.append(f"  {ix:<18}{_fmt(ev):>16}{_fmt(gv):>16}")
    if bad.size > show:
        lines.append(f"  ... and {bad.size - show} more; wrong indices: {_ranges(bad)} (flat)")
    if g.dtype.kind == "f" and bad.size < total:
        with np.errstate(invalid="ignore"):
            err = np.abs(g64 - e64).reshape(-1)[bad]
        if np.isfinite(err).any():
            lines.append(f"  largest error {np.nanmax(err):.3g} "
                         f"(tolerance: atol {atol:g} + rtol {rtol:g} * |expected|)")
    return Mismatch(name, "\n".join(lines))


def run_case(case: Case, fn: Callable, device) -> List[str]:
    """Call ``fn`` on one case and return the problems found (empty list: the case passed)."""
    kwargs = {}
    for k, v in case.args.items():
        kwargs[k] = guarded(v, device)[0] if isinstance(v, torch.Tensor) else v
    outs = {}
    for k, (shape, dtype) in case.outs.items():
        view, buf = guarded_like(shape, dtype, device)
        outs[k] = (view, buf)
        kwargs[k] = view
    kwargs.update(case.params)
    ret = fn(**kwargs)
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    got: Dict[str, torch.Tensor] = {k: v for k, (v, _) in outs.items()}
    if case.returns:
        if not isinstance(ret, tuple):
            ret = (ret,)
        if len(ret) != len(case.returns):
            return [f"the function returned {len(ret)} value(s), expected {len(case.returns)}: "
                    f"{', '.join(case.returns)}"]
        got.update(dict(zip(case.returns, ret)))
    problems = []
    for k, (view, buf) in outs.items():
        msg = guard_report(k, buf, view.numel())
        if msg:
            problems.append(msg)
    for k, exp in case.expected.items():
        g = got[k]
        if not isinstance(g, torch.Tensor):
            problems.append(f"`{k}` is a {type(g).__name__}, expected a tensor")
            continue
        atol, rtol = case.tol.get(k, (1e-5, 1e-5))
        m = compare(k, g, exp, atol, rtol, poisoned=k in outs)
        if m:
            problems.append(m.text)
    return problems
