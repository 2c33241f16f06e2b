// Statistics kernels (see stats.h). One SIMD body per target via foreach_target.
#include <stddef.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "config.h"  // first: dispatch configuration

#include "stats.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "stats.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "accumulators-inl.h"
#include "hwy/highway.h"
#include "lookahead.h"
#include "plan.h"
#include "stats-inl.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Shifted sums for `positions` lanes kept in memory (NHWC rows are wider than
// a register file), all positions sharing one count: adds kRows consecutive
// vector rows (`stride` elements apart) per load of the sums. With `ahead`
// (else null), prefetches into L2 the same positions of the kRows vector
// rows from there on.
template <DType kT, size_t kRows, class DF, class D1>
HWY_INLINE void ShiftedRows(DF df, D1 d1, size_t positions, const Elem<kT>* HWY_RESTRICT row,
                            size_t stride, const float* HWY_RESTRICT shift, float* HWY_RESTRICT sum,
                            float* HWY_RESTRICT sum_sq, const Elem<kT>* ahead = nullptr) {
  constexpr size_t N = hn::MaxLanes(DF());
  const auto update = [&](auto d, size_t p, auto t, auto& s, auto& q) HWY_ATTR {
    for (size_t r = 0; r < kRows; ++r) {
      const auto e = hn::Sub(LoadF32<kT>(d, row + r * stride + p), t);
      s = hn::Add(s, e);
      q = hn::MulAdd(e, e, q);
    }
  };
  size_t p = 0;
  for (; p + N <= positions; p += N) {
    if (ahead != nullptr) {
      for (size_t r = 0; r < kRows; ++r) {
        PrefetchStepToL2<N * sizeof(Elem<kT>)>(reinterpret_cast<uintptr_t>(ahead + r * stride + p));
      }
    }
    auto s = hn::Load(df, sum + p);
    auto q = hn::Load(df, sum_sq + p);
    update(df, p, hn::Load(df, shift + p), s, q);
    hn::Store(s, df, sum + p);
    hn::Store(q, df, sum_sq + p);
  }
  for (; p < positions; ++p) {
    auto s = hn::LoadU(d1, sum + p);
    auto q = hn::LoadU(d1, sum_sq + p);
    update(d1, p, hn::LoadU(d1, shift + p), s, q);
    hn::StoreU(s, d1, sum + p);
    hn::StoreU(q, d1, sum_sq + p);
  }
}

// The moments of `width` channels of one position each (the NHWC unit's
// double state), into the unit's output arrays, in vectors: the mean of a
// channel whose float sums cannot be trusted (ShiftTrusted) is NaN,
// Untrusted()'s mark (its M2 is left as computed: the caller redoes the
// channel).
HWY_INLINE void TrustedMoments(size_t width, double count, const double* HWY_RESTRICT mean,
                               const double* HWY_RESTRICT m2, const double* HWY_RESTRICT shifted,
                               double* HWY_RESTRICT out_mean, double* HWY_RESTRICT out_m2) {
  size_t ch = 0;
#if HWY_HAVE_FLOAT64
  const hn::ScalableTag<double> dd;
  const size_t n = hn::Lanes(dd);
  const auto nan = hn::Set(dd, std::numeric_limits<double>::quiet_NaN());
  for (; ch + n <= width; ch += n) {
    const auto vm2 = hn::Load(dd, m2 + ch);
    const auto vmean = hn::Load(dd, mean + ch);
    const auto trusted = ShiftTrustedLanes(dd, count, hn::Load(dd, shifted + ch), vmean, vm2);
    hn::StoreU(hn::IfThenElse(trusted, vmean, nan), dd, out_mean + ch);
    hn::StoreU(vm2, dd, out_m2 + ch);
  }
#endif
  for (; ch < width; ++ch) {
    const bool trusted = ShiftTrusted(shifted[ch], Moments{count, mean[ch], m2[ch]});
    out_mean[ch] = trusted ? mean[ch] : std::numeric_limits<double>::quiet_NaN();
    out_m2[ch] = m2[ch];
  }
}

