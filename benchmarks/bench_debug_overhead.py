"""What ActivationStats costs a training step (target: <= 10% of step time on CPU).

(Why one long file: the verdict, the per-framework runs and the --breakdown are three views of one
measurement -- the same models, recorders and paired timing -- and read best side by side.)

The small CNN of the fastai 2022 course (five stride-2 3x3 convs with batch norm and ReLU; batch 512 of
1x28x28, MNIST-sized) trained with SGD: forward, cross-entropy, backward, step, zero_grad. "torch" is the
plain step; "pydl" is the same step on an identical copy of the model with an ActivationStats recording
**every** batch (its act_stats kernels on the backend named in the row). The target is checked for the
default configuration (preset fastai2019 on the 9 leaf modules with parameters: convs and BNs). Shown for
information: the ``course2022`` preset (two act_stats passes + abs per layer), all leaf modules (ReLUs
too), a harsher model whose stride-1 first block makes large activations for little compute, and for
comparison the same statistics taken the way fastai v2 does (eager torch ops + .item() per layer).

Both steps are timed with benchmarks.common (torch.utils.benchmark, blocked_autorange, same threads). On a
shared machine two timings taken a minute apart drift apart, so there is also a *paired* measurement: a
plain step and a recorded step back to back, many times, and the median of the per-pair overheads. Both
are wall time, which a busy machine distorts (with 2 OpenMP threads a descheduled thread stalls every
parallel region). The verdict therefore uses the CPU time of each step on one thread
(``time.thread_time``), which other processes cannot inflate: the work the recorder adds.

    python -m benchmarks.bench_debug_overhead [--quick] [--threads N]     # exit status 1 if over target
    python -m benchmarks.bench_debug_overhead --frameworks [--rounds R]   # inside fastai / Lightning fits

``--frameworks`` (needs ``pydl[fastai]`` and ``pydl[lightning]``): the same course CNN trained by fastai's
``Learner`` with no callback, with fastai's own ``ActivationStats(with_hist=True)`` and with
``pydl.integrations.fastai.ActivationStats``; and by Lightning's ``Trainer`` without and with
``pydl.integrations.lightning.ActivationStatsCallback`` (every batch, no logger, no PNG: the recording
cost). Interleaved: each round fits one epoch with every variant, in an order that rotates from round to
round, and the per-round ratios to the plain fit are summarised by their median. Timed in CPU time of one
thread (``time.thread_time``, one torch thread, DataLoader without workers), which other load cannot
inflate; only the training epoch is timed (from the first to the last training batch event), not the
framework's set-up. Information, no target.

``--breakdown [--rounds R]`` (where the overhead goes): the verdict's configuration taken apart,
in CPU time of one thread. Interleaved steps of
the plain model and of recorders that leave out one part each (the kernel; the direct kernel call, i.e.
the recorder as it was when every hooked layer went through the public ``pydl.act_stats``); the kernel
alone on the step's own activations next to one ``x.sum()`` of each; fastai's ``x <= eps`` count (torch's and
numpy's); the same calls timed inside the training step (each hook runs after the model's kernels have
evicted the caches: ~2.0 ms there against ~1.45 ms alone, course CNN, one thread); and the
torch profiler's per-op difference between a recorded and a plain step.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from .common import Case, environment, format_table, run_cases, set_threads

from pydl import act_stats
from pydl.debug import ActivationStats, leaf_modules

TARGET = 0.10  # overhead as a fraction of the plain step


def course_cnn() -> nn.Module:
    """The fastai 2022 course's CNN for (Fashion-)MNIST (notebook 10_activations, with batch norm): five
    stride-2 3x3 convs 1-8-16-32-64-10, each but the last followed by BatchNorm2d + ReLU, then Flatten."""
    nfs = [1, 8, 16, 32, 64]
    layers = []
    for ci, co in zip(nfs[:-1], nfs[1:]):
        layers += [nn.Conv2d(ci, co, 3, 2, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Conv2d(64, 10, 3, 2, 1), nn.Flatten())


def cifar_cnn() -> nn.Module:
    """A harsher case: a stride-1 first block at 32x32, so the largest activations cost little compute."""
    def block(ci, co, stride):
        return [nn.Conv2d(ci, co, 3, stride, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 16, 1), *block(16, 32, 2), *block(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


MODELS = {"course": (course_cnn, (512, 1, 28, 28), "course CNN bs512 1x28x28"),
          "cifar": (cifar_cnn, (64, 3, 32, 32), "stride-1 CNN bs64 3x32x32")}


def make_step(model: nn.Module, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _setup(model_name: str, preset: str, include_parameterless: bool, every: int = 1):
    def setup():
        torch.manual_seed(0)
        build, shape, _ = MODELS[model_name]
        x = torch.randn(shape)
        y = torch.randint(0, 10, (shape[0],))
        plain = build()
        hooked = copy.deepcopy(plain)
        keep = {}

        def pydl_fn(backend):
            if "stats" in keep:  # one recorder per model
                keep["stats"].remove()
            if preset == EAGER:
                keep["stats"] = EagerFastaiStats(hooked, include_parameterless)
            else:
                keep["stats"] = ActivationStats(hooked, preset=preset, include_parameterless=include_parameterless,
                                                backend=backend, every=every)
            return make_step(hooked, x, y)

        return {"torch": make_step(plain, x, y), "pydl": pydl_fn, "keep": keep}

    return setup


EAGER = "fastai-eager"


class EagerFastaiStats:
    """For comparison, what fastai v2's ActivationStats(with_hist=True) does per layer per batch, in plain
    PyTorch: mean, std and near-zero share with ``.item()`` (three host syncs) and ``histc(40, 0, 10)``."""

    def __init__(self, model, include_parameterless=False):
        self.records = []
        self.hooks = [m.register_forward_hook(self.hook) for m in leaf_modules(model, include_parameterless)]

    def hook(self, module, inputs, o):
        if not module.training:
            return
        o = o.detach().float()
        self.records.append({"mean": o.mean().item(), "std": o.std().item(),
                             "near_zero": (o <= 0.05).long().sum().item() / o.numel(), "hist": o.histc(40, 0, 10)})

    def remove(self):
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def __len__(self):
        return len(self.records)


# (model, preset, include_parameterless, every, gated): the first is the target configuration
VARIANTS = [("course", "fastai2019", False, 1, True), ("course", "course2022", False, 1, False),
            ("course", "fastai2019", True, 1, False), ("cifar", "fastai2019", False, 1, False),
            ("course", EAGER, False, 1, False), ("course", "fastai2019", False, 4, False)]


def _label(preset):
    return "fastai-v2-style eager hooks" if preset == EAGER else f"ActivationStats {preset}"


def _every(every):
    return "every step" if every == 1 else f"every {every} steps"


def _what(model_name, incl):
    n = len(leaf_modules(MODELS[model_name][0](), incl))
    return f"{n} layers"


def cases(quick: bool, device: str):
    if device != "cpu":
        return []  # the target is about the CPU; on a GPU the hooks never wait for the device anyway
    out = []
    for model_name, preset, incl, every, _ in (VARIANTS[:1] if quick else VARIANTS):
        out.append(Case("act_stats", f"{_label(preset)}, {_what(model_name, incl)}, {_every(every)}",
                        MODELS[model_name][2], "float32", _setup(model_name, preset, incl, every), backends=("cpu",),
                        note="torch = plain training step; pydl = the same step with stats recorded"))
    return out


def paired_overhead(model_name: str = "course", preset: str = "fastai2019", include_parameterless: bool = False,
                    pairs: int = 60, backend: str = "cpu", every: int = 1, clock=time.perf_counter):
    """Step-by-step pairs: a plain step and a recorded step back to back (order alternating, ABBA, so slow
    drift cancels), ``pairs`` times. Returns (median of per-pair overheads, overhead of the fastest steps,
    median plain ms, median recorded ms, overhead of the total times). Other processes on a shared machine
    come and go within seconds; two steps a few milliseconds apart see the same load, so their ratio is
    steadier than that of two timings taken a minute apart. ``clock=time.thread_time`` (with one thread)
    counts only the CPU time the step itself ran: the work, whatever else the machine is doing."""
    fns = _setup(model_name, preset, include_parameterless, every)()
    plain, hooked = fns["torch"], fns["pydl"](backend)
    for _ in range(3):  # warm-up: allocator, first act_stats call (extension load)
        plain()
        hooked()
    tp, th, ratios = [], [], []
    for i in range(pairs):
        order = (plain, hooked) if i % 2 == 0 else (hooked, plain)
        t = []
        for fn in order:
            t0 = clock()
            fn()
            t.append(clock() - t0)
        a, b = (t[0], t[1]) if i % 2 == 0 else (t[1], t[0])
        tp.append(a)
        th.append(b)
        ratios.append(b / a - 1)
    stats = fns["keep"]["stats"]
    stats.remove()
    assert len(stats) >= pairs // every  # the recorder really recorded
    if isinstance(stats, ActivationStats):
        assert stats.data.hist.sum() > 0
    # with every > 1 most recorded-model steps record nothing: their median says little, the total says it
    return (statistics.median(ratios), min(th) / min(tp) - 1, 1e3 * statistics.median(tp),
            1e3 * statistics.median(th), sum(th) / sum(tp) - 1)


def _framework_data(batches: int):
    torch.manual_seed(0)
    _, shape, _ = MODELS["course"]
    n = shape[0] * batches
    return torch.randn((n,) + shape[1:]), torch.randint(0, 10, (n,)), shape[0]


class _EpochClock:
    """Thread CPU time from the first training batch's start to the last one's end, per epoch: the
    training loop only, without the framework's set-up, validation or teardown."""

    def __init__(self):
        self.t0, self.times = None, []

    def start(self):
        if self.t0 is None:
            self.t0 = time.thread_time()

    def stop(self, last: bool):
        if last:
            self.times.append(time.thread_time() - self.t0)
            self.t0 = None


