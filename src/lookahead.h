// Software pipelining of the channel-fused plan (plan.h): while a task writes
// the output of one channel group, reading the group's inputs back from L2,
// it prefetches into L2 the inputs of the group it reduces next. Each core
// then keeps reads and writes in flight together, as a copy does, instead of
// alternating a read-only pass (statistics) with a write-only one (output);
// the next reduction reads from L2. On the AVX2 and AVX-512 targets, f32
// forward training and f32 training-mode backward (with or without the fused
// residual and ReLU) go further where a run holds a vector, and so do, on
// AVX-512, bf16/f16 forward training where a run holds four vectors and
// plain bf16/f16 backward where it holds 8192 values: they reduce the next
// group while they write this one (stats_apply.h, grad_sums_apply.h), where
// the CPU's NextGroupPolicy (plan.h) allows it.
// Passes over tensors beyond the LLC prefetch their DRAM reads ahead with the
// helpers below (kStreamPrefetchBytes).
#ifndef BNORM_SRC_LOOKAHEAD_H_
#define BNORM_SRC_LOOKAHEAD_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "hwy/base.h"  // HWY_INLINE

namespace bnorm {

// The prefetch helpers below are always inlined (HWY_INLINE). A helper whose
// body is only __builtin_prefetch has no effect GCC must keep: where its
// inliner declined a call (the kernels of NCHW elementwise passes are large),
// GCC 12 deleted the out-of-line call as dead, and the NCHW streaming passes,
// which prefetch through PrefetchToL2 (StoreChannelRuns), ran with no
// prefetch at all (0 prefetch instructions in their kernels;
// docs/performance-history.md).

// How far ahead of their reads the passes over tensors beyond the LLC
// prefetch into L2: each input of the streaming elementwise passes, all
// the inputs of a two-phase reduction together (WalkAhead, AheadRows). The
// hardware prefetcher stops at each 4 KiB page and starts again a few lines
// into the next; fetched this far ahead, every page's first lines are on
// their way before the loop needs them. Inference from DRAM, 2 threads,
// Xeon guest (bnorm_bench, medians of 5, runs alternated): 32x256x56x56
// 5.0-6.2 -> 4.3-5.0 ms, 256x3x224x224 8.0-8.9 -> 7.0-8.0 ms; 8, 16 and 32
// KiB within noise of each other (docs/performance-history.md).
constexpr int64_t kStreamPrefetchBytes = 16 << 10;

// Prefetches into L2 (for reading) the lines of a step of kStepBytes at
// address `at` of a walk in such steps, each line once: a step shorter than
// a line prefetches where it starts in the first kStepBytes of its line, a
// longer one every line it covers. An address, not a pointer: it may lie past
// the end of a buffer (a prefetch does not fault).
template <size_t kStepBytes>
HWY_INLINE void PrefetchStepToL2(uintptr_t at) {
  if constexpr (kStepBytes < 64) {
    if ((at & 63) >= kStepBytes) return;
  }
  constexpr size_t kLines = kStepBytes < 64 ? 1 : (kStepBytes + 63) / 64;
  for (size_t k = 0; k < kLines; ++k) {
    __builtin_prefetch(reinterpret_cast<const void*>(at + 64 * k), 0, 2);
  }
}

// The step of such a walk kStreamPrefetchBytes past the one at p.
template <size_t kStepBytes>
HWY_INLINE void PrefetchAheadToL2(const void* p) {
  PrefetchStepToL2<kStepBytes>(reinterpret_cast<uintptr_t>(p) + kStreamPrefetchBytes);
}

// Prefetches the cache line at `line` into L2 (for reading).
struct PrefetchToL2 {
  HWY_INLINE void operator()(uintptr_t line) const {
    __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 2);
  }
};

