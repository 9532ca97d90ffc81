"""pydl's ops: one module per op, each a ``torch.ops.pydl.*`` custom op with a backend per kernel language.

Importing a module registers its ops. The functional API is re-exported here by name (tests/test_imports.py
checks that this list and the modules' ``__all__`` agree). A function shares its module's name for
``batch_norm`` and ``conv2d``: ``pydl.ops.conv2d`` is the function; ``import pydl.ops.conv2d`` (or
``sys.modules``) reaches the module.
"""
from .act_stats import ActStats, act_stats, act_stats_reference
from .batch_norm import (batch_norm, batch_norm_apply, batch_norm_backward_elemt, batch_norm_backward_reduce,
                         batch_norm_reference, batch_norm_stats)
from .conv2d import (conv2d, conv2d_algo, conv2d_backward_reference, conv2d_output_size, conv2d_reference,
                     get_conv2d_algo, set_conv2d_algo)
from .rnn import gru, gru_cell, gru_reference, lstm, lstm_cell, lstm_reference

__all__ = [
    "ActStats", "act_stats", "act_stats_reference",
    "batch_norm", "batch_norm_apply", "batch_norm_backward_elemt", "batch_norm_backward_reduce",
    "batch_norm_reference", "batch_norm_stats",
    "conv2d", "conv2d_algo", "conv2d_backward_reference", "conv2d_output_size", "conv2d_reference",
    "get_conv2d_algo", "set_conv2d_algo",
    "gru", "gru_cell", "gru_reference", "lstm", "lstm_cell", "lstm_reference",
]
