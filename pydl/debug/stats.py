"""ActivationStats: per-layer, per-batch statistics of a model's activations, computed on the device.

(Why one long file: the recorder, its presets, the per-chunk device buffers and the merge of a module
called twice are one state machine; the figures live in figures.py, the file formats in StatsData.)

    stats = ActivationStats(model)                 # hooks every leaf module that has parameters
    with stats:                                    # plain context manager: any training loop works
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb); loss.backward(); opt.step(); opt.zero_grad()
            ...
        stats.mark_epoch()                         # optional: epoch separators in the plots
    stats.plot_colorful_dimension(path="colorful.png")
    stats.save_npz("acts.npz")

What is recorded, per hooked module and per recorded batch: the whole-tensor :func:`pydl.act_stats` of the
module's output -- mean, M2 (so std), min, max, the count of ``|x| <= eps``, NaN/±Inf counts, a ``bins``-bin
histogram over ``[lo, hi]`` and the number of finite values *below* ``lo`` and *above* ``hi`` (fastai's
``histc`` silently drops those; here they are kept and plotted).

Cost model (why it is cheap enough to leave on, see benchmarks/bench_debug_overhead.py):

* one pass over each output (``act_stats`` is a single fused reduction; the ``abs`` presets add one
  elementwise pass), no ``.item()`` in the hooks: nothing waits for the device;
* the kernel called directly (:meth:`ActivationStats._act_stats`): the public op's argument checks run once
  per dtype/device/backend, not once per layer per step;
* the per-layer results stay on the device in a pending list and are copied to the host in **chunks** of
  ``chunk`` recorded steps, one concatenation and one copy per field for all layers together -- so there
  is at most one host synchronisation per ``chunk`` steps, never one per layer;
* host memory is bounded by ``max_records``: when full, ``on_full="decimate"`` keeps every other record and
  doubles ``every`` (the whole run stays visible, at half the time resolution), ``"ring"`` keeps the most
  recent ``max_records``.

Steps: a *step* is one forward of the root ``model`` in training mode (``train_only``; eval/validation
forwards are not recorded and do not count). With ``every=N`` only steps ``0, N, 2N, ...`` are recorded. A
module called several times in one forward (a shared block, an RNN cell per time step) has its calls merged
into one record (exact: counts and histograms add, means/M2 combine with Chan's formula).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..backends import get_backend
from ..ops.act_stats import COUNT_COLS, act_stats
from ..ops.act_stats import OP as _ACT_STATS
from ..ops._common import plain_eager
from .hooks import Hook, first_tensor, leaf_modules, module_label

__all__ = ["StatsPreset", "PRESETS", "ActivationStats", "StatsData"]


@dataclasses.dataclass(frozen=True)
class StatsPreset:
    """How a histogram is taken: ``bins`` over ``[lo, hi]`` of the output (of ``|output|`` when ``abs``;
    mean, std, min, max and the near-zero count are always those of the raw output, as in the course);
    ``dead_bins`` = the ``[start, stop)`` bins whose share is plotted as "dead" / "near zero" in the dead
    chart; ``eps`` = the ``|x| <= eps`` threshold for the near-zero statistic; ``log``: show counts as
    ``log1p`` in the colorful dimension."""
    name: str
    bins: int
    lo: float
    hi: float
    abs: bool
    dead_bins: tuple
    eps: float = 0.05
    log: bool = True
    doc: str = ""


PRESETS: Dict[str, StatsPreset] = {p.name: p for p in [
    StatsPreset(
        "fastai2019", 40, 0.0, 10.0, False, (0, 2), 0.05, True,
        "fastai 2019 course part 2 (lesson 10, 'colorful dimension'): outp.histc(40, 0, 10) of the raw "
        "outputs (fastai v2's ActivationStats(with_hist=True) takes the same histogram); 'dead' = the first "
        "two bins, i.e. values in [0, 0.5). Negative values fall below the range: counted in `below`."),
    StatsPreset(
        "course2022", 40, 0.0, 10.0, True, (0, 1), 0.05, True,
        "the 2022 course (part 2, miniai's ActivationStats): acts.abs().histc(40, 0, 10); "
        "'dead' (get_min) = the first bin, |x| in [0, 0.25)."),
    StatsPreset(
        "general_relu", 40, -7.0, 7.0, False, (19, 22), 0.05, True,
        "the 2022 course's GeneralRelu (leaky, shifted by -sub, so outputs go negative): histc(40, -7, 7); "
        "'dead' = bins 19..21 (values in [-0.35, 0.7)), the bins around 0 that get_min sums there."),
    StatsPreset(
        "giomo", 100, -1.0, 1.0, False, (49, 51), 0.05, True,
        "Stefano Giomo's original colorful-dimension plot: 100 bins over [-1, 1] of the raw activations, "
        "counts on a log scale; 'dead' = the two bins around 0, [-0.02, 0.02)."),
]}


def _resolve_preset(preset: Union[str, StatsPreset], **overrides) -> StatsPreset:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"ActivationStats: unknown preset {preset!r}; known: {sorted(PRESETS)}")
        preset = PRESETS[preset]
    if not isinstance(preset, StatsPreset):
        raise TypeError(f"ActivationStats: preset must be a name or a StatsPreset, got {type(preset).__name__}")
    over = {k: v for k, v in overrides.items() if v is not None}
    if over:
        if "bins" in over and "dead_bins" not in over:
            over["dead_bins"] = (0, min(preset.dead_bins[1], over["bins"]))
        preset = dataclasses.replace(preset, name=preset.name + "+custom", **over)
    if not 0 <= preset.dead_bins[0] < preset.dead_bins[1] <= preset.bins:
        raise ValueError(f"ActivationStats: dead_bins {preset.dead_bins} not inside [0, {preset.bins}]")
    return preset


# --------------------------------------------------------------------------------------------------
# merging two act_stats results of the same layer (a module called twice in one forward)
# --------------------------------------------------------------------------------------------------

def _finite_count(counts):
    return counts[:, 0] - counts[:, 2] - counts[:, 3] - counts[:, 4]


def _merge(a, b):
    """Combine two (fstats, counts, hist) triples as if the stats had been taken over both tensors at once.
    Chan et al.'s parallel update: mean = ma + d*nb/n, M2 = M2a + M2b + d^2*na*nb/n, on the device."""
    fa, ca, ha = a
    fb, cb, hb = b
    dt = torch.promote_types(fa.dtype, fb.dtype)
    fa, fb = fa.to(dt), fb.to(dt)
    na, nb = _finite_count(ca).to(dt), _finite_count(cb).to(dt)
    n = na + nb
    ma = torch.where(na > 0, fa[:, 0], 0)
    mb = torch.where(nb > 0, fb[:, 0], 0)
    d = mb - ma
    safe_n = torch.where(n > 0, n, 1)
    mean = torch.where(n > 0, ma + d * nb / safe_n, float("nan"))
    m2 = torch.where(na > 0, fa[:, 1], 0) + torch.where(nb > 0, fb[:, 1], 0) + d * d * na * nb / safe_n
    mn = torch.fmin(fa[:, 2], fb[:, 2])  # fmin/fmax ignore the NaN of an all-non-finite side
    mx = torch.fmax(fa[:, 3], fb[:, 3])
    return torch.stack([mean, m2, mn, mx], 1), ca + cb, ha + hb


