// The backward elementwise value of one lane group (dx from dy, x and the
// per-channel constants; dz stored as it goes) and its compile-time
// variants: shared by backward_apply.cc and grad_sums_apply.cc.
// Include after hwy/highway.h inside a foreach_target translation unit.

#if defined(BNORM_SRC_BACKWARD_APPLY_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef BNORM_SRC_BACKWARD_APPLY_INL_H_
#undef BNORM_SRC_BACKWARD_APPLY_INL_H_
#else
#define BNORM_SRC_BACKWARD_APPLY_INL_H_
#endif

#include <stdint.h>

#include "backward_apply.h"
#include "convert-inl.h"
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

// The kernel variant: frozen statistics (dx = g * a; x not read), dy masked
// by a fused ReLU's output y (kMask), the masked gradient also stored to dz
// (kDz).
template <bool kFrozen, bool kMask, bool kDz>
struct Variant {
  static constexpr bool frozen = kFrozen;
  static constexpr bool mask = kMask;
  static constexpr bool dz = kDz;
};

// The tensors of a call at one offset (null where the variant does not use
// them). stream_dz: whether a streaming kernel may stream dz too, which it
// can only where dz is aligned like dx (DzStreamsWithDx).
template <DType kT>
struct GradTensors {
  const Elem<kT>* x;
  const Elem<kT>* dy;
  const Elem<kT>* y;
  Elem<kT>* dz;
  bool stream_dz;

  GradTensors At(int64_t offset) const {
    const auto at = [offset](auto* p) { return p != nullptr ? p + offset : p; };
    return GradTensors{at(x), at(dy), at(y), at(dz), stream_dz};
  }
};

// The tensors of a call, typed, with dx's output at dx.
template <DType kT>
HWY_INLINE GradTensors<kT> Typed(const GradArgs& a, const void* dx) {
  return GradTensors<kT>{static_cast<const Elem<kT>*>(a.x), static_cast<const Elem<kT>*>(a.dy),
                         static_cast<const Elem<kT>*>(a.y), static_cast<Elem<kT>*>(a.dz),
                         DzStreamsWithDx(a, dx)};
}

// dx for one lane group at offset e: g * a (frozen), else
// ((g - mean_dy) - (x - mean) * b) * a, where g is dy (masked: see
// MaskedGrad); g is stored to dz as it goes (kDz), in the same pass. With
// kStream, dz is streamed like dx where t.stream_dz: the store loops call
// this with a full vector only where dx + e is aligned for a streamed store
// unit, so dz + e is too when it has dx's alignment. A dz aligned otherwise
// goes through the caches (measured better than streaming neither: one
// output's read for ownership instead of two).
template <DType kT, class V, bool kStream = false, class D, class K>
HWY_INLINE hn::Vec<D> Grad(D d, const GradTensors<kT>& t, int64_t e, const K& k) {
  const auto g = MaskedGrad<kT, V::mask>(d, t.dy + e, V::mask ? t.y + e : nullptr);
  if constexpr (V::dz) {
    constexpr bool kFullVector = hn::MaxLanes(d) == hn::MaxLanes(hn::ScalableTag<float>());
    if (kStream && kFullVector && t.stream_dz) {
      HWY_DASSERT(reinterpret_cast<uintptr_t>(t.dz + e) % (hn::MaxLanes(d) * sizeof(Elem<kT>)) ==
                  0);
      StoreF32<kT, kStream && kFullVector>(d, g, t.dz + e);
    } else {
      StoreF32<kT, false>(d, g, t.dz + e);
    }
  }
  if (V::frozen) return hn::Mul(g, k.a);
  const auto xmu = hn::Sub(LoadF32<kT>(d, t.x + e), k.mean);
  return hn::Mul(hn::NegMulAdd(xmu, k.b, hn::Sub(g, k.mean_dy)), k.a);
}

template <class D>
HWY_INLINE GradVectors<D> Broadcast(D d, const GradConstants& k, int64_t ch) {
  return GradVectors<D>{hn::Set(d, k.mean[ch]), hn::Set(d, k.mean_dy[ch]), hn::Set(d, k.a[ch]),
                        hn::Set(d, k.b[ch])};
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#endif  // BNORM_SRC_BACKWARD_APPLY_INL_H_
