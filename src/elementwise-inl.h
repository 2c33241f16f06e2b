// The store loops shared by the elementwise kernels (normalize, backward
// apply): full vectors, then a tail in narrower vectors (StoreSpan: 8, 4, 2,
// 1 lanes) or one lane at a time (never a masked or overlapping access, so
// unaligned user buffers and in-place calls are safe). With kStream, outputs
// go around the caches with non-temporal stores after peeling to alignment.
// Include after hwy/highway.h inside a foreach_target translation unit.

#if defined(BNORM_SRC_ELEMENTWISE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef BNORM_SRC_ELEMENTWISE_INL_H_
#undef BNORM_SRC_ELEMENTWISE_INL_H_
#else
#define BNORM_SRC_ELEMENTWISE_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "convert-inl.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "lookahead.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The contract of the store loops below with their value functions: with
// kStream, a value function is called with a full-vector tag only for
// elements whose output address starts an aligned store unit (plus, for
// 16-bit types, the unit's second f32 vector), every other element with a
// tag of fewer lanes (capped: 8, 4, 2 or 1); so a value function may stream
// a second output, with full vectors only, at the same offsets when that
// output shares the first one's alignment (Grad's dz, backward_apply-inl.h).
// A value function may be called twice for the same elements
// (ChannelRunWriter, at a channel boundary) and must then store the same
// values.

// Elements of out before the first one at which a vector of N lanes of type
// T (N * sizeof(T) bytes) can be streamed, at most len.
template <typename T>
HWY_INLINE size_t PeelToAlignment(const T* out, size_t N, size_t len) {
  const size_t misalign = (reinterpret_cast<uintptr_t>(out) / sizeof(T)) % N;
  return misalign == 0 ? 0 : (N - misalign < len ? N - misalign : len);
}

// Stores value(d, j) to out + j for j in [j, len), where len - j < 2 *
// kLanes: a vector of kLanes f32 lanes if that many are left, then half
// as many, down to one lane. Advances j to len.
template <DType kT, size_t kLanes, class Value>
HWY_INLINE void StoreHalvingTail(Elem<kT>* out, size_t& j, size_t len, const Value& value) {
  if constexpr (kLanes >= 1) {
    const hn::CappedTag<float, kLanes> d;
    if (j + kLanes <= len) {
      StoreF32<kT, false>(d, value(d, j), out + j);
      j += kLanes;
    }
    StoreHalvingTail<kT, kLanes / 2>(out, j, len, value);
  }
}

// Stores value(d, j) (f32 lanes) as elements of type kT to out + j for j in
// [0, len), where value is called with a full-vector tag or a capped tag of
// fewer lanes (8, 4, 2, 1). out may alias the inputs value reads, provided
// value(d, j) reads only index j onward of them.
template <DType kT, bool kStream, class Value>
HWY_INLINE void StoreSpan(Elem<kT>* out, size_t len, const Value& value) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  constexpr size_t U = StoreUnitLanes<kT>(df);
  constexpr size_t N = hn::MaxLanes(df);
  constexpr size_t kVecs = U / N;  // f32 vectors per store
  size_t j = 0;
  if (kStream) {
    for (const size_t peel = PeelToAlignment(out, U, len); j < peel; ++j) {
      StoreF32<kT, false>(d1, value(d1, j), out + j);
    }
  }
  for (; j + U <= len; j += U) {
    hn::Vec<decltype(df)> v[kVecs];
    for (size_t h = 0; h < kVecs; ++h) v[h] = value(df, j + h * N);
    StoreUnit<kT, kStream>(df, out + j, [&](auto, size_t o) HWY_ATTR { return v[o / N]; });
  }
  // The rest, fewer than a store's elements (all of a run shorter than a
  // vector), through the caches in vectors of halving width, not one value
  // at a time (each 16-bit value a whole scalar conversion). NCHW inference
  // of 64x512x3x3 from L2, 1 thread (tools/call_timer.cc): bf16 411 -> 148
  // us, f32 129 -> 74; backward bf16 1268 -> 819, f32 865 -> 676. Fewer
  // than U are left: for 16-bit pairs (U = 2N) that starts with a whole
  // vector, at a unit's start.
  StoreHalvingTail<kT, U / 2>(out, j, len, value);
}

