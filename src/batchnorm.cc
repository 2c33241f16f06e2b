#include "batchnorm.h"

#include <algorithm>
#include <cmath>

#include "backward_apply.h"
#include "backward_reduce.h"
#include "context.h"
#include "moments.h"
#include "normalize.h"
#include "stats.h"
#include "target.h"

namespace bnorm {
namespace {

// Channels finalized per parallel chunk (per-channel work is a few flops).
constexpr int64_t kChannelsPerChunk = 1024;

// Per-channel (NCHW) or per-position (NHWC) constant arrays of the elementwise
// pass; NHWC positions repeat every `period` floats, position q has channel q % c.
int64_t ConstantsLength(const Problem& p, const ElementwisePlan& ep) {
  return p.nhwc ? ep.period : p.c;
}

// Writes value to every position of channel ch.
inline void SetConstant(float* array, const Problem& p, int64_t length, int64_t ch, float value) {
  if (!p.nhwc) {
    array[ch] = value;
    return;
  }
  for (int64_t q = ch; q < length; q += p.c) array[q] = value;
}

// Runs the statistics units of the reduction plan into `partials`.
void ComputeStatsPartials(const bnorm_context* ctx, int64_t target, const Problem& p,
                          const ReductionPlan& rp, const float* x, Moments* partials) {
  const int64_t values = p.Values();
  ParallelFor(ctx, rp.num_units, UnitsPerChunk(rp.unit_elems), [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      if (!rp.nhwc) {
        const int64_t ch = u / rp.units_per_channel;
        const int64_t begin = (u % rp.units_per_channel) * rp.unit_len;
        partials[u] = StatsNchwUnit(target, x, p.c, p.spatial, ch, begin,
                                    std::min(values, begin + rp.unit_len));
      } else {
        const int64_t c0 = (u / rp.row_units) * rp.block_width;
        const int64_t row_unit = u % rp.row_units;
        const int64_t row_begin = row_unit * rp.unit_rows;
        StatsNhwcUnit(target, x, p.c, c0, std::min(rp.block_width, p.c - c0), rp.rows_per_period,
                      row_begin, std::min(values, row_begin + rp.unit_rows),
                      partials + row_unit * p.c + c0);
      }
    }
  });
}

// The partials of channel ch, merged in unit order.
template <typename Partial, typename Merge>
Partial MergeChannel(const Problem& p, const ReductionPlan& rp, const Partial* partials, int64_t ch,
                     const Merge& merge) {
  Partial total;
  if (!rp.nhwc) {
    for (int64_t u = 0; u < rp.units_per_channel; ++u) {
      merge(total, partials[ch * rp.units_per_channel + u]);
    }
  } else {
    for (int64_t ru = 0; ru < rp.row_units; ++ru) merge(total, partials[ru * p.c + ch]);
  }
  return total;
}

template <typename Constants>
void RunElementwise(const bnorm_context* ctx, const Problem& p, const ElementwisePlan& ep,
                    const Constants& body) {
  ParallelFor(ctx, p.Elements(), ep.task_elems, body);
}

}  // namespace

