// The planner: how a call's work is split into units and tasks. Plain C++, no
// SIMD, no threads; unit-tested on its own (tests/plan_test.cc).
//
// Determinism: reductions are split into *units* whose boundaries depend only
// on the shape, never on the thread count or the target. Each unit yields a
// partial result and the partials of a channel are merged in unit order, so
// the result is bitwise the same however units are spread over threads.
#ifndef BNORM_SRC_PLAN_H_
#define BNORM_SRC_PLAN_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "dtype.h"

namespace bnorm {

// Elements per reduction unit (f32: 128 KiB). Large enough that the per-unit
// merge cost vanishes, small enough to balance threads and stay in L2.
constexpr int64_t kUnitElems = 32768;
// NHWC units span at least this many periods (rows, for C >= 16).
constexpr int64_t kMinUnitRows = 64;
// ... and up to this many where the tensor has rows for kUnitsForThreads
// units of them: a unit's work per position (set-up, the merge into the
// channel's total) then weighs a quarter as much per value.
constexpr int64_t kMaxUnitRows = 256;
// The fewest NHWC row units the longer units above leave (a shape's units
// are the parallelism of every thread count: they cannot depend on it).
constexpr int64_t kUnitsForThreads = 128;
// Elements per elementwise task.
constexpr int64_t kTaskElems = 65536;
// At most this many lane positions (floats of sum state) in an NHWC unit.
constexpr int64_t kMaxPositions = 1024;
// Lanes of the widest target (AVX-512 f32). Periods are multiples of it so that
// one plan serves every target.
constexpr int64_t kMaxLanes = 16;

// A tensor shape reduced to the two memory patterns the kernels know. C == 1 is
// contiguous (NCHW with n = 1); spatial == 1 is row-major (NHWC).
struct Problem {
  int64_t n = 0;
  int64_t c = 0;
  int64_t spatial = 0;
  bool nhwc = false;
  DType dtype = DType::kF32;  // of the tensors; sizes below in bytes use it

  int64_t Values() const { return n * spatial; }  // per channel
  int64_t Elements() const { return n * c * spatial; }
  int64_t ElemBytes() const { return bnorm::ElemBytes(dtype); }
  // Elements of `tensors` tensors, and their bytes: validation bounds one
  // tensor's bytes by PTRDIFF_MAX, so several can pass int64; these
  // saturate at INT64_MAX instead (only compared with sizes).
  int64_t ElementsOf(int64_t tensors) const { return Saturated(Elements(), tensors); }
  int64_t BytesOf(int64_t tensors) const { return Saturated(ElementsOf(tensors), ElemBytes()); }
  // Bytes of one channel's values in `tensors` tensors, saturating too.
  int64_t SliceBytesOf(int64_t tensors) const {
    return Saturated(Saturated(Values(), tensors), ElemBytes());
  }

 private:
  static int64_t Saturated(int64_t a, int64_t b) {
    int64_t product = 0;
    return __builtin_mul_overflow(a, b, &product) ? INT64_MAX : product;
  }
};

Problem Canonicalize(int64_t n, int64_t c, int64_t spatial, bool nhwc);

// NCHW reductions: channel ch is cut into `units_per_channel` units of
// `unit_len` consecutive values in (i, s) order (the last may be shorter).
// Unit u of channel ch has index ch * units_per_channel + u.
//
// NHWC reductions: channels are cut into `num_blocks` blocks of at most
// `block_width` (all of them when c <= kMaxPositions; beyond, the whole
// vectors of kMaxLanes channels spread over the blocks as evenly as whole
// vectors allow, the last block holding the partial vector:
// NhwcBlockStart), rows into units of `unit_rows` rows. Units go row unit by
// row unit, the blocks of one row unit consecutive (NhwcUnitOf), so that a
// thread's range of units is a range of rows across all channels. When one
// block holds all channels, `rows_per_period` rows (a "period" of `period`
// floats, a multiple of kMaxLanes where possible) are treated as one vector
// row, so small C (3, 24, ...) still fills whole vectors. A unit's partial
// for channel ch has index row_unit * c + ch.
struct ReductionPlan {
  bool nhwc = false;
  int64_t num_units = 0;   // total units (all channels / blocks)
  int64_t unit_elems = 0;  // elements of a full unit

  // NCHW
  int64_t units_per_channel = 0;
  int64_t unit_len = 0;

