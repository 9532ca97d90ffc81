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

``--overhead``: the per-call cost of tiny inputs (2x64x2x2 fp32, 1 thread), where the kernel's work is
negligible and what is measured is everything around it (argument checks, dispatch, autograd bookkeeping).
Thread CPU time (time.thread_time: other processes on a shared machine do not count), torch and pydl
alternated in blocks, the minimum block kept, for eval / train / forward+backward in both layouts.

Page faults (CPU): each call mallocs a fresh 4 MB output and frees it before the next. If glibc gives that
memory back to the kernel in between (the heap top shrinks with brk, or a chunk is unmapped), the next call
page-faults it in again: 1024 faults of 4 KB, measured ~1000 us instead of ~350 us (16x64x32x32 fp32, one
thread). Whether it does depends on where the call's small allocations land around the output: posix_memalign
requests (torch's CPU allocator) are served from glibc's bins, not its tcache, and when no small chunk fits
they are cut out of the big free chunk the previous output left, so the next output no longer fits there.
pydl's CPU forward made three such requests a call (mean, invstd, var): 22-77 of 300 back-to-back eval module
calls faulted (the anomalous 0.30-0.47 ms rows of A/A runs), torch's 0-9 (once 97: the same can hit its side).
It now mallocs them (csrc/cpu/batch_norm.cpp, SmallAllocator): 0-1 of 300. ``--steady-heap``
(:func:`steady_heap`) takes the allocator out of the comparison altogether -- glibc then serves allocations up
to 32 MB from the heap and never trims it, so no call of either side faults; it is process-wide, so it is an
option of this script, not of ``pydl bench`` (PyTorch's CPU performance guide gets the same by recommending
jemalloc/tcmalloc). forward+backward still faults on both sides without it (the autograd engine's buffers:
41-150 of 150 calls, pydl and torch alike, before and after the change), so compare those rows with it.

Targets: CPU (2 threads, 64x64x32x32 fp32, contiguous and channels_last): cpu backend >= 1.0x torch for
forward-train, eval and forward+backward. GPU: >= 85% of copy bandwidth, >= 1.2x torch in bf16.
"""
import sys
import time

import torch

import pydl

from .common import Case, main_for


def _make(shape, dtype, device, layout):
    x = torch.randn(shape, device=device).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def steady_heap() -> bool:
    """glibc only: serve allocations up to 32 MB (glibc's maximum for this) from the heap and never trim it
    below 1 GB, so a freed output is reused without page faults. True if set (False: not glibc)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


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


def _overhead_pairs(shape=(2, 64, 2, 2)):
    """(name, torch_fn, pydl_fn) for the per-call overhead table: the same module calls as cases() above."""
    C = shape[1]
    out = []
    for layout in ("contiguous", "channels_last"):
        x = _make(shape, torch.float32, "cpu", layout)
        xg = x.detach().clone().requires_grad_()
        dy = _make(shape, torch.float32, "cpu", layout)
        tag = "" if layout == "contiguous" else " CL"
        for mode in ("eval", "train", "f+b"):
            ref = torch.nn.BatchNorm2d(C).train(mode != "eval")
            ours = pydl.nn.BatchNorm2d(C, backend="cpu").train(mode != "eval")
            if mode == "f+b":
                def fn(m, xg=xg, dy=dy):
                    return lambda: torch.autograd.grad(m(xg), (xg, m.weight, m.bias), dy)
            else:
                def fn(m, x=x):
                    return lambda: m(x)
            out.append((mode + tag, fn(ref), fn(ours)))
    return out


def overhead(rounds: int = 15, calls: int = 200) -> None:
    """Per-call thread CPU time, us (min over rounds of a block of `calls` calls), torch vs pydl, 1 thread."""
    torch.set_num_threads(1)
    print("| case (2x64x2x2 fp32, 1 thread) | pydl us/call | torch us/call | torch/pydl |")
    print("|---|---|---|---|")
    for name, theirs, mine in _overhead_pairs():
        best = {}
        for fn in (theirs, mine):
            for _ in range(20):  # warm-up (first-call costs, allocator)
                fn()
        for _ in range(rounds):
            for key, fn in (("torch", theirs), ("pydl", mine)):
                t0 = time.thread_time()
                for _ in range(calls):
                    fn()
                best[key] = min(best.get(key, float("inf")), (time.thread_time() - t0) / calls)
        print(f"| {name} | {best['pydl'] * 1e6:.1f} | {best['torch'] * 1e6:.1f} | "
              f"{best['torch'] / best['pydl']:.2f}x |", flush=True)


if __name__ == "__main__":
    if "--steady-heap" in sys.argv[1:]:
        sys.argv.remove("--steady-heap")
        print(f"steady heap: {steady_heap()}")
    if "--overhead" in sys.argv[1:]:
        overhead()
    else:
        main_for(cases)  # --interleaved: benchmarks.common.run_interleaved, for a busy machine
