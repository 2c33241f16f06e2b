// Shared test support: shapes, data generators, the long-double reference and
// the list of ISA targets every test runs under.
#ifndef BNORM_TESTS_TEST_SUPPORT_H_
#define BNORM_TESTS_TEST_SUPPORT_H_

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bnorm/bnorm.h"

namespace bnorm_test {

struct Shape {
  int64_t n, c, spatial;
  bnorm_layout layout;

  int64_t Elements() const { return n * c * spatial; }
  int64_t Values() const { return n * spatial; }
  int64_t Index(int64_t i, int64_t ch, int64_t s) const {
    return layout == BNORM_LAYOUT_NCHW ? (i * c + ch) * spatial + s : (i * spatial + s) * c + ch;
  }
  bnorm_tensor_desc Desc() const {
    return bnorm_tensor_desc{n, c, spatial, layout, BNORM_DTYPE_F32};
  }
  std::string Name() const {
    return std::to_string(n) + "x" + std::to_string(c) + "x" + std::to_string(spatial) +
           (layout == BNORM_LAYOUT_NCHW ? "_NCHW" : "_NHWC");
  }
};

// Targets this CPU runs, best first (AVX3/AVX2/SSE4/SSSE3/SCALAR...).
inline std::vector<std::string> TargetNames() {
  std::vector<std::string> names;
  for (int i = 0; i < bnorm_target_count(); ++i) names.emplace_back(bnorm_target_name(i));
  return names;
}

// Every (target, layout) pair, for parameterized suites.
struct TargetLayout {
  std::string target;
  bnorm_layout layout;
};

inline std::vector<TargetLayout> TargetLayoutGrid() {
  std::vector<TargetLayout> grid;
  for (const auto& t : TargetNames()) {
    grid.push_back({t, BNORM_LAYOUT_NCHW});
    grid.push_back({t, BNORM_LAYOUT_NHWC});
  }
  return grid;
}

inline std::string TargetLayoutName(const testing::TestParamInfo<TargetLayout>& info) {
  return info.param.target + (info.param.layout == BNORM_LAYOUT_NCHW ? "_NCHW" : "_NHWC");
}

// Forces a target for the scope of a test.
class ScopedTarget {
 public:
  explicit ScopedTarget(const std::string& name) {
    EXPECT_EQ(bnorm_set_target(name.c_str()), BNORM_OK) << name;
    EXPECT_STREQ(bnorm_active_target(), name.c_str());
  }
  ~ScopedTarget() { bnorm_set_target(nullptr); }
};

// offset + scale * N(0, 1), channel ch shifted by ch * channel_step.
inline std::vector<float> NormalData(const Shape& s, uint64_t seed, double offset = 0.0,
                                     double scale = 1.0, double channel_step = 0.5) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<float> x(static_cast<size_t>(s.Elements()));
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t ch = 0; ch < s.c; ++ch) {
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        x[static_cast<size_t>(s.Index(i, ch, sp))] = static_cast<float>(
            offset + channel_step * static_cast<double>(ch) + scale * normal(rng));
      }
    }
  }
  return x;
}

inline std::vector<float> UniformVector(size_t count, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(count);
  for (float& f : v) f = dist(rng);
  return v;
}

// ---- The reference: long double, two passes, on the same float inputs. ----

using LD = long double;

struct RefStats {
  LD mean;
  LD var;  // biased
};

inline std::vector<RefStats> ReferenceStats(const Shape& s, const std::vector<float>& x) {
  std::vector<RefStats> out(static_cast<size_t>(s.c));
  const LD m = static_cast<LD>(s.Values());
  for (int64_t ch = 0; ch < s.c; ++ch) {
    LD sum = 0;
    for (int64_t i = 0; i < s.n; ++i)
      for (int64_t sp = 0; sp < s.spatial; ++sp) sum += x[static_cast<size_t>(s.Index(i, ch, sp))];
    const LD mean = sum / m;
    LD sq = 0;
    for (int64_t i = 0; i < s.n; ++i) {
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        const LD d = x[static_cast<size_t>(s.Index(i, ch, sp))] - mean;
        sq += d * d;
      }
    }
    out[static_cast<size_t>(ch)] = RefStats{mean, sq / m};
  }
  return out;
}

