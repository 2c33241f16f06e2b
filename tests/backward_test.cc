// Backward (training and frozen) against the long-double reference, for every
// target and test shape, with every optional output on and off and in place.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cases.h"
#include "test_support.h"

namespace bnorm_test {
namespace {

// Reductions: float lanes sum at most 128 terms before folding into double, so
// the recursive-summation bound is 128u * sum|terms| (u = 2^-24) plus one
// rounding of each product: 1e-5 * sum|terms| covers it, plus the final
// rounding to float.
constexpr double kSumTol = 1e-5;
// dx: a few roundings of terms of size dx_scale, plus the sums' error carried
// through (already part of dx_scale).
constexpr double kDxTol = 2e-5;

class BackwardTest : public testing::TestWithParam<TargetShape> {};

void CheckBackward(const Shape& s, bool frozen) {
  const size_t C = static_cast<size_t>(s.c);
  const auto x = NormalData(s, 11, 2.0, 1.5);
  const auto dy = NormalData(s, 12, 0.25, 1.0, 0.0);
  const auto gamma = UniformVector(C, 13, -2.0f, 2.0f);
  const auto ref_stats = ReferenceStats(s, x);
  std::vector<float> mean(C), invstd(C);
  for (size_t c = 0; c < C; ++c) {
    mean[c] = static_cast<float>(ref_stats[c].mean);
    invstd[c] = static_cast<float>(RefInvstd(ref_stats[c].var, 1e-5f));
  }
  const bnorm_tensor_desc desc = s.Desc();
  for (int affine = 0; affine < 2; ++affine) {
    const float* g = affine ? gamma.data() : nullptr;
    const RefBackward ref = ReferenceBackward(s, frozen, x, dy, g, mean, invstd);
    // 0: all outputs; 1: dx only; 2: parameter gradients only; 3: dx in place.
    for (int mode = 0; mode < 4; ++mode) {
      SCOPED_TRACE(testing::Message()
                   << "frozen=" << frozen << " affine=" << affine << " mode=" << mode);
      std::vector<float> dy_buf = dy;
      std::vector<float> dx(x.size(), -7.0f), dgamma(C, -7.0f), dbeta(C, -7.0f);
      float* dx_ptr = mode == 2 ? nullptr : (mode == 3 ? dy_buf.data() : dx.data());
      float* dg_ptr = mode == 1 ? nullptr : dgamma.data();
      float* db_ptr = mode == 1 ? nullptr : dbeta.data();
      const bnorm_status st =
          frozen ? bnorm_backward_frozen(nullptr, &desc, x.data(), dy_buf.data(), dx_ptr, g,
                                         mean.data(), invstd.data(), dg_ptr, db_ptr)
                 : bnorm_backward(nullptr, &desc, x.data(), dy_buf.data(), dx_ptr, g, mean.data(),
                                  invstd.data(), dg_ptr, db_ptr);
      ASSERT_EQ(st, BNORM_OK);
      if (mode == 3) dx = dy_buf;
      for (size_t c = 0; c < C; ++c) {
        if (mode == 1) {
          ASSERT_EQ(dgamma[c], -7.0f);
          ASSERT_EQ(dbeta[c], -7.0f);
          continue;
        }
        ASSERT_NEAR(dbeta[c], static_cast<double>(ref.dbeta[c]),
                    kSumTol * static_cast<double>(ref.sum_abs_dy[c]))
            << "channel " << c;
        ASSERT_NEAR(dgamma[c], static_cast<double>(ref.dgamma[c]),
                    kSumTol * static_cast<double>(ref.sum_abs_dy_xmu[c] * invstd[c]))
            << "channel " << c;
      }
      if (mode == 2) {
        for (float v : dx) ASSERT_EQ(v, -7.0f);
        EXPECT_EQ(Bytes(dy_buf), Bytes(dy));
        continue;
      }
      for (size_t e = 0; e < x.size(); ++e) {
        ASSERT_NEAR(dx[e], static_cast<double>(ref.dx[e]),
                    kDxTol * static_cast<double>(ref.dx_scale[e]) + 1e-30)
            << "element " << e;
      }
    }
  }
}

TEST_P(BackwardTest, TrainingMatchesReference) {
  ScopedTarget target(GetParam().target);
  CheckBackward(GetParam().shape, /*frozen=*/false);
}

TEST_P(BackwardTest, FrozenMatchesReference) {
  ScopedTarget target(GetParam().target);
  CheckBackward(GetParam().shape, /*frozen=*/true);
}

INSTANTIATE_TEST_SUITE_P(AllTargets, BackwardTest, testing::ValuesIn(TargetShapeGrid()),
                         TargetShapeName);

}  // namespace
}  // namespace bnorm_test
