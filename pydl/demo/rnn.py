"""The recurrent demo: a character-level LSTM (pydl's kernels) on English text that ships with every
Python, its activation statistics, and text sampled from it."""
from __future__ import annotations

import contextlib
import importlib
import io

import numpy as np
import torch
import torch.nn.functional as F

from ..debug.progress import progress
from .figures import activation_figures, debug_sections, plot_loss
from .models import CharLM
from .report import img, pre
from .run import DemoRun, backend_scope
from .train import warm_up

_STDLIB_MODULES = ("collections", "functools", "itertools", "json", "argparse", "logging", "pathlib", "textwrap",
                   "string", "re", "os", "random", "statistics", "decimal", "fractions", "heapq", "bisect",
                   "contextlib", "dataclasses", "typing", "unittest", "doctest", "pickle", "csv", "datetime")


def stdlib_text(min_chars: int = 60000) -> str:
    """English text that ships with every Python: the Zen of Python and the docstrings of stdlib modules."""
    import this  # prints the Zen on its first import (the demo silences it); its text is decoded below

    zen = "".join(this.d.get(c, c) for c in this.s)
    parts = [zen]
    for name in _STDLIB_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for obj in [mod] + [getattr(mod, a) for a in dir(mod) if not a.startswith("_")]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200:
                parts.append(doc)
        if sum(map(len, parts)) > min_chars:
            break
    text = "\n".join(parts)
    return "".join(c for c in text if c.isprintable() or c == "\n")


def run_rnn(out: str = "pydl-demo-rnn", quick: bool = False, backend: str | None = None, seed: int = 0,
            quiet: bool = False, steps: int | None = None) -> dict:
    """A character-level LSTM on text that ships with Python; ``backend`` holds for this run only."""
    with backend_scope(backend):
        return _run_rnn(out, quick, seed, quiet, steps)


def _run_rnn(out, quick, seed, quiet, steps) -> dict:
    from .. import debug

    run = DemoRun(out, seed, quiet)
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen the first time
        text = stdlib_text(20000 if quick else 80000)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    V, H, T, B = len(chars), (64 if quick else 256), 48, 32
    steps = steps or (30 if quick else 400)
    model = CharLM(V, H)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    stats = debug.ActivationStats(model, modules=[model.rnn, model.head], preset="giomo")
    run.say(f"pydl demo rnn: {len(text)} characters, vocabulary {V}, 2-layer LSTM hidden {H}, {steps} steps")
    warm_up(model, data[:T].unsqueeze(0), run.say)
    with stats:
        for _ in progress(range(steps), desc="training", enable=not quiet):
            starts = torch.randint(0, len(data) - T - 1, (B,), generator=g)
            xb = torch.stack([data[s:s + T] for s in starts])
            yb = torch.stack([data[s + 1:s + T + 1] for s in starts])
            logits, _ = model(xb)
            loss = F.cross_entropy(logits.reshape(-1, V), yb.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
    run.say("report: sampling text, plots")
    sample = sample_text(model, stoi, chars, prompt="The ", n=200 if quick else 600, seed=seed)
    files = {"curves": plot_loss(losses, run.path("training_loss.png"), "character LM training loss",
                                 "cross-entropy (nats/char)")}
    files.update(activation_figures(stats, out))
    summary = {"final_loss": float(np.mean(losses[-10:])), "first_loss": losses[0], "steps": steps, "vocab": V,
               "sample": sample, "seconds": run.seconds(), "losses": losses}
    sections = [("Result", (f"<p>Loss {losses[0]:.2f} → {summary['final_loss']:.2f} nats/char in {steps} steps "
                           f"({summary['seconds']:.0f} s).</p>")),
                ("Training loss", img(files["curves"])),
                ("Sampled text", pre(sample)),
                *debug_sections(files)]
    return run.finish(summary, "pydl demo: a character-level LSTM", sections)


@torch.no_grad()
def sample_text(model, stoi, chars, prompt="The ", n=300, temperature=0.8, seed=0) -> str:
    """``n`` characters after ``prompt``, drawn one at a time at ``temperature`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    x = torch.tensor([[stoi.get(c, 0) for c in prompt]])
    logits, state = model(x)
    out = list(prompt)
    for _ in range(n):
        p = torch.softmax(logits[0, -1] / temperature, -1)
        nxt = torch.multinomial(p, 1, generator=g)
        out.append(chars[nxt.item()])
        logits, state = model(nxt.view(1, 1), state)
    model.train(was)
    return "".join(out)
