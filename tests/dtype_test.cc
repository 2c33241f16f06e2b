// bf16 and f16 storage: the conversions against independent references, and
// every entry point against the f32 path on the same (widened) values, under
// every target, in both layouts.
//
// The 16-bit paths load elements as f32 and run exactly the f32 arithmetic,
// so their results must equal the f32 path's on the widened inputs, rounded
// once to the storage type (per-channel outputs bitwise equal, unrounded).
// That makes the comparison exact, not a tolerance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "dtype.h"  // the scalar conversions (header-only, from src/)
#include "test_support.h"

namespace bnorm_test {
namespace {

using bnorm::Bf16ToFloat;
using bnorm::F16ToFloat;
using bnorm::FloatToBf16;
using bnorm::FloatToF16;

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// ---- Conversions ----

// bf16 reference: the nearer of the two bf16 neighbours, ties to the even
// one, decided in double; NaN gives 0x7FC0 (PyTorch).
uint16_t RefBf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  if (std::isinf(f)) return static_cast<uint16_t>(Bits(f) >> 16);
  const uint32_t lo = Bits(f) & 0xFFFF0000u;  // toward zero
  const double a = std::fabs(static_cast<double>(f));
  const double lo_mag = std::fabs(static_cast<double>(FromBits(lo)));
  // The next bf16 away from zero; past the largest finite one, 2^128 (the
  // value an unbounded exponent would give), which rounds to infinity.
  const uint32_t hi = lo + 0x10000u;
  const double hi_mag = (hi & 0x7FFFFFFFu) == 0x7F800000u
                            ? std::ldexp(1.0, 128)
                            : std::fabs(static_cast<double>(FromBits(hi)));
  const double dlo = a - lo_mag, dhi = hi_mag - a;
  const bool up = dhi < dlo || (dhi == dlo && ((lo >> 16) & 1u) != 0);
  return static_cast<uint16_t>((up ? hi : lo) >> 16);
}

std::vector<float> SpecialFloats() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          -std::numeric_limits<float>::quiet_NaN(),
                          FromBits(0x7F800001u),  // signalling NaN
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::min(),
                          std::numeric_limits<float>::denorm_min(),
                          65504.0f,
                          65519.99f,
                          65520.0f,  // f16: rounds to inf
                          6.1e-5f,
                          5.96e-8f,
                          2.98e-8f,
                          2.99e-8f,
                          FromBits(0x7F7F8000u),  // bf16: tie at the top, rounds to inf
                          FromBits(0x7F7F7FFFu)};
  // Every f16 and bf16 value, and the midpoints between neighbours (ties).
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float a = F16ToFloat(static_cast<uint16_t>(h));
    const float b = F16ToFloat(static_cast<uint16_t>(h + 1));
    v.push_back(a);
    if (std::isfinite(a) && std::isfinite(b)) {
      v.push_back(static_cast<float>((static_cast<double>(a) + b) / 2));
    }
    v.push_back(FromBits(h << 16));
    v.push_back(FromBits((h << 16) | 0x8000u));  // bf16 ties
    v.push_back(FromBits((h << 16) | 0x8001u));
    v.push_back(FromBits((h << 16) | 0x7FFFu));
  }
  return v;
}

TEST(Conversions, F16ToFloatIsExactForAllPatterns) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const uint16_t u = static_cast<uint16_t>(h);
    const float ref = RefF16ToFloat(u);
    const float got = F16ToFloat(u);
    if (std::isnan(ref)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      EXPECT_EQ(Bits(got), Bits(ref)) << std::hex << h;
    }
  }
}

// The values every f16 rounding test runs: the special ones, then 2^20
// random bit patterns.
std::vector<float> F16TestValues() {
  std::mt19937 rng(3);
  std::vector<float> values = SpecialFloats();
  for (int k = 0; k < (1 << 20); ++k) values.push_back(FromBits(static_cast<uint32_t>(rng())));
  return values;
}

TEST(Conversions, FloatToF16RoundsToNearestEven) {
  for (float f : F16TestValues()) {
    ASSERT_EQ(FloatToF16(f), RefFloatToF16(f)) << std::hex << Bits(f);
  }
}

#ifdef __FLT16_MANT_DIG__
// The reference itself against the compiler's IEEE conversions, where it has
// _Float16 (GCC; clang 14 has none on x86): NaN aside, the same patterns.
TEST(Conversions, F16ReferenceIsTheCompilersConversion) {
  for (float f : F16TestValues()) {
    if (std::isnan(f)) continue;
    const _Float16 h = static_cast<_Float16>(f);
    uint16_t u;
    std::memcpy(&u, &h, sizeof(u));
    ASSERT_EQ(RefFloatToF16(f), u) << std::hex << Bits(f);
  }
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    _Float16 value;
    const uint16_t u = static_cast<uint16_t>(h);
    std::memcpy(&value, &u, sizeof(u));
    const float ref = RefF16ToFloat(u);
    if (std::isnan(static_cast<float>(value))) {
      EXPECT_TRUE(std::isnan(ref)) << std::hex << h;
    } else {
      EXPECT_EQ(Bits(ref), Bits(static_cast<float>(value))) << std::hex << h;
    }
  }
}
#endif