  // NHWC
  int64_t block_width = 0;  // the widest block's
  int64_t num_blocks = 0;
  int64_t rows_per_period = 1;
  int64_t period = 0;  // rows_per_period * block_width
  int64_t unit_rows = 0;
  int64_t row_units = 0;  // units per block

  int64_t NumPartials(const Problem& p) const { return nhwc ? row_units * p.c : num_units; }
};

ReductionPlan PlanReduction(const Problem& p);

// Channels [c0, c0 + width) and rows [row_begin, row_end) of NHWC reduction
// unit u of a plan for c channels and `values` rows; its partials start at
// index row_unit * c + c0. The one definition of the order of NHWC units.
struct NhwcUnit {
  int64_t c0, width, row_unit, row_begin, row_end;
};
// The first channel of NHWC block b of num_blocks over c channels (b ==
// num_blocks: c): the ceil(c / kMaxLanes) vectors of channels split as
// evenly as whole vectors allow.
inline int64_t NhwcBlockStart(int64_t c, int64_t num_blocks, int64_t b) {
  const int64_t vectors = (c + kMaxLanes - 1) / kMaxLanes;
  // floor(b * vectors / num_blocks), the product in 128 bits (b < num_blocks:
  // beyond 3e9 blocks, C beyond 3e12, it would pass int64).
  const int64_t start = static_cast<int64_t>(static_cast<__int128>(b) * vectors / num_blocks);
  return std::min(c, start * kMaxLanes);
}
inline NhwcUnit NhwcUnitOf(const ReductionPlan& rp, int64_t c, int64_t values, int64_t u) {
  const int64_t b = u % rp.num_blocks;
  const int64_t c0 = NhwcBlockStart(c, rp.num_blocks, b);
  const int64_t row_unit = u / rp.num_blocks;
  const int64_t row_begin = row_unit * rp.unit_rows;
  return {c0, NhwcBlockStart(c, rp.num_blocks, b + 1) - c0, row_unit, row_begin,
          std::min(values, row_begin + rp.unit_rows)};
}

// Values [begin, end) of NCHW reduction unit u, and its channel: the cut of
// ReductionPlan (units_per_channel units of unit_len values, `values` values
// per channel). The one definition, for the drivers and the kernels that
// take units (stats_apply.h, grad_sums_apply.h).
struct NchwUnit {
  int64_t ch, begin, end;
};
inline NchwUnit NchwUnitOf(int64_t u, int64_t units_per_channel, int64_t unit_len, int64_t values) {
  const int64_t begin = (u % units_per_channel) * unit_len;
  return {u / units_per_channel, begin, std::min(values, begin + unit_len)};
}

// Where an NCHW reduction's reads come from, which decides how its kernels
// prefetch (a speed choice only: the same bits every way).
enum class ReduceReads {
  kCached,  // in cache: a group the fused plans prefetched into L2, or a
            // tensor within the LLC; short runs fetch the next run into L1
  kMemory,  // from DRAM (inputs beyond the LLC), nothing prefetched, a unit
            // per channel: short runs of at most four lines fetch the next
            // channel's run, a unit ahead (ShortRunAhead)
  kStream,  // from DRAM, beyond the LLC (ExecutionPlan::reduce_ahead):
            // prefetched kStreamPrefetchBytes ahead along the unit's walk
};

// The same cut as one value, for kernels that walk a range of units.
struct NchwUnitCut {
  int64_t units_per_channel, unit_len, values;
  NchwUnit Unit(int64_t u) const { return NchwUnitOf(u, units_per_channel, unit_len, values); }
};

// Elementwise passes: the flat tensor is cut into tasks. NHWC tasks start at a
// multiple of `period`, where per-position constant arrays of `period` floats
// repeat (period = lcm(c, kMaxLanes) * 1 when small, else c).
struct ElementwisePlan {
  int64_t period = 0;  // NHWC only
  int64_t task_elems = 0;
  int64_t num_tasks = 0;
};

ElementwisePlan PlanElementwise(const Problem& p);

struct CacheSizes {
  int64_t l2 = int64_t{1} << 20;   // per core
  int64_t llc = int64_t{8} << 20;  // last level, shared
};

// The part of a last-level cache of `reported` bytes, shared by `cpus`
// logical CPUs (0: unknown), that the planner counts on: at most kLlcPerCpu
// per CPU. Real parts have 1.25-5 MiB per core (12 with stacked cache), but a
// guest VM sees its host's whole L3 (260 MiB on a 2-vCPU guest here), most of
// which other guests use: planned as if 205 MB of x and y stayed cached,
// NHWC inference of 32x256x56x56 stored y through the caches at 4.3x a copy,
// against 1.15x streamed.
constexpr int64_t kLlcPerCpu = int64_t{4} << 20;
inline int64_t UsableLlc(int64_t reported, int cpus) {
  return cpus > 0 ? std::min(reported, cpus * kLlcPerCpu) : reported;
}

// How the NHWC elementwise passes (normalize, backward apply) store rows,
// whose per-position constants repeat every row (StorePeriodic in
// elementwise-inl.h). Same values either way; a property of the CPU.
//  kGrouped: where rows are a whole number of vectors and either a multiple
//    of 4 KiB long or four to 4 KiB, two or four rows per load of the
//    constants: fewer loads, several store streams. Faster on Zen 3 (f32
//    NHWC inference of 4x64x7x7 from L2: 4.0 -> 1.8 us; from DRAM,
//    32x2048x7x7 1.91 -> 1.20x a copy).
//  kSequential: one row after another, the constants loaded per vector: one
//    store stream. Faster on an Intel Xeon (Emerald Rapids, AVX3 and AVX2)
//    from L2: f32 NHWC inference of 64K elements 2.4x faster with C = 64,
//    training 1.8x; batch-1 NHWC inference of 1x1024x14x14 1.65 -> 0.90x a
//    copy. From DRAM the two measured alike there (docs/performance-history.md).
enum class RowStores { kGrouped, kSequential };

// How a reduce-then-apply operation (training forward, backward) runs.
//  kChannelFused (NCHW): a task owns a group of whole channels; it reduces
//    their units, finalizes them, and applies to the group (per image one
//    contiguous run) while the slices are still in L2. One pass over memory.
//    Each thread takes a contiguous range of groups and, while it writes one
//    group's output, prefetches the next group's inputs (lookahead.h) or,
//    where the kernels allow, reduces them in the same loop (stats_apply.h,
//    grad_sums_apply.h): NextGroup, below.
//  kTwoPhase: every unit is reduced (in parallel), all channels finalized,
//    then the same units are applied, each thread taking the units it reduced
//    in reverse order, so the most recently read data (still in L2/LLC) goes
//    first; beyond the LLC the apply pass goes over the flat tensor instead
//    (flat_apply), each thread taking a contiguous piece of it, its last task
//    first. Used when channels are fewer than threads or larger than L2
//    (but for FusesBeyondL2), and
//    for NHWC.
// The reduction units and their merge order are the same in both: the
// strategy never changes a result bit.
enum class Strategy { kChannelFused, kTwoPhase };

// How a channel-fused task takes in its next group while it writes the
// current one, which sets the size of its groups (PlanExecution).
//  kPrefetch: software prefetches of the next group's inputs into L2
//    (lookahead.h); the next group is reduced from L2 after the write.
//  kReduce: the next group is reduced in the write's loop, its inputs read
//    from memory there (stats_apply.h, grad_sums_apply.h).
enum class NextGroup { kPrefetch, kReduce };

// When a CPU's channel-fused plans reduce the next group in the write loop,
// where the kernels can (NextGroup::kReduce), rather than prefetch it. A
// property of the CPU, measured with tools/call_timer.cc (1 and 2 threads,
// f32 and 16-bit training and backward, docs/performance-history.md):
//  kAlways: an Intel Xeon (Emerald Rapids), where it took 4-9 % less time in
//    training and 0-16 % in backward than prefetching.
//  kWithinLlc: while the inputs of the call fit the LLC and its runs are
//    long enough (kWithinLlcMinRunF32, kWithinLlcMinRun16); otherwise
//    prefetch. AMD Zen 4: with the inputs in DRAM, prefetching took
//    0.76-0.97 of the time on 49 to 3136-value runs (level on 9K and
//    longer), but 1.10-1.24 with f32 runs of 196 to 12544 values in the L3.
//  kNever: prefetch always (an override, to compare the two on a CPU).
enum class NextGroupPolicy { kAlways, kWithinLlc, kNever };

// Whether an NCHW channel whose slice (`slice_bytes` of inputs) overflows L2
// is still fused, alone in its group (PlanExecution): while the slice fits L2
// and the thread's share of the LLC, whose lines the apply then reads again
// instead of DRAM's; its runs are at least kFusedRunBytes (shorter strided
// runs made the walk of one channel from DRAM latency-bound: 3.4-3.9 times
// the two-phase time on 3x3 and 7x7 images, 1.05-1.08 on 3 KiB runs); and the
// channels spread over `threads` with the busiest at most 1.25 times the
// mean. Zen 4 guest, 2 threads, evicted: 0.58-0.86 of the two-phase time on
// runs of 12.5 KiB to 1 MiB, 0.93 on 6.4 KiB (docs/performance.md,
// "Channel-fused"). threads < 1 counts as 1.
constexpr int64_t kFusedRunBytes = 8192;
bool FusesBeyondL2(const Problem& p, int64_t slice_bytes, int threads, const CacheSizes& caches);

// The step a channel-fused plan takes to its next group: kReduce where the
// pipelined kernels apply to the call (`pipelined`: StatsWhileNormalizingRuns,
// GradSumsWhileApplyingRuns) and the policy allows it for a call that reads
// `inputs` tensors (kWithinLlc compares their bytes with the LLC: inputs only,
// as measured warm; the outputs stream past the caches; and p.spatial with
// kWithinLlcMinRunF32 or kWithinLlcMinRun16); else kPrefetch.
// Never changes a bit.
NextGroup ChooseNextGroup(const Problem& p, int inputs, bool pipelined, NextGroupPolicy policy,
                          const CacheSizes& caches);

// The shortest runs (NCHW spatial values) that kWithinLlc reduces in the
// write loop. Below them the pipelined loop, which interleaves two walks of
// short runs, measured slower than reducing the prefetched group from L2, or
// level, in every setting on the Zen 4 guest (tools/call_timer.cc,
// BNORM_NEXT_GROUP=prefetch against auto, medians of 3-5 alternated runs, 2
// threads unless noted; docs/performance-history.md, "short runs and 16-bit
// training prefetch within the LLC"):
//  - f32 runs of 49 and 98 values (32x512x49, 64x256x49, 32x256x49,
//    32x256x98, 64x128x98, 32x128x98): training 0.62-0.89 of the time warm,
//    0.67-0.79 evicted, one thread 0.54-0.87; backward 0.69-1.01 warm,
//    0.82-0.95 evicted. From 128 values on it is mixed (warm training
//    0.88-1.39, pipelined faster on 32x128x128, 64x128x160 and 64x128x256;
//    backward 0.82-1.00), and from 784 on pipelined training is 1.11-1.25
//    times faster warm on tensors larger than L2: those keep the loop.
//  - 16-bit training, pipelined from 64 values (StatsWhileNormalizingRuns):
//    0.54-0.84 of the time warm on 98- to 3136-value runs (bf16, f16),
//    0.61-1.09 evicted. 16-bit backward is pipelined from 8192 values only
//    (kPacedGradRun16 in grad_sums_apply.cc), and from there on both are
//    mixed (training 0.79-0.96 warm up to 12544 values, 1.07 on 16384,
//    0.81-1.14 evicted; backward 1.00-1.20 warm, 0.75-0.99 evicted): the
//    threshold is where the backward starts.
constexpr int64_t kWithinLlcMinRunF32 = 128;
constexpr int64_t kWithinLlcMinRun16 = 8192;

struct ExecutionPlan {
  Strategy strategy = Strategy::kTwoPhase;
  int64_t channels_per_task = 1;  // kChannelFused: channels per group
  int64_t apply_units = 0;        // kTwoPhase: units of the apply pass
  // kTwoPhase with inputs beyond the LLC: the apply pass re-reads most of
  // them from DRAM, so it goes over the flat tensor in contiguous tasks
  // (ElementwisePlan) instead of unit by unit; each thread still starts from
  // the end of its piece, where what the caches kept lies.
  // NCHW units are runs `c * spatial` apart; contiguous tasks keep each
  // stream on a few pages (measured with bnorm_bench: docs/performance-history.md).
  bool flat_apply = false;
  bool stream_output = false;  // non-temporal stores: see ShouldStream
  // NHWC gradient sums: vector rows added per load of the per-position sums
  // (1 or 4; same sums in the same order either way; the statistics always
  // take four). Periods of one to four
  // vectors (six or eight on AVX-512) keep their sums in registers for a
  // block whatever this says.
  // Four save loads and stores of the sums; one row at a time keeps a single
  // read stream per input (see PlanExecution for where each is used).
  int64_t reduce_rows_at_once = 4;
  // Inputs beyond the LLC: the reductions prefetch their reads
  // kStreamPrefetchBytes ahead (lookahead.h): NCHW along the unit's walk
  // (WalkAhead), NHWC that many bytes of rows ahead (AheadRows).
  bool reduce_ahead = false;
  // The reduction's inputs overflow the LLC (any strategy): what nothing
  // prefetched comes from DRAM (ReduceReads::kMemory).
  bool inputs_beyond_llc = false;
  int threads = 1;  // threads worth using (small tensors use fewer)
};

// tensors_read: tensors the reduce pass reads (1 forward, 2 backward; 3 with
// the ReLU mask's y). next: how the kernels of a channel-fused plan would
// step to the next group. apply_only: tensors the apply pass alone touches
// besides its output (the fused residual z read, or dz written alongside
// dx), counted with the others where the output's stores are chosen.
ExecutionPlan PlanExecution(const Problem& p, const ReductionPlan& rp, int tensors_read,
                            int threads, const CacheSizes& caches,
                            NextGroup next = NextGroup::kPrefetch, int apply_only = 0);

// Elements each task of a reduce-then-apply plan touches (for the fused
// strategy a channel group, for two-phase a reduction unit), in task order.
// Lets tests check balance and granularity without running anything.
std::vector<int64_t> TaskElements(const Problem& p, const ReductionPlan& rp,
                                  const ExecutionPlan& plan);

// Fewer elements than this in a task do not amortize scheduling it.
constexpr int64_t kMinTaskElems = int64_t{1} << 14;

// Threads worth using for `elements` floats of elementwise work.
int UsefulThreads(int64_t elements, int threads);
// True when the output should bypass the caches: the call's `tensors` (inputs
// and output) together overflow `cache_bytes`, and the output is written in
// runs long enough for whole-line non-temporal stores. Every pass compares
// with the LLC the planner counts (UsableLlc). Reduce-then-apply passes
// compared with half of it while that was the whole L3 a guest reported
// (Zen 3, 32 MiB: training 4096x1024 1.55 -> 1.2-1.3 ms, 32x2048x7x7 0.89 ->
// 0.82 ms); with at most kLlcPerCpu counted, half of it streamed outputs that
// fit: training of 1x64x112x112 (x and y 6.4 MB, 2 threads, Zen 4 guest,
// tools/call_timer.cc, warm, medians of 6 alternated) NHWC 109 -> 85 us,
// NCHW 74 -> 64 with the output cached (streamed, y goes to DRAM, and single
// runs the same hour took 150-160 us NHWC); with the tensors evicted
// beforehand 4-14 % slower, as the stores then read y's lines first.
bool ShouldStream(const Problem& p, int tensors, int64_t cache_bytes);

// Placement of scratch arrays that a kernel walks in step with a tensor.
//
// x86 cores compare a load with the stores still in flight by the low 12 bits
// of the address alone, and hold it back on a match as if it depended on the
// store ("4K aliasing"). Two streams moving in step keep their distance
// modulo a page, so a load stream that sits a little behind a store stream
// (measured: up to ~600 bytes) stalls on every load, not once. Arrays that a
// kernel owns are therefore placed at fixed distances from the tensor it
// reads or writes, at least a quarter page from every other stream.
constexpr int64_t kPageBytes = 4096;

// Bytes (a multiple of 64, less than a page) by which to move an array that
// would start at `at` (64-byte aligned) so that it starts `distance` bytes
// after `anchor` modulo a page, rounded down to 64 bytes.
inline int64_t PageMove(const void* at, const void* anchor, int64_t distance) {
  const auto a = static_cast<int64_t>(reinterpret_cast<uintptr_t>(at) % kPageBytes);
  const auto b = static_cast<int64_t>(reinterpret_cast<uintptr_t>(anchor) % kPageBytes);
  const int64_t move = ((b + distance - a) % kPageBytes + 2 * kPageBytes) % kPageBytes;
  return move / 64 * 64;
}

}  // namespace bnorm

#endif  // BNORM_SRC_PLAN_H_
