/*
 * bnorm: batch normalization on the CPU.
 *
 * This header is the whole public interface of libbnorm. It is plain C (C99 and
 * C++), and every function is safe to call from any language that can call C.
 *
 * Semantics follow PyTorch's batch norm. For channel ch, over the m = n*spatial
 * values of that channel:
 *   mean   = sum(x) / m
 *   var    = sum((x - mean)^2) / m                       (biased)
 *   invstd = 1 / sqrt(var + eps), or 0 where var + eps == 0
 *   y      = (x - mean) * invstd * gamma + beta
 *   running_mean = (1 - momentum) * running_mean + momentum * mean
 *   running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)
 *
 * Statistics are float sums over short blocks of data shifted by the running
 * mean, each block closed exactly in double and merged with Chan's formula;
 * they never use E[x^2] - E[x]^2 on unshifted data, and a unit whose shift is
 * too far from its data is recomputed in double.
 *
 * General contract, for every function that takes a descriptor:
 *  - On any status other than BNORM_OK no output buffer is written (one
 *    exception: oneTBB's scheduler allocates its tasks with malloc; if that
 *    fails while the output pass runs, the call returns
 *    BNORM_ERR_OUT_OF_MEMORY with the outputs partly written).
 *  - NaN/Inf in the data propagate to the results of that channel only.
 *  - Element (i, ch, s) of a tensor is x[(i*c + ch)*spatial + s] in NCHW and
 *    x[(i*spatial + s)*c + ch] in NHWC. Per-channel arrays hold c floats.
 *  - Buffers need no particular alignment beyond that of their element type.
 *  - Aliasing: only the exact in-place pairs a function names are allowed
 *    (same start address, same size). Any other overlap of an output with any
 *    other buffer, per-channel arrays included, is BNORM_ERR_ALIAS.
 *  - For a given ISA target the results are bitwise identical whatever the
 *    number of threads, and whether calls run concurrently. Every thread of
 *    a call runs in the calling thread's floating-point mode (flush-to-zero,
 *    denormals-are-zero, rounding: MXCSR on x86), as a call on one thread
 *    does; calls made in other modes may give other bits. A NaN in y, dx,
 *    dz or a per-channel output of the calls that take a tensor is always
 *    the positive quiet NaN without payload (float 0x7FC00000, double
 *    0x7FF8000000000000, bf16 0x7FC0, f16 0x7E00); bnorm_stats_merge and
 *    the fold functions pass NaN operands on as the arithmetic leaves them.
 *  - When several error statuses apply, the one returned is the first in this
 *    order: NULL_POINTER (desc), BAD_SHAPE, BAD_ARGUMENT, NULL_POINTER (buffers),
 *    UNSUPPORTED, TOO_FEW_VALUES, ALIAS, OUT_OF_MEMORY.
 */
#ifndef BNORM_BNORM_H_
#define BNORM_BNORM_H_

#include <stdint.h>

#if defined(_WIN32)
#if defined(BNORM_BUILDING_LIBRARY)
#define BNORM_API __declspec(dllexport)
#else
#define BNORM_API __declspec(dllimport)
#endif
#else
#define BNORM_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define BNORM_VERSION_MAJOR 0
#define BNORM_VERSION_MINOR 1
#define BNORM_VERSION_PATCH 0

