// libbnorm_mpi under mpiexec (1 to 4 ranks): bnorm_mpi_forward_training and
// bnorm_mpi_backward against the single-process split API on the
// concatenated batch, against the fused calls on the whole batch, against the
// long-double reference, and their error agreement.
//
// Rules of this file, so that a failure never becomes a hang:
//  - every rank runs every test, and every test runs the same sequence of
//    collectives on every rank whatever its assertions find: EXPECT_ only, no
//    ASSERT_ and no early return between collectives;
//  - data are generated from deterministic seeds, so every rank builds the
//    whole batch and computes the single-process reference itself;
//  - after each test the fixture agrees on the outcome (MPI_Allreduce), so
//    that a failure seen on one rank fails the test on all of them.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cfloat>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bnorm/bnorm_mpi.h"
#include "test_support.h"

namespace bnorm_test {
namespace {

bnorm_context* g_ctx = nullptr;  // the contexts the tests use (see main)

// Counters of the bitwise observations for np >= 3 (where MPI may bracket the
// merges differently from the left-to-right reference), printed at the end.
struct BitwiseTally {
  long cases = 0, stats = 0, y = 0, backward = 0;
};
BitwiseTally g_tally;

int Rank(MPI_Comm comm) {
  int r = 0;
  MPI_Comm_rank(comm, &r);
  return r;
}
int Size(MPI_Comm comm) {
  int s = 0;
  MPI_Comm_size(comm, &s);
  return s;
}

// True on every rank iff v is true on every rank of comm.
bool AllTrue(bool v, MPI_Comm comm) {
  int in = v ? 1 : 0, out = 0;
  MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_LAND, comm);
  return out != 0;
}

// The fixture: after each test, every rank learns which ranks failed.
class Mpi : public testing::Test {
 protected:
  void TearDown() override {
    const int failed = HasFailure() ? 1 : 0;
    std::vector<int> all(static_cast<size_t>(Size(MPI_COMM_WORLD)));
    MPI_Allgather(&failed, 1, MPI_INT, all.data(), 1, MPI_INT, MPI_COMM_WORLD);
    std::string others;
    for (size_t r = 0; r < all.size(); ++r) {
      if (all[r] != 0 && static_cast<int>(r) != Rank(MPI_COMM_WORLD)) {
        others += " " + std::to_string(r);
      }
    }
    EXPECT_TRUE(others.empty()) << "this test failed on rank(s)" << others;
  }
};

// ---- Elements in f32, bf16 or f16 ----

size_t ElementSize(bnorm_dtype d) { return d == BNORM_DTYPE_F32 ? 4 : 2; }

std::vector<uint8_t> ToRaw(const std::vector<float>& v, bnorm_dtype d) {
  std::vector<uint8_t> raw(v.size() * ElementSize(d));
  for (size_t i = 0; i < v.size(); ++i) {
    if (d != BNORM_DTYPE_F32) {
      const uint16_t h = d == BNORM_DTYPE_BF16 ? RefFloatToBf16(v[i]) : RefFloatToF16(v[i]);
      std::memcpy(raw.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(raw.data() + 4 * i, &v[i], 4);
    }
  }
  return raw;
}

float ElementAt(const uint8_t* raw, size_t i, bnorm_dtype d) {
  if (d != BNORM_DTYPE_F32) {
    uint16_t h;
    std::memcpy(&h, raw + 2 * i, 2);
    return d == BNORM_DTYPE_BF16 ? RefBf16ToFloat(h) : RefF16ToFloat(h);
  }
  float f;
  std::memcpy(&f, raw + 4 * i, 4);
  return f;
}

// The relative size of one rounding of an output element.
// The absolute rounding of an output element near zero: f16's subnormal
// spacing (2^-24; two outputs rounded on either side of a value differ by at
// most that); bf16 and f32 subnormals are far below every tolerance here.
double OutputAbs(bnorm_dtype d) { return d == BNORM_DTYPE_F16 ? std::ldexp(1.0, -24) : 0.0; }

double OutputUlp(bnorm_dtype d) {
  if (d == BNORM_DTYPE_F32) return FLT_EPSILON;
  return std::ldexp(1.0, d == BNORM_DTYPE_BF16 ? -7 : -10);
}

bool SameBits(const void* a, const void* b, size_t bytes) {
  return bytes == 0 || std::memcmp(a, b, bytes) == 0;
}
template <typename T>
bool SameBits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && SameBits(a.data(), b.data(), a.size() * sizeof(T));
}

// Reports up to 3 elements whose |got - want| > tol(i); returns whether all pass.
template <typename Got, typename Want, typename Tol>
bool Near(const std::string& what, size_t count, const Got& got, const Want& want, const Tol& tol) {
  int bad = 0;
  for (size_t i = 0; i < count; ++i) {
    const double g = static_cast<double>(got(i)), w = static_cast<double>(want(i));
    const double t = static_cast<double>(tol(i));
    if (!(std::fabs(g - w) <= t)) {  // NaN fails
      if (++bad <= 3) {
        ADD_FAILURE() << what << "[" << i << "]: got " << g << ", want " << w << " +- " << t
                      << " (off by " << std::fabs(g - w) << ")";
      }
    }
  }
  if (bad > 3) ADD_FAILURE() << what << ": " << bad << " elements off in all";
  return bad == 0;
}

// |a - b| within k float ulps of the larger.
double FloatUlps(float v, int k) {
  return k * static_cast<double>(std::nextafter(std::fabs(v), INFINITY) - std::fabs(v));
}

// ---- Splitting a batch along n ----

enum class Split { kUneven, kAllFirst, kAllLast, kEven };
const Split kSplits[] = {Split::kUneven, Split::kAllFirst, Split::kAllLast, Split::kEven};

const char* SplitName(Split s) {
  switch (s) {
    case Split::kUneven:
      return "uneven";
    case Split::kAllFirst:
      return "all-on-rank-0";
    case Split::kAllLast:
      return "all-on-last";
    case Split::kEven:
      return "even";
  }
  return "?";
}

// Samples of each of p ranks; kUneven gives rank 1 none (when p > 1) and
// the others different counts.
std::vector<int64_t> SplitCounts(int64_t n, int p, Split kind) {
  std::vector<int64_t> counts(static_cast<size_t>(p), 0);
  switch (kind) {
    case Split::kAllFirst:
      counts[0] = n;
      break;
    case Split::kAllLast:
      counts[static_cast<size_t>(p - 1)] = n;
      break;
    case Split::kEven:
      for (int r = 0; r < p; ++r) counts[static_cast<size_t>(r)] = n / p + (r < n % p ? 1 : 0);
      break;
    case Split::kUneven: {
      std::vector<int64_t> w(static_cast<size_t>(p));
      int64_t total_w = 0;
      for (int r = 0; r < p; ++r) {
        w[static_cast<size_t>(r)] = r == 1 ? 0 : r + 2;  // 2, 0, 4, 5, ...
        total_w += w[static_cast<size_t>(r)];
      }
      int64_t given = 0;
      for (int r = 0; r < p; ++r) {
        counts[static_cast<size_t>(r)] = n * w[static_cast<size_t>(r)] / total_w;
        given += counts[static_cast<size_t>(r)];
      }
      counts[static_cast<size_t>(p - 1)] += n - given;
      break;
    }
  }
  return counts;
}

// ---- One equivalence case ----

struct Case {
  int64_t n, c, spatial;
  bnorm_layout layout;
  bnorm_dtype dtype;
  double offset;
  Split split;
  uint64_t seed;

  std::string Name() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%" PRId64 "x%" PRId64 "x%" PRId64 " %s %s offset %g split %s",
                  n, c, spatial, layout == BNORM_LAYOUT_NCHW ? "NCHW" : "NHWC",
                  dtype == BNORM_DTYPE_F32 ? "f32" : (dtype == BNORM_DTYPE_BF16 ? "bf16" : "f16"),
                  offset, SplitName(split));
    return buf;
  }
};

