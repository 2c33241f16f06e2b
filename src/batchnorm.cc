#include "batchnorm.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "backward_apply.h"
#include "backward_reduce.h"
#include "context.h"
#include "cpu_info.h"
#include "finalize.h"
#include "grad_sums_apply.h"
#include "moments.h"
#include "normalize.h"
#include "stats.h"
#include "stats_apply.h"
#include "target.h"

namespace bnorm {
namespace {

// Channels finalized per parallel chunk (per-channel work is a few flops).
constexpr int64_t kChannelsPerChunk = 1024;

// Per-channel (NCHW) or per-position (NHWC) constant arrays of the elementwise
// pass; NHWC positions repeat every `period` floats, position q has channel
// q % c, and kMaxLanes more positions let a vector run past the period's end.
int64_t ConstantsLength(const Problem& p, const ElementwisePlan& ep) {
  return p.nhwc ? ep.period + kMaxLanes : p.c;
}

// NHWC: copies positions [c0, c1) (channels c0..c1-1, already written) of
// each of `arrays` constant arrays (`length` floats apart) to the other
// positions of those channels.
inline void ReplicatePeriod(float* arrays, int arrays_count, const Problem& p, int64_t length,
                            int64_t c0, int64_t c1) {
  if (!p.nhwc) return;
  for (int a = 0; a < arrays_count; ++a) {
    float* array = arrays + a * length;
    for (int64_t base = p.c; base < length; base += p.c) {
      const int64_t hi = std::min(c1, length - base);
      if (hi > c0) std::copy(array + c0, array + hi, array + base + c0);
    }
  }
}

// The plan's cut of NCHW channels into units, and unit u of it: values
// [begin, end) of its channel.
NchwUnitCut NchwCut(const Problem& p, const ReductionPlan& rp) {
  return NchwUnitCut{rp.units_per_channel, rp.unit_len, p.Values()};
}
NchwUnit NchwUnitAt(const Problem& p, const ReductionPlan& rp, int64_t u) {
  return NchwCut(p, rp).Unit(u);
}

// Whether NCHW reductions that nothing prefetched read from DRAM a unit per
// channel: their short runs then fetch the next channel's run, a unit ahead
// (ReduceReads::kMemory). Channels cut into several units would read that
// run several units later, and their own next run not at all.
bool UnitsFromMemory(const ExecutionPlan& plan, const ReductionPlan& rp) {
  return plan.inputs_beyond_llc && rp.units_per_channel == 1;
}

NhwcUnit NhwcUnitAt(const Problem& p, const ReductionPlan& rp, int64_t u) {
  return NhwcUnitOf(rp, p.c, p.Values(), u);
}

// The partial statistics of a forward pass's reduction units (MergeStats).
struct StatsPartials {
  Moments* units;  // NCHW: one per unit
  double* mean;    // NHWC: ReductionPlan::NumPartials each
  double* m2;
};

// A channel holding Inf or NaN has undefined statistics: both NaN (the sums
// alone would give Inf or NaN depending on where the Inf sits). Finite data
// always give finite moments: M2 < 2^256 * 2^63 even for float's extremes.
void PoisonNonFinite(int64_t width, Moments* out) {
  for (int64_t k = 0; k < width; ++k) {
    if (!Finite(out[k])) {
      out[k].mean = std::numeric_limits<double>::quiet_NaN();
      out[k].m2 = std::numeric_limits<double>::quiet_NaN();
    }
  }
}

// Merges the statistics partials of channels [c0, c1) into out[0, c1 - c0),
// in unit order. NCHW partials are Moments; NHWC partials are arrays of means
// and M2 (the count is the unit's rows), row unit ru's channel ch at
// ru * c + ch, which the merge accumulates into row unit 0's in place: units
// of one row range share a count, so the merge coefficients are computed once
// per row unit and the channel loop vectorizes.
void MergeStats(const Problem& p, const ReductionPlan& rp, const StatsPartials& partials,
                int64_t c0, int64_t c1, Moments* out) {
  const int64_t width = c1 - c0;
  if (!rp.nhwc) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      Moments total;
      for (int64_t u = 0; u < rp.units_per_channel; ++u) {
        MergeMoments(total, partials.units[ch * rp.units_per_channel + u]);
      }
      out[ch - c0] = total;
    }
    PoisonNonFinite(width, out);
    return;
  }
  double* mean = partials.mean + c0;
  double* m2 = partials.m2 + c0;
  double count = static_cast<double>(std::min(rp.unit_rows, p.Values()));
  for (int64_t ru = 1; ru < rp.row_units; ++ru) {
    const double rows = static_cast<double>(std::min(rp.unit_rows, p.Values() - ru * rp.unit_rows));
    count = MergeMomentsRow(count, mean, m2, rows, mean + ru * p.c, m2 + ru * p.c, width, mean, m2);
  }
  for (int64_t k = 0; k < width; ++k) out[k] = Moments{count, mean[k], m2[k]};
  PoisonNonFinite(width, out);
}

