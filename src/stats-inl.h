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
#include "plan.h"

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

// Shifted sums of the last values of runs, fewer than a vector per run: one
// accumulator pair of kLanes lanes, then of half as many, down to one lane.
// Add takes a run's tail [j, len) (len - j < 2 * kLanes), each width once at
// most, so no lane adds more than one value per run. A local of the kernel
// with every method inlined: its vectors stay in registers. One value at a
// time, a run of 3x3 values was a chain of nine dependent adds (f32
// statistics of 64x512x3x3 from L2, 1 thread: 377 us, inference 74).
template <DType kT, size_t kLanes>
struct TailSums {
  using D = hn::CappedTag<float, kLanes>;
  // Not default member initializers: GCC compiles those without the
  // target's attributes (an always_inline mismatch).
  HWY_INLINE TailSums() : sum(hn::Zero(D())), sum_sq(hn::Zero(D())) {}

  hn::Vec<D> sum, sum_sq;
  TailSums<kT, kLanes / 2> next;

  HWY_INLINE void Add(const Elem<kT>* p, size_t j, size_t len, float shift) {
    const D d;
    if (j + kLanes <= len) {
      const hn::Vec<D> e = hn::Sub(LoadF32<kT>(d, p + j), hn::Set(d, shift));
      sum = hn::Add(sum, e);
      sum_sq = hn::MulAdd(e, e, sum_sq);
      j += kLanes;
    }
    next.Add(p, j, len, shift);
  }
  // Sum and sum of squares: this width's lanes plus the narrower ones'.
  HWY_INLINE double Sum() const { return SumLanes(D(), sum) + next.Sum(); }
  HWY_INLINE double SumSq() const { return SumLanes(D(), sum_sq) + next.SumSq(); }
};

template <DType kT>
struct TailSums<kT, 0> {
  HWY_INLINE void Add(const Elem<kT>*, size_t, size_t, float) {}
  HWY_INLINE double Sum() const { return 0.0; }
  HWY_INLINE double SumSq() const { return 0.0; }
};

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
    TailSums<kT, N / 2> tail;  // each run's last values (fewer than a vector)
    for (size_t a = 0; a < kLongAcc; ++a) sum[a] = sum_sq[a] = hn::Zero(df);
    size_t steps = 0, rest_steps = 0, tail_runs = 0, tail_values = 0;
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
      // At most kBlockSteps vectors per block here too: a run's leftover
      // vectors may straddle two blocks (checked only after each run, up
      // to kBlockSteps + kLongAcc - 2 got in).
      const size_t rest_n = std::min((len - j) / N, kBlockSteps - rest_steps);
      for (size_t k = 0; k < rest_n; ++k, j += N) {
        const V e = hn::Sub(LoadF32<kT>(df, p + j), vshift);
        rest_sum = hn::Add(rest_sum, e);
        rest_sq = hn::MulAdd(e, e, rest_sq);
        side.Step(N);
      }
      rest_steps += rest_n;
      if (j < len && j + N > len) {
        side.Step(len - j);
        tail.Add(p, j, len, shift);
        tail_values += len - j;
        ++tail_runs;
        j = len;
      }
      if (rest_steps >= kBlockSteps || tail_runs >= kBlockSteps) break;
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
    const ShiftedBlock b{static_cast<double>((steps * kLongAcc + rest_steps) * N + tail_values),
                         SumLanes(df, rest_sum) + tail.Sum(), SumLanes(df, rest_sq) + tail.SumSq()};
    CloseBlock(b, shift, unit, &shifted);
    shift = static_cast<float>(unit.mean);
  }
  return ShiftTrusted(shifted, unit) ? unit : Untrusted();
}

