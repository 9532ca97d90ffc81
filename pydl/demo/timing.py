"""This model's layers timed with pydl and with torch: every converted layer against its torch twin, on the
input it sees in the model, forward and backward, in one process with the same threads."""
from __future__ import annotations

import copy
import html
from types import SimpleNamespace

import torch

from .. import backends
from ..results import environment, ratio_text
from .report import table


def time_layers(model, x, quick: bool = False) -> tuple[list[dict], dict]:
    """Forward+backward time of every converted layer, pydl module vs its torch twin, on the input it sees in
    this model (captured with a forward hook), same process, same threads.

    Timed with the benchmarks' ``time_pair``: torch and pydl alternate in short rounds and the ratio is taken
    inside each round, so a burst of other work on a shared machine lands on both sides instead of making one
    layer look 9x faster in one run and 0.4x in the next; the ratio's quartiles say how far to trust it.
    Returns the rows and the machine they were measured on (CPU model, threads, load, and a warning when
    the machine was busy or the spread wide)."""
    from ..bench import common
    from ..nn.convert import registered

    bench = common()
    converted = set(registered().values())  # pydl's module classes, each with a torch twin
    inputs = {}
    hooks = []

    def grab(name):
        def hook(mod, inp, out):  # returns None: a forward hook that returns a value replaces the output
            inputs.setdefault(name, inp[0].detach())
        return hook

    for name, m in model.named_modules():
        if type(m) in converted:
            hooks.append(m.register_forward_hook(grab(name)))
    was = model.training
    model.train()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    model.train(was)
    device = x.device.type
    machine = environment(device)  # the load average is read here, before our own timing loads the cores
    rows = []
    for name, m in model.named_modules():
        if name not in inputs:
            continue
        xin = inputs[name].clone().requires_grad_(True)
        twin = m.to_torch() if hasattr(m, "to_torch") else None
        if twin is None:
            continue
        ref = copy.deepcopy(twin)
        mine = copy.deepcopy(m)
        mine.train()
        ref.train()

        def step(mod, x):
            def f():
                out = mod(x)
                out = out[0] if isinstance(out, tuple) else out
                out.sum().backward()
            return f

        t = bench.time_pair(step(ref, xin), step(mine, xin), device, quick=quick)
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


def timing_text(rows: list[dict], machine: dict) -> str:
    """The layer table as plain text, for the terminal: every ratio with its quartiles, and the machine."""
    lines = [f"{'layer':<12} {'module':<22} {'pydl ms':>9} {'torch ms':>9}  torch/pydl (q1-q3)"]
    for r in rows:
        lines.append(f"{r['layer']:<12} {r['module']:<22} {r['pydl_ms']:9.3f} {r['torch_ms']:9.3f}  "
                     f"{_ratio_text(r)}")
    lines.append(_machine_text(machine))
    if machine.get("warning"):
        lines.append(machine["warning"])
    return "\n".join(lines)


def timing_html(rows: list[dict], machine: dict) -> str:
    """The layer table for the report: times as median ± half the IQR, ratios with their quartiles."""
    shown = [dict(r, pydl_ms=f"{r['pydl_ms']:.3f} ± {r['pydl_iqr_ms'] / 2:.3f}",
                  torch_ms=f"{r['torch_ms']:.3f} ± {r['torch_iqr_ms'] / 2:.3f}", speedup=_ratio_text(r))
             for r in rows]
    warning = f"<p><b>{html.escape(machine['warning'])}</b></p>" if machine.get("warning") else ""
    return (warning + table(shown, ["layer", "module", "input", "backend", "pydl_ms", "torch_ms", "speedup"]) +
            "<p class='note'>torch and pydl alternate in short rounds on the same inputs; times are "
            "medians ± half the interquartile range, the speed-up (torch time / pydl time) is the median "
            "of the per-round ratios with their quartiles in brackets. "
            f"{html.escape(_machine_text(machine))}: numbers from another CPU, or a busy one, differ.</p>")


def _ratio_text(r: dict) -> str:
    return ratio_text(r["speedup"], r["speedup_q1"], r["speedup_q3"])


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
