// The pipelined step of the channel-fused forward plan (plan.h): the
// statistics of the next channel group are summed while the current group's
// output is written, in one loop. The next group's reads from memory then
// overlap the current group's writes, as a copy's do, and its sums need no
// pass of their own over L2 (docs/performance-history.md). Each unit's moments are
// those StatsNchwUnits gives, bit for bit: the same kernels run with the writes
// interleaved between their steps.
#ifndef BNORM_SRC_STATS_APPLY_H_
#define BNORM_SRC_STATS_APPLY_H_

#include <cstdint>

#include "dtype.h"
#include "moments.h"
#include "normalize.h"

namespace bnorm {

// The statistics half: the reduction units of NCHW channels [c0, c1) (the
// ReductionPlan's cut: units_per_channel units of unit_len values per
// channel), from the channels' pivots; unit k of channel ch is written to
// partials[ch * units_per_channel + k].
struct NchwStatsUnits {
  int64_t c0, c1;
  int64_t units_per_channel, unit_len;
  const float* pivots;  // indexed by channel
  Moments* partials;
  bool from_memory;  // UnitsFromMemory (batchnorm.cc): see ShortRunAhead
};

// Whether StatsWhileNormalizing runs for this target, dtype and run length at
// all (it also declines a group too small to pace a store unit). With the
// CPU's policy it decides the plan's step to the next group, which sizes the
// channel groups (ChooseNextGroup, NextGroup in plan.h).
bool StatsWhileNormalizingRuns(int64_t target, DType dtype, int64_t spatial);

// Sums `units` of x while writing y = act((x - mean) * scale + shift [+ z])
// for channels [a0, a1) of every image (constants of those channels set;
// none of the channels of `units`). Returns false, doing nothing, where the
// kernels do not apply (StatsWhileNormalizingRuns, or a group too small): the
// caller then runs the two halves one after the other.
bool StatsWhileNormalizing(int64_t target, DType dtype, const void* x, void* y, int64_t n,
                           int64_t c, int64_t spatial, const NchwStatsUnits& units, int64_t a0,
                           int64_t a1, const AffineConstants& k, bool stream, const Epilogue& epi);

}  // namespace bnorm

#endif  // BNORM_SRC_STATS_APPLY_H_
