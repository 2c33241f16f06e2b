// Split statistics (bnorm_stats, bnorm_stats_merge, bnorm_forward_apply,
// bnorm_backward_reduce, bnorm_backward_apply) under every target, in both
// layouts and in f32, bf16 and f16:
//  - the split is bitwise the fused calls on the same tensor;
//  - bnorm_stats against the long-double reference;
//  - a batch split along n (parts of 0 samples included) against the whole
//    batch, as a synchronized batch norm would run it in one process;
//  - bnorm_stats_merge's bits (k == 1, skipped partials, in place, order);
//  - every documented error status, with no byte written on error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "test_support.h"

namespace bnorm_test {
namespace {

constexpr float kNaNf = std::numeric_limits<float>::quiet_NaN();
constexpr float kInff = std::numeric_limits<float>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- Tensors in any dtype ----

const char* DtypeName(bnorm_dtype d) {
  return d == BNORM_DTYPE_F32 ? "f32" : (d == BNORM_DTYPE_BF16 ? "bf16" : "f16");
}

// A tensor stored in dtype: f32 in f, bf16/f16 in h.
struct Data {
  bnorm_dtype dtype = BNORM_DTYPE_F32;
  std::vector<float> f;
  std::vector<uint16_t> h;

  size_t ElemBytes() const { return dtype == BNORM_DTYPE_F32 ? 4 : 2; }
  // Element `elem` onwards (the start of a part along n).
  void* Ptr(int64_t elem = 0) {
    unsigned char* base = dtype == BNORM_DTYPE_F32 ? reinterpret_cast<unsigned char*>(f.data())
                                                   : reinterpret_cast<unsigned char*>(h.data());
    return base + static_cast<size_t>(elem) * ElemBytes();
  }
  std::vector<unsigned char> Raw() const { return dtype == BNORM_DTYPE_F32 ? Bytes(f) : Bytes(h); }
  // The value of element i, widened to float.
  float Value(size_t i) const {
    if (dtype == BNORM_DTYPE_F32) return f[i];
    return dtype == BNORM_DTYPE_BF16 ? RefBf16ToFloat(h[i]) : RefF16ToFloat(h[i]);
  }
  std::vector<float> Values() const {
    const size_t count = dtype == BNORM_DTYPE_F32 ? f.size() : h.size();
    std::vector<float> v(count);
    for (size_t i = 0; i < count; ++i) v[i] = Value(i);
    return v;
  }
};

// v rounded to dtype (finite values only in this file's 16-bit data).
Data Encode(const std::vector<float>& v, bnorm_dtype dtype) {
  Data d;
  d.dtype = dtype;
  if (dtype == BNORM_DTYPE_F32) {
    d.f = v;
    return d;
  }
  d.h.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    d.h[i] = dtype == BNORM_DTYPE_BF16 ? RefFloatToBf16(v[i]) : RefFloatToF16(v[i]);
  }
  return d;
}

// A tensor of n elements filled with the byte 0xA5: every written element shows.
Data Sentinel(size_t n, bnorm_dtype dtype) {
  Data d;
  d.dtype = dtype;
  if (dtype == BNORM_DTYPE_F32) {
    d.f.resize(n);
    if (n != 0) std::memset(d.f.data(), 0xA5, n * 4);
  } else {
    d.h.assign(n, 0xA5A5);
  }
  return d;
}

std::vector<float> FloatSentinel(size_t n) { return Sentinel(n, BNORM_DTYPE_F32).f; }
std::vector<double> DoubleSentinel(size_t n) {
  std::vector<double> v(n);
  if (n != 0) std::memset(v.data(), 0xA5, n * sizeof(double));
  return v;
}

// An upper bound on one unit in the last place of a 16-bit result near v (a
// float difference can flip the final rounding); 0 for f32.
double Ulp16(bnorm_dtype dtype, double v) {
  if (dtype == BNORM_DTYPE_BF16) return std::fabs(v) * 0x1p-7 + 1e-38;
  if (dtype == BNORM_DTYPE_F16) return std::fabs(v) * 0x1p-10 + 0x1p-24;
  return 0.0;
}

bnorm_tensor_desc DescOf(const Shape& s, bnorm_dtype dtype, int64_t n) {
  return bnorm_tensor_desc{n, s.c, s.spatial, s.layout, dtype};
}

// The per-channel results of a training forward pass.
struct ForwardOut {
  Data y;
  std::vector<float> rm, rv, sm, si;
};

// The inputs shared by the forward checks.
struct ForwardIn {
  Data x;
  std::vector<float> gamma, beta, rm0, rv0;
};

ForwardIn MakeForwardIn(const Shape& s, bnorm_dtype dtype, uint64_t seed) {
  const size_t C = static_cast<size_t>(s.c);
  return ForwardIn{Encode(NormalData(s, seed, 0.5, 2.0), dtype),
                   UniformVector(C, seed + 1, -2.0f, 2.0f), UniformVector(C, seed + 2, -1.0f, 1.0f),
                   UniformVector(C, seed + 3, -1.0f, 1.0f), UniformVector(C, seed + 4, 0.5f, 2.0f)};
}

ForwardOut NewForwardOut(const Shape& s, const ForwardIn& in, bnorm_dtype dtype) {
  const size_t C = static_cast<size_t>(s.c);
  return ForwardOut{Sentinel(static_cast<size_t>(s.Elements()), dtype), in.rm0, in.rv0,
                    FloatSentinel(C), FloatSentinel(C)};
}

constexpr float kEps = 1e-5f;
constexpr float kMomentum = 0.1f;

ForwardOut Fused(bnorm_context* ctx, const Shape& s, bnorm_dtype dtype, ForwardIn& in) {
  ForwardOut o = NewForwardOut(s, in, dtype);
  const bnorm_tensor_desc d = DescOf(s, dtype, s.n);
  EXPECT_EQ(bnorm_forward_training(ctx, &d, in.x.Ptr(), o.y.Ptr(), in.gamma.data(),
                                   in.beta.data(), kEps, kMomentum, o.rm.data(), o.rv.data(),
                                   o.sm.data(), o.si.data()),
            BNORM_OK);
  return o;
}

void ExpectSameForward(const ForwardOut& got, const ForwardOut& want) {
  EXPECT_TRUE(got.y.Raw() == want.y.Raw()) << "y differs";
  EXPECT_EQ(Bytes(got.sm), Bytes(want.sm)) << "save_mean differs";
  EXPECT_EQ(Bytes(got.si), Bytes(want.si)) << "save_invstd differs";
  EXPECT_EQ(Bytes(got.rm), Bytes(want.rm)) << "running_mean differs";
  EXPECT_EQ(Bytes(got.rv), Bytes(want.rv)) << "running_var differs";
}

// bnorm_forward_training against bnorm_stats -> bnorm_forward_apply on the
// same input, bit for bit. Returns the training results.
ForwardOut ExpectTrainingIsTheSplit(bnorm_context* ctx, const Shape& s, bnorm_dtype dtype,
                                    ForwardIn& in) {
  const size_t C = static_cast<size_t>(s.c);
  const ForwardOut fused = Fused(ctx, s, dtype, in);
  const bnorm_tensor_desc d = DescOf(s, dtype, s.n);
  std::vector<double> mean = DoubleSentinel(C), m2 = DoubleSentinel(C);
  EXPECT_EQ(bnorm_stats(ctx, &d, in.x.Ptr(), mean.data(), m2.data()), BNORM_OK);
  ForwardOut split = NewForwardOut(s, in, dtype);
  EXPECT_EQ(bnorm_forward_apply(ctx, &d, in.x.Ptr(), split.y.Ptr(), in.gamma.data(),
                                in.beta.data(), s.Values(), mean.data(), m2.data(), kEps,
                                kMomentum, split.rm.data(), split.rv.data(), split.sm.data(),
                                split.si.data()),
            BNORM_OK);
  ExpectSameForward(split, fused);
  return fused;
}

// bnorm_backward against bnorm_backward_reduce -> bnorm_backward_apply on the
// same inputs, bit for bit. Returns the fused results and the split's sums.
struct BackwardCheck {
  Data dx;
  std::vector<float> dg, db;
  std::vector<double> sdy, sdyxmu;
};
BackwardCheck ExpectBackwardIsTheSplit(bnorm_context* ctx, const Shape& s, bnorm_dtype dtype,
                                       Data& x, Data& dy, const std::vector<float>& gamma,
                                       const ForwardOut& fwd) {
  const size_t C = static_cast<size_t>(s.c), E = static_cast<size_t>(s.Elements());
  const bnorm_tensor_desc d = DescOf(s, dtype, s.n);
  BackwardCheck f{Sentinel(E, dtype), FloatSentinel(C), FloatSentinel(C), DoubleSentinel(C),
                  DoubleSentinel(C)};
  EXPECT_EQ(bnorm_backward(ctx, &d, x.Ptr(), dy.Ptr(), f.dx.Ptr(), gamma.data(), fwd.sm.data(),
                           fwd.si.data(), f.dg.data(), f.db.data()),
            BNORM_OK);
  EXPECT_EQ(bnorm_backward_reduce(ctx, &d, x.Ptr(), dy.Ptr(), fwd.sm.data(), f.sdy.data(),
                                  f.sdyxmu.data()),
            BNORM_OK);
  Data dx = Sentinel(E, dtype);
  std::vector<float> dg = FloatSentinel(C), db = FloatSentinel(C);
  EXPECT_EQ(bnorm_backward_apply(ctx, &d, x.Ptr(), dy.Ptr(), dx.Ptr(), gamma.data(), fwd.sm.data(),
                                 fwd.si.data(), s.Values(), f.sdy.data(), f.sdyxmu.data(),
                                 dg.data(), db.data()),
            BNORM_OK);
  EXPECT_TRUE(dx.Raw() == f.dx.Raw()) << "dx differs";
  EXPECT_EQ(Bytes(dg), Bytes(f.dg)) << "dgamma differs";
  EXPECT_EQ(Bytes(db), Bytes(f.db)) << "dbeta differs";
  return f;
}

// ---- The parameterized suite: every target, both layouts ----

class SplitTest : public testing::TestWithParam<TargetLayout> {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(bnorm_context_create(1, &single_), BNORM_OK);
    ASSERT_EQ(bnorm_context_create(0, &all_), BNORM_OK);
  }
  static void TearDownTestSuite() {
    bnorm_context_destroy(single_);
    bnorm_context_destroy(all_);
    single_ = all_ = nullptr;
  }
  void SetUp() override { target_ = std::make_unique<ScopedTarget>(GetParam().target); }
  void TearDown() override { target_.reset(); }

  bnorm_layout layout() const { return GetParam().layout; }
  static std::vector<std::pair<const char*, bnorm_context*>> Contexts() {
    return {{"1 thread", single_}, {"all cores", all_}};
  }
  // Tiny and prime sizes, c == 1, spatial == 1, n == 1, a channel of 1.6 MB
  // (two-phase on all cores of a machine with less than 1.6 MB of L2 and
  // LLC per thread; fused on one thread: FusesBeyondL2 in src/plan.h), many
  // small channels (channel-fused in NCHW), and NHWC rows of 3 and of 1000
  // channels. Channel-fused NCHW plans with several groups per task reduce
  // each group while they write
  // the one before (stats_apply.h, grad_sums_apply.h; f32, AVX2 and AVX-512,
  // runs of at least a vector; 16-bit training, AVX-512, runs of at least 64
  // values: 5x13x1000 and 10x3x3400 only): on one thread, 8x256x49 (short runs),
  // 5x13x1000 (long runs, a smaller last group) and 10x3x3400 (two
  // reduction units per channel) take them whatever the machine's caches;
  // 3x1000x7 (runs shorter than an AVX2 vector) covers the plans that
  // decline and prefetch instead.
  std::vector<Shape> Shapes() const {
    const bnorm_layout l = layout();
    std::vector<Shape> shapes = {Shape{1, 1, 2, l},    Shape{3, 5, 7, l},
                                 Shape{2, 17, 13, l},   Shape{6, 1, 11, l},
                                 Shape{9, 6, 1, l},     Shape{1, 4, 33, l},
                                 Shape{8, 256, 49, l},  Shape{2, 3, 200000, l},
                                 Shape{4, 3, 50, l},    Shape{3, 1000, 7, l}};
    if (l == BNORM_LAYOUT_NCHW) {  // the pipelined plans are NCHW only
      shapes.push_back(Shape{5, 13, 1000, l});
      shapes.push_back(Shape{10, 3, 3400, l});
    }
    return shapes;
  }

