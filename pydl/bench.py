"""``pydl bench``: every op x backend x shape set x dtype against the native torch op, in one process.

    pydl bench                         # all ops, this machine's device, realistic shapes
    pydl bench act_stats --quick       # one op, the small set (< 1 minute on a 2-core CPU)
    pydl bench --device cuda --out results/h100
    pydl bench --compare old/results.json new/results.json

The cases live in ``benchmarks/bench_<op>.py`` (each defines ``cases(quick, device)``); the method (timers,
ceilings, rows) in ``benchmarks/common.py``. Output: a table on the terminal, and in ``--out`` (default
``./bench-results/<date>-<device>``) ``results.json``, ``results.csv``, ``results.md`` and ``speedup.png``,
stamped with device, versions, git revision and date.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib
import json
import os
import pkgutil
import sys
from typing import List, Sequence

from .debug.progress import progress as progress_bar
from .results import blank_or, markdown_table, ratio_text, stamp_line

# A wheel carries benchmarks/ inside pydl as pydl._benchmarks (setup.py); a source checkout (or an editable
# install of one) has it at its top level as the package `benchmarks`. The first that imports is the one.
_PACKAGES = ("pydl._benchmarks", "benchmarks")


def benchmarks_package():
    """The package holding the ``bench_<op>`` modules and ``common``."""
    for name in _PACKAGES:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the package exists but something it imports is missing: say that
                raise
    raise ModuleNotFoundError("pydl bench: the benchmark cases were not found: run from the root of a pydl "
                              "checkout (they are the package `benchmarks` there) or install pydl from a wheel")


def available_ops() -> List[str]:
    pkg = benchmarks_package()
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("bench_"))


def bench_module(op: str):
    """``bench_<op>``, imported from the benchmarks package."""
    return importlib.import_module(f"{benchmarks_package().__name__}.bench_{op}")


def common():
    """The benchmark method (benchmarks/common.py): timers, ``Case``, ``Row``, tables."""
    return importlib.import_module(f"{benchmarks_package().__name__}.common")


class BenchArgumentError(ValueError):
    """A `pydl bench` argument names nothing that exists; the message says which and what would."""


DTYPES = ("float16", "bfloat16", "float32", "float64")


def _check_choices(flag: str, given, known) -> None:
    bad = [v for v in (given or ()) if v not in known]
    if bad:
        raise BenchArgumentError(f"pydl bench: {flag} {', '.join(map(repr, bad))} is not one of {', '.join(known)}")


def collect_cases(ops: Sequence[str], quick: bool, device: str, backends=None, dtypes=None):
    from pydl.backends import BACKENDS

    _check_choices("--backend", backends, [b for b in BACKENDS if b != "auto"])
    _check_choices("--dtype", dtypes, DTYPES)
    cases, seen = [], []
    for op in ops:
        if op not in available_ops():
            raise BenchArgumentError(f"pydl bench: no benchmark for {op!r}; have {', '.join(available_ops())}")
        mod = bench_module(op)
        for c in mod.cases(quick, device):
            seen.append(c)
            if dtypes and c.dtype not in dtypes:
                continue
            if backends:
                c.backends = tuple(b for b in c.backends if b in backends)
                if not c.backends:
                    continue
            cases.append(c)
    if seen and not cases:
        # an empty table that exits 0 reads as "nothing to report"; say that the filters excluded everything
        have_dt = sorted({c.dtype for c in seen})
        have_be = sorted({b for c in seen for b in c.backends})
        raise BenchArgumentError(f"pydl bench: no case of {', '.join(ops)} on {device} matches "
                                 f"--dtype {dtypes or 'any'} / --backend {backends or 'any'}; these cases have "
                                 f"dtypes {', '.join(have_dt)} and backends {', '.join(have_be)}")
    return cases


def write_results(out_dir: str, env: dict, ceilings: dict, rows: list) -> dict:
    """JSON + CSV + Markdown + PNG into out_dir; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    recs = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in rows]
    paths = {k: os.path.join(out_dir, f) for k, f in
             (("json", "results.json"), ("csv", "results.csv"), ("md", "results.md"), ("png", "speedup.png"))}
    with open(paths["json"], "w") as f:
        json.dump({"environment": env, "ceilings": ceilings, "rows": recs}, f, indent=1)
    if recs:
        with open(paths["csv"], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(recs[0].keys()))
            w.writeheader()
            w.writerows(recs)
    with open(paths["md"], "w") as f:
        f.write(markdown(env, ceilings, recs))
    try:
        plot_speedups(recs, paths["png"], title=f"pydl vs torch - {env.get('gpu') or env.get('cpu')} "
                                                f"({env.get('threads')} threads) {env.get('date', '')[:10]}")
    except Exception as e:  # noqa: BLE001 - no matplotlib: the numbers are still written
        paths["png"] = f"(no chart: {type(e).__name__}: {e})"
    return paths


