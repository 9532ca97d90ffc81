"""Runs a learner's Triton file against an exercise's cases, in a subprocess of its own.

    python -m pydl.learn.runner EXERCISE FILE --device cpu|cuda --out result.json
    python -m pydl.learn.runner --batch jobs.json --out results.jsonl     (many files, one process)

The checker (pydl/learn/checker.py) starts this with a time limit: a kernel that reads far out of bounds can
crash Triton's interpreter, and a wrong loop bound can hang it; neither may take the checker down with it.
On ``--device cpu`` the parent sets ``TRITON_INTERPRET=1`` so every ``@triton.jit`` kernel in the learner's
file runs in the interpreter.

In the interpreter, masked-off lanes of a load without ``other=`` are filled with NaN (see
:func:`poison_masked_loads`): on a GPU they hold garbage, and a kernel must not depend on them. And every
load and store is checked against the tensors of its launch (pydl/kernels/_memcheck.py): an unmasked load
whose stray lanes are dropped again by a masked store changes no output, so no output check can see it.

The result is JSON: a list of levels, each ``{"name", "status": "pass"|"fail"|"skip", "detail"}``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback


def _short_tb(exc: BaseException, learner_file: str) -> str:
    """The exception, plus the lines of the learner's own file it went through (the rest is Triton's)."""
    frames = traceback.extract_tb(exc.__traceback__)
    cause = exc.__cause__
    if cause is not None and type(cause).__name__ == "OutOfBoundsAccess":
        # the interpreter wraps it in an InterpreterError(repr(...)): show the memcheck report itself, and the
        # learner's kernel lines, which sit in the cause's traceback
        frames += traceback.extract_tb(cause.__traceback__)
        exc = cause
    mine = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(learner_file)]
    lines = [f"{type(exc).__name__}: {str(exc).strip()}"]
    for f in mine[-3:]:
        lines.append(f"  at {os.path.basename(f.filename)}:{f.lineno}: {(f.line or '').strip()}")
    text = "\n".join(lines)
    if len(text) > 3000:
        text = text[:3000] + "\n  ..."
    return text


_loaded = 0


def load_learner(path: str):
    global _loaded
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    _loaded += 1
    name = f"learner{_loaded}_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def poison_masked_loads() -> None:
    """Make masked-off lanes of ``tl.load(..., mask=m)`` *without* ``other=`` hold NaN (floats) or a garbage
    integer in Triton's interpreter, instead of the zeros it gives them. On a GPU those lanes are undefined;
    a kernel that reduces over them is wrong there even though zeros would hide it here."""
    import numpy as np
    from triton.runtime import interpreter as interp

    builder = getattr(interp, "InterpreterBuilder", None)
    if builder is None or getattr(builder, "_pydl_poisoned", False):
        return
    original = builder.create_masked_load

    def create_masked_load(self, ptrs, mask, other, *args, **kwargs):
        if other is None:
            dtype_np = interp._get_np_dtype(ptrs.get_element_ty())
            if np.dtype(dtype_np).kind == "f":
                fill = np.full(ptrs.data.shape, np.nan, dtype=dtype_np)
            elif np.dtype(dtype_np).kind in "iu":
                fill = np.full(ptrs.data.shape, np.iinfo(dtype_np).max // 3, dtype=dtype_np)
            else:
                fill = None
            if fill is not None:
                other = interp.TensorHandle(fill, ptrs.get_element_ty())
        return original(self, ptrs, mask, other, *args, **kwargs)

    builder.create_masked_load = create_masked_load
    builder._pydl_poisoned = True


def run(exercise: str, path: str, device: str) -> dict:
    from . import course
    from .harness import run_case

    ex = course.get(exercise)
    if device == "cpu":
        try:
            poison_masked_loads()
        except Exception:  # noqa: BLE001 - an interpreter without this hook: lanes stay zero
            pass
        from pydl.kernels import _memcheck

        _memcheck.enable()  # out-of-bounds loads and stores fail the case, with the kernel and program named
    where = "CPU (Triton interpreter)" if device == "cpu" else "GPU (compiled Triton)"
    levels = []
    t0 = time.perf_counter()
    try:
        mod = load_learner(path)
        fn = getattr(mod, ex.entry, None)
        if fn is None:
            raise AttributeError(f"your file has no function `{ex.entry}` (the checker calls it; keep its name "
                                 f"and signature from the starter)")
    except BaseException as e:  # noqa: BLE001 - anything the learner's import does
        levels.append({"name": "imports", "status": "fail", "detail": _short_tb(e, path)})
        return {"levels": levels}
    levels.append({"name": "imports", "status": "pass", "detail": f"`{ex.entry}` found"})

    import torch

    cases = ex.module.cases(device)
    failed = []
    for case in cases:
        torch.manual_seed(0)
        try:
            problems = run_case(case, fn, device)
        except BaseException as e:  # noqa: BLE001
            problems = ["the call raised " + _short_tb(e, path)]
        if problems:
            failed.append((case, problems))
    dt = time.perf_counter() - t0
    name = f"correct on {where}"
    if not failed:
        levels.append({"name": name, "status": "pass",
                       "detail": f"{len(cases)} cases (several shapes, seeds and block sizes) in {dt:.1f} s"})
    else:
        detail = [f"{len(failed)} of {len(cases)} cases wrong. First failing case(s):"]
        for case, problems in failed[:2]:
            detail.append(f"- case: {case.label}" + (f"  ({case.note})" if case.note else ""))
            for p in problems[:3]:
                detail.append("  " + p.replace("\n", "\n  "))
        detail.append("passing cases: " + (", ".join(c.label for c in cases if all(c is not f[0] for f in failed))
                                            or "none"))
        levels.append({"name": name, "status": "fail", "detail": "\n".join(detail)})
        return {"levels": levels}

    plug = getattr(ex.module, "plugin", None)
    if plug is not None:
        try:
            status, detail = plug(mod, device)
        except BaseException as e:  # noqa: BLE001
            status, detail = "fail", "plugging your kernel into pydl raised " + _short_tb(e, path)
        levels.append({"name": "runs inside pydl (backend override, in a real model)", "status": status,
                       "detail": detail})
    return {"levels": levels}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("exercise", nargs="?")
    p.add_argument("file", nargs="?")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", required=True)
    p.add_argument("--batch", help="JSON list of [exercise, file]: run them all in this process, appending one "
                                   "JSON line per job to --out (the course's own tests use it)")
    a = p.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    if a.batch:
        with open(a.batch) as f:
            jobs = json.load(f)
        for i, (exercise, path) in enumerate(jobs):
            res = run(exercise, path, a.device)
            with open(a.out, "a") as f:
                f.write(json.dumps({"job": i, "levels": res["levels"]}) + "\n")
        return 0
    res = run(a.exercise, a.file, a.device)
    with open(a.out, "w") as f:
        json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
