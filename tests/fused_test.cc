// The fused entry points (residual add and ReLU) against the unfused calls
// composed by hand, under every target, in both layouts.
//
// In f32 the fused kernels round exactly where the composition does (the
// normalized value, then + z, then the ReLU; the backward's masked gradient
// is exactly representable), so the comparison is bitwise.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "test_support.h"

namespace bnorm_test {
namespace {

float Relu(float v) { return v < 0.0f ? 0.0f : v; }  // NaN stays NaN

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

void ExpectSameBits(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!SameBits(got[i], want[i]) && ++bad <= 5) {
      ADD_FAILURE() << "element " << i << ": " << got[i] << " vs " << want[i];
    }
  }
  EXPECT_EQ(bad, 0u);
}

class FusedTest : public testing::TestWithParam<TargetLayout> {
 protected:
  void SetUp() override { target_ = std::make_unique<ScopedTarget>(GetParam().target); }
  void TearDown() override { target_.reset(); }
  std::vector<Shape> Shapes() const {
    const bnorm_layout l = GetParam().layout;
    return {Shape{1, 1, 2, l},  Shape{3, 5, 7, l},   Shape{8, 16, 49, l}, Shape{17, 33, 1, l},
            Shape{2, 64, 257, l}, Shape{4, 3, 3001, l}, Shape{64, 24, 40, l}};
  }

 private:
  std::unique_ptr<ScopedTarget> target_;
};

// Offsets 0.5 and 1e4 (1e4 + N(0, 2): the statistics' shifted sums and the
// centred output pass) in the fused calls as in the plain ones.
TEST_P(FusedTest, ForwardTrainingEqualsTheComposition) {
  for (const Shape& s : Shapes()) {
    for (const double offset : {0.5, 1e4})
      for (bool with_z : {false, true}) {
        for (bnorm_activation act : {BNORM_ACT_NONE, BNORM_ACT_RELU}) {
          SCOPED_TRACE(s.Name() + (with_z ? " +z" : "") + (act ? " relu" : "") + " offset " +
                       std::to_string(offset));
          const size_t C = static_cast<size_t>(s.c);
          const auto x = NormalData(s, 1, offset, 2.0);
          const auto z = NormalData(s, 2, -0.5, 1.0);
          const auto gamma = UniformVector(C, 3, 0.5f, 2.0f), beta = UniformVector(C, 4, -1.f, 1.f);
          const bnorm_tensor_desc d = s.Desc();
          std::vector<float> yb(x.size()), rm(C, 0.f), rv(C, 1.f), sm(C), si(C);
          ASSERT_EQ(
              bnorm_forward_training(nullptr, &d, x.data(), yb.data(), gamma.data(), beta.data(),
                                     1e-5f, 0.1f, rm.data(), rv.data(), sm.data(), si.data()),
              BNORM_OK);
          std::vector<float> want(x.size());
          for (size_t e = 0; e < x.size(); ++e) {
            const float v = with_z ? yb[e] + z[e] : yb[e];
            want[e] = act == BNORM_ACT_RELU ? Relu(v) : v;
          }
          std::vector<float> y(x.size(), -7.f), rm2(C, 0.f), rv2(C, 1.f), sm2(C), si2(C);
          ASSERT_EQ(bnorm_forward_training_ex(nullptr, &d, x.data(), with_z ? z.data() : nullptr,
                                              y.data(), act, gamma.data(), beta.data(), 1e-5f, 0.1f,
                                              rm2.data(), rv2.data(), sm2.data(), si2.data()),
                    BNORM_OK);
          ExpectSameBits(y, want);
          EXPECT_EQ(rm2, rm);
          EXPECT_EQ(rv2, rv);
          EXPECT_EQ(sm2, sm);
          EXPECT_EQ(si2, si);
          if (with_z) {  // in place over the residual: y == z
            std::vector<float> zy = z;
            ASSERT_EQ(bnorm_forward_training_ex(nullptr, &d, x.data(), zy.data(), zy.data(), act,
                                                gamma.data(), beta.data(), 1e-5f, 0.1f, nullptr,
                                                nullptr, nullptr, nullptr),
                      BNORM_OK);
            ExpectSameBits(zy, want);
          }
        }
      }
  }
}

