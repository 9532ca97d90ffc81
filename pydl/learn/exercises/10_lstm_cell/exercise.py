"""Triton: LSTM cell pointwise."""
import torch

from pydl.learn.harness import Case

TITLE = "LSTM cell: the fused pointwise kernel"
TRACK = "triton"
FILE = "lstm_cell.py"
ENTRY = "lstm_cell"
TEACHES = "2-D index math on flat offsets, gate layout, sigmoid/tanh in fp32, fusing ~10 elementwise ops"
LEARNED = ("An LSTM step is two GEMMs plus ~10 elementwise ops on (B, 4H) data. Unfused, each op is a kernel "
           "launch and a round trip through memory; fused, the gates are read once and h, c written once. "
           "For whole sequences the input GEMM of all timesteps can also be done at once, before the recurrence.")
MUTANTS = {
    "i and f swapped": [("i = tl.sigmoid(tl.load(base, mask", "i = tl.sigmoid(tl.load(base + H, mask"),
                        ("f = tl.sigmoid(tl.load(base + H, mask", "f = tl.sigmoid(tl.load(base, mask")],
    "h from the old cell state": [("h = o * _tanh(c)", "h = o * _tanh(c_prev)")],
    "unmasked store": [("tl.store(h_ptr + offs, h, mask=mask)", "tl.store(h_ptr + offs, h)")],
    # the stores stay masked: the stray lanes of the last block never reach an output
    "unmasked gate load": [("tl.load(base, mask=mask, other=0.0)", "tl.load(base)")],
}


def cases(device):
    out = []
    spec = [(0, 1, 1, 1, 16), (1, 3, 5, 7, 16), (2, 4, 6, 33, 64), (3, 2, 10, 20, 32), (4, 5, 3, 16, 128)]
    for seed, B, I, H, block in spec:
        g = torch.Generator().manual_seed(seed)
        cell = torch.nn.LSTMCell(I, H)
        with torch.no_grad():
            for p in cell.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        x = torch.randn(B, I, generator=g)
        h0, c0 = torch.randn(B, H, generator=g), torch.randn(B, H, generator=g) * 2
        with torch.no_grad():
            cd = cell.double()
            h1, c1 = cd(x.double(), (h0.double(), c0.double()))
        out.append(Case(f"B={B}, input={I}, hidden={H}, BLOCK={block}, seed={seed}",
                        args={"x": x, "h_prev": h0, "c_prev": c0, "w_ih": cell.weight_ih.detach().float(),
                              "w_hh": cell.weight_hh.detach().float(), "b_ih": cell.bias_ih.detach().float(),
                              "b_hh": cell.bias_hh.detach().float()},
                        outs={"h": ((B, H), torch.float32), "c": ((B, H), torch.float32)}, params={"block": block},
                        expected={"h": h1.float(), "c": c1.float()}, tol={"h": (1e-5, 1e-4), "c": (1e-5, 1e-4)}))
    return out


def plugin(mod, device):
    """Plug the learner's kernel into pydl (see pydl/learn/plugins.py)."""
    from pydl.learn import plugins

    return plugins.lstm_cell(mod, device)