// The tensors of a case: the whole batch (every rank builds it) and where
// each rank's part starts.
struct Batch {
  Shape whole;
  bnorm_dtype dtype;
  std::vector<float> xf, dyf;  // values (representable in dtype)
  std::vector<uint8_t> x, dy;  // the same in dtype
  std::vector<int64_t> counts, starts;
  std::vector<float> gamma, beta, running_mean0, running_var0;

  Batch(const Case& cs, int p) : whole{cs.n, cs.c, cs.spatial, cs.layout}, dtype(cs.dtype) {
    // Channel means 0.5 apart; closer with many channels, so that bf16 still
    // resolves the N(0, 1) spread of the last channels.
    xf = NormalData(whole, cs.seed, cs.offset, 1.0, cs.c > 64 ? 1e-3 : 0.5);
    dyf = NormalData(whole, cs.seed + 1, 0.25, 1.0, 0.0);
    x = ToRaw(xf, dtype);
    dy = ToRaw(dyf, dtype);
    for (size_t i = 0; i < xf.size(); ++i) {
      xf[i] = ElementAt(x.data(), i, dtype);
      dyf[i] = ElementAt(dy.data(), i, dtype);
    }
    counts = SplitCounts(cs.n, p, cs.split);
    starts.assign(counts.size(), 0);
    for (size_t r = 1; r < counts.size(); ++r) starts[r] = starts[r - 1] + counts[r - 1];
    const size_t C = static_cast<size_t>(cs.c);
    gamma = UniformVector(C, cs.seed + 2, 0.5f, 1.5f);
    beta = UniformVector(C, cs.seed + 3, -0.5f, 0.5f);
    running_mean0 = UniformVector(C, cs.seed + 4, -1.0f, 1.0f);
    running_var0 = UniformVector(C, cs.seed + 5, 0.5f, 2.0f);
  }
  int64_t PerSample() const { return whole.c * whole.spatial; }
  bnorm_tensor_desc Desc(int64_t n) const {
    return bnorm_tensor_desc{n, whole.c, whole.spatial, whole.layout, dtype};
  }
  bnorm_tensor_desc PartDesc(int r) const { return Desc(counts[static_cast<size_t>(r)]); }
  size_t PartElements(int r) const {
    return static_cast<size_t>(counts[static_cast<size_t>(r)] * PerSample());
  }
  size_t PartOffset(int r) const {  // in elements
    return static_cast<size_t>(starts[static_cast<size_t>(r)] * PerSample());
  }
  // Rank r's slice of a whole-batch tensor; NULL when it holds no samples
  // (slices along n are contiguous in both layouts).
  const uint8_t* Part(const std::vector<uint8_t>& t, int r) const {
    return counts[static_cast<size_t>(r)] == 0 ? nullptr
                                               : t.data() + PartOffset(r) * ElementSize(dtype);
  }
};

struct ForwardOut {
  std::vector<uint8_t> y;
  std::vector<float> running_mean, running_var, save_mean, save_invstd;
};
struct BackwardOut {
  std::vector<uint8_t> dx;
  std::vector<float> dgamma, dbeta;
};

ForwardOut MakeForwardOut(const Batch& b, size_t elements) {
  ForwardOut o;
  const size_t C = static_cast<size_t>(b.whole.c);
  o.y.assign(elements * ElementSize(b.dtype), 0xA5);
  o.running_mean = b.running_mean0;
  o.running_var = b.running_var0;
  o.save_mean.assign(C, -77.0f);
  o.save_invstd.assign(C, -77.0f);
  return o;
}

BackwardOut MakeBackwardOut(const Batch& b, size_t elements) {
  BackwardOut o;
  const size_t C = static_cast<size_t>(b.whole.c);
  o.dx.assign(elements * ElementSize(b.dtype), 0xA5);
  o.dgamma.assign(C, -77.0f);
  o.dbeta.assign(C, -77.0f);
  return o;
}

uint8_t* DataOrNull(std::vector<uint8_t>& v) { return v.empty() ? nullptr : v.data(); }

// Per-channel arrays bitwise equal to rank 0's, on every rank of comm.
bool SameOnAllRanks(const std::vector<std::vector<float>*>& arrays, MPI_Comm comm) {
  std::vector<float> mine;
  for (const auto* a : arrays) mine.insert(mine.end(), a->begin(), a->end());
  std::vector<float> root = mine;
  MPI_Bcast(root.data(), static_cast<int>(root.size()), MPI_FLOAT, 0, comm);
  return AllTrue(SameBits(mine, root), comm);
}

constexpr float kEps = 1e-5f;
constexpr float kMomentum = 0.1f;

