// Argument validation of the C API (and the exception guard of its entry
// points), shared by libbnorm (api.cc) and libbnorm_mpi, which must reject exactly what the core rejects before it
// enters a collective. Header-only plain C++ (each library compiles its own
// copy; nothing here is exported).
#ifndef BNORM_SRC_VALIDATE_H_
#define BNORM_SRC_VALIDATE_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

#include "aliasing.h"
#include "bnorm/bnorm.h"

namespace bnorm {

// Runs an entry point's body, turning any escaping exception into a status.
template <typename Body>
bnorm_status Guard(const Body& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return BNORM_ERR_OUT_OF_MEMORY;
  } catch (...) {
    return BNORM_ERR_INTERNAL;
  }
}

// A validated descriptor.
struct Tensor {
  int64_t n = 0, c = 0, spatial = 0;
  int layout = BNORM_LAYOUT_NCHW;
  int dtype = BNORM_DTYPE_F32;
  size_t bytes = 0;                  // of one tensor (x, y, dy or dx)
  size_t channel_bytes = 0;          // of one per-channel float array
  size_t channel_doubles_bytes = 0;  // of one per-channel double array
};

// Reads an enum field as an int without trusting its value (a C caller may
// pass anything; loading an out-of-range enum is undefined in C++).
template <typename Enum>
inline int RawEnum(const Enum& field) {
  int value = 0;
  static_assert(sizeof(Enum) == sizeof(int), "C enums are int-sized");
  std::memcpy(&value, &field, sizeof(value));
  return value;
}

// Checks desc: NULL_POINTER, then BAD_SHAPE, then BAD_ARGUMENT. split: the
// rules of the split-statistics functions (n == 0 is valid; their
// per-channel arrays hold doubles, so c doubles must fit too).
inline bnorm_status CheckDesc(const bnorm_tensor_desc* desc, Tensor* t, bool split = false) {
  if (desc == nullptr) return BNORM_ERR_NULL_POINTER;
  const int64_t n = desc->n, c = desc->c, spatial = desc->spatial;
  if (n < (split ? 0 : 1) || c < 1 || spatial < 1) return BNORM_ERR_BAD_SHAPE;
  int64_t nc = 0, elements = 0, bytes = 0, channel_bytes = 0, channel_doubles_bytes = 0;
  // 4 bytes per element is the widest dtype; sizes must fit in ptrdiff_t.
  if (__builtin_mul_overflow(n, c, &nc) || __builtin_mul_overflow(nc, spatial, &elements) ||
      __builtin_mul_overflow(elements, int64_t{4}, &bytes) ||
      __builtin_mul_overflow(c, int64_t{4}, &channel_bytes) ||
      static_cast<uint64_t>(bytes) > static_cast<uint64_t>(PTRDIFF_MAX)) {
    return BNORM_ERR_BAD_SHAPE;
  }
  if (__builtin_mul_overflow(c, int64_t{8}, &channel_doubles_bytes)) {
    if (split) return BNORM_ERR_BAD_SHAPE;
    channel_doubles_bytes = 0;  // not used outside the split functions
  }
  const int layout = RawEnum(desc->layout);
  const int dtype = RawEnum(desc->dtype);
  if (layout != BNORM_LAYOUT_NCHW && layout != BNORM_LAYOUT_NHWC) return BNORM_ERR_BAD_ARGUMENT;
  if (dtype != BNORM_DTYPE_F32 && dtype != BNORM_DTYPE_BF16 && dtype != BNORM_DTYPE_F16) {
    return BNORM_ERR_BAD_ARGUMENT;
  }
  t->n = n;
  t->c = c;
  t->spatial = spatial;
  t->layout = layout;
  t->dtype = dtype;
  t->bytes = static_cast<size_t>(elements) * (dtype == BNORM_DTYPE_F32 ? 4 : 2);
  t->channel_bytes = static_cast<size_t>(channel_bytes);
  t->channel_doubles_bytes = static_cast<size_t>(channel_doubles_bytes);
  return BNORM_OK;
}

inline bool ValidEps(float eps) { return std::isfinite(eps) && eps >= 0.0f; }
inline bool ValidMomentum(float momentum) { return momentum >= 0.0f && momentum <= 1.0f; }

