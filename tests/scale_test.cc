// Scale: 64-bit indexing. Every entry-point family on tensors of more than
// 2^31 elements (f32 byte offsets past 2^33), in both layouts, checked
// against the long-double reference at every channel and every element.
//
// ctest label "scale" (not "unit"), and skipped unless BNORM_SCALE_TESTS=1:
// it needs about 9.2 GB of free memory and a few minutes. To run it:
//   BNORM_SCALE_TESTS=1 build/tests/scale_test
// or through ctest:
//   cd build && BNORM_SCALE_TESTS=1 ctest -L scale --output-on-failure
// (--gtest_filter picks one shape, e.g. --gtest_filter='*NchwFewChannels*').
//
// The shapes, each with n*c*spatial of about 2^31 + 2^27 (2.28e9):
//  - NCHW, 3 channels of 7.6e8 values: the two-phase reduction, offsets of
//    whole channel slices past 2^31;
//  - NCHW, 65537 channels of 34 KB per image: the channel-fused strategy,
//    (i*c + ch)*spatial past 2^31;
//  - NHWC, 3 channels: rows past 2^31 / 3, the replicated-period path;
//  - NHWC, 1031 channels: more than one channel block;
//  - one channel (C = 1) of 2.28e9 values: spatial and the per-channel
//    count themselves past 2^31.
// For each, in f32 with y in place over x (one 9.1 GB tensor):
// bnorm_forward_training (batch statistics and running statistics of every
// channel, every y) and bnorm_forward_inference (every y); then in bf16 (two
// 4.6 GB tensors): bnorm_forward_training out of place (statistics, every y),
// bnorm_backward_frozen without dx (dgamma, dbeta) and bnorm_backward with dx
// in place over dy (dgamma, dbeta, every dx). A sentinel after each tensor
// checks that nothing is written past its end.
//
// The data are pure functions of (channel, index within the channel), so
// that the reference can regenerate x after y has overwritten it. The
// per-channel sums of the reference are long double (one pass, shifted by
// the channel's nominal mean); the per-element reference is evaluated in
// double from those long-double constants, in the order of test_support.h
// ((x - mean) * scale + beta), so that its error (~1e-16 of the terms the
// tolerances scale with) is far below the tolerances, which are
// forward_test.cc's and backward_test.cc's, plus half a bf16 ulp for bf16
// outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