// The partial sums of a backward pass's reduction units (MergeGradSums).
struct GradPartials {
  GradSums* units;     // NCHW: one per unit
  double* sum_dy;      // NHWC: ReductionPlan::NumPartials each, row unit ru's
  double* sum_dy_xmu;  // channel ch at ru * c + ch
};

void MergeGradSums(const Problem& p, const ReductionPlan& rp, const GradPartials& partials,
                   int64_t c0, int64_t c1, GradSums* out) {
  if (!rp.nhwc) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      GradSums total;
      for (int64_t u = 0; u < rp.units_per_channel; ++u) {
        total.sum_dy += partials.units[ch * rp.units_per_channel + u].sum_dy;
        total.sum_dy_xmu += partials.units[ch * rp.units_per_channel + u].sum_dy_xmu;
      }
      out[ch - c0] = total;
    }
    return;
  }
  // Row unit ru's sums are added into row unit 0's, in place, then written
  // out: a + b + ... where the merge used to start from 0 + a, the same bits
  // since a unit's sums start from +0.0 and so are never -0.0.
  double* sum_dy = partials.sum_dy + c0;
  double* sum_dy_xmu = partials.sum_dy_xmu + c0;
  const int64_t width = c1 - c0;
  for (int64_t ru = 1; ru < rp.row_units; ++ru) {
    const double* dy = sum_dy + ru * p.c;
    const double* dy_xmu = sum_dy_xmu + ru * p.c;
    for (int64_t k = 0; k < width; ++k) {
      sum_dy[k] += dy[k];
      sum_dy_xmu[k] += dy_xmu[k];
    }
  }
  for (int64_t k = 0; k < width; ++k) out[k] = GradSums{sum_dy[k], sum_dy_xmu[k]};
}

// A prepare step with nothing to do (backward): skipped, not run as a pass.
struct NoPrepare {
  void operator()(int64_t, int64_t) const {}
};

// No reduction interleaved with an apply: the two run one after the other.
struct NoReduceWhileApplying {
  bool operator()(int64_t, int64_t, int64_t, int64_t) const { return false; }
};

// The skeleton of the reduce-then-apply operations (see Strategy in plan.h).
//   prepare(c0, c1):    per-channel set-up the reduction needs (pivots)
//   reduce(u0, u1, reads): computes the partials of reduction units [u0, u1),
//                       whose inputs come from `reads` (ReduceReads)
//   finalize(c0, c1):   turns the partials of channels [c0, c1) into outputs
//                       and apply constants
//   apply_group(c0, c1, c2): applies to channels [c0, c1) and prefetches the
//                       inputs of [c1, c2), the group reduced next (fused NCHW)
//   apply_unit(a):      applies to unit a of the apply pass (two-phase)
//   apply_flat(b, e):   applies to flat elements [b, e) (two-phase, flat_apply)
//   reduce_while_applying(c1, c2, c0, c1): reduces the units of channels
//                       [c1, c2) while applying to [c0, c1) (fused NCHW),
//                       false if it cannot (then reduce and apply_group do)
template <class Prepare, class Reduce, class Finalize, class ApplyGroup, class ApplyUnit,
          class ApplyFlat, class ReduceWhileApplying = NoReduceWhileApplying>
