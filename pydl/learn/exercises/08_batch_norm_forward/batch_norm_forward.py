"""Exercise: batch-norm forward (training mode) in Triton, one program per channel.

x is (N, C, H, W), contiguous (NCHW). For every channel c, over its N*H*W values:
    mean[c]   = average,   var[c] = population variance (divide by N*H*W),
    invstd[c] = 1 / sqrt(var[c] + eps),
    y[n, c, h, w] = (x[n, c, h, w] - mean[c]) * invstd[c] * weight[c] + bias[c]
The checker calls `batch_norm_forward(x, weight, bias, eps, y, mean, invstd, block)`. mean and invstd are
what the backward pass needs (the next exercise); the running-stat update is the launcher's business.
"""
import triton
import triton.language as tl


@triton.jit
def bn_forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, invstd_ptr, N, C, HW, eps, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    M = N * HW  # values in this channel
    # Channel c's e-th value (e = n * HW + i) lives at x[n, c, i] = n*C*HW + c*HW + i: runs of HW contiguous
    # values, one run per sample.
    # TODO(1): pass 1 -- the channel's mean. Accumulate a BLOCK-wide vector of partial sums over the
    # channel's values (e = start + tl.arange(0, BLOCK)), then reduce it once at the end.
    # BEGIN SOLUTION
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, M, BLOCK):
        e = start + tl.arange(0, BLOCK)
        m = e < M
        off = (e // HW) * C * HW + c * HW + e % HW
        acc += tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / M
    #| mean = 0.0
    # END SOLUTION
    # TODO(2): pass 2 -- the variance around that mean (two-pass: accurate, see the Welford exercise), and
    # invstd = 1 / sqrt(var + eps).
    # BEGIN SOLUTION
    acc2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, M, BLOCK):
        e = start + tl.arange(0, BLOCK)
        m = e < M
        off = (e // HW) * C * HW + c * HW + e % HW
        x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        d = tl.where(m, x - mean, 0.0)
        acc2 += d * d
    var = tl.sum(acc2, axis=0) / M
    invstd = 1.0 / tl.sqrt(var + eps)
    #| invstd = 1.0
    # END SOLUTION
    # TODO(3): pass 3 -- normalise, scale and shift every value of the channel; store y, mean, invstd.
    # BEGIN SOLUTION
    w = tl.load(w_ptr + c).to(tl.float32)
    b = tl.load(b_ptr + c).to(tl.float32)
    scale = invstd * w
    shift = b - mean * scale
    for start in range(0, M, BLOCK):
        e = start + tl.arange(0, BLOCK)
        m = e < M
        off = (e // HW) * C * HW + c * HW + e % HW
        x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + off, x * scale + shift, mask=m)
    tl.store(mean_ptr + c, mean)
    tl.store(invstd_ptr + c, invstd)
    # END SOLUTION


def batch_norm_forward(x, weight, bias, eps, y, mean, invstd, block):
    N, C, H, W = x.shape
    bn_forward_kernel[(C,)](x, weight, bias, y, mean, invstd, N, C, H * W, eps, BLOCK=block)
