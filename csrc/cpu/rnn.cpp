// LSTM / GRU on the CPU: the fused gate pointwise loops (forward and backward). The GEMMs and the time loop
// are in csrc/rnn_driver.h (shared with the CUDA glue); at::mm / at::addmm_out call MKL into preallocated
// buffers, so a whole sequence -- every layer, both directions, all steps -- is one C++ call.
//
// Why the pointwise part matters on a CPU: torch's own LSTM cell runs sigmoid, tanh, mul and add as separate
// ATen ops over (B, 4H) tensors (7-10 passes over memory per step, each with dispatcher overhead), and its
// backward goes through autograd op by op. Here a step is ONE pass: each (b, j) reads its four gate
// pre-activations and writes h, c and the activated gates.
//
// Vectorisation: glibc's vector expf is only declared under -ffast-math, which pydl does not use (the other
// ops need IEEE semantics). So float exp is written out below: Cody-Waite range reduction plus a degree-6
// polynomial (the classic Cephes expf coefficients), all plain arithmetic that `#pragma omp simd` turns into
// AVX-512/AVX2 code (checked with -fopt-info-vec for the fp32 loops; the fp16/bf16 conversions keep those
// loops scalar). Relative error ~2 ulp, far inside the parity tolerances. float64 uses std::exp/std::tanh
// (tests and gradcheck, not speed).
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <cstdint>

#include "common.h"
#include "schemas.h"
#include "rnn_driver.h"

namespace pydl {
namespace {

using at::Tensor;

// 512-bit vectors where the build enables AVX-512 (-march=native on such a CPU): GCC defaults to 256-bit
// ones there, and exp + division bound these loops, so the wider registers are worth ~1.5x on the pointwise
// part. Without AVX-512 enabled this changes nothing.
#pragma GCC push_options
#pragma GCC target("prefer-vector-width=512")

inline float exp_f(float x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n ln2 in [-ln2/2, ln2/2]
  x = x < -87.3f ? -87.3f : x;  // keeps 2^n a normal float (and exp(-87.3) ~ 1e-38 is 0 for a sigmoid)
  x = x > 88.3f ? 88.3f : x;
  // Rounding without a float->int conversion: adding 1.5 * 2^23 pushes the fraction out of the mantissa,
  // so t's low mantissa bits hold n as an integer. A cvt instruction may raise FE_INVALID, and under GCC's
  // default -ftrapping-math that alone stops the loop from vectorising; this is plain adds and bit moves.
  const float kMagic = 12582912.0f;
  const float t = x * 1.44269504088896341f + kMagic;
  const float n = t - kMagic;
  float r = x - n * 0.693359375f;  // ln2 split in two (Cody-Waite): the product n * hi is exact
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;  // exp(r) on [-ln2/2, ln2/2]: Cephes' minimax polynomial
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n from the exponent bits (bit casts, not memcpy through the stack: that also blocks vectorisation)
  const int32_t bits = (__builtin_bit_cast(int32_t, t) - __builtin_bit_cast(int32_t, kMagic) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline float sigmoid_(float x) { return 1.0f / (1.0f + exp_f(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + exp_f(-2.0f * x)) - 1.0f; }
inline double sigmoid_(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// Rows [b0, b1) at a time; a task gets at least ~4k elements. Each step's GEMM already runs on every
// thread; a step's pointwise part (B*H elements, ~10 flops + ~40 bytes each) split the same way costs one
// more parallel region (~1-3 us) and saves half of its ~15-30 us at B*H = 8k on two threads. Below ~4k
// elements the region would cost more than it saves.
template <typename F>
inline void for_rows(int64_t B, int64_t H, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1));
  at::parallel_for(0, B, grain, f);
}

// The row loops, one template per kernel (a #pragma cannot sit inside AT_DISPATCH's macro argument).
template <typename scalar_t>
void lstm_fwd_impl(const Tensor& pre, const Tensor& c_prev, Tensor& gates, Tensor& c, Tensor& h) {
  const int64_t B = h.size(0), H = h.size(1);
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* X = pre.data_ptr<scalar_t>();
  const acc_t* CP = c_prev.data_ptr<acc_t>();
  acc_t* Gt = gates.data_ptr<acc_t>();
  acc_t* C = c.data_ptr<acc_t>();
  scalar_t* Hp = h.data_ptr<scalar_t>();
  const int64_t sx = pre.stride(0), scp = c_prev.stride(0), sg = gates.stride(0),
                sc = c.stride(0), sh = h.stride(0);
  for_rows(B, H, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* __restrict__ x = X + b * sx;
      const acc_t* __restrict__ cp = CP + b * scp;
      acc_t* __restrict__ g = Gt + b * sg;
      acc_t* __restrict__ cc = C + b * sc;
      scalar_t* __restrict__ hh = Hp + b * sh;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t i = sigmoid_(acc_t(x[j]));
        const acc_t f = sigmoid_(acc_t(x[H + j]));
        const acc_t gg = tanh_(acc_t(x[2 * H + j]));
        const acc_t o = sigmoid_(acc_t(x[3 * H + j]));
        const acc_t cn = f * cp[j] + i * gg;
        g[j] = i;
        g[H + j] = f;
        g[2 * H + j] = gg;
        g[3 * H + j] = o;
        cc[j] = cn;
        hh[j] = scalar_t(o * tanh_(cn));
      }
    }
  });
}

template <typename scalar_t>
void lstm_bwd_impl(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dc, const Tensor& gates, const Tensor& c,
                   const Tensor& c_prev, Tensor& dG, Tensor& dc_prev) {
  const int64_t B = c.size(0), H = c.size(1);
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* DHO = dh_out.data_ptr<scalar_t>();
  const scalar_t* DHR = dh_rec.data_ptr<scalar_t>();
  const acc_t* DC = dc.data_ptr<acc_t>();
  const acc_t* Gt = gates.data_ptr<acc_t>();
  const acc_t* C = c.data_ptr<acc_t>();
  const acc_t* CP = c_prev.data_ptr<acc_t>();
  scalar_t* DG = dG.data_ptr<scalar_t>();
  acc_t* DCP = dc_prev.data_ptr<acc_t>();
  const int64_t s1 = dh_out.stride(0), s2 = dh_rec.stride(0), s3 = dc.stride(0), s4 = gates.stride(0),
                s5 = c.stride(0), s6 = c_prev.stride(0), s7 = dG.stride(0), s8 = dc_prev.stride(0);
  for_rows(B, H, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* dho = DHO + b * s1;
      const scalar_t* dhr = DHR + b * s2;
      const acc_t* dcin = DC + b * s3;  // may be the same memory as dcp (in-place update, same index)
      const acc_t* __restrict__ g = Gt + b * s4;
      const acc_t* __restrict__ cc = C + b * s5;
      const acc_t* __restrict__ cp = CP + b * s6;
      scalar_t* __restrict__ dg = DG + b * s7;
      acc_t* dcp = DCP + b * s8;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j];
        const acc_t dh = acc_t(dho[j]) + acc_t(dhr[j]);
        const acc_t tc = tanh_(cc[j]);
        const acc_t dct = dcin[j] + dh * o * (acc_t(1) - tc * tc);  // dL/dc_t: from t+1 and through h_t
        dg[j] = scalar_t(dct * gg * i * (acc_t(1) - i));
        dg[H + j] = scalar_t(dct * cp[j] * f * (acc_t(1) - f));
        dg[2 * H + j] = scalar_t(dct * i * (acc_t(1) - gg * gg));
        dg[3 * H + j] = scalar_t(dh * tc * o * (acc_t(1) - o));
        dcp[j] = dct * f;
      }
    }
  });
}

