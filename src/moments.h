// Mergeable per-channel statistics: count, mean and M2 (sum of squared
// deviations from the mean), merged with Chan et al.'s pairwise formula.
// Plain C++; used by the kernels (lane and block merges) and the drivers
// (merges across units), always in a fixed order for determinism.
#ifndef BNORM_SRC_MOMENTS_H_
#define BNORM_SRC_MOMENTS_H_

#include <cmath>

namespace bnorm {

struct Moments {
  double count = 0.0;
  double mean = 0.0;
  double m2 = 0.0;
};

inline bool Finite(const Moments& m) { return std::isfinite(m.mean) && std::isfinite(m.m2); }

// a <- a ∪ b. Exact in exact arithmetic; in floating point the delta^2 term is
// the only cross term, so no cancellation between large sums occurs. The term
// is delta * (delta * cross), not (delta * delta) * cross: when the square is
// subnormal (means given to bnorm_stats_merge may be anything), this order
// rounds it once, where the other would round it (an absolute error of up to
// half the smallest subnormal) and then multiply that error by cross, which
// grows with the counts.
inline void MergeMoments(Moments& a, const Moments& b) {
  if (b.count == 0.0) return;
  if (a.count == 0.0) {
    a = b;
    return;
  }
  const double count = a.count + b.count;
  const double delta = b.mean - a.mean;
  const double fraction_b = b.count / count;
  a.mean += delta * fraction_b;
  a.m2 += b.m2 + delta * (delta * (a.count * fraction_b));
  a.count = count;
}

// Row merge of width channels: out = a ∪ b, where every channel of a has
// count_a values and every channel of b count_b. The arithmetic of
// MergeMoments, channel by channel (the same bits), with the coefficients
// shared; out may be a's or b's arrays (each channel is read before it is
// written). Returns the merged count. Used by bnorm_stats_merge and
// libbnorm_mpi's reduction operator, so that both merge alike.
inline double MergeMomentsRow(double count_a, const double* mean_a, const double* m2_a,
                              double count_b, const double* mean_b, const double* m2_b,
                              long long width, double* mean_out, double* m2_out) {
  if (count_b == 0.0 || count_a == 0.0) {
    const bool take_a = count_b == 0.0;
    const double* mean = take_a ? mean_a : mean_b;
    const double* m2 = take_a ? m2_a : m2_b;
    if (mean != mean_out) {
      for (long long k = 0; k < width; ++k) mean_out[k] = mean[k];
    }
    if (m2 != m2_out) {
      for (long long k = 0; k < width; ++k) m2_out[k] = m2[k];
    }
    return take_a ? count_a : count_b;
  }
  const double count = count_a + count_b;
  const double fraction_b = count_b / count;
  const double cross = count_a * fraction_b;
  for (long long k = 0; k < width; ++k) {
    const double ma = mean_a[k], mb = mean_b[k];
    const double delta = mb - ma;
    const double m2 = m2_a[k] + (m2_b[k] + delta * (delta * cross));
    mean_out[k] = ma + delta * fraction_b;
    m2_out[k] = m2;
  }
  return count;
}

// Backward reductions: sum(dy) and sum(dy * (x - mean)).
struct GradSums {
  double sum_dy = 0.0;
  double sum_dy_xmu = 0.0;
};

inline bool Finite(const GradSums& g) {
  return std::isfinite(g.sum_dy) && std::isfinite(g.sum_dy_xmu);
}

}  // namespace bnorm

#endif  // BNORM_SRC_MOMENTS_H_
