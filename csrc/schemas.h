// The schema of every compiled op whose CPU and CUDA libraries take the same arguments, written once: the
// pydl_cpu and pydl_cuda namespaces register the same strings, so the two cannot drift apart. (conv2d's CUDA
// op takes one more argument, allow_tf32, so its schemas stay in its own files.)
//
// These are the *inner* kernels' schemas; the public ops (torch.ops.pydl.*, with a trailing `str backend`)
// are defined in Python, in pydl/ops/<op>.py.
#pragma once

namespace pydl {
namespace schema {
inline constexpr const char* act_stats[] = {
    "act_stats(Tensor x, int bins, float lo, float hi, float eps, bool per_channel) -> (Tensor, Tensor, Tensor)",
};

inline constexpr const char* batch_norm[] = {
    "batch_norm_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
    "bool use_batch_stats, float eps, str act, float leak, float sub, float maxv) -> (Tensor, Tensor, Tensor, Tensor)",
    "batch_norm_update_running(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var, "
    "int count, float? momentum, Tensor? num_batches_tracked) -> ()",
    "batch_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
    "bool use_batch_stats, str act, float leak, float sub, float maxv, bool input_grad) -> (Tensor, Tensor, Tensor)",
    "batch_norm_stats(Tensor x) -> (Tensor, Tensor)",
    "batch_norm_apply(Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, str act, float leak, "
    "float sub, float maxv) -> Tensor",
    "batch_norm_backward_reduce(Tensor dy, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
    "str act, float leak, float sub, float maxv) -> (Tensor, Tensor)",
    "batch_norm_backward_elemt(Tensor dy, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
    "Tensor sum_dz, Tensor sum_dz_xmu, int count, str act, float leak, float sub, float maxv) -> Tensor",
};

inline constexpr const char* rnn[] = {
    "lstm_cell(Tensor x, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
    "-> (Tensor, Tensor, Tensor)",
    "lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor x, Tensor hx, Tensor cx, Tensor w_ih, "
    "Tensor w_hh, Tensor gates, Tensor cy, bool need_dx, bool need_dh) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "gru_cell(Tensor x, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> (Tensor, Tensor)",
    "gru_cell_backward(Tensor grad_hy, Tensor x, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor ws, bool need_dx, "
    "bool need_dh) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "lstm(Tensor x, Tensor h0, Tensor c0, Tensor[] weights, Tensor? dropout_mask, int num_layers, "
    "bool bidirectional, bool has_bias, bool need_reserve=True) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "lstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor h0, Tensor c0, "
    "Tensor[] weights, Tensor? dropout_mask, Tensor out, Tensor reserve, Tensor layer_outs, int num_layers, "
    "bool bidirectional, bool has_bias, bool need_dx) -> (Tensor, Tensor, Tensor, Tensor[])",
    "gru(Tensor x, Tensor h0, Tensor[] weights, Tensor? dropout_mask, int num_layers, bool bidirectional, "
    "bool has_bias, bool need_reserve=True) -> (Tensor, Tensor, Tensor, Tensor)",
    "gru_backward(Tensor grad_out, Tensor grad_hn, Tensor x, Tensor h0, Tensor[] weights, Tensor? dropout_mask, "
    "Tensor out, Tensor reserve, Tensor layer_outs, int num_layers, bool bidirectional, bool has_bias, "
    "bool need_dx) -> (Tensor, Tensor, Tensor[])",
};

}  // namespace schema
}  // namespace pydl
