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
#include "normalize-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One contiguous run with the constants of one channel. x, z and y may be the
// same buffer: no HWY_RESTRICT on them.
template <DType kT, bool kStream, class F>
HWY_INLINE void NormalizeRun(const Elem<kT>* x, const Elem<kT>* z, Elem<kT>* y, size_t len,
                             float mean, float scale, float shift) {
  StoreSpan<kT, kStream>(y, len, [&](auto d, size_t j) HWY_ATTR {
    return Normalized<kT, F>(d, x + j, Offset<F>(z, static_cast<int64_t>(j)), hn::Set(d, mean),
                             hn::Set(d, scale), hn::Set(d, shift));
  });
}

template <DType kT, bool kStream, class F>
void NormalizeNchwT(const Elem<kT>* x, const Elem<kT>* z, Elem<kT>* y, int64_t c, int64_t spatial,
                    int64_t begin, int64_t end, const AffineConstants& k, const Lookahead& ahead) {
  if (spatial >= static_cast<int64_t>(hn::MaxLanes(hn::ScalableTag<float>()))) {
    StoreChannelRuns<kT, kStream>(
        y + begin, begin, end, c, spatial, ahead,
        [&](auto d, int64_t ch) HWY_ATTR { return Broadcast(d, k, ch); },
        [&](auto d, int64_t e, const auto& kv) HWY_ATTR {
          return Normalized<kT, F>(d, x + e, Offset<F>(z, e), kv.mean, kv.scale, kv.shift);
        });
    return;
  }
  // Runs shorter than a vector: one run at a time, through the caches.
  int64_t segment = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++segment, s = 0) {
    const int64_t ch = segment % c;
    const int64_t len = std::min(spatial - s, end - pos);
    NormalizeRun<kT, false, F>(x + pos, Offset<F>(z, pos), y + pos, static_cast<size_t>(len),
                               k.mean[ch], k.scale[ch], k.shift[ch]);
    pos += len;
  }
}

template <DType kT, bool kStream, class F>
void NormalizeNchwChannelT(const Elem<kT>* x, const Elem<kT>* z, Elem<kT>* y, int64_t c,
                           int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                           const AffineConstants& k) {
  int64_t i = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++i, s = 0) {
    const int64_t len = std::min(spatial - s, end - pos);
    const int64_t offset = (i * c + ch) * spatial + s;
    NormalizeRun<kT, kStream, F>(x + offset, Offset<F>(z, offset), y + offset,
                                 static_cast<size_t>(len), k.mean[ch], k.scale[ch], k.shift[ch]);
    pos += len;
  }
}

template <DType kT, bool kStream, class F>
void NormalizeNhwcT(const Elem<kT>* x, const Elem<kT>* z, Elem<kT>* y, int64_t period,
                    int64_t begin, int64_t end, const AffineConstants& k, bool grouped_rows) {
  const Elem<kT>* xs = x + begin;
  const Elem<kT>* zs = Offset<F>(z, begin);
  // Captured by value: through a reference the compiler reloads the pointers
  // after every store (intrinsic stores may alias anything).
  const AffineConstants kc = k;
  // Streaming (beyond the LLC): each line of x (and z) prefetched into L2
  // kStreamPrefetchBytes ahead, as the NCHW pass does through its Lookahead.
  StorePeriodic<kT, kStream>(
      y + begin, static_cast<size_t>(end - begin), static_cast<size_t>(begin % period),
      static_cast<size_t>(period), grouped_rows,
      [kc](auto d, size_t q) HWY_ATTR {
        return ChannelVectors<decltype(d)>{hn::LoadU(d, kc.mean + q), hn::LoadU(d, kc.scale + q),
                                           hn::LoadU(d, kc.shift + q)};
      },
      [xs, zs](auto d, size_t i, const auto& kv) HWY_ATTR {
        if constexpr (kStream) PrefetchInputsAhead<Elem<kT>>(d, i, xs, zs);
        return Normalized<kT, F>(d, xs + i, Offset<F>(zs, static_cast<int64_t>(i)), kv.mean,
                                 kv.scale, kv.shift);
      });
}

#define BNORM_TYPED_ARGS(kT)                                                        \
  static_cast<const Elem<kT>*>(x), static_cast<const Elem<kT>*>(epi.z),            \
      static_cast<Elem<kT>*>(y)

void NormalizeNchw(DType dtype, const void* x, void* y, int64_t c, int64_t spatial, int64_t begin,
                   int64_t end, const AffineConstants& k, bool stream, const Lookahead& ahead,
                   const Epilogue& epi) {
  Variants(dtype, stream, epi, [&](auto t, auto st, auto f) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    NormalizeNchwT<kT, decltype(st)::value, decltype(f)>(BNORM_TYPED_ARGS(kT), c, spatial, begin,
                                                         end, k, ahead);
  });
}

void NormalizeNchwChannel(DType dtype, const void* x, void* y, int64_t c, int64_t spatial,
                          int64_t ch, int64_t begin, int64_t end, const AffineConstants& k,
                          bool stream, const Epilogue& epi) {
  Variants(dtype, stream, epi, [&](auto t, auto st, auto f) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    NormalizeNchwChannelT<kT, decltype(st)::value, decltype(f)>(BNORM_TYPED_ARGS(kT), c, spatial,
                                                                ch, begin, end, k);
  });
}

void NormalizeNhwc(DType dtype, const void* x, void* y, int64_t period, int64_t begin, int64_t end,
                   const AffineConstants& k, bool stream, bool grouped_rows,
                   const Epilogue& epi) {
  Variants(dtype, stream, epi, [&](auto t, auto st, auto f) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    NormalizeNhwcT<kT, decltype(st)::value, decltype(f)>(BNORM_TYPED_ARGS(kT), period, begin, end,
                                                         k, grouped_rows);
  });
}

#undef BNORM_TYPED_ARGS

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
                   const Lookahead& ahead, const Epilogue& epi) {
  BNORM_DISPATCH(NormalizeNchw, target)
  (dtype, x, y, c, spatial, begin, end, k, stream, ahead, epi);
}

void NormalizeNchwChannel(int64_t target, DType dtype, const void* x, void* y, int64_t c,
                          int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                          const AffineConstants& k, bool stream, const Epilogue& epi) {
  BNORM_DISPATCH(NormalizeNchwChannel, target)
  (dtype, x, y, c, spatial, ch, begin, end, k, stream, epi);
}

void NormalizeNhwc(int64_t target, DType dtype, const void* x, void* y, int64_t period,
                   int64_t begin, int64_t end, const AffineConstants& k, bool stream,
                   bool grouped_rows, const Epilogue& epi) {
  BNORM_DISPATCH(NormalizeNhwc, target)
  (dtype, x, y, period, begin, end, k, stream, grouped_rows, epi);
}

}  // namespace bnorm
#endif  // HWY_ONCE
