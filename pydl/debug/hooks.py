"""Hooks: run a function on a module's output (forward) or on the gradient of its output (backward).

    with Hooks(model_layers, lambda h, m, i, o: o.mean()) as hs:
        model(x)
    hs.stored            # one value per module

Why backward capture is a forward hook plus a *tensor* hook, not ``register_full_backward_hook``:
a full backward hook wraps the module's outputs in a ``BackwardHookFunction``, and the common pattern
``nn.ReLU(inplace=True)`` right after a conv then modifies that wrapped output in place, which autograd
rejects ("Output 0 of BackwardHookFunctionBackward is a view and is being modified inplace"). A hook
registered on the output tensor itself (``tensor.register_hook``) has no such wrapper, and autograd defines
what it receives when the tensor is later modified in place: the gradient with respect to the value the
tensor had *when the hook was registered* -- the module's real output, which is what we want.

Modules that return tuples or nested structures (``nn.LSTM`` returns ``(out, (h, c))``) are handled by
flattening the output with ``torch.utils._pytree``: forward hooks receive the structure unchanged, backward
hooks pick one tensor of it (``output_index``, default 0 = the first tensor, LSTM's ``out``).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence

import torch
from torch import nn

__all__ = ["Hook", "Hooks", "hook_output", "hook_outputs", "flat_tensors", "first_tensor", "leaf_modules",
           "module_label"]


def flat_tensors(obj: Any) -> List[torch.Tensor]:
    """Every tensor inside ``obj`` (a tensor, tuple, list, dict, or nesting of those), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    from torch.utils import _pytree

    leaves, _ = _pytree.tree_flatten(obj)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def first_tensor(obj: Any) -> Optional[torch.Tensor]:
    """The first tensor of a module output (``out`` for LSTM's ``(out, (h, c))``), or None."""
    ts = flat_tensors(obj)
    return ts[0] if ts else None


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    from torch.utils import _pytree

    return _pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, obj)


def leaf_modules(model: nn.Module, include_parameterless: bool = False) -> List[nn.Module]:
    """The modules ActivationStats hooks by default: leaves (no children) that own parameters; with
    ``include_parameterless``, every leaf (adds ReLU, pooling, dropout, ...). ``model`` itself counts when it
    is a leaf."""
    out = []
    for m in model.modules():
        if next(m.children(), None) is not None:
            continue
        if include_parameterless or next(m.parameters(recurse=False), None) is not None:
            out.append(m)
    return out


def module_label(name: str, module: nn.Module) -> str:
    """A layer's title for plots: its dotted name and what it is, e.g. ``features.2 Conv2d(16→32)``.

    A bare position ("2", "5", "8" in a Sequential) says nothing to a reader; the type and the channel counts
    let them find the layer in their model without counting. Modules without in/out sizes show their type.
    """
    kind = type(module).__name__
    for a, b in (("in_channels", "out_channels"), ("in_features", "out_features"), ("input_size", "hidden_size")):
        if hasattr(module, a) and hasattr(module, b):
            kind = f"{kind}({getattr(module, a)}→{getattr(module, b)})"
            break
    else:
        if hasattr(module, "num_features"):
            kind = f"{kind}({module.num_features})"
    return f"{name} {kind}" if name and name != type(module).__name__ else kind