# --------------------------------------------------------------------------------------------------
# the host-side record: plain numpy arrays, what plots and files are made of
# --------------------------------------------------------------------------------------------------

class StatsData:
    """Recorded activation statistics on the host (numpy). ``T`` records x ``L`` layers:

    * ``steps`` (T,) the training step of each record; ``epoch_steps``: steps at which epochs began;
    * ``fstats`` (T, L, 4) float64: mean, M2, min, max of the finite values;
    * ``counts`` (T, L, 7) int64: count, near_zero, nan, posinf, neginf, below, above;
    * ``hist`` (T, L, bins) int64 over ``[lo, hi]`` (of ``|x|`` when the preset says ``abs``; then ``below`` /
      ``above`` in ``counts`` are those of ``|x|`` too).

    A layer that did not run in a recorded step has NaN stats and zero counts there.

    ``names`` are the layers' dotted names (the keys of :meth:`layer`, JSON and TensorBoard tags); ``labels``
    the titles the plots show (name and kind, e.g. ``features.2 Conv2d(16→32)``; default: the names).
    """

    def __init__(self, names: Sequence[str], preset: StatsPreset, steps, fstats, counts, hist,
                 epoch_steps: Sequence[int] = (), every: int = 1, labels: Optional[Sequence[str]] = None):
        self.names = list(names)
        self.labels = list(labels) if labels is not None else list(self.names)
        if len(self.labels) != len(self.names):
            raise ValueError(f"StatsData: labels has {len(self.labels)} entries for {len(self.names)} layers")
        self.preset = preset
        self.steps = np.asarray(steps, dtype=np.int64)
        self.fstats = np.asarray(fstats, dtype=np.float64).reshape(len(self.steps), len(self.names), 4)
        self.counts = np.asarray(counts, dtype=np.int64).reshape(len(self.steps), len(self.names), 7)
        self.hist = np.asarray(hist, dtype=np.int64).reshape(len(self.steps), len(self.names), preset.bins)
        self.epoch_steps = [int(s) for s in epoch_steps]
        self.every = int(every)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self):
        return f"StatsData({len(self)} records x {len(self.names)} layers, preset={self.preset.name})"

    # ---- derived statistics, each (T, L)
    def _count(self, name):
        return self.counts[..., COUNT_COLS.index(name)]

    @property
    def count(self):
        return self._count("count")

    @property
    def finite(self):
        c = self.counts
        return c[..., 0] - c[..., 2] - c[..., 3] - c[..., 4]

    @property
    def mean(self):
        return self.fstats[..., 0]

    @property
    def var(self):
        """Sample variance (n - 1), as ``torch.std``'s default and fastai's ``o.std()``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.fstats[..., 1] / (self.finite - 1)

    @property
    def std(self):
        return np.sqrt(self.var)

    @property
    def std_population(self):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(self.fstats[..., 1] / self.finite)

    @property
    def min(self):
        return self.fstats[..., 2]

    @property
    def max(self):
        return self.fstats[..., 3]

    def _frac(self, num):
        with np.errstate(divide="ignore", invalid="ignore"):
            return num / self.count

    @property
    def near_zero_frac(self):
        """Share of values with ``|x| <= eps`` (fastai v2 counts ``x <= eps``: the same for ReLU outputs)."""
        return self._frac(self._count("near_zero"))

    @property
    def below(self):
        return self._count("below")

    @property
    def above(self):
        return self._count("above")

    @property
    def outside_frac(self):
        """Share of finite values outside ``[lo, hi]`` (not in any histogram bin)."""
        return self._frac(self.below + self.above)

    @property
    def nonfinite(self):
        return self.counts[..., 2] + self.counts[..., 3] + self.counts[..., 4]

    def dead_fraction(self, of: str = "all"):
        """(T, L) share of values in the preset's dead bins. ``of="all"``: of every value (out-of-range and
        non-finite ones included -- nothing dropped); ``of="hist"``: of the in-range values only, which is
        what fastai's ``get_min`` (``h[:2].sum(0) / h.sum(0)``) computes."""
        a, b = self.preset.dead_bins
        dead = self.hist[..., a:b].sum(-1)
        if of == "all":
            return self._frac(dead)
        if of == "hist":
            with np.errstate(divide="ignore", invalid="ignore"):
                return dead / self.hist.sum(-1)
        raise ValueError(f"dead_fraction: of must be 'all' or 'hist', got {of!r}")

    @property
    def edges(self):
        """The ``bins + 1`` bin edges."""
        p = self.preset
        return np.linspace(p.lo, p.hi, p.bins + 1)

    def layer(self, name_or_index) -> int:
        return self.names.index(name_or_index) if isinstance(name_or_index, str) else int(name_or_index)

    # ---- files
    def save_npz(self, path) -> str:
        """Every raw array plus the preset and layer names (``StatsData.load_npz`` reads it back)."""
        p = dataclasses.asdict(self.preset)
        np.savez_compressed(path, steps=self.steps, fstats=self.fstats, counts=self.counts, hist=self.hist,
                            names=np.array(self.names), labels=np.array(self.labels),
                            epoch_steps=np.array(self.epoch_steps, dtype=np.int64),
                            every=np.array(self.every), preset=np.array(json.dumps(p)))
        return str(path)

    @classmethod
    def load_npz(cls, path) -> "StatsData":
        with np.load(path, allow_pickle=False) as z:
            p = json.loads(str(z["preset"]))
            p["dead_bins"] = tuple(p["dead_bins"])
            labels = [str(n) for n in z["labels"]] if "labels" in z.files else None  # older files: none
            return cls([str(n) for n in z["names"]], StatsPreset(**p), z["steps"], z["fstats"], z["counts"],
                       z["hist"], z["epoch_steps"].tolist(), int(z["every"]), labels=labels)

    def to_dict(self, hist: bool = True) -> dict:
        """JSON-ready: per layer lists over records (NaN becomes None, as strict JSON has no NaN)."""
        def lst(a):
            return [None if isinstance(v, float) and not math.isfinite(v) else v for v in a.tolist()]

        layers = {}
        dead = self.dead_fraction()
        for j, name in enumerate(self.names):
            d = {"mean": lst(self.mean[:, j]), "std": lst(self.std[:, j]), "min": lst(self.min[:, j]),
                 "max": lst(self.max[:, j]), "near_zero_frac": lst(self.near_zero_frac[:, j]),
                 "dead_frac": lst(dead[:, j]), "count": self.count[:, j].tolist(),
                 "below": self.below[:, j].tolist(), "above": self.above[:, j].tolist(),
                 "nonfinite": self.nonfinite[:, j].tolist()}
            if hist:
                d["hist"] = self.hist[:, j].tolist()
            layers[name] = d
        return {"preset": dataclasses.asdict(self.preset), "steps": self.steps.tolist(),
                "epoch_steps": self.epoch_steps, "every": self.every, "layers": layers}

    def to_json(self, path=None, hist: bool = True) -> str:
        """The :meth:`to_dict` as JSON text; written to ``path`` when given (returns the text)."""
        text = json.dumps(self.to_dict(hist), allow_nan=False)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def to_tensorboard(self, writer=None, log_dir=None, prefix: str = "activations"):
        """Write each record as TensorBoard histograms (``add_histogram_raw``: the device-made histogram is
        sent as is, with the out-of-range counts as two extra edge buckets) and mean/std/near-zero scalars.
        Needs the ``tensorboard`` package; pass a ``SummaryWriter`` or a ``log_dir``. Returns the writer."""
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # the package is optional
                raise ImportError("to_tensorboard needs the `tensorboard` package (pip install tensorboard)") from e
            writer = SummaryWriter(log_dir=log_dir)
        p = self.preset
        edges = self.edges
        # TensorBoard buckets are (previous limit, limit]; a bucket with limit lo holds everything below the
        # range, the last one (limit +max) everything above it.
        for t, step in enumerate(self.steps.tolist()):
            for j, name in enumerate(self.names):
                n = int(self.finite[t, j])
                if n == 0:
                    continue
                mean, m2, mn, mx = self.fstats[t, j]
                counts = [int(self.below[t, j])] + self.hist[t, j].tolist() + [int(self.above[t, j])]
                limits = [p.lo] + edges[1:].tolist() + [max(float(mx), p.hi) + 1e-12]
                writer.add_histogram_raw(f"{prefix}/{name}", min=float(mn), max=float(mx), num=n,
                                         sum=float(mean * n), sum_squares=float(m2 + n * mean * mean),
                                         bucket_limits=limits, bucket_counts=counts, global_step=step)
                writer.add_scalar(f"{prefix}_mean/{name}", float(mean), step)
                writer.add_scalar(f"{prefix}_std/{name}", float(self.std[t, j]), step)
                writer.add_scalar(f"{prefix}_near_zero/{name}", float(self.near_zero_frac[t, j]), step)
        writer.flush()
        return writer

    # ---- plots (pydl.debug.plots; matplotlib imported only when called)
    def plot_colorful_dimension(self, path=None, **kw):
        from .figures import plot_colorful_dimension
        return plot_colorful_dimension(self, path=path, **kw)

    def plot_layer_stats(self, path=None, **kw):
        from .figures import plot_layer_stats
        return plot_layer_stats(self, path=path, **kw)

    def plot_dead_chart(self, path=None, **kw):
        from .figures import plot_dead_chart
        return plot_dead_chart(self, path=path, **kw)