namespace bnorm_test {
namespace {

bool Enabled() {
  const char* v = std::getenv("BNORM_SCALE_TESTS");
  return v != nullptr && std::string(v) == "1";
}

int64_t MemAvailableBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (meminfo >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return -1;
}

// ---- Data: pure functions of (channel, index j = i*spatial + s) ----

uint64_t Mix(uint64_t z) {  // a bijective 64-bit mixer
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [-1, 1), different for every (seed, ch, j) with j < 2^36.
double Unit(uint64_t seed, int64_t ch, int64_t j) {
  const uint64_t key = (static_cast<uint64_t>(ch) << 36) + static_cast<uint64_t>(j);
  return static_cast<double>(Mix(key ^ seed) >> 11) * 0x1p-52 - 1.0;
}

constexpr uint64_t kSeedX = 0x5CA1E0000001ull, kSeedDy = 0x5CA1E0000002ull;

double NominalMean(int64_t ch) { return 1.5 + 0.25 * static_cast<double>(ch % 13); }
float XValue(int64_t ch, int64_t j) {
  return static_cast<float>(NominalMean(ch) +
                            (1.0 + 0.5 * static_cast<double>(ch % 3)) * Unit(kSeedX, ch, j));
}
float DyValue(int64_t ch, int64_t j) {
  return static_cast<float>(0.05 * static_cast<double>(ch % 7) + Unit(kSeedDy, ch, j));
}
float Gamma(int64_t ch) {
  const float g = 0.5f + 0.125f * static_cast<float>(ch % 11);
  return ch % 4 == 3 ? -g : g;
}
float Beta(int64_t ch) { return -0.5f + 0.0625f * static_cast<float>(ch % 17); }

// ---- Parallel passes in memory order ----

int Threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

// fn(e, ch, j) for elements [begin, end) of s in memory order.
template <typename Fn>
void ForRange(const Shape& s, int64_t begin, int64_t end, const Fn& fn) {
  if (s.layout == BNORM_LAYOUT_NCHW) {
    const int64_t q = begin / s.spatial;
    int64_t sp = begin % s.spatial, ch = q % s.c, i = q / s.c;
    for (int64_t e = begin; e < end;) {
      const int64_t len = std::min(s.spatial - sp, end - e);
      const int64_t j0 = i * s.spatial + sp;
      for (int64_t k = 0; k < len; ++k) fn(e + k, ch, j0 + k);
      e += len;
      sp = 0;
      if (++ch == s.c) {
        ch = 0;
        ++i;
      }
    }
  } else {
    int64_t row = begin / s.c, ch = begin % s.c;
    for (int64_t e = begin; e < end; ++e) {
      fn(e, ch, row);
      if (++ch == s.c) {
        ch = 0;
        ++row;
      }
    }
  }
}

// fn(thread, e, ch, j) over the whole tensor, one contiguous piece per thread.
template <typename Fn>
void Parallel(const Shape& s, const Fn& fn) {
  const int threads = Threads();
  const int64_t total = s.Elements();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    const int64_t begin = total / threads * t + std::min<int64_t>(t, total % threads);
    const int64_t end = begin + total / threads + (t < total % threads ? 1 : 0);
    pool.emplace_back([&s, &fn, t, begin, end] {
      ForRange(s, begin, end, [&](int64_t e, int64_t ch, int64_t j) { fn(t, e, ch, j); });
    });
  }
  for (std::thread& th : pool) th.join();
}

// Per-channel long-double sums, one set per thread, merged.
class ChannelSums {
 public:
  ChannelSums(int64_t c, int sums)
      : c_(c),
        sums_(sums),
        data_(static_cast<size_t>(Threads()) * static_cast<size_t>(c * sums), 0.0L) {}
  LD& At(int thread, int64_t ch, int k) {
    return data_[(static_cast<size_t>(thread) * static_cast<size_t>(c_) + static_cast<size_t>(ch)) *
                     static_cast<size_t>(sums_) +
                 static_cast<size_t>(k)];
  }
  LD Total(int64_t ch, int k) {
    LD sum = 0;
    for (int t = 0; t < Threads(); ++t) sum += At(t, ch, k);
    return sum;
  }

 private:
  int64_t c_;
  int sums_;
  std::vector<LD> data_;
};

// Mean and biased variance of every channel of the values load(e, ch, j),
// shifted by the channel's nominal mean.
template <typename Load>
std::vector<RefStats> ScanStats(const Shape& s, const Load& load) {
  ChannelSums sums(s.c, 2);
  Parallel(s, [&](int t, int64_t e, int64_t ch, int64_t j) {
    const LD d = static_cast<LD>(load(e, ch, j)) - static_cast<LD>(NominalMean(ch));
    sums.At(t, ch, 0) += d;
    sums.At(t, ch, 1) += d * d;
  });
  const LD m = static_cast<LD>(s.Values());
  std::vector<RefStats> out(static_cast<size_t>(s.c));
  for (int64_t ch = 0; ch < s.c; ++ch) {
    const LD d = sums.Total(ch, 0) / m;
    out[static_cast<size_t>(ch)] =
        RefStats{static_cast<LD>(NominalMean(ch)) + d, sums.Total(ch, 1) / m - d * d};
  }
  return out;
}

// Mismatches of a pass: counted, the first few described.
class Mismatches {
 public:
  void Add(const char* what, int64_t e, double got, double want, double tol) {
    if (count_.fetch_add(1) >= 8) return;
    std::ostringstream o;
    o.precision(9);
    o << what << "[" << e << "] = " << got << ", reference " << want << ", tolerance " << tol;
    std::lock_guard<std::mutex> lock(mutex_);
    first_.push_back(o.str());
  }
  // Reports and resets; true if there was none.
  bool Report(const std::string& pass) {
    const int64_t n = count_.exchange(0);
    for (const std::string& m : first_) ADD_FAILURE() << pass << ": " << m;
    first_.clear();
    EXPECT_EQ(n, 0) << pass << ": elements out of tolerance";
    return n == 0;
  }

