// Exercise: the LSTM cell's pointwise kernel in CUDA, on a 2-D grid.
//
// gates (B, 4H) = x @ W_ih^T + b_ih + h_prev @ W_hh^T + b_hh is given (torch's gate order i, f, g, o):
//   i = sigmoid(gates[:, 0:H]), f = sigmoid(gates[:, H:2H]), g = tanh(gates[:, 2H:3H]), o = sigmoid(gates[:, 3H:4H])
//   c = f * c_prev + i * g,   h = o * tanh(c)
// The checker calls `lstm_cell(gates, c_prev, h, c, B, H, block)` with DEVICE pointers.
#include <cuda_runtime.h>

__device__ __forceinline__ float sigmoid_f(float v) { return 1.f / (1.f + expf(-v)); }

__global__ void lstm_cell_kernel(const float* __restrict__ gates, const float* __restrict__ c_prev,
                                 float* __restrict__ h, float* __restrict__ c, int B, int H) {
  // TODO(1): blockIdx.y is the batch row; blockIdx.x/threadIdx.x cover the H columns. Return early for
  // columns past H; compute the four gates, the new c and h, and store both.
  // BEGIN SOLUTION
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  const int row = blockIdx.y;
  if (col >= H || row >= B) return;
  const float* g = gates + size_t(row) * 4 * H;
  const float i = sigmoid_f(g[col]);
  const float f = sigmoid_f(g[H + col]);
  const float gg = tanhf(g[2 * H + col]);
  const float o = sigmoid_f(g[3 * H + col]);
  const size_t at = size_t(row) * H + col;
  const float cn = f * c_prev[at] + i * gg;
  c[at] = cn;
  h[at] = o * tanhf(cn);
  // END SOLUTION
}

void lstm_cell(const float* gates, const float* c_prev, float* h, float* c, int B, int H, int block) {
  // TODO(2): grid = (blocks covering H, B rows).
  // BEGIN SOLUTION
  const dim3 grid((H + block - 1) / block, B);
  //| const dim3 grid(1, 1);
  // END SOLUTION
  lstm_cell_kernel<<<grid, block>>>(gates, c_prev, h, c, B, H);
}
