// Adversarial data: large offsets, constant channels, NaN/Inf, denormals and
// huge magnitudes, in both layouts and under every target.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "test_support.h"

namespace bnorm_test {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// y of a training call (gamma 1, beta 0) against y = (x - mean) * invstd from
// the long-double statistics: the mean is known to 1e-6 (|mean| + std) and
// invstd to 5e-6 relative (forward_test's bounds), so y to
// 1e-6 (|mean| + std) invstd + 6e-6 |y|, plus the spacing of denormals.
void ExpectNormalized(const Shape& s, const std::vector<float>& x, const std::vector<float>& y,
                      const std::vector<RefStats>& ref, float eps) {
  const size_t C = static_cast<size_t>(s.c);
  std::vector<LD> mean(C), invstd(C);
  for (size_t c = 0; c < C; ++c) {
    mean[c] = ref[c].mean;
    invstd[c] = RefInvstd(ref[c].var, eps);
  }
  const auto y_ref = ReferenceNormalize(s, x, mean, invstd, nullptr, nullptr);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t ch = 0; ch < s.c; ++ch) {
      const size_t c = static_cast<size_t>(ch);
      const LD from_mean = 1e-6L * (std::fabs(mean[c]) + std::sqrt(ref[c].var)) * invstd[c];
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        const size_t e = static_cast<size_t>(s.Index(i, ch, sp));
        ASSERT_NEAR(y[e], static_cast<double>(y_ref[e]),
                    static_cast<double>(from_mean + 6e-6L * std::fabs(y_ref[e])) + 3e-45)
            << "element " << e;
      }
    }
  }
}

// bnorm_backward and bnorm_backward_frozen against the long-double
// reference, within backward_test's bounds.
void ExpectBackwardsNear(const Shape& s, const std::vector<float>& x, const std::vector<float>& dy,
                         const std::vector<float>& gamma, const std::vector<float>& mean,
                         const std::vector<float>& invstd) {
  const size_t C = static_cast<size_t>(s.c);
  const bnorm_tensor_desc d = s.Desc();
  for (bool frozen : {false, true}) {
    SCOPED_TRACE(testing::Message() << "frozen=" << frozen);
    const RefBackward ref = ReferenceBackward(s, frozen, x, dy, gamma.data(), mean, invstd);
    std::vector<float> dx(x.size(), -7.0f), dgamma(C, -7.0f), dbeta(C, -7.0f);
    const auto call = frozen ? bnorm_backward_frozen : bnorm_backward;
    ASSERT_EQ(call(nullptr, &d, x.data(), dy.data(), dx.data(), gamma.data(), mean.data(),
                   invstd.data(), dgamma.data(), dbeta.data()),
              BNORM_OK);
    ExpectBackwardNear(ref, invstd, dx, dgamma, dbeta);
  }
}

class AccuracyTest : public testing::TestWithParam<TargetLayout> {
 protected:
  void SetUp() override { target_ = std::make_unique<ScopedTarget>(GetParam().target); }
  void TearDown() override { target_.reset(); }
  bnorm_layout layout() const { return GetParam().layout; }

  struct Result {
    std::vector<float> y, mean, invstd, running_var;
  };
  Result Train(const Shape& s, const std::vector<float>& x, float eps, const float* gamma = nullptr,
               const float* beta = nullptr) {
    Result r;
    const size_t C = static_cast<size_t>(s.c);
    r.y.assign(x.size(), -7.0f);
    r.mean.assign(C, -7.0f);
    r.invstd.assign(C, -7.0f);
    r.running_var.assign(C, 0.0f);
    const bnorm_tensor_desc desc = s.Desc();
    EXPECT_EQ(bnorm_forward_training(nullptr, &desc, x.data(), r.y.data(), gamma, beta, eps, 1.0f,
                                     nullptr, r.running_var.data(), r.mean.data(), r.invstd.data()),
              BNORM_OK);
    return r;
  }

 private:
  std::unique_ptr<ScopedTarget> target_;
};

