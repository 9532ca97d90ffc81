"""Building and loading pydl's compiled backends.

Every op that has compiled kernels is built into its own shared object per device:

    csrc/cpu/<op>.cpp                      -> pydl_cpu_<op>       (ops in the torch namespace `pydl_cpu`)
    csrc/cuda/<op>.cu + csrc/cuda/<op>.cpp -> pydl_cuda_<op>      (ops in the torch namespace `pydl_cuda`)
    the same two files, host C++ compiler  -> pydl_cuda_emu_<op>  (`pydl_cuda_emu`: the CUDA kernels run on CPU
                                                                   tensors by the emulator, see _emu_build)

One object per op (rather than one big extension) keeps the failure of one op's build from taking every other
op down, keeps incremental rebuilds small, and is the same unit in both build paths:

* ahead of time: ``PYDL_BUILD_EXT=1 pip install --no-build-isolation -e .`` puts them in ``pydl/_ext/``;
* just in time: the first call that needs one compiles it with ninja into a cache directory keyed by the
  pydl, torch, CUDA and Python versions (``pydl doctor`` prints it; ``PYDL_CACHE_DIR`` overrides it).

Nothing here runs at ``import pydl``: ops call :func:`load` when a compiled backend is first asked for.

Locks: torch serialises builds of one extension with a lock file; older torch versions used a lock whose mere
existence blocks, so a build killed half-way hung every later import. We take our own ``fcntl`` lock (the
kernel drops it when its holder dies, however it dies) and, holding it, delete any lock file left behind.
"""
from __future__ import annotations

import glob
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

DEVICES = ("cpu", "cuda", "cuda_emu")  # cuda_emu: csrc/cuda's sources, built for the CPU emulator
DEFAULT_CUDA_ARCHS = "8.0;9.0"  # Ampere and Hopper; compiled and linked even where no GPU is present

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_AOT_DIR = os.path.join(_PKG_DIR, "_ext")


class BuildError(RuntimeError):
    """A compiled backend could not be built or loaded; the message says why."""


def csrc_dir() -> str:
    """Where the C++/CUDA sources are: the source tree (editable install) or the copy shipped in a wheel."""
    for cand in (os.path.join(os.path.dirname(_PKG_DIR), "csrc"), os.path.join(_PKG_DIR, "_csrc")):
        if os.path.isdir(os.path.join(cand, "cpu")):
            return cand
    raise BuildError("pydl's C++ sources (csrc/) were not found next to the package; reinstall pydl")


def sources(op: str, device: str) -> List[str]:
    """The source files of one op's extension for one device (empty list: the op has none)."""
    try:
        root = csrc_dir()
    except BuildError:
        return []
    if device == "cpu":
        files = [os.path.join(root, "cpu", f"{op}.cpp")]
    elif device in ("cuda", "cuda_emu"):
        files = [os.path.join(root, "cuda", f"{op}.cu"), os.path.join(root, "cuda", f"{op}.cpp")]
    else:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return files if all(os.path.isfile(f) for f in files) else []


def compiled_ops(device: str) -> List[str]:
    """Ops with compiled sources for ``device``, discovered from the file names in csrc/."""
    try:
        root = csrc_dir()
    except BuildError:
        return []
    folder, pattern = ("cpu", "*.cpp") if device == "cpu" else ("cuda", "*.cu")
    names = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(root, folder, pattern)))
    return [n for n in names if sources(n, device)]


def ext_name(op: str, device: str) -> str:
    return f"pydl_{device}_{op}"


# --------------------------------------------------------------------------------------------------
# Toolchains
# --------------------------------------------------------------------------------------------------

def _find_cuda_home() -> Optional[str]:
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and os.path.isfile(os.path.join(cand, "bin", "nvcc")):
            return cand
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def nvcc_version(cuda_home: str) -> Optional[str]:
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for tok in out.replace(",", " ").split():
        if tok.startswith("V") and tok[1:2].isdigit():
            return tok[1:]
    return None