inline LD RefInvstd(LD var, float eps) {
  const LD v = var + static_cast<LD>(eps);
  return v == 0 ? 0 : 1.0L / std::sqrt(v);
}

inline LD At(const float* p, int64_t i, LD fallback) {
  return p != nullptr ? static_cast<LD>(p[i]) : fallback;
}

// y = (x - mean) * invstd * gamma + beta for every element.
inline std::vector<LD> ReferenceNormalize(const Shape& s, const std::vector<float>& x,
                                          const std::vector<LD>& mean,
                                          const std::vector<LD>& invstd, const float* gamma,
                                          const float* beta) {
  std::vector<LD> y(x.size());
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t ch = 0; ch < s.c; ++ch) {
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        const size_t e = static_cast<size_t>(s.Index(i, ch, sp));
        const size_t c = static_cast<size_t>(ch);
        y[e] = (x[e] - mean[c]) * invstd[c] * At(gamma, ch, 1) + At(beta, ch, 0);
      }
    }
  }
  return y;
}

// Backward reference. dx is the exact formula; dx_scale bounds the size of the
// terms it is made of (for the tolerance).
struct RefBackward {
  std::vector<LD> dx, dx_scale;
  std::vector<LD> dgamma, dbeta;
  std::vector<LD> sum_abs_dy, sum_abs_dy_xmu;  // magnitudes of the reduced terms
};

inline RefBackward ReferenceBackward(const Shape& s, bool frozen, const std::vector<float>& x,
                                     const std::vector<float>& dy, const float* gamma,
                                     const std::vector<float>& mean,
                                     const std::vector<float>& invstd) {
  RefBackward r;
  const size_t C = static_cast<size_t>(s.c);
  r.dx.resize(x.size());
  r.dx_scale.resize(x.size());
  r.dgamma.assign(C, 0);
  r.dbeta.assign(C, 0);
  r.sum_abs_dy.assign(C, 0);
  r.sum_abs_dy_xmu.assign(C, 0);
  std::vector<LD> sdy(C, 0), sdyxmu(C, 0);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t ch = 0; ch < s.c; ++ch) {
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        const size_t e = static_cast<size_t>(s.Index(i, ch, sp));
        const size_t c = static_cast<size_t>(ch);
        const LD xmu = static_cast<LD>(x[e]) - mean[c];
        sdy[c] += dy[e];
        sdyxmu[c] += dy[e] * xmu;
        r.sum_abs_dy[c] += std::fabs(static_cast<LD>(dy[e]));
        r.sum_abs_dy_xmu[c] += std::fabs(dy[e] * xmu);
      }
    }
  }
  const LD m = static_cast<LD>(s.Values());
  for (size_t c = 0; c < C; ++c) {
    r.dbeta[c] = sdy[c];
    r.dgamma[c] = sdyxmu[c] * invstd[c];
  }
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t ch = 0; ch < s.c; ++ch) {
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        const size_t e = static_cast<size_t>(s.Index(i, ch, sp));
        const size_t c = static_cast<size_t>(ch);
        const LD is = invstd[c];
        const LD a = At(gamma, ch, 1) * is;
        const LD xmu = static_cast<LD>(x[e]) - mean[c];
        if (frozen) {
          r.dx[e] = dy[e] * a;
          r.dx_scale[e] = std::fabs(r.dx[e]);
        } else {
          const LD mdy = sdy[c] / m;
          const LD b = a * is * is * sdyxmu[c] / m;
          r.dx[e] = a * (dy[e] - mdy) - b * xmu;
          // The sums are known to ~1e-5 of their magnitude sums, hence the
          // terms with sum_abs_*.
          r.dx_scale[e] = std::fabs(a) * (std::fabs(dy[e] - mdy) + r.sum_abs_dy[c] / m) +
                          std::fabs(a) * is * is * std::fabs(xmu) *
                              (std::fabs(sdyxmu[c]) + r.sum_abs_dy_xmu[c]) / m;
        }
      }
    }
  }
  return r;
}

// save_mean and save_invstd as a training call gives them, from the
// long-double statistics of x (rounded once to float).
inline void ReferenceSaved(const Shape& s, const std::vector<float>& x, float eps,
                           std::vector<float>* mean, std::vector<float>* invstd) {
  const auto stats = ReferenceStats(s, x);
  mean->resize(stats.size());
  invstd->resize(stats.size());
  for (size_t c = 0; c < stats.size(); ++c) {
    (*mean)[c] = static_cast<float>(stats[c].mean);
    (*invstd)[c] = static_cast<float>(RefInvstd(stats[c].var, eps));
  }
}

