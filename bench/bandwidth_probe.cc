// bandwidth_probe: what one machine's memory does for the access patterns
// batch norm is made of, so the ratios of bnorm_bench can be read against
// them: a read-only pass (statistics), a copy (read and write together), a
// write-only pass (non-temporal stores), and a read of 64-byte column blocks
// of 1 KiB rows (an NHWC plan that walks channel blocks); then the
// read-only pass and the copy again with their reads prefetched 16 KiB ahead
// in software, as bnorm's passes beyond the LLC and bnorm_bench's copy do.
// Medians of 5, over 100 MiB per pass, on 1 and on all threads.
//
//   bandwidth_probe [threads]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr size_t kFloats = size_t{25} << 20;  // 100 MiB
constexpr size_t kRow = 256;                  // floats per row for the column pattern

volatile float g_sink;

template <typename Body>
double Seconds(int threads, const Body& body) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(body, t);
  for (auto& th : pool) th.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename Body>
double MedianGBs(int threads, double bytes, const Body& body) {
  std::vector<double> rates;
  for (int rep = 0; rep < 5; ++rep) rates.push_back(bytes / Seconds(threads, body) * 1e-9);
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

#define BNORM_AVX2 __attribute__((target("avx2,fma")))

BNORM_AVX2 void ReadPart(const float* a, size_t lo, size_t hi) {
  __m256 s[8];
  for (auto& v : s) v = _mm256_setzero_ps();
  for (size_t i = lo; i < hi; i += 64)
    for (int k = 0; k < 8; ++k) s[k] = _mm256_add_ps(s[k], _mm256_load_ps(a + i + 8 * k));
  for (int k = 1; k < 8; ++k) s[0] = _mm256_add_ps(s[0], s[k]);
  g_sink = _mm256_cvtss_f32(s[0]);
}

// How far ahead the prefetching variants fetch into L2: the distance of
// bnorm's streaming passes and of bnorm_bench's copy (16 KiB; the hardware
// prefetcher stops at each 4 KiB page).
constexpr size_t kAheadFloats = (16 << 10) / sizeof(float);

// Prefetches into L2 the line kAheadFloats past a[i]: an address formed as
// an integer (it may lie past the buffer, where a prefetch does not fault).
BNORM_AVX2 void PrefetchAhead(const float* a, size_t i) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(a) + (i + kAheadFloats) * sizeof(float);
  _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T1);
}

// ReadPart with each line prefetched into L2 kAheadFloats ahead.
BNORM_AVX2 void ReadAheadPart(const float* a, size_t lo, size_t hi) {
  __m256 s[8];
  for (auto& v : s) v = _mm256_setzero_ps();
  for (size_t i = lo; i < hi; i += 64) {
    for (size_t l = 0; l < 64; l += 16) PrefetchAhead(a, i + l);
    for (int k = 0; k < 8; ++k) s[k] = _mm256_add_ps(s[k], _mm256_load_ps(a + i + 8 * k));
  }
  for (int k = 1; k < 8; ++k) s[0] = _mm256_add_ps(s[0], s[k]);
  g_sink = _mm256_cvtss_f32(s[0]);
}

BNORM_AVX2 void CopyPart(const float* a, float* b, size_t lo, size_t hi) {
  for (size_t i = lo; i < hi; i += 8) _mm256_stream_ps(b + i, _mm256_load_ps(a + i));
  _mm_sfence();
}

// CopyPart with each line read prefetched into L2 kAheadFloats ahead.
BNORM_AVX2 void CopyAheadPart(const float* a, float* b, size_t lo, size_t hi) {
  for (size_t i = lo; i < hi; i += 16) {
    PrefetchAhead(a, i);
    _mm256_stream_ps(b + i, _mm256_load_ps(a + i));
    _mm256_stream_ps(b + i + 8, _mm256_load_ps(a + i + 8));
  }
  _mm_sfence();
}

BNORM_AVX2 void WritePart(float* b, size_t lo, size_t hi) {
  const __m256 v = _mm256_set1_ps(2.0f);
  for (size_t i = lo; i < hi; i += 8) _mm256_stream_ps(b + i, v);
  _mm_sfence();
}

// Rows [lo, hi) of kRow floats, one 16-float column block after another.
BNORM_AVX2 void ColumnsPart(const float* a, size_t lo, size_t hi) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (size_t c0 = 0; c0 < kRow; c0 += 16) {
    for (size_t r = lo; r < hi; ++r) {
      s0 = _mm256_add_ps(s0, _mm256_load_ps(a + r * kRow + c0));
      s1 = _mm256_add_ps(s1, _mm256_load_ps(a + r * kRow + c0 + 8));
    }
  }
  g_sink = _mm256_cvtss_f32(_mm256_add_ps(s0, s1));
}

void Run(int threads) {
  float* a = static_cast<float*>(std::aligned_alloc(64, kFloats * sizeof(float)));
  float* b = static_cast<float*>(std::aligned_alloc(64, kFloats * sizeof(float)));
  for (size_t i = 0; i < kFloats; ++i) a[i] = 1.0f, b[i] = 0.0f;
  // The median rate of pass(lo, hi) run on each thread's share of n items
  // (floats, or rows for the column blocks), moving `bytes` in all.
  const auto rate = [threads](size_t n, double bytes, const auto& pass) {
    return MedianGBs(threads, bytes, [&](int t) {
      const size_t lo = n * static_cast<size_t>(t) / static_cast<size_t>(threads) / 64 * 64;
      const size_t hi = n * static_cast<size_t>(t + 1) / static_cast<size_t>(threads) / 64 * 64;
      pass(lo, hi);
    });
  };
  const double bytes = static_cast<double>(kFloats * sizeof(float));
  const double read = rate(kFloats, bytes, [&](size_t l, size_t h) { ReadPart(a, l, h); });
  const double copy = rate(kFloats, 2 * bytes, [&](size_t l, size_t h) { CopyPart(a, b, l, h); });
  const double read_ahead =
      rate(kFloats, bytes, [&](size_t l, size_t h) { ReadAheadPart(a, l, h); });
  const double copy_ahead =
      rate(kFloats, 2 * bytes, [&](size_t l, size_t h) { CopyAheadPart(a, b, l, h); });
  const double write = rate(kFloats, bytes, [&](size_t l, size_t h) { WritePart(b, l, h); });
  const double columns =
      rate(kFloats / kRow, bytes, [&](size_t l, size_t h) { ColumnsPart(a, l, h); });
  std::printf(
      "threads %d: read-only %.1f GB/s, stream copy %.1f GB/s (read+write), stream write-only "
      "%.1f GB/s, 64-byte column blocks of 1 KiB rows %.1f GB/s; with reads prefetched 16 KiB "
      "ahead: read-only %.1f GB/s, stream copy %.1f GB/s\n",
      threads, read, copy, write, columns, read_ahead, copy_ahead);
  std::free(a);
  std::free(b);
}

}  // namespace

int main(int argc, char** argv) {
  if (!__builtin_cpu_supports("avx2")) {
    std::puts("bandwidth_probe: needs AVX2");
    return 0;
  }
  const int all = argc > 1 ? std::atoi(argv[1])
                           : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Run(1);
  if (all > 1) Run(all);
  return 0;
}
