// The normalization of one lane group, y = act((x - mean) * scale + shift
// [+ z]) (shared by normalize.cc and stats_apply.cc), and the dispatch over
// its compile-time variants (normalize.cc).
// Include after hwy/highway.h inside a foreach_target translation unit.

#if defined(BNORM_SRC_NORMALIZE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef BNORM_SRC_NORMALIZE_INL_H_
#undef BNORM_SRC_NORMALIZE_INL_H_
#else
#define BNORM_SRC_NORMALIZE_INL_H_
#endif

#include <stdint.h>

#include "convert-inl.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "normalize.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// y = (x - mean) * scale + shift for one lane group with given constants.
// The epilogue variant of a kernel: residual added (kZ), ReLU (kRelu).
template <bool kZ, bool kRelu>
struct Fuse {
  static constexpr bool z = kZ;
  static constexpr bool relu = kRelu;
};

// y = act((x - mean) * scale + shift [+ z]) for one lane group. ReLU keeps
// NaN (v < 0 is false for NaN), as PyTorch's does.
template <DType kT, class F, class D, class V>
HWY_INLINE V Normalized(D d, const Elem<kT>* x, const Elem<kT>* z, V mean, V scale, V shift) {
  V v = hn::MulAdd(hn::Sub(LoadF32<kT>(d, x), mean), scale, shift);
  if constexpr (F::z) v = hn::Add(v, LoadF32<kT>(d, z));
  if constexpr (F::relu) v = hn::IfThenZeroElse(hn::Lt(v, hn::Zero(d)), v);
  return v;
}

// The constants of one channel, broadcast.
template <class D>
struct ChannelVectors {
  hn::Vec<D> mean, scale, shift;
};

// The constants of channel ch, broadcast (the backward twin:
// backward_apply-inl.h).
template <class D>
HWY_INLINE ChannelVectors<D> Broadcast(D d, const AffineConstants& k, int64_t ch) {
  return ChannelVectors<D>{hn::Set(d, k.mean[ch]), hn::Set(d, k.scale[ch]),
                           hn::Set(d, k.shift[ch])};
}

// z + offset, or nullptr without a residual.
template <class F, typename T>
HWY_INLINE const T* Offset(const T* z, int64_t offset) {
  return F::z ? z + offset : nullptr;
}

// Runs body(kT, kStream, Fuse<>) for the runtime dtype, stream flag and
// epilogue, then drains the streaming stores.
template <class Body>
HWY_INLINE void Variants(DType dtype, bool stream, const Epilogue& epi, const Body& body) {
  ForDType(dtype, [&](auto t) HWY_ATTR {
    ForFlag(stream, [&](auto st) HWY_ATTR {
      ForFlag(epi.z != nullptr, [&](auto has_z) HWY_ATTR {
        ForFlag(epi.relu, [&](auto relu) HWY_ATTR {
          body(t, st, Fuse<decltype(has_z)::value, decltype(relu)::value>());
        });
      });
    });
  });
  if (stream) hwy::FlushStream();
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#endif  // BNORM_SRC_NORMALIZE_INL_H_