// Runs one case on comm: distributed forward and backward against (a) the
// split API in one process on the concatenated batch, (b) the fused calls on
// the whole batch, (c) the long-double reference. The same collectives on
// every rank whatever the results.
void RunCase(const Case& cs, MPI_Comm comm, const bnorm_context* ctx) {
  SCOPED_TRACE(cs.Name());
  const int rank = Rank(comm), p = Size(comm);
  const Batch b(cs, p);
  const size_t C = static_cast<size_t>(cs.c);
  const int64_t total = cs.n * cs.spatial;
  const bnorm_tensor_desc part = b.PartDesc(rank);
  const size_t mine = b.PartElements(rank), off = b.PartOffset(rank);
  const bnorm_dtype dt = cs.dtype;

  // ---- Distributed forward. ----
  ForwardOut dist = MakeForwardOut(b, mine);
  const bnorm_status fs = bnorm_mpi_forward_training(
      comm, ctx, &part, b.Part(b.x, rank), DataOrNull(dist.y), b.gamma.data(), b.beta.data(), kEps,
      kMomentum, dist.running_mean.data(), dist.running_var.data(), dist.save_mean.data(),
      dist.save_invstd.data());
  EXPECT_EQ(fs, BNORM_OK) << bnorm_status_string(fs);

  // ---- (a) Split reference in this process: stats of every part in rank
  // order, merged left to right, applied to this rank's part. ----
  std::vector<double> means(C * static_cast<size_t>(p)), m2s(C * static_cast<size_t>(p));
  std::vector<int64_t> part_counts(static_cast<size_t>(p));
  for (int r = 0; r < p; ++r) {
    const bnorm_tensor_desc d = b.PartDesc(r);
    part_counts[static_cast<size_t>(r)] = d.n * d.spatial;
    EXPECT_EQ(bnorm_stats(ctx, &d, b.Part(b.x, r), means.data() + C * static_cast<size_t>(r),
                          m2s.data() + C * static_cast<size_t>(r)),
              BNORM_OK);
  }
  int64_t merged_count = -1;
  std::vector<double> mean(C), m2(C);
  EXPECT_EQ(bnorm_stats_merge(cs.c, p, part_counts.data(), means.data(), m2s.data(), &merged_count,
                              mean.data(), m2.data()),
            BNORM_OK);
  EXPECT_EQ(merged_count, total);
  ForwardOut split = MakeForwardOut(b, mine);
  EXPECT_EQ(bnorm_forward_apply(ctx, &part, b.Part(b.x, rank), DataOrNull(split.y), b.gamma.data(),
                                b.beta.data(), total, mean.data(), m2.data(), kEps, kMomentum,
                                split.running_mean.data(), split.running_var.data(),
                                split.save_mean.data(), split.save_invstd.data()),
            BNORM_OK);

  const bool stats_bitwise = SameBits(dist.save_mean, split.save_mean) &&
                             SameBits(dist.save_invstd, split.save_invstd) &&
                             SameBits(dist.running_mean, split.running_mean) &&
                             SameBits(dist.running_var, split.running_var);
  const bool y_bitwise = SameBits(dist.y, split.y);
  auto per_channel = [](const std::vector<float>& v) { return [&v](size_t i) { return v[i]; }; };
  if (p <= 2) {
    // Two parts are merged as (p0 + p1) however MPI runs the operator: the
    // reference's bits exactly.
    EXPECT_TRUE(stats_bitwise) << "per-channel outputs differ from the split reference";
    EXPECT_TRUE(y_bitwise) << "y differs from the split reference";
  }
  {
    // With 3+ ranks MPI may bracket the merges as (p0 + p1) + (p2 + p3): the
    // double statistics then differ in their last few bits (Chan's merge is
    // exact up to a few double roundings, ~1e-15 relative), which moves the
    // float outputs by at most one rounding: 2 float ulps allow for it.
    Near("save_mean vs split", C, per_channel(dist.save_mean), per_channel(split.save_mean),
         [&](size_t i) { return FloatUlps(split.save_mean[i], 2); });
    Near("save_invstd vs split", C, per_channel(dist.save_invstd), per_channel(split.save_invstd),
         [&](size_t i) { return FloatUlps(split.save_invstd[i], 2); });
    Near("running_mean vs split", C, per_channel(dist.running_mean),
         per_channel(split.running_mean),
         [&](size_t i) { return FloatUlps(split.running_mean[i], 2) + 1e-30; });
    Near("running_var vs split", C, per_channel(dist.running_var), per_channel(split.running_var),
         [&](size_t i) { return FloatUlps(split.running_var[i], 2); });
    // y = (x - mean) * scale + shift: a one-rounding change of scale and
    // shift moves y by an ulp of each term, then one more output rounding.
    Near(
        "y vs split", mine, [&](size_t i) { return ElementAt(dist.y.data(), i, dt); },
        [&](size_t i) { return ElementAt(split.y.data(), i, dt); },
        [&](size_t i) {
          const size_t ch = static_cast<size_t>(
              cs.layout == BNORM_LAYOUT_NCHW ? ((off + i) / static_cast<size_t>(cs.spatial)) % C
                                             : (off + i) % C);
          const double yv = ElementAt(split.y.data(), i, dt);
          const double term = std::fabs(b.xf[off + i] - split.save_mean[ch]) *
                              split.save_invstd[ch] * std::fabs(b.gamma[ch]);
          return 4 * FLT_EPSILON * (term + std::fabs(b.beta[ch]) + std::fabs(yv)) +
                 OutputUlp(dt) * std::fabs(yv) + OutputAbs(dt);
        });
  }

  // ---- (b) The fused call on the whole batch, and (c) the long-double
  // reference. ----
  ForwardOut fused = MakeForwardOut(b, b.xf.size());
  const bnorm_tensor_desc whole_desc = b.Desc(cs.n);
  EXPECT_EQ(bnorm_forward_training(ctx, &whole_desc, b.x.data(), fused.y.data(), b.gamma.data(),
                                   b.beta.data(), kEps, kMomentum, fused.running_mean.data(),
                                   fused.running_var.data(), fused.save_mean.data(),
                                   fused.save_invstd.data()),
            BNORM_OK);
  const std::vector<RefStats> ref = ReferenceStats(b.whole, b.xf);
  std::vector<double> sd(C);
  for (size_t ch = 0; ch < C; ++ch) sd[ch] = std::sqrt(static_cast<double>(ref[ch].var));
  // Both the distributed and the fused statistics are within 1e-6 of
  // |mean| + sd (mean) and 1e-5 relative (variance) of the reference, the
  // library's accuracy bar (tests/accuracy_test.cc), also at offset 1e4.
  Near(
      "save_mean vs long double", C, per_channel(dist.save_mean),
      [&](size_t i) { return ref[i].mean; },
      [&](size_t i) { return 1e-6 * (std::fabs(static_cast<double>(ref[i].mean)) + sd[i]); });
  Near(
      "biased variance (from save_invstd) vs long double", C,
      [&](size_t i) {
        const double is = dist.save_invstd[i];
        return 1.0 / (is * is) - static_cast<double>(kEps);
      },
      [&](size_t i) { return ref[i].var; },
      // Plus the float rounding of invstd, carried into 1/invstd^2 (it
      // matters where var is small next to eps, e.g. a constant channel).
      [&](size_t i) {
        return 1e-5 * static_cast<double>(ref[i].var) +
               4 * FLT_EPSILON * (static_cast<double>(ref[i].var) + static_cast<double>(kEps));
      });
  const double m = static_cast<double>(total);
  Near(
      "running_var vs long double", C, per_channel(dist.running_var),
      [&](size_t i) {
        return (1 - static_cast<double>(kMomentum)) * b.running_var0[i] +
               static_cast<double>(kMomentum) * static_cast<double>(ref[i].var) * m / (m - 1);
      },
      [&](size_t i) { return 1e-5 * static_cast<double>(dist.running_var[i]); });
  Near("save_mean vs fused", C, per_channel(dist.save_mean), per_channel(fused.save_mean),
       [&](size_t i) { return 2e-6 * (std::fabs(static_cast<double>(ref[i].mean)) + sd[i]); });
  Near("save_invstd vs fused", C, per_channel(dist.save_invstd), per_channel(fused.save_invstd),
       [&](size_t i) { return 1e-5 * static_cast<double>(fused.save_invstd[i]); });
  Near("running_mean vs fused", C, per_channel(dist.running_mean), per_channel(fused.running_mean),
       [&](size_t i) {
         return 2e-6 * (std::fabs(static_cast<double>(ref[i].mean)) + sd[i]) +
                FloatUlps(fused.running_mean[i], 2);
       });
  Near("running_var vs fused", C, per_channel(dist.running_var), per_channel(fused.running_var),
       [&](size_t i) { return 1e-5 * static_cast<double>(fused.running_var[i]); });
  // y: the statistics' differences above carried through, plus the
  // roundings of y = (x - mean) * scale + shift and of the output.
  Near(
      "y vs fused on the whole batch", mine,
      [&](size_t i) { return ElementAt(dist.y.data(), i, dt); },
      [&](size_t i) { return ElementAt(fused.y.data(), (off + i) * 1, dt); },
      [&](size_t i) {
        const size_t ch = static_cast<size_t>(
            cs.layout == BNORM_LAYOUT_NCHW ? ((off + i) / static_cast<size_t>(cs.spatial)) % C
                                           : (off + i) % C);
        const double yv = ElementAt(fused.y.data(), off + i, dt);
        const double g = std::fabs(b.gamma[ch]), is = fused.save_invstd[ch];
        const double xmu = std::fabs(b.xf[off + i] - fused.save_mean[ch]);
        return g * is * 2e-6 * (std::fabs(static_cast<double>(ref[ch].mean)) + sd[ch]) +
               g * xmu * is * 1e-5 +
               4 * FLT_EPSILON * (g * xmu * is + std::fabs(b.beta[ch]) + std::fabs(yv)) +
               2 * OutputUlp(dt) * std::fabs(yv) + OutputAbs(dt) + 1e-30;
      });

  // ---- Distributed backward, with the distributed forward's statistics. ----
  BackwardOut dback = MakeBackwardOut(b, mine);
  const bnorm_status bs = bnorm_mpi_backward(
      comm, ctx, &part, b.Part(b.x, rank), b.Part(b.dy, rank), DataOrNull(dback.dx), b.gamma.data(),
      dist.save_mean.data(), dist.save_invstd.data(), dback.dgamma.data(), dback.dbeta.data());
  EXPECT_EQ(bs, BNORM_OK) << bnorm_status_string(bs);

  // (a) Split reference: every part's sums, added in rank order in double.
  std::vector<double> sum_dy(C, 0.0), sum_dy_xmu(C, 0.0), abs_dy(C, 0.0), abs_dy_xmu(C, 0.0);
  for (int r = 0; r < p; ++r) {
    const bnorm_tensor_desc d = b.PartDesc(r);
    std::vector<double> s1(C, -1.0), s2(C, -1.0);
    EXPECT_EQ(bnorm_backward_reduce(ctx, &d, b.Part(b.x, r), b.Part(b.dy, r), dist.save_mean.data(),
                                    s1.data(), s2.data()),
              BNORM_OK);
    for (size_t ch = 0; ch < C; ++ch) {
      sum_dy[ch] += s1[ch];
      sum_dy_xmu[ch] += s2[ch];
      abs_dy[ch] += std::fabs(s1[ch]);
      abs_dy_xmu[ch] += std::fabs(s2[ch]);
    }
  }
  BackwardOut sback = MakeBackwardOut(b, mine);
  EXPECT_EQ(bnorm_backward_apply(ctx, &part, b.Part(b.x, rank), b.Part(b.dy, rank),
                                 DataOrNull(sback.dx), b.gamma.data(), dist.save_mean.data(),
                                 dist.save_invstd.data(), total, sum_dy.data(), sum_dy_xmu.data(),
                                 sback.dgamma.data(), sback.dbeta.data()),
            BNORM_OK);
  const bool backward_bitwise = SameBits(dback.dx, sback.dx) &&
                                SameBits(dback.dgamma, sback.dgamma) &&
                                SameBits(dback.dbeta, sback.dbeta);
  if (p <= 2) {
    EXPECT_TRUE(backward_bitwise) << "backward differs from the split reference";
  }
  {
    // 3+ ranks: MPI_SUM may add in another order; each sum then moves by at
    // most p double roundings of the parts' magnitudes.
    const double k = 4.0 * p * DBL_EPSILON;
    Near("dbeta vs split", C, per_channel(dback.dbeta), per_channel(sback.dbeta),
         [&](size_t i) { return FloatUlps(sback.dbeta[i], 2) + k * abs_dy[i] + 1e-30; });
    Near("dgamma vs split", C, per_channel(dback.dgamma), per_channel(sback.dgamma), [&](size_t i) {
      return FloatUlps(sback.dgamma[i], 2) + k * abs_dy_xmu[i] * dist.save_invstd[i] + 1e-30;
    });
    Near(
        "dx vs split", mine, [&](size_t i) { return ElementAt(dback.dx.data(), i, dt); },
        [&](size_t i) { return ElementAt(sback.dx.data(), i, dt); },
        [&](size_t i) {
          const size_t ch = static_cast<size_t>(
              cs.layout == BNORM_LAYOUT_NCHW ? ((off + i) / static_cast<size_t>(cs.spatial)) % C
                                             : (off + i) % C);
          const double is = dist.save_invstd[ch], a = std::fabs(b.gamma[ch]) * is;
          const double xmu = std::fabs(b.xf[off + i] - dist.save_mean[ch]);
          const double terms = a * (std::fabs(b.dyf[off + i]) + abs_dy[ch] / m) +
                               a * is * is * xmu * abs_dy_xmu[ch] / m;
          const double v = ElementAt(sback.dx.data(), i, dt);
          return 4 * FLT_EPSILON * terms + OutputUlp(dt) * std::fabs(v) + OutputAbs(dt) + 1e-30;
        });
  }
  // (b) The fused backward on the whole batch, with the long-double
  // reference's magnitudes for the tolerances (as tests/backward_test.cc).
  BackwardOut fback = MakeBackwardOut(b, b.xf.size());
  EXPECT_EQ(bnorm_backward(ctx, &whole_desc, b.x.data(), b.dy.data(), fback.dx.data(),
                           b.gamma.data(), dist.save_mean.data(), dist.save_invstd.data(),
                           fback.dgamma.data(), fback.dbeta.data()),
            BNORM_OK);
  const RefBackward rb = ReferenceBackward(b.whole, false, b.xf, b.dyf, b.gamma.data(),
                                           dist.save_mean, dist.save_invstd);
  Near("dbeta vs fused", C, per_channel(dback.dbeta), per_channel(fback.dbeta),
       [&](size_t i) { return 2e-5 * static_cast<double>(rb.sum_abs_dy[i]) + 1e-30; });
  Near("dgamma vs fused", C, per_channel(dback.dgamma), per_channel(fback.dgamma), [&](size_t i) {
    return 2e-5 * static_cast<double>(rb.sum_abs_dy_xmu[i]) * dist.save_invstd[i] + 1e-30;
  });
  Near(
      "dx vs fused on the whole batch", mine,
      [&](size_t i) { return ElementAt(dback.dx.data(), i, dt); },
      [&](size_t i) { return ElementAt(fback.dx.data(), off + i, dt); },
      [&](size_t i) {
        const double v = ElementAt(fback.dx.data(), off + i, dt);
        return 2e-5 * static_cast<double>(rb.dx_scale[off + i]) + 2 * OutputUlp(dt) * std::fabs(v) +
               OutputAbs(dt) + 1e-30;
      });
  Near(
      "dbeta vs long double", C, per_channel(dback.dbeta), [&](size_t i) { return rb.dbeta[i]; },
      [&](size_t i) { return 1e-5 * static_cast<double>(rb.sum_abs_dy[i]) + 1e-30; });

  // ---- 2. Per-channel outputs bitwise identical on all ranks. ----
  EXPECT_TRUE(SameOnAllRanks({&dist.save_mean, &dist.save_invstd, &dist.running_mean,
                              &dist.running_var, &dback.dgamma, &dback.dbeta},
                             comm))
      << "per-channel outputs differ between ranks";

  // The bitwise observations, agreed over comm.
  const bool all_stats = AllTrue(stats_bitwise, comm);
  const bool all_y = AllTrue(y_bitwise, comm);
  const bool all_backward = AllTrue(backward_bitwise, comm);
  if (p >= 3) {
    if (rank == 0 && !(all_stats && all_y && all_backward)) {
      std::printf(
          "[rank 0] np = %d, %s: not bitwise equal to the left-to-right split "
          "reference (statistics %s, y %s, backward %s), within the tolerances\n",
          p, cs.Name().c_str(), all_stats ? "equal" : "differ", all_y ? "equal" : "differ",
          all_backward ? "equal" : "differ");
    }
    ++g_tally.cases;
    g_tally.stats += all_stats ? 1 : 0;
    g_tally.y += all_y ? 1 : 0;
    g_tally.backward += all_backward ? 1 : 0;
  }
}

