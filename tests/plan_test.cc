// The planner on its own: units cover every value exactly once, periods fill
// whole vectors of every target, and nothing depends on the thread count (the
// planner does not even take one).
#include "plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace bnorm {
namespace {

std::vector<Problem> Problems() {
  std::vector<Problem> out;
  const int64_t dims[][3] = {{1, 1, 2},      {2, 5, 1},     {3, 7, 221},     {32, 64, 3136},
                             {32, 2048, 49}, {1, 3, 70001}, {256, 3, 50176}, {4096, 1024, 1},
                             {4, 1030, 5},   {2, 5000, 7},  {5, 24, 37},     {8, 1000, 3}};
  for (const auto& d : dims) {
    for (bool nhwc : {false, true}) out.push_back(Canonicalize(d[0], d[1], d[2], nhwc));
  }
  return out;
}

TEST(Plan, CanonicalForms) {
  const Problem a = Canonicalize(4, 1, 9, true);  // one channel: contiguous
  EXPECT_FALSE(a.nhwc);
  EXPECT_EQ(a.n, 1);
  EXPECT_EQ(a.spatial, 36);
  const Problem b = Canonicalize(4, 6, 1, false);  // (N, C): row-major
  EXPECT_TRUE(b.nhwc);
  const Problem c = Canonicalize(4, 6, 5, false);
  EXPECT_FALSE(c.nhwc);
  EXPECT_EQ(c.Elements(), 120);
}

TEST(Plan, ReductionUnitsCoverEveryValueOnce) {
  for (const Problem& p : Problems()) {
    SCOPED_TRACE(testing::Message() << p.n << "x" << p.c << "x" << p.spatial << " nhwc=" << p.nhwc);
    const ReductionPlan rp = PlanReduction(p);
    const int64_t values = p.Values();
    if (!p.nhwc) {
      EXPECT_GE(rp.unit_len * rp.units_per_channel, values);
      EXPECT_LT(rp.unit_len * (rp.units_per_channel - 1), values);  // no empty unit
      EXPECT_LE(rp.unit_len, kUnitElems + kMaxLanes);
      EXPECT_TRUE(rp.unit_len == values || rp.unit_len % kMaxLanes == 0);
      EXPECT_EQ(rp.num_units, rp.units_per_channel * p.c);
      EXPECT_EQ(rp.NumPartials(p), rp.num_units);
    } else {
      EXPECT_GE(rp.block_width * rp.num_blocks, p.c);
      EXPECT_LT(rp.block_width * (rp.num_blocks - 1), p.c);
      EXPECT_LE(rp.block_width, kMaxPositions);
      EXPECT_LE(rp.period, kMaxPositions);
      EXPECT_EQ(rp.period, rp.rows_per_period * rp.block_width);
      if (rp.rows_per_period > 1) {
        EXPECT_EQ(rp.num_blocks, 1);
        EXPECT_EQ(rp.period % kMaxLanes, 0);
      }
      EXPECT_GE(rp.unit_rows * rp.row_units, values);
      EXPECT_LT(rp.unit_rows * (rp.row_units - 1), values);
      // Only the last unit may hold rows that do not fill a period.
      EXPECT_TRUE(rp.unit_rows % rp.rows_per_period == 0 || rp.row_units == 1);
      EXPECT_EQ(rp.NumPartials(p), rp.row_units * p.c);
    }
  }
}

// NHWC units of wide rows span kMinUnitRows periods, and up to kMaxUnitRows
// where the rows allow kUnitsForThreads units of them; rows of narrow
// channels stay at kUnitElems elements a unit.
TEST(Plan, NhwcUnitsLengthenWhereRowsAbound) {
  struct Case {
    int64_t n, c, spatial, unit_rows;
  };
  for (const Case& k : {Case{4096, 1024, 1, 64},        // 64 units of 64
                        Case{64, 1024, 196, 98},        // 12544 rows: 128 units
                        Case{32, 256, 3136, 256},       // was 128 (kUnitElems)
                        Case{32, 512, 784, 196},        // 25088 rows / 128
                        Case{32, 504, 784, 196},        // 98 periods of 2 rows
                        Case{512, 1024, 196, 256},      // capped
                        Case{32, 64, 3136, 512},        // kUnitElems / 64
                        Case{256, 3, 50176, 16 * 682},  // periods of 16 rows
                        Case{50, 1024, 1, 50}}) {       // one unit
    SCOPED_TRACE(testing::Message() << k.n << "x" << k.c << "x" << k.spatial);
    const Problem p = Canonicalize(k.n, k.c, k.spatial, true);
    const ReductionPlan rp = PlanReduction(p);
    EXPECT_EQ(rp.unit_rows, k.unit_rows);
    // Where the rows decided the length, 128 units at least remain.
    const int64_t periods = rp.unit_rows / rp.rows_per_period;
    if (periods > kMinUnitRows && periods > kUnitElems / rp.period) {
      EXPECT_GE(rp.row_units, kUnitsForThreads);
      EXPECT_LE(periods, kMaxUnitRows);
    }
  }
}

// NHWC units: row unit by row unit, each row unit's blocks in channel order,
// covering every (row, channel) once; blocks of whole vectors (but the last)
// within kMaxPositions and at most a vector apart in width, so no block is a
// sliver (C = 1040 was 1024 + 16).
TEST(Plan, NhwcBlocksAreEvenAndUnitsGoRowByRow) {
  for (const int64_t c : {3, 1000, 1024, 1025, 1030, 1040, 1280, 2047, 2048, 2064, 5000, 65537}) {
    SCOPED_TRACE(testing::Message() << "c=" << c);
    const Problem p = Canonicalize(130, c, 1, true);
    const ReductionPlan rp = PlanReduction(p);
    EXPECT_EQ(rp.num_blocks, (c + kMaxPositions - 1) / kMaxPositions);
    int64_t narrowest = c, widest = 0;
    for (int64_t b = 0; b < rp.num_blocks; ++b) {
      const NhwcUnit unit = NhwcUnitOf(rp, p.c, p.Values(), b);
      EXPECT_EQ(unit.row_unit, 0);
      EXPECT_EQ(unit.c0 % kMaxLanes, 0);
      EXPECT_EQ(unit.c0, b == 0 ? 0 : NhwcUnitOf(rp, p.c, p.Values(), b - 1).c0 +
                                          NhwcUnitOf(rp, p.c, p.Values(), b - 1).width);
      if (b + 1 < rp.num_blocks) {
        EXPECT_EQ(unit.width % kMaxLanes, 0);
      } else {
        EXPECT_EQ(unit.c0 + unit.width, c);
      }
      EXPECT_LE(unit.width, kMaxPositions);
      EXPECT_LE(unit.width, rp.block_width);
      narrowest = std::min(narrowest, unit.width);
      widest = std::max(widest, unit.width);
    }
    EXPECT_EQ(widest, rp.block_width);
    EXPECT_LE(widest - narrowest, kMaxLanes);
    if (c > kMaxPositions) {
      EXPECT_GT(narrowest, kMaxPositions / 2 - kMaxLanes);
    }
    std::vector<int> seen(static_cast<size_t>(p.Values() * c), 0);
    int64_t last_row = 0;
    for (int64_t u = 0; u < rp.num_units; ++u) {
      const NhwcUnit unit = NhwcUnitOf(rp, p.c, p.Values(), u);
      EXPECT_GE(unit.row_begin, last_row);  // never back to earlier rows
      last_row = unit.row_begin;
      EXPECT_EQ(unit.row_begin, unit.row_unit * rp.unit_rows);
      for (int64_t r = unit.row_begin; r < unit.row_end; ++r) {
        for (int64_t ch = unit.c0; ch < unit.c0 + unit.width; ++ch) ++seen[r * c + ch];
      }
    }
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), static_cast<int64_t>(seen.size()));
  }
}