void RunReduceApply(const bnorm_context* ctx, const Problem& p, const ReductionPlan& rp,
                    const ExecutionPlan& plan, const ElementwisePlan& ep, bool apply,
                    const Prepare& prepare, const Reduce& reduce, const Finalize& finalize,
                    const ApplyGroup& apply_group, const ApplyUnit& apply_unit,
                    const ApplyFlat& apply_flat,
                    const ReduceWhileApplying& reduce_while_applying = ReduceWhileApplying()) {
  const bool single = plan.threads == 1;
  if (plan.strategy == Strategy::kChannelFused) {
    // A static partition: each thread knows the group it does next.
    const int64_t cpt = plan.channels_per_task;
    ParallelForStatic(ctx, (p.c + cpt - 1) / cpt, single, [&](int64_t g0, int64_t g1) {
      bool prepared = false, reduced = false;  // group g's pivots, and its units
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t c0 = g * cpt, c1 = std::min(p.c, c0 + cpt);
        if (!prepared) prepare(c0, c1);
        if (!reduced) {  // in L2 where the last group's apply prefetched them
          const bool memory = UnitsFromMemory(plan, rp) && !(g > g0 && apply);
          reduce(c0 * rp.units_per_channel, c1 * rp.units_per_channel,
                 memory ? ReduceReads::kMemory : ReduceReads::kCached);
        }
        finalize(c0, c1);
        prepared = reduced = false;
        if (!apply) continue;
        const bool next = g + 1 < g1;
        const int64_t c2 = next ? std::min(p.c, c1 + cpt) : c1;
        if (next) {  // the next group's units while this group is written
          prepare(c1, c2);
          prepared = true;
          reduced = reduce_while_applying(c1, c2, c0, c1);
        }
        if (!reduced) apply_group(c0, c1, c2);  // prefetching the next group's inputs
      }
    });
    return;
  }
  if constexpr (!std::is_same_v<Prepare, NoPrepare>) {
    ParallelFor(ctx, p.c, kChannelsPerChunk, prepare, single);
  }
  const ReduceReads reads = plan.reduce_ahead ? ReduceReads::kStream : ReduceReads::kCached;
  ParallelForStatic(ctx, rp.num_units, single,
                    [&](int64_t u0, int64_t u1) { reduce(u0, u1, reads); });
  ParallelFor(ctx, p.c, kChannelsPerChunk, finalize, single);
  if (!apply) return;
  if (plan.flat_apply) {
    // Each thread takes a contiguous piece of the flat tensor and walks its
    // tasks from the last to the first. Where a thread's reduction units are
    // a contiguous range of rows (NHWC: row units one after another,
    // NhwcUnitOf), what it read last is what L2 and the LLC still hold,
    // read again here before this walk evicts it; forward, the walk
    // evicted it first. Zen 4
    // guest, tools/call_timer.cc, evicted, medians of 8-16 alternated runs:
    // NHWC backward 5-11 % faster on 1 thread (32x64x56x56, 8x64x6144) and
    // 5-9 % on 2 (32x64x56x56, 4096x1024); training, NCHW (256x3x224x224)
    // and two-block NHWC (32x2048x7x7) level. A task's streaming prefetch
    // still runs past its end, into the task done just before: ~6 % of an
    // f32 task's lines are not prefetched ahead (tasks of four times the
    // size measured alike).
    const int64_t elems = p.Elements(), grain = ep.task_elems;
    ParallelForStatic(ctx, ep.num_tasks, single, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t1; t-- > t0;) apply_flat(t * grain, std::min(elems, (t + 1) * grain));
    });
    return;
  }
  // Each thread takes back its own units, most recently reduced first.
  ParallelForStatic(ctx, plan.apply_units, single, [&](int64_t a0, int64_t a1) {
    for (int64_t a = a1; a-- > a0;) apply_unit(a);
  });
}

// Finalizes channels [c0, c1) from their means and M2 over `count` values
// each (`moments`, or the arrays where it is null): writes the
// per-channel outputs and, when consts is not null, the apply constants
// (mean, scale, shift arrays of klen floats). The one path of this
// arithmetic, shared by bnorm_forward_training and bnorm_forward_apply.
void FinalizeForwardChannels(int64_t target, const Problem& p, int64_t klen, float* consts,
                             const ForwardOutputs& o, double count, const Moments* moments,
                             const double* mean, const double* m2, int64_t c0, int64_t c1) {
  ForwardFinalize f{};
  f.moments = moments;
  f.mean = mean;
  f.m2 = m2;
  f.count = count;
  f.out = o;
  if (consts != nullptr) {
    f.apply_mean = consts;
    f.apply_scale = consts + klen;
    f.apply_shift = consts + 2 * klen;
  }
  FinalizeForward(target, f, c0, c1);
  if (consts != nullptr) ReplicatePeriod(consts, 3, p, klen, c0, c1);
}

// Where a forward pass's statistics scratch (unit partials, merged
// per-channel moments, pivots) lies in the call's scratch layout.
struct StatsScratch {
  size_t units_at, mean_at, m2_at, merged_at, pivots_at;
  StatsScratch(const Problem& p, const ReductionPlan& rp, ScratchLayout* layout)
      : units_at(layout->Add<Moments>(rp.nhwc ? 0 : rp.NumPartials(p))),
        mean_at(layout->Add<double>(rp.nhwc ? rp.NumPartials(p) : 0)),
        m2_at(layout->Add<double>(rp.nhwc ? rp.NumPartials(p) : 0)),
        merged_at(layout->Add<Moments>(p.c)),
        pivots_at(layout->Add<float>(p.c)) {}
};

// The statistics reduction of a forward pass over its scratch: the
// prepare/reduce steps of RunReduceApply, and the merge of a channel range.
struct StatsReduction {
  const Problem& p;
  const ReductionPlan& rp;
  const ExecutionPlan& plan;
  int64_t target;
  const void* x;
  StatsPartials partials;
  Moments* merged;
  float* pivots;

  StatsReduction(const Problem& p_, const ReductionPlan& rp_, const ExecutionPlan& plan_,
                 int64_t target_, const void* x_, const ScratchPool::Lease& lease,
                 const StatsScratch& at)
      : p(p_),
        rp(rp_),
        plan(plan_),
        target(target_),
        x(x_),
        partials{ScratchAt<Moments>(lease, at.units_at), ScratchAt<double>(lease, at.mean_at),
                 ScratchAt<double>(lease, at.m2_at)},
        merged(ScratchAt<Moments>(lease, at.merged_at)),
        pivots(ScratchAt<float>(lease, at.pivots_at)) {}

