// The overlap rule of the C API (bnorm.h, "Aliasing"): an output may overlap
// no other buffer, except the exact in-place partners a function names (same
// start, same size). Plain C++; used by api.cc and fold.cc before any write.
#ifndef BNORM_SRC_ALIASING_H_
#define BNORM_SRC_ALIASING_H_

#include <cstddef>
#include <cstdint>

namespace bnorm {

// One buffer of a call.
struct Region {
  const void* data;  // may be null: then it overlaps nothing
  size_t bytes;
  bool output;
  int in_place_partner = -1;  // index of a buffer this output may equal exactly
  int second_partner = -1;    // and another one (y == z forward, dz == dy backward)
};

inline bool Overlap(const Region& a, const Region& b) {
  // An empty buffer (n == 0 in the split functions) holds no byte to share.
  if (a.data == nullptr || b.data == nullptr || a.bytes == 0 || b.bytes == 0) return false;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(a.data);
  const uintptr_t b0 = reinterpret_cast<uintptr_t>(b.data);
  return a0 < b0 + b.bytes && b0 < a0 + a.bytes;
}

// True if an output overlaps another buffer other than as a named partner.
template <size_t kCount>
bool Aliased(const Region (&regions)[kCount]) {
  for (size_t i = 0; i < kCount; ++i) {
    if (!regions[i].output) continue;
    for (size_t j = 0; j < kCount; ++j) {
      if (i == j || !Overlap(regions[i], regions[j])) continue;
      const int partner = static_cast<int>(j);
      const bool named =
          regions[i].in_place_partner == partner || regions[i].second_partner == partner;
      const bool exact =
          regions[i].data == regions[j].data && regions[i].bytes == regions[j].bytes;
      if (!(named && exact)) return true;
    }
  }
  return false;
}

}  // namespace bnorm

#endif  // BNORM_SRC_ALIASING_H_
