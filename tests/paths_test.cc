// The execution paths the planner chooses between: channel-fused and
// two-phase passes (same bits), non-temporal stores on tensors larger than the
// last-level cache, and unaligned output pointers, against the reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "test_support.h"

namespace bnorm_test {
namespace {

struct TrainOut {
  std::vector<float> y, mean, invstd, dx, dgamma, dbeta;
};

// Forward training then backward, with outputs at `offset` floats into their
// buffers (offset 1: no output is vector-aligned).
TrainOut TrainAndBack(const bnorm_context* ctx, const Shape& s, const std::vector<float>& x,
                      const std::vector<float>& dy, size_t offset) {
  const size_t C = static_cast<size_t>(s.c);
  std::vector<float> ybuf(x.size() + offset), dxbuf(x.size() + offset);
  TrainOut o;
  o.mean.resize(C);
  o.invstd.resize(C);
  o.dgamma.resize(C);
  o.dbeta.resize(C);
  const bnorm_tensor_desc d = s.Desc();
  EXPECT_EQ(bnorm_forward_training(ctx, &d, x.data(), ybuf.data() + offset, nullptr, nullptr, 1e-5f,
                                   0.1f, nullptr, nullptr, o.mean.data(), o.invstd.data()),
            BNORM_OK);
  EXPECT_EQ(bnorm_backward(ctx, &d, x.data(), dy.data(), dxbuf.data() + offset, nullptr,
                           o.mean.data(), o.invstd.data(), o.dgamma.data(), o.dbeta.data()),
            BNORM_OK);
  o.y.assign(ybuf.begin() + static_cast<std::ptrdiff_t>(offset), ybuf.end());
  o.dx.assign(dxbuf.begin() + static_cast<std::ptrdiff_t>(offset), dxbuf.end());
  return o;
}

bool Same(const TrainOut& a, const TrainOut& b) {
  return Bytes(a.y) == Bytes(b.y) && Bytes(a.mean) == Bytes(b.mean) &&
         Bytes(a.invstd) == Bytes(b.invstd) && Bytes(a.dx) == Bytes(b.dx) &&
         Bytes(a.dgamma) == Bytes(b.dgamma) && Bytes(a.dbeta) == Bytes(b.dbeta);
}

void CheckAgainstReference(const Shape& s, const std::vector<float>& x, const TrainOut& o) {
  const auto ref = ReferenceStats(s, x);
  std::vector<LD> mean, invstd;
  for (size_t c = 0; c < ref.size(); ++c) {
    mean.push_back(ref[c].mean);
    invstd.push_back(RefInvstd(ref[c].var, 1e-5f));
    EXPECT_NEAR(o.mean[c], static_cast<double>(ref[c].mean),
                1e-6 * static_cast<double>(std::fabs(ref[c].mean) + std::sqrt(ref[c].var)));
    EXPECT_NEAR(o.invstd[c], static_cast<double>(invstd[c]), 1e-5 * static_cast<double>(invstd[c]));
  }
  const auto y_ref = ReferenceNormalize(s, x, mean, invstd, nullptr, nullptr);
  for (size_t e = 0; e < x.size(); e += 97) {  // sampled: the tensors are large
    ASSERT_NEAR(o.y[e], static_cast<double>(y_ref[e]),
                5e-6 * static_cast<double>(std::fabs(y_ref[e]) + 1))
        << e;
  }
}

class PathsTest : public testing::TestWithParam<std::string> {};

// (10, 4, 10000): on 1 thread one task owns whole channels (fused); on many
// threads the 4 channels are fewer than the useful threads and the batch is
// split (two-phase). The bits must not change.
TEST_P(PathsTest, FusedAndTwoPhaseGiveTheSameBits) {
  ScopedTarget target(GetParam());
  for (bnorm_layout layout : {BNORM_LAYOUT_NCHW, BNORM_LAYOUT_NHWC}) {
    const Shape s{10, 4, 10000, layout};
    const auto x = NormalData(s, 31, 50.0, 2.0);
    const auto dy = NormalData(s, 32, 0.0, 1.0);
    bnorm_context* one = nullptr;
    bnorm_context* many = nullptr;
    ASSERT_EQ(bnorm_context_create(1, &one), BNORM_OK);
    ASSERT_EQ(bnorm_context_create(16, &many), BNORM_OK);
    const TrainOut a = TrainAndBack(one, s, x, dy, 0);
    EXPECT_TRUE(Same(a, TrainAndBack(many, s, x, dy, 0))) << s.Name();
    EXPECT_TRUE(Same(a, TrainAndBack(many, s, x, dy, 1))) << s.Name() << " unaligned outputs";
    CheckAgainstReference(s, x, a);
    bnorm_context_destroy(one);
    bnorm_context_destroy(many);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, PathsTest, testing::ValuesIn(TargetNames()),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

// Fast deterministic data for the large tensors (the normal generator would
// dominate the test's time): a linear congruential sequence mapped to
// offset + [-scale, scale).
std::vector<float> QuickData(size_t count, uint64_t seed, float offset, float scale) {
  std::vector<float> v(count);
  uint64_t state = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (float& f : v) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    f = offset + scale * (static_cast<float>(state >> 40) / 8388608.0f - 1.0f);
  }
  return v;
}

// Tensors beyond any last-level cache (> 64 MiB) take the non-temporal store
// paths, whose peeling and channel-boundary blending must not change a value:
// every target against the reference, aligned and unaligned outputs equal.
TEST(Paths, StreamingStoresOnLargeTensors) {
  const Shape shapes[] = {Shape{2, 3, 2800000, BNORM_LAYOUT_NCHW},    // two-phase, long runs
                          Shape{2, 3, 2800000, BNORM_LAYOUT_NHWC},    // rows
                          Shape{170, 1000, 100, BNORM_LAYOUT_NCHW}};  // fused, short runs
  for (const Shape& s : shapes) {
    SCOPED_TRACE(s.Name());
    const auto x = QuickData(static_cast<size_t>(s.Elements()), 41, 7.0f, 3.0f);
    const auto dy = QuickData(static_cast<size_t>(s.Elements()), 42, 0.0f, 1.0f);
    for (const std::string& name : TargetNames()) {
      SCOPED_TRACE(name);
      ScopedTarget target(name);
      const TrainOut aligned = TrainAndBack(nullptr, s, x, dy, 0);
      EXPECT_TRUE(Same(aligned, TrainAndBack(nullptr, s, x, dy, 1))) << "unaligned outputs";
      if (name == TargetNames().front()) CheckAgainstReference(s, x, aligned);
      // Inference through the same store paths, unaligned.
      std::vector<float> ybuf(x.size() + 3);
      std::vector<float> var(static_cast<size_t>(s.c));
      for (size_t c = 0; c < var.size(); ++c) {
        var[c] = 1.0f / (aligned.invstd[c] * aligned.invstd[c]) - 1e-5f;
      }
      const bnorm_tensor_desc d = s.Desc();
      ASSERT_EQ(bnorm_forward_inference(nullptr, &d, x.data(), ybuf.data() + 3, nullptr, nullptr,
                                        aligned.mean.data(), var.data(), 1e-5f),
                BNORM_OK);
      for (size_t e = 0; e < x.size(); e += 101) {
        ASSERT_NEAR(ybuf[e + 3], aligned.y[e], 1e-4 * (std::fabs(aligned.y[e]) + 1)) << e;
      }
    }
  }
}

// The tensor of `values` as elements of `dtype` (f32, bf16 or f16), as bytes.
std::vector<unsigned char> AsElements(const std::vector<float>& values, bnorm_dtype dtype) {
  const size_t esize = dtype == BNORM_DTYPE_F32 ? 4 : 2;
  std::vector<unsigned char> out(values.size() * esize);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == BNORM_DTYPE_F32) {
      std::memcpy(&out[i * 4], &values[i], 4);
    } else if (dtype == BNORM_DTYPE_BF16) {
      const uint16_t h = RefFloatToBf16(values[i]);
      std::memcpy(&out[i * 2], &h, 2);
    } else {
      const uint16_t h = RefFloatToF16(values[i]);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

// A buffer of `bytes` on a 64-byte boundary (framework tensors' alignment;
// heap std::vector buffers may sit at any 16-byte offset).
struct Aligned64 {
  explicit Aligned64(size_t bytes)
      : p(static_cast<unsigned char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64))) {
    if (p == nullptr) std::abort();
  }
  ~Aligned64() { std::free(p); }
  Aligned64(const Aligned64&) = delete;
  Aligned64& operator=(const Aligned64&) = delete;
  unsigned char* p;
};

// The fused backward (ReLU mask, dz) on tensors beyond the last-level cache
// streams dz alongside dx where the two share their alignment, and stores dz
// through the caches where they do not: the same bits in every case, those
// of bnorm_backward on the masked gradient, with dz that gradient; also with
// dz over dy (in place). ctest runs it once more as
// paths_test.fused_backward_streaming with BNORM_LLC_SIZE=256K, where these
// tensors (1.2-2.4 MB each) are beyond the LLC on any machine.
TEST(Paths, FusedBackwardStreamsDzWithDx) {
  const Shape shapes[] = {
      Shape{6, 1000, 100, BNORM_LAYOUT_NCHW},  // fused, short runs
      Shape{6, 100, 1000, BNORM_LAYOUT_NHWC},  // period 400: the wrapping loop
      Shape{6, 64, 1600, BNORM_LAYOUT_NHWC}};  // period 64: rows a whole number of units
  for (const Shape& s : shapes) {
    const size_t count = static_cast<size_t>(s.Elements());
    const auto xf = QuickData(count, 43, 7.0f, 3.0f);
    const auto yf = QuickData(count, 44, 0.0f, 1.0f);  // about half <= 0: masked
    const auto dyf = QuickData(count, 45, 0.0f, 1.0f);
    std::vector<float> gf(count);
    for (size_t e = 0; e < count; ++e) gf[e] = yf[e] <= 0.0f ? 0.0f : dyf[e];
    const std::vector<float> mean(static_cast<size_t>(s.c), 7.0f),
        invstd(static_cast<size_t>(s.c), 0.5f);
    for (bnorm_dtype dtype : {BNORM_DTYPE_F32, BNORM_DTYPE_BF16, BNORM_DTYPE_F16}) {
      SCOPED_TRACE(s.Name() + " dtype " + std::to_string(static_cast<int>(dtype)));
      const size_t esize = dtype == BNORM_DTYPE_F32 ? 4 : 2;
      const size_t bytes = count * esize;
      bnorm_tensor_desc d = s.Desc();
      d.dtype = dtype;
      const auto x = AsElements(xf, dtype), y = AsElements(yf, dtype), dy = AsElements(dyf, dtype),
                 g = AsElements(gf, dtype);
      std::vector<unsigned char> dx_ref(bytes);
      // Up to 16 elements (32 bytes of 16-bit values, 64 of f32) past the
      // boundary.
      Aligned64 dxbuf(bytes + 64), dzbuf(bytes + 64);
      std::vector<float> dgamma_ref(mean.size()), dbeta_ref(mean.size()), dgamma(mean.size()),
          dbeta(mean.size());
      for (const std::string& name : TargetNames()) {
        SCOPED_TRACE(name);
        ScopedTarget target(name);
        std::fill(dx_ref.begin(), dx_ref.end(), static_cast<unsigned char>(0x5A));
        ASSERT_EQ(bnorm_backward(nullptr, &d, x.data(), g.data(), dx_ref.data(), nullptr,
                                 mean.data(), invstd.data(), dgamma_ref.data(), dbeta_ref.data()),
                  BNORM_OK);
        // Element offsets of dx and dz past a 64-byte boundary: both aligned;
        // dz not aligned like dx (by one element, by 32 bytes); both one
        // element or 32 bytes off (peeled); -1 for dz: in place over a copy
        // of dy at dx's offset.
        const size_t half = 32 / esize;
        const std::pair<size_t, size_t> cases[] = {{0, 0}, {0, 1},       {0, half},
                                                   {1, 1}, {half, half}, {0, SIZE_MAX}};
        for (const auto& offsets : cases) {
          SCOPED_TRACE(std::to_string(offsets.first) + "," + std::to_string(offsets.second));
          // Fresh garbage before each call: bytes an earlier case or target
          // left right would hide a store this call skipped.
          std::memset(dxbuf.p, 0xA5, bytes + 64);
          std::memset(dzbuf.p, 0xA5, bytes + 64);
          std::fill(dgamma.begin(), dgamma.end(), -7.0f);
          std::fill(dbeta.begin(), dbeta.end(), -7.0f);
          unsigned char* dx = dxbuf.p + offsets.first * esize;
          const bool in_place = offsets.second == SIZE_MAX;
          unsigned char* dz = dzbuf.p + (in_place ? offsets.first : offsets.second) * esize;
          if (in_place) std::memcpy(dz, dy.data(), bytes);
          ASSERT_EQ(bnorm_backward_ex(nullptr, &d, x.data(), y.data(), in_place ? dz : dy.data(),
                                      dx, dz, BNORM_ACT_RELU, nullptr, nullptr, mean.data(),
                                      invstd.data(), dgamma.data(), dbeta.data()),
                    BNORM_OK);
          EXPECT_EQ(0, std::memcmp(dx, dx_ref.data(), bytes));
          EXPECT_EQ(0, std::memcmp(dz, g.data(), bytes));
          EXPECT_EQ(Bytes(dgamma), Bytes(dgamma_ref));
          EXPECT_EQ(Bytes(dbeta), Bytes(dbeta_ref));
        }
      }
    }
  }
}

}  // namespace
}  // namespace bnorm_test