// Returns whether every channel's moments came out finite (else the caller
// redoes the others in double), checked once they are written.
template <DType kT>
bool StatsNhwcUnitT(const Elem<kT>* x, int64_t c, int64_t c0, int64_t width,
                    int64_t rows_per_period, int64_t row_begin, int64_t row_end,
                    const float* pivots, bool rows_ahead, double* out_mean,
                    double* out_m2) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  const size_t positions = static_cast<size_t>(width * rows_per_period);
  HWY_ALIGN float shift[kMaxPositions];
  HWY_ALIGN float sum[kMaxPositions];
  HWY_ALIGN float sum_sq[kMaxPositions];
  HWY_ALIGN double mean[kMaxPositions];
  HWY_ALIGN double m2[kMaxPositions];
  HWY_ALIGN double shifted[kMaxPositions];
  for (int64_t k = 0; k < rows_per_period; ++k) {
    std::copy(pivots + c0, pivots + c0 + width, shift + k * width);
  }
  std::fill(sum, sum + positions, 0.0f);
  std::fill(sum_sq, sum_sq + positions, 0.0f);
  std::fill(mean, mean + positions, 0.0);
  std::fill(m2, m2 + positions, 0.0);
  std::fill(shifted, shifted + positions, 0.0);
  size_t steps = 0;
  double count = 0.0;
  // CloseBlock for every position at once: all positions share the counts,
  // so the merge coefficients are computed once and the loop has no division
  // (with count == 0 it reduces to mean = block mean, m2 = block M2).
  const auto close = [&]() {
    const double n = static_cast<double>(steps);
    const double inv_n = 1.0 / n;
    const double total = count + n;
    const double fraction = n / total;
    const double cross = count * fraction;
    for (size_t p = 0; p < positions; ++p) {
      const double s = static_cast<double>(sum[p]);
      const double q = static_cast<double>(sum_sq[p]);
      const double offset = s * inv_n;
      const double delta = static_cast<double>(shift[p]) + offset - mean[p];
      mean[p] += delta * fraction;
      m2[p] += std::max(q - s * offset, 0.0) + delta * (delta * cross);  // as MergeMoments
      shifted[p] += q;
      shift[p] = static_cast<float>(mean[p]);
      sum[p] = sum_sq[p] = 0.0f;
    }
    count = total;
    steps = 0;
  };
  int64_t r = row_begin;
  // Periods of one to four vectors, and six or eight on AVX-512 (its 32
  // registers hold the 24 vectors of sums and shifts): C = 2, 3, 4, 6, 8,
  // 12, 16, 24, 32, 48, 64, 96 or 128 on AVX-512; 2, 4, 8, 16 or 32 on
  // AVX2; 2, 4, 8 or 16 on SSE4 and SSSE3 (blocks of C > 1024 are wider
  // than 500 channels: PlanReduction). The sums stay in registers
  // for a whole block. Through the arrays, each group of rows waited for the
  // stores of the group before (C = 8 from L2: 4.5 cycles a vector), and
  // with three or more vectors the loads and stores of the sums cost 5-18 %
  // (tools/call_timer.cc, paired medians of 6 alternated runs: statistics
  // from L2, 1 thread, C = 3 and 64 f32 0.82 and 0.88 of the time, bf16 0.88
  // and 0.93; C = 32 on AVX2 0.84; 2 threads, training of 32x128x784 bf16
  // 0.95, f32 level). The same adds in the same order as below, which then
  // find no row left.
  constexpr size_t N = hn::MaxLanes(hn::ScalableTag<float>());
  const int64_t ahead = AheadRows(rows_per_period, positions * sizeof(Elem<kT>));
  // One block per turn of the outer loop, its sums loaded into locals and
  // stored back around the inner loop: no lambda takes the vectors by
  // reference. With load and store lambdas GCC kept the sums of the
  // two-vector bf16 and f16 instances on the stack (a store and reload per
  // row: statistics of 2x32x4096 bf16 from L2, 1 thread, 39 us against
  // f32's 15; 16 us now).
  const auto in_registers = [&](auto vectors) HWY_ATTR {
    constexpr size_t kVectors = decltype(vectors)::value;
    using V = hn::Vec<decltype(df)>;
    const int64_t lead = rows_ahead ? ahead : std::numeric_limits<int64_t>::max() / 2;
    while (r + rows_per_period <= row_end) {
      V s[kVectors], q[kVectors], t[kVectors];
      for (size_t v = 0; v < kVectors; ++v) {
        s[v] = hn::Load(df, sum + v * N);
        q[v] = hn::Load(df, sum_sq + v * N);
        t[v] = hn::Load(df, shift + v * N);
      }
      // Rows of this block: a counted loop.
      const int64_t rows = std::min<int64_t>(static_cast<int64_t>(kBlockSteps - steps),
                                             (row_end - r) / rows_per_period);
      for (int64_t k = 0; k < rows; ++k, r += rows_per_period) {
        const Elem<kT>* HWY_RESTRICT row = x + r * c + c0;
        if (r + lead + rows_per_period <= row_end) {
          for (size_t v = 0; v < kVectors; ++v) {
            PrefetchStepToL2<N * sizeof(Elem<kT>)>(
                reinterpret_cast<uintptr_t>(x + (r + lead) * c + c0 + v * N));
          }
        }
        for (size_t v = 0; v < kVectors; ++v) {
          const V e = hn::Sub(LoadF32<kT>(df, row + v * N), t[v]);
          s[v] = hn::Add(s[v], e);
          q[v] = hn::MulAdd(e, e, q[v]);
        }
      }
      steps += static_cast<size_t>(rows);
      for (size_t v = 0; v < kVectors; ++v) {
        hn::Store(s[v], df, sum + v * N);
        hn::Store(q[v], df, sum_sq + v * N);
      }
      if (steps == kBlockSteps) close();
    }
  };
  ForRegisterPeriod(positions, in_registers);
  const size_t stride = static_cast<size_t>(rows_per_period * c);
  static_assert(kBlockSteps % 4 == 0, "blocks of four rows must not straddle a close");
  // With rows_ahead (tensors beyond the LLC), the rows kStreamPrefetchBytes
  // on (AheadRows) are fetched while these are summed.
  const auto ahead_of = [&](int64_t rows) -> const Elem<kT>* {
    const int64_t next = r + ahead;
    return rows_ahead && next + rows * rows_per_period <= row_end ? x + next * c + c0 : nullptr;
  };
  // Four rows per load of the sums, within the LLC and beyond: one at a time
  // (a single read stream) was slower or level for the statistics (plan.cc,
  // at reduce_rows_at_once, which only the gradient sums take).
  for (; r + 4 * rows_per_period <= row_end; r += 4 * rows_per_period) {
    ShiftedRows<kT, 4>(df, d1, positions, x + r * c + c0, stride, shift, sum, sum_sq, ahead_of(4));
    steps += 4;
    if (steps == kBlockSteps) close();
  }
  // The last rows of the unit, one at a time.
  for (; r + rows_per_period <= row_end; r += rows_per_period) {
    ShiftedRows<kT, 1>(df, d1, positions, x + r * c + c0, stride, shift, sum, sum_sq,
                       ahead_of(1));
    steps += 1;
    if (steps == kBlockSteps) close();
  }
  if (steps != 0) close();
  // One position per channel: its state is the result (the same bits as the
  // general merge below).
  if (rows_per_period == 1 && r == row_end) {
    TrustedMoments(static_cast<size_t>(width), count, mean, m2, shifted, out_mean, out_m2);
    return AllFinite(static_cast<size_t>(width), out_mean, out_m2);
  }
  // Positions p, p + width, ... hold the same channel: merge them in order.
  for (int64_t ch = 0; ch < width; ++ch) {
    Moments m;
    double ch_shifted = 0.0;
    for (int64_t k = 0; k < rows_per_period; ++k) {
      const size_t p = static_cast<size_t>(k * width + ch);
      MergeMoments(m, Moments{count, mean[p], m2[p]});
      ch_shifted += shifted[p];
    }
    // Rows left over after whole periods (fewer than rows_per_period; only
    // in the last unit): merged one value at a time, in double.
    for (int64_t rr = r; rr < row_end; ++rr) {
      MergeMoments(m, Moments{1.0, static_cast<double>(ScalarF32<kT>(x[rr * c + c0 + ch])), 0.0});
    }
    const Moments trusted = ShiftTrusted(ch_shifted, m) ? m : Untrusted();
    out_mean[ch] = trusted.mean;
    out_m2[ch] = trusted.m2;
  }
  return AllFinite(static_cast<size_t>(width), out_mean, out_m2);
}

