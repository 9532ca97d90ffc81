// Exercise: vector add in CUDA C++ -- threads, blocks and the bounds check.
//
// Write the kernel and its launcher:
//   out[i] = x[i] + y[i]   for 0 <= i < n
// The checker calls `vector_add(x, y, out, n, block)` with DEVICE pointers and a block size (threads per
// block) of its choosing, on sizes that are not multiples of the block size (n = 1 included).
#include <cuda_runtime.h>

__global__ void add_kernel(const float* __restrict__ x, const float* __restrict__ y, float* __restrict__ out,
                           int n) {
  // TODO(1): compute this thread's global index i from blockIdx.x, blockDim.x and threadIdx.x, and write
  // out[i] only if i is inside the array (the last block usually has threads past the end).
  // BEGIN SOLUTION
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = x[i] + y[i];
  // END SOLUTION
}

void vector_add(const float* x, const float* y, float* out, int n, int block) {
  // TODO(2): launch enough blocks of `block` threads to cover all n elements (round UP), then launch
  // add_kernel with the <<<blocks, threads>>> syntax.
  // BEGIN SOLUTION
  const int blocks = (n + block - 1) / block;
  add_kernel<<<blocks, block>>>(x, y, out, n);
  // END SOLUTION
}
