"""pydl's ops: one module per op, each a ``torch.ops.pydl.*`` custom op with a backend per kernel language."""
from .act_stats import ActStats, act_stats, act_stats_reference
from . import batch_norm, conv2d, rnn  # noqa: F401 - each registers its ops

__all__ = ["act_stats", "ActStats", "act_stats_reference"]
for _m in (batch_norm, conv2d, rnn):
    for _name in getattr(_m, "__all__", []):
        globals()[_name] = getattr(_m, _name)
        __all__.append(_name)