// The moments of NCHW unit [begin, end) of channel ch (StatsNchwUnits).
template <DType kT>
HWY_INLINE Moments NchwUnitMomentsT(const Elem<kT>* x, int64_t c, int64_t spatial, int64_t ch,
                                    int64_t begin, int64_t end, float pivot, ReduceReads reads) {
  const auto unit = [&](auto& side) HWY_ATTR {
    if (ShortRuns(spatial, begin, end)) {
      return StatsShortRunsT<kT>(x, c, spatial, ch, begin / spatial, (end - begin) / spatial, pivot,
                                 side, reads == ReduceReads::kMemory);
    }
    return StatsNchwUnitT<kT>(x, c, spatial, ch, begin, end, pivot, side);
  };
  if (reads == ReduceReads::kStream) {
    const Elem<kT>* first = x + (begin / spatial * c + ch) * spatial + begin % spatial;
    AheadSide side(WalkAhead<Elem<kT>>(first, nullptr, nullptr, c, spatial, begin, end), kNoSide);
    return unit(side);
  }
  return unit(kNoSide);
}

// Units [u0, u1) in one call: one dispatch and one type switch for them all.
// Whether all came out finite.
bool StatsNchwUnits(DType dtype, const void* x, int64_t c, int64_t spatial, const NchwUnitCut& cut,
                    int64_t u0, int64_t u1, const float* pivots, ReduceReads reads,
                    Moments* partials) {
  bool finite = true;
  ForDType(dtype, [&](auto t) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    const auto* xt = static_cast<const Elem<kT>*>(x);
    if (reads != ReduceReads::kStream && SingleBlockShortRunUnits(spatial, cut)) {
      finite = StatsShortRunUnitsT<kT>(xt, c, spatial, cut, u0, u1, pivots,
                                       reads == ReduceReads::kMemory, partials);
      return;
    }
    for (int64_t u = u0; u < u1; ++u) {
      const NchwUnit unit = cut.Unit(u);
      const Moments m = NchwUnitMomentsT<kT>(xt, c, spatial, unit.ch, unit.begin, unit.end,
                                             pivots[unit.ch], reads);
      finite &= Finite(m);
      partials[u] = m;
    }
  });
  return finite;
}

