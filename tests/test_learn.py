"""The kernel-writing course (pydl.learn): the course cannot rot.

* every exercise's reference solution passes its own checker; every starter fails it with a message that
  says where; every known-wrong solution (MUTANTS in each exercise.py) fails it;
* each starter is its solution with the marked regions removed (checked line by line);
* the CUDA emulation behaves like CUDA where the exercises depend on it (barriers, shuffles, deadlocks);
* the checker's diffs, guards and poison work; the CLI works end to end in a temporary workspace.

Triton files are checked in batches (one process runs many files; a crash only costs the file that caused it),
so the whole module stays within a couple of minutes on a CPU.
"""
import os
import re
from pathlib import Path

import pytest
import torch

from pydl import _emu
from pydl.learn import checker, course, cuda
from pydl.learn.course import MarkerError, solution_text, split_regions, starter_text
from pydl.learn.harness import GUARD, compare, guard_report, guarded_like

EXS = course.exercises()
TRITON = [e for e in EXS if e.track == "triton"]
CUDA = [e for e in EXS if e.track == "cuda"]
HAVE_CXX = cuda.find_cxx() is not None
HAVE_NVCC = cuda.find_nvcc() is not None
needs_cxx = pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler: the CUDA emulation cannot be built")


def _interpreter_ok():
    from pydl.backends import triton_status

    return triton_status("cpu")


needs_interpreter = pytest.mark.skipif(not _interpreter_ok()[0], reason=f"Triton's interpreter: {_interpreter_ok()[1]}")


def cpu_levels_passed(levels):
    cpu = [lv for lv in levels if lv["name"].startswith("correct") and "CPU" in lv["name"]]
    return bool(cpu) and all(lv["status"] == "pass" for lv in cpu) and not any(lv["status"] == "fail" for lv in levels)


def failure_text(levels):
    return "\n".join(f"[{lv['status']}] {lv['name']}: {lv.get('detail', '')}" for lv in levels)


# --------------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------------

def test_curriculum_is_complete():
    names = [e.name for e in EXS]
    assert len(names) >= 14 and len(set(names)) == len(names)
    assert {"vector_add", "general_relu", "softmax", "block_reduce", "welford", "histogram", "act_stats",
            "batch_norm_forward", "batch_norm_backward", "lstm_cell", "matmul", "conv2d"} <= set(names)
    assert {"cuda_vector_add", "cuda_reduce", "cuda_histogram", "cuda_matmul", "cuda_lstm_cell"} <= set(names)
    assert [e.number for e in EXS] == sorted(e.number for e in EXS)
    for ex in EXS:
        assert ex.track in course.TRACKS
        assert ex.title and ex.teaches and ex.learned
        assert (ex.folder / ex.file).exists()
        assert len(ex.readme()) > 500, f"{ex.name}: the task statement should explain why, not just what"
        assert len(ex.hints()) >= 2, f"{ex.name}: progressive hints"
        assert len(ex.mutants) >= 2, f"{ex.name}: known-wrong solutions"
        if ex.track == "cuda":
            assert ex.module.SIGNATURE and ex.entry in ex.solution()
        cases = ex.module.cases("cpu")
        assert len(cases) >= 4
        # sizes that are not block multiples and two or more block sizes
        blocks = {tuple(sorted((k, v) for k, v in c.params.items() if k in ("block", "bm", "bn", "bk", "tile")))
                  for c in cases}
        assert len(blocks) >= 2, f"{ex.name}: at least two block sizes"


