"""conv2d vs torch (oneDNN on the CPU, cuDNN on a GPU) over ResNet-style layers.

Variants (same inputs, same process, same threads):
* "forward": pydl.conv2d(x, w, b) vs F.conv2d(x, w, b);
* "fused bias+relu": pydl.conv2d(..., act="relu") -- bias and ReLU in the conv's epilogue -- vs torch's
  unfused F.relu(F.conv2d(x, w, b)) (what a model without a graph compiler runs);
* "forward+backward": forward, then grad_x, grad_w, grad_b (training step of one layer), vs torch's.

TFLOP/s count the multiply-adds of the convolution only (2*N*Cout*Ho*Wo*Cin/g*kh*kw per forward, 3x that for
forward+backward). Layers: 3x3 stride 1 at 56/28/14 px, 3x3 stride 2, 1x1 (bottleneck), a depthwise 3x3,
NCHW and one channels_last.

Targets: CPU ``cpu`` backend >= 0.8x torch forward on the 3x3 layers, fused >= 1.0x torch's
unfused conv+relu; GPU >= 0.8x cuDNN, fused >= 1.1x. Winograd on the CPU: the ResNet 3x3 stages
>= 1.3x forward, >= 1.1x forward+backward, at N=2 and at a training batch (N=32, the "ResNet stage" cases of
the full set).

``python -m benchmarks.bench_conv2d --crossover [--threads 2] [--batches 2,32]`` times pydl's Winograd against
pydl's direct path (the "torch" column is the direct path there) over a grid of channels, sizes and batches: the
source of the crossover table in csrc/cpu/conv2d/winograd.cpp (``wins``). ``--crossover --cpu-time`` times the
same grid at 1 thread in thread CPU time (steadier on a shared machine; a markdown table on stdout).
"""
import sys
import time

import torch
import torch.nn.functional as F

import pydl

from .common import Case, main_for

# (name, N, Cin, H, Cout, k, stride, groups)
LAYERS = [
    ("3x3 s1 64@56", 64, 56, 64, 3, 1, 1),
    ("3x3 s1 128@28", 128, 28, 128, 3, 1, 1),
    ("3x3 s1 256@14", 256, 14, 256, 3, 1, 1),
    ("3x3 s2 64@56->128", 64, 56, 128, 3, 2, 1),
    ("1x1 s1 256@56->64", 256, 56, 64, 1, 1, 1),
    ("dw3x3 s1 128@28", 128, 28, 128, 3, 1, 128),
]


