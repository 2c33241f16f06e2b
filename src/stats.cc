// Statistics kernels (see stats.h). One SIMD body per target via foreach_target.
#include <stddef.h>

#include <algorithm>
#include <limits>

#include "config.h"  // first: dispatch configuration

#include "stats.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "stats.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "plan.h"
#include "accumulators-inl.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Returned for a unit whose float sums cannot be trusted (overflow, or a
// shift too far from the data: see ShiftTrusted); the caller redoes it in
// double.
HWY_INLINE Moments Untrusted() {
  return Moments{0.0, std::numeric_limits<double>::quiet_NaN(), 0.0};
}

// The sums are plain locals of this function, updated only by code in its
// body (no lambda or object holds their address), so they stay in registers
// across runs: with short NCHW runs (7x7 images) a store and reload of the
// sums per run would otherwise be the critical path.
template <DType kT>
Moments StatsNchwUnitT(const Elem<kT>* x, int64_t c, int64_t spatial, int64_t ch, int64_t begin,
                       int64_t end, float pivot) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  constexpr size_t N = hn::MaxLanes(df);
  Moments unit;
  double shifted = 0.0;
  float shift = pivot;
  // The current run: image i, values [j, len) of p.
  int64_t i = begin / spatial;
  int64_t pos = begin;  // value index of p[0]
  size_t len = static_cast<size_t>(std::min(spatial - begin % spatial, end - begin));
  const Elem<kT>* p = x + (i * c + ch) * spatial + begin % spatial;
  size_t j = 0;
  bool more = true;
  while (more) {  // one block per iteration
    const V vshift = hn::Set(df, shift);
    V sum[kLongAcc], sum_sq[kLongAcc];  // groups of kLongAcc vectors
    V rest_sum = hn::Zero(df), rest_sq = hn::Zero(df);  // single vectors
    float tail_sum = 0.0f, tail_sq = 0.0f;  // single values
    for (size_t a = 0; a < kLongAcc; ++a) sum[a] = sum_sq[a] = hn::Zero(df);
    size_t steps = 0, rest_steps = 0, tail_count = 0;
    for (;;) {
      if (j == len) {  // next run
        pos += static_cast<int64_t>(len);
        if (pos == end) {
          more = false;
          break;
        }
        ++i;
        len = static_cast<size_t>(std::min(spatial, end - pos));
        p = x + (i * c + ch) * spatial;
        j = 0;
        // Runs shorter than a few pages defeat the hardware prefetcher (a
        // new stream per image): fetch the next one while this one is summed.
        if (pos + static_cast<int64_t>(len) < end) {
          PrefetchRun(x + ((i + 1) * c + ch) * spatial,
                      std::min(spatial, end - pos - static_cast<int64_t>(len)), sizeof(Elem<kT>));
        }
      }
      for (; j + kLongAcc * N <= len && steps < kBlockSteps; j += kLongAcc * N, ++steps) {
        for (size_t a = 0; a < kLongAcc; ++a) {
          const V e = hn::Sub(LoadF32<kT>(df, p + j + a * N), vshift);
          sum[a] = hn::Add(sum[a], e);
          sum_sq[a] = hn::MulAdd(e, e, sum_sq[a]);
        }
      }
      if (steps == kBlockSteps) break;
      for (; j + N <= len; j += N, ++rest_steps) {
        const V e = hn::Sub(LoadF32<kT>(df, p + j), vshift);
        rest_sum = hn::Add(rest_sum, e);
        rest_sq = hn::MulAdd(e, e, rest_sq);
      }
      for (; j < len; ++j, ++tail_count) {
        const float e = ScalarF32<kT>(p[j]) - shift;
        tail_sum += e;
        tail_sq += e * e;
      }
      if (rest_steps >= kBlockSteps || tail_count >= kBlockSteps) break;
    }
    // Close the block and re-centre on the mean so far.
    static_assert(kLongAcc % 4 == 0, "the tree below halves the accumulators twice");
    for (size_t a = 0; a < kLongAcc / 2; ++a) {  // a tree: short dependency chains
      sum[a] = hn::Add(sum[a], sum[a + kLongAcc / 2]);
      sum_sq[a] = hn::Add(sum_sq[a], sum_sq[a + kLongAcc / 2]);
    }
    for (size_t a = 0; a < kLongAcc / 4; ++a) {
      sum[a] = hn::Add(sum[a], sum[a + kLongAcc / 4]);
      sum_sq[a] = hn::Add(sum_sq[a], sum_sq[a + kLongAcc / 4]);
    }
    for (size_t a = 0; a < kLongAcc / 4; ++a) {
      rest_sum = hn::Add(rest_sum, sum[a]);
      rest_sq = hn::Add(rest_sq, sum_sq[a]);
    }
    const ShiftedBlock b{static_cast<double>((steps * kLongAcc + rest_steps) * N + tail_count),
                         SumLanes(df, rest_sum) + static_cast<double>(tail_sum),
                         SumLanes(df, rest_sq) + static_cast<double>(tail_sq)};
    CloseBlock(b, shift, unit, &shifted);
    shift = static_cast<float>(unit.mean);
  }
  return ShiftTrusted(shifted, unit) ? unit : Untrusted();
}

