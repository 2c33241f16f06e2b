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

// frozen: mean/invstd are constants (dx = dy*gamma*invstd); otherwise the
// training-mode gradient through the batch statistics.
// y: the output of a fused ReLU (dy is masked where y <= 0), or null. dz:
// the masked gradient is also written there (the residual's gradient), or
// null.
bnorm_status Backward(const bnorm_context* ctx, const Problem& p, bool frozen, const void* x,
                      const void* dy, const void* y, void* dx, void* dz, const float* gamma,
                      const float* mean,
                      const float* invstd, float* dgamma, float* dbeta);

}  // namespace bnorm

#endif  // BNORM_SRC_BATCHNORM_H_
