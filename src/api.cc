// The C API: validates every argument, then calls the drivers. Nothing is
// written before validation has passed, and no exception leaves this file.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "batchnorm.h"
#include "bnorm/bnorm.h"
#include "context.h"
#include "moments.h"
#include "plan.h"
#include "target.h"
#include "validate.h"

namespace bnorm {
namespace {

Problem ProblemOf(const Tensor& t) {
  Problem p = Canonicalize(t.n, t.c, t.spatial, t.layout == BNORM_LAYOUT_NHWC);
  p.dtype = static_cast<DType>(t.dtype);
  return p;
}

#define BNORM_STR2(x) #x
#define BNORM_STR(x) BNORM_STR2(x)
constexpr const char kVersion[] = BNORM_STR(BNORM_VERSION_MAJOR) "." BNORM_STR(
    BNORM_VERSION_MINOR) "." BNORM_STR(BNORM_VERSION_PATCH);

}  // namespace
}  // namespace bnorm

using bnorm::Region;
using bnorm::Tensor;

extern "C" {

bnorm_status bnorm_context_create(int num_threads, bnorm_context** out) {
  if (out == nullptr) return BNORM_ERR_NULL_POINTER;
  if (num_threads < 0) return BNORM_ERR_BAD_ARGUMENT;
  return bnorm::Guard([&] {
    bnorm_context* ctx = bnorm::NewContext(num_threads);
    if (ctx == nullptr) return BNORM_ERR_OUT_OF_MEMORY;
    *out = ctx;
    return BNORM_OK;
  });
}

void bnorm_context_destroy(bnorm_context* ctx) { bnorm::DeleteContext(ctx); }

int bnorm_context_num_threads(const bnorm_context* ctx) { return bnorm::ContextThreads(ctx); }

const char* bnorm_status_string(bnorm_status status) {
  // Any int may arrive from C: read it as one (RawEnum).
  switch (bnorm::RawEnum(status)) {
    case BNORM_OK:
      return "success";
    case BNORM_ERR_NULL_POINTER:
      return "a required pointer is NULL";
    case BNORM_ERR_BAD_SHAPE:
      return "bad shape: n, c or spatial < 1, or the tensor size overflows";
    case BNORM_ERR_BAD_ARGUMENT:
      return "bad argument: a value outside its documented range (eps, momentum, an enum, a "
             "count; see the function in bnorm.h)";
    case BNORM_ERR_ALIAS:
      return "an output buffer overlaps another buffer";
    case BNORM_ERR_TOO_FEW_VALUES:
      return "training needs at least 2 values per channel (n*spatial >= 2)";
    case BNORM_ERR_UNSUPPORTED:
      return "valid request that this build does not support";
    case BNORM_ERR_OUT_OF_MEMORY:
      return "out of memory";
    case BNORM_ERR_INTERNAL:
      return "internal error";
    case BNORM_ERR_MISMATCH:
      return "ranks disagree on the descriptor (c, spatial, layout, dtype), eps or momentum";
    case BNORM_ERR_PEER:
      return "another rank of the communicator reported an error";
    case BNORM_ERR_COMM:
      return "a communication (MPI) call failed";
    default:
      return "unknown status";
  }
}

const char* bnorm_version_string(void) { return bnorm::kVersion; }

const char* bnorm_active_target(void) { return bnorm::TargetNameOf(bnorm::ActiveTargetBit()); }

int bnorm_target_count(void) { return static_cast<int>(bnorm::RunnableTargets().size()); }

const char* bnorm_target_name(int i) {
  const auto& targets = bnorm::RunnableTargets();
  if (i < 0 || static_cast<size_t>(i) >= targets.size()) return nullptr;
  return bnorm::TargetNameOf(targets[static_cast<size_t>(i)]);
}

bnorm_status bnorm_set_target(const char* name) {
  switch (bnorm::ForceTargetByName(name)) {
    case 0:
      return BNORM_OK;
    case 2:
      return BNORM_ERR_UNSUPPORTED;
    default:
      return BNORM_ERR_BAD_ARGUMENT;
  }
}

bnorm_status bnorm_forward_training_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                       const void* x, const void* z, void* y, bnorm_activation act,
                                       const float* gamma, const float* beta, float eps,
                                       float momentum, float* running_mean, float* running_var,
                                       float* save_mean, float* save_invstd) {
  Tensor t;
  if (bnorm_status s = bnorm::CheckDesc(desc, &t); s != BNORM_OK) return s;
  if (!bnorm::ValidEps(eps) || !bnorm::ValidMomentum(momentum) || !bnorm::ValidAct(act)) {
    return BNORM_ERR_BAD_ARGUMENT;
  }
  if (x == nullptr || y == nullptr) return BNORM_ERR_NULL_POINTER;
  if (t.n * t.spatial < 2) return BNORM_ERR_TOO_FEW_VALUES;
  const size_t cb = t.channel_bytes;
  // y may be exactly x or z; z may be x (both inputs).
  const Region regions[] = {
      {x, t.bytes, false, -1},     {y, t.bytes, true, 0, 8},     {gamma, cb, false, -1},
      {beta, cb, false, -1},       {running_mean, cb, true, -1}, {running_var, cb, true, -1},
      {save_mean, cb, true, -1},   {save_invstd, cb, true, -1},  {z, t.bytes, false, -1},
  };
  if (bnorm_status s = bnorm::CheckAliasing(regions); s != BNORM_OK) return s;
  return bnorm::Guard([&] {
    return bnorm::ForwardTraining(ctx, bnorm::ProblemOf(t), x, y, bnorm::Epilogue{z, bnorm::Relu(act)},
                                  gamma, beta, eps, momentum, running_mean, running_var, save_mean,
                                  save_invstd);
  });
}

