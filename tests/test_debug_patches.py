"""Top-activating patches: receptive fields against the support of autograd's gradient, the running top-k
against a brute-force pass over all activations, no host sync in the hooks, no side effects, refusals."""
import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn

from pydl.debug import (ReceptiveField, TopPatches, fold_receptive_field, layer_geometry, plot_top_patches,
                        receptive_field, top_patches)


def geometry_chain():
    """Every geometry the fold knows: stride, padding, dilation, 'same' and 'valid' padding strings, pooling,
    rectangular kernels; positive weights and no nonlinearity, so every pixel a unit reads gets a gradient
    (a sum of positive terms: float32 cannot cancel it to zero; a pixel it does not read gets an exact zero)."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.BatchNorm2d(2),
        nn.Conv2d(2, 2, 3, dilation=2, padding=2),
        nn.AvgPool2d(2, stride=1),
        nn.Conv2d(2, 2, (2, 3), stride=(1, 2), padding="valid"),
        nn.Conv2d(2, 2, 3, padding="same", dilation=(1, 2)))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Conv2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.zero_()
    return net.eval()


def test_receptive_field_matches_gradient_support():
    net = geometry_chain()
    H, W = 27, 41  # the last layer's field is 18 x 32: a few units see only the inside of the image
    x = torch.rand(1, 1, H, W) + 0.5
    rf = receptive_field(net, net[5], x)
    assert rf.assumed_pointwise == ()                       # batch norm is a known pointwise module
    h, w = net(x).shape[-2:]
    # the gradient of every unit of channel 0 in one backward: sample u of a batch of copies of x gets the
    # one-hot cotangent of unit u (samples are independent in eval mode)
    xs = x.expand(h * w, -1, -1, -1).clone().requires_grad_(True)
    onehot = torch.eye(h * w, dtype=x.dtype).reshape(h * w, 1, h, w)
    onehot = torch.cat([onehot, torch.zeros_like(onehot)], 1)          # channel 1: no cotangent
    (grads,) = torch.autograd.grad(net(xs), xs, onehot)                # (h*w, 1, H, W)
    support = grads[:, 0] != 0                                          # (h*w, H, W)
    i, j = torch.arange(h * w) // w, torch.arange(h * w) % w
    y0, x0 = i * rf.jump[0] + rf.offset[0], j * rf.jump[1] + rf.offset[1]
    y1, x1 = y0 + rf.size[0], x0 + rf.size[1]
    rows, cols = torch.arange(H), torch.arange(W)
    in_box = (((rows >= y0[:, None]) & (rows < y1[:, None]))[:, :, None]
              & ((cols >= x0[:, None]) & (cols < x1[:, None]))[:, None, :])
    # every pixel with a gradient lies inside the field (padding rows/cols beyond the image never appear) ...
    assert not (support & ~in_box).any()
    # ... and a field inside the image is exactly the gradient's bounding box (its corner taps are always
    # read; only dilation leaves holes inside)
    inside = (y0 >= 0) & (x0 >= 0) & (y1 <= H) & (x1 <= W)
    sy, sx = support.any(2), support.any(1)                             # (h*w, H), (h*w, W): rows/cols hit
    first = lambda m: m.float().argmax(1)                               # noqa: E731
    last = lambda m: m.shape[1] - m.flip(1).float().argmax(1)           # noqa: E731
    got = torch.stack([first(sy), last(sy), first(sx), last(sx)], 1)[inside]
    torch.testing.assert_close(got, torch.stack([y0, y1, x0, x1], 1)[inside], rtol=0, atol=0)
    assert int(inside.sum()) >= 4


def test_receptive_field_hand_checked():
    # the demo's CNN: 3x3 convs, strides 1, 2, 2, padding 1 -> R = 3, 5, 9; J = 1, 2, 4; O = -1, -2, -4
    net = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(inplace=True),
                        nn.Conv2d(4, 4, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    rf = receptive_field(net, net[4], torch.randn(2, 1, 16, 16))
    assert (rf.size, rf.jump, rf.offset) == ((9, 9), (4, 4), (-4, -4))
    assert fold_receptive_field(net[:5]) == ReceptiveField((9, 9), (4, 4), (-4, -4))
    assert rf.box(0, 0) == (-4, 5, -4, 5) and rf.box(3, 1, 16, 16) == (8, 16, 0, 9)
    # max pooling: kernel, stride defaulting to the kernel, padding, dilation
    assert layer_geometry(nn.MaxPool2d(3, padding=1, dilation=2)) == ((3, 3), (3, 3), (1, 1), (2, 2))
    assert layer_geometry(nn.ReLU()) is None


def test_receptive_field_refusals():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()

        def forward(self, x):
            return self.b(self.a(x) + x)     # the skip: relu's input is not conv's output

    class Scale(nn.Module):                  # unknown but shape-keeping: assumed pointwise, and said so
        def forward(self, x):
            return 2 * x

    x = torch.randn(1, 2, 8, 8)
    res = nn.Sequential(Residual(), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="not a chain"):
        receptive_field(res, res[1], x)
    up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="geometry is unknown"):
        receptive_field(up, up[1], x)
    sc = nn.Sequential(Scale(), nn.Conv2d(2, 2, 3))
    assert receptive_field(sc, sc[1], x).assumed_pointwise == ("Scale",)
    with pytest.raises(ValueError, match="submodule"):
        receptive_field(sc, nn.ReLU(), x)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in list(res.modules()) + list(up.modules()))


def small_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Dropout(0.3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
    return net


def brute_force(net, layer, x, channels, k, rf):
    """Every activation at once, each sample's max per channel, sorted over samples; the fields cut out
    pixel by pixel."""
    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach().clone()))
    net.eval()
    with torch.no_grad():
        net(x)
    h.remove()
    a = acts["a"][:, channels]                                 # (N, n, h, w)
    w = a.shape[-1]
    vmax, arg = a.flatten(2).max(2)                            # (N, n)
    order = vmax.t().argsort(1, descending=True)[:, :k]        # (n, k) samples
    N, C, H, W = x.shape
    (Ry, Rx), (Jy, Jx), (Oy, Ox) = rf.size, rf.jump, rf.offset
    patches = np.full((len(channels), k, C, Ry, Rx), np.nan)
    for r in range(len(channels)):
        for q in range(k):
            s = int(order[r, q])
            p = int(arg[s, r])
            i, j = p // w, p % w
            for dy in range(Ry):
                for dx in range(Rx):
                    yy, xx = i * Jy + Oy + dy, j * Jx + Ox + dx
                    if 0 <= yy < H and 0 <= xx < W:
                        patches[r, q, :, dy, dx] = x[s, :, yy, xx].numpy()
    vals = vmax.t().gather(1, order)
    pos = arg.t().gather(1, order)
    return vals.numpy(), order.numpy(), np.stack([(pos // w).numpy(), (pos % w).numpy()], -1), patches


@pytest.mark.parametrize("bs", [5, 23])
def test_top_k_matches_brute_force(bs):
    net = small_cnn()
    x = torch.randn(23, 3, 10, 9)
    channels = [4, 0, 5]
    loader = [(x[i:i + bs], torch.zeros(len(x[i:i + bs]))) for i in range(0, len(x), bs)]  # (x, y) pairs
    res = top_patches(net, net[3], loader, channels=channels, k=4)
    assert res.rf == ReceptiveField((5, 5), (2, 2), (-2, -2))
    vals, samples, pos, patches = brute_force(net, net[3], x, channels, 4, res.rf)
    assert res.channels == channels
    np.testing.assert_array_equal(res.samples, samples)
    np.testing.assert_allclose(res.values, vals, rtol=1e-6, atol=1e-6)   # the same float32 conv, batched apart
    np.testing.assert_array_equal(res.positions, pos)
    np.testing.assert_array_equal(res.patches, patches)                  # copied pixels, NaN in the same places
    assert np.isnan(res.patches).any()                                   # some field does hang over the border
    for r in range(3):
        for q in range(4):
            y0, y1, x0, x1 = res.boxes[r, q]
            assert np.isfinite(res.patches[r, q, 0]).sum() == (y1 - y0) * (x1 - x0)


def test_padding_wider_than_the_kernel():
    """padding 4 on a 3x3 kernel: unit (0, 0) sees rows and columns -4..-2, all padding, so it is the bias alone.
    With positive weights and a negative image it is the strongest unit, and its crop must be all NaN -- not
    pixels wrapped around from the image's far side."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=4))
    with torch.no_grad():
        net[0].weight.uniform_(0.1, 1.0)
        net[0].bias.fill_(0.5)
    x = -torch.rand(1, 1, 6, 7) - 1
    res = top_patches(net, net[0], x, k=1)
    assert res.rf == ReceptiveField((3, 3), (1, 1), (-4, -4))
    assert res.positions[:, 0].tolist() == [[0, 0], [0, 0]] and np.isnan(res.patches).all()
    np.testing.assert_array_equal(res.boxes[0, 0], [0, 0, 0, 0])       # clipped to nothing
    np.testing.assert_array_equal(res.patches, brute_force(net, net[0], x, [0, 1], 1, res.rf)[3])


