// The context: a oneTBB arena (the thread pool a call runs on) and a pool of
// scratch buffers kept between calls, so that warm calls do not allocate.
// Several threads may use one context at once: each call leases its own
// scratch buffer.
#ifndef BNORM_SRC_CONTEXT_H_
#define BNORM_SRC_CONTEXT_H_

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "bnorm/bnorm.h"
#include "plan.h"

namespace bnorm {

class ScratchPool {
 public:
  // Idle buffers kept: the largest, of any size, and besides it at most
  // kMaxIdleBuffers - 1 others holding at most kMaxIdleBytes: one caller's
  // warm calls never allocate, nor do callers of very different sizes
  // sharing a context, and many concurrent calls with huge scratch (it
  // grows with c: ~56 bytes per channel for training, 7x the tensor of an
  // (N, C) input with N = 2) leave at most that much behind; the default
  // context is never destroyed. Over the bounds, the smallest idle buffers
  // are freed first (large ones cost most to allocate again). Concurrent
  // callers beyond the bounds still work; their buffers are freed on return.
  static constexpr size_t kMaxIdleBuffers = 64;
  static constexpr size_t kMaxIdleBytes = size_t{64} << 20;
  // An idle buffer is lent for a request it exceeds by at most this factor,
  // or by at most kMaxSpareBytes; a larger one stays for the caller whose
  // size it has. Lent to a small call, a caller's only large buffer made
  // another caller of the context allocate its large scratch again on every
  // call (two threads, 100 MB and 1 KB of scratch).
  static constexpr size_t kMaxOversize = 4;
  static constexpr size_t kMaxSpareBytes = size_t{1} << 20;

  // A buffer on loan from the pool, returned on destruction.
  class Lease {
   public:
    Lease() = default;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease();
    void* data() const { return data_; }
    size_t bytes() const { return bytes_; }  // at least what was asked for

   private:
    friend class ScratchPool;
    ScratchPool* pool_ = nullptr;
    void* data_ = nullptr;
    size_t bytes_ = 0;
  };

  ScratchPool();
  ~ScratchPool();
  ScratchPool(const ScratchPool&) = delete;
  ScratchPool& operator=(const ScratchPool&) = delete;

  // Leases at least `bytes` (64-byte aligned). False if memory ran out.
  bool Acquire(size_t bytes, Lease* lease);

  // What the pool keeps between calls (tests).
  size_t IdleBytes();
  size_t IdleBuffers();

 private:
  struct Buffer {
    void* data;
    size_t bytes;
  };
  void Release(void* data, size_t bytes);
  void RemoveIdle(size_t i);  // with mutex_ held

  std::mutex mutex_;
  std::vector<Buffer> idle_;  // capacity reserved up front: Release never allocates
  size_t idle_bytes_ = 0;     // the sum of idle_[i].bytes
};

// Carves typed arrays out of a leased buffer, each aligned to 64 bytes.
class ScratchLayout {
 public:
  template <typename T>
  size_t Add(int64_t count) {
    const size_t offset = bytes_;
    bytes_ += (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
    return offset;
  }
  // An array that a kernel reads in step with its stores to an output: a
  // page more, for ScratchAt's placement.
  template <typename T>
  size_t AddReadAlongside(int64_t count) {
    return Add<char>(count * static_cast<int64_t>(sizeof(T)) + kPageBytes);
  }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_ = 0;
};

template <typename T>
T* ScratchAt(const ScratchPool::Lease& lease, size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(lease.data()) + offset);
}

// The array at offset (from AddReadAlongside), placed half a page from
// away_from modulo a page (PageMove in plan.h): read in step with the stores
// to away_from's tensor, it never waits behind them (4K aliasing). NHWC
// inference of 100x1024 from L2: 33-38 us with the constants up to 600 bytes
// behind y, 18 us half a page from it.
template <typename T>
T* ScratchAt(const ScratchPool::Lease& lease, size_t offset, const void* away_from) {
  char* at = static_cast<char*>(lease.data()) + offset;
  return reinterpret_cast<T*>(at + PageMove(at, away_from, kPageBytes / 2));
}

// Creates a context (nullptr when out of memory); num_threads 0 = all cores.
bnorm_context* NewContext(int num_threads);
void DeleteContext(bnorm_context* ctx);

// Threads a context runs on (the default context for nullptr).
int ContextThreads(const bnorm_context* ctx);
tbb::task_arena& ContextArena(const bnorm_context* ctx);
ScratchPool& ContextScratch(const bnorm_context* ctx);

// Tells ThreadSanitizer the order oneTBB's scheduler imposes, which it cannot
// see (libtbb is not instrumented, and the TSan build leaves oneTBB's
// headers uninstrumented too: tools/tsan-ignorelist.txt): everything the
// caller wrote before a parallel loop happens before each of its pieces, and
// each piece happens before the caller continues. Pieces stay unordered
// among themselves, so races between them are still reported. No code
// without TSan.
#if defined(__SANITIZE_THREAD__)
#define BNORM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define BNORM_TSAN 1
#endif
#endif
#ifdef BNORM_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

class HandOff {
 public:
#ifdef BNORM_TSAN
  // The caller-to-pieces edge goes through one address for all calls: a
  // piece must acquire before it reads anything of its caller's, including
  // the closure that would tell it a per-call address.
  void Publish() { __tsan_release(&to_pieces_); }  // caller, before the loop
  static void Receive() { __tsan_acquire(&to_pieces_); }  // each piece, first
  void Return() { __tsan_release(&to_caller_); }   // each piece, last
  void Collect() { __tsan_acquire(&to_caller_); }  // caller, after the loop

