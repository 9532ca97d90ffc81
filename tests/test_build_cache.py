"""The JIT extension cache heals itself: a damaged library is detected before it is loaded (a cut-short .so
kills the process with SIGBUS, no exception), rebuilt, or -- where nothing can be written -- refused with a
reason auto falls back on; `--force` rebuilds from scratch; a read-only cache holding an intact build works.

Every scenario that could crash runs in a fresh interpreter (tests/fuzzing.py's ``run_isolated``) against a
private copy of the act_stats cpu build -- the smallest compiled unit -- so the shared cache is never
touched and nothing is recompiled: a damaged library costs a relink (~2 s), the object file is reused.
"""
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from pydl import _build, backends, cli

from fuzzing import OK, Tally, run_isolated

UNIT = "act_stats"
NAME = _build.ext_name(UNIT, "cpu")

# Written into a subprocess before it imports pydl: any attempt to write under the cache (open for writing,
# create, delete, rename, make a directory) raises EROFS, and no compiler or ninja may be started. A real
# read-only mount does the first; root ignores permission bits, so the test cannot rely on chmod alone.
READ_ONLY_GUARD = '''
import builtins, errno, os, subprocess
CACHE = os.path.realpath(os.environ["PYDL_CACHE_DIR"])
def _inside(p):
    try:
        return os.path.realpath(os.fsdecode(p)).startswith(CACHE)
    except TypeError:
        return False
def _refuse(p):
    raise OSError(errno.EROFS, "Read-only file system (test guard)", os.fsdecode(p))
_open = builtins.open
def guarded_open(file, mode="r", *a, **k):
    if _inside(file) and any(c in mode for c in "wax+"):
        _refuse(file)
    return _open(file, mode, *a, **k)
builtins.open = guarded_open
_os_open = os.open
def guarded_os_open(p, flags, *a, **k):
    if _inside(p) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
        _refuse(p)
    return _os_open(p, flags, *a, **k)
os.open = guarded_os_open
for _name in ("mkdir", "makedirs", "remove", "unlink", "rmdir", "replace", "rename"):
    def _make(real):
        def guarded(p, *a, **k):
            if _inside(p):
                _refuse(p)
            return real(p, *a, **k)
        return guarded
    setattr(os, _name, _make(getattr(os, _name)))
_Popen = subprocess.Popen
def _no_builds(args, *a, **k):
    prog = os.path.basename(str(args[0] if isinstance(args, (list, tuple)) else args).split()[0])
    if any(t in prog for t in ("ninja", "c++", "g++", "gcc", "clang", "nvcc")) or prog in ("cc", "ld"):
        raise AssertionError(f"a read-only cache must not start a build: {args}")
    return _Popen(args, *a, **k)
subprocess.Popen = _no_builds
'''

# The op's answer through the compiled backend against the reference: a loaded library that works.
USE_OP = '''
import torch, pydl
x = torch.randn(1000)
got = pydl.act_stats(x, bins=10, lo=-3.0, hi=3.0, backend=BACKEND)
want = pydl.act_stats(x, bins=10, lo=-3.0, hi=3.0, backend="reference")
assert torch.equal(got.hist, want.hist) and int(got.count) == 1000, (got, want)
'''


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A private copy of an intact, recorded act_stats cpu build (built or relinked once here if needed)."""
    res = _build.load(UNIT, "cpu")
    if not res.ok:
        pytest.fail(f"act_stats cpu must build here: {res.error}")
    src = os.path.join(_build.cache_dir(), NAME)
    if _build.cache_state(UNIT, "cpu")[0] != "ok":
        pytest.skip(f"act_stats cpu comes from {res.how}, not an intact JIT cache entry")
    root = tmp_path_factory.mktemp("pristine")
    # Same tag directory as the shared cache, so cache_dir() under PYDL_CACHE_DIR=root finds it; copy2 keeps
    # the timestamps, so ninja sees the object file as up to date and a rebuild is only a relink.
    shutil.copytree(src, os.path.join(root, "ext", os.path.basename(_build.cache_dir()), NAME))
    return str(root)


@pytest.fixture
def cache(pristine, tmp_path, monkeypatch):
    """A fresh copy of the pristine cache, made this process's (and its subprocesses') PYDL_CACHE_DIR.
    Returns the unit's build directory."""
    root = tmp_path / "cache"
    shutil.copytree(pristine, root)
    monkeypatch.setenv("PYDL_CACHE_DIR", str(root))
    yield os.path.join(_build.cache_dir(), NAME)
    for dirpath, _dirnames, _filenames in os.walk(root):  # undo a test's chmod so tmp_path can be removed
        os.chmod(dirpath, 0o755)


