"""CUDA: thread/block indexing (vector add)."""
import torch

from pydl.learn.harness import Case

TITLE = "Vector add in CUDA: threads, blocks, bounds"
TRACK = "cuda"
FILE = "cuda_vector_add.cu"
ENTRY = "vector_add"
SIGNATURE = [("x", "const float*"), ("y", "const float*"), ("out", "float*"), ("n", "int"), ("block", "int")]
TEACHES = "blockIdx/blockDim/threadIdx -> a global index; rounding the grid up; the `if (i < n)` guard"
LEARNED = ("A CUDA kernel is one function run by a grid of blocks of threads; each thread finds its element "
           "from blockIdx * blockDim + threadIdx, the grid is rounded up, and the bounds test keeps the "
           "extra threads of the last block from writing past the end.")
GPU_ONLY_BUGS = None
MUTANTS = {
    "no bounds check": [("if (i < n) out[i]", "out[i]")],
    "grid rounded down": [("(n + block - 1) / block", "n / block")],
}


def cases(device):
    out = []
    for seed, n, block in [(0, 1, 32), (1, 100, 32), (2, 1000, 128), (3, 4097, 256), (4, 257, 64)]:
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(n, generator=g), torch.randn(n, generator=g)
        out.append(Case(f"n={n}, block={block}, seed={seed}", args={"x": x, "y": y},
                        outs={"out": ((n,), torch.float32)}, params={"n": n, "block": block, "seed": seed},
                        expected={"out": x + y}, tol={"out": (1e-6, 1e-6)}))
    return out
