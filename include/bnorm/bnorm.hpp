// bnorm.hpp: a header-only C++17 wrapper over the C API of bnorm.h (and only
// over it: it adds no symbols to link against beyond libbnorm's).
//
//   bnorm::Context ctx(4);                          // RAII context, 4 threads
//   bnorm::Desc desc(32, 64, 56 * 56);              // NCHW f32 by default
//   bnorm::forward_training(ctx, desc, x, y, {gamma, beta}, 1e-5f, 0.1f,
//                           {running_mean, running_var}, {save_mean, save_invstd});
//
// x, y, ... are std::vector<T> (sizes checked) or raw pointers; per-channel
// arguments are std::vector<float>, float pointers or nullptr.
//
// Every function throws bnorm::Error (carrying the bnorm_status) where the C
// function returns an error; as in C, nothing is written then. Sizes are
// checked where the caller passes std::vector/spans: a buffer shorter than
// the descriptor says is BNORM_ERR_BAD_SHAPE, before the C call.
#ifndef BNORM_BNORM_HPP_
#define BNORM_BNORM_HPP_

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bnorm/bnorm.h"

namespace bnorm {

// A failed call: what() is bnorm_status_string(status) with the function name.
class Error : public std::runtime_error {
 public:
  Error(bnorm_status status, const char* where)
      : std::runtime_error(std::string(where) + ": " + bnorm_status_string(status)),
        status_(status) {}
  bnorm_status status() const noexcept { return status_; }

 private:
  bnorm_status status_;
};

namespace detail {
inline void Check(bnorm_status status, const char* where) {
  if (status != BNORM_OK) throw Error(status, where);
}
}  // namespace detail

// Owns a bnorm_context (a thread pool and scratch memory). Movable, not
// copyable. Context() uses all cores; a default-constructed Context::Default()
// refers to the process-wide default context (NULL in C).
class Context {
 public:
  explicit Context(int num_threads = 0) {
    detail::Check(bnorm_context_create(num_threads, &ctx_), "bnorm_context_create");
  }
  static Context Default() noexcept { return Context(nullptr); }
  ~Context() { bnorm_context_destroy(ctx_); }
  Context(Context&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}
  Context& operator=(Context&& other) noexcept {
    if (this != &other) {
      bnorm_context_destroy(ctx_);
      ctx_ = std::exchange(other.ctx_, nullptr);
    }
    return *this;
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int num_threads() const noexcept { return bnorm_context_num_threads(ctx_); }
  const bnorm_context* get() const noexcept { return ctx_; }

 private:
  explicit Context(std::nullptr_t) noexcept : ctx_(nullptr) {}
  bnorm_context* ctx_ = nullptr;
};

// A tensor descriptor with the arithmetic callers need.
struct Desc {
  bnorm_tensor_desc d;

  Desc(int64_t n, int64_t c, int64_t spatial, bnorm_layout layout = BNORM_LAYOUT_NCHW,
       bnorm_dtype dtype = BNORM_DTYPE_F32)
      : d{n, c, spatial, layout, dtype} {}
  int64_t elements() const { return d.n * d.c * d.spatial; }
  std::size_t element_bytes() const { return d.dtype == BNORM_DTYPE_F32 ? 4 : 2; }
  std::size_t bytes() const { return static_cast<std::size_t>(elements()) * element_bytes(); }
  const bnorm_tensor_desc* get() const { return &d; }
};

// Optional per-channel arrays: a pointer or nullptr, or a vector (then its
// size is checked against c).
class Channels {
 public:
  Channels() = default;
  Channels(std::nullptr_t) {}                      // NOLINT: implicit by design
  Channels(const float* p) : p_(const_cast<float*>(p)) {}  // NOLINT
  Channels(float* p) : p_(p) {}                    // NOLINT
  Channels(const std::vector<float>& v)            // NOLINT
      : p_(const_cast<float*>(v.data())), size_(static_cast<int64_t>(v.size())) {}
  Channels(std::vector<float>& v) : p_(v.data()), size_(static_cast<int64_t>(v.size())) {}  // NOLINT

