// The LSTM/GRU drivers shared by the C++ CPU backend (csrc/cpu/rnn.cpp) and the CUDA glue
// (csrc/cuda/rnn.cpp): argument checks, the GEMMs (through ATen: MKL on the CPU, cuBLAS on a GPU) into
// preallocated buffers, and the time loop. The pointwise part of a step -- every sigmoid/tanh, the cell
// update and their gradients, fused in one kernel each -- comes from a `PW` struct that each backend provides:
//
//   PW::lstm_fwd(pre, c_prev, gates, c, h)               pre (B,4H) summed pre-activations; c_prev (B,H) acc
//   PW::lstm_bwd(dh_out, dh_rec, dc, gates, c, c_prev, dG, dc_prev)
//   PW::gru_fwd(xg, hg, h_prev, ws, h)                   ws (B,4H) acc = r, z, n, (W_hn h + b_hn)
//   PW::gru_bwd(dh_out, dh_rec, dh_dir, ws, h_prev, dGi, dGh, dh_dir_out)
//
// A PW may also run a whole direction of a layer -- the time loop itself -- in one call: if it defines
// `static bool seq_takes(const Tensor& x)`, `static void seq_fwd(FwdRec&)` and `seq_bwd(BwdRec&)` (the CPU
// backend does: one parallel region per sequence, csrc/cpu/rnn.cpp), the drivers below hand it each direction
// whose input seq_takes accepts (a dtype), together with the layer's input and ALL its weights: the input
// projection is the region's to place (inside the time loop or up front) and the biases its to fold. For
// the rest the drivers run their own loop of per-step GEMMs and PW kernels.
//
// All tensors given to PW are 2-D with unit column stride and any row stride (h of direction d is a strided
// slice of the (T, B, D*H) output); `acc` tensors are fp32 (fp64 for fp64 input). The math and the layout of
// `reserve` are documented in pydl/ops/rnn.py, whose Python driver (reference and Triton backends) this
// mirrors line for line.
//
// Both extensions rebuild when this header changes: each new process runs ninja, whose dependency files
// list the headers a source includes.
//
// Why one long file: the checks, buffers and time loops of eight ops over two pointwise backends are one
// driver; splitting it would scatter the one contract both backends implement.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.h"