TEST(Plan, ElementwiseTasksAlignToPeriods) {
  for (const Problem& p : Problems()) {
    const ElementwisePlan ep = PlanElementwise(p);
    EXPECT_GE(ep.task_elems * ep.num_tasks, p.Elements());
    EXPECT_LT(ep.task_elems * (ep.num_tasks - 1), p.Elements());
    if (p.nhwc) {
      EXPECT_EQ(ep.period % p.c, 0);
      EXPECT_EQ(ep.task_elems % ep.period, 0);
      if (p.c <= kMaxPositions) {
        EXPECT_TRUE(ep.period % kMaxLanes == 0 || ep.period == p.c);
      }
    }
  }
}

TEST(Plan, SmallChannelCountsFillVectors) {
  // C = 3 NHWC: 16 rows of 3 floats make 48 = 3 AVX-512 vectors.
  const ReductionPlan rp = PlanReduction(Canonicalize(256, 3, 50176, true));
  EXPECT_EQ(rp.rows_per_period, 16);
  EXPECT_EQ(rp.period, 48);
  EXPECT_EQ(PlanElementwise(Canonicalize(256, 3, 50176, true)).period, 48);
}

}  // namespace
}  // namespace bnorm

namespace bnorm {
namespace {

// The benchmark suite's shapes (bench/bnorm_bench.cc), both layouts.
std::vector<Problem> BenchProblems() {
  const int64_t dims[][4] = {{32, 64, 56, 56},   {32, 256, 56, 56},  {32, 2048, 7, 7},
                             {1, 64, 112, 112},  {256, 3, 224, 224}, {8, 32, 128, 128},
                             {64, 1024, 14, 14}, {2, 8, 512, 512},   {4096, 1024, 1, 1}};
  std::vector<Problem> out;
  for (const auto& d : dims) {
    for (bool nhwc : {false, true}) out.push_back(Canonicalize(d[0], d[1], d[2] * d[3], nhwc));
  }
  return out;
}

// Work grows linearly with the tensor: tasks of about equal size (the
// largest at most 1.25x the mean) and hardly any too small to amortize.
TEST(Plan, TasksAreBalancedAndLargeEnough) {
  const CacheSizes caches;  // 1 MiB L2, 8 MiB LLC
  for (const Problem& p : BenchProblems()) {
    for (int tensors : {1, 2}) {  // forward, backward
      for (int threads : {1, 2, 16, 64, 128}) {
        for (NextGroup next : {NextGroup::kPrefetch, NextGroup::kReduce}) {
          SCOPED_TRACE(testing::Message()
                       << p.n << "x" << p.c << "x" << p.spatial << " nhwc=" << p.nhwc << " tensors="
                       << tensors << " threads=" << threads << " next=" << static_cast<int>(next));
          const ReductionPlan rp = PlanReduction(p);
          const ExecutionPlan plan = PlanExecution(p, rp, tensors, threads, caches, next);
          const std::vector<int64_t> tasks = TaskElements(p, rp, plan);
          ASSERT_FALSE(tasks.empty());
          int64_t total = 0, largest = 0, small = 0;
          for (int64_t t : tasks) {
            total += t;
            largest = std::max(largest, t);
            if (t < kMinTaskElems) ++small;
          }
          EXPECT_EQ(total, p.Elements());  // every element in exactly one task
          const double mean = static_cast<double>(total) / static_cast<double>(tasks.size());
          EXPECT_LE(static_cast<double>(largest), 1.25 * mean);
          // At most one short remainder task per channel block or channel.
          EXPECT_LE(small, std::max<int64_t>(1, tasks.size() == 1 ? 1 : plan.threads))
              << tasks.size() << " tasks";
        }
      }
    }
  }
}

// Channel groups: as many channels as fit the budget (half of L2 where the
// next group is prefetched, a quarter where it is reduced in the write's
// loop: two groups are read at once), down to one channel, unless balance
// across threads asks for fewer.
TEST(Plan, ChannelGroupsFitTheirShareOfL2) {
  const CacheSizes caches;  // 1 MiB L2, 8 MiB LLC
  for (const Problem& p : BenchProblems()) {
    for (int tensors : {1, 2}) {
      for (NextGroup next : {NextGroup::kPrefetch, NextGroup::kReduce}) {
        SCOPED_TRACE(testing::Message()
                     << p.n << "x" << p.c << "x" << p.spatial << " nhwc=" << p.nhwc
                     << " tensors=" << tensors << " next=" << static_cast<int>(next));
        const ExecutionPlan plan = PlanExecution(p, PlanReduction(p), tensors, 2, caches, next);
        if (plan.strategy != Strategy::kChannelFused) continue;
        const int64_t slice = p.Values() * tensors * p.ElemBytes();
        const int64_t budget = next == NextGroup::kReduce ? caches.l2 / 4 : caches.l2 / 2;
        EXPECT_GE(plan.channels_per_task, 1);
        if (plan.channels_per_task > 1) {
          EXPECT_LE(plan.channels_per_task * slice, budget);
        }
      }
    }
  }
  // 64x1024x14x14 forward: 50 KB slices, 1024 channels, 2 threads.
  const Problem p = Canonicalize(64, 1024, 196, false);
  EXPECT_EQ(
      PlanExecution(p, PlanReduction(p), 1, 2, caches, NextGroup::kPrefetch).channels_per_task,
      10);  // 512 KiB / 50176 B
  EXPECT_EQ(PlanExecution(p, PlanReduction(p), 1, 2, caches, NextGroup::kReduce).channels_per_task,
            5);  // 256 KiB / 50176 B
}

// The step to the next channel group: never kReduce where the pipelined
// kernels do not apply; with kWithinLlc, kReduce exactly while the reduce
// pass's inputs fit the LLC (bytes of every tensor it reads, any dtype) and
// the runs are at least kWithinLlcMinRunF32 or kWithinLlcMinRun16 long.
TEST(Plan, NextGroupFollowsThePolicy) {
  const CacheSizes caches;  // 1 MiB L2, 8 MiB LLC
  std::vector<Problem> problems = BenchProblems();
  problems.push_back(Canonicalize(1, 1, 1, false));
  problems.push_back(Canonicalize(1, 2, int64_t{1} << 20, false));        // x: exactly 8 MiB
  problems.push_back(Canonicalize(1, 2, (int64_t{1} << 20) + 1, false));  // 8 bytes beyond
  for (Problem p : problems) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      p.dtype = dtype;
      for (int tensors : {1, 2, 3}) {
        SCOPED_TRACE(testing::Message() << p.n << "x" << p.c << "x" << p.spatial
                                        << " bytes=" << p.ElemBytes() << " tensors=" << tensors);
        for (NextGroupPolicy policy :
             {NextGroupPolicy::kAlways, NextGroupPolicy::kWithinLlc, NextGroupPolicy::kNever}) {
          EXPECT_EQ(ChooseNextGroup(p, tensors, false, policy, caches), NextGroup::kPrefetch);
        }
        EXPECT_EQ(ChooseNextGroup(p, tensors, true, NextGroupPolicy::kAlways, caches),
                  NextGroup::kReduce);
        EXPECT_EQ(ChooseNextGroup(p, tensors, true, NextGroupPolicy::kNever, caches),
                  NextGroup::kPrefetch);
        const bool fits = p.Elements() * tensors * p.ElemBytes() <= caches.llc;
        const bool long_runs =
            p.spatial >= (dtype == DType::kF32 ? kWithinLlcMinRunF32 : kWithinLlcMinRun16);
        EXPECT_EQ(ChooseNextGroup(p, tensors, true, NextGroupPolicy::kWithinLlc, caches),
                  fits && long_runs ? NextGroup::kReduce : NextGroup::kPrefetch);
      }
    }
  }
  // The boundary itself: 8 MiB of f32 reads fit, 8 more bytes do not.
  const Problem at = Canonicalize(1, 2, int64_t{1} << 20, false);
  const Problem over = Canonicalize(1, 2, (int64_t{1} << 20) + 1, false);
  EXPECT_EQ(ChooseNextGroup(at, 1, true, NextGroupPolicy::kWithinLlc, caches), NextGroup::kReduce);
  EXPECT_EQ(ChooseNextGroup(over, 1, true, NextGroupPolicy::kWithinLlc, caches),
            NextGroup::kPrefetch);
  // The run boundaries, on tensors that fit: 7x7 and 10x10 f32 images
  // prefetch, 128 values and 14x14 reduce in the loop; 16-bit runs from 8192.
  const auto within_llc = [&](int64_t n, int64_t c, int64_t spatial, DType dtype) {
    Problem p = Canonicalize(n, c, spatial, false);
    p.dtype = dtype;
    return ChooseNextGroup(p, 1, true, NextGroupPolicy::kWithinLlc, caches);
  };
  EXPECT_EQ(within_llc(32, 64, 49, DType::kF32), NextGroup::kPrefetch);
  EXPECT_EQ(within_llc(32, 64, 100, DType::kF32), NextGroup::kPrefetch);
  EXPECT_EQ(within_llc(32, 64, 127, DType::kF32), NextGroup::kPrefetch);
  EXPECT_EQ(within_llc(32, 64, 128, DType::kF32), NextGroup::kReduce);
  EXPECT_EQ(within_llc(32, 64, 196, DType::kF32), NextGroup::kReduce);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    EXPECT_EQ(within_llc(2, 16, 8191, dtype), NextGroup::kPrefetch);
    EXPECT_EQ(within_llc(2, 16, 8192, dtype), NextGroup::kReduce);
    EXPECT_EQ(within_llc(32, 64, 196, dtype), NextGroup::kPrefetch);
  }
  // C = 1 is one contiguous run of n * spatial values.
  EXPECT_EQ(within_llc(32, 1, 49, DType::kF32), NextGroup::kReduce);
  // Short runs prefetch whatever the number of inputs (x; x and z; x, dy, y).
  for (int inputs : {1, 2, 3}) {
    EXPECT_EQ(ChooseNextGroup(Canonicalize(64, 64, 49, false), inputs, true,
                              NextGroupPolicy::kWithinLlc, caches),
              NextGroup::kPrefetch);
  }
  // And their groups are sized for prefetching, half of L2: 64x256x49
  // backward reads 25088 bytes a channel, 20 to 512 KiB (a quarter, 10,
  // where the next group is reduced in the loop).
  const Problem p49 = Canonicalize(64, 256, 49, false);
  const NextGroup step49 = ChooseNextGroup(p49, 2, true, NextGroupPolicy::kWithinLlc, caches);
  EXPECT_EQ(PlanExecution(p49, PlanReduction(p49), 2, 2, caches, step49).channels_per_task, 20);
  // Intel's policy reduces in the loop whatever the runs.
  const Problem short_runs = Canonicalize(32, 64, 49, false);
  EXPECT_EQ(ChooseNextGroup(short_runs, 1, true, NextGroupPolicy::kAlways, caches),
            NextGroup::kReduce);
}

