// The statistics of one channel group summed while the previous group is
// normalized (see stats_apply.h). One SIMD body per target via foreach_target.
#include "config.h"  // first: dispatch configuration

#include "stats_apply.h"

#include <stddef.h>

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "stats_apply.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "accumulators-inl.h"
#include "convert-inl.h"
#include "elementwise-inl.h"
#include "hwy/highway.h"
#include "normalize-inl.h"
#include "plan.h"
#include "stats-inl.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <DType kT, bool kStream, class F>
bool StatsWhileNormalizingT(const Elem<kT>* x, const Elem<kT>* z, Elem<kT>* y, int64_t n, int64_t c,
                            int64_t spatial, const NchwStatsUnits& units, int64_t a0, int64_t a1,
                            const AffineConstants& k) {
  if constexpr (!kPacedWrites) {
    return false;
  } else {
    const auto constants = [&](auto d, int64_t ch) HWY_ATTR { return Broadcast(d, k, ch); };
    const auto value = [&](auto d, int64_t e, const auto& kv) HWY_ATTR {
      return Normalized<kT, F>(d, x + e, Offset<F>(z, e), kv.mean, kv.scale, kv.shift);
    };
    using Writer = ChannelRunWriter<kT, kStream, decltype(constants), decltype(value)>;
    if ((a1 - a0) * spatial < Writer::U) return false;  // no store unit to pace
    const int64_t values = n * spatial;
    PacedWrites<Writer> side(Writer(c, spatial, constants, value), y, n, c, spatial, a0, a1);
    for (int64_t u = units.c0 * units.units_per_channel; u < units.c1 * units.units_per_channel;
         ++u) {
      const NchwUnit t = NchwUnitOf(u, units.units_per_channel, units.unit_len, values);
      const float pivot = units.pivots[t.ch];
      units.partials[u] =
          ShortRuns(spatial, t.begin, t.end)
              ? StatsShortRunsT<kT>(x, c, spatial, t.ch, t.begin / spatial,
                                    (t.end - t.begin) / spatial, pivot, side)
              : StatsNchwUnitT<kT>(x, c, spatial, t.ch, t.begin, t.end, pivot, side);
    }
    side.Drain();
    return true;
  }
}

// f32 only: the 16-bit variants measured no faster than summing from L2
// after the write (their conversions, not memory, set the pace), and each
// variant is a large function (both statistics kernels with the writes
// inlined), whose compile time under the sanitizers CI runs grows with the
// variants built (24 took over 10 minutes with ASan at -O2). Runs of at least
// a vector: StoreChannelRuns. AVX2 and AVX-512 only: kPacedWrites.
bool StatsWhileNormalizingRuns(DType dtype, int64_t spatial) {
  const hn::ScalableTag<float> df;
  return kPacedWrites && dtype == DType::kF32 && spatial >= static_cast<int64_t>(hn::MaxLanes(df));
}

bool StatsWhileNormalizing(DType dtype, const void* x, void* y, int64_t n, int64_t c,
                           int64_t spatial, const NchwStatsUnits& units, int64_t a0, int64_t a1,
                           const AffineConstants& k, bool stream, const Epilogue& epi) {
  if (!StatsWhileNormalizingRuns(dtype, spatial)) return false;
  bool done = false;
  ForFlag(stream, [&](auto st) HWY_ATTR {
    ForFlag(epi.z != nullptr, [&](auto residual) HWY_ATTR {
      ForFlag(epi.relu, [&](auto relu) HWY_ATTR {
        done = StatsWhileNormalizingT<DType::kF32, decltype(st)::value,
                                      Fuse<decltype(residual)::value, decltype(relu)::value>>(
            static_cast<const float*>(x), static_cast<const float*>(epi.z), static_cast<float*>(y),
            n, c, spatial, units, a0, a1, k);
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
#include "dispatch.h"
#include "stats.h"

namespace bnorm {

HWY_EXPORT(StatsWhileNormalizing);
HWY_EXPORT(StatsWhileNormalizingRuns);

bool StatsWhileNormalizingRuns(int64_t target, DType dtype, int64_t spatial) {
  return BNORM_DISPATCH(StatsWhileNormalizingRuns, target)(dtype, spatial);
}

bool StatsWhileNormalizing(int64_t target, DType dtype, const void* x, void* y, int64_t n,
                           int64_t c, int64_t spatial, const NchwStatsUnits& units, int64_t a0,
                           int64_t a1, const AffineConstants& k, bool stream, const Epilogue& epi) {
  if (!BNORM_DISPATCH(StatsWhileNormalizing, target)(dtype, x, y, n, c, spatial, units, a0, a1, k,
                                                     stream, epi)) {
    return false;
  }
  // Units whose float sums cannot be trusted: StatsNchwUnit sums them again
  // (in float, then in double), as it would have had they been summed there.
  ForEachNchwUnit(units.c0, units.c1, units.units_per_channel, units.unit_len, n * spatial,
                  [&](int64_t u, const NchwUnit& t) {
                    if (Finite(units.partials[u])) return;
                    units.partials[u] = StatsNchwUnit(target, dtype, x, c, spatial, t.ch, t.begin,
                                                      t.end, units.pivots[t.ch]);
                  });
  return true;
}

}  // namespace bnorm
#endif  // HWY_ONCE