// offset + N(0,1) with offset up to 1e5: the accuracy bar. NCHW
// runs of 8 to 15 values take the short-run kernels in half vectors on
// AVX-512, 4 to 7 on AVX2 (ShortRunHalves: 8 and 4 without a tail), 49 in
// full vectors. NHWC rows of 1040 channels are reduced in two blocks (512
// and 528 channels, the last vector partial) over two row units.
TEST_P(AccuracyTest, LargeOffsetStatistics) {
  for (double offset : {1e3, 1e4, 1e5}) {
    for (const Shape& s :
         {Shape{16, 8, 1024, layout()}, Shape{64, 32, 49, layout()}, Shape{2, 3, 50000, layout()},
          Shape{4096, 5, 1, layout()}, Shape{96, 24, 9, layout()}, Shape{64, 20, 8, layout()},
          Shape{48, 10, 15, layout()}, Shape{128, 16, 5, layout()}, Shape{100, 6, 4, layout()},
          Shape{24, 1040, 3, layout()}}) {
      SCOPED_TRACE(testing::Message() << "offset=" << offset << " shape=" << s.Name());
      const auto x = NormalData(s, 42, offset, 1.0, 0.0);
      const auto ref = ReferenceStats(s, x);
      const Result r = Train(s, x, 0.0f);
      const LD m = static_cast<LD>(s.Values());
      for (size_t c = 0; c < static_cast<size_t>(s.c); ++c) {
        const LD std_dev = std::sqrt(ref[c].var);
        EXPECT_NEAR(r.mean[c], static_cast<double>(ref[c].mean),
                    1e-6 * static_cast<double>(std::fabs(ref[c].mean) + std_dev));
        const LD unbiased = ref[c].var * m / (m - 1);
        EXPECT_NEAR(r.running_var[c], static_cast<double>(unbiased),
                    1e-5 * static_cast<double>(unbiased));
        EXPECT_NEAR(r.invstd[c], static_cast<double>(1 / std_dev),
                    1e-5 / static_cast<double>(std_dev));
      }
      if (offset == 1e4) {
        // The output bar: |y - y_ref| <= 1e-5 at offset 1e4.
        std::vector<LD> mean, invstd;
        for (const auto& st : ref) {
          mean.push_back(st.mean);
          invstd.push_back(1 / std::sqrt(st.var));
        }
        const auto y_ref = ReferenceNormalize(s, x, mean, invstd, nullptr, nullptr);
        double worst = 0;
        for (size_t e = 0; e < x.size(); ++e) {
          worst = std::max(worst, std::fabs(static_cast<double>(r.y[e] - y_ref[e])));
        }
        EXPECT_LE(worst, 1e-5);
      }
    }
  }
}

// The float sums run on data shifted by a pivot; their rounding grows
// with |mean - pivot| / std. A channel whose first value is a 5-sigma outlier
// must still meet the mean bar (a single-value pivot did not: ~1e-6).
TEST_P(AccuracyTest, OutlierFirstValueStillMeetsTheMeanBar) {
  for (const Shape& s : {Shape{7, 206, 15, layout()}, Shape{4, 33, 250, layout()}}) {
    SCOPED_TRACE(s.Name());
    auto x = NormalData(s, 77, 0.0, 1.0, 0.0);
    for (int64_t ch = 0; ch < s.c; ++ch) {
      for (int64_t v = 0; v < 2; ++v) x[static_cast<size_t>(s.Index(0, ch, v))] = 5.0f;
    }
    const auto ref = ReferenceStats(s, x);
    const Result r = Train(s, x, 1e-5f);
    double worst = 0;
    for (size_t c = 0; c < static_cast<size_t>(s.c); ++c) {
      worst =
          std::max(worst, static_cast<double>(std::fabs(r.mean[c] - ref[c].mean) /
                                              (std::fabs(ref[c].mean) + std::sqrt(ref[c].var))));
    }
    EXPECT_LE(worst, 1e-6);
  }
}

// Worst relative error of the batch variance (running_var with momentum 1 is
// the unbiased variance) and of the mean (relative to |mean| + std).
struct StatErrors {
  double mean = 0, var = 0;
};
template <typename R>
StatErrors WorstStatErrors(const Shape& s, const std::vector<float>& x, const R& r) {
  const auto ref = ReferenceStats(s, x);
  const LD m = static_cast<LD>(s.Values());
  StatErrors e;
  for (size_t c = 0; c < static_cast<size_t>(s.c); ++c) {
    const LD unbiased = ref[c].var * m / (m - 1);
    e.var = std::max(e.var, static_cast<double>(std::fabs(r.running_var[c] - unbiased) / unbiased));
    e.mean =
        std::max(e.mean, static_cast<double>(std::fabs(r.mean[c] - ref[c].mean) /
                                             (std::fabs(ref[c].mean) + std::sqrt(ref[c].var))));
  }
  return e;
}

// Float sums are taken on data shifted by the running mean of the blocks
// before; a shift far from the data (here: the pivot, from the first 16
// values, 1e4 away from all the others) must be caught and the unit redone,
// not rounded relative to the shift (~1e-4 error in the variance). In NHWC,
// 48 and 67 channels take one position per channel (channels checked a
// vector of doubles at a time, 67 with a scalar tail on the vector targets),
// the others several. C = 3, 12, 24, 48, 64, 96 and 128 are periods of three
// to eight AVX-512 vectors (four AVX2 vectors for 32), whose sums stay in
// registers for a block (StatsNhwcUnitT): the redo must catch them there.
TEST_P(AccuracyTest, PivotFarFromTheRestOfTheChannel) {
  for (const Shape& s :
       {Shape{8, 5, 4099, layout()}, Shape{300, 7, 49, layout()}, Shape{20000, 3, 1, layout()},
        Shape{40, 67, 30, layout()}, Shape{64, 48, 16, layout()}, Shape{90, 3, 13, layout()},
        Shape{37, 12, 17, layout()}, Shape{41, 24, 5, layout()}, Shape{29, 32, 11, layout()},
        Shape{64, 64, 16, layout()}, Shape{24, 96, 9, layout()}, Shape{16, 128, 11, layout()}}) {
    SCOPED_TRACE(s.Name());
    auto x = NormalData(s, 5, 0.0, 1.0, 0.0);
    for (int64_t ch = 0; ch < s.c; ++ch) {
      for (int64_t v = 0; v < 16; ++v)
        x[static_cast<size_t>(s.Index(v / s.spatial, ch, v % s.spatial))] = 1e4f;
    }
    const StatErrors e = WorstStatErrors(s, x, Train(s, x, 0.0f));
    EXPECT_LE(e.var, 1e-6);
    EXPECT_LE(e.mean, 1e-6);
  }
}

