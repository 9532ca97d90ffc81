"""CAM, Grad-CAM, Grad-CAM++ and LayerCAM: hand-checkable numbers on a tiny GAP + linear model, a direct
autograd computation on a small conv net (with upsampling and an in-place ReLU), no side effects on the
model, targets, overlay PNG."""
import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pydl.debug import CAM_METHODS, cam, class_activation_map, grad_cam, grad_cam_pp, layer_cam, overlay


def tiny_model():
    """features = identity, so the layer's activations A are the input; GAP; linear head with known weights.
    For class c: y = sum_k W[c,k] mean(A_k) + b, hence dy/dA_kij = W[c,k] / 4 on a 2x2 map."""
    feat = nn.Identity()
    fc = nn.Linear(2, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[2.0, -4.0], [1.0, 1.0], [-1.0, 0.5]]))
        fc.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))  # class 2 is the top class
    return nn.Sequential(feat, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc), feat


A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]],
                   [[0.0, 1.0], [0.0, 2.0]]]])          # (1, 2, 2, 2): channel 0, channel 1


def test_hand_checked_numbers_class0():
    model, feat = tiny_model()
    # CAM: 2*A0 - 4*A1 = [[2, 0], [6, 0]] -> min-max -> [[1/3, 0], [1, 0]]
    torch.testing.assert_close(class_activation_map(model, A, feat, target=0)[0],
                               torch.tensor([[1 / 3, 0.0], [1.0, 0.0]]))
    # Grad-CAM: alpha = W[0]/4 = [0.5, -1]; relu(0.5*A0 - A1) = [[0.5, 0], [1.5, 0]] -> [[1/3, 0], [1, 0]]
    torch.testing.assert_close(grad_cam(model, A, feat, target=0)[0], torch.tensor([[1 / 3, 0.0], [1.0, 0.0]]))
    # LayerCAM: relu(g) = [0.5, 0] per channel -> 0.5*A0 = [[.5, 1], [1.5, 2]] -> [[0, 1/3], [2/3, 1]]
    torch.testing.assert_close(layer_cam(model, A, feat, target=0)[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    # Grad-CAM++: channel 0: g = .5, sum A0 = 10: a = .25 / (2*.25 + 10*.125) = 1/7, weight = 4 * 1/7 * .5 = 2/7;
    # channel 1: g = -1, relu(g) = 0 -> weight 0. Map = 2/7 * A0 -> [[0, 1/3], [2/3, 1]]
    torch.testing.assert_close(grad_cam_pp(model, A, feat, target=0)[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))


def test_hand_checked_top_class_and_batch_targets():
    model, feat = tiny_model()
    x = torch.cat([A, A.flip(-1)])               # second sample mirrored
    # default target = top class = 2 for both (bias 10): W[2] = [-1, .5], alpha = [-.25, .125]
    # sample 0: relu(-.25*A0 + .125*A1) = relu([[-.25, -.375], [-.75, -.75]]) = 0 -> all zeros (constant map)
    m, logits, tgt = cam(model, x, feat, "gradcam", return_logits=True)
    assert tgt.tolist() == [2, 2]
    assert torch.equal(m, torch.zeros(2, 2, 2))
    # per-sample targets: sample 0 class 0, sample 1 class 1 (W[1] = [1, 1]: map = A0 + A1, mirrored)
    m = grad_cam(model, x, feat, target=[0, 1])
    torch.testing.assert_close(m[0], torch.tensor([[1 / 3, 0.0], [1.0, 0.0]]))
    s = (A[0, 0] + A[0, 1]).flip(-1)             # [[3, 1], [6, 3]] -> min 1, max 6
    torch.testing.assert_close(m[1], (s - 1) / 5)


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def direct(model, x, layer, method, target):
    """The same maps straight from autograd, no pydl: in eval mode, on a model without in-place ops."""
    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("A", o))
    model.eval()
    y = model(x)
    h.remove()
    a = acts["A"]
    g = torch.autograd.grad(y[torch.arange(len(x)), target].sum(), a)[0]
    a = a.detach()
    if method == "cam":
        m = torch.einsum("bk,bkhw->bhw", model[-1].weight.detach()[target], a)
    elif method == "gradcam":
        m = torch.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1))
    elif method == "layercam":
        m = torch.relu((torch.relu(g) * a).sum(1))
    else:
        num = g ** 2
        den = 2 * g ** 2 + a.sum((2, 3), keepdim=True) * g ** 3
        aij = torch.where(g != 0, num / torch.where(den != 0, den, 1), 0)
        m = torch.relu(((aij * torch.relu(g)).sum((2, 3))[:, :, None, None] * a).sum(1))
    m = F.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = m.amin((1, 2), keepdim=True)
    hi = m.amax((1, 2), keepdim=True)
    return (m - lo) / (hi - lo)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_matches_direct_computation_with_upsampling(method):
    model = conv_net()
    x = torch.randn(3, 3, 9, 9)
    target = torch.tensor([0, 3, 1])
    layer = model[3]  # a conv followed by an in-place ReLU: pydl's copy keeps A and its gradient intact
    got = cam(model, x, layer, method, target=target)
    ref_model = conv_net()  # same weights (same seed), with out-of-place ReLUs for the direct computation
    ref_model[2], ref_model[4] = nn.ReLU(), nn.ReLU()
    ref = direct(ref_model, x, ref_model[3], method, target)
    assert got.shape == (3, 9, 9)
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_no_side_effects(method):
    model = conv_net()
    model.train()
    model[1].eval()  # a mixed state must come back exactly as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p0 = next(model.parameters())
    p0.grad = torch.full_like(p0, 7.0)  # an existing grad is left alone
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # the caller's grad mode doesn't matter
        m1 = cam(model, x, model[3], method)
    m2 = cam(model, x, model[3], method)
    torch.testing.assert_close(m1, m2)  # eval mode: dropout off, BN running stats -> deterministic
    assert model.training and not model[1].training and all(m.training for m in model if m is not model[1])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running statistics not updated
    assert torch.equal(p0.grad, torch.full_like(p0, 7.0))
    assert all(p.grad is None for p in list(model.parameters())[1:])
    assert not any(m._forward_hooks for m in model.modules())


