// SIMD accumulators shared by the statistics and backward-reduce kernels.
// Include after hwy/highway.h inside a foreach_target translation unit.
//
// Statistics: float sums of shifted values and their squares over short
// blocks, each block closed in double and merged with Chan's formula (see
// ShiftedBlock). Unlike a Welford recurrence, no division or running mean
// sits in the loop: two adds per vector, throughput-bound instead of
// latency-bound, and the blocks keep the float error as small as Welford's.

#if defined(BNORM_SRC_ACCUMULATORS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef BNORM_SRC_ACCUMULATORS_INL_H_
#undef BNORM_SRC_ACCUMULATORS_INL_H_
#else
#define BNORM_SRC_ACCUMULATORS_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "hwy/cache_control.h"

#include "convert-inl.h"
#include "hwy/highway.h"
#include "lookahead.h"
#include "moments.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The work a reduction kernel interleaves with its sums: Step(values) is
// called after each group of `values` values it has added (stats_apply.cc,
// grad_sums_apply.cc). The kernels are inlined into their caller, so a Side
// that is a local there keeps its state in registers.
struct NoSide {
  HWY_INLINE void Step(size_t) const {}
};
constexpr NoSide kNoSide;

// A Side that moves `ahead` (a WalkAhead, lookahead.h: prefetches along the
// kernel's walk) with each step, then passes the step on to `inner`.
template <class Ahead, class Inner>
class AheadSide {
 public:
  AheadSide(const Ahead& ahead, Inner& inner) : ahead_(ahead), inner_(inner) {}
  HWY_INLINE void Step(size_t n) {
    ahead_.Advance(n);
    inner_.Step(n);
  }

 private:
  Ahead ahead_;
  Inner& inner_;
};

// Prefetches the cache lines of `count` elements of `elem_bytes` bytes at p,
// at most kMaxPrefetch bytes (longer runs are caught by the hardware
// prefetcher).
HWY_INLINE void PrefetchRun(const void* p, int64_t count, int64_t elem_bytes) {
  constexpr int64_t kMaxPrefetch = 4096;
  const int64_t bytes = std::min<int64_t>(count * elem_bytes, kMaxPrefetch);
  const char* bp = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) hwy::Prefetch(bp + b);
}

// What the NCHW short-run kernels prefetch while they sum a run of channel
// ch (runs of a channel are stride = c * spatial values apart; this image's
// run of channel ch + 1 follows this one). Runs in cache, and runs of more
// than four lines, fetch the channel's next run, one run ahead. Shorter runs
// read from memory in units of whole channels (from_memory:
// ReduceReads::kMemory; 7x7 f32) fetch this image's run of the next channel,
// a whole unit ahead: one run of lead hid little of DRAM's latency there
// (`call_timer 32 2048 49 0 OP 2`, evicted, Zen 4 guest:
// docs/performance-history.md, "short NCHW runs"; statistics 689 -> 653 us,
// training that sums the next group in the write loop 1069 -> 912), while
// on 196-value runs the next-channel order was the slower (statistics 2116
// -> 2358), and so it was from L2 (a unit ahead, the two units' lines crowd
// L1: backward sums of 32x64x49, one thread, 14.2 -> 16.8 us).
class ShortRunAhead {
 public:
  ShortRunAhead(int64_t c, int64_t spatial, int64_t ch, size_t elem_bytes, bool from_memory)
      : spatial_(spatial),
        next_channel_(from_memory && static_cast<size_t>(spatial) * elem_bytes <= 4 * 64),
        offset_(next_channel_ ? (ch + 1 < c ? spatial : 0) : c * spatial),
        elem_bytes_(static_cast<int64_t>(elem_bytes)) {}
  // Prefetches for the run at p; more: whether the unit has a run after it.
  HWY_INLINE void Run(const void* p, bool more) const {
    if (offset_ != 0 && (more || next_channel_)) {
      PrefetchRun(static_cast<const char*>(p) + offset_ * elem_bytes_, spatial_, elem_bytes_);
    }
  }

