"""`pydl bench`: arguments that name nothing are errors, ratios carry their spread, a busy machine is said.

No timing is asserted here (machines are noisy): only the structure of what the timer returns and prints.
"""
import json
import os
import subprocess
import sys

import pytest

from pydl import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cm = bench.common()


def _pydl(*args):
    return subprocess.run([sys.executable, "-m", "pydl.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@pytest.mark.parametrize("args, names", [
    (["--dtype", "float99"], ["--dtype", "float99", "float32"]),
    (["--backend", "gpu"], ["--backend", "gpu", "triton"]),
    (["no_such_op"], ["no_such_op", "act_stats"]),
])
def test_bad_arguments_are_errors_naming_the_value(args, names):
    r = _pydl("bench", "act_stats", "--quick", *args) if args[0].startswith("--") else _pydl("bench", *args)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-500:])
    assert "Traceback" not in r.stderr
    for n in names:
        assert n in r.stderr, (n, r.stderr)


def test_filters_that_exclude_every_case_are_an_error():
    # float64 is a real dtype, but the act_stats quick set has no float64 case: an empty table is not a result
    with pytest.raises(bench.BenchArgumentError, match="no case of act_stats"):
        bench.collect_cases(["act_stats"], quick=True, device="cpu", dtypes=["float64"])


def test_compare_with_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    r = _pydl("bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(bench.BenchArgumentError, match="rows"):
        bench.compare(str(tmp_path / "x.json"), str(tmp_path / "x.json"))


def test_time_pair_alternates_and_reports_ratio_quartiles():
    calls = []
    m = cm.time_pair(lambda: calls.append("t"), lambda: calls.append("p"), "cpu", quick=True)
    assert m["rounds"] >= 7
    med, q1, q3 = m["ratio"]
    assert q1 <= med <= q3
    assert m["pydl"][0] > 0 and m["torch"][0] > 0 and m["pydl"][1] >= 0
    # the two sides really alternate: after the warm-up, both appear in every stretch of the call log
    log = "".join(calls[2:])
    assert "t" in log and "p" in log and log.index("p") < len(log) // 2


def _row(ratio, q1, q3):
    return cm.Row("op", "fwd", "cpu", "1", "float32", "cpu", 2, 1.0, 0.1, ratio, 0.1, ratio, ratio_q1=q1, ratio_q3=q3)


def test_every_printed_ratio_carries_its_spread():
    row = _row(1.25, 1.1, 1.3)
    assert row.ratio_text() == "1.25x (1.10-1.30)"
    assert "1.25x (1.10-1.30)" in cm.format_table([row])
    md = bench.markdown({"date": "d", "cpu": "Some CPU"}, {"copy_gbps": 1.0}, [row.__dict__])
    assert "1.25x (1.10-1.30)" in md and "Some CPU" in md


def test_busy_machine_and_wide_spread_are_reported():
    quiet = {"load1": 0.1, "cores": 2}
    assert cm.busy_warning(quiet, [_row(1.0, 0.95, 1.05)]) is None
    assert "load average 1.90 on 2 cores" in cm.busy_warning({"load1": 1.9, "cores": 2}, [])
    msg = cm.busy_warning(quiet, [_row(1.0, 0.5, 2.0), _row(1.0, 0.95, 1.05)])
    assert "1 of 2 ratios" in msg and "unreliable" in msg
    env = cm.environment("cpu")
    assert env["cpu"] and "load1" in env and env["cores"] >= 1  # every result names its machine


def test_chart_is_drawn_without_pyplot(tmp_path):
    code = ("import sys; from pydl import bench; "
            "recs = [dict(op='a', variant='f', backend='cpu', shape='1', dtype='float32', ratio=1.2, "
            "ratio_q1=1.1, ratio_q3=1.3)]; "
            f"bench.plot_speedups(recs, {str(tmp_path / 's.png')!r}); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_benchmarks_are_one_package_imported_one_way():
    """The cases import as `pydl._benchmarks.bench_<op>` where the install maps that package (a wheel, and a
    strict editable install, as CI's `pip install -e .` is: importable from any directory), else as the
    checkout's `benchmarks.bench_<op>`; either way one package, the checkout's files here, and loading them
    neither edits sys.path nor leaves a top-level module named `common` behind."""
    code = ("import importlib.util, sys; before = list(sys.path); from pydl import bench\n"
            "bench.collect_cases(['act_stats'], quick=True, device='cpu')\n"
            "assert sys.path == before, 'sys.path was edited'\n"
            "assert 'common' not in sys.modules, 'a top-level module named common'\n"
            "want = 'pydl._benchmarks' if importlib.util.find_spec('pydl._benchmarks') else 'benchmarks'\n"
            "print(want, bench.bench_module('act_stats').__name__, bench.common().__name__, bench.common().__file__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    want, mod, common, path = r.stdout.split()
    assert [mod, common] == [f"{want}.bench_act_stats", f"{want}.common"]
    assert os.path.samefile(path, os.path.join(ROOT, "benchmarks", "common.py"))
    # and one file runs on its own, as a module of the package
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_act_stats", "--help"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and "--interleaved" in r.stdout, r.stderr[-2000:]


def test_one_markdown_table_writer():
    from pydl.results import blank_or, markdown_table

    table = markdown_table(("name", "ms"), [("a", "1.5"), ("b", None)], "lr")
    assert table == "| name | ms |\n|---|---:|\n| a | 1.5 |\n| b |  |"
    assert blank_or(None, ".1f") == "" and blank_or(12.345, ".0f", "%") == "12%"
    with pytest.raises(ValueError, match="2 columns"):
        markdown_table(("a", "b"), [], "l")
    # the terminal table and results.md are that writer's output: same header, same alignment row
    head = cm.format_table([_row(1.0, 0.9, 1.1)]).splitlines()[:2]
    md = bench.markdown({"date": "d", "cpu": "c"}, {"copy_gbps": 1.0}, [_row(1.0, 0.9, 1.1).__dict__])
    assert md.splitlines()[-3:-1] == head


def test_progress_bar_is_tqdm_and_can_be_silenced(capsys):
    from pydl.debug import progress

    assert list(progress(range(4), desc="x", enable=False)) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""
    bar = progress(None, total=2, desc="by hand")  # the runner's bar: advanced per timed row
    bar.update()
    bar.update()
    bar.close()
    assert bar.n == 2 and "by hand" in capsys.readouterr().err
