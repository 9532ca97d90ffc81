"""The course's exercises, their files, and the learner's workspace.

Each exercise is a folder ``pydl/learn/exercises/NN_name/`` holding:

* ``exercise.py`` -- metadata (title, track, what it teaches, the file the learner edits, the function the
  checker calls) and ``cases(device)``: the test cases with their expected results;
* the *solution* file (``<name>.py`` for Triton, ``<name>.cu`` for CUDA) with the parts a learner writes
  between ``BEGIN SOLUTION`` / ``END SOLUTION`` marker comments;
* ``README.md`` (the task) and ``hints.md`` (hints separated by lines of ``---``, shown one at a time).

The starter is *generated* from the solution: every marked region is cut out (in Python, a ``pass`` takes
its place so the block stays valid). Lines inside a region that
start with ``#|`` (``//|`` in C++) are the exception: they are comments in the solution and become code in
the starter (a placeholder that keeps the starter runnable, e.g. ``#| acc = tl.zeros(...)``). So the
starter can never drift from the solution, and ``pydl learn solution`` shows the solution without markers.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

from .. import _env

ROOT = Path(__file__).resolve().parent / "exercises"
COMMON = ROOT / "_common"
DEFAULT_WORKSPACE = "pydl-exercises"
STATE_FILE = ".pydl-learn.json"
TRACKS = {"triton": "Triton (interpreter on a CPU, compiled on a GPU)",
          "cuda": "CUDA C++ (nvcc for the GPU; CPU emulation of the CUDA execution model)"}

_BEGIN = re.compile(r"^(\s*)(#|//) BEGIN SOLUTION\s*$")
_END = re.compile(r"^\s*(#|//) END SOLUTION\s*$")
_STARTER = re.compile(r"^(\s*)(#|//)\| ?(.*)$")


class MarkerError(ValueError):
    pass


def split_regions(text: str):
    """Yield ("plain", line) and ("region", [lines]) items of a solution file (lines keep their newline)."""
    lines = text.splitlines(keepends=True)
    out, region, begin_at = [], None, 0
    for no, line in enumerate(lines, 1):
        if _BEGIN.match(line):
            if region is not None:
                raise MarkerError(f"line {no}: BEGIN SOLUTION inside another region (opened at line {begin_at})")
            region, begin_at = [line], no
        elif _END.match(line):
            if region is None:
                raise MarkerError(f"line {no}: END SOLUTION without BEGIN")
            region.append(line)
            out.append(("region", region))
            region = None
        elif region is not None:
            region.append(line)
        elif _STARTER.match(line):
            raise MarkerError(f"line {no}: a starter placeholder (#| or //|) outside BEGIN/END SOLUTION")
        else:
            out.append(("plain", line))
    if region is not None:
        raise MarkerError(f"line {begin_at}: BEGIN SOLUTION never closed")
    return out


def starter_text(solution: str) -> str:
    """The solution with every marked region removed (``#|`` / ``//|`` placeholder lines uncommented)."""
    parts = []
    for kind, item in split_regions(solution):
        if kind == "plain":
            parts.append(item)
            continue
        placeholders = [m for m in map(_STARTER.match, item[1:-1]) if m]
        for m in placeholders:
            parts.append(m.group(1) + m.group(3) + "\n")
        begin = _BEGIN.match(item[0])
        if not placeholders and begin.group(2) == "#":
            parts.append(begin.group(1) + "pass  # your code here\n")  # keeps a Python block non-empty
    return "".join(parts)


def solution_text(solution: str) -> str:
    """The solution without markers and without the starter's placeholder lines."""
    parts = []
    for kind, item in split_regions(solution):
        if kind == "plain":
            parts.append(item)
        else:
            parts.extend(line for line in item[1:-1] if not _STARTER.match(line))
    return "".join(parts)


@dataclass
class Exercise:
    name: str
    number: int
    folder: Path
    module: ModuleType

    @property
    def track(self) -> str:
        return self.module.TRACK

    @property
    def title(self) -> str:
        return self.module.TITLE

    @property
    def teaches(self) -> str:
        return self.module.TEACHES

    @property
    def file(self) -> str:
        return self.module.FILE

    @property
    def entry(self) -> str:
        return self.module.ENTRY

    @property
    def learned(self) -> str:
        return getattr(self.module, "LEARNED", self.teaches)

    @property
    def gpu_only_bugs(self) -> Optional[str]:
        return getattr(self.module, "GPU_ONLY_BUGS", None)

    def gpu_only_note(self) -> str:
        """What the CPU levels of this exercise cannot show, in plain words."""
        if self.track == "triton":
            base = ("Triton's interpreter runs the programs of a launch one after another, so races between programs "
                    "cannot show on a CPU; masked-off lanes of a load without other= are NaN here, garbage on a GPU")
        else:
            base = ("the emulator's racecheck reports races, but it runs one thread at a time: timing between blocks "
                    "in flight, speed and the hardware's own numerics show only on a GPU")
        if self.gpu_only_bugs:
            return f"Only a GPU can reveal: {self.gpu_only_bugs} ({base})."
        return f"Nothing in this exercise depends on that, but note: {base}."

    @property
    def mutants(self) -> Dict[str, list]:
        return getattr(self.module, "MUTANTS", {})

    def solution_source(self) -> str:
        return (self.folder / self.file).read_text()

    def starter(self) -> str:
        return starter_text(self.solution_source())

    def solution(self) -> str:
        return solution_text(self.solution_source())

    def mutant(self, name: str) -> str:
        """The solution with one known bug put in (the course's tests check that the checker catches it)."""
        src = self.solution()
        for old, new in self.mutants[name]:
            if old not in src:
                raise MarkerError(f"{self.name}: mutant {name!r} does not apply: {old!r} not in the solution")
            src = src.replace(old, new)
        return src

    def readme(self) -> str:
        return (self.folder / "README.md").read_text()

    def hints(self) -> List[str]:
        p = self.folder / "hints.md"
        if not p.exists():
            return []
        return [h.strip() for h in re.split(r"^---\s*$", p.read_text(), flags=re.M) if h.strip()]


def _load_module(folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"pydl_learn_ex_{folder.name}", folder / "exercise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@lru_cache(maxsize=None)
def exercises() -> tuple:
    """Every exercise, in course order."""
    found = []
    for d in sorted(ROOT.iterdir()):
        m = re.match(r"^(\d+)_(\w+)$", d.name)
        if d.is_dir() and m and (d / "exercise.py").exists():
            found.append(Exercise(m.group(2), int(m.group(1)), d, _load_module(d)))
    return tuple(found)


def get(name: str) -> Exercise:
    for ex in exercises():
        if ex.name == name or f"{ex.number:02d}" == name or str(ex.number) == name:
            return ex
    names = ", ".join(e.name for e in exercises())
    raise KeyError(f"no exercise named {name!r}; the exercises are: {names}")


def next_of(ex: Exercise) -> Optional[Exercise]:
    all_ = exercises()
    i = all_.index(ex)
    return all_[i + 1] if i + 1 < len(all_) else None


# --------------------------------------------------------------------------------------------------
# Workspace and state
# --------------------------------------------------------------------------------------------------

class Workspace:
    """The learner's folder: one sub-folder per started exercise, plus a small JSON state file."""

    def __init__(self, path: Optional[str] = None):
        self.root = Path(path or _env.path("PYDL_LEARN_WORKSPACE") or DEFAULT_WORKSPACE).resolve()

    def folder(self, ex: Exercise) -> Path:
        return self.root / ex.name

    def file(self, ex: Exercise) -> Path:
        return self.folder(ex) / ex.file

    def load_state(self) -> dict:
        p = self.root / STATE_FILE
        if p.exists():
            try:
                return json.loads(p.read_text())
            except ValueError:
                return {}
        return {}

    def save_state(self, state: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))

    @staticmethod
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def status(self, ex: Exercise) -> str:
        f = self.file(ex)
        if not f.exists():
            return "todo"
        rec = self.load_state().get("passed", {}).get(ex.name)
        if rec and rec.get("digest") == self.digest(f):
            return "passing"
        return "started"

    def record(self, ex: Exercise, passed: bool, levels: list) -> None:
        st = self.load_state()
        passed_map = st.setdefault("passed", {})
        if passed:
            passed_map[ex.name] = {"digest": self.digest(self.file(ex)),
                                   "levels": [lv["name"] for lv in levels if lv["status"] == "pass"]}
        else:
            passed_map.pop(ex.name, None)
        st["last"] = ex.name
        self.save_state(st)

    def hints_shown(self, ex: Exercise) -> int:
        return int(self.load_state().get("hints", {}).get(ex.name, 0))

    def set_hints_shown(self, ex: Exercise, n: int) -> None:
        st = self.load_state()
        st.setdefault("hints", {})[ex.name] = n
        self.save_state(st)

    def last(self) -> Optional[str]:
        return self.load_state().get("last")