typedef enum bnorm_status {
  BNORM_OK = 0,
  BNORM_ERR_NULL_POINTER = 1, /* a required pointer is NULL */
  BNORM_ERR_BAD_SHAPE = 2,    /* n, c or spatial < 1, or the element count or byte size overflows */
  BNORM_ERR_BAD_ARGUMENT = 3, /* a value outside its documented range: eps < 0 or not finite;
                                 momentum outside [0,1] or NaN; an unknown layout, dtype,
                                 activation or weight layout; num_threads < 0; a negative
                                 count or M2, or total_count too small (split functions) */
  BNORM_ERR_ALIAS =
      4, /* an output overlaps another buffer, other than the exact in-place pairs allowed */
  BNORM_ERR_TOO_FEW_VALUES = 5, /* training with n*spatial < 2: the variance is undefined */
  BNORM_ERR_UNSUPPORTED =
      6, /* a valid request this build or CPU cannot serve (bnorm_set_target) */
  BNORM_ERR_OUT_OF_MEMORY = 7,
  BNORM_ERR_INTERNAL = 8,
  /* Returned by the collective functions of bnorm_mpi.h, on every rank: */
  BNORM_ERR_MISMATCH = 9, /* ranks passed descriptors (c, spatial, layout, dtype), eps or
                             momentum that disagree */
  BNORM_ERR_PEER = 10,    /* another rank's arguments were invalid (that rank returns its own
                             status) */
  BNORM_ERR_COMM = 11     /* an MPI call failed */
} bnorm_status;

typedef enum bnorm_layout { BNORM_LAYOUT_NCHW = 0, BNORM_LAYOUT_NHWC = 1 } bnorm_layout;
typedef enum bnorm_dtype {
  BNORM_DTYPE_F32 = 0,
  BNORM_DTYPE_BF16 = 1,
  BNORM_DTYPE_F16 = 2
} bnorm_dtype;

typedef struct bnorm_tensor_desc {
  int64_t n;           /* batch */
  int64_t c;           /* channels */
  int64_t spatial;     /* product of the spatial dims (H*W, D*H*W); 1 for (N, C) input */
  bnorm_layout layout; /* NCHW: x[(i*c + ch)*spatial + s]; NHWC: x[(i*spatial + s)*c + ch] */
  bnorm_dtype dtype;   /* element type of x, y, dy, dx (all the same); per-channel arrays
                          are always float. BF16/F16: elements are widened to float, all
                          arithmetic and accumulation is float/double, and outputs are
                          rounded once to nearest even (as PyTorch converts; every NaN is
                          0x7FC0 in bf16 and 0x7E00 in f16; f16 results beyond 65504
                          become +-Inf). The results are those of the f32 path on
                          the widened inputs, rounded. */
} bnorm_tensor_desc;

/* A context owns a thread pool (a oneTBB arena) and scratch memory that it
 * keeps between calls, so that calls do not allocate once warmed up. A context
 * may be used by several threads at once; each call in flight leases its own
 * scratch (it grows with the channel count), and what stays idle between
 * calls is at most 64 MiB, or a single buffer of any size: threads that
 * keep calling at once with very many channels are better served by a
 * context each. NULL wherever a context is taken means the process default
 * context, which uses all cores and is never destroyed. */
typedef struct bnorm_context bnorm_context;

/* Creates a context whose calls split their work for num_threads threads
 * (0 = all cores of the process's affinity mask; counts above
 * max(256, 4 x cores) are clamped to it, as bnorm_context_num_threads()
 * reports). At most one thread per core runs at a time. Results never depend
 * on the thread count.
 * Returns BNORM_ERR_NULL_POINTER if out is NULL, BNORM_ERR_BAD_ARGUMENT if
 * num_threads < 0, BNORM_ERR_OUT_OF_MEMORY. On error *out is not written. */
BNORM_API bnorm_status bnorm_context_create(int num_threads, bnorm_context** out);

/* Destroys a context. NULL is a no-op. No call may be using ctx. */
BNORM_API void bnorm_context_destroy(bnorm_context* ctx);

/* The thread count the context splits its work for (the default context if
 * ctx is NULL: all cores). */
BNORM_API int bnorm_context_num_threads(const bnorm_context* ctx);

/* A static English description of status; never NULL, also for unknown values. */
BNORM_API const char* bnorm_status_string(bnorm_status status);

/* "MAJOR.MINOR.PATCH" of the library actually loaded. */
BNORM_API const char* bnorm_version_string(void);