@pytest.mark.parametrize("ex", EXS, ids=lambda e: e.name)
def test_starter_is_solution_minus_regions(ex):
    src = ex.solution_source()
    items = split_regions(src)
    regions = [it for kind, it in items if kind == "region"]
    assert regions, "an exercise without TODO regions teaches nothing"
    starter, solution = ex.starter(), ex.solution()
    assert "BEGIN SOLUTION" not in starter and "END SOLUTION" not in starter
    assert "BEGIN SOLUTION" not in solution and "END SOLUTION" not in solution
    placeholder = re.compile(r"^\s*(#|//)\|")
    # the solution is the source without marker and placeholder lines
    kept = [ln for ln in src.splitlines() if "BEGIN SOLUTION" not in ln and "END SOLUTION" not in ln
            and not placeholder.match(ln)]
    assert solution.splitlines() == kept
    # the starter's lines outside regions are exactly the solution's lines outside regions, in order
    outside = [it.rstrip("\n") for kind, it in items if kind == "plain"]
    placeholders = [placeholder.sub("", ln).strip() for _, it in items if _ == "region" for ln in it
                    if placeholder.match(ln)]
    starter_plain = [ln for ln in starter.splitlines()
                     if ln.strip() not in placeholders and ln.strip() != "pass  # your code here"]
    assert starter_plain == outside
    # every region is announced by a TODO comment in the lines just above it
    lines = src.splitlines()
    for i, ln in enumerate(lines):
        if "BEGIN SOLUTION" in ln:
            above = "\n".join(lines[max(0, i - 6):i])
            assert "TODO" in above, f"{ex.name}: region at line {i + 1} has no TODO above it"
    # no solution line leaks into the starter (lines that also occur outside regions excepted)
    body = {ln.strip() for _, it in items if _ == "region" for ln in it[1:-1]
            if ln.strip() and not placeholder.match(ln)}
    leaked = body & {ln.strip() for ln in starter.splitlines()} - {ln.strip() for ln in outside}
    assert not leaked


def test_marker_errors():
    with pytest.raises(MarkerError):
        split_regions("a\n# BEGIN SOLUTION\nb\n")
    with pytest.raises(MarkerError):
        split_regions("# END SOLUTION\n")
    with pytest.raises(MarkerError):
        split_regions("x = 1\n#| y = 2\n")
    src = "def f():\n    # TODO\n    # BEGIN SOLUTION\n    return 1\n    #| return 0\n    # END SOLUTION\n"
    assert starter_text(src) == "def f():\n    # TODO\n    return 0\n"
    assert solution_text(src) == "def f():\n    # TODO\n    return 1\n"
    assert "pass" in starter_text("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n")


# --------------------------------------------------------------------------------------------------
# Checker plumbing: diffs, guards, poison
# --------------------------------------------------------------------------------------------------

def test_compare_reports_indices_and_values():
    exp = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    got = exp.clone()
    got[2, 1] = 99.0
    m = compare("out", got, exp)
    assert m is not None and "1 of 12" in m.text and "[2, 1]" in m.text and "99" in m.text and "9" in m.text
    assert compare("out", exp.clone(), exp) is None
    ints = torch.tensor([1, 2, 3], dtype=torch.int32)
    assert compare("h", ints + torch.tensor([0, 0, 1], dtype=torch.int32), ints) is not None  # exact for ints


def test_poison_and_guards():
    view, buf = guarded_like((5,), torch.float32, "cpu")
    m = compare("out", view, torch.zeros(5))
    assert m is not None and "never wrote" in m.text
    assert guard_report("out", buf, 5) is None
    view.zero_()
    assert compare("out", view, torch.zeros(5)) is None
    buf[GUARD + 5] = float("nan")  # a plain NaN (what an unmasked load of an input guard gives) is not poison
    msg = guard_report("out", buf, 5)
    assert msg is not None and "AFTER the end" in msg and "offsets 5" in msg
    ibuf = guarded_like((3,), torch.int32, "cpu")[1]
    ibuf[GUARD - 1] = 0
    assert "BEFORE the start" in guard_report("h", ibuf, 3)


def test_environment_self_test():
    rows = checker.environment()
    what = {r["what"]: r for r in rows}
    assert {"python", "torch", "triton interpreter", "C++ compiler", "nvcc", "CUDA GPU"} <= set(what)
    from pydl.backends import triton_status

    assert what["triton interpreter"]["ok"] == triton_status("cpu")[0], what["triton interpreter"]["detail"]
    for r in rows:
        if not r["ok"]:
            assert r["fix"], f"{r['what']} is missing but no advice is given"


