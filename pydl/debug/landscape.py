"""Loss landscapes: the loss along random, filter-normalised directions around a trained model
(Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets"), and along the
straight line between two models.

    res = loss_landscape_2d(model, F.cross_entropy, loader, steps=21, batches=4, path="land.npz")
    plot_landscape_2d(res, path="land.png")

**Filter normalisation** (the paper's Sec. 4): a random Gaussian direction ``d`` with the parameters' shapes
is rescaled *filter by filter*: for every weight tensor of rank >= 2, each filter ``d[i]`` (slice along dim 0:
an output channel of a conv, a row of a linear layer) is multiplied by ``||w[i]|| / ||d[i]||``, so a step of
1 moves every filter by its own norm. Without it, scale-invariant nets (ReLU + batch norm) give landscapes
whose sharpness only reflects the weights' scale. Biases and other rank-0/1 tensors (BN's weight and bias)
get a zero direction by default, as in the paper's ``ignore='biasbn'``; ``include_bias_bn=True`` gives them a
random direction too, rescaled with the whole vector as one filter. (The paper's code copies ``w`` into
``d`` there instead; that copy would be identical in both 2D directions, which orthogonality rules out.)

**2D**: the second direction is made orthogonal to the first *after* normalisation, filter by filter
(``d2[i] -= <d1[i], d2[i]> / <d1[i], d1[i]> d1[i]``), then its filters are rescaled to the model's norms
again. A rescale keeps the filter orthogonal, and filters that are orthogonal one by one make orthogonal
directions, so both properties hold exactly: every filter of every direction has the model filter's
norm, and ``<d1, d2> = 0``.

**Cost**: one forward pass per batch per grid point; no backward. A 1D scan of ``steps`` points over ``b``
batches costs ``steps * b`` forwards; a 2D ``nx x ny`` grid costs ``nx * ny * b`` (a 51 x 51 grid over 10
batches: 26,010 forwards). ``batches=1`` (default) uses one batch; ``batches=None`` the whole loader.

**Structure** (so that a later version can shard the grid over ``torch.distributed`` ranks and resume):

(a) :func:`make_directions` builds the directions deterministically from a seed (random numbers drawn on
    the CPU with a private ``torch.Generator``: the same directions on any device);
(b) :func:`evaluate_points` evaluates an explicit list of flat grid indices;
(c) :class:`LandscapeResult` holds the grid, the losses and a ``done`` mask, saved to and loaded from NPZ;
    completing a partial grid evaluates only its missing points (``result.missing()``).
A rank would take ``result.missing()[rank::world]``, save its own result, and :meth:`LandscapeResult.merge`
combines them.

The model runs in eval mode during a scan (no dropout, BN on running statistics, which a scan must not
update) and is restored bit-exact afterwards: parameters, buffers and every module's ``training`` flag.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .batches import is_one_batch, take_batches
from .progress import progress as _progress

__all__ = ["Directions", "make_directions", "scan_state", "interpolation_direction", "LandscapeResult",
           "evaluate_points",
           "loss_landscape_1d", "loss_landscape_2d", "interpolate_models", "plot_landscape_1d",
           "plot_landscape_2d"]


# --------------------------------------------------------------------------------------------------
# (a) directions
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Directions:
    """``dirs[k][name]``: direction ``k`` for the parameter (or buffer) ``name``; tensors on the parameter's
    device and dtype. ``kind`` is ``"random"`` or ``"interpolation"``."""
    dirs: List[Dict[str, torch.Tensor]]
    kind: str = "random"
    seed: Optional[int] = None
    include_bias_bn: bool = False

    def __len__(self):
        return len(self.dirs)

    def meta(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "include_bias_bn": self.include_bias_bn,
                "n_directions": len(self.dirs), "names": sorted(self.dirs[0]) if self.dirs else []}


def _filters(t: torch.Tensor, include_bias_bn: bool) -> Optional[torch.Tensor]:
    """``t`` as (filters, elements), or None where the direction is zero (rank < 2 without include)."""
    if t.dim() >= 2:
        return t.reshape(t.shape[0], -1)
    if include_bias_bn:
        return t.reshape(1, -1)
    return None


def _rescale(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Each row of d scaled to the norm of the same row of w (float64, Li et al.'s 1e-10 guard)."""
    return d * (w.norm(dim=1, keepdim=True) / (d.norm(dim=1, keepdim=True) + 1e-10))