class _HostStore:
    """Chunks of host arrays with a cap. Concatenation happens only when asked (or when the cap is hit),
    so a flush costs O(chunk), not O(everything recorded so far)."""

    def __init__(self, max_records: int, on_full: str):
        self.max_records, self.on_full = max_records, on_full
        self.chunks: List[tuple] = []
        self.total = 0

    def append(self, steps, fs, cnt, hist):
        self.chunks.append((steps, fs, cnt, hist))
        self.total += len(steps)

    def arrays(self):
        if len(self.chunks) > 1:
            self.chunks = [tuple(np.concatenate(parts) for parts in zip(*self.chunks))]
        return self.chunks[0] if self.chunks else None

    def enforce(self, every: int) -> int:
        """Apply the cap; returns the (possibly doubled) ``every``."""
        while self.total > self.max_records:
            steps, fs, cnt, hist = self.arrays()
            if self.on_full == "ring":
                keep = slice(self.total - self.max_records, None)
                self.chunks = [(steps[keep], fs[keep], cnt[keep], hist[keep])]
            else:  # decimate: keep the records on the coarser grid of steps
                every *= 2
                keep = steps % every == 0
                if keep.sum() == self.total:  # irregular steps: fall back to every other record
                    keep = np.zeros(self.total, bool)
                    keep[::2] = True
                self.chunks = [(steps[keep], fs[keep], cnt[keep], hist[keep])]
            self.total = len(self.chunks[0][0])
        return every


