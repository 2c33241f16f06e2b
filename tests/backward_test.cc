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

// The gradients against central differences of the forward pass itself, in
// long double: a check that does not share the reference's transcription of
// the header's dx formula. L(x, gamma, beta) = sum(dy * y), y the training
// forward (batch statistics, biased variance, eps) or the frozen one (mean
// and invstd fixed); then dL/dx = dx, dL/dgamma = dgamma, dL/dbeta = dbeta.
// Each is checked along a random direction v: sum(dx * v) against
// (L(x + h v) - L(x - h v)) / 2h. In long double, with h = 1e-4 of the
// data's scale, the truncation error is ~h^2 (1e-8 relative) and the
// rounding ~1e-15; bnorm's float gradients are good to ~1e-6 of the sum of
// the magnitudes of their terms.
LD LossOf(const Shape& s, bool frozen, const std::vector<LD>& x, const std::vector<float>& dy,
          const std::vector<LD>& gamma, const std::vector<LD>& beta,
          const std::vector<float>& frozen_mean, const std::vector<float>& frozen_invstd,
          float eps) {
  const size_t C = static_cast<size_t>(s.c);
  std::vector<LD> mean(C, 0), invstd(C, 0);
  const LD m = static_cast<LD>(s.Values());
  for (size_t c = 0; c < C; ++c) {
    if (frozen) {
      mean[c] = frozen_mean[c];
      invstd[c] = frozen_invstd[c];
      continue;
    }
    LD sum = 0, sq = 0;
    for (int64_t i = 0; i < s.n; ++i)
      for (int64_t sp = 0; sp < s.spatial; ++sp)
        sum += x[static_cast<size_t>(s.Index(i, static_cast<int64_t>(c), sp))];
    mean[c] = sum / m;
    for (int64_t i = 0; i < s.n; ++i)
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        const LD d = x[static_cast<size_t>(s.Index(i, static_cast<int64_t>(c), sp))] - mean[c];
        sq += d * d;
      }
    invstd[c] = 1 / std::sqrt(sq / m + static_cast<LD>(eps));
  }
  LD loss = 0;
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t ch = 0; ch < s.c; ++ch)
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        const size_t e = static_cast<size_t>(s.Index(i, ch, sp));
        const size_t c = static_cast<size_t>(ch);
        loss += dy[e] * ((x[e] - mean[c]) * invstd[c] * gamma[c] + beta[c]);
      }
  return loss;
}

TEST_P(BackwardTest, GradientsMatchCentralDifferencesOfTheForward) {
  ScopedTarget target(GetParam().target);
  const Shape s = GetParam().shape;
  if (s.Elements() > 4096) GTEST_SKIP() << "small shapes only (the loss is summed per probe)";
  const size_t C = static_cast<size_t>(s.c), E = static_cast<size_t>(s.Elements());
  const auto x = NormalData(s, 31, 2.0, 1.5);
  const auto dy = NormalData(s, 32, 0.25, 1.0, 0.0);
  const auto gamma = UniformVector(C, 33, -2.0f, 2.0f);
  const auto beta = UniformVector(C, 34, -1.0f, 1.0f);
  const auto v = NormalData(s, 35, 0.0, 1.0, 0.0);    // the direction for x
  const auto vc = UniformVector(C, 36, -1.0f, 1.0f);  // for gamma and beta
  const float eps = 1e-3f;
  const bnorm_tensor_desc desc = s.Desc();
  std::vector<float> y(E), save_mean(C), save_invstd(C);
  ASSERT_EQ(
      bnorm_forward_training(nullptr, &desc, x.data(), y.data(), gamma.data(), beta.data(), eps,
                             0.1f, nullptr, nullptr, save_mean.data(), save_invstd.data()),
      BNORM_OK);
  for (const bool frozen : {false, true}) {
    SCOPED_TRACE(frozen ? "frozen" : "training");
    std::vector<float> dx(E), dgamma(C), dbeta(C);
    ASSERT_EQ((frozen ? bnorm_backward_frozen : bnorm_backward)(
                  nullptr, &desc, x.data(), dy.data(), dx.data(), gamma.data(), save_mean.data(),
                  save_invstd.data(), dgamma.data(), dbeta.data()),
              BNORM_OK);
    // The training forward's derivative is taken at the data, with the batch
    // statistics recomputed for every probe; its gradient is bnorm's, whose
    // saved statistics are the float-rounded batch statistics.
    std::vector<LD> xl(x.begin(), x.end()), gl(gamma.begin(), gamma.end()),
        bl(beta.begin(), beta.end());
    const auto loss = [&](const std::vector<LD>& xs, const std::vector<LD>& gs,
                          const std::vector<LD>& bs) {
      return LossOf(s, frozen, xs, dy, gs, bs, save_mean, save_invstd, eps);
    };
    const auto central = [&](auto&& with_step) {
      const LD h = 1e-4L;
      return (with_step(h) - with_step(-h)) / (2 * h);
    };
    // x along v. dx is a difference of terms that can cancel (two values a
    // channel, whose normalized values barely move): the error scales with
    // the terms' magnitudes (the reference's dx_scale), not with dx.
    const RefBackward terms =
        ReferenceBackward(s, frozen, x, dy, gamma.data(), save_mean, save_invstd);
    LD dot = 0, mag = 0;
    for (size_t e = 0; e < E; ++e) {
      dot += static_cast<LD>(dx[e]) * v[e];
      mag += terms.dx_scale[e] * std::fabs(static_cast<LD>(v[e]));
    }
    const LD fd_x = central([&](LD h) {
      std::vector<LD> xs = xl;
      for (size_t e = 0; e < E; ++e) xs[e] += h * v[e];
      return loss(xs, gl, bl);
    });
    EXPECT_NEAR(static_cast<double>(dot), static_cast<double>(fd_x),
                static_cast<double>(2e-5L * mag + 1e-6L * std::fabs(fd_x)) + 1e-9);
    // gamma and beta along vc.
    LD dot_g = 0, mag_g = 0, dot_b = 0, mag_b = 0;
    for (size_t c = 0; c < C; ++c) {
      dot_g += static_cast<LD>(dgamma[c]) * vc[c];
      mag_g += std::fabs(static_cast<LD>(dgamma[c]) * vc[c]);
      dot_b += static_cast<LD>(dbeta[c]) * vc[c];
      mag_b += std::fabs(static_cast<LD>(dbeta[c]) * vc[c]);
    }
    const LD fd_g = central([&](LD h) {
      std::vector<LD> gs = gl;
      for (size_t c = 0; c < C; ++c) gs[c] += h * vc[c];
      return loss(xl, gs, bl);
    });
    const LD fd_b = central([&](LD h) {
      std::vector<LD> bs = bl;
      for (size_t c = 0; c < C; ++c) bs[c] += h * vc[c];
      return loss(xl, gl, bs);
    });
    // dgamma uses the float-rounded invstd (relative error ~6e-8 against the
    // long-double one the loss recomputes), hence the 1e-6 of its magnitude.
    EXPECT_NEAR(static_cast<double>(dot_g), static_cast<double>(fd_g),
                static_cast<double>(2e-5L * mag_g) + 1e-9);
    EXPECT_NEAR(static_cast<double>(dot_b), static_cast<double>(fd_b),
                static_cast<double>(1e-5L * mag_b) + 1e-9);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, BackwardTest, testing::ValuesIn(TargetShapeGrid()),
                         TargetShapeName);

}  // namespace
}  // namespace bnorm_test