namespace pydl {
namespace rnn {

using at::Tensor;

inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Unit column stride for the pointwise kernels (a broadcast gradient may come with stride 0).
inline Tensor rows(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// out = x W^T (+ b): the matmul library writes straight into a preallocated buffer.
inline void linear_out(Tensor& out, const Tensor& x, const Tensor& w_t, const Tensor& b) {
  if (b.defined())
    at::addmm_out(out, b, x, w_t);
  else
    at::mm_out(out, x, w_t);
}

inline Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  return b.defined() ? at::addmm(b, x, w.t()) : at::mm(x, w.t());
}

// LSTM: x W_ih^T + (b_ih + b_hh). Both biases go into the input projection, so a step only adds h W_hh^T,
// which the GEMM does in place (beta = 1) into this buffer: no separate (B, 4H) output, no bias broadcast.
inline Tensor lstm_input_gemm(const Tensor& x, const Tensor& w_ih, const Tensor& b_ih, const Tensor& b_hh) {
  return b_ih.defined() ? at::addmm(b_ih + b_hh, x, w_ih.t()) : at::mm(x, w_ih.t());
}

struct LayerW {
  Tensor w_ih, w_hh, b_ih, b_hh;
};

inline LayerW layer_weights(at::TensorList w, int64_t k, bool has_bias) {
  const int64_t nw = has_bias ? 4 : 2;
  LayerW r{w[k * nw], w[k * nw + 1], Tensor(), Tensor()};
  if (has_bias) {
    r.b_ih = w[k * nw + 2];
    r.b_hh = w[k * nw + 3];
  }
  return r;
}

// ---- checks (the Python dispatcher checks too; these keep direct calls of the compiled ops safe) ---------

inline void check_like(const Tensor& t, const Tensor& x, const char* op, const char* arg) {
  check_floating(t, op, arg);
  PYDL_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", arg, " must have x's dtype ", x.scalar_type(),
                  ", got ", t.scalar_type());
  PYDL_CHECK_VALUE(t.device() == x.device(), op, ": ", arg, " must be on x's device ", x.device(), ", got ",
                   t.device());
}

inline void check_shape(const Tensor& t, at::IntArrayRef want, const char* op, const char* arg) {
  PYDL_CHECK_VALUE(t.sizes() == want, op, ": ", arg, " must have shape ", want, ", got ", t.sizes());
}

inline void check_cell(int64_t G, const Tensor& x, const Tensor& hx, const Tensor* cx, const Tensor& w_ih,
                       const Tensor& w_hh, const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                       c10::DeviceType dev, const char* op) {
  check_device(x, dev, op, "x");
  check_floating(x, op, "x");
  PYDL_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (batch, input_size), got ", x.sizes());
  check_like(w_hh, x, op, "w_hh");
  PYDL_CHECK_VALUE(w_hh.dim() == 2 && w_hh.size(0) == G * w_hh.size(1), op, ": w_hh must have shape (", G,
                   "*hidden, hidden), got ", w_hh.sizes());
  const int64_t B = x.size(0), I = x.size(1), H = w_hh.size(1);
  // Batch 0 or hidden size 0 means empty outputs; torch.ops.pydl.* returns them without calling a kernel (a
  // CUDA launch of zero blocks is an error). input_size 0 is fine: the input GEMM then adds nothing.
  PYDL_CHECK_VALUE(B > 0 && H > 0, op, ": empty input (batch ", B, ", hidden ", H,
                   ") is not supported by the compiled kernel; torch.ops.pydl.", op, " handles it");
  check_like(w_ih, x, op, "w_ih");
  check_shape(w_ih, {G * H, I}, op, "w_ih");
  check_like(hx, x, op, "hx");
  check_shape(hx, {B, H}, op, "hx");
  if (cx) {
    check_like(*cx, x, op, "cx");
    check_shape(*cx, {B, H}, op, "cx");
  }
  PYDL_CHECK_VALUE(b_ih.has_value() == b_hh.has_value(), op, ": give both biases or neither");
  if (b_ih) {
    check_like(*b_ih, x, op, "b_ih");
    check_shape(*b_ih, {G * H}, op, "b_ih");
    check_like(*b_hh, x, op, "b_hh");
    check_shape(*b_hh, {G * H}, op, "b_hh");
  }
}

inline void check_seq(int64_t G, const Tensor& x, const Tensor& h0, const Tensor* c0, at::TensorList weights,
                      const std::optional<Tensor>& mask, int64_t L, bool bidir, bool has_bias, c10::DeviceType dev,
                      const char* op) {
  check_device(x, dev, op, "x");
  check_floating(x, op, "x");
  PYDL_CHECK_VALUE(x.dim() == 3, op, ": x must be 3-D (seq, batch, input_size), got ", x.sizes());
  PYDL_CHECK_VALUE(L >= 1, op, ": num_layers must be >= 1, got ", L);
  const int64_t D = bidir ? 2 : 1, nw = has_bias ? 4 : 2;
  PYDL_CHECK_VALUE(int64_t(weights.size()) == L * D * nw, op, ": expected ", L * D * nw, " weight tensors, got ",
                   weights.size());
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  PYDL_CHECK_VALUE(T > 0 && B > 0 && I > 0, op, ": empty input of shape ", x.sizes(), " is not supported");
  check_like(weights[1], x, op, "weights[1]");
  PYDL_CHECK_VALUE(weights[1].dim() == 2 && weights[1].size(0) == G * weights[1].size(1) && weights[1].size(1) > 0,
                   op, ": w_hh must have shape (", G, "*hidden, hidden), got ", weights[1].sizes());
  const int64_t H = weights[1].size(1);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t in = l == 0 ? I : D * H;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = (l * D + d) * nw;
      const std::vector<int64_t> shapes[4] = {{G * H, in}, {G * H, H}, {G * H}, {G * H}};
      const char* names[4] = {"w_ih", "w_hh", "b_ih", "b_hh"};
      for (int64_t j = 0; j < nw; ++j) {
        check_like(weights[k + j], x, op, "weights[i]");
        PYDL_CHECK_VALUE(weights[k + j].sizes() == at::IntArrayRef(shapes[j]), op, ": weights[", k + j, "] (",
                         names[j], " of layer ", l, d ? " reverse" : "", ") must have shape ",
                         at::IntArrayRef(shapes[j]), ", got ", weights[k + j].sizes());
      }
    }
  }
  check_like(h0, x, op, "h0");
  check_shape(h0, {L * D, B, H}, op, "h0");
  if (c0) {
    check_like(*c0, x, op, "c0");
    check_shape(*c0, {L * D, B, H}, op, "c0");
  }
  if (mask) {
    check_like(*mask, x, op, "dropout_mask");
    check_shape(*mask, {L - 1, T, B, D * H}, op, "dropout_mask");
  }
}