  static bnorm_context* single_;
  static bnorm_context* all_;

 private:
  std::unique_ptr<ScopedTarget> target_;
};

bnorm_context* SplitTest::single_ = nullptr;
bnorm_context* SplitTest::all_ = nullptr;

const bnorm_dtype kDtypes[] = {BNORM_DTYPE_F32, BNORM_DTYPE_BF16, BNORM_DTYPE_F16};

// 1. bnorm_forward_training == bnorm_stats -> merge (k = 1) -> forward_apply.
TEST_P(SplitTest, ForwardTrainingIsBitwiseTheSplit) {
  for (const Shape& s : Shapes()) {
    for (bnorm_dtype dtype : kDtypes) {
      const size_t C = static_cast<size_t>(s.c);
      ForwardIn in = MakeForwardIn(s, dtype, 100 + static_cast<uint64_t>(s.c));
      std::vector<unsigned char> y_first_context;
      for (const auto& [ctx_name, ctx] : Contexts()) {
        SCOPED_TRACE(s.Name() + " " + DtypeName(dtype) + " " + ctx_name);
        const ForwardOut fused = Fused(ctx, s, dtype, in);
        const bnorm_tensor_desc d = DescOf(s, dtype, s.n);
        std::vector<double> mean = DoubleSentinel(C), m2 = DoubleSentinel(C);
        ASSERT_EQ(bnorm_stats(ctx, &d, in.x.Ptr(), mean.data(), m2.data()), BNORM_OK);
        const int64_t count = s.Values();
        int64_t total = -1;
        std::vector<double> mean_m = DoubleSentinel(C), m2_m = DoubleSentinel(C);
        ASSERT_EQ(bnorm_stats_merge(s.c, 1, &count, mean.data(), m2.data(), &total,
                                    mean_m.data(), m2_m.data()),
                  BNORM_OK);
        EXPECT_EQ(total, count);
        EXPECT_EQ(Bytes(mean_m), Bytes(mean));
        EXPECT_EQ(Bytes(m2_m), Bytes(m2));
        ForwardOut split = NewForwardOut(s, in, dtype);
        ASSERT_EQ(bnorm_forward_apply(ctx, &d, in.x.Ptr(), split.y.Ptr(), in.gamma.data(),
                                      in.beta.data(), total, mean_m.data(), m2_m.data(), kEps,
                                      kMomentum, split.rm.data(), split.rv.data(),
                                      split.sm.data(), split.si.data()),
                  BNORM_OK);
        ExpectSameForward(split, fused);
        // In place (y == x), and without the optional per-channel outputs.
        Data xy = in.x;
        ASSERT_EQ(bnorm_forward_apply(ctx, &d, xy.Ptr(), xy.Ptr(), in.gamma.data(),
                                      in.beta.data(), total, mean_m.data(), m2_m.data(), kEps,
                                      kMomentum, nullptr, nullptr, nullptr, nullptr),
                  BNORM_OK);
        EXPECT_TRUE(xy.Raw() == fused.y.Raw()) << "in-place y differs";
        // Results do not depend on the thread count.
        if (y_first_context.empty()) {
          y_first_context = fused.y.Raw();
        } else {
          EXPECT_TRUE(fused.y.Raw() == y_first_context) << "y depends on the thread count";
        }
      }
    }
  }
}

// 1b. The same with NaN and Inf in some channels: their units come out
// non-finite and are redone in double, whether summed alone (bnorm_stats) or
// while the previous channel group is written (the channel-fused plan); and
// backward with NaN and Inf in dy against its split.
TEST_P(SplitTest, NanAndInfGiveTheBitsOfTheSplit) {
  const bnorm_layout l = layout();
  if (l != BNORM_LAYOUT_NCHW) GTEST_SKIP() << "the pipelined plans are NCHW only";
  for (const Shape& s : {Shape{5, 13, 1000, l}, Shape{8, 256, 49, l}}) {
    for (bnorm_dtype dtype : kDtypes) {
      std::vector<float> v = NormalData(s, 400, 0.5, 2.0);
      v[static_cast<size_t>(s.Index(1, 6, 3))] = std::numeric_limits<float>::quiet_NaN();
      v[static_cast<size_t>(s.Index(2, 9, 0))] = std::numeric_limits<float>::infinity();
      v[static_cast<size_t>(s.Index(s.n - 1, s.c - 1, s.spatial - 1))] =
          -std::numeric_limits<float>::infinity();
      ForwardIn in = MakeForwardIn(s, dtype, 401);
      in.x = Encode(v, dtype);
      for (const auto& [ctx_name, ctx] : Contexts()) {
        SCOPED_TRACE(s.Name() + " " + DtypeName(dtype) + " " + ctx_name);
        const ForwardOut fused = ExpectTrainingIsTheSplit(ctx, s, dtype, in);
        const bnorm_tensor_desc d = DescOf(s, dtype, s.n);
        for (int64_t ch : {int64_t{6}, int64_t{9}, s.c - 1}) {
          EXPECT_TRUE(std::isnan(fused.sm[static_cast<size_t>(ch)])) << "channel " << ch;
        }
        EXPECT_TRUE(std::isfinite(fused.sm[0]) && std::isfinite(fused.si[0]));
        // Backward of finite statistics with NaN and Inf in dy: its sums
        // are taken while the previous group's dx is written
        // (grad_sums_apply.h). Also in place (dx == dy).
        std::vector<float> g = NormalData(s, 402, 0.0, 1.0);
        g[static_cast<size_t>(s.Index(0, 4, 1))] = std::numeric_limits<float>::quiet_NaN();
        g[static_cast<size_t>(s.Index(s.n - 1, 7, 2))] = std::numeric_limits<float>::infinity();
        const Data dy = Encode(g, dtype);
        ForwardIn clean = MakeForwardIn(s, dtype, 403);
        const ForwardOut fwd = Fused(ctx, s, dtype, clean);
        Data x_clean = clean.x;
        Data dy_copy = dy;
        const BackwardCheck f =
            ExpectBackwardIsTheSplit(ctx, s, dtype, x_clean, dy_copy, clean.gamma, fwd);
        const Data& dx_fused = f.dx;
        EXPECT_TRUE(std::isnan(f.db[4]) && std::isinf(f.db[7]));
        EXPECT_TRUE(std::isfinite(f.db[0]) && std::isfinite(f.dg[0]));
        Data in_place = dy;
        ASSERT_EQ(bnorm_backward(ctx, &d, x_clean.Ptr(), in_place.Ptr(), in_place.Ptr(),
                                 clean.gamma.data(), fwd.sm.data(), fwd.si.data(), nullptr,
                                 nullptr),
                  BNORM_OK);
        EXPECT_TRUE(in_place.Raw() == dx_fused.Raw()) << "in-place dx differs";
      }
    }
  }
}

// 1c. Units whose float sums overflow (values near 1e30: squares and
// products beyond FLT_MAX, not DBL_MAX) are redone in double; in the
// pipelined plans that is done after the group, unit by unit, and must hit
// the right unit: the second of channel 1 and the first of channel 2 here.
TEST_P(SplitTest, OverflowingUnitsGiveTheBitsOfTheSplit) {
  if (layout() != BNORM_LAYOUT_NCHW) GTEST_SKIP() << "the pipelined plans are NCHW only";
  const Shape s{10, 3, 3400, BNORM_LAYOUT_NCHW};
  const size_t C = static_cast<size_t>(s.c);
  for (bnorm_dtype dtype : {BNORM_DTYPE_F32, BNORM_DTYPE_BF16}) {  // f16 cannot hold 1e30
    std::vector<float> v = NormalData(s, 500, 0.5, 2.0);
    std::vector<float> g = NormalData(s, 501, 0.0, 1.0);
    const size_t big1 = static_cast<size_t>(s.Index(s.n - 1, 1, s.spatial - 1));
    const size_t big2 = static_cast<size_t>(s.Index(0, 2, 0));
    v[big1] = 1e30f;
    g[big1] = 1e30f;
    v[big2] = -1e30f;
    g[big2] = 1e30f;
    ForwardIn in = MakeForwardIn(s, dtype, 502);
    in.x = Encode(v, dtype);
    Data dy = Encode(g, dtype);
    for (const auto& [ctx_name, ctx] : Contexts()) {
      SCOPED_TRACE(std::string(DtypeName(dtype)) + " " + ctx_name);
      const ForwardOut fused = ExpectTrainingIsTheSplit(ctx, s, dtype, in);
      for (size_t ch = 0; ch < C; ++ch) {
        EXPECT_TRUE(std::isfinite(fused.sm[ch]) && std::isfinite(fused.si[ch]) &&
                    fused.si[ch] > 0.0f)
            << "channel " << ch;
      }
      const BackwardCheck f = ExpectBackwardIsTheSplit(ctx, s, dtype, in.x, dy, in.gamma, fused);
      for (size_t ch = 0; ch < C; ++ch) {
        EXPECT_TRUE(std::isfinite(f.dg[ch]) && std::isfinite(f.db[ch])) << "channel " << ch;
      }
    }
  }
}

// 2. bnorm_backward == bnorm_backward_reduce -> bnorm_backward_apply.
TEST_P(SplitTest, BackwardIsBitwiseTheSplit) {
  for (const Shape& s : Shapes()) {
    for (bnorm_dtype dtype : kDtypes) {
      const size_t C = static_cast<size_t>(s.c);
      ForwardIn in = MakeForwardIn(s, dtype, 200 + static_cast<uint64_t>(s.c));
      Data dy = Encode(NormalData(s, 300, 0.25, 1.0, 0.0), dtype);
      for (const auto& [ctx_name, ctx] : Contexts()) {
        SCOPED_TRACE(s.Name() + " " + DtypeName(dtype) + " " + ctx_name);
        const ForwardOut fwd = Fused(ctx, s, dtype, in);
        const bnorm_tensor_desc d = DescOf(s, dtype, s.n);
        const size_t E = static_cast<size_t>(s.Elements());
        const BackwardCheck f = ExpectBackwardIsTheSplit(ctx, s, dtype, in.x, dy, in.gamma, fwd);
        const std::vector<float>& dg_fused = f.dg;
        const std::vector<float>& db_fused = f.db;
        const Data& dx_fused = f.dx;
        const std::vector<double>& sdy = f.sdy;
        const std::vector<double>& sdyxmu = f.sdyxmu;
        // dx == NULL: the parameter gradients only.
        std::vector<float> dg2 = FloatSentinel(C), db2 = FloatSentinel(C);
        ASSERT_EQ(bnorm_backward_apply(ctx, &d, in.x.Ptr(), dy.Ptr(), nullptr, in.gamma.data(),
                                       fwd.sm.data(), fwd.si.data(), s.Values(), sdy.data(),
                                       sdyxmu.data(), dg2.data(), db2.data()),
                  BNORM_OK);
        EXPECT_EQ(Bytes(dg2), Bytes(dg_fused)) << "dgamma differs without dx";
        EXPECT_EQ(Bytes(db2), Bytes(db_fused)) << "dbeta differs without dx";
        // In place, dx == dy, with no parameter gradients.
        Data dxy = dy;
        ASSERT_EQ(bnorm_backward_apply(ctx, &d, in.x.Ptr(), dxy.Ptr(), dxy.Ptr(), in.gamma.data(),
                                       fwd.sm.data(), fwd.si.data(), s.Values(), sdy.data(),
                                       sdyxmu.data(), nullptr, nullptr),
                  BNORM_OK);
        EXPECT_TRUE(dxy.Raw() == dx_fused.Raw()) << "in-place dx differs";
        // gamma == NULL (1) too.
        Data dx_fused1 = Sentinel(E, dtype), dx1 = Sentinel(E, dtype);
        ASSERT_EQ(bnorm_backward(ctx, &d, in.x.Ptr(), dy.Ptr(), dx_fused1.Ptr(), nullptr,
                                 fwd.sm.data(), fwd.si.data(), nullptr, nullptr),
                  BNORM_OK);
        ASSERT_EQ(bnorm_backward_apply(ctx, &d, in.x.Ptr(), dy.Ptr(), dx1.Ptr(), nullptr,
                                       fwd.sm.data(), fwd.si.data(), s.Values(), sdy.data(),
                                       sdyxmu.data(), nullptr, nullptr),
                  BNORM_OK);
        EXPECT_TRUE(dx1.Raw() == dx_fused1.Raw()) << "dx differs with gamma == NULL";
      }
    }
  }
}

