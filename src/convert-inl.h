// Loads of tensor elements as f32 vectors and stores of f32 vectors as tensor
// elements, for each storage type (dtype.h), with the same rounding as the
// scalar conversions there. bf16 always, and f16 on targets without F16C
// (SSSE3/SSE4), use integer steps per lane: Highway 1.0.3's bf16 DemoteTo
// truncates, and its f16 conversions without F16C mishandle Inf/NaN and
// truncate. With F16C (AVX2, AVX-512) f16 uses the hardware conversions,
// which round to nearest even. Every NaN an output holds is one NaN
// (CanonicalNaN): f32 0x7FC00000, bf16 0x7FC0, f16 0x7E00, which is what
// PyTorch converts that f32 NaN to.
// Include after hwy/highway.h inside a foreach_target translation unit.

#if defined(BNORM_SRC_CONVERT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef BNORM_SRC_CONVERT_INL_H_
#undef BNORM_SRC_CONVERT_INL_H_
#else
#define BNORM_SRC_CONVERT_INL_H_
#endif

#include <stddef.h>
#include <stdint.h>

#include <type_traits>

#include "cpu_info.h"
#include "dtype.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The C++ element type of a storage type.
template <DType kT>
using Elem = std::conditional_t<kT == DType::kF32, float, uint16_t>;

// f32 lanes from 16-bit patterns widened to u32 lanes.
template <DType kT, class DF>
HWY_INLINE hn::Vec<DF> WidenedToF32(DF df, hn::Vec<hn::RebindToUnsigned<DF>> h) {
  const hn::RebindToUnsigned<DF> du;
  if (kT == DType::kBF16) return hn::BitCast(df, hn::ShiftLeft<16>(h));
  const auto shifted_exp = hn::Set(du, 0x7C00u << 13);
  const auto o = hn::ShiftLeft<13>(hn::And(h, hn::Set(du, 0x7FFFu)));
  const auto exp = hn::And(o, shifted_exp);
  const auto normal = hn::Add(o, hn::Set(du, (127u - 15u) << 23));
  const auto inf_nan = hn::Add(normal, hn::Set(du, (128u - 16u) << 23));
  const auto subnormal = hn::BitCast(
      du, hn::Sub(hn::BitCast(df, hn::Add(normal, hn::Set(du, 1u << 23))),
                  hn::BitCast(df, hn::Set(du, 113u << 23))));
  auto bits = hn::IfThenElse(hn::Eq(exp, shifted_exp), inf_nan, normal);
  bits = hn::IfThenElse(hn::Eq(exp, hn::Zero(du)), subnormal, bits);
  const auto sign = hn::ShiftLeft<16>(hn::And(h, hn::Set(du, 0x8000u)));
  return hn::BitCast(df, hn::Or(bits, sign));
}

// 16-bit patterns (in u32 lanes) of f32 lanes, rounded to nearest even.
template <DType kT, class DF>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> F32ToNarrowBits(DF df, hn::Vec<DF> v) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const auto u = hn::BitCast(du, v);
  if (kT == DType::kBF16) {
    const auto odd = hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u));
    const auto rounded = hn::ShiftRight<16>(hn::Add(hn::Add(u, hn::Set(du, 0x7FFFu)), odd));
    return hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), hn::Set(du, 0x7FC0u), rounded);
  }
  const auto sign = hn::And(u, hn::Set(du, 0x80000000u));
  const auto a = hn::Xor(u, sign);
  const auto ai = hn::BitCast(di, a);  // sign bit clear: signed compares are exact
  const auto nan = hn::RebindMask(du, hn::Gt(ai, hn::Set(di, 255 << 23)));
  const auto special = hn::IfThenElse(nan, hn::Set(du, 0x7E00u), hn::Set(du, 0x7C00u));
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const auto subnormal =
      hn::Sub(hn::BitCast(du, hn::Add(hn::BitCast(df, a), hn::BitCast(df, hn::Set(du, kDenormMagic)))),
              hn::Set(du, kDenormMagic));
  const auto mant_odd = hn::And(hn::ShiftRight<13>(a), hn::Set(du, 1u));
  const auto normal = hn::ShiftRight<13>(
      hn::Add(hn::Add(a, hn::Set(du, ((15u - 127u) << 23) + 0xFFFu)), mant_odd));
  auto o = hn::IfThenElse(hn::RebindMask(du, hn::Lt(ai, hn::Set(di, 113 << 23))), subnormal, normal);
  // |v| >= 2^16 (no integer >= in Highway 1.0.3).
  o = hn::IfThenElse(hn::RebindMask(du, hn::Gt(ai, hn::Set(di, ((127 + 16) << 23) - 1))), special, o);
  // NaN without its sign (CanonicalNaN).
  return hn::Or(o, hn::IfThenZeroElse(nan, hn::ShiftRight<16>(sign)));
}

