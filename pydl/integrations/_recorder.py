"""A pydl ActivationStats driven by a training loop's batch events instead of the root model's forward.

Why not the plain recorder's root-forward hooks: a Lightning ``training_step`` often calls a submodule
(``self.net(x)``), never the LightningModule's own ``forward``, so a pre-hook on the root would never fire;
and a loop may run several forwards for one batch. The loop knows what a training step is, so it says so:
:meth:`BatchRecorder.begin` before the batch, :meth:`BatchRecorder.end` after it. Everything else (the
layer hooks, the device-side ``act_stats`` pass, chunked host copies, the memory cap) is the plain
recorder's. Several forwards inside one batch merge into one record, as a module called twice does.

``count_le_eps``: also count fastai's near-zero definition, ``x <= eps`` (signed), per layer and step. pydl's
``act_stats`` counts ``|x| <= eps``; the two agree for ReLU outputs but not for the signed outputs of
conv / batch-norm layers, where ``x <= eps`` also counts every negative value. The histogram cannot give it
(its range starts at 0, and ``below`` counts ``x < 0``, not ``x < -eps``), so it costs one extra
comparison pass per hooked layer (numpy's on the CPU, see ``_count_le_eps``; torch's, kept on the device and
copied with the rest, elsewhere).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Dict, List, Optional

import numpy as np
import torch

from ..debug.hooks import first_tensor
from ..debug.stats import ActivationStats
from ..ops._common import plain_eager


class BatchRecorder(ActivationStats):
    def __init__(self, model, modules=None, *, count_le_eps: bool = False, **kw):
        super().__init__(model, modules, **kw)
        for h in self._root:  # the loop drives the steps (see the module docstring)
            h.remove()
        self._root = []
        self.count_le_eps = count_le_eps
        self._le_cur: Optional[list] = None
        self._le_pending: List[tuple] = []   # (step, (L,) int64 tensor, on the device of the outputs)
        self._le_host: Dict[int, np.ndarray] = {}

    # ---- driven by the loop
    def begin(self, training: bool = True) -> None:
        """A batch starts. Counts as a step only when ``training`` (or when ``train_only`` is off)."""
        # the plain recorder's step rule, fed the loop's training flag instead of the root module's
        self._begin(SimpleNamespace(training=training), ())
        if self._active and self.count_le_eps:
            self._le_cur = [None] * len(self.modules)

    def end(self) -> None:
        """The batch ended: its record (if it was a recorded step) joins the pending list."""
        if self._active and self.count_le_eps:
            cur = [0 if c is None else c for c in self._le_cur]  # ints (CPU) or device tensors
            dev = next((c.device for c in cur if isinstance(c, torch.Tensor)), None)
            if dev is None:
                row = torch.tensor(cur, dtype=torch.int64)
            else:
                row = torch.stack([torch.as_tensor(c, dtype=torch.int64, device=dev) for c in cur])
            self._le_pending.append((self._cur_step, row))
            self._le_cur = None
        self._end(None, None, None)

    @property
    def recording(self) -> bool:
        """True between begin() and end() of a step that is recorded."""
        return self._active

    def _layer(self, j: int, output):
        super()._layer(j, output)
        if not (self._active and self.count_le_eps):
            return
        x = first_tensor(output)
        if x is None or not x.is_floating_point() or x.is_complex():
            return
        c = self._count_le_eps(x.detach())
        prev = self._le_cur[j]
        self._le_cur[j] = c if prev is None else prev + c

    def _count_le_eps(self, x: torch.Tensor):
        """How many values have ``x <= eps``: an int for a float32/float64 CPU tensor, else a 0-dim device
        tensor. On the CPU numpy does it: its comparison and count are vectorised and write one byte per value,
        torch's ``count_nonzero(x <= eps)`` took ~4x as long on the course CNN's activations (measured in
        benchmarks/results/cpu-debug-overhead). The threshold is cast to x's dtype first, as torch compares a
        float32 tensor with a Python float in float32."""
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and plain_eager(x):
            a = x.numpy()
            return int(np.count_nonzero(a <= a.dtype.type(self.preset.eps)))
        return torch.count_nonzero(x <= self.preset.eps)

    def flush(self) -> None:
        super().flush()
        if self._le_pending:
            pending, self._le_pending = self._le_pending, []
            host = torch.stack([c.cpu() for _, c in pending]).numpy()
            self._le_host.update({s: host[i] for i, (s, _) in enumerate(pending)})

    def le_eps_frac(self) -> np.ndarray:
        """(T, L) share of values with ``x <= eps`` (fastai's near-zero) for the records in :attr:`data`."""
        if not self.count_le_eps:
            raise ValueError("le_eps_frac: this recorder was made with count_le_eps=False")
        data = self.data
        if len(self._le_host) > 2 * len(data) + self.chunk:  # records dropped by the memory cap
            keep = set(data.steps.tolist())
            self._le_host = {s: v for s, v in self._le_host.items() if s in keep}
        L = len(self.modules)
        le = np.stack([self._le_host[s] for s in data.steps.tolist()]) if len(data) else np.zeros((0, L))
        with np.errstate(divide="ignore", invalid="ignore"):
            return le / data.count

    def reset(self) -> None:
        super().reset()
        self._le_cur, self._le_pending, self._le_host = None, [], {}
