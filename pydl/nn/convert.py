"""``pydl.convert(model)``: swap torch.nn modules for their pydl twins in place (weights kept), and back.

Each pydl module file registers its pair with :func:`register`; a pydl module class provides
``from_torch(module)`` (a classmethod building the twin with the same config, parameters and buffers -- the
same tensors, not copies, so optimizers keep working) and ``to_torch()`` (the reverse).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Type

import torch.nn as tnn

_TO_PYDL: Dict[Type[tnn.Module], type] = {}
_TO_TORCH: Dict[type, Type[tnn.Module]] = {}


def register(torch_cls: Type[tnn.Module], pydl_cls: type) -> None:
    _TO_PYDL[torch_cls] = pydl_cls
    _TO_TORCH[pydl_cls] = torch_cls


def registered() -> Dict[Type[tnn.Module], type]:
    """torch class -> the pydl class ``convert`` swaps it for."""
    return dict(_TO_PYDL)


def torch_twins() -> Dict[type, Type[tnn.Module]]:
    """pydl class -> the torch class ``convert(..., to="torch")`` swaps it back to."""
    return dict(_TO_TORCH)


def convert(model: tnn.Module, to: str = "pydl", include: Optional[Iterable[type]] = None,
            backend: Optional[str] = None) -> tnn.Module:
    """Swap supported modules of ``model`` in place and return it (a bare supported module is returned
    swapped). ``to="pydl"`` (default) or ``"torch"``. ``include`` limits the swap to these source classes.
    ``backend`` pins the converted pydl modules to one backend (default: whatever is current at call time).
    Exact type matches only: a subclass of nn.Conv2d may override forward, so it is left alone."""
    if to not in ("pydl", "torch"):
        raise ValueError(f"pydl.convert: to must be 'pydl' or 'torch', got {to!r}")
    table = _TO_PYDL if to == "pydl" else _TO_TORCH
    allowed = set(include) if include is not None else None

    def swap(m):
        cls = table.get(type(m))
        if cls is None or (allowed is not None and type(m) not in allowed):
            return None
        if to == "pydl":
            new = cls.from_torch(m)
            if backend is not None:
                new.backend = backend
        else:
            new = m.to_torch()
        new.train(m.training)
        return new

    top = swap(model)
    if top is not None:
        return top
    for name, child in list(model.named_children()):
        new = swap(child)
        if new is not None:
            setattr(model, name, new)
        else:
            convert(child, to=to, include=include, backend=backend)
    return model