// Moments of `runs` whole runs of `spatial` values, from image i0 on, of
// channel ch: the sums of StatsNchwUnitT (the same moments, not the same
// bits) with a loop shape fixed for all runs (groups of kAcc vectors, the
// leftover vectors one per accumulator, the last values of a run in a vector
// of their own), and blocks of whole runs.
template <DType kT>
Moments StatsShortRunsT(const Elem<kT>* x, int64_t c, int64_t spatial, int64_t ch, int64_t i0,
                        int64_t runs, float pivot) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  constexpr size_t N = hn::MaxLanes(df);
  static_assert(kAcc == 4, "the leftover vectors are unrolled for four accumulators");
  const ShortRunShape shape(df, spatial);
  const size_t len = shape.len, groups = shape.groups, leftover = shape.leftover;
  const size_t tail = shape.tail, runs_per_block = shape.runs_per_block;
  const auto tail_mask = ShortRunTail(df, tail);
  const int64_t stride = c * spatial;
  const Elem<kT>* p = x + (i0 * c + ch) * spatial;
  Moments unit;
  double shifted = 0.0;
  float shift = pivot;
  for (int64_t r = 0; r < runs;) {
    const int64_t block_runs = std::min<int64_t>(static_cast<int64_t>(runs_per_block), runs - r);
    const V vshift = hn::Set(df, shift);
    V sum[kAcc], sum_sq[kAcc];
    for (size_t a = 0; a < kAcc; ++a) sum[a] = sum_sq[a] = hn::Zero(df);
    V tail_sum = hn::Zero(df), tail_sq = hn::Zero(df);
    for (int64_t k = 0; k < block_runs; ++k) {
      // The next run is c * spatial values away: no hardware prefetcher
      // follows it (StatsNchwUnitT).
      if (r + k + 1 < runs) PrefetchRun(p + stride, spatial, sizeof(Elem<kT>));
      size_t j = 0;
      for (size_t g = 0; g < groups; ++g, j += kAcc * N) {
        for (size_t a = 0; a < kAcc; ++a) {
          const V e = hn::Sub(LoadF32<kT>(df, p + j + a * N), vshift);
          sum[a] = hn::Add(sum[a], e);
          sum_sq[a] = hn::MulAdd(e, e, sum_sq[a]);
        }
      }
      if (leftover != 0) {
        const V e0 = hn::Sub(LoadF32<kT>(df, p + j), vshift);
        sum[0] = hn::Add(sum[0], e0);
        sum_sq[0] = hn::MulAdd(e0, e0, sum_sq[0]);
        if (leftover >= 2) {
          const V e1 = hn::Sub(LoadF32<kT>(df, p + j + N), vshift);
          sum[1] = hn::Add(sum[1], e1);
          sum_sq[1] = hn::MulAdd(e1, e1, sum_sq[1]);
        }
        if (leftover == 3) {
          const V e2 = hn::Sub(LoadF32<kT>(df, p + j + 2 * N), vshift);
          sum[2] = hn::Add(sum[2], e2);
          sum_sq[2] = hn::MulAdd(e2, e2, sum_sq[2]);
        }
      }
      if (tail != 0) {
        const V v = LoadF32<kT>(df, p + len - N);
        const V e = hn::IfThenElseZero(tail_mask, hn::Sub(v, vshift));
        tail_sum = hn::Add(tail_sum, e);
        tail_sq = hn::MulAdd(e, e, tail_sq);
      }
      p += stride;
    }
    r += block_runs;
    // Close the block and re-centre on the mean so far.
    for (size_t a = 1; a < kAcc; ++a) {
      sum[0] = hn::Add(sum[0], sum[a]);
      sum_sq[0] = hn::Add(sum_sq[0], sum_sq[a]);
    }
    sum[0] = hn::Add(sum[0], tail_sum);
    sum_sq[0] = hn::Add(sum_sq[0], tail_sq);
    const ShiftedBlock b{static_cast<double>(block_runs) * static_cast<double>(len),
                         SumLanes(df, sum[0]), SumLanes(df, sum_sq[0])};
    CloseBlock(b, shift, unit, &shifted);
    shift = static_cast<float>(unit.mean);
  }
  return ShiftTrusted(shifted, unit) ? unit : Untrusted();
}

