"""The data a debugger runs a model on, walked the one way they all accept.

``data`` is either one batch -- a tensor of inputs, or a tuple whose first item is a tensor (``(x, y)``,
``(x, y, w)``...) -- or anything iterable that yields batches: a DataLoader, a list of ``(x, y)`` tuples, a
generator. The loss landscape and the dead-unit report both take it with a ``batches`` count (the first n
batches; None: all of them), and read it through :func:`take_batches`.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

__all__ = ["is_one_batch", "take_batches", "batch_inputs"]


def is_one_batch(data) -> bool:
    """A tensor, or a tuple led by a tensor: one batch, not a sequence of batches. (A list of tensors is the
    other way round: a sequence of input batches, as a DataLoader of unlabelled data would give.)"""
    return isinstance(data, torch.Tensor) or (isinstance(data, tuple) and len(data) > 0 and
                                              isinstance(data[0], torch.Tensor))


def take_batches(data, batches: int | None = None) -> Iterator:
    """The batches of ``data``, as they come: ``data`` itself when it is one batch, else the first ``batches``
    items of iterating it (all of them for None). No batch beyond those is read from the loader."""
    if is_one_batch(data):
        return iter((data,))
    return itertools.islice(data, batches)


def batch_inputs(batch):
    """The model's input in a batch: the batch itself when it is a tensor, else its first item."""
    return batch if isinstance(batch, torch.Tensor) else batch[0]
