// bnorm.hpp: a header-only C++17 wrapper over the C API of bnorm.h (and only
// over it: it adds no symbols to link against beyond libbnorm's).
//
//   bnorm::Context ctx(4);                          // RAII context, 4 threads
//   bnorm::Desc desc(32, 64, 56 * 56);              // NCHW f32 by default
//   bnorm::forward_training(ctx, desc, x, y, {gamma, beta}, 1e-5f, 0.1f,
//                           {running_mean, running_var}, {save_mean, save_invstd});
//
// x, y, ... are std::vector<T> (sizes checked) or raw pointers; per-channel
// arguments are std::vector<float>, float pointers or nullptr. Inputs take
// const data, outputs (y, dx, running and saved statistics, gradients) only
// non-const data. Neither binds a temporary vector: an argument object kept
// in a variable (bnorm::Affine a{std::vector<float>(c, 1.f), ...}) would
// point into a vector destroyed at the end of its declaration; passed
// straight to a call it would live long enough, but is refused alike.
//
// Every function throws bnorm::Error (carrying the bnorm_status) where the C
// function returns an error; as in C, nothing is written then. Sizes are
// checked where the caller passes std::vector: a buffer shorter than the
// descriptor says is BNORM_ERR_BAD_SHAPE, and an element type of another
// size than the descriptor's dtype (double, or float for bf16) is
// BNORM_ERR_BAD_ARGUMENT, before the C call.
#ifndef BNORM_BNORM_HPP_
#define BNORM_BNORM_HPP_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
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

// Whether T is a complete object type (sizeof(T) is known): pointers to void
// or to incomplete types are buffers of unknown element type.
template <typename T, typename = void>
struct IsComplete : std::false_type {};
template <typename T>
struct IsComplete<T, std::void_t<decltype(sizeof(T))>> : std::true_type {};

// A vector of `count` zeros the wrapper returns (statistics, folded
// constants): a count no vector can hold is BNORM_ERR_BAD_SHAPE, memory that
// cannot be had BNORM_ERR_OUT_OF_MEMORY, as the C API would say.
template <typename T>
std::vector<T> Zeros(int64_t count, const char* where) {
  if (count < 1 || static_cast<uint64_t>(count) > std::vector<T>().max_size()) {
    throw Error(BNORM_ERR_BAD_SHAPE, where);
  }
  try {
    return std::vector<T>(static_cast<std::size_t>(count));
  } catch (const std::bad_alloc&) {
    throw Error(BNORM_ERR_OUT_OF_MEMORY, where);
  }
}
}  // namespace detail

// Owns a bnorm_context (a thread pool and scratch memory). Movable, not
// copyable. Context() uses all cores; Context::Default() refers to the
// process-wide default context (NULL in C). A moved-from Context refers to
// nothing: calls given it throw BNORM_ERR_NULL_POINTER (not silently the
// default) until a Context is assigned to it.
class Context {
 public:
  explicit Context(int num_threads = 0) {
    detail::Check(bnorm_context_create(num_threads, &ctx_), "bnorm_context_create");
  }
  static Context Default() noexcept { return Context(nullptr); }
  ~Context() { bnorm_context_destroy(ctx_); }
  Context(Context&& other) noexcept
      : ctx_(std::exchange(other.ctx_, nullptr)),
        moved_from_(std::exchange(other.moved_from_, true)) {}
  Context& operator=(Context&& other) noexcept {
    if (this != &other) {
      bnorm_context_destroy(ctx_);
      ctx_ = std::exchange(other.ctx_, nullptr);
      moved_from_ = std::exchange(other.moved_from_, true);
    }
    return *this;
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // The threads calls on this context use (-1 for a moved-from Context).
  int num_threads() const noexcept { return moved_from_ ? -1 : bnorm_context_num_threads(ctx_); }
  // The C handle (NULL for the default context).
  const bnorm_context* get() const {
    if (moved_from_) throw Error(BNORM_ERR_NULL_POINTER, "bnorm::Context (moved from)");
    return ctx_;
  }

 private:
  explicit Context(std::nullptr_t) noexcept : ctx_(nullptr) {}
  bnorm_context* ctx_ = nullptr;
  bool moved_from_ = false;
};

// A tensor descriptor with the arithmetic callers need.
struct Desc {
  bnorm_tensor_desc d;