def _cpp_extension():
    """torch.utils.cpp_extension, imported with CUDA_HOME set: it reads CUDA_HOME once, at import, and
    otherwise guesses (and warns) when nvcc is not on PATH, as with /usr/local/cuda here."""
    import logging

    home = _find_cuda_home()
    if home and "CUDA_HOME" not in os.environ:
        os.environ["CUDA_HOME"] = home
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)  # its import-time "No CUDA runtime is found" is expected on a GPU-less build box
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def cpu_toolchain() -> Tuple[bool, str]:
    """(ok, reason) for building the C++ CPU extensions."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        return False, "no C++ compiler found (install g++ or set CXX)"
    if not _cpp_extension().is_ninja_available():
        return False, "ninja is not installed (pip install ninja)"
    return True, f"C++ compiler {cxx}"


def cuda_toolchain() -> Tuple[bool, str]:
    """(ok, reason) for building the CUDA extensions. A GPU is not needed to build."""
    import torch

    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build (no CUDA headers/libraries to link)"
    home = _find_cuda_home()
    if home is None:
        return False, "no nvcc found (set CUDA_HOME or put nvcc on PATH)"
    ver = nvcc_version(home)
    if ver is None:
        return False, f"{home}/bin/nvcc did not report a version"
    if ver.split(".")[0] != torch.version.cuda.split(".")[0]:
        return False, (f"nvcc {ver} ({home}) and torch's CUDA {torch.version.cuda} differ in major version; "
                       "install a matching toolkit or torch")
    ok, why = cpu_toolchain()
    if not ok:
        return False, why
    return True, f"nvcc {ver} at {home}, torch CUDA {torch.version.cuda}"


def cuda_arch_list() -> str:
    """Explicit archs so a machine without a GPU can compile and link; a local GPU's arch is added."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or os.environ.get("PYDL_CUDA_ARCHS") or DEFAULT_CUDA_ARCHS
    archs = archs.replace(" ", ";")
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            local = f"{major}.{minor}"
            if local not in archs.split(";"):
                archs = f"{archs};{local}"
    except Exception:  # noqa: BLE001 - a broken driver must not break a build for other archs
        pass
    return archs


# --------------------------------------------------------------------------------------------------
# Flags and cache
# --------------------------------------------------------------------------------------------------