def make_directions(model: nn.Module, n: int = 1, seed: int = 0, include_bias_bn: bool = False) -> Directions:
    """``n`` (1 or 2) random Gaussian, filter-normalised directions for ``model``'s parameters (2:
    orthogonal). Deterministic in ``seed`` whatever the device (see the module docstring)."""
    if n not in (1, 2):
        raise ValueError(f"make_directions: n must be 1 or 2, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    params = [(name, p.detach()) for name, p in model.named_parameters()]
    if not params:
        raise ValueError("make_directions: the model has no parameters")
    # draw every random number first, in a fixed order, so direction k depends on the seed alone
    raw = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for _, p in params] for _ in range(n)]
    dirs: List[Dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for j, (name, p) in enumerate(params):
        w = _filters(p.to("cpu", torch.float64), include_bias_bn)
        if w is None:
            for k in range(n):
                dirs[k][name] = torch.zeros_like(p)
            continue
        d1 = _rescale(raw[0][j].reshape(w.shape), w)
        out = [d1]
        if n == 2:
            d2 = _rescale(raw[1][j].reshape(w.shape), w)
            dot = (d1 * d2).sum(1, keepdim=True)
            nn1 = (d1 * d1).sum(1, keepdim=True)
            d2 = d2 - torch.where(nn1 > 0, dot / torch.where(nn1 > 0, nn1, 1), 0) * d1
            out.append(_rescale(d2, w))
        for k, d in enumerate(out):
            dirs[k][name] = d.reshape(p.shape).to(p.device, p.dtype)
    return Directions(dirs, "random", int(seed), include_bias_bn)


def interpolation_direction(model_a: nn.Module, model_b: nn.Module, buffers: bool = True) -> Directions:
    """The direction ``theta_b - theta_a`` over every parameter (biases and BN included) and, with
    ``buffers``, every floating buffer (BN running statistics): a 1D scan from ``model_a`` along it passes
    through ``model_b`` at 1."""
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    if pa.keys() != pb.keys() or any(pa[k].shape != pb[k].shape for k in pa):
        raise ValueError("interpolation_direction: the models' parameters differ in names or shapes")
    d = {k: (pb[k].detach() - pa[k].detach()) for k in pa}
    if buffers:
        ba, bb = dict(model_a.named_buffers()), dict(model_b.named_buffers())
        for k, t in ba.items():
            if t.is_floating_point() and k in bb and bb[k].shape == t.shape:
                d[k] = bb[k].detach().to(t.device) - t.detach()
    return Directions([d], "interpolation", None, True)


# --------------------------------------------------------------------------------------------------
# (c) the result container
# --------------------------------------------------------------------------------------------------

class LandscapeResult:
    """A 1D or 2D grid of losses. ``xs`` (nx,) and, for 2D, ``ys`` (ny,) are the coordinates along the
    directions; ``loss`` and ``done`` have shape (nx,) or (nx, ny) (``loss[i, j]`` is at ``(xs[i], ys[j])``).
    Flat point indices run over that shape in C order. ``meta``: how it was made (JSON-able)."""

    def __init__(self, xs, ys=None, loss=None, done=None, meta: Optional[dict] = None):
        self.xs = np.asarray(xs, dtype=np.float64)
        self.ys = None if ys is None else np.asarray(ys, dtype=np.float64)
        shape = self.shape
        self.loss = np.full(shape, np.nan) if loss is None else np.asarray(loss, np.float64).reshape(shape)
        self.done = np.zeros(shape, bool) if done is None else np.asarray(done, bool).reshape(shape)
        self.meta = dict(meta or {})

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self.xs),) if self.ys is None else (len(self.xs), len(self.ys))

    @property
    def ndim(self) -> int:
        return 1 if self.ys is None else 2

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coords(self, index: int) -> Tuple[float, ...]:
        """The direction coefficients of flat point ``index``."""
        if self.ys is None:
            return (float(self.xs[index]),)
        i, j = np.unravel_index(index, self.shape)
        return float(self.xs[i]), float(self.ys[j])

    def missing(self) -> np.ndarray:
        """Flat indices of the points not computed yet."""
        return np.flatnonzero(~self.done.ravel())

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def set(self, index: int, value: float) -> None:
        self.loss.reshape(-1)[index] = value
        self.done.reshape(-1)[index] = True

    def same_grid(self, other: "LandscapeResult") -> bool:
        return (self.shape == other.shape and np.array_equal(self.xs, other.xs)
                and (self.ys is None) == (other.ys is None)
                and (self.ys is None or np.array_equal(self.ys, other.ys)))

    def merge(self, other: "LandscapeResult") -> "LandscapeResult":
        """Take the points ``other`` has computed (e.g. another rank's shard); returns self."""
        if not self.same_grid(other):
            raise ValueError("LandscapeResult.merge: the grids differ")
        take = other.done & ~self.done
        self.loss[take] = other.loss[take]
        self.done |= other.done
        return self

    def save(self, path) -> str:
        d = os.path.dirname(os.fspath(path))
        if d:
            os.makedirs(d, exist_ok=True)
        tmp = os.fspath(path) + ".tmp.npz"  # write then rename: a crash mid-save leaves the old file whole
        np.savez(tmp, xs=self.xs, ys=self.ys if self.ys is not None else np.zeros(0), has_ys=self.ys is not None,
                 loss=self.loss, done=self.done, meta=np.array(json.dumps(self.meta)))
        os.replace(tmp, path)
        return os.fspath(path)

    @classmethod
    def load(cls, path) -> "LandscapeResult":
        with np.load(path, allow_pickle=False) as z:
            ys = z["ys"] if bool(z["has_ys"]) else None
            return cls(z["xs"], ys, z["loss"], z["done"], json.loads(str(z["meta"])))

    def __repr__(self):
        return f"LandscapeResult({'x'.join(map(str, self.shape))}, done {int(self.done.sum())}/{self.size})"


