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
"""
from __future__ import annotations

import html
import json
import math
import os
import sys
import time
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F

from . import backends
from .debug.progress import progress as _progress


def _progress_bar(it, desc="", disable=False):
    return _progress(it, desc=desc, enable=not disable)

# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def load_digits(size: int = 16, seed: int = 0, valid_frac: float = 0.2):
    """scikit-learn's 1797 handwritten digits (8x8 scans, 17 grey levels), upsampled to size x size so the
    conv layers and Grad-CAM maps have room. Returns (xtr, ytr, xva, yva, class_names)."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.long)
    return _split(x, y, seed, valid_frac) + ([str(i) for i in range(10)],)


def load_image_folder(root: str, size: int = 32, seed: int = 0, valid_frac: float = 0.2):
    """DIR/<class>/<image files>: greyscale, resized to size x size, scaled to [0, 1]."""
    from PIL import Image

    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if len(classes) < 2:
        raise SystemExit(f"pydl demo --data: {root} needs at least two class folders, found {classes}")
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for fn in sorted(os.listdir(os.path.join(root, c))):
            try:
                img = Image.open(os.path.join(root, c, fn)).convert("L").resize((size, size))
            except Exception:  # noqa: BLE001 - not an image: skip it
                continue
            xs.append(torch.tensor(np.asarray(img), dtype=torch.float32)[None] / 255.0)
            ys.append(ci)
    if len(xs) < 10:
        raise SystemExit(f"pydl demo --data: found only {len(xs)} readable images under {root}")
    return _split(torch.stack(xs), torch.tensor(ys), seed, valid_frac) + (classes,)


def _split(x, y, seed, valid_frac):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    nv = max(1, int(len(x) * valid_frac))
    va, tr = perm[:nv], perm[nv:]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return x[tr], y[tr], x[va], y[va]


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