// For the value functions of streaming passes (beyond the LLC): prefetches
// into L2 the lines of each input kStreamPrefetchBytes ahead of element i,
// for the step of elements of type T a value call with tag d covers; the
// hardware prefetcher starts over at every 4 KiB page. Null inputs are
// skipped.
template <typename T, class D, class... Inputs>
HWY_INLINE void PrefetchInputsAhead(D /*d*/, size_t i, const Inputs*... inputs) {
  constexpr size_t kStepBytes = hn::MaxLanes(D()) * sizeof(T);
  ((inputs != nullptr ? PrefetchAheadToL2<kStepBytes>(inputs + i) : void()), ...);
}

// Stores value(d, i, constants(d, q)) to out + i for i in [0, len), where
// q = (q0 + i) mod period indexes per-position constants. Constant arrays must
// hold period + kMaxLanes entries (the first kMaxLanes repeated at the end), so
// a vector starting at any q < period reads valid constants even where it
// crosses the end of the period; this keeps every vector store aligned and
// whole whatever the period (NHWC rows of any width). Where the period is a
// whole number of store units and out starts a row, rows go through a nested
// loop (no position wrapping per vector): with `grouped` (RowStores in
// plan.h), two or four rows per load of the constants where the row width
// suits it; otherwise one row after another. The values are the same either
// way.
template <DType kT, bool kStream, class Constants, class Value>
HWY_INLINE void StorePeriodic(Elem<kT>* out, size_t len, size_t q0, size_t period, bool grouped,
                              const Constants& constants, const Value& value) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  constexpr size_t N = hn::MaxLanes(df);
  constexpr size_t U = StoreUnitLanes<kT>(df);
  constexpr size_t kVecs = U / N;  // f32 vectors per store
  size_t i = 0;
  size_t q = q0;
  const bool rows_aligned =
      !kStream || reinterpret_cast<uintptr_t>(out) % (U * sizeof(Elem<kT>)) == 0;
  // Grouped (Zen 3's measurements): rows a multiple of 4 KiB long (f32 C =
  // 1024, 2048) go several at a time with one load of the constants: one row
  // at a time was faster from L2 (C = 1024: 19.5 -> 14.4 us) but slower from
  // DRAM (NHWC inference 32x2048x7x7 1.20 -> 1.91x a copy, 64x1024x14x14
  // 1.13 -> 1.42x). Other rows go one at a time: four rows of 2 KiB (f16
  // C = 1024) share 4 KiB pages, which the hardware prefetcher follows badly
  // (64x1024x14x14 f16 2.98 -> 1.61x a copy with one row at a time), except
  // four rows within 4 KiB (f32 C <= 64), one short stream: four at a time
  // saves the per-vector constant loads (f32 4x64x7x7 inference from L2:
  // 4.0 -> 1.8 us). Sequential: one row at a time always (an Intel Xeon's
  // measurements are at RowStores). The nested loop beats the wrapping loop
  // below even for one row at a time (f32 C = 16, 64K elements from L2,
  // inference: SSE4 30.0 -> 12.8 us, AVX2 11.2 -> 8.4 us).
  const size_t row_bytes = period * sizeof(Elem<kT>);
  if (q0 == 0 && period % U == 0 && rows_aligned) {
    // Streamed rows a multiple of 4 KiB long go two at a time: four rows
    // and their outputs, all 4 KiB apart, contend for the same L1 sets and
    // write-combining buffers (f32 NHWC training of 32x2048x7x7 3.0-3.3 ->
    // 2.3x a copy, 64x1024x14x14 3.2-3.4 -> 2.4-3.1x; inference, which does
    // not stream these, measured better with four).
    // Returns the elements done (i is 0 here); the loop index is the
    // lambda's own, not a captured reference (see the loop below).
    const auto rows_at_once = [&](auto rows) HWY_ATTR {
      constexpr size_t kRows = decltype(rows)::value;
      const size_t groups = len / period / kRows;
      size_t i = 0;
      for (size_t g = 0; g < groups; ++g, i += kRows * period) {
        for (size_t j = 0; j < period; j += U) {
          decltype(constants(df, j)) k[kVecs];
          for (size_t h = 0; h < kVecs; ++h) k[h] = constants(df, j + h * N);
          // All loads before the stores: rows a multiple of 4 KiB apart (C =
          // 1024) would otherwise put each load right behind a store with the
          // same low 12 address bits when y - x is too, and the CPU holds the
          // load back as if it depended on the store (4K aliasing, 3x slower).
          // Also what makes in-place calls safe here.
          hn::Vec<decltype(df)> v[kRows][kVecs];
          for (size_t r = 0; r < kRows; ++r) {
            for (size_t h = 0; h < kVecs; ++h) {
              v[r][h] = value(df, i + r * period + j + h * N, k[h]);
            }
          }
          for (size_t r = 0; r < kRows; ++r) {
            StoreUnit<kT, kStream>(df, out + i + r * period + j,
                                   [&](auto, size_t o) HWY_ATTR { return v[r][o / N]; });
          }
        }
      }
      return i;
    };
    if (!grouped || (row_bytes % 4096 != 0 && 4 * row_bytes > 4096)) {
      i = rows_at_once(std::integral_constant<size_t, 1>());
    } else if (kStream && row_bytes % 4096 == 0) {
      i = rows_at_once(std::integral_constant<size_t, 2>());
    } else {
      i = rows_at_once(std::integral_constant<size_t, 4>());
    }
  }
  // A step of U lanes may span two periods: on AVX3 a 16-bit store unit is
  // 32 lanes and the period of C = 16 or C = 4 is 16.
  const auto advance = [&](size_t step) {
    i += step;
    q += step;
    while (q >= period) q -= period;
  };
  if (kStream) {
    for (size_t peel = PeelToAlignment(out + i, U, len - i); peel > 0; --peel) {
      StoreF32<kT, false>(d1, value(d1, i, constants(d1, q)), out + i);
      advance(1);
    }
  }
  // period >= N (plan.h), so the second vector of a pair starts within one
  // period of q. The vectors are computed into plain locals first: a
  // lambda capturing i and q kept them in memory (f32 NHWC inference of
  // 4x64x7x7 rows one at a time, from L2: 4.8 us with it, 4.0 without).
  while (i + U <= len) {
    hn::Vec<decltype(df)> v[kVecs];
    for (size_t h = 0; h < kVecs; ++h) {
      size_t qh = q + h * N;
      if (qh >= period) qh -= period;
      v[h] = value(df, i + h * N, constants(df, qh));
    }
    StoreUnit<kT, kStream>(df, out + i, [&](auto, size_t o) HWY_ATTR { return v[o / N]; });
    advance(U);
  }
  while (i < len) {
    StoreF32<kT, false>(d1, value(d1, i, constants(d1, q)), out + i);
    advance(1);
  }
}

