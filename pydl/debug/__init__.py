"""Training debuggers built on PyTorch hooks (the fastai book's, on pydl's one-pass ``act_stats``).

=====================================  ===============================================================
``Hook``, ``Hooks``                    forward / backward hooks as context managers (``hooks``)
``ActivationStats``, ``PRESETS``       per-layer per-batch mean/std/near-zero/min/max/histogram (``stats``)
``plot_colorful_dimension`` & co.      the colorful dimension, layer stats, dead chart (``plots``)
``cam``, ``overlay``                   CAM, Grad-CAM, Grad-CAM++, LayerCAM (``cam``)
``loss_landscape_1d`` / ``_2d``        filter-normalised random-direction scans, resumable (``landscape``)
``plot_feature_maps``, ``plot_filters``  looking inside conv layers (``inspect``)
``plot_grad_flow``, ``dead_units``     gradient flow and dead/saturated units (``gradflow``)
=====================================  ===============================================================

Importing this package imports torch and numpy only; matplotlib is imported inside the plot functions.
"""
from .hooks import Hook, Hooks, hook_output, hook_outputs, leaf_modules
from .progress import progress
from .stats import PRESETS, ActivationStats, StatsData, StatsPreset
from .plots import plot_colorful_dimension, plot_dead_chart, plot_layer_stats

__all__ = ["Hook", "Hooks", "hook_output", "hook_outputs", "leaf_modules", "progress",
           "PRESETS", "ActivationStats", "StatsData", "StatsPreset",
           "plot_colorful_dimension", "plot_dead_chart", "plot_layer_stats"]