  void Prepare(int64_t c0, int64_t c1) const {
    ChannelPivots(target, p.dtype, x, p.c, p.spatial, p.nhwc, p.Values(), c0, c1, pivots);
  }
  void Reduce(int64_t u0, int64_t u1, ReduceReads reads) const {
    if (!rp.nhwc) {
      StatsNchwUnits(target, p.dtype, x, p.c, p.spatial, NchwCut(p, rp), u0, u1, pivots, reads,
                     partials.units);
      return;
    }
    for (int64_t u = u0; u < u1; ++u) {
      const NhwcUnit unit = NhwcUnitAt(p, rp, u);
      const int64_t at = unit.row_unit * p.c + unit.c0;
      StatsNhwcUnit(target, p.dtype, x, p.c, unit.c0, unit.width, rp.rows_per_period,
                    unit.row_begin, unit.row_end, pivots, plan.reduce_ahead, partials.mean + at,
                    partials.m2 + at);
    }
  }
  // Merges the partials of channels [c0, c1) into merged[c0, c1).
  void Merge(int64_t c0, int64_t c1) const { MergeStats(p, rp, partials, c0, c1, merged + c0); }
};

// Whether NHWC elementwise passes store several rows per load of their
// constants (RowStores in plan.h).
bool GroupedRows() { return DetectedRowStores() == RowStores::kGrouped; }

// Scratch for `count` floats of apply constants: false when out of memory.
bool AcquireConstants(const bnorm_context* ctx, int64_t count, const void* y,
                      ScratchPool::Lease* lease, float** consts) {
  ScratchLayout layout;
  const size_t at = layout.AddReadAlongside<float>(count);
  if (!ContextScratch(ctx).Acquire(layout.bytes(), lease)) return false;
  *consts = ScratchAt<float>(*lease, at, y);
  return true;
}

// What a flat NCHW pass over elements [begin, end) prefetches when its output
// streams: its inputs (up to three; null ones skipped) kStreamPrefetchBytes
// ahead (lookahead.h), up to the tensor's end. Nothing where the output is
// cached (the inputs are then in cache or on a hardware prefetcher's stream).
Lookahead StreamingLookahead(const Problem& p, bool stream, int64_t begin, int64_t end,
                             const void* a, const void* b, const void* c) {
  Lookahead ahead;
  const int64_t distance = kStreamPrefetchBytes / ElemBytes(p.dtype);
  const int64_t beyond = std::min(end - begin, p.Elements() - begin - distance);
  if (!stream || beyond <= 0) return ahead;
  int k = 0;
  for (const void* input : {a, b, c}) {
    if (input != nullptr) ahead.input[k++] = At(input, begin + distance, p.dtype);
  }
  if (k != 0) ahead.elems = beyond;
  return ahead;
}

// y = act((x - mean) * scale + shift + z) for flat elements [begin, end),
// with the constants already set. Where the output streams, the inputs are
// prefetched kStreamPrefetchBytes ahead (lookahead.h): here for NCHW, by
// the kernel itself for NHWC.
void NormalizeRange(const Problem& p, const ElementwisePlan& ep, int64_t target, const void* x,
                    void* y, const AffineConstants& affine, const Epilogue& epi, bool stream,
                    int64_t begin, int64_t end) {
  if (p.nhwc) {
    NormalizeNhwc(target, p.dtype, x, y, ep.period, begin, end, affine, stream, GroupedRows(), epi);
  } else {
    const Lookahead ahead = StreamingLookahead(p, stream, begin, end, x, epi.z, nullptr);
    NormalizeNchw(target, p.dtype, x, y, p.c, p.spatial, begin, end, affine, stream, ahead, epi);
  }
}

// The elementwise pass over the whole tensor.
void NormalizePass(const bnorm_context* ctx, const Problem& p, const ElementwisePlan& ep,
                   int64_t target, const void* x, void* y, const AffineConstants& affine,
                   const Epilogue& epi, bool stream, bool single) {
  ParallelFor(
      ctx, p.Elements(), ep.task_elems,
      [&](int64_t begin, int64_t end) {
        NormalizeRange(p, ep, target, x, y, affine, epi, stream, begin, end);
      },
      single);
}

}  // namespace

