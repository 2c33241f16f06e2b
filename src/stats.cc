// Statistics kernels (see stats.h). One SIMD body per target via foreach_target.
#include <stddef.h>

#include <algorithm>

#include "config.h"  // first: dispatch configuration

#include "stats.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "stats.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "plan.h"
#include "welford-inl.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Accumulates one contiguous run of a channel (NCHW).
template <class DF, class D1, size_t kAcc>
struct RunAccumulators {
  using Main = WelfordRegisters<DF, kAcc>;
  explicit RunAccumulators(DF df, D1 d1) : main(df), rest(df), one(d1) {}

  HWY_INLINE void AddRun(DF df, D1 d1, const float* HWY_RESTRICT p, size_t len, float pivot) {
    constexpr size_t N = hn::MaxLanes(DF());
    const hn::Vec<DF> vpivot = hn::Set(df, pivot);
    size_t j = 0;
    for (; j + kAcc * N <= len; j += kAcc * N) main.Add(p + j, vpivot);
    for (; j + N <= len; j += N) rest.Add(p + j, vpivot);
    const hn::Vec<D1> vpivot1 = hn::Set(d1, pivot);
    for (; j < len; ++j) one.Add(p + j, vpivot1);
  }

  HWY_INLINE Moments Result() {
    Moments m;
    main.MergeInto(m);
    rest.MergeInto(m);
    one.MergeInto(m);
    return m;
  }

  Main main;
  WelfordRegisters<DF, 1> rest;
  WelfordRegisters<D1, 1> one;
};

Moments StatsNchwUnit(const float* x, int64_t c, int64_t spatial, int64_t ch, int64_t begin,
                      int64_t end, float pivot) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  RunAccumulators<decltype(df), decltype(d1), 4> acc(df, d1);
  int64_t i = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end;) {
    const int64_t len = std::min(spatial - s, end - pos);
    // Runs shorter than a few pages defeat the hardware prefetcher (a new
    // stream per image): fetch the next image's run while this one is summed.
    if (pos + len < end)
      PrefetchRun(x + ((i + 1) * c + ch) * spatial, std::min(spatial, end - pos - len));
    acc.AddRun(df, d1, x + (i * c + ch) * spatial + s, static_cast<size_t>(len), pivot);
    pos += len;
    ++i;
    s = 0;
  }
  Moments m = acc.Result();
  m.mean += static_cast<double>(pivot);
  return m;
}

// Welford state for `positions` lanes kept in memory (NHWC rows are wider than
// a register file), with one count shared by all positions. kRows consecutive
// vector rows (`stride` floats apart, reciprocals rk[0..kRows)) are added per
// load of the state: the same updates, in the same order, as one row at a
// time, with 1/kRows of the state traffic.
template <size_t kRows, class DF, class D1>
HWY_INLINE void WelfordRows(DF df, D1 d1, size_t positions, const float* HWY_RESTRICT row,
                            size_t stride, const float* HWY_RESTRICT pivot,
                            const float* HWY_RESTRICT rk, float* HWY_RESTRICT mean,
                            float* HWY_RESTRICT m2) {
  constexpr size_t N = hn::MaxLanes(DF());
  const auto update = [&](auto d, size_t p, auto piv, auto& mu, auto& acc) HWY_ATTR {
    for (size_t r = 0; r < kRows; ++r) {
      const auto v = hn::Sub(hn::LoadU(d, row + r * stride + p), piv);
      const auto delta = hn::Sub(v, mu);
      mu = hn::MulAdd(delta, hn::Set(d, rk[r]), mu);
      acc = hn::MulAdd(delta, hn::Sub(v, mu), acc);
    }
  };
  size_t p = 0;
  for (; p + N <= positions; p += N) {
    auto mu = hn::Load(df, mean + p);
    auto acc = hn::Load(df, m2 + p);
    update(df, p, hn::Load(df, pivot + p), mu, acc);
    hn::Store(mu, df, mean + p);
    hn::Store(acc, df, m2 + p);
  }
  for (; p < positions; ++p) {
    auto mu = hn::LoadU(d1, mean + p);
    auto acc = hn::LoadU(d1, m2 + p);
    update(d1, p, hn::LoadU(d1, pivot + p), mu, acc);
    hn::StoreU(mu, d1, mean + p);
    hn::StoreU(acc, d1, m2 + p);
  }
}

