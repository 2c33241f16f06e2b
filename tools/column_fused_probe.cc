// Timing probe, not a kernel: would a single-pass "column-fused" plan beat the
// two-phase plan for row-major (R, C) data (NHWC, or (N, C) input)?
//
// Column-fused: each thread takes blocks of `cb` columns (channels); for a
// block it sums the block's columns down all R rows, then normalizes the same
// block while it is in L2 (optionally prefetching the next block), as the
// channel-fused NCHW plan does for whole channels. Two-phase: each thread sums
// its half of the rows over all columns, then (after a barrier) normalizes the
// rows it summed, in reverse. Both are compared with a non-temporal copy of
// the same tensor on the same threads, in the same process.
//
// The sums are shifted by each column's first value, like bnorm's (one more
// subtraction per vector than plain sums); the per-channel arithmetic after
// them is plain float since only the time counts. AVX-512 only.
//
//   g++ -O2 -march=native -fopenmp tools/column_fused_probe.cc -o /tmp/column_fused_probe
//   OMP_NUM_THREADS=2 OMP_PROC_BIND=true /tmp/column_fused_probe ROWS COLS
//
// Prints the median of 30 calls of each plan over the median copy time.
// Measured on the 2-vCPU Xeon guest (docs/performance-history.md): column-fused
// 2.3-5.7x a copy (the wider the block, the better), two-phase 2.1-2.5x.
// GCC 12's AVX-512 intrinsics (_mm512_sqrt_ps) start from an "undefined"
// vector that -Wmaybe-uninitialized reports; nothing here reads one.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Tensor {
  int rows, cols;
  float* x;
  float* y;
};

void Copy(const Tensor& t) {
#pragma omp parallel
  {
    // Whole vectors per thread (cols is a multiple of 128).
    const size_t vectors = static_cast<size_t>(t.rows) * t.cols / 16;
    const size_t b = vectors * omp_get_thread_num() / omp_get_num_threads() * 16;
    const size_t e = vectors * (omp_get_thread_num() + 1) / omp_get_num_threads() * 16;
    for (size_t i = b; i < e; i += 16) _mm512_stream_ps(t.y + i, _mm512_load_ps(t.x + i));
    _mm_sfence();
  }
}

// Scale and shift of 16 columns from their shifted sums over `rows` values.
void Finalize(__m512 shift, __m512 s, __m512 q, int rows, float* mean, float* scale) {
  const __m512 n = _mm512_set1_ps(static_cast<float>(rows));
  const __m512 offset = _mm512_div_ps(s, n);
  const __m512 var = _mm512_sub_ps(_mm512_div_ps(q, n), _mm512_mul_ps(offset, offset));
  _mm512_storeu_ps(mean, _mm512_add_ps(shift, offset));
  _mm512_storeu_ps(scale, _mm512_div_ps(_mm512_set1_ps(1.0f),
                                        _mm512_sqrt_ps(_mm512_add_ps(var, _mm512_set1_ps(1e-5f)))));
}

void ColumnFused(const Tensor& t, int cb, bool prefetch) {
#pragma omp parallel
  {
    const int blocks = t.cols / cb;
    const int b0 = blocks * omp_get_thread_num() / omp_get_num_threads();
    const int b1 = blocks * (omp_get_thread_num() + 1) / omp_get_num_threads();
    alignas(64) float mean[128], scale[128];
    const int vecs = cb / 16;
    for (int b = b0; b < b1; ++b) {
      const int c0 = b * cb;
      __m512 shift[8], s[8], q[8];
      for (int k = 0; k < vecs; ++k) {
        shift[k] = _mm512_loadu_ps(t.x + c0 + 16 * k);
        s[k] = q[k] = _mm512_setzero_ps();
      }
      for (int r = 0; r < t.rows; ++r) {
        const float* row = t.x + static_cast<size_t>(r) * t.cols + c0;
        for (int k = 0; k < vecs; ++k) {
          const __m512 e = _mm512_sub_ps(_mm512_loadu_ps(row + 16 * k), shift[k]);
          s[k] = _mm512_add_ps(s[k], e);
          q[k] = _mm512_fmadd_ps(e, e, q[k]);
        }
      }
      for (int k = 0; k < vecs; ++k) {
        Finalize(shift[k], s[k], q[k], t.rows, mean + 16 * k, scale + 16 * k);
      }
      const bool ahead = prefetch && b + 1 < b1;
      for (int r = 0; r < t.rows; ++r) {
        const size_t at = static_cast<size_t>(r) * t.cols + c0;
        if (ahead) {
          for (int k = 0; k < cb; k += 16) {
            _mm_prefetch(reinterpret_cast<const char*>(t.x + at + cb + k), _MM_HINT_T1);
          }
        }
        for (int k = 0; k < cb; k += 16) {
          const __m512 v =
              _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(t.x + at + k), _mm512_load_ps(mean + k)),
                            _mm512_load_ps(scale + k));
          _mm512_stream_ps(t.y + at + k, v);
        }
      }
    }
    _mm_sfence();
  }
}

