"""``pydl doctor``: what is installed, built and usable here, and why not.

:func:`doctor_report` gathers it as a dict (versions, toolchains, every ``PYDL_*`` variable, and per op and
backend whether it can run here and why not); :func:`print_doctor` writes it for a terminal and
:func:`doctor_text` returns that text. The ``pydl doctor`` command (pydl/cli.py), the demo's report and
the GPU check's first step all show this one report. Its imports stay inside the functions: importing it
(as pydl/cli.py does for every command, ``pydl --help`` included) loads no torch.
"""
from __future__ import annotations

import io
import os
import platform
import sys


def doctor_report(build: bool = False) -> dict:
    """Everything `pydl doctor` prints, as a dict (the demo report and the GPU check embed it)."""
    import torch

    from . import __version__, _build, backends

    info = {
        "pydl": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cache_dir": _build.cache_dir(),
        "aot_dir": _build.AOT_DIR,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = f"not importable ({type(e).__name__})"
    import numpy as np

    info["numpy"] = np.__version__
    info["environment"] = environment_report()
    info["cpu_toolchain"] = _build.cpu_toolchain()  # compiles a one-line program with the compiler it names
    info["cuda_toolchain"] = _build.cuda_toolchain()
    try:
        info["cuda_archs"] = _build.cuda_arch_list()
    except ValueError as e:  # a malformed PYDL_CUDA_ARCHS: reported, not fatal to the report
        info["cuda_archs"] = f"invalid ({e})"
    ops = {}
    for name, op in backends.all_ops().items():
        unit = getattr(op, "build_unit", name)  # the compiled sources it comes from (rnn ops share one)
        rows = {}
        for b in op.backends():
            for dev in ("cpu", "cuda"):
                if b in ("cpu", "cuda") and b != dev:
                    continue
                if b == "cuda_emu":  # the CUDA kernels on the CPU emulator: CPU tensors, built like cpu's
                    if dev != "cpu":
                        continue
                    built = _build.cached_build_exists(unit, b)
                    ok, why = backends.available(b, dev, unit) if build else (
                        built, "built (cached)" if built else "not built yet: compiles on first use or with "
                        "`pydl build --device cuda_emu`")
                elif b in ("cpu", "cuda"):
                    if build:
                        ok, why = backends.available(b, b, unit) if (b == "cpu" or torch.cuda.is_available()) \
                            else _build_only(unit, b)
                    else:
                        ok, why = _cache_row(*_build.cache_state(unit, b))
                        if b == "cuda" and not torch.cuda.is_available():
                            ok, why = False, f"no CUDA GPU here (extension: {why})"
                else:
                    ok, why = backends.available(b, dev, name)
                    # available() answers "could this backend take cuda tensors", and reference or auto
                    # could -- but where there is no GPU there are no cuda tensors to give it: not usable here.
                    if ok and dev == "cuda" and not torch.cuda.is_available():
                        ok, why = False, f"no CUDA GPU here ({why} where one is)"
                rows[f"{b}@{dev}"] = (ok, why)
        ops[name] = rows
    info["ops"] = ops
    return info


# What `pydl doctor` says about a cached build (see pydl/_build.py, "Integrity"): (usable?, why).
_CACHE_ROWS = {
    "aot": (True, "built ahead of time ({})"),
    "ok": (True, "built (cached; size and sha256 verified)"),
    "stale": (True, "built, but {}: rebuilt on next use"),
    "unrecorded": (True, "built, not verifiable ({}): relinked on next use"),
    "damaged": (False, "DAMAGED build in cache: {}; rebuilt on next use or with `pydl build`"),
    "missing": (False, "not built yet: compiles on first use or with `pydl build`"),
}


def _cache_row(state: str, detail: str):
    ok, text = _CACHE_ROWS[state]
    return ok, text.format(detail)


def environment_report() -> dict:
    """Every PYDL_* variable set here, with its value or the error reading it would raise."""
    from . import _build, _env, backends

    checks = {
        "PYDL_BACKEND": lambda: _env.choice("PYDL_BACKEND", backends.NAMES, "auto"),
        "PYDL_CACHE_DIR": lambda: _env.path("PYDL_CACHE_DIR"),
        "PYDL_CUDA_ARCHS": lambda: _env.cuda_archs("PYDL_CUDA_ARCHS"),
        "PYDL_FORCE_JIT": lambda: _env.flag("PYDL_FORCE_JIT"),
        "PYDL_NO_NATIVE": lambda: _env.flag("PYDL_NO_NATIVE"),
        "PYDL_VERBOSE_BUILD": lambda: _env.flag("PYDL_VERBOSE_BUILD"),
        "PYDL_BUILD_EXT": lambda: _env.flag("PYDL_BUILD_EXT"),
        "PYDL_BUILD_EXT_ONLY": lambda: [f"{d}:{o}" for d, o in _build.aot_units()],
        "PYDL_CONV_TF32": lambda: _env.flag("PYDL_CONV_TF32"),
        # read by the CPU conv2d (csrc/cpu/conv2d/gemm.cpp, use_whole): "0"/"1" force the whole-batch scheme
        # off/on, anything else is the size rule -- so only those spellings are accepted here
        "PYDL_CONV_WHOLE": lambda: _env.choice("PYDL_CONV_WHOLE", ("0", "1"), "auto"),
        "PYDL_TRITON_AUTOTUNE": lambda: _env.flag("PYDL_TRITON_AUTOTUNE", True),
        "PYDL_REQUIRE_BACKENDS": lambda: _env.required_backends(),
        "PYDL_LEARN_WORKSPACE": lambda: _env.path("PYDL_LEARN_WORKSPACE"),
        "PYDL_TRITON_MEMCHECK": lambda: _env.flag("PYDL_TRITON_MEMCHECK"),
        "PYDL_TRITON_COMPILE_ALL": lambda: _env.flag("PYDL_TRITON_COMPILE_ALL"),
    }
    # Read by the compiled kernels, the CUDA emulator or the course's harness (C++ getenv), listed so they are
    # not called typos.
    unchecked = ("PYDL_BN_ONEPASS", "PYDL_CONV_IM2COL", "PYDL_CONV_TILE_KB", "PYDL_EMU_SEED", "PYDL_EMU_CHECKS",
                 "PYDL_EMU_DEVICE", "PYDL_EMU_PREEMPT", "PYDL_WINOGRAD_GEMM", "PYDL_WINOGRAD_KB",
                 "PYDL_WINOGRAD_PROFILE", "PYDL_WINOGRAD_SCHEME", "PYDL_WINOGRAD_UKB")
    out = {}
    for name in sorted(k for k in os.environ if k.startswith("PYDL_")):
        check = checks.get(name)
        if check is None and name not in unchecked:
            out[name] = (False, (f"{name} is not a variable pydl reads (misspelt?); it reads "
                                f"{', '.join(sorted(set(checks) | set(unchecked)))}"))
            continue
        try:
            out[name] = (True, repr(check()) if check else repr(os.environ[name]))
        except ValueError as e:
            out[name] = (False, str(e))
    return out


def _build_only(op: str, device: str):
    """Build (and load) a CUDA extension on a machine without a GPU: proves it compiles and links."""
    from . import _build

    res = _build.load(op, device)
    return (False, f"built ({res.how}); no CUDA GPU to run it") if res.ok else (False, f"build failed: {res.error}")


def print_doctor(info: dict, out=sys.stdout) -> None:
    w = out.write
    w(f"pydl {info['pydl']}  python {info['python']}  {info['platform']}\n")
    w(f"torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'}), triton {info['triton']}, numpy {info['numpy']}, "
      f"{info['threads']} CPU threads\n")
    w(f"GPU: {info['gpu'] or 'none'}\n")
    ok, why = info["cpu_toolchain"]
    w(f"C++ toolchain: {'ok' if ok else 'MISSING'} - {why}\n")
    ok, why = info["cuda_toolchain"]
    w(f"CUDA toolchain: {'ok' if ok else 'unavailable'} - {why}; archs {info['cuda_archs']}\n")
    w(f"extension cache: {info['cache_dir']}\n")
    for name, (ok, what) in info.get("environment", {}).items():
        w(f"  {name}: {what}\n" if ok else f"  {name}: INVALID - {what}\n")
    w("\nop / backend@device: usable? why\n")
    for op, rows in info["ops"].items():
        for key, (ok, why) in rows.items():
            first = str(why).splitlines()[0] if why else ""
            w(f"  {op:<12} {key:<16} {'yes' if ok else 'no ':<4} {first}\n")


def doctor_text(info: dict) -> str:
    """:func:`print_doctor`'s text as a string (for a report)."""
    buf = io.StringIO()
    print_doctor(info, buf)
    return buf.getvalue()
