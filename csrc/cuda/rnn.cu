// LSTM / GRU pointwise kernels on the GPU: one step's gate math, forward and backward, fused in one kernel
// each. No torch headers: see rnn.h. The GEMMs of a step (and of the whole sequence) are cuBLAS calls made
// through ATen from the glue (rnn.cpp + csrc/rnn_driver.h).
//
// One thread per (b, j) of the (B, H) plane. It reads the four (LSTM) or three (GRU) gate pre-activations of
// its column j -- at j, H + j, 2H + j, 3H + j of the row -- and writes everything of that (b, j); threads
// share nothing, so there is no synchronisation at all. Consecutive threads take consecutive j, so each of
// the strided gate reads is coalesced.
//
// The math is in float (double for double input) whatever the storage dtype: fp16/bf16 are converted on load
// and store. sigmoid(x) = 1 / (1 + exp(-x)) and tanhf are the IEEE-accurate versions (pydl builds without
// --use_fast_math); they are not the bottleneck of a memory-bound kernel.
#include <cuda_runtime.h>

#include "acc.h"
#include "rnn.h"

namespace pydl {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T> __device__ __forceinline__ typename Acc<T>::type ld(const T* p) { return to_acc(*p); }
template <typename T> __device__ __forceinline__ void st(T* p, typename Acc<T>::type v) { *p = from_acc<T>(v); }

__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

// (b, j) of this thread, or false past the end. 64-bit: B*H may pass 2^31 in principle.
__device__ __forceinline__ bool coords(int64_t B, int64_t H, int64_t& b, int64_t& j) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * H) return false;
  b = idx / H;
  j = idx - b * H;
  return true;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) lstm_fwd_kernel(LstmFwdArgs a) {
  using acc_t = typename Acc<T>::type;
  int64_t b, j;
  if (!coords(a.B, a.H, b, j)) return;
  const int64_t H = a.H;
  const T* pre = static_cast<const T*>(a.pre) + b * a.s_pre + j;
  const acc_t i = sigm(acc_t(ld(pre)));
  const acc_t f = sigm(acc_t(ld(pre + H)));
  const acc_t g = tanh_(acc_t(ld(pre + 2 * H)));
  const acc_t o = sigm(acc_t(ld(pre + 3 * H)));
  const acc_t cp = static_cast<const acc_t*>(a.c_prev)[b * a.s_cp + j];
  const acc_t cn = f * cp + i * g;
  acc_t* gates = static_cast<acc_t*>(a.gates) + b * a.s_g + j;
  gates[0] = i;
  gates[H] = f;
  gates[2 * H] = g;
  gates[3 * H] = o;
  static_cast<acc_t*>(a.c)[b * a.s_c + j] = cn;
  st(static_cast<T*>(a.h) + b * a.s_h + j, o * tanh_(cn));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) lstm_bwd_kernel(LstmBwdArgs a) {
  using acc_t = typename Acc<T>::type;
  int64_t b, j;
  if (!coords(a.B, a.H, b, j)) return;
  const int64_t H = a.H;
  const acc_t* g4 = static_cast<const acc_t*>(a.gates) + b * a.s_g + j;
  const acc_t i = g4[0], f = g4[H], g = g4[2 * H], o = g4[3 * H];
  const acc_t dh = acc_t(ld(static_cast<const T*>(a.dh_out) + b * a.s_dho + j)) +
                   acc_t(ld(static_cast<const T*>(a.dh_rec) + b * a.s_dhr + j));
  const acc_t tc = tanh_(static_cast<const acc_t*>(a.c)[b * a.s_c + j]);
  // dL/dc_t: from step t+1 and through h_t = o tanh(c_t)
  const acc_t dct = static_cast<const acc_t*>(a.dc)[b * a.s_dc + j] + dh * o * (acc_t(1) - tc * tc);
  const acc_t cp = static_cast<const acc_t*>(a.c_prev)[b * a.s_cp + j];
  T* dG = static_cast<T*>(a.dG) + b * a.s_dG + j;
  st(dG, dct * g * i * (acc_t(1) - i));
  st(dG + H, dct * cp * f * (acc_t(1) - f));
  st(dG + 2 * H, dct * i * (acc_t(1) - g * g));
  st(dG + 3 * H, dh * tc * o * (acc_t(1) - o));
  static_cast<acc_t*>(a.dc_prev)[b * a.s_dcp + j] = dct * f;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gru_fwd_kernel(GruFwdArgs a) {
  using acc_t = typename Acc<T>::type;
  int64_t b, j;
  if (!coords(a.B, a.H, b, j)) return;
  const int64_t H = a.H;
  const T* xg = static_cast<const T*>(a.xg) + b * a.s_xg + j;
  const T* hg = static_cast<const T*>(a.hg) + b * a.s_hg + j;
  const acc_t r = sigm(acc_t(ld(xg)) + acc_t(ld(hg)));
  const acc_t z = sigm(acc_t(ld(xg + H)) + acc_t(ld(hg + H)));
  const acc_t hn = acc_t(ld(hg + 2 * H));  // W_hn h + b_hn: r gates it, and the backward needs it
  const acc_t n = tanh_(acc_t(ld(xg + 2 * H)) + r * hn);
  const acc_t hp = acc_t(ld(static_cast<const T*>(a.h_prev) + b * a.s_hp + j));
  acc_t* ws = static_cast<acc_t*>(a.ws) + b * a.s_ws + j;
  ws[0] = r;
  ws[H] = z;
  ws[2 * H] = n;
  ws[3 * H] = hn;
  st(static_cast<T*>(a.h) + b * a.s_h + j, (acc_t(1) - z) * n + z * hp);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gru_bwd_kernel(GruBwdArgs a) {
  using acc_t = typename Acc<T>::type;
  int64_t b, j;
  if (!coords(a.B, a.H, b, j)) return;
  const int64_t H = a.H;
  const acc_t* ws = static_cast<const acc_t*>(a.ws) + b * a.s_ws + j;
  const acc_t r = ws[0], z = ws[H], n = ws[2 * H], hn = ws[3 * H];
  const acc_t dh = acc_t(ld(static_cast<const T*>(a.dh_out) + b * a.s_dho + j)) +
                   acc_t(ld(static_cast<const T*>(a.dh_rec) + b * a.s_dhr + j)) +
                   static_cast<const acc_t*>(a.dh_dir)[b * a.s_dhd + j];
  const acc_t hp = acc_t(ld(static_cast<const T*>(a.h_prev) + b * a.s_hp + j));
  const acc_t dn = dh * (acc_t(1) - z) * (acc_t(1) - n * n);
  const acc_t dz = dh * (hp - n) * z * (acc_t(1) - z);
  const acc_t dr = dn * hn * r * (acc_t(1) - r);
  T* gi = static_cast<T*>(a.dGi) + b * a.s_dgi + j;
  T* gh = static_cast<T*>(a.dGh) + b * a.s_dgh + j;
  st(gi, dr);
  st(gi + H, dz);
  st(gi + 2 * H, dn);
  st(gh, dr);
  st(gh + H, dz);
  st(gh + 2 * H, dn * r);
  static_cast<acc_t*>(a.dh_dir_out)[b * a.s_dhdo + j] = dh * z;
}

inline unsigned blocks_for(int64_t B, int64_t H) { return unsigned((B * H + kThreads - 1) / kThreads); }

// One switch per launcher: the kernel template instantiated for each storage dtype.
#define PYDL_RNN_LAUNCH(KERNEL, ARGS, STREAM)                                                       \
  do {                                                                                              \
    if ((ARGS).B * (ARGS).H == 0) return cudaSuccess;                                               \
    if ((ARGS).B * (ARGS).H / kThreads >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration; \
    const unsigned nb = blocks_for((ARGS).B, (ARGS).H);                                             \
    PYDL_DTYPE_SWITCH((ARGS).dtype, T, KERNEL<T><<<nb, kThreads, 0, STREAM>>>(ARGS);              \
                      return cudaGetLastError())                                                    \
    return cudaErrorInvalidValue;                                                                   \
  } while (0)

}  // namespace

cudaError_t lstm_fwd_launch(const LstmFwdArgs& a, cudaStream_t s) { PYDL_RNN_LAUNCH(lstm_fwd_kernel, a, s); }
cudaError_t lstm_bwd_launch(const LstmBwdArgs& a, cudaStream_t s) { PYDL_RNN_LAUNCH(lstm_bwd_kernel, a, s); }
cudaError_t gru_fwd_launch(const GruFwdArgs& a, cudaStream_t s) { PYDL_RNN_LAUNCH(gru_fwd_kernel, a, s); }
cudaError_t gru_bwd_launch(const GruBwdArgs& a, cudaStream_t s) { PYDL_RNN_LAUNCH(gru_bwd_kernel, a, s); }

}  // namespace cuda
}  // namespace pydl
