#include "cpu_info.h"

#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "env.h"

namespace bnorm {
namespace {

// Parses "32K", "1024K", "32M", "65536" style sizes (sysfs's format, also
// accepted in the environment): digits, then K, M, G or T (either case) or
// nothing for bytes, whitespace around allowed; 0 if it is not one, or not in
// [4 KiB, 1 TiB].
int64_t ParseSize(const char* text) {
  while (IsSpace(*text)) ++text;
  if (*text < '0' || *text > '9') return 0;  // no sign
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (value <= 0) return 0;
  const char unit = AsciiUpper(*end);
  const int shift = unit == 'K' ? 10 : unit == 'M' ? 20 : unit == 'G' ? 30 : unit == 'T' ? 40 : 0;
  if (shift > 0) ++end;
  while (IsSpace(*end)) ++end;
  constexpr int64_t kMin = int64_t{4} << 10, kMax = int64_t{1} << 40;
  if (*end != '\0' || value > (kMax >> shift)) return 0;
  const int64_t bytes = static_cast<int64_t>(value) << shift;
  return bytes >= kMin ? bytes : 0;
}

// Reads a sysfs size file; 0 if absent.
int64_t ReadSize(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return 0;
  char buf[64] = {0};
  const bool ok = std::fgets(buf, sizeof(buf), f) != nullptr;
  std::fclose(f);
  return ok ? ParseSize(buf) : 0;
}

// The environment's override of a detected size: BNORM_L2_SIZE or
// BNORM_LLC_SIZE (a guest VM reports its host's whole L3, most of which other
// guests use). A value that is not a size is reported once and ignored.
int64_t Override(const char* name, int64_t detected) {
  const char* env = EnvValue(name);
  if (env == nullptr) return detected;
  const int64_t bytes = ParseSize(env);
  if (bytes == 0) {
    std::fprintf(stderr,
                 "bnorm: %s=%s is not a size from 4K to 1T (like 2M or 512K); using %lld bytes\n",
                 name, Printable(env).c_str(), static_cast<long long>(detected));
    return detected;
  }
  return bytes;
}

int ReadInt(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return -1;
  int value = -1;
  if (std::fscanf(f, "%d", &value) != 1) value = -1;
  std::fclose(f);
  return value;
}

// CPUs in a sysfs list such as "0-3,8-11" (0 if absent or malformed).
int CountCpuList(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return 0;
  int count = 0;
  int first = 0;
  while (std::fscanf(f, "%d", &first) == 1) {
    int last = first;
    const int sep = std::fgetc(f);
    if (sep == '-') {
      if (std::fscanf(f, "%d", &last) != 1 || last < first) {
        count = 0;
        break;
      }
      std::fgetc(f);  // ',' or the end
    }
    count += last - first + 1;
  }
  std::fclose(f);
  return count;
}

CacheSizes Detect() {
  CacheSizes sizes;  // defaults from plan.h
  int64_t l2 = 0, llc = 0;
  int llc_level = 0;
  int llc_cpus = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
    const int level = ReadInt(dir + "/level");
    if (level < 0) break;
    const int64_t size = ReadSize(dir + "/size");
    if (level == 2) l2 = size;
    if (level >= 2 && level >= llc_level && size > 0) {
      llc_level = level;
      llc = size;
      llc_cpus = CountCpuList(dir + "/shared_cpu_list");
    }
  }
  if (l2 > 0) sizes.l2 = l2;
  // The CPUs this process may run on, if fewer share the LLC: a container
  // given 2 CPUs of a 128-CPU host sees the host's whole list.
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0 && CPU_COUNT(&allowed) > 0) {
    llc_cpus = llc_cpus > 0 ? std::min(llc_cpus, CPU_COUNT(&allowed)) : CPU_COUNT(&allowed);
  }
  if (llc > 0) sizes.llc = UsableLlc(llc, llc_cpus);
  sizes.l2 = Override("BNORM_L2_SIZE", sizes.l2);
  sizes.llc = Override("BNORM_LLC_SIZE", sizes.llc);
  return sizes;
}

// The CPU vendor string from CPUID leaf 0 ("GenuineIntel", "AuthenticAMD");
// empty off x86.
std::string CpuVendor() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return std::string();
  char vendor[12];
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  return std::string(vendor, sizeof(vendor));
#else
  return std::string();
#endif
}

RowStores DetectRowStores() {
  const RowStores detected =
      CpuVendor() == "GenuineIntel" ? RowStores::kSequential : RowStores::kGrouped;
  const RowStores chosen[] = {RowStores::kGrouped, RowStores::kSequential};
  const int index = EnvWordIndex("BNORM_NHWC_ROW_STORES", {"grouped", "sequential"},
                                 detected == RowStores::kGrouped ? "grouped" : "sequential");
  return index < 0 ? detected : chosen[index];
}

NextGroupPolicy DetectNextGroupPolicy() {
  const NextGroupPolicy detected =
      CpuVendor() == "GenuineIntel" ? NextGroupPolicy::kAlways : NextGroupPolicy::kWithinLlc;
  const NextGroupPolicy chosen[] = {NextGroupPolicy::kAlways, NextGroupPolicy::kNever, detected};
  const int index = EnvWordIndex("BNORM_NEXT_GROUP", {"reduce", "prefetch", "auto"},
                                 detected == NextGroupPolicy::kAlways
                                     ? "reduce"
                                     : "auto (reduce within the LLC, runs long enough)");
  return index < 0 ? detected : chosen[index];
}

// AVX512_BF16: CPUID leaf 7, subleaf 1, EAX bit 5. Only the AVX-512 kernels
// use it, and those run only where the OS saves the AVX-512 state.
bool CpuHasAvx512Bf16() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 1, eax, ebx, ecx, edx);
  return (eax >> 5) & 1u;
#else
  return false;
#endif
}

bool DetectBf16Instruction() {
  const bool has = CpuHasAvx512Bf16();
  const bool chosen[] = {has, false};
  const int index = EnvWordIndex("BNORM_BF16_ROUNDING", {"instruction", "integer"},
                                 has ? "instruction" : "integer");
  return index < 0 ? has : chosen[index];
}

}  // namespace

namespace internal {
const bool g_bf16_instruction = DetectBf16Instruction();
}  // namespace internal

const CacheSizes& DetectedCacheSizes() {
  static const CacheSizes sizes = Detect();
  return sizes;
}

RowStores DetectedRowStores() {
  static const RowStores stores = DetectRowStores();
  return stores;
}

NextGroupPolicy DetectedNextGroupPolicy() {
  static const NextGroupPolicy policy = DetectNextGroupPolicy();
  return policy;
}

namespace {
// Detected when the library loads, as g_bf16_instruction: the detections
// allocate (sysfs paths, the vendor string, the message about a bad
// environment value), and their first use inside a call could throw
// std::bad_alloc after outputs were written (bnorm_forward_apply finalizes
// its per-channel outputs before it plans; the NHWC write loops ask for the
// row order).
[[maybe_unused]] const bool g_detected_at_load =
    (DetectedCacheSizes(), DetectedRowStores(), DetectedNextGroupPolicy(), true);
}  // namespace

}  // namespace bnorm