// Shifted sums for `positions` lanes kept in memory (NHWC rows are wider than
// a register file), all positions sharing one count: adds kRows consecutive
// vector rows (`stride` floats apart) per load of the sums.
template <DType kT, size_t kRows, class DF, class D1>
HWY_INLINE void ShiftedRows(DF df, D1 d1, size_t positions, const Elem<kT>* HWY_RESTRICT row,
                            size_t stride, const float* HWY_RESTRICT shift,
                            float* HWY_RESTRICT sum, float* HWY_RESTRICT sum_sq) {
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

// Returns whether every channel's moments came out finite (else the caller
// redoes the others in double), checked as they are written.
template <DType kT>
bool StatsNhwcUnitT(const Elem<kT>* x, int64_t c, int64_t c0, int64_t width,
                    int64_t rows_per_period, int64_t row_begin, int64_t row_end,
                    const float* pivots, int64_t rows_at_once, Moments* out) {
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
      m2[p] += std::max(q - s * offset, 0.0) + delta * delta * cross;
      shifted[p] += q;
      shift[p] = static_cast<float>(mean[p]);
      sum[p] = sum_sq[p] = 0.0f;
    }
    count = total;
    steps = 0;
  };
  int64_t r = row_begin;
  const size_t stride = static_cast<size_t>(rows_per_period * c);
  static_assert(kBlockSteps % 4 == 0, "blocks of four rows must not straddle a close");
  for (; rows_at_once == 4 && r + 4 * rows_per_period <= row_end; r += 4 * rows_per_period) {
    ShiftedRows<kT, 4>(df, d1, positions, x + r * c + c0, stride, shift, sum, sum_sq);
    steps += 4;
    if (steps == kBlockSteps) close();
  }
  for (; r + rows_per_period <= row_end; r += rows_per_period) {
    ShiftedRows<kT, 1>(df, d1, positions, x + r * c + c0, stride, shift, sum, sum_sq);
    steps += 1;
    if (steps == kBlockSteps) close();
  }
  if (steps != 0) close();
  bool finite = true;
  if (rows_per_period == 1 && r == row_end) {  // one position per channel (the same
    for (int64_t ch = 0; ch < width; ++ch) {    // bits as the general merge below)
      const Moments m{count, mean[ch], m2[ch]};
      out[ch] = ShiftTrusted(shifted[ch], m) ? m : Untrusted();
      finite &= Finite(out[ch]);
    }
    return finite;
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
    out[ch] = ShiftTrusted(ch_shifted, m) ? m : Untrusted();
    finite &= Finite(out[ch]);
  }
  return finite;
}

Moments StatsNchwUnit(DType dtype, const void* x, int64_t c, int64_t spatial, int64_t ch,
                      int64_t begin, int64_t end, float pivot) {
  Moments m;
  ForDType(dtype, [&](auto t) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    const auto* xt = static_cast<const Elem<kT>*>(x);
    if (ShortRuns(spatial, begin, end)) {
      m = StatsShortRunsT<kT>(xt, c, spatial, ch, begin / spatial, (end - begin) / spatial, pivot);
    } else {
      m = StatsNchwUnitT<kT>(xt, c, spatial, ch, begin, end, pivot);
    }
  });
  return m;
}

