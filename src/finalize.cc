// The per-channel step of the forward and backward passes (see
// finalize.h). One SIMD body per target via foreach_target.
#include "config.h"  // first: dispatch configuration

#include "finalize.h"

#include <stddef.h>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "finalize.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "convert-inl.h"  // CanonicalNaN
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Doubles rounded to float as static_cast rounds them: beyond the float
// range to infinity (a variance of 1e76 saves an infinite running_var);
// NaN as the one NaN (CanonicalNaN in convert-inl.h: which of two NaN
// operands an operation returns may differ between the vector and the
// one-lane instances). Highway's DemoteTo saturates to the largest float on
// its fallback targets (SCALAR, EMU128), so those convert lane by lane; the
// x86 targets' conversion instructions are static_cast's own.
template <class DF, class V>
HWY_INLINE hn::Vec<DF> ToFloat(DF df, V v) {
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  const hn::Rebind<double, DF> dd;
  HWY_ALIGN double in[hn::MaxLanes(dd)];
  HWY_ALIGN float out[hn::MaxLanes(df)];
  hn::Store(v, dd, in);
  for (size_t k = 0; k < hn::Lanes(df); ++k) out[k] = static_cast<float>(in[k]);
  return CanonicalNaN(df, hn::Load(df, out));
#else
  return CanonicalNaN(df, hn::DemoteTo(df, v));
#endif
}

// Lanes(d) doubles of channel ch on: member `field` of an array of
// structs where `structs` is not null, else of the array `plain` (null:
// zeros).
template <class D, class S>
HWY_INLINE hn::Vec<D> LoadChannels(D d, const S* structs, double S::*field, const double* plain,
                                   size_t ch) {
  if (structs == nullptr) return plain != nullptr ? hn::LoadU(d, plain + ch) : hn::Zero(d);
  HWY_ALIGN double lanes[hn::MaxLanes(d)];
  for (size_t k = 0; k < hn::Lanes(d); ++k) lanes[k] = structs[ch + k].*field;
  return hn::Load(d, lanes);
}

// Lanes(d) channels from ch on. Each operation is IEEE double arithmetic
// (no contraction: the library builds with -ffp-contract=off), rounded to
// float as static_cast does, so every target and the one-lane tail give the
// same bits.
template <class D>
HWY_INLINE void FinalizeLanes(D d, const ForwardFinalize& f, size_t ch) {
  using V = hn::Vec<D>;
  const hn::Rebind<float, D> df;
  const ForwardOutputs& o = f.out;
  const V mean = LoadChannels(d, f.moments, &Moments::mean, f.mean, ch);
  const V m2 = LoadChannels(d, f.moments, &Moments::m2, f.m2, ch);
  const V count = hn::Set(d, f.count);
  const V one = hn::Set(d, 1.0);
  const V var_eps = hn::Add(hn::Div(m2, count), hn::Set(d, static_cast<double>(o.eps)));
  // Eq, not Ne: Highway's Ne is an ordered compare on AVX2 and AVX-512 (NaN
  // is not unequal to 0 there), and a NaN variance must give a NaN invstd.
  const V invstd =
      hn::IfThenZeroElse(hn::Eq(var_eps, hn::Zero(d)), hn::Div(one, hn::Sqrt(var_eps)));
  const auto mean_f = ToFloat(df, mean);
  if (o.save_mean != nullptr) hn::StoreU(mean_f, df, o.save_mean + ch);
  if (o.save_invstd != nullptr) hn::StoreU(ToFloat(df, invstd), df, o.save_invstd + ch);
  const V momentum = hn::Set(d, static_cast<double>(o.momentum));
  const V keep = hn::Sub(one, momentum);
  if (o.running_mean != nullptr) {
    const V old = hn::PromoteTo(d, hn::LoadU(df, o.running_mean + ch));
    const V updated = hn::Add(hn::Mul(keep, old), hn::Mul(momentum, mean));
    hn::StoreU(ToFloat(df, updated), df, o.running_mean + ch);
  }
  if (o.running_var != nullptr) {
    const V unbiased = hn::Div(m2, hn::Sub(count, one));
    const V old = hn::PromoteTo(d, hn::LoadU(df, o.running_var + ch));
    const V updated = hn::Add(hn::Mul(keep, old), hn::Mul(momentum, unbiased));
    hn::StoreU(ToFloat(df, updated), df, o.running_var + ch);
  }
  if (f.apply_mean == nullptr) return;
  const V scale =
      o.gamma != nullptr ? hn::Mul(invstd, hn::PromoteTo(d, hn::LoadU(df, o.gamma + ch))) : invstd;
  const V beta = o.beta != nullptr ? hn::PromoteTo(d, hn::LoadU(df, o.beta + ch)) : hn::Zero(d);
  const V shift = hn::Sub(beta, hn::Mul(hn::Sub(mean, hn::PromoteTo(d, mean_f)), scale));
  hn::StoreU(mean_f, df, f.apply_mean + ch);
  hn::StoreU(ToFloat(df, scale), df, f.apply_scale + ch);
  hn::StoreU(ToFloat(df, shift), df, f.apply_shift + ch);
}

