// What the planner and kernels need to know of the machine: cache sizes, read
// once from the OS (Linux sysfs) with conservative defaults where the OS does
// not say, the CPU's preferred store order for NHWC rows and step to the next
// channel group, and whether it converts to bf16 in hardware.
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

// When this CPU's channel-fused plans reduce the next group in the write loop
// (NextGroupPolicy in plan.h): kAlways on Intel CPUs, kWithinLlc on others;
// BNORM_NEXT_GROUP=reduce (kAlways), prefetch (kNever) or auto (detected) in
// the environment overrides it. Cached after the first call; thread-safe.
NextGroupPolicy DetectedNextGroupPolicy();

namespace internal {
extern const bool g_bf16_instruction;  // set once, when the library loads
}  // namespace internal

// Whether the AVX-512 kernels store bf16 with the CPU's conversion
// instruction (VCVTNE2PS2BF16, AVX512_BF16), falling back to integer steps
// for vectors with NaN or denormal lanes, which it converts differently from
// PyTorch; when false, every vector takes the integer steps. The bits are the
// same either way. True by default where the CPU has AVX512_BF16;
// BNORM_BF16_ROUNDING=instruction|integer in the environment (read when the
// library loads) overrides it, and "instruction" cannot enable it on a CPU
// without it. Inline: read once per stored vector pair in the kernels.
inline bool Bf16InstructionEnabled() { return internal::g_bf16_instruction; }

}  // namespace bnorm

#endif  // BNORM_SRC_CPU_INFO_H_
