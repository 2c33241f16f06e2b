// bnorm_bench: times every entry point on typical CNN shapes, in both layouts,
// against a parallel copy of the same bytes measured in the same loop
// (interleaved, same thread count), and reports the ratio.
//
//   bnorm_bench [--threads=N] [--target=AVX2 | --all-targets] [--no-onednn]
//               [--dtypes=f32,bf16,f16 | --dtypes=all] [--hugepages]
//               [--shapes=NxCxHxW,...] [google benchmark flags]
//
// --shapes replaces the suite's shapes (kShapes) with your own, e.g. the
// batch-1 activations of an inference engine: --shapes=1x256x14x14,1x64x56x56.
//
// bnorm rows are named bnorm_<target> for f32 and bnorm_<target>_bf16 /
// bnorm_<target>_f16 for 16-bit storage (their copy moves the same, halved,
// bytes).
//
// Built with oneDNN (libdnnl-dev) when available: each shape also times
// oneDNN's plain-layout path and (NCHW rows) its blocked nChw16c path.
//
// BNORM_TARGET in the environment also picks the target. Counters: GB/s of the
// bytes the operation must move (training/inference: one read of x and one
// write of y; backward: reads of x and dy, a write of dx; the _add_relu ops
// (the _ex entry points with a residual z and ReLU) add a read of z, and
// backward reads y and writes dz) and ratio_to_copy =
// time of the operation / time of copying the same bytes, where the copy is the
// faster of memcpy and a Highway streaming-store copy, each split over the
// same threads and timed in alternate iterations of the same loop.
#include <benchmark/benchmark.h>
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <sys/mman.h>
#include <unistd.h>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bnorm/bnorm.h"
#include "stream_copy.h"