bnorm_status ForwardTraining(const bnorm_context* ctx, const Problem& p, const void* x, void* y,
                             const Epilogue& epi, const float* gamma, const float* beta, float eps,
                             float momentum, float* running_mean, float* running_var,
                             float* save_mean, float* save_invstd) {
  const int64_t target = ActiveTargetBit();
  const ReductionPlan rp = PlanReduction(p);
  const ElementwisePlan ep = PlanElementwise(p);
  // The policy counts every input of the call: x, and the residual z.
  const NextGroup next = ChooseNextGroup(p, epi.z != nullptr ? 2 : 1,
                                         StatsWhileNormalizingRuns(target, p.dtype, p.spatial),
                                         DetectedNextGroupPolicy(), DetectedCacheSizes());
  const ExecutionPlan plan =
      PlanExecution(p, rp, /*tensors_read=*/1, ContextThreads(ctx), DetectedCacheSizes(), next,
                    /*apply_only=*/epi.z != nullptr ? 1 : 0);
  const int64_t klen = ConstantsLength(p, ep);

  ScratchLayout layout;
  const StatsScratch stats_at(p, rp, &layout);
  const size_t consts_at = layout.AddReadAlongside<float>(3 * klen);
  ScratchPool::Lease lease;
  if (!ContextScratch(ctx).Acquire(layout.bytes(), &lease)) return BNORM_ERR_OUT_OF_MEMORY;
  float* consts = ScratchAt<float>(lease, consts_at, y);
  const StatsReduction stats(p, rp, plan, target, x, lease, stats_at);
  const Moments* merged = stats.merged;
  const AffineConstants affine{consts, consts + klen, consts + 2 * klen};
  const ForwardOutputs outputs{gamma,        beta,        eps,       momentum,
                               running_mean, running_var, save_mean, save_invstd};
  const double m = static_cast<double>(p.Values());

  const auto prepare = [&](int64_t c0, int64_t c1) { stats.Prepare(c0, c1); };
  const auto reduce = [&](int64_t u0, int64_t u1, ReduceReads reads) {
    stats.Reduce(u0, u1, reads);
  };
  const auto finalize = [&](int64_t c0, int64_t c1) {
    stats.Merge(c0, c1);
    FinalizeForwardChannels(target, p, klen, consts, outputs, m, merged, nullptr, nullptr, c0, c1);
  };
  const auto apply_group = [&](int64_t c0, int64_t c1, int64_t c2) {
    for (int64_t i = 0; i < p.n; ++i) {
      Lookahead ahead;
      ahead.input[0] = At(x, (i * p.c + c1) * p.spatial, p.dtype);
      ahead.elems = (c2 - c1) * p.spatial;
      NormalizeNchw(target, p.dtype, x, y, p.c, p.spatial, (i * p.c + c0) * p.spatial,
                    (i * p.c + c1) * p.spatial, affine, plan.stream_output, ahead, epi);
    }
  };
  const auto apply_unit = [&](int64_t a) {
    if (!rp.nhwc) {
      const NchwUnit unit = NchwUnitAt(p, rp, a);
      NormalizeNchwChannel(target, p.dtype, x, y, p.c, p.spatial, unit.ch, unit.begin, unit.end,
                           affine, plan.stream_output, epi);
    } else {
      const int64_t r0 = a * rp.unit_rows, r1 = std::min(p.Values(), r0 + rp.unit_rows);
      NormalizeNhwc(target, p.dtype, x, y, ep.period, r0 * p.c, r1 * p.c, affine,
                    plan.stream_output, GroupedRows(), epi);
    }
  };
  const auto apply_flat = [&](int64_t begin, int64_t end) {
    NormalizeRange(p, ep, target, x, y, affine, epi, plan.stream_output, begin, end);
  };
  const auto reduce_while_applying = [&](int64_t c1, int64_t c2, int64_t a0, int64_t a1) {
    if (next != NextGroup::kReduce) return false;
    const NchwStatsUnits units{c1,
                               c2,
                               rp.units_per_channel,
                               rp.unit_len,
                               stats.pivots,
                               stats.partials.units,
                               UnitsFromMemory(plan, rp)};
    return StatsWhileNormalizing(target, p.dtype, x, y, p.n, p.c, p.spatial, units, a0, a1, affine,
                                 plan.stream_output, epi);
  };
  RunReduceApply(ctx, p, rp, plan, ep, /*apply=*/true, prepare, reduce, finalize, apply_group,
                 apply_unit, apply_flat, reduce_while_applying);
  return BNORM_OK;
}

bnorm_status Stats(const bnorm_context* ctx, const Problem& p, const void* x, double* mean,
                   double* m2) {
  if (p.Elements() == 0) {
    std::fill(mean, mean + p.c, 0.0);
    std::fill(m2, m2 + p.c, 0.0);
    return BNORM_OK;
  }
  const ReductionPlan rp = PlanReduction(p);
  const ExecutionPlan plan =
      PlanExecution(p, rp, /*tensors_read=*/1, ContextThreads(ctx), DetectedCacheSizes());
  ScratchLayout layout;
  const StatsScratch stats_at(p, rp, &layout);
  ScratchPool::Lease lease;
  if (!ContextScratch(ctx).Acquire(layout.bytes(), &lease)) return BNORM_ERR_OUT_OF_MEMORY;
  const StatsReduction stats(p, rp, plan, ActiveTargetBit(), x, lease, stats_at);
  const Moments* merged = stats.merged;
  const auto finalize = [&](int64_t c0, int64_t c1) {
    stats.Merge(c0, c1);
    for (int64_t ch = c0; ch < c1; ++ch) {
      mean[ch] = merged[ch].mean;
      m2[ch] = merged[ch].m2;
    }
  };
  const auto none = [](auto...) {};
  RunReduceApply(
      ctx, p, rp, plan, ElementwisePlan(), /*apply=*/false,
      [&](int64_t c0, int64_t c1) { stats.Prepare(c0, c1); },
      [&](int64_t u0, int64_t u1, ReduceReads reads) { stats.Reduce(u0, u1, reads); }, finalize,
      none, none, none);
  return BNORM_OK;
}

