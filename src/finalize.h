// The per-channel step between a pass's reduction and its elementwise pass,
// in vectors of doubles: in training, invstd, the saved and running
// statistics and the apply constants from each channel's mean and M2; in
// backward, dgamma, dbeta and the dx constants from the gradient sums. One
// channel at a time, the training step's three divisions and square root
// in double were about 30 % of an (N, C) call with few rows (64x1280 f32,
// perf): the scalar loop waited on each channel's chain of latencies, where
// vectors of channels overlap them.
#ifndef BNORM_SRC_FINALIZE_H_
#define BNORM_SRC_FINALIZE_H_

#include <cstdint>

#include "moments.h"

namespace bnorm {

// The per-channel arguments and results of a training forward pass, as the
// caller passes them: arrays indexed by channel; any output may be null
// (not written), gamma null means 1 and beta null 0.
struct ForwardOutputs {
  const float* gamma;
  const float* beta;
  float eps;
  float momentum;
  float* running_mean;  // read and updated
  float* running_var;
  float* save_mean;
  float* save_invstd;
};

struct ForwardFinalize {
  const Moments* moments;  // the means and M2, or (moments null) the arrays
  const double* mean;
  const double* m2;
  double count;  // values per channel
  ForwardOutputs out;
  // The apply constants of channel ch at [ch] (the caller copies NHWC's to
  // the rest of the period): y = (x - apply_mean) * apply_scale + apply_shift.
  float* apply_mean;
  float* apply_scale;
  float* apply_shift;
};

// Channels [c0, c1). The arithmetic, in double and rounded to float once at
// the end (the same bits on every target):
//   invstd = 1 / sqrt(m2 / count + eps), or 0 where m2 / count + eps == 0
//   save_mean = mean, save_invstd = invstd
//   running_mean = (1 - momentum) * running_mean + momentum * mean
//   running_var = (1 - momentum) * running_var + momentum * m2 / (count - 1)
//   apply_mean = float(mean), apply_scale = invstd * gamma,
//   apply_shift = beta - (mean - apply_mean) * apply_scale (what the float
//   mean misses of the double mean, folded into the shift).
void FinalizeForward(int64_t target, const ForwardFinalize& f, int64_t c0, int64_t c1);

// The per-channel step of a backward pass between its gradient sums and the
// dx pass: dbeta, dgamma, and the constants of dx = a * (g - mean_dy - (x -
// mean) * b) (GradConstants). Arrays indexed by channel; outputs may be
// null (not written), gamma null means 1.
struct BackwardFinalize {
  const GradSums* sums;  // the gradient sums, or (sums null) the arrays
  const double* sum_dy;  // (all null: sums of 0)
  const double* sum_dy_xmu;
  double count;  // values per channel
  const float* mean;
  const float* invstd;
  const float* gamma;
  bool dz_only;        // the constants of the gradient itself: a = 1
  bool no_sums;        // frozen statistics or dz only: mean_dy = b = 0
  double* sum_dy_out;  // the sums as read
  double* sum_dy_xmu_out;
  float* dbeta;
  float* dgamma;
  // The apply constants of channel ch at [ch] (the caller copies NHWC's to
  // the rest of the period); null without a dx or dz pass.
  float* apply_mean;
  float* apply_mean_dy;
  float* apply_a;
  float* apply_b;
};

// Channels [c0, c1), in double and rounded to float once (the same bits on
// every target), with is = invstd:
//   dbeta = sum_dy, dgamma = sum_dy_xmu * is
//   a = dz_only ? 1 : gamma * is, mean_dy = sum_dy / count,
//   b = is * is * sum_dy_xmu / count (of order is * |g|: is * is * sum
//   alone overflowed float for invstd beyond ~1e19), apply_mean = mean.
void FinalizeBackward(int64_t target, const BackwardFinalize& f, int64_t c0, int64_t c1);

}  // namespace bnorm

#endif  // BNORM_SRC_FINALIZE_H_
