// Normalize kernels: y = (x - mean) * scale + shift, with constants per
// channel (NCHW) or per position of a repeating period (NHWC). x - mean is
// exact for x near the mean (Sterbenz), so the float mean loses nothing there;
// the rest of the double mean, (mean_d - mean) * scale, is folded into shift
// by the caller. y may equal x. With `stream`, y is written with non-temporal
// stores. x and y hold elements of `dtype` (f32 arithmetic, see dtype.h);
// element offsets below count elements.
#ifndef BNORM_SRC_NORMALIZE_H_
#define BNORM_SRC_NORMALIZE_H_

#include <cstdint>

#include "dtype.h"
#include "lookahead.h"

namespace bnorm {

struct AffineConstants {
  const float* mean;
  const float* scale;
  const float* shift;
};

// Fused after the normalization: y = act(normalized + z). z (a tensor like x,
// may equal x or y) is added when not null; relu: max(., 0), NaN kept.
struct Epilogue {
  const void* z = nullptr;
  bool relu = false;
};

// NCHW: elements [begin, end) of the flat tensor; constants indexed by channel.
// Streams whole lines across channel boundaries when spatial >= the lanes.
// Prefetches `ahead` meanwhile (when spatial >= the lanes).
void NormalizeNchw(int64_t target, DType dtype, const void* x, void* y, int64_t c, int64_t spatial,
                   int64_t begin, int64_t end, const AffineConstants& k, bool stream,
                   const Lookahead& ahead = Lookahead(), const Epilogue& epi = Epilogue());

// NCHW: channel ch over its values [begin, end) in (i, s) order; the
// constants are those of channel ch (k indexed by ch).
void NormalizeNchwChannel(int64_t target, DType dtype, const void* x, void* y, int64_t c,
                          int64_t spatial, int64_t ch, int64_t begin, int64_t end,
                          const AffineConstants& k, bool stream,
                          const Epilogue& epi = Epilogue());

// NHWC: elements [begin, end) of the flat tensor; constants indexed by
// position within the period (element e has position e % period), each array
// holding period + kMaxLanes entries (see StorePeriodic). grouped_rows:
// several rows per load of the constants where their width allows
// (RowStores::kGrouped in plan.h); the values are the same either way.
void NormalizeNhwc(int64_t target, DType dtype, const void* x, void* y, int64_t period,
                   int64_t begin, int64_t end, const AffineConstants& k, bool stream,
                   bool grouped_rows, const Epilogue& epi = Epilogue());

}  // namespace bnorm

#endif  // BNORM_SRC_NORMALIZE_H_
