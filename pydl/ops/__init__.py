"""pydl's ops: one module per op, each a ``torch.ops.pydl.*`` custom op with a backend per kernel language."""
from .act_stats import ActStats, act_stats, act_stats_reference

__all__ = ["act_stats", "ActStats", "act_stats_reference"]
