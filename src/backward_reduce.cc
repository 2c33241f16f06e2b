// Backward reduction kernels (see backward_reduce.h).
#include <stddef.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "config.h"  // first: dispatch configuration

#include "backward_reduce.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backward_reduce.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "accumulators-inl.h"
#include "backward_reduce-inl.h"
#include "hwy/highway.h"
#include "lookahead.h"
#include "plan.h"

HWY_BEFORE_NAMESPACE();
namespace bnorm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <DType kT, bool kMask>
bool GradSumsNhwcUnitT(const Elem<kT>* x, const Elem<kT>* dy, const Elem<kT>* y, int64_t c,
                       int64_t c0, int64_t width, int64_t rows_per_period, int64_t row_begin,
                       int64_t row_end, const float* mean, int64_t rows_at_once, bool rows_ahead,
                       double* out_dy, double* out_dy_xmu) {
  const hn::ScalableTag<float> df;
  const hn::CappedTag<float, 1> d1;
  constexpr size_t N = hn::MaxLanes(df);
  const size_t positions = static_cast<size_t>(width * rows_per_period);
  HWY_ALIGN float pmean[kMaxPositions];
  HWY_ALIGN float sum_dy[kMaxPositions];
  HWY_ALIGN float sum_dy_xmu[kMaxPositions];
  double total_dy[kMaxPositions];
  double total_dy_xmu[kMaxPositions];
  for (int64_t k = 0; k < rows_per_period; ++k) {
    std::copy(mean + c0, mean + c0 + width, pmean + k * width);
  }
  std::fill(sum_dy, sum_dy + positions, 0.0f);
  std::fill(sum_dy_xmu, sum_dy_xmu + positions, 0.0f);
  std::fill(total_dy, total_dy + positions, 0.0);
  std::fill(total_dy_xmu, total_dy_xmu + positions, 0.0);
  const auto fold = [&]() {
    for (size_t p = 0; p < positions; ++p) {
      total_dy[p] += static_cast<double>(sum_dy[p]);
      total_dy_xmu[p] += static_cast<double>(sum_dy_xmu[p]);
      sum_dy[p] = sum_dy_xmu[p] = 0.0f;
    }
  };
  size_t steps = 0;
  int64_t r = row_begin;
  // `rows` consecutive vector rows (stride elements apart) per load of the sums.
  const size_t stride = static_cast<size_t>(rows_per_period * c);
  // With `ahead`, prefetches the `rows` vector rows that many elements
  // further on (rows_ahead: AheadRows on, as in StatsNhwcUnitT).
  const auto add_rows = [&](int64_t r0, size_t rows, int64_t ahead) HWY_ATTR {
    const Elem<kT>* xr = x + r0 * c + c0;
    const Elem<kT>* gr = dy + r0 * c + c0;
    const Elem<kT>* yr = kMask ? y + r0 * c + c0 : nullptr;
    const auto body = [&](auto d, size_t p, auto load, auto store) HWY_ATTR {
      if (ahead != 0 && hn::MaxLanes(d) == N) {
        constexpr size_t kStep = N * sizeof(Elem<kT>);
        const auto fetch = [&](const Elem<kT>* row) {
          PrefetchStepToL2<kStep>(
              reinterpret_cast<uintptr_t>(row + ahead + static_cast<int64_t>(p)));
        };
        for (size_t k = 0; k < rows; ++k) {
          fetch(xr + k * stride);
          fetch(gr + k * stride);
          if (kMask) fetch(yr + k * stride);
        }
      }
      const auto mu = load(d, pmean + p);
      auto s_dy = load(d, sum_dy + p);
      auto s_xmu = load(d, sum_dy_xmu + p);
      for (size_t k = 0; k < rows; ++k) {
        const auto g =
            SumsGrad<kT, kMask>(d, gr + k * stride + p, kMask ? yr + k * stride + p : nullptr);
        s_dy = hn::Add(s_dy, g);
        s_xmu = hn::MulAdd(g, hn::Sub(LoadF32<kT>(d, xr + k * stride + p), mu), s_xmu);
      }
      store(s_dy, d, sum_dy + p);
      store(s_xmu, d, sum_dy_xmu + p);
    };
    const auto aligned_load = [](auto d, const float* q) HWY_ATTR { return hn::Load(d, q); };
    const auto aligned_store = [](auto v, auto d, float* q) HWY_ATTR { hn::Store(v, d, q); };
    const auto any_load = [](auto d, const float* q) HWY_ATTR { return hn::LoadU(d, q); };
    const auto any_store = [](auto v, auto d, float* q) HWY_ATTR { hn::StoreU(v, d, q); };
    size_t p = 0;
    for (; p + N <= positions; p += N) body(df, p, aligned_load, aligned_store);
    for (; p < positions; ++p) body(d1, p, any_load, any_store);
  };
  static_assert(kBlockSteps % 4 == 0, "blocks of four rows must not straddle a fold");
  const int64_t ahead = AheadRows(rows_per_period, (kMask ? 3 : 2) * positions * sizeof(Elem<kT>));
  // Periods of one to four vectors, six or eight on AVX-512: the sums in
  // registers for a whole block, as in StatsNhwcUnitT (C = 3 and 64 from
  // L2, 1 thread: gradient sums 0.91 of the time through the arrays, f32
  // and bf16; backward of 32x128x784, 2 threads, bf16 0.91, f32 0.97); the
  // same adds in the same order as the loop below, which then finds no row
  // left (rows_at_once does not apply here).
  const auto in_registers = [&](auto vectors) HWY_ATTR {
    constexpr size_t kVectors = decltype(vectors)::value;
    using V = hn::Vec<decltype(df)>;
    const int64_t lead = rows_ahead ? ahead : std::numeric_limits<int64_t>::max() / 2;
    // A block per turn, its sums in locals no lambda captures (as in
    // StatsNhwcUnitT: GCC kept captured ones on the stack for bf16/f16).
    while (r + rows_per_period <= row_end) {
      V s_dy[kVectors], s_xmu[kVectors], mu[kVectors];
      for (size_t v = 0; v < kVectors; ++v) {
        s_dy[v] = hn::Load(df, sum_dy + v * N);
        s_xmu[v] = hn::Load(df, sum_dy_xmu + v * N);
        mu[v] = hn::Load(df, pmean + v * N);
      }
      // Rows of this block: a counted loop.
      const int64_t rows = std::min<int64_t>(static_cast<int64_t>(kBlockSteps - steps),
                                             (row_end - r) / rows_per_period);
      for (int64_t k = 0; k < rows; ++k, r += rows_per_period) {
        const int64_t at = r * c + c0;
        if (r + lead + rows_per_period <= row_end) {
          constexpr size_t kStep = N * sizeof(Elem<kT>);
          for (size_t v = 0; v < kVectors; ++v) {
            const int64_t e = at + lead * c + static_cast<int64_t>(v * N);
            PrefetchStepToL2<kStep>(reinterpret_cast<uintptr_t>(x + e));
            PrefetchStepToL2<kStep>(reinterpret_cast<uintptr_t>(dy + e));
            if constexpr (kMask) PrefetchStepToL2<kStep>(reinterpret_cast<uintptr_t>(y + e));
          }
        }
        for (size_t v = 0; v < kVectors; ++v) {
          const int64_t e = at + static_cast<int64_t>(v * N);
          const V g = SumsGrad<kT, kMask>(df, dy + e, kMask ? y + e : nullptr);
          s_dy[v] = hn::Add(s_dy[v], g);
          s_xmu[v] = hn::MulAdd(g, hn::Sub(LoadF32<kT>(df, x + e), mu[v]), s_xmu[v]);
        }
      }
      steps += static_cast<size_t>(rows);
      for (size_t v = 0; v < kVectors; ++v) {
        hn::Store(s_dy[v], df, sum_dy + v * N);
        hn::Store(s_xmu[v], df, sum_dy_xmu + v * N);
      }
      if (steps == kBlockSteps) {
        fold();
        steps = 0;
      }
    }
  };
  ForRegisterPeriod(positions, in_registers);
  for (const size_t rows : {size_t{4}, size_t{1}}) {
    if (rows > static_cast<size_t>(rows_at_once)) continue;
    const int64_t span = static_cast<int64_t>(rows) * rows_per_period;
    for (; r + span <= row_end; r += span) {
      add_rows(r, rows, rows_ahead && r + ahead + span <= row_end ? ahead * c : 0);
      steps += rows;
      if (steps == kBlockSteps) {
        fold();
        steps = 0;
      }
    }
  }
  fold();
  if (rows_per_period == 1) {
    std::copy(total_dy, total_dy + width, out_dy);
    std::copy(total_dy_xmu, total_dy_xmu + width, out_dy_xmu);
  } else {
    for (int64_t ch = 0; ch < width; ++ch) {
      double g_dy = 0.0, g_xmu = 0.0;
      for (int64_t k = 0; k < rows_per_period; ++k) {
        const size_t p = static_cast<size_t>(k * width + ch);
        g_dy += total_dy[p];
        g_xmu += total_dy_xmu[p];
      }
      out_dy[ch] = g_dy;
      out_dy_xmu[ch] = g_xmu;
    }
  }
  for (; r < row_end; ++r) {
    for (int64_t ch = 0; ch < width; ++ch) {
      const int64_t e = r * c + c0 + ch;
      const float g = kMask && ScalarF32<kT>(y[e]) <= 0.0f ? 0.0f : ScalarF32<kT>(dy[e]);
      const float xmu = ScalarF32<kT>(x[e]) - pmean[ch];
      out_dy[ch] += static_cast<double>(g);
      out_dy_xmu[ch] += static_cast<double>(g) * static_cast<double>(xmu);
    }
  }
  return AllFinite(static_cast<size_t>(width), out_dy, out_dy_xmu);
}

