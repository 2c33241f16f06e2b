// Statistics kernels: per-unit moments (count, mean, M2) of the input from
// shifted block sums (accumulators-inl.h), dispatched to the
// active SIMD target. Units come from the planner (plan.h).
#ifndef BNORM_SRC_STATS_H_
#define BNORM_SRC_STATS_H_

#include <cstdint>

#include "dtype.h"
#include "moments.h"
#include "plan.h"

namespace bnorm {

// Values averaged into a channel's pivot.
constexpr int64_t kPivotValues = 16;

// The first shift of a channel's float sums: the mean (in double, rounded)
// of its first min(kPivotValues, values) values. Shifted values then hover
// near zero and round relative to the spread of the data: the error grows
// with |mean - pivot| / std, about 1/4 here instead of up to ~3 for a single
// sample. Every unit of the channel starts from the same pivot.
// Writes the pivots of channels [c0, c1) to pivots[c0, c1). NHWC sums the
// first rows across the channel range (contiguous), NCHW each channel's run.
void ChannelPivots(int64_t target, DType dtype, const void* x, int64_t c, int64_t spatial,
                   bool nhwc, int64_t values, int64_t c0, int64_t c1, float* pivots);

// NCHW: moments of units [u0, u1) of `cut` (values [begin, end) of a channel
// in (i, s) order; absolute means, not shifted) into partials[u0, u1), each
// unit from pivots[its channel]. reads: where the values come from
// (ReduceReads in plan.h: how the kernels prefetch; the same bits any way).
// The bits of a unit do not depend on the range it comes in, and units are
// taken in one dispatch. Small batches of 7x7 images make units of a few short runs, where
// the dispatch, type switch and set-up of a call per unit took longer than
// its sums (2x1024x49 from L2: about 40 ns per unit, 3.5 ns per run).
void StatsNchwUnits(int64_t target, DType dtype, const void* x, int64_t c, int64_t spatial,
                    const NchwUnitCut& cut, int64_t u0, int64_t u1, const float* pivots,
                    ReduceReads reads, Moments* partials);

// The units of [u0, u1) whose partials are not finite (float sums that
// overflowed or cannot be trusted: the kernels return NaN for those) summed
// again in double. StatsNchwUnits does it; the kernels that sum the next
// group while they write (stats_apply.h) call it after.
void RedoNchwUnits(DType dtype, const void* x, int64_t c, int64_t spatial, const NchwUnitCut& cut,
                   int64_t u0, int64_t u1, Moments* partials);

// NHWC: moments of channels [c0, c0 + width) over rows [row_begin, row_end),
// as arrays: mean[0, width) and m2[0, width), all of count
// row_end - row_begin. Arrays, not Moments: a unit of 64 rows did as much
// per-channel work (the final checks, the merge) as sums per channel, and
// arrays let both run in vectors. rows_per_period > 1 only when width == c
// (then rows_per_period consecutive rows form one contiguous vector row).
// Four vector rows per load of the sums (periods of one to four vectors,
// six or eight on AVX-512, keep their sums in registers instead);
// rows_ahead: prefetch the rows kStreamPrefetchBytes ahead (a speed choice
// only: ExecutionPlan::reduce_ahead).
void StatsNhwcUnit(int64_t target, DType dtype, const void* x, int64_t c, int64_t c0, int64_t width,
                   int64_t rows_per_period, int64_t row_begin, int64_t row_end,
                   const float* pivots /* c floats */, bool rows_ahead,
                   double* mean, double* m2);

}  // namespace bnorm

#endif  // BNORM_SRC_STATS_H_
