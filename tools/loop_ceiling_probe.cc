// Timing probe, not a kernel: how fast can one core run the bare inner loops
// bnorm's kernels are made of, on data that stays in L1/L2? Compare with
// tools/call_timer.cc on the same number of values to see how far a kernel is
// from its loop's ceiling on this CPU.
//
//   statistics:    e = x - shift; s += e; q += e * e        (one load per vector)
//   backward sums: e = x - mean; s += dy; q += dy * e        (two loads)
//   normalize:     y = (x - mean) * scale + shift            (a load and a store)
//
// Eight independent accumulators per sum, AVX-512 (16 floats per vector);
// all buffers 64-byte aligned.
//
//   g++ -O3 -march=native tools/loop_ceiling_probe.cc -o /tmp/loop_ceiling_probe
//   taskset -c 1 /tmp/loop_ceiling_probe VALUES     (a multiple of 128)
//
// Prints values per nanosecond for each loop (best of 5).
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

template <class F>
double ValuesPerNs(long values, const F& pass) {
  const long passes = std::max(1L, 2000000000L / values);
  double best = 1e30;
  for (int k = 0; k < 5; ++k) {
    const double t0 = Now();
    for (long r = 0; r < passes / 5 + 1; ++r) {
      pass();
      asm volatile("" ::: "memory");
    }
    best = std::min(best, (Now() - t0) / static_cast<double>(passes / 5 + 1));
  }
  return static_cast<double>(values) / best / 1e9;
}

// Keeps the sums alive (the loops would otherwise be dead code).
float Total(const __m512 (&v)[8]) {
  alignas(64) float lanes[16];
  float t = 0.0f;
  for (const __m512& x : v) {
    _mm512_store_ps(lanes, x);
    for (const float l : lanes) t += l;
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 0;
  if (n < 128 || n % 128 != 0) {
    std::fprintf(stderr, "usage: %s VALUES (a multiple of 128)\n", argv[0]);
    return 2;
  }
  auto* x = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  auto* dy = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  auto* y = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  if (x == nullptr || dy == nullptr || y == nullptr) return 1;
  for (long i = 0; i < n; ++i) {
    x[i] = 3.0f + static_cast<float>(i % 97) * 0.01f;
    dy[i] = 0.5f - static_cast<float>(i % 89) * 0.01f;
  }
  const __m512 shift = _mm512_set1_ps(3.0f), scale = _mm512_set1_ps(1.1f),
               offset = _mm512_set1_ps(0.1f);
  __m512 s[8], q[8];
  for (int a = 0; a < 8; ++a) s[a] = q[a] = _mm512_setzero_ps();

  const double stats = ValuesPerNs(n, [&] {
    for (long j = 0; j < n; j += 128) {
      for (int a = 0; a < 8; ++a) {
        const __m512 e = _mm512_sub_ps(_mm512_load_ps(x + j + 16 * a), shift);
        s[a] = _mm512_add_ps(s[a], e);
        q[a] = _mm512_fmadd_ps(e, e, q[a]);
      }
    }
  });
  const double sums = ValuesPerNs(n, [&] {
    for (long j = 0; j < n; j += 128) {
      for (int a = 0; a < 8; ++a) {
        __m512 g = _mm512_load_ps(dy + j + 16 * a);
        asm("" : "+v"(g));  // one load of dy, not one per use
        const __m512 e = _mm512_sub_ps(_mm512_load_ps(x + j + 16 * a), shift);
        s[a] = _mm512_add_ps(s[a], g);
        q[a] = _mm512_fmadd_ps(g, e, q[a]);
      }
    }
  });
  const double normalize = ValuesPerNs(n, [&] {
    for (long j = 0; j < n; j += 16) {
      _mm512_store_ps(y + j, _mm512_fmadd_ps(_mm512_sub_ps(_mm512_load_ps(x + j), shift), scale,
                                             offset));
    }
  });
  std::printf("%ld values (%.0f KiB per tensor): statistics %.1f, backward sums %.1f, "
              "normalize %.1f values/ns (checksum %g)\n",
              n, n * 4.0 / 1024, stats, sums, normalize, Total(s) + Total(q) + y[n - 1]);
  std::free(x);
  std::free(dy);
  std::free(y);
  return 0;
}
