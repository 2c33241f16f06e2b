// Allocation failure: every C++ allocation the library makes (context
// creation, the default context, scratch growth) is made to fail in turn, by
// replacing the global operator new of this process (the library's calls
// bind to it like any shared library's). Each entry point must then return
// BNORM_ERR_OUT_OF_MEMORY, write no output byte, and leave the context usable:
// the next call on it gives the same bits as a call that never failed.
// bnorm_stats_merge takes no context and must never allocate.
//
// oneTBB allocates its own internals with malloc, not operator new; those are
// outside this test (docs/reliability.md).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "test_support.h"

namespace {

// Allocations left before the one that fails; negative: none fails.
std::atomic<long> g_countdown{-1};
std::atomic<long> g_failures{0};

bool ShouldFail() {
  long left = g_countdown.load(std::memory_order_relaxed);
  while (left >= 0) {
    if (g_countdown.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) {
      if (left == 0) {
        g_failures.fetch_add(1, std::memory_order_relaxed);
        return true;
      }
      return false;
    }
  }
  return false;
}

void* Allocate(size_t bytes, size_t align) {
  if (ShouldFail()) return nullptr;
  if (bytes == 0) bytes = 1;
  if (align <= alignof(std::max_align_t)) return std::malloc(bytes);
  return std::aligned_alloc(align, (bytes + align - 1) / align * align);
}

void* AllocateOrThrow(size_t bytes, size_t align) {
  void* p = Allocate(bytes, align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

// The replaceable global allocation functions ([new.delete]). Every one of
// them allocates with malloc, so free is the matching release; GCC 12 at -O1
// (the sanitizer builds) still takes `new` for the builtin one once it inlines
// a delete into a caller, and warns.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(size_t n) { return AllocateOrThrow(n, 0); }
void* operator new[](size_t n) { return AllocateOrThrow(n, 0); }
void* operator new(size_t n, const std::nothrow_t&) noexcept { return Allocate(n, 0); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return Allocate(n, 0); }
void* operator new(size_t n, std::align_val_t a) {
  return AllocateOrThrow(n, static_cast<size_t>(a));
}
void* operator new[](size_t n, std::align_val_t a) {
  return AllocateOrThrow(n, static_cast<size_t>(a));
}
void* operator new(size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return Allocate(n, static_cast<size_t>(a));
}
void* operator new[](size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return Allocate(n, static_cast<size_t>(a));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  std::free(p);
}

namespace bnorm_test {
namespace {

// Arms the k-th allocation from now to fail, for one scope.
class FailAllocation {
 public:
  explicit FailAllocation(long k) { g_countdown.store(k); }
  ~FailAllocation() { g_countdown.store(-1); }
  FailAllocation(const FailAllocation&) = delete;
  FailAllocation& operator=(const FailAllocation&) = delete;
};

// Every buffer one call may write, as bytes, for "nothing changed" checks.
struct Buffers {
  std::vector<float> y, dx, dz, save_mean, save_invstd, running_mean, running_var, dgamma, dbeta;
  // Split statistics: bnorm_stats's mean/M2, bnorm_backward_reduce's sums.
  std::vector<double> stats_mean, stats_m2, sum_dy, sum_dy_xmu;
  std::vector<unsigned char> AllBytes() const {
    std::vector<unsigned char> all;
    for (const auto* v : {&y, &dx, &dz, &save_mean, &save_invstd, &running_mean, &running_var,
                          &dgamma, &dbeta}) {
      const auto b = Bytes(*v);
      all.insert(all.end(), b.begin(), b.end());
    }
    for (const auto* v : {&stats_mean, &stats_m2, &sum_dy, &sum_dy_xmu}) {
      const auto b = Bytes(*v);
      all.insert(all.end(), b.begin(), b.end());
    }
    return all;
  }
};

struct Call {
  std::string name;
  std::function<bnorm_status(const bnorm_context*, Buffers&)> run;
};

// One call of each entry point that takes a context, on a shape with
// reduction scratch (several units), both layouts, f32 and bf16.
std::vector<Call> Calls(const Shape& s, bnorm_dtype dtype) {
  const size_t count = static_cast<size_t>(s.Elements());
  const size_t C = static_cast<size_t>(s.c);
  // Inputs shared by the calls (static storage per shape: built once).
  struct In {
    std::vector<float> x, dy, z, gamma, beta, mean, var, invstd;
    // The whole batch's statistics and sums given to the apply functions.
    std::vector<double> batch_mean, batch_m2, sum_dy, sum_dy_xmu;
  };
  auto in = std::make_shared<In>();
  in->x = NormalData(s, 1, 50.0, 2.0);
  in->dy = NormalData(s, 2, 0.0, 1.0);
  in->z = NormalData(s, 3, 0.0, 1.0);
  in->gamma = UniformVector(C, 4, 0.5f, 1.5f);
  in->beta = UniformVector(C, 5, -1.0f, 1.0f);
  in->mean = UniformVector(C, 6, 49.0f, 51.0f);
  in->var = UniformVector(C, 7, 3.0f, 5.0f);
  in->invstd = UniformVector(C, 8, 0.4f, 0.6f);
  // This tensor is one of two equal parts of the batch.
  const int64_t total = 2 * s.n * s.spatial;
  for (size_t ch = 0; ch < C; ++ch) {
    in->batch_mean.push_back(static_cast<double>(in->mean[ch]));
    in->batch_m2.push_back(static_cast<double>(in->var[ch]) * static_cast<double>(total));
    in->sum_dy.push_back(0.25 * static_cast<double>(in->beta[ch]) * static_cast<double>(total));
    in->sum_dy_xmu.push_back(0.5 * static_cast<double>(in->gamma[ch]) * static_cast<double>(total));
  }
  bnorm_tensor_desc desc = s.Desc();
  desc.dtype = dtype;
  (void)count;
  return {
      {"forward_training",
       [in, desc](const bnorm_context* ctx, Buffers& b) {
         return bnorm_forward_training(ctx, &desc, in->x.data(), b.y.data(), in->gamma.data(),
                                       in->beta.data(), 1e-5f, 0.1f, b.running_mean.data(),
                                       b.running_var.data(), b.save_mean.data(),
                                       b.save_invstd.data());
       }},
      {"forward_training_ex",
       [in, desc](const bnorm_context* ctx, Buffers& b) {
         return bnorm_forward_training_ex(ctx, &desc, in->x.data(), in->z.data(), b.y.data(),
                                          BNORM_ACT_RELU, in->gamma.data(), in->beta.data(), 1e-5f,
                                          0.1f, b.running_mean.data(), b.running_var.data(),
                                          b.save_mean.data(), b.save_invstd.data());
       }},
      {"forward_inference",
       [in, desc](const bnorm_context* ctx, Buffers& b) {
         return bnorm_forward_inference_ex(ctx, &desc, in->x.data(), in->z.data(), b.y.data(),
                                           BNORM_ACT_RELU, in->gamma.data(), in->beta.data(),
                                           in->mean.data(), in->var.data(), 1e-5f);
       }},
      {"backward",
       [in, desc](const bnorm_context* ctx, Buffers& b) {
         return bnorm_backward(ctx, &desc, in->x.data(), in->dy.data(), b.dx.data(),
                               in->gamma.data(), in->mean.data(), in->invstd.data(),
                               b.dgamma.data(), b.dbeta.data());
       }},
      {"backward_frozen",
       [in, desc](const bnorm_context* ctx, Buffers& b) {
         return bnorm_backward_frozen(ctx, &desc, in->x.data(), in->dy.data(), b.dx.data(),
                                      in->gamma.data(), in->mean.data(), in->invstd.data(),
                                      b.dgamma.data(), b.dbeta.data());
       }},
      {"backward_ex",
       [in, desc](const bnorm_context* ctx, Buffers& b) {
         return bnorm_backward_ex(ctx, &desc, in->x.data(), in->z.data(), in->dy.data(),
                                  b.dx.data(), b.dz.data(), BNORM_ACT_RELU, in->gamma.data(),
                                  nullptr, in->mean.data(), in->invstd.data(), b.dgamma.data(),
                                  b.dbeta.data());
       }},
      {"stats",
       [in, desc](const bnorm_context* ctx, Buffers& b) {
         return bnorm_stats(ctx, &desc, in->x.data(), b.stats_mean.data(), b.stats_m2.data());
       }},
      {"forward_apply",
       [in, desc, total](const bnorm_context* ctx, Buffers& b) {
         return bnorm_forward_apply(ctx, &desc, in->x.data(), b.y.data(), in->gamma.data(),
                                    in->beta.data(), total, in->batch_mean.data(),
                                    in->batch_m2.data(), 1e-5f, 0.1f, b.running_mean.data(),
                                    b.running_var.data(), b.save_mean.data(),
                                    b.save_invstd.data());
       }},
      {"backward_reduce",
       [in, desc](const bnorm_context* ctx, Buffers& b) {
         return bnorm_backward_reduce(ctx, &desc, in->x.data(), in->dy.data(), in->mean.data(),
                                      b.sum_dy.data(), b.sum_dy_xmu.data());
       }},
      {"backward_apply",
       [in, desc, total](const bnorm_context* ctx, Buffers& b) {
         return bnorm_backward_apply(ctx, &desc, in->x.data(), in->dy.data(), b.dx.data(),
                                     in->gamma.data(), in->mean.data(), in->invstd.data(), total,
                                     in->sum_dy.data(), in->sum_dy_xmu.data(), b.dgamma.data(),
                                     b.dbeta.data());
       }},
  };
}

// Buffers filled with a pattern no call writes (so a partial write shows).
Buffers Fresh(const Shape& s) {
  const size_t count = static_cast<size_t>(s.Elements());
  const size_t C = static_cast<size_t>(s.c);
  Buffers b;
  for (auto* v : {&b.y, &b.dx, &b.dz}) v->assign(count, -7.25f);
  for (auto* v : {&b.save_mean, &b.save_invstd, &b.running_mean, &b.running_var, &b.dgamma,
                  &b.dbeta}) {
    v->assign(C, 0.5f);
  }
  for (auto* v : {&b.stats_mean, &b.stats_m2, &b.sum_dy, &b.sum_dy_xmu}) v->assign(C, -7.25);
  return b;
}

std::vector<Shape> FailureShapes() {
  return {Shape{4, 6, 5003, BNORM_LAYOUT_NCHW}, Shape{300, 40, 7, BNORM_LAYOUT_NHWC}};
}

TEST(AllocationFailure, ContextCreation) {
  long failed = 0;
  for (long k = 0;; ++k) {
    ASSERT_LT(k, 1000) << "context creation never succeeded";
    bnorm_context* ctx = reinterpret_cast<bnorm_context*>(0x1);  // must stay untouched
    bnorm_status status;
    {
      FailAllocation arm(k);
      status = bnorm_context_create(3, &ctx);
    }
    if (status == BNORM_ERR_OUT_OF_MEMORY) {
      EXPECT_EQ(ctx, reinterpret_cast<bnorm_context*>(0x1));
      ++failed;
      continue;
    }
    ASSERT_EQ(status, BNORM_OK) << "k = " << k;
    EXPECT_EQ(bnorm_context_num_threads(ctx), 3);
    bnorm_context_destroy(ctx);
    std::printf("context creation: %ld allocations, each failed in turn\n", failed);
    break;
  }
  EXPECT_GE(failed, 1) << "context creation allocates, so its first allocation must fail";
}

// For every entry point, shape and dtype: make the k-th allocation of the
// call fail, for k = 0, 1, ... until the call no longer allocates. A context
// is made cold for each k (scratch not yet grown), and a failed call is
// followed on the same context by one that must match the reference bits.
void CheckEveryAllocationPoint(bool default_context) {
  for (const Shape& s : FailureShapes()) {
    for (const bnorm_dtype dtype : {BNORM_DTYPE_F32, BNORM_DTYPE_BF16}) {
      if (dtype != BNORM_DTYPE_F32 && default_context) continue;
      for (const Call& call : Calls(s, dtype)) {
        SCOPED_TRACE(s.Name() + " " + call.name + (dtype == BNORM_DTYPE_F32 ? " f32" : " bf16"));
        // 16-bit outputs use the first half of each buffer's bytes; the
        // comparison covers all of them anyway.
        Buffers expected = Fresh(s);
        {
          bnorm_context* ref = nullptr;
          ASSERT_EQ(bnorm_context_create(2, &ref), BNORM_OK);
          ASSERT_EQ(call.run(ref, expected), BNORM_OK);
          bnorm_context_destroy(ref);
        }
        long failures = 0;
        for (long k = 0;; ++k) {
          ASSERT_LT(k, 1000);
          bnorm_context* ctx = nullptr;
          if (!default_context) {
            ASSERT_EQ(bnorm_context_create(2, &ctx), BNORM_OK);
          }
          Buffers b = Fresh(s);
          const auto before = b.AllBytes();
          bnorm_status status;
          {
            FailAllocation arm(k);
            status = call.run(ctx, b);
          }
          if (status == BNORM_ERR_OUT_OF_MEMORY) {
            ++failures;
            EXPECT_EQ(b.AllBytes(), before) << "k = " << k << ": an output changed";
            // The context is still usable, and gives the same bits.
            ASSERT_EQ(call.run(ctx, b), BNORM_OK);
            EXPECT_EQ(b.AllBytes(), expected.AllBytes()) << "k = " << k;
            bnorm_context_destroy(ctx);
            continue;
          }
          ASSERT_EQ(status, BNORM_OK) << "k = " << k;
          EXPECT_EQ(b.AllBytes(), expected.AllBytes()) << "k = " << k;
          bnorm_context_destroy(ctx);
          break;
        }
        std::printf("%s %s %s: %ld allocations, each failed in turn\n", s.Name().c_str(),
                    call.name.c_str(), dtype == BNORM_DTYPE_F32 ? "f32" : "bf16", failures);
        // A fresh context has no scratch: its first call must allocate.
        if (!default_context) {
          EXPECT_GE(failures, 1);
        }
      }
    }
  }
}

TEST(AllocationFailure, ScratchGrowthOnAFreshContext) { CheckEveryAllocationPoint(false); }

// The default context is created on first use (here, or by the previous
// test in the same process): either way every failure must be clean.
TEST(AllocationFailure, DefaultContext) { CheckEveryAllocationPoint(true); }

// A warm context does not allocate: no call can fail.
TEST(AllocationFailure, WarmCallsDoNotAllocate) {
  for (const Shape& s : FailureShapes()) {
    bnorm_context* ctx = nullptr;
    ASSERT_EQ(bnorm_context_create(2, &ctx), BNORM_OK);
    for (const Call& call : Calls(s, BNORM_DTYPE_F32)) {
      Buffers b = Fresh(s);
      ASSERT_EQ(call.run(ctx, b), BNORM_OK);  // warm-up: scratch grows
      const long failures_before = g_failures.load();
      {
        FailAllocation arm(0);
        EXPECT_EQ(call.run(ctx, b), BNORM_OK) << call.name;
      }
      EXPECT_EQ(g_failures.load(), failures_before) << call.name << " allocated when warm";
    }
    bnorm_context_destroy(ctx);
  }
}

// bnorm_stats_merge takes no context and has no scratch: it never
// allocates, so no allocation failure can reach it. Every allocation is
// armed to fail (one at a time, each call) and none may be attempted; the
// results are those of an unarmed call. In place over partial 0 as well.
TEST(AllocationFailure, StatsMergeDoesNotAllocate) {
  const int64_t c = 40, k = 3;
  const std::vector<int64_t> counts = {1000, 0, 777};
  std::vector<double> means(static_cast<size_t>(k * c)), m2s(means.size());
  for (size_t i = 0; i < means.size(); ++i) {
    means[i] = 50.0 + 0.01 * static_cast<double>(i % 17);
    m2s[i] = 4.0 * static_cast<double>(counts[i / static_cast<size_t>(c)]) + 0.125 * static_cast<double>(i % 5);
  }
  std::vector<double> mean_ref(static_cast<size_t>(c)), m2_ref(mean_ref.size());
  int64_t count_ref = 0;
  ASSERT_EQ(bnorm_stats_merge(c, k, counts.data(), means.data(), m2s.data(), &count_ref,
                              mean_ref.data(), m2_ref.data()),
            BNORM_OK);
  for (const bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place" : "separate outputs");
    std::vector<double> means_io = means, m2s_io = m2s;
    std::vector<double> mean_out(static_cast<size_t>(c), -7.25), m2_out(mean_out.size(), -7.25);
    double* mo = in_place ? means_io.data() : mean_out.data();
    double* m2o = in_place ? m2s_io.data() : m2_out.data();
    int64_t count = -1;
    const long failures_before = g_failures.load();
    bnorm_status status;
    {
      FailAllocation arm(0);
      status = bnorm_stats_merge(c, k, counts.data(), means_io.data(), m2s_io.data(), &count, mo,
                                 m2o);
    }
    EXPECT_EQ(g_failures.load(), failures_before) << "bnorm_stats_merge allocated";
    ASSERT_EQ(status, BNORM_OK);
    EXPECT_EQ(count, count_ref);
    EXPECT_EQ(Bytes(std::vector<double>(mo, mo + c)), Bytes(mean_ref));
    EXPECT_EQ(Bytes(std::vector<double>(m2o, m2o + c)), Bytes(m2_ref));
  }
}

}  // namespace
}  // namespace bnorm_test