std::vector<Case> Cases(bool small) {
  struct S {
    int64_t n, c, spatial;
  };
  const std::vector<S> shapes = small ? std::vector<S>{{9, 5, 7}, {4, 1, 1}}
                                      : std::vector<S>{{12, 3, 5},
                                                       {7, 1, 13},
                                                       {11, 17, 1},
                                                       {5, 4, 49},
                                                       {13, 7, 3},
                                                       {1, 5, 3},
                                                       {3, 1, 1},
                                                       // Exchange of 64 KiB: MPI may pick
                                                       // another algorithm than for small c.
                                                       {6, 4099, 2}};
  std::vector<Case> out;
  uint64_t seed = 1000;
  for (const S& s : shapes) {
    for (bnorm_layout layout : {BNORM_LAYOUT_NCHW, BNORM_LAYOUT_NHWC}) {
      for (bnorm_dtype dtype : {BNORM_DTYPE_F32, BNORM_DTYPE_BF16, BNORM_DTYPE_F16}) {
        // bf16 cannot hold N(0,1) on top of 1e4 (its ulp there is 64), nor
        // f16 (8).
        const std::vector<double> offsets =
            dtype == BNORM_DTYPE_F32 ? std::vector<double>{0.0, 1e4} : std::vector<double>{3.0};
        for (double offset : offsets) {
          for (Split split : kSplits) {
            // f16 takes bf16's path with another conversion: one split.
            if ((small || dtype == BNORM_DTYPE_F16) && split != Split::kUneven) continue;
            out.push_back(Case{s.n, s.c, s.spatial, layout, dtype, offset, split, seed});
            seed += 10;
          }
        }
      }
    }
  }
  return out;
}

