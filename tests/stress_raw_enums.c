/* C shims for stress_test.cc. bnorm.h answers BNORM_ERR_BAD_ARGUMENT to an
 * enum argument outside its enumerators, and C lets a caller pass any int
 * there; in C++ merely loading such an enum value is undefined (and
 * UBSan says so), so the C++ test passes its raw values through these. */
#include "bnorm/bnorm.h"

bnorm_status stress_forward_training_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                        const void* x, const void* z, void* y, int act,
                                        const float* gamma, const float* beta, float eps,
                                        float momentum, float* running_mean, float* running_var,
                                        float* save_mean, float* save_invstd) {
  return bnorm_forward_training_ex(ctx, desc, x, z, y, (bnorm_activation)act, gamma, beta, eps,
                                   momentum, running_mean, running_var, save_mean, save_invstd);
}

bnorm_status stress_forward_inference_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                         const void* x, const void* z, void* y, int act,
                                         const float* gamma, const float* beta, const float* mean,
                                         const float* var, float eps) {
  return bnorm_forward_inference_ex(ctx, desc, x, z, y, (bnorm_activation)act, gamma, beta, mean,
                                    var, eps);
}

bnorm_status stress_backward_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                const void* x, const void* y, const void* dy, void* dx, void* dz,
                                int act, const float* gamma, const float* beta,
                                const float* save_mean, const float* save_invstd, float* dgamma,
                                float* dbeta) {
  return bnorm_backward_ex(ctx, desc, x, y, dy, dx, dz, (bnorm_activation)act, gamma, beta,
                           save_mean, save_invstd, dgamma, dbeta);
}

bnorm_status stress_fold_into_weights(int layout, int64_t out_channels, int64_t per_output,
                                      const float* weights, const float* bias, float* weights_out,
                                      float* bias_out, const float* gamma, const float* beta,
                                      const float* mean, const float* var, float eps) {
  return bnorm_fold_into_weights((bnorm_weight_layout)layout, out_channels, per_output, weights,
                                 bias, weights_out, bias_out, gamma, beta, mean, var, eps);
}
