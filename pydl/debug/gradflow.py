"""Gradient flow and dead / saturated units.

* :func:`grad_stats` / :func:`plot_grad_flow`: after ``loss.backward()``, the mean and max of ``|grad|`` of
  every parameter, in model order. A healthy net shows gradients of similar magnitude in all layers;
  vanishing gradients show as means falling towards the input, exploding ones as huge maxima, and a layer
  with zero (or no) gradient is cut off from the loss.
* :func:`dead_units`: run some batches and report, per unit (channel, dim 1) of each activation module,
  the share of its outputs that are zero (``|x| <= eps``: a dead ReLU unit is zero for every input) and the
  share that sit at the ends of a bounded activation's range (sigmoid, tanh, hardtanh, ReLU6: saturated
  units pass almost no gradient). One ``act_stats(per_channel=True)`` pass per module per batch, summed on
  the device; one host copy at the end.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..ops.act_stats import act_stats
from .batches import batch_inputs, take_batches
from .hooks import first_tensor

__all__ = ["grad_stats", "plot_grad_flow", "dead_units", "DeadUnitReport", "plot_dead_units",
           "ACTIVATIONS"]


def grad_stats(model: nn.Module, skip_bias: bool = True) -> Dict[str, Tuple[float, float]]:
    """``{name: (mean |grad|, max |grad|)}`` for the parameters that require grad, in model order (biases
    skipped when ``skip_bias``; ``(nan, nan)`` for a parameter whose ``.grad`` is None). The reductions
    run on the device; one host copy brings all of them back."""
    names, vals = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or (skip_bias and name.endswith("bias")):
            continue
        names.append(name)
        if p.grad is None:
            vals.append(None)
        else:
            g = p.grad.detach().abs()
            vals.append(torch.stack([g.mean(), g.max()]).float())
    present = [v for v in vals if v is not None]
    if present and len({v.device for v in present}) == 1:
        host = iter(torch.stack(present).cpu().tolist())
    else:  # parameters on several devices: one copy each
        host = iter([v.cpu().tolist() for v in present])
    return {n: (float("nan"), float("nan")) if v is None else tuple(next(host)) for n, v in zip(names, vals)}


def plot_grad_flow(model_or_stats, path=None, log: bool = True, skip_bias: bool = True, dpi: int = 100):
    """Bar chart of ``max |grad|`` (light) and ``mean |grad|`` (dark) per parameter, input side on the left;
    parameters without a gradient are marked. Pass the model after ``backward()`` or a :func:`grad_stats`
    dict. Returns the Figure; PNG at ``path``."""
    from .figures import new_figure, save_figure

    st = model_or_stats if isinstance(model_or_stats, dict) else grad_stats(model_or_stats, skip_bias)
    names = list(st)
    mean = np.array([st[n][0] for n in names], dtype=float)
    mx = np.array([st[n][1] for n in names], dtype=float)
    fig = new_figure((max(6.0, 0.45 * len(names) + 2), 4.5))
    ax = fig.subplots()
    x = np.arange(len(names))
    floor = 1e-12 if log else 0.0  # a log axis cannot show 0: draw it at the floor, visibly flat
    ax.bar(x, np.nan_to_num(np.maximum(mx, floor), nan=floor), color="tab:cyan", alpha=0.6, label="max |grad|")
    ax.bar(x, np.nan_to_num(np.maximum(mean, floor), nan=floor), color="tab:blue", alpha=0.9,
           label="mean |grad|")
    for i in np.flatnonzero(np.isnan(mean)):
        ax.text(i, floor, "no grad", rotation=90, fontsize=7, ha="center", va="bottom", color="red")
    if log:
        ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("|grad|")
    ax.set_title("gradient flow")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi)


# --------------------------------------------------------------------------------------------------
# dead and saturated units
# --------------------------------------------------------------------------------------------------

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.Softsign,
               nn.LogSigmoid, nn.Tanhshrink)


def _bounds(m: nn.Module) -> Optional[Tuple[float, float]]:
    """The output range of a bounded activation (where saturation means something)."""
    if isinstance(m, nn.ReLU6):
        return 0.0, 6.0
    if isinstance(m, nn.Hardtanh):
        return float(m.min_val), float(m.max_val)
    if isinstance(m, (nn.Sigmoid, nn.Hardsigmoid)):
        return 0.0, 1.0
    if isinstance(m, (nn.Tanh, nn.Softsign)):
        return -1.0, 1.0
    return None


class DeadUnitReport:
    """Per layer: ``dead_frac[name]`` and ``saturated_frac[name]`` (C,) -- for each unit (channel, dim 1) the
    share of its outputs that are near zero / saturated (NaN where the layer has no saturation range);
    ``count[name]`` the values seen per unit."""

    def __init__(self, names, dead_frac, saturated_frac, count, eps, margin, bounds):
        self.names = list(names)
        self.dead_frac: Dict[str, np.ndarray] = dead_frac
        self.saturated_frac: Dict[str, np.ndarray] = saturated_frac
        self.count: Dict[str, np.ndarray] = count
        self.eps, self.margin, self.bounds = eps, margin, bounds

    def dead(self, threshold: float = 0.99) -> Dict[str, List[int]]:
        """Units near zero for at least ``threshold`` of their outputs (1.0: always zero, truly dead)."""
        return {n: np.flatnonzero(self.dead_frac[n] >= threshold).tolist() for n in self.names}

    def saturated(self, threshold: float = 0.99) -> Dict[str, List[int]]:
        return {n: np.flatnonzero(np.nan_to_num(self.saturated_frac[n]) >= threshold).tolist() for n in self.names}

    def to_dict(self, threshold: float = 0.99) -> dict:
        dead, sat = self.dead(threshold), self.saturated(threshold)
        return {n: {"units": int(len(self.dead_frac[n])), "dead": dead[n], "saturated": sat[n],
                    "dead_frac": self.dead_frac[n].tolist(),
                    "saturated_frac": [None if np.isnan(v) else float(v) for v in self.saturated_frac[n]],
                    "bounds": self.bounds[n]} for n in self.names}

    def summary(self, threshold: float = 0.99) -> str:
        dead, sat = self.dead(threshold), self.saturated(threshold)
        lines = [f"{'layer':<28}{'units':>7}{'dead':>7}{'saturated':>11}   (>= {threshold:.0%} of outputs; "
                 f"dead: |x| <= {self.eps:g})"]
        for n in self.names:
            s = "-" if self.bounds[n] is None else str(len(sat[n]))
            lines.append(f"{n:<28}{len(self.dead_frac[n]):>7}{len(dead[n]):>7}{s:>11}")
        return "\n".join(lines)

    def __repr__(self):
        return "DeadUnitReport\n" + self.summary()

    def plot(self, path=None, **kw):
        return plot_dead_units(self, path=path, **kw)


def _default_modules(model: nn.Module) -> List[nn.Module]:
    acts = [m for m in model.modules() if isinstance(m, ACTIVATIONS) or
            (next(m.children(), None) is None and "relu" in type(m).__name__.lower())]
    if acts:
        return acts
    from .hooks import leaf_modules

    return leaf_modules(model)


def dead_units(model: nn.Module, data, modules: Optional[Iterable[nn.Module]] = None, batches: Optional[int] = 1,
               eps: float = 0.0, margin: float = 0.01, bounds: Optional[Dict[str, Tuple[float, float]]] = None,
               eval_mode: bool = True) -> DeadUnitReport:
    """Per-unit dead/saturated report over ``batches`` batches of ``data`` (an ``(x, y)`` / ``x`` batch or an
    iterable of them; None = all). ``modules``: default the activation modules of ``model`` (leaf modules
    with parameters if it has none). ``eps``: "dead" is ``|x| <= eps`` (0: exactly zero, what a ReLU gives).
    ``bounds``: override ``{layer name: (lo, hi)}`` ranges for saturation (default from the module type).
    The model runs under no_grad in eval mode (flags restored)."""
    model_names = {id(m): n for n, m in model.named_modules()}
    mods = list(modules) if modules is not None else _default_modules(model)
    names = [model_names.get(id(m)) or f"{i}:{type(m).__name__}" for i, m in enumerate(mods)]
    bnd = {n: _bounds(m) for n, m in zip(names, mods)}
    bnd.update(bounds or {})
    acc: Dict[int, list] = {}

    def make_hook(j):
        lo_hi = bnd[names[j]]

        def hook(module, inputs, output):
            x = first_tensor(output)
            if x is None or not x.is_floating_point() or x.dim() < 2:
                return
            if lo_hi is None:
                lo, hi = -1e38, 1e38  # no range: below/above stay 0 (finite bounds that float32 holds)
            else:
                d = margin * (lo_hi[1] - lo_hi[0])
                lo, hi = lo_hi[0] + d, lo_hi[1] - d
            r = act_stats(x.detach(), 1, lo, hi, eps, per_channel=True)
            c = r.counts[:, [0, 1, 5, 6]]  # count, near_zero, below, above per channel
            acc[j] = [c] if j not in acc else [acc[j][0] + c]
        return hook

    flags = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(make_hook(j)) for j, m in enumerate(mods)]
    try:
        if eval_mode:
            model.eval()
        with torch.no_grad():
            for b in take_batches(data, batches):
                model(batch_inputs(b))
    finally:
        for h in handles:
            h.remove()
        for m, f in flags:
            m.training = f
    dead, sat, count = {}, {}, {}
    for j, n in enumerate(names):
        if j not in acc:
            dead[n], sat[n], count[n] = np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
            continue
        c = acc[j][0].cpu().numpy()
        n_ = np.maximum(c[:, 0], 1)
        count[n] = c[:, 0]
        dead[n] = c[:, 1] / n_
        sat[n] = (c[:, 2] + c[:, 3]) / n_ if bnd[n] is not None else np.full(len(c), np.nan)
    return DeadUnitReport(names, dead, sat, count, eps, margin, bnd)


def plot_dead_units(report: DeadUnitReport, path=None, threshold: float = 0.99, ncols: int = 4, dpi: int = 100):
    """Per layer: every unit's share of near-zero outputs (and of saturated ones, for bounded activations),
    sorted, with the ``threshold`` line. Returns the Figure; PNG at ``path``."""
    from .figures import new_figure, save_figure

    n = max(1, len(report.names))
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig = new_figure((3.4 * ncols, 2.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, report.names):
        d = np.sort(report.dead_frac[name])[::-1]
        ax.plot(d, label="near zero", lw=1.2)
        s = report.saturated_frac[name]
        if len(s) and not np.isnan(s).all():
            ax.plot(np.sort(s)[::-1], label="saturated", lw=1.2)
        ax.axhline(threshold, color="red", lw=0.8, ls="--")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name} ({len(report.dead(threshold)[name])}/{len(d)} dead)", fontsize=9)
        ax.set_xlabel("unit (sorted)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes[len(report.names):]:
        ax.set_axis_off()
    return save_figure(fig, path, dpi)
