// Mergeable per-channel statistics: count, mean and M2 (sum of squared
// deviations from the mean), merged with Chan et al.'s pairwise formula.
// Plain C++; used by the kernels (lane and block merges) and the drivers
// (merges across units), always in a fixed order for determinism.
#ifndef BNORM_SRC_MOMENTS_H_
#define BNORM_SRC_MOMENTS_H_

namespace bnorm {

struct Moments {
  double count = 0.0;
  double mean = 0.0;
  double m2 = 0.0;
};

// a <- a ∪ b. Exact in exact arithmetic; in floating point the delta^2 term is
// the only cross term, so no cancellation between large sums occurs.
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
  a.m2 += b.m2 + delta * delta * (a.count * fraction_b);
  a.count = count;
}

// Backward reductions: sum(dy) and sum(dy * (x - mean)).
struct GradSums {
  double sum_dy = 0.0;
  double sum_dy_xmu = 0.0;
};

}  // namespace bnorm

#endif  // BNORM_SRC_MOMENTS_H_
