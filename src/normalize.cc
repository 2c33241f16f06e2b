// Normalize kernels (see normalize.h).
#include <stddef.h>

#include <algorithm>

#include "config.h"  // first: dispatch configuration

#include "normalize.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "normalize.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// x and y may be the same buffer: no HWY_RESTRICT on them.
template <class D>
HWY_INLINE void NormalizeOne(D d, const float* x, float* y, hn::Vec<D> mh, hn::Vec<D> ml,
                             hn::Vec<D> scale, hn::Vec<D> shift) {
  const auto centered = hn::Sub(hn::Sub(hn::LoadU(d, x), mh), ml);
  hn::StoreU(hn::MulAdd(centered, scale, shift), d, y);
}

void NormalizeNchw(const float* x, float* y, int64_t c, int64_t spatial, int64_t begin, int64_t end,
                   const AffineConstants& k) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  constexpr size_t N = hn::MaxLanes(df);
  int64_t segment = begin / spatial;  // (i, ch) pair
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++segment, s = 0) {
    const int64_t ch = segment % c;
    const size_t len = static_cast<size_t>(std::min(spatial - s, end - pos));
    const float* xs = x + pos;
    float* ys = y + pos;
    size_t j = 0;
    {
      const auto mh = hn::Set(df, k.mean_hi[ch]), ml = hn::Set(df, k.mean_lo[ch]);
      const auto scale = hn::Set(df, k.scale[ch]), shift = hn::Set(df, k.shift[ch]);
      for (; j + N <= len; j += N) NormalizeOne(df, xs + j, ys + j, mh, ml, scale, shift);
    }
    const auto mh = hn::Set(d1, k.mean_hi[ch]), ml = hn::Set(d1, k.mean_lo[ch]);
    const auto scale = hn::Set(d1, k.scale[ch]), shift = hn::Set(d1, k.shift[ch]);
    for (; j < len; ++j) NormalizeOne(d1, xs + j, ys + j, mh, ml, scale, shift);
    pos += static_cast<int64_t>(len);
  }
}

void NormalizeNhwc(const float* x, float* y, int64_t period, int64_t begin, int64_t end,
                   const AffineConstants& k) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  constexpr size_t N = hn::MaxLanes(df);
  for (int64_t pos = begin; pos < end; pos += period) {
    const size_t len = static_cast<size_t>(std::min(period, end - pos));
    const float* xs = x + pos;
    float* ys = y + pos;
    size_t j = 0;
    for (; j + N <= len; j += N) {
      NormalizeOne(df, xs + j, ys + j, hn::LoadU(df, k.mean_hi + j), hn::LoadU(df, k.mean_lo + j),
                   hn::LoadU(df, k.scale + j), hn::LoadU(df, k.shift + j));
    }
    for (; j < len; ++j) {
      NormalizeOne(d1, xs + j, ys + j, hn::LoadU(d1, k.mean_hi + j), hn::LoadU(d1, k.mean_lo + j),
                   hn::LoadU(d1, k.scale + j), hn::LoadU(d1, k.shift + j));
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace bnorm {

HWY_EXPORT(NormalizeNchw);
HWY_EXPORT(NormalizeNhwc);

void NormalizeNchw(int64_t target, const float* x, float* y, int64_t c, int64_t spatial,
                   int64_t begin, int64_t end, const AffineConstants& k) {
  BNORM_DISPATCH(NormalizeNchw, target)(x, y, c, spatial, begin, end, k);
}

void NormalizeNhwc(int64_t target, const float* x, float* y, int64_t period, int64_t begin,
                   int64_t end, const AffineConstants& k) {
  BNORM_DISPATCH(NormalizeNhwc, target)(x, y, period, begin, end, k);
}

}  // namespace bnorm
#endif  // HWY_ONCE
