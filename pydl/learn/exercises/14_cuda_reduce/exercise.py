"""CUDA: shared-memory reduction with warp shuffles."""
import torch

from pydl.learn.harness import Case

TITLE = "Sum reduction: grid-stride loop, warp shuffles, shared memory"
TRACK = "cuda"
FILE = "cuda_reduce.cu"
ENTRY = "reduce_sum"
SIGNATURE = [("x", "const float*"), ("out", "float*"), ("n", "int"), ("block", "int"), ("max_blocks", "int")]
TEACHES = "grid-stride loops, __shfl_down_sync, __shared__ + __syncthreads, one atomicAdd per block"
LEARNED = ("A block reduces in registers first (warp shuffles need no memory and no barrier), then through a "
           "tiny shared array guarded by __syncthreads, and touches global memory once per block. A grid-stride "
           "loop lets a fixed-size grid cover any n.")
GPU_ONLY_BUGS = ("how fast the atomics are when many blocks finish at once; the emulator's racecheck already "
                 "reports a plain `*out += v` and a missing barrier, whatever the schedule")
REQUIRES = [(r"__shfl_(down|xor)_sync", "This exercise is about warp shuffles: reduce within the warp with "
             "__shfl_down_sync (or __shfl_xor_sync).")]
MUTANTS = {
    "no barrier before reading warp_sums": [("warp_sums[warp] = v;\n  __syncthreads();", "warp_sums[warp] = v;")],
    "no grid-stride": [("i < n; i += blockDim.x * gridDim.x) v += x[i];", "i < n; i += n) v += x[i];")],
    "plain += on out": [("atomicAdd(out, v);", "*out += v;")],
    "too few shuffle steps": [("for (int offset = 16; offset > 0; offset >>= 1)", "for (int offset = 8; offset > 0; offset >>= 1)")],
}


def cases(device):
    out = []
    spec = [(0, 1, 32, 4), (1, 100, 64, 4), (2, 1000, 128, 2), (3, 5000, 256, 3), (4, 777, 32, 100), (5, 4097, 64, 8)]
    for seed, n, block, max_blocks in spec:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, generator=g) + 0.5
        out.append(Case(f"n={n}, block={block}, max_blocks={max_blocks}, seed={seed}", args={"x": x},
                        outs={"out": ((1,), torch.float32)},
                        params={"n": n, "block": block, "max_blocks": max_blocks, "seed": seed},
                        expected={"out": x.double().sum().reshape(1).float()}, tol={"out": (1e-3, 1e-4)}))
    return out
