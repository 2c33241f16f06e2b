/* A tiny C99 user of libbnorm: built in-tree (the header compiles as strict
 * C99) and against the installed package, with CMake and with pkg-config. */
#include <math.h>
#include <stdio.h>

#include "bnorm/bnorm.h"

int main(void) {
  enum { N = 2, C = 3, S = 4 };
  float x[N * C * S];
  float y[N * C * S];
  float mean[C], invstd[C];
  int i;
  bnorm_context* ctx = NULL;
  bnorm_tensor_desc desc;
  bnorm_status st;

  for (i = 0; i < N * C * S; ++i) x[i] = (float)(i % 7) + 100.0f;
  desc.n = N;
  desc.c = C;
  desc.spatial = S;
  desc.layout = BNORM_LAYOUT_NCHW;
  desc.dtype = BNORM_DTYPE_F32;

  st = bnorm_context_create(2, &ctx);
  if (st != BNORM_OK) {
    fprintf(stderr, "context: %s\n", bnorm_status_string(st));
    return 1;
  }
  st = bnorm_forward_training(ctx, &desc, x, y, NULL, NULL, 1e-5f, 0.1f, NULL, NULL, mean, invstd);
  bnorm_context_destroy(ctx);
  if (st != BNORM_OK) {
    fprintf(stderr, "forward: %s\n", bnorm_status_string(st));
    return 1;
  }
  /* Normalized output: zero mean and unit variance per channel. */
  for (i = 0; i < C; ++i) {
    double sum = 0.0, sq = 0.0;
    int k;
    for (k = 0; k < N * S; ++k) {
      const double v = y[(k / S * C + i) * S + k % S];
      sum += v;
      sq += v * v;
    }
    if (fabs(sum / (N * S)) > 1e-5 || fabs(sq / (N * S) - 1.0) > 1e-3) {
      fprintf(stderr, "channel %d: mean %g, var %g\n", i, sum / (N * S), sq / (N * S));
      return 1;
    }
  }
  /* An activation outside the enum (C may hold any int in it): a status,
   * nothing written. */
  {
    static const int bad_acts[] = {2, -1, 7, 0x7fffffff};
    float z[N * C * S], out[N * C * S], dz[N * C * S], var[C];
    int k;
    for (i = 0; i < N * C * S; ++i) z[i] = out[i] = dz[i] = 7.0f;
    for (i = 0; i < C; ++i) var[i] = 1.0f;
    for (k = 0; k < 4; ++k) {
      const bnorm_activation act = (bnorm_activation)bad_acts[k];
      if (bnorm_forward_training_ex(NULL, &desc, x, z, out, act, NULL, NULL, 1e-5f, 0.1f, NULL,
                                    NULL, NULL, NULL) != BNORM_ERR_BAD_ARGUMENT ||
          bnorm_forward_inference_ex(NULL, &desc, x, z, out, act, NULL, NULL, mean, var, 1e-5f) !=
              BNORM_ERR_BAD_ARGUMENT ||
          bnorm_backward_ex(NULL, &desc, x, y, z, NULL, dz, act, NULL, NULL, mean, invstd, NULL,
                            NULL) != BNORM_ERR_BAD_ARGUMENT) {
        fprintf(stderr, "activation %d was not BNORM_ERR_BAD_ARGUMENT\n", bad_acts[k]);
        return 1;
      }
    }
    for (i = 0; i < N * C * S; ++i) {
      if (out[i] != 7.0f || dz[i] != 7.0f) {
        fprintf(stderr, "a rejected call wrote element %d\n", i);
        return 1;
      }
    }
  }
  printf("bnorm %s on %s: ok\n", bnorm_version_string(), bnorm_active_target());
  return 0;
}
