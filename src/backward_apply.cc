// Backward elementwise kernels (see backward_apply.h).
#include "config.h"  // first: dispatch configuration

#include "backward_apply.h"

#include <stddef.h>

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backward_apply.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "elementwise-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The constants of one channel, broadcast.
template <class D>
struct GradVectors {
  hn::Vec<D> mean, mean_dy, a, b;
};

// One contiguous run of one channel. dy and dx may be the same buffer.
template <bool kFrozen, bool kStream>
HWY_INLINE void GradRun(const float* x, const float* dy, float* dx, size_t len, float mean,
                        float mean_dy, float a, float b) {
  StoreSpan<kStream>(dx, len, [&](auto d, size_t j) HWY_ATTR {
    const auto g = hn::LoadU(d, dy + j);
    if (kFrozen) return hn::Mul(g, hn::Set(d, a));
    const auto xmu = hn::Sub(hn::LoadU(d, x + j), hn::Set(d, mean));
    return hn::MulAdd(hn::Sub(g, hn::Set(d, mean_dy)), hn::Set(d, a), hn::Mul(xmu, hn::Set(d, b)));
  });
}

template <bool kFrozen, bool kStream>
void GradApplyNchwT(const float* x, const float* dy, float* dx, int64_t c, int64_t spatial,
                    int64_t begin, int64_t end, const GradConstants& k, const Lookahead& ahead) {
  if (spatial >= static_cast<int64_t>(hn::MaxLanes(hn::ScalableTag<float>()))) {
    StoreChannelRuns<kStream>(
        dx + begin, begin, end, c, spatial, ahead,
        [&](auto d, int64_t ch) HWY_ATTR {
          return GradVectors<decltype(d)>{hn::Set(d, k.mean[ch]), hn::Set(d, k.mean_dy[ch]),
                                          hn::Set(d, k.a[ch]), hn::Set(d, k.b[ch])};
        },
        [&](auto d, int64_t e, const auto& kv) HWY_ATTR {
          const auto g = hn::LoadU(d, dy + e);
          if (kFrozen) return hn::Mul(g, kv.a);
          const auto xmu = hn::Sub(hn::LoadU(d, x + e), kv.mean);
          return hn::MulAdd(hn::Sub(g, kv.mean_dy), kv.a, hn::Mul(xmu, kv.b));
        });
    return;
  }
  // Runs shorter than a vector: one run at a time, through the caches.
  int64_t segment = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++segment, s = 0) {
    const int64_t ch = segment % c;
    const int64_t len = std::min(spatial - s, end - pos);
    GradRun<kFrozen, false>(kFrozen ? nullptr : x + pos, dy + pos, dx + pos,
                            static_cast<size_t>(len), k.mean[ch], k.mean_dy[ch], k.a[ch], k.b[ch]);
    pos += len;
  }
}

template <bool kFrozen, bool kStream>
void GradApplyNchwChannelT(const float* x, const float* dy, float* dx, int64_t c, int64_t spatial,
                           int64_t ch, int64_t begin, int64_t end, const GradConstants& k) {
  int64_t i = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++i, s = 0) {
    const int64_t len = std::min(spatial - s, end - pos);
    const int64_t offset = (i * c + ch) * spatial + s;
    GradRun<kFrozen, kStream>(kFrozen ? nullptr : x + offset, dy + offset, dx + offset,
                              static_cast<size_t>(len), k.mean[ch], k.mean_dy[ch], k.a[ch],
                              k.b[ch]);
    pos += len;
  }
}

template <bool kFrozen, bool kStream>
void GradApplyNhwcT(const float* x, const float* dy, float* dx, int64_t period, int64_t begin,
                    int64_t end, const GradConstants& k) {
  const float* xs = kFrozen ? nullptr : x + begin;
  const float* gs = dy + begin;
  StorePeriodic<kStream>(
      dx + begin, static_cast<size_t>(end - begin), static_cast<size_t>(begin % period),
      static_cast<size_t>(period),
      [&](auto d, size_t q) HWY_ATTR {
        return GradVectors<decltype(d)>{hn::LoadU(d, k.mean + q), hn::LoadU(d, k.mean_dy + q),
                                        hn::LoadU(d, k.a + q), hn::LoadU(d, k.b + q)};
      },
      [&](auto d, size_t i, const auto& kv) HWY_ATTR {
        const auto g = hn::LoadU(d, gs + i);
        if (kFrozen) return hn::Mul(g, kv.a);
        const auto xmu = hn::Sub(hn::LoadU(d, xs + i), kv.mean);
        return hn::MulAdd(hn::Sub(g, kv.mean_dy), kv.a, hn::Mul(xmu, kv.b));
      });
}

// Picks the instantiation for (frozen = x == nullptr, stream).
#define BNORM_GRAD_VARIANTS(FN, ...)  \
  do {                                \
    if (x == nullptr) {               \
      if (stream) {                   \
        FN<true, true>(__VA_ARGS__);  \
      } else {                        \
        FN<true, false>(__VA_ARGS__); \
      }                               \
    } else if (stream) {              \
      FN<false, true>(__VA_ARGS__);   \
    } else {                          \
      FN<false, false>(__VA_ARGS__);  \
    }                                 \
    if (stream) hwy::FlushStream();   \
  } while (0)

void GradApplyNchw(const float* x, const float* dy, float* dx, int64_t c, int64_t spatial,
                   int64_t begin, int64_t end, const GradConstants& k, bool stream,
                   const Lookahead& ahead) {
  BNORM_GRAD_VARIANTS(GradApplyNchwT, x, dy, dx, c, spatial, begin, end, k, ahead);
}

void GradApplyNchwChannel(const float* x, const float* dy, float* dx, int64_t c, int64_t spatial,
                          int64_t ch, int64_t begin, int64_t end, const GradConstants& k,
                          bool stream) {
  BNORM_GRAD_VARIANTS(GradApplyNchwChannelT, x, dy, dx, c, spatial, ch, begin, end, k);
}

void GradApplyNhwc(const float* x, const float* dy, float* dx, int64_t period, int64_t begin,
                   int64_t end, const GradConstants& k, bool stream) {
  BNORM_GRAD_VARIANTS(GradApplyNhwcT, x, dy, dx, period, begin, end, k);
}

#undef BNORM_GRAD_VARIANTS

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace bnorm {

HWY_EXPORT(GradApplyNchw);
HWY_EXPORT(GradApplyNchwChannel);
HWY_EXPORT(GradApplyNhwc);

void GradApplyNchw(int64_t target, const float* x, const float* dy, float* dx, int64_t c,
                   int64_t spatial, int64_t begin, int64_t end, const GradConstants& k,
                   bool stream, const Lookahead& ahead) {
  BNORM_DISPATCH(GradApplyNchw, target)(x, dy, dx, c, spatial, begin, end, k, stream, ahead);
}

void GradApplyNchwChannel(int64_t target, const float* x, const float* dy, float* dx, int64_t c,
                          int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                          const GradConstants& k, bool stream) {
  BNORM_DISPATCH(GradApplyNchwChannel, target)(x, dy, dx, c, spatial, ch, begin, end, k, stream);
}

void GradApplyNhwc(int64_t target, const float* x, const float* dy, float* dx, int64_t period,
                   int64_t begin, int64_t end, const GradConstants& k, bool stream) {
  BNORM_DISPATCH(GradApplyNhwc, target)(x, dy, dx, period, begin, end, k, stream);
}

}  // namespace bnorm
#endif  // HWY_ONCE