 private:
  int64_t spatial_;
  bool next_channel_;
  int64_t offset_;  // elements from a run to the one to prefetch; 0: none
  int64_t elem_bytes_;
};

// How many rows ahead an NHWC reduction prefetches (tensors beyond the LLC,
// rows_ahead): the first whole vector row (rows_per_period rows, of which
// the unit reads `vector_row_bytes` of all its inputs together) at least
// kStreamPrefetchBytes (lookahead.h) of reads ahead. One vector row ahead,
// as before, put the prefetch a few hundred bytes ahead of the loads where
// rows are narrow.
HWY_INLINE int64_t AheadRows(int64_t rows_per_period, size_t vector_row_bytes) {
  const int64_t bytes = static_cast<int64_t>(vector_row_bytes);
  return rows_per_period * std::max<int64_t>(1, (kStreamPrefetchBytes + bytes - 1) / bytes);
}

// Whether a[0, n) and b[0, n) are all finite, checked in vectors: the NHWC
// reduction kernels' results (their callers redo the channels that are not).
HWY_INLINE bool AllFinite(size_t n, const double* HWY_RESTRICT a, const double* HWY_RESTRICT b) {
  size_t k = 0;
  bool finite = true;
#if HWY_HAVE_FLOAT64
  const hn::ScalableTag<double> dd;
  for (; k + hn::Lanes(dd) <= n; k += hn::Lanes(dd)) {
    finite &= hn::AllTrue(
        dd, hn::And(hn::IsFinite(hn::LoadU(dd, a + k)), hn::IsFinite(hn::LoadU(dd, b + k))));
  }
#endif
  for (; k < n; ++k) finite &= std::isfinite(a[k]) && std::isfinite(b[k]);
  return finite;
}

// Adds the lanes of v[0, kCount) into a double: exact conversions, vector
// adds in double, one horizontal sum at the end (a chain of 16 dependent
// adds per AVX3 vector was most of the time of a 49-value NCHW channel from
// L2; folding the backward sums lane by lane, a chain of 64 per accumulator
// set and block: docs/performance-history.md, "the long-run reductions").
template <class D, size_t kCount>
HWY_INLINE double SumLanesOf(D d, const hn::Vec<D> (&v)[kCount]) {
#if HWY_HAVE_FLOAT64 && HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(D()) >= 2) {
    const hn::Half<D> dh;
    const hn::Rebind<double, decltype(dh)> dd;
    auto lo = hn::PromoteTo(dd, hn::LowerHalf(dh, v[0]));
    auto hi = hn::PromoteTo(dd, hn::UpperHalf(dh, v[0]));
    for (size_t a = 1; a < kCount; ++a) {
      lo = hn::Add(lo, hn::PromoteTo(dd, hn::LowerHalf(dh, v[a])));
      hi = hn::Add(hi, hn::PromoteTo(dd, hn::UpperHalf(dh, v[a])));
    }
    return hn::GetLane(hn::SumOfLanes(dd, hn::Add(lo, hi)));
  }
#endif
  HWY_ALIGN float lanes[hn::MaxLanes(D())];
  double total = 0.0;
  for (size_t a = 0; a < kCount; ++a) {
    hn::Store(v[a], d, lanes);
    for (size_t l = 0; l < hn::MaxLanes(D()); ++l) total += static_cast<double>(lanes[l]);
  }
  return total;
}

// The lanes of one vector (SumLanesOf).
template <class D>
HWY_INLINE double SumLanes(D d, hn::Vec<D> v) {
  const hn::Vec<D> one[1] = {v};
  return SumLanesOf(d, one);
}