// 1 and 2: distributed == single process on the concatenated batch.
TEST_F(Mpi, MatchesSingleProcessOnConcatenatedBatch) {
  for (const Case& cs : Cases(false)) RunCase(cs, MPI_COMM_WORLD, g_ctx);
}

// The process default context (all cores) gives the same results.
TEST_F(Mpi, DefaultContext) {
  for (const Case& cs : Cases(true)) RunCase(cs, MPI_COMM_WORLD, nullptr);
}

// 3: under every ISA target, set on all ranks.
TEST_F(Mpi, EveryTarget) {
  for (const std::string& name : TargetNames()) {
    SCOPED_TRACE("target " + name);
    EXPECT_EQ(bnorm_set_target(name.c_str()), BNORM_OK);
    EXPECT_STREQ(bnorm_active_target(), name.c_str());
    for (const Case& cs : Cases(true)) RunCase(cs, MPI_COMM_WORLD, g_ctx);
    bnorm_set_target(nullptr);
  }
}

// 5: a sub-communicator (ranks split by parity) gives each group the
// statistics of its own ranks' data (RunCase's references use only the
// group's batch; the groups' batches differ through the seed).
TEST_F(Mpi, SubCommunicator) {
  const int color = Rank(MPI_COMM_WORLD) % 2;
  MPI_Comm sub = MPI_COMM_NULL;
  EXPECT_EQ(MPI_Comm_split(MPI_COMM_WORLD, color, Rank(MPI_COMM_WORLD), &sub), MPI_SUCCESS);
  for (Case cs : Cases(true)) {
    cs.seed += 77777u * static_cast<uint64_t>(color);
    RunCase(cs, sub, g_ctx);
  }
  // The two groups' statistics differ (the test would not see a leak of the
  // other group's data otherwise): compare group 0's with group 1's.
  Case cs{10,
          3,
          4,
          BNORM_LAYOUT_NCHW,
          BNORM_DTYPE_F32,
          0.0,
          Split::kEven,
          5000u + 77777u * static_cast<uint64_t>(color)};
  const Batch b(cs, Size(sub));
  ForwardOut o = MakeForwardOut(b, b.PartElements(Rank(sub)));
  const bnorm_tensor_desc d = b.PartDesc(Rank(sub));
  EXPECT_EQ(bnorm_mpi_forward_training(sub, g_ctx, &d, b.Part(b.x, Rank(sub)), DataOrNull(o.y),
                                       nullptr, nullptr, kEps, kMomentum, nullptr, nullptr,
                                       o.save_mean.data(), nullptr),
            BNORM_OK);
  std::vector<float> world0 = o.save_mean;
  MPI_Bcast(world0.data(), static_cast<int>(world0.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  if (Size(MPI_COMM_WORLD) >= 2 && color == 1) {
    EXPECT_FALSE(SameBits(world0, o.save_mean)) << "group 1 got group 0's statistics";
  }
  MPI_Comm_free(&sub);
}

// y == x and dx == dy (in place) give the out-of-place results.
TEST_F(Mpi, InPlace) {
  const int rank = Rank(MPI_COMM_WORLD), p = Size(MPI_COMM_WORLD);
  const Case cs{14, 6, 5, BNORM_LAYOUT_NHWC, BNORM_DTYPE_F32, 1.0, Split::kUneven, 4242};
  const Batch b(cs, p);
  const bnorm_tensor_desc d = b.PartDesc(rank);
  const size_t mine = b.PartElements(rank);
  ForwardOut o = MakeForwardOut(b, mine);
  EXPECT_EQ(bnorm_mpi_forward_training(MPI_COMM_WORLD, g_ctx, &d, b.Part(b.x, rank),
                                       DataOrNull(o.y), b.gamma.data(), b.beta.data(), kEps,
                                       kMomentum, o.running_mean.data(), o.running_var.data(),
                                       o.save_mean.data(), o.save_invstd.data()),
            BNORM_OK);
  ForwardOut q = MakeForwardOut(b, 0);
  std::vector<uint8_t> inplace(b.Part(b.x, rank), b.Part(b.x, rank) + o.y.size());
  EXPECT_EQ(bnorm_mpi_forward_training(MPI_COMM_WORLD, g_ctx, &d, DataOrNull(inplace),
                                       DataOrNull(inplace), b.gamma.data(), b.beta.data(), kEps,
                                       kMomentum, q.running_mean.data(), q.running_var.data(),
                                       q.save_mean.data(), q.save_invstd.data()),
            BNORM_OK);
  EXPECT_TRUE(SameBits(inplace, o.y));
  EXPECT_TRUE(SameBits(q.save_mean, o.save_mean) && SameBits(q.save_invstd, o.save_invstd));

  BackwardOut g = MakeBackwardOut(b, mine);
  EXPECT_EQ(bnorm_mpi_backward(MPI_COMM_WORLD, g_ctx, &d, b.Part(b.x, rank), b.Part(b.dy, rank),
                               DataOrNull(g.dx), b.gamma.data(), o.save_mean.data(),
                               o.save_invstd.data(), g.dgamma.data(), g.dbeta.data()),
            BNORM_OK);
  std::vector<uint8_t> dinplace(b.Part(b.dy, rank), b.Part(b.dy, rank) + g.dx.size());
  BackwardOut h = MakeBackwardOut(b, 0);
  EXPECT_EQ(bnorm_mpi_backward(MPI_COMM_WORLD, g_ctx, &d, b.Part(b.x, rank), DataOrNull(dinplace),
                               DataOrNull(dinplace), b.gamma.data(), o.save_mean.data(),
                               o.save_invstd.data(), h.dgamma.data(), h.dbeta.data()),
            BNORM_OK);
  EXPECT_TRUE(SameBits(dinplace, g.dx));
  EXPECT_TRUE(SameBits(h.dgamma, g.dgamma) && SameBits(h.dbeta, g.dbeta));
  // dx == NULL: parameter gradients only, the same bits.
  BackwardOut k = MakeBackwardOut(b, 0);
  EXPECT_EQ(bnorm_mpi_backward(MPI_COMM_WORLD, g_ctx, &d, b.Part(b.x, rank), b.Part(b.dy, rank),
                               nullptr, b.gamma.data(), o.save_mean.data(), o.save_invstd.data(),
                               k.dgamma.data(), k.dbeta.data()),
            BNORM_OK);
  EXPECT_TRUE(SameBits(k.dgamma, g.dgamma) && SameBits(k.dbeta, g.dbeta));
}

// ---- 4. Errors ----

// Every argument of both calls, with buffers large enough for any of the
// variations below (c up to kC + 1, f32), outputs filled with a sentinel.
constexpr int64_t kN = 3, kC = 4, kS = 5;
struct Args {
  bool backward = false;
  bnorm_tensor_desc desc{kN, kC, kS, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  bool desc_null = false;
  std::vector<float> x, dy, gamma, beta, save_mean_in, save_invstd_in;
  const void* xp = nullptr;
  const void* dyp = nullptr;
  void* yp = nullptr;  // y (forward) or dx (backward)
  const float* gammap = nullptr;
  float eps = kEps, momentum = kMomentum;
  // Outputs.
  std::vector<float> y, running_mean, running_var, save_mean, save_invstd, dgamma, dbeta;
  float* dgammap = nullptr;
  float* dbetap = nullptr;
  float* save_meanp = nullptr;
  MPI_Comm comm = MPI_COMM_WORLD;

  explicit Args(uint64_t seed) {
    const size_t big = static_cast<size_t>(kN * (kC + 1) * kS);
    x = UniformVector(big, seed, -1.0f, 1.0f);
    dy = UniformVector(big, seed + 1, -1.0f, 1.0f);
    gamma.assign(kC + 1, 1.0f);
    beta.assign(kC + 1, 0.0f);
    save_mean_in.assign(kC + 1, 0.0f);
    save_invstd_in.assign(kC + 1, 1.0f);
    y.assign(big, -77.0f);
    running_mean.assign(kC + 1, -77.0f);
    running_var.assign(kC + 1, -77.0f);
    save_mean.assign(kC + 1, -77.0f);
    save_invstd.assign(kC + 1, -77.0f);
    dgamma.assign(kC + 1, -77.0f);
    dbeta.assign(kC + 1, -77.0f);
    xp = x.data();
    dyp = dy.data();
    yp = y.data();
    gammap = gamma.data();
    dgammap = dgamma.data();
    dbetap = dbeta.data();
    save_meanp = save_mean.data();
  }
  bnorm_status Call() {
    const bnorm_tensor_desc* d = desc_null ? nullptr : &desc;
    if (backward) {
      return bnorm_mpi_backward(comm, g_ctx, d, xp, dyp, yp, gammap, save_mean_in.data(),
                                save_invstd_in.data(), dgammap, dbetap);
    }
    return bnorm_mpi_forward_training(comm, g_ctx, d, xp, yp, gammap, beta.data(), eps, momentum,
                                      running_mean.data(), running_var.data(), save_meanp,
                                      save_invstd.data());
  }
  bool OutputsUntouched() const {
    auto all = [](const std::vector<float>& v) {
      return std::all_of(v.begin(), v.end(), [](float f) { return f == -77.0f; });
    };
    return all(y) && all(running_mean) && all(running_var) && all(save_mean) && all(save_invstd) &&
           all(dgamma) && all(dbeta);
  }
};

// Runs one error case: `edit` changes this rank's arguments, `expected` is
// the status this rank must get. Checks no output was written on any rank.
template <typename Edit, typename Expected>
void ErrorCase(const std::string& what, bool backward, const Edit& edit, const Expected& expected) {
  SCOPED_TRACE(what);
  const int rank = Rank(MPI_COMM_WORLD), p = Size(MPI_COMM_WORLD);
  Args a(900 + static_cast<uint64_t>(rank));
  a.backward = backward;
  edit(rank, p, a);
  const bnorm_status want = expected(rank, p);
  const bnorm_status got = a.Call();
  EXPECT_EQ(got, want) << "rank " << rank << ": got " << bnorm_status_string(got) << ", want "
                       << bnorm_status_string(want);
  EXPECT_TRUE(a.OutputsUntouched()) << "rank " << rank << " wrote an output";
  EXPECT_TRUE(AllTrue(got == want && a.OutputsUntouched(), MPI_COMM_WORLD))
      << "some rank got an unexpected status or wrote an output";
}

// The status of a rank whose own arguments are bad (last rank) and of the others.
auto OneBad(bnorm_status own) {
  return [own](int rank, int p) { return rank == p - 1 ? own : BNORM_ERR_PEER; };
}
auto Everywhere(bnorm_status s) {
  return [s](int, int) { return s; };
}
// A mismatch can only exist with 2+ ranks; with 1 the call succeeds (and
// then writes its outputs, so those cases run only for p >= 2).
bool Multi() { return Size(MPI_COMM_WORLD) >= 2; }

TEST_F(Mpi, BadArgumentOnOneRank) {
  for (bool bwd : {false, true}) {
    const std::string call = bwd ? "backward: " : "forward: ";
    ErrorCase(
        call + "NULL x with n > 0", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) a.xp = nullptr;
        },
        OneBad(BNORM_ERR_NULL_POINTER));
    ErrorCase(
        call + "NULL desc", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) a.desc_null = true;
        },
        OneBad(BNORM_ERR_NULL_POINTER));
    ErrorCase(
        call + "n < 0", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) a.desc.n = -1;
        },
        OneBad(BNORM_ERR_BAD_SHAPE));
    ErrorCase(
        call + "spatial 0", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) a.desc.spatial = 0;
        },
        OneBad(BNORM_ERR_BAD_SHAPE));
    ErrorCase(
        call + "unknown layout", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) a.desc.layout = static_cast<bnorm_layout>(7);
        },
        OneBad(BNORM_ERR_BAD_ARGUMENT));
    // A rank with no samples but bad arguments still spoils the call.
    ErrorCase(
        call + "n = 0 elsewhere, bad dtype on the last rank", bwd,
        [](int r, int p, Args& a) {
          if (r != p - 1) a.desc.n = 0;
          if (r == p - 1) a.desc.dtype = static_cast<bnorm_dtype>(9);
        },
        OneBad(BNORM_ERR_BAD_ARGUMENT));
  }
  ErrorCase(
      "forward: eps < 0", false,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.eps = -1.0f;
      },
      OneBad(BNORM_ERR_BAD_ARGUMENT));
  ErrorCase(
      "forward: eps NaN", false,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.eps = NAN;
      },
      OneBad(BNORM_ERR_BAD_ARGUMENT));
  ErrorCase(
      "forward: momentum > 1", false,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.momentum = 1.5f;
      },
      OneBad(BNORM_ERR_BAD_ARGUMENT));
  ErrorCase(
      "forward: y overlapping gamma", false,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.gammap = a.y.data() + 3;
      },
      OneBad(BNORM_ERR_ALIAS));
  ErrorCase(
      "forward: save_mean overlapping x", false,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.save_meanp = a.x.data() + 2;
      },
      OneBad(BNORM_ERR_ALIAS));
  ErrorCase(
      "forward: NULL y", false,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.yp = nullptr;
      },
      OneBad(BNORM_ERR_NULL_POINTER));
  ErrorCase(
      "backward: NULL dy", true,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.dyp = nullptr;
      },
      OneBad(BNORM_ERR_NULL_POINTER));
  ErrorCase(
      "backward: dgamma overlapping dbeta", true,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.dbetap = a.dgamma.data() + 1;
      },
      OneBad(BNORM_ERR_ALIAS));
  ErrorCase(
      "backward: dx overlapping x", true,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.yp = a.x.data() + 1;
      },
      OneBad(BNORM_ERR_ALIAS));
  // Bad arguments on every rank: each its own status.
  ErrorCase(
      "forward: NULL x on rank 0, eps < 0 on the others", false,
      [](int r, int, Args& a) {
        if (r == 0)
          a.xp = nullptr;
        else
          a.eps = -1.0f;
      },
      [](int r, int) { return r == 0 ? BNORM_ERR_NULL_POINTER : BNORM_ERR_BAD_ARGUMENT; });
}

