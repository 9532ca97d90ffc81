"""``pydl learn``: the kernel-writing course on the command line.

    pydl learn list                 the exercises, in order, with their status (todo / started / passing)
    pydl learn start [NAME]         copy the starter, the task and its test into the workspace
    pydl learn check [NAME]         run the checker on your file (environment self-test first)
    pydl learn hint [NAME]          the next hint (--all for every hint)
    pydl learn solution NAME        the reference solution (only when you ask)
    pydl learn doctor               what the course needs, what is installed, how to fix what is missing

The workspace is ./pydl-exercises/ (or --workspace DIR, or $PYDL_LEARN_WORKSPACE).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import checker, course

TEST_TEMPLATE = '''"""The test this exercise must pass. Run it with `pytest {test}` or, with a readable report,
`pydl learn check {name}`."""
from pathlib import Path

from pydl.learn import checker, course


def test_{name}():
    ex = course.get("{name}")
    res = checker.check(ex, Path(__file__).with_name("{file}"))
    report = "\\n".join(f"[{{lv['status']}}] {{lv['name']}}: {{lv.get('detail', '')}}" for lv in res.levels)
    assert res.passed, report
'''


def _ws(args) -> course.Workspace:
    return course.Workspace(getattr(args, "workspace", None))


def _pick(args, ws: course.Workspace, want_started: bool) -> course.Exercise:
    if getattr(args, "name", None):
        return course.get(args.name)
    if want_started and ws.last():
        return course.get(ws.last())
    for ex in course.exercises():
        st = ws.status(ex)
        if st != "passing" and (st == "started" or not want_started):
            return ex
    return course.exercises()[0]


def cmd_list(args) -> int:
    ws = _ws(args)
    exs = course.exercises()
    done = 0
    for track, title in course.TRACKS.items():
        print(f"\n{title}")
        for ex in exs:
            if ex.track != track:
                continue
            st = ws.status(ex)
            done += st == "passing"
            print(f"  {ex.number:02d} {ex.name:<22} {st:<8} {ex.teaches}")
    print(f"\n{done}/{len(exs)} passing. Workspace: {ws.root}")
    print("`pydl learn start` begins the next one; `pydl learn check` checks it.")
    return 0


def cmd_start(args) -> int:
    ws = _ws(args)
    ex = _pick(args, ws, want_started=False)
    folder = ws.folder(ex)
    folder.mkdir(parents=True, exist_ok=True)
    target = ws.file(ex)
    if target.exists() and not args.force:
        print(f"{target} already exists: keeping your work (--force starts over).")
    else:
        target.write_text(ex.starter())
        print(f"wrote {target}")
    (folder / "README.md").write_text(ex.readme())
    test = folder / f"test_{ex.name}.py"
    test.write_text(TEST_TEMPLATE.format(name=ex.name, file=ex.file, test=test.name))
    st = ws.load_state()
    st["last"] = ex.name
    ws.save_state(st)
    print(f"wrote {folder / 'README.md'} (the task) and {test.name} (the test it must pass)\n")
    print(f"{ex.number:02d} {ex.name}: {ex.title}")
    print(f"   teaches: {ex.teaches}")
    if ex.gpu_only_bugs:
        print(f"   only a GPU reveals: {ex.gpu_only_bugs}")
    print(f"Edit the TODO parts of {target.name}, then run `pydl learn check {ex.name}`.")
    return 0


def cmd_check(args) -> int:
    ws = _ws(args)
    ex = _pick(args, ws, want_started=True)
    path = Path(args.file) if args.file else ws.file(ex)
    print(f"pydl learn check {ex.name} ({ex.title})\nfile: {path}")
    env = checker.environment()
    checker.print_environment(env, ex.track)
    if not checker.environment_ok(env, ex.track):
        print("\nThe environment cannot run this track yet: fix what is MISSING above (`pydl learn doctor`).")
        return 2
    gpu = False if args.no_gpu else None
    res = checker.check(ex, path, gpu=gpu, timeout=args.timeout, nvcc=not args.no_nvcc)
    checker.print_result(ex, res)
    if path.resolve() == ws.file(ex).resolve() and path.exists():
        ws.record(ex, res.passed, res.levels)
    return 0 if res.passed else 1


def cmd_hint(args) -> int:
    ws = _ws(args)
    ex = _pick(args, ws, want_started=True)
    hints = ex.hints()
    if not hints:
        print(f"no hints for this exercise; `pydl learn solution {ex.name}` shows the answer key")
        return 0
    if args.all:
        shown = len(hints)
    else:
        before = ws.hints_shown(ex)
        shown = min(len(hints), before + 1)
        ws.set_hints_shown(ex, shown)
        if before >= len(hints):
            # asking again after the last hint: say so, instead of silently repeating them all
            print(f"That was every hint ({len(hints)} of {len(hints)}) for {ex.name}.")
    for i in range(shown):
        print(f"Hint {i + 1}/{len(hints)}:\n{hints[i]}\n")
    if shown < len(hints):
        print(f"(`pydl learn hint {ex.name}` again for the next one)")
    else:
        print(f"(no more hints: that was the last. Still stuck? `pydl learn solution {ex.name}` shows the "
              f"answer key -- try once more first)")
    return 0


def cmd_solution(args) -> int:
    ex = course.get(args.name)
    print(f"# Reference solution of {ex.name} ({ex.file}). Reading it is fine -- after trying.\n")
    sys.stdout.write(ex.solution())
    return 0


def cmd_doctor(args) -> int:
    checker.print_environment(checker.environment(), None, verbose=True)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("learn", help="the kernel-writing course (works without a GPU)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", help="folder for your exercise files (default ./pydl-exercises)")
    sub = p.add_subparsers(dest="learn_command", required=True)

    q = sub.add_parser("list", help="exercises and their status")
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("start", help="copy an exercise's starter into the workspace")
    q.add_argument("name", nargs="?", help="exercise name or number (default: the next unfinished one)")
    q.add_argument("--force", action="store_true", help="overwrite your file with a fresh starter")
    q.set_defaults(func=cmd_start)

    q = sub.add_parser("check", help="check your solution")
    q.add_argument("name", nargs="?", help="exercise (default: the one you last worked on)")
    q.add_argument("--file", help="check this file instead of the workspace's")
    q.add_argument("--no-gpu", action="store_true", help="skip the GPU levels even if a GPU is present")
    q.add_argument("--no-nvcc", action="store_true", help="skip compiling with nvcc (CUDA track)")
    q.add_argument("--timeout", type=float, default=120.0, help="seconds before a run is stopped (default 120)")
    q.set_defaults(func=cmd_check)

    q = sub.add_parser("hint", help="the next hint for an exercise")
    q.add_argument("name", nargs="?", help="exercise (default: the one you last worked on)")
    q.add_argument("--all", action="store_true", help="every hint at once")
    q.set_defaults(func=cmd_hint)

    q = sub.add_parser("solution", help="show the reference solution")
    q.add_argument("name")
    q.set_defaults(func=cmd_solution)

    q = sub.add_parser("doctor", help="the course's environment self-test")
    q.set_defaults(func=cmd_doctor)

    for q in sub.choices.values():  # --workspace also accepted after the sub-subcommand
        q.add_argument("--workspace", default=argparse.SUPPRESS, help="folder for your exercise files")