// 3. bnorm_stats against the long-double two-pass reference on the same
// (widened) inputs. The tolerance is the accuracy bar of the library's
// statistics (bnorm.h: float sums of short shifted blocks closed in double):
// m2 to 1e-6 of itself and the mean to 1e-6 of the standard deviation (plus
// the double rounding of a mean far from 0). Measured errors are well below
// (printed on failure).
constexpr double kStatTol = 1e-6;

void ExpectStatsNearReference(const Shape& s, const std::vector<float>& values,
                              const std::vector<double>& mean, const std::vector<double>& m2) {
  const auto ref = ReferenceStats(s, values);
  const LD m = static_cast<LD>(s.Values());
  for (size_t c = 0; c < static_cast<size_t>(s.c); ++c) {
    const double ref_m2 = static_cast<double>(ref[c].var * m);
    const double ref_mean = static_cast<double>(ref[c].mean);
    const double std_dev = std::sqrt(static_cast<double>(ref[c].var));
    EXPECT_NEAR(m2[c], ref_m2, kStatTol * ref_m2) << "channel " << c;
    EXPECT_NEAR(mean[c], ref_mean, kStatTol * std_dev + 0x1p-50 * std::fabs(ref_mean))
        << "channel " << c;
  }
}

TEST_P(SplitTest, StatsMatchTheLongDoubleReference) {
  const bnorm_layout l = layout();
  const std::vector<Shape> shapes = {Shape{1, 1, 2, l},    Shape{3, 5, 7, l},
                                     Shape{16, 8, 1024, l}, Shape{64, 32, 49, l},
                                     Shape{2, 3, 50000, l}, Shape{4096, 5, 1, l}};
  for (const Shape& s : shapes) {
    const size_t C = static_cast<size_t>(s.c);
    // f32 with large offsets (the shifted sums must not lose the variance).
    for (double offset : {0.0, 1e4, 1e5}) {
      SCOPED_TRACE(s.Name() + " offset " + std::to_string(offset));
      const auto x = NormalData(s, 7, offset, 1.0, offset == 0.0 ? 0.5 : 0.0);
      const bnorm_tensor_desc d = s.Desc();
      std::vector<double> mean = DoubleSentinel(C), m2 = DoubleSentinel(C);
      ASSERT_EQ(bnorm_stats(all_, &d, x.data(), mean.data(), m2.data()), BNORM_OK);
      ExpectStatsNearReference(s, x, mean, m2);
    }
    // bf16/f16: the statistics of the widened values.
    for (bnorm_dtype dtype : {BNORM_DTYPE_BF16, BNORM_DTYPE_F16}) {
      SCOPED_TRACE(s.Name() + " " + DtypeName(dtype));
      Data x = Encode(NormalData(s, 8, 3.0, 1.5), dtype);
      const bnorm_tensor_desc d = DescOf(s, dtype, s.n);
      std::vector<double> mean = DoubleSentinel(C), m2 = DoubleSentinel(C);
      ASSERT_EQ(bnorm_stats(all_, &d, x.Ptr(), mean.data(), m2.data()), BNORM_OK);
      ExpectStatsNearReference(s, x.Values(), mean, m2);
    }
  }
}

TEST_P(SplitTest, StatsOfConstantChannelsAreExact) {
  const float constants[] = {0.0f, -2.5f, 100000.5f, 3.3f, 1e-30f, -7e20f};
  for (const Shape& s : {Shape{5, 6, 37, layout()}, Shape{300, 6, 1, layout()},
                         Shape{2, 6, 70001, layout()}}) {
    SCOPED_TRACE(s.Name());
    std::vector<float> x(static_cast<size_t>(s.Elements()));
    for (int64_t i = 0; i < s.n; ++i)
      for (int64_t ch = 0; ch < s.c; ++ch)
        for (int64_t sp = 0; sp < s.spatial; ++sp)
          x[static_cast<size_t>(s.Index(i, ch, sp))] = constants[ch];
    const bnorm_tensor_desc d = s.Desc();
    std::vector<double> mean = DoubleSentinel(6), m2 = DoubleSentinel(6);
    ASSERT_EQ(bnorm_stats(nullptr, &d, x.data(), mean.data(), m2.data()), BNORM_OK);
    for (size_t c = 0; c < 6; ++c) {
      EXPECT_EQ(mean[c], static_cast<double>(constants[c])) << "channel " << c;
      EXPECT_EQ(m2[c], 0.0) << "channel " << c;
    }
  }
}

TEST_P(SplitTest, StatsNanAndInfStayInTheirChannel) {
  for (const Shape& s : {Shape{4, 5, 33, layout()}, Shape{40, 5, 1, layout()},
                         Shape{2, 5, 3001, layout()}}) {
    const size_t C = static_cast<size_t>(s.c);
    const auto clean = NormalData(s, 9);
    const bnorm_tensor_desc d = s.Desc();
    std::vector<double> base_mean(C), base_m2(C);
    ASSERT_EQ(bnorm_stats(nullptr, &d, clean.data(), base_mean.data(), base_m2.data()), BNORM_OK);
    for (float bad : {kNaNf, kInff, -kInff}) {
      for (int64_t where : {int64_t{0}, s.Values() / 2, s.Values() - 1}) {
        SCOPED_TRACE(testing::Message() << s.Name() << " bad=" << bad << " at value " << where);
        const int64_t poisoned = 3;
        auto x = clean;
        x[static_cast<size_t>(s.Index(where / s.spatial, poisoned, where % s.spatial))] = bad;
        std::vector<double> mean = DoubleSentinel(C), m2 = DoubleSentinel(C);
        ASSERT_EQ(bnorm_stats(nullptr, &d, x.data(), mean.data(), m2.data()), BNORM_OK);
        for (size_t c = 0; c < C; ++c) {
          if (c == static_cast<size_t>(poisoned)) {
            // bnorm.h: "NaN/Inf in a channel make its results NaN".
            EXPECT_TRUE(std::isnan(mean[c])) << "mean " << mean[c];
            EXPECT_TRUE(std::isnan(m2[c])) << "m2 " << m2[c];
          } else {
            EXPECT_EQ(Bytes(std::vector<double>{mean[c], m2[c]}),
                      Bytes(std::vector<double>{base_mean[c], base_m2[c]}))
                << "channel " << c;
          }
        }
      }
    }
  }
}

// 4. A batch split along n, as the ranks of a synchronized batch norm hold it.
//
// Tolerances. The whole batch's statistics and the merged ones are both
// within kStatTol of the exact values (test 3; the fused call has bnorm_stats'
// bits), so they differ by at most 2 kStatTol: the mean by 2e-6 std, invstd
// by ~1e-6 relative (half of m2's). y = (x - mean) * invstd * gamma + beta then
// moves by |gamma| (2e-6 + 1e-6 |xhat|); each side's float evaluation adds a
// few roundings of its terms (8 u is ample); 16-bit outputs may round to a
// neighbour (one ulp). The backward dx: backward_test.cc bounds dx by
// kDxTol * dx_scale and the sums by kSumTol * sum|terms| around the
// long-double reference (same library arithmetic: bnorm_backward_apply is
// bnorm_backward's finalize), so whole and split differ by twice that.
constexpr double kU = 0x1p-24;
constexpr double kSumTol = 1e-5;
constexpr double kDxTol = 2e-5;

struct Split {
  std::string name;
  std::vector<int64_t> parts;  // samples per part, in batch order
};

class DistributedRun {
 public:
  DistributedRun(bnorm_context* ctx, const Shape& s, bnorm_dtype dtype)
      : ctx_(ctx), s_(s), dtype_(dtype), C_(static_cast<size_t>(s.c)) {}

