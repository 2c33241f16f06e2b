// SIMD accumulators shared by the statistics and backward-reduce kernels.
// Include after hwy/highway.h inside a foreach_target translation unit.
//
// Statistics use Welford's recurrence per lane on data shifted by a per-channel
// pivot (a value of the channel itself), so the float running mean stays of
// the order of the standard deviation and rounds relative to it, not to the
// offset. All lanes of an accumulator share one count, so the 1/k of the
// update comes from a table instead of a division. Every kBlockSteps steps the
// float lanes are folded into double lanes with Chan's formula, which bounds
// the float error to a short block and keeps M2 far from overflow.

#if defined(BNORM_SRC_WELFORD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef BNORM_SRC_WELFORD_INL_H_
#undef BNORM_SRC_WELFORD_INL_H_
#else
#define BNORM_SRC_WELFORD_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include <algorithm>

#include "hwy/cache_control.h"

#include "hwy/highway.h"
#include "moments.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Prefetches the cache lines of floats [p, p + count), at most kMaxPrefetch
// bytes (longer runs are caught by the hardware prefetcher).
HWY_INLINE void PrefetchRun(const float* p, int64_t count) {
  constexpr int64_t kMaxPrefetch = 4096;
  const int64_t bytes =
      std::min<int64_t>(count * static_cast<int64_t>(sizeof(float)), kMaxPrefetch);
  const char* bp = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) hwy::Prefetch(bp + b);
}

// Float Welford steps (per lane) before folding into double.
constexpr size_t kBlockSteps = 128;

// 1/k for k = 0..kBlockSteps (entry 0 unused).
struct ReciprocalTable {
  float values[kBlockSteps + 1];
  ReciprocalTable() {
    values[0] = 0.0f;
    for (size_t k = 1; k <= kBlockSteps; ++k) values[k] = 1.0f / static_cast<float>(k);
  }
};

HWY_INLINE const float* Reciprocals() {
  static const ReciprocalTable table;
  return table.values;
}

// Folds `lanes` float lanes of count `block_count` each into double lanes of
// count `*count` each (Chan's merge with equal counts across lanes).
HWY_INLINE void FoldIntoDouble(size_t lanes, double block_count, const float* HWY_RESTRICT mean,
                               const float* HWY_RESTRICT m2, double* HWY_RESTRICT count,
                               double* HWY_RESTRICT dmean, double* HWY_RESTRICT dm2) {
  const double total = *count + block_count;
  const double fraction = block_count / total;
  const double cross = *count * fraction;
  for (size_t l = 0; l < lanes; ++l) {
    const double delta = static_cast<double>(mean[l]) - dmean[l];
    dmean[l] += delta * fraction;
    dm2[l] += static_cast<double>(m2[l]) + delta * delta * cross;
  }
  *count = total;
}

// kAcc independent vector Welford accumulators in registers sharing one count,
// for contiguous runs of one channel (NCHW). kAcc > 1 hides the latency of the
// mean -> delta -> mean dependency chain.
template <class D, size_t kAcc>
class WelfordRegisters {
 public:
  using V = hn::Vec<D>;
  static constexpr size_t kLanes = hn::MaxLanes(D());

  explicit WelfordRegisters(D d) : d_(d), recip_(Reciprocals()) {
    for (size_t a = 0; a < kAcc; ++a) {
      mean_[a] = hn::Zero(d);
      m2_[a] = hn::Zero(d);
    }
    for (size_t l = 0; l < kAcc * kLanes; ++l) dmean_[l] = dm2_[l] = 0.0;
  }

  // Adds kAcc vectors starting at p (unaligned), each minus `pivot`.
  HWY_INLINE void Add(const float* HWY_RESTRICT p, V pivot) {
    const V rk = hn::Set(d_, recip_[++steps_]);
    for (size_t a = 0; a < kAcc; ++a) {
      const V x = hn::Sub(hn::LoadU(d_, p + a * kLanes), pivot);
      const V delta = hn::Sub(x, mean_[a]);
      mean_[a] = hn::MulAdd(delta, rk, mean_[a]);
      m2_[a] = hn::MulAdd(delta, hn::Sub(x, mean_[a]), m2_[a]);
    }
    if (HWY_UNLIKELY(steps_ == kBlockSteps)) Fold();
  }

