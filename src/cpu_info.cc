#include "cpu_info.h"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace bnorm {
namespace {

// Reads "32K", "1024K", "32M" style sizes; 0 if absent.
int64_t ReadSize(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return 0;
  char buf[64] = {0};
  const bool ok = std::fgets(buf, sizeof(buf), f) != nullptr;
  std::fclose(f);
  if (!ok) return 0;
  char* end = nullptr;
  int64_t value = std::strtoll(buf, &end, 10);
  if (end != nullptr && (*end == 'K' || *end == 'k')) value <<= 10;
  if (end != nullptr && (*end == 'M' || *end == 'm')) value <<= 20;
  return value > 0 ? value : 0;
}

int ReadInt(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return -1;
  int value = -1;
  if (std::fscanf(f, "%d", &value) != 1) value = -1;
  std::fclose(f);
  return value;
}

CacheSizes Detect() {
  CacheSizes sizes;  // defaults from plan.h
  int64_t l2 = 0, llc = 0;
  int llc_level = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
    const int level = ReadInt(dir + "/level");
    if (level < 0) break;
    const int64_t size = ReadSize(dir + "/size");
    if (level == 2) l2 = size;
    if (level >= 2 && level >= llc_level && size > 0) {
      llc_level = level;
      llc = size;
    }
  }
  if (l2 > 0) sizes.l2 = l2;
  if (llc > 0) sizes.llc = llc;
  return sizes;
}

}  // namespace

const CacheSizes& DetectedCacheSizes() {
  static const CacheSizes sizes = Detect();
  return sizes;
}

}  // namespace bnorm