TEST(Conversions, FloatToBf16RoundsToNearestEven) {
  std::mt19937 rng(4);
  std::vector<float> values = SpecialFloats();
  for (int k = 0; k < (1 << 20); ++k) values.push_back(FromBits(static_cast<uint32_t>(rng())));
  for (float f : values) ASSERT_EQ(FloatToBf16(f), RefBf16(f)) << std::hex << Bits(f);
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(h));
    EXPECT_EQ(Bits(f), h << 16);
  }
}

// ---- The entry points against the f32 path ----

struct Case {
  std::string target;
  bnorm_layout layout;
  bnorm_dtype dtype;
};

std::string CaseName(const testing::TestParamInfo<Case>& info) {
  return info.param.target + (info.param.layout == BNORM_LAYOUT_NCHW ? "_NCHW" : "_NHWC") +
         (info.param.dtype == BNORM_DTYPE_BF16 ? "_BF16" : "_F16");
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const auto& t : TargetNames())
    for (bnorm_layout l : {BNORM_LAYOUT_NCHW, BNORM_LAYOUT_NHWC})
      for (bnorm_dtype d : {BNORM_DTYPE_BF16, BNORM_DTYPE_F16}) cases.push_back({t, l, d});
  return cases;
}

class DTypeTest : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override { target_ = std::make_unique<ScopedTarget>(GetParam().target); }
  void TearDown() override { target_.reset(); }

  bnorm_dtype dtype() const { return GetParam().dtype; }
  Shape MakeShape(int64_t n, int64_t c, int64_t spatial) const {
    return Shape{n, c, spatial, GetParam().layout};
  }
  bnorm_tensor_desc Desc16(const Shape& s) const {
    bnorm_tensor_desc d = s.Desc();
    d.dtype = dtype();
    return d;
  }
  uint16_t Round(float f) const {
    return dtype() == BNORM_DTYPE_BF16 ? FloatToBf16(f) : FloatToF16(f);
  }
  float Widen(uint16_t h) const {
    return dtype() == BNORM_DTYPE_BF16 ? Bf16ToFloat(h) : F16ToFloat(h);
  }
  // Rounds data to the storage type: the 16-bit tensor and its widened copy.
  void Narrow(const std::vector<float>& v, std::vector<uint16_t>* h, std::vector<float>* w) const {
    h->resize(v.size());
    w->resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      (*h)[i] = Round(v[i]);
      (*w)[i] = Widen((*h)[i]);
    }
  }
  // out16 == round(out32) bit for bit (NaN: any NaN pattern of the format
  // that the rounding gives, i.e. the same bits).
  void ExpectRounded(const std::vector<uint16_t>& out16, const std::vector<float>& out32) const {
    ASSERT_EQ(out16.size(), out32.size());
    size_t bad = 0;
    for (size_t i = 0; i < out16.size(); ++i) {
      if (out16[i] != Round(out32[i]) && ++bad <= 5) {
        ADD_FAILURE() << "element " << i << ": got 0x" << std::hex << out16[i] << ", f32 path "
                      << out32[i] << " rounds to 0x" << Round(out32[i]);
      }
    }
    EXPECT_EQ(bad, 0u);
  }

  std::vector<Shape> Shapes() const {
    return {MakeShape(1, 1, 2),    MakeShape(3, 5, 7),     MakeShape(2, 3, 1000),
            MakeShape(8, 16, 49),  MakeShape(17, 33, 1),   MakeShape(1, 64, 257),
            MakeShape(64, 24, 40), MakeShape(4, 1, 3001),  MakeShape(5, 100, 17),
            MakeShape(2, 2048, 9), MakeShape(3, 6, 196),   MakeShape(6, 5, 13)};
  }

 private:
  std::unique_ptr<ScopedTarget> target_;
};

