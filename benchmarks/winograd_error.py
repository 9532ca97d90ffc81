"""Winograd F(4x4, 3x3)'s rounding error on ResNet-like data, against the direct paths and the bound.

Data as a ResNet layer sees it: inputs post-BN-ReLU (unit normal, then ReLU), He-init weights
(std sqrt(2 / (9 C))), no bias. The truth is the float64 conv of the same fp32 inputs. Printed per layer:

* rel err: max |y - truth| / max |truth| for pydl's Winograd, pydl's direct path and torch (oneDNN), fp32;
* vs |x|*|w|: max over elements of |y - truth| / (|x| (*) |w|), the error relative to the direct
  accumulation of absolute values (the scale a direct conv's error is measured on), in units of u = 2^-24;
* bound use: max |y - truth| / winograd_bound (tests/winograd_ref.py) -- how much of the rigorous bound the
  observed error uses (the tests compare with the bound itself).

Then the same for grad-weight (Winograd's adjoint, winograd.cpp: run_grad_weight) from a unit-normal output
gradient: rel err of the three paths, and vs |x| (*) |dy| (the direct correlation of absolute values) in u.

Run: ``python -m benchmarks.winograd_error`` (from the repository root).
"""
import importlib.util
import os

import torch
import torch.nn.functional as F

import pydl


def _oracle():
    """tests/winograd_ref.py, the tests' fp64 prototype and bound, loaded from its file: the tests own it and
    tests/ is not a package (no sys.path edit, no second copy)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "winograd_ref.py")
    spec = importlib.util.spec_from_file_location("pydl_tests_winograd_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_ref = _oracle()
unit_roundoff, winograd_bound = _ref.unit_roundoff, _ref.winograd_bound

LAYERS = [(2, 16, 56), (2, 64, 56), (2, 128, 28), (2, 256, 14), (2, 512, 7)]


def _layer(n, c, h):
    """A ResNet-like layer's input and weight: post-ReLU activations, He-initialised 3x3 filters."""
    return torch.randn(n, c, h, h).relu(), torch.randn(c, c, 3, 3) * (2 / (9 * c)) ** 0.5


def main():
    torch.manual_seed(0)
    u = unit_roundoff(torch.float32)
    print("| layer | rel err winograd | rel err direct | rel err torch | winograd vs |x|*|w| (u) "
          "| direct vs |x|*|w| (u) | bound use |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n, c, h in LAYERS:
        x, w = _layer(n, c, h)
        truth = F.conv2d(x.double(), w.double(), padding=1)
        scale = F.conv2d(x.double().abs(), w.double().abs(), padding=1)
        yw = pydl.conv2d(x, w, padding=1, backend="cpu", algo="winograd").double()
        yd = pydl.conv2d(x, w, padding=1, backend="cpu", algo="direct").double()
        yt = F.conv2d(x, w, padding=1).double()
        ew, ed, et = (yw - truth).abs(), (yd - truth).abs(), (yt - truth).abs()
        m = truth.abs().max()
        bound = winograd_bound(x, w, None, 1)
        print(f"| {c}@{h} N={n} | {ew.max() / m:.2e} | {ed.max() / m:.2e} | {et.max() / m:.2e} "
              f"| {(ew / scale).max() / u:.1f} | {(ed / scale).max() / u:.1f} | {(ew / bound).max():.4f} |")
    print("\n| layer | grad-weight rel err winograd | rel err direct | rel err torch | winograd vs |x|*|dy| (u) "
          "| direct vs |x|*|dy| (u) |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, c, h in LAYERS:
        x, w = _layer(n, c, h)
        dy = torch.randn(n, c, h, h)
        truth = torch.nn.grad.conv2d_weight(x.double(), w.shape, dy.double(), padding=1)
        scale = torch.nn.grad.conv2d_weight(x.double().abs(), w.shape, dy.double().abs(), padding=1)
        got = []
        for algo in ("winograd", "direct"):
            wg = w.clone().requires_grad_(True)
            got.append(torch.autograd.grad(pydl.conv2d(x, wg, padding=1, backend="cpu", algo=algo), wg, dy)[0])
        got.append(torch.nn.grad.conv2d_weight(x, w.shape, dy, padding=1))
        ew, ed, et = ((g.double() - truth).abs() for g in got)
        m = truth.abs().max()
        print(f"| {c}@{h} N={n} | {ew.max() / m:.2e} | {ed.max() / m:.2e} | {et.max() / m:.2e} "
              f"| {(ew / scale).max() / u:.1f} | {(ed / scale).max() / u:.1f} |")


if __name__ == "__main__":
    main()
