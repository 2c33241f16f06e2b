// Which ISA target the kernels run on: chosen once from the CPU and the
// BNORM_TARGET environment variable, changeable with bnorm_set_target().
// bnorm keeps its own choice instead of using Highway's process-wide
// ChosenTarget, so that forcing a target never affects other Highway users in
// the same process.
#ifndef BNORM_SRC_TARGET_H_
#define BNORM_SRC_TARGET_H_

#include <cstdint>
#include <vector>

namespace bnorm {

// The Highway target bit (HWY_AVX2, ...) kernels should use now.
int64_t ActiveTargetBit();

// Targets this build can run on this CPU, best first.
const std::vector<int64_t>& RunnableTargets();

// Forces a target by name; nullptr/"" resets. Returns 0 on success, 1 for an
// unknown name, 2 for a known name this CPU or build cannot run.
int ForceTargetByName(const char* name);

const char* TargetNameOf(int64_t bit);

}  // namespace bnorm

#endif  // BNORM_SRC_TARGET_H_