TEST_P(DTypeTest, InferenceIsTheRoundedF32Result) {
  for (const Shape& s : Shapes()) {
    SCOPED_TRACE(s.Name());
    const size_t C = static_cast<size_t>(s.c);
    std::vector<uint16_t> x16;
    std::vector<float> xw;
    Narrow(NormalData(s, 5, 3.0, 2.0), &x16, &xw);
    const auto gamma = UniformVector(C, 6, -2.0f, 2.0f), beta = UniformVector(C, 7, -1.0f, 1.0f);
    const auto mean = UniformVector(C, 8, 2.0f, 4.0f), var = UniformVector(C, 9, 0.5f, 5.0f);
    std::vector<float> y32(xw.size());
    const bnorm_tensor_desc d32 = s.Desc(), d16 = Desc16(s);
    ASSERT_EQ(bnorm_forward_inference(nullptr, &d32, xw.data(), y32.data(), gamma.data(),
                                      beta.data(), mean.data(), var.data(), 1e-5f),
              BNORM_OK);
    std::vector<uint16_t> y16(x16.size(), 0xDEAD);
    ASSERT_EQ(bnorm_forward_inference(nullptr, &d16, x16.data(), y16.data(), gamma.data(),
                                      beta.data(), mean.data(), var.data(), 1e-5f),
              BNORM_OK);
    ExpectRounded(y16, y32);
    // In place.
    std::vector<uint16_t> inplace = x16;
    ASSERT_EQ(bnorm_forward_inference(nullptr, &d16, inplace.data(), inplace.data(), gamma.data(),
                                      beta.data(), mean.data(), var.data(), 1e-5f),
              BNORM_OK);
    EXPECT_EQ(inplace, y16);
  }
}

TEST_P(DTypeTest, TrainingIsTheRoundedF32Result) {
  for (const Shape& s : Shapes()) {
    SCOPED_TRACE(s.Name());
    const size_t C = static_cast<size_t>(s.c);
    std::vector<uint16_t> x16;
    std::vector<float> xw;
    Narrow(NormalData(s, 11, 100.0, 3.0), &x16, &xw);  // offset: shifted sums matter
    const auto gamma = UniformVector(C, 12, -2.0f, 2.0f), beta = UniformVector(C, 13, -1.0f, 1.0f);
    struct Out {
      std::vector<float> rm, rv, sm, si;
    };
    const auto run = [&](const bnorm_tensor_desc& d, const void* x, void* y, Out* o) {
      o->rm = UniformVector(C, 14, -1.0f, 1.0f);
      o->rv = UniformVector(C, 15, 0.5f, 2.0f);
      o->sm.assign(C, -7.0f);
      o->si.assign(C, -7.0f);
      return bnorm_forward_training(nullptr, &d, x, y, gamma.data(), beta.data(), 1e-5f, 0.1f,
                                    o->rm.data(), o->rv.data(), o->sm.data(), o->si.data());
    };
    Out o32, o16;
    std::vector<float> y32(xw.size());
    std::vector<uint16_t> y16(x16.size(), 0xDEAD);
    const bnorm_tensor_desc d32 = s.Desc(), d16 = Desc16(s);
    ASSERT_EQ(run(d32, xw.data(), y32.data(), &o32), BNORM_OK);
    ASSERT_EQ(run(d16, x16.data(), y16.data(), &o16), BNORM_OK);
    ExpectRounded(y16, y32);
    EXPECT_EQ(o16.rm, o32.rm);
    EXPECT_EQ(o16.rv, o32.rv);
    EXPECT_EQ(o16.sm, o32.sm);
    EXPECT_EQ(o16.si, o32.si);
    // Against the long-double reference: one rounding to the format on top
    // of the f32 path's ~1e-6: half an ulp, at most 2^-8 of |y| for bf16 (8
    // significant bits) and 2^-11 for f16 (11), in the normal range.
    const auto ref = ReferenceStats(s, xw);
    std::vector<LD> rmean, rinv;
    for (const auto& st : ref) {
      rmean.push_back(st.mean);
      rinv.push_back(RefInvstd(st.var, 1e-5f));
    }
    const auto yref = ReferenceNormalize(s, xw, rmean, rinv, gamma.data(), beta.data());
    const double half_ulp = dtype() == BNORM_DTYPE_BF16 ? 0x1p-8 : 0x1p-11;
    for (size_t e = 0; e < y16.size(); ++e) {
      const double r = static_cast<double>(yref[e]);
      ASSERT_NEAR(Widen(y16[e]), r, half_ulp * std::fabs(r) + 1e-5 * (1 + std::fabs(r)))
          << "element " << e;
    }
  }
}

using ContextPtr = std::unique_ptr<bnorm_context, decltype(&bnorm_context_destroy)>;

// Contexts of one thread and of two (none, and a test failure, if one cannot
// be created).
std::vector<ContextPtr> OneAndTwoThreads() {
  std::vector<ContextPtr> contexts;
  for (int threads : {1, 2}) {
    bnorm_context* c = nullptr;
    if (bnorm_context_create(threads, &c) != BNORM_OK) {
      ADD_FAILURE() << "bnorm_context_create(" << threads << ") failed";
      return {};
    }
    contexts.emplace_back(c, &bnorm_context_destroy);
  }
  return contexts;
}