// Returns the vector v, kept in a register: a value used twice (dy in
// sum(dy) and in sum(dy * (x - mean))) is otherwise loaded by each use, since
// GCC folds a load into every instruction that reads it. That third load per
// vector cost the backward sums a fifth of their speed from L1/L2 on an
// AVX-512 Xeon (tools/loop_ceiling_probe.cc: 13.8 values/ns with the folded
// loads, 17.1 without). Vectors only: a mask's raw is not a vector register.
template <class V>
HWY_INLINE V InRegister(V v) {
#if HWY_ARCH_X86 && HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128 && \
    (HWY_COMPILER_GCC || HWY_COMPILER_CLANG)
  asm("" : "+v"(v.raw));
#endif
  return v;
}

// dy (masked by y with kMask: MaskedGrad) for the backward sums, loaded once
// (InRegister).
template <DType kT, bool kMask, class D>
HWY_INLINE hn::Vec<D> SumsGrad(D d, const Elem<kT>* dy, const Elem<kT>* y) {
  return InRegister(MaskedGrad<kT, kMask>(d, dy, y));
}

// Vector accumulators of the NCHW short-run kernels (StatsShortRunsT,
// GradSumsShortRunsT): enough independent adds to hide their latency.
constexpr size_t kAcc = 4;

// Vector accumulators of the NCHW kernels over long runs (StatsNchwUnitT,
// GradSumsNchwUnitT): eight on the AVX-512 targets (AVX3, AVX3_DL; 32
// vector registers), so a block, still kBlockSteps values per lane, holds
// twice the values and its close (horizontal sums, the merge in double, the
// new shift) costs half as much per value (statistics of one 200K-value
// channel from L2, one AVX3 thread: docs/performance-history.md, "the long-run
// reductions"). A multiple of 4 (StatsNchwUnitT's close).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr size_t kLongAcc = 8;
#else
constexpr size_t kLongAcc = kAcc;
#endif

// The NHWC reductions' register paths (StatsNhwcUnitT, GradSumsNhwcUnitT):
// calls in_registers(std::integral_constant<size_t, k>()) when a period of
// `positions` floats is k whole vectors and k vectors of sums and of their
// per-position constant (three arrays of k) fit the register file: k = 1
// to 4, and 6 or 8 on AVX-512 (32 registers). Else does nothing.
template <class InRegisters>
HWY_INLINE void ForRegisterPeriod(size_t positions, const InRegisters& in_registers) {
  constexpr size_t N = hn::MaxLanes(hn::ScalableTag<float>());
  if (positions == N) in_registers(std::integral_constant<size_t, 1>());
  if (positions == 2 * N) in_registers(std::integral_constant<size_t, 2>());
  if (positions == 3 * N) in_registers(std::integral_constant<size_t, 3>());
  if (positions == 4 * N) in_registers(std::integral_constant<size_t, 4>());
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  if (positions == 6 * N) in_registers(std::integral_constant<size_t, 6>());
  if (positions == 8 * N) in_registers(std::integral_constant<size_t, 8>());
#endif
}

// Vector steps (per lane) of float accumulation before a fold into double.
// Equal shifted values round the same way at every step, so the error of a
// block's Q grows with its length, not its square root: 128 steps gave
// 1.4e-5..2e-5 of variance error for equal values after an outlier
// (accuracy_test EqualValuesAfterAnOutlier), 32 give 3e-7..7e-7, for 2 % (NCHW)
// to 7 % (NHWC) more time in the statistics of a slice from L2.
constexpr size_t kBlockSteps = 32;

// A channel's float sums are accumulated on data shifted by `shift` and
// closed into (count, mean, M2) once per block:
//   mean_b = shift + S / n,  M2_b = Q - S^2 / n,  S = sum(x - shift), Q = sum((x - shift)^2).
// The rounding of Q (a short float sum) is about kBlockSteps * eps * Q, and
// Q = M2_b + n (mean_b - shift)^2: the error is relative to M2_b as long as
// the shift is near the block's mean. Each block is therefore shifted by the
// running mean of the blocks before it (the first by the channel's pivot),
// and the caller compares the sum of all Q to the final M2 (ShiftTrusted):
// only data whose block means jump by many standard deviations within a unit
// fail that test, and those are redone in double.
struct ShiftedBlock {
  double count;
  double sum;     // S
  double sum_sq;  // Q
};

