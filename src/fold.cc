// Folding a frozen batch norm into per-channel scale/shift or into the
// preceding layer's weights (bnorm_fold, bnorm_fold_into_weights). Plain
// scalar code: it runs once per model load, on parameters, not activations.
// Validation first, then the writes, as everywhere in the API.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "aliasing.h"
#include "bnorm/bnorm.h"

namespace {

// scale and shift of channel ch, in double, and beta (0 without).
struct Affine {
  double scale, shift, beta;
};

Affine ChannelAffine(const float* gamma, const float* beta, const float* mean, const float* var,
                     float eps, int64_t ch) {
  const double g = gamma != nullptr ? static_cast<double>(gamma[ch]) : 1.0;
  const double b = beta != nullptr ? static_cast<double>(beta[ch]) : 0.0;
  const double scale = g / std::sqrt(static_cast<double>(var[ch]) + static_cast<double>(eps));
  return {scale, b - static_cast<double>(mean[ch]) * scale, b};
}

bool ValidEps(float eps) { return std::isfinite(eps) && eps >= 0.0f; }

int RawLayout(const bnorm_weight_layout& layout) {
  int value = 0;
  std::memcpy(&value, &layout, sizeof(value));
  return value;
}

}  // namespace

extern "C" {

bnorm_status bnorm_fold(int64_t c, const float* gamma, const float* beta, const float* mean,
                        const float* var, float eps, float* scale_out, float* shift_out) {
  int64_t bytes = 0;
  if (c < 1 || __builtin_mul_overflow(c, int64_t{4}, &bytes)) return BNORM_ERR_BAD_SHAPE;
  if (!ValidEps(eps)) return BNORM_ERR_BAD_ARGUMENT;
  if (mean == nullptr || var == nullptr || scale_out == nullptr || shift_out == nullptr) {
    return BNORM_ERR_NULL_POINTER;
  }
  const size_t cb = static_cast<size_t>(bytes);
  const bnorm::Region regions[] = {{gamma, cb, false},    {beta, cb, false},
                                   {mean, cb, false},     {var, cb, false},
                                   {scale_out, cb, true}, {shift_out, cb, true}};
  if (bnorm::Aliased(regions)) return BNORM_ERR_ALIAS;
  for (int64_t ch = 0; ch < c; ++ch) {
    const Affine a = ChannelAffine(gamma, beta, mean, var, eps, ch);
    scale_out[ch] = static_cast<float>(a.scale);
    shift_out[ch] = static_cast<float>(a.shift);
  }
  return BNORM_OK;
}

bnorm_status bnorm_fold_into_weights(bnorm_weight_layout layout, int64_t out_channels,
                                     int64_t per_output, const float* weights, const float* bias,
                                     float* weights_out, float* bias_out, const float* gamma,
                                     const float* beta, const float* mean, const float* var,
                                     float eps) {
  int64_t count = 0, bytes = 0, cbytes = 0;
  if (out_channels < 1 || per_output < 1 ||
      __builtin_mul_overflow(out_channels, per_output, &count) ||
      __builtin_mul_overflow(count, int64_t{4}, &bytes) ||
      __builtin_mul_overflow(out_channels, int64_t{4}, &cbytes) ||
      static_cast<uint64_t>(bytes) > static_cast<uint64_t>(PTRDIFF_MAX)) {
    return BNORM_ERR_BAD_SHAPE;
  }
  const int l = RawLayout(layout);
  if (l < BNORM_WEIGHTS_OIHW || l > BNORM_WEIGHTS_IO || !ValidEps(eps)) {
    return BNORM_ERR_BAD_ARGUMENT;
  }
  if (weights == nullptr || weights_out == nullptr || bias_out == nullptr || mean == nullptr ||
      var == nullptr) {
    return BNORM_ERR_NULL_POINTER;
  }
  const size_t wb = static_cast<size_t>(bytes), cb = static_cast<size_t>(cbytes);
  const bnorm::Region regions[] = {
      {weights, wb, false}, {bias, cb, false}, {gamma, cb, false},       {beta, cb, false},
      {mean, cb, false},    {var, cb, false},  {weights_out, wb, true, 0}, {bias_out, cb, true, 1}};
  if (bnorm::Aliased(regions)) return BNORM_ERR_ALIAS;
  const bool output_outermost =
      l == BNORM_WEIGHTS_OIHW || l == BNORM_WEIGHTS_OHWI || l == BNORM_WEIGHTS_OI;
  for (int64_t o = 0; o < out_channels; ++o) {
    const Affine a = ChannelAffine(gamma, beta, mean, var, eps, o);
    const double b = bias != nullptr ? static_cast<double>(bias[o]) : 0.0;
    // As documented, (bias - mean) * scale + beta: bias * scale + shift
    // would cancel where bias is near mean (1e20 and 1e20: 0, not beta).
    bias_out[o] = static_cast<float>((b - static_cast<double>(mean[o])) * a.scale + a.beta);
    for (int64_t k = 0; k < per_output; ++k) {
      const int64_t e = output_outermost ? o * per_output + k : k * out_channels + o;
      weights_out[e] = static_cast<float>(static_cast<double>(weights[e]) * a.scale);
    }
  }
  return BNORM_OK;
}

}  // extern "C"
