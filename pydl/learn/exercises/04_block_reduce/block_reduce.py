"""Exercise: a block reduction (sum and max) in Triton, applied until one value is left.

The checker calls `block_reduce(x, total, maximum, block)`: x is a 1-D float32 tensor of n >= 1 elements,
`total` and `maximum` are 1-element outputs. The launcher below reduces x to cdiv(n, BLOCK) partial results,
then the partials, and so on (a tree of kernel launches) until one value remains.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def reduce_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, IS_MAX: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    # TODO(1): reduce this program's block of x to ONE value -- its sum, or its max when IS_MAX -- and store
    # it at out_ptr + pid. The masked lanes need an `other=` that does not change the result: which value is
    # neutral for a sum? for a max?
    # BEGIN SOLUTION
    if IS_MAX:
        x = tl.load(x_ptr + offs, mask=mask, other=float("-inf"))
        r = tl.max(x, axis=0)
    else:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        r = tl.sum(x, axis=0)
    tl.store(out_ptr + pid, r)
    # END SOLUTION


def _reduce(x: torch.Tensor, out: torch.Tensor, block: int, is_max: bool) -> None:
    cur, n = x, x.numel()
    while True:
        # TODO(2): how many programs does this pass need? The last pass (one program) writes into `out`.
        # BEGIN SOLUTION
        programs = triton.cdiv(n, block)
        #| programs = 1
        # END SOLUTION
        dst = out if programs == 1 else torch.empty(programs, dtype=torch.float32, device=x.device)
        reduce_kernel[(programs,)](cur, dst, n, BLOCK=block, IS_MAX=is_max)
        if programs == 1:
            return
        cur, n = dst, programs


def block_reduce(x: torch.Tensor, total: torch.Tensor, maximum: torch.Tensor, block: int) -> None:
    _reduce(x, total, block, is_max=False)
    _reduce(x, maximum, block, is_max=True)