// The fused training entry point (residual z, ReLU) on shapes that the
// planner splits into several channel groups per thread, so that each group
// after a task's first is summed while the previous one is written (the
// pipelined kernels of stats_apply.cc, which AVX-512 runs for 16-bit runs of
// at least 64 values): short runs, long runs (1000 values, the long-run
// kernel) and a short last group, on one thread and two (every shape has
// work for two), and in place over z. The largest streams its output on a
// host whose LLC the planner counts as 8 MiB or less; ctest runs this test
// again with BNORM_LLC_SIZE=256K, where all of them do. Same contract as
// above: the f32 path on the widened x and z, rounded once.
TEST_P(DTypeTest, FusedTrainingOverChannelGroupsIsTheRoundedF32Result) {
  const std::vector<ContextPtr> contexts = OneAndTwoThreads();
  ASSERT_EQ(contexts.size(), 2u);
  struct Config {
    Shape s;
    bool all_fusions;  // else z and ReLU only (the large one)
  };
  const Config configs[] = {{MakeShape(16, 64, 200), true},
                            {MakeShape(12, 80, 140), true},
                            {MakeShape(10, 14, 1000), true},
                            {MakeShape(64, 128, 200), false}};
  for (const Config& cfg : configs) {
    const Shape& s = cfg.s;
    const size_t C = static_cast<size_t>(s.c);
    std::vector<uint16_t> x16, z16;
    std::vector<float> xw, zw;
    Narrow(NormalData(s, 71, 20.0, 3.0), &x16, &xw);
    Narrow(NormalData(s, 72, -0.5, 1.0), &z16, &zw);
    const auto gamma = UniformVector(C, 73, -2.0f, 2.0f), beta = UniformVector(C, 74, -1.0f, 1.0f);
    for (bool with_z : {false, true}) {
      for (bnorm_activation act : {BNORM_ACT_NONE, BNORM_ACT_RELU}) {
        if (!cfg.all_fusions && !(with_z && act == BNORM_ACT_RELU)) continue;
        for (const ContextPtr& ctx : contexts) {
          bnorm_context* c = ctx.get();
          SCOPED_TRACE(s.Name() + (with_z ? " +z" : "") + (act ? " relu" : "") + " threads " +
                       std::to_string(bnorm_context_num_threads(c)));
          std::vector<float> y32(xw.size()), sm32(C), si32(C), sm16(C, -7.f), si16(C, -7.f);
          std::vector<uint16_t> y16(x16.size(), 0xDEAD);
          const bnorm_tensor_desc d32 = s.Desc(), d16 = Desc16(s);
          ASSERT_EQ(bnorm_forward_training_ex(c, &d32, xw.data(), with_z ? zw.data() : nullptr,
                                              y32.data(), act, gamma.data(), beta.data(), 1e-5f,
                                              0.1f, nullptr, nullptr, sm32.data(), si32.data()),
                    BNORM_OK);
          ASSERT_EQ(bnorm_forward_training_ex(c, &d16, x16.data(), with_z ? z16.data() : nullptr,
                                              y16.data(), act, gamma.data(), beta.data(), 1e-5f,
                                              0.1f, nullptr, nullptr, sm16.data(), si16.data()),
                    BNORM_OK);
          ExpectRounded(y16, y32);
          EXPECT_EQ(sm16, sm32);
          EXPECT_EQ(si16, si32);
          if (with_z) {  // in place over the residual: y == z
            std::vector<uint16_t> zy = z16;
            ASSERT_EQ(bnorm_forward_training_ex(c, &d16, x16.data(), zy.data(), zy.data(), act,
                                                gamma.data(), beta.data(), 1e-5f, 0.1f, nullptr,
                                                nullptr, nullptr, nullptr),
                      BNORM_OK);
            EXPECT_EQ(zy, y16);
          }
        }
      }
    }
  }
}