// Closes a block into `unit` (Chan's merge) and adds its Q to *shifted.
HWY_INLINE void CloseBlock(const ShiftedBlock& b, float shift, Moments& unit, double* shifted) {
  if (b.count == 0.0) return;
  const double mean_offset = b.sum / b.count;
  const double m2 = std::max(b.sum_sq - b.sum * mean_offset, 0.0);
  MergeMoments(unit, Moments{b.count, static_cast<double>(shift) + mean_offset, m2});
  *shifted += b.sum_sq;
}

// The largest sum of block Q over the unit's M2 whose rounding is accepted:
// the relative error of M2 is at most about this times that of one float
// block sum. Normal data, with an offset of 1e4 or not, mostly-zero (ReLU)
// data and ramps stay below it (same speed as before the bound was lowered
// from 16, measured from L2); an outlier that pulls the first block's shift
// away from the bulk goes over it and is redone in double (accuracy_test).
constexpr double kMaxShiftedRatio = 4.0;

// Float squares of deviations below sqrt(FLT_MIN) (about 1e-19) underflow:
// each loses less than FLT_MIN = 2^-126, so less than count * 2^-126 in all.
// Where the block sums of squares Q add up to count * 2^-102 or more (and
// so, by the check above, M2 to a quarter of that), the loss is below float
// precision of M2. Below that, and only where the mean is within 2^-37 of
// zero (a value and a shift at least 2^-38 in magnitude that differ, differ
// by 2^-62 or more, whose square is normal), the float sums are not trusted
// (1e-25-scale data: M2 came out 0). A channel of exact zeros (mean and M2
// both 0: every value equal to a zero shift) is exact and kept; so, wrongly,
// is data whose values all lie within 1e-19 of zero and sum to exactly 0.
constexpr double kTinyMean = 0x1p-37;
constexpr double kTinyShiftedPerValue = 0x1p-102;

HWY_INLINE bool MayHaveUnderflowed(double shifted, const Moments& m) {
  return shifted < kTinyShiftedPerValue * m.count && std::abs(m.mean) < kTinyMean &&
         (m.mean != 0.0 || m.m2 != 0.0);
}

HWY_INLINE bool ShiftTrusted(double shifted, const Moments& m) {
  return shifted <= kMaxShiftedRatio * m.m2 && !MayHaveUnderflowed(shifted, m);
}

#if HWY_HAVE_FLOAT64
// ShiftTrusted for the lanes of vectors of double (one channel per lane,
// all of `count` values).
template <class DD>
HWY_INLINE hn::Mask<DD> ShiftTrustedLanes(DD dd, double count, hn::Vec<DD> shifted,
                                          hn::Vec<DD> mean, hn::Vec<DD> m2) {
  const auto zero = hn::Zero(dd);
  const auto underflowed =
      hn::And(hn::And(hn::Lt(shifted, hn::Set(dd, kTinyShiftedPerValue * count)),
                      hn::Lt(hn::Abs(mean), hn::Set(dd, kTinyMean))),
              hn::Or(hn::Ne(mean, zero), hn::Ne(m2, zero)));
  return hn::AndNot(underflowed, hn::Le(shifted, hn::Mul(hn::Set(dd, kMaxShiftedRatio), m2)));
}
#endif

// Runs of at most this many values take the short-run kernels
// (StatsShortRunsT, GradSumsShortRunsT) when a unit holds whole runs: a
// channel of 7x7 or 14x14 images is 49- or 196-value runs c * spatial apart,
// and the general kernels' per-run control flow (lengths, bounds, block
// checks per loop) cost as much as the sums themselves.
constexpr int64_t kShortRun = 512;