// Calls lanes(d, ch) on channels [c0, c1): whole vectors, then one lane at
// a time.
template <class Lanes>
HWY_INLINE void ForChannelVectors(int64_t c0, int64_t c1, const Lanes& lanes) {
  const hn::ScalableTag<double> d;
  const hn::CappedTag<double, 1> d1;
  size_t ch = static_cast<size_t>(c0);
  const size_t end = static_cast<size_t>(c1);
  for (; ch + hn::Lanes(d) <= end; ch += hn::Lanes(d)) lanes(d, ch);
  for (; ch < end; ++ch) lanes(d1, ch);
}

void FinalizeForward(const ForwardFinalize& f, int64_t c0, int64_t c1) {
  ForChannelVectors(c0, c1, [&](auto d, size_t ch) HWY_ATTR { FinalizeLanes(d, f, ch); });
}

// Lanes(d) channels from ch on (as FinalizeLanes).
template <class D>
HWY_INLINE void FinalizeBackwardLanes(D d, const BackwardFinalize& f, size_t ch) {
  using V = hn::Vec<D>;
  const hn::Rebind<float, D> df;
  const V sum_dy = LoadChannels(d, f.sums, &GradSums::sum_dy, f.sum_dy, ch);
  const V sum_dy_xmu = LoadChannels(d, f.sums, &GradSums::sum_dy_xmu, f.sum_dy_xmu, ch);
  if (f.sum_dy_out != nullptr) {
    hn::StoreU(CanonicalNaN(d, sum_dy), d, f.sum_dy_out + ch);
    hn::StoreU(CanonicalNaN(d, sum_dy_xmu), d, f.sum_dy_xmu_out + ch);
  }
  const V is = hn::PromoteTo(d, hn::LoadU(df, f.invstd + ch));
  if (f.dbeta != nullptr) hn::StoreU(ToFloat(df, sum_dy), df, f.dbeta + ch);
  if (f.dgamma != nullptr) hn::StoreU(ToFloat(df, hn::Mul(sum_dy_xmu, is)), df, f.dgamma + ch);
  if (f.apply_mean == nullptr) return;
  V a = hn::Set(d, 1.0);
  if (!f.dz_only) {
    a = f.gamma != nullptr ? hn::Mul(hn::PromoteTo(d, hn::LoadU(df, f.gamma + ch)), is) : is;
  }
  hn::StoreU(hn::LoadU(df, f.mean + ch), df, f.apply_mean + ch);
  hn::StoreU(ToFloat(df, a), df, f.apply_a + ch);
  if (f.no_sums) {
    hn::StoreU(hn::Zero(df), df, f.apply_mean_dy + ch);
    hn::StoreU(hn::Zero(df), df, f.apply_b + ch);
    return;
  }
  const V count = hn::Set(d, f.count);
  hn::StoreU(ToFloat(df, hn::Div(sum_dy, count)), df, f.apply_mean_dy + ch);
  const V b = hn::Div(hn::Mul(hn::Mul(is, is), sum_dy_xmu), count);
  hn::StoreU(ToFloat(df, b), df, f.apply_b + ch);
}

void FinalizeBackward(const BackwardFinalize& f, int64_t c0, int64_t c1) {
  ForChannelVectors(c0, c1, [&](auto d, size_t ch) HWY_ATTR { FinalizeBackwardLanes(d, f, ch); });
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "dispatch.h"

namespace bnorm {

HWY_EXPORT(FinalizeForward);
HWY_EXPORT(FinalizeBackward);

void FinalizeForward(int64_t target, const ForwardFinalize& f, int64_t c0, int64_t c1) {
  BNORM_DISPATCH(FinalizeForward, target)(f, c0, c1);
}

void FinalizeBackward(int64_t target, const BackwardFinalize& f, int64_t c0, int64_t c1) {
  BNORM_DISPATCH(FinalizeBackward, target)(f, c0, c1);
}

}  // namespace bnorm
#endif  // HWY_ONCE
