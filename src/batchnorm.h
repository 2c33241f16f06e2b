// The drivers: each public operation as passes over the tensor (reduction
// units, a per-channel finalize, an elementwise pass) run on the context's
// threads. Arguments are already validated by api.cc; the only failure left is
// running out of scratch memory, which happens before any output is written.
// Tensors hold elements of p.dtype.
#ifndef BNORM_SRC_BATCHNORM_H_
#define BNORM_SRC_BATCHNORM_H_

#include "bnorm/bnorm.h"
#include "normalize.h"
#include "plan.h"

namespace bnorm {

// The forward passes write y = act(BN(x) + z) (epi: z may be null, act
// none or ReLU).
bnorm_status ForwardTraining(const bnorm_context* ctx, const Problem& p, const void* x, void* y,
                             const Epilogue& epi, const float* gamma, const float* beta, float eps,
                             float momentum, float* running_mean, float* running_var,
                             float* save_mean, float* save_invstd);

bnorm_status ForwardInference(const bnorm_context* ctx, const Problem& p, const void* x, void* y,
                              const Epilogue& epi, const float* gamma, const float* beta, const float* mean,
                              const float* var, float eps);

// Statistics only (bnorm_stats): per-channel mean and M2 of the p.Values()
// values of each channel into mean/m2 (c doubles each); the bits of
// ForwardTraining's statistics. No elements: zeros.
bnorm_status Stats(const bnorm_context* ctx, const Problem& p, const void* x, double* mean,
                   double* m2);

// ForwardTraining's finalize and normalize with given statistics of `count`
// values per channel (bnorm_forward_apply). No elements: the per-channel
// outputs only.
bnorm_status ForwardApply(const bnorm_context* ctx, const Problem& p, const void* x, void* y,
                          const float* gamma, const float* beta, double count, const double* mean,
                          const double* m2, float eps, float momentum, float* running_mean,
                          float* running_var, float* save_mean, float* save_invstd);

// The two halves of a training backward pass (bnorm_backward_reduce/apply):
// with sum_dy_out set, the channel sums are also written there (c doubles
// each); with sum_dy_in set, no reduction runs and the given sums of `count`
// values per channel are used instead.
struct GradSplit {
  double* sum_dy_out = nullptr;
  double* sum_dy_xmu_out = nullptr;
  const double* sum_dy_in = nullptr;
  const double* sum_dy_xmu_in = nullptr;
  double count = 0.0;
};

// frozen: mean/invstd are constants (dx = dy*gamma*invstd); otherwise the
// training-mode gradient through the batch statistics.
// y: the output of a fused ReLU (dy is masked where y <= 0), or null. dz:
// the masked gradient is also written there (the residual's gradient), or
// null.
bnorm_status Backward(const bnorm_context* ctx, const Problem& p, bool frozen, const void* x,
                      const void* dy, const void* y, void* dx, void* dz, const float* gamma,
                      const float* mean,
                      const float* invstd, float* dgamma, float* dbeta,
                      const GradSplit& split = GradSplit());

}  // namespace bnorm

#endif  // BNORM_SRC_BATCHNORM_H_
