"""The fuzz suite's shared harness: run one case, compare it with torch, classify the outcome.

Each op's fuzz module (tests/test_fuzz_<op>.py) draws seeded cases -- valid ones (random shapes including
empty, size 1, non-contiguous, expanded/stride-0, channels_last; every float dtype; NaN/Inf/huge/denormal
values) and invalid ones (wrong types, shapes, ranges) -- and hands each to :func:`check`. A case ends in one
of five outcomes:

* ``OK``        pydl's result equals torch's (within the tolerance the case states), or both raised;
* ``ERROR``     pydl raised a clear error (ValueError/TypeError/RuntimeError/NotImplementedError whose
                message names the argument the case broke) where torch also refuses or the case is invalid;
* ``BY_DESIGN`` a divergence written down in the op's docstring (the case names it);
* ``WRONG``     pydl returned a result that differs from torch, or accepted an invalid argument silently,
                or raised an unclear error (one that does not name the argument);
* ``CRASH``     the process died (only seen through :func:`run_isolated`, which runs a case in a subprocess).

A fuzz module fails its test if any case is WRONG or CRASH, and prints the tally so the counts can be read
from a ``pytest -s`` run (and quoted in a closing note).
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

OK, ERROR, BY_DESIGN, WRONG, CRASH = "OK", "ERROR", "BY_DESIGN", "WRONG", "CRASH"
CLEAR_ERRORS = (ValueError, TypeError, RuntimeError, NotImplementedError, IndexError)


@dataclass
class Tally:
    """Counts outcomes over a fuzz run and keeps the first few failures for the assertion message."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    failures: list = field(default_factory=list)

    def add(self, outcome: str, case: str, detail: str = "") -> str:
        self.counts[outcome] += 1
        if outcome in (WRONG, CRASH):
            self.failures.append(f"{outcome}: {case}: {detail}")
        return outcome

    def summary(self, name: str) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{k} {self.counts[k]}" for k in (OK, ERROR, BY_DESIGN, WRONG, CRASH))
        return f"fuzz {name}: {total} cases: {parts}"

    def assert_clean(self, name: str) -> None:
        print(self.summary(name))
        assert not self.failures, self.summary(name) + "\n" + "\n".join(self.failures[:20])


def _same(a, b, rtol: float, atol: float) -> Optional[str]:
    """None when a and b agree (recursively over tuples/lists), else a short reason."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        if len(a) != len(b):
            return f"{len(a)} outputs vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            why = _same(x, y, rtol, atol)
            if why:
                return f"output {i}: {why}"
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if a.dtype != b.dtype:
            return f"dtype {a.dtype} vs {b.dtype}"
        if a.numel() == 0:
            return None
        x, y = a.detach().double().cpu(), b.detach().double().cpu()
        if not torch.equal(torch.isnan(x), torch.isnan(y)):
            return "NaN positions differ"
        fin = torch.isfinite(x) & torch.isfinite(y)
        if not torch.equal(x[~fin & ~torch.isnan(x)], y[~fin & ~torch.isnan(y)]):
            return "Inf values differ"
        if not torch.equal(torch.isfinite(x), torch.isfinite(y)):
            return "finite positions differ"
        if not torch.allclose(x[fin], y[fin], rtol=rtol, atol=atol):
            err = (x[fin] - y[fin]).abs().max().item()
            return f"max abs diff {err:.3g} (rtol {rtol:g}, atol {atol:g})"
        return None
    if a != b:
        return f"{a!r} vs {b!r}"
    return None


def check(tally: Tally, case: str, run: Callable, expect: Optional[Callable] = None, *, rtol: float = 1e-5,
          atol: float = 1e-6, invalid_arg: Optional[str] = None, by_design: Optional[str] = None) -> str:
    """Run one case and record its outcome.

    * valid case: ``expect`` computes torch's answer; ``run`` must match it (or both must raise);
    * invalid case: pass ``invalid_arg`` (the argument's name as the caller wrote it); ``run`` must raise
      one of CLEAR_ERRORS whose message contains that name;
    * ``by_design``: the op's docstring documents this divergence; the case is counted, not compared.
    """
    if by_design is not None:
        return tally.add(BY_DESIGN, case, by_design)
    try:
        got = run()
    except CLEAR_ERRORS as e:
        msg = str(e)
        if invalid_arg is not None:
            if invalid_arg.lower() in msg.lower():
                return tally.add(ERROR, case)
            return tally.add(WRONG, case, f"error does not name {invalid_arg!r}: {type(e).__name__}: {msg[:200]}")
        if expect is not None:
            try:
                expect()
            except Exception:  # noqa: BLE001 - torch refuses too, whatever it raises: an agreeing refusal
                return tally.add(ERROR, case)
        return tally.add(WRONG, case, f"raised where torch does not: {type(e).__name__}: {msg[:200]}")
    except Exception as e:  # noqa: BLE001 - an unexpected exception type is an unclear error
        return tally.add(WRONG, case, f"unclear error {type(e).__name__}: {str(e)[:200]}")
    if invalid_arg is not None:
        return tally.add(WRONG, case, f"accepted invalid {invalid_arg!r}")
    if expect is None:
        return tally.add(OK, case)
    try:
        want = expect()
    except Exception as e:  # noqa: BLE001 - whatever torch raises, pydl should have refused too
        return tally.add(WRONG, case, f"pydl accepted what torch refuses ({type(e).__name__}: {str(e)[:120]})")
    why = _same(got, want, rtol, atol)
    return tally.add(WRONG if why else OK, case, why or "")


def run_isolated(tally: Tally, case: str, code: str, timeout: float = 120.0) -> str:
    """Run ``code`` (a Python snippet that exits 0 when the case behaves) in a fresh interpreter.

    For cases that could take the process down (a heap overflow in a compiled kernel, SIGBUS on a damaged
    library): a signal or abort is a CRASH; a non-zero exit is WRONG with the snippet's stderr tail.
    """
    env = dict(os.environ)
    env.setdefault("PYTHONFAULTHANDLER", "1")
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    if p.returncode < 0 or p.returncode in (134, 135, 136, 139):
        return tally.add(CRASH, case, f"exit {p.returncode}: {p.stderr[-400:]}")
    if p.returncode != 0:
        return tally.add(WRONG, case, p.stderr[-400:])
    return tally.add(OK, case)


def run_cpu_backends(tally: Tally, op: str, plan, valid_case: Callable, invalid_cases: Callable) -> list:
    """For each (backend, n) of ``plan`` that can run on CPU tensors here: ``n`` calls of
    ``valid_case(backend)``, then every ``(case, call, argument)`` of ``invalid_cases(backend)`` through
    :func:`check`. A backend that cannot run is left out -- unless PYDL_REQUIRE_BACKENDS names it, which fails
    the test (tests/helpers.py's require_backend). Returns the backends that ran."""
    import pytest
    from helpers import require_backend

    ran = []
    for backend, n in plan:
        try:
            require_backend(backend, "cpu", op)
        except pytest.skip.Exception:
            continue
        ran.append(backend)
        for _ in range(n):
            valid_case(backend)
        for case, call, arg in invalid_cases(backend):
            check(tally, f"{backend} {case}", call, invalid_arg=arg)
    return ran