// Runs shorter than the target's vectors (9-value 3x3 images on AVX-512, 4-
// to 7-value runs on AVX2) take the short-run kernels in half vectors
// (ShortRunHalf), which the general kernels summed with a run's worth of
// control flow around two partial vectors (statistics of 64x512x3x3 from
// L2, 1 thread, AVX-512: 171 us against inference's 74; 77-82 us in half
// vectors; tools/call_timer.cc, paired medians of 6 alternated runs:
// statistics 0.37-0.47 of the time for 3x3 and 12-value runs, 2 threads
// training of 64x512x3x3 0.65, backward 0.68; AVX2, 4- and 6-value runs,
// statistics 0.55 and 0.43). Every caller of the short-run kernels chooses
// through ShortRunHalves, so a shape's sums take the same vectors in every
// plan. Not on SSE4 and SSSE3 (half vectors of two lanes) nor SCALAR.
constexpr bool kShortRunHalves = hn::MaxLanes(hn::ScalableTag<float>()) >= 8;
using ShortRunHalf =
    hn::CappedTag<float, std::max<size_t>(hn::MaxLanes(hn::ScalableTag<float>()) / 2, 1)>;
// The lanes of the short-run kernels' narrowest vectors (ShortRuns).
constexpr int64_t kShortRunMinLanes =
    static_cast<int64_t>(kShortRunHalves ? hn::MaxLanes(ShortRunHalf())
                                         : hn::MaxLanes(hn::ScalableTag<float>()));
// Half vectors sum runs of half a full vector's lanes up to one lane fewer
// than a full vector: no group of kAcc vectors, one whole half vector and a
// tail (0 to lanes/2 - 1 values). Given as constants, so that the loop has
// that shape without GCC having to unswitch it (inlined into
// StatsNchwUnits, GCC unswitched it; out of line, it did not, and
// 64x512x3x3 took twice the time).
template <class DF>
constexpr bool kIsShortRunHalf =
    kShortRunHalves && hn::MaxLanes(DF()) < hn::MaxLanes(hn::ScalableTag<float>());
HWY_INLINE bool ShortRunHalves(int64_t spatial) {
  return kShortRunHalves &&
         spatial < static_cast<int64_t>(hn::MaxLanes(hn::ScalableTag<float>()));
}

// Whether a unit [begin, end) of a channel takes the short-run kernels: whole
// runs of at most kShortRun values, each at most kBlockSteps steps of the
// accumulators (SCALAR: 128 values) and at least as long as the kernels'
// vectors (the last values of a run are summed from the run's last vector,
// see ShortRunTail; runs shorter than a full vector take half vectors, see
// ShortRunHalves).
HWY_INLINE bool ShortRuns(int64_t spatial, int64_t begin, int64_t end) {
  constexpr int64_t kLanes = static_cast<int64_t>(hn::MaxLanes(hn::ScalableTag<float>()));
  constexpr int64_t kMaxRun = static_cast<int64_t>(kBlockSteps * kAcc) * kLanes;
  return spatial >= kShortRunMinLanes && spatial <= std::min(kShortRun, kMaxRun) &&
         begin % spatial == 0 && end % spatial == 0;
}

// How the short-run kernels cut every run of a unit: `groups` groups of kAcc
// vectors, `leftover` (< kAcc) more vectors, one per accumulator, and `tail`
// (< lanes) values; blocks of `runs_per_block` whole runs, so that no
// accumulator lane adds more than kBlockSteps values per block (the tail's
// accumulators take one per run).
struct ShortRunShape {
  template <class DF>
  ShortRunShape(DF df, int64_t spatial)
      : len(static_cast<size_t>(spatial)),
        groups(len / (kAcc * hn::MaxLanes(df))),
        leftover(len % (kAcc * hn::MaxLanes(df)) / hn::MaxLanes(df)),
        tail(len % hn::MaxLanes(df)),
        runs_per_block(kBlockSteps / std::max<size_t>(groups + (leftover != 0 ? 1 : 0), 1)) {
    HWY_DASSERT(runs_per_block >= 1);  // ShortRuns
  }
  size_t len, groups, leftover, tail, runs_per_block;
};