bnorm_status bnorm_forward_training(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                    const void* x, void* y, const float* gamma, const float* beta,
                                    float eps, float momentum, float* running_mean,
                                    float* running_var, float* save_mean, float* save_invstd) {
  return bnorm_forward_training_ex(ctx, desc, x, nullptr, y, BNORM_ACT_NONE, gamma, beta, eps,
                                   momentum, running_mean, running_var, save_mean, save_invstd);
}

bnorm_status bnorm_forward_inference_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                        const void* x, const void* z, void* y,
                                        bnorm_activation act, const float* gamma,
                                        const float* beta, const float* mean, const float* var,
                                        float eps) {
  Tensor t;
  if (bnorm_status s = bnorm::CheckDesc(desc, &t); s != BNORM_OK) return s;
  if (!bnorm::ValidEps(eps) || !bnorm::ValidAct(act)) return BNORM_ERR_BAD_ARGUMENT;
  if (x == nullptr || y == nullptr || mean == nullptr || var == nullptr) {
    return BNORM_ERR_NULL_POINTER;
  }
  const size_t cb = t.channel_bytes;
  const Region regions[] = {
      {x, t.bytes, false, -1}, {y, t.bytes, true, 0, 6}, {gamma, cb, false, -1},
      {beta, cb, false, -1},   {mean, cb, false, -1},    {var, cb, false, -1},
      {z, t.bytes, false, -1},
  };
  if (bnorm_status s = bnorm::CheckAliasing(regions); s != BNORM_OK) return s;
  return bnorm::Guard([&] {
    return bnorm::ForwardInference(ctx, bnorm::ProblemOf(t), x, y, bnorm::Epilogue{z, bnorm::Relu(act)},
                                   gamma, beta, mean, var, eps);
  });
}

bnorm_status bnorm_forward_inference(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                     const void* x, void* y, const float* gamma, const float* beta,
                                     const float* mean, const float* var, float eps) {
  return bnorm_forward_inference_ex(ctx, desc, x, nullptr, y, BNORM_ACT_NONE, gamma, beta, mean,
                                    var, eps);
}

namespace {

// beta: bnorm_backward_ex's, never read but, like every buffer, not to
// overlap an output (null elsewhere).
bnorm_status BackwardEntry(const bnorm_context* ctx, const bnorm_tensor_desc* desc, bool frozen,
                           const void* x, const void* y, const void* dy, void* dx, void* dz,
                           const bnorm_activation* act, const float* gamma, const float* beta,
                           const float* mean, const float* invstd, float* dgamma, float* dbeta) {
  Tensor t;
  if (bnorm_status s = bnorm::CheckDesc(desc, &t); s != BNORM_OK) return s;
  if (act != nullptr && !bnorm::ValidAct(*act)) return BNORM_ERR_BAD_ARGUMENT;
  const bool relu = act != nullptr && bnorm::Relu(*act);
  if (x == nullptr || dy == nullptr || mean == nullptr || invstd == nullptr ||
      (relu && y == nullptr)) {
    return BNORM_ERR_NULL_POINTER;
  }
  if (!relu) y = nullptr;  // ignored without an activation
  const size_t cb = t.channel_bytes;
  // dx may be exactly dy, and so may dz (not both: they would overlap).
  const Region regions[] = {
      {x, t.bytes, false, -1}, {dy, t.bytes, false, -1}, {dx, t.bytes, true, 1},
      {gamma, cb, false, -1},  {mean, cb, false, -1},    {invstd, cb, false, -1},
      {dgamma, cb, true, -1},  {dbeta, cb, true, -1},    {y, t.bytes, false, -1},
      {dz, t.bytes, true, 1},  {beta, cb, false, -1},
  };
  if (bnorm_status s = bnorm::CheckAliasing(regions); s != BNORM_OK) return s;
  return bnorm::Guard([&] {
    return bnorm::Backward(ctx, bnorm::ProblemOf(t), frozen, x, dy, y, dx, dz, gamma, mean, invstd, dgamma,
                           dbeta);
  });
}

}  // namespace

