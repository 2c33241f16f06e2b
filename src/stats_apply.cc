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
  if constexpr (!kPacedWritesOf<kT>) {
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
                                    (t.end - t.begin) / spatial, pivot, side, units.from_memory)
              : StatsNchwUnitT<kT>(x, c, spatial, t.ch, t.begin, t.end, pivot, side);
    }
    side.Drain();
    return true;
  }
}

// Where the next group is summed in the write's loop rather than prefetched
// and summed from L2 after it. f32: runs of at least a vector
// (StoreChannelRuns), AVX2 and AVX-512 (kPacedWritesOf). bf16 and f16: AVX-512
// only, runs of at least four vectors. With AVX-512's conversions (bf16 stores
// by VCVTNE2PS2BF16) the interleaved loop took 6-30 % less time than the
// prefetching path on 64 to 196-value runs and longer (`call_timer N C S 0
// train 2 1|2`: 64x1024x196 bf16 1580-1637 -> 1374-1422 us, f16 1543-1548 ->
// 1451-1458; 8x32x16384 bf16 427-550 -> 368-376), but 2-10 % more on 36 and
// 49-value runs (32x2048x49, 64x1024x36); with AVX2's emulated conversions it
// was slower on most shapes (docs/performance-history.md).
bool StatsWhileNormalizingRuns(DType dtype, int64_t spatial) {
  const hn::ScalableTag<float> df;
  const auto lanes = static_cast<int64_t>(hn::MaxLanes(df));
  if (dtype == DType::kF32) return kPacedWritesOf<DType::kF32> && spatial >= lanes;
  return kPacedWritesOf<DType::kBF16> && spatial >= 4 * lanes;
}

bool StatsWhileNormalizing(DType dtype, const void* x, void* y, int64_t n, int64_t c,
                           int64_t spatial, const NchwStatsUnits& units, int64_t a0, int64_t a1,
                           const AffineConstants& k, bool stream, const Epilogue& epi) {
  if (!StatsWhileNormalizingRuns(dtype, spatial)) return false;
  bool done = false;
  Variants(dtype, stream, epi, [&](auto t, auto st, auto f) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    done = StatsWhileNormalizingT<kT, decltype(st)::value, decltype(f)>(
        static_cast<const Elem<kT>*>(x), static_cast<const Elem<kT>*>(epi.z),
        static_cast<Elem<kT>*>(y), n, c, spatial, units, a0, a1, k);
  });
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
  // Units whose float sums cannot be trusted (the same float sums as
  // StatsNchwUnits', so the same verdict): summed again in double, as there.
  const NchwUnitCut cut{units.units_per_channel, units.unit_len, n * spatial};
  RedoNchwUnits(dtype, x, c, spatial, cut, units.c0 * units.units_per_channel,
                units.c1 * units.units_per_channel, units.partials);
  return true;
}

}  // namespace bnorm
#endif  // HWY_ONCE