TEST_F(Mpi, MismatchedFieldsBetweenRanks) {
  if (!Multi()) {
    // One rank cannot disagree with itself; the cases below would succeed.
    EXPECT_TRUE(AllTrue(true, MPI_COMM_WORLD));
    return;  // no collective follows on any rank (all have p == 1)
  }
  for (bool bwd : {false, true}) {
    const std::string call = bwd ? "backward: " : "forward: ";
    ErrorCase(
        call + "c", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) a.desc.c = kC + 1;
        },
        Everywhere(BNORM_ERR_MISMATCH));
    ErrorCase(
        call + "c on rank 0 only", bwd,
        [](int r, int, Args& a) {
          if (r == 0) a.desc.c = kC - 1;
        },
        Everywhere(BNORM_ERR_MISMATCH));
    ErrorCase(
        call + "spatial", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) a.desc.spatial = kS - 1;
        },
        Everywhere(BNORM_ERR_MISMATCH));
    ErrorCase(
        call + "layout", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) a.desc.layout = BNORM_LAYOUT_NHWC;
        },
        Everywhere(BNORM_ERR_MISMATCH));
    ErrorCase(
        call + "dtype", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) a.desc.dtype = BNORM_DTYPE_BF16;
        },
        Everywhere(BNORM_ERR_MISMATCH));
    ErrorCase(
        call + "c, with n = 0 on the odd one", bwd,
        [](int r, int p, Args& a) {
          if (r == p - 1) {
            a.desc.c = kC + 1;
            a.desc.n = 0;
          }
        },
        Everywhere(BNORM_ERR_MISMATCH));
  }
  ErrorCase(
      "forward: eps", false,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.eps = 1e-3f;
      },
      Everywhere(BNORM_ERR_MISMATCH));
  ErrorCase(
      "forward: momentum", false,
      [](int r, int p, Args& a) {
        if (r == p - 1) a.momentum = 0.2f;
      },
      Everywhere(BNORM_ERR_MISMATCH));
  // One rank in backward while the others are in forward.
  ErrorCase(
      "forward on all but the last rank, backward there", false,
      [](int r, int p, Args& a) { a.backward = r == p - 1; }, Everywhere(BNORM_ERR_MISMATCH));
  ErrorCase(
      "backward on rank 0, forward elsewhere", false,
      [](int r, int, Args& a) { a.backward = r == 0; }, Everywhere(BNORM_ERR_MISMATCH));
  // A bad argument wins over a mismatch: the bad rank gets its own status.
  ErrorCase(
      "forward: c mismatch on rank 0 and NULL x on the last", false,
      [](int r, int p, Args& a) {
        if (r == 0) a.desc.c = kC + 1;
        if (r == p - 1) a.xp = nullptr;
      },
      OneBad(BNORM_ERR_NULL_POINTER));
}