def test_fewer_samples_than_k_and_all_channels():
    net = small_cnn()
    res = top_patches(net, net[0], torch.randn(3, 3, 6, 6), k=5)
    assert res.channels == [0, 1, 2, 3] and res.patches.shape == (4, 5, 3, 3, 3)
    assert (res.samples[:, :3] >= 0).all() and (res.samples[:, 3:] == -1).all()
    assert sorted(res.samples[0, :3].tolist()) == [0, 1, 2]
    assert np.isneginf(res.values[:, 3:]).all() and (np.diff(res.values[:, :3], axis=1) <= 0).all()


def test_no_host_sync_per_batch(monkeypatch):
    """After the first batch (which traces the receptive field), updating the top-k must not read any value
    back to the host: every Python-level way to do that raises inside the loop."""
    net = small_cnn().eval()
    x = torch.randn(12, 3, 8, 8)
    with torch.no_grad(), TopPatches(net, net[3], channels=[1, 2], k=3) as tp:
        net(x[:4])

        def refuse(*a, **k):
            raise AssertionError("host sync inside the top-k hooks")

        with monkeypatch.context() as mp:
            for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
                mp.setattr(torch.Tensor, name, refuse)
            net(x[4:8])
            net(x[8:])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())   # removed on exit
    res = tp.result()
    ref = top_patches(net, net[3], x, channels=[1, 2], k=3)
    np.testing.assert_array_equal(res.samples, ref.samples)
    np.testing.assert_allclose(res.values, ref.values, rtol=1e-6, atol=1e-6)