// The backward ops take the forward's inputs and saved tensors back. A direct call can pass anything, and
// the kernels size their buffers from some arguments while indexing others with the same sizes (gates from
// `gates`, columns from `cy`): every argument must have exactly the shape the forward gave it.
inline void check_acc(const Tensor& t, const Tensor& x, at::IntArrayRef want, const char* op, const char* arg) {
  check_floating(t, op, arg);
  const auto acc = acc_type(x.scalar_type());
  PYDL_CHECK_TYPE(t.scalar_type() == acc, op, ": ", arg, " must be ", acc, " (what the forward saves for ",
                  x.scalar_type(), " input), got ", t.scalar_type());
  PYDL_CHECK_VALUE(t.device() == x.device(), op, ": ", arg, " must be on x's device ", x.device(), ", got ",
                   t.device());
  check_shape(t, want, op, arg);
}

inline void check_like_shape(const Tensor& t, const Tensor& x, at::IntArrayRef want, const char* op,
                             const char* arg) {
  check_like(t, x, op, arg);
  check_shape(t, want, op, arg);
}

// saved: the LSTM's `gates` or the GRU's `ws`, both (B, 4H) in the accumulation dtype.
inline void check_cell_backward(int64_t G, const Tensor& grad_hy, const Tensor* grad_cy, const Tensor& x,
                                const Tensor& hx, const Tensor* cx, const Tensor& w_ih, const Tensor& w_hh,
                                const Tensor& saved, const Tensor* cy, c10::DeviceType dev, const char* op) {
  check_cell(G, x, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt, dev, op);
  const int64_t B = x.size(0), H = w_hh.size(1);
  check_like_shape(grad_hy, x, {B, H}, op, "grad_hy");
  if (grad_cy) check_like_shape(*grad_cy, x, {B, H}, op, "grad_cy");
  if (cy) check_like_shape(*cy, x, {B, H}, op, "cy");
  check_acc(saved, x, {B, 4 * H}, op, G == 4 ? "gates" : "ws");
}

inline void check_seq_backward(bool is_lstm, const Tensor& grad_out, const Tensor& grad_hn, const Tensor* grad_cn,
                               const Tensor& x, const Tensor& h0, const Tensor* c0, at::TensorList weights,
                               const std::optional<Tensor>& mask, const Tensor& out, const Tensor& reserve,
                               const Tensor& layer_outs, int64_t L, bool bidir, bool has_bias, c10::DeviceType dev,
                               const char* op) {
  check_seq(is_lstm ? 4 : 3, x, h0, c0, weights, mask, L, bidir, has_bias, dev, op);
  const int64_t T = x.size(0), B = x.size(1), D = bidir ? 2 : 1, H = weights[1].size(1);
  check_like_shape(grad_out, x, {T, B, D * H}, op, "grad_out");
  check_like_shape(grad_hn, x, {L * D, B, H}, op, "grad_hn");
  if (grad_cn) check_like_shape(*grad_cn, x, {L * D, B, H}, op, "grad_cn");
  check_like_shape(out, x, {T, B, D * H}, op, "out");
  check_like_shape(layer_outs, x, {std::max<int64_t>(L - 1, 0), T, B, D * H}, op, "layer_outs");
  const int64_t per = T * B * (is_lstm ? 5 : 4) * H;
  PYDL_CHECK_VALUE(!(reserve.dim() == 2 && reserve.size(1) == 0), op,
                   ": reserve is empty: the forward ran with need_reserve=False and saved nothing for a backward");
  check_acc(reserve, x, {L * D, per}, op, "reserve");
}