/* The ISA the kernels run on now: "AVX3", "AVX2", "SSE4", "SSSE3", "SCALAR", ...
 * The best target of this CPU unless the environment variable BNORM_TARGET or
 * bnorm_set_target() chose another. An unknown or unsupported BNORM_TARGET
 * prints one warning on stderr and falls back to the best supported target. */
BNORM_API const char* bnorm_active_target(void);

/* Number of ISA targets this build can run on this CPU (at least 1). */
BNORM_API int bnorm_target_count(void);

/* Name of the i-th target this build can run on this CPU, best first, for
 * 0 <= i < bnorm_target_count(); NULL otherwise. */
BNORM_API const char* bnorm_target_name(int i);

/* Forces the ISA target for the whole process (name as given by
 * bnorm_target_name; case and surrounding whitespace ignored). NULL or ""
 * returns to the default (BNORM_TARGET, or the best); a name of only
 * whitespace is none (BNORM_ERR_BAD_ARGUMENT; a blank BNORM_TARGET counts as
 * unset). Calls already running finish on the target they started with.
 * Returns BNORM_ERR_BAD_ARGUMENT for a name no build knows and
 * BNORM_ERR_UNSUPPORTED for a target this build or CPU cannot run; the active
 * target is then unchanged. */
BNORM_API bnorm_status bnorm_set_target(const char* name);

/* Training-mode forward pass: computes the batch statistics, normalizes x into
 * y, and updates the running statistics.
 *   x, y         n*c*spatial elements (desc); y == x (in place) is allowed.
 *   gamma, beta  c floats each; NULL means 1 and 0 respectively.
 *   eps          >= 0 and finite. momentum in [0, 1].
 *   running_mean, running_var  c floats, read and updated; each may be NULL
 *                (then not updated). running_var receives the unbiased variance.
 *   save_mean, save_invstd     c floats, written; each may be NULL.
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER (desc, x or y NULL),
 * BNORM_ERR_BAD_SHAPE, BNORM_ERR_BAD_ARGUMENT (eps, momentum, layout, dtype),
 * BNORM_ERR_TOO_FEW_VALUES
 * (n*spatial < 2), BNORM_ERR_ALIAS, BNORM_ERR_OUT_OF_MEMORY, BNORM_ERR_INTERNAL. */
BNORM_API bnorm_status bnorm_forward_training(const bnorm_context* ctx,
                                              const bnorm_tensor_desc* desc, const void* x, void* y,
                                              const float* gamma, const float* beta, float eps,
                                              float momentum, float* running_mean,
                                              float* running_var, float* save_mean,
                                              float* save_invstd);

/* Inference-mode forward pass: y = (x - mean) / sqrt(var + eps) * gamma + beta.
 *   x, y          as in bnorm_forward_training; y == x is allowed.
 *   gamma, beta   c floats each; NULL means 1 and 0.
 *   mean, var     c floats each, required (they may be the same array).
 *   eps           >= 0 and finite. A channel with var + eps <= 0 or NaN
 *                 statistics gets the IEEE result of the formula (Inf/NaN).
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER (desc, x, y, mean or var NULL),
 * BNORM_ERR_BAD_SHAPE, BNORM_ERR_BAD_ARGUMENT, BNORM_ERR_ALIAS,
 * BNORM_ERR_OUT_OF_MEMORY, BNORM_ERR_INTERNAL. */
BNORM_API bnorm_status bnorm_forward_inference(const bnorm_context* ctx,
                                               const bnorm_tensor_desc* desc, const void* x,
                                               void* y, const float* gamma, const float* beta,
                                               const float* mean, const float* var, float eps);

