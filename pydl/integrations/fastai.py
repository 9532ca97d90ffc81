"""``ActivationStats`` for fastai's ``Learner``: fastai's callback of that name, recorded by pydl.

    from pydl.integrations.fastai import ActivationStats      # instead of fastai.callback.hook's
    learn = Learner(dls, model, loss_func=..., cbs=ActivationStats(with_hist=True))
    learn.fit(1)
    learn.activation_stats.color_dim(0)                      # fastai's methods, fastai's meaning
    learn.activation_stats.plot_colorful_dimension(path="colorful.png")   # and pydl's views

Same constructor arguments where they make sense (``with_hist``, ``modules``, ``every``,
``include_paramless``, ``remove_end``), the same attribute name on the Learner (``activation_stats``), the
same accessors with the same return shapes (``stats``, ``layer_stats``, ``hist``) and plots
(``color_dim``, ``plot_layer_stats``). What differs is how the numbers are made: fastai's hook calls
``.item()`` three times per layer per batch (three host syncs) and keeps a histogram tensor per layer per
batch; here one fused ``pydl.act_stats`` pass per layer runs on the device and the results come to the host
once per ``chunk`` recorded batches. The numbers are the same: histograms exactly (``act_stats`` bins as
``torch.histc``), mean/std to float32 rounding (both reduce in float32, in different orders).

Near zero, which is which:

* ``near_zero`` in :attr:`stats` / :meth:`layer_stats` / :meth:`plot_layer_stats` is **fastai's**: the
  share of values with ``x <= 0.05`` (signed: for a conv or batch-norm output it also counts every negative
  value). It costs one extra comparison pass per layer; ``near_zero="abs"`` drops that pass and reports
  pydl's definition there instead.
* ``near_zero_abs`` (:meth:`layer_stats` with ``near_zero="abs"``, :attr:`data`'s ``near_zero_frac`` and
  pydl's :meth:`plot_layer_stats`-style views) is **pydl's**: ``|x| <= 0.05``. For ReLU outputs the two are
  equal.

pydl's own views: :attr:`data` (a :class:`pydl.debug.StatsData`: every statistic, out-of-range and NaN/Inf
counts), :meth:`plot_colorful_dimension`, :meth:`plot_dead` (the share of activations in the "dead" bins,
the course's ``get_min``), :meth:`save_npz`, :meth:`to_json`, :meth:`to_tensorboard`.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import require

_fastai_callback = require("fastai.callback.core", "fastai", "pydl.integrations.fastai")
from fastcore.foundation import L  # noqa: E402  (fastcore comes with fastai, checked just above)

from ..debug.hooks import leaf_modules  # noqa: E402
from ._recorder import BatchRecorder  # noqa: E402

__all__ = ["ActivationStats"]


class ActivationStats(_fastai_callback.Callback):
    """Record per-layer activation statistics of every ``every``-th training batch (``every=None``: every
    batch, as fastai) on the device with pydl's ``act_stats``. See the module docstring.

    ``modules``: the modules to hook (default, as fastai: every leaf module with parameters;
    ``include_paramless=True``: every leaf). ``with_hist``: accepted for compatibility; the histogram comes
    from the same pass as the other statistics, so it is always recorded. ``preset``: pydl's histogram
    preset (``fastai2019`` = fastai's ``histc(40, 0, 10)``). ``near_zero``: ``"fastai"`` (``x <= eps``,
    default) or ``"abs"`` (``|x| <= eps``, no extra pass). ``chunk``, ``max_records``, ``backend``: as
    :class:`pydl.debug.ActivationStats`.
    """
    order = -20  # as fastai's: before TrainEvalCallback advances train_iter in after_batch

    def __init__(self, with_hist: bool = False, modules=None, every: Optional[int] = None, remove_end: bool = True,
                 include_paramless: bool = False, preset="fastai2019", near_zero: str = "fastai", chunk: int = 32,
                 max_records: int = 10_000, backend: Optional[str] = None):
        if every is not None and not (isinstance(every, int) and every >= 1):
            raise ValueError(f"ActivationStats: every must be None or an int >= 1, got {every!r}")
        if near_zero not in ("fastai", "abs"):
            raise ValueError(f"ActivationStats: near_zero must be 'fastai' or 'abs', got {near_zero!r}")
        # fastai's Callback warns when an attribute shadows one of the Learner's (``learn.modules`` is the
        # model's method); this one is the callback's own, as in fastai's HookCallback, so set it directly
        self.__dict__["modules"] = modules
        self.with_hist, self.every, self.remove_end = with_hist, every, remove_end
        self.include_paramless, self.preset, self.near_zero = include_paramless, preset, near_zero
        self.chunk, self.max_records, self.backend = chunk, max_records, backend
        self.pydl_stats: Optional[BatchRecorder] = None

    # ---- fastai events
    def before_fit(self):
        if self.pydl_stats is not None:  # a second fit starts afresh, as fastai's stats do
            self.pydl_stats.remove()
        mods = list(self.modules) if self.modules is not None else leaf_modules(self.model, self.include_paramless)
        self.pydl_stats = BatchRecorder(self.model, mods, preset=self.preset, every=self.every or 1,
                                      chunk=self.chunk, max_records=self.max_records, backend=self.backend,
                                      count_le_eps=self.near_zero == "fastai")

    def before_batch(self):
        self.pydl_stats.begin(self.training)

    # fastai runs after_batch also when a callback cancels the batch (it is in a `finally`)

    def after_batch(self):
        self.pydl_stats.end()

    def after_train(self):
        self.pydl_stats.mark_epoch()

    def after_fit(self):
        if self.remove_end:
            self.pydl_stats.remove()

    # ---- fastai's accessors, fastai's shapes
    def _recorded(self) -> BatchRecorder:
        if self.pydl_stats is None:
            raise RuntimeError("ActivationStats: nothing recorded yet (fit the Learner first)")
        return self.pydl_stats

    @property
    def data(self):
        """Everything recorded, as a :class:`pydl.debug.StatsData` (pydl's definitions)."""
        return self._recorded().data

    def _idx(self, idx: Union[int, str]) -> int:
        return self.data.layer(idx)

    def _near_zero(self, how: Optional[str] = None):
        how = how or self.near_zero
        if how not in ("fastai", "abs"):
            raise ValueError(f"ActivationStats: near_zero must be 'fastai' or 'abs', got {how!r}")
        if how == "fastai" and self.near_zero == "abs":
            raise ValueError("ActivationStats: fastai's near zero (x <= eps) was not recorded: this callback was "
                             "made with near_zero='abs'")
        return self._recorded().le_eps_frac() if how == "fastai" else self.data.near_zero_frac

    @property
    def stats(self):
        """fastai's layout: an ``L`` with one entry per recorded batch, each a list with one dict per hooked
        layer: ``mean``, ``std`` (sample std), ``near_zero`` and ``hist`` (a float tensor of the preset's
        counts, on the CPU)."""
        d = self.data
        nz = self._near_zero()
        hist = torch.from_numpy(d.hist).float()
        return L([{"mean": float(d.mean[t, j]), "std": float(d.std[t, j]), "near_zero": float(nz[t, j]),
                   "hist": hist[t, j]} for j in range(len(d.names))] for t in range(len(d)))

    def layer_stats(self, idx, near_zero: Optional[str] = None):
        """``L(means, stds, near_zeros)`` of layer ``idx`` over the recorded batches (``near_zero="abs"``:
        pydl's ``|x| <= eps`` instead of the callback's choice)."""
        d, j = self.data, self._idx(idx)
        nz = self._near_zero(near_zero)
        return L(L(a[:, j].tolist()) for a in (d.mean, d.std, nz))

    def hist(self, idx) -> torch.Tensor:
        """fastai's colorful-dimension matrix: ``(bins, records)`` float, ``log1p`` of the counts."""
        return torch.from_numpy(self.data.hist[:, self._idx(idx)]).t().float().log1p()

    def color_dim(self, idx, figsize=(10, 5), ax=None):
        """The colorful dimension of one layer as fastai draws it (bins upwards, batches rightwards, no
        axes). Draws into ``ax`` when given, else into a new headless figure; returns the axes."""
        if ax is None:
            from ..debug.plots import new_figure

            ax = new_figure(figsize).subplots()
        ax.imshow(self.hist(idx).numpy(), origin="lower")
        ax.axis("off")
        return ax

    def plot_layer_stats(self, idx, path=None):
        """mean, std and % near zero (the callback's definition) of layer ``idx``; returns the three axes."""
        from ..debug.plots import new_figure, save_figure

        fig = new_figure((12, 3))
        axs = fig.subplots(1, 3)
        for o, ax, title in zip(self.layer_stats(idx), axs, ("mean", "std", "% near zero")):
            ax.plot(list(o))
            ax.set_title(title)
        save_figure(fig, path)
        return axs

    # ---- pydl's views
    def plot_dead(self, path=None, layers=None, of: str = "hist", **kw):
        """Per layer, the share of activations in the preset's dead bins (``[0, 0.5)`` for fastai2019).
        ``of="hist"`` (default here) divides by the in-range values, as the course's ``get_min`` does;
        ``of="all"`` by every value. Returns the Figure."""
        return self.data.plot_dead_chart(path, layers=layers, of=of, **kw)

    def plot_colorful_dimension(self, path=None, **kw):
        return self.data.plot_colorful_dimension(path, **kw)

    def plot_stats(self, path=None, **kw):
        """pydl's layer-stats plot of every layer (near zero there is ``|x| <= eps``)."""
        return self.data.plot_layer_stats(path, **kw)

    def save_npz(self, path) -> str:
        return self.data.save_npz(path)

    def to_json(self, path=None, hist: bool = True) -> str:
        return self.data.to_json(path, hist)

    def to_tensorboard(self, writer=None, log_dir=None, prefix: str = "activations"):
        return self.data.to_tensorboard(writer, log_dir, prefix)