// ---- cells ---------------------------------------------------------------------------------------------

template <class PW>
std::tuple<Tensor, Tensor, Tensor> lstm_cell(const Tensor& x, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                                             const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                             const std::optional<Tensor>& b_hh) {
  const at::NoGradGuard no_grad;  // plain kernels: callable directly, even on tensors that require grad
  const auto acc = acc_type(x.scalar_type());
  const int64_t B = hx.size(0), H = hx.size(1);
  auto gates = at::empty({B, 4 * H}, x.options().dtype(acc));
  auto c = at::empty({B, H}, x.options().dtype(acc));
  auto h = at::empty({B, H}, x.options());
  const Tensor bi = b_ih ? *b_ih : Tensor(), bh = b_hh ? *b_hh : Tensor();
  Tensor pre = lstm_input_gemm(x, w_ih, bi, bh);
  pre.addmm_(hx, w_hh.t());
  PW::lstm_fwd(pre, cx.to(acc).contiguous(), gates, c, h);
  return {h, c.to(x.scalar_type()), gates};
}

template <class PW>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward(
    const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& x, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& gates, const Tensor& cy, bool need_dx, bool need_dh) {
  const at::NoGradGuard no_grad;  // plain kernels: callable directly, even on tensors that require grad
  const auto acc = gates.scalar_type();
  auto dG = at::empty(gates.sizes(), x.options());
  auto dc = grad_cy.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();  // PW writes into it
  PW::lstm_bwd(rows(grad_hy), at::zeros_like(grad_hy), dc, rows(gates), cy.to(acc).contiguous(),
               cx.to(acc).contiguous(), dG, dc);
  auto db = dG.sum(0, false, acc).to(x.scalar_type());
  const Tensor skipped = at::empty({0}, x.options());  // a gradient autograd does not need: GEMM skipped
  return {need_dx ? at::mm(dG, w_ih) : skipped, need_dh ? at::mm(dG, w_hh) : skipped, dc.to(x.scalar_type()),
          at::mm(dG.t(), x), at::mm(dG.t(), hx), db};
}

template <class PW>
std::tuple<Tensor, Tensor> gru_cell(const Tensor& x, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  const at::NoGradGuard no_grad;  // plain kernels: callable directly, even on tensors that require grad
  const auto acc = acc_type(x.scalar_type());
  const int64_t B = hx.size(0), H = hx.size(1);
  auto ws = at::empty({B, 4 * H}, x.options().dtype(acc));
  auto h = at::empty({B, H}, x.options());
  const Tensor bi = b_ih ? *b_ih : Tensor(), bh = b_hh ? *b_hh : Tensor();
  PW::gru_fwd(linear(x, w_ih, bi), linear(hx, w_hh, bh), rows(hx), ws, h);
  return {h, ws};
}

template <class PW>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_cell_backward(const Tensor& grad_hy, const Tensor& x,
                                                                             const Tensor& hx, const Tensor& w_ih,
                                                                             const Tensor& w_hh, const Tensor& ws,
                                                                             bool need_dx, bool need_dh) {
  const at::NoGradGuard no_grad;  // plain kernels: callable directly, even on tensors that require grad
  const auto acc = ws.scalar_type();
  const int64_t B = hx.size(0), H = hx.size(1);
  auto dGi = at::empty({B, 3 * H}, x.options());
  auto dGh = at::empty({B, 3 * H}, x.options());
  auto dh_dir = at::zeros({B, H}, x.options().dtype(acc));
  PW::gru_bwd(rows(grad_hy), at::zeros_like(grad_hy), dh_dir, rows(ws), rows(hx), dGi, dGh, dh_dir);
  const Tensor skipped = at::empty({0}, x.options());
  auto dhx = need_dh ? (dh_dir + at::mm(dGh, w_hh).to(acc)).to(x.scalar_type()) : skipped;
  return {need_dx ? at::mm(dGi, w_ih) : skipped, dhx, at::mm(dGi.t(), x), at::mm(dGh.t(), hx),
          dGi.sum(0, false, acc).to(x.scalar_type()), dGh.sum(0, false, acc).to(x.scalar_type())};
}

