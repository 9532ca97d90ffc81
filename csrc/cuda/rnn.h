// Plain C++ interface between the ATen glue (rnn.cpp) and the CUDA pointwise kernels of LSTM/GRU (rnn.cu).
// No torch headers on either side of this line: the .cu compiles with nvcc alone, in seconds.
//
// Every kernel covers a (B, H) plane, one thread per (b, j). Matrices are passed as a pointer plus a row
// stride in elements (columns are contiguous): the hidden state of direction d is a strided slice of the
// (T, B, D*H) output. "acc" buffers are float (double for double input); the others have the input dtype.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dtype.h"

namespace pydl {
namespace cuda {

struct LstmFwdArgs {
  DType dtype;
  int64_t B, H;
  const void* pre; int64_t s_pre;     // (B, 4H) gate pre-activations (all GEMMs and biases summed)
  const void* c_prev; int64_t s_cp;   // (B, H) acc
  void* gates; int64_t s_g;           // (B, 4H) acc out: activated i, f, g, o
  void* c; int64_t s_c;               // (B, H) acc out
  void* h; int64_t s_h;               // (B, H) out
};

struct LstmBwdArgs {
  DType dtype;
  int64_t B, H;
  const void* dh_out; int64_t s_dho;  // (B, H) dL/dh_t from above
  const void* dh_rec; int64_t s_dhr;  // (B, H) dL/dh_t through W_hh of step t+1
  const void* dc; int64_t s_dc;       // (B, H) acc: dL/dc_t from step t+1
  const void* gates; int64_t s_g;     // (B, 4H) acc
  const void* c; int64_t s_c;         // (B, H) acc
  const void* c_prev; int64_t s_cp;   // (B, H) acc
  void* dG; int64_t s_dG;             // (B, 4H) out: gradient of the pre-activations
  void* dc_prev; int64_t s_dcp;       // (B, H) acc out (may be dc itself: same element, same thread)
};

struct GruFwdArgs {
  DType dtype;
  int64_t B, H;
  const void* xg; int64_t s_xg;       // (B, 3H) x W_ih^T + b_ih
  const void* hg; int64_t s_hg;       // (B, 3H) h W_hh^T + b_hh
  const void* h_prev; int64_t s_hp;   // (B, H)
  void* ws; int64_t s_ws;             // (B, 4H) acc out: r, z, n, (W_hn h + b_hn)
  void* h; int64_t s_h;               // (B, H) out
};

struct GruBwdArgs {
  DType dtype;
  int64_t B, H;
  const void* dh_out; int64_t s_dho;
  const void* dh_rec; int64_t s_dhr;
  const void* dh_dir; int64_t s_dhd;  // (B, H) acc: z * dL/dh_{t+1}, the path that skips the GEMM
  const void* ws; int64_t s_ws;
  const void* h_prev; int64_t s_hp;
  void* dGi; int64_t s_dgi;           // (B, 3H) out
  void* dGh; int64_t s_dgh;           // (B, 3H) out
  void* dh_dir_out; int64_t s_dhdo;   // (B, H) acc out (may be dh_dir)
};

cudaError_t lstm_fwd_launch(const LstmFwdArgs& a, cudaStream_t stream);
cudaError_t lstm_bwd_launch(const LstmBwdArgs& a, cudaStream_t stream);
cudaError_t gru_fwd_launch(const GruFwdArgs& a, cudaStream_t stream);
cudaError_t gru_bwd_launch(const GruBwdArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace pydl
