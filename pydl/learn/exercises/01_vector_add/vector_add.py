"""Exercise: vector add in Triton -- programs, blocks and masks.

Write `add_kernel` so that `out[i] = x[i] + y[i]` for every 0 <= i < n, and the grid in `vector_add`.
The checker calls `vector_add(x, y, out, block)` with 1-D float32 tensors and BLOCK sizes of its choosing
(powers of two), on sizes that are NOT multiples of BLOCK -- n = 1 included.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # TODO(1): this program handles elements [pid * BLOCK, pid * BLOCK + BLOCK). Build the vector of their
    # offsets with tl.program_id(0) and tl.arange(0, BLOCK), and a mask that is False past the end (>= n).
    # BEGIN SOLUTION
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    # END SOLUTION
    # TODO(2): load x and y (with the mask), add, store into out (with the mask).
    # BEGIN SOLUTION
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)
    # END SOLUTION


def vector_add(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, block: int) -> None:
    n = x.numel()
    # TODO(3): how many programs does the grid need so that every element is covered? (round up)
    # BEGIN SOLUTION
    grid = (triton.cdiv(n, block),)
    #| grid = (1,)
    # END SOLUTION
    add_kernel[grid](x, y, out, n, BLOCK=block)
