"""Building and loading pydl's compiled backends.

(Why one long file: the JIT build, the ahead-of-time build and the emulated build must name, key, verify
and lock the same units the same way; the sections below are marked. Next split if it grows: the emulated
build's section to a module of its own.)

Every op that has compiled kernels is built into its own shared object per device:

    csrc/cpu/<op>.cpp [+ csrc/cpu/<op>/*.cpp]                       -> pydl_cpu_<op>   (torch namespace `pydl_cpu`)
    csrc/cuda/<op>.cu + csrc/cuda/<op>.cpp [+ csrc/cuda/<op>/*.cu]  -> pydl_cuda_<op>  (torch namespace `pydl_cuda`)
    the same CUDA files, host C++ compiler                          -> pydl_cuda_emu_<op>  (`pydl_cuda_emu`: the
                                                   CUDA kernels run on CPU tensors by the emulator, see _emu_build)

One object per op (rather than one big extension) keeps the failure of one op's build from taking every other
op down, keeps incremental rebuilds small, and is the same unit in both build paths:

* ahead of time: ``PYDL_BUILD_EXT=1 pip install --no-build-isolation -e .`` puts them in ``pydl/_ext/``;
* just in time: the first call that needs one compiles it with ninja into a cache directory keyed by the
  pydl, torch, CUDA and Python versions (``pydl doctor`` prints it; ``PYDL_CACHE_DIR`` overrides it).

Nothing here runs at ``import pydl``: ops call :func:`load` when a compiled backend is first asked for.

Locks: torch serialises builds of one extension with a lock file; older torch versions used a lock whose mere
existence blocks, so a build killed half-way hung every later import. We take our own ``fcntl`` lock (the
kernel drops it when its holder dies, however it dies) and, holding it, delete any lock file left behind.

Integrity: a shared object that is cut short (an interrupted copy, a full disk) still has a valid ELF header,
so ``dlopen`` maps it and the process dies with SIGBUS when it touches the missing pages -- no exception to
catch, and ninja calls the file up to date because its timestamp is fine. So after every successful build
the library's size and sha256 are recorded next to it (``<name>.record.json``, written to a temporary file
and renamed, so a record is never half-written), together with a key of everything the build read (sources,
every csrc header, flags, compiler). Before a library is loaded it is checked against its record:

* intact and built from the current sources: loaded as is, under a shared lock when the lock file can be
  opened and with no lock at all otherwise -- so a read-only cache holding a complete build works;
* damaged, or without a record (an older pydl, a copy): deleted and rebuilt (normally only a relink: the
  object files are still there);
* sources changed: rebuilt through ninja, which recompiles what changed;
* ``force``: every build output removed first, the old library never loaded.

Anything that must be built where nothing can be written fails with a :class:`BuildError` whose ``reason``
says so, and ``auto`` falls back to the next backend with that reason.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from . import _env, _paths
from ._kinds import Reason
from ._version import __version__

DEVICES = ("cpu", "cuda", "cuda_emu")  # cuda_emu: csrc/cuda's sources, built for the CPU emulator
DEFAULT_CUDA_ARCHS = "8.0;9.0"  # Ampere and Hopper; compiled and linked even where no GPU is present

AOT_DIR = _paths.AOT_DIR


class BuildError(RuntimeError):
    """A compiled backend could not be built or loaded. The message says why in full; ``reason`` (a
    :class:`pydl.backends.Reason`) says what kind of failure it is and ``summary`` says it in one line (for a
    compile error: the compiler's first error, not the command that ran it)."""

    def __init__(self, message: str, reason: Reason = Reason.BUILD_FAILED, summary: Optional[str] = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.summary = summary or summarise(message)


# The line of a build log that says what went wrong, best first: a compiler diagnostic, a missing program
# or file, a link error. The log's first lines are torch's "Error building extension" and the full command
# line, which name neither the file nor the problem.
_DIAGNOSTICS = (
    re.compile(r":\d+(:\d+)?: (fatal )?error: "),
    re.compile(r"not found|No such file or directory|command not found|cannot execute|Permission denied"),
    re.compile(r"undefined reference|cannot find -l|\bld(\.\w+)?: .*error|collect2: error"),
    re.compile(r"No space left on device|Killed|internal compiler error"),
    re.compile(r"^(error|fatal)\b", re.I),
)


def summarise(log: str, limit: int = 300) -> str:
    """The one line of a build log (or error message) that names the problem."""
    lines = [ln.strip() for ln in str(log).splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    for pattern in _DIAGNOSTICS:
        for ln in lines:
            if pattern.search(ln) and not ln.startswith(("[", "FAILED:")):
                return ln[:limit]
    return lines[0][:limit]


def csrc_dir() -> str:
    """Where the C++/CUDA sources are: the source tree (editable install) or the copy shipped in a wheel."""
    root = _paths.find_csrc()
    if root is not None:
        return root
    raise BuildError("pydl's C++ sources (csrc/) were not found next to the package; reinstall pydl")


def sources(op: str, device: str) -> List[str]:
    """The source files of one op's extension for one device (empty list: the op has none).

    An op is its main file -- ``csrc/cpu/<op>.cpp``, or ``csrc/cuda/<op>.cu`` with its ATen glue
    ``csrc/cuda/<op>.cpp`` -- plus, when one idea per file wants more room, the parts in a folder named after
    it: ``csrc/cpu/<op>/*.cpp``, ``csrc/cuda/<op>/*.cu`` (declarations they share live in a header there).
    The main file registers the op; the parts hold kernels. A part's stem names its object file, so it must
    differ from the op's and from the other parts' (checked here: two sources with one object name would
    overwrite each other in the build directory)."""
    try:
        root = csrc_dir()
    except BuildError:
        return []
    if device == "cpu":
        folder, main, part_ext = "cpu", [f"{op}.cpp"], "cpp"
    elif device in ("cuda", "cuda_emu"):
        folder, main, part_ext = "cuda", [f"{op}.cu", f"{op}.cpp"], "cu"
    else:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    files = [os.path.join(root, folder, f) for f in main]
    if not all(os.path.isfile(f) for f in files):
        return []
    parts = sorted(glob.glob(os.path.join(root, folder, op, f"*.{part_ext}")))
    stems = [op] + [os.path.splitext(os.path.basename(p))[0] for p in parts]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise BuildError(f"{folder}/{op}/: a part may not be named like the op or another part ({', '.join(clash)})",
                         Reason.BUILD_FAILED)
    return files + parts


def compiled_ops(device: str) -> List[str]:
    """Ops with compiled sources for ``device``, discovered from the file names in csrc/."""
    try:
        root = csrc_dir()
    except BuildError:
        return []
    folder, pattern = ("cpu", "*.cpp") if device == "cpu" else ("cuda", "*.cu")
    names = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(root, folder, pattern)))
    return [n for n in names if _has_main_files(n, device)]


def _has_main_files(op: str, device: str) -> bool:
    try:
        return bool(sources(op, device))
    except BuildError:  # parts misnamed: still an op (its build will say what is wrong)
        return True


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


def cxx_command() -> Tuple[Optional[str], str]:
    """The C++ compiler a build runs -- torch's rule: ``$CXX`` if set, else ``c++`` -- and where that came
    from. (None, why) when there is none."""
    cxx = _env.raw("CXX")
    if cxx:
        return cxx, "from $CXX"
    if shutil.which("c++"):
        return "c++", "on PATH"
    alt = shutil.which("g++") or shutil.which("clang++")
    if alt:
        return None, f"no c++ on PATH (torch's builds run c++; found {alt}: set CXX={alt})"
    return None, "no C++ compiler found (install g++ or set CXX)"


# (command, resolved program, its mtime) -> (ok, reason): one probe per compiler per process.
_cxx_probes: Dict[Tuple[str, str, float], Tuple[bool, str]] = {}


def probe_cxx(cxx: str, origin: str = "") -> Tuple[bool, str]:
    """Compile a one-line program with ``cxx`` (which may carry arguments, e.g. ``ccache g++``): the only
    proof that the compiler a build will run exists and works. Cached per compiler for the process."""
    where = f" ({origin})" if origin else ""
    try:
        argv = shlex.split(cxx)
    except ValueError as e:
        return False, f"C++ compiler {cxx!r}{where} is not a valid command line ({e})"
    if not argv:
        return False, f"C++ compiler {cxx!r}{where} is empty"
    prog = shutil.which(argv[0])
    if prog is None:
        return False, f"C++ compiler {argv[0]!r}{where} not found"
    try:
        mtime = os.stat(prog).st_mtime
    except OSError:
        mtime = 0.0
    key = (cxx, os.path.realpath(prog), mtime)
    hit = _cxx_probes.get(key)
    if hit is not None:
        return hit
    with tempfile.TemporaryDirectory(prefix="pydl-cxx-probe-") as d:
        src = os.path.join(d, "probe.cpp")
        with open(src, "w") as f:
            f.write("int main() { return 0; }\n")
        try:
            p = subprocess.run([*argv, "-std=c++17", "-c", src, "-o", os.path.join(d, "probe.o")],
                               capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            res = (False, f"C++ compiler {cxx!r}{where} could not run: {type(e).__name__}: {e}")
        else:
            if p.returncode == 0:
                res = (True, f"C++ compiler {cxx} ({prog}{', ' + origin if origin else ''}) compiles")
            else:
                first = summarise(p.stderr + "\n" + p.stdout) if (p.stderr or p.stdout).strip() else \
                    f"exit code {p.returncode}"
                res = (False, f"C++ compiler {cxx!r}{where} cannot compile a one-line program: {first}")
    _cxx_probes[key] = res
    return res


def cpu_toolchain() -> Tuple[bool, str]:
    """(ok, reason) for building the C++ CPU extensions: the compiler is found *and* compiles."""
    cxx, origin = cxx_command()
    if not cxx:
        return False, origin
    ok, why = probe_cxx(cxx, origin)
    if not ok:
        return False, why
    if not _cpp_extension().is_ninja_available():
        return False, "ninja is not installed (pip install ninja)"
    return True, why


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
    # TORCH_CUDA_ARCH_LIST is torch's own (it also accepts names like "Ampere"): passed on as torch reads it.
    archs = _env.raw("TORCH_CUDA_ARCH_LIST") or _env.cuda_archs("PYDL_CUDA_ARCHS") or DEFAULT_CUDA_ARCHS
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
    return not _env.flag("PYDL_NO_NATIVE")


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

    base = _env.path("PYDL_CACHE_DIR") or os.path.join(
        _env.path("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pydl")
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
    how: str = ""          # "aot", "jit (cached, verified)", "jit (built in 12.3 s)"
    path: str = ""
    error: str = ""        # the whole story (compiler log: head and tail)
    seconds: float = 0.0
    reason: Optional[Reason] = None  # what kind of failure, for decisions (None on a failure: BUILD_FAILED)
    summary: str = ""      # the failure in one line, for warnings and `pydl doctor`


_results: Dict[Tuple[str, str], LoadResult] = {}
_mutex = threading.Lock()


def status(op: str, device: str) -> Optional[LoadResult]:
    """What happened when (op, device) was loaded in this process; None if nobody asked yet."""
    return _results.get((op, device))


def _aot_path(op: str, device: str) -> Optional[str]:
    hits = sorted(glob.glob(os.path.join(AOT_DIR, ext_name(op, device) + "*.so")))
    return hits[0] if hits else None


# ---- integrity of the JIT cache ------------------------------------------------------------------

_LOCK_FILE = "pydl.flock"


def _library_path(op: str, device: str) -> str:
    name = ext_name(op, device)
    return os.path.join(cache_dir(), name, name + ".so")


def _record_path(so_path: str) -> str:
    return so_path[:-len(".so")] + ".record.json"


def _digest(path: str) -> Tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        size = os.fstat(f.fileno()).st_size
    return size, h.hexdigest()


def _headers(root: str) -> List[str]:
    return sorted(p for ext in ("h", "hpp", "cuh") for p in glob.glob(os.path.join(root, "**", f"*.{ext}"),
                                                                       recursive=True))


def build_key(op: str, device: str) -> str:
    """A hash of everything a build of (op, device) reads: its sources, every header in csrc/ (more than a
    unit includes, so never too few: a spare header costs a no-op ninja run, not a stale library), the
    flags and the compiler. The cache directory's name already pins pydl, torch, CUDA, Python and the CPU."""
    h = hashlib.sha256()
    root = csrc_dir()
    for path in sources(op, device) + _headers(root):
        h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    flags = {"cflags": cflags(jit=True), "cxx": _env.raw("CXX") or "c++"}
    if device == "cuda":
        flags.update(cuda=cuda_cflags(), cuda_home=_find_cuda_home())
    h.update(json.dumps(flags, sort_keys=True).encode())
    return h.hexdigest()


def check_library(so_path: str, key: Optional[str]) -> Tuple[str, str]:
    """The state of a cached library against its record: ``("ok" | "missing" | "unrecorded" | "damaged" |
    "stale", detail)``. Reads only (works in a read-only cache); ``key=None`` skips the sources check."""
    if not os.path.exists(so_path):
        return "missing", "not built yet"
    try:
        with open(_record_path(so_path)) as f:
            rec = json.load(f)
        want_size, want_sha = int(rec["size"]), str(rec["sha256"])
    except FileNotFoundError:
        return "unrecorded", "no integrity record (built by an older pydl, or copied in)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return "unrecorded", f"unreadable integrity record ({type(e).__name__})"
    try:
        size, sha = _digest(so_path)
    except OSError as e:
        return "damaged", f"cannot read {os.path.basename(so_path)} ({e.strerror or e})"
    if size != want_size:
        return "damaged", f"{os.path.basename(so_path)} is {size} bytes, {want_size} when built (cut short?)"
    if sha != want_sha:
        return "damaged", f"{os.path.basename(so_path)}'s sha256 differs from the one recorded when it was built"
    if key is not None and rec.get("key") != key:
        return "stale", "built from other sources or flags"
    return "ok", "intact (size and sha256 as built)"


def _write_record(so_path: str, key: str) -> None:
    """Record the library's size and hash: temp file + rename, so a reader sees the old record or the new
    one, never half of one (a crash mid-write leaves a stray temp file, not a bad record)."""
    size, sha = _digest(so_path)
    rec = {"size": size, "sha256": sha, "key": key, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    d = os.path.dirname(so_path)
    fd, tmp = tempfile.mkstemp(prefix=".record-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(rec, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _record_path(so_path))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _clean(build_dir: str) -> None:
    """Remove every build output (objects, library, record, ninja's state), keeping our lock file: what
    ``force`` means -- nothing of the old build can be reused or loaded."""
    for entry in os.listdir(build_dir):
        if entry == _LOCK_FILE:
            continue
        path = os.path.join(build_dir, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


_READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextlib.contextmanager
def _shared_lock(build_dir: str):
    """Readers hold a shared lock while they check and load, so a builder (exclusive) never swaps the
    library under them. Where the lock file cannot be opened (a read-only cache that never held one)
    nobody can build either, and no lock is needed."""
    import fcntl

    try:
        fd = os.open(os.path.join(build_dir, _LOCK_FILE), os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:  # a filesystem without locks (some network mounts): verification still guards the load
            pass
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _jit_build(op: str, device: str, verbose: bool, force: bool = False) -> Tuple[str, str]:
    """Make sure (op, device)'s library in the cache is intact and current, building it if not, and load
    it. Returns (path, "cached" | "built")."""
    import fcntl

    import torch

    srcs = sources(op, device)
    if not srcs:
        raise BuildError(f"no {device} sources for op {op!r} in {csrc_dir()}", Reason.NO_KERNEL)
    if device == "cuda_emu":  # its own two-unit build (see "The emulated CUDA backend" below); no record
        return _emu_build(op, verbose), "built"
    name = ext_name(op, device)
    build_dir = os.path.join(cache_dir(), name)
    so_path = os.path.join(build_dir, name + ".so")
    key = build_key(op, device)

    if force:
        state, detail = "forced", "a rebuild was asked for"
    else:
        with _shared_lock(build_dir):
            state, detail = check_library(so_path, key)
            if state == "ok":  # nothing to build: no compiler, no ninja, no exclusive lock, no write
                torch.ops.load_library(so_path)
                return so_path, "cached"

    # Writable at all? Asked before the compiler: where nothing can be written no compiler can help.
    try:
        os.makedirs(build_dir, exist_ok=True)
        lockf = open(os.path.join(build_dir, _LOCK_FILE), "a")
    except OSError as e:
        if e.errno not in _READ_ONLY_ERRNOS:
            raise
        msg = (f"the extension cache {build_dir} cannot be written ({e.strerror}), and its {name} library "
               f"must be (re)built: {state}, {detail}. Make the cache writable, point PYDL_CACHE_DIR at a "
               "writable directory, or run `pydl build` where it is writable.")
        raise BuildError(msg, Reason.CACHE_READ_ONLY,
                         f"read-only extension cache and {name} is {state} ({detail})") from None
    try:
        if device == "cuda":
            ok, why = cuda_toolchain()
            if not ok:
                raise BuildError(why, Reason.MISSING_TOOL)
            # torch.utils.cpp_extension reads CUDA_HOME and TORCH_CUDA_ARCH_LIST from the environment.
            os.environ.setdefault("CUDA_HOME", _find_cuda_home())
            os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        else:
            ok, why = cpu_toolchain()
            if not ok:
                raise BuildError(why, Reason.MISSING_TOOL)
        cpp_extension = _cpp_extension()
        if device == "cuda":
            cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    except BaseException:
        lockf.close()
        raise
    with lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            if not force:
                # Another process may have built it while we waited for the lock.
                state, detail = check_library(so_path, key)
                if state == "ok":
                    torch.ops.load_library(so_path)
                    return so_path, "cached"
            if force:
                _clean(build_dir)
            elif state in ("damaged", "unrecorded"):
                # ninja would call a cut-short library up to date (its timestamp is fine) and torch would load
                # it: delete it so ninja relinks it from the object files.
                for path in (so_path, _record_path(so_path)):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
            stale = os.path.join(build_dir, "lock")
            if os.path.exists(stale):  # we hold the only lock that matters: anything left is stale
                os.remove(stale)
            def build():
                # torch remembers, per process, each extension it has built: asked again with other inputs (a
                # new cache directory) it builds "<name>_v1", asked again with the same ones it skips ninja and
                # loads whatever file is there -- after a failed or cleaned build, none. Forgetting the entry
                # leaves the decision to ninja (and to the record checked above), every time.
                versions = getattr(cpp_extension, "JIT_EXTENSION_VERSIONER", None)
                if versions is not None:
                    versions.entries.pop(name, None)
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

            announce_compile(op, device, state)
            try:
                path = build()
            except Exception:
                if state not in ("damaged", "unrecorded"):
                    raise
                # What damaged the library (a full disk, an interrupted copy) may have damaged the object
                # files too, and ninja trusts them by their timestamps: one more try, from scratch.
                _clean(build_dir)
                path = build()
            # Built and loaded: this library is good, record it (a later process verifies against this).
            _write_record(so_path, key)
            return str(path or so_path), "built"
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


# Rough wall times of one unit's build on a 2-core machine, for the notice below: the point is to say
# "this takes a while and is not a hang", so the order of magnitude matters, not the digit.
_COMPILE_SECONDS = {"cpu": 40, "cuda": 90}
_LANGUAGE = {"cpu": "C++", "cuda": "CUDA"}


def announce_compile(op: str, device: str, state: str) -> None:
    """One line on stderr as a compile starts: a first use that stays silent for a minute looks like a hang.
    Said only where a build really starts (never when a verified cached library loads), and to stderr so a
    program's own output stays clean."""
    why = {"missing": "first use only", "stale": "its sources changed", "forced": "a rebuild was asked for"}.get(
        state, "the cached build was unusable")
    print(f"pydl: compiling the {_LANGUAGE[device]} {op} kernels ({why}, ~{_COMPILE_SECONDS[device]} s; "
          "`pydl build` does it ahead)", file=sys.stderr, flush=True)


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
    """The compiler for the emulated kernels: the same one, by the same rule, as every other build."""
    cxx, origin = cxx_command()
    if not cxx:
        raise BuildError(origin, Reason.MISSING_TOOL)
    return cxx


def _emu_kernel_object(op: str, cu: str, build_dir: str, verbose: bool) -> str:
    """Compile one .cu of ``op`` (its main file or a part) for the emulator; the object's path."""
    from . import _emu

    root, emu, _ = _emu_paths()
    part = os.path.splitext(os.path.basename(cu))[0]
    stem = op if part == op else f"{op}__{part}"  # a part's object: conv2d__winograd_kernels-<hash>.o
    with open(cu) as f:
        body = _emu.rewrite(f.read(), cu)
    text = '#include "cuda_emu.h"\n#include "launch_log.h"\n' + body
    src = os.path.join(build_dir, f"{stem}_kernels.cpp")
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
    for path in _headers(root):
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read())
    obj = os.path.join(build_dir, f"{stem}_kernels-{h.hexdigest()[:12]}.o")
    if os.path.isfile(obj):
        return obj
    for old in glob.glob(os.path.join(build_dir, f"{stem}_kernels-*.o")):
        os.remove(old)
    cmd = [cxx] + flags + ["-c", src, "-o", obj + ".tmp"]
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"compiling {cu} for the CUDA emulator failed:\n{' '.join(cmd)}\n{r.stderr}{r.stdout}",
                         Reason.BUILD_FAILED)
    os.replace(obj + ".tmp", obj)  # atomic: a killed compile never leaves a half object under the final name
    return obj


def _emu_build(op: str, verbose: bool) -> str:
    import fcntl

    ok, why = cpu_toolchain()
    if not ok:
        raise BuildError(why, Reason.MISSING_TOOL)
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
            # one object per .cu (the main file and each part), compiled by the emulator's rules; the glue
            # (.cpp) is the one source torch.utils.cpp_extension compiles and links them with
            objs = [_emu_kernel_object(op, cu, build_dir, verbose)
                    for cu in sources(op, "cuda_emu") if cu.endswith(".cu")]
            glue_src = os.path.join(build_dir, f"{op}_glue.cpp")
            _write_if_changed(glue_src, f'#include "cuda_glue.h"\n#include "cuda/{op}.cpp"\n')
            return cpp_extension.load(
                name=name,
                sources=[glue_src, os.path.join(emu, "cuda_emu_hooks.cpp")],
                extra_cflags=["-O1", "-DPYDL_EXTENSION", "-DPYDL_CUDA_EMU"],
                extra_ldflags=objs,
                extra_include_paths=[glue, emu, root],  # glue/ first: its c10/cuda/*.h stand in for torch's
                build_directory=build_dir,
                with_cuda=False,
                is_python_module=False,
                verbose=verbose,
            )
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


def load(op: str, device: str, verbose: bool = False, force: bool = False) -> LoadResult:
    """Load (building first if needed) the compiled extension of ``op`` for ``device``. Never raises:
    the result says whether it worked and, if not, why. The answer is remembered for the process.

    ``force``: rebuild from scratch (every old build output removed first, the old library never loaded),
    ignoring an ahead-of-time build too. Only before the library was loaded in this process: a process
    cannot load a second copy of the same ops."""
    key = (op, device)
    with _mutex:
        if key in _results:
            if force and _results[key].ok:
                return LoadResult(False, error=f"BuildError: {ext_name(op, device)} is already loaded in this "
                                  "process; a forced rebuild must run in a fresh one (`pydl build --force`)",
                                  reason=Reason.LOAD_FAILED, summary="already loaded in this process")
            if not force:
                return _results[key]
        t0 = time.perf_counter()
        try:
            import torch

            aot = _aot_path(op, device)
            if aot is not None and not force and not _env.flag("PYDL_FORCE_JIT"):
                torch.ops.load_library(aot)
                res = LoadResult(True, "aot", aot)
            else:
                verbose = verbose or _env.flag("PYDL_VERBOSE_BUILD")
                path, how = _jit_build(op, device, verbose, force)
                dt = time.perf_counter() - t0
                res = LoadResult(True, "jit (cached, verified)" if how == "cached" else f"jit (built in {dt:.1f} s)",
                                 path)
        except Exception as e:  # noqa: BLE001 - any failure becomes a reason the caller can show
            msg = str(e).strip()
            if len(msg) > 4000:  # compiler logs: keep the head (the command) and the tail (the error)
                msg = msg[:1500] + "\n...\n" + msg[-2500:]
            if isinstance(e, BuildError):
                reason, summary = e.reason, e.summary
            elif isinstance(e, OSError) and e.errno is None:  # dlopen's complaint, via ctypes
                reason, summary = Reason.LOAD_FAILED, summarise(msg)
            else:
                # torch raises RuntimeError("Error building extension ...") with the compiler's output
                reason, summary = Reason.BUILD_FAILED, summarise(str(e))
            res = LoadResult(False, error=f"{type(e).__name__}: {msg}", reason=reason, summary=summary)
        res.seconds = time.perf_counter() - t0
        _results[key] = res
        return res


def cache_state(op: str, device: str) -> Tuple[str, str]:
    """What the cache holds for (op, device), without building or loading anything: ``("aot" | "ok" |
    "stale" | "unrecorded" | "damaged" | "missing", detail)`` -- what `pydl doctor` reports."""
    aot = _aot_path(op, device)
    if aot and not _env.flag("PYDL_FORCE_JIT"):
        return "aot", f"ahead-of-time build {os.path.basename(aot)}"
    try:
        key = build_key(op, device)
    except (OSError, BuildError):
        key = None  # sources unreadable: still say whether the library itself is intact
    return check_library(_library_path(op, device), key)


def cached_build_exists(op: str, device: str) -> bool:
    """An ahead-of-time build or an intact cached one (a damaged library does not count)."""
    return cache_state(op, device)[0] in ("aot", "ok", "stale")


# --------------------------------------------------------------------------------------------------
# Ahead-of-time build (setup.py)
# --------------------------------------------------------------------------------------------------

def aot_units() -> List[Tuple[str, str]]:
    """The (device, op) units an ahead-of-time build compiles: all of them, or those PYDL_BUILD_EXT_ONLY
    names (``cpu:act_stats,cuda:conv2d``) -- for a quick check of the build path itself, which otherwise
    compiles every unit (minutes)."""
    # cpu and cuda only: cuda_emu is a test backend (the CUDA kernels run on the CPU under checks), built on use
    every = [(dev, op) for dev in ("cpu", "cuda") for op in compiled_ops(dev)]
    only = _env.names("PYDL_BUILD_EXT_ONLY", [f"{dev}:{op}" for dev, op in every])
    return [u for u in every if f"{u[0]}:{u[1]}" in only] if only else every


def _object_names_by_language(compiler) -> None:
    """Give a .cu source's object its own name (``act_stats.cuda.o``, as torch's JIT build does).

    Each CUDA op is a .cu (kernels, nvcc) plus a .cpp (schema and dispatch, the host compiler) with the same
    stem, and setuptools names an object after its source's stem alone: both would be
    ``csrc/cuda/act_stats.o`` -- ninja refuses two rules for one output, and a build without ninja would
    silently overwrite one object with the other and fail at link or load time."""
    plain = compiler.object_filenames

    def object_filenames(source_filenames, *args, **kwargs):
        objects = plain(source_filenames, *args, **kwargs)
        return [os.path.splitext(o)[0] + ".cuda" + os.path.splitext(o)[1] if src.endswith(".cu") else o
                for src, o in zip(source_filenames, objects)]

    compiler.object_filenames = object_filenames


def setuptools_kwargs() -> dict:
    """ext_modules + cmdclass for setup.py when PYDL_BUILD_EXT=1."""
    cpp_extension = _cpp_extension()
    BuildExtension, CppExtension, CUDAExtension = (cpp_extension.BuildExtension, cpp_extension.CppExtension,
                                                   cpp_extension.CUDAExtension)

    class BuildExt(BuildExtension.with_options(no_python_abi_suffix=True)):
        def build_extensions(self):
            _object_names_by_language(self.compiler)
            # An in-place build (`pip install -e .`) copies each library into pydl/_ext/, which is not a
            # package (no sources of its own, ignored by git) and so may not exist: the copy does not create it.
            os.makedirs(AOT_DIR, exist_ok=True)
            super().build_extensions()

    units = aot_units()
    exts = []
    rel = lambda p: os.path.relpath(p, os.path.dirname(_paths.PKG_DIR))  # noqa: E731 - setuptools wants relative paths
    for op in [op for dev, op in units if dev == "cpu"]:
        exts.append(CppExtension(f"pydl._ext.{ext_name(op, 'cpu')}", [rel(s) for s in sources(op, "cpu")],
                                 include_dirs=[csrc_dir()],
                                 extra_compile_args={"cxx": cflags(jit=False)}, extra_link_args=["-fopenmp"]))
    cuda_ops = [op for dev, op in units if dev == "cuda"]
    ok, why = cuda_toolchain() if cuda_ops else (False, "none asked for (PYDL_BUILD_EXT_ONLY)")
    if ok:
        os.environ.setdefault("CUDA_HOME", _find_cuda_home())
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        for op in cuda_ops:
            exts.append(CUDAExtension(f"pydl._ext.{ext_name(op, 'cuda')}", [rel(s) for s in sources(op, "cuda")],
                                      include_dirs=[csrc_dir()],
                                      extra_compile_args={"cxx": cflags(jit=False), "nvcc": cuda_cflags()},
                                      extra_link_args=["-fopenmp"]))
    else:
        print(f"pydl: skipping the CUDA extensions: {why}", file=sys.stderr)
    return {"ext_modules": exts, "cmdclass": {"build_ext": BuildExt}}