// Prefetches into L2 what a reduction kernel will read kStreamPrefetchBytes
// (of all its inputs together) further along its walk over one channel's
// values [begin, end) of an NCHW tensor (value v = i * spatial + s at element
// (i * c + ch) * spatial + s), in up to three inputs at the same offsets:
// each Advance(n) (n values read by the kernel, in walk order) moves a
// cursor that far ahead by n values, across runs, and prefetches the lines
// it passes. Runs shorter than the distance are prefetched whole, several
// runs ahead, which the hardware prefetcher does not follow (they are
// c * spatial apart). The kernels call it through a Side (AheadSide,
// accumulators-inl.h). Fetch: what is done with each line (PrefetchToL2; a
// test records them).
template <class T, class Fetch = PrefetchToL2>
class WalkAhead {
 public:
  // a: the first input at the unit's first value ((i * c + ch) * spatial +
  // s for begin = i * spatial + s); b, c: the others there, or null.
  WalkAhead(const T* a, const T* b, const T* c, int64_t channels, int64_t spatial, int64_t begin,
            int64_t end, Fetch fetch = Fetch())
      : fetch_(fetch),
        b_delta_(reinterpret_cast<uintptr_t>(b) - reinterpret_cast<uintptr_t>(a)),
        c_delta_(reinterpret_cast<uintptr_t>(c) - reinterpret_cast<uintptr_t>(a)),
        has_b_(b != nullptr),
        has_c_(c != nullptr),
        gap_(static_cast<intptr_t>((channels - 1) * spatial) * static_cast<intptr_t>(sizeof(T))),
        spatial_(spatial),
        end_(end) {
    // The cursor starts the distance into the walk: whole runs skipped,
    // then values within its run.
    const int64_t streams = 1 + (b != nullptr) + (c != nullptr);
    const int64_t v = std::min(end, begin + kAheadValues / streams);
    const int64_t runs = v / spatial - begin / spatial;
    at_ = reinterpret_cast<uintptr_t>(a) +
          static_cast<uintptr_t>((runs * channels * spatial + v % spatial - begin % spatial) *
                                 static_cast<int64_t>(sizeof(T)));
    v_ = v;
    run_end_ = std::min(end, (v / spatial + 1) * spatial);
    line_ = at_ & ~uintptr_t{63};
  }

  void Advance(size_t n) {
    int64_t left = static_cast<int64_t>(n);
    while (left > 0 && v_ < end_) {
      const int64_t take = std::min(left, run_end_ - v_);
      at_ += static_cast<uintptr_t>(take) * sizeof(T);
      for (; line_ < at_; line_ += 64) FetchLine(line_);
      v_ += take;
      left -= take;
      if (v_ == run_end_ && v_ < end_) {  // the next image's run
        at_ += static_cast<uintptr_t>(gap_);
        line_ = at_ & ~uintptr_t{63};
        run_end_ = std::min(end_, run_end_ + spatial_);
      }
    }
  }

 private:
  static constexpr int64_t kAheadValues = kStreamPrefetchBytes / static_cast<int64_t>(sizeof(T));

  HWY_INLINE void FetchLine(uintptr_t line) {
    fetch_(line);
    if (has_b_) fetch_(line + b_delta_);
    if (has_c_) fetch_(line + c_delta_);
  }

  Fetch fetch_;
  uintptr_t b_delta_, c_delta_;  // bytes from the first input to the others (modulo 2^64)
  bool has_b_, has_c_;
  intptr_t gap_;  // bytes from one run's end to the next run's start
  int64_t spatial_, end_;
  uintptr_t at_;     // the cursor: where the walk is kStreamPrefetchBytes ahead
  uintptr_t line_;   // the next line of the cursor's run not yet prefetched
  int64_t v_;        // the cursor's value index
  int64_t run_end_;  // value index where the cursor's run (or the unit) ends
};

// Up to three input ranges of `elems` elements each (x; or dy, x and the
// fused ReLU's y; of the output's type), one cache line of each prefetched
// per line of output written. input[0] null: nothing.
struct Lookahead {
  const void* input[3] = {nullptr, nullptr, nullptr};
  int64_t elems = 0;
};

}  // namespace bnorm

#endif  // BNORM_SRC_LOOKAHEAD_H_
