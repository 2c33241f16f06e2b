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
template <DType kT, bool kStream, bool kMask, bool kDz>
bool GradSumsWhileApplyingT(const GradTensors<kT>& t, Elem<kT>* dx, int64_t n, int64_t c,
                            int64_t spatial, const NchwGradUnits& units, int64_t a0, int64_t a1,
                            const GradConstants& k) {
  if constexpr (!kPacedWritesOf<kT>) {
    return false;
  } else {
    using V = Variant<false, kMask, kDz>;
    // The tensors captured by value: through a reference the compiler
    // reloads the pointers after every store (backward_apply.cc).
    const GradTensors<kT> tv = t;
    const auto constants = [&](auto d, int64_t ch) HWY_ATTR { return Broadcast(d, k, ch); };
    const auto value = [tv](auto d, int64_t e, const auto& kch)
                           HWY_ATTR { return Grad<kT, V, kStream>(d, tv, e, kch); };
    using Writer = ChannelRunWriter<kT, kStream, decltype(constants), decltype(value)>;
    if ((a1 - a0) * spatial < Writer::U) return false;  // no store unit to pace
    const int64_t values = n * spatial;
    PacedWrites<Writer> side(Writer(c, spatial, constants, value), dx, n, c, spatial, a0, a1);
    const Elem<kT>* y = kMask ? t.y : nullptr;
    for (int64_t u = units.c0 * units.units_per_channel; u < units.c1 * units.units_per_channel;
         ++u) {
      const NchwUnit r = NchwUnitOf(u, units.units_per_channel, units.unit_len, values);
      const float mean = units.mean[r.ch];
      units.partials[u] = ShortRuns(spatial, r.begin, r.end)
                              ? GradSumsShortRunsT<kT, kMask>(
                                    t.x, t.dy, y, c, spatial, r.ch, r.begin / spatial,
                                    (r.end - r.begin) / spatial, mean, side, units.from_memory)
                              : GradSumsNchwUnitT<kT, kMask>(t.x, t.dy, y, c, spatial, r.ch,
                                                             r.begin, r.end, mean, side);
    }
    side.Drain();
    return true;
  }
}

// Training-mode backward, with or without the fused ReLU's mask and the
// residual gradient dz. f32: runs of at least a vector (StoreChannelRuns),
// AVX2 and AVX-512 (kPacedWritesOf). bf16 and f16: AVX-512 only, runs of at
// least kPacedGradRun16 values, plain backward only; other 16-bit calls
// prefetch the next group instead. Plain backward, two threads (`call_timer N
// C S 0 back 2 1|2`, the prefetching path against this loop, best of 6
// alternated, us): 8x64x8192 bf16 680 -> 576, f16 649 -> 558; 4x32x32768
// bf16 654 -> 548, f16 623 -> 538; 8x32x16384 and 2x8x262144 12-24 % less;
// but with 3136-value runs (32x256x3136, 32x16x3136) level to 9 % more,
// 196-value runs level. With the ReLU mask and dz (`backz`) 16-17 % more
// (8x32x16384 bf16 1052 -> 1232, 8x64x8192 f16 1016 -> 1177)
// (docs/performance-history.md). AMD CPUs within the LLC take the step from
// the same length (kWithinLlcMinRun16 in plan.h).
constexpr int64_t kPacedGradRun16 = 8192;

bool GradSumsWhileApplyingRuns(DType dtype, const GradArgs& args, int64_t spatial) {
  const hn::ScalableTag<float> df;
  if (args.x == nullptr) return false;
  if (dtype == DType::kF32) {
    return kPacedWritesOf<DType::kF32> && spatial >= static_cast<int64_t>(hn::MaxLanes(df));
  }
  return kPacedWritesOf<DType::kBF16> && spatial >= kPacedGradRun16 && args.y == nullptr &&
         args.dz == nullptr;
}

bool GradSumsWhileApplying(DType dtype, const GradArgs& args, void* dx, int64_t n, int64_t c,
                           int64_t spatial, const NchwGradUnits& units, int64_t a0, int64_t a1,
                           const GradConstants& k, bool stream) {
  if (!GradSumsWhileApplyingRuns(dtype, args, spatial)) return false;
  bool done = false;
  ForDType(dtype, [&](auto type) HWY_ATTR {
    constexpr DType kT = decltype(type)::value;
    const GradTensors<kT> t = Typed<kT>(args, dx);
    ForFlag(stream, [&](auto st) HWY_ATTR {
      constexpr bool kStream = decltype(st)::value;
      if constexpr (kT == DType::kF32) {
        ForFlag(args.y != nullptr, [&](auto mask) HWY_ATTR {
          ForFlag(args.dz != nullptr, [&](auto dz) HWY_ATTR {
            done = GradSumsWhileApplyingT<kT, kStream, decltype(mask)::value, decltype(dz)::value>(
                t, static_cast<Elem<kT>*>(dx), n, c, spatial, units, a0, a1, k);
          });
        });
      } else {  // plain backward only (GradSumsWhileApplyingRuns)
        done = GradSumsWhileApplyingT<kT, kStream, false, false>(t, static_cast<Elem<kT>*>(dx), n,
                                                                 c, spatial, units, a0, a1, k);
      }
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
  // Units whose float sums overflowed (the same float sums as
  // GradSumsNchwUnits', so the same verdict): summed again in double, as there.
  const NchwUnitCut cut{units.units_per_channel, units.unit_len, n * spatial};
  RedoNchwGradUnits(dtype, args.x, args.dy, args.y, c, spatial, cut,
                    units.c0 * units.units_per_channel, units.c1 * units.units_per_channel,
                    units.mean, units.partials);
  return true;
}

}  // namespace bnorm
#endif  // HWY_ONCE
