"""What every demo run shares: its report folder, its seed, its voice on the terminal, the backend it holds
for its own duration, and its ending (summary.json, the doctor section, report.html)."""
from __future__ import annotations

import contextlib
import json
import os
import time

import torch

from .. import backends
from ..doctor import doctor_report, doctor_text
from .report import pre, write_html


def backend_scope(backend: str | None):
    """``backend`` for the run only (a context, not the process default: the caller's choice is left as it
    was); None keeps whatever is current."""
    return backends.backend(backend) if backend else contextlib.nullcontext()


class DemoRun:
    """One run writing into ``out``: seeds torch, keeps the start time, and says what it does unless
    ``quiet`` (some stages take tens of seconds on a CPU: a silent minute looks like a hang)."""

    def __init__(self, out: str, seed: int = 0, quiet: bool = False):
        os.makedirs(out, exist_ok=True)
        self.out, self.quiet = out, quiet
        self.t_start = time.time()
        torch.manual_seed(seed)

    def say(self, *args) -> None:
        if not self.quiet:
            print(*args, flush=True)

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def seconds(self) -> float:
        return time.time() - self.t_start

    def finish(self, summary: dict, title: str, sections: list[tuple[str, str]],
               doctor: dict | None = None) -> dict:
        """Write summary.json, then report.html with a last section saying what ran where (``doctor``: a
        report taken earlier, else one taken now); returns ``summary`` with the report's path added."""
        with open(self.path("summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)
        doctor = doctor if doctor is not None else doctor_report()
        sections = sections + [("What ran where (pydl doctor)", pre(doctor_text(doctor)))]
        summary["report"] = write_html(self.out, title, sections)
        return summary
