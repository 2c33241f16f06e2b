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
// group while they write this one (stats_apply.h, grad_sums_apply.h).
#ifndef BNORM_SRC_LOOKAHEAD_H_
#define BNORM_SRC_LOOKAHEAD_H_

#include <cstdint>

namespace bnorm {

// How far ahead of their reads the streaming elementwise passes (NCHW and
// NHWC, output beyond the LLC) prefetch their inputs into L2. The
// hardware prefetcher stops at each 4 KiB page and starts again a few lines
// into the next; fetched this far ahead, every page's first lines are on
// their way before the loop needs them. Inference from DRAM, 2 threads,
// Xeon guest (bnorm_bench, medians of 5, runs alternated): 32x256x56x56
// 5.0-6.2 -> 4.3-5.0 ms, 256x3x224x224 8.0-8.9 -> 7.0-8.0 ms; 8, 16 and 32
// KiB within noise of each other (docs/performance-history.md).
constexpr int64_t kStreamPrefetchBytes = 16 << 10;

// Up to three input ranges of `elems` elements each (x; or dy, x and the
// fused ReLU's y; of the output's type), one cache line of each prefetched
// per line of output written. input[0] null: nothing.
struct Lookahead {
  const void* input[3] = {nullptr, nullptr, nullptr};
  int64_t elems = 0;
};

}  // namespace bnorm

#endif  // BNORM_SRC_LOOKAHEAD_H_