  float* get(int64_t c, const char* where) const {
    if (size_ >= 0 && size_ < c) throw Error(BNORM_ERR_BAD_SHAPE, where);
    return p_;
  }

 private:
  float* p_ = nullptr;
  int64_t size_ = -1;  // unknown for raw pointers
};

// Element buffers: raw pointers, or vectors whose byte size is checked.
class Buffer {
 public:
  Buffer(std::nullptr_t) {}             // NOLINT
  Buffer(void* p) : p_(p) {}            // NOLINT
  Buffer(const void* p) : p_(const_cast<void*>(p)) {}  // NOLINT
  template <typename T>
  Buffer(std::vector<T>& v) : p_(v.data()), bytes_(v.size() * sizeof(T)) {}  // NOLINT
  template <typename T>
  Buffer(const std::vector<T>& v)  // NOLINT
      : p_(const_cast<T*>(v.data())), bytes_(v.size() * sizeof(T)) {}

  void* get(const Desc& desc, const char* where) const {
    if (p_ != nullptr && bytes_ != kUnknown && bytes_ < desc.bytes()) {
      throw Error(BNORM_ERR_BAD_SHAPE, where);
    }
    return p_;
  }

 private:
  static constexpr std::size_t kUnknown = ~std::size_t{0};
  void* p_ = nullptr;
  std::size_t bytes_ = kUnknown;
};

struct Affine {
  Channels gamma, beta;  // nullptr: 1 and 0
};
struct Running {
  Channels mean, var;  // nullptr: not updated
};
struct Saved {
  Channels mean, invstd;  // nullptr: not written
};

inline void forward_training(const Context& ctx, const Desc& desc, Buffer x, Buffer y,
                             Affine affine, float eps, float momentum, Running running = {},
                             Saved saved = {}) {
  constexpr const char* kWhere = "bnorm_forward_training";
  const int64_t c = desc.d.c;
  detail::Check(bnorm_forward_training(ctx.get(), desc.get(), x.get(desc, kWhere),
                                       y.get(desc, kWhere), affine.gamma.get(c, kWhere),
                                       affine.beta.get(c, kWhere), eps, momentum,
                                       running.mean.get(c, kWhere), running.var.get(c, kWhere),
                                       saved.mean.get(c, kWhere), saved.invstd.get(c, kWhere)),
                kWhere);
}

inline void forward_inference(const Context& ctx, const Desc& desc, Buffer x, Buffer y,
                              Affine affine, Channels mean, Channels var, float eps) {
  constexpr const char* kWhere = "bnorm_forward_inference";
  const int64_t c = desc.d.c;
  detail::Check(bnorm_forward_inference(ctx.get(), desc.get(), x.get(desc, kWhere),
                                        y.get(desc, kWhere), affine.gamma.get(c, kWhere),
                                        affine.beta.get(c, kWhere), mean.get(c, kWhere),
                                        var.get(c, kWhere), eps),
                kWhere);
}

struct Grads {
  Channels dgamma, dbeta;  // nullptr: not written
};

// Fused epilogue of the forward passes: y = act(BN(x) + z).
struct Fused {
  Buffer z = nullptr;  // residual like x, or nullptr
  bnorm_activation act = BNORM_ACT_NONE;
};

inline void forward_training(const Context& ctx, const Desc& desc, Buffer x, Buffer y,
                             Fused fused, Affine affine, float eps, float momentum,
                             Running running = {}, Saved saved = {}) {
  constexpr const char* kWhere = "bnorm_forward_training_ex";
  const int64_t c = desc.d.c;
  detail::Check(bnorm_forward_training_ex(
                    ctx.get(), desc.get(), x.get(desc, kWhere), fused.z.get(desc, kWhere),
                    y.get(desc, kWhere), fused.act, affine.gamma.get(c, kWhere),
                    affine.beta.get(c, kWhere), eps, momentum, running.mean.get(c, kWhere),
                    running.var.get(c, kWhere), saved.mean.get(c, kWhere),
                    saved.invstd.get(c, kWhere)),
                kWhere);
}

inline void forward_inference(const Context& ctx, const Desc& desc, Buffer x, Buffer y,
                              Fused fused, Affine affine, Channels mean, Channels var, float eps) {
  constexpr const char* kWhere = "bnorm_forward_inference_ex";
  const int64_t c = desc.d.c;
  detail::Check(bnorm_forward_inference_ex(ctx.get(), desc.get(), x.get(desc, kWhere),
                                           fused.z.get(desc, kWhere), y.get(desc, kWhere),
                                           fused.act, affine.gamma.get(c, kWhere),
                                           affine.beta.get(c, kWhere), mean.get(c, kWhere),
                                           var.get(c, kWhere), eps),
                kWhere);
}

// Backward of the fused forward: y is its output (needed for ReLU), dz
// receives the residual's gradient (or nullptr); dx may be nullptr.
inline void backward(const Context& ctx, const Desc& desc, Buffer x, Buffer y, Buffer dy,
                     Buffer dx, Buffer dz, bnorm_activation act, Channels gamma, Saved saved,
                     Grads grads = {}) {
  constexpr const char* kWhere = "bnorm_backward_ex";
  const int64_t c = desc.d.c;
  detail::Check(bnorm_backward_ex(ctx.get(), desc.get(), x.get(desc, kWhere), y.get(desc, kWhere),
                                  dy.get(desc, kWhere), dx.get(desc, kWhere),
                                  dz.get(desc, kWhere), act, gamma.get(c, kWhere), nullptr,
                                  saved.mean.get(c, kWhere), saved.invstd.get(c, kWhere),
                                  grads.dgamma.get(c, kWhere), grads.dbeta.get(c, kWhere)),
                kWhere);
}

// Training-mode backward; dx may be nullptr (parameter gradients only).
inline void backward(const Context& ctx, const Desc& desc, Buffer x, Buffer dy, Buffer dx,
                     Channels gamma, Saved saved, Grads grads = {}) {
  constexpr const char* kWhere = "bnorm_backward";
  const int64_t c = desc.d.c;
  detail::Check(bnorm_backward(ctx.get(), desc.get(), x.get(desc, kWhere), dy.get(desc, kWhere),
                               dx.get(desc, kWhere), gamma.get(c, kWhere),
                               saved.mean.get(c, kWhere), saved.invstd.get(c, kWhere),
                               grads.dgamma.get(c, kWhere), grads.dbeta.get(c, kWhere)),
                kWhere);
}

// Backward with frozen statistics (mean, invstd constants).
inline void backward_frozen(const Context& ctx, const Desc& desc, Buffer x, Buffer dy, Buffer dx,
                            Channels gamma, Channels mean, Channels invstd, Grads grads = {}) {
  constexpr const char* kWhere = "bnorm_backward_frozen";
  const int64_t c = desc.d.c;
  detail::Check(bnorm_backward_frozen(ctx.get(), desc.get(), x.get(desc, kWhere),
                                      dy.get(desc, kWhere), dx.get(desc, kWhere),
                                      gamma.get(c, kWhere), mean.get(c, kWhere),
                                      invstd.get(c, kWhere), grads.dgamma.get(c, kWhere),
                                      grads.dbeta.get(c, kWhere)),
                kWhere);
}

// Per-channel scale and shift of a frozen batch norm (y = x * scale + shift).
inline std::pair<std::vector<float>, std::vector<float>> fold(int64_t c, Affine affine,
                                                              Channels mean, Channels var,
                                                              float eps) {
  constexpr const char* kWhere = "bnorm_fold";
  if (c < 1) throw Error(BNORM_ERR_BAD_SHAPE, kWhere);
  std::vector<float> scale(static_cast<std::size_t>(c)), shift(static_cast<std::size_t>(c));
  detail::Check(bnorm_fold(c, affine.gamma.get(c, kWhere), affine.beta.get(c, kWhere),
                           mean.get(c, kWhere), var.get(c, kWhere), eps, scale.data(),
                           shift.data()),
                kWhere);
  return {std::move(scale), std::move(shift)};
}

// Folds a frozen batch norm into the preceding layer's weights and bias, in
// place (bias is resized to out_channels if it was empty: a layer without
// bias gets one).
inline void fold_into_weights(bnorm_weight_layout layout, int64_t out_channels,
                              std::vector<float>& weights, std::vector<float>& bias,
                              Affine affine, Channels mean, Channels var, float eps) {
  constexpr const char* kWhere = "bnorm_fold_into_weights";
  if (out_channels < 1 || weights.empty() ||
      weights.size() % static_cast<std::size_t>(out_channels) != 0 ||
      (!bias.empty() && bias.size() != static_cast<std::size_t>(out_channels))) {
    throw Error(BNORM_ERR_BAD_SHAPE, kWhere);
  }
  const int64_t per_output = static_cast<int64_t>(weights.size()) / out_channels;
  const bool had_bias = !bias.empty();
  std::vector<float> bias_out(static_cast<std::size_t>(out_channels));
  detail::Check(bnorm_fold_into_weights(layout, out_channels, per_output, weights.data(),
                                        had_bias ? bias.data() : nullptr, weights.data(),
                                        bias_out.data(), affine.gamma.get(out_channels, kWhere),
                                        affine.beta.get(out_channels, kWhere),
                                        mean.get(out_channels, kWhere),
                                        var.get(out_channels, kWhere), eps),
                kWhere);
  bias = std::move(bias_out);
}

// ---- Split statistics: synchronized batch norm over any transport ----
// (bnorm.h, "Split statistics"; libbnorm_mpi does all of it over MPI.)

// Per-channel statistics of a part of a batch: its count (n*spatial) and, per
// channel, the mean and M2 (sum of squared deviations) in double.
struct Statistics {
  int64_t count = 0;
  std::vector<double> mean, m2;
};

// Statistics of this part (desc.d.n may be 0; x may then be nullptr).
inline Statistics stats(const Context& ctx, const Desc& desc, Buffer x) {
  constexpr const char* kWhere = "bnorm_stats";
  if (desc.d.c < 1) throw Error(BNORM_ERR_BAD_SHAPE, kWhere);
  Statistics s;
  s.count = desc.d.n * desc.d.spatial;
  s.mean.resize(static_cast<std::size_t>(desc.d.c));
  s.m2.resize(static_cast<std::size_t>(desc.d.c));
  detail::Check(bnorm_stats(ctx.get(), desc.get(), x.get(desc, kWhere), s.mean.data(),
                            s.m2.data()),
                kWhere);
  return s;
}

// Chan's merge of parts, left to right in the order given (all with the same
// channel count).
inline Statistics merge(const std::vector<Statistics>& parts) {
  constexpr const char* kWhere = "bnorm_stats_merge";
  if (parts.empty() || parts[0].mean.empty()) throw Error(BNORM_ERR_BAD_SHAPE, kWhere);
  const std::size_t c = parts[0].mean.size();
  std::vector<int64_t> counts;
  std::vector<double> means, m2s;
  for (const Statistics& part : parts) {
    if (part.mean.size() != c || part.m2.size() != c) throw Error(BNORM_ERR_BAD_SHAPE, kWhere);
    counts.push_back(part.count);
    means.insert(means.end(), part.mean.begin(), part.mean.end());
    m2s.insert(m2s.end(), part.m2.begin(), part.m2.end());
  }
  Statistics total;
  total.mean.resize(c);
  total.m2.resize(c);
  detail::Check(bnorm_stats_merge(static_cast<int64_t>(c), static_cast<int64_t>(parts.size()),
                                  counts.data(), means.data(), m2s.data(), &total.count,
                                  total.mean.data(), total.m2.data()),
                kWhere);
  return total;
}

// The forward pass of this part with the statistics of the whole batch.
inline void forward_apply(const Context& ctx, const Desc& desc, Buffer x, Buffer y, Affine affine,
                          const Statistics& total, float eps, float momentum,
                          Running running = {}, Saved saved = {}) {
  constexpr const char* kWhere = "bnorm_forward_apply";
  const int64_t c = desc.d.c;
  if (static_cast<int64_t>(total.mean.size()) < c || static_cast<int64_t>(total.m2.size()) < c) {
    throw Error(BNORM_ERR_BAD_SHAPE, kWhere);
  }
  detail::Check(bnorm_forward_apply(ctx.get(), desc.get(), x.get(desc, kWhere),
                                    y.get(desc, kWhere), affine.gamma.get(c, kWhere),
                                    affine.beta.get(c, kWhere), total.count, total.mean.data(),
                                    total.m2.data(), eps, momentum, running.mean.get(c, kWhere),
                                    running.var.get(c, kWhere), saved.mean.get(c, kWhere),
                                    saved.invstd.get(c, kWhere)),
                kWhere);
}

// Backward sums of a part, per channel: sum(dy) and sum(dy * (x - mean)).
// Sum them over the parts (elementwise) for backward_apply.
struct GradientSums {
  std::vector<double> sum_dy, sum_dy_xmu;
};

inline GradientSums backward_reduce(const Context& ctx, const Desc& desc, Buffer x, Buffer dy,
                                    Channels save_mean) {
  constexpr const char* kWhere = "bnorm_backward_reduce";
  if (desc.d.c < 1) throw Error(BNORM_ERR_BAD_SHAPE, kWhere);
  GradientSums sums;
  sums.sum_dy.resize(static_cast<std::size_t>(desc.d.c));
  sums.sum_dy_xmu.resize(static_cast<std::size_t>(desc.d.c));
  detail::Check(bnorm_backward_reduce(ctx.get(), desc.get(), x.get(desc, kWhere),
                                      dy.get(desc, kWhere), save_mean.get(desc.d.c, kWhere),
                                      sums.sum_dy.data(), sums.sum_dy_xmu.data()),
                kWhere);
  return sums;
}

// The backward pass of a part given the sums of the whole batch
// (total_count values per channel); dgamma/dbeta are the whole batch's.
inline void backward_apply(const Context& ctx, const Desc& desc, Buffer x, Buffer dy, Buffer dx,
                           Channels gamma, Saved saved, int64_t total_count,
                           const GradientSums& total, Grads grads = {}) {
  constexpr const char* kWhere = "bnorm_backward_apply";
  const int64_t c = desc.d.c;
  if (static_cast<int64_t>(total.sum_dy.size()) < c ||
      static_cast<int64_t>(total.sum_dy_xmu.size()) < c) {
    throw Error(BNORM_ERR_BAD_SHAPE, kWhere);
  }
  detail::Check(bnorm_backward_apply(ctx.get(), desc.get(), x.get(desc, kWhere),
                                     dy.get(desc, kWhere), dx.get(desc, kWhere),
                                     gamma.get(c, kWhere), saved.mean.get(c, kWhere),
                                     saved.invstd.get(c, kWhere), total_count,
                                     total.sum_dy.data(), total.sum_dy_xmu.data(),
                                     grads.dgamma.get(c, kWhere), grads.dbeta.get(c, kWhere)),
                kWhere);
}

}  // namespace bnorm


#endif  // BNORM_BNORM_HPP_