def make_cnn(n_classes: int, in_ch: int = 1, widths=(16, 32, 64)) -> tnn.Module:
    """Conv -> BatchNorm -> GeneralRelu blocks (stride 2 after the first), global average pool, linear head:
    a GAP + linear head, so plain CAM works too. Built from torch.nn modules and converted to pydl's."""
    from .nn import GeneralRelu, convert

    layers, c = [], in_ch
    for i, w in enumerate(widths):
        layers += [tnn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False), tnn.BatchNorm2d(w),
                   GeneralRelu(leak=0.1, sub=0.4)]
        c = w
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(c, n_classes)]
    return convert(tnn.Sequential(*layers))


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def train(model, xtr, ytr, xva, yva, epochs: int, bs: int = 32, lr: float = 1e-2, seed: int = 0,
          stats=None, quiet: bool = False) -> Dict[str, list]:
    """Adam + one-cycle schedule. Returns per-step and per-epoch curves."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(xtr) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    hist = {"step_loss": [], "step_acc": [], "lr": [], "epoch_valid_loss": [], "epoch_valid_acc": [],
            "epoch_train_loss": [], "epoch_seconds": []}
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr), generator=g)
        bar = _progress_bar(range(steps_per_epoch), desc=f"epoch {ep + 1}/{epochs}", disable=quiet)
        tot = 0.0
        for i in bar:
            idx = perm[i * bs:(i + 1) * bs]
            xb, yb = xtr[idx], ytr[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            acc = (out.argmax(1) == yb).float().mean().item()
            hist["step_loss"].append(loss.item())
            hist["step_acc"].append(acc)
            hist["lr"].append(sched.get_last_lr()[0])
            tot += loss.item()
        if stats is not None:
            stats.mark_epoch()  # an epoch separator in the colorful dimension
        vl, va = evaluate(model, xva, yva)
        hist["epoch_valid_loss"].append(vl)
        hist["epoch_valid_acc"].append(va)
        hist["epoch_train_loss"].append(tot / steps_per_epoch)
        hist["epoch_seconds"].append(time.time() - t0)
        if not quiet:
            print(f"epoch {ep + 1}: train loss {tot / steps_per_epoch:.3f}  valid loss {vl:.3f}  valid acc {va:.3f}",
                  flush=True)
    return hist


@torch.no_grad()
def evaluate(model, x, y, bs: int = 256) -> Tuple[float, float]:
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), bs):
        out = model(x[i:i + bs])
        loss += F.cross_entropy(out, y[i:i + bs], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + bs]).sum().item()
    model.train(was)
    return loss / len(x), correct / len(x)


# --------------------------------------------------------------------------------------------------
# layer timing: pydl vs torch on this model's own layers and shapes
# --------------------------------------------------------------------------------------------------


def time_layers(model, x, quick: bool = False) -> Tuple[List[dict], dict]:
    """Forward+backward time of every converted layer, pydl module vs its torch twin, on the input it sees in
    this model (captured with a forward hook), same process, same threads.

    Timed with the benchmarks' ``time_pair``: torch and pydl alternate in short rounds and the ratio is taken
    inside each round, so a burst of other work on a shared machine lands on both sides instead of making one
    layer look 9x faster in one run and 0.4x in the next; the ratio's quartiles say how far to trust it.
    Returns the rows and the machine they were measured on (CPU model, threads, load, and a warning when
    the machine was busy or the spread wide)."""
    from .bench import common
    from .nn.convert import torch_twins

    bench = common()
    inputs = {}
    hooks = []

    def grab(name):
        def hook(mod, inp, out):  # returns None: a forward hook that returns a value replaces the output
            inputs.setdefault(name, inp[0].detach())
        return hook

    for name, m in model.named_modules():
        if type(m) in torch_twins():
            hooks.append(m.register_forward_hook(grab(name)))
    was = model.training
    model.train()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    model.train(was)
    device = x.device.type
    machine = bench.environment(device)  # the load average is read here, before our own timing loads the cores
    rows = []
    for name, m in model.named_modules():
        if name not in inputs:
            continue
        xin = inputs[name].clone().requires_grad_(True)
        twin = m.to_torch() if hasattr(m, "to_torch") else None
        if twin is None:
            continue
        ref = _clone_module(twin)
        mine = _clone_module(m)
        mine.train()
        ref.train()

        def step(mod):
            def f():
                out = mod(xin)
                out = out[0] if isinstance(out, tuple) else out
                out.sum().backward()
            return f

        t = bench.time_pair(step(ref), step(mine), device, quick=quick)
        ratio, q1, q3 = t["ratio"]
        rows.append({"layer": name, "module": _module_label(m), "input": "x".join(map(str, xin.shape)),
                     "backend": _resolved_backend(m, device),
                     "pydl_ms": t["pydl"][0] * 1e3, "pydl_iqr_ms": t["pydl"][1] * 1e3,
                     "torch_ms": t["torch"][0] * 1e3, "torch_iqr_ms": t["torch"][1] * 1e3,
                     "speedup": ratio, "speedup_q1": q1, "speedup_q3": q3, "rounds": t["rounds"]})
    spreads = [SimpleNamespace(ratio=r["speedup"], ratio_q1=r["speedup_q1"], ratio_q3=r["speedup_q3"]) for r in rows]
    machine["warning"] = bench.busy_warning(machine, spreads)
    return rows, machine


def _module_label(m) -> str:
    """``Conv2d(16→32)``: the type and, where it has them, the channel counts that tell two layers apart."""
    for a, b in (("in_channels", "out_channels"), ("input_size", "hidden_size")):
        if hasattr(m, a) and hasattr(m, b):
            return f"{type(m).__name__}({getattr(m, a)}→{getattr(m, b)})"
    if hasattr(m, "num_features"):
        return f"{type(m).__name__}({m.num_features})"
    return type(m).__name__


def timing_text(rows: List[dict], machine: dict) -> str:
    """The layer table as plain text, for the terminal: every ratio with its quartiles, and the machine."""
    lines = [f"{'layer':<12} {'module':<22} {'pydl ms':>9} {'torch ms':>9}  torch/pydl (q1-q3)"]
    for r in rows:
        lines.append(f"{r['layer']:<12} {r['module']:<22} {r['pydl_ms']:9.3f} {r['torch_ms']:9.3f}  "
                     f"{_ratio_text(r)}")
    lines.append(_machine_text(machine))
    if machine.get("warning"):
        lines.append(machine["warning"])
    return "\n".join(lines)


def _ratio_text(r: dict) -> str:
    return f"{r['speedup']:.2f}x ({r['speedup_q1']:.2f}-{r['speedup_q3']:.2f})"


def _machine_text(machine: dict) -> str:
    return (f"measured on {machine.get('cpu')}, {machine.get('threads')} threads, load average "
            f"{machine.get('load1', float('nan')):.2f} on {machine.get('cores')} cores")


_MODULE_OP = {"Conv2d": "conv2d", "BatchNorm1d": "batch_norm", "BatchNorm2d": "batch_norm",
              "BatchNorm3d": "batch_norm", "SyncBatchNorm": "batch_norm", "LSTM": "lstm", "GRU": "gru",
              "LSTMCell": "lstm_cell", "GRUCell": "gru_cell"}


def _resolved_backend(m, device_type: str) -> str:
    """The backend a module's forward really ran: 'auto' resolved for this device ('auto -> cpu')."""
    name = getattr(m, "backend", None) or backends.get_backend()
    op = backends.all_ops().get(_MODULE_OP.get(type(m).__name__, ""))
    if name == "auto" and op is not None:
        return f"auto -> {op.resolve('auto', device_type)}"
    return name


