// The pipelined step of the channel-fused backward plan (plan.h): the
// gradient sums of the next channel group are taken while the current group's
// dx is written, in one loop, as stats_apply.h does for the forward
// statistics. Each unit's sums are those GradSumsNchwUnits gives, bit for bit:
// the same kernels run with the writes interleaved between their steps.
#ifndef BNORM_SRC_GRAD_SUMS_APPLY_H_
#define BNORM_SRC_GRAD_SUMS_APPLY_H_

#include <cstdint>

#include "backward_apply.h"
#include "dtype.h"
#include "moments.h"

namespace bnorm {

// The reduction half: the units of NCHW channels [c0, c1) (the
// ReductionPlan's cut, as in NchwStatsUnits), around the channels' means;
// unit k of channel ch is written to partials[ch * units_per_channel + k].
struct NchwGradUnits {
  int64_t c0, c1;
  int64_t units_per_channel, unit_len;
  const float* mean;  // indexed by channel
  GradSums* partials;
  bool from_memory;  // UnitsFromMemory (batchnorm.cc): see ShortRunAhead
};

// Whether GradSumsWhileApplying runs for this target, dtype, tensors and run
// length at all (it also declines a group too small to pace a store unit).
// With the CPU's policy it decides the plan's step to the next group, which
// sizes the channel groups (ChooseNextGroup, NextGroup in plan.h).
bool GradSumsWhileApplyingRuns(int64_t target, DType dtype, const GradArgs& args, int64_t spatial);

// Sums `units` of (x, dy; dy masked where the fused ReLU's y <= 0 when
// args.y is set) while writing dx, and dz when args.dz is set, for channels
// [a0, a1) of every image (constants of those channels set; none of the
// channels of `units`).
// Returns false, doing nothing, where it does not apply
// (GradSumsWhileApplyingRuns, or a group too small): the caller then runs the
// two halves one after the other.
bool GradSumsWhileApplying(int64_t target, DType dtype, const GradArgs& args, void* dx, int64_t n,
                           int64_t c, int64_t spatial, const NchwGradUnits& units, int64_t a0,
                           int64_t a1, const GradConstants& k, bool stream);

}  // namespace bnorm

#endif  // BNORM_SRC_GRAD_SUMS_APPLY_H_