// The same far pivot in every third channel only (at least 98 values per
// channel, so that their float sums are redone in double): the statistics
// kernels take a thread's units in one call (StatsNchwUnits), and the units
// redone must be those and no others. The others' results are bit for bit
// those of the data without the pivots, with small batches (units of two to
// five 7x7 runs) as with large.
TEST_P(AccuracyTest, PivotFarFromTheRestInSomeChannels) {
  for (const Shape& s : {Shape{2, 64, 49, layout()}, Shape{3, 67, 49, layout()},
                         Shape{32, 40, 49, layout()}, Shape{5, 33, 196, layout()}}) {
    SCOPED_TRACE(s.Name());
    const auto clean = NormalData(s, 9, 0.0, 1.0, 0.0);
    auto x = clean;
    for (int64_t ch = 1; ch < s.c; ch += 3) {
      for (int64_t v = 0; v < 16; ++v)
        x[static_cast<size_t>(s.Index(v / s.spatial, ch, v % s.spatial))] = 1e4f;
    }
    const Result r = Train(s, x, 0.0f);
    const StatErrors e = WorstStatErrors(s, x, r);
    EXPECT_LE(e.var, 1e-6);
    EXPECT_LE(e.mean, 1e-6);
    const Result base = Train(s, clean, 0.0f);
    for (size_t ch = 0; ch < static_cast<size_t>(s.c); ++ch) {
      if (ch % 3 == 1) continue;
      EXPECT_EQ(Bits(r.mean[ch]), Bits(base.mean[ch])) << "channel " << ch;
      EXPECT_EQ(Bits(r.invstd[ch]), Bits(base.invstd[ch])) << "channel " << ch;
      EXPECT_EQ(Bits(r.running_var[ch]), Bits(base.running_var[ch])) << "channel " << ch;
    }
  }
}

// Equal values with one outlier first (found by the fuzzer): the pivot,
// from the first 16 values, lands far from the bulk, yet not far enough from
// the channel's spread to be redone in double; the block sums of the equal
// shifted squares then round the same way at every step. Short float blocks
// (kBlockSteps) keep that systematic error under the bar (it was 1.4e-5 to
// 2e-5 on 4-lane targets with blocks of 128 steps).
TEST_P(AccuracyTest, EqualValuesAfterAnOutlier) {
  for (const Shape& s : {Shape{1, 1, 4001, layout()}, Shape{1, 2, 32000, layout()},
                         Shape{4, 3, 1000, layout()}, Shape{7, 67, 40, layout()}}) {
    SCOPED_TRACE(s.Name());
    std::vector<float> x(static_cast<size_t>(s.Elements()));
    for (int64_t ch = 0; ch < s.c; ++ch) {
      const float bulk = ch % 2 == 0 ? 1.0f : -11051.02f;
      const float outlier = ch % 2 == 0 ? 10001.0f : -1369.58f;
      for (int64_t v = 0; v < s.Values(); ++v) {
        x[static_cast<size_t>(s.Index(v / s.spatial, ch, v % s.spatial))] = v == 0 ? outlier : bulk;
      }
    }
    const StatErrors e = WorstStatErrors(s, x, Train(s, x, 0.0f));
    EXPECT_LE(e.var, 1e-6);
    EXPECT_LE(e.mean, 1e-6);
  }
}

// Channels whose mean moves a lot within the batch: per-image offsets of
// +-1e3 around N(0,1), and a ramp. The block shifts follow the running mean,
// so these stay on the fast path and keep the bars.
TEST_P(AccuracyTest, NonStationaryChannels) {
  for (const Shape& s : {Shape{64, 6, 700, layout()}, Shape{512, 4, 49, layout()}}) {
    SCOPED_TRACE(s.Name());
    auto x = NormalData(s, 11, 0.0, 1.0, 0.0);
    for (int64_t i = 0; i < s.n; ++i) {
      const float jump = ((i * 7919) % 2001 - 1000) * 1.0f;
      for (int64_t ch = 0; ch < s.c; ++ch)
        for (int64_t sp = 0; sp < s.spatial; ++sp)
          x[static_cast<size_t>(s.Index(i, ch, sp))] += jump;
    }
    StatErrors e = WorstStatErrors(s, x, Train(s, x, 0.0f));
    EXPECT_LE(e.var, 1e-6);
    EXPECT_LE(e.mean, 1e-6);
    for (int64_t i = 0; i < s.n; ++i)
      for (int64_t ch = 0; ch < s.c; ++ch)
        for (int64_t sp = 0; sp < s.spatial; ++sp)
          x[static_cast<size_t>(s.Index(i, ch, sp))] = static_cast<float>(i * s.spatial + sp);
    e = WorstStatErrors(s, x, Train(s, x, 0.0f));
    EXPECT_LE(e.var, 1e-6);
    EXPECT_LE(e.mean, 1e-6);
  }
}