def _clone_module(m):
    import copy

    return copy.deepcopy(m)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def plot_curves(hist: dict, path: str) -> str:
    from .debug.plots import new_figure, save_figure

    fig = new_figure((13, 3.4))
    axs = fig.subplots(1, 3)
    steps = np.arange(1, len(hist["step_loss"]) + 1)
    spe = len(steps) / max(1, len(hist["epoch_valid_loss"]))
    ep_x = spe * np.arange(1, len(hist["epoch_valid_loss"]) + 1)
    axs[0].plot(steps, hist["step_loss"], lw=0.8, label="train (per batch)")
    axs[0].plot(ep_x, hist["epoch_valid_loss"], "o-", label="valid (per epoch)")
    axs[0].set(title="loss", xlabel="step", yscale="log")
    axs[0].legend()
    axs[1].plot(steps, hist["step_acc"], lw=0.8, label="train (per batch)")
    axs[1].plot(ep_x, hist["epoch_valid_acc"], "o-", label="valid (per epoch)")
    axs[1].set(title="accuracy", xlabel="step", ylim=(0, 1.02))
    axs[1].legend()
    axs[2].plot(steps, hist["lr"])
    axs[2].set(title="learning rate (one-cycle)", xlabel="step")
    save_figure(fig, path)
    return path


def _table(rows: List[dict], cols: List[str], fmt: Dict[str, str] = None) -> str:
    fmt = fmt or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"<td>{html.escape(fmt[c].format(v) if c in fmt and v != '' else str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_html(out: str, title: str, sections: List[Tuple[str, str]]) -> str:
    """report.html: sections of (heading, HTML body); images are referenced by relative file name."""
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
           "img{max-width:100%;border:1px solid #ddd;margin:.3em 0}table{border-collapse:collapse;font-size:.9em}"
           "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}"
           "h2{border-bottom:2px solid #2a9d8f;padding-bottom:.2em}pre{background:#f6f6f6;padding:.6em;overflow:auto}"
           ".note{color:#555;font-size:.92em}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    for head, body in sections:
        parts.append(f"<h2>{html.escape(head)}</h2>{body}")
    parts.append("</body></html>")
    path = os.path.join(out, "report.html")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def _img(name: str, note: str = "") -> str:
    n = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return f"{n}<img src='{html.escape(name)}' alt='{html.escape(name)}'>"


# --------------------------------------------------------------------------------------------------
# the CNN demo
# --------------------------------------------------------------------------------------------------