#define BNORM_TYPED_ARGS(kT) \
  static_cast<const Elem<kT>*>(x), static_cast<const Elem<kT>*>(dy), static_cast<const Elem<kT>*>(y)

// The sums of NCHW unit [begin, end) of channel ch (GradSumsNchwUnits).
template <DType kT, bool kMask>
HWY_INLINE GradSums NchwUnitGradSumsT(const void* x, const void* dy, const void* y, int64_t c,
                                      int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                                      float mean, ReduceReads reads) {
  const auto unit = [&](auto& side) HWY_ATTR {
    if (ShortRuns(spatial, begin, end)) {
      return GradSumsShortRunsT<kT, kMask>(BNORM_TYPED_ARGS(kT), c, spatial, ch, begin / spatial,
                                           (end - begin) / spatial, mean, side,
                                           reads == ReduceReads::kMemory);
    }
    return GradSumsNchwUnitT<kT, kMask>(BNORM_TYPED_ARGS(kT), c, spatial, ch, begin, end, mean,
                                        side);
  };
  if (reads == ReduceReads::kStream) {
    const int64_t first = (begin / spatial * c + ch) * spatial + begin % spatial;
    const auto at = [first](const void* p) {
      return p != nullptr ? static_cast<const Elem<kT>*>(p) + first : nullptr;
    };
    AheadSide side(WalkAhead<Elem<kT>>(at(dy), at(x), at(y), c, spatial, begin, end), kNoSide);
    return unit(side);
  }
  return unit(kNoSide);
}