TEST_P(AccuracyTest, ConstantChannelsGiveZeroVarianceAndBeta) {
  // 19 channels: constant ones in whole vectors of the per-channel finalize
  // (finalize.cc: 8 doubles on AVX-512, 4 on AVX2) and in its scalar tail.
  const Shape s{5, 19, 37, layout()};
  std::vector<float> x(static_cast<size_t>(s.Elements()));
  const float kinds[] = {3.14159f, -1e30f, 0.0f, 7e-42f /* denormal */};
  std::vector<float> values(static_cast<size_t>(s.c)), gamma(values.size()), beta(values.size());
  for (size_t c = 0; c < values.size(); ++c) {
    values[c] = kinds[c % 4];
    gamma[c] = 2.0f + static_cast<float>(c);
    beta[c] = 0.5f - 0.25f * static_cast<float>(c);
  }
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t ch = 0; ch < s.c; ++ch)
      for (int64_t sp = 0; sp < s.spatial; ++sp)
        x[static_cast<size_t>(s.Index(i, ch, sp))] = values[static_cast<size_t>(ch)];
  for (float eps : {0.0f, 1e-5f}) {
    SCOPED_TRACE(testing::Message() << "eps=" << eps);
    const Result r = Train(s, x, eps, gamma.data(), beta.data());
    for (size_t c = 0; c < values.size(); ++c) {
      EXPECT_EQ(r.mean[c], values[c]);
      EXPECT_EQ(r.running_var[c], 0.0f);
      EXPECT_EQ(r.invstd[c], eps == 0.0f ? 0.0f : static_cast<float>(1.0 / std::sqrt(double{eps})));
    }
    for (int64_t i = 0; i < s.n; ++i)
      for (int64_t ch = 0; ch < s.c; ++ch)
        for (int64_t sp = 0; sp < s.spatial; ++sp)
          ASSERT_EQ(r.y[static_cast<size_t>(s.Index(i, ch, sp))], beta[static_cast<size_t>(ch)]);
  }
}

TEST_P(AccuracyTest, NanAndInfStayInTheirChannel) {
  // 11 channels: the poisoned one (2) lies in a whole vector of the
  // per-channel finalize (finalize.cc) on every target but SCALAR.
  const Shape s{3, 11, 41, layout()};
  const auto clean = NormalData(s, 5);
  const Result base = Train(s, clean, 1e-5f);
  const float poison[] = {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()};
  for (float bad : poison) {
    for (int64_t where : {int64_t{0}, s.Values() - 1, s.Values() / 2}) {
      SCOPED_TRACE(testing::Message() << "bad=" << bad << " at value " << where);
      auto x = clean;
      const int64_t ch = 2;
      x[static_cast<size_t>(s.Index(where / s.spatial, ch, where % s.spatial))] = bad;
      const Result r = Train(s, x, 1e-5f);
      for (int64_t c = 0; c < s.c; ++c) {
        const size_t cc = static_cast<size_t>(c);
        if (c == ch) {  // the statistics of a channel with NaN/Inf are NaN (bnorm_stats)
          EXPECT_TRUE(std::isnan(r.mean[cc]));
          EXPECT_TRUE(std::isnan(r.invstd[cc]));
          EXPECT_TRUE(std::isnan(r.running_var[cc]));
        } else {
          EXPECT_EQ(Bits(r.mean[cc]), Bits(base.mean[cc]));
          EXPECT_EQ(Bits(r.invstd[cc]), Bits(base.invstd[cc]));
          EXPECT_EQ(Bits(r.running_var[cc]), Bits(base.running_var[cc]));
        }
      }
      for (int64_t i = 0; i < s.n; ++i) {
        for (int64_t c = 0; c < s.c; ++c) {
          for (int64_t sp = 0; sp < s.spatial; ++sp) {
            const size_t e = static_cast<size_t>(s.Index(i, c, sp));
            if (c == ch) {
              ASSERT_TRUE(std::isnan(r.y[e])) << e;
            } else {
              ASSERT_EQ(r.y[e], base.y[e]) << e;
            }
          }
        }
      }
    }
  }
}

TEST_P(AccuracyTest, DenormalAndTinyInputs) {
  const Shape s{4, 3, 33, layout()};
  for (double scale : {1e-40, 1e-30, 1e-20}) {
    SCOPED_TRACE(testing::Message() << "scale=" << scale);
    const auto x = NormalData(s, 8, 0.0, scale, scale);
    const auto ref = ReferenceStats(s, x);
    const Result r = Train(s, x, 1e-5f);
    for (size_t c = 0; c < 3; ++c) {
      // Float cannot hold these variances better than its denormal spacing.
      const double var_tol = 1e-5 * static_cast<double>(ref[c].var) + 1.5e-45;
      const LD m = static_cast<LD>(s.Values());
      EXPECT_NEAR(r.running_var[c], static_cast<double>(ref[c].var * m / (m - 1)), var_tol);
      EXPECT_NEAR(
          r.mean[c], static_cast<double>(ref[c].mean),
          1e-6 * static_cast<double>(std::fabs(ref[c].mean) + std::sqrt(ref[c].var)) + 1.5e-45);
    }
    ExpectNormalized(s, x, r.y, ref, 1e-5f);
  }
}

