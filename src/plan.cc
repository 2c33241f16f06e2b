#include "plan.h"

#include <algorithm>
#include <numeric>

namespace bnorm {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t RoundUp(int64_t a, int64_t b) { return CeilDiv(a, b) * b; }

// Rows per period for NHWC with all channels in one block: the fewest rows
// whose floats fill whole vectors of the widest target, if that stays small.
int64_t RowsPerPeriod(int64_t c) {
  const int64_t rows = kMaxLanes / std::gcd(c, kMaxLanes);
  return (c * rows <= kMaxPositions) ? rows : 1;
}

}  // namespace

Problem Canonicalize(int64_t n, int64_t c, int64_t spatial, bool nhwc) {
  Problem p;
  if (c == 1) {  // one contiguous channel
    p.n = 1;
    p.c = 1;
    p.spatial = n * spatial;
    p.nhwc = false;
  } else if (spatial == 1) {  // (N, C): NCHW and NHWC are the same bytes
    p.n = n;
    p.c = c;
    p.spatial = 1;
    p.nhwc = true;
  } else {
    p.n = n;
    p.c = c;
    p.spatial = spatial;
    p.nhwc = nhwc;
  }
  return p;
}

ReductionPlan PlanReduction(const Problem& p) {
  ReductionPlan plan;
  plan.nhwc = p.nhwc;
  const int64_t values = p.Values();
  if (!p.nhwc) {
    const int64_t units = CeilDiv(values, kUnitElems);
    plan.unit_len = std::min(values, RoundUp(CeilDiv(values, units), kMaxLanes));
    plan.units_per_channel = CeilDiv(values, plan.unit_len);
    plan.num_units = plan.units_per_channel * p.c;
    plan.unit_elems = plan.unit_len;
    return plan;
  }
  // Blocks as even as whole vectors allow: blocks of 1024 channels and the
  // rest (C = 1040: 1024 and 16) read one line per row in the narrow
  // block's units, and with the units block after block, two threads split
  // them by block, one taking nearly all the work (f32 statistics of
  // 6272x1040 from DRAM, 2 threads, twice the time of 6272x1024).
  plan.num_blocks = CeilDiv(p.c, kMaxPositions);
  plan.block_width = NhwcBlockStart(p.c, plan.num_blocks, 1);
  for (int64_t b = 1; b < plan.num_blocks; ++b) {
    plan.block_width = std::max(plan.block_width, NhwcBlockStart(p.c, plan.num_blocks, b + 1) -
                                                      NhwcBlockStart(p.c, plan.num_blocks, b));
  }
  plan.rows_per_period = plan.num_blocks == 1 ? RowsPerPeriod(p.c) : 1;
  plan.period = plan.rows_per_period * plan.block_width;
  // Wide rows: at least kMinUnitRows periods, so the per-unit work on each
  // position (set-up, handing the moments over, the merge) stays small per
  // value, and up to kMaxUnitRows while the tensor keeps kUnitsForThreads
  // units. That work was about a third of the statistics' samples for
  // C = 1024 from L2 with 64-row units (perf); with longer units, NHWC f32
  // training of 32x256x3136 and 32x512x784 took 0.87 and 0.89 of the time,
  // bf16 training of 32x512x784 0.84 and backward 0.81 (2 threads, warm).
  const int64_t periods = values / plan.rows_per_period;
  const int64_t periods_per_unit = std::max(
      {kMinUnitRows, kUnitElems / plan.period, std::min(kMaxUnitRows, periods / kUnitsForThreads)});
  plan.unit_rows = std::min(values, periods_per_unit * plan.rows_per_period);
  plan.row_units = CeilDiv(values, plan.unit_rows);
  plan.num_units = plan.row_units * plan.num_blocks;
  plan.unit_elems = plan.unit_rows * plan.block_width;
  return plan;
}