# --------------------------------------------------------------------------------------------------
# Triton track: solutions pass, starters and mutants fail
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def triton_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    jobs, keys = [], []
    for ex in TRITON:
        variants = {"solution": ex.solution(), "starter": ex.starter()}
        variants.update({f"mutant:{k}": ex.mutant(k) for k in ex.mutants})
        for kind, src in variants.items():
            d = root / ex.name / re.sub(r"\W+", "_", kind)
            d.mkdir(parents=True)
            (d / ex.file).write_text(src)
            jobs.append((ex.name, d / ex.file))
            keys.append((ex.name, kind))
    # Three batches, not one: a mutant with an unmasked store writes out of bounds for real in the interpreter
    # and can corrupt the batch process's heap, so a LATER job in the same process may crash (seen once in CI:
    # "double free or corruption" in the conv2d solution's job). Solutions and starters never share a process
    # with mutants; a mutant that brings its process down only fails mutants, which must fail anyway.
    results = {}
    for group in ("solution", "starter", "mutant:"):
        idx = [i for i, k in enumerate(keys) if k[1].startswith(group)]
        for i, levels in zip(idx, checker.check_many_triton([jobs[i] for i in idx], "cpu")):
            results[keys[i]] = levels
    return results


@needs_interpreter
@pytest.mark.parametrize("ex", TRITON, ids=lambda e: e.name)
def test_triton_solution_passes(ex, triton_results):
    levels = triton_results[(ex.name, "solution")]
    assert cpu_levels_passed(levels), failure_text(levels)
    assert levels[0]["name"] == "imports" and levels[0]["status"] == "pass"


@needs_interpreter
@pytest.mark.parametrize("ex", TRITON, ids=lambda e: e.name)
def test_triton_starter_fails_helpfully(ex, triton_results):
    levels = triton_results[(ex.name, "starter")]
    assert not cpu_levels_passed(levels)
    failed = [lv for lv in levels if lv["status"] == "fail"]
    detail = failed[0]["detail"]
    assert "case:" in detail and ("expected" in detail or "raised" in detail), detail


def _mutants(exercises):
    """(exercise, mutant kind) pairs as pytest parameters named "<exercise>-<kind>"."""
    return [pytest.param(ex, kind, id=f"{ex.name}-{kind}") for ex in exercises for kind in ex.mutants]


@needs_interpreter
@pytest.mark.parametrize("ex, kind", _mutants(TRITON))
def test_triton_mutants_fail(ex, kind, triton_results):
    levels = triton_results[(ex.name, f"mutant:{kind}")]
    assert not cpu_levels_passed(levels), f"{ex.name}: the bug {kind!r} passed the checker"
    assert any(lv["status"] == "fail" for lv in levels)


@needs_interpreter
def test_act_stats_plugs_into_pydl(triton_results):
    levels = triton_results[("act_stats", "solution")]
    plug = [lv for lv in levels if "inside pydl" in lv["name"]]
    assert plug and plug[0]["status"] == "pass", failure_text(levels)
    assert "YOUR kernel" in plug[0]["detail"]


@needs_interpreter
def test_plugin_steps_pass_or_skip(triton_results):
    from pydl import backends

    registered = backends.all_ops()
    for name, op in (("batch_norm_forward", "batch_norm"), ("batch_norm_backward", "batch_norm"),
                     ("lstm_cell", "lstm_cell"), ("conv2d", "conv2d")):
        levels = triton_results[(name, "solution")]
        plug = [lv for lv in levels if "inside pydl" in lv["name"]]
        assert plug, name
        # a correct kernel never FAILS the plug-in step: it passes, or is skipped (op absent or its API moved)
        assert plug[0]["status"] in (("pass", "skip") if op in registered else ("skip",)), failure_text(levels)