// Reduce-then-apply strategies: channel-fused where a channel's slice fits
// L2 (or, alone in its group, L2 and its thread's share of the LLC:
// FusesBeyondL2, below); two-phase otherwise, whose apply pass goes over the flat tensor
// exactly when the reduce pass's inputs overflow the LLC (it re-reads them
// mostly from DRAM then), and unit by unit in reverse otherwise.
// Every strategy records whether those inputs overflow the LLC (how the
// short-run kernels prefetch: ReduceReads); two-phase reductions then stream
// their reads ahead.
TEST(Plan, StrategyAndApplyOrder) {
  const CacheSizes caches;  // 1 MiB L2, 8 MiB LLC
  for (const Problem& p : BenchProblems()) {
    for (int tensors : {1, 2}) {
      for (int threads : {1, 2, 16}) {
        for (NextGroup next : {NextGroup::kPrefetch, NextGroup::kReduce}) {
          for (int apply_only : {0, 1}) {
            SCOPED_TRACE(testing::Message()
                         << p.n << "x" << p.c << "x" << p.spatial << " nhwc=" << p.nhwc
                         << " tensors=" << tensors << " threads=" << threads
                         << " next=" << static_cast<int>(next) << " apply_only=" << apply_only);
            const ExecutionPlan plan =
                PlanExecution(p, PlanReduction(p), tensors, threads, caches, next, apply_only);
            const int64_t slice = p.Values() * tensors * p.ElemBytes();
            const int64_t read = p.Elements() * tensors * p.ElemBytes();
            const bool fused =
                !p.nhwc && p.c >= plan.threads &&
                (slice <= caches.l2 || FusesBeyondL2(p, slice, plan.threads, caches));
            EXPECT_EQ(plan.strategy == Strategy::kChannelFused, fused);
            EXPECT_EQ(plan.flat_apply, !fused && read > caches.llc);
            EXPECT_EQ(plan.inputs_beyond_llc, read > caches.llc);
            EXPECT_EQ(plan.reduce_ahead, !fused && read > caches.llc);
            // Outputs bypass the caches exactly where every tensor of the
            // call (inputs, the apply pass's own, the output) together
            // overflows the LLC (NCHW two-phase units of short runs
            // excepted: their edge lines would be written in parts).
            const bool overflow =
                read + (1 + apply_only) * p.Elements() * p.ElemBytes() > caches.llc;
            if (plan.stream_output) {
              EXPECT_TRUE(overflow);
            }
            if (overflow && (p.nhwc || fused || plan.flat_apply)) {
              EXPECT_EQ(plan.stream_output, p.nhwc || p.spatial >= kMaxLanes);
            }
          }
        }
      }
    }
  }
}

