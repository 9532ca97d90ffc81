"""Transforms that turn other data into images a CNN can read (the fastai book's point that image models apply
to anything you can draw): time series as Gramian angular fields, after Wang & Oates (2015).

=================================================  ======================================================
``paa``                                            piecewise aggregate approximation: a series shortened
                                                   to ``size`` segment means (``paa``)
``gaf``, ``gasf``, ``gadf``, ``GramianAngularField``  summation / difference fields, differentiable (``gaf``)
``markov_transition_field``                        bin-to-bin transition probabilities as an image (``mtf``)
=================================================  ======================================================

Importing this package imports torch and numpy only.
"""
from .paa import paa, paa_matrix, segments
from .gaf import METHODS as GAF_METHODS, GramianAngularField, gadf, gaf, gasf, rescale
from .mtf import STRATEGIES as MTF_STRATEGIES, bin_series, markov_transition_field

__all__ = ["paa", "paa_matrix", "segments", "GAF_METHODS", "GramianAngularField", "gadf", "gaf", "gasf", "rescale",
           "MTF_STRATEGIES", "bin_series", "markov_transition_field"]
