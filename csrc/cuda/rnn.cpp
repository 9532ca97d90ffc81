// ATen glue for the CUDA LSTM/GRU: the time loop and the GEMMs (cuBLAS through ATen: at::mm / addmm_ into
// preallocated buffers) come from csrc/rnn_driver.h, shared with the CPU backend; the fused pointwise
// kernels of each step are launched here (rnn.cu, plain C++ launchers). cuBLAS is never included directly:
// this toolkit has no cuBLAS headers, and ATen already links it.
#include <torch/library.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common.h"
#include "schemas.h"
#include "cuda/common_cuda.h"
#include "cuda/rnn.h"
#include "rnn_driver.h"

namespace pydl {
namespace {

using at::Tensor;

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

// The pointwise kernels of one step, with the signatures csrc/rnn_driver.h expects.
struct CudaPW {
  static void lstm_fwd(const Tensor& pre, const Tensor& c_prev, Tensor& gates, Tensor& c, Tensor& h) {
    cuda::LstmFwdArgs a;
    a.dtype = to_dtype(h.scalar_type(), "rnn");
    a.B = h.size(0); a.H = h.size(1);
    a.pre = pre.data_ptr(); a.s_pre = pre.stride(0);
    a.c_prev = c_prev.data_ptr(); a.s_cp = c_prev.stride(0);
    a.gates = gates.data_ptr(); a.s_g = gates.stride(0);
    a.c = c.data_ptr(); a.s_c = c.stride(0);
    a.h = h.data_ptr(); a.s_h = h.stride(0);
    check_launch("rnn", cuda::lstm_fwd_launch(a, stream()), "lstm forward");
  }

  static void lstm_bwd(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dc, const Tensor& gates,
                       const Tensor& c, const Tensor& c_prev, Tensor& dG, Tensor& dc_prev) {
    cuda::LstmBwdArgs a;
    a.dtype = to_dtype(dG.scalar_type(), "rnn");
    a.B = c.size(0); a.H = c.size(1);
    a.dh_out = dh_out.data_ptr(); a.s_dho = dh_out.stride(0);
    a.dh_rec = dh_rec.data_ptr(); a.s_dhr = dh_rec.stride(0);
    a.dc = dc.data_ptr(); a.s_dc = dc.stride(0);
    a.gates = gates.data_ptr(); a.s_g = gates.stride(0);
    a.c = c.data_ptr(); a.s_c = c.stride(0);
    a.c_prev = c_prev.data_ptr(); a.s_cp = c_prev.stride(0);
    a.dG = dG.data_ptr(); a.s_dG = dG.stride(0);
    a.dc_prev = dc_prev.data_ptr(); a.s_dcp = dc_prev.stride(0);
    check_launch("rnn", cuda::lstm_bwd_launch(a, stream()), "lstm backward");
  }

  static void gru_fwd(const Tensor& xg, const Tensor& hg, const Tensor& h_prev, Tensor& ws, Tensor& h) {
    cuda::GruFwdArgs a;
    a.dtype = to_dtype(h.scalar_type(), "rnn");
    a.B = h.size(0); a.H = h.size(1);
    a.xg = xg.data_ptr(); a.s_xg = xg.stride(0);
    a.hg = hg.data_ptr(); a.s_hg = hg.stride(0);
    a.h_prev = h_prev.data_ptr(); a.s_hp = h_prev.stride(0);
    a.ws = ws.data_ptr(); a.s_ws = ws.stride(0);
    a.h = h.data_ptr(); a.s_h = h.stride(0);
    check_launch("rnn", cuda::gru_fwd_launch(a, stream()), "gru forward");
  }

