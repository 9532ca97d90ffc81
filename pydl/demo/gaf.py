"""Time series classified by an image model: synthetic waves drawn as Gramian angular fields (GASF and GADF
after PAA, :class:`pydl.transforms.GramianAngularField`) and fed to the digits demo's CNN."""
from __future__ import annotations

import math
import os

import torch

from .. import backends
from ..debug.plots import new_figure, save_figure
from .figures import plot_curves
from .models import make_cnn
from .report import img
from .run import DemoRun, backend_scope
from .train import evaluate, train, warm_up

WAVES = ("sine", "square", "sawtooth", "triangle")


def synthetic_series(n: int, length: int = 96, noise: float = 0.3, seed: int = 0):
    """``n`` noisy periodic series of ``length`` points, one of :data:`WAVES` each (balanced classes): random
    frequency (1.5 to 4 cycles), phase, amplitude (0.5 to 2) and offset, plus Gaussian noise of ``noise``
    times the amplitude. Amplitude and offset carry no class information on purpose: the Gramian angular
    field's min-max rescaling removes them, so the CNN must read the shape. Returns ``(x (n, length),
    y (n,))``."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % len(WAVES))[torch.randperm(n, generator=g)]
    t = torch.linspace(0, 1, length)
    cycles = 1.5 + 2.5 * torch.rand(n, 1, generator=g)
    u = (cycles * t + torch.rand(n, 1, generator=g)) % 1.0        # position within the period, in [0, 1)
    waves = torch.stack([torch.sin(2 * math.pi * u), torch.where(u < 0.5, 1.0, -1.0), 2 * u - 1,
                         1 - 4 * (u - 0.5).abs()])                # (4, n, length), each in [-1, 1]
    amp = 0.5 + 1.5 * torch.rand(n, 1, generator=g)
    x = amp * waves[y, torch.arange(n)] + torch.randn(n, 1, generator=g) + noise * amp * torch.randn(
        n, length, generator=g)
    return x, y


def plot_gaf_examples(x, y, images, path: str, names=WAVES):
    """One column per class: the series, its GASF and its GADF (channels 0 and 1 of ``images``)."""
    cols = [int((y == c).nonzero()[0]) for c in range(len(names))]
    fig = new_figure((2.4 * len(cols), 6.6))
    axes = fig.subplots(3, len(cols), squeeze=False)
    for j, i in enumerate(cols):
        axes[0, j].plot(x[i].numpy(), lw=1)
        axes[0, j].set_title(names[j], fontsize=9)
        for r, label in ((1, "GASF"), (2, "GADF")):
            axes[r, j].imshow(images[i, r - 1].numpy(), cmap="rainbow", vmin=-1, vmax=1, origin="lower")
            axes[r, j].set_xticks([])
            axes[r, j].set_yticks([])
            if j == 0:
                axes[r, j].set_ylabel(label, fontsize=9)
    return save_figure(fig, path)


def run_gaf(out: str = "pydl-demo-gaf", quick: bool = False, backend: str | None = None, seed: int = 0,
            quiet: bool = False, epochs: int | None = None) -> dict:
    """Time series classification with an image model: synthetic waves (:func:`synthetic_series`) drawn as
    two-channel images (GASF and GADF after PAA, :class:`pydl.transforms.GramianAngularField`) and fed to the
    same pydl CNN as the digits demo. Writes report.html, the curves, example images and summary.json."""
    with backend_scope(backend):
        return _run_gaf(out, quick, seed, quiet, epochs)


def _run_gaf(out, quick, seed, quiet, epochs) -> dict:
    from ..transforms import GramianAngularField

    run = DemoRun(out, seed, quiet)
    n_train, n_valid = (400, 160) if quick else (1600, 400)
    size, widths = (16, (8, 16, 32)) if quick else (32, (16, 32, 64))   # quick: ~5 s of CPU for the tests
    epochs = epochs or (3 if quick else 8)
    x, y = synthetic_series(n_train + n_valid, seed=seed)
    to_image = GramianAngularField(("summation", "difference"), size=size)
    images = to_image(x)                                       # (n, 2, size, size), values in [-1, 1]
    xtr, ytr, xva, yva = images[:n_train], y[:n_train], images[n_train:], y[n_train:]
    run.say(f"pydl demo gaf: {n_train} train / {n_valid} valid series of {x.shape[1]} points -> {size}x{size} "
            f"GASF+GADF images, {len(WAVES)} classes, backend {backends.get_backend()}")
    model = make_cnn(len(WAVES), in_ch=2, widths=widths)
    warm_up(model, xtr[:4], run.say)
    hist = train(model, xtr, ytr, xva, yva, epochs=epochs, seed=seed, quiet=quiet)
    vl, va = evaluate(model, xva, yva)
    files = {"curves": plot_curves(hist, run.path("training_curves.png")),
             "examples": run.path("gaf_examples.png")}
    plot_gaf_examples(x, y, images, files["examples"])
    summary = {"valid_loss": vl, "valid_acc": va, "epochs": epochs, "train_series": n_train,
               "valid_series": n_valid, "series_length": int(x.shape[1]), "image_size": size,
               "classes": list(WAVES), "backend": backends.get_backend(), "seconds": run.seconds(),
               "history": hist, "files": {k: os.path.basename(v) for k, v in files.items()}}
    sections = [
        ("Result", (f"<p>Validation accuracy <b>{va:.3f}</b> (chance {1 / len(WAVES):.2f}), loss {vl:.3f}, after "
                   f"{epochs} epochs on {n_train} series; {summary['seconds']:.0f} s in all.</p>")),
        ("Series as images", img(files["examples"], "Each series is shortened to "
         f"{size} points by piecewise aggregation, rescaled to [-1, 1], read as angles phi = arccos(x) and drawn as "
         "cos(phi_i + phi_j) (GASF) and sin(phi_i - phi_j) (GADF): Wang & Oates 2015. The two fields are the "
         "CNN's two input channels.")),
        ("Training curves", img(files["curves"])),
    ]
    return run.finish(summary, "pydl demo: time series as Gramian angular fields", sections)
