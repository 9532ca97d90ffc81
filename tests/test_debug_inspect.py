"""Feature maps and filter images, against plain PyTorch on models with known answers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pydl.debug import feature_maps, first_conv, plot_filters

from helpers import small_cnn


def test_feature_maps_are_the_layer_output_before_inplace_ops():
    model = small_cnn()
    model.train()
    x = torch.randn(2, 3, 6, 6)
    fm = feature_maps(model, model[0], x)
    with torch.no_grad():
        ref = F.conv2d(x, model[0].weight, model[0].bias, padding=1)
    torch.testing.assert_close(fm, ref)          # negative values kept: the in-place ReLU ran on another copy
    assert (fm < 0).any() and not fm.requires_grad
    assert model.training and all(m.training for m in model)  # mode restored
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="submodule"):
        feature_maps(model, nn.ReLU(), x)


def test_filter_images_show_each_filter_scaled(tmp_path):
    conv = nn.Conv2d(3, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(24.0).reshape(2, 3, 2, 2))
    model = nn.Sequential(nn.Identity(), conv)
    assert first_conv(model) is conv
    fig = plot_filters(model, path=tmp_path / "f.png")
    imgs = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(imgs) == 2 and imgs[0].shape == (2, 2, 3)
    w = conv.weight.detach()[1].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(np.asarray(imgs[1]), (w - w.min()) / (w.max() - w.min()))
    with pytest.raises(ValueError, match="no conv"):
        first_conv(nn.Linear(2, 2))
