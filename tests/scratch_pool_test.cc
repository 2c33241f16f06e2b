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
  EXPECT_LE(pool.IdleBytes(), ScratchPool::kMaxIdleBytes);
  EXPECT_EQ(pool.IdleBuffers(), ScratchPool::kMaxIdleBytes / each);
  // The kept buffers serve as many callers again without allocating.
  Leases again = Hold(pool, ScratchPool::kMaxIdleBytes / each, each);
  EXPECT_EQ(pool.IdleBuffers(), 0u);
}

TEST(ScratchPool, ManySmallBuffersLeaveAtMostTheCountBound) {
  ScratchPool pool;
  Hold(pool, 3 * ScratchPool::kMaxIdleBuffers, 4096);
  EXPECT_EQ(pool.IdleBuffers(), ScratchPool::kMaxIdleBuffers);
  EXPECT_EQ(pool.IdleBytes(), ScratchPool::kMaxIdleBuffers * 4096);
}

TEST(ScratchPool, SmallBuffersMakeRoomForALargeOne) {
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
  // The large buffer came back last; the small ones were freed for it.
  EXPECT_EQ(pool.IdleBuffers(), 1u);
  EXPECT_EQ(pool.IdleBytes(), huge);
  ScratchPool::Lease again;
  ASSERT_TRUE(pool.Acquire(huge, &again));
  EXPECT_EQ(again.data(), large);
}

}  // namespace
}  // namespace bnorm