// BNORM_ERR_ALIAS if an output overlaps another buffer (aliasing.h).
template <size_t kCount>
bnorm_status CheckAliasing(const Region (&regions)[kCount]) {
  return Aliased(regions) ? BNORM_ERR_ALIAS : BNORM_OK;
}

inline bool ValidAct(const bnorm_activation& act) {
  const int value = RawEnum(act);
  return value == BNORM_ACT_NONE || value == BNORM_ACT_RELU;
}

inline bool Relu(const bnorm_activation& act) { return RawEnum(act) == BNORM_ACT_RELU; }

// Counts of values per channel must be exact as doubles (the finalize
// divides by them): at most 2^53, in bnorm_stats_merge's totals and the
// apply functions' total_count alike.
constexpr int64_t kMaxExactCount = int64_t{1} << 53;

// The arguments of bnorm_forward_apply, in the documented status order.
// total_count, mean and m2 are checked when total_count is not null (the MPI
// layer checks the others before the collective that produces these).
inline bnorm_status CheckForwardApply(const bnorm_tensor_desc* desc, Tensor* t, const void* x,
                                      const void* y, const float* gamma, const float* beta,
                                      float eps, float momentum, const float* running_mean,
                                      const float* running_var, const float* save_mean,
                                      const float* save_invstd, const int64_t* total_count,
                                      const double* mean, const double* m2) {
  if (bnorm_status s = CheckDesc(desc, t, /*split=*/true); s != BNORM_OK) return s;
  if (!ValidEps(eps) || !ValidMomentum(momentum) ||
      (total_count != nullptr &&
       (*total_count < t->n * t->spatial || *total_count > kMaxExactCount))) {
    return BNORM_ERR_BAD_ARGUMENT;
  }
  const bool stats = total_count != nullptr;
  if (((x == nullptr || y == nullptr) && t->bytes != 0) ||
      (stats && (mean == nullptr || m2 == nullptr))) {
    return BNORM_ERR_NULL_POINTER;
  }
  if (stats && *total_count < 2) return BNORM_ERR_TOO_FEW_VALUES;
  const size_t cb = t->channel_bytes, db = t->channel_doubles_bytes;
  const Region regions[] = {
      {x, t->bytes, false, -1},    {y, t->bytes, true, 0},       {gamma, cb, false, -1},
      {beta, cb, false, -1},       {running_mean, cb, true, -1}, {running_var, cb, true, -1},
      {save_mean, cb, true, -1},   {save_invstd, cb, true, -1},  {mean, db, false, -1},
      {m2, db, false, -1},
  };
  return CheckAliasing(regions);
}

// The arguments of bnorm_backward_apply, as CheckForwardApply.
inline bnorm_status CheckBackwardApply(const bnorm_tensor_desc* desc, Tensor* t, const void* x,
                                       const void* dy, const void* dx, const float* gamma,
                                       const float* save_mean, const float* save_invstd,
                                       const float* dgamma, const float* dbeta,
                                       const int64_t* total_count, const double* sum_dy,
                                       const double* sum_dy_xmu) {
  if (bnorm_status s = CheckDesc(desc, t, /*split=*/true); s != BNORM_OK) return s;
  const bool sums = total_count != nullptr;
  if (sums &&
      (*total_count < 1 || *total_count < t->n * t->spatial || *total_count > kMaxExactCount)) {
    return BNORM_ERR_BAD_ARGUMENT;
  }
  if (((x == nullptr || dy == nullptr) && t->bytes != 0) || save_mean == nullptr ||
      save_invstd == nullptr || (sums && (sum_dy == nullptr || sum_dy_xmu == nullptr))) {
    return BNORM_ERR_NULL_POINTER;
  }
  const size_t cb = t->channel_bytes, db = t->channel_doubles_bytes;
  const Region regions[] = {
      {x, t->bytes, false, -1},    {dy, t->bytes, false, -1},       {dx, t->bytes, true, 1},
      {gamma, cb, false, -1},      {save_mean, cb, false, -1},      {save_invstd, cb, false, -1},
      {dgamma, cb, true, -1},      {dbeta, cb, true, -1},           {sum_dy, db, false, -1},
      {sum_dy_xmu, db, false, -1},
  };
  return CheckAliasing(regions);
}

}  // namespace bnorm

#endif  // BNORM_SRC_VALIDATE_H_
