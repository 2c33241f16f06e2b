// Normalize kernels (see normalize.h).
#include "config.h"  // first: dispatch configuration

#include "normalize.h"

#include <stddef.h>

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "normalize.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "convert-inl.h"
#include "elementwise-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// y = (x - mean) * scale + shift for one lane group with given constants.
template <DType kT, class D, class V>
HWY_INLINE V Normalized(D d, const Elem<kT>* x, V mean, V scale, V shift) {
  return hn::MulAdd(hn::Sub(LoadF32<kT>(d, x), mean), scale, shift);
}

// The constants of one channel, broadcast.
template <class D>
struct ChannelVectors {
  hn::Vec<D> mean, scale, shift;
};

// One contiguous run with the constants of one channel. x and y may be the
// same buffer: no HWY_RESTRICT on them.
template <DType kT, bool kStream>
HWY_INLINE void NormalizeRun(const Elem<kT>* x, Elem<kT>* y, size_t len, float mean, float scale,
                             float shift) {
  StoreSpan<kT, kStream>(y, len, [&](auto d, size_t j) HWY_ATTR {
    return Normalized<kT>(d, x + j, hn::Set(d, mean), hn::Set(d, scale), hn::Set(d, shift));
  });
}

template <DType kT, bool kStream>
void NormalizeNchwT(const Elem<kT>* x, Elem<kT>* y, int64_t c, int64_t spatial, int64_t begin,
                    int64_t end, const AffineConstants& k, const Lookahead& ahead) {
  if (spatial >= static_cast<int64_t>(hn::MaxLanes(hn::ScalableTag<float>()))) {
    StoreChannelRuns<kT, kStream>(
        y + begin, begin, end, c, spatial, ahead,
        [&](auto d, int64_t ch) HWY_ATTR {
          return ChannelVectors<decltype(d)>{hn::Set(d, k.mean[ch]), hn::Set(d, k.scale[ch]),
                                             hn::Set(d, k.shift[ch])};
        },
        [&](auto d, int64_t e, const auto& kv)
            HWY_ATTR { return Normalized<kT>(d, x + e, kv.mean, kv.scale, kv.shift); });
    return;
  }
  // Runs shorter than a vector: one run at a time, through the caches.
  int64_t segment = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++segment, s = 0) {
    const int64_t ch = segment % c;
    const int64_t len = std::min(spatial - s, end - pos);
    NormalizeRun<kT, false>(x + pos, y + pos, static_cast<size_t>(len), k.mean[ch], k.scale[ch],
                            k.shift[ch]);
    pos += len;
  }
}

template <DType kT, bool kStream>
void NormalizeNchwChannelT(const Elem<kT>* x, Elem<kT>* y, int64_t c, int64_t spatial, int64_t ch,
                           int64_t begin, int64_t end, const AffineConstants& k) {
  int64_t i = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++i, s = 0) {
    const int64_t len = std::min(spatial - s, end - pos);
    const int64_t offset = (i * c + ch) * spatial + s;
    NormalizeRun<kT, kStream>(x + offset, y + offset, static_cast<size_t>(len), k.mean[ch],
                              k.scale[ch], k.shift[ch]);
    pos += len;
  }
}

template <DType kT, bool kStream>
void NormalizeNhwcT(const Elem<kT>* x, Elem<kT>* y, int64_t period, int64_t begin, int64_t end,
                    const AffineConstants& k) {
  const Elem<kT>* xs = x + begin;
  StorePeriodic<kT, kStream>(
      y + begin, static_cast<size_t>(end - begin), static_cast<size_t>(begin % period),
      static_cast<size_t>(period),
      [&](auto d, size_t q) HWY_ATTR {
        return ChannelVectors<decltype(d)>{hn::LoadU(d, k.mean + q), hn::LoadU(d, k.scale + q),
                                           hn::LoadU(d, k.shift + q)};
      },
      [&](auto d, size_t i, const auto& kv)
          HWY_ATTR { return Normalized<kT>(d, xs + i, kv.mean, kv.scale, kv.shift); });
}

// Runs body(kT, kStream) for the runtime dtype and stream flag, then drains
// the streaming stores.
template <class Body>
HWY_INLINE void Variants(DType dtype, bool stream, const Body& body) {
  ForDType(dtype, [&](auto t) HWY_ATTR {
    ForFlag(stream, [&](auto st) HWY_ATTR { body(t, st); });
  });
  if (stream) hwy::FlushStream();
}

void NormalizeNchw(DType dtype, const void* x, void* y, int64_t c, int64_t spatial, int64_t begin,
                   int64_t end, const AffineConstants& k, bool stream, const Lookahead& ahead) {
  Variants(dtype, stream, [&](auto t, auto st) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    NormalizeNchwT<kT, decltype(st)::value>(static_cast<const Elem<kT>*>(x),
                                            static_cast<Elem<kT>*>(y), c, spatial, begin, end, k,
                                            ahead);
  });
}

void NormalizeNchwChannel(DType dtype, const void* x, void* y, int64_t c, int64_t spatial,
                          int64_t ch, int64_t begin, int64_t end, const AffineConstants& k,
                          bool stream) {
  Variants(dtype, stream, [&](auto t, auto st) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    NormalizeNchwChannelT<kT, decltype(st)::value>(static_cast<const Elem<kT>*>(x),
                                                   static_cast<Elem<kT>*>(y), c, spatial, ch,
                                                   begin, end, k);
  });
}

void NormalizeNhwc(DType dtype, const void* x, void* y, int64_t period, int64_t begin, int64_t end,
                   const AffineConstants& k, bool stream) {
  Variants(dtype, stream, [&](auto t, auto st) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    NormalizeNhwcT<kT, decltype(st)::value>(static_cast<const Elem<kT>*>(x),
                                            static_cast<Elem<kT>*>(y), period, begin, end, k);
  });
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace bnorm {

HWY_EXPORT(NormalizeNchw);
HWY_EXPORT(NormalizeNchwChannel);
HWY_EXPORT(NormalizeNhwc);

void NormalizeNchw(int64_t target, DType dtype, const void* x, void* y, int64_t c, int64_t spatial,
                   int64_t begin, int64_t end, const AffineConstants& k, bool stream,
                   const Lookahead& ahead) {
  BNORM_DISPATCH(NormalizeNchw, target)(dtype, x, y, c, spatial, begin, end, k, stream, ahead);
}

void NormalizeNchwChannel(int64_t target, DType dtype, const void* x, void* y, int64_t c,
                          int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                          const AffineConstants& k, bool stream) {
  BNORM_DISPATCH(NormalizeNchwChannel, target)(dtype, x, y, c, spatial, ch, begin, end, k, stream);
}

void NormalizeNhwc(int64_t target, DType dtype, const void* x, void* y, int64_t period,
                   int64_t begin, int64_t end, const AffineConstants& k, bool stream) {
  BNORM_DISPATCH(NormalizeNhwc, target)(dtype, x, y, period, begin, end, k, stream);
}

}  // namespace bnorm
#endif  // HWY_ONCE