// Writes value(d, e, k) to out + (e - begin) for flat NCHW elements e of a
// range [begin, end), where k = constants(d, ch) holds the (broadcast)
// constants of e's channel ch; runs of `spatial` elements per (image,
// channel). The constants of the current channel stay in registers. Vectors
// run across channel boundaries: a vector that straddles one blends the values
// of both channels, so the stores stay whole and aligned (full-line
// non-temporal stores with kStream). Needs spatial >= the lanes (at most one
// boundary per vector).
// One store unit per Unit() call: StoreChannelRuns below writes a range in
// one loop, and PacedWrites below interleaves a range's units with the steps
// of a reduction (stats_apply.cc, grad_sums_apply.cc). The members stay in
// registers as long as the writer is a local whose methods are all inlined
// (no lambda holding the run state: that put it in memory, and made f32
// inference of 4x256x7x7 from L2 16.5 us, not 7.7).
template <DType kT, bool kStream, class Constants, class Value>
class ChannelRunWriter {
  using DF = hn::ScalableTag<float>;
  using K = decltype(std::declval<const Constants&>()(DF(), int64_t()));

 public:
  using Out = Elem<kT>;
  static constexpr int64_t N = static_cast<int64_t>(hn::MaxLanes(DF()));
  static constexpr int64_t U = static_cast<int64_t>(StoreUnitLanes<kT>(DF()));

  HWY_INLINE ChannelRunWriter(int64_t c, int64_t spatial, const Constants& constants,
                              const Value& value)
      : c_(c), spatial_(spatial), constants_(constants), value_(value) {}