def run_cnn(out: str = "pydl-demo", quick: bool = False, data: Optional[str] = None, backend: Optional[str] = None,
            epochs: Optional[int] = None, seed: int = 0, quiet: bool = False) -> dict:
    """A CNN on handwritten digits (or ``data``, an ImageFolder tree) with every debugger; ``backend`` holds
    for this run only (a context, not the process default: the caller's choice is left as it was)."""
    with _backend_scope(backend):
        return _run_cnn(out, quick, data, epochs, seed, quiet)


def _run_cnn(out, quick, data, epochs, seed, quiet) -> dict:
    from . import debug
    from .cli import doctor_report

    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(seed)
    if data:
        xtr, ytr, xva, yva, classes = load_image_folder(data, seed=seed)
    else:
        xtr, ytr, xva, yva, classes = load_digits(seed=seed)
    epochs = epochs or (2 if quick else 8)
    model = make_cnn(len(classes), in_ch=xtr.shape[1])
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"pydl demo: {len(xtr)} train / {len(xva)} valid images {tuple(xtr.shape[1:])}, {len(classes)} classes, "
        f"backend {backends.get_backend()}, {torch.get_num_threads()} threads")

    from .nn import GeneralRelu

    # the activations after each GeneralRelu, binned over its natural range (-7, 7)
    acts = [m for m in model.modules() if isinstance(m, GeneralRelu)]
    stats = debug.ActivationStats(model, modules=acts, preset="general_relu")
    _warm_up(model, xtr[:4], say)
    with stats:
        hist = train(model, xtr, ytr, xva, yva, epochs=epochs, seed=seed, stats=stats, quiet=quiet)
    vl, va = evaluate(model, xva, yva)
    files: Dict[str, str] = {}
    say("report: training curves")
    files["curves"] = plot_curves(hist, os.path.join(out, "training_curves.png"))
    files.update(debug_figures(model, stats, xtr, ytr, xva, yva, classes, out, quick, say=say))
    say("report: timing this model's layers, pydl vs torch (interleaved rounds)")
    timing, machine = time_layers(model, xtr[:64], quick=quick)
    say(timing_text(timing, machine))
    say("report: what ran where (pydl doctor)")
    doc = doctor_report()
    summary = {"valid_loss": vl, "valid_acc": va, "epochs": epochs, "train_images": len(xtr),
               "valid_images": len(xva), "classes": classes, "backend": backends.get_backend(),
               "seconds": time.time() - t_start, "history": hist, "layer_timing": timing, "machine": machine,
               "files": {k: os.path.basename(v) for k, v in files.items()}}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    np.savez(os.path.join(out, "history.npz"), **{k: np.asarray(v) for k, v in hist.items()})

    sections = [
        ("Result", f"<p>Validation accuracy <b>{va:.3f}</b> (chance {1 / len(classes):.2f}), loss {vl:.3f}, after "
                   f"{epochs} epochs on {len(xtr)} images; {summary['seconds']:.0f} s in all. Kernels: backend "
                   f"<code>{html.escape(backends.get_backend())}</code>.</p>"),
        ("Training curves", _img(os.path.basename(files["curves"]))),
    ]
    sections += debug_sections(files)
    shown = [dict(r, pydl_ms=f"{r['pydl_ms']:.3f} ± {r['pydl_iqr_ms'] / 2:.3f}",
                  torch_ms=f"{r['torch_ms']:.3f} ± {r['torch_iqr_ms'] / 2:.3f}", speedup=_ratio_text(r))
             for r in timing]
    warning = f"<p><b>{html.escape(machine['warning'])}</b></p>" if machine.get("warning") else ""
    sections.append(("This model's layers: pydl vs torch (forward + backward, this machine)",
                     warning + _table(shown, ["layer", "module", "input", "backend", "pydl_ms", "torch_ms",
                                              "speedup"]) +
                     "<p class='note'>torch and pydl alternate in short rounds on the same inputs; times are "
                     "medians ± half the interquartile range, the speed-up (torch time / pydl time) is the median "
                     "of the per-round ratios with their quartiles in brackets. "
                     f"{html.escape(_machine_text(machine))}: numbers from another CPU, or a busy one, "
                     "differ.</p>"))
    sections.append(("What ran where (pydl doctor)", f"<pre>{html.escape(_doctor_text(doc))}</pre>"))
    report = write_html(out, "pydl demo: a CNN on handwritten digits, inside and out", sections)
    summary["report"] = report
    return summary