/* Training-mode backward pass. With m = n*spatial, per channel:
 *   sum_dy = sum(dy), sum_dy_xmu = sum(dy * (x - save_mean))
 *   dx     = gamma*invstd*(dy - sum_dy/m - (x - save_mean)*invstd^2*sum_dy_xmu/m)
 *   dgamma = sum_dy_xmu * invstd,  dbeta = sum_dy
 *   x, dy         n*c*spatial elements, required.
 *   dx            n*c*spatial elements, may be NULL (parameter gradients only);
 *                 dx == dy (in place) is allowed.
 *   gamma         c floats; NULL means 1.
 *   save_mean, save_invstd  c floats from bnorm_forward_training, required.
 *   dgamma, dbeta c floats each, written; each may be NULL.
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER, BNORM_ERR_BAD_SHAPE,
 * BNORM_ERR_BAD_ARGUMENT, BNORM_ERR_ALIAS, BNORM_ERR_OUT_OF_MEMORY,
 * BNORM_ERR_INTERNAL. (m == 1 is allowed here.) */
BNORM_API bnorm_status bnorm_backward(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                      const void* x, const void* dy, void* dx, const float* gamma,
                                      const float* save_mean, const float* save_invstd,
                                      float* dgamma, float* dbeta);

/* Backward pass with frozen statistics (eval mode): mean and invstd are
 * constants, so dx = dy * gamma * invstd; dgamma = sum(dy*(x - mean))*invstd,
 * dbeta = sum(dy). Arguments, aliasing and statuses as bnorm_backward, with
 * mean and invstd (c floats each, required) in place of save_mean/save_invstd. */
BNORM_API bnorm_status bnorm_backward_frozen(const bnorm_context* ctx,
                                             const bnorm_tensor_desc* desc, const void* x,
                                             const void* dy, void* dx, const float* gamma,
                                             const float* mean, const float* invstd, float* dgamma,
                                             float* dbeta);

/* ---- Fused epilogues (cuDNN's BN_ACTIVATION / BN_ADD_ACTIVATION) ----
 * y = act(BN(x) + z) in one pass over memory. */
typedef enum bnorm_activation { BNORM_ACT_NONE = 0, BNORM_ACT_RELU = 1 } bnorm_activation;

/* bnorm_forward_training with a residual and an activation:
 * y = act((x - mean) * invstd * gamma + beta + z). Statistics are those of x.
 *   z    a tensor like x (same desc), or NULL (no residual). y may equal x or
 *        z exactly (in place); z may equal x.
 *   act  BNORM_ACT_NONE or BNORM_ACT_RELU (max(v, 0); NaN stays NaN).
 * Other arguments and statuses as bnorm_forward_training; an unknown act is
 * BNORM_ERR_BAD_ARGUMENT. */
BNORM_API bnorm_status bnorm_forward_training_ex(
    const bnorm_context* ctx, const bnorm_tensor_desc* desc, const void* x, const void* z,
    void* y, bnorm_activation act, const float* gamma, const float* beta, float eps,
    float momentum, float* running_mean, float* running_var, float* save_mean,
    float* save_invstd);

/* bnorm_forward_inference with a residual and an activation (as above). */
BNORM_API bnorm_status bnorm_forward_inference_ex(const bnorm_context* ctx,
                                                  const bnorm_tensor_desc* desc, const void* x,
                                                  const void* z, void* y, bnorm_activation act,
                                                  const float* gamma, const float* beta,
                                                  const float* mean, const float* var, float eps);

/* Backward of bnorm_forward_training_ex. With g = 0 where y <= 0 and dy
 * elsewhere for BNORM_ACT_RELU (so a NaN y passes dy, as PyTorch's
 * threshold_backward does; g = dy for BNORM_ACT_NONE), this is
 * bnorm_backward applied to g, and dz = g:
 *   y       the forward output, required when act != BNORM_ACT_NONE (its
 *           sign gives the mask); otherwise ignored (may be NULL).
 *   dx      may be NULL; dx == dy allowed.
 *   dz      the residual's gradient, may be NULL; dz == dy allowed.
 *   beta    not needed by the gradients; accepted for symmetry, never read,
 *           may be NULL (when given, it must not overlap an output either).
 * dx and dz are written in the same pass. Where dx bypasses the caches
 * (tensors beyond the last-level cache), dz does too only if both sit at
 * the same offset from a 64-byte boundary, as framework allocators place
 * them; otherwise dz is written through the caches, which costs time, never
 * a different result.
 * Other arguments and statuses as bnorm_backward; an unknown act is
 * BNORM_ERR_BAD_ARGUMENT. */