TEST_F(Mpi, TooFewValuesAndEmptyBatch) {
  // One value per channel in the whole batch: n = 1, spatial = 1 on the last
  // rank, none elsewhere.
  ErrorCase(
      "forward: 1 value per channel in all", false,
      [](int r, int p, Args& a) {
        a.desc.spatial = 1;
        a.desc.n = r == p - 1 ? 1 : 0;
      },
      Everywhere(BNORM_ERR_TOO_FEW_VALUES));
  ErrorCase(
      "forward: every rank n = 0", false,
      [](int, int, Args& a) {
        a.desc.n = 0;
        a.xp = nullptr;
        a.yp = nullptr;
      },
      Everywhere(BNORM_ERR_TOO_FEW_VALUES));
  ErrorCase(
      "backward: every rank n = 0", true,
      [](int, int, Args& a) {
        a.desc.n = 0;
        a.xp = nullptr;
        a.dyp = nullptr;
        a.yp = nullptr;
      },
      Everywhere(BNORM_ERR_BAD_SHAPE));
  // But two values in all is enough, even one on each of two ranks.
  const int rank = Rank(MPI_COMM_WORLD), p = Size(MPI_COMM_WORLD);
  Args a(31);
  a.desc.spatial = 1;
  a.desc.n = (rank == 0 || rank == p - 1) ? (p == 1 ? 2 : 1) : 0;
  EXPECT_EQ(a.Call(), BNORM_OK);
}

// A channel count whose exchange record would exceed INT_MAX bytes (MPI
// sizes are ints; the merge operator read c back as garbage and merged only
// the counts): BNORM_ERR_BAD_SHAPE on every rank, checked before anything
// is allocated (n = 0 and no per-channel arrays: nothing of that size exists).
TEST_F(Mpi, ChannelCountBeyondMpiSizes) {
  const bnorm_tensor_desc desc{0, 134217727, 1, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  const bnorm_status fwd =
      bnorm_mpi_forward_training(MPI_COMM_WORLD, g_ctx, &desc, nullptr, nullptr, nullptr, nullptr,
                                 kEps, kMomentum, nullptr, nullptr, nullptr, nullptr);
  EXPECT_EQ(fwd, BNORM_ERR_BAD_SHAPE) << bnorm_status_string(fwd);
  EXPECT_TRUE(AllTrue(fwd == BNORM_ERR_BAD_SHAPE, MPI_COMM_WORLD));
}

TEST_F(Mpi, NullCommunicator) {
  for (bool bwd : {false, true}) {
    ErrorCase(
        bwd ? "backward: MPI_COMM_NULL" : "forward: MPI_COMM_NULL", bwd,
        [](int, int, Args& a) { a.comm = MPI_COMM_NULL; }, Everywhere(BNORM_ERR_BAD_ARGUMENT));
  }
}

// An intercommunicator (no allreduce of one batch can run on it) is
// BNORM_ERR_BAD_ARGUMENT on every rank, before any collective.
TEST_F(Mpi, Intercommunicator) {
  const int rank = Rank(MPI_COMM_WORLD), p = Size(MPI_COMM_WORLD);
  if (p < 2) return;  // every rank: no collective follows
  MPI_Comm half = MPI_COMM_NULL, inter = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, rank % 2, rank, &half);
  // Leaders: world ranks 0 and 1.
  MPI_Intercomm_create(half, 0, MPI_COMM_WORLD, rank % 2 == 0 ? 1 : 0, 99, &inter);
  for (bool bwd : {false, true}) {
    ErrorCase(
        bwd ? "backward: intercommunicator" : "forward: intercommunicator", bwd,
        [inter](int, int, Args& a) { a.comm = inter; }, Everywhere(BNORM_ERR_BAD_ARGUMENT));
  }
  MPI_Comm_free(&inter);
  MPI_Comm_free(&half);
}

// eps and momentum agree by value: -0.0 on one rank and +0.0 elsewhere is
// the same value, not a mismatch.
TEST_F(Mpi, SignedZerosAgree) {
  const int rank = Rank(MPI_COMM_WORLD), p = Size(MPI_COMM_WORLD);
  const bnorm_tensor_desc desc{2, 3, 5, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  std::vector<float> x(30), y(30);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7 + rank) % 11);
  std::vector<float> mean(3), invstd(3);
  const float zero = rank == p - 1 ? -0.0f : 0.0f;
  const bnorm_status s =
      bnorm_mpi_forward_training(MPI_COMM_WORLD, nullptr, &desc, x.data(), y.data(), nullptr,
                                 nullptr, zero, zero, nullptr, nullptr, mean.data(), invstd.data());
  EXPECT_EQ(s, BNORM_OK) << bnorm_status_string(s);
  EXPECT_TRUE(AllTrue(s == BNORM_OK, MPI_COMM_WORLD));
}