// ---- whole sequences -------------------------------------------------------------------------------------

// One direction of one layer, forward: everything its time loop reads and writes.
struct FwdRec {
  bool is_lstm = true, reverse = false;
  Tensor x;             // (T, B, I) contiguous: the layer's input (the region makes the input projection)
  Tensor w_ih, w_hh;    // (G*H, I), (G*H, H)
  Tensor b_ih, b_hh;    // (G*H) each, undefined without bias
  Tensor h0, c0;        // (B, H), unit column stride; c0 (LSTM) in the accumulation dtype
  Tensor hcols;         // (T, B, H) view of the output, where h of every step goes
  Tensor saved, cs;     // need_reserve: LSTM gates / GRU ws (T, B, 4H), LSTM c (T, B, H); else undefined
  Tensor c_last;        // set by seq_fwd (LSTM): the last step's c, (B, H) in the accumulation dtype
};

// One direction of one layer, backward (the reverse time loop; the weight GEMMs stay in the driver).
struct BwdRec {
  bool is_lstm = true, reverse = false;
  Tensor w_hh;
  Tensor dcols;         // (T, B, H) view of dL/d(output)
  Tensor dh_last;       // (B, H): dL/dh of the last step processed (grad_hn)
  Tensor dc;            // LSTM: (B, H) acc, dL/dc_T in, dL/dc_0 out (updated in place)
  Tensor saved, cs, c0; // LSTM gates (T, B, 4H), c (T, B, H), c0 (B, H) acc; GRU: saved = ws
  Tensor hcols, h0;     // GRU: h_{t-1} of every step
  Tensor dGi, dGh;      // (T, B, G*H) outputs (the same tensor for the LSTM)
  Tensor dh_dir;        // GRU: (B, H) acc, the gradient through z * h_{t-1}, updated in place
  Tensor db_i, db_h;    // (G*H) outputs when the layer has biases, else undefined: dGi / dGh summed over T, B
};

template <class PW, class = void>
struct has_seq_region : std::false_type {};
template <class PW>
struct has_seq_region<PW, std::void_t<decltype(&PW::seq_takes), decltype(&PW::seq_fwd), decltype(&PW::seq_bwd)>>
    : std::true_type {};

// Step s of direction d runs time t = s (forward) or T-1-s (reverse).
inline int64_t step_time(int64_t s, int64_t d, int64_t T) { return d == 0 ? s : T - 1 - s; }