bnorm_status bnorm_backward(const bnorm_context* ctx, const bnorm_tensor_desc* desc, const void* x,
                            const void* dy, void* dx, const float* gamma, const float* save_mean,
                            const float* save_invstd, float* dgamma, float* dbeta) {
  return BackwardEntry(ctx, desc, false, x, nullptr, dy, dx, nullptr, nullptr, gamma, nullptr,
                       save_mean, save_invstd, dgamma, dbeta);
}

bnorm_status bnorm_backward_frozen(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                   const void* x, const void* dy, void* dx, const float* gamma,
                                   const float* mean, const float* invstd, float* dgamma,
                                   float* dbeta) {
  return BackwardEntry(ctx, desc, true, x, nullptr, dy, dx, nullptr, nullptr, gamma, nullptr, mean,
                       invstd, dgamma, dbeta);
}

bnorm_status bnorm_backward_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                               const void* x, const void* y, const void* dy, void* dx, void* dz,
                               bnorm_activation act, const float* gamma, const float* beta,
                               const float* save_mean, const float* save_invstd, float* dgamma,
                               float* dbeta) {
  // beta is not needed by the gradients (documented): checked, never read.
  return BackwardEntry(ctx, desc, false, x, y, dy, dx, dz, &act, gamma, beta, save_mean,
                       save_invstd, dgamma, dbeta);
}

// ---- Split statistics (synchronized batch norm) ----

bnorm_status bnorm_stats(const bnorm_context* ctx, const bnorm_tensor_desc* desc, const void* x,
                         double* mean, double* m2) {
  Tensor t;
  if (bnorm_status s = bnorm::CheckDesc(desc, &t, /*split=*/true); s != BNORM_OK) return s;
  if ((x == nullptr && t.bytes != 0) || mean == nullptr || m2 == nullptr) {
    return BNORM_ERR_NULL_POINTER;
  }
  const size_t db = t.channel_doubles_bytes;
  const Region regions[] = {{x, t.bytes, false, -1}, {mean, db, true, -1}, {m2, db, true, -1}};
  if (bnorm_status s = bnorm::CheckAliasing(regions); s != BNORM_OK) return s;
  return bnorm::Guard([&] { return bnorm::Stats(ctx, bnorm::ProblemOf(t), x, mean, m2); });
}

bnorm_status bnorm_stats_merge(int64_t c, int64_t k, const int64_t* counts, const double* means,
                               const double* m2s, int64_t* count_out, double* mean_out,
                               double* m2_out) {
  if (counts == nullptr || means == nullptr || m2s == nullptr || count_out == nullptr ||
      mean_out == nullptr || m2_out == nullptr) {
    return BNORM_ERR_NULL_POINTER;
  }
  int64_t kc = 0, bytes = 0, row_bytes = 0, counts_bytes = 0;
  if (c < 1 || k < 1 || __builtin_mul_overflow(k, c, &kc) ||
      __builtin_mul_overflow(kc, int64_t{8}, &bytes) ||
      __builtin_mul_overflow(k, int64_t{8}, &counts_bytes)) {
    return BNORM_ERR_BAD_SHAPE;
  }
  row_bytes = c * 8;
  // Counts must be exact as doubles, as must their running total.
  int64_t total = 0;
  for (int64_t j = 0; j < k; ++j) {
    if (counts[j] < 0 || counts[j] > bnorm::kMaxExactCount - total) {
      return BNORM_ERR_BAD_ARGUMENT;
    }
    total += counts[j];
  }
  // Partial 0 may be overwritten in place: each channel's output is written
  // after its partial-0 value was read, and later partials are other rows.
  const size_t rb = static_cast<size_t>(row_bytes), rest = static_cast<size_t>(bytes - row_bytes);
  const Region regions[] = {
      {counts, static_cast<size_t>(counts_bytes), false, -1},
      {means, rb, false, -1},
      {means + c, rest, false, -1},
      {m2s, rb, false, -1},
      {m2s + c, rest, false, -1},
      {count_out, sizeof(int64_t), true, -1},
      {mean_out, rb, true, 1},
      {m2_out, rb, true, 3},
  };
  if (bnorm_status s = bnorm::CheckAliasing(regions); s != BNORM_OK) return s;
  double count = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    count = bnorm::MergeMomentsRow(count, mean_out, m2_out, static_cast<double>(counts[j]),
                                   means + j * c, m2s + j * c, c, mean_out, m2_out);
  }
  if (count == 0.0) {
    std::fill(mean_out, mean_out + c, 0.0);
    std::fill(m2_out, m2_out + c, 0.0);
  }
  *count_out = total;
  return BNORM_OK;
}