bnorm_status ForwardApply(const bnorm_context* ctx, const Problem& p, const void* x, void* y,
                          const float* gamma, const float* beta, double count, const double* mean,
                          const double* m2, float eps, float momentum, float* running_mean,
                          float* running_var, float* save_mean, float* save_invstd) {
  const ForwardOutputs outputs{gamma,        beta,        eps,       momentum,
                               running_mean, running_var, save_mean, save_invstd};
  const int64_t target = ActiveTargetBit();
  if (p.Elements() == 0) {  // a part without samples: the per-channel outputs only
    FinalizeForwardChannels(target, p, 0, nullptr, outputs, count, nullptr, mean, m2, 0, p.c);
    return BNORM_OK;
  }
  const ElementwisePlan ep = PlanElementwise(p);
  const int64_t klen = ConstantsLength(p, ep);
  ScratchPool::Lease lease;
  float* consts = nullptr;
  if (!AcquireConstants(ctx, 3 * klen, y, &lease, &consts)) return BNORM_ERR_OUT_OF_MEMORY;
  const AffineConstants affine{consts, consts + klen, consts + 2 * klen};
  const bool single = UsefulThreads(p.Elements(), ContextThreads(ctx)) == 1;
  ParallelFor(
      ctx, p.c, kChannelsPerChunk,
      [&](int64_t c0, int64_t c1) {
        FinalizeForwardChannels(target, p, klen, consts, outputs, count, nullptr, mean, m2, c0, c1);
      },
      single);
  const bool stream = ShouldStream(p, /*tensors=*/2, DetectedCacheSizes().llc);
  NormalizePass(ctx, p, ep, target, x, y, affine, Epilogue(), stream, single);
  return BNORM_OK;
}

bnorm_status ForwardInference(const bnorm_context* ctx, const Problem& p, const void* x, void* y,
                              const Epilogue& epi, const float* gamma, const float* beta,
                              const float* mean, const float* var, float eps) {
  const int64_t target = ActiveTargetBit();
  const ElementwisePlan ep = PlanElementwise(p);
  const int64_t klen = ConstantsLength(p, ep);
  ScratchPool::Lease lease;
  float* consts = nullptr;
  if (!AcquireConstants(ctx, 3 * klen, y, &lease, &consts)) return BNORM_ERR_OUT_OF_MEMORY;
  const AffineConstants affine{consts, consts + klen, consts + 2 * klen};
  const bool single = UsefulThreads(p.Elements(), ContextThreads(ctx)) == 1;
  const bool stream =
      ShouldStream(p, /*tensors=*/epi.z != nullptr ? 3 : 2, DetectedCacheSizes().llc);

  ParallelFor(
      ctx, p.c, kChannelsPerChunk,
      [&](int64_t c0, int64_t c1) {
        // Plain loops over channels (they vectorize: sqrt and division in
        // double cost ~30 cycles each one at a time), then NHWC's copies.
        const double e = static_cast<double>(eps);
        float* scale = consts + klen;
        if (gamma != nullptr) {
          for (int64_t ch = c0; ch < c1; ++ch) {
            scale[ch] = static_cast<float>(static_cast<double>(gamma[ch]) /
                                           std::sqrt(static_cast<double>(var[ch]) + e));
          }
        } else {
          for (int64_t ch = c0; ch < c1; ++ch) {
            scale[ch] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var[ch]) + e));
          }
        }
        std::copy(mean + c0, mean + c1, consts + c0);
        if (beta != nullptr) {
          std::copy(beta + c0, beta + c1, consts + 2 * klen + c0);
        } else {
          std::fill(consts + 2 * klen + c0, consts + 2 * klen + c1, 0.0f);
        }
        ReplicatePeriod(consts, 3, p, klen, c0, c1);
      },
      single);

  NormalizePass(ctx, p, ep, target, x, y, affine, epi, stream, single);
  return BNORM_OK;
}

