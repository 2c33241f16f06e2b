// Determinism and concurrency: results are bitwise identical whatever the
// thread count, and concurrent calls on one context give the serial results.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "test_support.h"

namespace bnorm_test {
namespace {

// Shapes that split into many reduction units and elementwise tasks.
std::vector<Shape> ThreadShapes() {
  return {Shape{3, 4, 70001, BNORM_LAYOUT_NCHW},  Shape{8, 64, 3136, BNORM_LAYOUT_NCHW},
          Shape{400, 24, 100, BNORM_LAYOUT_NHWC}, Shape{4, 1100, 50, BNORM_LAYOUT_NHWC},
          Shape{20000, 3, 7, BNORM_LAYOUT_NHWC},  Shape{9000, 33, 1, BNORM_LAYOUT_NCHW}};
}

// Every output of every entry point for one shape: f32 through the plain and
// the fused (_ex: residual, ReLU) calls, bf16 through training and backward.
struct Outputs {
  std::vector<float> y, save_mean, save_invstd, running_mean, running_var, y_infer, dx, dgamma,
      dbeta, dx_frozen, dgamma_frozen, dbeta_frozen, y_ex, dx_ex, dz_ex, dgamma_ex, dbeta_ex,
      save_mean16, save_invstd16, dgamma16, dbeta16;
  std::vector<uint16_t> y16, dx16;
  // The split entry points' double results (bnorm_stats, bnorm_backward_reduce):
  // bits that rounding to float could hide.
  std::vector<double> mean, m2, sum_dy, sum_dy_xmu;
  bool operator==(const Outputs& o) const {
    const std::vector<float> Outputs::*floats[] = {&Outputs::y,
                                                   &Outputs::save_mean,
                                                   &Outputs::save_invstd,
                                                   &Outputs::running_mean,
                                                   &Outputs::running_var,
                                                   &Outputs::y_infer,
                                                   &Outputs::dx,
                                                   &Outputs::dgamma,
                                                   &Outputs::dbeta,
                                                   &Outputs::dx_frozen,
                                                   &Outputs::dgamma_frozen,
                                                   &Outputs::dbeta_frozen,
                                                   &Outputs::y_ex,
                                                   &Outputs::dx_ex,
                                                   &Outputs::dz_ex,
                                                   &Outputs::dgamma_ex,
                                                   &Outputs::dbeta_ex,
                                                   &Outputs::save_mean16,
                                                   &Outputs::save_invstd16,
                                                   &Outputs::dgamma16,
                                                   &Outputs::dbeta16};
    for (const auto field : floats) {
      if (Bytes(this->*field) != Bytes(o.*field)) return false;
    }
    for (const auto field :
         {&Outputs::mean, &Outputs::m2, &Outputs::sum_dy, &Outputs::sum_dy_xmu}) {
      if (Bytes(this->*field) != Bytes(o.*field)) return false;
    }
    return y16 == o.y16 && dx16 == o.dx16;
  }
};

struct Inputs {
  Shape s;
  std::vector<float> x, dy, gamma, beta;
  std::vector<uint16_t> x16, dy16;  // x and dy rounded to bf16
};

// Generated once per shape (generation costs more than the calls).
const Inputs& InputsFor(const Shape& s) {
  static std::mutex mutex;
  static std::map<std::string, Inputs> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(s.Name());
  if (it == cache.end()) {
    const size_t C = static_cast<size_t>(s.c);
    Inputs in{s,
              NormalData(s, 21, 100.0, 3.0),
              NormalData(s, 22, 0.0, 1.0, 0.01),
              UniformVector(C, 23, 0.5f, 1.5f),
              UniformVector(C, 24, -1.0f, 1.0f),
              {},
              {}};
    for (float v : in.x) in.x16.push_back(RefFloatToBf16(v));
    for (float v : in.dy) in.dy16.push_back(RefFloatToBf16(v));
    it = cache.emplace(s.Name(), std::move(in)).first;
  }
  return it->second;
}

Outputs RunAll(const bnorm_context* ctx, const Shape& s) {
  const size_t C = static_cast<size_t>(s.c);
  const Inputs& in = InputsFor(s);
  const auto& x = in.x;
  const auto& dy = in.dy;
  const auto& gamma = in.gamma;
  const auto& beta = in.beta;
  const bnorm_tensor_desc d = s.Desc();
  Outputs o;
  for (auto* v : {&o.y, &o.y_infer, &o.dx, &o.dx_frozen, &o.y_ex, &o.dx_ex, &o.dz_ex}) {
    v->resize(x.size());
  }
  for (auto* v :
       {&o.save_mean, &o.save_invstd, &o.dgamma, &o.dbeta, &o.dgamma_frozen, &o.dbeta_frozen,
        &o.dgamma_ex, &o.dbeta_ex, &o.save_mean16, &o.save_invstd16, &o.dgamma16, &o.dbeta16}) {
    v->resize(C);
  }
  o.running_mean.assign(C, 0.5f);
  o.running_var.assign(C, 2.0f);
  EXPECT_EQ(bnorm_forward_training(ctx, &d, x.data(), o.y.data(), gamma.data(), beta.data(), 1e-5f,
                                   0.1f, o.running_mean.data(), o.running_var.data(),
                                   o.save_mean.data(), o.save_invstd.data()),
            BNORM_OK);
  EXPECT_EQ(bnorm_forward_inference(ctx, &d, x.data(), o.y_infer.data(), gamma.data(), beta.data(),
                                    o.running_mean.data(), o.running_var.data(), 1e-5f),
            BNORM_OK);
  EXPECT_EQ(
      bnorm_backward(ctx, &d, x.data(), dy.data(), o.dx.data(), gamma.data(), o.save_mean.data(),
                     o.save_invstd.data(), o.dgamma.data(), o.dbeta.data()),
      BNORM_OK);
  EXPECT_EQ(bnorm_backward_frozen(ctx, &d, x.data(), dy.data(), o.dx_frozen.data(), gamma.data(),
                                  o.running_mean.data(), o.save_invstd.data(),
                                  o.dgamma_frozen.data(), o.dbeta_frozen.data()),
            BNORM_OK);
  // The fused calls, dy doubling as the residual.
  EXPECT_EQ(bnorm_forward_training_ex(ctx, &d, x.data(), dy.data(), o.y_ex.data(), BNORM_ACT_RELU,
                                      gamma.data(), beta.data(), 1e-5f, 0.1f, nullptr, nullptr,
                                      nullptr, nullptr),
            BNORM_OK);
  EXPECT_EQ(
      bnorm_backward_ex(ctx, &d, x.data(), o.y_ex.data(), dy.data(), o.dx_ex.data(), o.dz_ex.data(),
                        BNORM_ACT_RELU, gamma.data(), beta.data(), o.save_mean.data(),
                        o.save_invstd.data(), o.dgamma_ex.data(), o.dbeta_ex.data()),
      BNORM_OK);
  for (auto* v : {&o.mean, &o.m2, &o.sum_dy, &o.sum_dy_xmu}) v->resize(C);
  EXPECT_EQ(bnorm_stats(ctx, &d, x.data(), o.mean.data(), o.m2.data()), BNORM_OK);
  EXPECT_EQ(bnorm_backward_reduce(ctx, &d, x.data(), dy.data(), o.save_mean.data(), o.sum_dy.data(),
                                  o.sum_dy_xmu.data()),
            BNORM_OK);
  bnorm_tensor_desc d16 = d;
  d16.dtype = BNORM_DTYPE_BF16;
  o.y16.resize(x.size());
  o.dx16.resize(x.size());
  EXPECT_EQ(bnorm_forward_training(ctx, &d16, in.x16.data(), o.y16.data(), gamma.data(),
                                   beta.data(), 1e-5f, 0.1f, nullptr, nullptr, o.save_mean16.data(),
                                   o.save_invstd16.data()),
            BNORM_OK);
  EXPECT_EQ(bnorm_backward(ctx, &d16, in.x16.data(), in.dy16.data(), o.dx16.data(), gamma.data(),
                           o.save_mean16.data(), o.save_invstd16.data(), o.dgamma16.data(),
                           o.dbeta16.data()),
            BNORM_OK);
  return o;
}

class ThreadsTest : public testing::TestWithParam<std::string> {};

TEST_P(ThreadsTest, BitwiseIdenticalForAnyThreadCount) {
  ScopedTarget target(GetParam());
  bnorm_context* one = nullptr;
  ASSERT_EQ(bnorm_context_create(1, &one), BNORM_OK);
  for (const Shape& s : ThreadShapes()) {
    SCOPED_TRACE(s.Name());
    const Outputs serial = RunAll(one, s);
    for (int threads : {2, 3, 7, 16, 0}) {
      bnorm_context* ctx = nullptr;
      ASSERT_EQ(bnorm_context_create(threads, &ctx), BNORM_OK);
      EXPECT_TRUE(RunAll(ctx, s) == serial) << threads << " threads";
      bnorm_context_destroy(ctx);
    }
    EXPECT_TRUE(RunAll(nullptr, s) == serial) << "default context";
  }
  bnorm_context_destroy(one);
}

// The split entry points' double sums on 1, 2 and 16 threads: bnorm_stats
// of 4x64x12544 NCHW and bnorm_backward_reduce of 2x64x12544 (channels of
// two reduction units). With caches small enough (ctest's
// threads_test.plan_changes_with_threads: 64 KiB L2, 256 KiB LLC), one thread
// takes the channel-fused plan for both and more threads the two-phase one,
// whose reductions prefetch ahead (FusesBeyondL2 in src/plan.h; plan_test
// pins these plans): the same kernels inlined into two callers. Built with
// floating-point contraction, GCC fused their scalar double arithmetic
// differently in the two, and 7 of 64 channels' statistics differed in the
// last bit.
TEST_P(ThreadsTest, SplitSumsBitwiseIdenticalWhenThePlanChanges) {
  ScopedTarget target(GetParam());
  const Shape stats_shape{4, 64, 12544, BNORM_LAYOUT_NCHW};
  const Shape sums_shape{2, 64, 12544, BNORM_LAYOUT_NCHW};
  static const std::vector<float> x = NormalData(stats_shape, 25, 100.0, 3.0);
  static const std::vector<float> dy = NormalData(sums_shape, 26, 0.0, 1.0);
  const size_t C = static_cast<size_t>(stats_shape.c);
  const bnorm_tensor_desc stats_desc = stats_shape.Desc();
  const bnorm_tensor_desc sums_desc = sums_shape.Desc();
  std::vector<double> first[4];
  for (int threads : {1, 2, 16}) {
    bnorm_context* ctx = nullptr;
    ASSERT_EQ(bnorm_context_create(threads, &ctx), BNORM_OK);
    std::vector<double> out[4] = {std::vector<double>(C), std::vector<double>(C),
                                  std::vector<double>(C), std::vector<double>(C)};
    EXPECT_EQ(bnorm_stats(ctx, &stats_desc, x.data(), out[0].data(), out[1].data()), BNORM_OK);
    const std::vector<float> mean(out[0].begin(), out[0].end());
    // The first two images of x (the same layout, n = 2).
    EXPECT_EQ(bnorm_backward_reduce(ctx, &sums_desc, x.data(), dy.data(), mean.data(),
                                    out[2].data(), out[3].data()),
              BNORM_OK);
    bnorm_context_destroy(ctx);
    if (threads == 1) {
      for (int k = 0; k < 4; ++k) first[k] = out[k];
      continue;
    }
    for (int k = 0; k < 4; ++k) {
      for (size_t ch = 0; ch < C; ++ch) {
        EXPECT_EQ(Bytes(std::vector<double>{out[k][ch]}), Bytes(std::vector<double>{first[k][ch]}))
            << "output " << k << " channel " << ch << " on " << threads
            << " threads: " << out[k][ch] << " vs " << first[k][ch];
      }
    }
  }
}

// NaN operands of both signs meeting in one operation: which of them x86
// returns depends on the operand order the compiler picked, which differed
// between the kernels of two plans (the fuzzer's case: f16 backward of
// 4x2x20000 NCHW, channel 1 with gamma -NaN and save_mean +NaN: one and two
// threads take the channel-fused plan, three the two-phase one, and every
// dx of the channel had the other sign). Every output NaN is the one NaN of
// its type (f32 0x7FC00000, f16 0x7E00, bf16 0x7FC0), so the bytes agree on
// 1, 2 and 3 threads; here in backward (NaN constants and NaN data of both
// signs) and in the fused training (x and z NaN of opposite signs), with
// 262144 elements so that training, too, runs on 3 threads (UsefulThreads);
// and each NaN of every output is checked to be the one NaN.
TEST_P(ThreadsTest, NaNsOfBothSignsGiveTheSameBits) {
  ScopedTarget target(GetParam());
  const int64_t n = 4, c = 2, spatial = 32768;
  const size_t count = static_cast<size_t>(n * c * spatial);
  const uint32_t kPlusNaN = 0x7FC00000u, kMinusNaN = 0xFFC00001u;
  const auto nan_of = [](uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  };
  for (bnorm_dtype dtype : {BNORM_DTYPE_F32, BNORM_DTYPE_F16, BNORM_DTYPE_BF16}) {
    SCOPED_TRACE(static_cast<int>(dtype));
    const size_t elem = dtype == BNORM_DTYPE_F32 ? 4 : 2;
    const bnorm_tensor_desc desc{n, c, spatial, BNORM_LAYOUT_NCHW, dtype};
    // Values from a small generator, stored as each type; channel 1 of
    // images 1 and 2 gets NaN data of both signs in x, dy and z.
    std::vector<float> xf(count), dyf(count), zf(count);
    uint32_t state = 99u;
    for (size_t i = 0; i < count; ++i) {
      state = state * 1664525u + 1013904223u;
      xf[i] = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
      dyf[i] = 0.25f - xf[i] * 0.5f;
      zf[i] = xf[i] * 0.75f;
    }
    const size_t e1 = static_cast<size_t>((1 * c + 1) * spatial + 17);
    const size_t e2 = static_cast<size_t>((2 * c + 1) * spatial + 30000);
    xf[e1] = nan_of(kPlusNaN);
    dyf[e1] = nan_of(kMinusNaN);
    zf[e1] = nan_of(kMinusNaN);
    xf[e2] = nan_of(kMinusNaN);
    dyf[e2] = nan_of(kPlusNaN);
    const auto store = [&](const std::vector<float>& v) {
      std::vector<unsigned char> out(count * elem);
      for (size_t i = 0; i < count; ++i) {
        if (elem == 4) {
          std::memcpy(&out[4 * i], &v[i], 4);
        } else {
          uint32_t u;
          std::memcpy(&u, &v[i], 4);
          // NaN keeps its sign here (0x7E00/0xFE00, 0x7FC0/0xFFC0); finite
          // values truncate (the data need no rounding to be NaN-free).
          uint16_t h =
              dtype == BNORM_DTYPE_BF16 ? static_cast<uint16_t>(u >> 16) : RefFloatToF16(v[i]);
          std::memcpy(&out[2 * i], &h, 2);
        }
      }
      return out;
    };
    const std::vector<unsigned char> x = store(xf), dy = store(dyf), z = store(zf);
    const std::vector<float> gamma{1.5f, nan_of(kMinusNaN)}, beta{0.25f, -0.5f};
    const std::vector<float> mean{0.0f, nan_of(kPlusNaN)}, invstd{2.0f, 3.0f};
    std::vector<unsigned char> first;
    for (int threads : {1, 2, 3}) {
      bnorm_context* ctx = nullptr;
      ASSERT_EQ(bnorm_context_create(threads, &ctx), BNORM_OK);
      std::vector<unsigned char> dx(count * elem), y(count * elem);
      std::vector<float> dgamma(2), dbeta(2), save_mean(2), save_invstd(2);
      EXPECT_EQ(bnorm_backward(ctx, &desc, x.data(), dy.data(), dx.data(), gamma.data(),
                               mean.data(), invstd.data(), dgamma.data(), dbeta.data()),
                BNORM_OK);
      EXPECT_EQ(bnorm_forward_training_ex(ctx, &desc, x.data(), z.data(), y.data(), BNORM_ACT_NONE,
                                          gamma.data(), beta.data(), 1e-5f, 0.1f, nullptr,
                                          nullptr, save_mean.data(), save_invstd.data()),
                BNORM_OK);
      bnorm_context_destroy(ctx);
      std::vector<unsigned char> all = dx;
      all.insert(all.end(), y.begin(), y.end());
      for (const std::vector<float>* v : {&dgamma, &dbeta, &save_mean, &save_invstd}) {
        const std::vector<unsigned char> b = Bytes(*v);
        all.insert(all.end(), b.begin(), b.end());
      }
      // Every NaN element of dx and y is the one NaN; channel 1's dx is all
      // NaN (its gamma and mean are).
      const uint32_t want = dtype == BNORM_DTYPE_F32    ? kPlusNaN
                            : dtype == BNORM_DTYPE_F16 ? 0x7E00u
                                                       : 0x7FC0u;
      size_t nans = 0, other_nans = 0;
      for (const std::vector<unsigned char>* t : {&dx, &y}) {
        for (size_t i = 0; i < count; ++i) {
          uint32_t bits = 0;
          std::memcpy(&bits, &(*t)[elem * i], elem);
          const bool nan = elem == 4 ? (bits & 0x7FFFFFFFu) > 0x7F800000u
                           : dtype == BNORM_DTYPE_F16 ? (bits & 0x7FFFu) > 0x7C00u
                                                       : (bits & 0x7FFFu) > 0x7F80u;
          if (!nan) continue;
          ++nans;
          if (bits != want) ++other_nans;
        }
      }
      EXPECT_GE(nans, static_cast<size_t>(n * spatial));  // channel 1 of dx
      EXPECT_EQ(other_nans, 0u) << threads << " threads";
      for (const std::vector<float>* v : {&dgamma, &dbeta, &save_mean, &save_invstd}) {
        for (const float f : *v) {
          uint32_t bits;
          std::memcpy(&bits, &f, sizeof(bits));
          if (std::isnan(f)) {
            EXPECT_EQ(bits, kPlusNaN) << std::hex << bits;
          }
        }
      }
      if (threads == 1) {
        first = all;
        continue;
      }
      EXPECT_TRUE(all == first) << threads << " threads";
    }
  }
}

#if defined(__x86_64__) || defined(__i386__)
// The caller's floating-point mode (here flush-to-zero and denormals-are-zero
// set in MXCSR after the contexts were made) governs every thread of a call,
// as it governs a call run inline: the same bits on 1, 2 and 3 threads, and
// denormal inputs read as zero (x of one channel is all denormals: with DAZ
// its variance is 0, so y is beta there). oneTBB's arenas would otherwise run
// their pieces in the mode of the thread that created the arena.
TEST_P(ThreadsTest, TheCallersFloatingPointModeOnEveryThread) {
  ScopedTarget target(GetParam());
  const int64_t n = 4, c = 2, spatial = 32768;
  const size_t count = static_cast<size_t>(n * c * spatial);
  std::vector<float> x(count), dy(count);
  uint32_t state = 7u;
  for (size_t i = 0; i < count; ++i) {
    state = state * 1664525u + 1013904223u;
    const float u = static_cast<float>(state >> 8) / 16777216.0f;  // [0, 1)
    const bool channel0 = (i / static_cast<size_t>(spatial)) % 2 == 0;
    x[i] = channel0 ? u * 1e-39f : u - 0.5f;  // channel 0: denormals
    dy[i] = channel0 ? (0.5f - u) * 1e-39f : 0.25f - u;
  }
  const bnorm_tensor_desc desc{n, c, spatial, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  const std::vector<float> gamma{1.5f, 0.5f}, beta{0.25f, -0.5f};
  std::vector<bnorm_context*> contexts;
  for (int threads : {1, 2, 3}) {
    bnorm_context* ctx = nullptr;
    ASSERT_EQ(bnorm_context_create(threads, &ctx), BNORM_OK);
    contexts.push_back(ctx);
  }
  const unsigned int saved = _mm_getcsr();
  std::vector<std::vector<unsigned char>> results;
  for (const unsigned int mode : {saved | 0x8040u, saved}) {  // FTZ | DAZ, then as before
    _mm_setcsr(mode);
    std::vector<unsigned char> first;
    for (size_t k = 0; k < contexts.size(); ++k) {
      std::vector<float> y(count), dx(count), save_mean(2), save_invstd(2), dgamma(2), dbeta(2);
      const bnorm_status fwd = bnorm_forward_training(
          contexts[k], &desc, x.data(), y.data(), gamma.data(), beta.data(), 1e-5f, 0.1f, nullptr,
          nullptr, save_mean.data(), save_invstd.data());
      const bnorm_status bwd =
          bnorm_backward(contexts[k], &desc, x.data(), dy.data(), dx.data(), gamma.data(),
                         save_mean.data(), save_invstd.data(), dgamma.data(), dbeta.data());
      const unsigned int after = _mm_getcsr();
      _mm_setcsr(saved);  // gtest's own arithmetic in the default mode
      ASSERT_EQ(fwd, BNORM_OK);
      ASSERT_EQ(bwd, BNORM_OK);
      // The control bits (not the sticky exception flags, bits 0-5).
      EXPECT_EQ(after & ~0x3Fu, mode & ~0x3Fu) << "the call changed the caller's mode";
      if (mode != saved) {
        EXPECT_EQ(save_mean[0], 0.0f) << k + 1 << " threads";  // denormals read as zero
        EXPECT_EQ(y[0], beta[0]);
      } else {
        EXPECT_GT(save_mean[0], 0.0f);
      }
      std::vector<unsigned char> all = Bytes(y);
      for (const std::vector<float>* v : {&dx, &save_mean, &save_invstd, &dgamma, &dbeta}) {
        const std::vector<unsigned char> b = Bytes(*v);
        all.insert(all.end(), b.begin(), b.end());
      }
      if (k == 0) {
        first = all;
      } else {
        EXPECT_TRUE(all == first) << k + 1 << " threads, mode " << std::hex << mode;
      }
      _mm_setcsr(mode);
    }
    _mm_setcsr(saved);
  }
  for (bnorm_context* ctx : contexts) bnorm_context_destroy(ctx);
}
#endif

INSTANTIATE_TEST_SUITE_P(AllTargets, ThreadsTest, testing::ValuesIn(TargetNames()),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

TEST(Concurrency, EightThreadsShareOneContext) {
  bnorm_context* one = nullptr;
  bnorm_context* shared = nullptr;
  ASSERT_EQ(bnorm_context_create(1, &one), BNORM_OK);
  ASSERT_EQ(bnorm_context_create(0, &shared), BNORM_OK);
  const auto shapes = ThreadShapes();
  std::vector<Outputs> serial;
  for (const Shape& s : shapes) serial.push_back(RunAll(one, s));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (size_t k = 0; k < shapes.size(); ++k) {
          const size_t which = (k + static_cast<size_t>(t)) % shapes.size();
          if (!(RunAll(shared, shapes[which]) == serial[which]))
            ++mismatches[static_cast<size_t>(t)];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(mismatches[static_cast<size_t>(t)], 0) << "thread " << t;
  bnorm_context_destroy(shared);
  bnorm_context_destroy(one);
}

TEST(Concurrency, ContextsCreatedAndDestroyedWhileOthersCompute) {
  const Shape s{8, 64, 3136, BNORM_LAYOUT_NCHW};
  const Outputs serial = RunAll(nullptr, s);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(6, 0);
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 4; ++round) {
        bnorm_context* ctx = nullptr;
        if (bnorm_context_create(1 + (t + round) % 3, &ctx) != BNORM_OK) {
          ++mismatches[static_cast<size_t>(t)];
          continue;
        }
        if (!(RunAll(t % 2 == 0 ? ctx : nullptr, s) == serial))
          ++mismatches[static_cast<size_t>(t)];
        bnorm_context_destroy(ctx);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 6; ++t) EXPECT_EQ(mismatches[static_cast<size_t>(t)], 0) << "thread " << t;
}

// Spins until `go`; lets several threads start a call at the same moment.
void WaitFor(const std::atomic<bool>& go) {
  while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
}

// ctest runs each test in its own process, so here the first use of the
// default context happens in these threads, all at once; then threads
// started after it exists use it too.
TEST(Concurrency, DefaultContextFromThreadsStartedBeforeAndAfterItsFirstUse) {
  const Shape s{8, 64, 3136, BNORM_LAYOUT_NCHW};
  bnorm_context* one = nullptr;
  ASSERT_EQ(bnorm_context_create(1, &one), BNORM_OK);
  const Outputs serial = RunAll(one, s);
  bnorm_context_destroy(one);
  std::vector<int> mismatches(8, 0);
  std::atomic<bool> go{false};
  std::vector<std::thread> before;
  for (int t = 0; t < 4; ++t) {
    before.emplace_back([&, t] {
      WaitFor(go);
      if (!(RunAll(nullptr, s) == serial)) ++mismatches[static_cast<size_t>(t)];
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& th : before) th.join();
  std::vector<std::thread> after;
  for (int t = 4; t < 8; ++t) {
    after.emplace_back([&, t] {
      if (!(RunAll(nullptr, s) == serial)) ++mismatches[static_cast<size_t>(t)];
    });
  }
  for (auto& th : after) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(mismatches[static_cast<size_t>(t)], 0) << "thread " << t;
}

// Eight contexts of 1-4 threads, created, used and destroyed at the same
// moments, each on its own shape.
TEST(Concurrency, ManyContextsAtOnce) {
  const auto shapes = ThreadShapes();
  bnorm_context* one = nullptr;
  ASSERT_EQ(bnorm_context_create(1, &one), BNORM_OK);
  std::vector<Outputs> serial;
  for (const Shape& s : shapes) serial.push_back(RunAll(one, s));
  bnorm_context_destroy(one);
  std::vector<int> mismatches(8, 0);
  std::atomic<bool> go{false};
  std::atomic<int> created{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      WaitFor(go);
      bnorm_context* ctx = nullptr;
      if (bnorm_context_create(1 + t % 4, &ctx) != BNORM_OK) {
        ++mismatches[static_cast<size_t>(t)];
        return;
      }
      created.fetch_add(1);
      while (created.load() < 8) std::this_thread::yield();  // all exist at once
      for (int round = 0; round < 2; ++round) {
        const size_t which = (static_cast<size_t>(t) + static_cast<size_t>(round)) % shapes.size();
        if (!(RunAll(ctx, shapes[which]) == serial[which])) ++mismatches[static_cast<size_t>(t)];
      }
      bnorm_context_destroy(ctx);
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(mismatches[static_cast<size_t>(t)], 0) << "thread " << t;
}

// bnorm_set_target from one thread while others compute: every call runs
// wholly on one target, so each result equals that of some target.
TEST(Concurrency, TargetChangesWhileOthersCompute) {
  const Shape s{4, 16, 5000, BNORM_LAYOUT_NHWC};
  const Inputs& in = InputsFor(s);
  const bnorm_tensor_desc d = s.Desc();
  const size_t C = static_cast<size_t>(s.c);
  const auto train = [&](const bnorm_context* ctx) {
    std::vector<float> y(in.x.size()), mean(C), invstd(C);
    EXPECT_EQ(
        bnorm_forward_training(ctx, &d, in.x.data(), y.data(), in.gamma.data(), in.beta.data(),
                               1e-5f, 0.1f, nullptr, nullptr, mean.data(), invstd.data()),
        BNORM_OK);
    y.insert(y.end(), mean.begin(), mean.end());
    y.insert(y.end(), invstd.begin(), invstd.end());
    return Bytes(y);
  };
  std::vector<std::vector<unsigned char>> per_target;
  for (const std::string& name : TargetNames()) {
    ScopedTarget target(name);
    per_target.push_back(train(nullptr));
  }
  bnorm_context* shared = nullptr;
  ASSERT_EQ(bnorm_context_create(2, &shared), BNORM_OK);
  std::atomic<bool> done{false};
  std::thread switcher([&] {
    const auto names = TargetNames();
    for (size_t i = 0; !done.load(); ++i) {
      EXPECT_EQ(bnorm_set_target(names[i % names.size()].c_str()), BNORM_OK);
      std::this_thread::yield();
    }
  });
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        const auto got = train(t % 2 == 0 ? shared : nullptr);
        bool any = false;
        for (const auto& expected : per_target) any |= got == expected;
        if (!any) ++mismatches[static_cast<size_t>(t)];
      }
    });
  }
  for (auto& th : threads) th.join();
  done.store(true);
  switcher.join();
  bnorm_set_target(nullptr);
  bnorm_context_destroy(shared);
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[static_cast<size_t>(t)], 0) << "thread " << t;
}

}  // namespace
}  // namespace bnorm_test