 private:
  static inline char to_pieces_ = 0;
  char to_caller_ = 0;
#else
  void Publish() {}
  static void Receive() {}
  void Return() {}
  void Collect() {}
#endif
};

// The oneTBB task group of one parallel loop: isolated (no parent's
// cancellation reaches it), and carrying the calling thread's
// floating-point mode (MXCSR's flush-to-zero, denormals-are-zero, rounding)
// to every thread that runs a piece. Without it the pieces ran in the mode of
// whichever thread had created the context's arena, while a call run inline
// (one thread) ran in the caller's: results then depended on the thread
// count under a caller's flush-to-zero (threads_test
// TheCallersFloatingPointModeOnEveryThread). Constructed on the calling
// thread, before the loop: that is when the mode is captured.
class LoopGroup {
 public:
  LoopGroup() : context_(tbb::task_group_context::isolated, tbb::task_group_context::fp_settings) {}
  tbb::task_group_context& get() { return context_; }

 private:
  tbb::task_group_context context_;
};

// Calls body(begin, end) over [0, count) in chunks of `grain` items, on the
// context's threads. Runs inline when there is only one chunk or one thread,
// or when the caller says one thread is worth more than several.
template <typename Body>
void ParallelFor(const bnorm_context* ctx, int64_t count, int64_t grain, const Body& body,
                 bool single_thread = false) {
  if (count <= 0) return;
  const int64_t chunks = (count + grain - 1) / grain;
  if (single_thread || chunks == 1 || ContextThreads(ctx) == 1) {
    for (int64_t begin = 0; begin < count; begin += grain)
      body(begin, std::min(count, begin + grain));
    return;
  }
  HandOff hand_off;
  hand_off.Publish();
  LoopGroup group;
  ContextArena(ctx).execute([&] {  // maybe on another thread, when the arena is full
    HandOff::Receive();
    tbb::parallel_for(
        tbb::blocked_range<int64_t>(0, chunks, 1),
        [&](const tbb::blocked_range<int64_t>& r) {
          HandOff::Receive();
          for (int64_t chunk = r.begin(); chunk != r.end(); ++chunk) {
            const int64_t begin = chunk * grain;
            body(begin, std::min(count, begin + grain));
          }
          hand_off.Return();
        },
        tbb::simple_partitioner(), group.get());
    hand_off.Return();
  });
  hand_off.Collect();
}

// Calls body(begin, end) over [0, count) split evenly into one contiguous
// piece per thread, in a pattern that repeats from call to call: a second
// pass over the same items lands on the threads (and caches) of the first.
// oneTBB's static partitioner sends piece k to the k-th arena slot from the
// caller's (an affinity hint, partitioner.h) whatever the count, so passes
// over the same data in different units (a reduction's units, then flat
// tasks) line up too; where they do not, only speed changes. Runs inline
// when single_thread.
template <typename Body>
void ParallelForStatic(const bnorm_context* ctx, int64_t count, bool single_thread,
                       const Body& body) {
  if (count <= 0) return;
  if (single_thread || count == 1 || ContextThreads(ctx) == 1) {
    body(int64_t{0}, count);
    return;
  }
  HandOff hand_off;
  hand_off.Publish();
  LoopGroup group;
  ContextArena(ctx).execute([&] {  // maybe on another thread, when the arena is full
    HandOff::Receive();
    tbb::parallel_for(
        tbb::blocked_range<int64_t>(0, count, 1),
        [&](const tbb::blocked_range<int64_t>& r) {
          HandOff::Receive();
          body(r.begin(), r.end());
          hand_off.Return();
        },
        tbb::static_partitioner(), group.get());
    hand_off.Return();
  });
  hand_off.Collect();
}

}  // namespace bnorm

#endif  // BNORM_SRC_CONTEXT_H_
