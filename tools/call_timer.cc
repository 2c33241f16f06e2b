// Single-thread timer of one bnorm call, for A/B comparisons of two builds
// of libbnorm where bnorm_bench's ratios are too noisy (a tensor that fits
// L2, one-thread context, no copy baseline). Not built by CMake:
//   g++ -O2 tools/call_timer.cc -Iinclude -Lbuild/release -lbnorm -o /tmp/call_timer
//   LD_LIBRARY_PATH=build/release /tmp/call_timer N C SPATIAL NHWC OP [THREADS [DTYPE [OFFSET]]]
// OP: train | trainz (training with a residual z and ReLU,
// bnorm_forward_training_ex) | inf | back | backz (bnorm_backward_ex with
// the ReLU mask of trainz's y, writing dx and dz) | stats | sums (backward with
// dx = NULL: the gradient sums alone); NHWC: 0/1; DTYPE: 0 or f32, 1 or
// bf16, 2 or f16 (bnorm_dtype).
// Tensors start on a 64-byte boundary, as framework tensors do, or OFFSET
// floats after one (OFFSET 4: the 16-byte alignment of std::vector, which
// splits every AVX-512 load across two lines; docs/performance-history.md).
// Prints the best of 15 repetitions of the mean µs per call. Machines are
// noisy: alternate the two builds over several processes, compare minima.
// Repeated calls find their tensors in the caches as far as they fit, and a
// VM may see a last-level cache of hundreds of MiB (260 MiB on the Xeon
// guest): CALL_TIMER_EVICT_MIB=512 reads that many MiB of another buffer
// before each call, untimed, and times single calls, as bnorm_bench's
// interleaved copy leaves them (docs/performance-history.md: a choice
// measured warm here came out differently in the suite).
// CALL_TIMER_IDLE_US=N times single calls too, each after sleeping N us:
// the tensors stay in the caches while the context's worker threads go
// idle, as between the layers of a network (their wake-up is timed).
#include <bnorm/bnorm.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