def _interleaved(runners: dict, rounds: int) -> dict:
    """``runners``: name -> callable running one epoch and returning its time. Round r runs them in an
    order rotated by r. Returns name -> (median seconds, median ratio to the first runner, q1, q3)."""
    names = list(runners)
    times = {k: [] for k in names}
    for r in range(rounds + 1):
        order = names[r % len(names):] + names[:r % len(names)]
        got = {k: runners[k]() for k in order}
        if r == 0:
            continue  # warm-up round: allocator, act_stats extension load, first-fit set-up
        for k in names:
            times[k].append(got[k])
    base = names[0]
    out = {}
    for k in names:
        ratios = sorted(a / b for a, b in zip(times[k], times[base]))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out[k] = (statistics.median(times[k]), statistics.median(ratios), q[0], q[2])
    return out


def fastai_overhead(rounds: int = 8, batches: int = 8) -> dict:
    """The course CNN in a fastai Learner: plain vs fastai's ActivationStats(with_hist=True) vs pydl's."""
    from fastai.callback.hook import ActivationStats as FastaiStats
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.callback.core import Callback
    import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
    from pydl.integrations.fastai import ActivationStats as PydlStats

    x, y, bs = _framework_data(batches)
    ds = list(zip(x, y))
    base = course_cnn()

    class Clock(Callback):
        order = 100

        def __init__(self, clock):
            self.clock = clock

        def before_batch(self):
            if self.training:
                self.clock.start()

        def after_batch(self):
            if self.training:
                self.clock.stop(self.iter == self.n_iter - 1)

    def runner(cb_factory):
        clock = _EpochClock()
        dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=False, drop_last=True), DataLoader(ds[:bs], bs=bs))
        cbs = [Clock(clock)] + ([cb_factory()] if cb_factory else [])
        learn = Learner(dls, copy.deepcopy(base), loss_func=nn.CrossEntropyLoss(), opt_func=_fastai_sgd(), cbs=cbs)

        def run():
            with learn.no_bar(), learn.no_logging():
                learn.fit(1, 0.01)
            return clock.times[-1]
        return run

    return _interleaved({"plain Learner": runner(None),
                         "fastai ActivationStats(with_hist=True)": runner(lambda: FastaiStats(with_hist=True)),
                         "pydl.integrations.fastai.ActivationStats": runner(lambda: PydlStats(with_hist=True)),
                         "pydl's, near_zero='abs' (no x <= eps pass)": runner(lambda: PydlStats(near_zero="abs"))},
                        rounds)