TEST_P(FusedTest, ForwardInferenceEqualsTheComposition) {
  for (const Shape& s : Shapes()) {
    for (bool with_z : {false, true}) {
      for (bnorm_activation act : {BNORM_ACT_NONE, BNORM_ACT_RELU}) {
        for (bool affine : {false, true}) {
          SCOPED_TRACE(s.Name() + (with_z ? " +z" : "") + (act ? " relu" : "") +
                       (affine ? " affine" : ""));
          const size_t C = static_cast<size_t>(s.c);
          const auto x = NormalData(s, 5, 0.0, 2.0);
          const auto z = NormalData(s, 6);
          const auto mean = UniformVector(C, 7, -1.f, 1.f), var = UniformVector(C, 8, 0.5f, 2.f);
          const auto gamma = UniformVector(C, 14, -2.f, 2.f),
                     beta = UniformVector(C, 15, -1.f, 1.f);
          const float* g = affine ? gamma.data() : nullptr;
          const float* b = affine ? beta.data() : nullptr;
          const float* zp = with_z ? z.data() : nullptr;
          const bnorm_tensor_desc d = s.Desc();
          std::vector<float> yb(x.size()), y(x.size(), -7.f), want(x.size());
          ASSERT_EQ(bnorm_forward_inference(nullptr, &d, x.data(), yb.data(), g, b, mean.data(),
                                            var.data(), 1e-5f),
                    BNORM_OK);
          for (size_t e = 0; e < x.size(); ++e) {
            const float v = with_z ? yb[e] + z[e] : yb[e];
            want[e] = act == BNORM_ACT_RELU ? Relu(v) : v;
          }
          ASSERT_EQ(bnorm_forward_inference_ex(nullptr, &d, x.data(), zp, y.data(), act, g, b,
                                               mean.data(), var.data(), 1e-5f),
                    BNORM_OK);
          // (Without z and activation this is the plain call itself, which
          // forward_test checks against the reference; the in-place form
          // below still differs.)
          ExpectSameBits(y, want);
          std::vector<float> xy = x;  // in place over x
          ASSERT_EQ(bnorm_forward_inference_ex(nullptr, &d, xy.data(), zp, xy.data(), act, g, b,
                                               mean.data(), var.data(), 1e-5f),
                    BNORM_OK);
          ExpectSameBits(xy, want);
          if (!with_z) continue;
          // z in place too (y over z), and z the same tensor as x.
          std::vector<float> zy = z;
          ASSERT_EQ(bnorm_forward_inference_ex(nullptr, &d, x.data(), zy.data(), zy.data(), act, g,
                                               b, mean.data(), var.data(), 1e-5f),
                    BNORM_OK);
          ExpectSameBits(zy, want);
          std::vector<float> y_xx(x.size()), want_xx(x.size());
          for (size_t e = 0; e < x.size(); ++e) {
            const float v = yb[e] + x[e];
            want_xx[e] = act == BNORM_ACT_RELU ? Relu(v) : v;
          }
          ASSERT_EQ(bnorm_forward_inference_ex(nullptr, &d, x.data(), x.data(), y_xx.data(), act, g,
                                               b, mean.data(), var.data(), 1e-5f),
                    BNORM_OK);
          ExpectSameBits(y_xx, want_xx);
        }
      }
    }
  }
}