class ActivationStats:
    """Record activation statistics of ``modules`` (default: :func:`leaf_modules` of ``model``: leaves with
    parameters; ``include_parameterless=True`` adds ReLU & co.) on every ``every``-th training forward of
    ``model``. See the module docstring for what is recorded and what it costs.

    ``preset``: a name from :data:`PRESETS` (``fastai2019`` default, ``course2022``, ``general_relu``,
    ``giomo``) or a :class:`StatsPreset`; ``bins``, ``lo``, ``hi``, ``abs``, ``eps``, ``dead_bins`` override
    single fields. ``backend`` picks the act_stats kernels (default: pydl's current backend).

    Use as a context manager (hooks removed on exit) or call :meth:`remove`. Read results with
    :attr:`data` (a :class:`StatsData`), or the shortcuts :meth:`save_npz`, :meth:`to_json`,
    :meth:`plot_colorful_dimension`, :meth:`plot_layer_stats`, :meth:`plot_dead_chart`,
    :meth:`to_tensorboard`.
    """

    def __init__(self, model: nn.Module, modules: Optional[Iterable[nn.Module]] = None,
                 preset: Union[str, StatsPreset] = "fastai2019", *, include_parameterless: bool = False,
                 every: int = 1, train_only: bool = True, chunk: int = 32, max_records: int = 10_000,
                 on_full: str = "decimate", steps_per_epoch: Optional[int] = None, backend: Optional[str] = None,
                 bins: Optional[int] = None, lo: Optional[float] = None, hi: Optional[float] = None,
                 abs: Optional[bool] = None,  # noqa: A002 - the preset field's name; a public keyword since 0.1
                 eps: Optional[float] = None, dead_bins: Optional[tuple] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"ActivationStats: model must be an nn.Module, got {type(model).__name__}")
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"ActivationStats: every must be an int >= 1, got {every!r}")
        if not (isinstance(chunk, int) and chunk >= 1):
            raise ValueError(f"ActivationStats: chunk must be an int >= 1, got {chunk!r}")
        if not (isinstance(max_records, int) and max_records >= 2):
            raise ValueError(f"ActivationStats: max_records must be an int >= 2, got {max_records!r}")
        if on_full not in ("decimate", "ring"):
            raise ValueError(f"ActivationStats: on_full must be 'decimate' or 'ring', got {on_full!r}")
        self.preset = _resolve_preset(preset, bins=bins, lo=lo, hi=hi, abs=abs, eps=eps, dead_bins=dead_bins)
        self.model = model
        self.modules = list(modules) if modules is not None else leaf_modules(model, include_parameterless)
        if not self.modules:
            raise ValueError("ActivationStats: no modules to hook (pass modules= or include_parameterless=True)")
        names = {id(m): n for n, m in model.named_modules()}
        # dotted names as in model.named_modules(); the root (named "") by its class, a module from outside
        # the model by its position and class
        self.names = [type(m).__name__ if names.get(id(m)) == "" else names.get(id(m)) or f"{i}:{type(m).__name__}"
                      for i, m in enumerate(self.modules)]
        self.labels = [module_label(n, m) for n, m in zip(self.names, self.modules)]
        self.every, self.train_only, self.chunk = every, train_only, chunk
        self.backend = backend
        self.steps_per_epoch = steps_per_epoch
        self.step = 0                    # training forwards seen
        self.epoch_steps: List[int] = []
        self._active = False
        self._cur: Optional[list] = None
        self._cur_step = 0
        self._pending: List[tuple] = []  # (step, [per-layer (fstats, counts, hist) or None]) on the device
        self._store = _HostStore(max_records, on_full)
        self._data_cache: Optional[StatsData] = None
        self._checked: set = set()  # (dtype, device type, backend, bins) that passed act_stats's own checks
        # layer hooks first, so that when the root model is itself hooked its layer hook runs before _end
        self.hooks = [Hook(m, (lambda h, mod, i, o, j=j: self._layer(j, o)), detach=False)
                      for j, m in enumerate(self.modules)]
        self._root = [model.register_forward_pre_hook(self._begin), model.register_forward_hook(self._end)]

    # ---- the hooks: nothing in here waits for the device
    def _begin(self, module, args):
        if self.train_only and not module.training:
            self._active = False
            return
        s = self.step
        self.step += 1
        self._active = s % self.every == 0
        if self._active:
            self._cur, self._cur_step = [None] * len(self.modules), s

    def _layer(self, j: int, output):
        if not self._active:
            return
        x = first_tensor(output)
        if x is None or not x.is_floating_point() or x.is_complex():
            return
        x = x.detach()
        p = self.preset
        if p.abs:
            # the course takes mean/std of the raw output and the histogram of |output|: the raw pass only
            # needs its moments and counts (1 bin), the |x| pass gives the histogram and below/above.
            fs, cnt, _ = self._act_stats(x, 1)
            _, cnt_abs, hist = self._act_stats(x.abs(), p.bins)
            t = (fs, torch.cat([cnt[:, :5], cnt_abs[:, 5:]], 1), hist)
        else:
            t = self._act_stats(x, p.bins)
        prev = self._cur[j]
        self._cur[j] = t if prev is None else _merge(prev, t)

    def _act_stats(self, x: torch.Tensor, bins: int):
        """``(fstats, counts, hist)`` of ``act_stats(x, bins, preset.lo, preset.hi, preset.eps)``.

        The public :func:`pydl.act_stats` checks every argument and enters the torch dispatcher through a
        Python kernel that checks them again: some 20-40 us per call, the whole cost of a hooked layer whose
        output is small (see benchmarks/results/cpu-debug-overhead). Here only ``x`` changes from call to
        call, and only its dtype, device and the backend can make the checks' verdict change; so the first
        call for each such combination goes the public way (every check, every error as the public function
        raises it) and the later ones call the backend's kernel straight away -- the function the op's
        dispatcher kernel calls, looked up per call, so ``pydl.backend(...)`` and ``Op.override`` still
        apply. Under ``torch.compile`` or a dispatch mode, or for a tensor subclass, every call stays
        public: those need to see the ``pydl::act_stats`` op itself.
        """
        p = self.preset
        name = self.backend if self.backend is not None else get_backend()
        dev = x.device.type
        key = (x.dtype, dev, name, bins)
        if key in self._checked and plain_eager(x):
            return _ACT_STATS(name, dev, x, bins, p.lo, p.hi, p.eps, False)
        r = act_stats(x, bins, p.lo, p.hi, p.eps, False, self.backend)
        if dev in ("cpu", "cuda"):  # the devices the op has dispatcher kernels for (meta & co. only fake ones)
            self._checked.add(key)
        return r.fstats, r.counts, r.hist_all

    def _end(self, module, args, output):
        if not self._active:
            return
        self._active = False
        self._pending.append((self._cur_step, self._cur))
        self._cur = None
        if len(self._pending) >= self.chunk:
            self.flush()

    # ---- moving results to the host
    def flush(self) -> None:
        """Copy the pending device results to the host (one concatenation and copy per field for all
        pending steps and layers). Called every ``chunk`` recorded steps, on :meth:`remove` and before any
        read."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        sample = next((t for _, cur in pending for t in cur if t is not None), None)
        T, L, bins = len(pending), len(self.modules), self.preset.bins
        steps = np.array([s for s, _ in pending], dtype=np.int64)
        if sample is None:  # no layer produced a floating output
            fs = np.full((T, L, 4), np.nan)
            cnt = np.zeros((T, L, 7), np.int64)
            hist = np.zeros((T, L, bins), np.int64)
        else:
            dev = sample[0].device
            empty = (torch.tensor([[math.nan] * 4], dtype=torch.float64, device=dev),
                     torch.zeros(1, 7, dtype=torch.int64, device=dev),
                     torch.zeros(1, bins, dtype=torch.int64, device=dev))
            rows = [t if t is not None else empty for _, cur in pending for t in cur]
            one_dev = all(t[0].device == dev for t in rows)

            def gather(i, dtype):
                parts = [t[i] for t in rows] if one_dev else [t[i].cpu() for t in rows]
                if any(p.dtype != dtype for p in parts):
                    parts = [p.to(dtype) for p in parts]
                return torch.cat(parts).cpu().numpy()

            fs = gather(0, torch.float64).reshape(T, L, 4)
            cnt = gather(1, torch.int64).reshape(T, L, 7)
            hist = gather(2, torch.int64).reshape(T, L, bins)
        self._store.append(steps, fs, cnt, hist)
        self.every = self._store.enforce(self.every)
        self._data_cache = None

    @property
    def data(self) -> StatsData:
        """Everything recorded so far, on the host."""
        self.flush()
        if self._data_cache is None:
            arrs = self._store.arrays()
            L, bins = len(self.modules), self.preset.bins
            if arrs is None:
                arrs = (np.zeros(0, np.int64), np.zeros((0, L, 4)), np.zeros((0, L, 7), np.int64),
                        np.zeros((0, L, bins), np.int64))
            self._data_cache = StatsData(self.names, self.preset, *arrs, epoch_steps=self._epochs(),
                                         every=self.every, labels=self.labels)
        return self._data_cache

    def _epochs(self) -> List[int]:
        if self.epoch_steps or not self.steps_per_epoch:
            return list(self.epoch_steps)
        return list(range(self.steps_per_epoch, self.step, self.steps_per_epoch))

    def mark_epoch(self) -> None:
        """Note that an epoch ends here (a separator line in the plots)."""
        self.epoch_steps.append(self.step)
        self._data_cache = None

    def reset(self) -> None:
        """Forget everything recorded (the hooks stay)."""
        self._pending, self._cur, self._active = [], None, False
        self._store = _HostStore(self._store.max_records, self._store.on_full)
        self.step, self.epoch_steps, self._data_cache = 0, [], None

    def remove(self) -> None:
        """Remove every hook (safe twice); what was recorded stays readable."""
        for h in self.hooks:
            h.remove()
        for h in self._root:
            h.remove()
        self._root = []
        self.flush()

    def __enter__(self) -> "ActivationStats":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __len__(self) -> int:
        return self._store.total + len(self._pending)

    def __repr__(self):
        return (f"ActivationStats({len(self.modules)} layers, preset={self.preset.name}, every={self.every}, "
                f"records={len(self)})")

    # ---- shortcuts to StatsData
    def save_npz(self, path) -> str:
        return self.data.save_npz(path)

    def to_json(self, path=None, hist: bool = True) -> str:
        return self.data.to_json(path, hist)

    def to_tensorboard(self, writer=None, log_dir=None, prefix: str = "activations"):
        return self.data.to_tensorboard(writer, log_dir, prefix)

    def plot_colorful_dimension(self, path=None, **kw):
        return self.data.plot_colorful_dimension(path, **kw)

    def plot_layer_stats(self, path=None, **kw):
        return self.data.plot_layer_stats(path, **kw)

    def plot_dead_chart(self, path=None, **kw):
        return self.data.plot_dead_chart(path, **kw)
