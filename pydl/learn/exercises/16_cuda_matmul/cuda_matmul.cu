// Exercise: tiled matrix multiplication in CUDA with shared memory.
//
// C = A @ B, A (M, K), B (K, N), C (M, N), all row-major float32. A block of TILE x TILE threads computes one
// TILE x TILE tile of C, one element per thread, staging TILE x TILE tiles of A and B in shared memory.
// The checker calls `matmul(A, B, C, M, N, K, tile)` with DEVICE pointers and tile = 8 or 16.
#include <cuda_runtime.h>

template <int TILE>
__global__ void matmul_kernel(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                              int M, int N, int K) {
  __shared__ float As[TILE][TILE];
  __shared__ float Bs[TILE][TILE];
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int row = blockIdx.y * TILE + ty;  // the element of C this thread computes
  const int col = blockIdx.x * TILE + tx;
  float acc = 0.f;
  for (int k0 = 0; k0 < K; k0 += TILE) {
    // TODO(1): each thread loads ONE element of the A tile (row, k0 + tx) and ONE of the B tile
    // (k0 + ty, col) into shared memory -- 0.f where the index is outside the matrix. Wait for the whole
    // tile, accumulate the TILE products of row `ty` of As and column `tx` of Bs, and wait again before the
    // next iteration overwrites the tiles.
    // BEGIN SOLUTION
    As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.f;
    Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(k0 + ty) * N + col] : 0.f;
    __syncthreads();
    for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];
    __syncthreads();
    // END SOLUTION
  }
  // TODO(2): write the result (only threads inside C).
  // BEGIN SOLUTION
  if (row < M && col < N) C[row * N + col] = acc;
  // END SOLUTION
}

void matmul(const float* A, const float* B, float* C, int M, int N, int K, int tile) {
  // TODO(3): a 2-D grid of tiles: x over the columns of C, y over the rows (rounded up).
  // BEGIN SOLUTION
  const dim3 grid((N + tile - 1) / tile, (M + tile - 1) / tile);
  //| const dim3 grid(1, 1);
  // END SOLUTION
  if (tile == 8) {
    matmul_kernel<8><<<grid, dim3(8, 8)>>>(A, B, C, M, N, K);
  } else {
    matmul_kernel<16><<<grid, dim3(16, 16)>>>(A, B, C, M, N, K);
  }
}