ElementwisePlan PlanElementwise(const Problem& p) {
  ElementwisePlan plan;
  const int64_t total = p.Elements();
  if (p.nhwc) {
    plan.period = p.c <= kMaxPositions ? RowsPerPeriod(p.c) * p.c : p.c;
    plan.task_elems = std::max<int64_t>(1, kTaskElems / plan.period) * plan.period;
  } else {
    plan.task_elems = kTaskElems;
  }
  plan.num_tasks = CeilDiv(total, plan.task_elems);
  return plan;
}

// Below this many elements per thread, another thread costs more to wake and
// join than it saves.
constexpr int64_t kMinElemsPerThread = int64_t{1} << 16;

int UsefulThreads(int64_t elements, int threads) {
  const int64_t useful = std::max<int64_t>(1, elements / kMinElemsPerThread);
  return static_cast<int>(std::min<int64_t>(threads, useful));
}

bool ShouldStream(const Problem& p, int tensors, int64_t cache_bytes) {
  // NCHW kernels over flat ranges store whole vectors across channel
  // boundaries once a run holds a vector (see StoreChannelRuns).
  const bool whole_lines = p.nhwc || p.spatial >= kMaxLanes;
  // The output cannot stay cached once the call's tensors together overflow
  // the LLC: writing it around the caches saves the read-for-ownership.
  return whole_lines && p.BytesOf(tensors) > cache_bytes;
}

NextGroup ChooseNextGroup(const Problem& p, int inputs, bool pipelined, NextGroupPolicy policy,
                          const CacheSizes& caches) {
  if (!pipelined || policy == NextGroupPolicy::kNever) return NextGroup::kPrefetch;
  if (policy == NextGroupPolicy::kAlways) return NextGroup::kReduce;
  const int64_t input_bytes = p.BytesOf(inputs);
  const int64_t min_run = p.dtype == DType::kF32 ? kWithinLlcMinRunF32 : kWithinLlcMinRun16;
  return input_bytes > caches.llc || p.spatial < min_run ? NextGroup::kPrefetch
                                                         : NextGroup::kReduce;
}

bool FusesBeyondL2(const Problem& p, int64_t slice_bytes, int threads, const CacheSizes& caches) {
  const int64_t c = p.c;
  threads = std::max(threads, 1);
  const bool long_runs = p.spatial * p.ElemBytes() >= kFusedRunBytes;
  const bool fits = long_runs && slice_bytes <= caches.l2 + caches.llc / threads;
  // Whole channels per thread: the busiest at most 1.25 times the mean (C = 3
  // on 2 threads, 2 and 1, stays two-phase, which splits the batch).
  const bool balanced = 4 * CeilDiv(c, threads) * threads <= 5 * c;
  return fits && balanced;
}