// The float sums of `block_runs` whole runs of a channel from p on (runs
// `stride` values apart), shifted by vshift, each folded into one vector:
// a block of StatsShortRunsT before its close. runs_after: the unit's runs
// after the block (for the prefetches). p ends past the block.
template <DType kT, class D, class Side>
HWY_INLINE void SumShortRunBlock(D df, const ShortRunShape& shape, hn::Mask<D> tail_mask,
                                 const Elem<kT>*& p, int64_t stride, int64_t block_runs,
                                 int64_t runs_after, const ShortRunAhead& ahead, hn::Vec<D> vshift,
                                 Side& side, hn::Vec<D>& sum_out, hn::Vec<D>& sum_sq_out) {
  using V = hn::Vec<D>;
  constexpr size_t N = hn::MaxLanes(df);
  static_assert(kAcc == 4, "the leftover vectors are unrolled for four accumulators");
  constexpr bool kHalf = kIsShortRunHalf<D>;  // groups 0, leftover 1
  const size_t len = shape.len, groups = kHalf ? 0 : shape.groups;
  const size_t leftover = kHalf ? 1 : shape.leftover;
  HWY_DASSERT(!kHalf || (shape.groups == 0 && shape.leftover == 1));  // ShortRuns
  const size_t tail = shape.tail;
  V sum[kAcc], sum_sq[kAcc];
  for (size_t a = 0; a < kAcc; ++a) sum[a] = sum_sq[a] = hn::Zero(df);
  V tail_sum = hn::Zero(df), tail_sq = hn::Zero(df);
  for (int64_t k = 0; k < block_runs; ++k) {
    // Runs c * spatial values apart: no hardware prefetcher follows them.
    ahead.Run(p, k + 1 < block_runs + runs_after);
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
  for (size_t a = 1; a < kAcc; ++a) {
    sum[0] = hn::Add(sum[0], sum[a]);
    sum_sq[0] = hn::Add(sum_sq[0], sum_sq[a]);
  }
  sum_out = hn::Add(sum[0], tail_sum);
  sum_sq_out = hn::Add(sum_sq[0], tail_sq);
}

// Closes a block of `count` values (SumShortRunBlock's sums around `shift`)
// into unit, re-centred as CloseBlock does.
template <class D>
HWY_INLINE void CloseShortRunBlock(D df, hn::Vec<D> sum, hn::Vec<D> sum_sq, double count,
                                   float shift, Moments& unit, double* shifted) {
  CloseBlock(ShiftedBlock{count, SumLanes(df, sum), SumLanes(df, sum_sq)}, shift, unit, shifted);
}

// Moments of `runs` whole runs of `spatial` values, from image i0 on, of
// channel ch: the sums of StatsNchwUnitT (the same moments, not the same
// bits) with a loop shape fixed for all runs (groups of kAcc vectors, the
// leftover vectors one per accumulator, the last values of a run in a vector
// of their own), and blocks of whole runs. from_memory: the runs are not in
// cache (ShortRunAhead).
// df: full or half vectors (ShortRunHalves, StatsShortRunsT).
template <DType kT, class DF, class Side>
HWY_INLINE Moments StatsShortRunsOf(DF df, const Elem<kT>* x, int64_t c, int64_t spatial,
                                    int64_t ch, int64_t i0, int64_t runs, float pivot, Side& side,
                                    bool from_memory) {
  const ShortRunShape shape(df, spatial);
  const auto tail_mask = ShortRunTail(df, shape.tail);
  const int64_t stride = c * spatial;
  const ShortRunAhead ahead(c, spatial, ch, sizeof(Elem<kT>), from_memory);
  const Elem<kT>* p = x + (i0 * c + ch) * spatial;
  Moments unit;
  double shifted = 0.0;
  float shift = pivot;
  for (int64_t r = 0; r < runs;) {
    const int64_t block_runs =
        std::min<int64_t>(static_cast<int64_t>(shape.runs_per_block), runs - r);
    hn::Vec<decltype(df)> sum, sum_sq;
    SumShortRunBlock<kT>(df, shape, tail_mask, p, stride, block_runs, runs - r - block_runs, ahead,
                         hn::Set(df, shift), side, sum, sum_sq);
    r += block_runs;
    // Close the block and re-centre on the mean so far.
    CloseShortRunBlock(df, sum, sum_sq,
                       static_cast<double>(block_runs) * static_cast<double>(shape.len), shift,
                       unit, &shifted);
    shift = static_cast<float>(unit.mean);
  }
  return ShiftTrusted(shifted, unit) ? unit : Untrusted();
}

// Half vectors out of line (here and below): inlined beside the full ones,
// they cost the full vectors' loop 18-22 % on 49-value runs (statistics of
// 16x64x49 and 8x128x49 from L2, 1 thread: 4.15 -> 5.0 us, 5.1 -> 5.9).
template <DType kT, class Side>
HWY_NOINLINE Moments StatsShortRunsHalfT(const Elem<kT>* x, int64_t c, int64_t spatial,
                                         int64_t ch, int64_t i0, int64_t runs, float pivot,
                                         Side& side, bool from_memory) {
  return StatsShortRunsOf<kT>(ShortRunHalf(), x, c, spatial, ch, i0, runs, pivot, side,
                              from_memory);
}

template <DType kT, class Side>
HWY_INLINE Moments StatsShortRunsT(const Elem<kT>* x, int64_t c, int64_t spatial, int64_t ch,
                                   int64_t i0, int64_t runs, float pivot, Side& side,
                                   bool from_memory) {
  if constexpr (kShortRunHalves) {
    if (ShortRunHalves(spatial)) {
      return StatsShortRunsHalfT<kT>(x, c, spatial, ch, i0, runs, pivot, side, from_memory);
    }
  }
  return StatsShortRunsOf<kT>(hn::ScalableTag<float>(), x, c, spatial, ch, i0, runs, pivot, side,
                              from_memory);
}

// Closes a unit's last block into its moments (CloseShortRunBlock) and
// writes them, or Untrusted(), to *out; whether they are finite.
template <class D>
HWY_INLINE bool CloseShortRunUnit(D df, hn::Vec<D> sum, hn::Vec<D> sum_sq, double count,
                                  float shift, Moments unit, double shifted, Moments* out) {
  CloseShortRunBlock(df, sum, sum_sq, count, shift, unit, &shifted);
  *out = ShiftTrusted(shifted, unit) ? unit : Untrusted();
  return Finite(*out);
}

// Whether every unit of `cut` is whole short runs of at most one block
// (StatsShortRunUnitsT).
HWY_INLINE bool SingleBlockShortRunUnits(int64_t spatial, const NchwUnitCut& cut) {
  if (!ShortRuns(spatial, 0, cut.unit_len)) return false;
  const size_t runs_per_block = ShortRunHalves(spatial)
                                    ? ShortRunShape(ShortRunHalf(), spatial).runs_per_block
                                    : ShortRunShape(hn::ScalableTag<float>(), spatial).runs_per_block;
  return cut.unit_len / spatial <= static_cast<int64_t>(runs_per_block);
}

// StatsShortRunsT of units [u0, u1) of `cut`, each whole short runs of one
// block (SingleBlockShortRunUnits), into partials[u0, u1), each from
// pivots[its channel]: the same bits, with a unit's close (two sums of
// lanes in double, a division, the merge: a chain of latencies) issued after
// the next unit's sums, which overlap it instead of waiting for it. Units of
// several blocks keep StatsShortRunsT: with the blocks' closes in this loop
// too, GCC kept the accumulators on the stack (1.4-1.5 times the time).
// Whether all came out finite.
template <DType kT, class DF>
HWY_INLINE bool StatsShortRunUnitsOf(DF df, const Elem<kT>* x, int64_t c, int64_t spatial,
                                     const NchwUnitCut& cut, int64_t u0, int64_t u1,
                                     const float* pivots, bool from_memory, Moments* partials) {
  using V = hn::Vec<DF>;
  const ShortRunShape shape(df, spatial);
  const auto tail_mask = ShortRunTail(df, shape.tail);
  const int64_t stride = c * spatial;
  bool finite = true;
  // The unit summed last, not yet closed.
  V open_sum = hn::Zero(df), open_sum_sq = hn::Zero(df);
  double open_count = 0.0;
  float open_shift = 0.0f;
  for (int64_t u = u0; u < u1; ++u) {
    const NchwUnit t = cut.Unit(u);
    const int64_t runs = (t.end - t.begin) / spatial;
    const ShortRunAhead ahead(c, spatial, t.ch, sizeof(Elem<kT>), from_memory);
    const Elem<kT>* p = x + (t.begin / spatial * c + t.ch) * spatial;
    const float shift = pivots[t.ch];
    V sum, sum_sq;
    SumShortRunBlock<kT>(df, shape, tail_mask, p, stride, runs, 0, ahead, hn::Set(df, shift),
                         kNoSide, sum, sum_sq);
    if (u > u0) {
      finite &= CloseShortRunUnit(df, open_sum, open_sum_sq, open_count, open_shift, Moments(), 0.0,
                                  &partials[u - 1]);
    }
    open_sum = sum;
    open_sum_sq = sum_sq;
    open_count = static_cast<double>(runs) * static_cast<double>(shape.len);
    open_shift = shift;
  }
  if (u1 > u0) {
    finite &= CloseShortRunUnit(df, open_sum, open_sum_sq, open_count, open_shift, Moments(), 0.0,
                                &partials[u1 - 1]);
  }
  return finite;
}

template <DType kT>
HWY_NOINLINE bool StatsShortRunUnitsHalfT(const Elem<kT>* x, int64_t c, int64_t spatial,
                                          const NchwUnitCut& cut, int64_t u0, int64_t u1,
                                          const float* pivots, bool from_memory,
                                          Moments* partials) {
  return StatsShortRunUnitsOf<kT>(ShortRunHalf(), x, c, spatial, cut, u0, u1, pivots, from_memory,
                                  partials);
}

template <DType kT>
HWY_INLINE bool StatsShortRunUnitsT(const Elem<kT>* x, int64_t c, int64_t spatial,
                                    const NchwUnitCut& cut, int64_t u0, int64_t u1,
                                    const float* pivots, bool from_memory, Moments* partials) {
  if constexpr (kShortRunHalves) {
    if (ShortRunHalves(spatial)) {
      return StatsShortRunUnitsHalfT<kT>(x, c, spatial, cut, u0, u1, pivots, from_memory,
                                         partials);
    }
  }
  return StatsShortRunUnitsOf<kT>(hn::ScalableTag<float>(), x, c, spatial, cut, u0, u1, pivots,
                                  from_memory, partials);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#endif  // BNORM_SRC_STATS_INL_H_
