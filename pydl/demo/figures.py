"""The demos' figures: training curves, and every debugger's view of the trained CNN (activation statistics,
gradient flow, Grad-CAM, occlusion, top-activating patches, loss landscapes, filters), each written as a PNG
into the report folder, with the caption the report shows above it."""
from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F

from .. import debug
from ..debug.plots import new_figure, save_figure
from .report import img


def plot_curves(hist: dict, path: str) -> str:
    """Loss, accuracy (per batch and per epoch) and the learning rate of :func:`pydl.demo.train.train`."""
    fig = new_figure((13, 3.4))
    axs = fig.subplots(1, 3)
    steps = np.arange(1, len(hist["step_loss"]) + 1)
    spe = len(steps) / max(1, len(hist["epoch_valid_loss"]))
    ep_x = spe * np.arange(1, len(hist["epoch_valid_loss"]) + 1)
    axs[0].plot(steps, hist["step_loss"], lw=0.8, label="train (per batch)")
    axs[0].plot(ep_x, hist["epoch_valid_loss"], "o-", label="valid (per epoch)")
    axs[0].set(title="loss", xlabel="step", yscale="log")
    axs[0].legend()
    axs[1].plot(steps, hist["step_acc"], lw=0.8, label="train (per batch)")
    axs[1].plot(ep_x, hist["epoch_valid_acc"], "o-", label="valid (per epoch)")
    axs[1].set(title="accuracy", xlabel="step", ylim=(0, 1.02))
    axs[1].legend()
    axs[2].plot(steps, hist["lr"])
    axs[2].set(title="learning rate (one-cycle)", xlabel="step")
    save_figure(fig, path)
    return path


def plot_loss(losses: list[float], path: str, title: str, ylabel: str) -> str:
    fig = new_figure((7, 3))
    ax = fig.subplots()
    ax.plot(losses)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    save_figure(fig, path)
    return path


def activation_figures(stats, out: str) -> dict[str, str]:
    """The colorful dimension and the layer statistics of an ActivationStats, and its raw data as NPZ."""
    p = functools.partial(os.path.join, out)
    debug.plot_colorful_dimension(stats, path=p("colorful_dimension.png"))
    debug.plot_layer_stats(stats, path=p("layer_stats.png"))
    stats.save_npz(p("activation_stats.npz"))
    return {"colorful": p("colorful_dimension.png"), "layer_stats": p("layer_stats.png")}