def _fastai_sgd():
    from fastai.optimizer import SGD
    from functools import partial
    return partial(SGD, mom=0.9)


def lightning_overhead(rounds: int = 8, batches: int = 8) -> dict:
    """The course CNN in a Lightning Trainer: without vs with pydl's ActivationStatsCallback."""
    import logging

    import lightning.pytorch as pl
    from pydl.integrations.lightning import ActivationStatsCallback

    for name in ("lightning.pytorch", "lightning.fabric"):  # set after the import, which sets INFO
        logging.getLogger(name).setLevel(logging.ERROR)

    x, y, bs = _framework_data(batches)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=bs)
    base = course_cnn()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(base)

        def training_step(self, batch, i):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    class Clock(pl.Callback):
        def __init__(self, clock):
            self.clock = clock

        def on_train_batch_start(self, trainer, module, batch, i):
            self.clock.start()

        def on_train_batch_end(self, trainer, module, out, batch, i):
            self.clock.stop(i == trainer.num_training_batches - 1)

    def runner(with_stats):
        module = Module()

        def run():
            clock = _EpochClock()
            cbs = [Clock(clock)] + ([ActivationStatsCallback(every_n_steps=1, colorful_png=None)] if with_stats else [])
            trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, callbacks=cbs,
                                 enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
            trainer.fit(module, loader)
            return clock.times[-1]
        return run

    return _interleaved({"plain Trainer": runner(False), "with pydl ActivationStatsCallback": runner(True)}, rounds)


