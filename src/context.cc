#include "context.h"

#include <algorithm>
#include <new>

#include <oneapi/tbb/info.h>
#include <thread>

struct bnorm_context {
  // The work is split for `threads`; the arena runs at most one thread per
  // core (oneTBB would not give it more, and warns on stderr when asked).
  bnorm_context(int threads, int cores) : num_threads(threads), arena(std::min(threads, cores)) {
    arena.initialize();
  }
  int num_threads;
  tbb::task_arena arena;
  bnorm::ScratchPool scratch;
};

namespace bnorm {
namespace {

// The machine's cores (respecting the process affinity mask), not the
// concurrency of whatever arena the first caller happens to run in.
int QueryCores() {
  const int n = tbb::info::default_concurrency();
  return n > 0 ? n : 1;
}

// Read once, when the library loads: the first query runs oneTBB's one-time
// initialization, which is not exception-safe (if an allocation fails inside
// it, every later caller spins forever), so it must not happen inside a call
// that can meet a failing allocation (tests/alloc_failure_test.cc).
const int g_all_cores = QueryCores();

int AllCores() { return g_all_cores; }

// More threads than this only oversubscribe the machine; far more (a huge
// num_threads) would make oneTBB allocate arena slots without bound.
int MaxThreads() { return std::max(256, 4 * AllCores()); }

bnorm_context& DefaultContext() {
  // Never destroyed: other static destructors may still call into bnorm.
  static bnorm_context* const ctx = new bnorm_context(AllCores(), AllCores());
  return *ctx;
}

bnorm_context& Resolve(const bnorm_context* ctx) {
  return ctx != nullptr ? *const_cast<bnorm_context*>(ctx) : DefaultContext();
}

}  // namespace

// One slot more than kept: Release adds before it evicts, without allocating.
ScratchPool::ScratchPool() { idle_.reserve(kMaxIdleBuffers + 1); }

ScratchPool::~ScratchPool() {
  for (const Buffer& b : idle_) ::operator delete (b.data, std::align_val_t{64});
}

ScratchPool::Lease::~Lease() {
  if (pool_ != nullptr) pool_->Release(data_, bytes_);
}

bool ScratchPool::Acquire(size_t bytes, Lease* lease) {
  bytes = bytes == 0 ? 64 : bytes;
  void* stale = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Best fit: the smallest idle buffer that is large enough.
    size_t best = idle_.size();
    for (size_t i = 0; i < idle_.size(); ++i) {
      if (idle_[i].bytes >= bytes && (best == idle_.size() || idle_[i].bytes < idle_[best].bytes)) {
        best = i;
      }
    }
    const bool fits = best != idle_.size();
    if (fits && (idle_[best].bytes / kMaxOversize <= bytes ||
                 idle_[best].bytes - bytes <= kMaxSpareBytes)) {
      lease->pool_ = this;
      lease->data_ = idle_[best].data;
      lease->bytes_ = idle_[best].bytes;
      RemoveIdle(best);
      return true;
    }
    // Grow: replace the largest idle buffer (too small) by a new one; beside
    // idle buffers that are all too large, just a new one.
    if (!fits && !idle_.empty()) {
      size_t largest = 0;
      for (size_t i = 1; i < idle_.size(); ++i) {
        if (idle_[i].bytes > idle_[largest].bytes) largest = i;
      }
      stale = idle_[largest].data;
      RemoveIdle(largest);
    }
  }
  if (stale != nullptr) ::operator delete (stale, std::align_val_t{64});
  void* data = ::operator new (bytes, std::align_val_t{64}, std::nothrow);
  if (data == nullptr) return false;
  lease->pool_ = this;
  lease->data_ = data;
  lease->bytes_ = bytes;
  return true;
}

void ScratchPool::RemoveIdle(size_t i) {
  idle_bytes_ -= idle_[i].bytes;
  idle_[i] = idle_.back();
  idle_.pop_back();
}

void ScratchPool::Release(void* data, size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  idle_.push_back(Buffer{data, bytes});  // within the reserved capacity
  idle_bytes_ += bytes;
  // The largest is kept whatever its size; the others within the bounds.
  size_t largest = 0;
  for (size_t i = 1; i < idle_.size(); ++i) {
    if (idle_[i].bytes > idle_[largest].bytes) largest = i;
  }
  size_t largest_bytes = idle_[largest].bytes;
  while (idle_.size() > kMaxIdleBuffers || idle_bytes_ - largest_bytes > kMaxIdleBytes) {
    // The smallest of the others (idle_ holds two or more here).
    size_t smallest = largest == 0 ? 1 : 0;
    for (size_t i = 0; i < idle_.size(); ++i) {
      if (i != largest && idle_[i].bytes < idle_[smallest].bytes) smallest = i;
    }
    ::operator delete (idle_[smallest].data, std::align_val_t{64});
    RemoveIdle(smallest);  // moves the last buffer to `smallest`
    if (largest == idle_.size()) largest = smallest;
    largest_bytes = idle_[largest].bytes;
  }
}

size_t ScratchPool::IdleBytes() {
  std::lock_guard<std::mutex> lock(mutex_);
  return idle_bytes_;
}

size_t ScratchPool::IdleBuffers() {
  std::lock_guard<std::mutex> lock(mutex_);
  return idle_.size();
}

// The default context's count without building it (as DefaultContext
// does): bnorm_context_num_threads(NULL) has no status to report a failed
// allocation with.
int ContextThreads(const bnorm_context* ctx) {
  return ctx != nullptr ? ctx->num_threads : AllCores();
}
tbb::task_arena& ContextArena(const bnorm_context* ctx) { return Resolve(ctx).arena; }
ScratchPool& ContextScratch(const bnorm_context* ctx) { return Resolve(ctx).scratch; }

bnorm_context* NewContext(int num_threads) {
  const int threads = num_threads == 0 ? AllCores() : std::min(num_threads, MaxThreads());
  return new (std::nothrow) bnorm_context(threads, AllCores());
}

void DeleteContext(bnorm_context* ctx) { delete ctx; }

}  // namespace bnorm
