"""``ActivationStatsCallback`` for Lightning's ``Trainer``: pydl's activation statistics in any fit.

    from pydl.integrations.lightning import ActivationStatsCallback
    trainer = lightning.pytorch.Trainer(callbacks=[ActivationStatsCallback(every_n_steps=10)],
                                        logger=TensorBoardLogger("logs"))
    trainer.fit(module, loader)
    # TensorBoard: activations/<layer> histograms, activations_mean|_std|_near_zero/<layer> scalars;
    # <log dir>/colorful_dimension.png at the end of the fit; callback.data: everything, as StatsData

What runs when:

* every ``every_n_steps``-th **training batch** (counted by the callback from the start of the fit; the
  first batch is recorded) each hooked layer's output goes through one ``pydl.act_stats`` pass on the
  device. The callback drives the steps from ``on_train_batch_start`` / ``_end``, not from the module's
  forward: a ``training_step`` that calls a submodule (``self.net(x)``) is recorded all the same, and
  several forwards in one batch merge into one record. Validation, test and sanity-check batches are not
  recorded.
* the records come to the host once per ``chunk`` recorded batches (and at the end of the fit); then they
  are logged, each at the ``trainer.global_step`` its batch started at. A TensorBoard logger gets
  histograms through ``add_histogram_raw`` from the device-made counts (the out-of-range counts as two edge
  buckets, see :meth:`pydl.debug.StatsData.to_tensorboard`) and mean / std / near-zero scalars; any other
  logger gets the scalars through ``log_metrics``. Near zero here is pydl's ``|x| <= eps``.
* ``grad_flow=True``: on each recorded batch, mean and max ``|grad|`` of every weight
  (:func:`pydl.debug.grad_stats`, one host copy for all of them), logged as ``grad_mean/<param>`` and
  ``grad_max/<param>``, just before the optimizer step.
* ``dead_units=True``: at the end of the fit, :func:`pydl.debug.dead_units` on the last recorded training
  batch (the module's ``forward`` is called with the batch's input, in eval mode): the share of dead units
  per layer is logged as ``dead_units/<layer>``, the report kept in :attr:`dead_report` and its plot
  written next to the colorful dimension.
* ``colorful_png``: where the colorful-dimension PNG goes at the end of the fit (``"auto"``: the trainer's
  log dir, else its ``default_root_dir``; ``None``: no PNG). Only global rank 0 writes files.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from . import require

pl = require("lightning.pytorch", "lightning", "pydl.integrations.lightning")

from ..debug.gradflow import dead_units as _dead_units, grad_stats  # noqa: E402
from ..debug.hooks import first_tensor, leaf_modules  # noqa: E402
from ..debug.stats import StatsData  # noqa: E402
from ._recorder import BatchRecorder  # noqa: E402

__all__ = ["ActivationStatsCallback"]


class ActivationStatsCallback(pl.Callback):
    """Record pydl activation statistics every ``every_n_steps`` training batches and log them; see the
    module docstring. ``modules``: the modules to hook (default: the LightningModule's leaf modules with
    parameters; ``include_parameterless=True``: every leaf). ``preset`` and the other recorder arguments
    (``chunk``, ``max_records``, ``backend``) are :class:`pydl.debug.ActivationStats`'s. ``log_histograms``:
    TensorBoard histograms (with their mean/std/near-zero scalars, written together by
    :meth:`pydl.debug.StatsData.to_tensorboard`); ``log_scalars``: the scalars alone, for the other loggers
    and for TensorBoard when ``log_histograms`` is off. ``prefix``: the tag prefix."""

    def __init__(self, every_n_steps: int = 10, preset="fastai2019", modules=None, include_parameterless: bool = False,
                 log_histograms: bool = True, log_scalars: bool = True, grad_flow: bool = False,
                 dead_units: bool = False, colorful_png: Optional[str] = "auto", prefix: str = "activations",
                 chunk: int = 32, max_records: int = 10_000, backend: Optional[str] = None):
        if not (isinstance(every_n_steps, int) and every_n_steps >= 1):
            raise ValueError(f"ActivationStatsCallback: every_n_steps must be an int >= 1, got {every_n_steps!r}")
        if not (isinstance(prefix, str) and prefix):
            raise ValueError(f"ActivationStatsCallback: prefix must be a non-empty string, got {prefix!r}")
        self.every_n_steps, self.preset, self.modules = every_n_steps, preset, modules
        self.include_parameterless = include_parameterless
        self.log_histograms, self.log_scalars = log_histograms, log_scalars
        self.grad_flow, self.dead_units, self.colorful_png, self.prefix = grad_flow, dead_units, colorful_png, prefix
        self.chunk, self.max_records, self.backend = chunk, max_records, backend
        self.stats: Optional[BatchRecorder] = None
        self.dead_report = None
        self.colorful_path: Optional[str] = None
        self._global_step: Dict[int, int] = {}  # recorded batch -> trainer.global_step when it started
        self._logged = -1                        # last recorded batch already logged
        self._last_input = None

    # ---- Lightning events
    def on_fit_start(self, trainer, pl_module):
        if self.dead_units and type(pl_module).forward is pl.LightningModule.forward:
            raise ValueError("ActivationStatsCallback(dead_units=True) calls the LightningModule's forward on a "
                             "batch's input; define forward(x) in the module or pass dead_units=False")
        if self.stats is not None:  # a second fit records afresh
            self.stats.remove()
        mods = list(self.modules) if self.modules is not None else leaf_modules(pl_module, self.include_parameterless)
        self.stats = BatchRecorder(pl_module, mods, preset=self.preset, every=self.every_n_steps, chunk=self.chunk,
                                   max_records=self.max_records, backend=self.backend)
        self._global_step, self._logged, self._last_input, self.dead_report = {}, -1, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.stats.begin(pl_module.training)
        if self.stats.recording:
            self._global_step[self.stats.step - 1] = trainer.global_step
            if self.dead_units:
                self._last_input = first_tensor(batch)  # x of an (x, y) batch, the first tensor of a dict

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grad_flow and self.stats.recording:
            metrics = {}
            for name, (mean, mx) in grad_stats(pl_module).items():
                metrics[f"grad_mean/{name}"], metrics[f"grad_max/{name}"] = mean, mx
            self._log_metrics(trainer, metrics, self._global_step[self.stats.step - 1])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        recorded = self.stats.recording
        self.stats.end()
        if recorded and not self.stats._pending:  # this record completed a chunk, now on the host: log it
            self._log_new(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self.stats.mark_epoch()

    def on_fit_end(self, trainer, pl_module):
        self.stats.remove()  # also copies what is left to the host
        self._log_new(trainer)
        out_dir = self._out_dir(trainer)
        if self.dead_units and self._last_input is not None:
            self.dead_report = _dead_units(pl_module, self._last_input)
            dead = self.dead_report.dead()  # units dead on (almost) every value, the report's own threshold
            frac = {f"dead_units/{n}": len(dead[n]) / len(d) for n, d in self.dead_report.dead_frac.items() if len(d)}
            self._log_metrics(trainer, frac, trainer.global_step)
            if trainer.is_global_zero and out_dir is not None:
                self.dead_report.plot(path=os.path.join(out_dir, "dead_units.png"))
        if self.colorful_png is not None and trainer.is_global_zero and len(self.stats.data):
            path = os.path.join(out_dir, "colorful_dimension.png") if self.colorful_png == "auto" else self.colorful_png
            self.stats.plot_colorful_dimension(path=path)
            self.colorful_path = path

    def on_exception(self, trainer, pl_module, exception):
        if self.stats is not None:
            self.stats.remove()

    # ---- logging
    def _out_dir(self, trainer) -> Optional[str]:
        return trainer.log_dir or trainer.default_root_dir

    def _log_metrics(self, trainer, metrics: dict, step: int):
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def _log_new(self, trainer):
        """Log the records that came to the host since the last call, each at its batch's global step."""
        if not (self.log_histograms or self.log_scalars) or not trainer.loggers:
            return
        d = self.stats.data
        new = d.steps > self._logged
        if not new.any():
            return
        self._logged = int(d.steps[new].max())
        gsteps = [self._global_step.get(int(s), int(s)) for s in d.steps[new]]
        part = StatsData(d.names, d.preset, gsteps, d.fstats[new], d.counts[new], d.hist[new], every=d.every,
                         labels=d.labels)
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and self.log_histograms:
                # histograms and the three scalars, straight from the device-made counts
                part.to_tensorboard(logger.experiment, prefix=self.prefix)
            elif self.log_scalars:
                nz = part.near_zero_frac
                for t, step in enumerate(gsteps):
                    m = {}
                    for j, name in enumerate(part.names):
                        m[f"{self.prefix}_mean/{name}"] = float(part.mean[t, j])
                        m[f"{self.prefix}_std/{name}"] = float(part.std[t, j])
                        m[f"{self.prefix}_near_zero/{name}"] = float(nz[t, j])
                    logger.log_metrics(m, step=step)

    # ---- results
    @property
    def data(self) -> StatsData:
        """Everything recorded in the last fit (a :class:`pydl.debug.StatsData`)."""
        if self.stats is None:
            raise RuntimeError("ActivationStatsCallback: nothing recorded yet (run trainer.fit first)")
        return self.stats.data

    def plot_colorful_dimension(self, path=None, **kw):
        return self.data.plot_colorful_dimension(path, **kw)

    def plot_layer_stats(self, path=None, **kw):
        return self.data.plot_layer_stats(path, **kw)

    def plot_dead_chart(self, path=None, **kw):
        return self.data.plot_dead_chart(path, **kw)
