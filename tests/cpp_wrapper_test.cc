// The C++ wrapper (bnorm.hpp): same results as the C API, errors as
// bnorm::Error with the status, size checks before any call, RAII contexts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
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

// The split-statistics wrappers: a batch in two parts (one of them empty
// too) gives the whole batch's per-channel outputs, and one part gives the
// fused call's bits.
TEST(CppWrapper, SplitStatistics) {
  const Shape s{5, 3, 40, BNORM_LAYOUT_NCHW};
  const size_t C = 3, per_image = C * 40;
  const auto x = NormalData(s, 11, 1e3, 2.0);
  const auto dy = NormalData(s, 12);
  const auto gamma = UniformVector(C, 13, 0.5f, 2.0f), beta = UniformVector(C, 14, -1.0f, 1.0f);
  bnorm::Context ctx(2);
  const bnorm::Desc whole(s.n, s.c, s.spatial);
  std::vector<float> y(x.size()), rm(C, 0.0f), rv(C, 1.0f), sm(C), si(C);
  bnorm::forward_training(ctx, whole, x, y, {gamma, beta}, 1e-5f, 0.1f, {rm, rv}, {sm, si});

  // One part: bitwise the fused call.
  std::vector<float> y1(x.size()), rm1(C, 0.0f), rv1(C, 1.0f), sm1(C), si1(C);
  const bnorm::Statistics one = bnorm::merge({bnorm::stats(ctx, whole, x)});
  EXPECT_EQ(one.count, s.Values());
  bnorm::forward_apply(ctx, whole, x, y1, {gamma, beta}, one, 1e-5f, 0.1f, {rm1, rv1}, {sm1, si1});
  EXPECT_EQ(y1, y);
  EXPECT_EQ(sm1, sm);
  EXPECT_EQ(si1, si);
  EXPECT_EQ(rv1, rv);

  // Parts of 2, 0 and 3 images.
  const bnorm::Desc a(2, s.c, s.spatial), empty(0, s.c, s.spatial), b(3, s.c, s.spatial);
  const float* xb = x.data() + 2 * per_image;
  const bnorm::Statistics total = bnorm::merge(
      {bnorm::stats(ctx, a, x.data()), bnorm::stats(ctx, empty, nullptr), bnorm::stats(ctx, b, xb)});
  EXPECT_EQ(total.count, s.Values());
  std::vector<float> yp(x.size()), smp(C), sip(C);
  bnorm::forward_apply(ctx, a, x.data(), yp.data(), {gamma, beta}, total, 1e-5f, 0.1f, {},
                       {smp, sip});
  bnorm::forward_apply(ctx, b, xb, yp.data() + 2 * per_image, {gamma, beta}, total, 1e-5f, 0.1f);
  for (size_t ch = 0; ch < C; ++ch) {
    EXPECT_NEAR(smp[ch], sm[ch], 1e-6 * std::abs(sm[ch]));
    EXPECT_NEAR(sip[ch], si[ch], 1e-5 * si[ch]);
  }
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(yp[i], y[i], 1e-4) << i;

  // Backward in the same parts; sums added in double.
  std::vector<float> dx(x.size()), dg(C), db(C);
  bnorm::backward(ctx, whole, x, dy, dx, gamma, {sm, si}, {dg, db});
  bnorm::GradientSums sums = bnorm::backward_reduce(ctx, a, x.data(), dy.data(), sm);
  const bnorm::GradientSums sums_b =
      bnorm::backward_reduce(ctx, b, xb, dy.data() + 2 * per_image, sm);
  for (size_t ch = 0; ch < C; ++ch) {
    sums.sum_dy[ch] += sums_b.sum_dy[ch];
    sums.sum_dy_xmu[ch] += sums_b.sum_dy_xmu[ch];
  }
  std::vector<float> dxp(x.size()), dgp(C), dbp(C);
  bnorm::backward_apply(ctx, a, x.data(), dy.data(), dxp.data(), gamma, {sm, si}, s.Values(),
                        sums, {dgp, dbp});
  bnorm::backward_apply(ctx, b, xb, dy.data() + 2 * per_image, dxp.data() + 2 * per_image, gamma,
                        {sm, si}, s.Values(), sums);
  for (size_t ch = 0; ch < C; ++ch) {
    EXPECT_NEAR(dgp[ch], dg[ch], 1e-4 * (1.0 + std::abs(dg[ch])));
    EXPECT_NEAR(dbp[ch], db[ch], 1e-4 * (1.0 + std::abs(db[ch])));
  }
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(dxp[i], dx[i], 1e-5) << i;

  // Errors carry their status.
  try {
    bnorm::forward_apply(ctx, a, x.data(), yp.data(), {gamma, beta}, bnorm::Statistics{1, {0, 0, 0}, {0, 0, 0}},
                         1e-5f, 0.1f);
    ADD_FAILURE() << "no error";
  } catch (const bnorm::Error& e) {
    EXPECT_EQ(e.status(), BNORM_ERR_BAD_ARGUMENT);  // total count below this part's
  }
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

// Arguments that would write into const data, or keep the address of a
// temporary vector past the end of the full expression, do not compile.
using FloatVec = std::vector<float>;
static_assert(std::is_constructible<bnorm::Channels, const FloatVec&>::value, "input, const");
static_assert(std::is_constructible<bnorm::Channels, FloatVec&>::value, "input, non-const");
static_assert(!std::is_constructible<bnorm::Channels, FloatVec&&>::value, "temporary");
static_assert(!std::is_constructible<bnorm::Channels, const FloatVec&&>::value, "temporary");
static_assert(!std::is_constructible<bnorm::Channels, std::vector<double>&>::value, "not float");
static_assert(std::is_constructible<bnorm::ChannelsOut, FloatVec&>::value, "output");
static_assert(!std::is_constructible<bnorm::ChannelsOut, const FloatVec&>::value, "const output");
static_assert(!std::is_constructible<bnorm::ChannelsOut, const float*>::value, "const output");
static_assert(!std::is_constructible<bnorm::ChannelsOut, FloatVec&&>::value, "temporary");
static_assert(std::is_constructible<bnorm::Buffer, const FloatVec&>::value, "input, const");
static_assert(std::is_constructible<bnorm::Buffer, const std::vector<uint16_t>&>::value, "16-bit");
static_assert(!std::is_constructible<bnorm::Buffer, FloatVec&&>::value, "temporary");
static_assert(!std::is_constructible<bnorm::Buffer, const FloatVec&&>::value, "temporary");
static_assert(std::is_constructible<bnorm::BufferOut, FloatVec&>::value, "output");
static_assert(!std::is_constructible<bnorm::BufferOut, const FloatVec&>::value, "const output");
static_assert(!std::is_constructible<bnorm::BufferOut, const float*>::value, "const output");
static_assert(!std::is_constructible<bnorm::BufferOut, FloatVec&&>::value, "temporary");
struct Opaque;  // incomplete: a buffer of unknown element type, as void*
static_assert(std::is_constructible<bnorm::Buffer, const Opaque*>::value, "incomplete type");
static_assert(std::is_constructible<bnorm::BufferOut, Opaque*>::value, "incomplete type");
static_assert(std::is_constructible<bnorm::Buffer, const double*>::value,
              "typed: checked in calls");
static_assert(std::is_convertible<bnorm::ChannelsOut, bnorm::Channels>::value, "out reads as in");
static_assert(!std::is_convertible<bnorm::Channels, bnorm::ChannelsOut>::value, "in is not out");
static_assert(std::is_convertible<bnorm::Saved, bnorm::SavedIn>::value, "forward's to backward");

// Sizes no vector can hold are errors of the call, not overflow or
// std::length_error: the wrapper says what the C API would.
TEST(CppWrapper, HugeShapesAreErrorsNotOverflow) {
  const bnorm::Desc huge(int64_t{1} << 22, int64_t{1} << 21, int64_t{1} << 21);
  EXPECT_EQ(huge.elements(), -1);
  EXPECT_EQ(huge.bytes(), SIZE_MAX);
  EXPECT_EQ(bnorm::Desc(2, -3, 4).elements(), -1);
  std::vector<float> x(16, 1.0f), y(16, 7.0f);
  try {
    bnorm::forward_training(bnorm::Context::Default(), huge, x, y, {}, 1e-5f, 0.1f);
    FAIL() << "no exception";
  } catch (const bnorm::Error& e) {
    EXPECT_EQ(e.status(), BNORM_ERR_BAD_SHAPE);
  }
  for (float v : y) EXPECT_EQ(v, 7.0f);

  const std::vector<float> one(1, 1.0f);
  try {  // more channels than a vector can hold
    bnorm::fold(INT64_MAX / 2, {}, one, one, 1e-5f);
    FAIL() << "no exception";
  } catch (const bnorm::Error& e) {
    EXPECT_EQ(e.status(), BNORM_ERR_BAD_SHAPE);
  }
  try {
    bnorm::stats(bnorm::Context::Default(), bnorm::Desc(1, INT64_MAX / 2, 1), nullptr);
    FAIL() << "no exception";
  } catch (const bnorm::Error& e) {
    EXPECT_EQ(e.status(), BNORM_ERR_BAD_SHAPE);
  }
}

// An empty vector is a buffer of 0 bytes, not nullptr; a buffer whose
// element type has another size than the descriptor's dtype is refused.
TEST(CppWrapper, BuffersAreCheckedByTheirTypeAndSizeEvenWhenEmpty) {
  const bnorm::Desc desc(2, 3, 4);
  const bnorm::Context& ctx = bnorm::Context::Default();
  const std::vector<float> x(24, 1.5f), dy(24, 0.5f), mean(3, 1.5f), invstd(3, 1.0f);
  std::vector<float> y(24, 7.0f), z, dx, dz;  // z, dx, dz: forgotten resizes
  auto expect_status = [&](bnorm_status want, auto&& call) {
    try {
      call();
      ADD_FAILURE() << "no exception";
    } catch (const bnorm::Error& e) {
      EXPECT_EQ(e.status(), want) << e.what();
    }
  };
  expect_status(BNORM_ERR_BAD_SHAPE, [&] {
    bnorm::forward_training(ctx, desc, x, y, bnorm::Fused{z, BNORM_ACT_NONE}, {}, 1e-5f, 0.1f);
  });
  expect_status(BNORM_ERR_BAD_SHAPE, [&] {
    bnorm::backward(ctx, desc, x, dy, dx, nullptr, bnorm::SavedIn{mean, invstd});
  });
  expect_status(BNORM_ERR_BAD_SHAPE, [&] {
    bnorm::backward(ctx, desc, x, y, dy, nullptr, dz, BNORM_ACT_NONE, nullptr,
                    bnorm::SavedIn{mean, invstd});
  });
  // float data for a bf16 descriptor (enough bytes, wrong type), double for
  // f32, by vector and by typed pointer.
  const bnorm::Desc bf16(2, 3, 4, BNORM_LAYOUT_NCHW, BNORM_DTYPE_BF16);
  expect_status(BNORM_ERR_BAD_ARGUMENT,
                [&] { bnorm::forward_training(ctx, bf16, x, y, {}, 1e-5f, 0.1f); });
  const std::vector<double> xd(24, 1.0);
  expect_status(BNORM_ERR_BAD_ARGUMENT,
                [&] { bnorm::forward_training(ctx, desc, xd, y, {}, 1e-5f, 0.1f); });
  expect_status(BNORM_ERR_BAD_ARGUMENT,
                [&] { bnorm::forward_training(ctx, desc, xd.data(), y, {}, 1e-5f, 0.1f); });
  for (float v : y) EXPECT_EQ(v, 7.0f);
  // The right types pass: uint16_t for bf16, raw bytes (size checked) for f32,
  // an untyped pointer unchecked.
  const std::vector<uint16_t> x16(24, 0x3FC0);  // 1.5 in bf16
  std::vector<uint16_t> y16(24);
  bnorm::forward_training(ctx, bf16, x16, y16, {}, 1e-5f, 0.1f);
  EXPECT_EQ(y16, std::vector<uint16_t>(24, 0));
  std::vector<unsigned char> bytes(24 * sizeof(float));
  std::memcpy(bytes.data(), x.data(), bytes.size());
  bnorm::forward_training(ctx, desc, bytes, y, {}, 1e-5f, 0.1f);
  EXPECT_EQ(y, std::vector<float>(24, 0.0f));
  std::vector<unsigned char> short_bytes(24 * sizeof(float) - 1);
  expect_status(BNORM_ERR_BAD_SHAPE,
                [&] { bnorm::forward_training(ctx, desc, short_bytes, y, {}, 1e-5f, 0.1f); });
  bnorm::forward_training(ctx, desc, static_cast<const void*>(x.data()), y, {}, 1e-5f, 0.1f);
}

TEST(CppWrapper, ContextsMoveAndFoldWorks) {
  bnorm::Context a(1);
  bnorm::Context b = std::move(a);
  EXPECT_EQ(b.num_threads(), 1);
  // A moved-from context is refused, not silently the default one.
  EXPECT_EQ(a.num_threads(), -1);  // NOLINT(bugprone-use-after-move): on purpose
  const bnorm::Desc desc(2, 3, 4);
  const std::vector<float> x(24, 1.0f);
  std::vector<float> y(24, 7.0f);
  try {
    bnorm::forward_training(a, desc, x, y, {}, 1e-5f, 0.1f);  // NOLINT(bugprone-use-after-move)
    ADD_FAILURE() << "no exception";
  } catch (const bnorm::Error& e) {
    EXPECT_EQ(e.status(), BNORM_ERR_NULL_POINTER);
  }
  EXPECT_EQ(y, std::vector<float>(24, 7.0f));
  bnorm::Context c = std::move(b);
  b = std::move(c);  // assigned again: usable
  EXPECT_EQ(b.num_threads(), 1);
  bnorm::forward_training(b, desc, x, y, {}, 1e-5f, 0.1f);
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