 private:
  std::atomic<int64_t> count_{0};
  std::mutex mutex_;
  std::vector<std::string> first_;
};

// A tensor with a sentinel after its end.
template <typename T>
class Tensor {
 public:
  static constexpr int64_t kGuard = 64;
  explicit Tensor(int64_t elements)
      : n_(elements), data_(new T[static_cast<size_t>(elements + kGuard)]) {
    for (int64_t k = 0; k < kGuard; ++k) data_[static_cast<size_t>(n_ + k)] = Sentinel(k);
  }
  T* data() { return data_.get(); }
  T& operator[](int64_t e) { return data_[static_cast<size_t>(e)]; }
  bool GuardIntact() const {
    for (int64_t k = 0; k < kGuard; ++k)
      if (std::memcmp(&data_[static_cast<size_t>(n_ + k)], &Sentinel(k), sizeof(T)) != 0)
        return false;
    return true;
  }

 private:
  static const T& Sentinel(int64_t k) {
    static const std::vector<T> values = [] {
      std::vector<T> v(kGuard);
      for (int64_t i = 0; i < kGuard; ++i) v[static_cast<size_t>(i)] = static_cast<T>(0x55 + i);
      return v;
    }();
    return values[static_cast<size_t>(k)];
  }
  int64_t n_;
  std::unique_ptr<T[]> data_;
};

class Timer {
 public:
  explicit Timer(std::string what)
      : what_(std::move(what)), start_(std::chrono::steady_clock::now()) {}
  ~Timer() {
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::printf("  %-44s %7.2f s\n", what_.c_str(), s);
    std::fflush(stdout);
  }