#ifdef BNORM_BENCH_HAVE_DNNL
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace {

int g_threads = 0;  // 0: all cores
std::vector<bnorm_dtype> g_dtypes = {BNORM_DTYPE_F32};
bool g_onednn = true;  // time oneDNN too when built with it (--no-onednn to skip)
bnorm_context* g_ctx = nullptr;
tbb::task_arena* g_arena = nullptr;

// kSplitTraining/kSplitBackward: the same passes through the split-statistics
// API of synchronized batch norm (bnorm_stats -> bnorm_stats_merge ->
// bnorm_forward_apply; bnorm_backward_reduce -> bnorm_backward_apply), with
// no exchange in between: what the split costs over the fused call.
// kAddRelu*: the fused epilogue of a ResNet block (the _ex entry points with a
// residual z and BNORM_ACT_RELU; backward writes dx and dz from the mask of y).
enum class Op {
  kTraining,
  kInference,
  kBackward,
  kSplitTraining,
  kSplitBackward,
  kAddReluTraining,
  kAddReluInference,
  kAddReluBackward
};

// What runs: bnorm on a target, or oneDNN on its plain layout (what users with
// NCHW/NHWC data get) or on its blocked nChw16c layout (its fastest path; the
// data are already blocked, the reorders are not timed).
enum class Impl { kBnorm, kOneDnnPlain, kOneDnnBlocked };

struct BenchShape {
  int64_t n, c, h, w;
};

const BenchShape kShapes[] = {
    {32, 64, 56, 56},  {32, 256, 56, 56},  {32, 2048, 7, 7}, {1, 64, 112, 112},  {256, 3, 224, 224},
    {8, 32, 128, 128}, {64, 1024, 14, 14}, {2, 8, 512, 512}, {4096, 1024, 1, 1},
};
std::vector<BenchShape> g_shapes(std::begin(kShapes), std::end(kShapes));

// The comma-separated items of a flag's value ("a,b,,c": a, b, "", c).
std::vector<std::string> SplitCommas(const char* text) {
  std::vector<std::string> items;
  const std::string list = std::string(text) + ",";
  for (size_t at = 0, comma; (comma = list.find(',', at)) != std::string::npos; at = comma + 1) {
    items.push_back(list.substr(at, comma - at));
  }
  return items;
}

// Parses "NxCxHxW[,NxCxHxW...]" into shapes; false if any is malformed or
// has a dimension outside [1, 2^20] or more than 2^31 elements.
bool ParseShapes(const char* text, std::vector<BenchShape>* out) {
  out->clear();
  for (const std::string& item : SplitCommas(text)) {
    long long d[4];
    int used = 0;
    const int got =
        std::sscanf(item.c_str(), "%lldx%lldx%lldx%lld%n", &d[0], &d[1], &d[2], &d[3], &used);
    if (got != 4 || used != static_cast<int>(item.size())) return false;
    long long elements = 1;
    for (long long v : d) {
      if (v < 1 || v > (1 << 20)) return false;
      elements *= v;
      if (elements > (1ll << 31)) return false;
    }
    out->push_back(BenchShape{d[0], d[1], d[2], d[3]});
  }
  return !out->empty();
}

// One thread's piece of a copy split into `pieces` contiguous parts.
void CopyPiece(const float* src, float* dst, size_t n, size_t k, size_t pieces, bool streaming) {
  const size_t begin = n * k / pieces, end = n * (k + 1) / pieces;
  if (streaming) {
    bnorm_bench::StreamCopy(src + begin, dst + begin, end - begin);
  } else {
    std::memcpy(dst + begin, src + begin, (end - begin) * sizeof(float));
  }
}

// A copy split over the benchmark's threads (one contiguous piece each): the
// floor bnorm is measured against. streaming: Highway non-temporal copy;
// otherwise memcpy. It runs on the thread pool of the implementation it is
// interleaved with (openmp: oneDNN's), so the copy never competes with that
// pool's workers, which spin for a while after each call: on 2 cores,
// libgomp's spinning threads halved a TBB copy's bandwidth and made oneDNN's
// ratios look up to 1.7x better than they were.
void ParallelCopy(const float* src, float* dst, size_t n, bool streaming, bool openmp) {
  const size_t pieces = static_cast<size_t>(bnorm_context_num_threads(g_ctx));
#ifdef BNORM_BENCH_HAVE_DNNL
  if (openmp) {
    const long long count = static_cast<long long>(pieces);
#pragma omp parallel for schedule(static, 1) num_threads(static_cast <int>(pieces))
    for (long long k = 0; k < count; ++k) {
      CopyPiece(src, dst, n, static_cast<size_t>(k), pieces, streaming);
    }
    return;
  }
#else
  (void)openmp;
#endif
  g_arena->execute([&] {
    tbb::parallel_for(
        tbb::blocked_range<size_t>(0, pieces, 1),
        [&](const tbb::blocked_range<size_t>& r) {
          for (size_t k = r.begin(); k != r.end(); ++k)
            CopyPiece(src, dst, n, k, pieces, streaming);
        },
        tbb::static_partitioner());
  });
}

#ifdef BNORM_BENCH_HAVE_DNNL
// One oneDNN batch normalization primitive ready to run on its own buffers.
class OneDnnBatchNorm {
 public:
  OneDnnBatchNorm(Op op, int64_t n, int64_t c, int64_t h, int64_t w, bool nhwc, bool blocked)
      : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    using tag = dnnl::memory::format_tag;
    const tag fmt = blocked ? tag::nChw16c : (nhwc ? tag::nhwc : tag::nchw);
    const dnnl::memory::desc md({n, c, h, w}, dnnl::memory::data_type::f32, fmt);
    // use_scale_shift (one 2 x C weights array): oneDNN 2.6's JIT kernels take
    // it; the separate use_scale | use_shift flags fall back to bnorm_ref.
    const auto scale_shift = dnnl::normalization_flags::use_scale_shift;
    auto flags = scale_shift;
    if (op == Op::kInference) flags = flags | dnnl::normalization_flags::use_global_stats;
    const auto kind = op == Op::kInference ? dnnl::prop_kind::forward_inference
                                           : dnnl::prop_kind::forward_training;
    const dnnl::batch_normalization_forward::primitive_desc fwd_pd(
        dnnl::batch_normalization_forward::desc(kind, md, 1e-5f, flags), engine_);
    src_ = dnnl::memory(md, engine_);
    dst_ = dnnl::memory(md, engine_);
    mean_ = dnnl::memory(fwd_pd.mean_desc(), engine_);
    var_ = dnnl::memory(fwd_pd.variance_desc(), engine_);
    scale_shift_ = dnnl::memory(fwd_pd.weights_desc(), engine_);
    Fill(src_, 0.5f);
    Fill(dst_, 0.0f);
    Fill(mean_, 0.0f);
    Fill(var_, 1.0f);
    Fill(scale_shift_, 1.5f);
    args_ = {{DNNL_ARG_SRC, src_},
             {DNNL_ARG_DST, dst_},
             {DNNL_ARG_MEAN, mean_},
             {DNNL_ARG_VARIANCE, var_},
             {DNNL_ARG_SCALE_SHIFT, scale_shift_}};
    if (op != Op::kBackward) {
      primitive_ = dnnl::batch_normalization_forward(fwd_pd);
      return;
    }
    const dnnl::batch_normalization_backward::primitive_desc bwd_pd(
        dnnl::batch_normalization_backward::desc(dnnl::prop_kind::backward, md, md, 1e-5f,
                                                 scale_shift),
        engine_, fwd_pd);
    diff_dst_ = dnnl::memory(md, engine_);
    diff_src_ = dnnl::memory(md, engine_);
    diff_scale_shift_ = dnnl::memory(bwd_pd.diff_weights_desc(), engine_);
    Fill(diff_dst_, 0.125f);
    Fill(diff_src_, 0.0f);
    args_ = {{DNNL_ARG_SRC, src_},
             {DNNL_ARG_MEAN, mean_},
             {DNNL_ARG_VARIANCE, var_},
             {DNNL_ARG_DIFF_DST, diff_dst_},
             {DNNL_ARG_SCALE_SHIFT, scale_shift_},
             {DNNL_ARG_DIFF_SRC, diff_src_},
             {DNNL_ARG_DIFF_SCALE_SHIFT, diff_scale_shift_}};
    primitive_ = dnnl::batch_normalization_backward(bwd_pd);
  }

  void Run() {
    primitive_.execute(stream_, args_);
    stream_.wait();
  }

 private:
  static void Fill(const dnnl::memory& m, float value) {
    float* p = static_cast<float*>(m.get_data_handle());
    const size_t count = m.get_desc().get_size() / sizeof(float);
    for (size_t i = 0; i < count; ++i) p[i] = value + static_cast<float>(i % 7) * 0.1f;
  }

  dnnl::engine engine_;
  dnnl::stream stream_;
  dnnl::memory src_, dst_, mean_, var_, scale_shift_, diff_dst_, diff_src_, diff_scale_shift_;
  std::unordered_map<int, dnnl::memory> args_;
  dnnl::primitive primitive_;
};
#endif  // BNORM_BENCH_HAVE_DNNL