// NHWC reductions add four rows per load of their sums, except the f32
// gradient sums of inputs beyond the LLC (one row); the rows ahead are
// prefetched exactly beyond the LLC, whatever the rows at once.
TEST(Plan, ReductionRowsAtOnce) {
  const CacheSizes caches;  // 8 MiB LLC
  for (Problem p : BenchProblems()) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      p.dtype = dtype;
      for (int tensors : {1, 2, 3}) {
        SCOPED_TRACE(testing::Message() << p.n << "x" << p.c << "x" << p.spatial << " nhwc="
                                        << p.nhwc << " dtype=" << static_cast<int>(dtype)
                                        << " tensors=" << tensors);
        const ExecutionPlan plan = PlanExecution(p, PlanReduction(p), tensors, 2, caches);
        const bool beyond = p.Elements() * tensors * p.ElemBytes() > caches.llc;
        const bool one_row = beyond && tensors >= 2 && dtype == DType::kF32;
        if (!p.nhwc) continue;  // NCHW kernels walk runs, not rows
        EXPECT_EQ(plan.reduce_rows_at_once, one_row ? 1 : 4);
        EXPECT_EQ(plan.reduce_ahead, beyond);
      }
    }
  }
}

// Channels whose slice overflows L2 are fused one per group while the slice
// fits L2 and the thread's share of the LLC, their runs are at least
// kFusedRunBytes long (shorter strided runs from DRAM made the channel's walk
// latency-bound: 3.5x the two-phase time on 7x7 and 3x3 images) and whole
// channels balance the threads; two-phase otherwise.
TEST(Plan, FusesBeyondL2) {
  const CacheSizes caches;  // 1 MiB L2, 8 MiB LLC: up to 5 MiB on 2 threads, 9 on 1
  const auto strategy = [&](int64_t n, int64_t c, int64_t spatial, int tensors, int threads,
                            DType dtype = DType::kF32) {
    Problem p = Canonicalize(n, c, spatial, false);
    p.dtype = dtype;
    return PlanExecution(p, PlanReduction(p), tensors, threads, caches, NextGroup::kPrefetch);
  };
  // 32x64x112x112: 1.6 MB slices forward, 3.2 MB backward; one channel a group.
  for (int tensors : {1, 2}) {
    const ExecutionPlan plan = strategy(32, 64, 12544, tensors, 2);
    EXPECT_EQ(plan.strategy, Strategy::kChannelFused) << tensors;
    EXPECT_EQ(plan.channels_per_task, 1) << tensors;
  }
  EXPECT_EQ(strategy(2, 8, 262144, 2, 2).strategy, Strategy::kChannelFused);  // 4 MB
  // 6.4 MB: beyond 5 MiB on 2 threads, within 9 on one.
  EXPECT_EQ(strategy(64, 64, 12544, 2, 2).strategy, Strategy::kTwoPhase);
  EXPECT_EQ(strategy(64, 64, 12544, 2, 1).strategy, Strategy::kChannelFused);
  EXPECT_EQ(strategy(64, 64, 12544, 2, 1).channels_per_task, 1);
  // Runs of 8 KiB fuse, shorter ones do not; bf16 counts bytes.
  EXPECT_EQ(strategy(512, 8, 2048, 1, 2).strategy, Strategy::kChannelFused);
  EXPECT_EQ(strategy(512, 8, 2047, 1, 2).strategy, Strategy::kTwoPhase);
  EXPECT_EQ(strategy(256, 8, 4096, 1, 2, DType::kBF16).strategy, Strategy::kChannelFused);
  EXPECT_EQ(strategy(256, 8, 4095, 1, 2, DType::kBF16).strategy, Strategy::kTwoPhase);
  EXPECT_EQ(strategy(8192, 16, 49, 1, 2).strategy, Strategy::kTwoPhase);
  // Balance: 3 channels on 2 threads (2 and 1) and 5 on 4 stay two-phase, 6
  // on 4 (2 and 1: 1.33x the mean) too; 5 on 2 (3 and 2: 1.2x) fuse.
  EXPECT_EQ(strategy(8, 3, 50176, 1, 2).strategy, Strategy::kTwoPhase);
  EXPECT_EQ(strategy(8, 5, 50176, 1, 4).strategy, Strategy::kTwoPhase);
  EXPECT_EQ(strategy(8, 6, 50176, 1, 4).strategy, Strategy::kTwoPhase);
  EXPECT_EQ(strategy(8, 5, 50176, 1, 2).strategy, Strategy::kChannelFused);
  // Within L2 the rule of whole groups holds: 3 channels on 2 threads fuse.
  EXPECT_EQ(strategy(4, 3, 50176, 1, 2).strategy, Strategy::kChannelFused);
  // threads_test.plan_changes_with_threads (64 KiB L2, 256 KiB LLC): the
  // statistics of 4x64x12544 and the gradient sums of 2x64x12544 fuse on one
  // thread and not on 2 or 16.
  const CacheSizes small{int64_t{64} << 10, int64_t{256} << 10};
  for (const auto& [n, tensors] : {std::pair<int64_t, int>{4, 1}, {2, 2}}) {
    const Problem p = Canonicalize(n, 64, 12544, false);
    for (int threads : {1, 2, 16}) {
      EXPECT_EQ(PlanExecution(p, PlanReduction(p), tensors, threads, small, NextGroup::kPrefetch)
                    .strategy,
                threads == 1 ? Strategy::kChannelFused : Strategy::kTwoPhase)
          << n << " " << tensors << " " << threads;
    }
  }
}