class _FakeKernels:
    """Learner modules written in plain torch (right, or wrong on purpose) to test the plug-in adapters."""

    def __init__(self, wrong):
        self.wrong = wrong

    def act_stats(self, x, bins, lo, hi, eps, per_channel, block=64):
        from pydl.ops.act_stats import act_stats_reference

        fs, cnt, hist = act_stats_reference(x, bins, lo, hi, eps, per_channel)
        if self.wrong:
            hist = hist.clone()
            hist[..., 0] += 1
        return fs, cnt, hist

    def batch_norm_forward(self, x, weight, bias, eps, y, mean, invstd, block):
        m = x.mean((0, 2, 3))
        inv = torch.rsqrt(x.var((0, 2, 3), correction=0) + eps)
        c = lambda t: t[None, :, None, None]  # noqa: E731
        y.copy_((x - c(m)) * c(inv * weight) + c(bias) + (0.01 if self.wrong else 0.0))
        mean.copy_(m)
        invstd.copy_(inv)

    def batch_norm_backward(self, x, dy, mean, invstd, weight, dx, dweight, dbias, block):
        c = lambda t: t[None, :, None, None]  # noqa: E731
        xhat = (x - c(mean)) * c(invstd)
        db, dw = dy.sum((0, 2, 3)), (dy * xhat).sum((0, 2, 3))
        M = x.numel() // x.shape[1]
        dx.copy_(c(weight * invstd) * (dy - c(db) / M - xhat * c(dw) / M) * (1.01 if self.wrong else 1.0))
        dweight.copy_(dw)
        dbias.copy_(db)

    def lstm_cell(self, x, h_prev, c_prev, w_ih, w_hh, b_ih, b_hh, h, c, block):
        gates = x @ w_ih.t() + b_ih + h_prev @ w_hh.t() + b_hh
        i, f, g, o = gates.chunk(4, 1)
        if self.wrong:
            i, f = f, i
        cn = f.sigmoid() * c_prev + i.sigmoid() * g.tanh()
        c.copy_(cn)
        h.copy_(o.sigmoid() * cn.tanh())

    def conv2d(self, x, w, out, stride, pad, bm, bn, bk):
        out.copy_(torch.nn.functional.conv2d(x, w, stride=stride, padding=pad) * (1.01 if self.wrong else 1.0))


@needs_interpreter
def test_plugins_catch_wrong_kernels():
    from pydl import backends
    from pydl.learn import plugins

    registered = backends.all_ops()
    runs = {"act_stats": (lambda m: course.get("act_stats").module.plugin(m, "cpu"), "act_stats"),
            "bn forward": (lambda m: plugins.batch_norm(m, "cpu", "forward"), "batch_norm"),
            "bn backward": (lambda m: plugins.batch_norm(m, "cpu", "backward"), "batch_norm"),
            "lstm_cell": (lambda m: plugins.lstm_cell(m, "cpu"), "lstm_cell"),
            "conv2d": (lambda m: plugins.conv2d(m, "cpu"), "conv2d")}
    for what, (run, op) in runs.items():
        if op not in registered:
            assert run(_FakeKernels(False))[0] == "skip"
            continue
        status, detail = run(_FakeKernels(False))
        if what == "act_stats":  # the plug-in the course guarantees
            assert status == "pass" and "YOUR" in detail, (what, detail)
        else:  # other engineers' ops: their API may move; then the step is skipped, never passed by mistake
            assert status in ("pass", "skip") and (status == "skip" or "YOUR" in detail), (what, detail)
        if status == "pass":
            status, detail = run(_FakeKernels(True))
            assert status == "fail", (what, status, detail)