  // Starts the range [begin, end), element begin at out: writes the elements
  // before the first aligned store unit (kStream) one by one.
  HWY_INLINE void Start(Elem<kT>* out, int64_t begin, int64_t end) {
    out_ = out;
    begin_ = begin;
    end_ = end;
    e_ = begin;
    ch_ = (begin / spatial_) % c_;
    left_ = spatial_ - begin % spatial_;
    if (kStream) {
      const int64_t peel_end =
          begin + static_cast<int64_t>(PeelToAlignment(out, static_cast<size_t>(U),
                                                       static_cast<size_t>(end - begin)));
      while (e_ < peel_end) StoreOne();
    }
    // The next channel's constants are read only once an element of it lies
    // in this range: beyond it, another thread may still be writing them
    // (channel-fused plans).
    if (e_ < end_) k_ = constants_(DF(), ch_);
  }

  // Whether a whole store unit is left in the range.
  HWY_INLINE bool HasUnit() const { return e_ + U <= end_; }

  // Writes the next store unit (HasUnit()).
  HWY_INLINE void Unit() {
    const DF df;
    Elem<kT>* p = out_ + (e_ - begin_);
    // The vectors of this store, each advancing e's run. A vector that ends
    // both its run and the range leaves k stale, and no vector follows it.
    hn::Vec<DF> v[kVecs];
    for (int64_t h = 0; h < kVecs; ++h) {
      v[h] = value_(df, e_, k_);
      if (left_ > N) {
        left_ -= N;
      } else {  // the vector ends this run (and may reach into the next)
        ch_ = NextChannel(ch_);
        if (left_ < N) {
          const K next = constants_(df, ch_);
          v[h] = hn::IfThenElse(hn::FirstN(df, static_cast<size_t>(left_)), v[h],
                                value_(df, e_, next));
          k_ = next;
        } else if (e_ + N < end_) {
          k_ = constants_(df, ch_);
        }
        left_ += spatial_ - N;
      }
      e_ += N;
    }
    StoreUnit<kT, kStream>(df, p, [&](auto, size_t o) HWY_ATTR { return v[o / N]; });
  }

  // Writes what is left of the range (after the last whole unit) one by one.
  HWY_INLINE void Finish() {
    while (e_ < end_) StoreOne();
  }

 private:
  static constexpr int64_t kVecs = U / N;  // f32 vectors per store

  // No division in the loop: a 64-bit modulo per vector would cost more than
  // the vector's arithmetic.
  HWY_INLINE int64_t NextChannel(int64_t k) const { return k + 1 == c_ ? 0 : k + 1; }

  HWY_INLINE void StoreOne() {
    const hn::CappedTag<float, 1> d1;
    StoreF32<kT, false>(d1, value_(d1, e_, constants_(d1, ch_)), out_ + (e_ - begin_));
    ++e_;
    if (--left_ == 0) {
      ch_ = NextChannel(ch_);
      left_ = spatial_;
    }
  }

  int64_t c_, spatial_;
  const Constants& constants_;
  const Value& value_;
  Elem<kT>* out_ = nullptr;
  int64_t begin_ = 0, end_ = 0;
  int64_t e_ = 0;     // the next element
  int64_t ch_ = 0;    // e's channel
  int64_t left_ = 0;  // elements of e's run from e on
  K k_{};             // constants of channel ch_
};

