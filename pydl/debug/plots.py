"""Plots of recorded activation statistics -- the colorful dimension, layer stats, the dead chart -- from an
ActivationStats, a StatsData or the path of a saved NPZ.

The drawing is :mod:`pydl.debug.figures` (which StatsData's ``plot_*`` methods call directly); this module
adds the choice of input. ``new_figure`` / ``save_figure``, the pyplot-free Figure helpers every pydl view
uses, are re-exported from there.
"""
from __future__ import annotations

import functools
import os

from . import figures
from .figures import new_figure, save_figure
from .stats import ActivationStats, StatsData

__all__ = ["plot_colorful_dimension", "plot_layer_stats", "plot_dead_chart", "new_figure", "save_figure"]


def _as_data(stats):
    """Accept an ActivationStats, a StatsData or the path of a saved NPZ."""
    if isinstance(stats, ActivationStats):
        return stats.data
    if isinstance(stats, StatsData):
        return stats
    if isinstance(stats, (str, os.PathLike)):
        return StatsData.load_npz(stats)
    raise TypeError(f"expected ActivationStats, StatsData or an .npz path, got {type(stats).__name__}")


def _from_any_input(draw):
    """``draw`` (a function of :mod:`pydl.debug.figures`, taking a StatsData first) for any input that
    :func:`_as_data` accepts; same name, signature and docstring."""
    @functools.wraps(draw)
    def plot(stats, *args, **kw):
        return draw(_as_data(stats), *args, **kw)

    return plot


plot_colorful_dimension = _from_any_input(figures.plot_colorful_dimension)
plot_layer_stats = _from_any_input(figures.plot_layer_stats)
plot_dead_chart = _from_any_input(figures.plot_dead_chart)