@needs_interpreter
def test_crash_fails_only_the_crashing_file(tmp_path):
    bad = tmp_path / "bad" / "vector_add.py"
    bad.parent.mkdir()
    bad.write_text("import os\nos.abort()\n")
    good = tmp_path / "good" / "vector_add.py"
    good.parent.mkdir()
    good.write_text(course.get("vector_add").solution())
    res = checker.check_many_triton([("vector_add", bad), ("vector_add", good)])
    assert res[0][0]["status"] == "fail" and not cpu_levels_passed(res[0])
    assert cpu_levels_passed(res[1]), failure_text(res[1])


@needs_interpreter
def test_full_check_levels_and_time_limit(tmp_path):
    ex = course.get("vector_add")
    f = tmp_path / ex.file
    f.write_text(ex.solution())
    res = checker.check(ex, f, gpu=False)
    assert res.passed
    gpu = [lv for lv in res.levels if "GPU" in lv["name"]]
    assert gpu and gpu[0]["status"] == "skip"  # skipped is reported as such, never as passed
    # an endless loop is stopped by the time limit and reported
    endless = "def vector_add(*a, **k):\n    while True:\n        pass\n\n\ndef _old("
    f.write_text(ex.solution().replace("def vector_add(", endless))
    res = checker.check(ex, f, gpu=False, timeout=6)
    assert not res.passed and "did not finish" in failure_text(res.levels)


# --------------------------------------------------------------------------------------------------
# CUDA track
# --------------------------------------------------------------------------------------------------

def _cuda_check(ex, tmp_path, src, nvcc=False):
    f = tmp_path / ex.file
    f.write_text(src)
    return cuda.check(ex, f, use_gpu=False, nvcc=nvcc)


@needs_cxx
@pytest.mark.parametrize("ex", CUDA, ids=lambda e: e.name)
def test_cuda_solution_passes(ex, tmp_path):
    levels = _cuda_check(ex, tmp_path, ex.solution(), nvcc=HAVE_NVCC)
    assert cpu_levels_passed(levels), failure_text(levels)
    if HAVE_NVCC:
        assert levels[0]["name"].startswith("compiles for the GPU"), failure_text(levels)
        assert levels[0]["status"] == "pass", failure_text(levels)
    assert levels[-1]["name"] == "correct on a GPU" and levels[-1]["status"] == "skip"  # use_gpu=False: never "pass"


@needs_cxx
@pytest.mark.parametrize("ex", CUDA, ids=lambda e: e.name)
def test_cuda_starter_fails(ex, tmp_path):
    levels = _cuda_check(ex, tmp_path, ex.starter())
    assert not cpu_levels_passed(levels)
    detail = [lv for lv in levels if lv["status"] == "fail"][0]["detail"]
    assert "case:" in detail or "error" in detail, detail


@needs_cxx
@pytest.mark.parametrize("ex, kind", _mutants(CUDA))
def test_cuda_mutants_fail(ex, kind, tmp_path):
    levels = _cuda_check(ex, tmp_path, ex.mutant(kind))
    assert any(lv["status"] == "fail" for lv in levels), f"{ex.name}: the bug {kind!r} passed the checker"


@needs_cxx
def test_emulation_reports_deadlock_and_bad_launch(tmp_path):
    ex = course.get("cuda_reduce")
    src = ex.solution().replace("warp_sums[warp] = v;\n  __syncthreads();",
                                "{ warp_sums[warp] = v;\n  __syncthreads(); }")
    assert src != ex.solution()
    text = failure_text(_cuda_check(ex, tmp_path, src))
    assert "DEADLOCK" in text and "__syncthreads" in text
    # more than 1024 threads per block: a GPU refuses the launch; so does the emulation
    src = ex.solution().replace("sum_kernel<<<blocks, block>>>", "sum_kernel<<<blocks, 2048>>>")
    text = failure_text(_cuda_check(ex, tmp_path, src))
    assert "invalid configuration" in text


