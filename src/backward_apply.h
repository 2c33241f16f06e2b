// Backward elementwise kernels:
//   training: dx = (dy - mean_dy) * a + (x - mean) * b
//   frozen:   dx = dy * a            (x is not read; pass x == nullptr)
// with constants per channel (NCHW) or per position of a period (NHWC).
// dx may equal dy. With `stream`, dx is written with non-temporal stores.
// x, dy and dx hold elements of `dtype`; offsets count elements.
#ifndef BNORM_SRC_BACKWARD_APPLY_H_
#define BNORM_SRC_BACKWARD_APPLY_H_

#include <cstdint>

#include "dtype.h"
#include "lookahead.h"

namespace bnorm {

struct GradConstants {
  const float* mean;
  const float* mean_dy;
  const float* a;
  const float* b;
};

// NCHW: elements [begin, end) of the flat tensor; prefetches `ahead`
// meanwhile (when spatial >= the lanes).
void GradApplyNchw(int64_t target, DType dtype, const void* x, const void* dy, void* dx, int64_t c,
                   int64_t spatial, int64_t begin, int64_t end, const GradConstants& k,
                   bool stream, const Lookahead& ahead = Lookahead());
// NCHW: channel ch over its values [begin, end) in (i, s) order.
void GradApplyNchwChannel(int64_t target, DType dtype, const void* x, const void* dy, void* dx,
                          int64_t c, int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                          const GradConstants& k, bool stream);
// NHWC: elements [begin, end); constants per position e % period, each array
// holding period + kMaxLanes entries (see StorePeriodic).
void GradApplyNhwc(int64_t target, DType dtype, const void* x, const void* dy, void* dx,
                   int64_t period, int64_t begin, int64_t end, const GradConstants& k,
                   bool stream);

}  // namespace bnorm

#endif  // BNORM_SRC_BACKWARD_APPLY_H_