// Backward over several channel groups per thread with runs long enough
// (8192 values and more) that AVX-512 sums each group's gradients while the
// previous group's dx is written (grad_sums_apply.cc), plain and with the
// fused ReLU mask and dz, on one thread and two, and in place over dy.
TEST_P(DTypeTest, BackwardOverChannelGroupsIsTheRoundedF32Result) {
  const std::vector<ContextPtr> contexts = OneAndTwoThreads();
  ASSERT_EQ(contexts.size(), 2u);
  for (const Shape& s : {MakeShape(4, 12, 8192), MakeShape(3, 7, 9001)}) {
    const size_t C = static_cast<size_t>(s.c);
    std::vector<uint16_t> x16, y16, dy16;
    std::vector<float> xw, yw, dyw;
    Narrow(NormalData(s, 81, 1.0, 2.0), &x16, &xw);
    Narrow(NormalData(s, 82, 0.0, 1.0), &y16, &yw);  // about half masked
    Narrow(NormalData(s, 83, 0.1, 1.0, 0.0), &dy16, &dyw);
    const auto gamma = UniformVector(C, 84, -2.0f, 2.0f);
    const auto mean = UniformVector(C, 85, 0.5f, 1.5f), invstd = UniformVector(C, 86, 0.2f, 1.f);
    for (bnorm_activation act : {BNORM_ACT_NONE, BNORM_ACT_RELU}) {
      for (bool with_dz : {false, true}) {
        if (act == BNORM_ACT_NONE && with_dz) continue;
        for (const ContextPtr& ctx : contexts) {
          bnorm_context* c = ctx.get();
          SCOPED_TRACE(s.Name() + (act ? " relu" : "") + (with_dz ? " dz" : "") + " threads " +
                       std::to_string(bnorm_context_num_threads(c)));
          const bnorm_tensor_desc d32 = s.Desc(), d16 = Desc16(s);
          const bool relu = act == BNORM_ACT_RELU;
          std::vector<float> dx32(xw.size()), dz32(xw.size()), dg32(C), db32(C);
          std::vector<float> dg16(C, -7.f), db16(C, -7.f);
          std::vector<uint16_t> dx16(x16.size(), 0xDEAD), dz16(x16.size(), 0xDEAD);
          ASSERT_EQ(
              bnorm_backward_ex(c, &d32, xw.data(), relu ? yw.data() : nullptr, dyw.data(),
                                dx32.data(), with_dz ? dz32.data() : nullptr, act, gamma.data(),
                                nullptr, mean.data(), invstd.data(), dg32.data(), db32.data()),
              BNORM_OK);
          ASSERT_EQ(
              bnorm_backward_ex(c, &d16, x16.data(), relu ? y16.data() : nullptr, dy16.data(),
                                dx16.data(), with_dz ? dz16.data() : nullptr, act, gamma.data(),
                                nullptr, mean.data(), invstd.data(), dg16.data(), db16.data()),
              BNORM_OK);
          ExpectRounded(dx16, dx32);
          if (with_dz) ExpectRounded(dz16, dz32);
          EXPECT_EQ(dg16, dg32);
          EXPECT_EQ(db16, db32);
          if (!with_dz) {  // dx in place over dy
            std::vector<uint16_t> inplace = dy16;
            ASSERT_EQ(bnorm_backward_ex(c, &d16, x16.data(), relu ? y16.data() : nullptr,
                                        inplace.data(), inplace.data(), nullptr, act, gamma.data(),
                                        nullptr, mean.data(), invstd.data(), nullptr, nullptr),
                      BNORM_OK);
            EXPECT_EQ(inplace, dx16);
          }
        }
      }
    }
  }
}

TEST_P(DTypeTest, BackwardIsTheRoundedF32Result) {
  for (const Shape& s : Shapes()) {
    for (bool frozen : {false, true}) {
      SCOPED_TRACE(s.Name() + (frozen ? " frozen" : ""));
      const size_t C = static_cast<size_t>(s.c);
      std::vector<uint16_t> x16, dy16;
      std::vector<float> xw, dyw;
      Narrow(NormalData(s, 21, 1.0, 2.0), &x16, &xw);
      Narrow(NormalData(s, 22, 0.1, 1.0, 0.0), &dy16, &dyw);
      const auto gamma = UniformVector(C, 23, -2.0f, 2.0f);
      const auto mean = UniformVector(C, 24, 0.5f, 1.5f), invstd = UniformVector(C, 25, 0.2f, 1.f);
      const auto fn = frozen ? bnorm_backward_frozen : bnorm_backward;
      std::vector<float> dx32(xw.size()), dg32(C), db32(C), dg16(C, -7.0f), db16(C, -7.0f);
      std::vector<uint16_t> dx16(x16.size(), 0xDEAD);
      const bnorm_tensor_desc d32 = s.Desc(), d16 = Desc16(s);
      ASSERT_EQ(fn(nullptr, &d32, xw.data(), dyw.data(), dx32.data(), gamma.data(), mean.data(),
                   invstd.data(), dg32.data(), db32.data()),
                BNORM_OK);
      ASSERT_EQ(fn(nullptr, &d16, x16.data(), dy16.data(), dx16.data(), gamma.data(), mean.data(),
                   invstd.data(), dg16.data(), db16.data()),
                BNORM_OK);
      ExpectRounded(dx16, dx32);
      EXPECT_EQ(dg16, dg32);
      EXPECT_EQ(db16, db32);
      // dx in place over dy.
      std::vector<uint16_t> inplace = dy16;
      ASSERT_EQ(fn(nullptr, &d16, x16.data(), inplace.data(), inplace.data(), gamma.data(),
                   mean.data(), invstd.data(), nullptr, nullptr),
                BNORM_OK);
      EXPECT_EQ(inplace, dx16);
    }
  }
}

