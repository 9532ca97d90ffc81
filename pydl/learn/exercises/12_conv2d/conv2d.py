"""Exercise: conv2d as an implicit GEMM in Triton.

out[n, k, p, q] = sum over c, r, s of x[n, c, p*stride - pad + r, q*stride - pad + s] * w[k, c, r, s]
(zero outside the image). x is (N, C, H, W), w is (K, C, R, S), out is (N, K, P, Q); all contiguous.

Seen as a matrix product: rows m = (n, p, q) of the output (M = N*P*Q), columns = output channels k, and the
reduction runs over (c, r, s) (C*R*S terms). The "A matrix" -- the image patches -- is never built in memory
(that would be im2col): the kernel computes each A element's address from (m, crs) on the fly.
The checker calls `conv2d(x, w, out, stride, pad, bm, bn, bk)`.
"""
import triton
import triton.language as tl


@triton.jit
def conv2d_kernel(x_ptr, w_ptr, out_ptr, N, C, H, W, K, R, S, P, Q, stride, pad,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    M = N * P * Q
    CRS = C * R * S
    rm = pid_m * BM + tl.arange(0, BM)   # output positions (n, p, q), flattened
    rk = pid_n * BN + tl.arange(0, BN)   # output channels
    n = rm // (P * Q)
    p = (rm // Q) % P
    q = rm % Q
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, CRS, BK):
        kk = k0 + tl.arange(0, BK)       # reduction index (c, r, s), flattened
        # TODO(1): split kk into (c, r, s); the input pixel of (output position, reduction index) is
        # (ih, iw) = (p*stride - pad + r, q*stride - pad + s). Load the (BM, BK) patch tile from x -- masked
        # where the pixel is outside the image (that IS the zero padding) or the indices run past M / CRS --
        # and the (BK, BN) tile of w viewed as a (CRS, K) matrix; accumulate tl.dot.
        # BEGIN SOLUTION
        c = kk // (R * S)
        r = (kk // S) % R
        s = kk % S
        ih = p[:, None] * stride - pad + r[None, :]
        iw = q[:, None] * stride - pad + s[None, :]
        a_mask = (rm[:, None] < M) & (kk[None, :] < CRS) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + ((n[:, None] * C + c[None, :]) * H + ih) * W + iw, mask=a_mask, other=0.0)
        b = tl.load(w_ptr + rk[None, :] * CRS + kk[:, None], mask=(kk[:, None] < CRS) & (rk[None, :] < K),
                    other=0.0)
        acc += tl.dot(a, b)
        # END SOLUTION
    # TODO(2): store the tile into out[n, k, p, q] (NCHW: ((n*K + k)*P + p)*Q + q), masked.
    # BEGIN SOLUTION
    dst = out_ptr + ((n[:, None] * K + rk[None, :]) * P + p[:, None]) * Q + q[:, None]
    tl.store(dst, acc, mask=(rm[:, None] < M) & (rk[None, :] < K))
    # END SOLUTION


def conv2d(x, w, out, stride, pad, bm, bn, bk):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P = (H + 2 * pad - R) // stride + 1
    Q = (W + 2 * pad - S) // stride + 1
    grid = (triton.cdiv(N * P * Q, bm), triton.cdiv(K, bn))
    conv2d_kernel[grid](x, w, out, N, C, H, W, K, R, S, P, Q, stride, pad, BM=bm, BN=bn, BK=bk)