bnorm_status bnorm_forward_apply(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                 const void* x, void* y, const float* gamma, const float* beta,
                                 int64_t total_count, const double* mean, const double* m2,
                                 float eps, float momentum, float* running_mean,
                                 float* running_var, float* save_mean, float* save_invstd) {
  Tensor t;
  if (bnorm_status s =
          bnorm::CheckForwardApply(desc, &t, x, y, gamma, beta, eps, momentum, running_mean,
                                   running_var, save_mean, save_invstd, &total_count, mean, m2);
      s != BNORM_OK) {
    return s;
  }
  for (int64_t ch = 0; ch < t.c; ++ch) {
    if (m2[ch] < 0.0) return BNORM_ERR_BAD_ARGUMENT;
  }
  return bnorm::Guard([&] {
    return bnorm::ForwardApply(ctx, bnorm::ProblemOf(t), x, y, gamma, beta,
                               static_cast<double>(total_count), mean, m2, eps, momentum,
                               running_mean, running_var, save_mean, save_invstd);
  });
}

bnorm_status bnorm_backward_reduce(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                   const void* x, const void* dy, const float* save_mean,
                                   double* sum_dy, double* sum_dy_xmu) {
  Tensor t;
  if (bnorm_status s = bnorm::CheckDesc(desc, &t, /*split=*/true); s != BNORM_OK) return s;
  if (((x == nullptr || dy == nullptr) && t.bytes != 0) || save_mean == nullptr ||
      sum_dy == nullptr || sum_dy_xmu == nullptr) {
    return BNORM_ERR_NULL_POINTER;
  }
  const size_t cb = t.channel_bytes, db = t.channel_doubles_bytes;
  const Region regions[] = {
      {x, t.bytes, false, -1},  {dy, t.bytes, false, -1},    {save_mean, cb, false, -1},
      {sum_dy, db, true, -1},   {sum_dy_xmu, db, true, -1},
  };
  if (bnorm_status s = bnorm::CheckAliasing(regions); s != BNORM_OK) return s;
  bnorm::GradSplit split;
  split.sum_dy_out = sum_dy;
  split.sum_dy_xmu_out = sum_dy_xmu;
  // No dx or dgamma: invstd is loaded but unused, so any channel array of
  // c floats stands in (save_mean).
  return bnorm::Guard([&] {
    return bnorm::Backward(ctx, bnorm::ProblemOf(t), false, x, dy, nullptr, nullptr, nullptr, nullptr,
                           save_mean, save_mean, nullptr, nullptr, split);
  });
}

bnorm_status bnorm_backward_apply(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                  const void* x, const void* dy, void* dx, const float* gamma,
                                  const float* save_mean, const float* save_invstd,
                                  int64_t total_count, const double* sum_dy,
                                  const double* sum_dy_xmu, float* dgamma, float* dbeta) {
  Tensor t;
  if (bnorm_status s = bnorm::CheckBackwardApply(desc, &t, x, dy, dx, gamma, save_mean,
                                                 save_invstd, dgamma, dbeta, &total_count, sum_dy,
                                                 sum_dy_xmu);
      s != BNORM_OK) {
    return s;
  }
  bnorm::GradSplit split;
  split.sum_dy_in = sum_dy;
  split.sum_dy_xmu_in = sum_dy_xmu;
  split.count = static_cast<double>(total_count);
  return bnorm::Guard([&] {
    return bnorm::Backward(ctx, bnorm::ProblemOf(t), false, x, dy, nullptr, dx, nullptr, gamma, save_mean,
                           save_invstd, dgamma, dbeta, split);
  });
}

}  // extern "C"
