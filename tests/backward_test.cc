// Backward (training and frozen) against the long-double reference, for every
// target and test shape, with every optional output on and off and in place.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cases.h"
#include "test_support.h"

namespace bnorm_test {
namespace {

class BackwardTest : public testing::TestWithParam<TargetShape> {};

void CheckBackward(const Shape& s, bool frozen) {
  const size_t C = static_cast<size_t>(s.c);
  const auto x = NormalData(s, 11, 2.0, 1.5);
  const auto dy = NormalData(s, 12, 0.25, 1.0, 0.0);
  const auto gamma = UniformVector(C, 13, -2.0f, 2.0f);
  std::vector<float> mean, invstd;
  ReferenceSaved(s, x, 1e-5f, &mean, &invstd);
  // Statistics other than the batch's (0.3 standard deviations off, invstd
  // 10 % up), as frozen running statistics or another batch's saved ones
  // are: a backward that recomputed the batch's mean or variance instead of
  // using the ones given would pass with the batch's own.
  for (size_t c = 0; c < C; ++c) {
    mean[c] += 0.3f / invstd[c];
    invstd[c] *= 1.1f;
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
      if (mode == 1) {
        for (size_t c = 0; c < C; ++c) {
          ASSERT_EQ(dgamma[c], -7.0f);
          ASSERT_EQ(dbeta[c], -7.0f);
        }
        ExpectBackwardNear(ref, invstd, dx, {}, {});
      } else if (mode == 2) {
        ExpectBackwardNear(ref, invstd, {}, dgamma, dbeta);
        for (float v : dx) ASSERT_EQ(v, -7.0f);
        EXPECT_EQ(Bytes(dy_buf), Bytes(dy));
      } else {
        ExpectBackwardNear(ref, invstd, dx, dgamma, dbeta);
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
