"""Triton: tiled matmul with tl.dot."""
import torch

from pydl.learn.harness import Case

TITLE = "Tiled matmul with tl.dot"
TRACK = "triton"
FILE = "matmul.py"
ENTRY = "matmul"
TEACHES = "2-D tiles, broadcasting offsets, the K loop, masks on edge tiles, data reuse, fp32 accumulation"
LEARNED = ("A tile of C needs a row-panel of A and a column-panel of B; loading them BK at a time into "
           "registers/shared memory lets every loaded value be used BM (or BN) times. That reuse is what moves "
           "a matmul from memory-bound to compute-bound, and tl.dot maps the tile product onto tensor cores.")
MUTANTS = {
    "K not masked": [("mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)", "mask=rm[:, None] < M, other=0.0)"),
                     ("mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)", "mask=rn[None, :] < N, other=0.0)")],
    "only the first K tile": [("for k0 in range(0, K, BK):", "for k0 in range(0, BK, BK):")],
    "unmasked store": [("acc, mask=(rm[:, None] < M) & (rn[None, :] < N))", "acc)")],
}


def cases(device):
    out = []
    tol = (1e-4, 1e-4) if device == "cpu" else (2e-2, 2e-2)  # GPUs use TF32 tensor cores for fp32 tl.dot
    spec = [(0, 1, 1, 1, (16, 16, 16)), (1, 17, 9, 33, (16, 16, 16)), (2, 40, 24, 50, (32, 16, 16)),
            (3, 64, 32, 16, (16, 32, 16)), (4, 33, 47, 70, (32, 32, 32))]
    for seed, M, N, K, (bm, bn, bk) in spec:
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
        out.append(Case(f"M={M}, N={N}, K={K}, tiles BM={bm} BN={bn} BK={bk}, seed={seed}", args={"a": a, "b": b},
                        outs={"c": ((M, N), torch.float32)}, params={"bm": bm, "bn": bn, "bk": bk},
                        expected={"c": (a.double() @ b.double()).float()}, tol={"c": tol}))
    return out
