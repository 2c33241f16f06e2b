// The context's scratch pool (src/context.h): warm calls reuse their buffer,
// and what stays idle between calls is bounded in count and in bytes.
#include <gtest/gtest.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "context.h"

namespace bnorm {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

using Leases = std::vector<std::unique_ptr<ScratchPool::Lease>>;

// Leases `count` buffers of `bytes` at once (all held until the vector goes).
Leases Hold(ScratchPool& pool, size_t count, size_t bytes) {
  Leases leases;
  for (size_t i = 0; i < count; ++i) {
    leases.push_back(std::make_unique<ScratchPool::Lease>());
    EXPECT_TRUE(pool.Acquire(bytes, leases.back().get()));
  }
  return leases;
}

TEST(ScratchPool, OneCallerReusesItsBufferWhateverItsSize) {
  ScratchPool pool;
  const size_t huge = ScratchPool::kMaxIdleBytes + 16 * kMiB;
  void* first = nullptr;
  {
    ScratchPool::Lease lease;
    ASSERT_TRUE(pool.Acquire(huge, &lease));
    first = lease.data();
  }
  EXPECT_EQ(pool.IdleBuffers(), 1u);
  EXPECT_EQ(pool.IdleBytes(), huge);
  ScratchPool::Lease again;
  ASSERT_TRUE(pool.Acquire(huge - 100, &again));
  EXPECT_EQ(again.data(), first);  // no allocation in the warm call
  EXPECT_EQ(pool.IdleBuffers(), 0u);
}

TEST(ScratchPool, ConcurrentLargeBuffersLeaveAtMostTheByteBound) {
  ScratchPool pool;
  const size_t each = 20 * kMiB;
  Hold(pool, 10, each);  // ten callers at once, then all done
  // One of them, and as many others as the byte bound holds.
  const size_t kept = 1 + ScratchPool::kMaxIdleBytes / each;
  EXPECT_LE(pool.IdleBytes(), ScratchPool::kMaxIdleBytes + each);
  EXPECT_EQ(pool.IdleBuffers(), kept);
  // The kept buffers serve as many callers again without allocating.
  Leases again = Hold(pool, kept, each);
  EXPECT_EQ(pool.IdleBuffers(), 0u);
}

TEST(ScratchPool, ManySmallBuffersLeaveAtMostTheCountBound) {
  ScratchPool pool;
  Hold(pool, 3 * ScratchPool::kMaxIdleBuffers, 4096);
  EXPECT_EQ(pool.IdleBuffers(), ScratchPool::kMaxIdleBuffers);
  EXPECT_EQ(pool.IdleBytes(), ScratchPool::kMaxIdleBuffers * 4096);
}

TEST(ScratchPool, SmallBuffersStayBesideALargeOne) {
  ScratchPool pool;
  const size_t huge = ScratchPool::kMaxIdleBytes + kMiB;
  void* large = nullptr;
  {
    ScratchPool::Lease big;
    ASSERT_TRUE(pool.Acquire(huge, &big));
    large = big.data();
    Hold(pool, 5, 4096);  // released first: five small idle buffers
    EXPECT_EQ(pool.IdleBuffers(), 5u);
  }
  // The large buffer came back last, beyond the byte bound on its own; the
  // small ones stay beside it.
  EXPECT_EQ(pool.IdleBuffers(), 6u);
  EXPECT_EQ(pool.IdleBytes(), huge + 5 * 4096);
  ScratchPool::Lease again, small;
  ASSERT_TRUE(pool.Acquire(huge, &again));
  EXPECT_EQ(again.data(), large);
  ASSERT_TRUE(pool.Acquire(100, &small));
  EXPECT_EQ(small.bytes(), 4096u);
}

TEST(ScratchPool, LargeBuffersAboveTheByteBoundMakeRoomForTheLargest) {
  ScratchPool pool;
  const size_t big = ScratchPool::kMaxIdleBytes / 2 + kMiB;
  {
    Leases three = Hold(pool, 3, big);
    ScratchPool::Lease huge;
    ASSERT_TRUE(pool.Acquire(3 * big, &huge));
  }
  // The huge one, and one of the three beside it (two would pass the bound).
  EXPECT_EQ(pool.IdleBuffers(), 2u);
  EXPECT_EQ(pool.IdleBytes(), 4 * big);
}

// Two callers of one context, one with a large scratch and one with a small
// one, call at the same time, round after round: once warm, neither
// allocates (the large buffer is not lent to the small caller, which left
// the other to allocate it again on every call).
TEST(ScratchPool, CallersOfVeryDifferentSizesDoNotAllocateOnceWarm) {
  ScratchPool pool;
  const size_t large = 100 * kMiB, small = 1024;
  void* seen_large = nullptr;
  void* seen_small = nullptr;
  for (int round = 0; round < 4; ++round) {
    ScratchPool::Lease a, b;
    // The small caller asks first: the idle large buffer must not serve it.
    ASSERT_TRUE(pool.Acquire(small, &b));
    ASSERT_TRUE(pool.Acquire(large, &a));
    EXPECT_LT(b.bytes(), large);
    if (round > 0) {
      EXPECT_EQ(a.data(), seen_large) << round;
      EXPECT_EQ(b.data(), seen_small) << round;
    }
    seen_large = a.data();
    seen_small = b.data();
  }
}

// A buffer at most kMaxOversize times the request, or at most kMaxSpareBytes
// larger, serves it.
TEST(ScratchPool, SomewhatLargerBuffersServe) {
  ScratchPool pool;
  void* kept = nullptr;
  {
    ScratchPool::Lease lease;
    ASSERT_TRUE(pool.Acquire(8 * kMiB, &lease));
    kept = lease.data();
  }
  {
    ScratchPool::Lease lease;
    ASSERT_TRUE(pool.Acquire(2 * kMiB, &lease));  // 4x
    EXPECT_EQ(lease.data(), kept);
  }
  {
    ScratchPool::Lease lease;
    ASSERT_TRUE(pool.Acquire(2 * kMiB - 4096, &lease));  // just over 4x: a new buffer
    EXPECT_NE(lease.data(), kept);
  }
  ScratchPool small_pool;
  {
    ScratchPool::Lease lease;
    ASSERT_TRUE(small_pool.Acquire(kMiB, &lease));
    kept = lease.data();
  }
  ScratchPool::Lease tiny;
  ASSERT_TRUE(small_pool.Acquire(64, &tiny));  // 1 MiB spare at most
  EXPECT_EQ(tiny.data(), kept);
}

}  // namespace
}  // namespace bnorm