// Returns (out, hn, cn [undefined for GRU], reserve, layer_outs).
template <class PW>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> seq_forward(bool is_lstm, const Tensor& x_in, const Tensor& h0,
                                                               const Tensor& c0, at::TensorList weights,
                                                               const std::optional<Tensor>& mask, int64_t L,
                                                               bool bidir, bool has_bias, bool need_reserve) {
  const at::NoGradGuard no_grad;  // plain kernels: callable directly, even on tensors that require grad
  const Tensor x = x_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), D = bidir ? 2 : 1, H = weights[1].size(1);
  const int64_t G = is_lstm ? 4 : 3, R = is_lstm ? 5 : 4;
  const auto acc = acc_type(x.scalar_type());
  // need_reserve = false (inference): gates and cell states go to a per-step scratch that stays in cache
  auto reserve = at::empty({L * D, need_reserve ? T * B * R * H : 0}, x.options().dtype(acc));
  Tensor scratch, c_scratch;
  if (!need_reserve) {
    scratch = at::empty({B, 4 * H}, x.options().dtype(acc));
    c_scratch = at::empty({2, B, H}, x.options().dtype(acc));  // this step's and the previous step's c
  }
  auto layer_outs = at::empty({std::max<int64_t>(L - 1, 0), T, B, D * H}, x.options());
  auto hn = at::empty({L * D, B, H}, x.options());
  Tensor cn = is_lstm ? at::empty({L * D, B, H}, x.options()) : Tensor();
  auto hg = at::empty({B, G * H}, x.options());  // GRU: the per-step recurrent GEMM's output, reused every step
  Tensor inp = x, out;
  for (int64_t l = 0; l < L; ++l) {
    out = l < L - 1 ? layer_outs[l] : at::empty({T, B, D * H}, x.options());
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const LayerW W = layer_weights(weights, k, has_bias);
      const Tensor hcols = out.narrow(2, d * H, H);
      Tensor h_prev = h0[k];
      const Tensor res = reserve[k];
      if constexpr (has_seq_region<PW>::value) {
        if (PW::seq_takes(x)) {
          FwdRec r;
          r.is_lstm = is_lstm;
          r.reverse = d == 1;
          r.x = inp;
          r.w_ih = W.w_ih;
          r.w_hh = W.w_hh;
          r.b_ih = W.b_ih;
          r.b_hh = W.b_hh;
          r.h0 = rows(h0[k]);
          r.hcols = hcols;
          if (is_lstm) r.c0 = c0[k].to(acc).contiguous();
          if (need_reserve) {
            r.saved = res.narrow(0, 0, T * B * 4 * H).view({T, B, 4 * H});
            if (is_lstm) r.cs = res.narrow(0, T * B * 4 * H, T * B * H).view({T, B, H});
          }
          PW::seq_fwd(r);
          hn[k].copy_(hcols[step_time(T - 1, d, T)]);
          if (is_lstm) cn[k].copy_(r.c_last);
          continue;
        }
      }
      // 1) the input projections of all T steps: one big GEMM
      const Tensor inp2 = inp.reshape({T * B, -1});
      const Tensor xg = (is_lstm ? lstm_input_gemm(inp2, W.w_ih, W.b_ih, W.b_hh) : linear(inp2, W.w_ih, W.b_ih))
                            .view({T, B, G * H});
      // W_hh^T made contiguous once: MKL's small per-step GEMM runs ~20% faster on it than on a transposed view
      const Tensor w_hh_t = W.w_hh.t().contiguous();
      if (is_lstm) {
        Tensor gates, cs;
        if (need_reserve) {
          gates = res.narrow(0, 0, T * B * 4 * H).view({T, B, 4 * H});
          cs = res.narrow(0, T * B * 4 * H, T * B * H).view({T, B, H});
        }
        Tensor c_prev = c0[k].to(acc).contiguous();
        for (int64_t s = 0; s < T; ++s) {  // 2) the recurrence: one GEMM + one fused pointwise kernel per step
          const int64_t t = step_time(s, d, T);
          Tensor pre = xg[t];
          pre.addmm_(h_prev, w_hh_t);  // xg[t] += h W_hh^T, in place
          Tensor g_t = need_reserve ? gates[t] : scratch, c_t = need_reserve ? cs[t] : c_scratch[s % 2];
          Tensor h_t = hcols[t];
          PW::lstm_fwd(pre, c_prev, g_t, c_t, h_t);
          h_prev = h_t;
          c_prev = c_t;
        }
        cn[k].copy_(c_prev);
      } else {
        const Tensor ws = need_reserve ? res.view({T, B, 4 * H}) : Tensor();
        for (int64_t s = 0; s < T; ++s) {
          const int64_t t = step_time(s, d, T);
          linear_out(hg, h_prev, w_hh_t, W.b_hh);
          Tensor w_t = need_reserve ? ws[t] : scratch, h_t = hcols[t];
          PW::gru_fwd(xg[t], hg, rows(h_prev), w_t, h_t);
          h_prev = h_t;
        }
      }
      hn[k].copy_(h_prev);
    }
    inp = (mask && l < L - 1) ? out * (*mask)[l] : out;
  }
  return {out, hn, cn, reserve, layer_outs};
}

