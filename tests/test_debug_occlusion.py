"""Occlusion sensitivity: against a plain per-window loop, against captum's Occlusion (optional), the window
placement, no side effects on the model, bad arguments, the overlay figure."""
import matplotlib.image
import pytest
import torch
from torch import nn

from pydl.debug import occlusion, occlusion_windows, plot_occlusion


def conv_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():  # non-trivial running statistics, so eval mode really differs from train mode
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.double()


def loop_occlusion(model, x, target, ph, pw, sh, sw, fill):
    """The definition, one window at a time, in float64: windows at 0, s, 2s, ... plus one flush with the far
    edge; each pixel gets the mean score drop over the windows that cover it."""
    B, C, H, W = x.shape
    model.eval()
    out = torch.zeros(B, H, W, dtype=torch.float64)
    cnt = torch.zeros(H, W, dtype=torch.float64)
    ys = sorted(set(list(range(0, H - ph + 1, sh)) + [H - ph]))
    xs = sorted(set(list(range(0, W - pw + 1, sw)) + [W - pw]))
    with torch.no_grad():
        base = model(x)[torch.arange(B), target]
        for y0 in ys:
            for x0 in xs:
                xo = x.clone()
                xo[:, :, y0:y0 + ph, x0:x0 + pw] = fill
                drop = base - model(xo)[torch.arange(B), target]
                out[:, y0:y0 + ph, x0:x0 + pw] += drop[:, None, None]
                cnt[y0:y0 + ph, x0:x0 + pw] += 1
    return out / cnt


@pytest.mark.parametrize("patch,stride,fill,bs", [(3, 2, 0.0, 7), ((2, 4), (1, 3), -1.5, 1000), (9, 1, 0.25, 4)])
def test_matches_plain_loop(patch, stride, fill, bs):
    model = conv_net()
    x = torch.randn(3, 2, 9, 10, dtype=torch.float64)
    target = torch.tensor([0, 4, 2])
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    got = occlusion(model, x, target=target, patch=patch, stride=stride, fill=fill, batch_size=bs)
    ref = loop_occlusion(model, x, target, ph, pw, sh, sw, fill)
    assert got.shape == (3, 9, 10)
    # the same float64 forward passes, summed in a different order: rounding-level differences only
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)


def test_default_target_and_mean_fill():
    model = conv_net()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    maps, logits, tgt = occlusion(model, x, patch=4, stride=4, fill="mean", return_logits=True)
    assert torch.equal(tgt, logits.argmax(1))
    # stride = patch: the windows tile the image, so each 4x4 block is one window's drop, checked directly
    xo = x.clone()
    xo[:, :, 4:, 0:4] = x.mean((2, 3), keepdim=True).expand(-1, -1, 4, 4)
    model.eval()
    with torch.no_grad():
        drop = logits[torch.arange(2), tgt] - model(xo)[torch.arange(2), tgt]
    torch.testing.assert_close(maps[:, 4:, 0:4], drop[:, None, None].expand(-1, 4, 4), atol=1e-12, rtol=0)


def test_windows_cover_everything():
    m = occlusion_windows(7, 5, (3, 2), (3, 2))
    # rows: 0, 3 then the flush window at 4; cols: 0, 2 then 3
    assert m.shape == (3 * 3, 7, 5)
    assert (m.sum(0) >= 1).all()
    assert torch.equal(m[0].nonzero().amin(0), torch.tensor([0, 0]))
    assert torch.equal(m[-1].nonzero().amin(0), torch.tensor([4, 3]))
    assert torch.equal(m.sum((1, 2)), torch.full((9,), 6.0))


def test_matches_captum():
    captum_attr = pytest.importorskip("captum.attr", reason="captum (and its dependency tqdm) is an optional test "
                                                            "dependency (pip install captum): an independent "
                                                            "Occlusion implementation")
    model = conv_net()
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    target = torch.tensor([1, 3])
    got = occlusion(model, x, target=target, patch=3, stride=2, fill=0.5)   # (9 - 3) % 2 == 0: captum covers all
    model.eval()
    ref = captum_attr.Occlusion(model).attribute(x, sliding_window_shapes=(2, 3, 3), strides=(2, 2, 2),
                                                 baselines=0.5, target=target)
    model.train()
    assert ref.shape == (2, 2, 9, 9)
    torch.testing.assert_close(ref[:, 0], ref[:, 1])        # whole-channel windows: the same map per channel
    # captum accumulates its attribution in float32 (relative rounding ~6e-8 on drops and scores of order 1)
    torch.testing.assert_close(got.float(), ref[:, 0], atol=1e-6, rtol=1e-5)


def test_no_side_effects():
    model = conv_net()
    model.train()
    model[1].eval()  # a mixed state must come back exactly as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p0 = next(model.parameters())
    p0.grad = torch.full_like(p0, 7.0)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    m1 = occlusion(model, x, patch=3, stride=3)
    with torch.enable_grad():
        m2 = occlusion(model, x, patch=3, stride=3)
    assert torch.equal(m1, m2) and not m2.requires_grad   # eval mode: dropout off -> deterministic; no graph
    assert model.training and not model[1].training and all(m.training for m in model if m is not model[1])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running statistics not updated
    assert torch.equal(p0.grad, torch.full_like(p0, 7.0))
    assert all(p.grad is None for p in list(model.parameters())[1:])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_arguments():
    model = conv_net()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="x must be"):
        occlusion(model, x[0])
    with pytest.raises(ValueError, match="patch"):
        occlusion(model, x, patch=9)
    with pytest.raises(ValueError, match="patch"):
        occlusion(model, x, patch=0)
    with pytest.raises(TypeError, match="patch"):
        occlusion(model, x, patch=2.5)
    with pytest.raises(ValueError, match="stride"):
        occlusion(model, x, stride=(1, 0))
    with pytest.raises(ValueError, match="fill"):
        occlusion(model, x, fill="median")
    with pytest.raises(TypeError, match="fill"):
        occlusion(model, x, fill=None)
    with pytest.raises(ValueError, match="batch_size"):
        occlusion(model, x, batch_size=0)
    with pytest.raises(ValueError, match="occlusion: target"):
        occlusion(model, x, target=5)
    with pytest.raises(ValueError, match=r"\(B, classes\)"):
        occlusion(nn.Sequential(nn.Identity()), x)
    assert model.training


def test_plot_png(tmp_path):
    model = conv_net()
    x = torch.randn(3, 2, 12, 12, dtype=torch.float64)
    path = tmp_path / "occ" / "occlusion.png"
    fig = plot_occlusion(model, x, path=path, patch=4, stride=2, titles=["a", "b", "c"], ncols=2)
    assert fig.__class__.__name__ == "Figure" and len([a for a in fig.axes if a.images]) == 3
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img[..., :3].std() > 0
    assert model.training
