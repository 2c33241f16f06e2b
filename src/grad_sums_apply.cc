// The gradient sums of one channel group taken while the previous group's dx
// is written (see grad_sums_apply.h). One SIMD body per target via
// foreach_target.
#include "config.h"  // first: dispatch configuration

#include "grad_sums_apply.h"

#include <stddef.h>

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "grad_sums_apply.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "accumulators-inl.h"
#include "backward_apply-inl.h"
#include "backward_reduce-inl.h"
#include "convert-inl.h"
#include "elementwise-inl.h"
#include "hwy/highway.h"
#include "plan.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// kMask: dy masked by the fused ReLU's output y, in the sums and in dx;
// kDz: the masked gradient also stored to dz as dx is written.
template <bool kStream, bool kMask, bool kDz>
bool GradSumsWhileApplyingT(const GradTensors<DType::kF32>& t, float* dx, int64_t n, int64_t c,
                            int64_t spatial, const NchwGradUnits& units, int64_t a0, int64_t a1,
                            const GradConstants& k) {
  if constexpr (!kPacedWrites) {
    return false;
  } else {
    using V = Variant<false, kMask, kDz>;
    // The tensors captured by value: through a reference the compiler
    // reloads the pointers after every store (backward_apply.cc).
    const GradTensors<DType::kF32> tv = t;
    const auto constants = [&](auto d, int64_t ch) HWY_ATTR { return Broadcast(d, k, ch); };
    const auto value = [tv](auto d, int64_t e, const auto& kch)
                           HWY_ATTR { return Grad<DType::kF32, V, kStream>(d, tv, e, kch); };
    using Writer = ChannelRunWriter<DType::kF32, kStream, decltype(constants), decltype(value)>;
    if ((a1 - a0) * spatial < Writer::U) return false;  // no store unit to pace
    const int64_t values = n * spatial;
    PacedWrites<Writer> side(Writer(c, spatial, constants, value), dx, n, c, spatial, a0, a1);
    const float* y = kMask ? t.y : nullptr;
    for (int64_t u = units.c0 * units.units_per_channel; u < units.c1 * units.units_per_channel;
         ++u) {
      const NchwUnit r = NchwUnitOf(u, units.units_per_channel, units.unit_len, values);
      const float mean = units.mean[r.ch];
      units.partials[u] = ShortRuns(spatial, r.begin, r.end)
                              ? GradSumsShortRunsT<DType::kF32, kMask>(
                                    t.x, t.dy, y, c, spatial, r.ch, r.begin / spatial,
                                    (r.end - r.begin) / spatial, mean, side)
                              : GradSumsNchwUnitT<DType::kF32, kMask>(
                                    t.x, t.dy, y, c, spatial, r.ch, r.begin, r.end, mean, side);
    }
    side.Drain();
    return true;
  }
}

// f32 training-mode backward, with or without the fused ReLU's mask and the
// residual gradient dz; 16-bit types prefetch the next group instead: with
// AVX-512 a 16-bit version of this loop (plain backward, a trial) measured
// 10-20 % faster on 8x32x16384, 3-6 % slower on 64x1024x196 bf16 and level
// elsewhere (`call_timer N C S 0 back 2 1|2`), unlike training
// (stats_apply.cc). Runs of at least a vector: StoreChannelRuns. AVX2 and
// AVX-512 only: kPacedWrites.
bool GradSumsWhileApplyingRuns(DType dtype, const GradArgs& args, int64_t spatial) {
  const hn::ScalableTag<float> df;
  return kPacedWrites && dtype == DType::kF32 && args.x != nullptr &&
         spatial >= static_cast<int64_t>(hn::MaxLanes(df));
}

bool GradSumsWhileApplying(DType dtype, const GradArgs& args, void* dx, int64_t n, int64_t c,
                           int64_t spatial, const NchwGradUnits& units, int64_t a0, int64_t a1,
                           const GradConstants& k, bool stream) {
  if (!GradSumsWhileApplyingRuns(dtype, args, spatial)) return false;
  const GradTensors<DType::kF32> t = Typed<DType::kF32>(args, dx);
  bool done = false;
  ForFlag(stream, [&](auto st) HWY_ATTR {
    ForFlag(args.y != nullptr, [&](auto mask) HWY_ATTR {
      ForFlag(args.dz != nullptr, [&](auto dz) HWY_ATTR {
        done =
            GradSumsWhileApplyingT<decltype(st)::value, decltype(mask)::value, decltype(dz)::value>(
                t, static_cast<float*>(dx), n, c, spatial, units, a0, a1, k);
      });
    });
  });
  if (stream) hwy::FlushStream();
  return done;
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "backward_reduce.h"
#include "dispatch.h"

namespace bnorm {

HWY_EXPORT(GradSumsWhileApplying);
HWY_EXPORT(GradSumsWhileApplyingRuns);

bool GradSumsWhileApplyingRuns(int64_t target, DType dtype, const GradArgs& args, int64_t spatial) {
  return BNORM_DISPATCH(GradSumsWhileApplyingRuns, target)(dtype, args, spatial);
}

bool GradSumsWhileApplying(int64_t target, DType dtype, const GradArgs& args, void* dx, int64_t n,
                           int64_t c, int64_t spatial, const NchwGradUnits& units, int64_t a0,
                           int64_t a1, const GradConstants& k, bool stream) {
  if (!BNORM_DISPATCH(GradSumsWhileApplying, target)(dtype, args, dx, n, c, spatial, units, a0, a1,
                                                     k, stream)) {
    return false;
  }
  // Units whose float sums overflowed: GradSumsNchwUnit sums them again (in
  // float, then in double), as it would have had they been summed there.
  ForEachNchwUnit(units.c0, units.c1, units.units_per_channel, units.unit_len, n * spatial,
                  [&](int64_t u, const NchwUnit& t) {
                    if (Finite(units.partials[u])) return;
                    units.partials[u] =
                        GradSumsNchwUnit(target, dtype, args.x, args.dy, args.y, c, spatial, t.ch,
                                         t.begin, t.end, units.mean[t.ch]);
                  });
  return true;
}

}  // namespace bnorm
#endif  // HWY_ONCE