// The backward's bounds against ReferenceBackward. Reductions: float lanes
// sum at most 128 terms before folding into double, so the recursive
// summation bound is 128u * sum|terms| (u = 2^-24) plus one rounding of each
// product: 1e-5 * sum|terms| covers it, plus the final rounding to float.
// dx: a few roundings of terms of size dx_scale, plus the sums' error
// carried through (already part of dx_scale).
constexpr double kBackwardSumTol = 1e-5;
constexpr double kBackwardDxTol = 2e-5;

// dbeta, dgamma (each may be empty: not checked) and dx (may be empty)
// against the reference within those bounds.
inline void ExpectBackwardNear(const RefBackward& ref, const std::vector<float>& invstd,
                               const std::vector<float>& dx, const std::vector<float>& dgamma,
                               const std::vector<float>& dbeta) {
  for (size_t c = 0; c < dbeta.size(); ++c) {
    ASSERT_NEAR(dbeta[c], static_cast<double>(ref.dbeta[c]),
                kBackwardSumTol * static_cast<double>(ref.sum_abs_dy[c]))
        << "channel " << c;
  }
  for (size_t c = 0; c < dgamma.size(); ++c) {
    ASSERT_NEAR(dgamma[c], static_cast<double>(ref.dgamma[c]),
                kBackwardSumTol * static_cast<double>(ref.sum_abs_dy_xmu[c] * invstd[c]))
        << "channel " << c;
  }
  for (size_t e = 0; e < dx.size(); ++e) {
    ASSERT_NEAR(dx[e], static_cast<double>(ref.dx[e]),
                kBackwardDxTol * static_cast<double>(ref.dx_scale[e]) + 1e-30)
        << "element " << e;
  }
}

// Bytes of v, for "unchanged" checks.
template <typename T>
std::vector<unsigned char> Bytes(const std::vector<T>& v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// bf16 of a float, rounded to nearest even, NaN as PyTorch (0x7FC0): a
// reference independent of the library's conversions.
inline uint16_t RefFloatToBf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float RefBf16ToFloat(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// f16 of a float, rounded to nearest even (the rounding an IEEE conversion,
// F16C and PyTorch apply), NaN as PyTorch (0x7E00 | sign): decided in double,
// where every step below is exact, so it needs no compiler _Float16 (clang
// 14 has none on x86) and shares nothing with the library's integer steps.
inline uint16_t RefFloatToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7E00u);
  const double a = std::fabs(static_cast<double>(f));
  // 65520 is halfway between the largest f16, 65504, and 2^16: a tie that
  // rounds to the even side, 2^16, past the range.
  if (a >= 65520.0) return static_cast<uint16_t>(sign | 0x7C00u);
  if (a < std::ldexp(1.0, -14)) {  // subnormal range: multiples of 2^-24
    // 1024 (the smallest normal) encodes as itself.
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(a, 24))));
  }
  int e2 = 0;
  std::frexp(a, &e2);     // a = m * 2^e2, m in [0.5, 1)
  int exponent = e2 - 1;  // a in [2^exponent, 2^(exponent + 1))
  double mantissa = std::nearbyint(std::ldexp(a, 10 - exponent));  // in [1024, 2048]
  if (mantissa == 2048.0) {
    mantissa = 1024.0;
    ++exponent;
  }
  return static_cast<uint16_t>(sign | ((exponent + 15) << 10) |
                               (static_cast<uint32_t>(mantissa) - 1024u));
}

// The float value of an f16 pattern (exact); NaN patterns give a NaN.
inline float RefF16ToFloat(uint16_t h) {
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  double a;
  if (exponent == 0x1F) {
    a = mantissa == 0 ? HUGE_VAL : std::nan("");
  } else if (exponent == 0) {
    a = std::ldexp(mantissa, -24);
  } else {
    a = std::ldexp(mantissa + 1024, exponent - 25);
  }
  return static_cast<float>((h & 0x8000u) != 0 ? -a : a);
}

}  // namespace bnorm_test

#endif  // BNORM_TESTS_TEST_SUPPORT_H_