@needs_cxx
@pytest.mark.parametrize("name, kind, check", [
    ("cuda_reduce", "plain += on out", "racecheck"),                 # blocks add to *out without an atomic
    ("cuda_reduce", "no barrier before reading warp_sums", "racecheck"),
    ("cuda_histogram", "non-atomic merge", "racecheck"),
    ("cuda_histogram", "shared counts not zeroed", "initcheck"),      # the bins are incremented unread-written
    ("cuda_vector_add", "no bounds check", "memcheck"),
])
def test_emulation_checks_name_the_bug(tmp_path, name, kind, check):
    """The emulator's checks, not luck with the schedule or a source pattern, catch the course's concurrency
    and bounds mutants, and the report names the check and the learner's line."""
    ex = course.get(name)
    levels = _cuda_check(ex, tmp_path, ex.mutant(kind))
    failed = [lv for lv in levels if lv["status"] == "fail"]
    assert failed and failed[0]["name"].startswith("correct on the CPU emulation"), failure_text(levels)
    assert f"emulation: {check} in kernel" in failed[0]["detail"], failure_text(levels)
    assert f"{ex.file}:" in failed[0]["detail"], failure_text(levels)  # the source line of the access


@needs_cxx
def test_emulation_rewrite_keeps_lines_and_skips_comments():
    src = "// launch with kernel<<<blocks, threads>>>(x)\n__global__ void k(float* p) {\n" \
          "  __shared__ float a[4][8];\n" \
          "  extern __shared__ int d[];\n}\nvoid f(){ k<<<dim3(1, 2), 32, 16>>>(p); }\n"
    out = _emu.rewrite(src, "x.cu")
    assert out.count("\n") == src.count("\n") + 1  # + the #line directive
    assert 'pydl_emu::Launcher(dim3(1, 2), 32, 16).bind(k, "k")(p)' in out
    assert 'auto& a = pydl_emu::shared<float[(4)][(8)]>(1L, "a")' in out
    assert 'int* d = pydl_emu::dynamic_shared<int>("d")' in out
    assert "<<<" not in out


# --------------------------------------------------------------------------------------------------
# The CLI, end to end
# --------------------------------------------------------------------------------------------------

def run_cli(capsys, *argv):
    from pydl.cli import main

    code = main(["learn", *argv])
    out = capsys.readouterr().out
    return code, out


