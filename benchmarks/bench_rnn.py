"""LSTM / GRU: pydl's fused cells and whole-sequence ops vs torch.nn, same weights, same inputs, same threads.

Baselines: ``torch.nn.LSTMCell`` / ``GRUCell`` (separate ATen ops per gate function, autograd op by op) and
``torch.nn.LSTM`` / ``GRU`` (on the CPU torch's fp32 LSTM runs oneDNN's fused RNN primitive; its GRU runs
ATen's per-step loop; on a GPU both are cuDNN).

Every case's op is "rnn" (the build unit whose availability the harness checks); the variant names the
torch module compared against. Variants: "forward" (under no_grad, as in inference) and "forward+backward"
(a training step's worth: the output's gradient is a fixed random tensor, weights and input get gradients).

FLOPs counted: the GEMMs only (2 * rows * K * N each): forward = input projection + recurrent projection of
every step, every layer and direction; forward+backward = 3x forward (dX, dW_ih, dW_hh and dh per step).

Two timing methods: the default one is benchmarks/common.py's (blocked medians, torch then pydl);
``--interleaved`` alternates torch and pydl and keeps each side's best run, which survives other jobs on a
shared machine far better (see benchmarks.common.run_interleaved).

Targets: on a CPU >= 1.0x nn.LSTMCell and nn.LSTM for forward+backward; on a GPU >= 1.0x cuDNN
for hidden <= 512.

How the CPU sequence ops run (csrc/cpu/rnn.cpp, "a whole sequence in one parallel region"): fp32/fp64 start
one OpenMP team per direction of a layer; each thread owns a slice of the hidden units with its gate columns
of W_hh packed into register-block panels (kept across calls while the weights stay bitwise the same:
csrc/cpu/rnn.cpp, "the packed-weight cache"), and per step computes its GEMM slice (a hand-written 6x4-vector
micro-kernel, ~190 GFLOP/s on one core for the 32x256x512 step slice where MKL's sgemm gives ~175) and its
pointwise part, then one barrier. The input projection runs in the region as well (a second packed GEMM per
step) while each thread's packed W_ih + W_hh fit in 1 MB, else one MKL GEMM up front; the backward runs the
same structure in reverse (dh slice = dG_{t+1} W_hh[:, slice]), sums the bias gradients as it goes, and keeps
the weight gradients and dL/dx as big GEMMs.
fp16/bf16 keep the per-step path (a library GEMM + a fused pointwise kernel per step).

Measured on the 2-core box while it was shared (load average 4-9 from other jobs), T50 B32 256->256 fp32, one
thread, thread CPU time, minima of alternating torch/pydl calls (10-15 calls each, 2-3 runs):
LSTM forward 0.97-1.00x torch, forward+backward 1.00-1.02x; GRU 1.31-1.33x / 1.45-1.56x. On one thread this
shape takes the up-front projection (2 MB of packed weights per thread > 1 MB; forcing the in-region one there
was 4-10% slower). Where the weights fit (I = H = 128, one thread) the in-region projection beats the up-front
one: LSTM forward 2.56-2.60 vs 2.80-2.92 ms, forward+backward 7.98-8.12 vs 8.36-8.54; GRU 1.92-1.96 vs
2.11-2.17 / 6.39-6.43 vs 6.59-6.82. Two threads: most runs under that load were 3-10x the quiet times on
both sides; in the runs whose torch times were quiet (torch LSTM forward ~5.0-5.2 ms), LSTM forward 0.98-0.99x
(pydl 5.09-5.28 ms) and forward+backward 1.03x (one run), against 0.90x / 1.00-1.01x for the previous
commit in the same session (and 0.87-0.88x / 1.02x, GRU 1.42-1.43x / 1.71-1.72x in an earlier quiet run); no
quiet GRU run came up (its pydl minima under load were no slower than the previous commit's). Re-measure on
a quiet machine: `python -m benchmarks.bench_rnn --quick --threads 2 --interleaved` (or
`pydl bench rnn --quick --threads 2`).
"""
import torch

import pydl

from .common import Case, main_for