  void CheckForward(ForwardIn& in, const std::vector<int64_t>& parts) {
    const ForwardOut whole = Fused(ctx_, s_, dtype_, in);
    const int64_t k = static_cast<int64_t>(parts.size());
    const int64_t per_sample = s_.c * s_.spatial;
    std::vector<int64_t> counts;
    std::vector<double> means, m2s;
    int64_t at = 0;
    for (int64_t n : parts) {
      const bnorm_tensor_desc d = DescOf(s_, dtype_, n);
      std::vector<double> mean = DoubleSentinel(C_), m2 = DoubleSentinel(C_);
      ASSERT_EQ(bnorm_stats(ctx_, &d, n == 0 ? nullptr : in.x.Ptr(at * per_sample), mean.data(),
                            m2.data()),
                BNORM_OK);
      if (n == 0) {
        for (size_t c = 0; c < C_; ++c) {
          ASSERT_EQ(Bytes(std::vector<double>{mean[c], m2[c]}), Bytes(std::vector<double>{0, 0}));
        }
      }
      counts.push_back(n * s_.spatial);
      means.insert(means.end(), mean.begin(), mean.end());
      m2s.insert(m2s.end(), m2.begin(), m2.end());
      at += n;
    }
    ASSERT_EQ(at, s_.n);
    int64_t total = -1;
    std::vector<double> mean(C_), m2(C_);
    ASSERT_EQ(bnorm_stats_merge(s_.c, k, counts.data(), means.data(), m2s.data(), &total,
                                mean.data(), m2.data()),
              BNORM_OK);
    ASSERT_EQ(total, s_.Values());
    // Each part normalizes its samples into its slice of y, and updates its
    // own copy of the running statistics.
    ForwardOut split = NewForwardOut(s_, in, dtype_);
    std::vector<ForwardOut> per_part;
    at = 0;
    for (int64_t n : parts) {
      const bnorm_tensor_desc d = DescOf(s_, dtype_, n);
      ForwardOut o{Data{}, in.rm0, in.rv0, FloatSentinel(C_), FloatSentinel(C_)};
      ASSERT_EQ(bnorm_forward_apply(ctx_, &d, n == 0 ? nullptr : in.x.Ptr(at * per_sample),
                                    n == 0 ? nullptr : split.y.Ptr(at * per_sample),
                                    in.gamma.data(), in.beta.data(), total, mean.data(),
                                    m2.data(), kEps, kMomentum, o.rm.data(), o.rv.data(),
                                    o.sm.data(), o.si.data()),
                BNORM_OK);
      per_part.push_back(std::move(o));
      at += n;
    }
    // Every part (those without samples included) writes the same bits.
    for (size_t j = 1; j < per_part.size(); ++j) {
      SCOPED_TRACE(testing::Message() << "part " << j << " vs part 0");
      EXPECT_EQ(Bytes(per_part[j].sm), Bytes(per_part[0].sm));
      EXPECT_EQ(Bytes(per_part[j].si), Bytes(per_part[0].si));
      EXPECT_EQ(Bytes(per_part[j].rm), Bytes(per_part[0].rm));
      EXPECT_EQ(Bytes(per_part[j].rv), Bytes(per_part[0].rv));
    }
    const ForwardOut& p0 = per_part[0];
    for (size_t c = 0; c < C_; ++c) {
      const double std_dev = 1.0 / static_cast<double>(whole.si[c]);
      EXPECT_NEAR(p0.sm[c], whole.sm[c], 2 * kStatTol * std_dev + 2 * kU * std::fabs(whole.sm[c]))
          << "save_mean " << c;
      EXPECT_NEAR(p0.si[c], whole.si[c], (2 * kStatTol + 2 * kU) * whole.si[c])
          << "save_invstd " << c;
      EXPECT_NEAR(p0.rm[c], whole.rm[c], 2 * kStatTol * std_dev + 2 * kU * std::fabs(whole.rm[c]))
          << "running_mean " << c;
      EXPECT_NEAR(p0.rv[c], whole.rv[c], (4 * kStatTol + 2 * kU) * whole.rv[c])
          << "running_var " << c;
    }
    const std::vector<float> xv = in.x.Values();
    size_t bad = 0;
    for (int64_t i = 0; i < s_.n; ++i) {
      for (int64_t ch = 0; ch < s_.c; ++ch) {
        for (int64_t sp = 0; sp < s_.spatial; ++sp) {
          const size_t e = static_cast<size_t>(s_.Index(i, ch, sp));
          const size_t c = static_cast<size_t>(ch);
          const double g = std::fabs(in.gamma[c]);
          const double xhat = std::fabs((xv[e] - static_cast<double>(whole.sm[c])) * whole.si[c]);
          const double want = whole.y.Value(e);
          const double tol = g * (2 * kStatTol + kStatTol * xhat) +
                             8 * kU * (g * xhat + g + std::fabs(in.beta[c])) +
                             Ulp16(dtype_, want);
          const double got = split.y.Value(e);
          if (!(std::fabs(got - want) <= tol) && ++bad <= 5) {
            ADD_FAILURE() << "y element " << e << ": split " << got << " whole " << want
                          << " tol " << tol;
          }
        }
      }
    }
    EXPECT_EQ(bad, 0u);
  }

  void CheckBackward(ForwardIn& in, const Data& dy, const std::vector<int64_t>& parts) {
    const ForwardOut fwd = Fused(ctx_, s_, dtype_, in);
    const bnorm_tensor_desc whole_desc = DescOf(s_, dtype_, s_.n);
    const size_t E = static_cast<size_t>(s_.Elements());
    Data dx_whole = Sentinel(E, dtype_);
    std::vector<float> dg_whole(C_), db_whole(C_);
    Data dy_buf = dy;
    ASSERT_EQ(bnorm_backward(ctx_, &whole_desc, in.x.Ptr(), dy_buf.Ptr(), dx_whole.Ptr(),
                             in.gamma.data(), fwd.sm.data(), fwd.si.data(), dg_whole.data(),
                             db_whole.data()),
              BNORM_OK);
    const int64_t per_sample = s_.c * s_.spatial;
    // Each part's sums, then their sum in double, in part order.
    std::vector<double> sdy(C_, 0.0), sdyxmu(C_, 0.0);
    int64_t at = 0;
    for (int64_t n : parts) {
      const bnorm_tensor_desc d = DescOf(s_, dtype_, n);
      std::vector<double> a = DoubleSentinel(C_), b = DoubleSentinel(C_);
      ASSERT_EQ(bnorm_backward_reduce(ctx_, &d, n == 0 ? nullptr : in.x.Ptr(at * per_sample),
                                      n == 0 ? nullptr : dy_buf.Ptr(at * per_sample),
                                      fwd.sm.data(), a.data(), b.data()),
                BNORM_OK);
      for (size_t c = 0; c < C_; ++c) {
        if (n == 0) {
          ASSERT_EQ(Bytes(std::vector<double>{a[c], b[c]}), Bytes(std::vector<double>{0, 0}));
        }
        sdy[c] += a[c];
        sdyxmu[c] += b[c];
      }
      at += n;
    }
    Data dx = Sentinel(E, dtype_);
    std::vector<std::vector<float>> dgs, dbs;
    at = 0;
    for (int64_t n : parts) {
      const bnorm_tensor_desc d = DescOf(s_, dtype_, n);
      std::vector<float> dg = FloatSentinel(C_), db = FloatSentinel(C_);
      ASSERT_EQ(bnorm_backward_apply(ctx_, &d, n == 0 ? nullptr : in.x.Ptr(at * per_sample),
                                     n == 0 ? nullptr : dy_buf.Ptr(at * per_sample),
                                     n == 0 ? nullptr : dx.Ptr(at * per_sample), in.gamma.data(),
                                     fwd.sm.data(), fwd.si.data(), s_.Values(), sdy.data(),
                                     sdyxmu.data(), dg.data(), db.data()),
                BNORM_OK);
      dgs.push_back(dg);
      dbs.push_back(db);
      at += n;
    }
    EXPECT_TRUE(dy_buf.Raw() == dy.Raw());
    for (size_t j = 1; j < dgs.size(); ++j) {
      EXPECT_EQ(Bytes(dgs[j]), Bytes(dgs[0])) << "dgamma of part " << j;
      EXPECT_EQ(Bytes(dbs[j]), Bytes(dbs[0])) << "dbeta of part " << j;
    }
    const std::vector<float> xv = in.x.Values(), dyv = dy.Values();
    const RefBackward ref = ReferenceBackward(s_, false, xv, dyv, in.gamma.data(), fwd.sm, fwd.si);
    for (size_t c = 0; c < C_; ++c) {
      EXPECT_NEAR(dbs[0][c], db_whole[c],
                  2 * kSumTol * static_cast<double>(ref.sum_abs_dy[c]) + 1e-30)
          << "dbeta " << c;
      EXPECT_NEAR(dgs[0][c], dg_whole[c],
                  2 * kSumTol * static_cast<double>(ref.sum_abs_dy_xmu[c]) * fwd.si[c] + 1e-30)
          << "dgamma " << c;
    }
    size_t bad = 0;
    for (size_t e = 0; e < E; ++e) {
      const double want = dx_whole.Value(e), got = dx.Value(e);
      const double tol =
          2 * kDxTol * static_cast<double>(ref.dx_scale[e]) + Ulp16(dtype_, want) + 1e-30;
      if (!(std::fabs(got - want) <= tol) && ++bad <= 5) {
        ADD_FAILURE() << "dx element " << e << ": split " << got << " whole " << want << " tol "
                      << tol;
      }
    }
    EXPECT_EQ(bad, 0u);
  }

 private:
  bnorm_context* ctx_;
  Shape s_;
  bnorm_dtype dtype_;
  size_t C_;
};

TEST_P(SplitTest, DistributedAlongNMatchesTheWholeBatch) {
  const bnorm_layout l = layout();
  const std::vector<Split> splits = {
      {"3+0+4", {3, 0, 4}},      {"1+6", {1, 6}},           {"0+7", {0, 7}},
      {"7+0", {7, 0}},           {"per sample", {1, 1, 1, 1, 1, 1, 1}},
      {"2+2+0+0+3", {2, 2, 0, 0, 3}},
  };
  const std::vector<Shape> shapes = {Shape{7, 5, 9, l}, Shape{7, 1, 13, l}, Shape{7, 6, 1, l},
                                     Shape{7, 19, 300, l}, Shape{7, 3, 3000, l}};
  for (const Shape& s : shapes) {
    for (bnorm_dtype dtype : kDtypes) {
      ForwardIn in = MakeForwardIn(s, dtype, 400 + static_cast<uint64_t>(s.c));
      const Data dy = Encode(NormalData(s, 500, 0.25, 1.0, 0.0), dtype);
      for (const Split& split : splits) {
        for (const auto& [ctx_name, ctx] : Contexts()) {
          SCOPED_TRACE(s.Name() + " " + DtypeName(dtype) + " split " + split.name + " " +
                       ctx_name);
          DistributedRun run(ctx, s, dtype);
          run.CheckForward(in, split.parts);
          run.CheckBackward(in, dy, split.parts);
        }
      }
    }
  }
}

// n == 0: the per-channel outputs of a part without samples are those of a
// part with data, and no tensor byte is touched even when pointers are given.
TEST_P(SplitTest, EmptyPartWritesOnlyPerChannelOutputs) {
  const Shape s{4, 6, 10, layout()};
  const size_t C = static_cast<size_t>(s.c);
  ForwardIn in = MakeForwardIn(s, BNORM_DTYPE_F32, 600);
  const bnorm_tensor_desc d = s.Desc();
  bnorm_tensor_desc empty = d;
  empty.n = 0;
  std::vector<double> mean(C), m2(C);
  ASSERT_EQ(bnorm_stats(nullptr, &d, in.x.Ptr(), mean.data(), m2.data()), BNORM_OK);
  const int64_t total = s.Values() + 5;  // other parts hold more samples
  ForwardOut with_data = NewForwardOut(s, in, BNORM_DTYPE_F32);
  ASSERT_EQ(bnorm_forward_apply(nullptr, &d, in.x.Ptr(), with_data.y.Ptr(), in.gamma.data(),
                                in.beta.data(), total, mean.data(), m2.data(), kEps, kMomentum,
                                with_data.rm.data(), with_data.rv.data(), with_data.sm.data(),
                                with_data.si.data()),
            BNORM_OK);
  for (bool give_pointers : {false, true}) {
    SCOPED_TRACE(give_pointers ? "tensor pointers given" : "tensor pointers NULL");
    ForwardOut none = NewForwardOut(s, in, BNORM_DTYPE_F32);
    const auto x_before = in.x.Raw(), y_before = none.y.Raw();
    ASSERT_EQ(bnorm_forward_apply(nullptr, &empty, give_pointers ? in.x.Ptr() : nullptr,
                                  give_pointers ? none.y.Ptr() : nullptr, in.gamma.data(),
                                  in.beta.data(), total, mean.data(), m2.data(), kEps, kMomentum,
                                  none.rm.data(), none.rv.data(), none.sm.data(),
                                  none.si.data()),
              BNORM_OK);
    EXPECT_TRUE(in.x.Raw() == x_before);
    EXPECT_TRUE(none.y.Raw() == y_before) << "y written by a part without samples";
    EXPECT_EQ(Bytes(none.sm), Bytes(with_data.sm));
    EXPECT_EQ(Bytes(none.si), Bytes(with_data.si));
    EXPECT_EQ(Bytes(none.rm), Bytes(with_data.rm));
    EXPECT_EQ(Bytes(none.rv), Bytes(with_data.rv));
    // Backward: dx untouched, dgamma/dbeta those of a part with data.
    const std::vector<float> sm = with_data.sm, si = with_data.si;
    const std::vector<double> sdy = {1.5, -2.0, 0.25, 3.0, 0.0, -1.0};
    const std::vector<double> sdyxmu = {0.5, 2.0, -0.75, 1.0, 0.0, 4.0};
    Data dy = Encode(NormalData(s, 601), BNORM_DTYPE_F32);
    std::vector<float> dg_data(C), db_data(C);
    Data dx_data = Sentinel(static_cast<size_t>(s.Elements()), BNORM_DTYPE_F32);
    ASSERT_EQ(bnorm_backward_apply(nullptr, &d, in.x.Ptr(), dy.Ptr(), dx_data.Ptr(),
                                   in.gamma.data(), sm.data(), si.data(), total, sdy.data(),
                                   sdyxmu.data(), dg_data.data(), db_data.data()),
              BNORM_OK);
    std::vector<float> dg = FloatSentinel(C), db = FloatSentinel(C);
    Data dx = Sentinel(static_cast<size_t>(s.Elements()), BNORM_DTYPE_F32);
    const auto dx_before = dx.Raw(), dy_before = dy.Raw();
    ASSERT_EQ(bnorm_backward_apply(nullptr, &empty, give_pointers ? in.x.Ptr() : nullptr,
                                   give_pointers ? dy.Ptr() : nullptr,
                                   give_pointers ? dx.Ptr() : nullptr, in.gamma.data(), sm.data(),
                                   si.data(), total, sdy.data(), sdyxmu.data(), dg.data(),
                                   db.data()),
              BNORM_OK);
    EXPECT_TRUE(dx.Raw() == dx_before) << "dx written by a part without samples";
    EXPECT_TRUE(dy.Raw() == dy_before);
    EXPECT_EQ(Bytes(dg), Bytes(dg_data));
    EXPECT_EQ(Bytes(db), Bytes(db_data));
    // bnorm_stats and bnorm_backward_reduce of no samples: zeros.
    std::vector<double> a = DoubleSentinel(C), b = DoubleSentinel(C);
    ASSERT_EQ(bnorm_stats(nullptr, &empty, give_pointers ? in.x.Ptr() : nullptr, a.data(),
                          b.data()),
              BNORM_OK);
    EXPECT_EQ(Bytes(a), Bytes(std::vector<double>(C, 0.0)));
    EXPECT_EQ(Bytes(b), Bytes(std::vector<double>(C, 0.0)));
    a = DoubleSentinel(C);
    b = DoubleSentinel(C);
    ASSERT_EQ(bnorm_backward_reduce(nullptr, &empty, give_pointers ? in.x.Ptr() : nullptr,
                                    give_pointers ? dy.Ptr() : nullptr, sm.data(), a.data(),
                                    b.data()),
              BNORM_OK);
    EXPECT_EQ(Bytes(a), Bytes(std::vector<double>(C, 0.0)));
    EXPECT_EQ(Bytes(b), Bytes(std::vector<double>(C, 0.0)));
  }
}