// One element as f32.
template <DType kT>
HWY_INLINE float ScalarF32(Elem<kT> v) {
  if constexpr (kT == DType::kF32) {
    return v;
  } else if constexpr (kT == DType::kBF16) {
    return Bf16ToFloat(v);
  } else {
    return F16ToFloat(v);
  }
}

#if HWY_TARGET <= HWY_AVX2 && !defined(HWY_DISABLE_F16C)
#define BNORM_HAVE_F16C 1
#else
#define BNORM_HAVE_F16C 0
#endif

// Loads lanes of elements at p (unaligned) as f32.
template <DType kT, class DF>
HWY_INLINE hn::Vec<DF> LoadF32(DF df, const Elem<kT>* HWY_RESTRICT p) {
  if constexpr (kT == DType::kF32) {
    return hn::LoadU(df, p);
  } else if constexpr (kT == DType::kF16 && BNORM_HAVE_F16C) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p)));
  } else {
#if HWY_TARGET <= HWY_AVX3 && HWY_ARCH_X86
    // One VPERMW puts each pattern in the upper half of its lane and zeroes
    // the lower halves: one shuffle instead of a widening and a shift, for
    // kernels that convert every value (bf16 from L2, one thread,
    // `call_timer 8 64 196 0 inf 1 bf16` 9.5 -> 9.0 us, `1 16 6272` 9.2 ->
    // 8.7; 2-5 % on training and backward from DRAM, within noise on others).
    // On the Zen 4 guest too: the widening and shift took 1.05-1.18 of its
    // time (bf16 statistics from L2, 1 thread: NHWC 2048x128, 256x1024,
    // 8x64x3136, NCHW 8x64x3136 and 64x128x49).
    if constexpr (kT == DType::kBF16 && hn::MaxLanes(df) == 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m512i idx = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7,
                                           0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
      return hn::Vec<DF>{_mm512_castsi512_ps(
          _mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, idx, _mm512_castsi256_si512(h)))};
    }
#endif
    const hn::Rebind<uint16_t, DF> d16;
    const hn::RebindToUnsigned<DF> du;
    return WidenedToF32<kT>(df, hn::PromoteTo(du, hn::LoadU(d16, p)));
  }
}

#if BNORM_HAVE_F16C
// The f16 patterns of f32 lanes by F16C, NaN signs and payloads as the
// hardware leaves them (F32ToNarrow makes them the one NaN, 0x7E00).
template <class DF>
HWY_INLINE hn::Vec<hn::Rebind<uint16_t, DF>> F16cBits(DF, hn::Vec<DF> v) {
  return hn::BitCast(hn::Rebind<uint16_t, DF>(),
                     hn::DemoteTo(hn::Rebind<hwy::float16_t, DF>(), v));
}
#endif

// 16-bit patterns (in 16-bit lanes, half a vector) of f32 lanes.
template <DType kT, class DF>
HWY_INLINE hn::Vec<hn::Rebind<uint16_t, DF>> F32ToNarrow(DF df, hn::Vec<DF> v) {
  const hn::Rebind<uint16_t, DF> d16;
#if BNORM_HAVE_F16C
  if constexpr (kT == DType::kF16) {
    // F16C keeps a NaN's sign and payload; the outputs' f16 NaN is 0x7E00
    // (CanonicalNaN): fixed on the 16-bit result, where a compiler cannot
    // drop it. (A fix-up on the f32 input is not enough: LLVM treats the
    // payload of a NaN entering the conversion as unspecified and may remove
    // it, and clang did.)
    const hn::Rebind<int16_t, DF> di16;
    const auto h = hn::BitCast(di16, F16cBits(df, v));
    const auto magnitude = hn::And(h, hn::Set(di16, 0x7FFF));
    const auto nan = hn::Gt(magnitude, hn::Set(di16, 0x7C00));
    return hn::BitCast(d16, hn::IfThenElse(nan, hn::Set(di16, 0x7E00), h));
  }
#endif
  const hn::RebindToSigned<DF> di;
  return hn::DemoteTo(d16, hn::BitCast(di, F32ToNarrowBits<kT>(df, v)));
}