template <typename scalar_t>
void gru_fwd_impl(const Tensor& xg, const Tensor& hg, const Tensor& h_prev, Tensor& ws, Tensor& h) {
  const int64_t B = h.size(0), H = h.size(1);
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* X = xg.data_ptr<scalar_t>();
  const scalar_t* Y = hg.data_ptr<scalar_t>();
  const scalar_t* HP = h_prev.data_ptr<scalar_t>();
  acc_t* W = ws.data_ptr<acc_t>();
  scalar_t* Hp = h.data_ptr<scalar_t>();
  const int64_t sx = xg.stride(0), sy = hg.stride(0), shp = h_prev.stride(0), sw = ws.stride(0), sh = h.stride(0);
  for_rows(B, H, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* __restrict__ x = X + b * sx;
      const scalar_t* __restrict__ y = Y + b * sy;
      const scalar_t* __restrict__ hp = HP + b * shp;
      acc_t* __restrict__ w = W + b * sw;
      scalar_t* __restrict__ hh = Hp + b * sh;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t r = sigmoid_(acc_t(x[j]) + acc_t(y[j]));
        const acc_t z = sigmoid_(acc_t(x[H + j]) + acc_t(y[H + j]));
        const acc_t hn = acc_t(y[2 * H + j]);  // W_hn h + b_hn, gated by r
        const acc_t n = tanh_(acc_t(x[2 * H + j]) + r * hn);
        w[j] = r;
        w[H + j] = z;
        w[2 * H + j] = n;
        w[3 * H + j] = hn;
        hh[j] = scalar_t((acc_t(1) - z) * n + z * acc_t(hp[j]));
      }
    }
  });
}

