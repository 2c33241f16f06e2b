#include "target.h"

#include <atomic>
#include <cstdio>
#include <mutex>

#include "config.h"  // first: the dispatch configuration every kernel sees
#include "env.h"
#include "hwy/targets.h"

namespace bnorm {
namespace {

std::vector<int64_t> ComputeRunnableTargets() {
  std::vector<int64_t> targets;
  // Lower bits are better targets in Highway's encoding.
  for (int64_t bits = hwy::SupportedTargets() & HWY_TARGETS; bits != 0; bits &= bits - 1) {
    targets.push_back(bits & -bits);
  }
  if (targets.empty()) targets.push_back(HWY_STATIC_TARGET);
  return targets;
}

// Result of looking a name up: the target bit or why not.
struct Lookup {
  int status;  // 0 found and runnable, 1 unknown, 2 known but not runnable
  int64_t bit;
};

Lookup FindTarget(const char* name) {
  for (int64_t bit : RunnableTargets()) {
    if (MatchesWord(name, hwy::TargetName(bit))) return {0, bit};
  }
  // Any target of Highway 1.0.3 on any architecture is known (unsupported
  // here): hwy::TargetName names only this architecture's.
  static constexpr const char* kAnyArchitecture[] = {
      "SSSE3",   "SSE4",     "AVX2", "AVX3", "AVX3_DL",     "NEON", "SVE",    "SVE2",
      "SVE_256", "SVE2_128", "PPC8", "WASM", "WASM_EMU256", "RVV",  "EMU128", "SCALAR"};
  for (const char* known : kAnyArchitecture) {
    if (MatchesWord(name, known)) return {2, 0};
  }
  return {1, 0};
}

// The default: BNORM_TARGET if it names a runnable target, else the best.
int64_t DefaultTarget() {
  static const int64_t chosen = [] {
    const int64_t best = RunnableTargets().front();
    const char* env = EnvValue("BNORM_TARGET");
    if (env == nullptr) return best;
    const Lookup found = FindTarget(env);
    if (found.status == 0) return found.bit;
    std::fprintf(stderr, "bnorm: BNORM_TARGET=%s is %s; using %s\n", Printable(env).c_str(),
                 found.status == 1 ? "not a known target" : "not supported by this CPU or build",
                 hwy::TargetName(best));
    return best;
  }();
  return chosen;
}

// 0 means "not forced": use DefaultTarget().
std::atomic<int64_t> g_forced_target{0};

}  // namespace

const std::vector<int64_t>& RunnableTargets() {
  static const std::vector<int64_t> targets = ComputeRunnableTargets();
  return targets;
}

int64_t ActiveTargetBit() {
  const int64_t fallback = DefaultTarget();  // also reports a bad BNORM_TARGET once
  const int64_t forced = g_forced_target.load(std::memory_order_acquire);
  return forced != 0 ? forced : fallback;
}

int ForceTargetByName(const char* name) {
  if (name == nullptr || name[0] == '\0') {
    g_forced_target.store(0, std::memory_order_release);
    return 0;
  }
  const Lookup found = FindTarget(name);
  if (found.status != 0) return found.status;
  g_forced_target.store(found.bit, std::memory_order_release);
  return 0;
}

const char* TargetNameOf(int64_t bit) { return hwy::TargetName(bit); }

namespace {
// Built when the library loads, as the core count in context.cc: the
// runnable targets' vector and the default's one-time set-up allocate, and
// their first use inside bnorm_active_target, bnorm_target_count,
// bnorm_target_name or bnorm_set_target (C functions without a status for
// a failed allocation) would otherwise let a std::bad_alloc out of them.
[[maybe_unused]] const int64_t g_default_at_load = DefaultTarget();
}  // namespace

}  // namespace bnorm