BNORM_API bnorm_status bnorm_backward_ex(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                         const void* x, const void* y, const void* dy, void* dx,
                                         void* dz, bnorm_activation act, const float* gamma,
                                         const float* beta, const float* save_mean,
                                         const float* save_invstd, float* dgamma, float* dbeta);

/* ---- Folding a frozen batch norm, for inference engines ----
 * In inference, y = x * scale + shift per channel with
 *   scale = gamma / sqrt(var + eps),  shift = beta - mean * scale
 * (computed in double, rounded to float once). */

/* Writes scale and shift (c floats each). gamma, beta: NULL means 1 and 0;
 * mean, var required. scale_out/shift_out must not overlap any input or
 * each other. A channel with var + eps <= 0 or NaN statistics gets the IEEE
 * result of the formula.
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER, BNORM_ERR_BAD_SHAPE (c < 1 or
 * too large), BNORM_ERR_BAD_ARGUMENT (eps < 0 or not finite), BNORM_ERR_ALIAS. */
BNORM_API bnorm_status bnorm_fold(int64_t c, const float* gamma, const float* beta,
                                  const float* mean, const float* var, float eps,
                                  float* scale_out, float* shift_out);

/* Weight layouts of the layer that feeds the batch norm; O is its output
 * channel (the batch norm's channel), I its input channels, H, W the kernel.
 *   OIHW (PyTorch/ONNX conv), OHWI (oneDNN/TFLite-style), OI ([out, in],
 *   linear): each output channel's weights are contiguous.
 *   HWIO (TensorFlow conv), IO ([in, out]): the output channel is innermost. */
typedef enum bnorm_weight_layout {
  BNORM_WEIGHTS_OIHW = 0,
  BNORM_WEIGHTS_OHWI = 1,
  BNORM_WEIGHTS_OI = 2,
  BNORM_WEIGHTS_HWIO = 3,
  BNORM_WEIGHTS_IO = 4
} bnorm_weight_layout;

/* Folds a frozen batch norm into the preceding convolution or linear layer,
 * so that layer(x; weights_out, bias_out) == BN(layer(x; weights, bias)):
 *   weights_out[o, ...] = weights[o, ...] * scale[o]
 *   bias_out[o]         = (bias[o] - mean[o]) * scale[o] + beta[o]
 * (double arithmetic, one rounding).
 *   out_channels   the layer's output channels = the batch norm's c.
 *   per_output     weights per output channel (I*H*W, or I).
 *   weights        out_channels*per_output floats in `layout`, required.
 *   bias           out_channels floats; NULL for a layer without bias (0).
 *   weights_out    required; == weights (in place) is allowed.
 *   bias_out       out_channels floats, required; == bias is allowed.
 *   gamma, beta    NULL means 1 and 0; mean, var required.
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER, BNORM_ERR_BAD_SHAPE,
 * BNORM_ERR_BAD_ARGUMENT (layout, eps), BNORM_ERR_ALIAS. */
BNORM_API bnorm_status bnorm_fold_into_weights(bnorm_weight_layout layout, int64_t out_channels,
                                               int64_t per_output, const float* weights,
                                               const float* bias, float* weights_out,
                                               float* bias_out, const float* gamma,
                                               const float* beta, const float* mean,
                                               const float* var, float eps);