template <typename scalar_t>
void gru_bwd_impl(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dh_dir, const Tensor& ws,
                  const Tensor& h_prev, Tensor& dGi, Tensor& dGh, Tensor& dh_dir_out) {
  const int64_t B = h_prev.size(0), H = h_prev.size(1);
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* DHO = dh_out.data_ptr<scalar_t>();
  const scalar_t* DHR = dh_rec.data_ptr<scalar_t>();
  const acc_t* DHD = dh_dir.data_ptr<acc_t>();
  const acc_t* W = ws.data_ptr<acc_t>();
  const scalar_t* HP = h_prev.data_ptr<scalar_t>();
  scalar_t* GI = dGi.data_ptr<scalar_t>();
  scalar_t* GH = dGh.data_ptr<scalar_t>();
  acc_t* DHDO = dh_dir_out.data_ptr<acc_t>();
  const int64_t s1 = dh_out.stride(0), s2 = dh_rec.stride(0), s3 = dh_dir.stride(0), s4 = ws.stride(0),
                s5 = h_prev.stride(0), s6 = dGi.stride(0), s7 = dGh.stride(0), s8 = dh_dir_out.stride(0);
  for_rows(B, H, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* dho = DHO + b * s1;
      const scalar_t* dhr = DHR + b * s2;
      const acc_t* dhd = DHD + b * s3;  // may alias dhdo (same index)
      const acc_t* __restrict__ w = W + b * s4;
      const scalar_t* __restrict__ hp = HP + b * s5;
      scalar_t* __restrict__ gi = GI + b * s6;
      scalar_t* __restrict__ gh = GH + b * s7;
      acc_t* dhdo = DHDO + b * s8;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t r = w[j], z = w[H + j], n = w[2 * H + j], hn = w[3 * H + j];
        const acc_t dh = acc_t(dho[j]) + acc_t(dhr[j]) + dhd[j];
        const acc_t dn = dh * (acc_t(1) - z) * (acc_t(1) - n * n);
        const acc_t dz = dh * (acc_t(hp[j]) - n) * z * (acc_t(1) - z);
        const acc_t dr = dn * hn * r * (acc_t(1) - r);
        gi[j] = scalar_t(dr);
        gi[H + j] = scalar_t(dz);
        gi[2 * H + j] = scalar_t(dn);
        gh[j] = scalar_t(dr);
        gh[H + j] = scalar_t(dz);
        gh[2 * H + j] = scalar_t(dn * r);
        dhdo[j] = dh * z;
      }
    }
  });
}

#pragma GCC pop_options

struct CpuPW {
  static void lstm_fwd(const Tensor& pre, const Tensor& c_prev, Tensor& gates, Tensor& c, Tensor& h) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "pydl_lstm_fwd_cpu",
                                    [&] { lstm_fwd_impl<scalar_t>(pre, c_prev, gates, c, h); });
  }

  static void lstm_bwd(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dc, const Tensor& gates,
                       const Tensor& c, const Tensor& c_prev, Tensor& dG, Tensor& dc_prev) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dG.scalar_type(), "pydl_lstm_bwd_cpu",
                                    [&] { lstm_bwd_impl<scalar_t>(dh_out, dh_rec, dc, gates, c, c_prev, dG,
                                                                  dc_prev); });
  }

  static void gru_fwd(const Tensor& xg, const Tensor& hg, const Tensor& h_prev, Tensor& ws, Tensor& h) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "pydl_gru_fwd_cpu",
                                    [&] { gru_fwd_impl<scalar_t>(xg, hg, h_prev, ws, h); });
  }

  static void gru_bwd(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dh_dir, const Tensor& ws,
                      const Tensor& h_prev, Tensor& dGi, Tensor& dGh, Tensor& dh_dir_out) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dGi.scalar_type(), "pydl_gru_bwd_cpu",
                                    [&] { gru_bwd_impl<scalar_t>(dh_out, dh_rec, dh_dir, ws, h_prev, dGi, dGh,
                                                                 dh_dir_out); });
  }
};

constexpr auto kCPU = c10::DeviceType::CPU;

