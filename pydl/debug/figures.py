"""Figures of recorded activation statistics (the colorful dimension, layer stats, the dead chart) and the
bare-Figure helpers every pydl view draws with.

Every plot function takes ``path=``: when given, the figure is written there as a PNG. Every function
returns the matplotlib ``Figure``. The functions here take a :class:`pydl.debug.StatsData`;
:mod:`pydl.debug.plots` has the same ones for an ActivationStats or a saved NPZ too. (They live apart so that
StatsData's own ``plot_*`` methods can draw without the stats module and this one importing each other.)

Headless by construction: figures are made with ``matplotlib.figure.Figure`` directly, never through
``pyplot``. A bare ``Figure`` renders with the Agg canvas whatever the session's backend is, so nothing here
needs a display, nothing calls ``matplotlib.use`` (which would change the backend of a notebook or GUI
session that imported pydl), and no figure is left registered in pyplot's global list to leak memory over
a long run. matplotlib is imported only inside these functions: ``import pydl.debug`` stays light.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["plot_colorful_dimension", "plot_layer_stats", "plot_dead_chart", "new_figure", "save_figure"]


def new_figure(figsize=(8, 5)):
    """A pyplot-free matplotlib Figure (see the module docstring for why)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig, path, dpi: int = 100):
    """Write ``fig`` as PNG to ``path`` (creating the folder) when ``path`` is given; return ``fig``."""
    if path is not None:
        d = os.path.dirname(os.fspath(path))
        if d:
            os.makedirs(d, exist_ok=True)
        fig.savefig(path, dpi=dpi, format="png")
    return fig


def _layers(data, layers) -> list:
    if layers is None:
        return list(range(len(data.names)))
    return [data.layer(x) for x in layers]


def _epoch_lines(ax, data, **kw):
    for s in data.epoch_steps:
        ax.axvline(s - 0.5, **{"color": "white", "lw": 1.0, "ls": "--", **kw})


def _grid(n, ncols, size=(3.6, 2.8)):
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig = new_figure((size[0] * ncols, size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def plot_colorful_dimension(data, path=None, layers: Optional[Sequence] = None, cmap: str = "viridis",
                            log: Optional[bool] = None, ncols: int = 4, dpi: int = 100):
    """The "colorful dimension" (fastai 2019, after Stefano Giomo): for each layer, the histogram of its
    activations at every recorded step, stacked left to right; colour = ``log1p(count)`` (``log=False``:
    raw counts). Origin lower (small values at the bottom, y in activation units), an explicit colormap,
    dashed white lines at epoch boundaries. The share of values outside ``[lo, hi]`` is in the title."""
    idx = _layers(data, layers)
    p = data.preset
    log = p.log if log is None else log
    fig, axes = _grid(len(idx), ncols)
    if len(data) == 0:
        for ax in axes:
            ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
        return save_figure(fig, path, dpi)
    steps = data.steps
    # x extent in steps: records are evenly spaced (every), half a spacing on each side of a column
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    for ax, j in zip(axes, idx):
        h = data.hist[:, j, :].T.astype(np.float64)  # (bins, T): one column per record
        img = np.log1p(h) if log else h
        ax.imshow(img, origin="lower", aspect="auto", cmap=cmap, interpolation="nearest",
                  extent=(steps[0] - half, steps[-1] + half, p.lo, p.hi))
        _epoch_lines(ax, data)
        out = np.nanmean(data.outside_frac[:, j]) if len(data) else 0.0
        ax.set_title(f"{data.labels[j]}  (outside: {100 * out:.1f}%)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("|activation|" if p.abs else "activation", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"colorful dimension ({p.name}: {p.bins} bins over [{p.lo:g}, {p.hi:g}]"
                 f"{', log1p' if log else ''})", fontsize=10)
    return save_figure(fig, path, dpi)


def plot_layer_stats(data, path=None, layers: Optional[Sequence] = None, dpi: int = 100):
    """Three panels over steps: mean, std and % near zero (``|x| <= eps``) of each layer's output."""
    idx = _layers(data, layers)
    fig = new_figure((13, 3.8))
    axes = fig.subplots(1, 3)
    series = [(data.mean, "mean"), (data.std, "std"), (100 * data.near_zero_frac,
                                                        f"% near zero (|x| <= {data.preset.eps:g})")]
    for ax, (arr, title) in zip(axes, series):
        for j in idx:
            ax.plot(data.steps, arr[:, j], label=data.labels[j], lw=1.2)
        _epoch_lines(ax, data, color="grey")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path, dpi)


def plot_dead_chart(data, path=None, layers: Optional[Sequence] = None, of: str = "all", ncols: int = 4,
                    dpi: int = 100):
    """Per layer: the share of activations in the preset's "dead" bins at each step (fastai's ``get_min``
    plot), y from 0 to 1. ``of="hist"`` divides by the in-range values only, as fastai did."""
    idx = _layers(data, layers)
    fig, axes = _grid(len(idx), ncols, (3.4, 2.4))
    dead = data.dead_fraction(of) if len(data) else np.zeros((0, len(data.names)))
    a, b = data.preset.dead_bins
    e = data.edges
    for ax, j in zip(axes, idx):
        ax.plot(data.steps, dead[:, j], lw=1.2)
        _epoch_lines(ax, data, color="grey")
        ax.set_ylim(0, 1)
        ax.set_title(data.labels[j], fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"share of activations in [{e[a]:g}, {e[b]:g}) ('dead', {data.preset.name})", fontsize=10)
    return save_figure(fig, path, dpi)
