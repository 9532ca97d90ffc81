"""The demos' models, built from torch.nn modules and converted to pydl's (the CNN), or built from pydl's
modules directly (the character-level LSTM)."""
from __future__ import annotations

import torch.nn as tnn


def make_cnn(n_classes: int, in_ch: int = 1, widths=(16, 32, 64)) -> tnn.Module:
    """Conv -> BatchNorm -> GeneralRelu blocks (stride 2 after the first), global average pool, linear head:
    a GAP + linear head, so plain CAM works too. Built from torch.nn modules and converted to pydl's."""
    from ..nn import GeneralRelu, convert

    layers, c = [], in_ch
    for i, w in enumerate(widths):
        layers += [tnn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False), tnn.BatchNorm2d(w),
                   GeneralRelu(leak=0.1, sub=0.4)]
        c = w
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(c, n_classes)]
    return convert(tnn.Sequential(*layers))


class CharLM(tnn.Module):
    """Embedding -> pydl's 2-layer LSTM -> linear head over the vocabulary; ``forward(x, state)`` returns
    (logits, state) so sampling can feed one character at a time."""

    def __init__(self, vocab: int, hidden: int, emb: int = 32):
        from .. import nn as pnn

        super().__init__()
        self.emb = tnn.Embedding(vocab, emb)
        self.rnn = pnn.LSTM(emb, hidden, num_layers=2, batch_first=True)
        self.head = tnn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        h, state = self.rnn(self.emb(x), state)
        return self.head(h), state