/* ---- Split statistics: building blocks for synchronized batch norm ----
 * A batch spread over processes (or devices) is normalized with the
 * statistics of the whole batch: each part computes exact mergeable
 * statistics of its values, any transport combines them (MPI, NCCL, Gloo,
 * a user's own), and each part normalizes with the combined result:
 *
 *   bnorm_stats(x_part)          -> per-channel mean, M2 in double (count = n*spatial)
 *   combine the parts            -> bnorm_stats_merge (Chan's formula), or a
 *                                   transport's reduction doing the same
 *   bnorm_forward_apply(x_part)  -> y_part, save_*, running_* of the whole batch
 * and backward:
 *   bnorm_backward_reduce(x_part, dy_part) -> per-channel sum_dy, sum_dy_xmu (double)
 *   sum them over the parts
 *   bnorm_backward_apply(...)    -> dx_part, dgamma, dbeta of the whole batch
 *
 * bnorm_forward_training is bitwise bnorm_stats -> bnorm_stats_merge (k = 1)
 * -> bnorm_forward_apply on the same tensor, and bnorm_backward is bitwise
 * bnorm_backward_reduce -> bnorm_backward_apply (total_count = n*spatial).
 * The split costs one more read of x than the fused calls, which keep a
 * channel's slice in cache between their two passes.
 *
 * In these five functions desc->n may be 0 (a part holding no samples): its
 * tensors may then be NULL, bnorm_stats gives mean = m2 = 0 (count 0) and
 * bnorm_backward_reduce zero sums, and the apply functions write only the
 * per-channel outputs. All other shape rules are those of the descriptor. */

/* Per-channel mean and M2 (sum of squared deviations from the mean) of x, in
 * double; the count is n*spatial. Computed as bnorm_forward_training computes
 * its statistics (the same bits). NaN/Inf in a channel make its results NaN.
 *   x         n*c*spatial elements; may be NULL when n == 0.
 *   mean, m2  c doubles each, written, required; they must not overlap x or
 *             each other.
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER, BNORM_ERR_BAD_SHAPE,
 * BNORM_ERR_BAD_ARGUMENT (layout, dtype), BNORM_ERR_ALIAS,
 * BNORM_ERR_OUT_OF_MEMORY, BNORM_ERR_INTERNAL. */
BNORM_API bnorm_status bnorm_stats(const bnorm_context* ctx, const bnorm_tensor_desc* desc,
                                   const void* x, double* mean, double* m2);

/* Merges k partial statistics of the same c channels with Chan's formula,
 * left to right in the order given: ((p0 + p1) + p2) + ...
 *   counts    k counts (values per channel of each partial), each >= 0; a
 *             partial with count 0 is skipped (its mean/m2 are not read as
 *             numbers, so NaN there is harmless).
 *   means, m2s  [k][c] doubles: partial j, channel ch at [j*c + ch].
 *   count_out   the total count, written.
 *   mean_out, m2_out  c doubles, written; the merged statistics (0 and 0 when
 *             the total count is 0). mean_out == means and m2_out == m2s (in
 *             place, over partial 0) are allowed; any other overlap is
 *             BNORM_ERR_ALIAS.
 * With k == 1 the outputs are the inputs, bit for bit.
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER, BNORM_ERR_BAD_SHAPE (c < 1, k < 1,
 * or k*c doubles overflow), BNORM_ERR_BAD_ARGUMENT (a count < 0, or the total
 * above 2^53, where double counts stop being exact), BNORM_ERR_ALIAS. */
BNORM_API bnorm_status bnorm_stats_merge(int64_t c, int64_t k, const int64_t* counts,
                                         const double* means, const double* m2s,
                                         int64_t* count_out, double* mean_out, double* m2_out);

