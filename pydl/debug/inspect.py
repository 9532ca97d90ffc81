"""Looking inside conv layers: feature-map grids for one input (what Zeiler & Fergus, "Visualizing and
Understanding Convolutional Networks", 2014, look at before their deconvnet projections) and first-layer
filter images (their Fig. 2 / AlexNet's conv1 picture: on natural images, trained first-layer filters
become oriented edges and colour blobs; noise there means under-training or too high a learning rate).

Both render with a pyplot-free Figure (see :mod:`pydl.debug.plots`) and write a PNG to ``path=``.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from .hooks import first_tensor

__all__ = ["feature_maps", "plot_feature_maps", "first_conv", "plot_filters"]


def feature_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, eval_mode: bool = True) -> torch.Tensor:
    """``layer``'s output for input ``x`` (a detached copy), from one forward of ``model`` under no_grad, in
    eval mode by default; every module's ``training`` flag is restored afterwards."""
    if not any(m is layer for m in model.modules()):
        raise ValueError("feature_maps: layer is not a submodule of model")
    got = {}

    def grab(module, inputs, output):
        t = first_tensor(output)
        # cloned now: an in-place op later in the forward would otherwise change what we show
        got["out"] = None if t is None else t.detach().clone()

    flags = [(m, m.training) for m in model.modules()]
    h = layer.register_forward_hook(grab)
    try:
        if eval_mode:
            model.eval()
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
        for m, f in flags:
            m.training = f
    if got.get("out") is None:
        raise ValueError("feature_maps: the layer did not run (or returned no tensor) during the forward")
    return got["out"]


def plot_feature_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, path=None, index: int = 0,
                      max_maps: int = 64, ncols: int = 8, cmap: str = "viridis", show_input: bool = True,
                      dpi: int = 100):
    """A grid of ``layer``'s channel maps for sample ``index`` of ``x`` (the first ``max_maps`` channels,
    each on its own colour scale, titled with its mean activation), after the input image when
    ``show_input``. Returns the Figure; PNG at ``path``."""
    from .cam import to_hwc01
    from .figures import new_figure, save_figure

    fm = feature_maps(model, layer, x)
    if fm.dim() != 4:
        raise ValueError(f"plot_feature_maps: layer output must be (B, C, h, w), got {tuple(fm.shape)}")
    maps = fm[index, :max_maps].float().cpu().numpy()
    n = len(maps) + (1 if show_input else 0)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig = new_figure((1.6 * ncols, 1.7 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    k = 0
    if show_input:
        img = x[index]
        if img.dim() == 3 and img.shape[0] in (1, 3):
            axes[0].imshow(to_hwc01(img))
        axes[0].set_title("input", fontsize=7)
        k = 1
    for c, m in enumerate(maps):
        ax = axes[k + c]
        ax.imshow(m, cmap=cmap, interpolation="nearest")
        ax.set_title(f"{c}: {m.mean():.2f}", fontsize=6)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(f"{type(layer).__name__} feature maps ({fm.shape[1]} channels, {fm.shape[2]}x{fm.shape[3]})",
                 fontsize=9)
    return save_figure(fig, path, dpi)


def first_conv(model: nn.Module) -> nn.Module:
    """The first Conv1d/2d/3d module of ``model`` (in registration order)."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m
    raise ValueError("first_conv: the model has no conv layer")


def plot_filters(model_or_conv: nn.Module, path=None, max_filters: int = 64, ncols: int = 8,
                 cmap: str = "gray", dpi: int = 100):
    """Images of a conv layer's filters (default: the model's first conv). With 3 input channels each
    filter is shown as an RGB image; otherwise as the mean over its input channels in ``cmap``. Each filter
    is scaled by its own min and max (only the pattern matters, not the scale). Returns the Figure."""
    from .figures import new_figure, save_figure

    conv = model_or_conv if isinstance(model_or_conv, nn.modules.conv._ConvNd) else first_conv(model_or_conv)
    w = conv.weight.detach().float().cpu()
    if w.dim() != 4:
        raise ValueError(f"plot_filters: needs a 2D conv (weight of rank 4), got rank {w.dim()}")
    w = w[:max_filters]
    n = len(w)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig = new_figure((1.2 * ncols, 1.3 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, f in enumerate(w):
        img = f.permute(1, 2, 0).numpy() if f.shape[0] == 3 else f.mean(0).numpy()
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        axes[i].imshow(img, cmap=None if img.ndim == 3 else cmap, interpolation="nearest", vmin=0, vmax=1)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(f"filters of {type(conv).__name__}{tuple(conv.weight.shape)}", fontsize=9)
    return save_figure(fig, path, dpi)