// Zeroed buffers on a 64-byte boundary, as framework allocators (PyTorch,
// oneDNN) place tensors: bnorm streams its outputs from aligned positions,
// and a fused backward streams dz with dx only where both share their
// alignment, which heap buffers of std::vector need not.
struct FreeBytes {
  void operator()(unsigned char* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<unsigned char[], FreeBytes>;

// With --hugepages, buffers of 2 MiB or more are 2 MiB-aligned and advised
// as transparent huge pages (MADV_HUGEPAGE: for systems whose THP setting is
// "madvise"), the copies' and the operations' alike.
bool g_hugepages = false;
constexpr size_t kHugePage = size_t{2} << 20;

AlignedBuffer AlignedZeros(size_t bytes) {
  const bool huge = g_hugepages && bytes >= kHugePage;
  const size_t align = huge ? kHugePage : 64;
  const size_t size = (bytes + align - 1) / align * align;
  AlignedBuffer buffer(static_cast<unsigned char*>(std::aligned_alloc(align, size)));
  if (buffer == nullptr) std::abort();
  if (huge) madvise(buffer.get(), size, MADV_HUGEPAGE);  // advice only: failure is harmless
  std::memset(buffer.get(), 0, bytes);
  return buffer;
}

// The 16-bit pattern of f, truncated (f16: magnitudes below 2^-14 flushed to
// zero, above 65504 clamped to it): benchmark data only, built without a
// compiler _Float16 (clang 14 has none on x86).
uint16_t Narrow(float f, bnorm_dtype dtype) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if (dtype == BNORM_DTYPE_BF16) return static_cast<uint16_t>(u >> 16);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const int exponent = static_cast<int>((u >> 23) & 0xFFu) - 127;
  if (exponent < -14) return sign;
  if (exponent > 15) return static_cast<uint16_t>(sign | 0x7BFFu);
  return static_cast<uint16_t>(sign | ((exponent + 15) << 10) | ((u >> 13) & 0x3FFu));
}

// The input tensors of one element count and dtype: x, dy and a residual z
// (normal values), made once and kept for the rows that follow. Google
// Benchmark calls BM_Op once per repetition and more to size its runs, and
// drawing the values anew each time took most of a full suite run.
struct Inputs {
  size_t elems = 0;
  bnorm_dtype dtype = BNORM_DTYPE_F32;
  AlignedBuffer x, dy, z;
};

const Inputs& InputsFor(size_t elems, bnorm_dtype dtype) {
  static Inputs cached;
  if (cached.x != nullptr && cached.elems == elems && cached.dtype == dtype) return cached;
  cached = Inputs();  // the previous tensors go first
  const size_t esize = dtype == BNORM_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
  cached.elems = elems;
  cached.dtype = dtype;
  cached.x = AlignedZeros(elems * esize);
  cached.dy = AlignedZeros(elems * esize);
  cached.z = AlignedZeros(elems * esize);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.5f, 2.0f);
  AlignedBuffer* const tensors[] = {&cached.x, &cached.dy, &cached.z};
  for (size_t i = 0; i < elems; ++i) {
    for (AlignedBuffer* t : tensors) {
      const float v = normal(rng);
      if (dtype == BNORM_DTYPE_F32) {
        std::memcpy(&(*t)[i * esize], &v, esize);
      } else {
        const uint16_t h = Narrow(v, dtype);
        std::memcpy(&(*t)[i * esize], &h, esize);
      }
    }
  }
  return cached;
}