def _cpu_fingerprint() -> str:
    """-march=native code must not be loaded on another CPU: key the cache by the CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    return hashlib.sha1((platform.machine() + flags).encode()).hexdigest()[:8]


def _native_ok() -> bool:
    return os.environ.get("PYDL_NO_NATIVE", "0") != "1"


def cflags(jit: bool) -> List[str]:
    flags = ["-O3", "-fopenmp", "-DPYDL_EXTENSION"]
    if jit and _native_ok() and platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
    return flags


def cuda_cflags() -> List[str]:
    # No --use_fast_math: the histogram's bin rule needs IEEE division to match torch.histc exactly.
    return ["-O3", "-lineinfo", "-std=c++17", f"-DPYDL_CUDA_ARCHS=\"{cuda_arch_list()}\""]


def cache_dir() -> str:
    import torch

    from . import __version__

    base = os.environ.get("PYDL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "pydl")
    cu = f"cu{torch.version.cuda}" if torch.version.cuda else "cpu"
    tag = (f"pydl{__version__}-torch{torch.__version__}-{cu}-py{sys.version_info[0]}{sys.version_info[1]}-"
           f"{platform.machine()}-{_cpu_fingerprint()}")
    return os.path.join(base, "ext", tag.replace("+", "_"))


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

@dataclass
class LoadResult:
    ok: bool
    how: str = ""          # "aot", "jit (cached)", "jit (compiled in 12.3 s)"
    path: str = ""
    error: str = ""
    seconds: float = 0.0


_results: Dict[Tuple[str, str], LoadResult] = {}
_mutex = threading.Lock()


def status(op: str, device: str) -> Optional[LoadResult]:
    """What happened when (op, device) was loaded in this process; None if nobody asked yet."""
    return _results.get((op, device))


def _aot_path(op: str, device: str) -> Optional[str]:
    hits = sorted(glob.glob(os.path.join(_AOT_DIR, ext_name(op, device) + "*.so")))
    return hits[0] if hits else None


def _jit_build(op: str, device: str, verbose: bool) -> str:
    import fcntl

    srcs = sources(op, device)
    if not srcs:
        raise BuildError(f"no {device} sources for op {op!r} in {csrc_dir()}")
    if device == "cuda_emu":
        return _emu_build(op, verbose)
    if device == "cuda":
        ok, why = cuda_toolchain()
        if not ok:
            raise BuildError(why)
        # torch.utils.cpp_extension reads CUDA_HOME and TORCH_CUDA_ARCH_LIST from the environment.
        os.environ.setdefault("CUDA_HOME", _find_cuda_home())
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
    else:
        ok, why = cpu_toolchain()
        if not ok:
            raise BuildError(why)
    cpp_extension = _cpp_extension()
    if device == "cuda":
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]

    name = ext_name(op, device)
    build_dir = os.path.join(cache_dir(), name)
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, "pydl.flock"), "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            stale = os.path.join(build_dir, "lock")
            if os.path.exists(stale):  # we hold the only lock that matters: anything left is stale
                os.remove(stale)
            return cpp_extension.load(
                name=name,
                sources=srcs,
                extra_cflags=cflags(jit=True),
                extra_cuda_cflags=cuda_cflags() if device == "cuda" else None,
                extra_ldflags=["-fopenmp"],
                extra_include_paths=[csrc_dir()],
                build_directory=build_dir,
                with_cuda=(device == "cuda"),
                is_python_module=False,
                verbose=verbose,
            )
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# The emulated CUDA backend (cuda_emu)
# --------------------------------------------------------------------------------------------------
#
# pydl_cuda_emu_<op> is built from csrc/cuda/<op>.cu and csrc/cuda/<op>.cpp, unchanged, in two translation
# units that the build directory holds as small generated files:
#
#   <op>_kernels.cpp   the emulator (csrc/emu/cuda_emu.h) and the launch log (csrc/emu/launch_log.h), then the
#                      .cu source after pydl._emu.rewrite (<<<>>> launches, __shared__ declarations), with a
#                      #line directive so compiler messages and the checks' source lines name the .cu file.
#                      No torch header: compiled here, by the host compiler, with the emulator's own flags.
#   <op>_glue.cpp      `#include "cuda_glue.h"` + `#include "cuda/<op>.cpp"`: the ATen glue, retargeted to CPU
#                      tensors and the torch library `pydl_cuda_emu` (see csrc/emu/cuda_glue.h). Compiled and
#                      linked, with the kernels' object, by torch.utils.cpp_extension like the other units.
#
# The kernels' object is named by a hash of everything it is made from (its source after the rewrite, the
# flags, every header under csrc/ and the compiler's version): an edit anywhere gives a new name, so the
# object is rebuilt and the library relinked, and an unchanged tree reuses it.

def _emu_paths():
    root = csrc_dir()
    emu = os.path.join(root, "emu")
    return root, emu, os.path.join(emu, "glue")


def emu_kernel_cflags() -> List[str]:
    """Flags of an emulated kernel translation unit.

    -fsanitize=thread without libtsan: the compiler calls a hook before every load and store of the kernel
    code, and the hooks (csrc/emu/cuda_emu_hooks.cpp, linked into the library, compiled without the flag)
    are the emulator's memcheck / racecheck / initcheck. -g: the checks name source lines. -O1: a launch
    runs every thread of every block on one CPU core, so the kernels should be optimised, but -O2's compile
    time is not worth its few percent here. The C++ ABI flag matches torch's: the glue and the kernels share
    the emulator's inline functions and their std:: types."""
    import torch

    root, emu, _ = _emu_paths()
    return ["-std=c++17", "-fPIC", "-O1", "-g", "-fsanitize=thread", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-DPYDL_CUDA_EMU",
            "-I", emu, "-I", root, "-I", os.path.join(root, "cuda")]


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path) as f:
            if f.read() == text:
                return  # keep the timestamp: ninja would otherwise rebuild an unchanged file
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)


def _cxx() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise BuildError("no C++ compiler found (install g++ or set CXX)")
    return cxx


def _emu_kernel_object(op: str, build_dir: str, verbose: bool) -> str:
    from . import _emu

    root, emu, _ = _emu_paths()
    cu = os.path.join(root, "cuda", f"{op}.cu")
    with open(cu) as f:
        body = _emu.rewrite(f.read(), cu)
    text = '#include "cuda_emu.h"\n#include "launch_log.h"\n' + body
    src = os.path.join(build_dir, f"{op}_kernels.cpp")
    _write_if_changed(src, text)
    cxx = _cxx()
    flags = emu_kernel_cflags()
    h = hashlib.sha1()
    h.update(text.encode())
    h.update(" ".join([cxx] + flags).encode())
    try:
        h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.encode())
    except (OSError, subprocess.SubprocessError):
        pass
    for path in sorted(glob.glob(os.path.join(root, "**", "*.h"), recursive=True)):
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read())
    obj = os.path.join(build_dir, f"{op}_kernels-{h.hexdigest()[:12]}.o")
    if os.path.isfile(obj):
        return obj
    for old in glob.glob(os.path.join(build_dir, f"{op}_kernels-*.o")):
        os.remove(old)
    cmd = [cxx] + flags + ["-c", src, "-o", obj + ".tmp"]
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"compiling {cu} for the CUDA emulator failed:\n{' '.join(cmd)}\n{r.stderr}{r.stdout}")
    os.replace(obj + ".tmp", obj)  # atomic: a killed compile never leaves a half object under the final name
    return obj


