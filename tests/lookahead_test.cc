// WalkAhead (src/lookahead.h): the lines a reduction's walk over one NCHW
// unit prefetches, recorded instead of prefetched, against the lines the
// walk itself reads.
#include "lookahead.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <random>
#include <vector>

namespace bnorm {
namespace {

struct Recorder {
  std::vector<uintptr_t>* lines;
  void operator()(uintptr_t line) const { lines->push_back(line); }
};

struct Walk {
  int64_t channels, spatial, ch, begin, end;
};

// Walks unit w of a float tensor (two inputs, the second `delta` bytes after
// the first) in random steps; checks that every line the walk reads from
// kStreamPrefetchBytes into the unit on is prefetched, in both inputs, before
// the walk reaches it, and that nothing outside the unit's runs is.
void CheckWalk(const Walk& w, uint32_t seed) {
  SCOPED_TRACE(::testing::Message()
               << "c=" << w.channels << " spatial=" << w.spatial << " ch=" << w.ch << " ["
               << w.begin << ", " << w.end << ") seed=" << seed);
  const uintptr_t base = uintptr_t{1} << 20;  // never dereferenced
  const uintptr_t delta = uintptr_t{1} << 32;
  const auto address = [&](int64_t v) {  // of value v of the unit's channel
    const int64_t e = (v / w.spatial * w.channels + w.ch) * w.spatial + v % w.spatial;
    return base + static_cast<uintptr_t>(e) * sizeof(float);
  };
  // Walk order index of the first value read from each line of the first input.
  std::map<uintptr_t, int64_t> first_read;
  for (int64_t v = w.begin; v < w.end; ++v) first_read.emplace(address(v) & ~uintptr_t{63}, v);

  std::vector<uintptr_t> fetched;
  std::map<uintptr_t, int64_t> fetched_at;  // line -> walk position when first fetched
  WalkAhead<float, Recorder> ahead(reinterpret_cast<const float*>(address(w.begin)),
                                   reinterpret_cast<const float*>(address(w.begin) + delta),
                                   nullptr, w.channels, w.spatial, w.begin, w.end,
                                   Recorder{&fetched});
  std::mt19937 rng(seed);
  int64_t v = w.begin;
  while (v < w.end) {
    const int64_t n = std::min<int64_t>(w.end - v, 1 + static_cast<int64_t>(rng() % 200));
    ahead.Advance(static_cast<size_t>(n));
    v += n;
    for (const uintptr_t line : fetched) fetched_at.emplace(line, v);
    fetched.clear();
  }
  // kStreamPrefetchBytes of reads ahead: half of it in each of two inputs.
  constexpr int64_t kDistance = kStreamPrefetchBytes / sizeof(float) / 2;
  for (const auto& [line, at] : fetched_at) {
    const bool second = line >= base + delta;
    const uintptr_t own = second ? line - delta : line;
    ASSERT_TRUE(first_read.count(own) != 0) << "line outside the unit: " << (own - base);
    if (second) {
      EXPECT_EQ(fetched_at.count(own), 1u) << "the inputs prefetched apart";
    }
  }
  for (const auto& [line, v_first] : first_read) {
    if (v_first - w.begin < kDistance + 64) continue;  // near the start: not ahead
    const auto it = fetched_at.find(line);
    ASSERT_NE(it, fetched_at.end()) << "line of value " << v_first << " not prefetched";
    EXPECT_EQ(fetched_at.count(line + delta), 1u);
    // Prefetched about the distance ahead: the walk position after the
    // step that fetched the line is within one step (< 200 values) and a
    // line (16 values) of v_first - kDistance.
    EXPECT_LE(it->second, v_first - kDistance + 200 + 16) << "prefetched too late";
    EXPECT_GE(it->second, v_first - kDistance - 16) << "prefetched too early";
  }
}

TEST(WalkAhead, PrefetchesTheWalksOwnLinesAhead) {
  const std::vector<Walk> walks = {
      {3, 50176, 1, 0, 5 * 50176},          // long runs, several images
      {3, 50176, 2, 12345, 3 * 50176 + 7},  // starting and ending mid-run
      {64, 3136, 5, 0, 32 * 3136},          // runs shorter than the distance
      {2048, 49, 7, 0, 256 * 49},           // 7x7 images
      {4, 1024, 1, 0, 10 * 1024},           // the distance ends on a run boundary
      {1, 1000, 0, 0, 40000},               // C = 1: runs adjacent
      {16, 7, 3, 0, 7 * 3000},              // runs shorter than a line
      {4, 100000, 3, 100, 2000},            // a unit shorter than the distance
  };
  uint32_t seed = 1;
  for (const Walk& w : walks) CheckWalk(w, seed++);
}

TEST(WalkAhead, NothingWhereTheUnitIsShorterThanTheDistance) {
  std::vector<uintptr_t> lines;
  std::vector<float> x(4 * 5000);
  // 4000 values: fewer than the distance (kStreamPrefetchBytes of floats).
  static_assert(kStreamPrefetchBytes / sizeof(float) > 4000, "");
  WalkAhead<float, Recorder> ahead(x.data(), nullptr, nullptr, 4, 5000, 0, 4000, Recorder{&lines});
  for (int k = 0; k < 40; ++k) ahead.Advance(100);
  EXPECT_TRUE(lines.empty());
}

}  // namespace
}  // namespace bnorm
