// conv2d on the CPU, part: the backward's epilogue -- dz = act'(z) * dy once, in the output's layout, with
// grad_bias summed from it (the forward's epilogue is inline, in epilogue.h).
#include <vector>

#include "conv2d_internal.h"
#include "epilogue.h"

namespace pydl {
namespace conv_cpu {

// dz = act'(z) * dy in acc_t (in the output's layout), and grad_bias = sum of dz per channel.
// Returns dz; may return grad_y itself (no copy) when there is no activation and it is already acc_t.
template <typename scalar_t>
at::Tensor make_dz(const Geom& g, const at::Tensor& dy, const at::Tensor& zs, const Act<double>& act_d,
                   at::Tensor* grad_b) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const Act<acc_t> act = cast_act<acc_t>(act_d);
  at::Tensor dz;
  const int64_t total = dy.numel();
  if (act.kind == kActNone && std::is_same<scalar_t, acc_t>::value) {
    dz = dy;
  } else {
    dz = at::empty(dy.sizes(), dy.options().dtype(acc_type).memory_format(
                                    g.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
    const scalar_t* d = dy.data_ptr<scalar_t>();
    const scalar_t* zp = act.kind == kActNone ? nullptr : zs.data_ptr<scalar_t>();
    acc_t* o = dz.data_ptr<acc_t>();
    const acc_t leak = act.leak, sub = act.sub, maxv = act.maxv;
    with_act(act.kind, [&](auto kind_c) {
      constexpr int KIND = decltype(kind_c)::value;
      at::parallel_for(0, total, 1 << 14, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          o[i] = act_bwd<KIND>(acc_t(d[i]), zp ? acc_t(zp[i]) : acc_t(0), leak, sub, maxv);
      });
    });
  }
  if (grad_b != nullptr) {
    // Per-channel sums in acc_t with SIMD lanes (omp simd reduction); the lanes and blocks are merged in a
    // fixed order, so the result is deterministic.
    at::Tensor gb = at::empty({g.Co}, dy.options().dtype(acc_type));
    acc_t* gbp = gb.data_ptr<acc_t>();
    const acc_t* dzp = dz.data_ptr<acc_t>();
    if (!g.cl) {
      at::parallel_for(0, g.Co, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          acc_t s = 0;
          for (int64_t n = 0; n < g.N; ++n) {
            const acc_t* p = dzp + (n * g.Co + c) * g.L;
            acc_t sn = 0;
#pragma omp simd reduction(+ : sn)
            for (int64_t l = 0; l < g.L; ++l) sn += p[l];
            s += sn;
          }
          gbp[c] = s;
        }
      });
    } else {
      const int64_t rows = g.N * g.L;
      const int64_t B = std::max<int64_t>(1, std::min<int64_t>(rows, 4 * at::get_num_threads()));
      std::vector<acc_t> part(B * g.Co, acc_t(0));
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t bi = b0; bi < b1; ++bi) {
          acc_t* __restrict__ s = part.data() + bi * g.Co;
          for (int64_t r = bi * rows / B; r < (bi + 1) * rows / B; ++r) {
            const acc_t* __restrict__ p = dzp + r * g.Co;
            for (int64_t c = 0; c < g.Co; ++c) s[c] += p[c];
          }
        }
      });
      for (int64_t c = 0; c < g.Co; ++c) gbp[c] = 0;
      for (int64_t bi = 0; bi < B; ++bi)
        for (int64_t c = 0; c < g.Co; ++c) gbp[c] += part[bi * g.Co + c];
    }
    *grad_b = gb;
  }
  return dz;
}

#define PYDL_INSTANTIATE(T) \
  template at::Tensor make_dz<T>(const Geom&, const at::Tensor&, const at::Tensor&, const Act<double>&, at::Tensor*);
PYDL_CONV_DTYPES(PYDL_INSTANTIATE)
#undef PYDL_INSTANTIATE

}  // namespace conv_cpu
}  // namespace pydl
