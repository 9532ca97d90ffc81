"""Exercise: mean and variance of each row, block by block, merged with Chan/Welford's formula.

The checker calls `row_mean_var(x, mean, var, block)`: x is (n_rows, n_cols) float32, `mean` and `var` are
(n_rows,) outputs; var is the population variance (divide by n). One program walks one row, BLOCK columns
at a time, keeping only a running (count, mean, M2) -- M2 is the sum of squared deviations from the mean.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def mean_var_kernel(x_ptr, mean_ptr, var_ptr, n_cols, row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    n = tl.zeros((), dtype=tl.float32)
    mean = tl.zeros((), dtype=tl.float32)
    m2 = tl.zeros((), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        # TODO(1): statistics of this block alone: nb (its number of valid lanes), bmean, and bm2 = the sum
        # of (x - bmean)^2 over the VALID lanes only.
        # BEGIN SOLUTION
        nb = tl.sum(mask.to(tl.float32), axis=0)
        bmean = tl.sum(x, axis=0) / nb
        d = tl.where(mask, x - bmean, 0.0)
        bm2 = tl.sum(d * d, axis=0)
        #| nb = tl.zeros((), dtype=tl.float32)
        #| bmean = tl.zeros((), dtype=tl.float32)
        #| bm2 = tl.zeros((), dtype=tl.float32)
        # END SOLUTION
        # TODO(2): merge (nb, bmean, bm2) into the running (n, mean, m2) -- Chan et al.:
        #   delta = bmean - mean;  n' = n + nb;  mean' = mean + delta * nb / n'
        #   m2' = m2 + bm2 + delta^2 * n * nb / n'
        # BEGIN SOLUTION
        tot = n + nb
        delta = bmean - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + bm2 + delta * delta * (n * nb / tot)
        n = tot
        # END SOLUTION
    tl.store(mean_ptr + row, mean)
    tl.store(var_ptr + row, m2 / n)


def row_mean_var(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, block: int) -> None:
    n_rows, n_cols = x.shape
    mean_var_kernel[(n_rows,)](x, mean, var, n_cols, x.stride(0), BLOCK=block)