std::tuple<Tensor, Tensor, Tensor> lstm_cell_cpu(const Tensor& x, const Tensor& hx, const Tensor& cx,
                                                 const Tensor& w_ih, const Tensor& w_hh,
                                                 const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  rnn::check_cell(4, x, hx, &cx, w_ih, w_hh, b_ih, b_hh, kCPU, "lstm_cell");
  return rnn::lstm_cell<CpuPW>(x, hx, cx, w_ih, w_hh, b_ih, b_hh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward_cpu(
    const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& x, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& gates, const Tensor& cy, bool need_dx, bool need_dh) {
  rnn::check_cell_backward(4, grad_hy, &grad_cy, x, hx, &cx, w_ih, w_hh, gates, &cy, kCPU, "lstm_cell_backward");
  return rnn::lstm_cell_backward<CpuPW>(grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx,
                                                     need_dh);
}

std::tuple<Tensor, Tensor> gru_cell_cpu(const Tensor& x, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                        const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  rnn::check_cell(3, x, hx, nullptr, w_ih, w_hh, b_ih, b_hh, kCPU, "gru_cell");
  return rnn::gru_cell<CpuPW>(x, hx, w_ih, w_hh, b_ih, b_hh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_cell_backward_cpu(
    const Tensor& grad_hy, const Tensor& x, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& ws, bool need_dx, bool need_dh) {
  rnn::check_cell_backward(3, grad_hy, nullptr, x, hx, nullptr, w_ih, w_hh, ws, nullptr, kCPU, "gru_cell_backward");
  return rnn::gru_cell_backward<CpuPW>(grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cpu(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                                            at::TensorList weights, const std::optional<Tensor>& mask,
                                                            int64_t L, bool bidir, bool has_bias,
                                                            bool need_reserve) {
  rnn::check_seq(4, x, h0, &c0, weights, mask, L, bidir, has_bias, kCPU, "lstm");
  return rnn::seq_forward<CpuPW>(true, x, h0, c0, weights, mask, L, bidir, has_bias, need_reserve);
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_cpu(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& x, const Tensor& h0,
    const Tensor& c0, at::TensorList weights, const std::optional<Tensor>& mask, const Tensor& out,
    const Tensor& reserve, const Tensor& layer_outs, int64_t L, bool bidir, bool has_bias, bool need_dx) {
  rnn::check_seq_backward(true, grad_out, grad_hn, &grad_cn, x, h0, &c0, weights, mask, out, reserve, layer_outs, L,
                           bidir, has_bias, kCPU, "lstm_backward");
  return rnn::seq_backward<CpuPW>(true, grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve,
                                  layer_outs, L, bidir, has_bias, need_dx);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_cpu(const Tensor& x, const Tensor& h0, at::TensorList weights,
                                                   const std::optional<Tensor>& mask, int64_t L, bool bidir,
                                                   bool has_bias, bool need_reserve) {
  rnn::check_seq(3, x, h0, nullptr, weights, mask, L, bidir, has_bias, kCPU, "gru");
  auto r = rnn::seq_forward<CpuPW>(false, x, h0, Tensor(), weights, mask, L, bidir, has_bias, need_reserve);
  return {std::get<0>(r), std::get<1>(r), std::get<3>(r), std::get<4>(r)};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> gru_backward_cpu(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& x, const Tensor& h0, at::TensorList weights,
    const std::optional<Tensor>& mask, const Tensor& out, const Tensor& reserve, const Tensor& layer_outs, int64_t L,
    bool bidir, bool has_bias, bool need_dx) {
  rnn::check_seq_backward(false, grad_out, grad_hn, nullptr, x, h0, nullptr, weights, mask, out, reserve, layer_outs,
                           L, bidir, has_bias, kCPU, "gru_backward");
  auto r = rnn::seq_backward<CpuPW>(false, grad_out, grad_hn, Tensor(), x, h0, Tensor(), weights, mask, out, reserve,
                                    layer_outs, L, bidir, has_bias, need_dx);
  return {std::get<0>(r), std::get<1>(r), std::get<3>(r)};
}

}  // namespace
}  // namespace pydl

// The same schemas as pydl::<op> minus the trailing `str backend` (kept in sync with pydl/ops/rnn.py).
TORCH_LIBRARY_FRAGMENT(pydl_cpu, m) {
  for (const char* s : pydl::schema::rnn) m.def(s);  // csrc/schemas.h
}

TORCH_LIBRARY_IMPL(pydl_cpu, CPU, m) {
  m.impl("lstm_cell", &pydl::lstm_cell_cpu);
  m.impl("lstm_cell_backward", &pydl::lstm_cell_backward_cpu);
  m.impl("gru_cell", &pydl::gru_cell_cpu);
  m.impl("gru_cell_backward", &pydl::gru_cell_backward_cpu);
  m.impl("lstm", &pydl::lstm_cpu);
  m.impl("lstm_backward", &pydl::lstm_backward_cpu);
  m.impl("gru", &pydl::gru_cpu);
  m.impl("gru_backward", &pydl::gru_backward_cpu);
}