bnorm_status ForwardTraining(const bnorm_context* ctx, const Problem& p, const float* x, float* y,
                             const float* gamma, const float* beta, float eps, float momentum,
                             float* running_mean, float* running_var, float* save_mean,
                             float* save_invstd) {
  const int64_t target = ActiveTargetBit();
  const ReductionPlan rp = PlanReduction(p);
  const ElementwisePlan ep = PlanElementwise(p);
  const int64_t klen = ConstantsLength(p, ep);

  ScratchLayout layout;
  const size_t partials_at = layout.Add<Moments>(rp.NumPartials(p));
  const size_t consts_at = layout.Add<float>(4 * klen);
  ScratchPool::Lease lease;
  if (!ContextScratch(ctx).Acquire(layout.bytes(), &lease)) return BNORM_ERR_OUT_OF_MEMORY;
  Moments* partials = ScratchAt<Moments>(lease, partials_at);
  float* consts = ScratchAt<float>(lease, consts_at);
  const AffineConstants affine{consts, consts + klen, consts + 2 * klen, consts + 3 * klen};

  ComputeStatsPartials(ctx, target, p, rp, x, partials);

  const double m = static_cast<double>(p.Values());
  ParallelFor(ctx, p.c, kChannelsPerChunk, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const Moments s = MergeChannel(p, rp, partials, ch, MergeMoments);
      const double mean = s.mean;
      const double var = s.m2 / m;
      const double var_eps = var + static_cast<double>(eps);
      const double invstd = var_eps == 0.0 ? 0.0 : 1.0 / std::sqrt(var_eps);
      if (save_mean != nullptr) save_mean[ch] = static_cast<float>(mean);
      if (save_invstd != nullptr) save_invstd[ch] = static_cast<float>(invstd);
      const double mom = static_cast<double>(momentum);
      if (running_mean != nullptr) {
        running_mean[ch] =
            static_cast<float>((1.0 - mom) * static_cast<double>(running_mean[ch]) + mom * mean);
      }
      if (running_var != nullptr) {
        const double unbiased = s.m2 / (m - 1.0);
        running_var[ch] =
            static_cast<float>((1.0 - mom) * static_cast<double>(running_var[ch]) + mom * unbiased);
      }
      const float mean_hi = static_cast<float>(mean);
      const double g = gamma != nullptr ? static_cast<double>(gamma[ch]) : 1.0;
      SetConstant(consts, p, klen, ch, mean_hi);
      SetConstant(consts + klen, p, klen, ch,
                  static_cast<float>(mean - static_cast<double>(mean_hi)));
      SetConstant(consts + 2 * klen, p, klen, ch, static_cast<float>(invstd * g));
      SetConstant(consts + 3 * klen, p, klen, ch, beta != nullptr ? beta[ch] : 0.0f);
    }
  });

  RunElementwise(ctx, p, ep, [&](int64_t begin, int64_t end) {
    if (p.nhwc) {
      NormalizeNhwc(target, x, y, ep.period, begin, end, affine);
    } else {
      NormalizeNchw(target, x, y, p.c, p.spatial, begin, end, affine);
    }
  });
  return BNORM_OK;
}

bnorm_status ForwardInference(const bnorm_context* ctx, const Problem& p, const float* x, float* y,
                              const float* gamma, const float* beta, const float* mean,
                              const float* var, float eps) {
  const int64_t target = ActiveTargetBit();
  const ElementwisePlan ep = PlanElementwise(p);
  const int64_t klen = ConstantsLength(p, ep);
  ScratchLayout layout;
  const size_t consts_at = layout.Add<float>(4 * klen);
  ScratchPool::Lease lease;
  if (!ContextScratch(ctx).Acquire(layout.bytes(), &lease)) return BNORM_ERR_OUT_OF_MEMORY;
  float* consts = ScratchAt<float>(lease, consts_at);
  const AffineConstants affine{consts, consts + klen, consts + 2 * klen, consts + 3 * klen};

  ParallelFor(ctx, p.c, kChannelsPerChunk, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const double g = gamma != nullptr ? static_cast<double>(gamma[ch]) : 1.0;
      const double scale = g / std::sqrt(static_cast<double>(var[ch]) + static_cast<double>(eps));
      SetConstant(consts, p, klen, ch, mean[ch]);
      SetConstant(consts + klen, p, klen, ch, 0.0f);
      SetConstant(consts + 2 * klen, p, klen, ch, static_cast<float>(scale));
      SetConstant(consts + 3 * klen, p, klen, ch, beta != nullptr ? beta[ch] : 0.0f);
    }
  });

  RunElementwise(ctx, p, ep, [&](int64_t begin, int64_t end) {
    if (p.nhwc) {
      NormalizeNhwc(target, x, y, ep.period, begin, end, affine);
    } else {
      NormalizeNchw(target, x, y, p.c, p.spatial, begin, end, affine);
    }
  });
  return BNORM_OK;
}

