"""``pydl demo``: the main job. Train on real data with pydl's kernels and show everything inside.

    pydl demo                 # a small CNN on scikit-learn's handwritten digits (real scans, no download)
    pydl demo --data DIR      # any ImageFolder-style directory (DIR/<class>/<image>)
    pydl demo rnn             # a character-level LSTM on text that ships with Python
    pydl demo gaf             # a CNN on time series drawn as Gramian angular fields (synthetic waves)
    pydl demo --quick         # the < 30 s version the tests run

It writes a self-contained report folder (default ./pydl-demo/): report.html (opens offline; images are
files beside it), PNGs, and the raw data as NPZ/JSON -- training curves, the colorful dimension of every
layer, layer statistics, Grad-CAM and occlusion overlays for right and wrong predictions, top-activating
patches per channel, 1D and 2D loss landscapes, gradient flow, a table timing this model's layers with pydl
vs torch, and what ran where (pydl doctor). The report's path is printed last.

The package, one idea a module: ``data`` (the images), ``models``, ``train`` (loop, evaluation, warm-up),
``timing`` (this model's layers, pydl vs torch), ``figures`` (curves and every debugger's figure),
``report`` (the HTML page), ``run`` (what every demo run shares: folder, seed, backend scope, ending), and
one module per demo: ``cnn``, ``rnn``, ``gaf``. This file is the command line.
"""
from __future__ import annotations

import os

from .. import backends
from .cnn import run_cnn
from .data import load_digits, load_image_folder
from .gaf import WAVES, plot_gaf_examples, run_gaf, synthetic_series
from .models import CharLM, make_cnn
from .rnn import run_rnn, sample_text, stdlib_text
from .timing import time_layers, timing_text
from .train import evaluate, train

__all__ = ["run_cnn", "run_rnn", "run_gaf", "load_digits", "load_image_folder", "make_cnn", "CharLM", "train",
           "evaluate", "time_layers", "timing_text", "WAVES", "synthetic_series", "plot_gaf_examples",
           "stdlib_text", "sample_text", "register"]


def register(sub) -> None:
    p = sub.add_parser("demo", help="train a small model with pydl kernels and write a report of its insides")
    p.add_argument("which", nargs="?", default="cnn", choices=["cnn", "rnn", "gaf"])
    p.add_argument("--quick", action="store_true", help="the < 30 s version")
    p.add_argument("--data", default=None, help="an ImageFolder-style directory instead of the digits")
    p.add_argument("--backend", default=None, choices=list(backends.NAMES))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", default=None, help="report folder (default ./pydl-demo, ./pydl-demo-rnn, ./pydl-demo-gaf)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_main)


def _main(args) -> int:
    if args.which == "rnn":
        res = run_rnn(args.out or "pydl-demo-rnn", quick=args.quick, backend=args.backend, seed=args.seed)
        print(f"final loss {res['final_loss']:.3f} nats/char; sample:\n{res['sample'][:300]}")
    elif args.which == "gaf":
        res = run_gaf(args.out or "pydl-demo-gaf", quick=args.quick, backend=args.backend, seed=args.seed,
                      epochs=args.epochs)
        print(f"validation accuracy {res['valid_acc']:.3f}")
    else:
        res = run_cnn(args.out or "pydl-demo", quick=args.quick, data=args.data, backend=args.backend,
                      epochs=args.epochs, seed=args.seed)
        print(f"validation accuracy {res['valid_acc']:.3f}")
    print(os.path.abspath(res["report"]))
    return 0