# --------------------------------------------------------------------------------------------------
# (b) evaluating points
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def scan_state(model: nn.Module):
    """Eval mode inside; on exit every parameter, buffer and ``training`` flag is put back bit for bit.
    Yields ``{name: saved copy}`` of every parameter and buffer (a scan's origin: no second copy needed)."""
    flags = [(m, m.training) for m in model.modules()]
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    saved = {k: t.detach().clone() for k, t in tensors.items()}
    try:
        model.eval()
        yield saved
    finally:
        with torch.no_grad():
            for k, t in tensors.items():
                t.copy_(saved[k])
        for m, f in flags:
            m.training = f


def _batches(data, batches: Optional[int]):
    """A list of (inputs, targets) batches, or an iterable re-read at each point for batches=None."""
    if is_one_batch(data):
        return [data]  # a tuple (x, y) is one batch; a list or loader is a sequence of batches
    if batches is None:
        return data
    if not (isinstance(batches, int) and batches >= 1):
        raise ValueError(f"batches must be an int >= 1 or None (the whole loader), got {batches!r}")
    out = [tuple(b) for b in take_batches(data, batches)]
    if not out:
        raise ValueError("loss landscape: data gave no batch")
    return out


def _loss(model, loss_fn, batches, device) -> float:
    total, n = 0.0, 0
    for b in batches:
        x, y = b[0], b[1]
        x = x.to(device) if isinstance(x, torch.Tensor) else x
        y = y.to(device) if isinstance(y, torch.Tensor) else y
        k = len(x)
        # loss_fn is assumed mean-reduced: weight by batch size so unequal last batches average correctly
        total += float(loss_fn(model(x), y)) * k
        n += k
    return total / n


def evaluate_points(model: nn.Module, loss_fn: Callable, data, directions: Directions,
                    result: LandscapeResult, indices: Optional[Iterable[int]] = None,
                    batches: Optional[int] = 1, show_progress: bool = True,
                    checkpoint: Optional[str] = None, checkpoint_every: int = 50) -> LandscapeResult:
    """Evaluate the flat grid points ``indices`` (default: the missing ones) of ``result`` and store them
    there. Point ``i`` sets each tensor to ``origin + sum_k coords(i)[k] * directions[k]`` (computed afresh
    from the saved origin, so no rounding accumulates over the scan). With ``checkpoint``, the result is
    saved there every ``checkpoint_every`` points and at the end. Model restored afterwards (:func:`scan_state`)."""
    if len(directions) != result.ndim:
        raise ValueError(f"evaluate_points: {len(directions)} direction(s) for a {result.ndim}D grid")
    idx = result.missing() if indices is None else np.asarray(list(indices), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= result.size):
        raise ValueError(f"evaluate_points: indices must be in [0, {result.size})")
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    names = list(directions.dirs[0])
    missing = [k for k in names if k not in named]
    if missing:
        raise ValueError(f"evaluate_points: directions name tensors the model lacks: {missing[:5]}")
    device = next(model.parameters()).device
    data_b = _batches(data, batches)
    with scan_state(model) as origin, torch.no_grad():
        for count, i in enumerate(_progress(idx.tolist(), total=len(idx), desc="loss landscape",
                                            enable=show_progress), 1):
            c = result.coords(i)
            for k in names:
                t = named[k]
                torch.add(origin[k], directions.dirs[0][k], alpha=c[0], out=t)
                for a, d in zip(c[1:], directions.dirs[1:]):
                    t.add_(d[k], alpha=a)
            result.set(i, _loss(model, loss_fn, data_b, device))
            if checkpoint is not None and count % checkpoint_every == 0:
                result.save(checkpoint)
    if checkpoint is not None:
        result.save(checkpoint)
    return result


