// Storage types of the tensors (x, y, dy, dx): f32, or bf16/f16 with all
// arithmetic in f32. Scalar conversions for code outside the SIMD kernels
// (pivots, the double fallbacks); the kernels use convert-inl.h, which
// rounds the same way. f32 -> 16-bit conversions round to nearest even and
// match PyTorch bit for bit, NaN included (bf16: 0x7FC0; f16: 0x7E00 | sign;
// the outputs' NaN is positive: CanonicalNaN in convert-inl.h).
#ifndef BNORM_SRC_DTYPE_H_
#define BNORM_SRC_DTYPE_H_

#include <cstdint>
#include <cstring>

namespace bnorm {

// Values of bnorm_dtype.
enum class DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

inline int64_t ElemBytes(DType t) { return t == DType::kF32 ? 4 : 2; }

// p advanced by `elems` elements of type t.
inline const void* At(const void* p, int64_t elems, DType t) {
  return static_cast<const char*>(p) + elems * ElemBytes(t);
}
inline void* At(void* p, int64_t elems, DType t) {
  return static_cast<char*>(p) + elems * ElemBytes(t);
}

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float Bf16ToFloat(uint16_t h) { return BitsFloat(static_cast<uint32_t>(h) << 16); }

inline uint16_t FloatToBf16(float f) {
  if (f != f) return 0x7FC0;
  const uint32_t u = FloatBits(f);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// IEEE binary16 <-> binary32 with integer arithmetic (after F. Giesen's
// branch-free formulations; the SIMD versions in convert-inl.h are the same
// steps per lane).
inline float F16ToFloat(uint16_t h) {
  constexpr uint32_t kShiftedExp = 0x7C00u << 13;
  uint32_t o = (static_cast<uint32_t>(h) & 0x7FFFu) << 13;
  const uint32_t exp = o & kShiftedExp;
  o += (127u - 15u) << 23;
  if (exp == kShiftedExp) {
    o += (128u - 16u) << 23;  // Inf / NaN
  } else if (exp == 0) {      // zero / subnormal: renormalize through the FPU
    o = FloatBits(BitsFloat(o + (1u << 23)) - BitsFloat(113u << 23));
  }
  return BitsFloat(o | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
}

inline uint16_t FloatToF16(float f) {
  constexpr uint32_t kF32Inf = 255u << 23;
  constexpr uint32_t kF16Max = (127u + 16u) << 23;
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t u = FloatBits(f);
  const uint32_t sign = u & 0x80000000u;
  const uint32_t a = u ^ sign;
  uint32_t o;
  if (a >= kF16Max) {
    o = a > kF32Inf ? 0x7E00u : 0x7C00u;  // NaN : overflow to Inf
  } else if (a < (113u << 23)) {  // subnormal or zero: the FPU rounds
    o = FloatBits(BitsFloat(a) + BitsFloat(kDenormMagic)) - kDenormMagic;
  } else {
    const uint32_t mant_odd = (a >> 13) & 1u;
    o = (a + ((15u - 127u) << 23) + 0xFFFu + mant_odd) >> 13;
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

// Element i of p (type t) as a float.
inline float LoadAsFloat(const void* p, int64_t i, DType t) {
  if (t == DType::kF32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return t == DType::kBF16 ? Bf16ToFloat(h) : F16ToFloat(h);
}

}  // namespace bnorm

#endif  // BNORM_SRC_DTYPE_H_
