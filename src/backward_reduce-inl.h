// The NCHW backward reduction kernels (see backward_reduce.h): sum(dy) and
// sum(dy * (x - mean)) of one reduction unit. Shared by backward_reduce.cc
// and by grad_sums_apply.cc, which runs them with a Side (accumulators-inl.h):
// the previous channel group's dx written between their steps, without
// changing a bit of the sums.
// Include after hwy/highway.h inside a foreach_target translation unit.

#if defined(BNORM_SRC_BACKWARD_REDUCE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef BNORM_SRC_BACKWARD_REDUCE_INL_H_
#undef BNORM_SRC_BACKWARD_REDUCE_INL_H_
#else
#define BNORM_SRC_BACKWARD_REDUCE_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include <algorithm>

#include "accumulators-inl.h"
#include "convert-inl.h"
#include "hwy/highway.h"
#include "moments.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The sums of the last values of runs, fewer than a vector per run, in
// accumulators of kLanes lanes, then half as many, down to one (as TailSums
// in stats-inl.h): a run's tail [j, len) (len - j < 2 * kLanes) adds each
// width once at most. One value at a time, each run of 3x3 values was a
// chain of nine dependent adds.
template <DType kT, bool kMask, size_t kLanes>
struct GradTailSums {
  using D = hn::CappedTag<float, kLanes>;
  HWY_INLINE GradTailSums() : regs(D()) {}

  HWY_INLINE void Add(const Elem<kT>* x, const Elem<kT>* dy, const Elem<kT>* y, size_t j,
                      size_t len, float mean) {
    if (j + kLanes <= len) {
      regs.template Add<kT, kMask>(x + j, dy + j, kMask ? y + j : nullptr, 1, hn::Set(D(), mean));
      j += kLanes;
    }
    next.Add(x, dy, y, j, len, mean);
  }
  HWY_INLINE void AddTo(GradSums& out) {
    regs.AddTo(out);
    next.AddTo(out);
  }

  GradSumRegisters<D, 1> regs;
  GradTailSums<kT, kMask, kLanes / 2> next;
};

template <DType kT, bool kMask>
struct GradTailSums<kT, kMask, 0> {
  HWY_INLINE void Add(const Elem<kT>*, const Elem<kT>*, const Elem<kT>*, size_t, size_t, float) {}
  HWY_INLINE void AddTo(GradSums&) {}
};

template <DType kT, bool kMask, class Side>
HWY_INLINE GradSums GradSumsNchwUnitT(const Elem<kT>* x, const Elem<kT>* dy, const Elem<kT>* y,
                                      int64_t c, int64_t spatial, int64_t ch, int64_t begin,
                                      int64_t end, float mean, Side& side) {
  const hn::ScalableTag<float> df;
  constexpr size_t N = hn::MaxLanes(df);
  GradSumRegisters<decltype(df), kLongAcc> main(df);
  GradSumRegisters<decltype(df), 1> rest(df);
  GradTailSums<kT, kMask, N / 2> tail;
  const auto vmean = hn::Set(df, mean);
  int64_t i = begin / spatial;
  int64_t s = begin % spatial;
  for (int64_t pos = begin; pos < end; ++i, s = 0) {
    const size_t len = static_cast<size_t>(std::min(spatial - s, end - pos));
    const int64_t offset = (i * c + ch) * spatial + s;
    if (pos + static_cast<int64_t>(len) < end) {  // next image's run (see StatsNchwUnitT)
      const int64_t next = ((i + 1) * c + ch) * spatial;
      const int64_t count = std::min(spatial, end - pos - static_cast<int64_t>(len));
      PrefetchRun(x + next, count, sizeof(Elem<kT>));
      PrefetchRun(dy + next, count, sizeof(Elem<kT>));
    }
    const Elem<kT>* xs = x + offset;
    const Elem<kT>* gs = dy + offset;
    const Elem<kT>* ys = kMask ? y + offset : nullptr;
    const auto at = [&](size_t j) { return kMask ? ys + j : nullptr; };
    size_t j = 0;
    const size_t groups = len / (kLongAcc * N);
    main.template Add<kT, kMask>(xs, gs, ys, groups, vmean, side);
    j = groups * kLongAcc * N;
    if (j < len) side.Step(len - j);
    for (; j + N <= len; j += N) rest.template Add<kT, kMask>(xs + j, gs + j, at(j), 1, vmean);
    tail.Add(xs, gs, ys, j, len, mean);
    pos += static_cast<int64_t>(len);
  }
  GradSums sums;
  main.AddTo(sums);
  rest.AddTo(sums);
  tail.AddTo(sums);
  return sums;
}