void BM_Op(benchmark::State& state, Op op, BenchShape shape, bnorm_layout layout,
           std::string target, Impl impl, bnorm_dtype dtype) {
  if (!target.empty() && bnorm_set_target(target.c_str()) != BNORM_OK) {
    state.SkipWithError("target not available");
    return;
  }
  const bnorm_tensor_desc desc{shape.n, shape.c, shape.h * shape.w, layout, dtype};
  const size_t elems = static_cast<size_t>(shape.n * shape.c * shape.h * shape.w);
  const size_t esize = dtype == BNORM_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
  const size_t C = static_cast<size_t>(shape.c);
  // Tensors as bytes of the element type.
  const Inputs& in = InputsFor(elems, dtype);
  const unsigned char* x = in.x.get();
  const unsigned char* dy = in.dy.get();
  const unsigned char* z = in.z.get();
  AlignedBuffer y = AlignedZeros(elems * esize), dx = AlignedZeros(elems * esize), dz;
  const bool add_relu =
      op == Op::kAddReluTraining || op == Op::kAddReluInference || op == Op::kAddReluBackward;
  if (op == Op::kAddReluBackward) dz = AlignedZeros(elems * esize);
  std::vector<float> gamma(C, 1.5f), beta(C, 0.25f), rm(C, 0.0f), rv(C, 1.0f), mean(C), invstd(C),
      dgamma(C), dbeta(C);
  // Statistics for inference and backward; y of the fused forward is the mask
  // of the fused backward (about half of it zero).
  bnorm_forward_training_ex(g_ctx, &desc, x, add_relu ? z : nullptr, y.get(),
                            add_relu ? BNORM_ACT_RELU : BNORM_ACT_NONE, gamma.data(), beta.data(),
                            1e-5f, 0.1f, rm.data(), rv.data(), mean.data(), invstd.data());
#ifdef BNORM_BENCH_HAVE_DNNL
  std::unique_ptr<OneDnnBatchNorm> onednn;
  if (impl != Impl::kBnorm) {
    onednn = std::make_unique<OneDnnBatchNorm>(op, shape.n, shape.c, shape.h, shape.w,
                                               layout == BNORM_LAYOUT_NHWC,
                                               impl == Impl::kOneDnnBlocked);
  }
#endif
  // The copy moves as many bytes as the operation must: 2 tensors for the
  // forward passes (3 with z), 3 for backward (as a copy of 1.5 tensors; 5
  // for the fused backward: x, y, dy read, dx, dz written).
  const size_t tensor_bytes = elems * esize;
  const size_t moved = tensor_bytes * [op] {
    switch (op) {
      case Op::kBackward:
      case Op::kSplitBackward:
      case Op::kAddReluTraining:
      case Op::kAddReluInference:
        return 3;
      case Op::kAddReluBackward:
        return 5;
      default:
        return 2;
    }
  }();
  std::vector<double> stat_a(C), stat_b(C);  // mean/m2 or sum_dy/sum_dy_xmu
  const int64_t values = desc.n * desc.spatial;
  const size_t copy_floats = moved / 2 / sizeof(float);
  AlignedBuffer copy_bytes[2] = {AlignedZeros(copy_floats * sizeof(float)),
                                 AlignedZeros(copy_floats * sizeof(float))};
  float* const copy_src = reinterpret_cast<float*>(copy_bytes[0].get());
  float* const copy_dst = reinterpret_cast<float*>(copy_bytes[1].get());
  std::fill(copy_src, copy_src + copy_floats, 1.0f);
  std::fill(copy_dst, copy_dst + copy_floats, 2.0f);

  // One call of the implementation being measured.
  const auto run = [&]() -> bnorm_status {
#ifdef BNORM_BENCH_HAVE_DNNL
    if (onednn) {
      onednn->Run();
      return BNORM_OK;
    }
#endif
    switch (op) {
      case Op::kTraining:
        return bnorm_forward_training(g_ctx, &desc, x, y.get(), gamma.data(), beta.data(), 1e-5f,
                                      0.1f, rm.data(), rv.data(), mean.data(), invstd.data());
      case Op::kInference:
        return bnorm_forward_inference(g_ctx, &desc, x, y.get(), gamma.data(), beta.data(),
                                       rm.data(), rv.data(), 1e-5f);
      case Op::kSplitTraining: {
        bnorm_status st = bnorm_stats(g_ctx, &desc, x, stat_a.data(), stat_b.data());
        int64_t total = 0;
        if (st == BNORM_OK) {
          st = bnorm_stats_merge(desc.c, 1, &values, stat_a.data(), stat_b.data(), &total,
                                 stat_a.data(), stat_b.data());
        }
        if (st != BNORM_OK) return st;
        return bnorm_forward_apply(g_ctx, &desc, x, y.get(), gamma.data(), beta.data(), total,
                                   stat_a.data(), stat_b.data(), 1e-5f, 0.1f, rm.data(), rv.data(),
                                   mean.data(), invstd.data());
      }
      case Op::kSplitBackward: {
        const bnorm_status st =
            bnorm_backward_reduce(g_ctx, &desc, x, dy, mean.data(), stat_a.data(), stat_b.data());
        if (st != BNORM_OK) return st;
        return bnorm_backward_apply(g_ctx, &desc, x, dy, dx.get(), gamma.data(), mean.data(),
                                    invstd.data(), values, stat_a.data(), stat_b.data(),
                                    dgamma.data(), dbeta.data());
      }
      case Op::kAddReluTraining:
        return bnorm_forward_training_ex(g_ctx, &desc, x, z, y.get(), BNORM_ACT_RELU, gamma.data(),
                                         beta.data(), 1e-5f, 0.1f, rm.data(), rv.data(),
                                         mean.data(), invstd.data());
      case Op::kAddReluInference:
        return bnorm_forward_inference_ex(g_ctx, &desc, x, z, y.get(), BNORM_ACT_RELU, gamma.data(),
                                          beta.data(), rm.data(), rv.data(), 1e-5f);
      case Op::kAddReluBackward:
        return bnorm_backward_ex(g_ctx, &desc, x, y.get(), dy, dx.get(), dz.get(), BNORM_ACT_RELU,
                                 gamma.data(), beta.data(), mean.data(), invstd.data(),
                                 dgamma.data(), dbeta.data());
      default:
        return bnorm_backward(g_ctx, &desc, x, dy, dx.get(), gamma.data(), mean.data(),
                              invstd.data(), dgamma.data(), dbeta.data());
    }
  };
  run();  // warm: scratch, threads, pages

  double op_seconds = 0, copy_seconds[2] = {0, 0};
  int64_t copies[2] = {0, 0};
  int64_t iteration = 0;
  for (auto _ : state) {
    const int kind = static_cast<int>(iteration++ % 2);  // 0 memcpy, 1 streaming
    auto t0 = std::chrono::steady_clock::now();
    ParallelCopy(copy_src, copy_dst, copy_floats, kind == 1, impl != Impl::kBnorm);
    auto t1 = std::chrono::steady_clock::now();
    const bnorm_status st = run();
    auto t2 = std::chrono::steady_clock::now();
    if (st != BNORM_OK) {
      state.SkipWithError(bnorm_status_string(st));
      break;
    }
    copy_seconds[kind] += std::chrono::duration<double>(t1 - t0).count();
    ++copies[kind];
    const double run = std::chrono::duration<double>(t2 - t1).count();
    op_seconds += run;
    state.SetIterationTime(run);
  }
  // The faster copy per iteration (each kind ran every other iteration).
  double copy_per_iter = 0;
  for (int k = 0; k < 2; ++k) {
    if (copies[k] == 0) continue;
    const double mean = copy_seconds[k] / static_cast<double>(copies[k]);
    if (copy_per_iter == 0 || mean < copy_per_iter) copy_per_iter = mean;
  }
  const double op_per_iter = op_seconds / static_cast<double>(std::max<int64_t>(1, iteration));
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(moved) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_GB/s"] =
      copy_per_iter > 0 ? static_cast<double>(moved) * 1e-9 / copy_per_iter : 0.0;
  state.counters["ratio_to_copy"] = copy_per_iter > 0 ? op_per_iter / copy_per_iter : 0.0;
  state.SetLabel(impl == Impl::kBnorm ? bnorm_active_target() : "oneDNN");
  state.counters["bytes_per_element"] = static_cast<double>(esize);
  if (!target.empty()) bnorm_set_target(nullptr);
}

