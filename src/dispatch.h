// BNORM_DISPATCH(Fn, target_bit): call the Highway-exported Fn for the given
// target bit. Used only in kernel .cc files, after hwy/highway.h, with the
// dispatch table made by HWY_EXPORT(Fn). The index math mirrors Highway's
// ChosenTarget::GetIndex but takes the target from bnorm, not the global.
#ifndef BNORM_SRC_DISPATCH_H_
#define BNORM_SRC_DISPATCH_H_

#include <cstddef>
#include <cstdint>

#include "hwy/targets.h"

namespace bnorm {

inline size_t DispatchIndex(int64_t target_bit) {
  const int64_t mask = (HWY_CHOSEN_TARGET_SHIFT(target_bit) | HWY_CHOSEN_TARGET_MASK_SCALAR) &
                       HWY_CHOSEN_TARGET_MASK_TARGETS;
  return hwy::Num0BitsBelowLS1Bit_Nonzero64(static_cast<uint64_t>(mask));
}

}  // namespace bnorm

#if (HWY_TARGETS & (HWY_TARGETS - 1)) == 0
#define BNORM_DISPATCH(FUNC, TARGET_BIT) HWY_STATIC_DISPATCH(FUNC)
#else
#define BNORM_DISPATCH(FUNC, TARGET_BIT) \
  (*(HWY_DISPATCH_TABLE(FUNC)[::bnorm::DispatchIndex(TARGET_BIT)]))
#endif

#endif  // BNORM_SRC_DISPATCH_H_