// Large tensors take the streaming-store and two-phase paths.
TEST_P(DTypeTest, LargeTensorsMatchTheF32Path) {
  const Shape s = MakeShape(4, 3, (int64_t{12} << 20) / 3 / 4 + 5);  // 12M+ elements
  const size_t C = static_cast<size_t>(s.c);
  std::vector<uint16_t> x16;
  std::vector<float> xw;
  Narrow(UniformVector(static_cast<size_t>(s.Elements()), 31, -3.0f, 5.0f), &x16, &xw);
  std::vector<float> y32(xw.size()), m32(C), i32(C), m16(C), i16(C);
  std::vector<uint16_t> y16(x16.size());
  const bnorm_tensor_desc d32 = s.Desc(), d16 = Desc16(s);
  ASSERT_EQ(bnorm_forward_training(nullptr, &d32, xw.data(), y32.data(), nullptr, nullptr, 1e-5f,
                                   0.1f, nullptr, nullptr, m32.data(), i32.data()),
            BNORM_OK);
  ASSERT_EQ(bnorm_forward_training(nullptr, &d16, x16.data(), y16.data(), nullptr, nullptr, 1e-5f,
                                   0.1f, nullptr, nullptr, m16.data(), i16.data()),
            BNORM_OK);
  EXPECT_EQ(m16, m32);
  EXPECT_EQ(i16, i32);
  ExpectRounded(y16, y32);
}

// f16 holds at most 65504: statistics of values near it must not overflow
// (they accumulate in f32), and outputs overflow to inf exactly where the f32
// result is out of range.
TEST_P(DTypeTest, F16RangeEdges) {
  if (dtype() != BNORM_DTYPE_F16) GTEST_SKIP() << "f16 only";
  const Shape s = MakeShape(6, 2, 50);
  std::vector<uint16_t> x16;
  std::vector<float> xw;
  Narrow(NormalData(s, 41, 6.0e4, 2000.0, 0.0), &x16, &xw);  // up to ~65504 and beyond
  for (auto& v : x16) {
    if ((v & 0x7C00u) == 0x7C00u) v = 0x7BFF;  // keep inputs finite: 65504
  }
  for (size_t i = 0; i < x16.size(); ++i) xw[i] = Widen(x16[i]);
  const std::vector<float> gamma = {1.0f, 5.0e4f}, beta = {0.0f, 0.0f};
  std::vector<float> y32(xw.size()), sm(2), si(2);
  std::vector<uint16_t> y16(x16.size());
  const bnorm_tensor_desc d32 = s.Desc(), d16 = Desc16(s);
  ASSERT_EQ(bnorm_forward_training(nullptr, &d32, xw.data(), y32.data(), gamma.data(), beta.data(),
                                   1e-5f, 0.1f, nullptr, nullptr, nullptr, nullptr),
            BNORM_OK);
  ASSERT_EQ(bnorm_forward_training(nullptr, &d16, x16.data(), y16.data(), gamma.data(), beta.data(),
                                   1e-5f, 0.1f, nullptr, nullptr, sm.data(), si.data()),
            BNORM_OK);
  EXPECT_TRUE(std::isfinite(sm[0]) && std::isfinite(si[0]) && si[0] > 0.0f);
  ExpectRounded(y16, y32);
  size_t infinite = 0;
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t sp = 0; sp < s.spatial; ++sp) {
      const size_t e0 = static_cast<size_t>(s.Index(i, 0, sp));
      const size_t e1 = static_cast<size_t>(s.Index(i, 1, sp));
      EXPECT_TRUE(std::isfinite(Widen(y16[e0])));  // gamma 1: |y| of a few units
      EXPECT_EQ(std::isinf(Widen(y16[e1])), std::fabs(y32[e1]) >= 65520.0f);
      infinite += std::isinf(Widen(y16[e1])) ? 1 : 0;
    }
  }
  EXPECT_GT(infinite, 0u);  // the case is exercised
}