// The lanes of a run's last vector that hold its last `tail` values (those
// after its whole vectors): the short-run kernels load the vector that ends
// the run, which lies within it (no read beyond the run, for any type and
// target), and keep these lanes. A masked load would do for f32 on AVX2 only,
// and 16-bit and f32 tensors of the same values must sum alike (dtype_test).
template <class DF>
HWY_INLINE hn::Mask<DF> ShortRunTail(DF df, size_t tail) {
  return hn::Not(hn::FirstN(df, hn::MaxLanes(df) - tail));
}

// kAcc vector accumulators of sum(dy) and sum(dy * (x - mean)), folded into
// double every kBlockSteps steps so float rounding stays within short sums.
template <class D, size_t kAcc>
class GradSumRegisters {
 public:
  using V = hn::Vec<D>;
  static constexpr size_t kLanes = hn::MaxLanes(D());

  explicit GradSumRegisters(D d) : d_(d) {
    for (size_t a = 0; a < kAcc; ++a) sum_dy_[a] = sum_dy_xmu_[a] = hn::Zero(d);
  }

  // Adds `steps` groups of kAcc vectors of x and dy (unaligned), folding
  // every kBlockSteps steps. The sums live in locals during the loop:
  // members of an object whose address escapes would make every add a
  // store-to-load round trip.
  // With kMask, dy is masked by y (the ReLU's output; see MaskedGrad).
  // side.Step runs after each step (Side: NoSide above).
  template <DType kT, bool kMask, class Side = const NoSide>
  HWY_INLINE void Add(const Elem<kT>* HWY_RESTRICT x, const Elem<kT>* HWY_RESTRICT dy,
                      const Elem<kT>* HWY_RESTRICT y, size_t steps, V mean, Side& side = kNoSide) {
    while (steps != 0) {
      const size_t take = std::min(steps, kBlockSteps - steps_);
      V s_dy[kAcc];
      V s_xmu[kAcc];
      for (size_t a = 0; a < kAcc; ++a) {
        s_dy[a] = sum_dy_[a];
        s_xmu[a] = sum_dy_xmu_[a];
      }
      for (size_t k = 0; k < take; ++k, x += kAcc * kLanes, dy += kAcc * kLanes) {
        const Elem<kT>* yk = kMask ? y + k * kAcc * kLanes : nullptr;
        for (size_t a = 0; a < kAcc; ++a) {
          const V g = SumsGrad<kT, kMask>(d_, dy + a * kLanes, kMask ? yk + a * kLanes : nullptr);
          const V xmu = hn::Sub(LoadF32<kT>(d_, x + a * kLanes), mean);
          s_dy[a] = hn::Add(s_dy[a], g);
          s_xmu[a] = hn::MulAdd(g, xmu, s_xmu[a]);
        }
        side.Step(kAcc * kLanes);
      }
      for (size_t a = 0; a < kAcc; ++a) {
        sum_dy_[a] = s_dy[a];
        sum_dy_xmu_[a] = s_xmu[a];
      }
      if (kMask) y += take * kAcc * kLanes;
      steps -= take;
      steps_ += take;
      if (steps_ == kBlockSteps) Fold();
    }
  }

  HWY_INLINE void AddTo(GradSums& out) {
    Fold();
    out.sum_dy += total_dy_;
    out.sum_dy_xmu += total_dy_xmu_;
  }

 private:
  HWY_INLINE void Fold() {
    if (steps_ == 0) return;
    total_dy_ += SumLanesOf(d_, sum_dy_);
    total_dy_xmu_ += SumLanesOf(d_, sum_dy_xmu_);
    for (size_t a = 0; a < kAcc; ++a) sum_dy_[a] = sum_dy_xmu_[a] = hn::Zero(d_);
    steps_ = 0;
  }

  D d_;
  V sum_dy_[kAcc];
  V sum_dy_xmu_[kAcc];
  size_t steps_ = 0;
  double total_dy_ = 0.0;
  double total_dy_xmu_ = 0.0;
};

}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#endif  // BNORM_SRC_ACCUMULATORS_INL_H_
