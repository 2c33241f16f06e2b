// Highway dispatch configuration shared by every SIMD translation unit.
// Include this first (before any hwy header) in each kernel .cc: all units must
// agree on HWY_TARGETS, or the dispatch tables disagree (an ODR violation).
#ifndef BNORM_SRC_CONFIG_H_
#define BNORM_SRC_CONFIG_H_

// Nothing is disabled: every target the compiler offers is built. The macro is
// the one place to change that, here or for a whole build on the compiler's
// command line (tools/dev.sh's sanitizer builds leave out SSSE3).
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS 0
#endif

#endif  // BNORM_SRC_CONFIG_H_