def _backend_scope(backend: Optional[str]):
    import contextlib

    return backends.backend(backend) if backend else contextlib.nullcontext()


def _warm_up(model, x, say) -> None:
    """One forward and backward on a copy of the model before the clock starts: the first call of each
    compiled or Triton backend builds its kernels (tens of seconds, announced by the build itself), and a
    progress bar that counted that would promise hours for a minute's training."""
    import copy

    say("warming up the kernels (the first run compiles them) ...")
    twin = copy.deepcopy(model).train()  # a copy: the real model's weights and BatchNorm statistics stay untouched
    out = twin(x)
    (out[0] if isinstance(out, tuple) else out).sum().backward()  # an RNN returns (output, state)


def _doctor_text(info: dict) -> str:
    import io

    from .cli import print_doctor

    buf = io.StringIO()
    print_doctor(info, buf)
    return buf.getvalue()


def debug_figures(model, stats, xtr, ytr, xva, yva, classes, out, quick, say=lambda *a: None) -> Dict[str, str]:
    """Every debugger figure for the report; returns {key: png path}. ``say`` hears of each stage as it
    starts (some take tens of seconds on a CPU: a silent minute looks like a hang)."""
    from . import debug

    p = lambda name: os.path.join(out, name)  # noqa: E731
    files = {}
    say("report: activation statistics (colorful dimension, layer stats, dead units)")
    debug.plot_colorful_dimension(stats, path=p("colorful_dimension.png"))
    files["colorful"] = p("colorful_dimension.png")
    debug.plot_layer_stats(stats, path=p("layer_stats.png"))
    files["layer_stats"] = p("layer_stats.png")
    debug.plot_dead_chart(stats, path=p("dead_chart.png"))
    files["dead"] = p("dead_chart.png")
    stats.save_npz(p("activation_stats.npz"))
    stats.to_json(p("activation_stats.json"), hist=False)
    say("report: gradient flow")
    # gradient flow of one batch at the final weights
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(xtr[:128]), ytr[:128]).backward()
    debug.plot_grad_flow(model, path=p("grad_flow.png"))
    files["grad_flow"] = p("grad_flow.png")
    model.zero_grad(set_to_none=True)
    say("report: Grad-CAM")
    # Grad-CAM on the last conv layer, for validation images the model gets right and wrong
    convs = [m for m in model.modules() if isinstance(m, tnn.Conv2d)]
    was = model.training
    with torch.no_grad():
        pred = model.eval()(xva).argmax(1)
    model.train(was)
    right = (pred == yva).nonzero().flatten()[:8]
    wrong = (pred != yva).nonzero().flatten()[:8]
    idx = torch.cat([right, wrong])
    if len(idx):
        maps = debug.grad_cam(model, xva[idx], convs[-1])
        titles = [f"{'ok' if pred[i] == yva[i] else 'WRONG'}: {classes[yva[i]]}->{classes[pred[i]]}" for i in idx.tolist()]
        files["gradcam"] = _cam_grid([debug.overlay(xva[i], maps[k]) for k, i in enumerate(idx.tolist())], titles,
                                     p("grad_cam.png"))
        say("report: occlusion maps")
        # the same images, asked the counterfactual way: hide a 4x4 patch (the normalised images' 0 is the
        # data set's mean intensity) and watch the true class's score drop; 49 windows x 16 images, batched
        debug.plot_occlusion(model, xva[idx], path=p("occlusion.png"), target=yva[idx], titles=titles, patch=4,
                             stride=2, fill=0.0)
        files["occlusion"] = p("occlusion.png")
    say("report: top-activating patches (one pass over the training set)")
    # what the last block's channels respond to: their 8 strongest training images each, cut to the receptive
    # field (one forward pass over the training set; the top-k stays on the device until the end)
    acts = [m for m in model.modules() if type(m).__name__ == "GeneralRelu"]
    tops = debug.top_patches(model, acts[-1], [xtr[i:i + 256] for i in range(0, len(xtr), 256)],
                             channels=range(min(12, convs[-1].out_channels)), k=8)
    debug.plot_top_patches(tops, path=p("top_patches.png"))
    files["top_patches"] = p("top_patches.png")
    say("report: loss landscape 1D")
    # loss landscapes around the final weights, on a fixed validation batch (cost: one forward per point)
    batch = (xva[:256], yva[:256])
    l1 = debug.loss_landscape_1d(model, F.cross_entropy, batch, steps=11 if quick else 41, seed=0,
                                 path=p("loss_landscape_1d.npz"), resume=False, show_progress=False)
    debug.plot_landscape_1d(l1, path=p("loss_landscape_1d.png"))
    files["landscape_1d"] = p("loss_landscape_1d.png")
    say("report: loss landscape 2D")
    l2 = debug.loss_landscape_2d(model, F.cross_entropy, batch, steps=7 if quick else 21, seed=0,
                                 path=p("loss_landscape_2d.npz"), resume=False, show_progress=False)
    debug.plot_landscape_2d(l2, path=p("loss_landscape_2d.png"))
    files["landscape_2d"] = p("loss_landscape_2d.png")
    say("report: first-layer filters and feature maps")
    # inside the first conv layer
    debug.plot_filters(convs[0], path=p("first_layer_filters.png"))
    files["filters"] = p("first_layer_filters.png")
    debug.plot_feature_maps(model, convs[0], xva[:1], path=p("feature_maps.png"))
    files["feature_maps"] = p("feature_maps.png")
    return files