bool StatsNhwcUnit(DType dtype, const void* x, int64_t c, int64_t c0, int64_t width,
                   int64_t rows_per_period, int64_t row_begin, int64_t row_end, const float* pivots,
                   bool rows_ahead, double* mean, double* m2) {
  bool finite = true;
  ForDType(dtype, [&](auto t) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    finite = StatsNhwcUnitT<kT>(static_cast<const Elem<kT>*>(x), c, c0, width, rows_per_period,
                                row_begin, row_end, pivots, rows_ahead, mean, m2);
  });
  return finite;
}

// Pivots (see stats.h), with the values converted in vectors: scalar f16
// conversions made the pivots three quarters of the statistics time of an
// f16 NHWC tensor from L2 (1x1024x64: 30 -> 12 us with vectors).
template <DType kT>
void ChannelPivotsT(const Elem<kT>* x, int64_t c, int64_t spatial, bool nhwc, int64_t values,
                    int64_t c0, int64_t c1, float* pivots) {
  const hn::ScalableTag<float> df;
  constexpr size_t N = hn::MaxLanes(df);
  const int64_t count = std::min<int64_t>(kPivotValues, values);
  const double n = static_cast<double>(count);
  if (nhwc) {  // rows of contiguous channels: each channel's double sum, row by row
    int64_t ch = c0;
#if HWY_HAVE_FLOAT64 && HWY_TARGET != HWY_SCALAR
    // kGroup vectors of channels at a time, their sums in registers over all
    // rows (2 * kGroup independent chains of adds).
    const hn::Half<decltype(df)> dh;
    const hn::Rebind<double, decltype(dh)> dd;
    constexpr size_t H = N / 2;
    constexpr int64_t kGroup = 4;
    HWY_ALIGN double sums[kGroup * N];
    const auto group = [&](auto vectors) HWY_ATTR {
      constexpr size_t kVectors = decltype(vectors)::value;
      hn::Vec<decltype(dd)> lo[kVectors], hi[kVectors];
      for (size_t a = 0; a < kVectors; ++a) lo[a] = hi[a] = hn::Zero(dd);
      for (int64_t v = 0; v < count; ++v) {
        for (size_t a = 0; a < kVectors; ++a) {
          const auto f = LoadF32<kT>(df, x + v * c + ch + static_cast<int64_t>(a * N));
          lo[a] = hn::Add(lo[a], hn::PromoteTo(dd, hn::LowerHalf(dh, f)));
          hi[a] = hn::Add(hi[a], hn::PromoteTo(dd, hn::UpperHalf(dh, f)));
        }
      }
      for (size_t a = 0; a < kVectors; ++a) {
        hn::Store(lo[a], dd, sums + a * N);
        hn::Store(hi[a], dd, sums + a * N + H);
      }
      for (size_t k = 0; k < kVectors * N; ++k) {
        pivots[ch + static_cast<int64_t>(k)] = static_cast<float>(sums[k] / n);
      }
      ch += static_cast<int64_t>(kVectors * N);
    };
    while (ch + kGroup * static_cast<int64_t>(N) <= c1) {
      group(std::integral_constant<size_t, kGroup>());
    }
    while (ch + static_cast<int64_t>(N) <= c1) group(std::integral_constant<size_t, 1>());
#endif
    for (; ch < c1; ++ch) {
      double total = 0.0;
      for (int64_t v = 0; v < count; ++v)
        total += static_cast<double>(ScalarF32<kT>(x[v * c + ch]));
      pivots[ch] = static_cast<float>(total / n);
    }
    return;
  }
  for (int64_t ch = c0; ch < c1; ++ch) {
    const Elem<kT>* run = x + ch * spatial;
    if (spatial >= count) {  // the first run holds them: whole vectors, then one by one
      double total = 0.0;
      int64_t j = 0;
      for (; j + static_cast<int64_t>(N) <= count; j += static_cast<int64_t>(N)) {
        total += SumLanes(df, LoadF32<kT>(df, run + j));
      }
      for (; j < count; ++j) total += static_cast<double>(ScalarF32<kT>(run[j]));
      pivots[ch] = static_cast<float>(total / n);
      continue;
    }
    // Short runs ((N, C) input, 2x2 images): run by run, into four sums.
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    for (int64_t i = 0, v = 0; v < count; ++i) {
      const Elem<kT>* p = x + (i * c + ch) * spatial;
      for (int64_t s = 0; s < spatial && v < count; ++s, ++v) {
        sums[v & 3] += static_cast<double>(ScalarF32<kT>(p[s]));
      }
    }
    pivots[ch] = static_cast<float>(((sums[0] + sums[1]) + (sums[2] + sums[3])) / n);
  }
}

