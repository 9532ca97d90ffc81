"""A tiny progress bar with no dependency: tqdm when it is installed, else one self-overwriting line on
stderr (throttled, so a fast loop does not spend its time printing)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def progress(it: Iterable[T], total: Optional[int] = None, desc: str = "", enable: bool = True,
             file=None, min_interval: float = 0.2) -> Iterator[T]:
    """Yield from ``it`` while showing ``desc  n/total  rate  eta``. ``enable=False`` is a no-op wrapper."""
    if not enable:
        yield from it
        return
    if total is None:
        try:
            total = len(it)  # type: ignore[arg-type]
        except TypeError:
            total = None
    try:
        from tqdm.auto import tqdm  # optional

        yield from tqdm(it, total=total, desc=desc, file=file)
        return
    except ImportError:
        pass
    out = file or sys.stderr
    t0 = last = time.perf_counter()
    n = 0

    def show(final=False):
        el = time.perf_counter() - t0
        rate = n / el if el > 0 else 0.0
        if total:
            w = 24
            done = int(w * n / total)
            eta = (total - n) / rate if rate > 0 else float("nan")
            line = f"\r{desc} [{'#' * done}{'.' * (w - done)}] {n}/{total} {rate:.1f}/s eta {eta:.0f}s"
        else:
            line = f"\r{desc} {n} {rate:.1f}/s"
        out.write(line + ("\n" if final else ""))
        out.flush()

    for x in it:
        yield x
        n += 1
        now = time.perf_counter()
        if now - last >= min_interval:
            last = now
            show()
    show(final=True)
