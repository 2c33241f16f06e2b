// Backward elementwise kernels (see backward_apply.h).
#include <stddef.h>

#include <algorithm>

#include "config.h"  // first: dispatch configuration

#include "backward_apply.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backward_apply.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Constants of one channel or one run of positions, as vectors.
template <class D>
struct GradVectors {
  hn::Vec<D> mean, mean_dy, a, b;
};

// dy and dx may be the same buffer: no HWY_RESTRICT on them.
template <bool kFrozen, class D>
HWY_INLINE void GradOne(D d, const float* x, const float* dy, float* dx, const GradVectors<D>& k) {
  const auto g = hn::LoadU(d, dy);
  if (kFrozen) {
    hn::StoreU(hn::Mul(g, k.a), d, dx);
  } else {
    const auto xmu = hn::Sub(hn::LoadU(d, x), k.mean);
    hn::StoreU(hn::MulAdd(hn::Sub(g, k.mean_dy), k.a, hn::Mul(xmu, k.b)), d, dx);
  }
}

template <class D>
HWY_INLINE GradVectors<D> Broadcast(D d, const GradConstants& k, int64_t i) {
  return {hn::Set(d, k.mean[i]), hn::Set(d, k.mean_dy[i]), hn::Set(d, k.a[i]), hn::Set(d, k.b[i])};
}

template <class D>
HWY_INLINE GradVectors<D> LoadAt(D d, const GradConstants& k, size_t j) {
  return {hn::LoadU(d, k.mean + j), hn::LoadU(d, k.mean_dy + j), hn::LoadU(d, k.a + j),
          hn::LoadU(d, k.b + j)};
}

template <bool kFrozen>
void GradApplyNchwT(const float* x, const float* dy, float* dx, int64_t c, int64_t spatial,
                    int64_t begin, int64_t end, const GradConstants& k) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  constexpr size_t N = hn::MaxLanes(df);
  int64_t segment = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++segment, s = 0) {
    const int64_t ch = segment % c;
    const size_t len = static_cast<size_t>(std::min(spatial - s, end - pos));
    const float* xs = kFrozen ? nullptr : x + pos;
    size_t j = 0;
    const auto kv = Broadcast(df, k, ch);
    for (; j + N <= len; j += N) {
      GradOne<kFrozen>(df, kFrozen ? nullptr : xs + j, dy + pos + j, dx + pos + j, kv);
    }
    const auto k1 = Broadcast(d1, k, ch);
    for (; j < len; ++j)
      GradOne<kFrozen>(d1, kFrozen ? nullptr : xs + j, dy + pos + j, dx + pos + j, k1);
    pos += static_cast<int64_t>(len);
  }
}

template <bool kFrozen>
void GradApplyNhwcT(const float* x, const float* dy, float* dx, int64_t period, int64_t begin,
                    int64_t end, const GradConstants& k) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  constexpr size_t N = hn::MaxLanes(df);
  for (int64_t pos = begin; pos < end; pos += period) {
    const size_t len = static_cast<size_t>(std::min(period, end - pos));
    size_t j = 0;
    for (; j + N <= len; j += N) {
      GradOne<kFrozen>(df, kFrozen ? nullptr : x + pos + j, dy + pos + j, dx + pos + j,
                       LoadAt(df, k, j));
    }
    for (; j < len; ++j) {
      GradOne<kFrozen>(d1, kFrozen ? nullptr : x + pos + j, dy + pos + j, dx + pos + j,
                       LoadAt(d1, k, j));
    }
  }
}

void GradApplyNchw(const float* x, const float* dy, float* dx, int64_t c, int64_t spatial,
                   int64_t begin, int64_t end, const GradConstants& k) {
  if (x == nullptr) {
    GradApplyNchwT<true>(x, dy, dx, c, spatial, begin, end, k);
  } else {
    GradApplyNchwT<false>(x, dy, dx, c, spatial, begin, end, k);
  }
}

void GradApplyNhwc(const float* x, const float* dy, float* dx, int64_t period, int64_t begin,
                   int64_t end, const GradConstants& k) {
  if (x == nullptr) {
    GradApplyNhwcT<true>(x, dy, dx, period, begin, end, k);
  } else {
    GradApplyNhwcT<false>(x, dy, dx, period, begin, end, k);
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace bnorm {

HWY_EXPORT(GradApplyNchw);
HWY_EXPORT(GradApplyNhwc);

void GradApplyNchw(int64_t target, const float* x, const float* dy, float* dx, int64_t c,
                   int64_t spatial, int64_t begin, int64_t end, const GradConstants& k) {
  BNORM_DISPATCH(GradApplyNchw, target)(x, dy, dx, c, spatial, begin, end, k);
}

void GradApplyNhwc(int64_t target, const float* x, const float* dy, float* dx, int64_t period,
                   int64_t begin, int64_t end, const GradConstants& k) {
  BNORM_DISPATCH(GradApplyNhwc, target)(x, dy, dx, period, begin, end, k);
}

}  // namespace bnorm
#endif  // HWY_ONCE