void ChannelPivots(DType dtype, const void* x, int64_t c, int64_t spatial, bool nhwc,
                   int64_t values, int64_t c0, int64_t c1, float* pivots) {
  ForDType(dtype, [&](auto t) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    ChannelPivotsT<kT>(static_cast<const Elem<kT>*>(x), c, spatial, nhwc, values, c0, c1, pivots);
  });
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cmath>

#include "dispatch.h"

namespace bnorm {
namespace {

// The float lanes can overflow where double does not: data spread beyond
// ~1e18 (128 squared deviations above FLT_MAX) or a pivot and value of
// opposite sign near FLT_MAX. Such a unit is redone here in double, where no
// float input can overflow; NaN/Inf inputs come out NaN/Inf either way.
template <typename ValueAt>
Moments ExactMoments(int64_t count, const ValueAt& value_at) {
  Moments m;
  for (int64_t k = 0; k < count; ++k) MergeMoments(m, Moments{1.0, value_at(k), 0.0});
  return m;
}

}  // namespace

HWY_EXPORT(ChannelPivots);
HWY_EXPORT(StatsNchwUnits);
HWY_EXPORT(StatsNhwcUnit);

void ChannelPivots(int64_t target, DType dtype, const void* x, int64_t c, int64_t spatial,
                   bool nhwc, int64_t values, int64_t c0, int64_t c1, float* pivots) {
  BNORM_DISPATCH(ChannelPivots, target)(dtype, x, c, spatial, nhwc, values, c0, c1, pivots);
}

namespace {

// Value k of NCHW unit [begin, end) of channel ch, as a double.
double NchwValue(const void* x, DType dtype, int64_t c, int64_t spatial, int64_t ch, int64_t begin,
                 int64_t k) {
  const int64_t v = begin + k;  // value index (i, s) of the channel
  return static_cast<double>(
      LoadAsFloat(x, ((v / spatial) * c + ch) * spatial + v % spatial, dtype));
}

}  // namespace

void RedoNchwUnits(DType dtype, const void* x, int64_t c, int64_t spatial, const NchwUnitCut& cut,
                   int64_t u0, int64_t u1, Moments* partials) {
  for (int64_t u = u0; u < u1; ++u) {
    if (Finite(partials[u])) continue;
    const NchwUnit unit = cut.Unit(u);
    partials[u] = ExactMoments(unit.end - unit.begin, [&](int64_t k) {
      return NchwValue(x, dtype, c, spatial, unit.ch, unit.begin, k);
    });
  }
}

void StatsNchwUnits(int64_t target, DType dtype, const void* x, int64_t c, int64_t spatial,
                    const NchwUnitCut& cut, int64_t u0, int64_t u1, const float* pivots,
                    ReduceReads reads, Moments* partials) {
  if (BNORM_DISPATCH(StatsNchwUnits, target)(dtype, x, c, spatial, cut, u0, u1, pivots, reads,
                                             partials)) {
    return;
  }
  RedoNchwUnits(dtype, x, c, spatial, cut, u0, u1, partials);
}

void StatsNhwcUnit(int64_t target, DType dtype, const void* x, int64_t c, int64_t c0, int64_t width,
                   int64_t rows_per_period, int64_t row_begin, int64_t row_end, const float* pivots,
                   bool rows_ahead, double* mean, double* m2) {
  if (BNORM_DISPATCH(StatsNhwcUnit, target)(dtype, x, c, c0, width, rows_per_period, row_begin,
                                            row_end, pivots, rows_ahead, mean, m2)) {
    return;
  }
  for (int64_t ch = 0; ch < width; ++ch) {
    if (std::isfinite(mean[ch]) && std::isfinite(m2[ch])) continue;
    const Moments m = ExactMoments(row_end - row_begin, [&](int64_t k) {
      return static_cast<double>(LoadAsFloat(x, (row_begin + k) * c + c0 + ch, dtype));
    });
    mean[ch] = m.mean;
    m2[ch] = m.m2;
  }
}

}  // namespace bnorm
#endif  // HWY_ONCE