/* The rest of a training forward pass once the statistics of the whole batch
 * are known: per channel, with var = m2 / total_count,
 *   invstd = 1/sqrt(var + eps) (0 where var + eps == 0),
 *   y = (x - mean) * invstd * gamma + beta,
 *   running_mean/running_var updated with mean and m2 / (total_count - 1),
 *   save_mean = mean, save_invstd = invstd,
 * exactly as bnorm_forward_training finalizes its own statistics.
 *   x, y          this part's tensors (desc); y == x allowed; NULL when n == 0.
 *   total_count   values per channel in the whole batch: >= 2 and >= n*spatial,
 *                 at most 2^53 (exact as a double).
 *   mean, m2      c doubles each, required (from bnorm_stats_merge); m2 must
 *                 not be negative (NaN is allowed and propagates). Being a
 *                 check of values, a negative m2 is reported after the
 *                 pointer and aliasing checks.
 *   gamma, beta, eps, momentum, running_*, save_*  as bnorm_forward_training.
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER, BNORM_ERR_BAD_SHAPE,
 * BNORM_ERR_BAD_ARGUMENT (eps, momentum, layout, dtype, total_count below
 * n*spatial or above 2^53, a negative m2), BNORM_ERR_TOO_FEW_VALUES
 * (total_count < 2), BNORM_ERR_ALIAS, BNORM_ERR_OUT_OF_MEMORY, BNORM_ERR_INTERNAL. */
BNORM_API bnorm_status bnorm_forward_apply(const bnorm_context* ctx,
                                           const bnorm_tensor_desc* desc, const void* x,
                                           void* y, const float* gamma, const float* beta,
                                           int64_t total_count, const double* mean,
                                           const double* m2, float eps, float momentum,
                                           float* running_mean, float* running_var,
                                           float* save_mean, float* save_invstd);

/* This part's backward reductions, in double, as bnorm_backward computes them:
 *   sum_dy[ch] = sum(dy), sum_dy_xmu[ch] = sum(dy * (x - save_mean[ch])).
 *   x, dy        this part's tensors; NULL when n == 0.
 *   save_mean    c floats, required (the whole batch's mean).
 *   sum_dy, sum_dy_xmu  c doubles each, written, required; no overlap.
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER, BNORM_ERR_BAD_SHAPE,
 * BNORM_ERR_BAD_ARGUMENT, BNORM_ERR_ALIAS, BNORM_ERR_OUT_OF_MEMORY,
 * BNORM_ERR_INTERNAL. */
BNORM_API bnorm_status bnorm_backward_reduce(const bnorm_context* ctx,
                                             const bnorm_tensor_desc* desc, const void* x,
                                             const void* dy, const float* save_mean,
                                             double* sum_dy, double* sum_dy_xmu);

/* The training-mode backward pass of this part given the sums of the whole
 * batch (total_count values per channel):
 *   dx = gamma*invstd*(dy - sum_dy/total_count
 *                      - (x - save_mean)*invstd^2*sum_dy_xmu/total_count)
 *   dgamma = sum_dy_xmu * invstd, dbeta = sum_dy (the whole batch's gradients)
 *   x, dy, dx     this part's tensors; dx may be NULL; dx == dy allowed; NULL
 *                 when n == 0.
 *   total_count   >= 1 and >= n*spatial, at most 2^53.
 *   sum_dy, sum_dy_xmu  c doubles each, required.
 *   gamma, save_mean, save_invstd, dgamma, dbeta  as bnorm_backward.
 * Returns BNORM_OK, BNORM_ERR_NULL_POINTER, BNORM_ERR_BAD_SHAPE,
 * BNORM_ERR_BAD_ARGUMENT (also total_count < 1, below n*spatial or above 2^53),
 * BNORM_ERR_ALIAS, BNORM_ERR_OUT_OF_MEMORY, BNORM_ERR_INTERNAL. */
BNORM_API bnorm_status bnorm_backward_apply(const bnorm_context* ctx,
                                            const bnorm_tensor_desc* desc, const void* x,
                                            const void* dy, void* dx, const float* gamma,
                                            const float* save_mean, const float* save_invstd,
                                            int64_t total_count, const double* sum_dy,
                                            const double* sum_dy_xmu, float* dgamma,
                                            float* dbeta);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BNORM_BNORM_H_ */