// Units [u0, u1) in one call (StatsNchwUnits). Whether all came out finite.
bool GradSumsNchwUnits(DType dtype, const void* x, const void* dy, const void* y, int64_t c,
                       int64_t spatial, const NchwUnitCut& cut, int64_t u0, int64_t u1,
                       const float* mean, ReduceReads reads, GradSums* partials) {
  bool finite = true;
  ForDType(dtype, [&](auto t) HWY_ATTR {
    ForFlag(y != nullptr, [&](auto mask) HWY_ATTR {
      for (int64_t u = u0; u < u1; ++u) {
        const NchwUnit unit = cut.Unit(u);
        const GradSums g = NchwUnitGradSumsT<decltype(t)::value, decltype(mask)::value>(
            x, dy, y, c, spatial, unit.ch, unit.begin, unit.end, mean[unit.ch], reads);
        finite &= Finite(g);
        partials[u] = g;
      }
    });
  });
  return finite;
}

bool GradSumsNhwcUnit(DType dtype, const void* x, const void* dy, const void* y, int64_t c,
                      int64_t c0, int64_t width, int64_t rows_per_period, int64_t row_begin,
                      int64_t row_end, const float* mean, int64_t rows_at_once, bool rows_ahead,
                      double* sum_dy, double* sum_dy_xmu) {
  bool finite = true;
  ForDType(dtype, [&](auto t) HWY_ATTR {
    ForFlag(y != nullptr, [&](auto mask) HWY_ATTR {
      constexpr DType kT = decltype(t)::value;
      finite = GradSumsNhwcUnitT<kT, decltype(mask)::value>(BNORM_TYPED_ARGS(kT), c, c0, width,
                                                            rows_per_period, row_begin, row_end,
                                                            mean, rows_at_once, rows_ahead, sum_dy,
                                                            sum_dy_xmu);
    });
  });
  return finite;
}

#undef BNORM_TYPED_ARGS

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace bnorm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cmath>

