"""The CUDA C++ track's checker: compile the learner's ``.cu`` for the GPU (nvcc) and as plain C++ against
the CPU emulation of the CUDA execution model (g++ + csrc/emu/cuda_emu.h, see :mod:`pydl._emu`), run the test cases,
compare.

Each exercise's launcher is a plain host function (``void vector_add(const float* x, ..., int block)``)
that takes *device* pointers and launches the kernel with ``<<<grid, block>>>``. The checker generates a
small ``main`` (a few lines per argument, see :func:`harness_source`) that reads a case folder, copies the
arrays to the device, calls the launcher and writes the outputs back -- guard regions included. One binary
per build; one process per case, each with a time limit.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .. import _emu
from . import course
from .harness import GUARD, Case, compare, guard_report, poison_np, poison_value

IO_HEADER = course.COMMON / "pydl_learn_io.h"
# the project's one CUDA emulator (csrc/emu/), shared with the emulated build of pydl's own kernels
EMU_HEADER = Path(_emu.HEADER)
EMU_INCLUDE = Path(_emu.INCLUDE_DIR)

_CTYPES = {"float": (np.float32, torch.float32), "int": (np.int32, torch.int32),
           "unsigned int": (np.uint32, torch.int32), "unsigned": (np.uint32, torch.int32),
           "double": (np.float64, torch.float64), "long long": (np.int64, torch.int64)}


# --------------------------------------------------------------------------------------------------
# Toolchains
# --------------------------------------------------------------------------------------------------

def find_nvcc() -> Optional[str]:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    on_path = shutil.which("nvcc")
    if on_path:
        return on_path
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda/bin/nvcc"
    return None


def find_cxx() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def gpu_present() -> bool:
    return torch.cuda.is_available()


def _parse_signature(sig: List[Tuple[str, str]]):
    """[(name, ctype)] -> [(name, base_type, is_pointer, is_const)]."""
    out = []
    for name, ctype in sig:
        t = ctype.strip()
        ptr = t.endswith("*")
        const = t.startswith("const ")
        base = t.rstrip("*").replace("const ", "").strip()
        out.append((name, base, ptr, const))
    return out


def harness_source(ex: course.Exercise, learner_path: str) -> str:
    """A main() that runs the learner's launcher on one case folder (argv[1])."""
    lines = ['#include "pydl_learn_io.h"', f'#include "{learner_path}"', "",
             "int main(int argc, char** argv) {",
             '  if (argc < 2) pydl_io::die("usage: harness CASE_DIR");',
             "  pydl_io::Case c(argv[1]);"]
    call = []
    for name, base, ptr, _const in _parse_signature(ex.module.SIGNATURE):
        if ptr:
            lines.append(f'  auto arg_{name} = c.array<{base}>("{name}");')
            call.append(f"arg_{name}.ptr()")
        else:
            lines.append(f'  {base} arg_{name} = c.scalar<{base}>("{name}");')
            call.append(f"arg_{name}")
    lines.append(f"  {ex.entry}({', '.join(call)});")
    lines.append('  pydl_io::check(cudaGetLastError(), "the launch");')
    lines.append('  pydl_io::check(cudaDeviceSynchronize(), "the kernel (cudaDeviceSynchronize)");')
    for name, _base, ptr, const in _parse_signature(ex.module.SIGNATURE):
        if ptr and not const:
            lines.append(f"  arg_{name}.write_back();")
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines)


def _compile_errors(text: str, limit: int = 20) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errs = [i for i, ln in enumerate(lines) if "error" in ln.lower()]
    if errs:
        start = max(0, errs[0] - 1)
        lines = lines[start:]
    out = "\n".join(lines[:limit])
    return out + ("\n..." if len(lines) > limit else "")