// bnorm.h: "NaN/Inf in a channel make its results NaN", with the Inf at any
// position of the channel. (Found by a review as mean = +-Inf, m2 = +Inf for
// an Inf last, mean = NaN, m2 = +Inf elsewhere, e.g. n=1, c=1, spatial=3,
// x = {1, +Inf, 1.5}; fixed since.) Every failing case is listed.
TEST_P(SplitTest, StatsInfMakesTheChannelNaN) {
  std::vector<std::string> violations;
  for (int64_t len : {int64_t{2}, int64_t{3}, int64_t{4}, int64_t{33}, int64_t{132}}) {
    for (int64_t where : {int64_t{0}, len / 2, len - 1}) {
      if (where == len - 1 && where == len / 2) continue;  // len 2: listed once
      for (float bad : {kInff, -kInff}) {
        const Shape s{1, 2, len, layout()};
        std::vector<float> x(static_cast<size_t>(s.Elements()));
        for (int64_t sp = 0; sp < len; ++sp) {
          x[static_cast<size_t>(s.Index(0, 0, sp))] = 1.0f + 0.25f * static_cast<float>(sp);
          x[static_cast<size_t>(s.Index(0, 1, sp))] = 1.0f + 0.25f * static_cast<float>(sp);
        }
        x[static_cast<size_t>(s.Index(0, 1, where))] = bad;
        const bnorm_tensor_desc d = s.Desc();
        std::vector<double> mean = DoubleSentinel(2), m2 = DoubleSentinel(2);
        ASSERT_EQ(bnorm_stats(nullptr, &d, x.data(), mean.data(), m2.data()), BNORM_OK);
        EXPECT_TRUE(std::isfinite(mean[0]) && std::isfinite(m2[0]));
        if (!std::isnan(mean[1]) || !std::isnan(m2[1])) {
          violations.push_back(s.Name() + " value " +
                               std::to_string(where) + "=" + (bad > 0 ? "+Inf" : "-Inf") +
                               ": mean " + std::to_string(mean[1]) + ", m2 " +
                               std::to_string(m2[1]));
        }
      }
    }
  }
  std::string list;
  for (const auto& v : violations) list += "\n  " + v;
  EXPECT_TRUE(violations.empty()) << violations.size() << " cases not NaN:" << list;
}