// ChannelRunWriter over one range in one loop. One line of each `ahead` input
// is prefetched into L2 per line of output (lookahead.h).
template <DType kT, bool kStream, class Constants, class Value>
HWY_INLINE void StoreChannelRuns(Elem<kT>* out, int64_t begin, int64_t end, int64_t c,
                                 int64_t spatial, const Lookahead& ahead,
                                 const Constants& constants, const Value& value) {
  ChannelRunWriter<kT, kStream, Constants, Value> writer(c, spatial, constants, value);
  constexpr int64_t U = decltype(writer)::U;
  writer.Start(out, begin, end);
  constexpr int64_t kLineElems = 64 / sizeof(Elem<kT>);
  // Addresses, not pointers: the last line fetched may end past its input.
  uintptr_t ahead0 = reinterpret_cast<uintptr_t>(ahead.input[0]);
  uintptr_t ahead1 = reinterpret_cast<uintptr_t>(ahead.input[1]);
  uintptr_t ahead2 = reinterpret_cast<uintptr_t>(ahead.input[2]);
  const PrefetchToL2 fetch;
  int64_t ahead_left = ahead.input[0] != nullptr ? ahead.elems : 0;  // not yet fetched
  int64_t line_left = 0;  // output elements until the next prefetch
  while (writer.HasUnit()) {
    if (ahead_left > 0 && (line_left -= U) <= 0) {
      line_left += kLineElems;
      ahead_left -= kLineElems;
      fetch(ahead0);
      ahead0 += 64;
      if (ahead1 != 0) {
        fetch(ahead1);
        ahead1 += 64;
      }
      if (ahead2 != 0) {
        fetch(ahead2);
        ahead2 += 64;
      }
    }
    writer.Unit();
  }
  writer.Finish();
}

// Whether this target interleaves a reduction with the previous channel
// group's writes (PacedWrites): the AVX2 and AVX-512 targets, where the CPU's
// NextGroupPolicy (plan.h) asks for it. The others prefetch the next group
// instead (lookahead.h); each interleaved variant is a large function, and
// building them for every target made the sanitizer builds of CI minutes
// longer.
constexpr bool kPacedWrites = HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2;
// The same for elements of type kT: 16-bit elements on the AVX-512 targets
// only, where the conversions are cheap enough for the interleaved loop to
// pay (stats_apply.cc, grad_sums_apply.cc). bf16 and f16 alike: the callers
// ask for both as one.
template <DType kT>
constexpr bool kPacedWritesOf = kPacedWrites && (kT == DType::kF32 || HWY_TARGET <= HWY_AVX3);
static_assert(kPacedWritesOf<DType::kBF16> == kPacedWritesOf<DType::kF16>,
              "the 16-bit types are asked for as one");

// The Side of a reduction kernel (NoSide in accumulators-inl.h) that writes
// the output of NCHW channels [a0, a1) of images 0..n-1 (one range per image)
// through a ChannelRunWriter, one output element per value reduced: when the
// two channel groups are alike (all but the last, short group of the
// channels), both halves end together (stats_apply.cc, grad_sums_apply.cc).
// The elements written one by one at the ends of each image's range do not
// count against the values owed (a small drift of the pace, not of the
// values). Drain() writes what is left.
template <class Writer>
class PacedWrites {
 public:
  HWY_INLINE PacedWrites(const Writer& writer, typename Writer::Out* y, int64_t n, int64_t c,
                         int64_t spatial, int64_t a0, int64_t a1)
      : writer_(writer),
        y_(y),
        n_(n),
        stride_(c * spatial),
        begin_(a0 * spatial),
        len_((a1 - a0) * spatial) {
    StartImage();
  }

  HWY_INLINE void Step(size_t values) {
    owed_ += static_cast<int64_t>(values);
    if (owed_ < Writer::U) return;
    // A local count of the units due: owed_ itself, a member, would be
    // updated in memory once per unit.
    int64_t units = owed_ / Writer::U;
    owed_ -= units * Writer::U;
    while (units != 0) {
      if (writer_.HasUnit()) {
        writer_.Unit();
        --units;
      } else if (!NextImage()) {
        owed_ = std::numeric_limits<int64_t>::min() / 2;  // all written
        return;
      }
    }
  }

  HWY_INLINE void Drain() {
    if (i_ == n_) return;
    do {
      while (writer_.HasUnit()) writer_.Unit();
    } while (NextImage());
  }

 private:
  HWY_INLINE void StartImage() {
    const int64_t begin = i_ * stride_ + begin_;
    writer_.Start(y_ + begin, begin, begin + len_);
  }
  // Finishes the current image's range and starts the next: false after the last.
  HWY_INLINE bool NextImage() {
    writer_.Finish();
    if (++i_ == n_) return false;
    StartImage();
    return true;
  }

  Writer writer_;
  typename Writer::Out* y_;
  int64_t n_, stride_, begin_, len_;
  int64_t i_ = 0;
  int64_t owed_ = 0;  // output elements due
};

}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#endif  // BNORM_SRC_ELEMENTWISE_INL_H_
