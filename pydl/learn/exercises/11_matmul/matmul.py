"""Exercise: a tiled matrix multiplication with tl.dot.

C = A @ B for A (M, K), B (K, N), float32. Each program computes one BM x BN tile of C, walking K in steps
of BK. The checker calls `matmul(a, b, c, bm, bn, bk)` with sizes that are not multiples of the tiles.
"""
import triton
import triton.language as tl


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)  # rows of C (and A) of this tile
    rn = pid_n * BN + tl.arange(0, BN)  # columns of C (and B)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    # TODO(1): for each step k0 of BK along K, load the (BM, BK) tile of A and the (BK, BN) tile of B --
    # 2-D offsets via broadcasting (rm[:, None], kk[None, :]), masks on BOTH dimensions, other=0 -- and
    # accumulate tl.dot(a, b).
    # BEGIN SOLUTION
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * s_am + kk[None, :] * s_ak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_ptr + kk[:, None] * s_bk + rn[None, :] * s_bn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(a, b)
    # END SOLUTION
    # TODO(2): store the tile (masked: the edge tiles stick out of C).
    # BEGIN SOLUTION
    tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :] * s_cn, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))
    # END SOLUTION


def matmul(a, b, c, bm, bn, bk):
    M, K = a.shape
    _, N = b.shape
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    matmul_kernel[grid](a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                        c.stride(0), c.stride(1), BM=bm, BN=bn, BK=bk)