class PublicOpStats(ActivationStats):
    """The recorder as it was before its hooks called the act_stats kernel directly: the public op (every
    argument checked, the dispatcher entered through its Python kernel) for every hooked layer."""

    def _act_stats(self, x, bins):
        p = self.preset
        r = act_stats(x, bins, p.lo, p.hi, p.eps, False, self.backend)
        return r.fstats, r.counts, r.hist_all


class NoKernelStats(ActivationStats):
    """Everything but the kernel: each call returns the result computed for the first tensor of its shape,
    while the hooks, the per-step bookkeeping and the chunked host copies all run as usual."""

    def _act_stats(self, x, bins):
        memo = self.__dict__.setdefault("_memo", {})
        key = (tuple(x.shape), bins)
        if key not in memo:
            memo[key] = super()._act_stats(x, bins)
        return memo[key]


class HookTimedStats(ActivationStats):
    """The recorder with a CPU-time clock (time.thread_time, one thread) around each hooked layer's act_stats
    call, as the training step runs it: ``times[j]`` lists layer j's call times."""

    def _act_stats(self, x, bins):
        t0 = time.thread_time()
        r = super()._act_stats(x, bins)
        times = self.__dict__.setdefault("times", {})
        j = self.__dict__.get("_j", 0)
        times.setdefault(j, []).append(time.thread_time() - t0)
        return r

    def _layer(self, j, output):
        self._j = j
        super()._layer(j, output)


def _median_thread_ms(fn, n: int = 30) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.thread_time()
        fn()
        ts.append(time.thread_time() - t0)
    return 1e3 * statistics.median(ts)


