// Backward elementwise kernels (see backward_apply.h).
#include "config.h"  // first: dispatch configuration

#include "backward_apply.h"

#include <stddef.h>

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backward_apply.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "backward_apply-inl.h"
#include "convert-inl.h"
#include "elementwise-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One contiguous run of channel ch starting at t. dx may equal dy (or dz dy).
template <DType kT, bool kStream, class V>
HWY_INLINE void GradRun(const GradTensors<kT>& t, Elem<kT>* dx, size_t len, const GradConstants& k,
                        int64_t ch) {
  StoreSpan<kT, kStream>(dx, len, [&](auto d, size_t j) HWY_ATTR {
    return Grad<kT, V, kStream>(d, t, static_cast<int64_t>(j), Broadcast(d, k, ch));
  });
}

template <DType kT, bool kStream, class V>
void GradApplyNchwT(const GradTensors<kT>& t, Elem<kT>* dx, int64_t c, int64_t spatial,
                    int64_t begin, int64_t end, const GradConstants& k, const Lookahead& ahead) {
  if (spatial >= static_cast<int64_t>(hn::MaxLanes(hn::ScalableTag<float>()))) {
    // Copies captured by value: through a reference the compiler reloads the
    // pointers after every store (intrinsic stores may alias anything).
    const GradTensors<kT> tv = t;
    const GradConstants kv = k;
    StoreChannelRuns<kT, kStream>(
        dx + begin, begin, end, c, spatial, ahead,
        [kv](auto d, int64_t ch) HWY_ATTR { return Broadcast(d, kv, ch); },
        [tv](auto d, int64_t e, const auto& kch)
            HWY_ATTR { return Grad<kT, V, kStream>(d, tv, e, kch); });
    return;
  }
  // Runs shorter than a vector: one run at a time, through the caches.
  int64_t segment = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++segment, s = 0) {
    const int64_t len = std::min(spatial - s, end - pos);
    GradRun<kT, false, V>(t.At(pos), dx + pos, static_cast<size_t>(len), k, segment % c);
    pos += len;
  }
}

template <DType kT, bool kStream, class V>
void GradApplyNchwChannelT(const GradTensors<kT>& t, Elem<kT>* dx, int64_t c, int64_t spatial,
                           int64_t ch, int64_t begin, int64_t end, const GradConstants& k) {
  int64_t i = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++i, s = 0) {
    const int64_t len = std::min(spatial - s, end - pos);
    const int64_t offset = (i * c + ch) * spatial + s;
    GradRun<kT, kStream, V>(t.At(offset), dx + offset, static_cast<size_t>(len), k, ch);
    pos += len;
  }
}

template <DType kT, bool kStream, class V>
void GradApplyNhwcT(const GradTensors<kT>& t, Elem<kT>* dx, int64_t period, int64_t begin,
                    int64_t end, const GradConstants& k, bool grouped_rows) {
  // Copies captured by value: through a reference the compiler reloads the
  // pointers after every store (intrinsic stores may alias anything).
  const GradTensors<kT> ts = t.At(begin);
  const GradConstants kc = k;
  StorePeriodic<kT, kStream>(
      dx + begin, static_cast<size_t>(end - begin), static_cast<size_t>(begin % period),
      static_cast<size_t>(period), grouped_rows,
      [kc](auto d, size_t q) HWY_ATTR {
        return GradVectors<decltype(d)>{hn::LoadU(d, kc.mean + q), hn::LoadU(d, kc.mean_dy + q),
                                        hn::LoadU(d, kc.a + q), hn::LoadU(d, kc.b + q)};
      },
      [ts](auto d, size_t i, const auto& kv) HWY_ATTR {
        // Streaming (beyond the LLC): each line of the inputs prefetched into
        // L2 kStreamPrefetchBytes ahead, as the NCHW pass does (Lookahead).
        if constexpr (kStream) {
          const Elem<kT>* x_used = V::frozen ? nullptr : ts.x;
          const Elem<kT>* y_used = V::mask ? ts.y : nullptr;
          PrefetchInputsAhead<Elem<kT>>(d, i, ts.dy, x_used, y_used);
        }
        return Grad<kT, V, kStream>(d, ts, static_cast<int64_t>(i), kv);
      });
}