// The stores' choice at its edge: tensors of exactly the LLC stay cached,
// a vector more per channel streams; a residual or second output counts.
TEST(Plan, StreamThreshold) {
  const CacheSizes caches;  // 8 MiB LLC
  const int64_t half = caches.llc / 2 / static_cast<int64_t>(sizeof(float));
  for (bool nhwc : {false, true}) {
    SCOPED_TRACE(nhwc ? "NHWC" : "NCHW");
    // x and y of 4 MiB each: 8 MiB in all.
    const Problem at = Canonicalize(1, 4, half / 4, nhwc);
    const Problem over = Canonicalize(1, 4, half / 4 + kMaxLanes, nhwc);
    EXPECT_FALSE(PlanExecution(at, PlanReduction(at), 1, 2, caches).stream_output);
    EXPECT_TRUE(PlanExecution(over, PlanReduction(over), 1, 2, caches).stream_output);
    EXPECT_TRUE(
        PlanExecution(at, PlanReduction(at), 1, 2, caches, NextGroup::kPrefetch, 1).stream_output);
    EXPECT_FALSE(ShouldStream(at, 2, caches.llc));
    EXPECT_TRUE(ShouldStream(over, 2, caches.llc));
  }
}

// Scratch placement against 4K aliasing: the move stays within the page of
// slack the caller reserves, keeps 64-byte alignment, and lands within 64
// bytes below the wanted distance modulo a page, for every relative
// alignment of array and anchor.
TEST(Plan, PageMovePlacesArraysAtADistanceModuloAPage) {
  for (uintptr_t at = 0x100000; at < 0x100000 + 2 * kPageBytes; at += 64) {
    for (uintptr_t anchor = 0x7f0000; anchor < 0x7f0000 + kPageBytes; anchor += 4 * 37) {
      for (int64_t distance : {int64_t{0}, kPageBytes / 4, kPageBytes / 2, kPageBytes - 4}) {
        const int64_t move = PageMove(reinterpret_cast<const void*>(at),
                                      reinterpret_cast<const void*>(anchor), distance);
        ASSERT_GE(move, 0);
        ASSERT_LT(move, kPageBytes);
        ASSERT_EQ(move % 64, 0);
        const int64_t placed =
            static_cast<int64_t>((at + static_cast<uintptr_t>(move)) % kPageBytes);
        const int64_t wanted =
            static_cast<int64_t>((anchor + static_cast<uintptr_t>(distance)) % kPageBytes);
        const int64_t short_by = ((wanted - placed) % kPageBytes + kPageBytes) % kPageBytes;
        ASSERT_LT(short_by, 64) << "at " << at << " anchor " << anchor << " distance " << distance;
      }
    }
  }
}

