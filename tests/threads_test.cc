// Determinism and concurrency: results are bitwise identical whatever the
// thread count, and concurrent calls on one context give the serial results.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

namespace bnorm_test {
namespace {

// Shapes that split into many reduction units and elementwise tasks.
std::vector<Shape> ThreadShapes() {
  return {Shape{3, 4, 70001, BNORM_LAYOUT_NCHW},  Shape{8, 64, 3136, BNORM_LAYOUT_NCHW},
          Shape{400, 24, 100, BNORM_LAYOUT_NHWC}, Shape{4, 1100, 50, BNORM_LAYOUT_NHWC},
          Shape{20000, 3, 7, BNORM_LAYOUT_NHWC},  Shape{9000, 33, 1, BNORM_LAYOUT_NCHW}};
}

// Every output of every entry point for one shape, as bytes.
struct Outputs {
  std::vector<float> y, save_mean, save_invstd, running_mean, running_var, y_infer, dx, dgamma,
      dbeta, dx_frozen;
  bool operator==(const Outputs& o) const {
    return Bytes(y) == Bytes(o.y) && Bytes(save_mean) == Bytes(o.save_mean) &&
           Bytes(save_invstd) == Bytes(o.save_invstd) &&
           Bytes(running_mean) == Bytes(o.running_mean) &&
           Bytes(running_var) == Bytes(o.running_var) && Bytes(y_infer) == Bytes(o.y_infer) &&
           Bytes(dx) == Bytes(o.dx) && Bytes(dgamma) == Bytes(o.dgamma) &&
           Bytes(dbeta) == Bytes(o.dbeta) && Bytes(dx_frozen) == Bytes(o.dx_frozen);
  }
};

struct Inputs {
  Shape s;
  std::vector<float> x, dy, gamma, beta;
};

// Generated once per shape (generation costs more than the calls).
const Inputs& InputsFor(const Shape& s) {
  static std::mutex mutex;
  static std::map<std::string, Inputs> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(s.Name());
  if (it == cache.end()) {
    const size_t C = static_cast<size_t>(s.c);
    it = cache
             .emplace(s.Name(),
                      Inputs{s, NormalData(s, 21, 100.0, 3.0), NormalData(s, 22, 0.0, 1.0, 0.01),
                             UniformVector(C, 23, 0.5f, 1.5f), UniformVector(C, 24, -1.0f, 1.0f)})
             .first;
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
  o.y.resize(x.size());
  o.y_infer.resize(x.size());
  o.dx.resize(x.size());
  o.dx_frozen.resize(x.size());
  o.save_mean.resize(C);
  o.save_invstd.resize(C);
  o.running_mean.assign(C, 0.5f);
  o.running_var.assign(C, 2.0f);
  o.dgamma.resize(C);
  o.dbeta.resize(C);
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
  std::vector<float> dg(C), db(C);
  EXPECT_EQ(
      bnorm_backward_frozen(ctx, &d, x.data(), dy.data(), o.dx_frozen.data(), gamma.data(),
                            o.running_mean.data(), o.save_invstd.data(), dg.data(), db.data()),
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
    EXPECT_EQ(bnorm_forward_training(ctx, &d, in.x.data(), y.data(), in.gamma.data(),
                                     in.beta.data(), 1e-5f, 0.1f, nullptr, nullptr, mean.data(),
                                     invstd.data()),
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