TEST_P(FusedTest, BackwardEqualsTheComposition) {
  for (const Shape& s : Shapes()) {
    for (const double offset : {0.5, 1e4})
      for (bnorm_activation act : {BNORM_ACT_NONE, BNORM_ACT_RELU}) {
        SCOPED_TRACE(s.Name() + (act ? " relu" : "") + " offset " + std::to_string(offset));
        const size_t C = static_cast<size_t>(s.c);
        const auto x = NormalData(s, 9, offset, 2.0);
        const auto dy = NormalData(s, 10, 0.0, 1.0, 0.0);
        const auto gamma = UniformVector(C, 11, 0.5f, 2.0f), beta = UniformVector(C, 12, -1.f, 1.f);
        const bnorm_tensor_desc d = s.Desc();
        std::vector<float> y(x.size()), sm(C), si(C);
        ASSERT_EQ(bnorm_forward_training_ex(nullptr, &d, x.data(), nullptr, y.data(),
                                            BNORM_ACT_RELU, gamma.data(), beta.data(), 1e-5f, 0.1f,
                                            nullptr, nullptr, sm.data(), si.data()),
                  BNORM_OK);
        // The composition: mask dy by hand, then the plain backward.
        std::vector<float> g = dy;
        if (act == BNORM_ACT_RELU) {
          for (size_t e = 0; e < g.size(); ++e) g[e] = y[e] <= 0.0f ? 0.0f : dy[e];
        }
        std::vector<float> dx_want(x.size()), dg_want(C), db_want(C);
        ASSERT_EQ(bnorm_backward(nullptr, &d, x.data(), g.data(), dx_want.data(), gamma.data(),
                                 sm.data(), si.data(), dg_want.data(), db_want.data()),
                  BNORM_OK);
        std::vector<float> dx(x.size(), -7.f), dz(x.size(), -7.f), dg(C), db(C);
        ASSERT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), y.data(), dy.data(), dx.data(),
                                    dz.data(), act, gamma.data(), beta.data(), sm.data(), si.data(),
                                    dg.data(), db.data()),
                  BNORM_OK);
        ExpectSameBits(dx, dx_want);
        ExpectSameBits(dz, g);
        EXPECT_EQ(dg, dg_want);
        EXPECT_EQ(db, db_want);
        // dz only, and dz in place over dy.
        std::vector<float> dz2(x.size(), -7.f), dg2(C);
        ASSERT_EQ(
            bnorm_backward_ex(nullptr, &d, x.data(), y.data(), dy.data(), nullptr, dz2.data(), act,
                              gamma.data(), nullptr, sm.data(), si.data(), dg2.data(), nullptr),
            BNORM_OK);
        ExpectSameBits(dz2, g);
        EXPECT_EQ(dg2, dg_want);
        std::vector<float> inplace = dy, dx3(x.size());
        ASSERT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), y.data(), inplace.data(), dx3.data(),
                                    inplace.data(), act, gamma.data(), nullptr, sm.data(),
                                    si.data(), nullptr, nullptr),
                  BNORM_OK);
        ExpectSameBits(inplace, g);
        ExpectSameBits(dx3, dx_want);
        // dx in place over dy, no dz.
        std::vector<float> inplace_dx = dy;
        ASSERT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), y.data(), inplace_dx.data(),
                                    inplace_dx.data(), nullptr, act, gamma.data(), nullptr,
                                    sm.data(), si.data(), nullptr, nullptr),
                  BNORM_OK);
        ExpectSameBits(inplace_dx, dx_want);
      }
  }
}

// The ReLU backward's mask as bnorm.h states it: g = 0 where y <= 0 (both
// zeros), dy elsewhere, so a NaN y and the smallest positive denormal pass
// dy; mixed within every vector, y not the forward's output.
TEST_P(FusedTest, BackwardMaskFollowsTheHeader) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float tiny = std::numeric_limits<float>::denorm_min();
  const std::vector<float> ys = {nan, 0.0f, -0.0f, tiny, -tiny, 1.0f, -1.0f, -nan, 3.0f};
  for (const Shape& s : Shapes()) {
    SCOPED_TRACE(s.Name());
    const size_t C = static_cast<size_t>(s.c);
    const auto x = NormalData(s, 21, 0.5, 2.0);
    const auto dy = NormalData(s, 22);
    std::vector<float> y(x.size()), g(x.size());
    for (size_t e = 0; e < x.size(); ++e) {
      y[e] = ys[(e * 7 + e / 5) % ys.size()];
      g[e] = y[e] <= 0.0f ? 0.0f : dy[e];
    }
    const auto gamma = UniformVector(C, 23, 0.5f, 2.0f);
    const auto mean = UniformVector(C, 24, 0.0f, 1.0f), invstd = UniformVector(C, 25, 0.5f, 2.0f);
    const bnorm_tensor_desc d = s.Desc();
    std::vector<float> dx_want(x.size()), dg_want(C), db_want(C);
    ASSERT_EQ(bnorm_backward(nullptr, &d, x.data(), g.data(), dx_want.data(), gamma.data(),
                             mean.data(), invstd.data(), dg_want.data(), db_want.data()),
              BNORM_OK);
    std::vector<float> dx(x.size(), -7.f), dz(x.size(), -7.f), dg(C), db(C);
    ASSERT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), y.data(), dy.data(), dx.data(), dz.data(),
                                BNORM_ACT_RELU, gamma.data(), nullptr, mean.data(), invstd.data(),
                                dg.data(), db.data()),
              BNORM_OK);
    ExpectSameBits(dz, g);
    ExpectSameBits(dx, dx_want);
    EXPECT_EQ(dg, dg_want);
    EXPECT_EQ(db, db_want);
  }
}