def test_frozen_model_still_works():
    model = conv_net()
    for p in model.parameters():
        p.requires_grad_(False)
    m = grad_cam(model, torch.randn(1, 3, 8, 8), model[3])
    assert m.shape == (1, 8, 8) and float(m.max()) == 1.0


def test_bad_arguments():
    model = conv_net()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="method"):
        cam(model, x, model[0], "saliency")
    with pytest.raises(ValueError, match="submodule"):
        cam(model, x, nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="target"):
        cam(model, x, model[0], target=[1, 2, 3])
    with pytest.raises(ValueError, match="target"):
        cam(model, x, model[0], target=9)
    with pytest.raises(ValueError, match="nn.Linear"):
        cam(model, x, model[0], "cam")  # 6 channels, the head takes 8
    assert not any(m._forward_hooks for m in model.modules())


def test_overlay_png(tmp_path):
    model = conv_net()
    x = torch.randn(1, 3, 16, 16)
    m = grad_cam(model, x, model[3])
    path = tmp_path / "cam.png"
    rgb = overlay(x[0], m[0], path=path, alpha=0.6)
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (16, 16) and img[..., :3].std() > 0
    np.testing.assert_allclose(img[..., :3] * 255, rgb, atol=1)
    # alpha = 0: the input alone; a smaller heat map is resized
    plain = overlay(x[0], m[0, ::2, ::2], alpha=0.0)
    assert plain.shape == (16, 16, 3)
    x01 = (x[0] - x[0].min()) / (x[0].max() - x[0].min())
    np.testing.assert_allclose(plain, (x01.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), atol=1)
