"""batch_norm vs torch.nn.BatchNorm2d: training forward, eval forward, forward+backward.

Both sides are modules doing the same work per call (same process, same tensor, same threads): pydl's
``pydl.nn.BatchNorm2d(backend=b)`` against ``torch.nn.BatchNorm2d``, in training mode (batch statistics and
the in-place running-stat update) or eval mode (running statistics). forward+backward takes the gradients of
x, weight and bias with ``torch.autograd.grad`` (no accumulation into .grad, which would add a pass to both).
"eval + relu" is pydl's BatchNorm2d with its fused ``act="relu"`` against torch's BatchNorm2d then ReLU (two
passes over the tensor where pydl makes one).

Minimal traffic, for GB/s: forward = read x + write y (2 x numel x itemsize); forward+backward adds read dy,
read x, write dx (5 x in all). A training forward must in fact read x twice (statistics, then normalise):
the CPU backend's channel blocking makes the second read an L2 hit for contiguous input, and the CUDA
backend's one-pass kernels keep x (and dy) in shared memory across a grid barrier when they fit (set
PYDL_BN_ONEPASS=0 to time its two-kernel path instead).

Targets: CPU (2 threads, 64x64x32x32 fp32, contiguous and channels_last): cpu backend >= 1.0x torch for
forward-train, eval and forward+backward. GPU: >= 85% of copy bandwidth, >= 1.2x torch in bf16.
"""
import torch

import pydl

from .common import Case, main_for


def _make(shape, dtype, device, layout):
    x = torch.randn(shape, device=device).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def cases(quick: bool, device: str):
    if device == "cpu":
        shapes = [(64, 64, 32, 32)] if not quick else [(16, 64, 32, 32)]
        dtypes = [torch.float32]
        backends = ("cpu",)
    else:
        shapes = [(64, 64, 32, 32), (128, 256, 28, 28)] if not quick else [(64, 64, 32, 32)]
        dtypes = [torch.float32, torch.bfloat16]
        backends = ("cuda", "triton")
    out = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in ("contiguous", "channels_last"):
                C = shape[1]
                numel = torch.Size(shape).numel()
                item = torch.empty((), dtype=dtype).element_size()
                sname = "x".join(map(str, shape)) + ("" if layout == "contiguous" else " channels_last")
                dname = str(dtype).replace("torch.", "")

                def s_train(shape=shape, dtype=dtype, layout=layout, C=C):
                    x = _make(shape, dtype, device, layout)
                    ref = torch.nn.BatchNorm2d(C, device=device).train()

                    def ours(b):
                        m = pydl.nn.BatchNorm2d(C, device=device, backend=b).train()
                        return lambda: m(x)

                    return {"torch": lambda: ref(x), "pydl": ours}

                def s_eval(shape=shape, dtype=dtype, layout=layout, C=C):
                    x = _make(shape, dtype, device, layout)
                    ref = torch.nn.BatchNorm2d(C, device=device).eval()

                    def ours(b):
                        m = pydl.nn.BatchNorm2d(C, device=device, backend=b).eval()
                        return lambda: m(x)

                    return {"torch": lambda: ref(x), "pydl": ours}

                def s_fwd_bwd(shape=shape, dtype=dtype, layout=layout, C=C):
                    x = _make(shape, dtype, device, layout).requires_grad_()
                    dy = _make(shape, dtype, device, layout)
                    ref = torch.nn.BatchNorm2d(C, device=device).train()

                    def step(m):
                        y = m(x)
                        return torch.autograd.grad(y, (x, m.weight, m.bias), dy)

                    def ours(b):
                        m = pydl.nn.BatchNorm2d(C, device=device, backend=b).train()
                        return lambda: step(m)

                    return {"torch": lambda: step(ref), "pydl": ours}

                def s_eval_relu(shape=shape, dtype=dtype, layout=layout, C=C):
                    x = _make(shape, dtype, device, layout)
                    ref = torch.nn.Sequential(torch.nn.BatchNorm2d(C, device=device), torch.nn.ReLU()).eval()

                    def ours(b):
                        m = pydl.nn.BatchNorm2d(C, device=device, backend=b, act="relu").eval()
                        return lambda: m(x)

                    return {"torch": lambda: ref(x), "pydl": ours}

                out.append(Case("batch_norm", "forward-train", sname, dname, s_train, bytes=2 * numel * item,
                                backends=backends))
                out.append(Case("batch_norm", "eval", sname, dname, s_eval, bytes=2 * numel * item,
                                backends=backends))
                out.append(Case("batch_norm", "eval + relu (fused vs BatchNorm2d, ReLU)", sname, dname, s_eval_relu,
                                bytes=2 * numel * item, backends=backends))
                out.append(Case("batch_norm", "forward+backward", sname, dname, s_fwd_bwd, bytes=5 * numel * item,
                                backends=backends))
    return out


if __name__ == "__main__":
    main_for(cases)  # --interleaved: benchmarks.common.run_interleaved, for a busy machine