// n == 0: an empty tensor holds no byte, so a (non-NULL) x that points into
// an output overlaps nothing.
TEST(SplitEmpty, EmptyTensorOverlapsNothing) {
  const bnorm_tensor_desc d{0, 3, 4, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  std::vector<double> mean(3, 7.0), m2(3, 7.0);
  EXPECT_EQ(bnorm_stats(nullptr, &d, mean.data() + 1, mean.data(), m2.data()), BNORM_OK);
  EXPECT_EQ(mean, std::vector<double>(3, 0.0));
  EXPECT_EQ(m2, std::vector<double>(3, 0.0));
}

INSTANTIATE_TEST_SUITE_P(AllTargets, SplitTest, testing::ValuesIn(TargetLayoutGrid()),
                         TargetLayoutName);

// ---- 5. bnorm_stats_merge (no kernels: target-independent) ----

double FromBits(uint64_t u) {
  double d;
  std::memcpy(&d, &u, sizeof d);
  return d;
}

struct Merged {
  bnorm_status status;
  int64_t count;
  std::vector<double> mean, m2;
};

Merged Merge(int64_t c, const std::vector<int64_t>& counts, const std::vector<double>& means,
             const std::vector<double>& m2s) {
  Merged r{BNORM_OK, -1, DoubleSentinel(static_cast<size_t>(c)),
           DoubleSentinel(static_cast<size_t>(c))};
  r.status = bnorm_stats_merge(c, static_cast<int64_t>(counts.size()), counts.data(),
                               means.data(), m2s.data(), &r.count, r.mean.data(), r.m2.data());
  return r;
}

void ExpectSameMerged(const Merged& got, const Merged& want) {
  EXPECT_EQ(got.status, want.status);
  EXPECT_EQ(got.count, want.count);
  EXPECT_EQ(Bytes(got.mean), Bytes(want.mean));
  EXPECT_EQ(Bytes(got.m2), Bytes(want.m2));
}

TEST(StatsMerge, OnePartialIsReturnedBitForBit) {
  const std::vector<double> means = {FromBits(0x7FF0000000000001ull),  // signaling NaN
                                     FromBits(0xFFF8000000000123ull),  // negative quiet NaN
                                     -0.0, 5e-324, -1.5, std::numeric_limits<double>::infinity()};
  const std::vector<double> m2s = {FromBits(0x7FF4000000000abcull), 0.0, -0.0,
                                   FromBits(0xFFF0000000000007ull), 1e300, 2.0};
  const Merged r = Merge(6, {12}, means, m2s);
  ASSERT_EQ(r.status, BNORM_OK);
  EXPECT_EQ(r.count, 12);
  EXPECT_EQ(Bytes(r.mean), Bytes(means));
  EXPECT_EQ(Bytes(r.m2), Bytes(m2s));
  // Count 0: zeros, whatever the partial holds.
  const Merged z = Merge(6, {0}, means, m2s);
  ASSERT_EQ(z.status, BNORM_OK);
  EXPECT_EQ(z.count, 0);
  EXPECT_EQ(Bytes(z.mean), Bytes(std::vector<double>(6, 0.0)));
  EXPECT_EQ(Bytes(z.m2), Bytes(std::vector<double>(6, 0.0)));
  // k == 1 in place.
  std::vector<double> mean_io = means, m2_io = m2s;
  const int64_t count = 12;
  int64_t count_out = -1;
  ASSERT_EQ(bnorm_stats_merge(6, 1, &count, mean_io.data(), m2_io.data(), &count_out,
                              mean_io.data(), m2_io.data()),
            BNORM_OK);
  EXPECT_EQ(count_out, 12);
  EXPECT_EQ(Bytes(mean_io), Bytes(means));
  EXPECT_EQ(Bytes(m2_io), Bytes(m2s));
}

TEST(StatsMerge, PartialsOfCountZeroAreSkipped) {
  const int64_t c = 3;
  const std::vector<double> a_mean = {1.0, -2.0, 1e4}, a_m2 = {3.0, 0.5, 7.0};
  const std::vector<double> b_mean = {1.25, -1.0, 1e4 + 3}, b_m2 = {1.0, 2.5, 0.0};
  const std::vector<double> nan3 = {kNaN, kNaN, kNaN};
  const std::vector<double> inf3(3, -std::numeric_limits<double>::infinity());
  auto cat = [](std::vector<std::vector<double>> rows) {
    std::vector<double> v;
    for (const auto& r : rows) v.insert(v.end(), r.begin(), r.end());
    return v;
  };
  const Merged want = Merge(c, {5, 9}, cat({a_mean, b_mean}), cat({a_m2, b_m2}));
  ASSERT_EQ(want.status, BNORM_OK);
  ExpectSameMerged(Merge(c, {5, 0, 9}, cat({a_mean, nan3, b_mean}), cat({a_m2, inf3, b_m2})),
                   want);
  ExpectSameMerged(Merge(c, {0, 5, 9}, cat({nan3, a_mean, b_mean}), cat({nan3, a_m2, b_m2})),
                   want);
  ExpectSameMerged(Merge(c, {5, 9, 0}, cat({a_mean, b_mean, nan3}), cat({a_m2, b_m2, nan3})),
                   want);
  // Only one partial with values: its bits.
  const Merged one = Merge(c, {0, 5, 0}, cat({nan3, a_mean, inf3}), cat({inf3, a_m2, nan3}));
  ASSERT_EQ(one.status, BNORM_OK);
  EXPECT_EQ(one.count, 5);
  EXPECT_EQ(Bytes(one.mean), Bytes(a_mean));
  EXPECT_EQ(Bytes(one.m2), Bytes(a_m2));
  // Nothing at all: zeros.
  const Merged none = Merge(c, {0, 0, 0}, cat({nan3, a_mean, nan3}), cat({nan3, a_m2, nan3}));
  ASSERT_EQ(none.status, BNORM_OK);
  EXPECT_EQ(none.count, 0);
  EXPECT_EQ(Bytes(none.mean), Bytes(std::vector<double>(3, 0.0)));
  EXPECT_EQ(Bytes(none.m2), Bytes(std::vector<double>(3, 0.0)));
}

// Partials computed exactly (long double, rounded once to double) of a known
// data set merge into its mean and M2. The bound: the partial means enter
// rounded to double (2^-53 |mean_j|), which moves M2 = sum m2_j +
// sum n_j (mean_j - mean)^2 by up to sum 2 n_j |mean_j - mean| 2^-53 |mean_j|
// (taken as 2^-50, twice that, for the rounding of the deltas); each of the k
// merges adds a few double roundings of terms no larger than M2 (1e-14 each).
TEST(StatsMerge, MergedPartialsAreTheStatisticsOfTheUnion) {
  const int64_t c = 4;
  const std::vector<int64_t> sizes = {5, 17, 1, 40, 2, 0, 9};
  const double k = static_cast<double>(sizes.size());
  std::mt19937_64 rng(77);
  std::normal_distribution<double> normal(0.0, 1.0);
  const double offsets[] = {0.0, 1e4, -3.5, 1e8};
  const double scales[] = {1.0, 1.0, 1e-3, 10.0};
  std::vector<std::vector<LD>> all(static_cast<size_t>(c));
  std::vector<int64_t> counts;
  std::vector<double> means, m2s;  // [j*c + ch]: part by part, channel by channel
  for (int64_t size : sizes) {
    counts.push_back(size);
    for (int64_t ch = 0; ch < c; ++ch) {
      std::vector<LD> v;
      for (int64_t i = 0; i < size; ++i) {
        // Different parts have different means: the delta term matters.
        v.push_back(static_cast<LD>(offsets[ch] + scales[ch] * (normal(rng) + 0.1 * size)));
      }
      LD sum = 0, sq = 0;
      for (LD e : v) sum += e;
      const LD mean = size ? sum / size : 0;
      for (LD e : v) sq += (e - mean) * (e - mean);
      means.push_back(size ? static_cast<double>(mean) : kNaN);  // count 0: never read
      m2s.push_back(size ? static_cast<double>(sq) : kNaN);
      all[static_cast<size_t>(ch)].insert(all[static_cast<size_t>(ch)].end(), v.begin(), v.end());
    }
  }
  const Merged r = Merge(c, counts, means, m2s);
  ASSERT_EQ(r.status, BNORM_OK);
  EXPECT_EQ(r.count, 74);
  for (size_t ch = 0; ch < static_cast<size_t>(c); ++ch) {
    LD sum = 0, sq = 0;
    for (LD e : all[ch]) sum += e;
    const LD mean = sum / static_cast<LD>(all[ch].size());
    for (LD e : all[ch]) sq += (e - mean) * (e - mean);
    double input_m2 = 0, input_mean = 0;
    for (size_t j = 0; j < sizes.size(); ++j) {
      if (sizes[j] == 0) continue;
      const double mj = means[j * static_cast<size_t>(c) + ch];
      input_m2 += 0x1p-50 * static_cast<double>(sizes[j]) *
                  std::fabs(mj - static_cast<double>(mean)) * std::fabs(mj);
      input_mean = std::max(input_mean, 0x1p-50 * std::fabs(mj));
    }
    const double std_dev = std::sqrt(static_cast<double>(sq) / 74.0);
    EXPECT_NEAR(r.mean[ch], static_cast<double>(mean),
                input_mean + 1e-14 * k * (std::fabs(static_cast<double>(mean)) + std_dev))
        << "channel " << ch;
    EXPECT_NEAR(r.m2[ch], static_cast<double>(sq), input_m2 + 1e-14 * k * static_cast<double>(sq))
        << "channel " << ch;
  }
}

// Means whose squared difference is subnormal, with large counts: the
// cross term n_a n_b / n delta^2 must round about once (a denorm_min or two
// of error per merge), not carry the rounding of a subnormal delta^2
// multiplied by n_a n_b / n (the fuzzer's input
// regress_merge_subnormal_square; up to 2^51 denorm_min for counts near
// 2^53). Exact values: the long double reference has no subnormals at these
// magnitudes.
TEST(StatsMerge, SubnormalCrossTermsRoundOnce) {
  const double dmin = std::numeric_limits<double>::denorm_min();
  struct Case {
    int64_t count_a, count_b;
    double mean_a, mean_b;
  };
  const Case cases[] = {
      {3, 9, 0.0, 1.7e-161},           // delta^2 ~ 3e-322, cross 2.25
      {1 << 20, 1 << 20, 1e-160, 0.0},  // cross 2^19: the square's rounding would be x5e5
      {(int64_t{1} << 52) - 3, int64_t{1} << 52, -1.1e-165, 2.3e-166},
      {5, 7, 3e-170, -4e-170},  // delta^2 * cross < denorm_min / 2: rounds to 0
  };
  for (const Case& t : cases) {
    SCOPED_TRACE(testing::Message() << t.count_a << " + " << t.count_b);
    const std::vector<double> m2_in = {1e-320, 2.5e-322};  // subnormal partial M2s
    const Merged r = Merge(1, {t.count_a, t.count_b}, {t.mean_a, t.mean_b}, m2_in);
    ASSERT_EQ(r.status, BNORM_OK);
    const LD na = static_cast<LD>(t.count_a), nb = static_cast<LD>(t.count_b);
    const LD delta = static_cast<LD>(t.mean_b) - static_cast<LD>(t.mean_a);
    const LD m2 = static_cast<LD>(m2_in[0]) + static_cast<LD>(m2_in[1]) +
                  delta * delta * (na * nb / (na + nb));
    const LD mean = static_cast<LD>(t.mean_a) + delta * (nb / (na + nb));
    // delta * cross and the product each round (half a denorm_min when
    // subnormal, 2^-53 relative otherwise); the sums of subnormals are exact.
    EXPECT_NEAR(r.m2[0], static_cast<double>(m2), 2 * dmin + 0x1p-51 * static_cast<double>(m2));
    EXPECT_NEAR(r.mean[0], static_cast<double>(mean),
                dmin + 0x1p-51 * std::fabs(static_cast<double>(mean)));
  }
}

// Random partials over many channels.
struct Partials {
  int64_t c;
  std::vector<int64_t> counts;
  std::vector<double> means, m2s;
};

Partials RandomPartials(int64_t c, const std::vector<int64_t>& counts, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  Partials p{c, counts, {}, {}};
  for (size_t j = 0; j < counts.size(); ++j) {
    for (int64_t ch = 0; ch < c; ++ch) {
      p.means.push_back(100.0 * u(rng) + 1e3 * static_cast<double>(j));
      p.m2s.push_back(static_cast<double>(counts[j]) * (1.5 + u(rng)));
    }
  }
  return p;
}

TEST(StatsMerge, InPlaceOverPartialZeroGivesTheSameBits) {
  const int64_t c = 37;
  for (const auto& counts :
       {std::vector<int64_t>{3, 11, 7}, std::vector<int64_t>{0, 11, 7},
        std::vector<int64_t>{3, 0, 0}, std::vector<int64_t>{5}, std::vector<int64_t>{0, 0}}) {
    const Partials p = RandomPartials(c, counts, 5);
    const Merged want = Merge(c, p.counts, p.means, p.m2s);
    ASSERT_EQ(want.status, BNORM_OK);
    const int64_t k = static_cast<int64_t>(counts.size());
    for (int which = 0; which < 3; ++which) {  // both in place, mean only, m2 only
      SCOPED_TRACE(testing::Message() << "k=" << k << " counts[0]=" << counts[0]
                                      << " in place: " << which);
      std::vector<double> means = p.means, m2s = p.m2s;
      std::vector<double> mean_out = DoubleSentinel(static_cast<size_t>(c)),
                          m2_out = DoubleSentinel(static_cast<size_t>(c));
      double* mo = which != 2 ? means.data() : mean_out.data();
      double* m2o = which != 1 ? m2s.data() : m2_out.data();
      int64_t total = -1;
      ASSERT_EQ(bnorm_stats_merge(c, k, p.counts.data(), means.data(), m2s.data(), &total, mo,
                                  m2o),
                BNORM_OK);
      EXPECT_EQ(total, want.count);
      EXPECT_EQ(Bytes(std::vector<double>(mo, mo + c)), Bytes(want.mean));
      EXPECT_EQ(Bytes(std::vector<double>(m2o, m2o + c)), Bytes(want.m2));
      // The other partials are inputs: unchanged.
      EXPECT_EQ(Bytes(std::vector<double>(means.begin() + c, means.end())),
                Bytes(std::vector<double>(p.means.begin() + c, p.means.end())));
      EXPECT_EQ(Bytes(std::vector<double>(m2s.begin() + c, m2s.end())),
                Bytes(std::vector<double>(p.m2s.begin() + c, p.m2s.end())));
    }
  }
}

TEST(StatsMerge, MergesLeftToRight) {
  const int64_t c = 1000;
  const Partials p = RandomPartials(c, {3, 1000003, 7}, 9);
  const auto row = [&](const std::vector<double>& v, size_t j) {
    return std::vector<double>(v.begin() + static_cast<int64_t>(j) * c,
                               v.begin() + static_cast<int64_t>(j + 1) * c);
  };
  const auto cat = [](std::vector<double> a, const std::vector<double>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  const Merged all = Merge(c, p.counts, p.means, p.m2s);
  ASSERT_EQ(all.status, BNORM_OK);
  // ((p0 + p1) + p2) with two calls of k = 2.
  const Merged p01 = Merge(c, {p.counts[0], p.counts[1]}, cat(row(p.means, 0), row(p.means, 1)),
                           cat(row(p.m2s, 0), row(p.m2s, 1)));
  const Merged left = Merge(c, {p01.count, p.counts[2]}, cat(p01.mean, row(p.means, 2)),
                            cat(p01.m2, row(p.m2s, 2)));
  ExpectSameMerged(all, left);
  // The test can tell the orders apart: (p0 + (p1 + p2)) differs somewhere.
  const Merged p12 = Merge(c, {p.counts[1], p.counts[2]}, cat(row(p.means, 1), row(p.means, 2)),
                           cat(row(p.m2s, 1), row(p.m2s, 2)));
  const Merged right = Merge(c, {p.counts[0], p12.count}, cat(row(p.means, 0), p12.mean),
                             cat(row(p.m2s, 0), p12.m2));
  EXPECT_TRUE(Bytes(right.mean) != Bytes(left.mean) || Bytes(right.m2) != Bytes(left.m2));
}

// ---- 6. Validation: every documented status, and no byte written on error ----

// Every buffer any call could touch lives in one arena, so that "unchanged"
// covers aliased ones too.
struct Arena {
  static constexpr int64_t kN = 2, kC = 3, kS = 5, kE = kN * kC * kS, kK = 3;
  static constexpr int64_t kFloats = 4 * kE + 8 * kC;  // even: doubles stay aligned
  static constexpr int64_t kDoubles = 4 * kC + 2 * kK * kC + 2 * kC;
  std::vector<double> storage;
  float *x, *y, *dy, *dx, *gamma, *beta, *rm, *rv, *sm, *si, *dgamma, *dbeta;
  double *mean, *m2, *sum_dy, *sum_dy_xmu, *means, *m2s, *mean_out, *m2_out;
  int64_t *counts, *count_out;

  Arena() : storage(static_cast<size_t>(kFloats / 2 + kDoubles + kK + 1)) {
    float* f = reinterpret_cast<float*>(storage.data());
    for (int64_t i = 0; i < kFloats; ++i) f[i] = 0.25f + static_cast<float>(i % 17);
    x = f;
    y = f + kE;
    dy = f + 2 * kE;
    dx = f + 3 * kE;
    float* q = f + 4 * kE;
    gamma = q;
    beta = q + kC;
    rm = q + 2 * kC;
    rv = q + 3 * kC;
    sm = q + 4 * kC;
    si = q + 5 * kC;
    dgamma = q + 6 * kC;
    dbeta = q + 7 * kC;
    double* d = storage.data() + kFloats / 2;
    for (int64_t i = 0; i < kDoubles; ++i) d[i] = 0.5 + static_cast<double>(i % 13);
    mean = d;
    m2 = d + kC;
    sum_dy = d + 2 * kC;
    sum_dy_xmu = d + 3 * kC;
    means = d + 4 * kC;
    m2s = means + kK * kC;
    mean_out = m2s + kK * kC;
    m2_out = mean_out + kC;
    counts = reinterpret_cast<int64_t*>(d + kDoubles);
    counts[0] = 10;
    counts[1] = 4;
    counts[2] = 16;
    count_out = counts + kK;
    *count_out = 99;
  }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  static bnorm_tensor_desc Desc() {
    return bnorm_tensor_desc{kN, kC, kS, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  }
};

// The arguments of all five functions; each case mutates some.
struct Args {
  bnorm_tensor_desc desc = Arena::Desc();
  bool desc_null = false;
  const float *x, *dy, *gamma, *beta;
  float *y, *dx, *rm, *rv, *sm, *si, *dgamma, *dbeta;
  const double *mean, *m2, *sum_dy_in, *sum_dy_xmu_in;
  double *stats_mean, *stats_m2, *sum_dy, *sum_dy_xmu;
  float eps = 1e-5f, momentum = 0.1f;
  int64_t total = Arena::kN * Arena::kS;
  // merge
  int64_t c = Arena::kC, k = Arena::kK;
  const int64_t* counts;
  const double *means, *m2s;
  int64_t* count_out;
  double *mean_out, *m2_out;

  explicit Args(Arena& a)
      : x(a.x), dy(a.dy), gamma(a.gamma), beta(a.beta), y(a.y), dx(a.dx), rm(a.rm), rv(a.rv),
        sm(a.sm), si(a.si), dgamma(a.dgamma), dbeta(a.dbeta), mean(a.mean), m2(a.m2),
        sum_dy_in(a.sum_dy), sum_dy_xmu_in(a.sum_dy_xmu), stats_mean(a.mean), stats_m2(a.m2),
        sum_dy(a.sum_dy), sum_dy_xmu(a.sum_dy_xmu), counts(a.counts), means(a.means),
        m2s(a.m2s), count_out(a.count_out), mean_out(a.mean_out), m2_out(a.m2_out) {}
  const bnorm_tensor_desc* Desc() const { return desc_null ? nullptr : &desc; }
};

enum class Fn { kStats, kMerge, kForwardApply, kBackwardReduce, kBackwardApply };

const char* FnName(Fn fn) {
  switch (fn) {
    case Fn::kStats:
      return "bnorm_stats";
    case Fn::kMerge:
      return "bnorm_stats_merge";
    case Fn::kForwardApply:
      return "bnorm_forward_apply";
    case Fn::kBackwardReduce:
      return "bnorm_backward_reduce";
    case Fn::kBackwardApply:
      return "bnorm_backward_apply";
  }
  return "?";
}

bnorm_status Call(Fn fn, const Args& t) {
  switch (fn) {
    case Fn::kStats:
      return bnorm_stats(nullptr, t.Desc(), t.x, t.stats_mean, t.stats_m2);
    case Fn::kMerge:
      return bnorm_stats_merge(t.c, t.k, t.counts, t.means, t.m2s, t.count_out, t.mean_out,
                               t.m2_out);
    case Fn::kForwardApply:
      return bnorm_forward_apply(nullptr, t.Desc(), t.x, t.y, t.gamma, t.beta, t.total, t.mean,
                                 t.m2, t.eps, t.momentum, t.rm, t.rv, t.sm, t.si);
    case Fn::kBackwardReduce:
      return bnorm_backward_reduce(nullptr, t.Desc(), t.x, t.dy, t.sm, t.sum_dy, t.sum_dy_xmu);
    case Fn::kBackwardApply:
      return bnorm_backward_apply(nullptr, t.Desc(), t.x, t.dy, t.dx, t.gamma, t.sm, t.si,
                                  t.total, t.sum_dy_in, t.sum_dy_xmu_in, t.dgamma, t.dbeta);
  }
  return BNORM_ERR_INTERNAL;
}

struct Case {
  std::string name;
  bnorm_status expected;
  std::function<void(Arena&, Args&)> mutate;
};

// Runs a case on a fresh arena: the status, and on error no byte changed.
void Expect(Fn fn, const Case& c) {
  Arena a;
  Args t(a);
  c.mutate(a, t);
  const auto before = Bytes(a.storage);
  EXPECT_EQ(Call(fn, t), c.expected) << FnName(fn) << "/" << c.name;
  if (c.expected != BNORM_OK) {
    EXPECT_EQ(Bytes(a.storage), before) << FnName(fn) << "/" << c.name << ": a byte changed";
  }
}

// Bad descriptors, for the four functions that take one.
std::vector<Case> DescCases() {
  constexpr int64_t big = std::numeric_limits<int64_t>::max();
  auto set = [](std::function<void(bnorm_tensor_desc&)> f) {
    return [f](Arena&, Args& t) { f(t.desc); };
  };
  return {
      {"desc_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.desc_null = true; }},
      {"n_negative", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) { d.n = -1; })},
      {"n_min", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) { d.n = -big - 1; })},
      {"c_zero", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) { d.c = 0; })},
      {"c_negative", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) { d.c = -3; })},
      {"c_zero_n_zero", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) {
         d.n = 0;
         d.c = 0;
       })},
      {"spatial_zero", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) { d.spatial = 0; })},
      {"spatial_negative", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) { d.spatial = -1; })},
      {"n_times_c_overflows", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) {
         d.n = big;
         d.c = 2;
       })},
      {"elements_overflow", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) {
         d.n = int64_t{1} << 40;
         d.c = int64_t{1} << 20;
         d.spatial = int64_t{1} << 10;
       })},
      {"bytes_overflow", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) {
         d.n = int64_t{1} << 61;
         d.c = 1;
         d.spatial = 1;
       })},
      // n == 0: no elements, but c doubles per channel array must still fit.
      {"channel_bytes_overflow_n_zero", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) {
         d.n = 0;
         d.c = int64_t{1} << 61;
       })},
      {"layout_2", BNORM_ERR_BAD_ARGUMENT, set([](bnorm_tensor_desc& d) {
         const int v = 2;
         std::memcpy(&d.layout, &v, sizeof v);
       })},
      {"layout_negative", BNORM_ERR_BAD_ARGUMENT, set([](bnorm_tensor_desc& d) {
         const int v = -1;
         std::memcpy(&d.layout, &v, sizeof v);
       })},
      {"dtype_3", BNORM_ERR_BAD_ARGUMENT, set([](bnorm_tensor_desc& d) {
         const int v = 3;
         std::memcpy(&d.dtype, &v, sizeof v);
       })},
      {"dtype_negative", BNORM_ERR_BAD_ARGUMENT, set([](bnorm_tensor_desc& d) {
         const int v = -1;
         std::memcpy(&d.dtype, &v, sizeof v);
       })},
      // Order: BAD_SHAPE before BAD_ARGUMENT before NULL_POINTER (buffers).
      {"bad_shape_before_bad_layout", BNORM_ERR_BAD_SHAPE, set([](bnorm_tensor_desc& d) {
         d.c = 0;
         const int v = 7;
         std::memcpy(&d.layout, &v, sizeof v);
       })},
      {"bad_dtype_before_null_x", BNORM_ERR_BAD_ARGUMENT, [](Arena&, Args& t) {
         const int v = 9;
         std::memcpy(&t.desc.dtype, &v, sizeof v);
         t.x = nullptr;
       }},
  };
}