// The one NaN of the outputs, for any NaN lane: the positive quiet NaN
// without payload (f32 0x7FC00000, double 0x7FF8000000000000; as bf16 0x7FC0
// and f16 0x7E00, what PyTorch converts it to). When two NaN operands meet,
// x86 returns the first one, and which operand is first is the compiler's
// choice for commutative operations: it differed between the kernels of two
// plans (f16 backward of 4x2x20000 NCHW with a NaN gamma and a NaN mean of
// the other sign, one thread against three: the sign of every dx of the
// channel), so results would otherwise depend on the thread count.
template <class D>
HWY_INLINE hn::Vec<D> CanonicalNaN(D d, hn::Vec<D> v) {
  using T = hn::TFromD<D>;
  const hn::RebindToUnsigned<D> du;
  using U = hn::TFromD<decltype(du)>;
  constexpr U kQuiet = sizeof(T) == 4 ? U{0x7FC00000u} : static_cast<U>(0x7FF8000000000000ull);
  return hn::IfThenElse(hn::IsNaN(v), hn::BitCast(d, hn::Set(du, kQuiet)), v);
}

// Stores f32 lanes as elements at p: unaligned, or non-temporal with kStream
// (p then aligned to the lanes' bytes). NaN lanes are stored as the one
// NaN of each type (CanonicalNaN).
template <DType kT, bool kStream, class DF>
HWY_INLINE void StoreF32(DF df, hn::Vec<DF> v, Elem<kT>* HWY_RESTRICT p) {
  if constexpr (kT == DType::kF32) {
    v = CanonicalNaN(df, v);
    if (kStream) {
      hn::Stream(v, df, p);
    } else {
      hn::StoreU(v, df, p);
    }
  } else {
    const hn::Rebind<uint16_t, DF> d16;
    const auto bits = F32ToNarrow<kT>(df, v);
    // Highway 1.0.3 streams a whole 16-byte register even for a half vector
    // (SSE4: 4 lanes, 8 bytes): only full 16-bit vectors are streamed.
    constexpr bool kFull = hn::MaxLanes(d16) * sizeof(uint16_t) >= 16;
    if (kStream && kFull) {
      hn::Stream(bits, d16, p);
    } else {
      hn::StoreU(bits, d16, p);
    }
  }
}

// Whether the store loops convert two f32 vectors per store for kT: 16-bit
// elements of one f32 vector fill only half a vector, and half-vector stores
// (four per cache line on AVX2) cost more than the conversion saves,
// especially non-temporal ones.
template <DType kT>
constexpr bool kStorePairs = kT != DType::kF32 && HWY_TARGET != HWY_SCALAR;

// Elements one store of the loops covers: a vector of f32 lanes, or two.
template <DType kT, class DF>
constexpr size_t StoreUnitLanes(DF df) {
  return (kStorePairs<kT> ? 2 : 1) * hn::MaxLanes(df);
}

#if (HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL) && \
    (defined(__GNUC__) || defined(__clang__))
#define BNORM_BF16_INSTRUCTION 1
// The bf16 patterns of 32 f32 lanes (lo: elements 0..15, hi: 16..31) by
// AVX512_BF16's VCVTNE2PS2BF16, which rounds to nearest even like the
// integer steps but flushes denormal inputs to zero and keeps a NaN's
// payload: false (and *bits untouched) when a lane is a NaN or a denormal,
// which the caller then converts the integer way. Inline assembly, because
// Highway 1.0.3's targets do not enable AVX512_BF16 for the compiler; run
// only where Bf16InstructionEnabled() (cpu_info.h) says the CPU has it.
HWY_INLINE bool Bf16PairByInstruction(__m512 lo, __m512 hi, __m512i* bits) {
  constexpr int kNanOrDenormal = 0x01 | 0x20 | 0x80;  // quiet NaN, denormal, signaling NaN
  // KORTEST: one flag test of both masks, not two moves to general registers
  // and an OR.
  if (!_kortestz_mask16_u8(_mm512_fpclass_ps_mask(lo, kNanOrDenormal),
                           _mm512_fpclass_ps_mask(hi, kNanOrDenormal))) {
    return false;
  }
  __m512i out;
  asm("vcvtne2ps2bf16 %2, %1, %0" : "=v"(out) : "v"(hi), "v"(lo));
  *bits = out;
  return true;
}
#else
#define BNORM_BF16_INSTRUCTION 0
#endif