def _cam_grid(images: List[np.ndarray], titles: List[str], path: str, ncols: int = 8) -> str:
    from .debug.plots import new_figure, save_figure

    n = len(images)
    nrows = math.ceil(n / ncols)
    fig = new_figure((1.7 * ncols, 1.95 * nrows))
    axs = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axs.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k])
            ax.set_title(titles[k], fontsize=7, color="black" if titles[k].startswith("ok") else "red")
    save_figure(fig, path)
    return path


def debug_sections(files: Dict[str, str]) -> List[Tuple[str, str]]:
    b = lambda k: os.path.basename(files[k])  # noqa: E731
    s = []
    if "colorful" in files:
        s.append(("The colorful dimension", _img(b("colorful"), "Per layer: a histogram of activations per batch "
                  "(x: batch, y: value, colour: log(1 + count)). A healthy layer spreads out; a band stuck at the "
                  "bottom means dead activations.")))
    if "layer_stats" in files:
        s.append(("Layer statistics", _img(b("layer_stats"), "Mean, standard deviation and % of activations near "
                  "zero per layer per batch, computed on the device by pydl.act_stats in one pass.")))
    if "dead" in files:
        s.append(("Dead activations", _img(b("dead"))))
    if "gradcam" in files:
        s.append(("Grad-CAM", _img(b("gradcam"), "Where the last conv layer looked, for digits the model got right "
                  "and wrong.")))
    if "occlusion" in files:
        s.append(("Occlusion sensitivity", _img(b("occlusion"), "The same images, with a 4x4 grey patch slid over "
                  "them (stride 2): hot = hiding this region lowers the true class's score most (Zeiler & Fergus "
                  "2014). No gradients: it asks the model directly.")))
    if "top_patches" in files:
        s.append(("Top-activating patches", _img(b("top_patches"), "Per channel of the last conv block (rows), the "
                  "training images that excite it most, cut to the region that channel sees (its receptive field, "
                  "computed from the layers' kernels, strides and padding; grey = padding beyond the image).")))
    if "landscape_1d" in files:
        s.append(("Loss landscape (1D)", _img(b("landscape_1d"), "Loss along one filter-normalised random direction "
                  "(Li et al. 2018) through the final weights.")))
    if "landscape_2d" in files:
        s.append(("Loss landscape (2D)", _img(b("landscape_2d"))))
    if "grad_flow" in files:
        s.append(("Gradient flow", _img(b("grad_flow"), "Mean and max |grad| per parameter tensor on one batch.")))
    if "filters" in files:
        s.append(("First-layer filters", _img(b("filters"))))
    if "feature_maps" in files:
        s.append(("Feature maps of the first layer", _img(b("feature_maps"))))
    return s