// Data of magnitude 1e-30..1e-22: their deviations' squares (1e-60..1e-44)
// underflow in float, so the float sums lose M2 (all of it at 1e-25: a
// variance of 0, save_invstd 0 with eps = 0). Those channels are summed in
// double: M2 (bnorm_stats, double) and save_invstd (eps = 0) to float
// precision of the reference, in both layouts, short and long NCHW runs,
// NHWC periods of one row and of several.
TEST_P(AccuracyTest, TinyDataKeepTheirVariance) {
  for (const Shape& s : {Shape{4, 3, 33, layout()}, Shape{2, 64, 300, layout()},
                         Shape{50, 20, 7, layout()}, Shape{3, 1, 2000, layout()}}) {
    for (double scale : {1e-30, 1e-25, 1e-22}) {
      SCOPED_TRACE(testing::Message() << s.Name() << " scale=" << scale);
      const auto x = NormalData(s, 12, 0.0, scale, scale);
      const auto ref = ReferenceStats(s, x);
      const Result r = Train(s, x, 0.0f);
      const size_t C = static_cast<size_t>(s.c);
      std::vector<double> mean(C, -7.0), m2(C, -7.0);
      const bnorm_tensor_desc desc = s.Desc();
      ASSERT_EQ(bnorm_stats(nullptr, &desc, x.data(), mean.data(), m2.data()), BNORM_OK);
      const LD m = static_cast<LD>(s.Values());
      for (size_t c = 0; c < C; ++c) {
        const double ref_m2 = static_cast<double>(ref[c].var * m);
        const double ref_invstd = static_cast<double>(1.0L / std::sqrt(ref[c].var));
        EXPECT_NEAR(m2[c], ref_m2, 1e-6 * ref_m2) << "channel " << c;
        EXPECT_NEAR(r.invstd[c], ref_invstd, 1e-5 * ref_invstd) << "channel " << c;
      }
    }
  }
}

TEST_P(AccuracyTest, HugeValuesWithFiniteVariance) {
  const Shape s{8, 3, 129, layout()};
  // std 1e18 on offset 3e18: var 1e36 fits in float, 128 squared deviations
  // summed in float would not.
  for (double scale : {1e18, 5e18}) {
    SCOPED_TRACE(testing::Message() << "scale=" << scale);
    const auto x = NormalData(s, 9, 3.0 * scale, scale, 0.0);
    const auto ref = ReferenceStats(s, x);
    const Result r = Train(s, x, 0.0f);
    const LD m = static_cast<LD>(s.Values());
    for (size_t c = 0; c < 3; ++c) {
      const LD unbiased = ref[c].var * m / (m - 1);
      ASSERT_TRUE(std::isfinite(r.running_var[c]));
      EXPECT_NEAR(r.running_var[c], static_cast<double>(unbiased),
                  1e-5 * static_cast<double>(unbiased));
      EXPECT_NEAR(r.mean[c], static_cast<double>(ref[c].mean),
                  1e-6 * static_cast<double>(std::fabs(ref[c].mean)));
    }
    ExpectNormalized(s, x, r.y, ref, 0.0f);
  }
  // Opposite signs near FLT_MAX: the shifted float data overflow; the double
  // fallback keeps the mean exact. The variance (~9e76) is not finite in float.
  std::vector<float> x(static_cast<size_t>(s.Elements()));
  for (size_t e = 0; e < x.size(); ++e) x[e] = (e % 2 == 0) ? 3e38f : -3e38f;
  const Shape s2{1, 1, static_cast<int64_t>(x.size()), layout()};
  const Result r = Train(s2, x, 0.0f);
  EXPECT_TRUE(std::isfinite(r.mean[0]));
  EXPECT_NEAR(r.mean[0], 0.0, 1e-14 * 3e38);  // even count: mean 0, double rounding
  EXPECT_TRUE(std::isinf(r.running_var[0]));
  for (float v : r.y) ASSERT_TRUE(std::isfinite(v));
  // The same channel among 11 (in a whole vector of the per-channel
  // finalize on every target but the fallback ones): its running_var
  // rounds to inf there too, the others stay finite.
  const Shape s3{2, 11, 65, layout()};
  auto x3 = NormalData(s3, 4);
  for (int64_t i = 0; i < s3.n; ++i) {
    for (int64_t sp = 0; sp < s3.spatial; ++sp) {
      x3[static_cast<size_t>(s3.Index(i, 2, sp))] = (sp % 2 == 0) ? 3e38f : -3e38f;
    }
  }
  const Result r3 = Train(s3, x3, 0.0f);
  for (size_t c = 0; c < 11; ++c) {
    SCOPED_TRACE(testing::Message() << "channel " << c);
    EXPECT_EQ(std::isinf(r3.running_var[c]), c == 2);
    EXPECT_TRUE(std::isfinite(r3.mean[c]));
  }
}