  static void gru_bwd(const Tensor& dh_out, const Tensor& dh_rec, const Tensor& dh_dir, const Tensor& ws,
                      const Tensor& h_prev, Tensor& dGi, Tensor& dGh, Tensor& dh_dir_out) {
    cuda::GruBwdArgs a;
    a.dtype = to_dtype(dGi.scalar_type(), "rnn");
    a.B = h_prev.size(0); a.H = h_prev.size(1);
    a.dh_out = dh_out.data_ptr(); a.s_dho = dh_out.stride(0);
    a.dh_rec = dh_rec.data_ptr(); a.s_dhr = dh_rec.stride(0);
    a.dh_dir = dh_dir.data_ptr(); a.s_dhd = dh_dir.stride(0);
    a.ws = ws.data_ptr(); a.s_ws = ws.stride(0);
    a.h_prev = h_prev.data_ptr(); a.s_hp = h_prev.stride(0);
    a.dGi = dGi.data_ptr(); a.s_dgi = dGi.stride(0);
    a.dGh = dGh.data_ptr(); a.s_dgh = dGh.stride(0);
    a.dh_dir_out = dh_dir_out.data_ptr(); a.s_dhdo = dh_dir_out.stride(0);
    check_launch("rnn", cuda::gru_bwd_launch(a, stream()), "gru backward");
  }
};

constexpr auto kCUDA = c10::DeviceType::CUDA;

std::tuple<Tensor, Tensor, Tensor> lstm_cell_cuda(const Tensor& x, const Tensor& hx, const Tensor& cx,
                                                  const Tensor& w_ih, const Tensor& w_hh,
                                                  const std::optional<Tensor>& b_ih,
                                                  const std::optional<Tensor>& b_hh) {
  rnn::check_cell(4, x, hx, &cx, w_ih, w_hh, b_ih, b_hh, kCUDA, "lstm_cell");
  const c10::cuda::CUDAGuard guard(x.device());
  return rnn::lstm_cell<CudaPW>(x, hx, cx, w_ih, w_hh, b_ih, b_hh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward_cuda(
    const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& x, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& gates, const Tensor& cy, bool need_dx, bool need_dh) {
  rnn::check_cell_backward(4, grad_hy, &grad_cy, x, hx, &cx, w_ih, w_hh, gates, &cy, kCUDA, "lstm_cell_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  return rnn::lstm_cell_backward<CudaPW>(grad_hy, grad_cy, x, hx, cx, w_ih, w_hh, gates, cy, need_dx,
                                                     need_dh);
}

std::tuple<Tensor, Tensor> gru_cell_cuda(const Tensor& x, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                         const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh) {
  rnn::check_cell(3, x, hx, nullptr, w_ih, w_hh, b_ih, b_hh, kCUDA, "gru_cell");
  const c10::cuda::CUDAGuard guard(x.device());
  return rnn::gru_cell<CudaPW>(x, hx, w_ih, w_hh, b_ih, b_hh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_cell_backward_cuda(
    const Tensor& grad_hy, const Tensor& x, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& ws, bool need_dx, bool need_dh) {
  rnn::check_cell_backward(3, grad_hy, nullptr, x, hx, nullptr, w_ih, w_hh, ws, nullptr, kCUDA, "gru_cell_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  return rnn::gru_cell_backward<CudaPW>(grad_hy, x, hx, w_ih, w_hh, ws, need_dx, need_dh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cuda(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                                             at::TensorList weights, const std::optional<Tensor>& mask,
                                                             int64_t L, bool bidir, bool has_bias,
                                                             bool need_reserve) {
  rnn::check_seq(4, x, h0, &c0, weights, mask, L, bidir, has_bias, kCUDA, "lstm");
  const c10::cuda::CUDAGuard guard(x.device());
  return rnn::seq_forward<CudaPW>(true, x, h0, c0, weights, mask, L, bidir, has_bias, need_reserve);
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_cuda(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& x, const Tensor& h0,
    const Tensor& c0, at::TensorList weights, const std::optional<Tensor>& mask, const Tensor& out,
    const Tensor& reserve, const Tensor& layer_outs, int64_t L, bool bidir, bool has_bias, bool need_dx) {
  rnn::check_seq_backward(true, grad_out, grad_hn, &grad_cn, x, h0, &c0, weights, mask, out, reserve, layer_outs, L,
                           bidir, has_bias, kCUDA, "lstm_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  return rnn::seq_backward<CudaPW>(true, grad_out, grad_hn, grad_cn, x, h0, c0, weights, mask, out, reserve,
                                   layer_outs, L, bidir, has_bias, need_dx);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_cuda(const Tensor& x, const Tensor& h0, at::TensorList weights,
                                                    const std::optional<Tensor>& mask, int64_t L, bool bidir,
                                                    bool has_bias, bool need_reserve) {
  rnn::check_seq(3, x, h0, nullptr, weights, mask, L, bidir, has_bias, kCUDA, "gru");
  const c10::cuda::CUDAGuard guard(x.device());
  auto r = rnn::seq_forward<CudaPW>(false, x, h0, Tensor(), weights, mask, L, bidir, has_bias, need_reserve);
  return {std::get<0>(r), std::get<1>(r), std::get<3>(r), std::get<4>(r)};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> gru_backward_cuda(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& x, const Tensor& h0, at::TensorList weights,
    const std::optional<Tensor>& mask, const Tensor& out, const Tensor& reserve, const Tensor& layer_outs, int64_t L,
    bool bidir, bool has_bias, bool need_dx) {
  rnn::check_seq_backward(false, grad_out, grad_hn, nullptr, x, h0, nullptr, weights, mask, out, reserve, layer_outs,
                           L, bidir, has_bias, kCUDA, "gru_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  auto r = rnn::seq_backward<CudaPW>(false, grad_out, grad_hn, Tensor(), x, h0, Tensor(), weights, mask, out,
                                     reserve, layer_outs, L, bidir, has_bias, need_dx);
  return {std::get<0>(r), std::get<1>(r), std::get<3>(r)};
}

}  // namespace
}  // namespace pydl

// The same schemas as pydl::<op> minus the trailing `str backend` (kept in sync with pydl/ops/rnn.py).
TORCH_LIBRARY_FRAGMENT(pydl_cuda, m) {
  for (const char* s : pydl::schema::rnn) m.def(s);  // csrc/schemas.h
}

TORCH_LIBRARY_IMPL(pydl_cuda, CUDA, m) {
  m.impl("lstm_cell", &pydl::lstm_cell_cuda);
  m.impl("lstm_cell_backward", &pydl::lstm_cell_backward_cuda);
  m.impl("gru_cell", &pydl::gru_cell_cuda);
  m.impl("gru_cell_backward", &pydl::gru_cell_backward_cuda);
  m.impl("lstm", &pydl::lstm_cuda);
  m.impl("lstm_backward", &pydl::lstm_backward_cuda);
  m.impl("gru", &pydl::gru_cuda);
  m.impl("gru_backward", &pydl::gru_backward_cuda);
}
