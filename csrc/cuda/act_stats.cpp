// ATen glue for the CUDA act_stats kernels: checks, layout, allocation, stream. The kernels themselves are in
// act_stats.cu and see only raw pointers and sizes.
#include <torch/library.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common.h"
#include "schemas.h"
#include "cuda/common_cuda.h"
#include "cuda/act_stats.h"

namespace pydl {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> act_stats_cuda(const at::Tensor& x_in, int64_t bins, double lo,
                                                              double hi, double eps, bool per_channel) {
  check_device(x_in, c10::DeviceType::CUDA, "act_stats", "x");
  check_floating(x_in, "act_stats", "x");
  check_hist_args(bins, lo, hi, eps, x_in.scalar_type() == at::kDouble);
  PYDL_CHECK_VALUE(!per_channel || x_in.dim() >= 2,
                   "act_stats: per_channel needs x of rank >= 2 (N, C, ...), got rank ", x_in.dim());
  const c10::cuda::CUDAGuard guard(x_in.device());

  // Describe the layout as (outer, groups, inner) with element strides; copy only if no such view exists.
  at::Tensor x;
  int64_t outer, groups, inner, so, sg, si;
  if (!per_channel) {
    x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
    outer = 1; groups = 1; inner = x.numel(); so = 0; sg = 0; si = 1;
  } else {
    // (N, C, rest...) -> (N, C, R). reshape is a view for NCHW and channels_last alike (stride C over H*W).
    int64_t rest = 1;
    for (int64_t d = 2; d < x_in.dim(); ++d) rest *= x_in.size(d);
    x = x_in.reshape({x_in.size(0), x_in.size(1), rest});
    outer = x.size(0); groups = x.size(1); inner = x.size(2);
    so = x.stride(0); sg = x.stride(1); si = x.stride(2);
  }
  const bool is_double = x.scalar_type() == at::kDouble;
  auto fstats = at::empty({groups, 4}, x.options().dtype(is_double ? at::kDouble : at::kFloat));
  auto counts = at::zeros({groups, kCountCols}, x.options().dtype(at::kLong));
  auto hist = at::zeros({groups, bins}, x.options().dtype(at::kLong));
  if (groups == 0) return {fstats, counts, hist};

  const int num_sms = cuda_sm_count(x.get_device());
  const int64_t splits = cuda::act_stats_splits(groups, outer * inner, num_sms);
  auto workspace = at::empty({cuda::act_stats_workspace_bytes(groups, splits, is_double)},
                             x.options().dtype(at::kByte));

  cuda::ActStatsArgs a;
  a.x = x.data_ptr();
  a.dtype = to_dtype(x.scalar_type(), "act_stats");
  a.outer = outer; a.groups = groups; a.inner = inner; a.so = so; a.sg = sg; a.si = si;
  a.bins = int32_t(bins); a.lo = lo; a.hi = hi; a.eps = eps;
  a.fstats = fstats.data_ptr();
  a.counts = counts.data_ptr<int64_t>();
  a.hist = hist.data_ptr<int64_t>();
  a.workspace = workspace.data_ptr();
  a.splits = splits;
  const cudaError_t err = cuda::act_stats_launch(a, c10::cuda::getCurrentCUDAStream());
  check_launch("act_stats", err, "launch");
  return {fstats, counts, hist};
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_FRAGMENT(pydl_cuda, m) {
  for (const char* s : pydl::schema::act_stats) m.def(s);  // csrc/schemas.h
}

TORCH_LIBRARY_IMPL(pydl_cuda, CUDA, m) { m.impl("act_stats", &pydl::act_stats_cuda); }
