"""CUDA: LSTM cell pointwise."""
import torch

from pydl.learn.harness import Case

TITLE = "LSTM cell pointwise in CUDA (2-D grid)"
TRACK = "cuda"
FILE = "cuda_lstm_cell.cu"
ENTRY = "lstm_cell"
SIGNATURE = [("gates", "const float*"), ("c_prev", "const float*"), ("h", "float*"), ("c", "float*"), ("B", "int"),
             ("H", "int"), ("block", "int")]
TEACHES = "2-D grids (blockIdx.y for rows), early return for bounds, device functions, expf/tanhf"
LEARNED = ("A 2-D grid maps a (rows, columns) problem without divisions: blockIdx.y picks the row, the x "
           "dimension the column. The fused cell reads the gates once and writes h and c once -- the same "
           "kernel pydl's CUDA LSTM runs at every timestep after one big input GEMM.")
MUTANTS = {
    "f and o swapped": [("const float f = sigmoid_f(g[H + col]);", "const float f = sigmoid_f(g[3 * H + col]);"),
                        ("const float o = sigmoid_f(g[3 * H + col]);", "const float o = sigmoid_f(g[H + col]);")],
    "no bounds check": [("if (col >= H || row >= B) return;", "")],
    "h from the old cell": [("h[at] = o * tanhf(cn);", "h[at] = o * tanhf(c_prev[at]);")],
}


def cases(device):
    out = []
    spec = [(0, 1, 1, 32), (1, 3, 7, 32), (2, 4, 33, 64), (3, 2, 100, 32), (4, 5, 16, 128)]
    for seed, B, H, block in spec:
        g = torch.Generator().manual_seed(seed)
        gates = torch.randn(B, 4 * H, generator=g) * 2
        c0 = torch.randn(B, H, generator=g) * 2
        gd = gates.double()
        i, f, gg, o = gd[:, :H].sigmoid(), gd[:, H:2 * H].sigmoid(), gd[:, 2 * H:3 * H].tanh(), gd[:, 3 * H:].sigmoid()
        c1 = f * c0.double() + i * gg
        h1 = o * c1.tanh()
        out.append(Case(f"B={B}, H={H}, block={block}, seed={seed}", args={"gates": gates, "c_prev": c0},
                        outs={"h": ((B, H), torch.float32), "c": ((B, H), torch.float32)},
                        params={"B": B, "H": H, "block": block, "seed": seed},
                        expected={"h": h1.float(), "c": c1.float()}, tol={"h": (1e-5, 1e-4), "c": (1e-5, 1e-4)}))
    return out