// A tensor's f32 buffer, `offset` floats after a 64-byte boundary.
class AlignedFloats {
 public:
  AlignedFloats(size_t count, size_t offset)
      : count_(count),
        base_(static_cast<float*>(
            std::aligned_alloc(64, ((count + offset) * sizeof(float) + 63) / 64 * 64))),
        data_(base_ + offset) {
    if (base_ == nullptr) std::abort();
    std::fill(data_, data_ + count_, 0.0f);
  }
  ~AlignedFloats() { std::free(base_); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  float* data() { return data_; }
  float* begin() { return data_; }
  float* end() { return data_ + count_; }
  float& operator[](size_t i) { return data_[i]; }

 private:
  size_t count_;
  float* base_;
  float* data_;
};

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr,
                 "usage: %s N C SPATIAL NHWC train|trainz|inf|back|backz|stats|sums [THREADS "
                 "[DTYPE [OFFSET]]]\n",
                 argv[0]);
    return 2;
  }
  const int64_t n = std::atoll(argv[1]), c = std::atoll(argv[2]), sp = std::atoll(argv[3]);
  const bool nhwc = std::atoi(argv[4]) != 0;
  const char* op = argv[5];
  const int threads = argc > 6 ? std::atoi(argv[6]) : 1;
  // DTYPE by number or name: "bf16" read by atoi would silently time f32.
  int dtype = 0;
  if (argc > 7) {
    const std::string name = argv[7];
    const char* names[] = {"f32", "bf16", "f16"};
    dtype = -1;
    for (int k = 0; k < 3; ++k) {
      if (name == names[k] || name == std::to_string(k)) dtype = k;
    }
    if (dtype < 0) {
      std::fprintf(stderr, "DTYPE must be 0/f32, 1/bf16 or 2/f16, not '%s'\n", argv[7]);
      return 2;
    }
  }
  const bnorm_tensor_desc d{n, c, sp, nhwc ? BNORM_LAYOUT_NHWC : BNORM_LAYOUT_NCHW,
                            static_cast<bnorm_dtype>(dtype)};
  const size_t count = static_cast<size_t>(n * c * sp);
  // f32 buffers; 16-bit tensors use the first half of each as their elements.
  const size_t offset = argc > 8 ? static_cast<size_t>(std::atoll(argv[8])) : 0;
  AlignedFloats x(count, offset), y(count, offset), dy(count, offset), dx(count, offset),
      z(count, offset), dz(count, offset);
  std::vector<float> gamma(c, 1.1f), beta(c, 0.1f), rmean(c), rvar(c, 1.0f), smean(c), sinv(c),
      dgamma(c), dbeta(c);
  std::vector<double> mean(c), m2(c);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (float& v : x) v = 3.0f + normal(rng);
  for (float& v : dy) v = normal(rng);
  for (float& v : z) v = normal(rng);
  if (dtype != 0) {
    for (AlignedFloats* t : {&x, &dy, &z}) {
      auto* h = reinterpret_cast<uint16_t*>(t->data());
      for (size_t i = 0; i < count; ++i) {
        uint32_t u;
        std::memcpy(&u, &(*t)[i], 4);
        h[i] = dtype == 1 ? static_cast<uint16_t>(u >> 16)  // bf16 (truncated: fine here)
                          : static_cast<uint16_t>(0x3C00 ^ ((u >> 20) & 0x3FF));  // f16 in [1, 2)
      }
    }
  }
  bnorm_context* ctx = nullptr;
  if (bnorm_context_create(threads, &ctx) != BNORM_OK) return 1;
  const auto call = [&] {
    if (!std::strcmp(op, "train")) {
      return bnorm_forward_training(ctx, &d, x.data(), y.data(), gamma.data(), beta.data(), 1e-5f,
                                    0.1f, rmean.data(), rvar.data(), smean.data(), sinv.data());
    }
    if (!std::strcmp(op, "trainz")) {
      return bnorm_forward_training_ex(ctx, &d, x.data(), z.data(), y.data(), BNORM_ACT_RELU,
                                       gamma.data(), beta.data(), 1e-5f, 0.1f, rmean.data(),
                                       rvar.data(), smean.data(), sinv.data());
    }
    if (!std::strcmp(op, "backz")) {
      return bnorm_backward_ex(ctx, &d, x.data(), y.data(), dy.data(), dx.data(), dz.data(),
                               BNORM_ACT_RELU, gamma.data(), beta.data(), smean.data(), sinv.data(),
                               dgamma.data(), dbeta.data());
    }
    if (!std::strcmp(op, "stats")) return bnorm_stats(ctx, &d, x.data(), mean.data(), m2.data());
    if (!std::strcmp(op, "inf")) {
      return bnorm_forward_inference(ctx, &d, x.data(), y.data(), gamma.data(), beta.data(),
                                     smean.data(), rvar.data(), 1e-5f);
    }
    return bnorm_backward(ctx, &d, x.data(), dy.data(),
                          std::strcmp(op, "sums") != 0 ? dx.data() : nullptr, gamma.data(),
                          smean.data(), sinv.data(), dgamma.data(), dbeta.data());
  };
  // Statistics for inference and backward, y with ReLU zeros for backz's
  // mask, and a warm context.
  const bool relu = !std::strcmp(op, "backz");
  if (bnorm_forward_training_ex(ctx, &d, x.data(), relu ? z.data() : nullptr, y.data(),
                                relu ? BNORM_ACT_RELU : BNORM_ACT_NONE, gamma.data(), beta.data(),
                                1e-5f, 0.1f, rmean.data(), rvar.data(), smean.data(),
                                sinv.data()) != BNORM_OK ||
      call() != BNORM_OK) {
    std::fprintf(stderr, "bnorm call failed\n");
    return 1;
  }
  const char* evict_env = std::getenv("CALL_TIMER_EVICT_MIB");
  const size_t evict_floats =
      evict_env != nullptr ? static_cast<size_t>(std::atoll(evict_env)) << 18 : 0;
  AlignedFloats evict(evict_floats, 0);
  float evict_sink = 0.0f;  // read after the loop, so the reads stay
  const char* idle_env = std::getenv("CALL_TIMER_IDLE_US");
  const int64_t idle_us = idle_env != nullptr ? std::atoll(idle_env) : 0;
  const int calls =
      evict_floats != 0 || idle_us > 0
          ? 1
          : static_cast<int>(std::max<int64_t>(1, 20000000 / static_cast<int64_t>(count)));
  double best = 1e30;
  for (int rep = 0; rep < 15; ++rep) {
    if (idle_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(idle_us));
    if (evict_floats != 0) {  // one call, after the eviction
      float sum = 0.0f;
      for (size_t i = 0; i < evict_floats; i += 16) sum += evict[i];  // a line each
      evict_sink += sum;
    }
    // Warm: the clock around the whole loop, as before the cold mode.
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < calls; ++k) call();
    const std::chrono::duration<double, std::micro> t = std::chrono::steady_clock::now() - t0;
    best = std::min(best, t.count() / calls);
  }
  if (evict_sink != 0.0f) std::fprintf(stderr, "(eviction buffer not zero)\n");
  std::printf("%.2f\n", best);
  bnorm_context_destroy(ctx);
  return 0;
}