 private:
  std::string what_;
  std::chrono::steady_clock::time_point start_;
};

constexpr double kMeanTol = 1e-6, kVarTol = 1e-5, kSumTol = 1e-5, kDxTol = 2e-5;
constexpr float kEps = 1e-5f, kMomentum = 0.1f;

// Statistics of every channel against the reference (forward_test.cc's bounds).
void CheckStats(const Shape& s, const std::vector<RefStats>& ref, const std::vector<float>& sm,
                const std::vector<float>& si, const std::vector<float>* rm,
                const std::vector<float>* rv) {
  const LD m = static_cast<LD>(s.Values());
  int bad = 0;
  for (int64_t ch = 0; ch < s.c && bad < 8; ++ch) {
    const size_t c = static_cast<size_t>(ch);
    const double sd = static_cast<double>(std::sqrt(ref[c].var));
    const double mean = static_cast<double>(ref[c].mean);
    const double invstd = static_cast<double>(RefInvstd(ref[c].var, kEps));
    const auto near = [&](const char* what, float got, double want, double tol) {
      if (std::fabs(got - want) <= tol) return;
      ++bad;
      ADD_FAILURE() << what << "[" << ch << "] = " << got << ", reference " << want
                    << ", tolerance " << tol;
    };
    near("save_mean", sm[c], mean, kMeanTol * (std::fabs(mean) + sd));
    near("save_invstd", si[c], invstd, kVarTol * invstd);
    if (rm != nullptr) {  // from 0 and 1
      const double erm = static_cast<double>(static_cast<LD>(kMomentum) * ref[c].mean);
      const double erv = static_cast<double>((1 - static_cast<LD>(kMomentum)) +
                                             static_cast<LD>(kMomentum) * ref[c].var * m / (m - 1));
      near("running_mean", (*rm)[c], erm, kMeanTol * (std::fabs(erm) + sd));
      near("running_var", (*rv)[c], erv, kVarTol * erv);
    }
  }
}

// y = (x - mean) * scale + beta per channel, in double, in the order of
// test_support.h's ReferenceNormalize: the error is relative to |y - beta|
// and |y| as the tolerances are (x * scale + shift would leave a residue of
// the size of the terms where y is 0).
struct Affine {
  std::vector<double> mean, scale, beta, gamma;
  double Y(double x, size_t c) const { return (x - mean[c]) * scale[c] + beta[c]; }
};

Affine AffineOf(const Shape& s, const std::vector<LD>& mean, const std::vector<LD>& invstd) {
  Affine a;
  for (int64_t ch = 0; ch < s.c; ++ch) {
    const size_t c = static_cast<size_t>(ch);
    a.mean.push_back(static_cast<double>(mean[c]));
    a.scale.push_back(static_cast<double>(invstd[c] * Gamma(ch)));
    a.beta.push_back(Beta(ch));
    a.gamma.push_back(Gamma(ch));
  }
  return a;
}

void RunShape(const Shape& s) {
  if (!Enabled()) {
    GTEST_SKIP() << "set BNORM_SCALE_TESTS=1 to run (needs ~9.2 GB of memory and minutes)";
  }
  const int64_t E = s.Elements();
  ASSERT_GT(E, int64_t{1} << 31);
  const int64_t need = E * 4 + (int64_t{256} << 20);
  const int64_t avail = MemAvailableBytes();
  if (avail >= 0 && avail < need) {
    GTEST_SKIP() << "needs " << need / (1 << 20) << " MiB, MemAvailable is " << avail / (1 << 20)
                 << " MiB";
  }
  std::printf("%s: %lld elements, %d threads, target %s\n", s.Name().c_str(),
              static_cast<long long>(E), Threads(), bnorm_active_target());
  const size_t C = static_cast<size_t>(s.c);
  std::vector<float> gamma(C), beta(C);
  for (int64_t ch = 0; ch < s.c; ++ch) {
    gamma[static_cast<size_t>(ch)] = Gamma(ch);
    beta[static_cast<size_t>(ch)] = Beta(ch);
  }
  Mismatches bad;

  // ---- f32, y in place over x ----
  {
    Tensor<float> x(E);
    const auto fill = [&] {
      Timer t("f32: generate x");
      Parallel(s, [&](int, int64_t e, int64_t ch, int64_t j) { x[e] = XValue(ch, j); });
    };
    fill();
    std::vector<RefStats> ref;
    {
      Timer t("f32: reference statistics (long double)");
      ref = ScanStats(s, [&](int64_t e, int64_t, int64_t) { return x[e]; });
    }
    std::vector<float> rm(C, 0.0f), rv(C, 1.0f), sm(C, -7.0f), si(C, -7.0f);
    const bnorm_tensor_desc d = s.Desc();
    {
      Timer t("f32: bnorm_forward_training (in place)");
      ASSERT_EQ(bnorm_forward_training(nullptr, &d, x.data(), x.data(), gamma.data(), beta.data(),
                                       kEps, kMomentum, rm.data(), rv.data(), sm.data(), si.data()),
                BNORM_OK);
    }
    EXPECT_TRUE(x.GuardIntact()) << "written past the end of y";
    CheckStats(s, ref, sm, si, &rm, &rv);
    std::vector<LD> mean(C), invstd(C);
    for (size_t c = 0; c < C; ++c) {
      mean[c] = ref[c].mean;
      invstd[c] = RefInvstd(ref[c].var, kEps);
    }
    {
      Timer t("f32: check every y");
      const Affine a = AffineOf(s, mean, invstd);
      Parallel(s, [&](int, int64_t e, int64_t ch, int64_t j) {
        const size_t c = static_cast<size_t>(ch);
        const double want = a.Y(XValue(ch, j), c);
        const double tol =
            4e-6 * (std::fabs(want - a.beta[c]) + std::fabs(a.gamma[c])) + 2.5e-7 * std::fabs(want);
        if (!(std::fabs(x[e] - want) <= tol)) bad.Add("training y", e, x[e], want, tol);
      });
    }
    bad.Report(s.Name() + " f32 training");

    fill();
    std::vector<float> imean(C), ivar(C);
    for (int64_t ch = 0; ch < s.c; ++ch) {
      imean[static_cast<size_t>(ch)] = static_cast<float>(NominalMean(ch) + 0.1);
      ivar[static_cast<size_t>(ch)] = 0.5f + 0.25f * static_cast<float>(ch % 5);
    }
    {
      Timer t("f32: bnorm_forward_inference (in place)");
      ASSERT_EQ(bnorm_forward_inference(nullptr, &d, x.data(), x.data(), gamma.data(), beta.data(),
                                        imean.data(), ivar.data(), kEps),
                BNORM_OK);
    }
    EXPECT_TRUE(x.GuardIntact()) << "written past the end of y";
    {
      Timer t("f32: check every y");
      std::vector<LD> lmean(C), linv(C);
      for (size_t c = 0; c < C; ++c) {
        lmean[c] = imean[c];
        linv[c] = 1.0L / std::sqrt(static_cast<LD>(ivar[c]) + static_cast<LD>(kEps));
      }
      const Affine a = AffineOf(s, lmean, linv);
      Parallel(s, [&](int, int64_t e, int64_t ch, int64_t j) {
        const size_t c = static_cast<size_t>(ch);
        const double want = a.Y(XValue(ch, j), c);
        const double tol = 1.8e-7 * std::fabs(want - a.beta[c]) + 6e-8 * std::fabs(want) + 1e-30;
        if (!(std::fabs(x[e] - want) <= tol)) bad.Add("inference y", e, x[e], want, tol);
      });
    }
    bad.Report(s.Name() + " f32 inference");
  }

  // ---- bf16: training out of place, then the backward passes ----
  {
    Tensor<uint16_t> x(E), b(E);  // b: y, then dy and dx
    const auto xw = [&](int64_t ch, int64_t j) { return RefBf16ToFloat(RefFloatToBf16(XValue(ch, j))); };
    {
      Timer t("bf16: generate x");
      Parallel(s,
               [&](int, int64_t e, int64_t ch, int64_t j) { x[e] = RefFloatToBf16(XValue(ch, j)); });
    }
    std::vector<RefStats> ref;
    {
      Timer t("bf16: reference statistics (long double)");
      ref = ScanStats(s, [&](int64_t e, int64_t, int64_t) { return RefBf16ToFloat(x[e]); });
    }
    bnorm_tensor_desc d = s.Desc();
    d.dtype = BNORM_DTYPE_BF16;
    std::vector<float> sm(C, -7.0f), si(C, -7.0f);
    {
      Timer t("bf16: bnorm_forward_training (out of place)");
      ASSERT_EQ(bnorm_forward_training(nullptr, &d, x.data(), b.data(), gamma.data(), beta.data(),
                                       kEps, kMomentum, nullptr, nullptr, sm.data(), si.data()),
                BNORM_OK);
    }
    EXPECT_TRUE(b.GuardIntact()) << "written past the end of y";
    CheckStats(s, ref, sm, si, nullptr, nullptr);
    {
      Timer t("bf16: check every y");
      std::vector<LD> mean(C), invstd(C);
      for (size_t c = 0; c < C; ++c) {
        mean[c] = ref[c].mean;
        invstd[c] = RefInvstd(ref[c].var, kEps);
      }
      const Affine a = AffineOf(s, mean, invstd);
      Parallel(s, [&](int, int64_t e, int64_t ch, int64_t j) {
        const size_t c = static_cast<size_t>(ch);
        const double want = a.Y(xw(ch, j), c);
        double tol =
            4e-6 * (std::fabs(want - a.beta[c]) + std::fabs(a.gamma[c])) + 2.5e-7 * std::fabs(want);
        tol += 0x1p-8 * (std::fabs(want) + tol);  // one rounding to bf16
        const double got = RefBf16ToFloat(b[e]);
        if (!(std::fabs(got - want) <= tol)) bad.Add("bf16 training y", e, got, want, tol);
      });
    }
    bad.Report(s.Name() + " bf16 training");

    {
      Timer t("bf16: generate dy");
      Parallel(s,
               [&](int, int64_t e, int64_t ch, int64_t j) { b[e] = RefFloatToBf16(DyValue(ch, j)); });
    }
    const auto dyw = [&](int64_t ch, int64_t j) {
      return RefBf16ToFloat(RefFloatToBf16(DyValue(ch, j)));
    };
    // sum dy, sum |dy|, sum dy (x - mean), sum |dy (x - mean)| with the
    // library's save_mean, as bnorm_backward uses it.
    ChannelSums sums(s.c, 4);
    {
      Timer t("bf16: reference gradient sums (long double)");
      Parallel(s, [&](int th, int64_t e, int64_t ch, int64_t) {
        const LD dy = RefBf16ToFloat(b[e]);
        const LD xmu = static_cast<LD>(RefBf16ToFloat(x[e])) - sm[static_cast<size_t>(ch)];
        sums.At(th, ch, 0) += dy;
        sums.At(th, ch, 1) += std::fabs(dy);
        sums.At(th, ch, 2) += dy * xmu;
        sums.At(th, ch, 3) += std::fabs(dy * xmu);
      });
    }
    std::vector<LD> sdy(C), sabs(C), sdyxmu(C), sabsxmu(C);
    for (int64_t ch = 0; ch < s.c; ++ch) {
      const size_t c = static_cast<size_t>(ch);
      sdy[c] = sums.Total(ch, 0);
      sabs[c] = sums.Total(ch, 1);
      sdyxmu[c] = sums.Total(ch, 2);
      sabsxmu[c] = sums.Total(ch, 3);
    }
    const auto check_sums = [&](const char* what, const std::vector<float>& dg,
                                const std::vector<float>& db) {
      int failures = 0;
      for (size_t c = 0; c < C && failures < 8; ++c) {
        const double want_db = static_cast<double>(sdy[c]);
        const double tol_db = kSumTol * static_cast<double>(sabs[c]);
        const double want_dg = static_cast<double>(sdyxmu[c] * si[c]);
        const double tol_dg = kSumTol * static_cast<double>(sabsxmu[c] * si[c]);
        if (!(std::fabs(db[c] - want_db) <= tol_db)) {
          ++failures;
          ADD_FAILURE() << what << " dbeta[" << c << "] = " << db[c] << ", reference " << want_db;
        }
        if (!(std::fabs(dg[c] - want_dg) <= tol_dg)) {
          ++failures;
          ADD_FAILURE() << what << " dgamma[" << c << "] = " << dg[c] << ", reference " << want_dg;
        }
      }
    };
    {
      std::vector<float> dg(C, -7.0f), db(C, -7.0f);
      {
        Timer t("bf16: bnorm_backward_frozen (no dx)");
        ASSERT_EQ(bnorm_backward_frozen(nullptr, &d, x.data(), b.data(), nullptr, gamma.data(),
                                        sm.data(), si.data(), dg.data(), db.data()),
                  BNORM_OK);
      }
      check_sums("backward_frozen", dg, db);
    }
    std::vector<float> dg(C, -7.0f), db(C, -7.0f);
    {
      Timer t("bf16: bnorm_backward (dx in place over dy)");
      ASSERT_EQ(bnorm_backward(nullptr, &d, x.data(), b.data(), b.data(), gamma.data(), sm.data(),
                               si.data(), dg.data(), db.data()),
                BNORM_OK);
    }
    EXPECT_TRUE(b.GuardIntact()) << "written past the end of dx";
    check_sums("backward", dg, db);
    {
      Timer t("bf16: check every dx");
      // dx = a (dy - sdy/m) - a is^2 sdyxmu/m (x - mean), a = gamma is; the
      // bound of its terms as in test_support.h's ReferenceBackward.
      const LD m = static_cast<LD>(s.Values());
      std::vector<double> a(C), mdy(C), k(C), scale1(C), scale2(C);
      for (int64_t ch = 0; ch < s.c; ++ch) {
        const size_t c = static_cast<size_t>(ch);
        const LD is = si[c];
        const LD ac = static_cast<LD>(Gamma(ch)) * is;
        a[c] = static_cast<double>(ac);
        mdy[c] = static_cast<double>(sdy[c] / m);
        k[c] = static_cast<double>(ac * is * is * sdyxmu[c] / m);
        scale1[c] = static_cast<double>(sabs[c] / m);
        scale2[c] =
            static_cast<double>(std::fabs(ac) * is * is * (std::fabs(sdyxmu[c]) + sabsxmu[c]) / m);
      }
      Parallel(s, [&](int, int64_t e, int64_t ch, int64_t j) {
        const size_t c = static_cast<size_t>(ch);
        const double dy = dyw(ch, j);
        const double xmu = static_cast<double>(xw(ch, j)) - static_cast<double>(sm[c]);
        const double want = a[c] * (dy - mdy[c]) - k[c] * xmu;
        const double scale =
            std::fabs(a[c]) * (std::fabs(dy - mdy[c]) + scale1[c]) + std::fabs(xmu) * scale2[c];
        double tol = kDxTol * scale + 1e-30;
        tol += 0x1p-8 * (std::fabs(want) + tol);
        const double got = RefBf16ToFloat(b[e]);
        if (!(std::fabs(got - want) <= tol)) bad.Add("dx", e, got, want, tol);
      });
    }
    bad.Report(s.Name() + " bf16 backward");
  }
}

// n*c*spatial ~ 2^31 + 2^27, spatial odd.
TEST(Scale, NchwFewChannels) { RunShape(Shape{2, 3, 380283563, BNORM_LAYOUT_NCHW}); }
TEST(Scale, NchwManyChannels) { RunShape(Shape{4, 65537, 8703, BNORM_LAYOUT_NCHW}); }
TEST(Scale, NhwcFewChannels) { RunShape(Shape{2, 3, 380283563, BNORM_LAYOUT_NHWC}); }
TEST(Scale, NhwcManyChannels) { RunShape(Shape{3, 1031, 737687, BNORM_LAYOUT_NHWC}); }
TEST(Scale, OneChannel) { RunShape(Shape{1, 1, 2281701379, BNORM_LAYOUT_NCHW}); }

}  // namespace
}  // namespace bnorm_test