  // Merges all lanes into `out` (relative to the pivot). The lanes share one
  // count, so they combine in a fixed pairwise tree whose equal-count merges
  // need no division (mean = (a + b) / 2, cross term = n / 2); one Chan merge
  // with `out` remains.
  HWY_INLINE void MergeInto(Moments& out) {
    Fold();
    static_assert(((kAcc * kLanes) & (kAcc * kLanes - 1)) == 0, "lanes: a power of two");
    double count = count_;
    for (size_t stride = 1; stride < kAcc * kLanes; stride *= 2) {
      const double cross = 0.5 * count;
      for (size_t l = 0; l + stride < kAcc * kLanes; l += 2 * stride) {
        const double delta = dmean_[l + stride] - dmean_[l];
        dmean_[l] = 0.5 * (dmean_[l] + dmean_[l + stride]);
        dm2_[l] += dm2_[l + stride] + delta * delta * cross;
      }
      count *= 2.0;
    }
    MergeMoments(out, Moments{count, dmean_[0], dm2_[0]});
  }

 private:
  HWY_INLINE void Fold() {
    if (steps_ == 0) return;
    HWY_ALIGN float mean[kAcc * kLanes];
    HWY_ALIGN float m2[kAcc * kLanes];
    for (size_t a = 0; a < kAcc; ++a) {
      hn::Store(mean_[a], d_, mean + a * kLanes);
      hn::Store(m2_[a], d_, m2 + a * kLanes);
      mean_[a] = hn::Zero(d_);
      m2_[a] = hn::Zero(d_);
    }
    FoldIntoDouble(kAcc * kLanes, static_cast<double>(steps_), mean, m2, &count_, dmean_, dm2_);
    steps_ = 0;
  }

  D d_;
  const float* recip_;
  V mean_[kAcc];
  V m2_[kAcc];
  size_t steps_ = 0;
  double count_ = 0.0;
  double dmean_[kAcc * kLanes];
  double dm2_[kAcc * kLanes];
};

// kAcc vector accumulators of sum(dy) and sum(dy * (x - mean)), folded into
// double every kBlockSteps steps so float rounding stays within short sums.
template <class D, size_t kAcc>
class GradSumRegisters {
 public:
  using V = hn::Vec<D>;
  static constexpr size_t kLanes = hn::MaxLanes(D());

  explicit GradSumRegisters(D d) : d_(d) {
    for (size_t a = 0; a < kAcc; ++a) sum_dy_[a] = sum_dy_xmu_[a] = hn::Zero(d);
  }

  HWY_INLINE void Add(const float* HWY_RESTRICT x, const float* HWY_RESTRICT dy, V mean) {
    for (size_t a = 0; a < kAcc; ++a) {
      const V g = hn::LoadU(d_, dy + a * kLanes);
      const V xmu = hn::Sub(hn::LoadU(d_, x + a * kLanes), mean);
      sum_dy_[a] = hn::Add(sum_dy_[a], g);
      sum_dy_xmu_[a] = hn::MulAdd(g, xmu, sum_dy_xmu_[a]);
    }
    if (HWY_UNLIKELY(++steps_ == kBlockSteps)) Fold();
  }

  HWY_INLINE void AddTo(GradSums& out) {
    Fold();
    out.sum_dy += total_dy_;
    out.sum_dy_xmu += total_dy_xmu_;
  }

 private:
  HWY_INLINE void Fold() {
    if (steps_ == 0) return;
    HWY_ALIGN float a_dy[kAcc * kLanes];
    HWY_ALIGN float a_xmu[kAcc * kLanes];
    for (size_t a = 0; a < kAcc; ++a) {
      hn::Store(sum_dy_[a], d_, a_dy + a * kLanes);
      hn::Store(sum_dy_xmu_[a], d_, a_xmu + a * kLanes);
      sum_dy_[a] = sum_dy_xmu_[a] = hn::Zero(d_);
    }
    for (size_t l = 0; l < kAcc * kLanes; ++l) {
      total_dy_ += static_cast<double>(a_dy[l]);
      total_dy_xmu_ += static_cast<double>(a_xmu[l]);
    }
    steps_ = 0;
  }

  D d_;
  V sum_dy_[kAcc];
  V sum_dy_xmu_[kAcc];
  size_t steps_ = 0;
  double total_dy_ = 0.0;
  double total_dy_xmu_ = 0.0;
};

}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#endif  // BNORM_SRC_WELFORD_INL_H_