  Desc(int64_t n, int64_t c, int64_t spatial, bnorm_layout layout = BNORM_LAYOUT_NCHW,
       bnorm_dtype dtype = BNORM_DTYPE_F32)
      : d{n, c, spatial, layout, dtype} {}
  // n * c * spatial; -1 where a dimension is negative or the product
  // overflows (the C API rejects such a descriptor: BNORM_ERR_BAD_SHAPE).
  int64_t elements() const noexcept {
    constexpr int64_t kMax = (std::numeric_limits<int64_t>::max)();
    if (d.n < 0 || d.c < 0 || d.spatial < 0) return -1;
    if (d.c != 0 && d.n > kMax / d.c) return -1;
    const int64_t nc = d.n * d.c;
    if (d.spatial != 0 && nc > kMax / d.spatial) return -1;
    return nc * d.spatial;
  }
  std::size_t element_bytes() const noexcept { return d.dtype == BNORM_DTYPE_F32 ? 4 : 2; }
  // The bytes of one tensor; SIZE_MAX where elements() is -1 or the bytes
  // overflow (no vector is that long, so a vector argument is then too short).
  std::size_t bytes() const noexcept {
    const int64_t e = elements();
    if (e < 0 || static_cast<uint64_t>(e) > (std::numeric_limits<std::size_t>::max)() / 4) {
      return (std::numeric_limits<std::size_t>::max)();
    }
    return static_cast<std::size_t>(e) * element_bytes();
  }
  const bnorm_tensor_desc* get() const { return &d; }
};

// Optional per-channel arrays: a pointer or nullptr, or a vector (then its
// size is checked against c). Channels are read, ChannelsOut written.
template <typename F>
class BasicChannels {
 public:
  BasicChannels() = default;
  BasicChannels(std::nullptr_t) {}  // NOLINT: implicit by design
  BasicChannels(F* p) : p_(p) {}    // NOLINT
  template <typename V, typename = decltype(static_cast<F*>(std::declval<V&>().data()))>
  BasicChannels(V& v)  // NOLINT: a std::vector<float> (const for Channels)
      : p_(v.data()), size_(static_cast<int64_t>(v.size())) {}
  template <typename V, typename = std::enable_if_t<!std::is_lvalue_reference<V>::value>,
            typename = decltype(std::declval<V&>().data())>
  BasicChannels(V&& v) = delete;  // a temporary vector (see the top of this file)
  template <typename G, typename = std::enable_if_t<std::is_convertible<G*, F*>::value &&
                                                    !std::is_same<G, F>::value>>
  BasicChannels(const BasicChannels<G>& other)  // NOLINT: ChannelsOut reads as Channels
      : p_(other.p_), size_(other.size_) {}

  F* get(int64_t c, const char* where) const {
    if (size_ >= 0 && size_ < c) throw Error(BNORM_ERR_BAD_SHAPE, where);
    return p_;
  }

 private:
  template <typename G>
  friend class BasicChannels;
  F* p_ = nullptr;
  int64_t size_ = -1;  // unknown for raw pointers
};
using Channels = BasicChannels<const float>;
using ChannelsOut = BasicChannels<float>;

// Element buffers: raw pointers, or vectors whose byte size is checked.
// Buffer is read, BufferOut written. Where the element type is known (a
// typed pointer or vector), its size must be the descriptor's element size
// (float for f32, a 16-bit type such as uint16_t for bf16/f16; byte types
// are raw storage and pass), else BNORM_ERR_BAD_ARGUMENT. A vector is
// checked even when empty: an empty vector is not nullptr.
template <typename P>
class BasicBuffer {
 public:
  BasicBuffer(std::nullptr_t) {}  // NOLINT
  BasicBuffer(P* p) : p_(p) {}    // NOLINT: an untyped pointer
  template <typename T, typename = std::enable_if_t<std::is_convertible<T*, P*>::value &&
                                                    detail::IsComplete<T>::value>>
  BasicBuffer(T* p) : p_(p), element_(sizeof(T)) {}  // NOLINT: typed, so checked
  template <typename T, typename A, typename = std::enable_if_t<std::is_convertible<T*, P*>::value>>
  BasicBuffer(std::vector<T, A>& v)  // NOLINT
      : p_(v.data()), bytes_(v.size() * sizeof(T)), element_(sizeof(T)) {}
  template <typename T, typename A,
            typename = std::enable_if_t<std::is_convertible<const T*, P*>::value>>
  BasicBuffer(const std::vector<T, A>& v)  // NOLINT
      : p_(v.data()), bytes_(v.size() * sizeof(T)), element_(sizeof(T)) {}
  template <typename T, typename A>
  BasicBuffer(std::vector<T, A>&& v) = delete;  // a temporary (see the top of this file)
  template <typename T, typename A>
  BasicBuffer(const std::vector<T, A>&& v) = delete;

  P* get(const Desc& desc, const char* where) const {
    if (element_ > 1 && element_ != desc.element_bytes()) {
      throw Error(BNORM_ERR_BAD_ARGUMENT, where);
    }
    if (bytes_ != kUnknown && bytes_ < desc.bytes()) throw Error(BNORM_ERR_BAD_SHAPE, where);
    return p_;
  }

