"""The image demo's data: scikit-learn's handwritten digits, or any ImageFolder-style directory, split into
training and validation sets and normalised with the training set's statistics."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F


def load_digits(size: int = 16, seed: int = 0, valid_frac: float = 0.2):
    """scikit-learn's 1797 handwritten digits (8x8 scans, 17 grey levels), upsampled to size x size so the
    conv layers and Grad-CAM maps have room. Returns (xtr, ytr, xva, yva, class_names)."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.long)
    return split(x, y, seed, valid_frac) + ([str(i) for i in range(10)],)


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
    return split(torch.stack(xs), torch.tensor(ys), seed, valid_frac) + (classes,)


def split(x, y, seed, valid_frac):
    """A seeded random split, normalised with the training part's mean and std (the validation images must
    not leak into the statistics the model is fed with)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    nv = max(1, int(len(x) * valid_frac))
    va, tr = perm[:nv], perm[nv:]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return x[tr], y[tr], x[va], y[va]