// Gradients whose float products overflow (dy ~ 1e20, x - mean ~ 1e20) while
// the true dgamma, dbeta are finite: summed again in double, not inf.
TEST_P(AccuracyTest, HugeGradientsStayFinite) {
  const Shape s{4, 3, 50, layout()};
  const auto x = NormalData(s, 3, 0.0, 1e20, 0.0);
  const auto dy = NormalData(s, 4, 0.0, 1e20, 0.0);
  const auto ref = ReferenceStats(s, x);
  std::vector<float> mean(3), invstd(3);
  for (size_t c = 0; c < 3; ++c) {
    mean[c] = static_cast<float>(ref[c].mean);
    invstd[c] = static_cast<float>(1 / std::sqrt(ref[c].var));
  }
  const RefBackward rb = ReferenceBackward(s, false, x, dy, nullptr, mean, invstd);
  std::vector<float> dx(x.size()), dgamma(3), dbeta(3);
  const bnorm_tensor_desc d = s.Desc();
  ASSERT_EQ(bnorm_backward(nullptr, &d, x.data(), dy.data(), dx.data(), nullptr, mean.data(),
                           invstd.data(), dgamma.data(), dbeta.data()),
            BNORM_OK);
  for (size_t c = 0; c < 3; ++c) {
    ASSERT_TRUE(std::isfinite(dgamma[c]) && std::isfinite(dbeta[c])) << c;
    EXPECT_NEAR(dgamma[c], static_cast<double>(rb.dgamma[c]),
                1e-5 * static_cast<double>(rb.sum_abs_dy_xmu[c] * invstd[c]));
    EXPECT_NEAR(dbeta[c], static_cast<double>(rb.dbeta[c]),
                1e-5 * static_cast<double>(rb.sum_abs_dy[c]));
  }
  for (size_t e = 0; e < dx.size(); ++e) {  // backward_test's bound
    ASSERT_TRUE(std::isfinite(dx[e])) << e;
    ASSERT_NEAR(dx[e], static_cast<double>(rb.dx[e]), 2e-5 * static_cast<double>(rb.dx_scale[e]))
        << "element " << e;
  }
}

// Backward of data on a large offset (1e3..1e5 + N(0, 1)) against the
// long-double reference (NHWC 1040 channels: two blocks, as above), with
// backward_test's bounds: x - mean is exact
// (Sterbenz: both within a factor of 2), so the bounds in terms of
// sum|dy (x - mean)| do not depend on the offset. Summing dy * x and
// subtracting mean * sum(dy) would miss them by orders of magnitude.
TEST_P(AccuracyTest, BackwardOnLargeOffsets) {
  for (const Shape& s : {Shape{6, 5, 97, layout()}, Shape{2, 64, 300, layout()},
                         Shape{50, 20, 7, layout()}, Shape{33, 9, 1, layout()},
                         Shape{70, 12, 9, layout()}, Shape{60, 7, 15, layout()},
                         Shape{80, 6, 5, layout()}, Shape{24, 1040, 3, layout()}}) {
    for (double offset : {1e3, 1e4, 1e5}) {
      const size_t C = static_cast<size_t>(s.c);
      const auto x = NormalData(s, 31, offset, 1.0);
      const auto dy = NormalData(s, 32, 0.25, 1.0, 0.0);
      const auto gamma = UniformVector(C, 33, -2.0f, 2.0f);
      std::vector<float> mean, invstd;
      ReferenceSaved(s, x, 1e-5f, &mean, &invstd);
      SCOPED_TRACE(testing::Message() << s.Name() << " offset=" << offset);
      ExpectBackwardsNear(s, x, dy, gamma, mean, invstd);
    }
  }
}

// Backward of data spread over 1e-30 .. 1e30 with eps = 0: invstd reaches
// 1e30 (or 1e-30), and dx (of order invstd * dy) stays in float's range. An
// apply constant holding invstd^3 * sum(dy (x - mean)) / m (of order
// invstd^2) overflowed float above invstd ~ 1e19 (dx inf where it is ~1e20)
// and went subnormal below ~1e-19 (dx 10 % off at spreads of 1e25); each
// constant is now within invstd * |dy| of one.
TEST_P(AccuracyTest, BackwardOnTinyAndHugeSpreads) {
  for (const Shape& s : {Shape{6, 5, 97, layout()}, Shape{50, 20, 7, layout()}}) {
    for (double scale : {1e-30, 1e-22, 1e-19, 1e19, 1e25, 1e30}) {
      const size_t C = static_cast<size_t>(s.c);
      const auto x = NormalData(s, 41, 0.0, scale, 0.0);
      const auto dy = NormalData(s, 42, 0.25, 1.0, 0.0);
      const auto gamma = UniformVector(C, 43, -2.0f, 2.0f);
      std::vector<float> mean, invstd;
      ReferenceSaved(s, x, 0.0f, &mean, &invstd);
      SCOPED_TRACE(testing::Message() << s.Name() << " scale=" << scale);
      // The forward's saved statistics of the same data (squares beyond
      // float's range either way: summed again in double).
      const Result r = Train(s, x, 0.0f);
      for (size_t ch = 0; ch < C; ++ch) {
        EXPECT_NEAR(r.mean[ch], mean[ch], 1e-6 * scale) << "channel " << ch;
        EXPECT_NEAR(r.invstd[ch], invstd[ch], 1e-5 * invstd[ch]) << "channel " << ch;
      }
      ExpectBackwardsNear(s, x, dy, gamma, mean, invstd);
    }
  }
}