ExecutionPlan PlanExecution(const Problem& p, const ReductionPlan& rp, int tensors_read,
                            int threads, const CacheSizes& caches, NextGroup next,
                            int apply_only) {
  ExecutionPlan plan;
  plan.threads = UsefulThreads(p.ElementsOf(tensors_read), threads);
  const int64_t slice_bytes = p.SliceBytesOf(tensors_read);
  plan.inputs_beyond_llc = p.BytesOf(tensors_read) > caches.llc;
  const int touched = tensors_read + apply_only + 1;  // and the output
  // Groups of channels fill half of L2 where the next group is prefetched;
  // the rest holds the lines on their way in and out (three quarters measured
  // slower for backward on Zen 3). Where it is reduced in the write's loop, a
  // quarter: two groups are read at once then, and on the Xeon (2 MiB L2,
  // f32, 2 threads, tools/call_timer.cc) groups of L2/4 took 4-9 % less time
  // in training and 0-16 % in backward than L2/2 (L2/3 to L2/8 alike), while
  // the prefetching kernels (SSE4, and bf16/f16 before 69ac829) were up to 11 % slower with
  // L2/4 on most of the same shapes (docs/performance-history.md). A single
  // channel is fused up to all of L2: the lines it loses come back from the LLC (Zen 3's victim
  // L3, an inclusive L3), not DRAM, which the two-phase plan re-reads once
  // the tensors overflow the LLC (backward of 32x256x56x56 NCHW, 802 KB
  // slices: 2.0-2.3 -> 1.5-1.75x a copy).
  const int64_t budget = next == NextGroup::kReduce ? caches.l2 / 4 : caches.l2 / 2;
  if (!p.nhwc && p.c >= plan.threads &&
      (slice_bytes <= caches.l2 || FusesBeyondL2(p, slice_bytes, plan.threads, caches))) {
    plan.strategy = Strategy::kChannelFused;
    // As many channels as fit the budget (each image's run of the group is
    // then contiguous and long), but at least 4 tasks per thread to balance.
    const int64_t by_cache = std::max<int64_t>(1, budget / slice_bytes);
    const int64_t by_balance = std::max<int64_t>(1, p.c / (4 * int64_t{plan.threads}));
    const int64_t by_overhead = CeilDiv(kMinTaskElems, p.Values());
    plan.channels_per_task = std::min(by_cache, std::max(by_balance, by_overhead));
    plan.stream_output = ShouldStream(p, touched, caches.llc);
    return plan;
  }
  plan.strategy = Strategy::kTwoPhase;
  plan.apply_units = rp.nhwc ? rp.row_units : rp.num_units;
  // Four rows per load of the sums, but one for the f32 gradient sums of
  // inputs beyond the LLC. With the rows ahead prefetched (reduce_ahead),
  // four rows measured faster for the statistics, and for 16-bit gradient
  // sums, whose loop costs as many instructions per value as f32's over
  // half the bytes; the f32 gradient sums, reading x and dy from four rows
  // at once, were level from DRAM and slower with the tensors partly in L3
  // (Zen 4 guest, 2 threads, tools/call_timer.cc, warm, paired medians of
  // 8 alternated runs of the libraries before and after, NHWC: training f32
  // 32x64x3136 0.88, 64x1024x196 0.94, 4096x1024 0.96, 32x2048x49 0.89;
  // bf16 0.81-1.01; backward bf16 0.87-1.01. Four rows for the f32 gradient
  // sums, 8-10 runs: 4096x1024 1.07, 32x2048x49 1.03, 32x256x3136 1.03,
  // 64x1024x196 0.94; evicted 0.96-1.01; docs/performance-history.md). One
  // row at a time was chosen on Zen 3 before the rows ahead were prefetched
  // (training 32x256x56x56: 3.1x -> 2.4x the inference time).
  const bool f32_gradient_sums = tensors_read >= 2 && p.dtype == DType::kF32;
  plan.reduce_rows_at_once = plan.inputs_beyond_llc && f32_gradient_sums ? 1 : 4;
  plan.reduce_ahead = plan.inputs_beyond_llc;
  plan.flat_apply = plan.inputs_beyond_llc;
  // NCHW units apply one channel's runs at a time: stream only when the runs
  // are long enough that their partial edge lines do not matter (flat tasks
  // store whole lines across channel boundaries).
  plan.stream_output = ShouldStream(p, touched, caches.llc) &&
                       (p.nhwc || plan.flat_apply || p.spatial * p.ElemBytes() >= 4096);
  return plan;
}

std::vector<int64_t> TaskElements(const Problem& p, const ReductionPlan& rp,
                                  const ExecutionPlan& plan) {
  std::vector<int64_t> tasks;
  if (plan.strategy == Strategy::kChannelFused) {
    for (int64_t c0 = 0; c0 < p.c; c0 += plan.channels_per_task) {
      tasks.push_back(std::min(plan.channels_per_task, p.c - c0) * p.Values());
    }
    return tasks;
  }
  for (int64_t u = 0; u < rp.num_units; ++u) {
    if (!rp.nhwc) {
      const NchwUnit unit = NchwUnitOf(u, rp.units_per_channel, rp.unit_len, p.Values());
      tasks.push_back(unit.end - unit.begin);
    } else {
      const NhwcUnit unit = NhwcUnitOf(rp, p.c, p.Values(), u);
      tasks.push_back(unit.width * (unit.row_end - unit.row_begin));
    }
  }
  return tasks;
}

}  // namespace bnorm
