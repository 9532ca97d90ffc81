"""Class activation maps: where in the image a conv layer's evidence for a class sits.

For a layer with activations ``A`` (B, K, h, w) and the class score ``y`` (the logit, before softmax):

* **CAM** (Zhou et al. 2016), for models ending in global average pooling + one linear layer ``fc``:
  ``M = sum_k fc.weight[c, k] * A_k``. No gradients: the linear weights *are* the channel importances.
* **Grad-CAM** (Selvaraju et al. 2017): ``alpha_k = mean_ij dy/dA_kij``; ``M = relu(sum_k alpha_k A_k)``.
  For a GAP + linear head, ``dy/dA_kij = w_ck / (h*w)``, so Grad-CAM equals CAM up to scale (and the ReLU):
  the tests use exactly this to check the numbers by hand.
* **Grad-CAM++** (Chattopadhay et al. 2018): per-position weights
  ``a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3)`` with ``g = dy/dA_kij`` (the closed form for ``exp(y)``, whose
  higher derivatives are powers of the first), ``alpha_k = sum_ij a_kij relu(g_kij)``;
  ``M = relu(sum_k alpha_k A_k)``.
* **LayerCAM** (Jiang et al. 2021): elementwise ``M = relu(sum_k relu(g_k) * A_k)`` -- keeps fine spatial
  detail, so it works on early layers too.

Every map is upsampled (bilinear) to the input's height and width, then scaled per image to [0, 1]
(``(M - min) / (max - min)``; an all-constant map becomes zeros).

Side effects, deliberately none: the model runs in eval mode (``eval_mode=True``: batch norm uses its
running statistics and dropout is off, so a sample's map does not depend on its batch mates) and every
module's ``training`` flag is restored afterwards; gradients are taken with ``torch.autograd.grad`` with
respect to the activation only, so no parameter's ``.grad`` is created or changed. The hooked output is
cloned before the rest of the network sees it, so an in-place op after the layer (``ReLU(inplace=True)``)
cannot change ``A`` or its gradient.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .hooks import flat_tensors

__all__ = ["cam", "class_activation_map", "grad_cam", "grad_cam_pp", "layer_cam", "overlay", "METHODS"]

METHODS = ("cam", "gradcam", "gradcam++", "layercam")


def _find_fc(model: nn.Module, k: int) -> nn.Linear:
    fc = None
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.in_features == k:
            fc = m
    if fc is None:
        raise ValueError(f"cam: method 'cam' needs a GAP + linear head; found no nn.Linear with in_features={k} "
                         f"(the layer's channels). Pass fc= explicitly or use 'gradcam'.")
    return fc


def target_classes(logits: torch.Tensor, target) -> torch.Tensor:
    """The class to explain per sample, (B,) long: the top class where ``target`` is None, else ``target``
    (one class for the whole batch, or one per sample)."""
    B = logits.shape[0]
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(B)
    if t.numel() != B:
        raise ValueError(f"cam: target must be an int or one class per sample ({B}), got {t.numel()}")
    if (t < 0).any() or (t >= logits.shape[1]).any():
        raise ValueError(f"cam: target classes must be in [0, {logits.shape[1]}), got {t.tolist()}")
    return t


def _normalise(m: torch.Tensor) -> torch.Tensor:
    flat = m.reshape(m.shape[0], -1)
    lo = flat.amin(1).reshape(-1, 1, 1)
    hi = flat.amax(1).reshape(-1, 1, 1)
    rng = hi - lo
    return torch.where(rng > 0, (m - lo) / torch.where(rng > 0, rng, 1), torch.zeros_like(m))


def cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, method: str = "gradcam",
        target: Union[None, int, Sequence[int], torch.Tensor] = None, fc: Optional[nn.Linear] = None,
        eval_mode: bool = True, upsample: bool = True, return_logits: bool = False):
    """Class activation maps of ``layer`` for the input batch ``x`` (B, C, H, W): a (B, H, W) float tensor in
    [0, 1] (B, h, w at the layer's resolution with ``upsample=False``).

    ``method``: ``"cam"``, ``"gradcam"``, ``"gradcam++"`` or ``"layercam"``. ``target``: the class per
    sample (an int for all, a sequence, or None = each sample's top class). ``fc``: the linear head for
    ``"cam"`` (default: the last ``nn.Linear`` whose ``in_features`` equals the layer's channels).
    ``return_logits=True`` returns ``(maps, logits, targets)``.
    """
    if method not in METHODS:
        raise ValueError(f"cam: method must be one of {METHODS}, got {method!r}")
    if not isinstance(x, torch.Tensor) or x.dim() < 3 or not x.is_floating_point():
        raise ValueError(f"cam: x must be a floating (B, C, H, W) batch, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not any(m is layer for m in model.modules()):
        raise ValueError("cam: layer is not a submodule of model")
    flags = [(m, m.training) for m in model.modules()]
    store = {}

    def grab(module, inputs, output):
        ts = flat_tensors(output)
        if not ts:
            raise ValueError(f"cam: {type(module).__name__} returned no tensor")
        if isinstance(output, torch.Tensor):
            store["A"] = output
            return output.clone()  # the network continues on a copy: in-place ops downstream can't touch A
        store["A"] = ts[0]
        return None

    handle = layer.register_forward_hook(grab)
    try:
        if eval_mode:
            model.eval()
        with torch.enable_grad():
            # an input that requires grad makes A part of a graph even when every parameter is frozen
            logits = model(x.detach().requires_grad_(True))
            if logits.dim() != 2:
                raise ValueError(f"cam: model must return (B, classes) scores, got shape {tuple(logits.shape)}")
            tgt = target_classes(logits, target)
            A = store["A"]
            if A.dim() != 4:
                raise ValueError(f"cam: layer output must be (B, K, h, w), got shape {tuple(A.shape)}")
            if method == "cam":
                head = fc if fc is not None else _find_fc(model, A.shape[1])
                w = head.weight.detach()[tgt]                       # (B, K)
                m = torch.einsum("bk,bkhw->bhw", w.to(A.dtype), A.detach())
            else:
                score = logits.gather(1, tgt[:, None]).sum()  # samples are independent: one backward for all
                (g,) = torch.autograd.grad(score, A)
                a, g = A.detach(), g.detach()
                if method == "gradcam":
                    alpha = g.mean((2, 3), keepdim=True)
                    m = F.relu((alpha * a).sum(1))
                elif method == "gradcam++":
                    g2 = g * g
                    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g
                    aij = torch.where(g != 0, g2 / torch.where(denom != 0, denom, 1), torch.zeros_like(g))
                    alpha = (aij * F.relu(g)).sum((2, 3), keepdim=True)
                    m = F.relu((alpha * a).sum(1))
                else:  # layercam
                    m = F.relu((F.relu(g) * a).sum(1))
    finally:
        handle.remove()
        for mod, flag in flags:
            mod.training = flag
    m = m.detach().float()
    if upsample and m.shape[-2:] != x.shape[-2:]:
        m = F.interpolate(m[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    m = _normalise(m)
    return (m, logits.detach(), tgt) if return_logits else m


def class_activation_map(model, x, layer, target=None, fc=None, **kw):
    """CAM (GAP + linear heads): :func:`cam` with ``method="cam"``."""
    return cam(model, x, layer, "cam", target, fc, **kw)


def grad_cam(model, x, layer, target=None, **kw):
    """Grad-CAM: :func:`cam` with ``method="gradcam"``."""
    return cam(model, x, layer, "gradcam", target, **kw)


def grad_cam_pp(model, x, layer, target=None, **kw):
    """Grad-CAM++: :func:`cam` with ``method="gradcam++"``."""
    return cam(model, x, layer, "gradcam++", target, **kw)


def layer_cam(model, x, layer, target=None, **kw):
    """LayerCAM: :func:`cam` with ``method="layercam"``."""
    return cam(model, x, layer, "layercam", target, **kw)


def to_hwc01(image) -> np.ndarray:
    """An image as float (H, W, 3) in [0, 1]: accepts (C, H, W) / (H, W, C) / (H, W) tensors or arrays in any
    range (scaled by its own min and max, which is what you want for a normalised network input)."""
    a = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"overlay: image must be (C,H,W), (H,W,C) or (H,W) with C in (1, 3), got {a.shape}")
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def overlay(image, heat, path=None, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The heat map (H, W) in [0, 1], coloured with ``cmap``, blended over ``image`` with weight ``alpha``:
    returns an (H, W, 3) uint8 RGB array and writes it as a PNG to ``path`` when given. A heat map of
    another size is resized (bilinear) to the image."""
    import matplotlib

    img = to_hwc01(image)
    h = heat.detach().cpu().float() if isinstance(heat, torch.Tensor) else torch.as_tensor(np.asarray(heat, np.float32))
    if h.dim() == 3 and h.shape[0] == 1:
        h = h[0]
    if h.dim() != 2:
        raise ValueError(f"overlay: heat must be (H, W), got {tuple(h.shape)}")
    if tuple(h.shape) != img.shape[:2]:
        h = F.interpolate(h[None, None], size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    colour = matplotlib.colormaps[cmap](h.clamp(0, 1).numpy())[..., :3]
    out = np.clip((1 - alpha) * img + alpha * colour, 0, 1)
    rgb = (out * 255 + 0.5).astype(np.uint8)
    if path is not None:
        import os

        import matplotlib.image

        d = os.path.dirname(os.fspath(path))
        if d:
            os.makedirs(d, exist_ok=True)
        matplotlib.image.imsave(path, rgb, format="png")
    return rgb
