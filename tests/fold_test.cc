// Folding a frozen batch norm: scale/shift, and into the weights of the layer
// before it, checked by running that layer (a naive convolution or linear
// layer in double) with and without the fold.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "test_support.h"

namespace bnorm_test {
namespace {

struct Conv {
  int64_t o, i, kh, kw;
  int64_t PerOutput() const { return i * kh * kw; }
  int64_t Count() const { return o * PerOutput(); }
};

// Index of weight (o, i, h, w) in each layout.
int64_t WeightIndex(bnorm_weight_layout layout, const Conv& k, int64_t o, int64_t i, int64_t h,
                    int64_t w) {
  switch (layout) {
    case BNORM_WEIGHTS_OIHW:
    case BNORM_WEIGHTS_OI:
      return ((o * k.i + i) * k.kh + h) * k.kw + w;
    case BNORM_WEIGHTS_OHWI:
      return ((o * k.kh + h) * k.kw + w) * k.i + i;
    default:  // HWIO, IO
      return ((h * k.kw + w) * k.i + i) * k.o + o;
  }
}

// Valid convolution, stride 1, NCHW input (n, k.i, H, W) -> (n, k.o, H-kh+1, W-kw+1), in
// double, rounded to float.
std::vector<float> Convolve(const Conv& k, bnorm_weight_layout layout, const std::vector<float>& w,
                            const std::vector<float>& bias, const std::vector<float>& x,
                            int64_t n, int64_t H, int64_t W) {
  const int64_t oh = H - k.kh + 1, ow = W - k.kw + 1;
  std::vector<float> y(static_cast<size_t>(n * k.o * oh * ow));
  for (int64_t b = 0; b < n; ++b)
    for (int64_t o = 0; o < k.o; ++o)
      for (int64_t r = 0; r < oh; ++r)
        for (int64_t s = 0; s < ow; ++s) {
          double acc = bias[static_cast<size_t>(o)];
          for (int64_t i = 0; i < k.i; ++i)
            for (int64_t h = 0; h < k.kh; ++h)
              for (int64_t q = 0; q < k.kw; ++q) {
                acc += static_cast<double>(w[static_cast<size_t>(WeightIndex(layout, k, o, i, h, q))]) *
                       x[static_cast<size_t>(((b * k.i + i) * H + r + h) * W + s + q)];
              }
          y[static_cast<size_t>(((b * k.o + o) * oh + r) * ow + s)] = static_cast<float>(acc);
        }
  return y;
}

TEST(Fold, ScaleAndShiftAreTheInferenceAffine) {
  const int64_t c = 37;
  const auto gamma = UniformVector(c, 1, -2, 2), beta = UniformVector(c, 2, -1, 1);
  const auto mean = UniformVector(c, 3, -5, 5), var = UniformVector(c, 4, 0.01f, 9);
  std::vector<float> scale(c), shift(c);
  ASSERT_EQ(bnorm_fold(c, gamma.data(), beta.data(), mean.data(), var.data(), 1e-3f, scale.data(),
                       shift.data()),
            BNORM_OK);
  for (size_t ch = 0; ch < static_cast<size_t>(c); ++ch) {
    const double s = gamma[ch] / std::sqrt(static_cast<double>(var[ch]) + double{1e-3f});
    EXPECT_EQ(scale[ch], static_cast<float>(s));
    EXPECT_EQ(shift[ch], static_cast<float>(beta[ch] - mean[ch] * s));
  }
  // NULL gamma/beta mean 1 and 0.
  ASSERT_EQ(bnorm_fold(c, nullptr, nullptr, mean.data(), var.data(), 0.0f, scale.data(),
                       shift.data()),
            BNORM_OK);
  EXPECT_EQ(scale[3], static_cast<float>(1.0 / std::sqrt(static_cast<double>(var[3]))));
}

// conv -> BN (bnorm_forward_inference) equals the folded conv, for each layout.
TEST(Fold, FoldedLayerEqualsLayerThenBatchNorm) {
  const int64_t n = 2, H = 6, W = 7;
  for (const Conv k : {Conv{5, 3, 3, 2}, Conv{8, 16, 1, 1}, Conv{1, 1, 2, 2}}) {
    for (bnorm_weight_layout layout : {BNORM_WEIGHTS_OIHW, BNORM_WEIGHTS_OHWI, BNORM_WEIGHTS_OI,
                                       BNORM_WEIGHTS_HWIO, BNORM_WEIGHTS_IO}) {
      const bool linear = layout == BNORM_WEIGHTS_OI || layout == BNORM_WEIGHTS_IO;
      if (linear && (k.kh != 1 || k.kw != 1)) continue;  // [out, in] layouts: 1x1 only
      SCOPED_TRACE(testing::Message() << "layout " << layout << " o=" << k.o << " i=" << k.i);
      const size_t O = static_cast<size_t>(k.o);
      const auto w = UniformVector(static_cast<size_t>(k.Count()), 10, -1, 1);
      const auto bias = UniformVector(O, 11, -0.5f, 0.5f);
      const auto x = UniformVector(static_cast<size_t>(n * k.i * H * W), 12, -2, 2);
      const auto gamma = UniformVector(O, 13, 0.5f, 2), beta = UniformVector(O, 14, -1, 1);
      const auto mean = UniformVector(O, 15, -1, 1), var = UniformVector(O, 16, 0.1f, 3);
      const float eps = 1e-5f;
      // Reference: the layer, then batch norm through the library.
      const auto conv = Convolve(k, layout, w, bias, x, n, H, W);
      const int64_t spatial = (H - k.kh + 1) * (W - k.kw + 1);
      const bnorm_tensor_desc desc{n, k.o, spatial, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
      std::vector<float> ref(conv.size());
      ASSERT_EQ(bnorm_forward_inference(nullptr, &desc, conv.data(), ref.data(), gamma.data(),
                                        beta.data(), mean.data(), var.data(), eps),
                BNORM_OK);
      // Folded, once into new buffers and once in place.
      std::vector<float> wf(w.size()), bf(O);
      ASSERT_EQ(bnorm_fold_into_weights(layout, k.o, k.PerOutput(), w.data(), bias.data(),
                                        wf.data(), bf.data(), gamma.data(), beta.data(),
                                        mean.data(), var.data(), eps),
                BNORM_OK);
      std::vector<float> wi = w, bi = bias;
      ASSERT_EQ(bnorm_fold_into_weights(layout, k.o, k.PerOutput(), wi.data(), bi.data(),
                                        wi.data(), bi.data(), gamma.data(), beta.data(),
                                        mean.data(), var.data(), eps),
                BNORM_OK);
      EXPECT_EQ(wi, wf);
      EXPECT_EQ(bi, bf);
      const auto folded = Convolve(k, layout, wf, bf, x, n, H, W);
      // Both sides round the conv output and the folded weights to float:
      // a few u of the magnitudes involved.
      for (size_t e = 0; e < ref.size(); ++e) {
        const size_t o = static_cast<size_t>((static_cast<int64_t>(e) / spatial) % k.o);
        const double s = gamma[o] / std::sqrt(static_cast<double>(var[o]) + eps);
        const double magnitude = std::fabs(s) * (std::fabs(conv[e]) + std::fabs(mean[o]) +
                                                 static_cast<double>(k.PerOutput()) * 2) +
                                 std::fabs(beta[o]);
        EXPECT_NEAR(folded[e], ref[e], 1e-6 * magnitude) << "element " << e;
      }
      // A layer without bias.
      ASSERT_EQ(bnorm_fold_into_weights(layout, k.o, k.PerOutput(), w.data(), nullptr, wf.data(),
                                        bf.data(), gamma.data(), beta.data(), mean.data(),
                                        var.data(), eps),
                BNORM_OK);
      for (size_t o = 0; o < O; ++o) {
        const double s = gamma[o] / std::sqrt(static_cast<double>(var[o]) + eps);
        EXPECT_EQ(bf[o], static_cast<float>(beta[o] - mean[o] * s));
      }
    }
  }
}

// bias_out is (bias - mean) * scale + beta in double, rounded once, as
// bnorm.h documents: bit for bit on random inputs, and no cancellation where
// bias and mean are huge and equal.
TEST(Fold, BiasOutIsTheDocumentedFormula) {
  const int64_t O = 4096;
  const size_t N = static_cast<size_t>(O);
  auto bias = UniformVector(N, 21, -50, 50), mean = UniformVector(N, 22, -50, 50);
  auto gamma = UniformVector(N, 23, 0.5f, 2), beta = UniformVector(N, 24, -1, 1);
  auto var = UniformVector(N, 25, 0.1f, 3);
  bias[0] = mean[0] = 1e20f;
  beta[0] = 1.0f;
  bias[1] = mean[1] = -3e38f;
  beta[1] = -2.5f;
  const float eps = 1e-5f;
  std::vector<float> w(N, 1.0f), w_out(N), bias_out(N);
  ASSERT_EQ(bnorm_fold_into_weights(BNORM_WEIGHTS_OI, O, 1, w.data(), bias.data(), w_out.data(),
                                    bias_out.data(), gamma.data(), beta.data(), mean.data(),
                                    var.data(), eps),
            BNORM_OK);
  for (size_t o = 0; o < N; ++o) {
    const double scale = static_cast<double>(gamma[o]) /
                         std::sqrt(static_cast<double>(var[o]) + static_cast<double>(eps));
    const float expected =
        static_cast<float>((static_cast<double>(bias[o]) - static_cast<double>(mean[o])) * scale +
                           static_cast<double>(beta[o]));
    ASSERT_EQ(bias_out[o], expected) << "o=" << o;
  }
  EXPECT_EQ(bias_out[0], 1.0f);
  EXPECT_EQ(bias_out[1], -2.5f);
}

TEST(Fold, BadArgumentsChangeNothing) {
  const int64_t O = 4, P = 6;
  std::vector<float> w(O * P, 1.0f), b(O, 2.0f), wo(O * P, 7.0f), bo(O, 7.0f), m(O, 0.5f),
      v(O, 1.0f);
  const auto untouched = [&] {
    for (float f : wo) EXPECT_EQ(f, 7.0f);
    for (float f : bo) EXPECT_EQ(f, 7.0f);
  };
  const auto fold = [&](bnorm_weight_layout l, int64_t o, int64_t p, const float* wi, float* wout,
                        float* bout, float eps) {
    return bnorm_fold_into_weights(l, o, p, wi, b.data(), wout, bout, nullptr, nullptr, m.data(),
                                   v.data(), eps);
  };
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, 0, P, w.data(), wo.data(), bo.data(), 0), BNORM_ERR_BAD_SHAPE);
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, O, -1, w.data(), wo.data(), bo.data(), 0),
            BNORM_ERR_BAD_SHAPE);
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, INT64_MAX / 2, 4, w.data(), wo.data(), bo.data(), 0),
            BNORM_ERR_BAD_SHAPE);
  bnorm_weight_layout bad;
  const int nine = 9;
  std::memcpy(&bad, &nine, sizeof(bad));
  EXPECT_EQ(fold(bad, O, P, w.data(), wo.data(), bo.data(), 0), BNORM_ERR_BAD_ARGUMENT);
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, O, P, w.data(), wo.data(), bo.data(), -1.0f),
            BNORM_ERR_BAD_ARGUMENT);
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, O, P, w.data(), wo.data(), bo.data(), NAN),
            BNORM_ERR_BAD_ARGUMENT);
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, O, P, nullptr, wo.data(), bo.data(), 0),
            BNORM_ERR_NULL_POINTER);
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, O, P, w.data(), nullptr, bo.data(), 0),
            BNORM_ERR_NULL_POINTER);
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, O, P, w.data(), wo.data(), nullptr, 0),
            BNORM_ERR_NULL_POINTER);
  // Outputs overlapping each other or an input other than their own.
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, O, P, w.data(), wo.data(), wo.data() + 2, 0),
            BNORM_ERR_ALIAS);
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, O, P, w.data(), wo.data(), m.data(), 0), BNORM_ERR_ALIAS);
  untouched();
  std::vector<float> shifted = w;
  EXPECT_EQ(fold(BNORM_WEIGHTS_OIHW, O, P - 1, shifted.data(), shifted.data() + 1, bo.data(), 0),
            BNORM_ERR_ALIAS);  // partial overlap is not in place
  EXPECT_EQ(shifted, w);
  untouched();
  std::vector<float> scale(O, 7.0f), shift(O, 7.0f);
  EXPECT_EQ(bnorm_fold(O, nullptr, nullptr, m.data(), v.data(), 0, scale.data(), scale.data()),
            BNORM_ERR_ALIAS);
  EXPECT_EQ(bnorm_fold(O, nullptr, nullptr, nullptr, v.data(), 0, scale.data(), shift.data()),
            BNORM_ERR_NULL_POINTER);
  EXPECT_EQ(bnorm_fold(0, nullptr, nullptr, m.data(), v.data(), 0, scale.data(), shift.data()),
            BNORM_ERR_BAD_SHAPE);
  EXPECT_EQ(bnorm_fold(O, nullptr, nullptr, m.data(), v.data(), INFINITY, scale.data(),
                       shift.data()),
            BNORM_ERR_BAD_ARGUMENT);
  for (float f : scale) EXPECT_EQ(f, 7.0f);
  for (float f : shift) EXPECT_EQ(f, 7.0f);
}

}  // namespace
}  // namespace bnorm_test
