"""Triton: pydl's act_stats, plugged into pydl."""
import torch

from pydl.learn.harness import Case

TITLE = "pydl's act_stats: mean/var/min/max/counts/histogram in one pass"
TRACK = "triton"
FILE = "act_stats.py"
ENTRY = "act_stats"
TEACHES = "many reductions in one read: Chan merge, min/max, masks for NaN/Inf, tl.histogram; then pydl's backend override"
LEARNED = ("One read of the data can feed every statistic at once -- memory is the cost, arithmetic is free. "
           "Your kernel now has pydl's backend signature: `pydl.backends.all_ops()['act_stats'].override("
           "'triton', act_stats)` makes every pydl.act_stats call (and pydl's debugging hooks) use it.")
MUTANTS = {
    "NaN in the mean": [("fin = inb & (v - v == 0)", "fin = inb")],
    "padding in the histogram": [("        s = tl.where(inb, s, NSLOTS - 1)\n", "")],
    "no delta^2 term": [("m2 = m2 + bm2 + delta * delta * n * w", "m2 = m2 + bm2")],
}

BINS, LO, HI, EPS = 12, -2.0, 3.0, 0.05


def _data(seed, shape, specials):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 1.5
    flat = x.view(-1)
    if specials and flat.numel() >= 8:
        idx = torch.randperm(flat.numel(), generator=g)
        flat[idx[0]] = float("nan")
        flat[idx[1]] = float("inf")
        flat[idx[2]] = float("-inf")
        flat[idx[3]] = 0.0
        flat[idx[4]] = HI      # on the upper edge: the last bin
        flat[idx[5]] = LO
        flat[idx[6]] = 0.01    # near zero
    return x


def cases(device):
    from pydl.ops.act_stats import act_stats_reference

    out = []
    spec = [(0, (1,), False, False, 16), (1, (5, 3), True, True, 16), (2, (2, 3, 5, 5), True, True, 64),
            (3, (300,), False, True, 64), (4, (4, 2, 9), True, False, 16), (5, (2, 3, 5, 5), False, True, 16)]
    for seed, shape, per_channel, specials, block in spec:
        x = _data(seed, shape, specials)
        fs, cnt, hist = act_stats_reference(x, BINS, LO, HI, EPS, per_channel)
        out.append(Case(f"shape={shape}, per_channel={per_channel}, NaN/Inf={specials}, BLOCK={block}, seed={seed}",
                        args={"x": x, "bins": BINS, "lo": LO, "hi": HI, "eps": EPS, "per_channel": per_channel},
                        params={"block": block}, returns=("fstats", "counts", "hist"),
                        expected={"fstats": fs, "counts": cnt, "hist": hist},
                        tol={"fstats": (1e-4, 1e-4)}))
    return out


def plugin(mod, device):
    """Replace pydl's Triton act_stats with the learner's inside a small CNN's forward hooks."""
    import torch.nn as nn

    import pydl
    from pydl import backends

    op = backends.all_ops()["act_stats"]
    calls = []

    def learner(x, bins, lo, hi, eps, per_channel):
        calls.append(tuple(x.shape))
        return mod.act_stats(x, bins, lo, hi, eps, per_channel)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 5)).to(device)
    problems, checked = [], []

    def hook(module, inp, out):
        a = out.detach()
        per_channel = a.dim() >= 2
        mine = pydl.act_stats(a, bins=20, lo=-3.0, hi=3.0, per_channel=per_channel)  # backend from the context
        ref = pydl.act_stats(a, bins=20, lo=-3.0, hi=3.0, per_channel=per_channel, backend="reference")
        name = type(module).__name__
        checked.append(name)
        if not torch.equal(mine.hist_all.cpu(), ref.hist_all.cpu()) or not torch.equal(mine.counts.cpu(), ref.counts.cpu()):
            problems.append(f"{name}: counts/histogram differ from the reference backend")
        if not torch.allclose(mine.mean.cpu(), ref.mean.cpu(), atol=1e-4, rtol=1e-4, equal_nan=True) or \
                not torch.allclose(mine.var.cpu(), ref.var.cpu(), atol=1e-4, rtol=1e-3, equal_nan=True):
            problems.append(f"{name}: mean/var differ from the reference backend")

    handles = [m.register_forward_hook(hook) for m in model]
    try:
        with op.override("triton", learner), pydl.backend("triton"):
            model(torch.randn(2, 3, 8, 8, device=device))
    finally:
        for h in handles:
            h.remove()
    if not calls:
        return "fail", "pydl.act_stats never called your function: the override did not take effect"
    if problems:
        return "fail", "\n".join(problems)
    return "pass", (f"pydl.act_stats(backend='triton') ran YOUR kernel {len(calls)} times inside a 7-layer CNN's "
                    f"forward hooks ({', '.join(checked)}); every result matched pydl's reference backend")