#if HWY_TARGET != HWY_SCALAR
// Stores v0 then v1 (f32 lanes) as elements of kStorePairs<kT> at p, in one
// full vector: unaligned, or non-temporal with kStream (p then aligned to
// the vector's bytes).
template <DType kT, bool kStream, class DF>
HWY_INLINE void StoreF32Pair(DF df, hn::Vec<DF> v0, hn::Vec<DF> v1, Elem<kT>* HWY_RESTRICT p) {
  static_assert(kStorePairs<kT>, "only 16-bit elements on vector targets");
  const hn::Repartition<uint16_t, DF> dw;  // twice the lanes of df
  hn::Vec<decltype(dw)> bits;
#if BNORM_HAVE_F16C
  if constexpr (kT == DType::kF16) {
    // Only a vector pair holding a NaN needs the canonical-NaN fix-up: the
    // check costs less than the fix-up (f16 inference from L2 21.6 -> 18.0 us).
    if (hn::AllFalse(df, hn::Or(hn::IsNaN(v0), hn::IsNaN(v1)))) {
      bits = hn::Combine(dw, F16cBits(df, v1), F16cBits(df, v0));
    } else {
      bits = hn::Combine(dw, F32ToNarrow<kT>(df, v1), F32ToNarrow<kT>(df, v0));
    }
  } else  // NOLINT(readability/braces)
#endif
  {
    bool done = false;
#if BNORM_BF16_INSTRUCTION
    // About 40 % of a bf16 inference from L2 was the integer rounding.
    if constexpr (kT == DType::kBF16 && hn::MaxLanes(df) == 16) {
      if (Bf16InstructionEnabled()) done = Bf16PairByInstruction(v0.raw, v1.raw, &bits.raw);
    }
#endif
    if (!done) {
      // The patterns sit in the low halves of 32-bit lanes: one pack.
      bits = hn::ConcatEven(dw, hn::BitCast(dw, F32ToNarrowBits<kT>(df, v1)),
                            hn::BitCast(dw, F32ToNarrowBits<kT>(df, v0)));
    }
  }
  if (kStream) {
    hn::Stream(bits, dw, p);
  } else {
    hn::StoreU(bits, dw, p);
  }
}
#endif  // HWY_TARGET != HWY_SCALAR

// Stores one store unit (StoreUnitLanes) of values at p, where value(d, o)
// gives the f32 lanes of the vector `o` lanes into the unit; value(d, 0) is
// evaluated first.
template <DType kT, bool kStream, class DF, class Value>
HWY_INLINE void StoreUnit(DF df, Elem<kT>* HWY_RESTRICT p, const Value& value) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (kStorePairs<kT>) {
    const auto v0 = value(df, size_t{0});
    const auto v1 = value(df, hn::MaxLanes(df));
    StoreF32Pair<kT, kStream>(df, v0, v1, p);
    return;
  }
#endif
  {
    StoreF32<kT, kStream>(df, value(df, size_t{0}), p);
  }
}

// The gradient through a ReLU whose output was y: dy where y > 0, else 0
// (PyTorch's threshold_backward: zero where y <= 0, so NaN y passes dy).
template <DType kT, bool kMask, class D>
HWY_INLINE hn::Vec<D> MaskedGrad(D d, const Elem<kT>* dy, const Elem<kT>* y) {
  const auto g = LoadF32<kT>(d, dy);
  if constexpr (!kMask) {
    (void)y;
    return g;
  } else {
    return hn::IfThenZeroElse(hn::Le(LoadF32<kT>(d, y), hn::Zero(d)), g);
  }
}

// Calls body(std::integral_constant<DType, kT>) for the runtime dtype, so
// kernels are instantiated once per storage type.
template <class Body>
HWY_INLINE void ForDType(DType dtype, const Body& body) {
  switch (dtype) {
    case DType::kF32:
      body(std::integral_constant<DType, DType::kF32>());
      break;
    case DType::kBF16:
      body(std::integral_constant<DType, DType::kBF16>());
      break;
    case DType::kF16:
      body(std::integral_constant<DType, DType::kF16>());
      break;
  }
}

// Calls body(std::bool_constant<flag>) for a runtime flag.
template <class Body>
HWY_INLINE void ForFlag(bool flag, const Body& body) {
  if (flag) {
    body(std::true_type());
  } else {
    body(std::false_type());
  }
}

#undef BNORM_HAVE_F16C
#undef BNORM_BF16_INSTRUCTION

}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#endif  // BNORM_SRC_CONVERT_INL_H_