def markdown(env: dict, ceilings: dict, recs: list) -> str:
    head = (f"Measured {env.get('date')} on {env.get('gpu') or env.get('cpu')} (device {env.get('device')}, "
            f"{env.get('threads')} threads), torch {env.get('torch')}, triton {env.get('triton')}, "
            f"CUDA {env.get('cuda')}, pydl {env.get('pydl')}@{env.get('git')}.\n"
            f"Ceilings measured in the same run: " + ", ".join(f"{k} {v:.3g}" for k, v in ceilings.items()) +
            ".\nSpeed-up = torch time / pydl time (> 1: pydl faster), timed in alternating rounds: the median "
            "per-round ratio and its quartiles; times are medians ± IQR.\n\n")
    cm = common()
    table = markdown_table(cm.COLUMNS, [
        (r["op"], r["variant"], r["backend"], r["shape"], r["dtype"], f"{r['median_ms']:.3f} ± {r['iqr_ms']:.3f}",
         f"{r['torch_ms']:.3f}", ratio_text(r["ratio"], r.get("ratio_q1"), r.get("ratio_q3")),
         blank_or(r.get("gbps"), ".1f"), blank_or(r.get("tflops"), ".3f"),
         blank_or(r.get("pct_of_ceiling"), ".0f", "%")) for r in recs], cm.ALIGN)
    warning = env.get("warning")
    return head + (f"**{warning}**\n\n" if warning else "") + table + "\n"


