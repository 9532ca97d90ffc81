// Exercise: a privatised histogram in CUDA -- per-block counts in shared memory, then one atomic per bin.
//
// Bin b counts the x with lo + b*w <= x < lo + (b+1)*w, w = (hi - lo) / bins, i.e.
// b = int((x - lo) * bins / (hi - lo)); values outside [lo, hi) are not counted.
// The checker calls `histogram(x, hist, n, lo, hi, bins, block, max_blocks)` with DEVICE pointers.
#include <cuda_runtime.h>

__global__ void histogram_kernel(const float* __restrict__ x, unsigned int* hist, int n, float lo, float hi,
                                 int bins) {
  extern __shared__ unsigned int local[];  // `bins` counters, sized by the launch (3rd <<< >>> argument)
  // TODO(1): zero this block's shared histogram (the threads share the work: bin b by thread b, b + blockDim.x,
  // ...), and wait until it is all zero before anyone counts.
  // BEGIN SOLUTION
  for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  // END SOLUTION
  // TODO(2): grid-stride over x; count each value that falls in [lo, hi) into `local` -- atomically:
  // other threads of the block may hit the same bin at the same moment.
  // BEGIN SOLUTION
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float v = x[i];
    if (v >= lo && v < hi) {
      int b = int((v - lo) * bins / (hi - lo));
      b = b < 0 ? 0 : (b >= bins ? bins - 1 : b);
      atomicAdd(&local[b], 1u);
    }
  }
  // END SOLUTION
  // TODO(3): when every thread has finished counting, add the non-zero bins to the global histogram.
  // BEGIN SOLUTION
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x)
    if (local[b]) atomicAdd(&hist[b], local[b]);
  // END SOLUTION
}

void histogram(const float* x, unsigned int* hist, int n, float lo, float hi, int bins, int block, int max_blocks) {
  cudaMemset(hist, 0, bins * sizeof(unsigned int));
  int blocks = (n + block - 1) / block;
  if (blocks > max_blocks) blocks = max_blocks;
  histogram_kernel<<<blocks, block, bins * sizeof(unsigned int)>>>(x, hist, n, lo, hi, bins);
}