// Cases with n == 0: no tensor is needed.
void SetEmpty(Args& t) {
  t.desc.n = 0;
  t.x = t.dy = nullptr;
  t.y = t.dx = nullptr;
}

TEST(SplitValidation, Stats) {
  for (const Case& c : DescCases()) Expect(Fn::kStats, c);
  const std::vector<Case> cases = {
      {"x_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.x = nullptr; }},
      {"mean_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.stats_mean = nullptr; }},
      {"m2_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.stats_m2 = nullptr; }},
      {"mean_null_n_zero", BNORM_ERR_NULL_POINTER,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.stats_mean = nullptr;
       }},
      {"mean_is_m2", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.stats_m2 = a.mean; }},
      {"m2_partly_over_mean", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.stats_m2 = a.mean + 1; }},
      {"mean_in_x", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.stats_mean = reinterpret_cast<double*>(a.x + 4); }},
      {"m2_over_the_end_of_x", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.stats_m2 = reinterpret_cast<double*>(a.x + Arena::kE - 2); }},
      {"ok", BNORM_OK, [](Arena&, Args&) {}},
      {"ok_n_zero_x_null", BNORM_OK, [](Arena&, Args& t) { SetEmpty(t); }},
      {"ok_bf16", BNORM_OK, [](Arena&, Args& t) { t.desc.dtype = BNORM_DTYPE_BF16; }},
  };
  for (const Case& c : cases) Expect(Fn::kStats, c);
}

TEST(SplitValidation, StatsMerge) {
  constexpr int64_t two53 = int64_t{1} << 53;
  const std::vector<Case> cases = {
      {"counts_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.counts = nullptr; }},
      {"means_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.means = nullptr; }},
      {"m2s_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.m2s = nullptr; }},
      {"count_out_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.count_out = nullptr; }},
      {"mean_out_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.mean_out = nullptr; }},
      {"m2_out_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.m2_out = nullptr; }},
      {"c_zero", BNORM_ERR_BAD_SHAPE, [](Arena&, Args& t) { t.c = 0; }},
      {"c_negative", BNORM_ERR_BAD_SHAPE, [](Arena&, Args& t) { t.c = -1; }},
      {"k_zero", BNORM_ERR_BAD_SHAPE, [](Arena&, Args& t) { t.k = 0; }},
      {"k_negative", BNORM_ERR_BAD_SHAPE, [](Arena&, Args& t) { t.k = -5; }},
      {"k_times_c_overflows", BNORM_ERR_BAD_SHAPE,
       [](Arena&, Args& t) {
         t.k = int64_t{1} << 62;
         t.c = 4;
       }},
      {"k_times_c_doubles_overflow", BNORM_ERR_BAD_SHAPE,
       [](Arena&, Args& t) {
         t.k = int64_t{1} << 30;
         t.c = int64_t{1} << 31;
       }},
      {"count_negative", BNORM_ERR_BAD_ARGUMENT, [](Arena& a, Args&) { a.counts[1] = -1; }},
      {"count_min", BNORM_ERR_BAD_ARGUMENT,
       [](Arena& a, Args&) { a.counts[2] = std::numeric_limits<int64_t>::min(); }},
      {"count_above_2^53", BNORM_ERR_BAD_ARGUMENT,
       [](Arena& a, Args&) { a.counts[0] = two53 + 1; }},
      {"total_above_2^53", BNORM_ERR_BAD_ARGUMENT,
       [](Arena& a, Args&) {
         a.counts[0] = two53 - 10;
         a.counts[1] = 5;
         a.counts[2] = 6;
       }},
      {"total_wraps", BNORM_ERR_BAD_ARGUMENT,
       [](Arena& a, Args&) {
         a.counts[0] = std::numeric_limits<int64_t>::max();
         a.counts[1] = std::numeric_limits<int64_t>::max();
         a.counts[2] = 2;
       }},
      {"ok_total_2^53", BNORM_OK,
       [](Arena& a, Args&) {
         a.counts[0] = two53 - 10;
         a.counts[1] = 4;
         a.counts[2] = 6;
       }},
      {"mean_out_is_m2_out", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.m2_out = a.mean_out; }},
      {"mean_out_partly_over_m2_out", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.mean_out = a.m2_out - 1; }},
      {"mean_out_partly_over_means", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.mean_out = a.means + 1; }},
      {"mean_out_is_partial_1", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.mean_out = a.means + Arena::kC; }},
      {"mean_out_is_m2s", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.mean_out = a.m2s; }},
      {"m2_out_is_means", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.m2_out = a.means; }},
      {"m2_out_is_last_partial", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.m2_out = a.m2s + 2 * Arena::kC; }},
      {"count_out_in_counts", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.count_out = a.counts + 2; }},
      {"count_out_in_mean_out", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.count_out = reinterpret_cast<int64_t*>(a.mean_out + 1); }},
      {"count_out_in_means", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.count_out = reinterpret_cast<int64_t*>(a.means + 4); }},
      {"mean_out_over_counts", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.mean_out = reinterpret_cast<double*>(a.counts); }},
      {"ok_in_place", BNORM_OK,
       [](Arena& a, Args& t) {
         t.mean_out = a.means;
         t.m2_out = a.m2s;
       }},
      {"ok_k_one", BNORM_OK, [](Arena&, Args& t) { t.k = 1; }},
  };
  for (const Case& c : cases) Expect(Fn::kMerge, c);
}