# --------------------------------------------------------------------------------------------------
# the scans
# --------------------------------------------------------------------------------------------------

def result_meta(directions: Directions, batches, data) -> dict:
    """What a LandscapeResult records of how it was made (the directions' kind and seed, the batches per
    point); the sharded landscape (pydl/distributed.py) writes the same, so its files resume alike."""
    m = directions.meta()
    m.pop("names")
    nb = 1 if is_one_batch(data) else batches
    m.update({"batches": nb, "forward_passes_per_point": nb})
    return m


def _prepare(path, resume, fresh: LandscapeResult) -> LandscapeResult:
    if path is not None and resume and os.path.exists(path):
        old = LandscapeResult.load(path)
        keys = ("kind", "seed", "include_bias_bn", "batches")
        if old.same_grid(fresh) and all(old.meta.get(k) == fresh.meta.get(k) for k in keys):
            return old
        raise ValueError(f"loss landscape: {path} holds a different scan (grid or {keys}); "
                         f"pass resume=False to overwrite it")
    return fresh


def loss_landscape_1d(model: nn.Module, loss_fn: Callable, data, steps: int = 51,
                      span: Tuple[float, float] = (-1.0, 1.0), direction: Optional[Directions] = None,
                      seed: int = 0, include_bias_bn: bool = False, batches: Optional[int] = 1,
                      path: Optional[str] = None, resume: bool = True, show_progress: bool = True,
                      checkpoint_every: int = 50) -> LandscapeResult:
    """The loss at ``steps`` points ``alpha`` in ``span`` along one direction (default: a random
    filter-normalised one from ``seed``). ``data``: an ``(x, y)`` tuple (one batch) or an iterable of them
    (the first ``batches``; None = all, re-read at each point). ``path``: the NPZ to save to, resumed when it exists
    and ``resume``. Cost: ``steps * batches`` forward passes."""
    d = direction if direction is not None else make_directions(model, 1, seed, include_bias_bn)
    if len(d) != 1:
        raise ValueError("loss_landscape_1d: needs exactly one direction")
    xs = np.linspace(span[0], span[1], steps)
    res = _prepare(path, resume, LandscapeResult(xs, meta=result_meta(d, batches, data)))
    return evaluate_points(model, loss_fn, data, d, res, None, batches, show_progress, path, checkpoint_every)


def loss_landscape_2d(model: nn.Module, loss_fn: Callable, data, steps: Union[int, Tuple[int, int]] = 21,
                      span: Union[Tuple[float, float], Tuple[Tuple[float, float], Tuple[float, float]]] = (-1.0, 1.0),
                      directions: Optional[Directions] = None, seed: int = 0, include_bias_bn: bool = False,
                      batches: Optional[int] = 1, path: Optional[str] = None, resume: bool = True,
                      show_progress: bool = True, checkpoint_every: int = 50) -> LandscapeResult:
    """The loss on an ``nx x ny`` grid spanned by two orthogonal filter-normalised directions (default:
    from ``seed``). ``steps``: n or (nx, ny); ``span``: (lo, hi) for both axes or ((x0, x1), (y0, y1)).
    ``path``: the NPZ checkpoint, saved every ``checkpoint_every`` points and resumed (only the missing
    points are evaluated) when it exists and ``resume``. Cost: ``nx * ny * batches`` forward passes."""
    d = directions if directions is not None else make_directions(model, 2, seed, include_bias_bn)
    if len(d) != 2:
        raise ValueError("loss_landscape_2d: needs exactly two directions")
    nx, ny = (steps, steps) if isinstance(steps, int) else steps
    (x0, x1), (y0, y1) = (span, span) if not isinstance(span[0], (tuple, list)) else span
    res = _prepare(path, resume, LandscapeResult(np.linspace(x0, x1, nx), np.linspace(y0, y1, ny),
                                                 meta=result_meta(d, batches, data)))
    return evaluate_points(model, loss_fn, data, d, res, None, batches, show_progress, path, checkpoint_every)


