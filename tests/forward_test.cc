// Forward training and inference against the long-double reference, for every
// target this CPU runs and every test shape, with and without the optional
// arguments, out of place and in place.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cases.h"
#include "test_support.h"

namespace bnorm_test {
namespace {

// Error bounds (u = 2^-24 ≈ 6e-8):
//  - mean: the shifted block sums give the mean to a few u of the standard deviation
//    and the output is rounded to float: 1e-6 * (|mean| + std) (the bar).
//  - variance: relative 1e-5 (the bar); invstd then within 5e-6 + u.
//  - y: the error of mean and invstd above, scaled by |gamma| and |y - beta|,
//    plus a few roundings of y itself.
constexpr double kMeanTol = 1e-6;
constexpr double kVarTol = 1e-5;
// invstd = 1/sqrt(var + eps): half the variance's relative error, plus the
// rounding of the result to float.
constexpr double kInvstdTol = kVarTol / 2 + 6e-8;

double YTolerance(LD y_ref, LD beta, LD gamma) {
  return 4e-6 * static_cast<double>(std::fabs(y_ref - beta) + std::fabs(gamma)) +
         2.5e-7 * static_cast<double>(std::fabs(y_ref));
}

class ForwardTest : public testing::TestWithParam<TargetShape> {};

TEST_P(ForwardTest, TrainingMatchesReference) {
  const Shape s = GetParam().shape;
  ScopedTarget target(GetParam().target);
  const auto x = NormalData(s, 1234, /*offset=*/3.0, /*scale=*/2.0);
  const auto ref = ReferenceStats(s, x);
  const size_t C = static_cast<size_t>(s.c);
  // gamma of both signs, and an exact zero (y is then beta).
  auto gamma = UniformVector(C, 5, -2.0f, 2.0f);
  gamma[0] = 0.0f;
  const auto beta = UniformVector(C, 6, -1.0f, 1.0f);
  const auto rm0 = UniformVector(C, 7, -1.0f, 1.0f);
  const auto rv0 = UniformVector(C, 8, 0.5f, 2.0f);
  const float eps = 1e-5f, momentum = 0.1f;
  const bnorm_tensor_desc desc = s.Desc();
  const LD m = static_cast<LD>(s.Values());

  for (int affine = 0; affine < 2; ++affine) {
    for (int with_running = 0; with_running < 2; ++with_running) {
      for (int in_place = 0; in_place < 2; ++in_place) {
        SCOPED_TRACE(testing::Message() << "affine=" << affine << " running=" << with_running
                                        << " in_place=" << in_place);
        std::vector<float> y = in_place ? x : std::vector<float>(x.size(), -7.0f);
        std::vector<float> rm = rm0, rv = rv0, save_mean(C, -7.0f), save_invstd(C, -7.0f);
        const float* g = affine ? gamma.data() : nullptr;
        const float* b = affine ? beta.data() : nullptr;
        ASSERT_EQ(bnorm_forward_training(nullptr, &desc, in_place ? y.data() : x.data(), y.data(),
                                         g, b, eps, momentum, with_running ? rm.data() : nullptr,
                                         with_running ? rv.data() : nullptr, save_mean.data(),
                                         save_invstd.data()),
                  BNORM_OK);
        std::vector<LD> mean(C), invstd(C);
        for (size_t c = 0; c < C; ++c) {
          const LD std_dev = std::sqrt(ref[c].var);
          mean[c] = ref[c].mean;
          invstd[c] = RefInvstd(ref[c].var, eps);
          ASSERT_NEAR(save_mean[c], static_cast<double>(ref[c].mean),
                      kMeanTol * static_cast<double>(std::fabs(ref[c].mean) + std_dev))
              << "channel " << c;
          ASSERT_NEAR(save_invstd[c], static_cast<double>(invstd[c]),
                      kInvstdTol * static_cast<double>(invstd[c]))
              << "channel " << c;
          if (with_running) {
            const LD erm = (1 - static_cast<LD>(momentum)) * rm0[c] + momentum * ref[c].mean;
            const LD unbiased = ref[c].var * m / (m - 1);
            const LD erv = (1 - static_cast<LD>(momentum)) * rv0[c] + momentum * unbiased;
            ASSERT_NEAR(rm[c], static_cast<double>(erm),
                        kMeanTol * static_cast<double>(std::fabs(erm) + std_dev));
            ASSERT_NEAR(rv[c], static_cast<double>(erv), kVarTol * static_cast<double>(erv));
          } else {
            ASSERT_EQ(rm[c], rm0[c]);
            ASSERT_EQ(rv[c], rv0[c]);
          }
        }
        const auto y_ref = ReferenceNormalize(s, x, mean, invstd, g, b);
        for (int64_t i = 0; i < s.n; ++i) {
          for (int64_t ch = 0; ch < s.c; ++ch) {
            for (int64_t sp = 0; sp < s.spatial; ++sp) {
              const size_t e = static_cast<size_t>(s.Index(i, ch, sp));
              ASSERT_NEAR(y[e], static_cast<double>(y_ref[e]),
                          YTolerance(y_ref[e], At(b, ch, 0), At(g, ch, 1)))
                  << "element (" << i << "," << ch << "," << sp << ")";
            }
          }
        }
      }
    }
  }
}

TEST_P(ForwardTest, OptionalOutputsMayBeNull) {
  const Shape s = GetParam().shape;
  ScopedTarget target(GetParam().target);
  const auto x = NormalData(s, 99);
  std::vector<float> y_all(x.size()), y_none(x.size());
  std::vector<float> sm(static_cast<size_t>(s.c)), si(static_cast<size_t>(s.c));
  const bnorm_tensor_desc desc = s.Desc();
  ASSERT_EQ(bnorm_forward_training(nullptr, &desc, x.data(), y_all.data(), nullptr, nullptr, 1e-3f,
                                   0.5f, nullptr, nullptr, sm.data(), si.data()),
            BNORM_OK);
  ASSERT_EQ(bnorm_forward_training(nullptr, &desc, x.data(), y_none.data(), nullptr, nullptr, 1e-3f,
                                   0.5f, nullptr, nullptr, nullptr, nullptr),
            BNORM_OK);
  EXPECT_EQ(Bytes(y_all), Bytes(y_none));
}

TEST_P(ForwardTest, InferenceMatchesReference) {
  const Shape s = GetParam().shape;
  ScopedTarget target(GetParam().target);
  const size_t C = static_cast<size_t>(s.c);
  // Offset 1e4: data and statistics far from zero (1e4 + N(1, 3), means
  // 1e4 + [-1, 3]); the bound below holds there only if the output pass
  // centres x first, (x - mean) * scale + beta, and not as x * scale +
  // (beta - mean * scale), whose rounding of x * scale alone is ~6e-4 * scale.
  for (const float offset : {0.0f, 1e4f}) {
    const auto x = NormalData(s, 77, 1.0 + offset, 3.0);
    auto mean = UniformVector(C, 1, -1.0f, 3.0f);
    for (float& m : mean) m += offset;
    const auto var = UniformVector(C, 2, 0.25f, 9.0f);
    const auto gamma = UniformVector(C, 3, -2.0f, 2.0f);
    const auto beta = UniformVector(C, 4, -1.0f, 1.0f);
    const float eps = 1e-3f;
    const bnorm_tensor_desc desc = s.Desc();
    std::vector<LD> lmean(C), linv(C);
    for (size_t c = 0; c < C; ++c) {
      lmean[c] = mean[c];
      linv[c] = 1.0L / std::sqrt(static_cast<LD>(var[c]) + eps);
    }
    for (int affine = 0; affine < 2; ++affine) {
      for (int in_place = 0; in_place < 2; ++in_place) {
        SCOPED_TRACE(testing::Message()
                     << "offset=" << offset << " affine=" << affine << " in_place=" << in_place);
        const float* g = affine ? gamma.data() : nullptr;
        const float* b = affine ? beta.data() : nullptr;
        std::vector<float> y = in_place ? x : std::vector<float>(x.size(), -7.0f);
        ASSERT_EQ(bnorm_forward_inference(nullptr, &desc, in_place ? y.data() : x.data(), y.data(),
                                          g, b, mean.data(), var.data(), eps),
                  BNORM_OK);
        const auto y_ref = ReferenceNormalize(s, x, lmean, linv, g, b);
        // No statistics error here: x - mean (one rounding), scale (one rounding of
        // the exact value) and an FMA: |err| <= 3u|y - beta| + u|y|, u = 2^-24.
        for (int64_t i = 0; i < s.n; ++i) {
          for (int64_t ch = 0; ch < s.c; ++ch) {
            for (int64_t sp = 0; sp < s.spatial; ++sp) {
              const size_t e = static_cast<size_t>(s.Index(i, ch, sp));
              const LD centered = std::fabs(y_ref[e] - At(b, ch, 0));
              ASSERT_NEAR(
                  y[e], static_cast<double>(y_ref[e]),
                  static_cast<double>(1.8e-7L * centered + 6e-8L * std::fabs(y_ref[e])) + 1e-30)
                  << "element (" << i << "," << ch << "," << sp << ")";
            }
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, ForwardTest, testing::ValuesIn(TargetShapeGrid()),
                         TargetShapeName);

}  // namespace
}  // namespace bnorm_test