// NaN or +-Inf in x or dy of one channel, at its first, middle or last value:
// every output of the other channels is bit for bit that of the clean call
// (a poisoned lane must not leak into a neighbour's sums or outputs, in NHWC
// rows or NCHW vectors that span channels), and the channel's own gradient
// sums are not finite where the poison enters them.
TEST_P(AccuracyTest, BackwardNanAndInfStayInTheirChannel) {
  const float poison[] = {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()};
  for (const Shape& s : {Shape{3, 5, 41, layout()}, Shape{8, 67, 49, layout()}}) {
    const size_t C = static_cast<size_t>(s.c);
    const auto x = NormalData(s, 41);
    const auto dy = NormalData(s, 42, 0.1, 1.0, 0.0);
    const auto gamma = UniformVector(C, 43, 0.5f, 2.0f);
    std::vector<float> mean, invstd;
    ReferenceSaved(s, x, 1e-5f, &mean, &invstd);
    const bnorm_tensor_desc d = s.Desc();
    struct Out {
      std::vector<float> dx, dgamma, dbeta;
    };
    const auto run = [&](bool frozen, const std::vector<float>& xs, const std::vector<float>& g) {
      Out o{std::vector<float>(xs.size(), -7.0f), std::vector<float>(C, -7.0f),
            std::vector<float>(C, -7.0f)};
      const auto call = frozen ? bnorm_backward_frozen : bnorm_backward;
      EXPECT_EQ(call(nullptr, &d, xs.data(), g.data(), o.dx.data(), gamma.data(), mean.data(),
                     invstd.data(), o.dgamma.data(), o.dbeta.data()),
                BNORM_OK);
      return o;
    };
    const int64_t ch = 2;
    double sum_abs_dy = 0.0;
    for (int64_t i = 0; i < s.n; ++i) {
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        sum_abs_dy += std::fabs(dy[static_cast<size_t>(s.Index(i, ch, sp))]);
      }
    }
    for (bool frozen : {false, true}) {
      const Out clean = run(frozen, x, dy);
      for (bool in_x : {true, false}) {
        for (float bad : poison) {
          for (int64_t where : {int64_t{0}, s.Values() / 2, s.Values() - 1}) {
            SCOPED_TRACE(testing::Message()
                         << s.Name() << " frozen=" << frozen << " " << (in_x ? "x" : "dy") << "="
                         << bad << " at value " << where);
            auto xs = x, g = dy;
            (in_x ? xs
                  : g)[static_cast<size_t>(s.Index(where / s.spatial, ch, where % s.spatial))] =
                bad;
            const Out r = run(frozen, xs, g);
            for (int64_t c = 0; c < s.c; ++c) {
              const size_t cc = static_cast<size_t>(c);
              if (c == ch) {
                EXPECT_FALSE(std::isfinite(r.dgamma[cc]));
                EXPECT_EQ(std::isfinite(r.dbeta[cc]), in_x);
                // dy is clean: dbeta as before (the channel's sums are redone
                // in double, where non-finite: to within backward_test's bound).
                if (in_x) {
                  EXPECT_NEAR(r.dbeta[cc], clean.dbeta[cc], 1e-5 * static_cast<double>(sum_abs_dy));
                }
                continue;
              }
              EXPECT_EQ(Bits(r.dgamma[cc]), Bits(clean.dgamma[cc])) << "channel " << c;
              EXPECT_EQ(Bits(r.dbeta[cc]), Bits(clean.dbeta[cc])) << "channel " << c;
            }
            for (int64_t i = 0; i < s.n; ++i) {
              for (int64_t c = 0; c < s.c; ++c) {
                if (c == ch) continue;
                for (int64_t sp = 0; sp < s.spatial; ++sp) {
                  const size_t e = static_cast<size_t>(s.Index(i, c, sp));
                  ASSERT_EQ(Bits(r.dx[e]), Bits(clean.dx[e])) << "element " << e;
                }
              }
            }
          }
        }
      }
    }
  }
}