bool StatsNhwcUnit(DType dtype, const void* x, int64_t c, int64_t c0, int64_t width,
                   int64_t rows_per_period, int64_t row_begin, int64_t row_end, const float* pivots,
                   int64_t rows_at_once, Moments* out) {
  bool finite = true;
  ForDType(dtype, [&](auto t) HWY_ATTR {
    constexpr DType kT = decltype(t)::value;
    finite = StatsNhwcUnitT<kT>(static_cast<const Elem<kT>*>(x), c, c0, width, rows_per_period, row_begin,
                       row_end, pivots, rows_at_once, out);
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
  if (nhwc) {  // rows of contiguous channels: one double sum per channel
    HWY_ALIGN double sums[kPivotChunk];
    for (int64_t b = c0; b < c1; b += kPivotChunk) {
      const size_t width = static_cast<size_t>(std::min(kPivotChunk, c1 - b));
      std::fill(sums, sums + width, 0.0);
      for (int64_t v = 0; v < count; ++v) {
        const Elem<kT>* row = x + v * c + b;
        size_t k = 0;
#if HWY_HAVE_FLOAT64 && HWY_TARGET != HWY_SCALAR
        const hn::Half<decltype(df)> dh;
        const hn::Rebind<double, decltype(dh)> dd;
        constexpr size_t H = N / 2;
        for (; k + N <= width; k += N) {
          const auto f = LoadF32<kT>(df, row + k);
          hn::Store(hn::Add(hn::Load(dd, sums + k), hn::PromoteTo(dd, hn::LowerHalf(dh, f))), dd,
                    sums + k);
          hn::Store(hn::Add(hn::Load(dd, sums + k + H), hn::PromoteTo(dd, hn::UpperHalf(dh, f))),
                    dd, sums + k + H);
        }
#endif
        for (; k < width; ++k) sums[k] += static_cast<double>(ScalarF32<kT>(row[k]));
      }
      for (size_t k = 0; k < width; ++k) {
        pivots[b + static_cast<int64_t>(k)] = static_cast<float>(sums[k] / n);
      }
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
HWY_EXPORT(StatsNchwUnit);
HWY_EXPORT(StatsNhwcUnit);

void ChannelPivots(int64_t target, DType dtype, const void* x, int64_t c, int64_t spatial,
                   bool nhwc, int64_t values, int64_t c0, int64_t c1, float* pivots) {
  BNORM_DISPATCH(ChannelPivots, target)(dtype, x, c, spatial, nhwc, values, c0, c1, pivots);
}

Moments StatsNchwUnit(int64_t target, DType dtype, const void* x, int64_t c, int64_t spatial,
                      int64_t ch, int64_t begin, int64_t end, float pivot) {
  const Moments m =
      BNORM_DISPATCH(StatsNchwUnit, target)(dtype, x, c, spatial, ch, begin, end, pivot);
  if (Finite(m)) return m;
  return ExactMoments(end - begin, [&](int64_t k) {
    const int64_t v = begin + k;  // value index (i, s) of the channel
    return static_cast<double>(LoadAsFloat(x, ((v / spatial) * c + ch) * spatial + v % spatial, dtype));
  });
}

void StatsNhwcUnit(int64_t target, DType dtype, const void* x, int64_t c, int64_t c0, int64_t width,
                   int64_t rows_per_period, int64_t row_begin, int64_t row_end, const float* pivots,
                   int64_t rows_at_once, Moments* out) {
  if (BNORM_DISPATCH(StatsNhwcUnit, target)(dtype, x, c, c0, width, rows_per_period, row_begin,
                                            row_end, pivots, rows_at_once, out)) {
    return;
  }
  for (int64_t ch = 0; ch < width; ++ch) {
    if (Finite(out[ch])) continue;
    out[ch] = ExactMoments(row_end - row_begin, [&](int64_t k) {
      return static_cast<double>(LoadAsFloat(x, (row_begin + k) * c + c0 + ch, dtype));
    });
  }
}

}  // namespace bnorm
#endif  // HWY_ONCE
