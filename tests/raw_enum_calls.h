/* bnorm's entry points that take an enum by value, with an int in its place
 * (raw_enum_calls.c), for the C++ tests and the fuzz target that pass
 * values outside the enumerators. */
#ifndef BNORM_TESTS_RAW_ENUM_CALLS_H_
#define BNORM_TESTS_RAW_ENUM_CALLS_H_

#include <stdint.h>

#include "bnorm/bnorm.h"

#ifdef __cplusplus
extern "C" {
#endif

bnorm_status raw_forward_training_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                     const void* x, const void* z, void* y, int act,
                                     const float* gamma, const float* beta, float eps,
                                     float momentum, float* running_mean, float* running_var,
                                     float* save_mean, float* save_invstd);
bnorm_status raw_forward_inference_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                      const void* x, const void* z, void* y, int act,
                                      const float* gamma, const float* beta, const float* mean,
                                      const float* var, float eps);
bnorm_status raw_backward_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc, const void* x,
                             const void* y, const void* dy, void* dx, void* dz, int act,
                             const float* gamma, const float* beta, const float* save_mean,
                             const float* save_invstd, float* dgamma, float* dbeta);
bnorm_status raw_fold_into_weights(int layout, int64_t out_channels, int64_t per_output,
                                   const float* weights, const float* bias, float* weights_out,
                                   float* bias_out, const float* gamma, const float* beta,
                                   const float* mean, const float* var, float eps);

#ifdef __cplusplus
}
#endif

#endif /* BNORM_TESTS_RAW_ENUM_CALLS_H_ */