// One value per channel (n = 1, spatial = 1; training needs two): inference
// and both backward modes against the long-double references, with
// forward_test's and backward_test's bounds, from one channel to 1031.
TEST_P(AccuracyTest, SingleValuePerChannel) {
  for (int64_t c : {1, 7, 64, 1031}) {
    const Shape s{1, c, 1, layout()};
    SCOPED_TRACE(s.Name());
    const size_t C = static_cast<size_t>(c);
    const auto x = NormalData(s, 51, 1.0, 3.0);
    const auto dy = NormalData(s, 52, 0.25, 1.0, 0.0);
    const auto mean = UniformVector(C, 53, -1.0f, 3.0f), var = UniformVector(C, 54, 0.25f, 9.0f);
    const auto gamma = UniformVector(C, 55, -2.0f, 2.0f), beta = UniformVector(C, 56, -1.0f, 1.0f);
    const float eps = 1e-3f;
    std::vector<LD> lmean(C), linv(C);
    std::vector<float> invstd(C);
    for (size_t k = 0; k < C; ++k) {
      lmean[k] = mean[k];
      linv[k] = 1.0L / std::sqrt(static_cast<LD>(var[k]) + eps);
      invstd[k] = static_cast<float>(linv[k]);
    }
    const bnorm_tensor_desc d = s.Desc();
    std::vector<float> y(x.size(), -7.0f);
    ASSERT_EQ(bnorm_forward_inference(nullptr, &d, x.data(), y.data(), gamma.data(), beta.data(),
                                      mean.data(), var.data(), eps),
              BNORM_OK);
    const auto y_ref = ReferenceNormalize(s, x, lmean, linv, gamma.data(), beta.data());
    for (size_t e = 0; e < x.size(); ++e) {
      const LD centered = std::fabs(y_ref[e] - beta[e]);  // one value per channel: e = channel
      ASSERT_NEAR(y[e], static_cast<double>(y_ref[e]),    // forward_test.cc's inference bound
                  static_cast<double>(1.8e-7L * centered + 6e-8L * std::fabs(y_ref[e])) + 1e-30)
          << "channel " << e;
    }
    ExpectBackwardsNear(s, x, dy, gamma, mean, invstd);
  }
}

// bnorm.h: inference with var + eps <= 0 or NaN statistics gives the IEEE
// result of y = (x - mean) / sqrt(var + eps) * gamma + beta: with var 0 and
// eps 0, +-Inf by the sign of x - mean and NaN where x == mean (0 * Inf);
// NaN for var -1, a NaN var or a NaN mean. Checked for bnorm_forward_inference,
// bnorm_forward_inference_ex (no z, no activation; the same values) and
// bnorm_fold (scale = gamma / sqrt(var + eps), shift = beta - mean * scale, in
// double).
TEST_P(AccuracyTest, InferenceWithDegenerateStatisticsIsIeee) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> mean = {1.0f, 1.0f, 1.0f, nan, 0.0f, -2.0f};
  const std::vector<float> var = {0.0f, -1.0f, nan, 1.0f, 0.0f, 0.0f};
  const std::vector<float> gamma = {2.0f, 1.0f, 1.0f, 1.0f, -1.0f, 0.5f};
  const std::vector<float> beta = {0.5f, 0.0f, 0.0f, 0.0f, 3.0f, -1.0f};
  const Shape s{4, 6, 17, layout()};
  const size_t C = mean.size();
  std::vector<float> x(static_cast<size_t>(s.Elements()));
  const float values[] = {1.0f, 2.0f, 0.0f, -1.0f, -2.0f, 1.0f, 5.0f};
  for (size_t e = 0; e < x.size(); ++e) x[e] = values[(e * 3 + e / 7) % 7];
  const bnorm_tensor_desc d = s.Desc();
  std::vector<float> y(x.size(), -7.0f), y_ex(x.size(), -7.0f);
  ASSERT_EQ(bnorm_forward_inference(nullptr, &d, x.data(), y.data(), gamma.data(), beta.data(),
                                    mean.data(), var.data(), 0.0f),
            BNORM_OK);
  ASSERT_EQ(bnorm_forward_inference_ex(nullptr, &d, x.data(), nullptr, y_ex.data(), BNORM_ACT_NONE,
                                       gamma.data(), beta.data(), mean.data(), var.data(), 0.0f),
            BNORM_OK);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t ch = 0; ch < s.c; ++ch) {
      const size_t c = static_cast<size_t>(ch);
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        const size_t e = static_cast<size_t>(s.Index(i, ch, sp));
        const double want = (static_cast<double>(x[e]) - mean[c]) /
                                std::sqrt(static_cast<double>(var[c])) * gamma[c] +
                            beta[c];
        SCOPED_TRACE(testing::Message() << "channel " << c << " x " << x[e] << " want " << want);
        if (std::isnan(want)) {
          ASSERT_TRUE(std::isnan(y[e])) << y[e];
        } else {
          ASSERT_EQ(y[e], static_cast<float>(want));  // +-Inf
        }
        ASSERT_EQ(Bits(y_ex[e]), Bits(y[e]));
      }
    }
  }
  std::vector<float> scale(C, -7.0f), shift(C, -7.0f);
  ASSERT_EQ(bnorm_fold(static_cast<int64_t>(C), gamma.data(), beta.data(), mean.data(), var.data(),
                       0.0f, scale.data(), shift.data()),
            BNORM_OK);
  for (size_t c = 0; c < C; ++c) {
    const double sc = static_cast<double>(gamma[c]) / std::sqrt(static_cast<double>(var[c]));
    const double sh = static_cast<double>(beta[c]) - static_cast<double>(mean[c]) * sc;
    EXPECT_TRUE(std::isnan(sc) ? std::isnan(scale[c]) : scale[c] == static_cast<float>(sc)) << c;
    EXPECT_TRUE(std::isnan(sh) ? std::isnan(shift[c]) : shift[c] == static_cast<float>(sh)) << c;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, AccuracyTest, testing::ValuesIn(TargetLayoutGrid()),
                         TargetLayoutName);

}  // namespace
}  // namespace bnorm_test
