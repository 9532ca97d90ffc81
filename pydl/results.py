"""How pydl writes measurements down: the stamp every result carries (what machine, which versions, which
revision, when, how loaded) and the Markdown tables results are shown in. The benchmarks, ``pydl bench``,
the demo's layer timing and the GPU check's report all use these, so their files read alike and a number
found in one can be traced to the same facts as a number found in another.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout (or site-packages)


def machine_load() -> dict[str, float]:
    """The 1-minute load average and the core count (what ``busy_warning`` in benchmarks/common.py judges)."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:  # not available on this platform
        load1 = float("nan")
    return {"load1": load1, "cores": os.cpu_count() or 1}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The short git revision of the checkout pydl runs from; None for an installed pydl (or no git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git, or not a checkout: the stamp says None
        return None


def environment(device: str) -> dict:
    """Stamped on every result: device, versions, revision, date, threads, CPU and its load before the run."""
    import torch

    import pydl

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pydl": pydl.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        **machine_load(),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - no Triton, or one that fails to import: the stamp says None
        env["triton"] = None
    env["git"] = git_revision()
    return env


def stamp_line(env: dict) -> str:
    """The stamp as the one comment line a terminal table starts with."""
    return (f"# {env['date']}  device={env['device']} ({env.get('gpu') or env['cpu']})  threads={env['threads']}  "
            f"torch {env['torch']}  triton {env.get('triton')}  pydl {env['pydl']}@{env.get('git')}")


def blank_or(value, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec`` (and ``suffix``), or an empty cell where there is none (None)."""
    return "" if value is None else format(value, spec) + suffix


def ratio_text(ratio: float, q1: float | None = None, q3: float | None = None) -> str:
    """``1.23x (1.10-1.30)``: a speed-up with its quartiles, the way every printed ratio is shown (a ratio
    without them -- a result file older than the interleaved timing -- as ``1.23x``)."""
    if q1 is None or q3 is None:
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x ({q1:.2f}-{q3:.2f})"


def markdown_row(cells: Iterable) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence], align: str = "") -> str:
    """A Markdown table (readable as it is on a terminal too): ``columns`` the header, ``rows`` sequences of
    cells (None prints as an empty cell), ``align`` one letter per column, ``l`` or ``r`` (numbers), default
    left. No trailing newline."""
    align = align or "l" * len(columns)
    if len(align) != len(columns):
        raise ValueError(f"markdown_table: {len(columns)} columns but align {align!r}")
    lines = [markdown_row(columns), "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += [markdown_row("" if c is None else c for c in r) for r in rows]
    return "\n".join(lines)