def _flops(n, cin, h, cout, k, s, g):
    ho = (h + 2 * (k // 2) - k) // s + 1
    return 2.0 * n * cout * ho * ho * (cin // g) * k * k


def cases(quick: bool, device: str):
    n = (2 if quick else 4) if device == "cpu" else (8 if quick else 32)
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    backends = ("cpu",) if device == "cpu" else ("cuda", "triton")
    layers = LAYERS[:3] + LAYERS[4:] if quick else LAYERS
    out = []
    for name, cin, h, cout, k, s, g in layers:
        for dtype in dtypes:
            for cl in ([False, True] if name.startswith("3x3 s1 128") else [False]):
                fl = _flops(n, cin, h, cout, k, s, g)
                dname = str(dtype).replace("torch.", "") + (" cl" if cl else "")
                shape = f"{name} N={n}"

                def make(cin=cin, h=h, cout=cout, k=k, g=g, dtype=dtype, cl=cl, grad=False):
                    x = torch.randn(n, cin, h, h, device=device, dtype=dtype)
                    if cl:
                        x = x.contiguous(memory_format=torch.channels_last)
                    w = torch.randn(cout, cin // g, k, k, device=device, dtype=dtype) * (cin // g * k * k) ** -0.5
                    b = torch.randn(cout, device=device, dtype=dtype)
                    if grad:
                        for t in (x, w, b):
                            t.requires_grad_(True)
                    return x, w, b

                def s_fwd(k=k, s=s, g=g, make=make):
                    x, w, b = make()
                    kw = dict(stride=s, padding=k // 2, groups=g)

                    def pyd(be):
                        return lambda: pydl.conv2d(x, w, b, backend=be, **kw)

                    return {"torch": lambda: F.conv2d(x, w, b, **kw), "pydl": pyd}

                def s_fused(k=k, s=s, g=g, make=make):
                    x, w, b = make()
                    kw = dict(stride=s, padding=k // 2, groups=g)
                    return {"torch": lambda: F.relu(F.conv2d(x, w, b, **kw)),
                            "pydl": lambda be: (lambda: pydl.conv2d(x, w, b, act="relu", backend=be, **kw))}

                def s_train(k=k, s=s, g=g, make=make):
                    x, w, b = make(grad=True)
                    kw = dict(stride=s, padding=k // 2, groups=g)
                    gy = torch.randn_like(F.conv2d(x.detach(), w.detach(), None, **kw))

                    def t_step():
                        return torch.autograd.grad(F.conv2d(x, w, b, **kw), (x, w, b), gy)

                    def p_step(be):
                        return lambda: torch.autograd.grad(pydl.conv2d(x, w, b, backend=be, **kw), (x, w, b), gy)

                    return {"torch": t_step, "pydl": p_step}

                out.append(Case("conv2d", "forward", shape, dname, s_fwd, flops=fl, backends=backends))
                out.append(Case("conv2d", "fused bias+relu vs unfused", shape, dname, s_fused, flops=fl,
                                backends=backends))
                if not (quick and dtype != dtypes[0]):
                    out.append(Case("conv2d", "forward+backward", shape, dname, s_train, flops=3 * fl,
                                    backends=backends))
    if device == "cpu" and not quick:
        out += stage_cases()
    return out


# The ResNet-18/34 3x3 stride-1 stages, at the N=2 of the quick set and at a training batch.
STAGES = [(64, 56), (128, 28), (256, 14), (512, 7)]


def _layer_fns(n, c, h, k, algo=None):
    """{"torch": F.conv2d forward, "pydl": ...} and the forward+backward pair, on one set of inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, h, generator=g).relu()  # post-ReLU activations, He-init weights
    w = torch.randn(k, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
    b = torch.zeros(k)
    xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))
    gy = torch.randn(n, k, h, h, generator=g)
    fwd = {"torch": lambda: F.conv2d(x, w, b, padding=1),
           "pydl": lambda be: (lambda: pydl.conv2d(x, w, b, padding=1, backend=be, algo=algo))}
    train = {"torch": lambda: torch.autograd.grad(F.conv2d(xg, wg, bg, padding=1), (xg, wg, bg), gy),
             "pydl": lambda be: (lambda: torch.autograd.grad(pydl.conv2d(xg, wg, bg, padding=1, backend=be, algo=algo),
                                                             (xg, wg, bg), gy))}
    return fwd, train


def stage_cases():
    out = []
    for n in (2, 32):
        for c, h in STAGES:
            fl = _flops(n, c, h, c, 3, 1, 1)
            shape = f"ResNet stage 3x3 s1 {c}@{h} N={n}"
            out.append(Case("conv2d", "forward", shape, "float32", lambda n=n, c=c, h=h: _layer_fns(n, c, h, c)[0],
                            flops=fl))
            out.append(Case("conv2d", "forward+backward", shape, "float32",
                            lambda n=n, c=c, h=h: _layer_fns(n, c, h, c)[1], flops=3 * fl))
    return out


def _crossover_grid(quick: bool, batches=None):
    batches = batches or ((2, 32) if quick else (1, 2, 8, 32))
    return [(n, c, h) for n in batches for c in (16, 32, 64, 128, 256, 512) for h in (7, 14, 28, 56)
            if n * c * h * h <= 32 * 64 * 56 * 56]


def crossover_cases(quick: bool, device: str, batches=None):
    """pydl Winograd ("pydl") against pydl direct ("torch" column): ratio > 1 where Winograd wins."""
    out = []
    for n, c, h in _crossover_grid(quick, batches):
        def setup(n=n, c=c, h=h, i=0):
            fw, tr = _layer_fns(n, c, h, c, "winograd")
            fd, td = _layer_fns(n, c, h, c, "direct")
            pair = (fw, fd) if i == 0 else (tr, td)
            return {"torch": pair[1]["pydl"]("cpu"), "pydl": pair[0]["pydl"]}
        fl = _flops(n, c, h, c, 3, 1, 1)
        out.append(Case("conv2d", "winograd vs direct, forward", f"3x3 s1 {c}@{h} N={n}", "float32", setup, flops=fl))
        out.append(Case("conv2d", "winograd vs direct, forward+backward", f"3x3 s1 {c}@{h} N={n}", "float32",
                        lambda n=n, c=c, h=h: setup(n, c, h, 1), flops=3 * fl))
    return out


def _cpu_ms(fn, min_s=0.02):
    """Thread CPU time of one call (ms): calls repeated until min_s of it, so a short call is not all timer."""
    reps, t0 = 0, time.thread_time()
    while True:
        fn()
        reps += 1
        t = time.thread_time() - t0
        if t >= min_s:
            return t / reps * 1e3


def crossover_cpu_time(quick: bool, batches=None, rounds: int = 7):
    """The crossover grid at 1 thread, timed in thread CPU time (time.thread_time): on a shared machine a
    neighbour's load shows in wall-clock time but hardly in the CPU time of our own thread (what remains is
    cache and memory-bandwidth contention). Winograd and direct alternate, round by round; each row is the
    median per-round ratio direct / Winograd (> 1: Winograd wins) with its 25-75% spread."""
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z  1 thread, thread CPU time, {rounds} rounds  "
          f"torch {torch.__version__}\n")
    print("| shape | variant | winograd ms | direct ms | speed-up (q1-q3) |\n|---|---|---:|---:|---:|")
    for n, c, h in _crossover_grid(quick, batches):
        fw, tw = _layer_fns(n, c, h, c, "winograd")
        fd, td = _layer_fns(n, c, h, c, "direct")
        for variant, (w, d) in (("forward", (fw, fd)), ("forward+backward", (tw, td))):
            fa, fb = w["pydl"]("cpu"), d["pydl"]("cpu")
            fa(), fb()
            ms = [(_cpu_ms(fa), _cpu_ms(fb)) for _ in range(rounds)]
            r = sorted(b / a for a, b in ms)
            med = [sorted(x)[len(x) // 2] for x in zip(*ms)]
            q = len(r) // 4
            print(f"| 3x3 s1 {c}@{h} N={n} | {variant} | {med[0]:.3f} | {med[1]:.3f} | "
                  f"{r[len(r) // 2]:.2f}x ({r[q]:.2f}-{r[-1 - q]:.2f}) |", flush=True)


def _pop_option(name: str, has_value: bool):
    if name not in sys.argv:
        return None
    i = sys.argv.index(name)
    value = sys.argv[i + 1] if has_value else True
    del sys.argv[i:i + (2 if has_value else 1)]
    return value


if __name__ == "__main__":
    if _pop_option("--crossover", False):
        # --batches 2,32: the batch sizes of the grid (default: 2 and 32 with --quick, else 1, 2, 8, 32);
        # --cpu-time: 1 thread, thread CPU time, not the interleaved wall-clock runner (see crossover_cpu_time)
        batches = _pop_option("--batches", True)
        batches = tuple(int(b) for b in batches.split(",")) if batches else None
        if _pop_option("--cpu-time", False):
            crossover_cpu_time("--quick" in sys.argv, batches)
        else:
            main_for(lambda quick, device: crossover_cases(quick, device, batches))
    else:
        main_for(cases)