// NaN in one channel stays in that channel, as the format's NaN.
TEST_P(DTypeTest, NaNStaysInItsChannel) {
  const Shape s = MakeShape(4, 3, 20);
  std::vector<uint16_t> x16;
  std::vector<float> xw;
  Narrow(NormalData(s, 51), &x16, &xw);
  x16[static_cast<size_t>(s.Index(2, 1, 7))] = dtype() == BNORM_DTYPE_BF16 ? 0x7FC0 : 0x7E00;
  std::vector<uint16_t> y16(x16.size());
  std::vector<float> sm(3), si(3);
  const bnorm_tensor_desc d16 = Desc16(s);
  ASSERT_EQ(bnorm_forward_training(nullptr, &d16, x16.data(), y16.data(), nullptr, nullptr, 1e-5f,
                                   0.1f, nullptr, nullptr, sm.data(), si.data()),
            BNORM_OK);
  for (int64_t ch = 0; ch < s.c; ++ch) {
    for (int64_t i = 0; i < s.n; ++i) {
      for (int64_t sp = 0; sp < s.spatial; ++sp) {
        EXPECT_EQ(std::isnan(Widen(y16[static_cast<size_t>(s.Index(i, ch, sp))])), ch == 1);
      }
    }
  }
}

// The vector stores round every f32 value the scalar way: each f16 and bf16
// value, the ties and near-ties between neighbours, denormals, NaNs, values
// that round to inf, and random bit patterns, as beta of channels whose x is
// its mean (y = beta). Lanes of one vector hold different values (NHWC rows,
// NCHW runs of 40 with channel boundaries inside vectors), so vectors mixing
// denormal or NaN lanes with ordinary ones are covered: the AVX-512 bf16
// path converts those vectors by integer steps, the others by instruction
// (ctest also runs this suite with BNORM_BF16_ROUNDING=integer).
TEST_P(DTypeTest, StoresRoundEveryValueLikeTheScalarConversion) {
  std::vector<float> values = SpecialFloats();
  std::mt19937 rng(dtype() == BNORM_DTYPE_BF16 ? 61 : 62);
  for (int k = 0; k < (1 << 18); ++k) values.push_back(FromBits(static_cast<uint32_t>(rng())));
  const bool nhwc = GetParam().layout == BNORM_LAYOUT_NHWC;
  const Shape s = nhwc ? MakeShape(1, 4096, 2) : MakeShape(1, 1024, 40);
  const size_t C = static_cast<size_t>(s.c), count = static_cast<size_t>(s.Elements());
  const std::vector<uint16_t> x16(count, 0);  // +0 in both formats
  const std::vector<float> xw(count, 0.0f), mean(C, 0.0f), var(C, 1.0f), gamma(C, 1.5f);
  const bnorm_tensor_desc d32 = s.Desc(), d16 = Desc16(s);
  std::vector<float> beta(C), y32(count);
  std::vector<uint16_t> y16(count);
  for (size_t first = 0; first < values.size(); first += C) {
    for (size_t k = 0; k < C; ++k) beta[k] = values[(first + k) % values.size()];
    ASSERT_EQ(bnorm_forward_inference(nullptr, &d16, x16.data(), y16.data(), gamma.data(),
                                      beta.data(), mean.data(), var.data(), 0.0f),
              BNORM_OK);
    ASSERT_EQ(bnorm_forward_inference(nullptr, &d32, xw.data(), y32.data(), gamma.data(),
                                      beta.data(), mean.data(), var.data(), 0.0f),
              BNORM_OK);
    // The f32 path gives beta itself (0 * scale + beta), +0 for -0.
    for (size_t i = 0; i < count; ++i) {
      const float b = beta[nhwc ? i % C : (i / static_cast<size_t>(s.spatial)) % C];
      if (!std::isnan(b)) {
        ASSERT_EQ(Bits(y32[i]), Bits(b == 0.0f ? 0.0f : b)) << i;
      }
    }
    SCOPED_TRACE(first);
    ExpectRounded(y16, y32);
    if (HasFailure()) return;
  }
}

// NaN inputs of any sign and payload (quiet or signalling) come out as the
// format's one NaN: bf16 0x7FC0, f16 0x7E00, on every target (the AVX2 path
// once found NaN lanes with an ordered compare and kept payloads; f16 kept
// the sign until NaN operands of both signs were found to give plan-dependent
// bits: threads_test NaNsOfBothSignsGiveTheSameBits).
TEST_P(DTypeTest, NaNPatternsComeOutCanonical) {
  const Shape s = MakeShape(2, 3, 40);
  std::vector<uint16_t> x16;
  std::vector<float> xw;
  Narrow(NormalData(s, 52), &x16, &xw);
  const bool bf16 = dtype() == BNORM_DTYPE_BF16;
  const std::vector<uint16_t> nans =
      bf16 ? std::vector<uint16_t>{0x7FC0, 0xFFC0, 0x7FC1, 0xFFFF, 0x7F81, 0xFF81}
           : std::vector<uint16_t>{0x7E00, 0xFE00, 0x7E01, 0xFFFF, 0x7C01, 0xFD01};
  for (size_t k = 0; k < nans.size(); ++k) {
    const size_t e = static_cast<size_t>(
        s.Index(static_cast<int64_t>(k % 2), 1, static_cast<int64_t>(3 + 5 * k)));
    x16[e] = nans[k];
    xw[e] = Widen(nans[k]);
  }
  const std::vector<float> mean{0.5f, -0.25f, 1.0f}, var{2.0f, 0.5f, 1.5f};
  std::vector<uint16_t> y16(x16.size());
  std::vector<float> y32(xw.size());
  const bnorm_tensor_desc d16 = Desc16(s);
  const bnorm_tensor_desc d32 = s.Desc();
  ASSERT_EQ(bnorm_forward_inference(nullptr, &d16, x16.data(), y16.data(), nullptr, nullptr,
                                    mean.data(), var.data(), 1e-5f),
            BNORM_OK);
  ASSERT_EQ(bnorm_forward_inference(nullptr, &d32, xw.data(), y32.data(), nullptr, nullptr,
                                    mean.data(), var.data(), 1e-5f),
            BNORM_OK);
  ExpectRounded(y16, y32);
  size_t nan_count = 0;
  for (const uint16_t h : y16) {
    if (!std::isnan(Widen(h))) continue;
    ++nan_count;
    if (bf16) {
      EXPECT_EQ(h, 0x7FC0) << std::hex << h;
    } else {
      EXPECT_EQ(h, 0x7E00u) << std::hex << h;
    }
  }
  EXPECT_EQ(nan_count, nans.size());
}