bnorm_status Backward(const bnorm_context* ctx, const Problem& p, bool frozen, const float* x,
                      const float* dy, float* dx, const float* gamma, const float* mean,
                      const float* invstd, float* dgamma, float* dbeta) {
  const bool need_sums = dgamma != nullptr || dbeta != nullptr || (dx != nullptr && !frozen);
  if (!need_sums && dx == nullptr) return BNORM_OK;
  const int64_t target = ActiveTargetBit();
  const ReductionPlan rp = PlanReduction(p);
  const ElementwisePlan ep = PlanElementwise(p);
  const int64_t klen = ConstantsLength(p, ep);

  ScratchLayout layout;
  const size_t partials_at = layout.Add<GradSums>(need_sums ? rp.NumPartials(p) : 0);
  const size_t consts_at = layout.Add<float>(dx != nullptr ? 4 * klen : 0);
  ScratchPool::Lease lease;
  if (!ContextScratch(ctx).Acquire(layout.bytes(), &lease)) return BNORM_ERR_OUT_OF_MEMORY;
  GradSums* partials = ScratchAt<GradSums>(lease, partials_at);
  float* consts = ScratchAt<float>(lease, consts_at);
  const GradConstants grad{consts, consts + klen, consts + 2 * klen, consts + 3 * klen};

  const int64_t values = p.Values();
  if (need_sums) {
    ParallelFor(ctx, rp.num_units, UnitsPerChunk(rp.unit_elems), [&](int64_t u0, int64_t u1) {
      for (int64_t u = u0; u < u1; ++u) {
        if (!rp.nhwc) {
          const int64_t ch = u / rp.units_per_channel;
          const int64_t begin = (u % rp.units_per_channel) * rp.unit_len;
          partials[u] = GradSumsNchwUnit(target, x, dy, p.c, p.spatial, ch, begin,
                                         std::min(values, begin + rp.unit_len), mean[ch]);
        } else {
          const int64_t c0 = (u / rp.row_units) * rp.block_width;
          const int64_t row_unit = u % rp.row_units;
          const int64_t row_begin = row_unit * rp.unit_rows;
          GradSumsNhwcUnit(target, x, dy, p.c, c0, std::min(rp.block_width, p.c - c0),
                           rp.rows_per_period, row_begin,
                           std::min(values, row_begin + rp.unit_rows), mean,
                           partials + row_unit * p.c + c0);
        }
      }
    });
  }

  const double m = static_cast<double>(values);
  ParallelFor(ctx, p.c, kChannelsPerChunk, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      GradSums s;
      if (need_sums) {
        s = MergeChannel(p, rp, partials, ch, [](GradSums& a, const GradSums& b) {
          a.sum_dy += b.sum_dy;
          a.sum_dy_xmu += b.sum_dy_xmu;
        });
      }
      const double is = static_cast<double>(invstd[ch]);
      if (dbeta != nullptr) dbeta[ch] = static_cast<float>(s.sum_dy);
      if (dgamma != nullptr) dgamma[ch] = static_cast<float>(s.sum_dy_xmu * is);
      if (dx == nullptr) continue;
      const double a = (gamma != nullptr ? static_cast<double>(gamma[ch]) : 1.0) * is;
      SetConstant(consts + 2 * klen, p, klen, ch, static_cast<float>(a));
      SetConstant(consts, p, klen, ch, mean[ch]);
      SetConstant(consts + klen, p, klen, ch, frozen ? 0.0f : static_cast<float>(s.sum_dy / m));
      SetConstant(consts + 3 * klen, p, klen, ch,
                  frozen ? 0.0f : static_cast<float>(-a * is * is * s.sum_dy_xmu / m));
    }
  });
  if (dx == nullptr) return BNORM_OK;

  const float* xa = frozen ? nullptr : x;
  RunElementwise(ctx, p, ep, [&](int64_t begin, int64_t end) {
    if (p.nhwc) {
      GradApplyNhwc(target, xa, dy, dx, ep.period, begin, end, grad);
    } else {
      GradApplyNchw(target, xa, dy, dx, p.c, p.spatial, begin, end, grad);
    }
  });
  return BNORM_OK;
}

}  // namespace bnorm
