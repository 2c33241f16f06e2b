// The C++ wrapper (bnorm.hpp): same results as the C API, errors as
// bnorm::Error with the status, size checks before any call, RAII contexts.
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "bnorm/bnorm.hpp"
#include "test_support.h"

namespace bnorm_test {
namespace {

TEST(CppWrapper, SameResultsAsTheCApi) {
  const Shape s{4, 6, 50, BNORM_LAYOUT_NHWC};
  const size_t C = 6;
  const auto x = NormalData(s, 1, 2.0, 3.0);
  const auto gamma = UniformVector(C, 2, 0.5f, 2.0f), beta = UniformVector(C, 3, -1.0f, 1.0f);
  // C API.
  std::vector<float> y_c(x.size()), rm_c(C, 0.0f), rv_c(C, 1.0f), sm_c(C), si_c(C);
  const bnorm_tensor_desc d = s.Desc();
  ASSERT_EQ(bnorm_forward_training(nullptr, &d, x.data(), y_c.data(), gamma.data(), beta.data(),
                                   1e-5f, 0.1f, rm_c.data(), rv_c.data(), sm_c.data(),
                                   si_c.data()),
            BNORM_OK);
  // Wrapper, on its own context.
  bnorm::Context ctx(2);
  EXPECT_EQ(ctx.num_threads(), 2);
  const bnorm::Desc desc(s.n, s.c, s.spatial, s.layout);
  std::vector<float> y(x.size()), rm(C, 0.0f), rv(C, 1.0f), sm(C), si(C);
  bnorm::forward_training(ctx, desc, x, y, {gamma, beta}, 1e-5f, 0.1f, {rm, rv}, {sm, si});
  EXPECT_EQ(y, y_c);
  EXPECT_EQ(rm, rm_c);
  EXPECT_EQ(rv, rv_c);
  EXPECT_EQ(sm, sm_c);
  EXPECT_EQ(si, si_c);

  std::vector<float> yi(x.size()), yi_c(x.size());
  bnorm::forward_inference(bnorm::Context::Default(), desc, x, yi, {gamma, nullptr}, rm, rv,
                           1e-3f);
  ASSERT_EQ(bnorm_forward_inference(nullptr, &d, x.data(), yi_c.data(), gamma.data(), nullptr,
                                    rm.data(), rv.data(), 1e-3f),
            BNORM_OK);
  EXPECT_EQ(yi, yi_c);

  const auto dy = NormalData(s, 4);
  std::vector<float> dx(x.size()), dg(C), db(C), dx_c(x.size()), dg_c(C), db_c(C);
  bnorm::backward(ctx, desc, x, dy, dx, gamma, {sm, si}, {dg, db});
  ASSERT_EQ(bnorm_backward(nullptr, &d, x.data(), dy.data(), dx_c.data(), gamma.data(), sm.data(),
                           si.data(), dg_c.data(), db_c.data()),
            BNORM_OK);
  EXPECT_EQ(dx, dx_c);
  EXPECT_EQ(dg, dg_c);
  EXPECT_EQ(db, db_c);
  bnorm::backward_frozen(ctx, desc, x, dy, dx, nullptr, rm, si, {});
  ASSERT_EQ(bnorm_backward_frozen(nullptr, &d, x.data(), dy.data(), dx_c.data(), nullptr,
                                  rm.data(), si.data(), nullptr, nullptr),
            BNORM_OK);
  EXPECT_EQ(dx, dx_c);
}

TEST(CppWrapper, FusedVariants) {
  const Shape s{3, 4, 20, BNORM_LAYOUT_NCHW};
  const size_t C = 4;
  const auto x = NormalData(s, 5), z = NormalData(s, 6), dy = NormalData(s, 7);
  const bnorm::Desc desc(s.n, s.c, s.spatial);
  const bnorm_tensor_desc d = s.Desc();
  std::vector<float> y(x.size()), y_c(x.size()), sm(C), si(C), sm_c(C), si_c(C);
  bnorm::forward_training(bnorm::Context::Default(), desc, x, y, {z, BNORM_ACT_RELU}, {}, 1e-5f,
                          0.1f, {}, {sm, si});
  ASSERT_EQ(bnorm_forward_training_ex(nullptr, &d, x.data(), z.data(), y_c.data(), BNORM_ACT_RELU,
                                      nullptr, nullptr, 1e-5f, 0.1f, nullptr, nullptr,
                                      sm_c.data(), si_c.data()),
            BNORM_OK);
  EXPECT_EQ(y, y_c);
  std::vector<float> dx(x.size()), dz(x.size()), dx_c(x.size()), dz_c(x.size());
  bnorm::backward(bnorm::Context::Default(), desc, x, y, dy, dx, dz, BNORM_ACT_RELU, nullptr,
                  {sm, si});
  ASSERT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), y.data(), dy.data(), dx_c.data(),
                              dz_c.data(), BNORM_ACT_RELU, nullptr, nullptr, sm.data(), si.data(),
                              nullptr, nullptr),
            BNORM_OK);
  EXPECT_EQ(dx, dx_c);
  EXPECT_EQ(dz, dz_c);
  std::vector<float> yi(x.size()), yi_c(x.size());
  bnorm::forward_inference(bnorm::Context::Default(), desc, x, yi, {z, BNORM_ACT_NONE}, {}, sm,
                           si, 0.0f);
  ASSERT_EQ(bnorm_forward_inference_ex(nullptr, &d, x.data(), z.data(), yi_c.data(),
                                       BNORM_ACT_NONE, nullptr, nullptr, sm.data(), si.data(),
                                       0.0f),
            BNORM_OK);
  EXPECT_EQ(yi, yi_c);
}

