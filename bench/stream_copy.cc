#include "stream_copy.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "stream_copy.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/cache_control.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm_bench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void StreamCopy(const float* src, float* dst, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  while (i < n && (reinterpret_cast<uintptr_t>(dst + i) % (N * sizeof(float))) != 0) {
    dst[i] = src[i];
    ++i;
  }
  // Reads prefetched into L2 16 KiB ahead: the hardware prefetcher stops at
  // each 4 KiB page, and this copy ran 10-15 % faster with it (Xeon guest,
  // 2 threads, 100-150 MB: 37-39 -> 42-46 GB/s), so the yardstick is the
  // faster copy (bnorm's streaming passes prefetch the same way).
  constexpr size_t kAhead = (16 << 10) / sizeof(float);
  for (; i + 4 * N <= n; i += 4 * N) {
    if (i + kAhead < n) {
      const char* ahead = reinterpret_cast<const char*>(src + i + kAhead);
      for (size_t b = 0; b < 4 * N * sizeof(float); b += 64) __builtin_prefetch(ahead + b, 0, 2);
    }
    const auto a = hn::LoadU(d, src + i);
    const auto b = hn::LoadU(d, src + i + N);
    const auto c = hn::LoadU(d, src + i + 2 * N);
    const auto e = hn::LoadU(d, src + i + 3 * N);
    hn::Stream(a, d, dst + i);
    hn::Stream(b, d, dst + i + N);
    hn::Stream(c, d, dst + i + 2 * N);
    hn::Stream(e, d, dst + i + 3 * N);
  }
  for (; i < n; ++i) dst[i] = src[i];
  hwy::FlushStream();
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm_bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bnorm_bench {
HWY_EXPORT(StreamCopy);
void StreamCopy(const float* src, float* dst, size_t n) {
  HWY_DYNAMIC_DISPATCH(StreamCopy)(src, dst, n);
}
}  // namespace bnorm_bench
#endif
