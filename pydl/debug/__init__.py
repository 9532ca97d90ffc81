"""Training debuggers built on PyTorch hooks (the fastai book's, on pydl's one-pass ``act_stats``).

=========================================  ===========================================================
``Hook``, ``Hooks``                        forward / backward hooks as context managers (``hooks``)
``ActivationStats``, ``PRESETS``           per-layer per-batch mean/std/near-zero/min/max/histogram
``plot_colorful_dimension`` & co.          the colorful dimension, layer stats, dead chart (``plots``)
``cam``, ``grad_cam``, ..., ``overlay``    CAM, Grad-CAM, Grad-CAM++, LayerCAM (``cam``)
``loss_landscape_1d`` / ``_2d``            filter-normalised random-direction scans, resumable
``plot_feature_maps``, ``plot_filters``    looking inside conv layers (``inspect``)
``plot_grad_flow``, ``dead_units``         gradient flow and dead/saturated units (``gradflow``)
``occlusion``, ``plot_occlusion``          occlusion sensitivity, Zeiler & Fergus (``occlusion``)
``top_patches``, ``receptive_field``       top-activating patches per channel, receptive fields (``patches``)
=========================================  ===========================================================

Importing this package imports torch and numpy only; matplotlib is imported inside the plot functions.
Every plot function takes ``path=`` (PNG written there) and returns the matplotlib Figure.
"""
from .hooks import Hook, Hooks, first_tensor, flat_tensors, hook_output, hook_outputs, leaf_modules
from .progress import progress
from .stats import PRESETS, ActivationStats, StatsData, StatsPreset
from .plots import plot_colorful_dimension, plot_dead_chart, plot_layer_stats
from .cam import METHODS as CAM_METHODS, cam, class_activation_map, grad_cam, grad_cam_pp, layer_cam, overlay
from .landscape import (Directions, LandscapeResult, evaluate_points, interpolate_models, interpolation_direction,
                        loss_landscape_1d, loss_landscape_2d, make_directions, plot_landscape_1d, plot_landscape_2d,
                        scan_state)
from .inspect import feature_maps, first_conv, plot_feature_maps, plot_filters
from .gradflow import DeadUnitReport, dead_units, grad_stats, plot_dead_units, plot_grad_flow
from .occlusion import occlusion, occlusion_windows, plot_occlusion
from .patches import (ReceptiveField, TopPatches, TopPatchesResult, fold_receptive_field, layer_geometry,
                      plot_top_patches, receptive_field, top_patches)

__all__ = [
    "Hook", "Hooks", "hook_output", "hook_outputs", "leaf_modules", "first_tensor", "flat_tensors", "progress",
    "PRESETS", "ActivationStats", "StatsData", "StatsPreset",
    "plot_colorful_dimension", "plot_dead_chart", "plot_layer_stats",
    "CAM_METHODS", "cam", "class_activation_map", "grad_cam", "grad_cam_pp", "layer_cam", "overlay",
    "Directions", "LandscapeResult", "evaluate_points", "interpolate_models", "interpolation_direction",
    "loss_landscape_1d", "loss_landscape_2d", "make_directions", "plot_landscape_1d", "plot_landscape_2d",
    "scan_state",
    "feature_maps", "first_conv", "plot_feature_maps", "plot_filters",
    "DeadUnitReport", "dead_units", "grad_stats", "plot_dead_units", "plot_grad_flow",
    "occlusion", "occlusion_windows", "plot_occlusion",
    "ReceptiveField", "TopPatches", "TopPatchesResult", "fold_receptive_field", "layer_geometry", "plot_top_patches",
    "receptive_field", "top_patches",
]