def debug_figures(model, stats, xtr, ytr, xva, yva, classes, out, quick, say=lambda *a: None) -> dict[str, str]:
    """Every debugger figure for the report; returns {key: png path}. ``say`` hears of each stage as it
    starts (some take tens of seconds on a CPU: a silent minute looks like a hang)."""
    p = functools.partial(os.path.join, out)
    say("report: activation statistics (colorful dimension, layer stats, dead units)")
    files = activation_figures(stats, out)
    debug.plot_dead_chart(stats, path=p("dead_chart.png"))
    files["dead"] = p("dead_chart.png")
    stats.to_json(p("activation_stats.json"), hist=False)
    say("report: gradient flow")
    # gradient flow of one batch at the final weights
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(xtr[:128]), ytr[:128]).backward()
    debug.plot_grad_flow(model, path=p("grad_flow.png"))
    files["grad_flow"] = p("grad_flow.png")
    model.zero_grad(set_to_none=True)
    say("report: Grad-CAM")
    # Grad-CAM on the last conv layer, for validation images the model gets right and wrong
    convs = [m for m in model.modules() if isinstance(m, tnn.Conv2d)]
    was = model.training
    with torch.no_grad():
        pred = model.eval()(xva).argmax(1)
    model.train(was)
    right = (pred == yva).nonzero().flatten()[:8]
    wrong = (pred != yva).nonzero().flatten()[:8]
    idx = torch.cat([right, wrong])
    if len(idx):
        maps = debug.grad_cam(model, xva[idx], convs[-1])
        titles = [f"{'ok' if pred[i] == yva[i] else 'WRONG'}: {classes[yva[i]]}->{classes[pred[i]]}"
                  for i in idx.tolist()]
        files["gradcam"] = _cam_grid([debug.overlay(xva[i], maps[k]) for k, i in enumerate(idx.tolist())], titles,
                                     p("grad_cam.png"))
        say("report: occlusion maps")
        # the same images, asked the counterfactual way: hide a 4x4 patch (the normalised images' 0 is the
        # data set's mean intensity) and watch the true class's score drop; 49 windows x 16 images, batched
        debug.plot_occlusion(model, xva[idx], path=p("occlusion.png"), target=yva[idx], titles=titles, patch=4,
                             stride=2, fill=0.0)
        files["occlusion"] = p("occlusion.png")
    say("report: top-activating patches (one pass over the training set)")
    # what the last block's channels respond to: their 8 strongest training images each, cut to the receptive
    # field (one forward pass over the training set; the top-k stays on the device until the end)
    acts = [m for m in model.modules() if type(m).__name__ == "GeneralRelu"]
    tops = debug.top_patches(model, acts[-1], [xtr[i:i + 256] for i in range(0, len(xtr), 256)],
                             channels=range(min(12, convs[-1].out_channels)), k=8)
    debug.plot_top_patches(tops, path=p("top_patches.png"))
    files["top_patches"] = p("top_patches.png")
    say("report: loss landscape 1D")
    # loss landscapes around the final weights, on a fixed validation batch (cost: one forward per point)
    batch = (xva[:256], yva[:256])
    l1 = debug.loss_landscape_1d(model, F.cross_entropy, batch, steps=11 if quick else 41, seed=0,
                                 path=p("loss_landscape_1d.npz"), resume=False, show_progress=False)
    debug.plot_landscape_1d(l1, path=p("loss_landscape_1d.png"))
    files["landscape_1d"] = p("loss_landscape_1d.png")
    say("report: loss landscape 2D")
    l2 = debug.loss_landscape_2d(model, F.cross_entropy, batch, steps=7 if quick else 21, seed=0,
                                 path=p("loss_landscape_2d.npz"), resume=False, show_progress=False)
    debug.plot_landscape_2d(l2, path=p("loss_landscape_2d.png"))
    files["landscape_2d"] = p("loss_landscape_2d.png")
    say("report: first-layer filters and feature maps")
    # inside the first conv layer
    debug.plot_filters(convs[0], path=p("first_layer_filters.png"))
    files["filters"] = p("first_layer_filters.png")
    debug.plot_feature_maps(model, convs[0], xva[:1], path=p("feature_maps.png"))
    files["feature_maps"] = p("feature_maps.png")
    return files


def _cam_grid(images: list[np.ndarray], titles: list[str], path: str, ncols: int = 8) -> str:
    n = len(images)
    nrows = math.ceil(n / ncols)
    fig = new_figure((1.7 * ncols, 1.95 * nrows))
    axs = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axs.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k])
            ax.set_title(titles[k], fontsize=7, color="black" if titles[k].startswith("ok") else "red")
    save_figure(fig, path)
    return path


# (key in the figures dict, heading, caption), in the order the report shows them
_SECTIONS = [
    ("colorful", "The colorful dimension", ("Per layer: a histogram of activations per batch (x: batch, y: value, "
     "colour: log(1 + count)). A healthy layer spreads out; a band stuck at the bottom means dead activations.")),
    ("layer_stats", "Layer statistics", ("Mean, standard deviation and % of activations near zero per layer per "
     "batch, computed on the device by pydl.act_stats in one pass.")),
    ("dead", "Dead activations", ""),
    ("gradcam", "Grad-CAM", "Where the last conv layer looked, for digits the model got right and wrong."),
    ("occlusion", "Occlusion sensitivity", ("The same images, with a 4x4 grey patch slid over them (stride 2): hot = "
     "hiding this region lowers the true class's score most (Zeiler & Fergus 2014). No gradients: it asks the "
     "model directly.")),
    ("top_patches", "Top-activating patches", ("Per channel of the last conv block (rows), the training images that "
     "excite it most, cut to the region that channel sees (its receptive field, computed from the layers' "
     "kernels, strides and padding; grey = padding beyond the image).")),
    ("landscape_1d", "Loss landscape (1D)", ("Loss along one filter-normalised random direction (Li et al. 2018) "
     "through the final weights.")),
    ("landscape_2d", "Loss landscape (2D)", ""),
    ("grad_flow", "Gradient flow", "Mean and max |grad| per parameter tensor on one batch."),
    ("filters", "First-layer filters", ""),
    ("feature_maps", "Feature maps of the first layer", ""),
]


def debug_sections(files: dict[str, str]) -> list[tuple[str, str]]:
    """The report sections of the figures in ``files`` (as :func:`debug_figures` returns them)."""
    return [(head, img(files[key], note)) for key, head, note in _SECTIONS if key in files]
