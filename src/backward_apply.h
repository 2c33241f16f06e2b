// Backward elementwise kernels:
//   training: dx = (dy - mean_dy) * a + (x - mean) * b
//   frozen:   dx = dy * a            (x is not read)
// with constants per channel (NCHW) or per position of a period (NHWC).
#ifndef BNORM_SRC_BACKWARD_APPLY_H_
#define BNORM_SRC_BACKWARD_APPLY_H_

#include <cstdint>

namespace bnorm {

struct GradConstants {
  const float* mean;
  const float* mean_dy;
  const float* a;
  const float* b;
};

// x == nullptr selects the frozen form. dx may equal dy.
void GradApplyNchw(int64_t target, const float* x, const float* dy, float* dx, int64_t c,
                   int64_t spatial, int64_t begin, int64_t end, const GradConstants& k);
void GradApplyNhwc(int64_t target, const float* x, const float* dy, float* dx, int64_t period,
                   int64_t begin, int64_t end, const GradConstants& k);

}  // namespace bnorm

#endif  // BNORM_SRC_BACKWARD_APPLY_H_
