// The columns of act_stats' `counts` output, one order for every backend (C++, CUDA, and the Python that reads
// them: pydl/ops/act_stats.py's COUNT_COLS names the same columns, and tests/test_act_stats.py checks that the
// two agree). Plain C++: the CUDA kernels include it too.
#pragma once

namespace pydl {

enum ActStatsCol : int {
  kColCount = 0,     // numel of the group
  kColNearZero = 1,  // |x| <= eps
  kColNaN = 2,       // from here on, one column per slot after the histogram bins (ActStatsExtra)
  kColPosInf = 3,
  kColNegInf = 4,
  kColBelow = 5,     // finite, < lo
  kColAbove = 6,     // finite, > hi
  kCountCols = 7,
};

// Slots of one group's counter row after its `bins` histogram bins: every value lands in exactly one bin or
// one of these, and slot bins + e is counted into column kColNaN + e.
enum ActStatsExtra : int { kNaN = 0, kPosInf = 1, kNegInf = 2, kBelow = 3, kAbove = 4, kNumExtra = 5 };
static_assert(kColNaN + kNumExtra == kCountCols, "the extra slots are the last columns of counts, in order");
static_assert(kColAbove - kColNaN == kAbove, "slot and column orders agree");

}  // namespace pydl