const char* OpName(Op op) {
  switch (op) {
    case Op::kTraining:
      return "forward_training";
    case Op::kInference:
      return "forward_inference";
    case Op::kSplitTraining:
      return "forward_split";
    case Op::kSplitBackward:
      return "backward_split";
    case Op::kAddReluTraining:
      return "forward_training_add_relu";
    case Op::kAddReluInference:
      return "forward_inference_add_relu";
    case Op::kAddReluBackward:
      return "backward_add_relu";
    default:
      return "backward";
  }
}

// Names: op/NxCxHxW/layout/impl, impl = bnorm_<target>.
void RegisterAll(const std::vector<std::string>& targets) {
  for (const BenchShape& s : g_shapes) {
    for (bnorm_layout layout : {BNORM_LAYOUT_NCHW, BNORM_LAYOUT_NHWC}) {
      for (Op op :
           {Op::kInference, Op::kTraining, Op::kBackward, Op::kSplitTraining, Op::kSplitBackward,
            Op::kAddReluInference, Op::kAddReluTraining, Op::kAddReluBackward}) {
        for (const std::string& target : targets) {
          for (bnorm_dtype dtype : g_dtypes) {
            const char* suffix =
                dtype == BNORM_DTYPE_F32 ? "" : (dtype == BNORM_DTYPE_BF16 ? "_bf16" : "_f16");
            const std::string name =
                std::string(OpName(op)) + "/" + std::to_string(s.n) + "x" + std::to_string(s.c) +
                "x" + std::to_string(s.h) + "x" + std::to_string(s.w) +
                (layout == BNORM_LAYOUT_NCHW ? "/NCHW" : "/NHWC") + "/bnorm_" +
                (target.empty() ? std::string(bnorm_active_target()) : target) + suffix;
            benchmark::RegisterBenchmark(name.c_str(), BM_Op, op, s, layout, target, Impl::kBnorm,
                                         dtype)
                ->UseManualTime()
                ->Unit(benchmark::kMicrosecond);
          }
        }
#ifdef BNORM_BENCH_HAVE_DNNL
        // oneDNN has no fused residual add: no rows for the kAddRelu ops.
        if (g_onednn && (op == Op::kInference || op == Op::kTraining || op == Op::kBackward)) {
          const std::string base = std::string(OpName(op)) + "/" + std::to_string(s.n) + "x" +
                                   std::to_string(s.c) + "x" + std::to_string(s.h) + "x" +
                                   std::to_string(s.w) +
                                   (layout == BNORM_LAYOUT_NCHW ? "/NCHW" : "/NHWC");
          benchmark::RegisterBenchmark((base + "/onednn_plain").c_str(), BM_Op, op, s, layout,
                                       std::string(), Impl::kOneDnnPlain, BNORM_DTYPE_F32)
              ->UseManualTime()
              ->Unit(benchmark::kMicrosecond);
          if (layout == BNORM_LAYOUT_NCHW) {  // one blocked row per shape
            benchmark::RegisterBenchmark((base + "/onednn_nChw16c").c_str(), BM_Op, op, s, layout,
                                         std::string(), Impl::kOneDnnBlocked, BNORM_DTYPE_F32)
                ->UseManualTime()
                ->Unit(benchmark::kMicrosecond);
          }
        }
#endif
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
#ifdef BNORM_BENCH_HAVE_DNNL
  // oneDNN runs on OpenMP, bnorm and the copies on oneTBB: with OpenMP's
  // default spin-waiting the two pools fight for the cores between calls.
  // libgomp reads its policy when it loads, so set it and start again.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: go on as is
  }
#endif
  // Our own flags first; the rest go to Google Benchmark.
  std::vector<char*> rest;
  std::vector<std::string> targets = {""};  // "": the active target
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-onednn") == 0) {
      g_onednn = false;
    } else if (std::strcmp(argv[i], "--hugepages") == 0) {
      g_hugepages = true;
    } else if (std::strcmp(argv[i], "--all-targets") == 0) {
      targets.clear();
      for (int t = 0; t < bnorm_target_count(); ++t) targets.emplace_back(bnorm_target_name(t));
    } else if (std::strncmp(argv[i], "--dtypes=", 9) == 0) {
      g_dtypes.clear();
      for (const std::string& d : SplitCommas(argv[i] + 9)) {
        if (d == "f32" || d == "all") g_dtypes.push_back(BNORM_DTYPE_F32);
        if (d == "bf16" || d == "all") g_dtypes.push_back(BNORM_DTYPE_BF16);
        if (d == "f16" || d == "all") g_dtypes.push_back(BNORM_DTYPE_F16);
        if (d != "f32" && d != "bf16" && d != "f16" && d != "all") {
          std::fprintf(stderr, "bnorm_bench: unknown dtype %s (f32, bf16, f16, all)\n", d.c_str());
          return 2;
        }
      }
    } else if (std::strncmp(argv[i], "--shapes=", 9) == 0) {
      if (!ParseShapes(argv[i] + 9, &g_shapes)) {
        std::fprintf(stderr, "bnorm_bench: --shapes=%s: expected NxCxHxW[,NxCxHxW...]\n",
                     argv[i] + 9);
        return 2;
      }
    } else if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      g_threads = std::atoi(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--target=", 9) == 0) {
      if (bnorm_set_target(argv[i] + 9) != BNORM_OK) {
        std::fprintf(stderr, "bnorm_bench: target %s is not available here\n", argv[i] + 9);
        return 2;
      }
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (bnorm_context_create(g_threads, &g_ctx) != BNORM_OK) return 1;
  tbb::task_arena arena(bnorm_context_num_threads(g_ctx));
#ifdef BNORM_BENCH_HAVE_DNNL
  omp_set_num_threads(bnorm_context_num_threads(g_ctx));  // oneDNN's threads: the same count
  benchmark::AddCustomContext("onednn", "2.x plain + nChw16c");
#endif
  g_arena = &arena;
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::AddCustomContext("bnorm_target", bnorm_active_target());
  benchmark::AddCustomContext("bnorm_threads", std::to_string(bnorm_context_num_threads(g_ctx)));
  if (g_hugepages) benchmark::AddCustomContext("hugepages", "MADV_HUGEPAGE, 2 MiB-aligned");
  RegisterAll(targets);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  bnorm_context_destroy(g_ctx);
  return 0;
}