def _so(build_dir):
    return os.path.join(build_dir, NAME + ".so")


def _truncate(path, keep=0.4):
    """Cut the file short -- as a new file put in its place, not a truncation in place. Some tests build a
    library into this very process first; truncating a file the process has mapped makes its next touch of a
    cut page (at exit, at the latest) die with SIGBUS, in the test runner rather than in the subprocess under
    test. The cache sees the same damage either way: a shorter file under the library's name."""
    with open(path, "rb") as f:
        data = f.read()
    tmp = path + ".cut"
    with open(tmp, "wb") as f:
        f.write(data[:int(len(data) * keep)])
    shutil.copymode(path, tmp)
    os.replace(tmp, path)


def _isolated(*parts, backend="cpu", prelude=""):
    """Run the code parts in a fresh interpreter; CRASH (a signal: SIGBUS, SIGSEGV, abort) fails loudly."""
    tally = Tally()
    code = "\n".join([prelude, f"BACKEND = {backend!r}"] + [textwrap.dedent(p) for p in parts])
    outcome = run_isolated(tally, "cache", code)
    assert outcome == OK, f"{outcome}: {tally.failures}"


def _make_read_only(build_dir, keep_locks=False):
    for p in (os.path.join(build_dir, "pydl.flock"), os.path.join(build_dir, "lock")):
        if os.path.exists(p) and not keep_locks:
            os.remove(p)  # a cache shipped read-only need not hold lock files: none may be created either
    for dirpath, _dirnames, filenames in os.walk(os.path.dirname(os.path.dirname(build_dir))):
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o444)
        os.chmod(dirpath, 0o555)


def _snapshot(build_dir):
    return {f: os.stat(os.path.join(build_dir, f)).st_mtime_ns for f in os.listdir(build_dir)}


# --------------------------------------------------------------------------------------------------
# the record and the states it tells apart
# --------------------------------------------------------------------------------------------------

def test_check_library_states(tmp_path):
    so = str(tmp_path / "pydl_cpu_x.so")
    assert _build.check_library(so, "k")[0] == "missing"
    with open(so, "wb") as f:
        f.write(b"\x7fELF" + bytes(range(256)) * 8)
    assert _build.check_library(so, "k")[0] == "unrecorded"
    _build._write_record(so, "k")
    assert _build.check_library(so, "k") == ("ok", "intact (size and sha256 as built)")
    assert _build.check_library(so, "other sources")[0] == "stale"
    assert _build.check_library(so, None)[0] == "ok"
    with open(so, "r+b") as f:  # same size, one byte changed: only the hash can tell
        f.seek(100)
        f.write(b"\xff")
    state, detail = _build.check_library(so, "k")
    assert state == "damaged" and "sha256" in detail
    _truncate(so)
    state, detail = _build.check_library(so, "k")
    assert state == "damaged" and "bytes" in detail and "cut short" in detail
    with open(_build._record_path(so), "w") as f:
        f.write('{"size": 12')  # a half-written record (it cannot happen through _write_record) is no record
    assert _build.check_library(so, "k")[0] == "unrecorded"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")], "the record's temp file was left behind"


def test_build_key_follows_sources_headers_and_flags(monkeypatch, tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "tiny.cpp").write_text("int f() { return 1; }\n")
    (tmp_path / "common.h").write_text("// v1\n")
    monkeypatch.setattr(_build, "csrc_dir", lambda: str(tmp_path))
    k0 = _build.build_key("tiny", "cpu")
    assert _build.build_key("tiny", "cpu") == k0
    (tmp_path / "common.h").write_text("// v2\n")
    k1 = _build.build_key("tiny", "cpu")
    (tmp_path / "cpu" / "tiny.cpp").write_text("int f() { return 2; }\n")
    k2 = _build.build_key("tiny", "cpu")
    monkeypatch.setenv("PYDL_NO_NATIVE", "1")
    k3 = _build.build_key("tiny", "cpu")
    assert len({k0, k1, k2, k3}) == 4


