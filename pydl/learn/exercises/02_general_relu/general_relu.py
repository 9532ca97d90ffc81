"""Exercise: fastai's GeneralRelu as ONE fused Triton kernel.

    y = min(leaky_relu(x, leak) - sub, maxv)

The checker calls `general_relu(x, out, leak, sub, maxv, block)` on float32 tensors of any shape (they are
contiguous: treat them as flat arrays of x.numel() elements). maxv may be +inf (no clamp).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def general_relu_kernel(x_ptr, out_ptr, n, leak, sub, maxv, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    # TODO(1): load x, compute leaky_relu (tl.where), subtract `sub`, clamp from above at `maxv`
    # (tl.minimum), and store -- all in registers, one read and one write per element.
    # BEGIN SOLUTION
    z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.where(z > 0, z, z * leak)
    y = y - sub
    y = tl.minimum(y, maxv)
    tl.store(out_ptr + offs, y, mask=mask)
    # END SOLUTION


def general_relu(x: torch.Tensor, out: torch.Tensor, leak: float, sub: float, maxv: float, block: int) -> None:
    n = x.numel()
    general_relu_kernel[(triton.cdiv(n, block),)](x, out, n, leak, sub, maxv, BLOCK=block)