// Runs body(kT, kStream, Variant<>) for the runtime dtype, stream flag and
// variant (frozen = x == nullptr; the frozen path has no dz output), then
// drains the streaming stores.
template <class Body>
HWY_INLINE void Variants(DType dtype, const GradArgs& a, bool stream, const Body& body) {
  ForDType(dtype, [&](auto t) HWY_ATTR {
    ForFlag(stream, [&](auto st) HWY_ATTR {
      if (a.x == nullptr) {  // also "dz only": g * 1 into dz
        ForFlag(a.y != nullptr, [&](auto mask) HWY_ATTR {
          body(t, st, Variant<true, decltype(mask)::value, false>());
        });
        return;
      }
      ForFlag(a.y != nullptr, [&](auto mask) HWY_ATTR {
        ForFlag(a.dz != nullptr, [&](auto dz) HWY_ATTR {
          body(t, st, Variant<false, decltype(mask)::value, decltype(dz)::value>());
        });
      });
    });
  });
  if (stream) hwy::FlushStream();
}

void GradApplyNchw(DType dtype, const GradArgs& a, void* dx, int64_t c, int64_t spatial,
                   int64_t begin, int64_t end, const GradConstants& k, bool stream,
                   const Lookahead& ahead) {
  Variants(dtype, a, stream, [&](auto t, auto st, auto v) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    GradApplyNchwT<kT, decltype(st)::value, decltype(v)>(
        Typed<kT>(a, dx), static_cast<Elem<kT>*>(dx), c, spatial, begin, end, k, ahead);
  });
}

void GradApplyNchwChannel(DType dtype, const GradArgs& a, void* dx, int64_t c, int64_t spatial,
                          int64_t ch, int64_t begin, int64_t end, const GradConstants& k,
                          bool stream) {
  Variants(dtype, a, stream, [&](auto t, auto st, auto v) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    GradApplyNchwChannelT<kT, decltype(st)::value, decltype(v)>(
        Typed<kT>(a, dx), static_cast<Elem<kT>*>(dx), c, spatial, ch, begin, end, k);
  });
}

void GradApplyNhwc(DType dtype, const GradArgs& a, void* dx, int64_t period, int64_t begin,
                   int64_t end, const GradConstants& k, bool stream, bool grouped_rows) {
  Variants(dtype, a, stream, [&](auto t, auto st, auto v) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    GradApplyNhwcT<kT, decltype(st)::value, decltype(v)>(
        Typed<kT>(a, dx), static_cast<Elem<kT>*>(dx), period, begin, end, k, grouped_rows);
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

void GradApplyNchw(int64_t target, DType dtype, const GradArgs& a, void* dx, int64_t c,
                   int64_t spatial, int64_t begin, int64_t end, const GradConstants& k, bool stream,
                   const Lookahead& ahead) {
  BNORM_DISPATCH(GradApplyNchw, target)(dtype, a, dx, c, spatial, begin, end, k, stream, ahead);
}

void GradApplyNchwChannel(int64_t target, DType dtype, const GradArgs& a, void* dx, int64_t c,
                          int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                          const GradConstants& k, bool stream) {
  BNORM_DISPATCH(GradApplyNchwChannel, target)(dtype, a, dx, c, spatial, ch, begin, end, k, stream);
}

void GradApplyNhwc(int64_t target, DType dtype, const GradArgs& a, void* dx, int64_t period,
                   int64_t begin, int64_t end, const GradConstants& k, bool stream,
                   bool grouped_rows) {
  BNORM_DISPATCH(GradApplyNhwc, target)
  (dtype, a, dx, period, begin, end, k, stream, grouped_rows);
}

}  // namespace bnorm
#endif  // HWY_ONCE