def test_an_op_may_have_parts_in_a_folder_of_its_name(monkeypatch, tmp_path):
    """csrc/cpu/<op>.cpp + csrc/cpu/<op>/*.cpp (sorted), csrc/cuda/<op>.{cu,cpp} + csrc/cuda/<op>/*.cu; a part
    file elsewhere, or a folder without its main file, is not a unit; parts change the build key."""
    (tmp_path / "cpu" / "tiny").mkdir(parents=True)
    (tmp_path / "cuda" / "tiny").mkdir(parents=True)
    (tmp_path / "cpu" / "tiny.cpp").write_text("int f();\n")
    for f in ("cpu/tiny/b.cpp", "cpu/tiny/a.cpp", "cpu/tiny/notes.txt", "cuda/tiny.cu", "cuda/tiny.cpp",
              "cuda/tiny/coop.cu", "cuda/tiny/host.cpp", "cpu/orphan/x.cpp"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("// " + f + "\n")
    monkeypatch.setattr(_build, "csrc_dir", lambda: str(tmp_path))
    rel = lambda files: [os.path.relpath(f, tmp_path) for f in files]  # noqa: E731
    assert rel(_build.sources("tiny", "cpu")) == ["cpu/tiny.cpp", "cpu/tiny/a.cpp", "cpu/tiny/b.cpp"]
    want_cuda = ["cuda/tiny.cu", "cuda/tiny.cpp", "cuda/tiny/coop.cu"]
    assert rel(_build.sources("tiny", "cuda")) == rel(_build.sources("tiny", "cuda_emu")) == want_cuda
    assert _build.compiled_ops("cpu") == ["tiny"] and _build.sources("orphan", "cpu") == []
    k0 = _build.build_key("tiny", "cpu")
    (tmp_path / "cpu" / "tiny" / "b.cpp").write_text("// changed\n")
    assert _build.build_key("tiny", "cpu") != k0
    # a part named like the op (or two parts with one stem) would give two sources one object file
    (tmp_path / "cpu" / "tiny" / "tiny.cpp").write_text("\n")
    with pytest.raises(_build.BuildError, match="tiny"):
        _build.sources("tiny", "cpu")
    assert _build.compiled_ops("cpu") == ["tiny"]  # still listed: its build says what is wrong


def test_a_unit_with_parts_builds_and_links_them(tmp_path, monkeypatch):
    """The main file calls a function defined only in a part: the library loads only if the part was
    compiled and linked into it."""
    csrc = tmp_path / "csrc"
    (csrc / "cpu" / "tiny").mkdir(parents=True)
    (csrc / "cpu" / "tiny.cpp").write_text("int pydl_tiny_part();\nextern \"C\" int pydl_tiny_answer() "
                                           "{ return pydl_tiny_part() + 1; }\n")
    (csrc / "cpu" / "tiny" / "part.cpp").write_text("int pydl_tiny_part() { return 41; }\n")
    monkeypatch.setenv("PYDL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_build, "csrc_dir", lambda: str(csrc))
    monkeypatch.delitem(_build._results, ("tiny", "cpu"), raising=False)
    res = _build.load("tiny", "cpu")
    assert res.ok, res.error
    import ctypes

    assert ctypes.CDLL(res.path).pydl_tiny_answer() == 42
    build_dir = os.path.join(_build.cache_dir(), _build.ext_name("tiny", "cpu"))
    assert os.path.isfile(os.path.join(build_dir, "part.o"))
    _build._results.pop(("tiny", "cpu"), None)


# --------------------------------------------------------------------------------------------------
# a damaged library: rebuilt, reported, never loaded
# --------------------------------------------------------------------------------------------------

def test_truncated_library_is_relinked_not_loaded_even_under_auto(cache):
    _truncate(_so(cache))
    assert _build.cache_state(UNIT, "cpu")[0] == "damaged"
    _isolated('''
        import warnings
        warnings.simplefilter("error")  # a successful rebuild is no reason to warn, nor to fall back
    ''', USE_OP, '''
        from pydl import _build
        r = _build.status("act_stats", "cpu")
        assert r.ok and r.how.startswith("jit (built"), r
    ''', backend="auto")
    assert _build.cache_state(UNIT, "cpu")[0] == "ok"  # relinked and recorded anew


def test_unrecorded_library_is_relinked(cache):
    os.remove(_build._record_path(_so(cache)))  # a cache written by an older pydl: no record to trust
    assert _build.cache_state(UNIT, "cpu")[0] == "unrecorded"
    _isolated(USE_OP)
    assert _build.cache_state(UNIT, "cpu")[0] == "ok"


def test_a_build_says_so_once_and_a_cached_load_says_nothing(cache):
    """A compile can take a minute: it announces itself on stderr, once; loading a verified library is
    instant and silent (the notice must not cry wolf on every import)."""
    os.remove(_build._record_path(_so(cache)))  # forces a (re)link: a real build through ninja, but cheap
    notice = "pydl: compiling the C++ act_stats kernels"
    code = "BACKEND = 'cpu'\n" + textwrap.dedent(USE_OP)
    for expected in (1, 0):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stderr.count(notice) == expected, r.stderr[-2000:]
        assert notice not in r.stdout  # a program's own output stays clean


def test_doctor_reports_a_damaged_library(cache):
    _truncate(_so(cache))
    info = cli.doctor_report()
    ok, why = info["ops"][UNIT]["cpu@cpu"]
    assert ok is False and "DAMAGED" in why and "cut short" in why, why
    assert not _build.cached_build_exists(UNIT, "cpu")


# --------------------------------------------------------------------------------------------------
# read-only caches
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep_locks", [False, True], ids=["no-lock-files", "lock-files-kept"])
def test_read_only_cache_with_an_intact_build_loads_without_lock_or_compiler(cache, keep_locks):
    """Shipped without lock files (nothing to lock, nothing may be created), or a built cache mounted
    read-only with its lock file (opened read-only for a shared lock, which a read-only file allows)."""
    before = _snapshot(cache)
    _make_read_only(cache, keep_locks)
    _isolated('''
        from pydl import _build
        r = _build.load("act_stats", "cpu")
        assert r.ok and r.how == "jit (cached, verified)", r
    ''', USE_OP, prelude=READ_ONLY_GUARD)
    after = _snapshot(cache)
    assert after == {k: v for k, v in before.items() if keep_locks or k not in ("pydl.flock", "lock")}, \
        "the cache was written"


def test_read_only_cache_with_a_damaged_build_falls_back_with_the_reason(cache):
    _truncate(_so(cache))
    _make_read_only(cache)
    _isolated('''
        import warnings
        import pytest, torch, pydl
        with pytest.warns(RuntimeWarning, match="read-only extension cache") as rec:
            exec(USE_OP)  # with BACKEND = "auto"
        assert "damaged" in str(rec[0].message) and "Error building" not in str(rec[0].message)
        with pytest.raises(RuntimeError, match="cannot be written"):
            pydl.act_stats(torch.randn(4), backend="cpu")
    ''', backend="auto", prelude=READ_ONLY_GUARD + f"\nUSE_OP = {USE_OP!r}\n")


# --------------------------------------------------------------------------------------------------
# --force
# --------------------------------------------------------------------------------------------------

TINY = "int pydl_tiny_answer() { return 42; }\n"
# A library whose loading kills the process: if --force ever loaded the old library, the test would see it.
BOOBY_TRAP = '#include <cstdlib>\n__attribute__((constructor)) static void boom() { std::abort(); }\n'


def test_force_rebuilds_from_scratch_without_loading_the_old_library(tmp_path, monkeypatch):
    """A unit that needs no torch headers, so the from-scratch rebuild costs a second, not act_stats' 40 s."""
    csrc = tmp_path / "csrc"
    (csrc / "cpu").mkdir(parents=True)
    (csrc / "cpu" / "tiny.cpp").write_text(TINY)
    monkeypatch.setenv("PYDL_CACHE_DIR", str(tmp_path / "cache"))
    patch = f"from pydl import _build\n_build.csrc_dir = lambda: {str(csrc)!r}\n"
    monkeypatch.setattr(_build, "csrc_dir", lambda: str(csrc))
    monkeypatch.delitem(_build._results, ("tiny", "cpu"), raising=False)  # and removed again on the way out
    res = _build.load("tiny", "cpu")  # the first build, here: a plain C++ function, harmless to load
    assert res.ok, res.error
    build_dir = os.path.join(_build.cache_dir(), _build.ext_name("tiny", "cpu"))
    so, obj = os.path.join(build_dir, "pydl_cpu_tiny.so"), os.path.join(build_dir, "tiny.o")
    obj_mtime = os.stat(obj).st_mtime_ns
    # Swap in the booby-trapped library *with a matching record*: it looks intact, so only a rebuild that
    # never loads the old library first survives.
    trap_src = tmp_path / "trap.cpp"
    trap_src.write_text(BOOBY_TRAP)
    subprocess.run(["c++", "-shared", "-fPIC", str(trap_src), "-o", so], check=True, timeout=120)
    _build._write_record(so, _build.build_key("tiny", "cpu"))
    trapped = _build._digest(so)
    assert _build.cache_state("tiny", "cpu")[0] == "ok"
    tally = Tally()
    outcome = run_isolated(tally, "force", patch + textwrap.dedent('''
        import sys
        from pydl import cli
        sys.exit(cli.main(["build", "tiny", "--device", "cpu", "--force"]))
    '''))
    assert outcome == OK, tally.failures
    assert _build.cache_state("tiny", "cpu")[0] == "ok"
    assert _build._digest(so) != trapped
    assert os.stat(obj).st_mtime_ns != obj_mtime, "--force must recompile, not only relink"


def test_damaged_object_files_are_rebuilt_too(tmp_path, monkeypatch):
    """A full disk can cut the object files short as well, and ninja trusts them by their timestamps: the
    relink fails, and the cache must then rebuild from scratch rather than fail on every later run."""
    csrc = tmp_path / "csrc"
    (csrc / "cpu").mkdir(parents=True)
    (csrc / "cpu" / "tiny.cpp").write_text(TINY)
    monkeypatch.setenv("PYDL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_build, "csrc_dir", lambda: str(csrc))
    monkeypatch.delitem(_build._results, ("tiny", "cpu"), raising=False)
    assert _build.load("tiny", "cpu").ok
    build_dir = os.path.join(_build.cache_dir(), _build.ext_name("tiny", "cpu"))
    for f in ("tiny.o", "pydl_cpu_tiny.so"):
        path = os.path.join(build_dir, f)
        st = os.stat(path)
        _truncate(path, keep=0.3)
        # An interrupted copy that kept the timestamps (cp -a, rsync): ninja's own check (an output whose
        # time differs from its deps log) does not see it, only the failed link does.
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _build.cache_state("tiny", "cpu")[0] == "damaged"
    _isolated(f"from pydl import _build\n_build.csrc_dir = lambda: {str(csrc)!r}\n"
              'r = _build.load("tiny", "cpu")\nassert r.ok and r.how.startswith("jit (built"), r\n')
    assert _build.cache_state("tiny", "cpu")[0] == "ok"


# --------------------------------------------------------------------------------------------------
# the C++ compiler and the reasons auto keeps
# --------------------------------------------------------------------------------------------------

def test_doctor_tests_the_compiler_it_names(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "/nonexistent")
    ok, why = _build.cpu_toolchain()
    assert not ok and "'/nonexistent'" in why and "not found" in why
    # A compiler that exists but cannot compile: its first error line is the reason.
    fake = tmp_path / "badcc"
    fake.write_text("#!/bin/sh\necho 'badcc: error: licence expired' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(fake))
    ok, why = _build.cpu_toolchain()
    assert not ok and "licence expired" in why
    monkeypatch.setenv("CXX", str(fake) + " --some-flag")  # CXX may carry arguments: probed as a separate key
    assert not _build.cpu_toolchain()[0]
    monkeypatch.delenv("CXX")
    if shutil.which("c++"):
        ok, why = _build.cpu_toolchain()
        assert ok and "compiles" in why, why
    monkeypatch.setenv("CXX", "/nonexistent")
    from io import StringIO

    out = StringIO()
    cli.print_doctor(cli.doctor_report(), out)
    assert "C++ toolchain: MISSING - C++ compiler '/nonexistent' (from $CXX) not found" in out.getvalue()


def test_auto_fallback_warning_names_a_missing_compiler(monkeypatch, tmp_path):
    """Nothing cached and no compiler: auto warns with "not found", not with a command line."""
    monkeypatch.setenv("CXX", "/nonexistent")
    monkeypatch.setenv("PYDL_CACHE_DIR", str(tmp_path))
    monkeypatch.delitem(_build._results, (UNIT, "cpu"), raising=False)  # restored by monkeypatch
    backends.reset_caches()
    try:
        import torch

        import pydl

        with pytest.warns(RuntimeWarning, match=r"missing tool: C\+\+ compiler '/nonexistent' \(from \$CXX\) not "
                                                r"found\); auto falls back"):
            s = pydl.act_stats(torch.randn(50), backend="auto")
        assert int(s.count) == 50
        assert _build.status(UNIT, "cpu").reason is backends.Reason.MISSING_TOOL
    finally:
        monkeypatch.undo()
        backends.reset_caches()


def test_compile_error_reason_is_the_compilers_first_error(monkeypatch, tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "broken.cpp").write_text("int ok() { return 0; }\nthis is not C++;\n")
    monkeypatch.setattr(_build, "csrc_dir", lambda: str(tmp_path))
    monkeypatch.setenv("PYDL_CACHE_DIR", str(tmp_path / "cache"))
    try:
        res = _build.load("broken", "cpu")
        assert not res.ok and res.reason is backends.Reason.BUILD_FAILED
        assert "broken.cpp:2" in res.summary and "error" in res.summary, res.summary
        avail = backends.available("cpu", "cpu", "broken")
        assert avail.reason is backends.Reason.BUILD_FAILED and not avail.ok
        assert avail.why.splitlines()[0] == "build failed: " + res.summary  # what auto's warning shows
        assert "c++" in avail.why  # the whole log is still there for whoever asks for it
    finally:
        _build._results.pop(("broken", "cpu"), None)


def test_a_library_that_will_not_load_is_a_load_failure(monkeypatch, tmp_path):
    """Intact by its record, yet dlopen refuses it (here: not an ELF file at all): a LOAD_FAILED reason with
    the loader's message, not a crash and not a build error."""
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "notelf.cpp").write_text(TINY)
    monkeypatch.setattr(_build, "csrc_dir", lambda: str(tmp_path))
    monkeypatch.setenv("PYDL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delitem(_build._results, ("notelf", "cpu"), raising=False)
    so = _build._library_path("notelf", "cpu")
    os.makedirs(os.path.dirname(so))
    with open(so, "w") as f:
        f.write("this is not a shared object\n")
    _build._write_record(so, _build.build_key("notelf", "cpu"))
    res = _build.load("notelf", "cpu")
    assert not res.ok and res.reason is backends.Reason.LOAD_FAILED, res
    assert "notelf" in res.summary, res.summary
    monkeypatch.delitem(_build._results, ("notelf", "cpu"))


def test_summarise_picks_the_line_that_names_the_problem():
    log = ("Error building extension 'pydl_cpu_x': [1/2] c++ -MMD -MF x.o.d -O3 -c /src/x.cpp -o x.o\n"
           "FAILED: x.o\nc++ -MMD -MF x.o.d -O3 -c /src/x.cpp -o x.o\n"
           "/src/x.cpp:7:3: error: 'foo' was not declared in this scope\n/src/x.cpp:9:1: error: second\n")
    assert _build.summarise(log) == "/src/x.cpp:7:3: error: 'foo' was not declared in this scope"
    assert _build.summarise("[1/1] /nonexistent x.o\n/bin/sh: 1: /nonexistent: not found\n") == \
        "/bin/sh: 1: /nonexistent: not found"
    assert _build.summarise("x.o: undefined reference to `bar'\ncollect2: error: ld returned 1") == \
        "x.o: undefined reference to `bar'"
    assert _build.summarise("") == "unknown error"
    assert _build.summarise("just one line") == "just one line"
