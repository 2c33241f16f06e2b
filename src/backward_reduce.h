// Backward reduction kernels: per-unit sum(dy) and sum(dy * (x - mean)),
// accumulated in float lanes over short blocks and in double beyond. x and
// dy hold elements of `dtype`; offsets count elements. With y (the output of
// a fused ReLU; may be null), dy is masked where y <= 0 first.
#ifndef BNORM_SRC_BACKWARD_REDUCE_H_
#define BNORM_SRC_BACKWARD_REDUCE_H_

#include <cstdint>

#include "dtype.h"
#include "moments.h"
#include "plan.h"

namespace bnorm {

// NCHW: the sums of units [u0, u1) of `cut` (values [begin, end) of a
// channel in (i, s) order) into partials[u0, u1), each about mean[its
// channel]; reads as for StatsNchwUnits. The bits of a unit do not depend on
// the range it comes in, and units are taken in one dispatch.
void GradSumsNchwUnits(int64_t target, DType dtype, const void* x, const void* dy, const void* y,
                       int64_t c, int64_t spatial, const NchwUnitCut& cut, int64_t u0, int64_t u1,
                       const float* mean, ReduceReads reads, GradSums* partials);

// The units of [u0, u1) whose partials are not finite (float products or
// sums that overflowed) summed again in double (RedoNchwUnits).
void RedoNchwGradUnits(DType dtype, const void* x, const void* dy, const void* y, int64_t c,
                       int64_t spatial, const NchwUnitCut& cut, int64_t u0, int64_t u1,
                       const float* mean, GradSums* partials);

// NHWC: channels [c0, c0 + width) over rows [row_begin, row_end) into the
// arrays sum_dy[0, width) and sum_dy_xmu[0, width) (arrays, as in
// StatsNhwcUnit); mean holds c floats. rows_per_period and rows_ahead as in
// StatsNhwcUnit; rows_at_once (1 or 4): vector rows per load of the sums
// (ExecutionPlan::reduce_rows_at_once; periods kept in registers ignore it).
void GradSumsNhwcUnit(int64_t target, DType dtype, const void* x, const void* dy, const void* y,
                      int64_t c, int64_t c0, int64_t width, int64_t rows_per_period,
                      int64_t row_begin, int64_t row_end, const float* mean, int64_t rows_at_once,
                      bool rows_ahead, double* sum_dy, double* sum_dy_xmu);

}  // namespace bnorm

#endif  // BNORM_SRC_BACKWARD_REDUCE_H_