def breakdown(rounds: int = 30, model_name: str = "course", preset: str = "fastai2019", backend: str = "cpu"):
    """Print where the recorder's per-step CPU time goes (see the module docstring); one torch thread."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    torch.manual_seed(0)
    build, shape, label = MODELS[model_name]
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    base = build()
    kinds = {"plain": None, "recorder": ActivationStats, "public op every call": PublicOpStats,
             "recorder without the kernel": NoKernelStats}
    models = {k: copy.deepcopy(base) for k in kinds}
    recs = {k: cls(models[k], preset=preset, backend=backend) for k, cls in kinds.items() if cls}
    steps = {k: make_step(m, x, y) for k, m in models.items()}

    def timed(fn, n=3):
        def run():
            t0 = time.thread_time()
            for _ in range(n):
                fn()
            return (time.thread_time() - t0) / n
        return run

    res = _interleaved({k: timed(f) for k, f in steps.items()}, rounds)
    plain_ms = 1e3 * res["plain"][0]
    print(f"{label}, {preset}, {len(recs['recorder'].modules)} layers, every step; CPU time per step, 1 thread, "
          f"{rounds} interleaved rounds of 3 steps; overhead = median per-round ratio to the plain step")
    for k, (sec, ratio, q1, q3) in res.items():
        print(f"  {k:30s} {1e3 * sec:7.2f} ms  overhead {100 * (ratio - 1):+5.1f}% ({100 * (q1 - 1):+.1f} to "
              f"{100 * (q3 - 1):+.1f})  = {plain_ms * (ratio - 1):+.2f} ms")
    for r in recs.values():
        r.remove()

    # the kernel on this step's own activations (what the hooks see: conv outputs, BN outputs before ReLU)
    acts = []
    hooks = [m.register_forward_hook(lambda mod, i, o: acts.append(o.detach().clone()))
             for m in leaf_modules(base)]
    base(x)
    for h in hooks:
        h.remove()
    p = recs["recorder"].preset
    rows, alone, tot = [], [], {"kernel": 0.0, "sum": 0.0, "le": 0.0, "le_np": 0.0}
    for a in acts:
        k = _median_thread_ms(lambda a=a: act_stats(a, p.bins, p.lo, p.hi, p.eps, False, backend))
        alone.append(k)
        s = _median_thread_ms(lambda a=a: a.sum())
        le = _median_thread_ms(lambda a=a: torch.count_nonzero(a <= p.eps))
        le_np = _median_thread_ms(lambda a=a: np.count_nonzero(a.numpy() <= np.float32(p.eps)))
        for name, v in (("kernel", k), ("sum", s), ("le", le), ("le_np", le_np)):
            tot[name] += v
        rows.append(f"    {tuple(a.shape)!s:18s} act_stats {k:6.3f} ms = {k / s:5.1f}x x.sum(); x <= eps count: "
                    f"torch {le:6.3f} ms, numpy {le_np:6.3f} ms; {100 * float((a < 0).float().mean()):.0f}% below lo")
    print(f"  act_stats on this step's {len(acts)} activations, one call each (kernel and wrapper): "
          f"{tot['kernel']:.2f} ms = {100 * tot['kernel'] / plain_ms:.1f}% of the plain step, "
          f"{tot['kernel'] / tot['sum']:.1f}x their x.sum(); fastai's extra x <= eps count: torch's count_nonzero "
          f"{tot['le']:.2f} ms = {100 * tot['le'] / plain_ms:.1f}%, numpy's (the recorder's, on the CPU) "
          f"{tot['le_np']:.2f} ms = {100 * tot['le_np'] / plain_ms:.1f}%")
    print("\n".join(rows))

    # the same calls inside the training step: the hooks run between the model's own kernels, which have
    # evicted the caches (code and data alike), so each call costs more than alone
    timed_model = copy.deepcopy(base)
    rec_t = HookTimedStats(timed_model, preset=preset, backend=backend)
    step_t = make_step(timed_model, x, y)
    for _ in range(3):
        step_t()
    rec_t.times = {}
    for _ in range(max(rounds, 10)):
        step_t()
    rec_t.remove()
    in_step = [1e3 * statistics.median(rec_t.times[j]) for j in sorted(rec_t.times)]
    print(f"  the same act_stats calls inside the training step (hook to hook, CPU time, median of "
          f"{max(rounds, 10)} steps): {sum(in_step):.2f} ms = {100 * sum(in_step) / plain_ms:.1f}% of the plain "
          f"step, vs {tot['kernel']:.2f} ms alone; per layer (ms, in step / alone): "
          + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(in_step, alone)))

    # the torch profiler: per op, self CPU time in recorded steps minus that in plain steps, the two kinds
    # of step alternating inside one profiling session (so that load from other processes hits both alike)
    from torch.autograd import profiler as autograd_profiler

    rec2 = ActivationStats(models["recorder"], preset=preset, backend=backend)
    n = 6
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(2 * n):
            kind = ("plain", "recorder")[i % 2]
            with autograd_profiler.record_function(f"step:{kind}"):
                steps[kind]()
    rec2.remove()
    per = {"plain": {}, "recorder": {}}
    calls = {"plain": {}, "recorder": {}}
    for e in prof.events():
        root = e
        while root.cpu_parent is not None:
            root = root.cpu_parent
        kind = root.name[5:] if root.name.startswith("step:") else None
        if kind is None or e is root:
            continue
        per[kind][e.name] = per[kind].get(e.name, 0.0) + e.self_cpu_time_total / n / 1e3
        calls[kind][e.name] = calls[kind].get(e.name, 0) + 1 / n
    total = sum(per["recorder"].values()) - sum(per["plain"].values())
    # ops the plain step runs as often are the same work; their time differences are the load's noise
    extra = sorted(((t - per["plain"].get(k, 0.0), k) for k, t in per["recorder"].items()
                    if round(calls["recorder"][k]) != round(calls["plain"].get(k, 0))), reverse=True)
    print(f"  torch profiler ({n} plain and {n} recorded steps alternating; profiled wall times, inflated by the "
          f"profiler and by load): recorded - plain self time = {total:+.2f} ms per step; the ops a recorded step "
          f"runs more often than a plain one:")
    for d, k in extra:
        print(f"    {k:40s} {d:+7.3f} ms per step ({calls['recorder'][k]:.0f} calls per recorded step, "
              f"{calls['plain'].get(k, 0):.0f} per plain step)")


def frameworks_main(rounds: int) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    env = environment("cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {env['date']}  cpu={env['cpu']}  cores={os.cpu_count()}  load(1 min)={load:.1f}  threads=1  "
          f"torch {env['torch']}  pydl {env['pydl']}@{env['git']}")
    print(f"course CNN bs512 1x28x28, SGD, 8 batches per epoch; CPU time of the training epoch, {rounds} "
          f"interleaved rounds; ratio to the plain fit: median (25th-75th percentile)")
    for title, fn in (("fastai Learner", fastai_overhead), ("Lightning Trainer", lightning_overhead)):
        print(f"\n{title}:")
        for k, (sec, ratio, q1, q3) in fn(rounds).items():
            print(f"  {k:45s} {1e3 * sec:8.1f} ms/epoch  {ratio:.3f}x ({q1:.3f}-{q3:.3f})  "
                  f"overhead {100 * (ratio - 1):+.1f}%")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument("--frameworks", action="store_true", help="fastai / Lightning callbacks (see the docstring)")
    p.add_argument("--rounds", type=int, default=None, help="default 8 with --frameworks, 30 with --breakdown")
    p.add_argument("--breakdown", action="store_true", help="where the overhead goes (see the docstring)")
    args = p.parse_args(argv)
    if args.breakdown:
        env = environment("cpu")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"# {env['date']}  cpu={env['cpu']}  cores={os.cpu_count()}  load(1 min)={load:.1f}  threads=1  "
              f"torch {env['torch']}  pydl {env['pydl']}@{env['git']}")
        breakdown(4 if args.quick else args.rounds or 30)
        return 0
    if args.frameworks:
        return frameworks_main(2 if args.quick else args.rounds or 8)
    threads = set_threads(args.threads)
    env = environment("cpu")
    print(f"# {env['date']}  cpu={env['cpu']}  threads={threads}  torch {env['torch']}  "
          f"pydl {env['pydl']}@{env['git']}")
    rows = run_cases(cases(args.quick, "cpu"), "cpu", args.quick)
    print(format_table(rows))
    for r in rows:
        print(f"  {r.variant}: overhead {100 * (r.median_ms / r.torch_ms - 1):+.1f}% "
              f"({r.median_ms:.2f} ms vs {r.torch_ms:.2f} ms)")
    pairs = 20 if args.quick else args.pairs
    print(f"\npaired wall time at {threads} thread(s) (plain/recorded steps back to back, {pairs} pairs):")
    for model_name, preset, incl, every, _gated in (VARIANTS[:1] if args.quick else VARIANTS):
        med, best, tp, th, total = paired_overhead(model_name, preset, incl, pairs, every=every)
        print(f"  {MODELS[model_name][2]}, {_label(preset)}, {_what(model_name, incl)}, {_every(every)}: "
              f"median step plain {tp:.2f} ms, recorded {th:.2f} ms; overhead median {100 * med:+.1f}%, "
              f"fastest-vs-fastest {100 * best:+.1f}%, total {100 * total:+.1f}%")
    # The verdict: CPU work, which waiting for a busy CPU cannot inflate -- one thread (no OpenMP barrier
    # to spin in while the other thread is descheduled) and time.thread_time (only time this thread ran).
    print(f"\nCPU work per step (1 thread, time.thread_time, {pairs} pairs; robust to other load; the verdict):")
    torch.set_num_threads(1)
    ok = True
    cpu_variants = VARIANTS[:1] if args.quick else [VARIANTS[i] for i in (0, 1, 5, 4)]
    for model_name, preset, incl, every, gated in cpu_variants:
        med, best, tp, th, total = paired_overhead(model_name, preset, incl, pairs, every=every,
                                                   clock=time.thread_time)
        over = med if every == 1 else total
        verdict = ("PASS" if over <= TARGET else "FAIL") if gated else "info"
        ok &= over <= TARGET or not gated
        print(f"  {MODELS[model_name][2]}, {_label(preset)}, {_what(model_name, incl)}, {_every(every)}: "
              f"plain {tp:.2f} ms, recorded {th:.2f} ms of CPU; overhead median {100 * med:+.1f}%, "
              f"total {100 * total:+.1f}%  [{verdict}, target <= {100 * TARGET:.0f}%]")
    torch.set_num_threads(threads)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