TEST_P(FusedTest, ReluKeepsNaN) {
  const Shape s{3, 2, 10, GetParam().layout};
  auto x = NormalData(s, 13);
  x[static_cast<size_t>(s.Index(1, 0, 4))] = std::numeric_limits<float>::quiet_NaN();
  const bnorm_tensor_desc d = s.Desc();
  std::vector<float> y(x.size());
  ASSERT_EQ(bnorm_forward_training_ex(nullptr, &d, x.data(), nullptr, y.data(), BNORM_ACT_RELU,
                                      nullptr, nullptr, 1e-5f, 0.1f, nullptr, nullptr, nullptr,
                                      nullptr),
            BNORM_OK);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t sp = 0; sp < s.spatial; ++sp) {
      EXPECT_TRUE(std::isnan(y[static_cast<size_t>(s.Index(i, 0, sp))]));
      EXPECT_GE(y[static_cast<size_t>(s.Index(i, 1, sp))], 0.0f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, FusedTest, testing::ValuesIn(TargetLayoutGrid()),
                         TargetLayoutName);

// Bad arguments of the fused functions: a status, and nothing written.
TEST(FusedValidation, BadArgumentsChangeNothing) {
  const Shape s{2, 3, 8, BNORM_LAYOUT_NCHW};
  const bnorm_tensor_desc d = s.Desc();
  const size_t E = static_cast<size_t>(s.Elements());
  std::vector<float> x(E, 1.f), z(E, 2.f), y(E, 7.f), dy(E, 1.f), dx(E, 7.f), dz(E, 7.f),
      m(3, 0.f), is(3, 1.f), v(3, 1.f);
  std::vector<float> big(2 * E, 7.f);
  // (Activations out of the enum's range: tests/consumer/main.c, in C.)
  // y overlapping z other than exactly.
  EXPECT_EQ(bnorm_forward_training_ex(nullptr, &d, x.data(), big.data(), big.data() + 1,
                                      BNORM_ACT_RELU, nullptr, nullptr, 1e-5f, 0.1f, nullptr,
                                      nullptr, nullptr, nullptr),
            BNORM_ERR_ALIAS);
  for (float f : y) EXPECT_EQ(f, 7.f);
  for (float f : big) EXPECT_EQ(f, 7.f);
  // ReLU backward needs y; dx and dz must not overlap.
  EXPECT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), nullptr, dy.data(), dx.data(), dz.data(),
                              BNORM_ACT_RELU, nullptr, nullptr, m.data(), is.data(), nullptr,
                              nullptr),
            BNORM_ERR_NULL_POINTER);
  EXPECT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), y.data(), dy.data(), dx.data(), dx.data(),
                              BNORM_ACT_RELU, nullptr, nullptr, m.data(), is.data(), nullptr,
                              nullptr),
            BNORM_ERR_ALIAS);
  EXPECT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), y.data(), dy.data(), dx.data(), x.data(),
                              BNORM_ACT_NONE, nullptr, nullptr, m.data(), is.data(), nullptr,
                              nullptr),
            BNORM_ERR_ALIAS);  // dz over x
  for (float f : dx) EXPECT_EQ(f, 7.f);
  for (float f : dz) EXPECT_EQ(f, 7.f);
  // Without an activation y is ignored (may be NULL): dz is dy.
  ASSERT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), nullptr, dy.data(), nullptr, dz.data(),
                              BNORM_ACT_NONE, nullptr, nullptr, m.data(), is.data(), nullptr,
                              nullptr),
            BNORM_OK);
  EXPECT_EQ(dz, dy);
}

}  // namespace
}  // namespace bnorm_test