// A guest VM reports its host's whole L3; the planner counts on at most
// kLlcPerCpu of it per CPU that shares it, and on all of a real part's.
TEST(Plan, UsableLlcCapsTheShareOfAGuest) {
  const int64_t MiB = int64_t{1} << 20;
  EXPECT_EQ(UsableLlc(260 * MiB, 2), 2 * kLlcPerCpu);  // 2-vCPU guest on a 260 MiB L3
  EXPECT_EQ(UsableLlc(32 * MiB, 16), 32 * MiB);        // 8-core Zen 3 CCD, SMT on
  EXPECT_EQ(UsableLlc(105 * MiB, 112), 105 * MiB);     // 56-core Sapphire Rapids
  EXPECT_EQ(UsableLlc(8 * MiB, 1), kLlcPerCpu);        // one CPU of a shared L3
  EXPECT_EQ(UsableLlc(48 * MiB, 0), 48 * MiB);         // sharing unknown: as reported
  // The cap never shrinks an L3 that the CPUs sharing it could each own a
  // typical part's share of (1.25-4 MiB per CPU).
  for (int cpus = 1; cpus <= 256; cpus *= 2) {
    EXPECT_EQ(UsableLlc(cpus * kLlcPerCpu, cpus), cpus * kLlcPerCpu);
    EXPECT_LE(UsableLlc(int64_t{1} << 40, cpus), cpus * kLlcPerCpu);
  }
}

}  // namespace
}  // namespace bnorm
