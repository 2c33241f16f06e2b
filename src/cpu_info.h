// What the planner needs to know of the machine: cache sizes, read once from
// the OS (Linux sysfs) with conservative defaults where the OS does not say,
// and the CPU's preferred store order for NHWC rows.
#ifndef BNORM_SRC_CPU_INFO_H_
#define BNORM_SRC_CPU_INFO_H_

#include "plan.h"

namespace bnorm {

// Per-core L2 and the usable part of the last-level cache (UsableLlc in
// plan.h over the CPUs that share it and that this process may run on), in
// bytes; BNORM_L2_SIZE and BNORM_LLC_SIZE in the environment override them.
// Cached after the first call; thread-safe.
const CacheSizes& DetectedCacheSizes();

// How this CPU's NHWC elementwise passes store rows: kSequential on Intel
// CPUs, kGrouped on others; BNORM_NHWC_ROW_STORES=grouped|sequential in the
// environment overrides it. Cached after the first call; thread-safe.
RowStores DetectedRowStores();

}  // namespace bnorm

#endif  // BNORM_SRC_CPU_INFO_H_