# --------------------------------------------------------------------------------------------------
# the time-series-as-images demo
# --------------------------------------------------------------------------------------------------

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
    from .debug.plots import new_figure, save_figure

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


def run_gaf(out: str = "pydl-demo-gaf", quick: bool = False, backend: Optional[str] = None, seed: int = 0,
            quiet: bool = False, epochs: Optional[int] = None) -> dict:
    """Time series classification with an image model: synthetic waves (:func:`synthetic_series`) drawn as
    two-channel images (GASF and GADF after PAA, :class:`pydl.transforms.GramianAngularField`) and fed to the
    same pydl CNN as the digits demo. Writes report.html, the curves, example images and summary.json."""
    with _backend_scope(backend):
        return _run_gaf(out, quick, seed, quiet, epochs)


def _run_gaf(out, quick, seed, quiet, epochs) -> dict:
    from .cli import doctor_report
    from .transforms import GramianAngularField

    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(seed)
    n_train, n_valid = (400, 160) if quick else (1600, 400)
    size, widths = (16, (8, 16, 32)) if quick else (32, (16, 32, 64))   # quick: ~5 s of CPU for the tests
    epochs = epochs or (3 if quick else 8)
    x, y = synthetic_series(n_train + n_valid, seed=seed)
    to_image = GramianAngularField(("summation", "difference"), size=size)
    images = to_image(x)                                       # (n, 2, size, size), values in [-1, 1]
    xtr, ytr, xva, yva = images[:n_train], y[:n_train], images[n_train:], y[n_train:]
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"pydl demo gaf: {n_train} train / {n_valid} valid series of {x.shape[1]} points -> {size}x{size} "
        f"GASF+GADF images, {len(WAVES)} classes, backend {backends.get_backend()}")
    model = make_cnn(len(WAVES), in_ch=2, widths=widths)
    _warm_up(model, xtr[:4], say)
    hist = train(model, xtr, ytr, xva, yva, epochs=epochs, seed=seed, quiet=quiet)
    vl, va = evaluate(model, xva, yva)
    files = {"curves": plot_curves(hist, os.path.join(out, "training_curves.png")),
             "examples": os.path.join(out, "gaf_examples.png")}
    plot_gaf_examples(x, y, images, files["examples"])
    summary = {"valid_loss": vl, "valid_acc": va, "epochs": epochs, "train_series": n_train,
               "valid_series": n_valid, "series_length": int(x.shape[1]), "image_size": size,
               "classes": list(WAVES), "backend": backends.get_backend(), "seconds": time.time() - t_start,
               "history": hist, "files": {k: os.path.basename(v) for k, v in files.items()}}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    sections = [
        ("Result", f"<p>Validation accuracy <b>{va:.3f}</b> (chance {1 / len(WAVES):.2f}), loss {vl:.3f}, after "
                   f"{epochs} epochs on {n_train} series; {summary['seconds']:.0f} s in all.</p>"),
        ("Series as images", _img(os.path.basename(files["examples"]), "Each series is shortened to "
         f"{size} points by piecewise aggregation, rescaled to [-1, 1], read as angles phi = arccos(x) and drawn as "
         "cos(phi_i + phi_j) (GASF) and sin(phi_i - phi_j) (GADF): Wang & Oates 2015. The two fields are the "
         "CNN's two input channels.")),
        ("Training curves", _img(os.path.basename(files["curves"]))),
        ("What ran where (pydl doctor)", f"<pre>{html.escape(_doctor_text(doctor_report()))}</pre>"),
    ]
    summary["report"] = write_html(out, "pydl demo: time series as Gramian angular fields", sections)
    return summary


# --------------------------------------------------------------------------------------------------
# the RNN demo
# --------------------------------------------------------------------------------------------------