def _seq_flops(kind, T, B, I, H, L=1, D=1):
    G = 4 if kind == "lstm" else 3
    total = 0
    for layer in range(L):
        in_size = I if layer == 0 else D * H
        total += D * 2 * T * B * (in_size + H) * G * H
    return total


def _cell_case(kind, B, I, H, variant, device, dtype, backends):
    tcls = torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell
    pcls = pydl.nn.LSTMCell if kind == "lstm" else pydl.nn.GRUCell

    def setup():
        torch.manual_seed(0)
        t = tcls(I, H).to(device, dtype)
        p = pcls.from_torch(t)
        x = torch.randn(B, I, device=device, dtype=dtype, requires_grad=variant != "forward")
        h = torch.randn(B, H, device=device, dtype=dtype)
        hx = (h, torch.randn_like(h)) if kind == "lstm" else h
        gh = torch.randn(B, H, device=device, dtype=dtype)

        def step(m):
            if variant == "forward":
                def fn():
                    with torch.no_grad():
                        return m(x, hx)
            else:
                def fn():
                    out = m(x, hx)
                    (out[0] if kind == "lstm" else out).backward(gh)
            return fn

        def for_backend(b):
            p.backend = b
            return step(p)

        return {"torch": step(t), "pydl": for_backend}

    G = 4 if kind == "lstm" else 3
    flops = 2 * B * (I + H) * G * H * (1 if variant == "forward" else 3)
    return Case("rnn", f"{tcls.__name__} {variant}", f"B={B} I={I} H={H}", str(dtype).replace("torch.", ""), setup,
                flops=flops, backends=backends)


def _seq_case(kind, T, B, I, H, variant, device, dtype, backends, L=1, bidir=False):
    tcls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    pcls = pydl.nn.LSTM if kind == "lstm" else pydl.nn.GRU
    D = 2 if bidir else 1

    def setup():
        torch.manual_seed(0)
        t = tcls(I, H, num_layers=L, bidirectional=bidir).to(device, dtype)
        p = pcls.from_torch(t)
        x = torch.randn(T, B, I, device=device, dtype=dtype, requires_grad=variant != "forward")
        go = torch.randn(T, B, D * H, device=device, dtype=dtype)

        def step(m):
            if variant == "forward":
                def fn():
                    with torch.no_grad():
                        return m(x)
            else:
                def fn():
                    m(x)[0].backward(go)
            return fn

        def for_backend(b):
            p.backend = b
            return step(p)

        return {"torch": step(t), "pydl": for_backend}

    flops = _seq_flops(kind, T, B, I, H, L, D) * (1 if variant == "forward" else 3)
    shape = f"T={T} B={B} I={I} H={H}" + (f" L={L}" if L > 1 else "") + (" bidir" if bidir else "")
    return Case("rnn", f"{tcls.__name__} {variant}", shape, str(dtype).replace("torch.", ""), setup, flops=flops,
                backends=backends)


def cases(quick: bool, device: str):
    backends = ("cpu",) if device == "cpu" else ("cuda", "triton")
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    if quick:
        cell_shapes = [(32, 256, 256)]
        seq_shapes = [(50, 32, 256, 256)]
    else:
        cell_shapes = [(16, 128, 128), (64, 512, 512), (64, 1024, 1024)]
        seq_shapes = [(50, 16, 128, 128), (50, 32, 256, 256), (100, 64, 512, 512)] + (
            [(50, 64, 1024, 1024)] if device == "cuda" else [(50, 16, 1024, 1024)])
    out = []
    for dtype in dtypes:
        for kind in ("lstm", "gru"):
            for variant in ("forward", "forward+backward"):
                for B, I, H in cell_shapes:
                    out.append(_cell_case(kind, B, I, H, variant, device, dtype, backends))
                for T, B, I, H in seq_shapes:
                    out.append(_seq_case(kind, T, B, I, H, variant, device, dtype, backends))
        if not quick:  # a stacked bidirectional model, as in a tagger
            for variant in ("forward", "forward+backward"):
                out.append(_seq_case("lstm", 50, 32, 128, 256, variant, device, dtype, backends, L=2, bidir=True))
    return out


if __name__ == "__main__":
    main_for(cases)  # --interleaved: benchmarks.common.run_interleaved, for a busy machine