class Hook:
    """One hook on one module; removable (twice is fine), usable as a context manager.

    ``kind="forward"``: ``fn(hook, module, inputs, output)`` runs after the module's forward; its return
    value is stored in ``hook.stored``. Without ``fn`` the output itself is stored (detached when
    ``detach``: no autograd graph kept alive). Note a stored output shares memory with the module's output,
    so an in-place op that follows (``ReLU(inplace=True)``) changes what you see; pass a ``fn`` that
    clones, or compute what you need inside ``fn`` (as ActivationStats does).

    ``kind="backward"``: ``fn(hook, module, grad)`` runs when the gradient with respect to the module's
    output tensor number ``output_index`` is computed (see the module docstring for why this survives
    in-place ops); without ``fn`` the gradient is stored. Nothing happens for outputs that do not require
    grad (a forward under ``torch.no_grad()``).
    """

    def __init__(self, module: nn.Module, fn: Optional[Callable] = None, kind: str = "forward",
                 detach: bool = True, output_index: int = 0):
        if kind not in ("forward", "backward"):
            raise ValueError(f"Hook: kind must be 'forward' or 'backward', got {kind!r}")
        if not isinstance(module, nn.Module):
            raise TypeError(f"Hook: module must be an nn.Module, got {type(module).__name__}")
        self.module, self.fn, self.kind, self.detach, self.output_index = module, fn, kind, detach, output_index
        self.stored: Any = None
        self.calls = 0
        self.handle = module.register_forward_hook(self._forward if kind == "forward" else self._attach)

    # forward: the value (or fn of it) is kept
    def _forward(self, module, inputs, output):
        self.calls += 1
        if self.fn is None:
            self.stored = _detach(output) if self.detach else output
        else:
            self.stored = self.fn(self, module, _detach(inputs) if self.detach else inputs,
                                  _detach(output) if self.detach else output)

    # backward: at forward time, put a tensor hook on the chosen output tensor
    def _attach(self, module, inputs, output):
        ts = flat_tensors(output)
        if not ts:
            return
        if not -len(ts) <= self.output_index < len(ts):
            raise IndexError(f"Hook: output_index {self.output_index} but {type(module).__name__} returned "
                             f"{len(ts)} tensor(s)")
        t = ts[self.output_index]
        if t.requires_grad:
            t.register_hook(lambda g, m=module: self._backward(m, g))

    def _backward(self, module, grad):
        self.calls += 1
        g = grad.detach() if self.detach else grad
        self.stored = g if self.fn is None else self.fn(self, module, g)
        return None  # never change the gradient flowing on

    @property
    def removed(self) -> bool:
        return self.handle is None

    def remove(self) -> None:
        """Remove the hook. Safe to call more than once. (A tensor hook already attached to an output of a
        forward that ran while the hook was live still fires in that graph's backward; its result is
        ignored once removed.)"""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
            if self.kind == "backward":
                self._backward = lambda module, grad: None  # type: ignore[method-assign]

    def __enter__(self) -> "Hook":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self):
        state = "removed" if self.removed else "live"
        return f"Hook({type(self.module).__name__}, {self.kind}, {state}, calls={self.calls})"


class Hooks:
    """A :class:`Hook` on each module of ``modules``, with the same arguments; ``hooks.stored`` lists the
    stored values in module order. Context manager; ``remove()`` is safe twice."""

    def __init__(self, modules: Iterable[nn.Module], fn: Optional[Callable] = None, kind: str = "forward",
                 detach: bool = True, output_index: int = 0):
        self.hooks = [Hook(m, fn, kind, detach, output_index) for m in modules]

    @property
    def stored(self) -> list:
        return [h.stored for h in self.hooks]

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def __enter__(self) -> "Hooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __getitem__(self, i) -> Hook:
        return self.hooks[i]

    def __len__(self) -> int:
        return len(self.hooks)

    def __iter__(self):
        return iter(self.hooks)

    def __repr__(self):
        return f"Hooks({len(self.hooks)} x {self.hooks[0].kind if self.hooks else '-'})"


def hook_output(module: nn.Module, detach: bool = True, grad: bool = False) -> Hook:
    """Store ``module``'s output (or, with ``grad=True``, the gradient of its output)."""
    return Hook(module, None, "backward" if grad else "forward", detach)


def hook_outputs(modules: Sequence[nn.Module], detach: bool = True, grad: bool = False) -> Hooks:
    """:func:`hook_output` on each module."""
    return Hooks(modules, None, "backward" if grad else "forward", detach)