#include "dispatch.h"

namespace bnorm {
namespace {

// Float lanes overflow where double does not (dy * (x - mean) beyond ~1e38,
// or sums of many such terms): such a unit is summed again in double, where
// no product of floats can overflow. NaN/Inf inputs come out NaN/Inf either way.
template <typename ValueAt>
GradSums ExactGradSums(int64_t count, const ValueAt& value_at, float mean) {
  GradSums g;
  for (int64_t k = 0; k < count; ++k) {
    double x = 0.0, dy = 0.0;
    value_at(k, &x, &dy);
    g.sum_dy += dy;
    g.sum_dy_xmu += dy * (x - static_cast<double>(mean));
  }
  return g;
}

// dy at e, masked by the ReLU output y (if any), in double.
double MaskedGradAt(const void* dy, const void* y, int64_t e, DType dtype) {
  if (y != nullptr && LoadAsFloat(y, e, dtype) <= 0.0f) return 0.0;
  return static_cast<double>(LoadAsFloat(dy, e, dtype));
}

}  // namespace

HWY_EXPORT(GradSumsNchwUnits);
HWY_EXPORT(GradSumsNhwcUnit);

namespace {

// Redoes NCHW unit [begin, end) of channel ch in double.
GradSums ExactNchwGradSums(DType dtype, const void* x, const void* dy, const void* y, int64_t c,
                           int64_t spatial, int64_t ch, int64_t begin, int64_t end, float mean) {
  return ExactGradSums(
      end - begin,
      [&](int64_t k, double* xv, double* gv) {
        const int64_t v = begin + k;
        const int64_t e = ((v / spatial) * c + ch) * spatial + v % spatial;
        *xv = static_cast<double>(LoadAsFloat(x, e, dtype));
        *gv = MaskedGradAt(dy, y, e, dtype);
      },
      mean);
}

}  // namespace

void RedoNchwGradUnits(DType dtype, const void* x, const void* dy, const void* y, int64_t c,
                       int64_t spatial, const NchwUnitCut& cut, int64_t u0, int64_t u1,
                       const float* mean, GradSums* partials) {
  for (int64_t u = u0; u < u1; ++u) {
    if (Finite(partials[u])) continue;
    const NchwUnit unit = cut.Unit(u);
    partials[u] = ExactNchwGradSums(dtype, x, dy, y, c, spatial, unit.ch, unit.begin, unit.end,
                                    mean[unit.ch]);
  }
}

void GradSumsNchwUnits(int64_t target, DType dtype, const void* x, const void* dy, const void* y,
                       int64_t c, int64_t spatial, const NchwUnitCut& cut, int64_t u0, int64_t u1,
                       const float* mean, ReduceReads reads, GradSums* partials) {
  if (BNORM_DISPATCH(GradSumsNchwUnits, target)(dtype, x, dy, y, c, spatial, cut, u0, u1, mean,
                                                reads, partials)) {
    return;
  }
  RedoNchwGradUnits(dtype, x, dy, y, c, spatial, cut, u0, u1, mean, partials);
}

void GradSumsNhwcUnit(int64_t target, DType dtype, const void* x, const void* dy, const void* y,
                      int64_t c, int64_t c0, int64_t width, int64_t rows_per_period,
                      int64_t row_begin, int64_t row_end, const float* mean, int64_t rows_at_once,
                      bool rows_ahead, double* sum_dy, double* sum_dy_xmu) {
  if (BNORM_DISPATCH(GradSumsNhwcUnit, target)(dtype, x, dy, y, c, c0, width, rows_per_period,
                                               row_begin, row_end, mean, rows_at_once, rows_ahead,
                                               sum_dy, sum_dy_xmu)) {
    return;
  }
  for (int64_t ch = 0; ch < width; ++ch) {
    if (std::isfinite(sum_dy[ch]) && std::isfinite(sum_dy_xmu[ch])) continue;
    const GradSums g = ExactGradSums(
        row_end - row_begin,
        [&](int64_t k, double* xv, double* gv) {
          const int64_t e = (row_begin + k) * c + c0 + ch;
          *xv = static_cast<double>(LoadAsFloat(x, e, dtype));
          *gv = MaskedGradAt(dy, y, e, dtype);
        },
        mean[c0 + ch]);
    sum_dy[ch] = g.sum_dy;
    sum_dy_xmu[ch] = g.sum_dy_xmu;
  }
}

}  // namespace bnorm
#endif  // HWY_ONCE