 private:
  static constexpr std::size_t kUnknown = ~std::size_t{0};
  P* p_ = nullptr;
  std::size_t bytes_ = kUnknown;  // known for vectors
  std::size_t element_ = 0;       // sizeof the element type; 0 unknown
};
using Buffer = BasicBuffer<const void>;
using BufferOut = BasicBuffer<void>;

struct Affine {
  Channels gamma, beta;  // nullptr: 1 and 0
};
struct Running {
  ChannelsOut mean, var;  // nullptr: not updated
};
// save_mean and save_invstd as the backward passes read them...
struct SavedIn {
  Channels mean, invstd;
};
// ...and as the forward passes write them (and pass them on to backward).
struct Saved {
  ChannelsOut mean, invstd;                            // nullptr: not written
  operator SavedIn() const { return {mean, invstd}; }  // NOLINT: implicit by design
};

inline void forward_training(const Context& ctx, const Desc& desc, Buffer x, BufferOut y,
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

inline void forward_inference(const Context& ctx, const Desc& desc, Buffer x, BufferOut y,
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
  ChannelsOut dgamma, dbeta;  // nullptr: not written
};

// Fused epilogue of the forward passes: y = act(BN(x) + z).
struct Fused {
  Buffer z = nullptr;  // residual like x, or nullptr
  bnorm_activation act = BNORM_ACT_NONE;
};

inline void forward_training(const Context& ctx, const Desc& desc, Buffer x, BufferOut y,
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

inline void forward_inference(const Context& ctx, const Desc& desc, Buffer x, BufferOut y,
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
                     BufferOut dx, BufferOut dz, bnorm_activation act, Channels gamma,
                     SavedIn saved, Grads grads = {}) {
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
inline void backward(const Context& ctx, const Desc& desc, Buffer x, Buffer dy, BufferOut dx,
                     Channels gamma, SavedIn saved, Grads grads = {}) {
  constexpr const char* kWhere = "bnorm_backward";
  const int64_t c = desc.d.c;
  detail::Check(bnorm_backward(ctx.get(), desc.get(), x.get(desc, kWhere), dy.get(desc, kWhere),
                               dx.get(desc, kWhere), gamma.get(c, kWhere),
                               saved.mean.get(c, kWhere), saved.invstd.get(c, kWhere),
                               grads.dgamma.get(c, kWhere), grads.dbeta.get(c, kWhere)),
                kWhere);
}

// Backward with frozen statistics (mean, invstd constants).
inline void backward_frozen(const Context& ctx, const Desc& desc, Buffer x, Buffer dy, BufferOut dx,
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
  std::vector<float> scale = detail::Zeros<float>(c, kWhere);
  std::vector<float> shift = detail::Zeros<float>(c, kWhere);
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
  std::vector<float> bias_out = detail::Zeros<float>(out_channels, kWhere);
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
  Statistics s;
  s.mean = detail::Zeros<double>(desc.d.c, kWhere);
  s.m2 = detail::Zeros<double>(desc.d.c, kWhere);
  detail::Check(bnorm_stats(ctx.get(), desc.get(), x.get(desc, kWhere), s.mean.data(),
                            s.m2.data()),
                kWhere);
  s.count = desc.d.n * desc.d.spatial;  // the C call checked that n * c * spatial fits
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
  }
  if (parts.size() > std::vector<double>().max_size() / c) throw Error(BNORM_ERR_BAD_SHAPE, kWhere);
  try {
    counts.reserve(parts.size());
    means.reserve(parts.size() * c);
    m2s.reserve(parts.size() * c);
  } catch (const std::bad_alloc&) {
    throw Error(BNORM_ERR_OUT_OF_MEMORY, kWhere);
  }
  for (const Statistics& part : parts) {  // no allocation: reserved
    counts.push_back(part.count);
    means.insert(means.end(), part.mean.begin(), part.mean.end());
    m2s.insert(m2s.end(), part.m2.begin(), part.m2.end());
  }
  Statistics total;
  total.mean = detail::Zeros<double>(static_cast<int64_t>(c), kWhere);
  total.m2 = detail::Zeros<double>(static_cast<int64_t>(c), kWhere);
  detail::Check(bnorm_stats_merge(static_cast<int64_t>(c), static_cast<int64_t>(parts.size()),
                                  counts.data(), means.data(), m2s.data(), &total.count,
                                  total.mean.data(), total.m2.data()),
                kWhere);
  return total;
}

// The forward pass of this part with the statistics of the whole batch.
inline void forward_apply(const Context& ctx, const Desc& desc, Buffer x, BufferOut y,
                          Affine affine, const Statistics& total, float eps, float momentum,
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
  GradientSums sums;
  sums.sum_dy = detail::Zeros<double>(desc.d.c, kWhere);
  sums.sum_dy_xmu = detail::Zeros<double>(desc.d.c, kWhere);
  detail::Check(bnorm_backward_reduce(ctx.get(), desc.get(), x.get(desc, kWhere),
                                      dy.get(desc, kWhere), save_mean.get(desc.d.c, kWhere),
                                      sums.sum_dy.data(), sums.sum_dy_xmu.data()),
                kWhere);
  return sums;
}

// The backward pass of a part given the sums of the whole batch
// (total_count values per channel); dgamma/dbeta are the whole batch's.
inline void backward_apply(const Context& ctx, const Desc& desc, Buffer x, Buffer dy, BufferOut dx,
                           Channels gamma, SavedIn saved, int64_t total_count,
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
