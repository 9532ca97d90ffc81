"""Occlusion sensitivity (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", 2014, Sec. 4.2):
hide one patch of the input at a time and watch the class score fall.

For each window position ``w`` (a ``ph x pw`` patch moved by ``stride``), the input is copied with the window
set to ``fill`` and the target's score (the logit, before softmax, as for CAM) is recorded. The map at a
pixel is the **mean drop** ``score(x) - score(x with w hidden)`` over the windows that cover it: positive
where hiding the pixel hurts the class (evidence for it), negative where hiding it helps. This is the
attribution captum's ``Occlusion`` returns, which the tests use as an independent check.

Unlike gradient maps, occlusion asks the model a direct counterfactual question, so it needs no access to
the model's inside -- at the price of one forward pass per window. The occluded copies are batched
(``batch_size`` at a time) and the per-window drops are spread back over the pixels with one ``einsum``
against the window masks, so the work is ``B * windows`` forward passes and nothing is copied to the host
until the end.

Window placement: positions ``0, stride, 2*stride, ...`` while the window fits, plus one window flush with the
far edge when the stride does not land there -- so every pixel is covered at least once (captum leaves such a
strip uncovered, which makes its map 0/0 = NaN there; both agree wherever the stride reaches the edge).

Side effects, deliberately none: eval mode during the scan (batch norm on running statistics, dropout off: a
window's score does not depend on the other windows in its batch), every module's ``training`` flag restored,
everything under ``torch.no_grad`` (no ``.grad`` touched, no graph kept), no hooks.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .cam import target_classes

__all__ = ["occlusion", "occlusion_windows", "plot_occlusion"]

IntPair = Union[int, Tuple[int, int]]


def _pair(v, name: str) -> Tuple[int, int]:
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, (tuple, list)) and len(v) == 2
                                                            and all(isinstance(a, int) and not isinstance(a, bool)
                                                                    for a in v))):
        raise TypeError(f"occlusion: {name} must be an int or a pair of ints, got {v!r}")
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _starts(size: int, window: int, stride: int) -> list:
    s = list(range(0, size - window + 1, stride))
    if s[-1] != size - window:
        s.append(size - window)  # the far strip the stride skipped: covered by one flush window
    return s


def occlusion_windows(height: int, width: int, patch: IntPair, stride: IntPair,
                      device=None, dtype=torch.float32) -> torch.Tensor:
    """The window masks, ``(P, H, W)``: 1 inside window ``p``, 0 elsewhere, in row-major window order."""
    ph, pw = _pair(patch, "patch")
    sh, sw = _pair(stride, "stride")
    if not (1 <= ph <= height and 1 <= pw <= width):
        raise ValueError(f"occlusion: patch must be between 1 and the input's size ({height}, {width}), "
                         f"got {(ph, pw)}")
    if sh < 1 or sw < 1:
        raise ValueError(f"occlusion: stride must be >= 1, got {(sh, sw)}")
    ys, xs = _starts(height, ph, sh), _starts(width, pw, sw)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    y0 = torch.tensor(ys, device=device)[:, None]
    x0 = torch.tensor(xs, device=device)[:, None]
    in_y = (rows >= y0) & (rows < y0 + ph)                  # (ny, H)
    in_x = (cols >= x0) & (cols < x0 + pw)                  # (nx, W)
    m = in_y[:, None, :, None] & in_x[None, :, None, :]     # (ny, nx, H, W)
    return m.reshape(-1, height, width).to(dtype)


def occlusion(model: nn.Module, x: torch.Tensor, target: Union[None, int, Sequence[int], torch.Tensor] = None,
              patch: IntPair = 4, stride: IntPair = 2, fill: Union[float, str] = 0.0, batch_size: int = 256,
              eval_mode: bool = True, return_logits: bool = False):
    """Occlusion-sensitivity maps of ``model`` for the batch ``x`` (B, C, H, W): a (B, H, W) float tensor, the
    mean drop of the target's score over the windows covering each pixel (see the module docstring).

    ``patch``, ``stride``: ints or (h, w) pairs. ``fill``: the value written into the window, on every channel
    (a float, or ``"mean"``: each image's own per-channel mean, which hides the content without adding an
    unusual intensity). ``target``: the class per sample (an int for all, a sequence, or None = each sample's
    top class on the unoccluded input). ``batch_size``: occluded copies per forward pass.
    ``return_logits=True`` returns ``(maps, logits, targets)``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"occlusion: x must be a floating (B, C, H, W) batch, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"occlusion: batch_size must be a positive int, got {batch_size!r}")
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"occlusion: fill must be a number or 'mean', got {fill!r}")
    elif isinstance(fill, bool) or not isinstance(fill, (int, float)):
        raise TypeError(f"occlusion: fill must be a number or 'mean', got {type(fill).__name__}")
    B, C, H, W = x.shape
    masks = occlusion_windows(H, W, patch, stride, device=x.device, dtype=x.dtype)   # (P, H, W)
    P = masks.shape[0]
    x = x.detach()
    fills = x.mean((2, 3), keepdim=True) if fill == "mean" else torch.full((B, C, 1, 1), float(fill),
                                                                            dtype=x.dtype, device=x.device)
    flags = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        with torch.no_grad():
            logits = model(x)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"occlusion: model must return (B, classes) scores, got {got}")
            try:
                tgt = target_classes(logits, target)
            except ValueError as e:   # the shared check names CAM; say which function was called
                raise ValueError(str(e).replace("cam:", "occlusion:", 1)) from None
            base = logits.gather(1, tgt[:, None])[:, 0]                                  # (B,)
            drops = torch.empty(B, P, dtype=logits.dtype, device=x.device)
            # all (sample, window) pairs in one flat list, cut into forward batches of batch_size
            for start in range(0, B * P, batch_size):
                pair = torch.arange(start, min(start + batch_size, B * P), device=x.device)
                b, p = pair // P, pair % P
                m = masks[p][:, None]                                                   # (n, 1, H, W)
                xo = x[b] * (1 - m) + fills[b] * m
                out = model(xo)
                drops[b, p] = base[b] - out.gather(1, tgt[b][:, None])[:, 0]
    finally:
        for mod, flag in flags:
            mod.training = flag
    cover = masks.sum(0)                                        # >= 1 everywhere by the window placement
    maps = torch.einsum("bp,phw->bhw", drops.to(masks.dtype), masks) / cover
    return (maps, logits, tgt) if return_logits else maps


