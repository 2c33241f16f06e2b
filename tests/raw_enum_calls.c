/* The entry points that take an enum, called with any int in it, as a C
 * caller may: C converts an int to an enum type with its value intact, where
 * C++ leaves values outside the enum's range undefined (and UBSan says so).
 * bnorm.h answers BNORM_ERR_BAD_ARGUMENT to such values; stress_test and
 * the fuzz target (C++) pass their raw values through these. */
#include "raw_enum_calls.h"

bnorm_status raw_forward_training_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                     const void* x, const void* z, void* y, int act,
                                     const float* gamma, const float* beta, float eps,
                                     float momentum, float* running_mean, float* running_var,
                                     float* save_mean, float* save_invstd) {
  return bnorm_forward_training_ex(ctx, desc, x, z, y, (bnorm_activation)act, gamma, beta, eps,
                                   momentum, running_mean, running_var, save_mean, save_invstd);
}

bnorm_status raw_forward_inference_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                      const void* x, const void* z, void* y, int act,
                                      const float* gamma, const float* beta, const float* mean,
                                      const float* var, float eps) {
  return bnorm_forward_inference_ex(ctx, desc, x, z, y, (bnorm_activation)act, gamma, beta, mean,
                                    var, eps);
}

bnorm_status raw_backward_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc, const void* x,
                             const void* y, const void* dy, void* dx, void* dz, int act,
                             const float* gamma, const float* beta, const float* save_mean,
                             const float* save_invstd, float* dgamma, float* dbeta) {
  return bnorm_backward_ex(ctx, desc, x, y, dy, dx, dz, (bnorm_activation)act, gamma, beta,
                           save_mean, save_invstd, dgamma, dbeta);
}

bnorm_status raw_fold_into_weights(int layout, int64_t out_channels, int64_t per_output,
                                   const float* weights, const float* bias, float* weights_out,
                                   float* bias_out, const float* gamma, const float* beta,
                                   const float* mean, const float* var, float eps) {
  return bnorm_fold_into_weights((bnorm_weight_layout)layout, out_channels, per_output, weights,
                                 bias, weights_out, bias_out, gamma, beta, mean, var, eps);
}