TEST(CppWrapper, ErrorsCarryTheStatusAndWriteNothing) {
  const bnorm::Desc desc(2, 3, 4);
  std::vector<float> x(24, 1.0f), y(24, 7.0f), short_y(23, 7.0f), gamma(2, 1.0f);
  try {
    bnorm::forward_training(bnorm::Context::Default(), desc, x, short_y, {}, 1e-5f, 0.1f);
    FAIL() << "no exception";
  } catch (const bnorm::Error& e) {
    EXPECT_EQ(e.status(), BNORM_ERR_BAD_SHAPE);
  }
  try {  // gamma shorter than c
    bnorm::forward_training(bnorm::Context::Default(), desc, x, y, {gamma, nullptr}, 1e-5f, 0.1f);
    FAIL() << "no exception";
  } catch (const bnorm::Error& e) {
    EXPECT_EQ(e.status(), BNORM_ERR_BAD_SHAPE);
  }
  try {
    bnorm::forward_training(bnorm::Context::Default(), desc, x, y, {}, -1.0f, 0.1f);
    FAIL() << "no exception";
  } catch (const bnorm::Error& e) {
    EXPECT_EQ(e.status(), BNORM_ERR_BAD_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("bnorm_forward_training"), std::string::npos);
  }
  for (float v : y) EXPECT_EQ(v, 7.0f);
  for (float v : short_y) EXPECT_EQ(v, 7.0f);
  EXPECT_THROW(bnorm::Context(-1), bnorm::Error);
}

TEST(CppWrapper, ContextsMoveAndFoldWorks) {
  bnorm::Context a(1);
  bnorm::Context b = std::move(a);
  EXPECT_EQ(b.num_threads(), 1);
  a = bnorm::Context(3);
  EXPECT_EQ(a.num_threads(), 3);

  const std::vector<float> mean = {1.0f, -2.0f}, var = {4.0f, 0.25f}, gamma = {2.0f, 1.0f};
  const auto [scale, shift] = bnorm::fold(2, {gamma, nullptr}, mean, var, 0.0f);
  EXPECT_EQ(scale, (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(shift, (std::vector<float>{-1.0f, 4.0f}));
  std::vector<float> w = {1, 2, 3, 4, 5, 6}, bias;  // OI: 2 outputs x 3 inputs, no bias
  bnorm::fold_into_weights(BNORM_WEIGHTS_OI, 2, w, bias, {gamma, nullptr}, mean, var, 0.0f);
  EXPECT_EQ(w, (std::vector<float>{1, 2, 3, 8, 10, 12}));
  EXPECT_EQ(bias, (std::vector<float>{-1.0f, 4.0f}));
  std::vector<float> bad_bias(3);
  EXPECT_THROW(bnorm::fold_into_weights(BNORM_WEIGHTS_OI, 2, w, bad_bias, {}, mean, var, 0.0f),
               bnorm::Error);
}

}  // namespace
}  // namespace bnorm_test
