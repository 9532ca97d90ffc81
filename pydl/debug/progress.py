"""pydl's progress bar: tqdm (a dependency of pydl), with the few defaults pydl's loops share -- the training
loops of the demo, the loss landscape's grid, the benchmark runner. One bar for all of them, so they look and
behave alike (rate, ETA, stderr, a notebook widget where one is available) and can all be silenced."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["progress"]

T = TypeVar("T")


def progress(it: Iterable[T] | None, total: int | None = None, desc: str = "", enable: bool = True,
             file=None, min_interval: float = 0.2) -> tqdm:
    """``it`` wrapped in a bar showing ``desc  n/total  rate  eta`` on stderr (``file``), redrawn at most
    every ``min_interval`` seconds so a fast loop does not spend its time printing. ``enable=False``: no bar,
    the items pass through. ``it=None`` with a ``total``: a bar advanced by hand with ``update()``."""
    # imported here, not at the top: `import pydl.debug` stays torch and numpy only
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, file=file, disable=not enable, mininterval=min_interval,
                dynamic_ncols=True)