def stdlib_text(min_chars: int = 60000) -> str:
    """English text that ships with every Python: the Zen of Python and the docstrings of stdlib modules."""
    import importlib

    import this  # noqa: F401 - prints the Zen once; we decode its text below

    zen = "".join(this.d.get(c, c) for c in this.s)
    parts = [zen]
    for name in ("collections", "functools", "itertools", "json", "argparse", "logging", "pathlib", "textwrap",
                 "string", "re", "os", "random", "statistics", "decimal", "fractions", "heapq", "bisect",
                 "contextlib", "dataclasses", "typing", "unittest", "doctest", "pickle", "csv", "datetime"):
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


def run_rnn(out: str = "pydl-demo-rnn", quick: bool = False, backend: Optional[str] = None, seed: int = 0,
            quiet: bool = False, steps: Optional[int] = None) -> dict:
    """A character-level LSTM on text that ships with Python; ``backend`` holds for this run only."""
    with _backend_scope(backend):
        return _run_rnn(out, quick, seed, quiet, steps)


def _run_rnn(out, quick, seed, quiet, steps) -> dict:
    from . import debug, nn as pnn
    from .cli import doctor_report

    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(seed)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        text = stdlib_text(20000 if quick else 80000)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    V, H, T, B = len(chars), (64 if quick else 256), 48, 32
    steps = steps or (30 if quick else 400)

    class CharLM(tnn.Module):
        def __init__(self):
            super().__init__()
            self.emb = tnn.Embedding(V, 32)
            self.rnn = pnn.LSTM(32, H, num_layers=2, batch_first=True)
            self.head = tnn.Linear(H, V)

        def forward(self, x, state=None):
            h, state = self.rnn(self.emb(x), state)
            return self.head(h), state

    model = CharLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    stats = debug.ActivationStats(model, modules=[model.rnn, model.head], preset="giomo")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"pydl demo rnn: {len(text)} characters, vocabulary {V}, 2-layer LSTM hidden {H}, {steps} steps")
    _warm_up(model, data[:T].unsqueeze(0), say)
    with stats:
        bar = _progress_bar(range(steps), desc="training", disable=quiet)
        for _ in bar:
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
    say("report: sampling text, plots")
    sample = sample_text(model, stoi, chars, prompt="The ", n=200 if quick else 600, seed=seed)
    files = {}
    from .debug.plots import new_figure, save_figure

    fig = new_figure((7, 3))
    ax = fig.subplots()
    ax.plot(losses)
    ax.set(xlabel="step", ylabel="cross-entropy (nats/char)", title="character LM training loss")
    files["curves"] = os.path.join(out, "training_loss.png")
    save_figure(fig, files["curves"])
    files["colorful"] = os.path.join(out, "colorful_dimension.png")
    debug.plot_colorful_dimension(stats, path=files["colorful"])
    files["layer_stats"] = os.path.join(out, "layer_stats.png")
    debug.plot_layer_stats(stats, path=files["layer_stats"])
    stats.save_npz(os.path.join(out, "activation_stats.npz"))
    summary = {"final_loss": float(np.mean(losses[-10:])), "first_loss": losses[0], "steps": steps, "vocab": V,
               "sample": sample, "seconds": time.time() - t_start, "losses": losses}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    sections = [("Result", f"<p>Loss {losses[0]:.2f} → {summary['final_loss']:.2f} nats/char in {steps} steps "
                           f"({summary['seconds']:.0f} s).</p>"),
                ("Training loss", _img(os.path.basename(files["curves"]))),
                ("Sampled text", f"<pre>{html.escape(sample)}</pre>")]
    sections += debug_sections(files)
    sections.append(("What ran where (pydl doctor)", f"<pre>{html.escape(_doctor_text(doctor_report()))}</pre>"))
    summary["report"] = write_html(out, "pydl demo: a character-level LSTM", sections)
    return summary


@torch.no_grad()
def sample_text(model, stoi, chars, prompt="The ", n=300, temperature=0.8, seed=0) -> str:
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


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


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