// The vector loads widen every 16-bit pattern exactly: f16 subnormals, Inf
// and NaN take separate integer steps on targets without F16C (SSE4, SSSE3,
// EMU128, SCALAR), and bf16 patterns widen to f32 subnormals. Each pattern
// once, in lanes beside every other kind: an identity (mean 0, var 1,
// eps 0, gamma 1, beta 0) gives every finite value back (-0 as +0), and the
// frozen backward with invstd 1 gives dy back; both are compared with the f32
// path on the exactly widened values too.
TEST_P(DTypeTest, LoadsWidenEveryPatternExactly) {
  const bool nhwc = GetParam().layout == BNORM_LAYOUT_NHWC;
  const Shape s = nhwc ? MakeShape(16, 4096, 1) : MakeShape(1, 1024, 64);
  const size_t C = static_cast<size_t>(s.c), count = static_cast<size_t>(s.Elements());
  ASSERT_EQ(count, size_t{0x10000});
  std::vector<uint16_t> x16(count);
  std::vector<float> xw(count);
  for (size_t i = 0; i < count; ++i) {
    x16[i] = static_cast<uint16_t>(i);
    xw[i] = Widen(x16[i]);
  }
  const std::vector<float> zeros(C, 0.0f), ones(C, 1.0f);
  const bnorm_tensor_desc d32 = s.Desc(), d16 = Desc16(s);
  std::vector<uint16_t> y16(count);
  std::vector<float> y32(count);
  ASSERT_EQ(bnorm_forward_inference(nullptr, &d16, x16.data(), y16.data(), ones.data(),
                                    zeros.data(), zeros.data(), ones.data(), 0.0f),
            BNORM_OK);
  ASSERT_EQ(bnorm_forward_inference(nullptr, &d32, xw.data(), y32.data(), ones.data(), zeros.data(),
                                    zeros.data(), ones.data(), 0.0f),
            BNORM_OK);
  ExpectRounded(y16, y32);
  const uint16_t negative_zero = 0x8000;
  size_t bad = 0;
  for (size_t i = 0; i < count; ++i) {
    if (std::isnan(xw[i])) continue;
    const uint16_t want = x16[i] == negative_zero ? 0 : x16[i];
    if (y16[i] != want && ++bad <= 5) {
      ADD_FAILURE() << "pattern 0x" << std::hex << x16[i] << " came back as 0x" << y16[i];
    }
  }
  EXPECT_EQ(bad, 0u);
  // dy through the frozen backward: dx = dy * gamma * invstd = dy.
  std::vector<uint16_t> dx16(count);
  std::vector<float> dx32(count);
  ASSERT_EQ(bnorm_backward_frozen(nullptr, &d16, x16.data(), x16.data(), dx16.data(), ones.data(),
                                  zeros.data(), ones.data(), nullptr, nullptr),
            BNORM_OK);
  ASSERT_EQ(bnorm_backward_frozen(nullptr, &d32, xw.data(), xw.data(), dx32.data(), ones.data(),
                                  zeros.data(), ones.data(), nullptr, nullptr),
            BNORM_OK);
  ExpectRounded(dx16, dx32);
  for (size_t i = 0; i < count; ++i) {
    if (!std::isnan(xw[i])) {
      ASSERT_EQ(Bits(dx32[i]), Bits(xw[i])) << std::hex << x16[i];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, DTypeTest, testing::ValuesIn(Cases()), CaseName);

}  // namespace
}  // namespace bnorm_test