def plot_speedups(recs: list, path: str, title: str = "") -> str:
    # drawn on a bare Figure like every pydl plot (pydl/debug/plots.py says why: no pyplot, no backend switch)
    from pydl.debug.plots import new_figure, save_figure

    labels = [f"{r['op']} {r['variant']} [{r['backend']}] {r['shape']} {r['dtype']}" for r in recs]
    vals = [r["ratio"] for r in recs]
    fig = new_figure((10, max(2.0, 0.28 * len(recs) + 1)))
    ax = fig.add_subplot()
    colors = ["#2a9d8f" if v >= 1 else "#e76f51" for v in vals]
    # the bar is the median ratio, the whisker its quartiles (interleaved rounds); older files have none
    err = None
    if recs and all(r.get("ratio_q1") is not None for r in recs):
        err = [[v - r["ratio_q1"] for v, r in zip(vals, recs)], [r["ratio_q3"] - v for v, r in zip(vals, recs)]]
    ax.barh(range(len(vals)), vals, color=colors, xerr=err, ecolor="#444444", capsize=2)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(range(len(vals)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed-up vs torch (log scale; right of the line = pydl faster)")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path, dpi=110)
    return path


def compare(path_a: str, path_b: str) -> str:
    """Rows present in both result files, with B's time relative to A's (< 1: B faster)."""
    for p in (path_a, path_b):
        if not os.path.isfile(p):
            raise BenchArgumentError(f"pydl bench --compare: {p}: no such file (give two results.json files)")
    try:
        a, b = (json.load(open(p)) for p in (path_a, path_b))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchArgumentError(f"pydl bench --compare: not a results.json file ({e})") from e
    if not all(isinstance(x, dict) and "rows" in x for x in (a, b)):
        raise BenchArgumentError("pydl bench --compare: a file has no 'rows': give results.json files written "
                                 "by pydl bench")
    key = lambda r: (r["op"], r["variant"], r["backend"], r["shape"], r["dtype"], r["device"])  # noqa: E731
    ra = {key(r): r for r in a["rows"]}
    both = [(ra[key(r)], r) for r in b["rows"] if key(r) in ra]
    table = markdown_table(
        ("op", "variant", "backend", "shape", "dtype", "A ms", "B ms", "B/A", "A speed-up", "B speed-up"),
        [(r["op"], r["variant"], r["backend"], r["shape"], r["dtype"], f"{o['median_ms']:.3f}",
          f"{r['median_ms']:.3f}", f"{r['median_ms'] / o['median_ms']:.2f}", f"{o['ratio']:.2f}x",
          f"{r['ratio']:.2f}x") for o, r in both], "lllllrrrrr")
    return "\n".join([f"A: {path_a} ({a['environment'].get('date')}, {a['environment'].get('git')})",
                      f"B: {path_b} ({b['environment'].get('date')}, {b['environment'].get('git')})",
                      table] + ([] if both else ["(no rows in common)"]))


def run(ops=None, quick=False, device=None, backends=None, dtypes=None, threads=None, out=None,
        progress=True) -> dict:
    import torch

    cm = common()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("pydl bench: --device cuda but no CUDA GPU is available")
    cm.set_threads(threads)
    ops = list(ops) if ops else available_ops()
    env = cm.environment(device)
    cases = collect_cases(ops, quick, device, backends, dtypes)
    busy = cm.busy_warning(env)  # the load before the run, said now rather than after minutes of timing
    if busy:
        sys.stderr.write(f"pydl bench: {busy}\n")
    with progress_bar(None, total=sum(len(cm.usable_backends(c, device)) for c in cases), desc="pydl bench",
                      enable=progress) as bar:
        def timed(row):  # the row just measured, beside the count
            bar.set_postfix_str(f"{row.op} {row.variant} {row.backend} {row.shape}", refresh=False)
            bar.update()

        rows = cm.run_cases(cases, device, quick, progress=timed)
    ceil = cm.ceilings(device, quick)
    env["warning"] = cm.busy_warning(env, rows)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = out or os.path.join("bench-results", f"{stamp}-{device}")
    paths = write_results(out, env, ceil, rows)
    return {"env": env, "ceilings": ceil, "rows": rows, "paths": paths, "table": cm.format_table(rows)}


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark pydl's ops against torch (see benchmarks/)")
    p.add_argument("ops", nargs="*", help="ops to benchmark (default: all)")
    p.add_argument("--backend", action="append", help="only these backends (repeatable)")
    p.add_argument("--dtype", action="append", help="only these dtypes, e.g. float32 (repeatable)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--quick", action="store_true", help="small shape set (< 1 minute on a 2-core CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="compare two result files and exit")
    p.set_defaults(func=_main)


def _main(args) -> int:
    try:
        if args.compare:
            print(compare(*args.compare))
            return 0
        res = run(args.ops, args.quick, args.device, args.backend, args.dtype, args.threads, args.out)
    except BenchArgumentError as e:
        print(e, file=sys.stderr)
        return 2
    env = res["env"]
    print(stamp_line(env))
    print("ceilings: " + ", ".join(f"{k}={v:.3g}" for k, v in res["ceilings"].items()))
    print(res["table"])
    if env.get("warning"):
        print(env["warning"], file=sys.stderr)
    print(f"results: {os.path.abspath(os.path.dirname(res['paths']['json']))}")
    return 0