@needs_interpreter
def test_cli_end_to_end(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    code, out = run_cli(capsys, "--workspace", ws, "list")
    assert code == 0 and "vector_add" in out and "cuda_matmul" in out and "todo" in out and "0/" in out
    assert out.index("Triton") < out.index("CUDA C++")

    code, out = run_cli(capsys, "start", "vector_add", "--workspace", ws)
    assert code == 0
    folder = Path(ws) / "vector_add"
    learner = folder / "vector_add.py"
    assert learner.read_text() == course.get("vector_add").starter()
    assert (folder / "README.md").exists() and (folder / "test_vector_add.py").exists()
    assert "TODO" in learner.read_text()

    code, out = run_cli(capsys, "check", "vector_add", "--workspace", ws, "--no-gpu")
    assert code == 1 and "[FAIL]" in out and "environment:" in out and "hint" in out

    code, out = run_cli(capsys, "hint", "vector_add", "--workspace", ws)
    assert "Hint 1/" in out and "Hint 2/" not in out
    code, out = run_cli(capsys, "hint", "vector_add", "--workspace", ws)
    assert "Hint 1/" in out and "Hint 2/" in out

    code, out = run_cli(capsys, "solution", "vector_add")
    assert code == 0 and "tl.store(out_ptr + offs, x + y, mask=mask)" in out and "BEGIN SOLUTION" not in out

    learner.write_text(course.get("vector_add").solution())
    code, out = run_cli(capsys, "check", "--workspace", ws, "--no-gpu")  # defaults to the last exercise
    assert code == 0 and "PASSED" in out and "What you learned" in out and "Next:" in out
    assert "[SKIP] correct on GPU" in out

    code, out = run_cli(capsys, "list", "--workspace", ws)
    assert re.search(r"vector_add\s+passing", out) and "1/" in out

    # starting again keeps the learner's work
    code, out = run_cli(capsys, "start", "vector_add", "--workspace", ws)
    assert "keeping your work" in out and learner.read_text() == course.get("vector_add").solution()

    # editing the file after passing makes it "started" again
    learner.write_text(learner.read_text() + "\n# edited\n")
    code, out = run_cli(capsys, "list", "--workspace", ws)
    assert re.search(r"vector_add\s+started", out)

    # the test file handed to the learner runs the same checker
    import importlib.util

    spec = importlib.util.spec_from_file_location("ws_test_vector_add", folder / "test_vector_add.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.test_vector_add()  # the (edited, still correct) solution passes

    code, out = run_cli(capsys, "doctor")
    assert code == 0 and "triton interpreter" in out


@needs_cxx
def test_cli_cuda_exercise(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    run_cli(capsys, "start", "cuda_vector_add", "--workspace", ws)
    f = Path(ws) / "cuda_vector_add" / "cuda_vector_add.cu"
    assert "TODO" in f.read_text() and "add_kernel" in f.read_text()
    code, out = run_cli(capsys, "check", "cuda_vector_add", "--workspace", ws, "--no-gpu", "--no-nvcc")
    assert code == 1 and "never wrote" in out
    f.write_text(course.get("cuda_vector_add").solution())
    code, out = run_cli(capsys, "check", "cuda_vector_add", "--workspace", ws, "--no-gpu")
    assert code == 0 and "PASSED" in out and "[PASS] correct on the CPU emulation" in out
    assert ("[PASS] compiles for the GPU" in out) == HAVE_NVCC


def test_unknown_exercise_is_a_clear_error():
    with pytest.raises(KeyError, match="vector_add"):
        course.get("no_such_exercise")


# --------------------------------------------------------------------------------------------------
# On a GPU machine: every reference solution also passes the GPU levels (compiled Triton, nvcc + real run)
# --------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("ex", EXS, ids=lambda e: e.name)
def test_solution_passes_on_gpu(ex, tmp_path):
    f = tmp_path / ex.file
    f.write_text(ex.solution())
    res = checker.check(ex, f, gpu=True)
    text = failure_text(res.levels)
    assert res.passed, text
    gpu = [lv for lv in res.levels if lv["name"].startswith("correct on") and "GPU" in lv["name"]]
    assert gpu and all(lv["status"] == "pass" for lv in gpu), text


@needs_cxx
def test_compile_errors_point_at_the_learners_line(tmp_path):
    ex = course.get("cuda_vector_add")
    src = ex.solution().replace("if (i < n) out[i] = x[i] + y[i];", "if (i < n) out[i] = x[i] + y[i]")
    levels = _cuda_check(ex, tmp_path, src)
    failed = [lv for lv in levels if lv["status"] == "fail"]
    assert failed and "compiles" in failed[0]["name"]
    line = next(i for i, ln in enumerate(src.splitlines(), 1) if "if (i < n) out[i]" in ln)
    assert f"{ex.file}:{line + 1}" in failed[0]["detail"] or f"{ex.file}:{line}" in failed[0]["detail"]


@needs_interpreter
def test_import_errors_are_reported(tmp_path):
    ex = course.get("vector_add")
    f = tmp_path / ex.file
    f.write_text(ex.solution().replace("def vector_add(", "def vector_add(:"))
    levels = checker.check_many_triton([(ex.name, f)])[0]
    assert levels[0]["name"] == "imports" and levels[0]["status"] == "fail"
    assert "SyntaxError" in levels[0]["detail"]
    f.write_text(ex.solution().replace("def vector_add(", "def vector_add_renamed("))
    levels = checker.check_many_triton([(ex.name, f)])[0]
    assert levels[0]["status"] == "fail" and "no function `vector_add`" in levels[0]["detail"]


EMU_SELFTEST = r"""
#include <cuda_runtime.h>
#include <cstdio>
__global__ void prims(int* out, unsigned* counter) {
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  extern __shared__ int dyn[];
  __shared__ int stat[64];
  dyn[t] = t;
  stat[t] = 2 * t;
  __syncthreads();
  int v = lane;
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffff, v, d);      // lane 0: 0 + ... + 31
  int x = __shfl_xor_sync(0xffffffff, lane, 1);                                   // neighbour swap
  int u = __shfl_up_sync(0xffffffff, lane, 1);                                    // lane 0 keeps its own
  int b = __shfl_sync(0xffffffff, lane * 10, 3);                                  // broadcast lane 3
  unsigned odd = __ballot_sync(0xffffffff, lane & 1);
  unsigned same = __match_any_sync(0xffffffff, lane / 8);
  atomicAdd(counter, 1);                                                          // int literal, unsigned target
  int* o = out + (blockIdx.x * 64 + t) * 8;
  o[0] = lane == 0 ? v : -1; o[1] = x; o[2] = u; o[3] = b; o[4] = int(odd); o[5] = int(same);
  o[6] = dyn[63 - t] + stat[63 - t]; o[7] = blockIdx.x * blockDim.x + t + warp * 0;
}
int main() {
  int* out; unsigned* counter;
  cudaMalloc(&out, 2 * 64 * 8 * sizeof(int)); cudaMalloc(&counter, sizeof(unsigned));
  cudaMemset(counter, 0, sizeof(unsigned));
  prims<<<2, 64, 64 * sizeof(int)>>>(out, counter);
  if (cudaDeviceSynchronize() != cudaSuccess) return 9;
  int h[2 * 64 * 8]; unsigned c;
  cudaMemcpy(h, out, sizeof(h), cudaMemcpyDeviceToHost); cudaMemcpy(&c, counter, sizeof(c), cudaMemcpyDeviceToHost);
  if (c != 128) { std::printf("counter %u\n", c); return 1; }
  for (int i = 0; i < 128; ++i) {
    const int t = i % 64, lane = t % 32; const int* o = h + i * 8;
    if ((lane == 0 && o[0] != 496) || o[1] != (lane ^ 1) || o[2] != (lane ? lane - 1 : 0) || o[3] != 30 ||
        unsigned(o[4]) != 0xAAAAAAAAu || unsigned(o[5]) != (0xFFu << (8 * (lane / 8))) || o[6] != 3 * (63 - t) ||
        o[7] != i) {
      std::printf("thread %d wrong: %d %d %d %d %x %x %d %d\n", i, o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]);
      return 2;
    }
  }
  std::printf("ok\n");
  return 0;
}
"""


@needs_cxx
@pytest.mark.parametrize("seed", ["0", "1"])
def test_emulation_primitives_behave_like_cuda(tmp_path, seed):
    """Shuffles, ballot, match_any, static and dynamic shared memory, barriers and atomics in the emulation give
    what CUDA specifies (the same program would pass on a GPU), in both thread orders."""
    import subprocess

    src = tmp_path / "prims.cu"
    src.write_text(EMU_SELFTEST)
    (tmp_path / "prims.cpp").write_text(_emu.rewrite(EMU_SELFTEST, str(src)))
    exe = tmp_path / "prims"
    subprocess.run([cuda.find_cxx(), "-std=c++17", "-w", "-I", str(cuda.EMU_INCLUDE), "-I", str(course.COMMON),
                    "-include", str(cuda.EMU_HEADER), str(tmp_path / "prims.cpp"), "-o", str(exe)], check=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True, env=dict(os.environ, PYDL_EMU_SEED=seed))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
    if HAVE_NVCC and seed == "0":  # the program is real CUDA: nvcc compiles it unchanged
        subprocess.run([cuda.find_nvcc(), "-std=c++17", "-arch=sm_80", str(src), "-o", str(tmp_path / "prims_gpu")],
                       check=True, capture_output=True)