def interpolate_models(model_a: nn.Module, model_b: nn.Module, loss_fn: Callable, data, steps: int = 26,
                       span: Tuple[float, float] = (-0.25, 1.25), buffers: bool = True, **kw) -> LandscapeResult:
    """Linear interpolation ``(1 - alpha) * theta_a + alpha * theta_b`` (Goodfellow et al. 2015): the loss at
    ``steps`` values of alpha in ``span`` (0 = model_a, 1 = model_b). ``model_a`` is scanned and restored;
    ``model_b`` is only read."""
    return loss_landscape_1d(model_a, loss_fn, data, steps, span, interpolation_direction(model_a, model_b, buffers),
                             **kw)


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------

def _as_result(r) -> LandscapeResult:
    return LandscapeResult.load(r) if isinstance(r, (str, os.PathLike)) else r


def plot_landscape_1d(result, path=None, log: bool = False, dpi: int = 100):
    """The 1D loss curve (points not computed yet are gaps). Returns the Figure; PNG at ``path``."""
    from .figures import new_figure, save_figure

    r = _as_result(result)
    if r.ndim != 1:
        raise ValueError("plot_landscape_1d: needs a 1D result")
    fig = new_figure((6, 4))
    ax = fig.subplots()
    ax.plot(r.xs, np.where(r.done, r.loss, np.nan), "o-", ms=3)
    if log:
        ax.set_yscale("log")
    interp = r.meta.get("kind") == "interpolation"
    ax.set_xlabel("alpha (0 = model a, 1 = model b)" if interp else "alpha (filter-normalised direction)")
    ax.set_ylabel("loss")
    ax.set_title("linear interpolation" if interp else f"1D loss landscape (seed {r.meta.get('seed')})")
    return save_figure(fig, path, dpi)


def plot_landscape_2d(result, path=None, kind: str = "contour", levels: int = 30, log: bool = False,
                      cmap: str = "viridis", dpi: int = 100):
    """The 2D landscape as ``kind="contour"`` (filled contours + lines), ``"heatmap"`` or ``"surface"``
    (3D). Returns the Figure; PNG at ``path``."""
    from .figures import new_figure, save_figure

    r = _as_result(result)
    if r.ndim != 2:
        raise ValueError("plot_landscape_2d: needs a 2D result")
    if kind not in ("contour", "heatmap", "surface"):
        raise ValueError(f"plot_landscape_2d: kind must be contour, heatmap or surface, got {kind!r}")
    z = np.where(r.done, r.loss, np.nan).T  # (ny, nx): rows are y for matplotlib
    if log:
        z = np.log10(z)
    X, Y = np.meshgrid(r.xs, r.ys)
    fig = new_figure((6.4, 5))
    label = "log10 loss" if log else "loss"
    if kind == "surface":
        ax = fig.add_subplot(projection="3d")
        ax.plot_surface(X, Y, z, cmap=cmap, linewidth=0, antialiased=True)
        ax.set_zlabel(label)
    else:
        ax = fig.subplots()
        if kind == "heatmap" or not np.isfinite(z).all():  # contours need every point
            im = ax.imshow(z, origin="lower", aspect="auto", cmap=cmap,
                           extent=(r.xs[0], r.xs[-1], r.ys[0], r.ys[-1]))
        else:
            im = ax.contourf(X, Y, z, levels=levels, cmap=cmap)
            ax.contour(X, Y, z, levels=levels, colors="k", linewidths=0.4)
        fig.colorbar(im, ax=ax, label=label)
        ax.plot([0], [0], "w+", ms=10)  # the trained model
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title(f"2D loss landscape (seed {r.meta.get('seed')}, {r.meta.get('batches')} batch(es)/point)")
    return save_figure(fig, path, dpi)
