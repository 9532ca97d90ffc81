"""The main demo: a CNN on handwritten digits (or an ImageFolder tree) trained with pydl's kernels, with
every debugger's figure, this model's layers timed against torch, and what ran where."""
from __future__ import annotations

import html
import os

import numpy as np
import torch

from .. import backends
from ..doctor import doctor_report
from .data import load_digits, load_image_folder
from .figures import debug_figures, debug_sections, plot_curves
from .models import make_cnn
from .report import img
from .run import DemoRun, backend_scope
from .timing import time_layers, timing_html, timing_text
from .train import evaluate, train, warm_up


def run_cnn(out: str = "pydl-demo", quick: bool = False, data: str | None = None, backend: str | None = None,
            epochs: int | None = None, seed: int = 0, quiet: bool = False) -> dict:
    """A CNN on handwritten digits (or ``data``, an ImageFolder tree) with every debugger; ``backend`` holds
    for this run only (a context, not the process default: the caller's choice is left as it was)."""
    with backend_scope(backend):
        return _run_cnn(out, quick, data, epochs, seed, quiet)


def _run_cnn(out, quick, data, epochs, seed, quiet) -> dict:
    from .. import debug
    from ..nn import GeneralRelu

    run = DemoRun(out, seed, quiet)
    if data:
        xtr, ytr, xva, yva, classes = load_image_folder(data, seed=seed)
    else:
        xtr, ytr, xva, yva, classes = load_digits(seed=seed)
    epochs = epochs or (2 if quick else 8)
    model = make_cnn(len(classes), in_ch=xtr.shape[1])
    run.say(f"pydl demo: {len(xtr)} train / {len(xva)} valid images {tuple(xtr.shape[1:])}, {len(classes)} "
            f"classes, backend {backends.get_backend()}, {torch.get_num_threads()} threads")

    # the activations after each GeneralRelu, binned over its natural range (-7, 7)
    acts = [m for m in model.modules() if isinstance(m, GeneralRelu)]
    stats = debug.ActivationStats(model, modules=acts, preset="general_relu")
    warm_up(model, xtr[:4], run.say)
    with stats:
        hist = train(model, xtr, ytr, xva, yva, epochs=epochs, seed=seed, stats=stats, quiet=quiet)
    vl, va = evaluate(model, xva, yva)
    run.say("report: training curves")
    files = {"curves": plot_curves(hist, run.path("training_curves.png"))}
    files.update(debug_figures(model, stats, xtr, ytr, xva, yva, classes, out, quick, say=run.say))
    run.say("report: timing this model's layers, pydl vs torch (interleaved rounds)")
    timing, machine = time_layers(model, xtr[:64], quick=quick)
    run.say(timing_text(timing, machine))
    run.say("report: what ran where (pydl doctor)")
    doc = doctor_report()
    summary = {"valid_loss": vl, "valid_acc": va, "epochs": epochs, "train_images": len(xtr),
               "valid_images": len(xva), "classes": classes, "backend": backends.get_backend(),
               "seconds": run.seconds(), "history": hist, "layer_timing": timing, "machine": machine,
               "files": {k: os.path.basename(v) for k, v in files.items()}}
    np.savez(run.path("history.npz"), **{k: np.asarray(v) for k, v in hist.items()})
    sections = [
        ("Result", (f"<p>Validation accuracy <b>{va:.3f}</b> (chance {1 / len(classes):.2f}), loss {vl:.3f}, after "
                   f"{epochs} epochs on {len(xtr)} images; {summary['seconds']:.0f} s in all. Kernels: backend "
                   f"<code>{html.escape(backends.get_backend())}</code>.</p>")),
        ("Training curves", img(files["curves"])),
        *debug_sections(files),
        ("This model's layers: pydl vs torch (forward + backward, this machine)", timing_html(timing, machine)),
    ]
    return run.finish(summary, "pydl demo: a CNN on handwritten digits, inside and out", sections, doctor=doc)
