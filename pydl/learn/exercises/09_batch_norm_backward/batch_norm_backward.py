"""Exercise: batch-norm backward in Triton, one program per channel.

Given the forward's input x (N, C, H, W), its saved mean and invstd (C,), the weight (C,) and the upstream
gradient dy (same shape as x), compute dx, dweight, dbias. With xhat = (x - mean) * invstd and M = N*H*W:
    dbias[c]   = sum over the channel of dy
    dweight[c] = sum over the channel of dy * xhat
    dx         = weight[c] * invstd[c] * (dy - dbias[c] / M - xhat * dweight[c] / M)
The checker calls `batch_norm_backward(x, dy, mean, invstd, weight, dx, dweight, dbias, block)`.
"""
import triton
import triton.language as tl


@triton.jit
def bn_backward_kernel(x_ptr, dy_ptr, mean_ptr, invstd_ptr, w_ptr, dx_ptr, dw_ptr, db_ptr, N, C, HW,
                       BLOCK: tl.constexpr):
    c = tl.program_id(0)
    M = N * HW
    mean = tl.load(mean_ptr + c)
    invstd = tl.load(invstd_ptr + c)
    w = tl.load(w_ptr + c)
    # TODO(1): pass 1 -- the two per-channel sums: sum(dy) and sum(dy * xhat).
    # BEGIN SOLUTION
    acc_dy = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_dyx = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, M, BLOCK):
        e = start + tl.arange(0, BLOCK)
        m = e < M
        off = (e // HW) * C * HW + c * HW + e % HW
        x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + off, mask=m, other=0.0).to(tl.float32)
        xhat = (x - mean) * invstd
        acc_dy += dy
        acc_dyx += dy * xhat
    sum_dy = tl.sum(acc_dy, axis=0)
    sum_dyx = tl.sum(acc_dyx, axis=0)
    #| sum_dy = 0.0
    #| sum_dyx = 0.0
    # END SOLUTION
    # TODO(2): pass 2 -- dx for every value of the channel; then store dweight and dbias.
    # BEGIN SOLUTION
    k = w * invstd
    for start in range(0, M, BLOCK):
        e = start + tl.arange(0, BLOCK)
        m = e < M
        off = (e // HW) * C * HW + c * HW + e % HW
        x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + off, mask=m, other=0.0).to(tl.float32)
        xhat = (x - mean) * invstd
        dx = k * (dy - sum_dy / M - xhat * (sum_dyx / M))
        tl.store(dx_ptr + off, dx, mask=m)
    tl.store(dw_ptr + c, sum_dyx)
    tl.store(db_ptr + c, sum_dy)
    # END SOLUTION


def batch_norm_backward(x, dy, mean, invstd, weight, dx, dweight, dbias, block):
    N, C, H, W = x.shape
    bn_backward_kernel[(C,)](x, dy, mean, invstd, weight, dx, dweight, dbias, N, C, H * W, BLOCK=block)