// Sums of `runs` whole runs of `spatial` values, from image i0 on, of channel
// ch: the sums of GradSumsNchwUnitT (the same sums, not the same bits) with a
// loop shape fixed for all runs, in groups of kAcc vectors, as StatsShortRunsT
// does for the statistics (short runs, ShortRuns(); from_memory as there).
// df: full or half vectors (ShortRunHalves, GradSumsShortRunsT).
template <DType kT, bool kMask, class DF, class Side>
HWY_INLINE GradSums GradSumsShortRunsOf(DF df, const Elem<kT>* x, const Elem<kT>* dy,
                                        const Elem<kT>* y, int64_t c, int64_t spatial, int64_t ch,
                                        int64_t i0, int64_t runs, float mean, Side& side,
                                        bool from_memory) {
  using V = hn::Vec<DF>;
  constexpr size_t N = hn::MaxLanes(df);
  const ShortRunShape shape(df, spatial);
  constexpr bool kHalf = kIsShortRunHalf<DF>;  // groups 0, leftover 1
  const size_t len = shape.len, groups = kHalf ? 0 : shape.groups;
  const size_t leftover = kHalf ? 1 : shape.leftover;
  HWY_DASSERT(!kHalf || (shape.groups == 0 && shape.leftover == 1));  // ShortRuns
  const size_t tail = shape.tail, runs_per_block = shape.runs_per_block;
  const auto tail_mask = ShortRunTail(df, tail);
  const V vmean = hn::Set(df, mean);
  const int64_t stride = c * spatial;
  const ShortRunAhead ahead(c, spatial, ch, sizeof(Elem<kT>), from_memory);
  const int64_t first = (i0 * c + ch) * spatial;
  const Elem<kT>* xs = x + first;
  const Elem<kT>* gs = dy + first;
  const Elem<kT>* ys = kMask ? y + first : nullptr;
  GradSums sums;
  for (int64_t r = 0; r < runs;) {
    const int64_t block_runs = std::min<int64_t>(static_cast<int64_t>(runs_per_block), runs - r);
    V s_dy[kAcc], s_xmu[kAcc];
    for (size_t a = 0; a < kAcc; ++a) s_dy[a] = s_xmu[a] = hn::Zero(df);
    V t_dy = hn::Zero(df), t_xmu = hn::Zero(df);
    for (int64_t k = 0; k < block_runs; ++k) {
      ahead.Run(xs, r + k + 1 < runs);
      ahead.Run(gs, r + k + 1 < runs);
      size_t j = 0;
      for (size_t g = 0; g < groups; ++g, j += kAcc * N) {
        for (size_t a = 0; a < kAcc; ++a) {
          const size_t at = j + a * N;
          const V gv = SumsGrad<kT, kMask>(df, gs + at, kMask ? ys + at : nullptr);
          const V xmu = hn::Sub(LoadF32<kT>(df, xs + at), vmean);
          s_dy[a] = hn::Add(s_dy[a], gv);
          s_xmu[a] = hn::MulAdd(gv, xmu, s_xmu[a]);
        }
      }
      // The leftover vectors one per accumulator (constant indices).
      for (size_t a = 0; a < 3; ++a) {
        if (a >= leftover) break;
        const size_t at = j + a * N;
        const V gv = SumsGrad<kT, kMask>(df, gs + at, kMask ? ys + at : nullptr);
        const V xmu = hn::Sub(LoadF32<kT>(df, xs + at), vmean);
        s_dy[a] = hn::Add(s_dy[a], gv);
        s_xmu[a] = hn::MulAdd(gv, xmu, s_xmu[a]);
      }
      if (tail != 0) {  // from the run's last vector (ShortRunTail)
        const size_t at = len - N;
        const V gv = hn::IfThenElseZero(
            tail_mask, MaskedGrad<kT, kMask>(df, gs + at, kMask ? ys + at : nullptr));
        // Both masked: an Inf or NaN among the values already summed would
        // make 0 * xmu NaN.
        const V xmu = hn::IfThenElseZero(tail_mask, hn::Sub(LoadF32<kT>(df, xs + at), vmean));
        t_dy = hn::Add(t_dy, gv);
        t_xmu = hn::MulAdd(gv, xmu, t_xmu);
      }
      side.Step(len);
      xs += stride;
      gs += stride;
      if (kMask) ys += stride;
    }
    r += block_runs;
    for (size_t a = 1; a < kAcc; ++a) {
      s_dy[0] = hn::Add(s_dy[0], s_dy[a]);
      s_xmu[0] = hn::Add(s_xmu[0], s_xmu[a]);
    }
    sums.sum_dy += SumLanes(df, hn::Add(s_dy[0], t_dy));
    sums.sum_dy_xmu += SumLanes(df, hn::Add(s_xmu[0], t_xmu));
  }
  return sums;
}

// Half vectors out of line, as StatsShortRunsHalfT.
template <DType kT, bool kMask, class Side>
HWY_NOINLINE GradSums GradSumsShortRunsHalfT(const Elem<kT>* x, const Elem<kT>* dy,
                                             const Elem<kT>* y, int64_t c, int64_t spatial,
                                             int64_t ch, int64_t i0, int64_t runs, float mean,
                                             Side& side, bool from_memory) {
  return GradSumsShortRunsOf<kT, kMask>(ShortRunHalf(), x, dy, y, c, spatial, ch, i0, runs, mean,
                                        side, from_memory);
}

template <DType kT, bool kMask, class Side>
HWY_INLINE GradSums GradSumsShortRunsT(const Elem<kT>* x, const Elem<kT>* dy, const Elem<kT>* y,
                                       int64_t c, int64_t spatial, int64_t ch, int64_t i0,
                                       int64_t runs, float mean, Side& side, bool from_memory) {
  if constexpr (kShortRunHalves) {
    if (ShortRunHalves(spatial)) {
      return GradSumsShortRunsHalfT<kT, kMask>(x, dy, y, c, spatial, ch, i0, runs, mean, side,
                                               from_memory);
    }
  }
  return GradSumsShortRunsOf<kT, kMask>(hn::ScalableTag<float>(), x, dy, y, c, spatial, ch, i0,
                                        runs, mean, side, from_memory);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#endif  // BNORM_SRC_BACKWARD_REDUCE_INL_H_
