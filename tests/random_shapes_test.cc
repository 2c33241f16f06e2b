// Randomized shapes, layouts, targets, contexts and offsets (fixed seed, so
// reproducible) against the long-double reference: the grid in cases.h covers
// the shapes we thought of, this covers the ones we did not (it found the
// single-value-pivot drift).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "test_support.h"

namespace bnorm_test {
namespace {

TEST(RandomShapes, TrainingAndBackwardMatchTheReference) {
  std::mt19937_64 rng(20261124);
  bnorm_context* contexts[3] = {nullptr, nullptr, nullptr};
  for (int k = 0; k < 3; ++k)
    ASSERT_EQ(bnorm_context_create(k == 0 ? 1 : 2 * k + 1, &contexts[k]), BNORM_OK);
  const std::vector<std::string> targets = TargetNames();
  int checked = 0;
  while (checked < 300) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 9);
    const int64_t c = 1 + static_cast<int64_t>(rng() % (rng() % 4 == 0 ? 2100 : 40));
    const int64_t spatial = 1 + static_cast<int64_t>(rng() % (rng() % 3 == 0 ? 3000 : 60));
    if (n * spatial < 2 || n * c * spatial > 400000) continue;
    const Shape s{n, c, spatial, rng() % 2 == 0 ? BNORM_LAYOUT_NCHW : BNORM_LAYOUT_NHWC};
    const std::string& target = targets[rng() % targets.size()];
    const double offset = static_cast<double>(rng() % 3) * 1000.0;
    SCOPED_TRACE(testing::Message() << s.Name() << " " << target << " offset " << offset);
    ScopedTarget scoped(target);
    const bnorm_context* ctx = contexts[rng() % 3];
    const auto x = NormalData(s, rng(), offset, 1.0, 0.0);
    const auto dy = NormalData(s, rng(), 0.0, 1.0, 0.0);
    const size_t C = static_cast<size_t>(c);
    std::vector<float> y(x.size()), mean(C), invstd(C), dx(x.size()), dgamma(C), dbeta(C);
    const bnorm_tensor_desc d = s.Desc();
    ASSERT_EQ(bnorm_forward_training(ctx, &d, x.data(), y.data(), nullptr, nullptr, 1e-5f, 0.1f,
                                     nullptr, nullptr, mean.data(), invstd.data()),
              BNORM_OK);
    const auto ref = ReferenceStats(s, x);
    std::vector<LD> lmean(C), linv(C);
    for (size_t k = 0; k < C; ++k) {
      lmean[k] = ref[k].mean;
      linv[k] = RefInvstd(ref[k].var, 1e-5f);
      const LD sd = std::sqrt(ref[k].var);
      ASSERT_NEAR(mean[k], static_cast<double>(ref[k].mean),
                  1e-6 * static_cast<double>(std::fabs(ref[k].mean) + sd));
      ASSERT_NEAR(invstd[k], static_cast<double>(linv[k]), 1e-5 * static_cast<double>(linv[k]));
    }
    const auto y_ref = ReferenceNormalize(s, x, lmean, linv, nullptr, nullptr);
    for (size_t e = 0; e < x.size(); ++e) {
      ASSERT_NEAR(y[e], static_cast<double>(y_ref[e]),
                  5e-6 * static_cast<double>(std::fabs(y_ref[e]) + 1));
    }
    ASSERT_EQ(bnorm_backward(ctx, &d, x.data(), dy.data(), dx.data(), nullptr, mean.data(),
                             invstd.data(), dgamma.data(), dbeta.data()),
              BNORM_OK);
    const RefBackward rb = ReferenceBackward(s, false, x, dy, nullptr, mean, invstd);
    for (size_t k = 0; k < C; ++k) {
      ASSERT_NEAR(dbeta[k], static_cast<double>(rb.dbeta[k]),
                  1e-5 * static_cast<double>(rb.sum_abs_dy[k]));
    }
    for (size_t e = 0; e < x.size(); ++e) {
      ASSERT_NEAR(dx[e], static_cast<double>(rb.dx[e]),
                  2e-5 * static_cast<double>(rb.dx_scale[e]) + 1e-30);
    }
    ++checked;
  }
  for (bnorm_context* ctx : contexts) bnorm_context_destroy(ctx);
}

}  // namespace
}  // namespace bnorm_test