def _emu_build(op: str, verbose: bool) -> str:
    import fcntl

    ok, why = cpu_toolchain()
    if not ok:
        raise BuildError(why)
    cpp_extension = _cpp_extension()
    root, emu, glue = _emu_paths()
    name = ext_name(op, "cuda_emu")
    build_dir = os.path.join(cache_dir(), name)
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, "pydl.flock"), "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            stale = os.path.join(build_dir, "lock")
            if os.path.exists(stale):
                os.remove(stale)
            obj = _emu_kernel_object(op, build_dir, verbose)
            glue_src = os.path.join(build_dir, f"{op}_glue.cpp")
            _write_if_changed(glue_src, f'#include "cuda_glue.h"\n#include "cuda/{op}.cpp"\n')
            return cpp_extension.load(
                name=name,
                sources=[glue_src, os.path.join(emu, "cuda_emu_hooks.cpp")],
                extra_cflags=["-O1", "-DPYDL_EXTENSION", "-DPYDL_CUDA_EMU"],
                extra_ldflags=[obj],
                extra_include_paths=[glue, emu, root],  # glue/ first: its c10/cuda/*.h stand in for torch's
                build_directory=build_dir,
                with_cuda=False,
                is_python_module=False,
                verbose=verbose,
            )
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


def load(op: str, device: str, verbose: bool = False) -> LoadResult:
    """Load (building first if needed) the compiled extension of ``op`` for ``device``. Never raises:
    the result says whether it worked and, if not, why. The answer is remembered for the process."""
    key = (op, device)
    with _mutex:
        if key in _results:
            return _results[key]
        t0 = time.perf_counter()
        try:
            import torch

            aot = _aot_path(op, device)
            if aot is not None and os.environ.get("PYDL_FORCE_JIT", "0") != "1":
                torch.ops.load_library(aot)
                res = LoadResult(True, "aot", aot)
            else:
                verbose = verbose or os.environ.get("PYDL_VERBOSE_BUILD", "0") == "1"
                path = _jit_build(op, device, verbose)
                dt = time.perf_counter() - t0
                res = LoadResult(True, f"jit ({dt:.1f} s)", str(path or cache_dir()))
        except Exception as e:  # noqa: BLE001 - any failure becomes a reason the caller can show
            msg = str(e).strip()
            if len(msg) > 4000:  # compiler logs: keep the head (the command) and the tail (the error)
                msg = msg[:1500] + "\n...\n" + msg[-2500:]
            res = LoadResult(False, error=f"{type(e).__name__}: {msg}")
        res.seconds = time.perf_counter() - t0
        _results[key] = res
        return res


def cached_build_exists(op: str, device: str) -> bool:
    if _aot_path(op, device):
        return True
    return bool(glob.glob(os.path.join(cache_dir(), ext_name(op, device), "*.so")))


# --------------------------------------------------------------------------------------------------
# Ahead-of-time build (setup.py)
# --------------------------------------------------------------------------------------------------

def setuptools_kwargs() -> dict:
    """ext_modules + cmdclass for setup.py when PYDL_BUILD_EXT=1."""
    cpp_extension = _cpp_extension()
    BuildExtension, CppExtension, CUDAExtension = (cpp_extension.BuildExtension, cpp_extension.CppExtension,
                                                   cpp_extension.CUDAExtension)

    exts = []
    rel = lambda p: os.path.relpath(p, os.path.dirname(_PKG_DIR))  # noqa: E731 - setuptools wants relative paths
    for op in compiled_ops("cpu"):
        exts.append(CppExtension(f"pydl._ext.{ext_name(op, 'cpu')}", [rel(s) for s in sources(op, "cpu")],
                                 include_dirs=[csrc_dir()],
                                 extra_compile_args={"cxx": cflags(jit=False)}, extra_link_args=["-fopenmp"]))
    ok, why = cuda_toolchain()
    if ok:
        os.environ.setdefault("CUDA_HOME", _find_cuda_home())
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        for op in compiled_ops("cuda"):
            exts.append(CUDAExtension(f"pydl._ext.{ext_name(op, 'cuda')}", [rel(s) for s in sources(op, "cuda")],
                                      include_dirs=[csrc_dir()],
                                      extra_compile_args={"cxx": cflags(jit=False), "nvcc": cuda_cflags()},
                                      extra_link_args=["-fopenmp"]))
    else:
        print(f"pydl: skipping the CUDA extensions: {why}", file=sys.stderr)
    return {"ext_modules": exts, "cmdclass": {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}}