def build(ex: course.Exercise, learner: Path, work: Path, mode: str,
          timeout: float = 120) -> Tuple[bool, str, Optional[Path]]:
    """Compile the harness + learner file. mode 'emu' (g++) or 'gpu' (nvcc). Returns (ok, message, exe)."""
    work.mkdir(parents=True, exist_ok=True)
    if mode == "emu":
        cxx = find_cxx()
        if not cxx:
            return False, "no C++ compiler (install g++: `apt install g++`, or Xcode command line tools)", None
        src = _emu.rewrite(learner.read_text(), str(learner))
        (work / "learner_emu.cu.inc").write_text(src)
        (work / "harness_emu.cpp").write_text(harness_source(ex, str(work / "learner_emu.cu.inc")))
        exe = work / "harness_emu"
        obj = work / "harness_emu.o"
        # -fsanitize=thread instruments every load and store with a call the emulator's hooks answer (defined
        # in this unit: PYDL_EMU_DEFINE_HOOKS); the link below leaves ThreadSanitizer's runtime out. That is
        # what lets memcheck/racecheck/initcheck see the kernel's accesses (see pydl._emu).
        cmd = [cxx, "-std=c++17", "-O0", "-g", "-w", *_emu.CHECK_FLAGS, "-DPYDL_EMU_DEFINE_HOOKS",
               "-I", str(EMU_INCLUDE), "-I", str(course.COMMON), "-include", str(EMU_HEADER),
               "-DPYDL_GUARD=%d" % GUARD, "-c", str(work / "harness_emu.cpp"), "-o", str(obj)]
        link = [cxx, str(obj), "-o", str(exe)]
    else:
        nvcc = find_nvcc()
        if not nvcc:
            return False, "no nvcc", None
        (work / "harness_gpu.cu").write_text(harness_source(ex, str(learner)))
        exe = work / "harness_gpu"
        arch = "-arch=native" if gpu_present() else "-arch=sm_80"
        cmd = [nvcc, "-std=c++17", "-O2", arch, "-I", str(course.COMMON), "-DPYDL_GUARD=%d" % GUARD,
               str(work / "harness_gpu.cu"), "-o", str(exe)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"the compiler took more than {timeout:.0f} s", None
    if r.returncode != 0:
        return False, _compile_errors(r.stderr + r.stdout), None
    if mode == "emu":
        r = subprocess.run(link, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            return False, _compile_errors(r.stderr + r.stdout), None
        return True, f"{os.path.basename(cmd[0])} -std=c++17 with the emulator (csrc/emu/cuda_emu.h)", exe
    return True, f"nvcc {arch[len('-arch='):]}" + ("" if gpu_present() else " (no GPU here: compiled, not run)"), exe


def write_case(case: Case, ex: course.Exercise, folder: Path) -> Dict[str, Tuple[int, np.dtype]]:
    """Write one case's folder; returns {output name: (n elements, numpy dtype)}."""
    folder.mkdir(parents=True, exist_ok=True)
    scalars, outs = [], {}
    for name, base, ptr, const in _parse_signature(ex.module.SIGNATURE):
        if ptr:
            npdt, tdt = _CTYPES[base]
            if name in case.args:
                data = case.args[name].detach().cpu().reshape(-1).numpy().astype(npdt)
                fill = np.nan if npdt in (np.float32, np.float64) else np.array(poison_value(tdt)).astype(npdt)
                buf = np.full(data.size + 2 * GUARD, fill, dtype=npdt)
                buf[GUARD:GUARD + data.size] = data
                if not const:
                    outs[name] = (data.size, npdt)
            elif name in case.outs:
                shape, _ = case.outs[name]
                n = int(np.prod(shape))
                buf = poison_np(n + 2 * GUARD, npdt)
                outs[name] = (n, npdt)
            else:
                raise KeyError(f"case {case.label} has no array {name!r}")
            buf.tofile(folder / f"{name}.bin")
        else:
            val = case.params[name] if name in case.params else case.args[name]
            scalars.append(f"{name} {float(val)!r}")
    (folder / "scalars.txt").write_text("\n".join(scalars) + "\n")
    return outs


def run_cases(ex: course.Exercise, exe: Path, cases: List[Case], work: Path, timeout: float = 30,
              seed_env: bool = True) -> Tuple[int, List[Tuple[Case, List[str]]]]:
    """Run every case; returns (number run, [(case, problems)] for the failing ones)."""
    failed = []
    for i, case in enumerate(cases):
        # the emulation runs every case under two seeds: two random block orders and thread interleavings (the
        # checks do not depend on the schedule; a wrong result from a missing barrier often does)
        for seed in ((2 * i, 2 * i + 1) if seed_env else (None,)):
            problems = _run_one(ex, exe, case, work / f"case{i}", timeout, seed)
            if problems and "did not finish" in problems[0]:
                failed.append((case, problems + ["(the remaining cases were not run)"]))
                return len(cases), failed
            if problems:
                if seed is not None:
                    problems = problems + [f"(emulation schedule: PYDL_EMU_SEED={seed})"]
                failed.append((case, problems))
                break
    return len(cases), failed


def _run_one(ex, exe, case, folder, timeout, seed) -> List[str]:
    outs = write_case(case, ex, folder)
    env = dict(os.environ)
    if seed is not None:
        env["PYDL_EMU_SEED"] = str(seed)
    try:
        r = subprocess.run([str(exe), str(folder)], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [f"did not finish within {timeout:.0f} s (an endless loop? a loop whose bound "
                f"never changes, or a barrier threads wait at forever)"]
    if r.returncode != 0:
        why = r.stderr.strip() or r.stdout.strip()
        if r.returncode < 0:
            sig = -r.returncode
            why = (f"crashed with signal {sig}" + (" (segmentation fault: a read or write far outside an "
                   "array -- check your bounds tests)" if sig == 11 else "") + ("\n" + why if why else ""))
        return [why[-2000:]]
    problems = []
    for name, (n, npdt) in outs.items():
        buf = np.fromfile(folder / f"{name}.bin", dtype=npdt)
        tbuf = torch.from_numpy(buf.view(np.int32) if npdt == np.uint32 else buf)
        msg = guard_report(name, tbuf, n)
        if msg:
            problems.append(msg)
        if name in case.expected:
            exp = case.expected[name]
            got = tbuf[GUARD:GUARD + n].reshape(exp.shape)
            atol, rtol = case.tol.get(name, (1e-5, 1e-5))
            m = compare(name, got, exp, atol, rtol)
            if m:
                problems.append(m.text)
    return problems


def source_checks(ex: course.Exercise, src: str) -> List[str]:
    """Problems with the *source* that running it cannot reveal (e.g. an exercise's required technique)."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", src, flags=re.S)
    problems = []
    for pattern, why in getattr(ex.module, "REQUIRES", []):
        if not re.search(pattern, code):
            problems.append(why)
    return problems


def check(ex: course.Exercise, learner: Path, use_gpu: Optional[bool] = None, timeout: float = 30,
          nvcc: bool = True) -> List[dict]:
    """The CUDA track's levels for one learner file."""
    levels = []
    gpu = gpu_present() if use_gpu is None else use_gpu
    with tempfile.TemporaryDirectory(prefix="pydl-learn-") as tmp:
        work = Path(tmp)
        # 1. nvcc
        gpu_exe = None
        if not nvcc:
            levels.append({"name": "compiles for the GPU (nvcc)", "status": "skip", "detail": "not asked for"})
        elif find_nvcc() is None:
            levels.append({"name": "compiles for the GPU (nvcc)", "status": "skip",
                           "detail": "nvcc not found: install the CUDA toolkit (https://developer.nvidia.com/"
                                     "cuda-downloads; on Linux also `apt install nvidia-cuda-toolkit`) and set "
                                     "CUDA_HOME. The CPU levels below still run."})
        else:
            ok, msg, gpu_exe = build(ex, learner, work / "gpu", "gpu")
            levels.append({"name": "compiles for the GPU (nvcc)", "status": "pass" if ok else "fail",
                           "detail": msg if ok else "nvcc reports:\n" + msg})
            # the CPU levels still run: their feedback helps, and a broken toolkit must not hide it
        # 2. g++ against the emulation
        ok, msg, emu_exe = build(ex, learner, work / "emu", "emu")
        levels.append({"name": "compiles as C++ against the CPU emulation (g++)", "status": "pass" if ok else "fail",
                       "detail": msg if ok else "the C++ compiler reports (the emulation rewrites <<<...>>> "
                                                "launches and __shared__ declarations; line numbers are "
                                                "yours):\n" + msg})
        if not ok:
            return levels
        # 3. run on the emulation
        cases = ex.module.cases("cpu")
        n, failed = run_cases(ex, emu_exe, cases, work / "emu_cases", timeout)
        levels.append(_level("correct on the CPU emulation (with memcheck, racecheck, initcheck, synccheck)", n, failed,
                             cases))
        if failed:
            return levels
        probs = source_checks(ex, learner.read_text())
        if probs:
            levels.append({"name": "uses what a GPU needs (source check)", "status": "fail",
                           "detail": "\n".join(probs)})
            return levels
        # 4. the real thing
        if gpu and gpu_exe is not None:
            gcases = ex.module.cases("cuda")
            n, failed = run_cases(ex, gpu_exe, gcases, work / "gpu_cases", timeout, seed_env=False)
            levels.append(_level("correct on a GPU", n, failed, gcases))
        else:
            why = ("no CUDA GPU here" if not gpu else "the GPU build (nvcc) was skipped or is unavailable")
            levels.append({"name": "correct on a GPU", "status": "skip",
                           "detail": why + ": not run, so NOT passed. " + ex.gpu_only_note()})
    return levels


def _level(name, n, failed, cases) -> dict:
    if not failed:
        return {"name": name, "status": "pass", "detail": f"{n} cases (several sizes, seeds and block sizes)"}
    detail = [f"{len(failed)} of {n} cases wrong. First failing case(s):"]
    for case, problems in failed[:2]:
        detail.append(f"- case: {case.label}" + (f"  ({case.note})" if case.note else ""))
        for p in problems[:3]:
            detail.append("  " + p.replace("\n", "\n  "))
    return {"name": name, "status": "fail", "detail": "\n".join(detail)}