void StatsNhwcUnit(const float* x, int64_t c, int64_t c0, int64_t width, int64_t rows_per_period,
                   int64_t row_begin, int64_t row_end, const float* pivots, Moments* out) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  const size_t positions = static_cast<size_t>(width * rows_per_period);
  HWY_ALIGN float pivot[kMaxPositions];
  HWY_ALIGN float mean[kMaxPositions];
  HWY_ALIGN float m2[kMaxPositions];
  HWY_ALIGN double dmean[kMaxPositions];
  HWY_ALIGN double dm2[kMaxPositions];
  for (size_t p = 0; p < positions; ++p) {
    pivot[p] = pivots[c0 + static_cast<int64_t>(p) % width];
    mean[p] = m2[p] = 0.0f;
    dmean[p] = dm2[p] = 0.0;
  }
  const float* recip = Reciprocals();
  double count = 0.0;
  size_t steps = 0;
  int64_t r = row_begin;
  const size_t stride = static_cast<size_t>(rows_per_period * c);
  const auto fold_if_full = [&]() {
    if (steps != kBlockSteps) return;
    FoldIntoDouble(positions, static_cast<double>(steps), mean, m2, &count, dmean, dm2);
    for (size_t p = 0; p < positions; ++p) mean[p] = m2[p] = 0.0f;
    steps = 0;
  };
  static_assert(kBlockSteps % 4 == 0, "blocks of four rows must not straddle a fold");
  for (; r + 4 * rows_per_period <= row_end; r += 4 * rows_per_period) {
    WelfordRows<4>(df, d1, positions, x + r * c + c0, stride, pivot, recip + steps + 1, mean, m2);
    steps += 4;
    fold_if_full();
  }
  for (; r + rows_per_period <= row_end; r += rows_per_period) {
    WelfordRows<1>(df, d1, positions, x + r * c + c0, stride, pivot, recip + steps + 1, mean, m2);
    steps += 1;
    fold_if_full();
  }
  if (steps != 0) {
    FoldIntoDouble(positions, static_cast<double>(steps), mean, m2, &count, dmean, dm2);
  }
  // Positions p, p + width, ... hold the same channel: merge them in order.
  for (int64_t ch = 0; ch < width; ++ch) {
    Moments m;
    for (int64_t k = 0; k < rows_per_period; ++k) {
      const size_t p = static_cast<size_t>(k * width + ch);
      MergeMoments(m, Moments{count, dmean[p], dm2[p]});
    }
    out[ch] = m;
  }
  // Rows left over after whole periods (fewer than rows_per_period; only in
  // the last unit): merged one value at a time, in double.
  for (; r < row_end; ++r) {
    for (int64_t ch = 0; ch < width; ++ch) {
      const double v = static_cast<double>(x[r * c + c0 + ch]) - static_cast<double>(pivot[ch]);
      MergeMoments(out[ch], Moments{1.0, v, 0.0});
    }
  }
  for (int64_t ch = 0; ch < width; ++ch) out[ch].mean += static_cast<double>(pivot[ch]);
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

bool Finite(const Moments& m) { return std::isfinite(m.mean) && std::isfinite(m.m2); }

}  // namespace

float ChannelPivot(const float* x, int64_t c, int64_t spatial, bool nhwc, int64_t ch,
                   int64_t values) {
  const int64_t count = std::min<int64_t>(kPivotValues, values);
  double sum = 0.0;
  for (int64_t v = 0; v < count; ++v) {
    sum += static_cast<double>(nhwc ? x[v * c + ch]
                                    : x[((v / spatial) * c + ch) * spatial + v % spatial]);
  }
  return static_cast<float>(sum / static_cast<double>(count));
}

HWY_EXPORT(StatsNchwUnit);
HWY_EXPORT(StatsNhwcUnit);

Moments StatsNchwUnit(int64_t target, const float* x, int64_t c, int64_t spatial, int64_t ch,
                      int64_t begin, int64_t end, float pivot) {
  const Moments m = BNORM_DISPATCH(StatsNchwUnit, target)(x, c, spatial, ch, begin, end, pivot);
  if (Finite(m)) return m;
  return ExactMoments(end - begin, [&](int64_t k) {
    const int64_t v = begin + k;  // value index (i, s) of the channel
    return static_cast<double>(x[((v / spatial) * c + ch) * spatial + v % spatial]);
  });
}

void StatsNhwcUnit(int64_t target, const float* x, int64_t c, int64_t c0, int64_t width,
                   int64_t rows_per_period, int64_t row_begin, int64_t row_end, const float* pivots,
                   Moments* out) {
  BNORM_DISPATCH(StatsNhwcUnit, target)
  (x, c, c0, width, rows_per_period, row_begin, row_end, pivots, out);
  for (int64_t ch = 0; ch < width; ++ch) {
    if (Finite(out[ch])) continue;
    out[ch] = ExactMoments(row_end - row_begin, [&](int64_t k) {
      return static_cast<double>(x[(row_begin + k) * c + c0 + ch]);
    });
  }
}

}  // namespace bnorm
#endif  // HWY_ONCE
