"""Where a Winograd conv's time goes: the phase profile of csrc/cpu/conv2d/winograd.cpp at the ResNet stages.

    python -m benchmarks.winograd_phases [--rounds 5] [--shapes 64@56N2,512@7N32]

1 thread, thread CPU time. The kernel prints one line per call when PYDL_WINOGRAD_PROFILE=1 (set here before
the first call): the time its workers spent in the input transform, the filter transform, the 36 GEMMs and
the output transform + epilogue (grad-weight: the x and dz transforms, -, the GEMMs, the inverse filter
transform). Each GEMM variant (PYDL_WINOGRAD_GEMM=blas: MKL per point; kernel: the file's micro-kernel) runs
the same calls, alternating round by round; the table has the per-phase medians in us, the GEMMs' GFLOP/s
(2 * 36 * tiles * C * K flops per call), and the whole call (forward; forward + backward) against torch's.
"""
import os
import re
import sys
import tempfile
import time

os.environ["PYDL_WINOGRAD_PROFILE"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import pydl  # noqa: E402

SHAPES = {"64@56N2": (2, 64, 56), "128@28N2": (2, 128, 28), "256@14N2": (2, 256, 14), "512@7N2": (2, 512, 7),
          "512@7N32": (32, 512, 7)}
LINE = re.compile(r"winograd-profile (\S+) (\S+) (\S+) tiles=(\d+) C=(\d+) K=(\d+) us: (\S+) (\S+) (\S+) (\S+)")


class Capture:
    """The process's stderr (fd 2, where the C++ code prints) into a file, for the lines of one call."""

    def __enter__(self):
        self.f = tempfile.TemporaryFile(mode="w+")
        sys.stderr.flush()
        self.saved = os.dup(2)
        os.dup2(self.f.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.f.seek(0)
        self.lines = [m.groups() for m in map(LINE.search, self.f.read().splitlines()) if m]
        self.f.close()


def _median(v):
    v = sorted(v)
    return v[len(v) // 2]


def profile(n, c, h, rounds):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, h, generator=g).relu()
    w = torch.randn(c, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
    b = torch.zeros(c)
    gy = torch.randn(n, c, h, h, generator=g)
    xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))
    calls = {
        "fwd": lambda: pydl.conv2d(x, w, b, padding=1, backend="cpu", algo="winograd"),
        "f+b": lambda: torch.autograd.grad(pydl.conv2d(xg, wg, bg, padding=1, backend="cpu", algo="winograd"),
                                           (xg, wg, bg), gy),
        "torch fwd": lambda: F.conv2d(x, w, b, padding=1),
        "torch f+b": lambda: torch.autograd.grad(F.conv2d(xg, wg, bg, padding=1), (xg, wg, bg), gy),
    }
    phases, totals = {}, {}
    for _ in range(rounds):
        for mode in ("blas", "kernel"):
            os.environ["PYDL_WINOGRAD_GEMM"] = mode
            for name in ("fwd", "f+b"):
                calls[name]()  # warm
                with Capture() as cap:
                    t0 = time.thread_time()
                    calls[name]()
                    totals.setdefault((mode, name), []).append((time.thread_time() - t0) * 1e6)
                if name == "f+b":
                    for what, _scheme, _g, *rest in cap.lines:
                        phases.setdefault((mode, what), []).append([float(v) for v in rest[3:]])
                        phases[(mode, what, "dims")] = (int(rest[0]), int(rest[1]), int(rest[2]), _scheme)
        for name in ("torch fwd", "torch f+b"):
            calls[name]()
            t0 = time.thread_time()
            calls[name]()
            totals.setdefault(("torch", name), []).append((time.thread_time() - t0) * 1e6)
    os.environ.pop("PYDL_WINOGRAD_GEMM")
    return phases, totals


def main():
    rounds = 5
    shapes = list(SHAPES)
    args = sys.argv[1:]
    if "--rounds" in args:
        rounds = int(args[args.index("--rounds") + 1])
    if "--shapes" in args:
        shapes = args[args.index("--shapes") + 1].split(",")
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z  1 thread, thread CPU time, median of {rounds}\n")
    print("| shape | pass | GEMM | scheme | input us | filter us | GEMMs us | output us | GEMM GFLOP/s |\n"
          "|---|---|---|---|---:|---:|---:|---:|---:|")
    for key in shapes:
        n, c, h = SHAPES[key]
        phases, totals = profile(n, c, h, rounds)
        for what in ("forward", "grad-input", "grad-weight"):
            for mode in ("blas", "kernel"):
                if (mode, what) not in phases:
                    continue
                med = [_median(col) for col in zip(*phases[(mode, what)])]
                tiles, C, K, scheme = phases[(mode, what, "dims")]
                gf = 2 * 36 * tiles * C * K / (med[2] * 1e3) if med[2] > 0 else 0
                print(f"| {c}@{h} N={n} | {what} | {mode} | {scheme} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | "
                      f"{med[3]:.0f} | {gf:.1f} |")
        tf, tb = _median(totals[("torch", "torch fwd")]), _median(totals[("torch", "torch f+b")])
        for mode in ("blas", "kernel"):
            pf, pb = _median(totals[(mode, "fwd")]), _median(totals[(mode, "f+b")])
            print(f"| {c}@{h} N={n} | whole call | {mode} | fwd {pf:.0f} us ({tf / pf:.2f}x torch) | "
                  f"f+b {pb:.0f} us ({tb / pb:.2f}x torch) | | | | |", flush=True)


if __name__ == "__main__":
    main()