bnorm_status Backward(const bnorm_context* ctx, const Problem& p, bool frozen, const void* x,
                      const void* dy, const void* y, void* dx, void* dz, const float* gamma,
                      const float* mean, const float* invstd, float* dgamma, float* dbeta,
                      const GradSplit& split) {
  const bool given_sums = split.sum_dy_in != nullptr;
  const bool sums_out = split.sum_dy_out != nullptr;
  const bool need_sums =
      sums_out || dgamma != nullptr || dbeta != nullptr || (dx != nullptr && !frozen);
  if (!need_sums && dx == nullptr && dz == nullptr) return BNORM_OK;
  const bool empty = p.Elements() == 0;
  if (empty) dx = dz = nullptr;  // a part without samples: per-channel outputs only
  const int64_t target = ActiveTargetBit();
  const ReductionPlan rp = empty ? ReductionPlan() : PlanReduction(p);
  const ElementwisePlan ep = empty ? ElementwisePlan() : PlanElementwise(p);
  const int tensors_read = y != nullptr ? 3 : 2;
  // dz without dx: the gradient itself, g * 1, through the frozen kernel.
  const bool dz_only = dx == nullptr && dz != nullptr;
  // The apply pass: dx (and dz alongside), or dz alone.
  const GradArgs args = dz_only ? GradArgs{nullptr, dy, y, nullptr}
                                : GradArgs{frozen ? nullptr : x, dy, y, frozen ? nullptr : dz};
  // Without dx there is no write loop to reduce in (gradient sums alone).
  const NextGroup next = ChooseNextGroup(
      p, tensors_read, dx != nullptr && GradSumsWhileApplyingRuns(target, p.dtype, args, p.spatial),
      DetectedNextGroupPolicy(), DetectedCacheSizes());
  const ExecutionPlan plan =
      empty ? ExecutionPlan()
            : PlanExecution(p, rp, tensors_read, ContextThreads(ctx), DetectedCacheSizes(), next,
                            /*apply_only=*/args.dz != nullptr ? 1 : 0);
  const bool apply_pass = dx != nullptr || dz != nullptr;
  const int64_t klen = apply_pass ? ConstantsLength(p, ep) : 0;
  const bool reduce_pass = need_sums && !given_sums && !empty;

  ScratchLayout layout;
  const int64_t num_partials = reduce_pass ? rp.NumPartials(p) : 0;
  const size_t units_at = layout.Add<GradSums>(rp.nhwc ? 0 : num_partials);
  const size_t sum_dy_at = layout.Add<double>(rp.nhwc ? num_partials : 0);
  const size_t sum_dy_xmu_at = layout.Add<double>(rp.nhwc ? num_partials : 0);
  const size_t merged_at = layout.Add<GradSums>(reduce_pass ? p.c : 0);
  const size_t consts_at = layout.AddReadAlongside<float>(4 * klen);
  ScratchPool::Lease lease;
  if (!ContextScratch(ctx).Acquire(layout.bytes(), &lease)) return BNORM_ERR_OUT_OF_MEMORY;
  const GradPartials parts{ScratchAt<GradSums>(lease, units_at),
                           ScratchAt<double>(lease, sum_dy_at),
                           ScratchAt<double>(lease, sum_dy_xmu_at)};
  GradSums* merged = ScratchAt<GradSums>(lease, merged_at);
  void* out = dz_only ? dz : dx;
  float* consts = ScratchAt<float>(lease, consts_at, out);
  const GradConstants grad{consts, consts + klen, consts + 2 * klen, consts + 3 * klen};
  const double m = given_sums ? split.count : static_cast<double>(p.Values());

  // Per-channel outputs and the apply constants of channels [c0, c1), from
  // an array of sums or a pair of arrays (all null: sums of 0).
  struct SumsAt {
    const GradSums* sums;
    const double* sum_dy;
    const double* sum_dy_xmu;
  };
  const auto finalize_with = [&](int64_t c0, int64_t c1, const SumsAt& sums) {
    BackwardFinalize f{};
    f.sums = sums.sums;
    f.sum_dy = sums.sum_dy;
    f.sum_dy_xmu = sums.sum_dy_xmu;
    f.count = m;
    f.mean = mean;
    f.invstd = invstd;
    f.gamma = gamma;
    f.dz_only = dz_only;
    f.no_sums = frozen || dz_only;
    if (sums_out) {
      f.sum_dy_out = split.sum_dy_out;
      f.sum_dy_xmu_out = split.sum_dy_xmu_out;
    }
    f.dbeta = dbeta;
    f.dgamma = dgamma;
    if (apply_pass) {
      f.apply_mean = consts;
      f.apply_mean_dy = consts + klen;
      f.apply_a = consts + 2 * klen;
      f.apply_b = consts + 3 * klen;
    }
    FinalizeBackward(target, f, c0, c1);
    if (apply_pass) ReplicatePeriod(consts, 4, p, klen, c0, c1);
  };

  // The apply pass over flat elements [begin, end); where dx streams, its
  // inputs are prefetched as in NormalizeRange.
  const auto apply_range = [&](int64_t begin, int64_t end, bool stream) {
    if (p.nhwc) {
      GradApplyNhwc(target, p.dtype, args, out, ep.period, begin, end, grad, stream, GroupedRows());
    } else {
      const Lookahead ahead = StreamingLookahead(p, stream, begin, end, args.dy, args.x, args.y);
      GradApplyNchw(target, p.dtype, args, out, p.c, p.spatial, begin, end, grad, stream, ahead);
    }
  };
  // A pure elementwise pass (frozen dx, dz only, or given sums) after the
  // per-channel finalize.
  const auto elementwise = [&](const SumsAt& sums) {
    const bool single = UsefulThreads(p.ElementsOf(2), ContextThreads(ctx)) == 1;
    ParallelFor(
        ctx, p.c, kChannelsPerChunk, [&](int64_t c0, int64_t c1) { finalize_with(c0, c1, sums); },
        single);
    if (!apply_pass) return;
    const bool stream = ShouldStream(p, tensors_read, DetectedCacheSizes().llc);
    ParallelFor(
        ctx, p.Elements(), ep.task_elems,
        [&](int64_t begin, int64_t end) { apply_range(begin, end, stream); }, single);
  };
  if (given_sums) {
    elementwise(SumsAt{nullptr, split.sum_dy_in, split.sum_dy_xmu_in});
    return BNORM_OK;
  }
  if (!need_sums || empty) {
    elementwise(SumsAt{nullptr, nullptr, nullptr});
    return BNORM_OK;
  }
  const SumsAt merged_sums{merged, nullptr, nullptr};

  const auto reduce = [&](int64_t u0, int64_t u1, ReduceReads reads) {
    if (!rp.nhwc) {
      GradSumsNchwUnits(target, p.dtype, x, dy, y, p.c, p.spatial, NchwCut(p, rp), u0, u1, mean,
                        reads, parts.units);
      return;
    }
    for (int64_t u = u0; u < u1; ++u) {
      const NhwcUnit unit = NhwcUnitAt(p, rp, u);
      const int64_t at = unit.row_unit * p.c + unit.c0;
      GradSumsNhwcUnit(target, p.dtype, x, dy, y, p.c, unit.c0, unit.width, rp.rows_per_period,
                       unit.row_begin, unit.row_end, mean, plan.reduce_rows_at_once,
                       plan.reduce_ahead, parts.sum_dy + at, parts.sum_dy_xmu + at);
    }
  };
  const auto finalize = [&](int64_t c0, int64_t c1) {
    MergeGradSums(p, rp, parts, c0, c1, merged + c0);
    finalize_with(c0, c1, merged_sums);
  };
  const auto apply_group = [&](int64_t c0, int64_t c1, int64_t c2) {
    for (int64_t i = 0; i < p.n; ++i) {
      const int64_t next = (i * p.c + c1) * p.spatial;
      Lookahead ahead;
      ahead.input[0] = At(dy, next, p.dtype);
      ahead.input[1] = At(x, next, p.dtype);  // the next group's sums read x, frozen or not
      ahead.input[2] = y != nullptr ? At(y, next, p.dtype) : nullptr;
      ahead.elems = (c2 - c1) * p.spatial;
      GradApplyNchw(target, p.dtype, args, out, p.c, p.spatial, (i * p.c + c0) * p.spatial,
                    (i * p.c + c1) * p.spatial, grad, plan.stream_output, ahead);
    }
  };
  const auto apply_unit = [&](int64_t a) {
    if (!rp.nhwc) {
      const NchwUnit unit = NchwUnitAt(p, rp, a);
      GradApplyNchwChannel(target, p.dtype, args, out, p.c, p.spatial, unit.ch, unit.begin,
                           unit.end, grad, plan.stream_output);
    } else {
      const int64_t r0 = a * rp.unit_rows, r1 = std::min(p.Values(), r0 + rp.unit_rows);
      GradApplyNhwc(target, p.dtype, args, out, ep.period, r0 * p.c, r1 * p.c, grad,
                    plan.stream_output, GroupedRows());
    }
  };
  const auto reduce_while_applying = [&](int64_t c1, int64_t c2, int64_t a0, int64_t a1) {
    if (next != NextGroup::kReduce) return false;
    const NchwGradUnits units{c1,   c2,          rp.units_per_channel,     rp.unit_len,
                              mean, parts.units, UnitsFromMemory(plan, rp)};
    return GradSumsWhileApplying(target, p.dtype, args, out, p.n, p.c, p.spatial, units, a0, a1,
                                 grad, plan.stream_output);
  };
  RunReduceApply(
      ctx, p, rp, plan, ep, /*apply=*/dx != nullptr, NoPrepare{}, reduce, finalize, apply_group,
      apply_unit, [&](int64_t begin, int64_t end) { apply_range(begin, end, plan.stream_output); },
      reduce_while_applying);
  if (dz_only) elementwise(merged_sums);
  return BNORM_OK;
}

}  // namespace bnorm