def test_no_side_effects():
    net = small_cnn()
    net.train()
    net[1].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    p0 = next(net.parameters())
    p0.grad = torch.full_like(p0, 3.0)
    top_patches(net, net[3], [torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)], k=2, max_batches=1)
    assert net.training and not net[1].training and all(m.training for m in net if m is not net[1])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(p0.grad, torch.full_like(p0, 3.0))
    assert all(p.grad is None for p in list(net.parameters())[1:])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_bad_arguments():
    net = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="k must"):
        top_patches(net, net[3], x, k=0)
    with pytest.raises(ValueError, match="channels must be a non-empty"):
        top_patches(net, net[3], x, channels=[])
    with pytest.raises(ValueError, match="channels must be <"):
        top_patches(net, net[3], x, channels=[6])
    with pytest.raises(ValueError, match="submodule"):
        top_patches(net, nn.Conv2d(3, 3, 1), x)
    with pytest.raises(ValueError, match="geometry is unknown"):
        top_patches(net, net[7], x)          # past the global pool: no receptive field of this form
    with pytest.raises(ValueError, match="image size"):
        top_patches(net, net[3], [x, torch.randn(2, 3, 9, 8)])
    with pytest.raises(ValueError, match="no batch"):
        TopPatches(net, net[3]).result()
    assert net.training and not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


@pytest.mark.parametrize("c", [1, 3])
def test_plot_png(tmp_path, c):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(c, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1))
    res = top_patches(net, net[2], torch.randn(6, c, 9, 9), channels=[0, 3, 4], k=8)  # k > samples: blanks
    path = tmp_path / "p" / "top.png"
    fig = plot_top_patches(res, path=path)
    (ax,) = fig.axes
    (im,) = ax.images
    assert im.get_array().shape[:2] == (3 * 8 - 1, 8 * 8 - 1)    # 3 x 8 tiles of 7 x 7 (R = 3 + 2*2), 1-pixel gaps
    assert len(ax.texts) == 3 * 6                                  # one value per filled rank
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img[..., :3].std() > 0