TEST(SplitValidation, ForwardApply) {
  for (const Case& c : DescCases()) Expect(Fn::kForwardApply, c);
  const float nan = kNaNf, inf = kInff;
  const std::vector<Case> cases = {
      {"x_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.x = nullptr; }},
      {"y_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.y = nullptr; }},
      {"mean_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.mean = nullptr; }},
      {"m2_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.m2 = nullptr; }},
      {"m2_null_n_zero", BNORM_ERR_NULL_POINTER,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.m2 = nullptr;
       }},
      {"eps_negative", BNORM_ERR_BAD_ARGUMENT, [](Arena&, Args& t) { t.eps = -1e-5f; }},
      {"eps_nan", BNORM_ERR_BAD_ARGUMENT, [nan](Arena&, Args& t) { t.eps = nan; }},
      {"eps_inf", BNORM_ERR_BAD_ARGUMENT, [inf](Arena&, Args& t) { t.eps = inf; }},
      {"momentum_negative", BNORM_ERR_BAD_ARGUMENT, [](Arena&, Args& t) { t.momentum = -0.5f; }},
      {"momentum_above_one", BNORM_ERR_BAD_ARGUMENT, [](Arena&, Args& t) { t.momentum = 1.0001f; }},
      {"momentum_nan", BNORM_ERR_BAD_ARGUMENT, [nan](Arena&, Args& t) { t.momentum = nan; }},
      {"total_below_n_spatial", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, Args& t) { t.total = Arena::kN * Arena::kS - 1; }},
      {"total_negative", BNORM_ERR_BAD_ARGUMENT, [](Arena&, Args& t) { t.total = -5; }},
      // Counts must be exact as doubles (as in bnorm_stats_merge).
      {"total_above_2_53", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, Args& t) { t.total = (int64_t{1} << 53) + 1; }},
      {"total_negative_n_zero", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.total = -1;
       }},
      {"total_one", BNORM_ERR_TOO_FEW_VALUES,
       [](Arena&, Args& t) {
         t.desc.n = 1;
         t.desc.spatial = 1;
         t.total = 1;
       }},
      {"total_one_n_zero", BNORM_ERR_TOO_FEW_VALUES,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.total = 1;
       }},
      {"total_zero_n_zero", BNORM_ERR_TOO_FEW_VALUES,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.total = 0;
       }},
      {"m2_negative", BNORM_ERR_BAD_ARGUMENT, [](Arena& a, Args&) { a.m2[2] = -1e-300; }},
      {"m2_minus_inf", BNORM_ERR_BAD_ARGUMENT,
       [](Arena& a, Args&) { a.m2[0] = -std::numeric_limits<double>::infinity(); }},
      {"m2_negative_n_zero", BNORM_ERR_BAD_ARGUMENT,
       [](Arena& a, Args& t) {
         SetEmpty(t);
         a.m2[1] = -2.0;
       }},
      // Order: BAD_ARGUMENT before NULL_POINTER (buffers) before
      // TOO_FEW_VALUES before ALIAS before a negative m2.
      {"total_below_before_null_x", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, Args& t) {
         t.total = 3;
         t.x = nullptr;
       }},
      {"null_mean_before_too_few", BNORM_ERR_NULL_POINTER,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.total = 1;
         t.mean = nullptr;
       }},
      {"too_few_before_alias", BNORM_ERR_TOO_FEW_VALUES,
       [](Arena& a, Args& t) {
         SetEmpty(t);
         t.total = 1;
         t.rv = a.rm;
       }},
      {"alias_before_negative_m2", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) {
         a.m2[0] = -1.0;
         t.sm = t.si;
       }},
      {"null_x_before_negative_m2", BNORM_ERR_NULL_POINTER,
       [](Arena& a, Args& t) {
         a.m2[0] = -1.0;
         t.x = nullptr;
       }},
      {"y_partly_over_x", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.y = a.x + 1; }},
      {"y_over_gamma", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.y = a.gamma - 4; }},
      {"y_over_mean", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.y = reinterpret_cast<float*>(a.mean) - Arena::kE + 1; }},
      {"running_mean_is_running_var", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.rv = a.rm; }},
      {"running_var_is_beta", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.rv = a.beta; }},
      {"save_mean_in_y", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.sm = a.y + 3; }},
      {"save_mean_in_x", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.sm = a.x; }},
      {"save_invstd_over_m2", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.si = reinterpret_cast<float*>(a.m2) + 1; }},
      {"running_mean_over_mean", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.rm = reinterpret_cast<float*>(a.mean); }},
      {"save_invstd_over_save_mean", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.si = a.sm + 2; }},
      {"ok", BNORM_OK, [](Arena&, Args&) {}},
      {"ok_in_place", BNORM_OK, [](Arena& a, Args& t) { t.y = a.x; }},
      {"ok_total_above_n_spatial", BNORM_OK, [](Arena&, Args& t) { t.total = 1000; }},
      {"ok_total_2_53", BNORM_OK, [](Arena&, Args& t) { t.total = int64_t{1} << 53; }},
      {"ok_total_two_n_spatial_one", BNORM_OK,
       [](Arena&, Args& t) {
         t.desc.n = 1;
         t.desc.spatial = 1;
         t.total = 2;
       }},
      {"ok_n_zero", BNORM_OK,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.total = 2;
       }},
      {"ok_m2_minus_zero_and_nan", BNORM_OK,
       [](Arena& a, Args&) {
         a.m2[0] = -0.0;
         a.m2[1] = kNaN;
       }},
      {"ok_optional_outputs_null", BNORM_OK,
       [](Arena&, Args& t) {
         t.gamma = t.beta = nullptr;
         t.rm = t.rv = t.sm = t.si = nullptr;
       }},
  };
  for (const Case& c : cases) Expect(Fn::kForwardApply, c);
}

TEST(SplitValidation, BackwardReduce) {
  for (const Case& c : DescCases()) Expect(Fn::kBackwardReduce, c);
  const std::vector<Case> cases = {
      {"x_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.x = nullptr; }},
      {"dy_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.dy = nullptr; }},
      {"save_mean_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.sm = nullptr; }},
      {"save_mean_null_n_zero", BNORM_ERR_NULL_POINTER,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.sm = nullptr;
       }},
      {"sum_dy_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.sum_dy = nullptr; }},
      {"sum_dy_xmu_null", BNORM_ERR_NULL_POINTER,
       [](Arena&, Args& t) { t.sum_dy_xmu = nullptr; }},
      {"sum_dy_is_sum_dy_xmu", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.sum_dy_xmu = a.sum_dy; }},
      {"sum_dy_xmu_partly_over_sum_dy", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.sum_dy_xmu = a.sum_dy + 2; }},
      {"sum_dy_in_x", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.sum_dy = reinterpret_cast<double*>(a.x + 2); }},
      {"sum_dy_xmu_in_dy", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.sum_dy_xmu = reinterpret_cast<double*>(a.dy); }},
      {"sum_dy_over_save_mean", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.sum_dy = reinterpret_cast<double*>(a.sm); }},
      {"ok", BNORM_OK, [](Arena&, Args&) {}},
      {"ok_x_is_dy", BNORM_OK, [](Arena& a, Args& t) { t.dy = a.x; }},
      {"ok_n_zero", BNORM_OK, [](Arena&, Args& t) { SetEmpty(t); }},
  };
  for (const Case& c : cases) Expect(Fn::kBackwardReduce, c);
}

TEST(SplitValidation, BackwardApply) {
  for (const Case& c : DescCases()) Expect(Fn::kBackwardApply, c);
  const std::vector<Case> cases = {
      {"x_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.x = nullptr; }},
      {"dy_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.dy = nullptr; }},
      {"save_mean_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.sm = nullptr; }},
      {"save_invstd_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.si = nullptr; }},
      {"sum_dy_null", BNORM_ERR_NULL_POINTER, [](Arena&, Args& t) { t.sum_dy_in = nullptr; }},
      {"sum_dy_xmu_null", BNORM_ERR_NULL_POINTER,
       [](Arena&, Args& t) { t.sum_dy_xmu_in = nullptr; }},
      {"sum_dy_null_n_zero", BNORM_ERR_NULL_POINTER,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.sum_dy_in = nullptr;
       }},
      {"total_zero", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.total = 0;
       }},
      {"total_negative", BNORM_ERR_BAD_ARGUMENT, [](Arena&, Args& t) { t.total = -1; }},
      {"total_below_n_spatial", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, Args& t) { t.total = Arena::kN * Arena::kS - 1; }},
      {"total_above_2_53", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, Args& t) { t.total = (int64_t{1} << 53) + 1; }},
      {"total_max", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, Args& t) { t.total = std::numeric_limits<int64_t>::max(); }},
      {"total_below_before_null_dy", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, Args& t) {
         t.total = 0;
         t.dy = nullptr;
       }},
      {"null_before_alias", BNORM_ERR_NULL_POINTER,
       [](Arena& a, Args& t) {
         t.si = nullptr;
         t.dx = a.x;
       }},
      {"dx_is_x", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.dx = a.x; }},
      {"dx_partly_over_dy", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.dx = a.dy + 1; }},
      {"dx_over_gamma", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.dx = a.gamma - 5; }},
      {"dx_over_sum_dy_xmu", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.dx = reinterpret_cast<float*>(a.sum_dy_xmu) - 3; }},
      {"dgamma_is_dbeta", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.dbeta = a.dgamma; }},
      {"dgamma_is_save_mean", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.dgamma = a.sm; }},
      {"dbeta_over_save_invstd", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.dbeta = a.si - 1; }},
      {"dgamma_over_sum_dy", BNORM_ERR_ALIAS,
       [](Arena& a, Args& t) { t.dgamma = reinterpret_cast<float*>(a.sum_dy) + 1; }},
      {"dbeta_in_dy", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.dbeta = a.dy + 2; }},
      {"dgamma_in_dx", BNORM_ERR_ALIAS, [](Arena& a, Args& t) { t.dgamma = a.dx + 6; }},
      {"ok", BNORM_OK, [](Arena&, Args&) {}},
      {"ok_in_place", BNORM_OK, [](Arena& a, Args& t) { t.dx = a.dy; }},
      {"ok_dx_null", BNORM_OK, [](Arena&, Args& t) { t.dx = nullptr; }},
      {"ok_total_2_53", BNORM_OK, [](Arena&, Args& t) { t.total = int64_t{1} << 53; }},
      {"ok_total_one", BNORM_OK,
       [](Arena&, Args& t) {
         t.desc.n = 1;
         t.desc.spatial = 1;
         t.total = 1;
       }},
      {"ok_n_zero", BNORM_OK,
       [](Arena&, Args& t) {
         SetEmpty(t);
         t.total = 1;
       }},
      {"ok_optional_null", BNORM_OK,
       [](Arena&, Args& t) {
         t.gamma = nullptr;
         t.dgamma = t.dbeta = nullptr;
       }},
  };
  for (const Case& c : cases) Expect(Fn::kBackwardApply, c);
}

}  // namespace
}  // namespace bnorm_test
