"""Top-activating patches (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", 2014, Fig. 2):
for chosen channels of a conv layer, the ``k`` inputs of a whole data set that excite each channel most, cut
down to the part of the input that channel can see.

**Receptive fields, computed from the layers.** A unit at position ``i`` of a layer with kernel ``k``,
stride ``s``, padding ``p`` and dilation ``d`` reads positions ``i*s - p ... i*s - p + d*(k-1)`` of its input.
If a unit of that input sees the input-image pixels ``[u*J + O, u*J + O + R - 1]``, composing the two gives,
per axis::

    J' = s * J                       (jump: image pixels between neighbouring units)
    O' = O - p * J                   (offset: image row of the first pixel unit 0 sees; < 0 means padding)
    R' = R + d * (k - 1) * J         (size of the field)

starting from the image itself (``J = 1, O = 0, R = 1``). :func:`receptive_field` runs one sample through the
model with hooks on every module, takes the modules that really ran up to ``layer`` in call order, and folds
them: convolutions and max/avg pooling by their attributes, modules that keep the spatial size (batch norm,
activations, dropout) as pointwise. It refuses what it cannot compute exactly -- a module that changes the
spatial size without known geometry, or a model that is not a chain up to ``layer`` (a branch or skip
connection; a residual block's field depends on the path) -- with a ValueError.

**Running top-k on the device.** :class:`TopPatches` hooks ``layer``; per batch it takes each sample's
strongest position per channel (one image contributes at most one patch per channel, as in the paper's
figures), keeps the batch's best ``k`` per channel, crops their receptive fields from the batch's input
(pixels outside the image are NaN), and merges them with the best ``k`` so far by one ``topk``. Values,
sample numbers, positions and patches all stay on the input's device: no per-batch copy to the host or
``.item()``; one copy at :meth:`TopPatches.result`. Sample numbers count inputs in the order the model saw
them, so with a shuffling loader use the stored patches, not the numbers, to look at the images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batches import batch_inputs, take_batches
from .hooks import first_tensor

__all__ = ["ReceptiveField", "receptive_field", "fold_receptive_field", "layer_geometry", "TopPatches",
           "TopPatchesResult", "top_patches", "plot_top_patches"]

Pair = Tuple[int, int]


@dataclass(frozen=True)
class ReceptiveField:
    """Per axis (y, x): ``size`` R, ``jump`` J, ``offset`` O -- layer unit ``(i, j)`` sees image rows
    ``i*Jy + Oy ... i*Jy + Oy + Ry - 1`` and columns likewise (before clipping to the image).
    ``assumed_pointwise``: names of unknown modules that kept the spatial size and were treated as
    pointwise."""
    size: Pair = (1, 1)
    jump: Pair = (1, 1)
    offset: Pair = (0, 0)
    assumed_pointwise: Tuple[str, ...] = field(default=())

    def box(self, i: int, j: int, height: Optional[int] = None, width: Optional[int] = None):
        """``(y0, y1, x0, x1)``, end exclusive, of unit ``(i, j)``; clipped to the image when its size is given."""
        y0, x0 = i * self.jump[0] + self.offset[0], j * self.jump[1] + self.offset[1]
        y1, x1 = y0 + self.size[0], x0 + self.size[1]
        # clipping both ends into [0, size]: a field wholly in the padding becomes an empty box, not y1 < y0
        if height is not None:
            y0, y1 = min(max(0, y0), height), min(max(0, y1), height)
        if width is not None:
            x0, x1 = min(max(0, x0), width), min(max(0, x1), width)
        return y0, y1, x0, x1


def _two(v) -> Pair:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def layer_geometry(m: nn.Module):
    """``(kernel, stride, padding, dilation)`` as (y, x) pairs for a 2-D conv or max/avg pooling module
    (pydl's ``ConvBnAct`` by its conv), else None."""
    from ..nn import ConvBnAct

    if isinstance(m, ConvBnAct):
        m = m.conv
    if isinstance(m, nn.modules.conv._ConvNd):
        if len(m.kernel_size) != 2:
            return None
        k, s, d = _two(m.kernel_size), _two(m.stride), _two(m.dilation)
        if isinstance(m.padding, str):
            # "valid" = none; "same" (stride 1 only) pads d*(k-1) in total, the smaller half first, as torch does
            p = (0, 0) if m.padding == "valid" else tuple((di * (ki - 1)) // 2 for ki, di in zip(k, d))
        else:
            p = _two(m.padding)
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            return None  # a transposed conv spreads a unit over the image: no box of this form
        return k, s, p, d
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k = _two(m.kernel_size)
        s = _two(m.stride if m.stride is not None else m.kernel_size)
        d = _two(getattr(m, "dilation", 1))
        return k, s, _two(m.padding), d
    return None


def fold_receptive_field(layers: Iterable[nn.Module]) -> ReceptiveField:
    """The receptive field after a chain of modules, folded with the recurrence in the module docstring.
    Modules without known geometry are taken as pointwise (this function has no shapes to check that with;
    :func:`receptive_field` does)."""
    R, J, O = [1, 1], [1, 1], [0, 0]
    for m in layers:
        g = layer_geometry(m)
        if g is None:
            continue
        k, s, p, d = g
        for a in (0, 1):
            O[a] -= p[a] * J[a]
            R[a] += d[a] * (k[a] - 1) * J[a]
            J[a] *= s[a]
    return ReceptiveField(tuple(R), tuple(J), tuple(O))


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape[-2:] == b.shape[-2:])


def receptive_field(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> ReceptiveField:
    """``layer``'s receptive field in ``model``'s input, from the modules that run on one sample of ``x``
    (B, C, H, W) up to ``layer`` (see the module docstring). No grad, eval mode, flags and hooks restored."""
    if not any(m is layer for m in model.modules()):
        raise ValueError("receptive_field: layer is not a submodule of model")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"receptive_field: x must be a (B, C, H, W) batch, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    calls: List[dict] = []
    stack: List[int] = []
    state = {"done": False}

    def pre(m, args):
        if state["done"]:
            return
        if stack:
            calls[stack[-1]]["leaf"] = False   # something ran inside the caller: it is not where geometry sits
        stack.append(len(calls))
        calls.append({"m": m, "in": first_tensor(args), "leaf": True, "out": None})

    def post(m, args, out):
        if state["done"]:
            return
        calls[stack.pop()]["out"] = first_tensor(out)
        if m is layer:
            state["done"] = True

    handles = []
    flags = [(m, m.training) for m in model.modules()]
    x1 = x[:1].detach()
    try:
        for m in model.modules():
            if m is not model:
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
        model.eval()
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
        for m, f in flags:
            m.training = f
    if layer is not model and not state["done"]:
        raise ValueError("receptive_field: layer did not run during the model's forward")
    leaves = [c for c in calls if c["leaf"]]
    prev = x1
    assumed = []
    for c in leaves:
        name = type(c["m"]).__name__
        t_in, t_out = c["in"], c["out"]
        if t_in is None or t_out is None or t_in.dim() != 4 or t_out.dim() != 4:
            raise ValueError(f"receptive_field: {name} before the layer does not map a (B, C, H, W) tensor to one")
        if not _same_storage(t_in, prev):
            raise ValueError(f"receptive_field: the model is not a chain up to the layer ({name} does not take "
                             f"the previous module's output: a branch, a skip connection or a tensor op between "
                             f"modules); fold the path you mean with fold_receptive_field([...])")
        if layer_geometry(c["m"]) is None:
            if t_in.shape[-2:] != t_out.shape[-2:]:
                raise ValueError(f"receptive_field: {name} changes the spatial size {tuple(t_in.shape[-2:])} -> "
                                 f"{tuple(t_out.shape[-2:])} and its geometry is unknown (known: 2-D conv, "
                                 f"MaxPool2d, AvgPool2d)")
            assumed.append(name)
        prev = t_out
    rf = fold_receptive_field(c["m"] for c in leaves)
    known_pointwise = ("BatchNorm", "ReLU", "GeneralRelu", "Dropout", "Identity", "SiLU", "GELU", "Tanh",
                       "Sigmoid", "ELU", "LeakyReLU", "Hardswish", "Mish")
    unknown = tuple(n for n in assumed if not any(n.startswith(k) or n.endswith(k) for k in known_pointwise))
    return ReceptiveField(rf.size, rf.jump, rf.offset, unknown)


@dataclass
class TopPatchesResult:
    """Host copies, per channel (rows, in ``channels`` order) and rank (columns, best first): ``values``
    (n, k) activations, ``samples`` (n, k) sample numbers in the order the model saw them, ``positions``
    (n, k, 2) unit (row, col) in the layer's output, ``boxes`` (n, k, 4) ``(y0, y1, x0, x1)`` in the image
    (clipped, end exclusive), ``patches`` (n, k, C, Ry, Rx) the receptive fields (NaN outside the image).
    Ranks never filled (fewer samples than k) have sample -1."""
    channels: List[int]
    values: np.ndarray
    samples: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    patches: np.ndarray
    rf: ReceptiveField
    image_size: Pair


class TopPatches:
    """Context manager: while active, every forward of ``model`` updates the top-``k`` patches of
    ``channels`` (default: all) of ``layer``'s output. Use :func:`top_patches` to run it over a data set.

        with TopPatches(model, model.conv3, channels=range(8), k=9) as tp:
            for xb, _ in loader:
                model(xb)
        res = tp.result()

    The receptive field is computed on the first batch (one extra forward of one sample, hooks removed).
    Hooks are removed on exit; the model's ``training`` flags are not touched (set eval mode yourself, or use
    :func:`top_patches`).
    """

    def __init__(self, model: nn.Module, layer: nn.Module, channels: Optional[Sequence[int]] = None, k: int = 9):
        if not any(m is layer for m in model.modules()):
            raise ValueError("TopPatches: layer is not a submodule of model")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"TopPatches: k must be a positive int, got {k!r}")
        if channels is not None:
            channels = list(channels)
            if not channels or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0
                                       for c in channels):
                raise ValueError(f"TopPatches: channels must be a non-empty sequence of ints >= 0, got {channels!r}")
        self.model, self.layer, self.k, self.channels = model, layer, k, channels
        self.rf: Optional[ReceptiveField] = None
        self.seen = 0
        self._x = None
        self._handles = []
        self._tracing = False
        self._state = None
        self._ch = None

    def __enter__(self):
        self._handles = [self.model.register_forward_pre_hook(self._grab_input),
                         self.layer.register_forward_hook(self._update)]
        return self

    def __exit__(self, *exc):
        self.remove()

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        self._x = None

    def _grab_input(self, module, args):
        if self._tracing:
            return
        x = first_tensor(args)
        if x is None or x.dim() != 4:
            raise ValueError(f"TopPatches: the model's input must be a (B, C, H, W) tensor, got "
                             f"{None if x is None else tuple(x.shape)}")
        if self.rf is None:
            self._tracing = True   # the tracing forward must not feed the top-k
            try:
                self.rf = receptive_field(self.model, self.layer, x)
            finally:
                self._tracing = False
            self.image_size = tuple(x.shape[-2:])
        elif tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"TopPatches: every batch must have the first batch's image size {self.image_size}, "
                             f"got {tuple(x.shape[-2:])}")
        self._x = x.detach()

    def _update(self, module, args, output):
        if self._tracing or self._x is None:
            return
        a = first_tensor(output)
        if a is None or a.dim() != 4:
            raise ValueError(f"TopPatches: the layer's output must be (B, C, h, w), got "
                             f"{None if a is None else tuple(a.shape)}")
        a = a.detach()
        if self.channels is None:
            self.channels = list(range(a.shape[1]))
        elif max(self.channels) >= a.shape[1]:
            raise ValueError(f"TopPatches: channels must be < the layer's {a.shape[1]} channels, "
                             f"got {max(self.channels)}")
        x, self._x = self._x, None
        B, w = a.shape[0], a.shape[3]
        self._w = w
        if self._ch is None or self._ch.device != a.device:
            self._ch = torch.as_tensor(self.channels, device=a.device)   # made once: no copy per batch
        ch = self._ch
        # each sample's strongest unit per channel, then the batch's best k per channel: (n, kb)
        v, pos = a.index_select(1, ch).flatten(2).float().max(2)          # (B, n)
        kb = min(self.k, B)
        v, b = v.t().topk(kb, dim=1)                                     # (n, kb), b: sample in batch
        pos = pos.t().gather(1, b)
        patches = self._crop(x, b, pos, a.shape[2], w)
        samples = b + self.seen
        self.seen += B
        if self._state is None:
            self._state = (v, samples, pos, patches)
        else:
            v0, s0, p0, c0 = self._state
            v, samples, pos, patches = (torch.cat([v0, v], 1), torch.cat([s0, samples], 1),
                                        torch.cat([p0, pos], 1), torch.cat([c0, patches], 1))
        if v.shape[1] > self.k:
            v, keep = v.topk(self.k, dim=1)
            samples, pos = samples.gather(1, keep), pos.gather(1, keep)
            patches = patches[torch.arange(len(keep), device=keep.device)[:, None], keep]
        self._state = (v, samples, pos, patches)

    def _crop(self, x: torch.Tensor, b: torch.Tensor, pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The receptive fields of units ``pos`` (flat, row-major over the layer's ``h x w``) in samples ``b``
        of ``x``: (n, kb, C, Ry, Rx), NaN where the field hangs over the image's border."""
        (Ry, Rx), (Jy, Jx), (Oy, Ox) = self.rf.size, self.rf.jump, self.rf.offset
        H, W = x.shape[-2:]
        # pad so that the fields of the first and the last unit fit (padding can exceed the kernel, so the
        # field's size is not a bound): an index into the padded image is then never negative, which would
        # silently wrap around to the far side
        top, left = max(0, -Oy), max(0, -Ox)
        bottom, right = max(0, (h - 1) * Jy + Oy + Ry - H), max(0, (w - 1) * Jx + Ox + Rx - W)
        xp = F.pad(x.float(), (left, right, top, bottom), value=float("nan"))
        y0 = (pos // w) * Jy + Oy + top
        x0 = (pos % w) * Jx + Ox + left
        rows = y0[..., None, None] + torch.arange(Ry, device=x.device)[:, None]    # (n, kb, Ry, 1)
        cols = x0[..., None, None] + torch.arange(Rx, device=x.device)[None, :]    # (n, kb, 1, Rx)
        out = xp[b[..., None, None], :, rows, cols]                                 # (n, kb, Ry, Rx, C)
        return out.permute(0, 1, 4, 2, 3)

    def result(self) -> TopPatchesResult:
        """Copy the running top-k to the host (the one device-to-host transfer)."""
        if self._state is None:
            raise ValueError("TopPatches: no batch has passed through the layer yet")
        v, s, pos, p = (t.cpu() for t in self._state)
        n, k = v.shape
        pad = self.k - k                    # fewer samples than k so far: unfilled ranks
        if pad:
            v = torch.cat([v, torch.full((n, pad), float("-inf"))], 1)
            s = torch.cat([s, torch.full((n, pad), -1, dtype=s.dtype)], 1)
            pos = torch.cat([pos, torch.zeros((n, pad), dtype=pos.dtype)], 1)
            p = torch.cat([p, torch.full((n, pad) + tuple(p.shape[2:]), float("nan"))], 1)
        w = self._w
        iy, ix = (pos // w).numpy(), (pos % w).numpy()
        H, W = self.image_size
        (Ry, Rx), (Jy, Jx), (Oy, Ox) = self.rf.size, self.rf.jump, self.rf.offset
        y0, x0 = iy * Jy + Oy, ix * Jx + Ox
        boxes = np.stack([np.clip(y0, 0, H), np.clip(y0 + Ry, 0, H), np.clip(x0, 0, W), np.clip(x0 + Rx, 0, W)], -1)
        return TopPatchesResult(list(self.channels), v.numpy(), s.numpy(), np.stack([iy, ix], -1), boxes,
                                p.numpy(), self.rf, (H, W))


def top_patches(model: nn.Module, layer: nn.Module, data, channels: Optional[Sequence[int]] = None, k: int = 9,
                max_batches: Optional[int] = None, device=None, eval_mode: bool = True) -> TopPatchesResult:
    """Run ``model`` over ``data`` (a batch tensor, an ``(x, y)`` tuple, or an iterable of batches or of
    ``(x, y)`` pairs such as a DataLoader; ``max_batches`` to stop early; ``device`` to move each batch) and
    return the top-``k`` patches of ``layer``'s ``channels`` (see :class:`TopPatches`). Eval mode by default, under
    no_grad; every module's ``training`` flag is restored and every hook removed."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        with torch.no_grad(), TopPatches(model, layer, channels, k) as tp:
            for b in take_batches(data, max_batches):
                xb = batch_inputs(b)
                model(xb if device is None else xb.to(device))
    finally:
        for m, f in flags:
            m.training = f
    return tp.result()


def plot_top_patches(res: TopPatchesResult, path=None, max_channels: int = 16, cmap: str = "gray",
                     dpi: int = 100):
    """One row per channel, its ``k`` patches best first, each labelled with its activation. All patches share
    one intensity scale (the min and max over every shown pixel), so rows can be compared; grey or RGB by the
    input's channels (others: their mean); the part of a field outside the image is flat grey, ranks never
    filled are blank. The patches are tiled into one mosaic image (one ``imshow``, not an axes per
    patch: a 16 x 9 grid of axes takes seconds to lay out). Returns the Figure; PNG at ``path``."""
    import matplotlib

    from .figures import new_figure, save_figure

    rows = min(len(res.channels), max_channels)
    k = res.values.shape[1]
    p = res.patches[:rows].astype(np.float64)                  # (rows, k, C, Ry, Rx)
    finite = p[np.isfinite(p)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    p = (p - lo) / (hi - lo) if hi > lo else np.zeros_like(p)
    if p.shape[2] == 3:
        tiles = p.transpose(0, 1, 3, 4, 2)                     # (rows, k, Ry, Rx, 3)
    else:
        tiles = matplotlib.colormaps[cmap](p.mean(2))[..., :3]   # NaN maps to the colormap's "bad" colour
    tiles = np.where(np.isnan(p.mean(2))[..., None], 0.5, tiles)  # outside the image: flat grey
    Ry, Rx = tiles.shape[2:4]
    gap = 1
    mosaic = np.ones((rows * (Ry + gap) - gap, k * (Rx + gap) - gap, 3))   # white gaps and empty ranks
    for r in range(rows):
        for j in range(k):
            if res.samples[r, j] >= 0:
                mosaic[r * (Ry + gap):r * (Ry + gap) + Ry, j * (Rx + gap):j * (Rx + gap) + Rx] = tiles[r, j]
    shown = mosaic
    fig = new_figure((0.75 * k + 1.0, 0.75 * rows + 0.6))
    ax = fig.add_subplot()
    ax.imshow(shown, interpolation="nearest")
    for r in range(rows):
        for j in range(k):
            if res.samples[r, j] >= 0:
                ax.text(j * (Rx + gap) + 0.2, r * (Ry + gap) + 0.2, f"{res.values[r, j]:.2g}", fontsize=5,
                        color="yellow", va="top", ha="left")
    ax.set_yticks([r * (Ry + gap) + (Ry - 1) / 2 for r in range(rows)], [f"ch {c}" for c in res.channels[:rows]],
                  fontsize=7)
    ax.set_xticks([j * (Rx + gap) + (Rx - 1) / 2 for j in range(k)], [str(j + 1) for j in range(k)], fontsize=7)
    ax.tick_params(length=0)
    R = res.rf.size
    ax.set_title(f"top-{k} patches per channel (receptive field {R[0]}x{R[1]}, jump {res.rf.jump[0]})", fontsize=9)
    return save_figure(fig, path, dpi)
