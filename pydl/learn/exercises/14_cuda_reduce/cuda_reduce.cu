// Exercise: sum of an array in CUDA -- grid-stride loop, warp shuffles, shared memory, one atomic per block.
//
// The checker calls `reduce_sum(x, out, n, block, max_blocks)` with DEVICE pointers; `out` is one float.
// block is a multiple of 32 (32 ... 256); the grid is capped at max_blocks, so one thread may have to
// handle many elements.
#include <cuda_runtime.h>

// Sum of v over the 32 lanes of a warp; lane 0 ends up with the total.
__device__ float warp_sum(float v) {
  // TODO(1): 5 steps of __shfl_down_sync(0xffffffff, v, offset) with offset 16, 8, 4, 2, 1: after the step
  // with offset d, lane l holds the sum of lanes l .. l + 2d - 1.
  // BEGIN SOLUTION
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  // END SOLUTION
  return v;
}

__global__ void sum_kernel(const float* __restrict__ x, float* out, int n) {
  __shared__ float warp_sums[32];  // one slot per warp of the block (at most 1024 / 32 warps)
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float v = 0.f;
  // TODO(2): grid-stride loop: thread t of the grid adds x[t], x[t + stride], ... with stride = the number
  // of threads in the grid. Consecutive threads read consecutive elements (coalesced).
  // BEGIN SOLUTION
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) v += x[i];
  // END SOLUTION
  // TODO(3): reduce within each warp; lane 0 of each warp stores its warp's sum in warp_sums[warp]. Then
  // make sure EVERY warp has written before anyone reads warp_sums.
  // BEGIN SOLUTION
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  // END SOLUTION
  // TODO(4): the first warp sums the per-warp results (lanes past the number of warps contribute 0), and
  // its lane 0 adds the block's total to *out -- other blocks add to it at the same time.
  // BEGIN SOLUTION
  if (warp == 0) {
    const int nwarps = (blockDim.x + 31) / 32;
    v = lane < nwarps ? warp_sums[lane] : 0.f;
    v = warp_sum(v);
    if (lane == 0) atomicAdd(out, v);
  }
  // END SOLUTION
}

void reduce_sum(const float* x, float* out, int n, int block, int max_blocks) {
  cudaMemset(out, 0, sizeof(float));  // the blocks ADD into out
  int blocks = (n + block - 1) / block;
  if (blocks > max_blocks) blocks = max_blocks;
  sum_kernel<<<blocks, block>>>(x, out, n);
}