def plot_occlusion(model: nn.Module, x: torch.Tensor, path=None, target=None, titles: Optional[Sequence[str]] = None,
                   ncols: int = 8, alpha: float = 0.5, cmap: str = "jet", dpi: int = 100, **kw):
    """Occlusion maps for the batch ``x`` drawn over the inputs with :func:`pydl.debug.overlay` (the CAM
    overlay). Each map is scaled by its own largest positive drop (``drop / max(drop)``, clipped to [0, 1]):
    hot = hiding this region lowers the class score most; regions whose hiding *raises* the score stay
    cold. Inputs with other than 1 or 3 channels are shown as their channel mean. ``kw`` goes to
    :func:`occlusion` (``patch``, ``stride``, ``fill``, ...). Returns the Figure; PNG at ``path``."""
    from .cam import overlay
    from .figures import new_figure, save_figure

    maps, logits, tgt = occlusion(model, x, target=target, return_logits=True, **kw)
    top = maps.flatten(1).amax(1).clamp_min(torch.finfo(maps.dtype).tiny)[:, None, None]
    heat = (maps / top).clamp(0, 1)
    n = len(x)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig = new_figure((1.7 * ncols, 1.9 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i in range(n):
        img = x[i] if x.shape[1] in (1, 3) else x[i].mean(0)   # overlay draws grey or RGB images
        axes[i].imshow(overlay(img, heat[i], alpha=alpha, cmap=cmap))
        t = titles[i] if titles is not None else f"class {int(tgt[i])}: max drop {float(maps[i].max()):.2f}"
        axes[i].set_title(t, fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_axis_off()
    return save_figure(fig, path, dpi)
