// Chan, Golub & LeVeque's pairwise merge of two sets' (count, mean, M2): one definition for every compiled
// kernel that merges moments -- the CPU act_stats and batch_norm (in double) and their CUDA kernels (in the
// accumulator type, through cuda/warp_moments.h). docs/ARCHITECTURE.md, "Moments that survive the edge of the
// float range", says why the two guards below are there.
#pragma once

#include "host_device.h"

namespace pydl {

// (n, mean, m2) becomes the moments of its set joined with (nb, mean_b, m2_b)'s. count_t is an integer, or a
// double where a count is used as a weight (CPU batch_norm).
template <typename count_t, typename acc_t>
PYDL_HD void chan_merge(count_t& n, acc_t& mean, acc_t& m2, count_t nb, acc_t mean_b, acc_t m2_b) {
  if (nb == 0) return;
  if (n == 0) {  // not through the formula: delta^2 * 0 is NaN when delta^2 overflowed
    n = nb;
    mean = mean_b;
    m2 = m2_b;
    return;
  }
  const count_t nn = n + nb;
  const acc_t delta = mean_b - mean, w = acc_t(nb) / acc_t(nn);
  // Two finite means far apart (3e38 and -3e38 in float) overflow delta; their convex combination cannot,
  // and M2 is infinite then anyway (its last term is at least delta^2 / 2). `delta - delta == 0` is the
  // finiteness test that needs no <cmath> on a device.
  mean = delta - delta == acc_t(0) ? mean + delta * w : mean * (acc_t(1) - w) + mean_b * w;
  m2 += m2_b + delta * delta * (acc_t(n) * w);
  n = nn;
}

}  // namespace pydl