void TwoPhase(const Tensor& t, std::vector<float>* partials, std::vector<float>* constants) {
  const int threads = omp_get_max_threads();
  partials->assign(static_cast<size_t>(2 * threads) * t.cols, 0.0f);
  constants->assign(static_cast<size_t>(2) * t.cols, 0.0f);
#pragma omp parallel
  {
    const int r0 = t.rows * omp_get_thread_num() / omp_get_num_threads();
    const int r1 = t.rows * (omp_get_thread_num() + 1) / omp_get_num_threads();
    float* s = partials->data() + static_cast<size_t>(2 * omp_get_thread_num()) * t.cols;
    float* q = s + t.cols;
    for (int r = r0; r < r1; ++r) {
      for (int k = 0; k < t.cols; k += 16) {
        const __m512 e = _mm512_sub_ps(_mm512_loadu_ps(t.x + static_cast<size_t>(r) * t.cols + k),
                                       _mm512_loadu_ps(t.x + k));
        _mm512_storeu_ps(s + k, _mm512_add_ps(_mm512_loadu_ps(s + k), e));
        _mm512_storeu_ps(q + k, _mm512_fmadd_ps(e, e, _mm512_loadu_ps(q + k)));
      }
    }
#pragma omp barrier
    float* mean = constants->data();
    float* scale = mean + t.cols;
#pragma omp for
    for (int k = 0; k < t.cols; k += 16) {
      __m512 st = _mm512_setzero_ps(), qt = _mm512_setzero_ps();
      for (int th = 0; th < omp_get_num_threads(); ++th) {
        const float* ps = partials->data() + static_cast<size_t>(2 * th) * t.cols;
        st = _mm512_add_ps(st, _mm512_loadu_ps(ps + k));
        qt = _mm512_add_ps(qt, _mm512_loadu_ps(ps + t.cols + k));
      }
      Finalize(_mm512_loadu_ps(t.x + k), st, qt, t.rows, mean + k, scale + k);
    }
    for (int r = r1; r-- > r0;) {
      for (int k = 0; k < t.cols; k += 16) {
        const size_t at = static_cast<size_t>(r) * t.cols + k;
        const __m512 v =
            _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(t.x + at), _mm512_loadu_ps(mean + k)),
                          _mm512_loadu_ps(scale + k));
        _mm512_stream_ps(t.y + at, v);
      }
    }
    _mm_sfence();
  }
}

template <class F>
double Median(const F& f) {
  std::vector<double> times;
  for (int i = 0; i < 30; ++i) {
    const double t0 = Now();
    f();
    times.push_back(Now() - t0);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s ROWS COLS (COLS a multiple of 128)\n", argv[0]);
    return 2;
  }
  Tensor t{std::atoi(argv[1]), std::atoi(argv[2]), nullptr, nullptr};
  if (t.rows < 1 || t.cols < 128 || t.cols % 128 != 0) {
    std::fprintf(stderr, "ROWS >= 1, COLS a multiple of 128\n");
    return 2;
  }
  const size_t bytes = static_cast<size_t>(t.rows) * t.cols * sizeof(float);
  t.x = static_cast<float*>(std::aligned_alloc(4096, bytes));
  t.y = static_cast<float*>(std::aligned_alloc(4096, bytes));
  if (t.x == nullptr || t.y == nullptr) return 1;
  for (size_t i = 0; i < bytes / sizeof(float); ++i) {
    t.x[i] = 1e4f + static_cast<float>(i * 7919 % 1000) * 1e-3f;
    t.y[i] = 0.0f;
  }
  std::vector<float> partials, constants;
  std::printf("%d x %d f32, %d threads; each plan's median time over the copy's\n", t.rows, t.cols,
              omp_get_max_threads());
  for (int rep = 0; rep < 3; ++rep) {
    const double copy = Median([&] { Copy(t); });
    std::printf("copy %.3f ms | two-phase %.2f | column-fused (block: prefetch/none)", copy * 1e3,
                Median([&] { TwoPhase(t, &partials, &constants); }) / copy);
    for (const int cb : {16, 32, 64, 128}) {
      if (t.cols / cb < omp_get_max_threads()) continue;
      std::printf(" %d: %.2f/%.2f", cb, Median([&] { ColumnFused(t, cb, true); }) / copy,
                  Median([&] { ColumnFused(t, cb, false); }) / copy);
    }
    std::printf("\n");
  }
  std::free(t.x);
  std::free(t.y);
  return 0;
}
