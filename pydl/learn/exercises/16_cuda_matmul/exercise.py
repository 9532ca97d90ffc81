"""CUDA: tiled matmul in shared memory."""
import torch

from pydl.learn.harness import Case

TITLE = "Tiled matmul in shared memory"
TRACK = "cuda"
FILE = "cuda_matmul.cu"
ENTRY = "matmul"
SIGNATURE = [("A", "const float*"), ("B", "const float*"), ("C", "float*"), ("M", "int"), ("N", "int"), ("K", "int"),
             ("tile", "int")]
TEACHES = "2-D blocks and grids, cooperative loads into __shared__ tiles, the two barriers of a tiled loop"
LEARNED = ("Threads of a block load a tile together, then each reuses all of it: every global load feeds TILE "
           "multiply-adds instead of one. The barrier after loading makes the tile complete; the barrier after "
           "computing keeps fast threads from overwriting a tile others still read.")
GPU_ONLY_BUGS = "a missing second __syncthreads() can pass when the schedule happens to keep threads in step"
MUTANTS = {
    "no barrier after loading": [("    __syncthreads();\n    for (int k = 0; k < TILE; ++k)", "    for (int k = 0; k < TILE; ++k)")],
    "no barrier before the next tile": [("acc += As[ty][k] * Bs[k][tx];\n    __syncthreads();", "acc += As[ty][k] * Bs[k][tx];")],
    "edge tiles not zero-padded": [("(row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.f", "A[row * K + k0 + tx]"),
                                   ("(k0 + ty < K && col < N) ? B[(k0 + ty) * N + col] : 0.f", "B[(k0 + ty) * N + col]")],
    "grid rounded down": [("const dim3 grid((N + tile - 1) / tile, (M + tile - 1) / tile);",
                           "const dim3 grid(N / tile + (N < tile), M / tile + (M < tile));")],
}


def cases(device):
    out = []
    spec = [(0, 1, 1, 1, 8), (1, 17, 9, 33, 8), (2, 40, 24, 50, 16), (3, 16, 32, 16, 16), (4, 33, 20, 19, 8)]
    for seed, M, N, K, tile in spec:
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
        out.append(Case(f"M={M}, N={N}, K={K}, tile={tile}, seed={seed}", args={"A": a, "B": b},
                        outs={"C": ((M, N), torch.float32)},
                        params={"M": M, "N": N, "K": K, "tile": tile, "seed": seed},
                        expected={"C": (a.double() @ b.double()).float()}, tol={"C": (1e-4, 1e-4)}))
    return out