// Returns (grad_x, grad_h0, grad_c0 [undefined for GRU], grad_weights).
template <class PW>
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> seq_backward(
    bool is_lstm, const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& x_in,
    const Tensor& h0, const Tensor& c0, at::TensorList weights, const std::optional<Tensor>& mask,
    const Tensor& out_in, const Tensor& reserve_in, const Tensor& layer_outs_in, int64_t L, bool bidir,
    bool has_bias, bool need_dx) {
  const at::NoGradGuard no_grad;  // plain kernels: callable directly, even on tensors that require grad
  // The saved tensors are read through views of their rows (unit column stride assumed): a direct call may
  // pass strided ones. contiguous() is free for what the forward returned.
  const Tensor x = x_in.contiguous(), out = out_in.contiguous(), reserve = reserve_in.contiguous(),
               layer_outs = layer_outs_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), D = bidir ? 2 : 1, H = weights[1].size(1);
  const int64_t G = is_lstm ? 4 : 3, nw = has_bias ? 4 : 2;
  const auto acc = reserve.scalar_type();
  std::vector<Tensor> grad_w(weights.size());
  auto g_h0 = at::empty(h0.sizes(), h0.options());
  Tensor g_c0 = is_lstm ? at::empty(c0.sizes(), c0.options()) : Tensor();
  Tensor d_out = grad_out.contiguous();  // dL/d(output of the current layer)
  Tensor d_inp;
  auto dh_buf = at::empty({B, H}, x.options());  // dL/dh through W_hh, one GEMM per step
  for (int64_t l = L - 1; l >= 0; --l) {
    Tensor inp = l == 0 ? x : (mask ? layer_outs[l - 1] * (*mask)[l - 1] : layer_outs[l - 1]);
    const Tensor out_l = l == L - 1 ? out : layer_outs[l];
    d_inp = Tensor();
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const LayerW W = layer_weights(weights, k, has_bias);
      const Tensor hcols = out_l.narrow(2, d * H, H);
      const Tensor dcols = d_out.narrow(2, d * H, H);
      const Tensor res = reserve[k];
      Tensor dh_rec = rows(grad_hn[k]);  // the seed: dL/dh of the last step processed
      Tensor dGi, dGh;
      bool region = false;
      if constexpr (has_seq_region<PW>::value) {
        if (PW::seq_takes(x)) {
          region = true;
          BwdRec r;
          r.is_lstm = is_lstm;
          r.reverse = d == 1;
          r.w_hh = W.w_hh;
          r.dcols = dcols;
          r.dh_last = dh_rec;
          if (is_lstm) {
            r.saved = res.narrow(0, 0, T * B * 4 * H).view({T, B, 4 * H});
            r.cs = res.narrow(0, T * B * 4 * H, T * B * H).view({T, B, H});
            r.c0 = c0[k].to(acc).contiguous();
            r.dc = grad_cn[k].to(acc, false, /*copy=*/true).contiguous();
            r.dGi = r.dGh = at::empty({T, B, 4 * H}, x.options());
          } else {
            r.saved = res.view({T, B, 4 * H});
            r.hcols = hcols;
            r.h0 = rows(h0[k]);
            r.dh_dir = at::zeros({B, H}, x.options().dtype(acc));
            r.dGi = at::empty({T, B, 3 * H}, x.options());
            r.dGh = at::empty({T, B, 3 * H}, x.options());
          }
          if (has_bias) {
            r.db_i = at::empty({G * H}, x.options());
            r.db_h = at::empty({G * H}, x.options());
          }
          PW::seq_bwd(r);
          dGi = r.dGi;
          dGh = r.dGh;
          if (has_bias) {
            grad_w[k * nw + 2] = r.db_i;
            grad_w[k * nw + 3] = r.db_h;
          }
          at::mm_out(dh_buf, dGh[step_time(0, d, T)], W.w_hh);  // the step before the first: dL/dh0 via W_hh
          if (is_lstm) {
            g_h0[k].copy_(dh_buf);
            g_c0[k].copy_(r.dc);
          } else {
            g_h0[k].copy_(dh_buf.to(acc) + r.dh_dir);
          }
        }
      }
      if (!region && is_lstm) {
        const Tensor gates = res.narrow(0, 0, T * B * 4 * H).view({T, B, 4 * H});
        const Tensor cs = res.narrow(0, T * B * 4 * H, T * B * H).view({T, B, H});
        const Tensor c0k = c0[k].to(acc).contiguous();
        Tensor dc = grad_cn[k].to(acc, false, /*copy=*/true).contiguous();
        dGi = dGh = at::empty({T, B, 4 * H}, x.options());
        for (int64_t s = T - 1; s >= 0; --s) {  // the steps in the reverse of the order they ran
          const int64_t t = step_time(s, d, T);
          const Tensor c_prev = s > 0 ? cs[step_time(s - 1, d, T)] : c0k;
          Tensor dG_t = dGi[t];
          PW::lstm_bwd(rows(dcols[t]), dh_rec, dc, gates[t], cs[t], c_prev, dG_t, dc);
          at::mm_out(dh_buf, dG_t, W.w_hh);
          dh_rec = dh_buf;
        }
        g_h0[k].copy_(dh_rec);
        g_c0[k].copy_(dc);
      } else if (!region) {
        const Tensor ws = res.view({T, B, 4 * H});
        auto dh_dir = at::zeros({B, H}, x.options().dtype(acc));
        dGi = at::empty({T, B, 3 * H}, x.options());
        dGh = at::empty({T, B, 3 * H}, x.options());
        for (int64_t s = T - 1; s >= 0; --s) {
          const int64_t t = step_time(s, d, T);
          const Tensor h_prev = s > 0 ? hcols[step_time(s - 1, d, T)] : rows(h0[k]);
          Tensor gi = dGi[t], gh = dGh[t];
          PW::gru_bwd(rows(dcols[t]), dh_rec, dh_dir, ws[t], h_prev, gi, gh, dh_dir);
          at::mm_out(dh_buf, gh, W.w_hh);
          dh_rec = dh_buf;
        }
        g_h0[k].copy_(dh_rec.to(acc) + dh_dir);
      }
      // 3) weight gradients: big GEMMs over all steps at once
      const Tensor dGi2 = dGi.view({T * B, G * H}), dGh2 = dGh.view({T * B, G * H});
      grad_w[k * nw] = at::mm(dGi2.t(), inp.reshape({T * B, -1}));
      // dW_hh = sum_t dGh[t]^T h_{t-1}; h_{t-1} is the previous step's output (h0 for the first step)
      const int64_t first = d == 0 ? 0 : T - 1;
      Tensor gw_hh = at::mm(dGh[first].t(), h0[k]);
      if (T > 1) {
        const Tensor dg_rest = dGh.narrow(0, d == 0 ? 1 : 0, T - 1).reshape({-1, G * H});
        const Tensor h_rest = hcols.narrow(0, d == 0 ? 0 : 1, T - 1).reshape({-1, H});
        gw_hh = at::addmm(gw_hh, dg_rest.t(), h_rest);
      }
      grad_w[k * nw + 1] = gw_hh;
      if (has_bias && !region) {
        grad_w[k * nw + 2] = dGi2.sum(0, false, acc).to(x.scalar_type());
        grad_w[k * nw + 3] = is_lstm ? grad_w[k * nw + 2].clone() : dGh2.sum(0, false, acc).to(x.scalar_type());
      }
      // 4) dL/d(layer input), summed over the directions (skipped for x itself when it needs no gradient)
      if (l > 0 || need_dx) d_inp = d_inp.defined() ? at::addmm(d_inp, dGi2, W.w_ih) : at::mm(dGi2, W.w_ih);
    }
    if (!d_inp.defined()) return {at::empty({0}, x.options()), g_h0, g_c0, grad_w};
    d_inp = d_inp.view({T, B, -1});
    if (l > 0) d_out = mask ? d_inp * (*mask)[l - 1] : d_inp;
  }
  return {d_inp, g_h0, g_c0, grad_w};
}

}  // namespace rnn
}  // namespace pydl
