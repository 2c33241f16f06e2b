// Backward elementwise kernels:
//   training: dx = ((g - mean_dy) - (x - mean) * b) * a
//   frozen:   dx = g * a            (x is not read; pass x == nullptr)
// where g = dy, or dy masked where y <= 0 (fused ReLU), also stored to dz.
// with constants per channel (NCHW) or per position of a period (NHWC).
// dx may equal dy. With `stream`, dx is written with non-temporal stores,
// and dz too where DzStreamsWithDx.
// x, dy and dx hold elements of `dtype`; offsets count elements.
#ifndef BNORM_SRC_BACKWARD_APPLY_H_
#define BNORM_SRC_BACKWARD_APPLY_H_

#include <cstdint>

#include "dtype.h"
#include "lookahead.h"

namespace bnorm {

// The input tensors of the backward elementwise pass and the fused
// residual-gradient output: x (null: frozen statistics, x not read), dy, y
// (the fused ReLU's output; null: no mask) and dz (null: not written; may
// equal dy). Tensors hold elements of the call's dtype.
struct GradArgs {
  const void* x = nullptr;
  const void* dy = nullptr;
  const void* y = nullptr;
  void* dz = nullptr;
};

// Whether dz (if any) can take non-temporal stores alongside dx: the same
// offset from a 64-byte boundary, so both are aligned at the same elements
// (framework tensors are 64-byte aligned). Otherwise dz goes through the
// caches while dx is streamed.
inline bool DzStreamsWithDx(const GradArgs& a, const void* dx) {
  return a.dz == nullptr ||
         (reinterpret_cast<uintptr_t>(a.dz) - reinterpret_cast<uintptr_t>(dx)) % 64 == 0;
}

struct GradConstants {
  const float* mean;
  const float* mean_dy;
  const float* a;
  const float* b;
};

// NCHW: elements [begin, end) of the flat tensor; prefetches `ahead`
// meanwhile (when spatial >= the lanes).
void GradApplyNchw(int64_t target, DType dtype, const GradArgs& a, void* dx, int64_t c,
                   int64_t spatial, int64_t begin, int64_t end, const GradConstants& k, bool stream,
                   const Lookahead& ahead = Lookahead());
// NCHW: channel ch over its values [begin, end) in (i, s) order.
void GradApplyNchwChannel(int64_t target, DType dtype, const GradArgs& a, void* dx, int64_t c,
                          int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                          const GradConstants& k, bool stream);
// NHWC: elements [begin, end); constants per position e % period, each array
// holding period + kMaxLanes entries (see StorePeriodic); grouped_rows as
// for NormalizeNhwc.
void GradApplyNhwc(int64_t target, DType dtype, const GradArgs& a, void* dx, int64_t period,
                   int64_t begin, int64_t end, const GradConstants& k, bool stream,
                   bool grouped_rows);

}  // namespace bnorm

#endif  // BNORM_SRC_BACKWARD_APPLY_H_
