// Backward elementwise kernels (see backward_apply.h).
#include "config.h"  // first: dispatch configuration

#include "backward_apply.h"

#include <stddef.h>

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backward_apply.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "convert-inl.h"
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

// dx for one lane group: dy * a (frozen), else (dy - mean_dy) * a + (x - mean) * b.
template <DType kT, bool kFrozen, class D, class K>
HWY_INLINE hn::Vec<D> Grad(D d, const Elem<kT>* x, const Elem<kT>* dy, const K& k) {
  const auto g = LoadF32<kT>(d, dy);
  if (kFrozen) return hn::Mul(g, k.a);
  const auto xmu = hn::Sub(LoadF32<kT>(d, x), k.mean);
  return hn::MulAdd(hn::Sub(g, k.mean_dy), k.a, hn::Mul(xmu, k.b));
}

template <class D>
HWY_INLINE GradVectors<D> Broadcast(D d, const GradConstants& k, int64_t ch) {
  return GradVectors<D>{hn::Set(d, k.mean[ch]), hn::Set(d, k.mean_dy[ch]), hn::Set(d, k.a[ch]),
                        hn::Set(d, k.b[ch])};
}

// One contiguous run of channel ch. dy and dx may be the same buffer.
template <DType kT, bool kFrozen, bool kStream>
HWY_INLINE void GradRun(const Elem<kT>* x, const Elem<kT>* dy, Elem<kT>* dx, size_t len,
                        const GradConstants& k, int64_t ch) {
  StoreSpan<kT, kStream>(dx, len, [&](auto d, size_t j) HWY_ATTR {
    return Grad<kT, kFrozen>(d, kFrozen ? nullptr : x + j, dy + j, Broadcast(d, k, ch));
  });
}

template <DType kT, bool kFrozen, bool kStream>
void GradApplyNchwT(const Elem<kT>* x, const Elem<kT>* dy, Elem<kT>* dx, int64_t c,
                    int64_t spatial, int64_t begin, int64_t end, const GradConstants& k,
                    const Lookahead& ahead) {
  if (spatial >= static_cast<int64_t>(hn::MaxLanes(hn::ScalableTag<float>()))) {
    StoreChannelRuns<kT, kStream>(
        dx + begin, begin, end, c, spatial, ahead,
        [&](auto d, int64_t ch) HWY_ATTR { return Broadcast(d, k, ch); },
        [&](auto d, int64_t e, const auto& kv)
            HWY_ATTR { return Grad<kT, kFrozen>(d, kFrozen ? nullptr : x + e, dy + e, kv); });
    return;
  }
  // Runs shorter than a vector: one run at a time, through the caches.
  int64_t segment = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++segment, s = 0) {
    const int64_t len = std::min(spatial - s, end - pos);
    GradRun<kT, kFrozen, false>(kFrozen ? nullptr : x + pos, dy + pos, dx + pos,
                                static_cast<size_t>(len), k, segment % c);
    pos += len;
  }
}

template <DType kT, bool kFrozen, bool kStream>
void GradApplyNchwChannelT(const Elem<kT>* x, const Elem<kT>* dy, Elem<kT>* dx, int64_t c,
                           int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                           const GradConstants& k) {
  int64_t i = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++i, s = 0) {
    const int64_t len = std::min(spatial - s, end - pos);
    const int64_t offset = (i * c + ch) * spatial + s;
    GradRun<kT, kFrozen, kStream>(kFrozen ? nullptr : x + offset, dy + offset, dx + offset,
                                  static_cast<size_t>(len), k, ch);
    pos += len;
  }
}