// NaN in channel 1 and +Inf in channel 2 of the last rank's data (and a
// constant channel 3 on every rank): every rank gets NaN statistics for
// channels 1 and 2, the same bits everywhere, and for the other channels
// the statistics of the clean data; the backward's parameter gradients of
// channels 1 and 2 are not finite on every rank, the others' finite. NaN
// and Inf must not leak into other channels through the exchange.
TEST_F(Mpi, NanAndInfOnOneRankStayInTheirChannels) {
  const int rank = Rank(MPI_COMM_WORLD), p = Size(MPI_COMM_WORLD);
  for (bnorm_layout layout : {BNORM_LAYOUT_NCHW, BNORM_LAYOUT_NHWC}) {
    SCOPED_TRACE(layout == BNORM_LAYOUT_NCHW ? "NCHW" : "NHWC");
    const Shape s{3, 5, 7, layout};
    const bnorm_tensor_desc desc = s.Desc();
    const size_t C = static_cast<size_t>(s.c);
    auto x = NormalData(s, 9000 + static_cast<uint64_t>(rank), 1.0, 1.0);
    for (int64_t i = 0; i < s.n; ++i) {
      for (int64_t sp = 0; sp < s.spatial; ++sp) x[static_cast<size_t>(s.Index(i, 3, sp))] = 2.5f;
    }
    const auto clean = x;
    if (rank == p - 1) {
      x[static_cast<size_t>(s.Index(1, 1, 3))] = std::numeric_limits<float>::quiet_NaN();
      x[static_cast<size_t>(s.Index(2, 2, 6))] = std::numeric_limits<float>::infinity();
    }
    const auto dy = NormalData(s, 9100 + static_cast<uint64_t>(rank), 0.0, 1.0, 0.0);
    std::vector<float> y(x.size()), mean(C), invstd(C), rm(C, 0.0f), rv(C, 1.0f);
    std::vector<float> y0(x.size()), mean0(C), invstd0(C), rm0(C, 0.0f), rv0(C, 1.0f);
    const bnorm_status st0 = bnorm_mpi_forward_training(
        MPI_COMM_WORLD, nullptr, &desc, clean.data(), y0.data(), nullptr, nullptr, 1e-5f, 0.5f,
        rm0.data(), rv0.data(), mean0.data(), invstd0.data());
    const bnorm_status st = bnorm_mpi_forward_training(
        MPI_COMM_WORLD, nullptr, &desc, x.data(), y.data(), nullptr, nullptr, 1e-5f, 0.5f,
        rm.data(), rv.data(), mean.data(), invstd.data());
    ASSERT_TRUE(AllTrue(st == BNORM_OK && st0 == BNORM_OK, MPI_COMM_WORLD));
    for (size_t c = 0; c < C; ++c) {
      if (c == 1 || c == 2) {
        EXPECT_TRUE(std::isnan(mean[c]) && std::isnan(invstd[c]) && std::isnan(rv[c])) << c;
      } else {
        EXPECT_TRUE(SameBits(&mean[c], &mean0[c], 4) && SameBits(&invstd[c], &invstd0[c], 4) &&
                    SameBits(&rv[c], &rv0[c], 4))
            << "channel " << c;
      }
    }
    EXPECT_EQ(mean[3], 2.5f);
    EXPECT_TRUE(SameOnAllRanks({&mean, &invstd, &rm, &rv}, MPI_COMM_WORLD));
    std::vector<float> dx(x.size()), dgamma(C), dbeta(C);
    const bnorm_status sb =
        bnorm_mpi_backward(MPI_COMM_WORLD, nullptr, &desc, x.data(), dy.data(), dx.data(), nullptr,
                           mean.data(), invstd.data(), dgamma.data(), dbeta.data());
    ASSERT_TRUE(AllTrue(sb == BNORM_OK, MPI_COMM_WORLD));
    for (size_t c = 0; c < C; ++c) {
      EXPECT_EQ(std::isfinite(dgamma[c]), c != 1 && c != 2) << "channel " << c;
      EXPECT_TRUE(std::isfinite(dbeta[c])) << "channel " << c;  // dy is clean
    }
    EXPECT_TRUE(SameOnAllRanks({&dgamma, &dbeta}, MPI_COMM_WORLD));
  }
}

// 6: repeated calls give the first call's bits and do not grow memory.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

long ResidentKiB() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long kib = -1;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "VmRSS:", 6) == 0) kib = std::strtol(line + 6, nullptr, 10);
  }
  std::fclose(f);
  return kib;
}

TEST_F(Mpi, RepeatedCallsAreStable) {
  const int rank = Rank(MPI_COMM_WORLD), p = Size(MPI_COMM_WORLD);
  const Case cs{10, 8, 9, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32, 2.0, Split::kUneven, 777};
  const Batch b(cs, p);
  const bnorm_tensor_desc d = b.PartDesc(rank);
  const size_t mine = b.PartElements(rank);
  ForwardOut first_f;
  BackwardOut first_b;
  constexpr int kCalls = 200;
  long rss_warm = 0, rss_end = 0;
  int differing = 0;
  for (int it = 0; it < kCalls; ++it) {
    ForwardOut f = MakeForwardOut(b, mine);
    BackwardOut g = MakeBackwardOut(b, mine);
    EXPECT_EQ(bnorm_mpi_forward_training(MPI_COMM_WORLD, g_ctx, &d, b.Part(b.x, rank),
                                         DataOrNull(f.y), b.gamma.data(), b.beta.data(), kEps,
                                         kMomentum, f.running_mean.data(), f.running_var.data(),
                                         f.save_mean.data(), f.save_invstd.data()),
              BNORM_OK);
    EXPECT_EQ(bnorm_mpi_backward(MPI_COMM_WORLD, g_ctx, &d, b.Part(b.x, rank), b.Part(b.dy, rank),
                                 DataOrNull(g.dx), b.gamma.data(), f.save_mean.data(),
                                 f.save_invstd.data(), g.dgamma.data(), g.dbeta.data()),
              BNORM_OK);
    if (it == 0) {
      first_f = f;
      first_b = g;
    } else {
      const bool same = SameBits(f.y, first_f.y) && SameBits(f.save_mean, first_f.save_mean) &&
                        SameBits(f.save_invstd, first_f.save_invstd) &&
                        SameBits(f.running_mean, first_f.running_mean) &&
                        SameBits(f.running_var, first_f.running_var) &&
                        SameBits(g.dx, first_b.dx) && SameBits(g.dgamma, first_b.dgamma) &&
                        SameBits(g.dbeta, first_b.dbeta);
      differing += same ? 0 : 1;
    }
    if (it == 19) rss_warm = ResidentKiB();
  }
  rss_end = ResidentKiB();
  EXPECT_EQ(differing, 0) << "calls whose results differ from the first call's";
  // After 20 warm-up calls, 180 more calls may not grow the resident set by
  // more than a little (MPI's and the allocator's own noise); a leak of even
  // one exchange buffer per call pair (2 x (2c + 2) doubles) would not show
  // at this size, but a leaked MPI datatype or request per call would.
  // (Not under AddressSanitizer, whose quarantine holds freed memory.)
  if (rss_warm > 0 && rss_end > 0 && !kAddressSanitizer) {
    EXPECT_LE(rss_end - rss_warm, 1024)
        << "resident set grew from " << rss_warm << " KiB to " << rss_end << " KiB";
  }
  if (rank == 0) {
    std::printf("[rank 0] repeated calls: VmRSS %ld KiB after 20 calls, %ld KiB after %d\n",
                rss_warm, rss_end, kCalls);
  }
}

// Prints only failures, prefixed with the rank (ranks other than 0).
class RankFailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace bnorm_test

int main(int argc, char** argv) {
  int provided = 0;  // bnorm contexts run worker threads (which never call MPI)
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  testing::InitGoogleTest(&argc, argv);
  const int rank = bnorm_test::Rank(MPI_COMM_WORLD), size = bnorm_test::Size(MPI_COMM_WORLD);
  if (rank != 0) {
    testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new bnorm_test::RankFailurePrinter(rank));
  }
  int threads = 1;
  if (const char* t = std::getenv("BNORM_MPI_TEST_THREADS")) threads = std::atoi(t);
  bnorm_context* ctx = nullptr;
  if (bnorm_context_create(threads, &ctx) != BNORM_OK) {
    std::fprintf(stderr, "rank %d: bnorm_context_create failed\n", rank);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  bnorm_test::g_ctx = ctx;
  int result = RUN_ALL_TESTS();
  // Every rank's exit status: any rank's failure fails the job on all.
  int worst = 0;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (size >= 3) {
    const bnorm_test::BitwiseTally& t = bnorm_test::g_tally;
    if (rank == 0) {
      std::printf(
          "np = %d: of %ld cases, bitwise equal to the left-to-right split reference: "
          "statistics %ld, y %ld, backward %ld\n",
          size, t.cases, t.stats, t.y, t.backward);
    }
  }
  bnorm_context_destroy(ctx);
  MPI_Finalize();
  return worst;
}
