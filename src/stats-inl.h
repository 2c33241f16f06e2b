// The NCHW statistics kernels (see stats.h): moments of one reduction unit
// from shifted float block sums (accumulators-inl.h). Shared by stats.cc and
// by stats_apply.cc, which runs them with a Side: other work (the previous
// channel group's output) interleaved with the sums, step by step, without
// changing a bit of them.
// Include after hwy/highway.h inside a foreach_target translation unit.

#if defined(BNORM_SRC_STATS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef BNORM_SRC_STATS_INL_H_
#undef BNORM_SRC_STATS_INL_H_
#else
#define BNORM_SRC_STATS_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include <algorithm>
#include <limits>

#include "accumulators-inl.h"
#include "convert-inl.h"
#include "hwy/highway.h"
#include "moments.h"

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
template <DType kT, class Side>
HWY_INLINE Moments StatsNchwUnitT(const Elem<kT>* x, int64_t c, int64_t spatial, int64_t ch,
                                  int64_t begin, int64_t end, float pivot, Side& side) {
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
        side.Step(kLongAcc * N);
      }
      if (steps == kBlockSteps) break;
      for (; j + N <= len; j += N, ++rest_steps) {
        const V e = hn::Sub(LoadF32<kT>(df, p + j), vshift);
        rest_sum = hn::Add(rest_sum, e);
        rest_sq = hn::MulAdd(e, e, rest_sq);
        side.Step(N);
      }
      if (j < len) side.Step(len - j);
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
// of their own), and blocks of whole runs. from_memory: the runs are not in
// cache (ShortRunAhead).
template <DType kT, class Side>
HWY_INLINE Moments StatsShortRunsT(const Elem<kT>* x, int64_t c, int64_t spatial, int64_t ch,
                                   int64_t i0, int64_t runs, float pivot, Side& side,
                                   bool from_memory) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  constexpr size_t N = hn::MaxLanes(df);
  static_assert(kAcc == 4, "the leftover vectors are unrolled for four accumulators");
  const ShortRunShape shape(df, spatial);
  const size_t len = shape.len, groups = shape.groups, leftover = shape.leftover;
  const size_t tail = shape.tail, runs_per_block = shape.runs_per_block;
  const auto tail_mask = ShortRunTail(df, tail);
  const int64_t stride = c * spatial;
  const ShortRunAhead ahead(c, spatial, ch, sizeof(Elem<kT>), from_memory);
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
      // Runs c * spatial values apart: no hardware prefetcher follows them.
      ahead.Run(p, r + k + 1 < runs);
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
      side.Step(len);
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

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#endif  // BNORM_SRC_STATS_INL_H_