template <DType kT, bool kFrozen, bool kStream>
void GradApplyNhwcT(const Elem<kT>* x, const Elem<kT>* dy, Elem<kT>* dx, int64_t period,
                    int64_t begin, int64_t end, const GradConstants& k) {
  const Elem<kT>* xs = kFrozen ? nullptr : x + begin;
  const Elem<kT>* gs = dy + begin;
  StorePeriodic<kT, kStream>(
      dx + begin, static_cast<size_t>(end - begin), static_cast<size_t>(begin % period),
      static_cast<size_t>(period),
      [&](auto d, size_t q) HWY_ATTR {
        return GradVectors<decltype(d)>{hn::LoadU(d, k.mean + q), hn::LoadU(d, k.mean_dy + q),
                                        hn::LoadU(d, k.a + q), hn::LoadU(d, k.b + q)};
      },
      [&](auto d, size_t i, const auto& kv)
          HWY_ATTR { return Grad<kT, kFrozen>(d, kFrozen ? nullptr : xs + i, gs + i, kv); });
}

// Runs body(kT, kFrozen, kStream) for the runtime dtype, frozen = (x ==
// nullptr) and stream flag, then drains the streaming stores.
template <class Body>
HWY_INLINE void Variants(DType dtype, const void* x, bool stream, const Body& body) {
  ForDType(dtype, [&](auto t) HWY_ATTR {
    ForFlag(x == nullptr, [&](auto frozen) HWY_ATTR {
      ForFlag(stream, [&](auto st) HWY_ATTR { body(t, frozen, st); });
    });
  });
  if (stream) hwy::FlushStream();
}

void GradApplyNchw(DType dtype, const void* x, const void* dy, void* dx, int64_t c,
                   int64_t spatial, int64_t begin, int64_t end, const GradConstants& k,
                   bool stream, const Lookahead& ahead) {
  Variants(dtype, x, stream, [&](auto t, auto frozen, auto st) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    GradApplyNchwT<kT, decltype(frozen)::value, decltype(st)::value>(
        static_cast<const Elem<kT>*>(x), static_cast<const Elem<kT>*>(dy),
        static_cast<Elem<kT>*>(dx), c, spatial, begin, end, k, ahead);
  });
}

void GradApplyNchwChannel(DType dtype, const void* x, const void* dy, void* dx, int64_t c,
                          int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                          const GradConstants& k, bool stream) {
  Variants(dtype, x, stream, [&](auto t, auto frozen, auto st) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    GradApplyNchwChannelT<kT, decltype(frozen)::value, decltype(st)::value>(
        static_cast<const Elem<kT>*>(x), static_cast<const Elem<kT>*>(dy),
        static_cast<Elem<kT>*>(dx), c, spatial, ch, begin, end, k);
  });
}

void GradApplyNhwc(DType dtype, const void* x, const void* dy, void* dx, int64_t period,
                   int64_t begin, int64_t end, const GradConstants& k, bool stream) {
  Variants(dtype, x, stream, [&](auto t, auto frozen, auto st) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    GradApplyNhwcT<kT, decltype(frozen)::value, decltype(st)::value>(
        static_cast<const Elem<kT>*>(x), static_cast<const Elem<kT>*>(dy),
        static_cast<Elem<kT>*>(dx), period, begin, end, k);
  });
}

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

void GradApplyNchw(int64_t target, DType dtype, const void* x, const void* dy, void* dx, int64_t c,
                   int64_t spatial, int64_t begin, int64_t end, const GradConstants& k,
                   bool stream, const Lookahead& ahead) {
  BNORM_DISPATCH(GradApplyNchw, target)
  (dtype, x, dy, dx, c, spatial, begin, end, k, stream, ahead);
}

void GradApplyNchwChannel(int64_t target, DType dtype, const void* x, const void* dy, void* dx,
                          int64_t c, int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                          const GradConstants& k, bool stream) {
  BNORM_DISPATCH(GradApplyNchwChannel, target)
  (dtype, x, dy, dx, c, spatial, ch, begin, end, k, stream);
}

void GradApplyNhwc(int64_t target, DType dtype, const void* x, const void* dy, void* dx,
                   int64_t period, int64_t begin, int64_t end, const GradConstants& k,
                   bool stream) {
  BNORM_DISPATCH(GradApplyNhwc, target)(dtype, x, dy, dx, period, begin, end, k, stream);
}

}  // namespace bnorm
#endif  // HWY_ONCE
