// libFuzzer target for the whole C API of bnorm.h.
//
// Each input is decoded into one complete call of an entry point: the
// descriptor (small valid shapes mostly; sometimes huge, negative or zero
// sizes and garbage enum values), the ISA target and the context (thread
// count), eps/momentum (sane values or raw bit patterns: NaN, Inf, denormals,
// -0), which pointers are NULL, where each buffer lies (an exactly sized
// allocation of its own, the same address as another buffer, a partial
// overlap, or adjacent to another) and the data (sane distributions, or raw
// bit patterns from the input). The split-statistics functions are decoded
// the same way: their desc->n may be 0 (flag bit 3; tensors then empty or
// NULL), total_count is picked by kActSel, and bnorm_stats_merge takes k = n
// partials of c channels (its outputs may be placed over partial 0). The
// call is then checked against the header's contract:
//   - the status is a valid bnorm_status, and the one the contract's order of
//     precedence gives (ExpectedStatus below models the documented checks);
//   - on an error no byte of any buffer changed; on success no byte outside
//     the outputs changed;
//   - on success the outputs match a double-precision scalar reference within
//     a tolerance derived from the data's scale, and NaN appears only where
//     an input of that channel is NaN/Inf, or so large, or the variance so
//     small, that the documented formula itself overflows;
//   - optionally, a rerun on a context with another thread count gives the
//     same bytes (results never depend on the thread count).
// A violation prints a diagnostic to stderr and aborts.
//
// Input format (tests/fuzz/make_corpus.py writes seeds in it): a fixed header
// of kHeaderSize bytes (offsets below), then a tail of raw bytes that the
// "raw bits" data mode and the misc calls read. Bytes past the end read as
// 0, and an all-zero header decodes to a sane forward_training call.
#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../raw_enum_calls.h"
#include "bnorm/bnorm.h"

namespace {

// ------------------------------------------------------------ input decoding

enum : size_t {
  kOp = 0,          // entry point (Op)
  kTarget = 1,      // ISA target index
  kCtx = 2,         // context: default (NULL), 1, 2, 3 threads
  kLayout = 3,      // < 240: value % 2 (% 5 for weights); else the raw enum at kRawEnum
  kDtype = 4,       // < 240: value % 3; else raw
  kShapeMode = 5,   // see DecodeShape
  kN = 6,
  kC = 7,
  kSpatial = 8,
  kEpsSel = 9,      // see DecodeEps
  kMomSel = 10,     // see DecodeMomentum
  kActSel = 11,     // < 240: value % 2; else raw. misc: the sub-call; apply: total_count
  kDataMode = 12,   // 4 bytes: x-like tensors, dy/z, the y mask, per-channel arrays
  kFlags = 16,      // bit0 desc NULL, bit1 rerun on another context, bit2 misaligned arenas,
                    // bit3 n = 0 (split statistics)
  kRerunCtx = 17,
  kPlacement = 18,  // 2 bytes per slot (Place), kMaxSlots slots
  kRawA = 42,       // raw int64s (garbage shapes, misc arguments)
  kRawB = 50,
  kRawC = 58,
  kEpsBits = 66,    // raw float bits
  kMomBits = 70,
  kRawEnum = 74,    // raw int32 (also the total_count selectors' parameters)
  kSeed = 78,       // uint64 seed of the data generator
  kHeaderSize = 86,
};
constexpr int kMaxSlots = 12;

struct Input {
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t tail = kHeaderSize;

  uint8_t U8(size_t off) const { return off < size ? data[off] : 0; }
  uint32_t U32(size_t off) const {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | U8(off + static_cast<size_t>(i));
    return v;
  }
  uint64_t U64(size_t off) const { return (static_cast<uint64_t>(U32(off + 4)) << 32) | U32(off); }
  uint8_t TailByte() {
    const uint8_t b = U8(tail);
    ++tail;
    return b;
  }
};

// splitmix64
struct Rng {
  uint64_t s = 0;
  uint64_t Next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Unit() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double Sym() { return 2.0 * Unit() - 1.0; }                              // [-1, 1)
  double Normalish() { return Sym() + Sym() + Sym(); }
  uint32_t Below(uint32_t n) { return static_cast<uint32_t>(Next() % n); }
};

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ------------------------------------------------------------ 16-bit formats

double Bf16ToDouble(uint16_t h) { return BitsFloat(static_cast<uint32_t>(h) << 16); }

uint16_t FloatToBf16(float f) {  // round to nearest even (test data only)
  const uint32_t u = FloatBits(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

double F16ToDouble(uint16_t h) {
  const int e = (h >> 10) & 31;
  const int m = h & 1023;
  double v;
  if (e == 0) {
    v = std::ldexp(static_cast<double>(m), -24);
  } else if (e == 31) {
    v = m != 0 ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else {
    v = std::ldexp(static_cast<double>(1024 + m), e - 25);
  }
  return (h & 0x8000) ? -v : v;
}

uint16_t FloatToF16(float f) {  // round to nearest (test data only)
  const int sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7E00);
  if (a >= 65520.0) return static_cast<uint16_t>(sign | 0x7C00);
  if (a < std::ldexp(1.0, -14)) {  // subnormal (1024 becomes the smallest normal)
    return static_cast<uint16_t>(sign | static_cast<int>(std::nearbyint(std::ldexp(a, 24))));
  }
  int e = 0;
  std::frexp(a, &e);                                      // a = fr * 2^e, fr in [0.5, 1)
  double q = std::nearbyint(std::ldexp(a, 11 - e));       // [1024, 2048]
  if (q >= 2048.0) {
    q = 1024.0;
    ++e;
  }
  if (e + 14 >= 31) return static_cast<uint16_t>(sign | 0x7C00);
  return static_cast<uint16_t>(sign | ((e + 14) << 10) | (static_cast<int>(q) - 1024));
}

bool Valid16(int dtype) { return dtype == BNORM_DTYPE_BF16 || dtype == BNORM_DTYPE_F16; }
int ElemSize(int dtype) { return Valid16(dtype) ? 2 : 4; }

double LoadElem(const uint8_t* p, int64_t i, int dtype) {
  if (dtype == BNORM_DTYPE_F32) {
    float f;
    std::memcpy(&f, p + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return dtype == BNORM_DTYPE_BF16 ? Bf16ToDouble(h) : F16ToDouble(h);
}
uint16_t LoadBits16(const uint8_t* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return h;
}
double LoadF(const uint8_t* p, int64_t i) {
  float f;
  std::memcpy(&f, p + 4 * i, 4);
  return f;
}
double LoadD(const uint8_t* p, int64_t i) {
  double d;
  std::memcpy(&d, p + 8 * i, 8);
  return d;
}
int64_t LoadI64(const uint8_t* p, int64_t i) {
  int64_t v;
  std::memcpy(&v, p + 8 * i, 8);
  return v;
}
void StoreD(uint8_t* p, int64_t i, double v) { std::memcpy(p + 8 * i, &v, 8); }
void StoreElem(uint8_t* p, int64_t i, int dtype, float v) {
  if (dtype == BNORM_DTYPE_F32) {
    std::memcpy(p + 4 * i, &v, 4);
    return;
  }
  const uint16_t h = dtype == BNORM_DTYPE_BF16 ? FloatToBf16(v) : FloatToF16(v);
  std::memcpy(p + 2 * i, &h, 2);
}

// ------------------------------------------------------------ the call

enum Op {
  kFwdTrain,
  kFwdInfer,
  kBwd,
  kBwdFrozen,
  kFwdTrainEx,
  kFwdInferEx,
  kBwdEx,
  kFold,
  kFoldWeights,
  kMisc,
  kStats,
  kStatsMerge,
  kFwdApply,
  kBwdReduce,
  kBwdApply,
  kNumOps
};
const char* const kOpNames[kNumOps] = {
    "bnorm_forward_training",   "bnorm_forward_inference", "bnorm_backward",
    "bnorm_backward_frozen",    "bnorm_forward_training_ex", "bnorm_forward_inference_ex",
    "bnorm_backward_ex",        "bnorm_fold",              "bnorm_fold_into_weights",
    "misc",                     "bnorm_stats",             "bnorm_stats_merge",
    "bnorm_forward_apply",      "bnorm_backward_reduce",   "bnorm_backward_apply"};

// The split-statistics entry points that take a descriptor (n == 0 allowed).
bool SplitTensorOp(int op) {
  return op == kStats || op == kFwdApply || op == kBwdReduce || op == kBwdApply;
}

enum Kind {
  kTensor,
  kChannel,
  kWeightsKind,
  kChannelD,  // c doubles
  kPartials,  // k*c doubles (stats_merge)
  kCounts,    // k int64s (stats_merge)
  kCountOut,  // one int64
};
enum Role {
  kRoleX,
  kRoleZ,
  kRoleDy,
  kRoleYMask,
  kRoleGamma,
  kRoleBeta,
  kRoleMean,
  kRolePositive,  // var, invstd
  kRoleOut,       // written only: starts as garbage
  kRoleWeights,
  kRoleBias,
  kRoleCount,  // partial counts
  kRoleSum     // sum_dy, sum_dy_xmu given to backward_apply
};

struct Slot {
  const char* name = "";
  bool present = false;  // an argument of this entry point
  Kind kind = kTensor;
  Role role = kRoleX;
  bool input = false;     // read (running stats are read and written)
  bool output = false;    // written
  bool required = false;  // NULL is NULL_POINTER
  bool ignored = false;   // accepted but unused (backward_ex's y without ReLU)
  int partner1 = -1, partner2 = -1;  // slots this output may equal exactly
  bool prefix_partner = false;  // ... or start where partner1 starts, over its first bytes
  size_t bytes = 0;
  int arena = -1;  // -1: NULL
  int64_t offset = 0;
  const char* how = "own";
};

struct Arena {
  std::unique_ptr<uint8_t[]> mem;
  size_t size = 0;  // allocated bytes, pad included
  size_t pad = 0;   // bytes before offset 0 (misalignment)
  std::vector<uint8_t> before, after;
  uint8_t* Base() const { return mem.get() + pad; }
};

struct Globals {
  bnorm_context* ctx[4] = {nullptr, nullptr, nullptr, nullptr};  // NULL (default), 1, 2, 3
  std::vector<std::string> targets;
  std::string default_target;
};

Globals& G() {
  static Globals* const g = [] {
    auto* s = new Globals;
    for (int i = 1; i < 4; ++i) {
      if (bnorm_context_create(i, &s->ctx[i]) != BNORM_OK) std::abort();
    }
    for (int i = 0; i < bnorm_target_count(); ++i) s->targets.emplace_back(bnorm_target_name(i));
    bnorm_set_target(nullptr);
    s->default_target = bnorm_active_target();
    return s;
  }();
  return *g;
}

constexpr double kU = 0x1.0p-24;       // float unit roundoff
constexpr double kTolSum = 1e-5;       // error of a float reduction, relative to sum |terms|
// Relative error allowed in the batch variance (the library meets 1e-6 on
// its accuracy tests, equal values after one far outlier included).
constexpr double kTolVar = kTolSum;
constexpr double kTiny = 1e-37;        // absolute slack (denormal results)
// A per-channel constant kept as a float (scale, shift, ...) may be denormal:
// K * v is then off by up to half the smallest denormal times |v|.
constexpr double kDenorm = 0x1.0p-149;
constexpr double kLarge = 1e15;        // inputs beyond: float intermediates may overflow
constexpr double kHuge = 1e30;         // intermediates beyond: no value checks, NaN allowed
constexpr int64_t kMaxAllocElems = int64_t{1} << 20;  // larger valid shapes get no memory
constexpr size_t kDummyBytes = 64;     // buffers of shapes that are invalid or too large

struct Call {
  Input in;
  Op op = kFwdTrain;
  int target = 0;
  int ctx_index = 0;
  bnorm_tensor_desc desc{};
  bool desc_null = false;
  int64_t n = 0, c = 0, sp = 0;  // desc values (fold: c; fold_into_weights: c, sp = per_output)
  int layout = 0, dtype = 0, act = 0;  // raw values as passed
  float eps = 1e-5f, momentum = 0.1f;
  int64_t total = 0;  // total_count of the apply functions
  Slot slots[kMaxSlots];
  std::vector<Arena> arenas;
  bool allocatable = false;  // valid and small enough to back with memory
  Rng rng;

  bool Nhwc() const { return layout == BNORM_LAYOUT_NHWC; }
  int64_t Values() const { return n * sp; }
  int64_t Elements() const { return n * c * sp; }
  int64_t Index(int64_t i, int64_t ch, int64_t s) const {
    return Nhwc() ? (i * sp + s) * c + ch : (i * c + ch) * sp + s;
  }
  bool Relu() const { return act == BNORM_ACT_RELU; }
  bool Null(int k) const { return !slots[k].present || slots[k].arena < 0; }
  uint8_t* Live(int k) const {
    if (Null(k)) return nullptr;
    return arenas[static_cast<size_t>(slots[k].arena)].Base() + slots[k].offset;
  }
  // The input's bytes as they were before the call (outputs may alias inputs).
  const uint8_t* Before(int k) const {
    if (Null(k)) return nullptr;
    const Arena& a = arenas[static_cast<size_t>(slots[k].arena)];
    return a.before.data() + a.pad + slots[k].offset;
  }
};

std::string Describe(const Call& k) {
  char buf[512];
  uint32_t eb = FloatBits(k.eps), mb = FloatBits(k.momentum);
  std::snprintf(buf, sizeof(buf),
                "%s target=%s ctx=%d desc=%s{n=%" PRId64 " c=%" PRId64 " spatial=%" PRId64
                " layout=%d dtype=%d} act=%d eps=%g(0x%08x) momentum=%g(0x%08x)\n",
                kOpNames[k.op], G().targets[static_cast<size_t>(k.target)].c_str(), k.ctx_index,
                k.desc_null ? "NULL" : "", k.n, k.c, k.sp, k.layout, k.dtype, k.act,
                static_cast<double>(k.eps), eb, static_cast<double>(k.momentum), mb);
  std::string s = buf;
  if (k.op == kFwdApply || k.op == kBwdApply) {
    std::snprintf(buf, sizeof(buf), "  total_count=%" PRId64 "\n", k.total);
    s += buf;
  } else if (k.op == kStatsMerge) {
    std::snprintf(buf, sizeof(buf), "  (stats_merge: k = n = %" PRId64 ", c = %" PRId64 ")\n", k.n,
                  k.c);
    s += buf;
  }
  for (const Slot& sl : k.slots) {
    if (!sl.present) continue;
    std::snprintf(buf, sizeof(buf), "  %-12s %s", sl.name,
                  sl.arena < 0 ? "NULL\n" : "");
    s += buf;
    if (sl.arena >= 0) {
      std::snprintf(buf, sizeof(buf), "arena %d offset %" PRId64 " bytes %zu (%s)\n", sl.arena,
                    sl.offset, sl.bytes, sl.how);
      s += buf;
    }
  }
  return s;
}

[[noreturn]] __attribute__((format(printf, 2, 3))) void Fail(const Call& k, const char* fmt, ...) {
  std::fprintf(stderr, "\n==== bnorm_fuzz: contract violation ====\n");
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stderr, fmt, args);
  va_end(args);
  std::fprintf(stderr, "\n%s", Describe(k).c_str());
  std::fflush(stderr);
  std::abort();
}

// ------------------------------------------------------------ decoding the call

const int64_t kInteresting[] = {
    0,
    -1,
    1,
    2,
    3,
    std::numeric_limits<int64_t>::min(),
    std::numeric_limits<int64_t>::max(),
    std::numeric_limits<int64_t>::max() / 2,
    std::numeric_limits<int64_t>::max() / 4,
    std::numeric_limits<int64_t>::max() / 4 + 1,
    int64_t{1} << 31,
    (int64_t{1} << 32) + 1,
    int64_t{1} << 40,
    int64_t{1} << 62,
    int64_t{3037000500},  // ~sqrt(2^63)
    int64_t{2097152},     // 2^21
    -(int64_t{1} << 40),
    int64_t{4},
    int64_t{7},
    int64_t{1024},
};

int64_t Interesting(uint8_t sel, int64_t raw) {
  constexpr size_t kCount = sizeof(kInteresting) / sizeof(kInteresting[0]);
  if (sel % (kCount + 1) == kCount) return raw;
  return kInteresting[sel % (kCount + 1)];
}

// Caps n*c*sp at cap by shrinking sp, then n.
void Cap(int64_t* n, int64_t c, int64_t* sp, int64_t cap) {
  if (*n * c * *sp <= cap) return;
  *sp = std::max<int64_t>(1, cap / (*n * c));
  while (*n * c * *sp > cap && *n > 1) *n = (*n + 1) / 2;
}

void DecodeShape(Call& k) {
  const Input& in = k.in;
  const int64_t h6 = in.U8(kN), h7 = in.U8(kC), h8 = in.U8(kSpatial);
  const uint32_t r = in.U32(kRawA);
  int64_t n = 1, c = 1, sp = 1;
  switch (in.U8(kShapeMode) % 16) {
    default:  // 0..8: small (zero bytes: 4 x 3 x 5)
      n = 1 + (h6 + 3) % 12;
      c = 1 + (h7 + 2) % 20;
      sp = 1 + (h8 + 4) % 40;
      Cap(&n, c, &sp, 4096);
      break;
    case 9:
    case 10:  // medium
      n = 1 + h6 % 64;
      c = 1 + h7 % 64;
      sp = 1 + r % 256;
      Cap(&n, c, &sp, 32768);
      break;
    case 11:  // many values per channel: several reduction units
      n = 1 + h6 % 4;
      c = 1 + h7 % 3;
      sp = 8000 + r % 40000;
      Cap(&n, c, &sp, 160000);
      break;
    case 12:  // many channels (NHWC blocks of channels)
      c = (h6 & 1) ? 1000 + h7 : 1 + h7 * 9;
      n = 1 + (h6 >> 1) % 4;
      sp = 1 + h8 % 8;
      Cap(&n, c, &sp, 40000);
      break;
    case 13:  // edges: one value per channel, C == 1, ...
      switch (h6 % 4) {
        case 0:
          n = 1, sp = 1, c = 1 + h7 % 50;
          break;
        case 1:
          n = 2, sp = 1, c = 1 + h7 % 50;
          break;
        case 2:
          n = 1, sp = 2 + h8 % 100, c = 1 + h7 % 3;
          break;
        default:
          n = 1 + h7 % 70, sp = 1 + h8 % 70, c = 1;
          break;
      }
      break;
    case 14:  // interesting values: huge, negative, zero, overflowing products
      n = Interesting(static_cast<uint8_t>(h6), static_cast<int64_t>(in.U64(kRawA)));
      c = Interesting(static_cast<uint8_t>(h7), static_cast<int64_t>(in.U64(kRawB)));
      sp = Interesting(static_cast<uint8_t>(h8), static_cast<int64_t>(in.U64(kRawC)));
      break;
    case 15:  // raw
      n = static_cast<int64_t>(in.U64(kRawA));
      c = static_cast<int64_t>(in.U64(kRawB));
      sp = static_cast<int64_t>(in.U64(kRawC));
      break;
  }
  k.n = n;
  k.c = c;
  k.sp = sp;
}

float DecodeEps(const Input& in) {
  switch (in.U8(kEpsSel) % 16) {
    default:
      return 1e-5f;
    case 1:
      return 1e-3f;
    case 2:
      return 0.0f;
    case 3:
      return 0.1f;
    case 4:
      return 1.0f;
    case 5:
      return -0.0f;
    case 6:
      return std::numeric_limits<float>::denorm_min();
    case 7:
    case 13:
      return BitsFloat(in.U32(kEpsBits));
    case 8:
      return std::numeric_limits<float>::quiet_NaN();
    case 9:
      return std::numeric_limits<float>::infinity();
    case 10:
      return -1e-5f;
    case 11:
      return std::numeric_limits<float>::max();
    case 12:
      return 1e-30f;
  }
}

float DecodeMomentum(const Input& in) {
  switch (in.U8(kMomSel) % 16) {
    default:
      return 0.1f;
    case 1:
      return 0.0f;
    case 2:
      return 1.0f;
    case 3:
      return -0.0f;
    case 4:
      return 0.5f;
    case 5:
    case 13:
      return BitsFloat(in.U32(kMomBits));
    case 6:
      return std::numeric_limits<float>::quiet_NaN();
    case 7:
      return std::nextafter(1.0f, 2.0f);
    case 8:
      return -std::numeric_limits<float>::denorm_min();
    case 9:
      return std::numeric_limits<float>::infinity();
    case 10:
      return 0.01f;
    case 11:
      return std::numeric_limits<float>::denorm_min();
    case 12:
      return -0.1f;
  }
}

// total_count of bnorm_forward_apply and bnorm_backward_apply, from the
// part's own n*spatial (shape valid: it cannot overflow then).
int64_t DecodeTotal(const Call& k) {
  const Input& in = k.in;
  int64_t m = 0;
  if (__builtin_mul_overflow(k.n, k.sp, &m) || m < 0) m = 0;
  const int64_t p = in.U8(kRawEnum);
  auto clamp = [](__int128 v) {
    return static_cast<int64_t>(std::min<__int128>(v, std::numeric_limits<int64_t>::max()));
  };
  switch (in.U8(kActSel) % 8) {
    default:
      return m;  // the part is the whole batch
    case 1:
      if (p >= 252) return (int64_t{1} << 53) + (p - 253);  // around the 2^53 limit
      return clamp(static_cast<__int128>(m) + 1 + p);       // one part of a larger batch
    case 2:
      return clamp(static_cast<__int128>(m) * (2 + p % 7));  // equal parts
    case 3:
      return m - 1;
    case 4:
      return 0;
    case 5:
      return 1;
    case 6:
      return 2;
    case 7:
      return Interesting(static_cast<uint8_t>(p), static_cast<int64_t>(in.U64(kRawC)));
  }
}

int DecodeEnum(const Input& in, size_t off, int valid_count, int raw_shift) {
  const uint8_t v = in.U8(off);
  const uint32_t r = in.U32(kRawEnum);
  if (v >= 240) return static_cast<int>(raw_shift == 0 ? r : (r << raw_shift) | (r >> (32 - raw_shift)));
  return v % valid_count;
}

// Slots of each entry point, inputs before outputs where it matters little.
void DefineSlots(Call& k) {
  auto def = [&](int i, const char* name, Kind kind, Role role, bool input, bool output,
                 bool required, int p1 = -1, int p2 = -1) -> Slot& {
    Slot& s = k.slots[i];
    s.name = name;
    s.present = true;
    s.kind = kind;
    s.role = role;
    s.input = input;
    s.output = output;
    s.required = required;
    s.partner1 = p1;
    s.partner2 = p2;
    return s;
  };
  // Split statistics: a part without samples (n == 0) may pass NULL tensors.
  const bool tensors_required = k.n != 0;
  const bool ex = k.op == kFwdTrainEx || k.op == kFwdInferEx || k.op == kBwdEx;
  switch (k.op) {
    case kFwdTrain:
    case kFwdTrainEx:
      def(0, "x", kTensor, kRoleX, true, false, true);
      if (ex) def(1, "z", kTensor, kRoleZ, true, false, false);
      def(2, "y", kTensor, kRoleOut, false, true, true, 0, 1);
      def(3, "gamma", kChannel, kRoleGamma, true, false, false);
      def(4, "beta", kChannel, kRoleBeta, true, false, false);
      def(5, "running_mean", kChannel, kRoleMean, true, true, false);
      def(6, "running_var", kChannel, kRolePositive, true, true, false);
      def(7, "save_mean", kChannel, kRoleOut, false, true, false);
      def(8, "save_invstd", kChannel, kRoleOut, false, true, false);
      break;
    case kFwdInfer:
    case kFwdInferEx:
      def(0, "x", kTensor, kRoleX, true, false, true);
      if (ex) def(1, "z", kTensor, kRoleZ, true, false, false);
      def(2, "y", kTensor, kRoleOut, false, true, true, 0, 1);
      def(3, "gamma", kChannel, kRoleGamma, true, false, false);
      def(4, "beta", kChannel, kRoleBeta, true, false, false);
      def(5, "mean", kChannel, kRoleMean, true, false, true);
      def(6, "var", kChannel, kRolePositive, true, false, true);
      break;
    case kBwd:
    case kBwdFrozen:
    case kBwdEx:
      def(0, "x", kTensor, kRoleX, true, false, true);
      if (ex) def(1, "y", kTensor, kRoleYMask, true, false, false);
      def(2, "dy", kTensor, kRoleDy, true, false, true);
      def(3, "dx", kTensor, kRoleOut, false, true, false, 2);
      if (ex) def(4, "dz", kTensor, kRoleOut, false, true, false, 2);
      def(5, "gamma", kChannel, kRoleGamma, true, false, false);
      if (ex) def(6, "beta", kChannel, kRoleBeta, true, false, false);
      def(7, k.op == kBwdFrozen ? "mean" : "save_mean", kChannel, kRoleMean, true, false, true);
      def(8, k.op == kBwdFrozen ? "invstd" : "save_invstd", kChannel, kRolePositive, true, false,
          true);
      def(9, "dgamma", kChannel, kRoleOut, false, true, false);
      def(10, "dbeta", kChannel, kRoleOut, false, true, false);
      break;
    case kFold:
      def(0, "gamma", kChannel, kRoleGamma, true, false, false);
      def(1, "beta", kChannel, kRoleBeta, true, false, false);
      def(2, "mean", kChannel, kRoleMean, true, false, true);
      def(3, "var", kChannel, kRolePositive, true, false, true);
      def(4, "scale_out", kChannel, kRoleOut, false, true, true);
      def(5, "shift_out", kChannel, kRoleOut, false, true, true);
      break;
    case kFoldWeights:
      def(0, "weights", kWeightsKind, kRoleWeights, true, false, true);
      def(1, "bias", kChannel, kRoleBias, true, false, false);
      def(2, "gamma", kChannel, kRoleGamma, true, false, false);
      def(3, "beta", kChannel, kRoleBeta, true, false, false);
      def(4, "mean", kChannel, kRoleMean, true, false, true);
      def(5, "var", kChannel, kRolePositive, true, false, true);
      def(6, "weights_out", kWeightsKind, kRoleOut, false, true, true, 0);
      def(7, "bias_out", kChannel, kRoleOut, false, true, true, 1);
      break;
    case kStats:
      def(0, "x", kTensor, kRoleX, true, false, tensors_required);
      def(1, "mean", kChannelD, kRoleOut, false, true, true);
      def(2, "m2", kChannelD, kRoleOut, false, true, true);
      break;
    case kStatsMerge:  // k = n partials of c channels
      def(0, "counts", kCounts, kRoleCount, true, false, true);
      def(1, "means", kPartials, kRoleMean, true, false, true);
      def(2, "m2s", kPartials, kRolePositive, true, false, true);
      def(3, "count_out", kCountOut, kRoleOut, false, true, true);
      def(4, "mean_out", kChannelD, kRoleOut, false, true, true, 1).prefix_partner = true;
      def(5, "m2_out", kChannelD, kRoleOut, false, true, true, 2).prefix_partner = true;
      break;
    case kFwdApply:
      def(0, "x", kTensor, kRoleX, true, false, tensors_required);
      def(2, "y", kTensor, kRoleOut, false, true, tensors_required, 0);
      def(3, "gamma", kChannel, kRoleGamma, true, false, false);
      def(4, "beta", kChannel, kRoleBeta, true, false, false);
      def(5, "running_mean", kChannel, kRoleMean, true, true, false);
      def(6, "running_var", kChannel, kRolePositive, true, true, false);
      def(7, "save_mean", kChannel, kRoleOut, false, true, false);
      def(8, "save_invstd", kChannel, kRoleOut, false, true, false);
      def(9, "mean", kChannelD, kRoleMean, true, false, true);
      def(10, "m2", kChannelD, kRolePositive, true, false, true);
      break;
    case kBwdReduce:
      def(0, "x", kTensor, kRoleX, true, false, tensors_required);
      def(2, "dy", kTensor, kRoleDy, true, false, tensors_required);
      def(7, "save_mean", kChannel, kRoleMean, true, false, true);
      def(9, "sum_dy", kChannelD, kRoleOut, false, true, true);
      def(10, "sum_dy_xmu", kChannelD, kRoleOut, false, true, true);
      break;
    case kBwdApply:
      def(0, "x", kTensor, kRoleX, true, false, tensors_required);
      def(1, "sum_dy_xmu", kChannelD, kRoleSum, true, false, true);
      def(2, "dy", kTensor, kRoleDy, true, false, tensors_required);
      def(3, "dx", kTensor, kRoleOut, false, true, false, 2);
      def(5, "gamma", kChannel, kRoleGamma, true, false, false);
      def(7, "save_mean", kChannel, kRoleMean, true, false, true);
      def(8, "save_invstd", kChannel, kRolePositive, true, false, true);
      def(9, "dgamma", kChannel, kRoleOut, false, true, false);
      def(10, "dbeta", kChannel, kRoleOut, false, true, false);
      def(11, "sum_dy", kChannelD, kRoleSum, true, false, true);
      break;
    default:
      break;
  }
  if (k.op == kBwdEx) {  // beta is never read, but checked like every buffer
    if (!k.Relu()) k.slots[1].ignored = true;     // y
    else k.slots[1].required = true;
  }
}

// ------------------------------------------------------------ the status model

bool MulOk(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// Tensor shape: BAD_SHAPE unless n, c, spatial >= 1 (n >= 0 for the split
// statistics) and the byte size fits in int64 (the widest dtype, 4 bytes,
// decides; with 2-byte elements a size that only overflows at 4 bytes may go
// either way: *ambiguous). The split statistics also take c doubles per
// channel array: their byte size overflowing is BAD_SHAPE.
bool TensorShapeOk(const Call& k, bool* ambiguous) {
  *ambiguous = false;
  int64_t nc = 0, el = 0, b4 = 0, b2 = 0, c8 = 0;
  const bool split = SplitTensorOp(k.op);
  if (k.n < (split ? 0 : 1) || k.c < 1 || k.sp < 1) return false;
  if (!MulOk(k.n, k.c, &nc) || !MulOk(nc, k.sp, &el)) return false;
  const bool fits4 = MulOk(el, 4, &b4), fits2 = MulOk(el, 2, &b2);
  if (!fits4 && fits2) *ambiguous = true;
  if (split && !MulOk(k.c, 8, &c8)) {
    *ambiguous = false;
    return false;
  }
  return fits4;
}

// stats_merge: BAD_SHAPE unless c, k >= 1 and k*c doubles fit in int64.
bool MergeShapeOk(const Call& k) {
  int64_t kc = 0, bytes = 0;
  return k.c >= 1 && k.n >= 1 && MulOk(k.n, k.c, &kc) && MulOk(kc, 8, &bytes);
}

// An empty buffer (n == 0: a zero-size tensor) holds no byte to share.
bool Overlap(const Call& k, int a, int b) {
  if (k.Null(a) || k.Null(b) || k.slots[a].bytes == 0 || k.slots[b].bytes == 0) return false;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(k.Live(a));
  const uintptr_t b0 = reinterpret_cast<uintptr_t>(k.Live(b));
  return a0 < b0 + k.slots[b].bytes && b0 < a0 + k.slots[a].bytes;
}

// ALIAS under the header's rule; with_ignored: also count buffers the call
// accepts but does not use.
bool AliasModel(const Call& k, bool with_ignored) {
  for (int i = 0; i < kMaxSlots; ++i) {
    const Slot& o = k.slots[i];
    if (!o.present || !o.output || o.arena < 0) continue;
    for (int j = 0; j < kMaxSlots; ++j) {
      if (j == i || k.Null(j) || (k.slots[j].ignored && !with_ignored)) continue;
      if (!Overlap(k, i, j)) continue;
      const bool named = j == o.partner1 || j == o.partner2;
      const bool exact = k.Live(i) == k.Live(j) &&
                         (o.bytes == k.slots[j].bytes ||
                          (o.prefix_partner && j == o.partner1 && o.bytes <= k.slots[j].bytes));
      if (!(named && exact)) return true;
    }
  }
  return false;
}

bool ValidEps(float eps) { return std::isfinite(eps) && eps >= 0.0f; }
bool ValidMomentum(float m) { return m >= 0.0f && m <= 1.0f; }

struct Expect {
  bnorm_status s[4];
  int count = 0;
  void Add(bnorm_status v) {
    for (int i = 0; i < count; ++i)
      if (s[i] == v) return;
    s[count++] = v;
  }
  bool Has(bnorm_status v) const {
    for (int i = 0; i < count; ++i)
      if (s[i] == v) return true;
    return false;
  }
};

bool AnyRequiredNull(const Call& k) {
  for (int i = 0; i < kMaxSlots; ++i) {
    if (k.slots[i].present && k.slots[i].required && k.slots[i].arena < 0) return true;
  }
  return false;
}

// stats_merge: every count >= 0 and their total at most 2^53 (counts readable:
// pointers and shape valid).
bool MergeCountsOk(const Call& k) {
  const uint8_t* counts = k.Before(0);
  __int128 total = 0;
  for (int64_t j = 0; j < k.n; ++j) {
    const int64_t v = LoadI64(counts, j);
    if (v < 0) return false;
    total += v;
  }
  return total <= (static_cast<__int128>(1) << 53);
}

// The status before the alias check (BNORM_OK: it comes down to ALIAS or OK).
// shape_bad_if_ambiguous picks one reading of an ambiguous byte-size overflow.
bnorm_status PreAliasStatus(const Call& k, bool shape_bad_if_ambiguous) {
  if (k.op == kFold) {
    int64_t b = 0;
    if (k.c < 1 || !MulOk(k.c, 4, &b)) return BNORM_ERR_BAD_SHAPE;
    if (!ValidEps(k.eps)) return BNORM_ERR_BAD_ARGUMENT;
    if (AnyRequiredNull(k)) return BNORM_ERR_NULL_POINTER;
    return BNORM_OK;
  }
  if (k.op == kFoldWeights) {
    int64_t count = 0, b = 0;
    if (k.c < 1 || k.sp < 1 || !MulOk(k.c, k.sp, &count) || !MulOk(count, 4, &b)) {
      return BNORM_ERR_BAD_SHAPE;
    }
    if (k.layout < BNORM_WEIGHTS_OIHW || k.layout > BNORM_WEIGHTS_IO || !ValidEps(k.eps)) {
      return BNORM_ERR_BAD_ARGUMENT;
    }
    if (AnyRequiredNull(k)) return BNORM_ERR_NULL_POINTER;
    return BNORM_OK;
  }
  if (k.op == kStatsMerge) {  // the counts and the order: ExpectedStatus
    if (!MergeShapeOk(k)) return BNORM_ERR_BAD_SHAPE;
    if (AnyRequiredNull(k)) return BNORM_ERR_NULL_POINTER;
    return BNORM_OK;
  }
  if (k.desc_null) return BNORM_ERR_NULL_POINTER;
  bool ambiguous = false;
  const bool shape_ok = TensorShapeOk(k, &ambiguous);
  if (!shape_ok && !(ambiguous && !shape_bad_if_ambiguous)) return BNORM_ERR_BAD_SHAPE;
  const bool layout_ok = k.layout == BNORM_LAYOUT_NCHW || k.layout == BNORM_LAYOUT_NHWC;
  const bool dtype_ok = k.dtype == BNORM_DTYPE_F32 || Valid16(k.dtype);
  const bool ex = k.op == kFwdTrainEx || k.op == kFwdInferEx || k.op == kBwdEx;
  const bool act_ok = !ex || k.act == BNORM_ACT_NONE || k.act == BNORM_ACT_RELU;
  bool args_ok = layout_ok && dtype_ok && act_ok;
  if (k.op == kFwdTrain || k.op == kFwdTrainEx || k.op == kFwdInfer || k.op == kFwdInferEx ||
      k.op == kFwdApply) {
    args_ok = args_ok && ValidEps(k.eps);
  }
  if (k.op == kFwdTrain || k.op == kFwdTrainEx || k.op == kFwdApply) {
    args_ok = args_ok && ValidMomentum(k.momentum);
  }
  // n*spatial cannot overflow once the shape is valid.
  int64_t values = 0;
  const bool values_ok = MulOk(k.n, k.sp, &values);
  // total_count: at least the part's values, at most 2^53 (exact in double).
  constexpr int64_t kMaxTotal = int64_t{1} << 53;
  if (k.op == kFwdApply && ((values_ok && k.total < values) || k.total > kMaxTotal)) {
    args_ok = false;
  }
  if (k.op == kBwdApply &&
      ((values_ok && (k.total < 1 || k.total < values)) || k.total > kMaxTotal)) {
    args_ok = false;
  }
  if (!args_ok) return BNORM_ERR_BAD_ARGUMENT;
  if (AnyRequiredNull(k)) return BNORM_ERR_NULL_POINTER;
  if ((k.op == kFwdTrain || k.op == kFwdTrainEx)) {
    if (values_ok && values < 2) return BNORM_ERR_TOO_FEW_VALUES;
  }
  if (k.op == kFwdApply && k.total < 2) return BNORM_ERR_TOO_FEW_VALUES;
  return BNORM_OK;
}

// forward_apply: a negative m2 (a check of values, after the aliasing check).
bool NegativeM2(const Call& k) {
  const uint8_t* m2 = k.Before(10);
  for (int64_t ch = 0; ch < k.c; ++ch) {
    if (LoadD(m2, ch) < 0.0) return true;
  }
  return false;
}

Expect ExpectedStatus(const Call& k) {
  Expect e;
  if (k.op == kStatsMerge) {
    // No descriptor, so the header's order of precedence does not bind:
    // the library checks the pointers first; the general order (as
    // bnorm_fold follows it) puts BAD_SHAPE and BAD_ARGUMENT first. Counts
    // are only read when the pointers and the shape are valid.
    const bool null = AnyRequiredNull(k), shape_ok = MergeShapeOk(k);
    if (null) e.Add(BNORM_ERR_NULL_POINTER);
    if (!shape_ok) e.Add(BNORM_ERR_BAD_SHAPE);
    if (!shape_ok || null) return e;
    if (!MergeCountsOk(k)) {
      e.Add(BNORM_ERR_BAD_ARGUMENT);
      return e;
    }
    e.Add(AliasModel(k, true) ? BNORM_ERR_ALIAS : BNORM_OK);
    return e;
  }
  for (bool bad : {true, false}) {
    const bnorm_status pre = PreAliasStatus(k, bad);
    if (pre != BNORM_OK) {
      e.Add(pre);
      continue;
    }
    for (bool with_ignored : {true, false}) {
      const bool alias = AliasModel(k, with_ignored);
      if (!alias && k.op == kFwdApply && NegativeM2(k)) {
        e.Add(BNORM_ERR_BAD_ARGUMENT);
        continue;
      }
      e.Add(alias ? BNORM_ERR_ALIAS : BNORM_OK);
    }
  }
  return e;
}

// ------------------------------------------------------------ buffers

size_t SlotBytes(const Call& k, const Slot& s) {
  if (!k.allocatable) return kDummyBytes;
  switch (s.kind) {
    case kTensor:
      return static_cast<size_t>(k.Elements()) * static_cast<size_t>(ElemSize(k.dtype));
    case kChannel:
      return static_cast<size_t>(k.c) * 4;
    case kWeightsKind:
      return static_cast<size_t>(k.c * k.sp) * 4;
    case kChannelD:
      return static_cast<size_t>(k.c) * 8;
    case kPartials:
      return static_cast<size_t>(k.n * k.c) * 8;
    case kCounts:
      return static_cast<size_t>(k.n) * 8;
    case kCountOut:
      return 8;
  }
  return kDummyBytes;
}

// Bytes per element of a slot, and its alignment.
int64_t ElemBytes(const Call& k, const Slot& s) {
  switch (s.kind) {
    case kTensor:
      return ElemSize(k.dtype);
    case kChannel:
    case kWeightsKind:
      return 4;
    default:
      return 8;
  }
}

int64_t FloorTo(int64_t v, int64_t a) { return (v >= 0 ? v : v - (a - 1)) / a * a; }

// Places every slot: each gets NULL, its own arena, or a position relative
// to an earlier slot (same address, partial overlap, adjacent).
void Place(Call& k) {
  struct Pending {
    int64_t lo = 0, hi = 0;
  };
  std::vector<Pending> extent;
  for (int i = 0; i < kMaxSlots; ++i) {
    Slot& s = k.slots[i];
    if (!s.present) continue;
    s.bytes = SlotBytes(k, s);
    const uint8_t p0 = k.in.U8(kPlacement + 2 * static_cast<size_t>(i));
    const uint8_t p1 = k.in.U8(kPlacement + 2 * static_cast<size_t>(i) + 1);
    const int64_t align = ElemBytes(k, s);
    int kind = p0 % 16;
    if (kind == 15 && s.required) kind = 0;
    if (kind == 9 || kind == 15) {
      s.arena = -1;
      s.how = "NULL";
      continue;
    }
    std::vector<int> earlier;
    for (int j = 0; j < i; ++j) {
      if (k.slots[j].present && k.slots[j].arena >= 0) earlier.push_back(j);
    }
    if (kind < 10 || kind == 15 || earlier.empty()) {
      s.arena = static_cast<int>(extent.size());
      s.offset = 0;
      extent.push_back({0, static_cast<int64_t>(s.bytes)});
      s.how = "own";
      continue;
    }
    const Slot& o = k.slots[earlier[(p1 & 7) % earlier.size()]];
    const int64_t delta = align * (1 + (p1 >> 3));
    int64_t off = o.offset;
    switch (kind) {
      case 10:
        s.how = "same address";
        break;
      case 11:
        off = o.offset + delta;
        s.how = "inside/after another";
        break;
      case 12:
        off = o.offset + static_cast<int64_t>(o.bytes);
        s.how = "adjacent after";
        break;
      case 13:
        off = o.offset - static_cast<int64_t>(s.bytes);
        s.how = "adjacent before";
        break;
      default:  // 14
        off = o.offset - delta;
        s.how = "starting before another";
        break;
    }
    s.arena = o.arena;
    s.offset = FloorTo(off, align);
    Pending& e = extent[static_cast<size_t>(s.arena)];
    e.lo = std::min(e.lo, s.offset);
    e.hi = std::max(e.hi, s.offset + static_cast<int64_t>(s.bytes));
  }
  // Arena starts keep every float 4-byte aligned and every double or int64
  // 8-byte aligned (16-bit tensors may sit at any even offset).
  for (Pending& e : extent) e.lo = FloorTo(e.lo, 8);
  const bool pad = k.in.U8(kFlags) & 4;
  std::vector<bool> align8(extent.size(), false);
  for (const Slot& s : k.slots) {
    if (s.present && s.arena >= 0 && ElemBytes(k, s) == 8) align8[static_cast<size_t>(s.arena)] = true;
  }
  k.arenas.resize(extent.size());
  for (size_t a = 0; a < extent.size(); ++a) {
    Arena& ar = k.arenas[a];
    ar.pad = pad ? 4 * (1 + k.rng.Below(3)) : 0;
    if (align8[a]) ar.pad = (ar.pad + 7) / 8 * 8;
    ar.size = ar.pad + static_cast<size_t>(extent[a].hi - extent[a].lo);
    ar.mem.reset(new uint8_t[ar.size]);
    for (size_t b = 0; b < ar.size; ++b) ar.mem[b] = static_cast<uint8_t>(k.rng.Next());
  }
  for (Slot& s : k.slots) {
    if (s.present && s.arena >= 0) s.offset -= extent[static_cast<size_t>(s.arena)].lo;
  }
}

// ------------------------------------------------------------ data

const float kSpecials[] = {
    std::numeric_limits<float>::quiet_NaN(),
    -std::numeric_limits<float>::quiet_NaN(),
    std::numeric_limits<float>::infinity(),
    -std::numeric_limits<float>::infinity(),
    std::numeric_limits<float>::denorm_min(),
    -std::numeric_limits<float>::denorm_min(),
    std::numeric_limits<float>::min(),
    -0.0f,
    0.0f,
    std::numeric_limits<float>::max(),
    -std::numeric_limits<float>::max(),
    65504.0f,
    65520.0f,
    1e20f,
    -3e38f,
};

float Special(Rng& r) { return kSpecials[r.Below(sizeof(kSpecials) / sizeof(kSpecials[0]))]; }

// Per-channel parameters of a tensor's distribution.
struct ChannelDist {
  double offset = 0, scale = 1;
  bool constant = false;
};

ChannelDist MakeDist(int mode, Role role, int64_t ch, Rng& r) {
  ChannelDist d;
  switch (mode) {
    case 1:  // large offsets
      d.offset = (r.Unit() < 0.5 ? -1 : 1) * std::pow(10.0, 2.0 + 3.0 * r.Unit());
      break;
    case 2:  // scales from 1e-20 to 1e20
      d.scale = std::pow(10.0, 40.0 * r.Unit() - 20.0);
      d.offset = d.scale * 3.0 * r.Sym();
      break;
    case 4:  // constant channels
      d.constant = r.Unit() < 0.6;
      d.offset = r.Normalish() * (r.Unit() < 0.3 ? 1e4 : 1.0);
      break;
    default:
      d.offset = (role == kRoleX ? 0.5 * static_cast<double>(ch % 16) : 0.0) +
                 (role == kRoleYMask ? 0.3 : 0.0);
      break;
  }
  return d;
}

float TensorValue(int mode, const ChannelDist& d, Rng& r) {
  switch (mode) {
    case 3:
      return static_cast<float>(static_cast<int>(r.Below(9)) - 4);
    case 4:
      return static_cast<float>(d.constant ? d.offset : d.offset + r.Normalish());
    case 5:
      return static_cast<float>(r.Unit());
    case 7:
      if (r.Below(16) == 0) return Special(r);
      return static_cast<float>(d.offset + d.scale * r.Normalish());
    case 8:
      return r.Below(2) ? 0.0f : -0.0f;
    case 9:
      return BitsFloat(static_cast<uint32_t>(r.Below(1 << 16)) | (r.Below(2) << 31));
    case 10: {
      const double v = std::pow(10.0, 30.0 + 8.5 * r.Unit());
      return static_cast<float>(r.Below(2) ? v : -v);
    }
    default:
      return static_cast<float>(d.offset + d.scale * r.Normalish());
  }
}

float ChannelValue(int mode, Role role, Rng& r) {
  const bool positive = role == kRolePositive;
  float v = 0;
  switch (mode) {
    default:
      switch (role) {
        case kRoleGamma:
          v = static_cast<float>(1.0 + 0.5 * r.Sym());
          break;
        case kRolePositive:
          v = static_cast<float>(0.25 + 2.0 * r.Unit());
          break;
        case kRoleMean:
          v = static_cast<float>(r.Normalish());
          break;
        default:
          v = static_cast<float>(r.Sym());
          break;
      }
      return v;
    case 1:
      v = static_cast<float>(std::pow(10.0, 2.0 + 3.0 * r.Unit()) * (r.Below(2) ? 1 : -1));
      break;
    case 2:
      v = static_cast<float>(std::pow(10.0, 40.0 * r.Unit() - 20.0) * r.Sym());
      break;
    case 3:
      v = static_cast<float>(static_cast<int>(r.Below(9)) - 4);
      break;
    case 7:
      return Special(r);
    case 8:
      return r.Below(2) ? 0.0f : -0.0f;
    case 9:
      v = BitsFloat(static_cast<uint32_t>(r.Below(1 << 16)) | (r.Below(2) << 31));
      break;
    case 10:
      v = static_cast<float>(std::pow(10.0, 30.0 + 8.5 * r.Unit()) * (r.Below(2) ? 1 : -1));
      break;
  }
  return positive ? std::fabs(v) : v;
}

const double kSpecialDoubles[] = {
    std::numeric_limits<double>::quiet_NaN(),
    -std::numeric_limits<double>::quiet_NaN(),
    std::numeric_limits<double>::infinity(),
    -std::numeric_limits<double>::infinity(),
    std::numeric_limits<double>::denorm_min(),
    -std::numeric_limits<double>::denorm_min(),
    std::numeric_limits<double>::min(),
    -0.0,
    0.0,
    std::numeric_limits<double>::max(),
    -std::numeric_limits<double>::max(),
    1e300,
    -1.0,  // a negative m2 (BAD_ARGUMENT in forward_apply)
    1e-300,
    7e38,  // beyond float
};

// A per-channel double (mean, M2, sums): m2s are not negative, except specials.
double DoubleValue(int mode, Role role, Rng& r) {
  const bool positive = role == kRolePositive;
  double v = 0;
  switch (mode) {
    default:
      v = role == kRolePositive ? 0.25 + 2.0 * r.Unit()
          : role == kRoleSum    ? 10.0 * r.Normalish()
                                : r.Normalish();
      break;
    case 1:
      v = std::pow(10.0, 2.0 + 3.0 * r.Unit()) * (r.Below(2) ? 1 : -1);
      break;
    case 2:
      v = std::pow(10.0, 600.0 * r.Unit() - 300.0) * r.Sym();
      break;
    case 3:
      v = static_cast<double>(static_cast<int>(r.Below(9)) - 4);
      break;
    case 7:
      if (r.Below(4) == 0) return kSpecialDoubles[r.Below(sizeof(kSpecialDoubles) / sizeof(double))];
      v = r.Normalish();
      break;
    case 8:
      return r.Below(2) ? 0.0 : -0.0;
    case 10:
      v = std::pow(10.0, 30.0 + 270.0 * r.Unit()) * (r.Below(2) ? 1 : -1);
      break;
  }
  return positive ? std::fabs(v) : v;
}

// A partial's count (stats_merge).
int64_t CountValue(int mode, Rng& r) {
  switch (mode) {
    default:
      return r.Below(4) == 0 ? 0 : 1 + r.Below(1000);
    case 1:
      return r.Below(3) == 0 ? 0 : static_cast<int64_t>(r.Next() % (uint64_t{1} << 40));
    case 2:
      return 0;
    case 3:
      return r.Below(8) == 0 ? -1 - static_cast<int64_t>(r.Below(3)) : r.Below(5);
    case 4:  // around the 2^53 limit of the total
      return r.Below(2) ? (int64_t{1} << 53) - r.Below(3) : r.Below(3);
    case 7:
      return Interesting(static_cast<uint8_t>(r.Below(256)), static_cast<int64_t>(r.Next()));
  }
}

void FillSlot(Call& k, int i) {
  Slot& s = k.slots[i];
  uint8_t* p = k.Live(i);
  Rng r{k.rng.Next() + static_cast<uint64_t>(i)};
  const int64_t count = static_cast<int64_t>(s.bytes) / (s.kind == kTensor ? ElemSize(k.dtype) : 4);
  if (s.role == kRoleOut || !k.allocatable) {  // garbage, often NaN: unwritten outputs show
    for (size_t b = 0; b < s.bytes; ++b) p[b] = static_cast<uint8_t>(r.Next());
    return;
  }
  const size_t mode_byte = s.kind == kCounts ? 1
                           : s.kind != kTensor ? 3
                           : s.role == kRoleX || s.role == kRoleWeights ? 0
                           : s.role == kRoleYMask ? 2
                                                  : 1;
  const int mode = k.in.U8(kDataMode + mode_byte) % 16;
  if (mode == 6) {  // raw bits from the input's tail
    for (size_t b = 0; b < s.bytes; ++b) p[b] = k.in.TailByte();
    return;
  }
  const int m = mode > 10 ? 0 : mode;
  if (s.kind == kCounts) {
    for (int64_t e = 0; e < static_cast<int64_t>(s.bytes) / 8; ++e) {
      const int64_t v = CountValue(m, r);
      std::memcpy(p + 8 * e, &v, 8);
    }
    return;
  }
  if (s.kind == kChannelD || s.kind == kPartials) {
    for (int64_t e = 0; e < static_cast<int64_t>(s.bytes) / 8; ++e) StoreD(p, e, DoubleValue(m, s.role, r));
    return;
  }
  if (s.kind == kTensor) {
    const int dt = Valid16(k.dtype) ? k.dtype : BNORM_DTYPE_F32;
    std::vector<ChannelDist> dist(static_cast<size_t>(k.c));
    for (int64_t ch = 0; ch < k.c; ++ch) dist[static_cast<size_t>(ch)] = MakeDist(m, s.role, ch, r);
    for (int64_t i2 = 0; i2 < k.n; ++i2) {
      for (int64_t ch = 0; ch < k.c; ++ch) {
        for (int64_t sp = 0; sp < k.sp; ++sp) {
          float v = TensorValue(m, dist[static_cast<size_t>(ch)], r);
          if (s.role == kRoleYMask && r.Below(8) == 0) v = r.Below(2) ? 0.0f : -0.0f;
          StoreElem(p, k.Index(i2, ch, sp), dt, v);
        }
      }
    }
    (void)count;
    return;
  }
  for (int64_t e = 0; e < count; ++e) {
    float v = s.kind == kWeightsKind ? TensorValue(m, ChannelDist{}, r) : ChannelValue(m, s.role, r);
    std::memcpy(p + 4 * e, &v, 4);
  }
}

void Fill(Call& k) {
  // Outputs first, then inputs: an input overlapping an output keeps its data.
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < kMaxSlots; ++i) {
      const Slot& s = k.slots[i];
      if (k.Null(i)) continue;
      if ((pass == 0) == (s.input)) continue;
      FillSlot(k, i);
    }
  }
}

// Sane defaults of the split statistics (per-channel data mode 0): the
// statistics and sums given to the apply functions are those of this part's
// data scaled to total_count values, and each partial's M2 of
// stats_merge grows with its count.
void DeriveDefaults(Call& k) {
  if (!k.allocatable || k.in.U8(kDataMode + 3) % 16 != 0) return;
  if (k.op == kStatsMerge) {
    if (k.Null(0) || k.Null(2)) return;
    for (int64_t j = 0; j < k.n; ++j) {
      const int64_t count = LoadI64(k.Live(0), j);
      if (count < 0 || count > (int64_t{1} << 53)) continue;
      for (int64_t ch = 0; ch < k.c; ++ch) {
        StoreD(k.Live(2), j * k.c + ch, LoadD(k.Live(2), j * k.c + ch) * static_cast<double>(count));
      }
    }
    return;
  }
  const bool fwd = k.op == kFwdApply, bwd = k.op == kBwdApply;
  if (!fwd && !bwd) return;  // (other ops' n and sp need not make a tensor)
  const int64_t m = k.Values();
  if (m == 0 || k.Null(0)) return;
  const double scale =
      k.total >= m ? static_cast<double>(k.total) / static_cast<double>(m) : 1.0;
  for (int64_t ch = 0; ch < k.c; ++ch) {
    double sx = 0, sdy = 0, sq = 0, sdyxmu = 0;
    const double smean = bwd && !k.Null(7) ? LoadF(k.Live(7), ch) : 0.0;
    for (int64_t v = 0; v < m; ++v) {
      const int64_t e = k.Index(v / k.sp, ch, v % k.sp);
      const double xv = LoadElem(k.Live(0), e, k.dtype);
      sx += xv;
      if (bwd && !k.Null(2)) {
        const double g = LoadElem(k.Live(2), e, k.dtype);
        sdy += g;
        sdyxmu += g * (xv - smean);
      }
    }
    const double mu = sx / static_cast<double>(m);
    for (int64_t v = 0; v < m && fwd; ++v) {
      const double d = LoadElem(k.Live(0), k.Index(v / k.sp, ch, v % k.sp), k.dtype) - mu;
      sq += d * d;
    }
    if (fwd && !k.Null(9) && !k.Null(10)) {
      StoreD(k.Live(9), ch, mu);
      StoreD(k.Live(10), ch, sq * scale);
    }
    if (bwd && !k.Null(11) && !k.Null(1)) {
      StoreD(k.Live(11), ch, sdy * scale);
      StoreD(k.Live(1), ch, sdyxmu * scale);
    }
  }
}

void Snapshot(Call& k) {
  for (Arena& a : k.arenas) a.before.assign(a.mem.get(), a.mem.get() + a.size);
}

// ------------------------------------------------------------ calling

bnorm_status Invoke(const Call& k, int ctx_index) {
  const bnorm_context* ctx = G().ctx[ctx_index];
  const bnorm_tensor_desc* d = k.desc_null ? nullptr : &k.desc;
  auto F = [&](int i) { return reinterpret_cast<float*>(k.Live(i)); };
  auto V = [&](int i) { return static_cast<void*>(k.Live(i)); };
  auto D = [&](int i) { return reinterpret_cast<double*>(k.Live(i)); };
  auto I = [&](int i) { return reinterpret_cast<int64_t*>(k.Live(i)); };
  // Enum arguments are decoded as ints, out-of-range values included, and
  // passed through C (tests/raw_enum_calls.c), where an enum may hold any int; C++
  // leaves such values undefined.
  switch (k.op) {
    case kFwdTrain:
      return bnorm_forward_training(ctx, d, V(0), V(2), F(3), F(4), k.eps, k.momentum, F(5), F(6),
                                    F(7), F(8));
    case kFwdTrainEx:
      return raw_forward_training_ex(ctx, d, V(0), V(1), V(2), k.act, F(3), F(4), k.eps, k.momentum,
                                     F(5), F(6), F(7), F(8));
    case kFwdInfer:
      return bnorm_forward_inference(ctx, d, V(0), V(2), F(3), F(4), F(5), F(6), k.eps);
    case kFwdInferEx:
      return raw_forward_inference_ex(ctx, d, V(0), V(1), V(2), k.act, F(3), F(4), F(5), F(6),
                                      k.eps);
    case kBwd:
      return bnorm_backward(ctx, d, V(0), V(2), V(3), F(5), F(7), F(8), F(9), F(10));
    case kBwdFrozen:
      return bnorm_backward_frozen(ctx, d, V(0), V(2), V(3), F(5), F(7), F(8), F(9), F(10));
    case kBwdEx:
      return raw_backward_ex(ctx, d, V(0), V(1), V(2), V(3), V(4), k.act, F(5), F(6), F(7), F(8),
                             F(9), F(10));
    case kFold:
      return bnorm_fold(k.c, F(0), F(1), F(2), F(3), k.eps, F(4), F(5));
    case kFoldWeights:
      return raw_fold_into_weights(k.layout, k.c, k.sp, F(0), F(1), F(6), F(7), F(2), F(3), F(4),
                                   F(5), k.eps);
    case kStats:
      return bnorm_stats(ctx, d, V(0), D(1), D(2));
    case kStatsMerge:
      return bnorm_stats_merge(k.c, k.n, I(0), D(1), D(2), I(3), D(4), D(5));
    case kFwdApply:
      return bnorm_forward_apply(ctx, d, V(0), V(2), F(3), F(4), k.total, D(9), D(10), k.eps,
                                 k.momentum, F(5), F(6), F(7), F(8));
    case kBwdReduce:
      return bnorm_backward_reduce(ctx, d, V(0), V(2), F(7), D(9), D(10));
    case kBwdApply:
      return bnorm_backward_apply(ctx, d, V(0), V(2), V(3), F(5), F(7), F(8), k.total, D(11), D(1),
                                  F(9), F(10));
    default:
      return BNORM_ERR_INTERNAL;
  }
}

// ------------------------------------------------------------ value checks

bool Finite(double v) { return std::isfinite(v); }

// got: an output value; ref: the reference; check: compare values; nan_ok:
// a NaN is allowed here.
int64_t g_value_checks = 0;  // compared values (BNORM_FUZZ_VERBOSE)

void CheckValue(const Call& k, const char* what, int64_t idx, double got, double ref, double tol,
                bool check, bool nan_ok) {
  g_value_checks += check;
  if (std::isnan(got)) {
    if (!nan_ok) {
      Fail(k, "%s[%" PRId64 "] is NaN, but no input it depends on is NaN/Inf or extreme "
              "(reference %.9g)", what, idx, ref);
    }
    return;
  }
  if (!check) return;
  if (std::isinf(got) || std::isinf(ref)) {
    // Overflow: the reference rounds to Inf where the exact value is beyond
    // DBL_MAX, and the library may overflow (or not) within the tolerance of
    // that edge. Accept an Inf against a same-signed value within tol of the
    // largest finite double (Inf against Inf included); |Inf - Inf| is NaN.
    const double finite = std::isinf(got) ? ref : got;
    const bool edge = std::isinf(finite) ||
                      std::fabs(finite) + tol >= std::numeric_limits<double>::max();
    if (std::signbit(got) == std::signbit(ref) && edge) return;
    Fail(k, "%s[%" PRId64 "] = %.9g, reference %.9g: overflow not within tolerance %.3g", what,
         idx, got, ref, tol);
  }
  if (!(std::fabs(got - ref) <= tol)) {
    Fail(k, "%s[%" PRId64 "] = %.9g, reference %.9g, |diff| %.3g > tolerance %.3g", what, idx, got,
         ref, std::fabs(got - ref), tol);
  }
}

// A tensor output element (in the call's dtype): adds the rounding of the
// 16-bit formats, f16 overflow to Inf, and checks NaN encodings.
void CheckElem(const Call& k, const char* what, int slot, int64_t e, double ref, double tol,
               bool check, bool nan_ok) {
  const uint8_t* p = k.Live(slot);
  const double got = LoadElem(p, e, k.dtype);
  if (k.dtype == BNORM_DTYPE_F32 && std::isnan(got)) {
    uint32_t bits;
    std::memcpy(&bits, p + 4 * e, sizeof(bits));
    if (bits != 0x7FC00000u) {
      Fail(k, "%s[%" PRId64 "]: f32 NaN is 0x%08x, not 0x7FC00000", what, e, bits);
    }
  }
  if (k.dtype == BNORM_DTYPE_BF16) {
    tol += std::fabs(ref) * 0x1.0p-8 + 1e-40;
    if (std::isnan(got) && LoadBits16(p, e) != 0x7FC0) {
      Fail(k, "%s[%" PRId64 "]: bf16 NaN is 0x%04x, not 0x7FC0", what, e, LoadBits16(p, e));
    }
  } else if (k.dtype == BNORM_DTYPE_F16) {
    tol += std::fabs(ref) * 0x1.0p-11 + 0x1.0p-25;
    if (std::isnan(got) && LoadBits16(p, e) != 0x7E00) {
      Fail(k, "%s[%" PRId64 "]: f16 NaN is 0x%04x, not 0x7E00", what, e, LoadBits16(p, e));
    }
    // Values within tol of ref that round beyond 65504 become Inf.
    if (check && std::isinf(got) && (got > 0 ? ref + tol >= 65520.0 : ref - tol <= -65520.0)) {
      return;
    }
  }
  CheckValue(k, what, e, got, ref, tol, check, nan_ok);
}

// Ordered distance between two floats in ulps (NaN excluded by callers).
int64_t UlpDistance(float a, float b) {
  auto key = [](float f) {
    const int32_t i = static_cast<int32_t>(FloatBits(f));
    return i < 0 ? static_cast<int64_t>(INT32_MIN) - i : static_cast<int64_t>(i);
  };
  const int64_t d = key(a) - key(b);
  return d < 0 ? -d : d;
}

// A value "computed in double, rounded to float once": within 1 ulp of the
// double reference's rounding, or within abs_tol of the reference.
void CheckRounded(const Call& k, const char* what, int64_t idx, float got, double ref,
                  double abs_tol, bool check, bool nan_ok) {
  if (std::isnan(got)) {
    if (!nan_ok) Fail(k, "%s[%" PRId64 "] is NaN (reference %.9g)", what, idx, ref);
    return;
  }
  if (!check) return;
  const float rf = static_cast<float>(ref);
  if (UlpDistance(got, rf) <= 1) return;
  g_value_checks += 1;
  if (std::fabs(static_cast<double>(got) - ref) <= abs_tol) return;
  Fail(k, "%s[%" PRId64 "] = %.9g, reference %.12g (%" PRId64 " ulps)", what, idx,
       static_cast<double>(got), ref, UlpDistance(got, rf));
}

double Opt(const uint8_t* p, int64_t i, double fallback) { return p ? LoadF(p, i) : fallback; }

// ---- forward (training and inference, plain and fused)

void CheckForward(const Call& k) {
  const bool training = k.op == kFwdTrain || k.op == kFwdTrainEx;
  const bool apply = k.op == kFwdApply;  // training outputs from the given statistics
  const bool ex = k.op == kFwdTrainEx || k.op == kFwdInferEx;
  const uint8_t* x = k.Before(0);
  const uint8_t* z = ex ? k.Before(1) : nullptr;
  const uint8_t* gamma = k.Before(3);
  const uint8_t* beta = k.Before(4);
  const bool relu = ex && k.Relu();
  const int64_t m = k.Values();
  const double eps = k.eps, mom = k.momentum;
  std::vector<double> xs(static_cast<size_t>(m));
  for (int64_t ch = 0; ch < k.c; ++ch) {
    bool nonfinite = false;
    double amax = 0, sum = 0;
    for (int64_t v = 0; v < m; ++v) {
      const double xv = LoadElem(x, k.Index(v / k.sp, ch, v % k.sp), k.dtype);
      xs[static_cast<size_t>(v)] = xv;
      if (!Finite(xv)) nonfinite = true;
      amax = std::max(amax, std::fabs(xv));
      sum += xv;
    }
    double mu = 0, var = 0, is = 0, dmean = 0, dis_rel = 0;
    bool stat_wild = false;  // the statistics may be NaN
    if (training) {
      stat_wild = nonfinite || amax > kLarge;
      mu = sum / static_cast<double>(m);
      double sq = 0, dmax = 0;
      for (double xv : xs) {
        sq += (xv - mu) * (xv - mu);
        dmax = std::max(dmax, std::fabs(xv - mu));
      }
      var = sq / static_cast<double>(m);
      is = var + eps == 0 ? 0 : 1 / std::sqrt(var + eps);
      dmean = 4 * kU * std::fabs(mu) + kTolSum * std::sqrt(var) + kTiny;
      const double dvar = kTolVar * var + kTiny;
      dis_rel = var + eps > 0 ? 0.5 * dvar / (var + eps) + 4 * kU : 0;
      const bool is_wild = stat_wild || is > kHuge;
      if (!k.Null(7)) {
        CheckValue(k, "save_mean", ch, LoadF(k.Live(7), ch), mu, dmean, !stat_wild, stat_wild);
      }
      if (!k.Null(8)) {
        CheckValue(k, "save_invstd", ch, LoadF(k.Live(8), ch), is, is * dis_rel + kTiny, !is_wild,
                   stat_wild);
      }
      if (!k.Null(5)) {
        const double old = LoadF(k.Before(5), ch);
        const bool wild = stat_wild || !Finite(old) || std::fabs(old) > kHuge;
        const double ref = (1 - mom) * old + mom * mu;
        const double tol =
            4 * kU * (std::fabs((1 - mom) * old) + std::fabs(mom * mu)) + mom * dmean + kTiny;
        CheckValue(k, "running_mean", ch, LoadF(k.Live(5), ch), ref, tol, !wild, wild);
      }
      if (!k.Null(6)) {
        const double old = LoadF(k.Before(6), ch);
        const bool wild = stat_wild || !Finite(old) || std::fabs(old) > kHuge;
        const double unbiased = var * static_cast<double>(m) / static_cast<double>(m - 1);
        const double ref = (1 - mom) * old + mom * unbiased;
        const double tol = 4 * kU * (std::fabs((1 - mom) * old) + std::fabs(mom * unbiased)) +
                           mom * dvar * static_cast<double>(m) / static_cast<double>(m - 1) + kTiny;
        CheckValue(k, "running_var", ch, LoadF(k.Live(6), ch), ref, tol, !wild, wild);
      }
      stat_wild = stat_wild || is > kHuge;
    } else if (apply) {
      // As bnorm_forward_training finalizes: double arithmetic, one rounding.
      const double mean_d = LoadD(k.Before(9), ch), m2_d = LoadD(k.Before(10), ch);
      const double total = static_cast<double>(k.total);
      const double var_eps = m2_d / total + eps;
      mu = mean_d;
      is = var_eps == 0 ? 0 : 1 / std::sqrt(var_eps);
      if (!k.Null(7)) {
        CheckRounded(k, "save_mean", ch, static_cast<float>(LoadF(k.Live(7), ch)), mean_d, 0,
                     !std::isnan(mean_d), std::isnan(mean_d));
      }
      if (!k.Null(8)) {
        CheckRounded(k, "save_invstd", ch, static_cast<float>(LoadF(k.Live(8), ch)), is, 0,
                     !std::isnan(is), std::isnan(is));
      }
      const double unbiased = m2_d / (total - 1);
      for (int slot : {5, 6}) {
        if (k.Null(slot)) continue;
        const double old = LoadF(k.Before(slot), ch), st = slot == 5 ? mean_d : unbiased;
        const double ref = (1 - mom) * old + mom * st;
        const bool finite = Finite(old) && Finite(st);
        CheckRounded(k, slot == 5 ? "running_mean" : "running_var", ch,
                     static_cast<float>(LoadF(k.Live(slot), ch)), ref,
                     4 * 0x1.0p-53 * (std::fabs((1 - mom) * old) + std::fabs(mom * st)) + 1.5e-45,
                     finite, !finite);
      }
      stat_wild = !Finite(mean_d) || !Finite(m2_d) || std::fabs(mean_d) > kLarge || is > kHuge;
    } else {
      const double mean = LoadF(k.Before(5), ch), vr = LoadF(k.Before(6), ch);
      const double s = vr + eps;
      mu = mean;
      is = 1 / std::sqrt(s);
      stat_wild = !Finite(mean) || !Finite(vr) || std::fabs(mean) > kLarge || !(s > 0) ||
                  is > kHuge;
    }
    const double g = Opt(gamma, ch, 1), b = Opt(beta, ch, 0);
    // The scale is * gamma is a float constant too: it must not overflow.
    const bool ch_wild = stat_wild || !Finite(g) || !Finite(b) || std::fabs(g) > kLarge ||
                         std::fabs(b) > kLarge || is * std::fabs(g) > kHuge;
    for (int64_t v = 0; v < m; ++v) {
      const int64_t e = k.Index(v / k.sp, ch, v % k.sp);
      const double xv = xs[static_cast<size_t>(v)];
      const double zv = z ? LoadElem(z, e, k.dtype) : 0.0;
      const double xmu = xv - mu;
      const double t = std::fabs(xmu) * is * std::fabs(g);
      const bool wild = ch_wild || !Finite(xv) || !Finite(zv) || std::fabs(xv) > kLarge ||
                        std::fabs(zv) > kLarge || t > kHuge;
      double ref = xmu * is * g + b + zv;
      if (relu && ref < 0) ref = 0;
      double tol = 8 * kU * (t + std::fabs(b) + std::fabs(zv) + std::fabs(ref)) +
                   4 * kDenorm * (std::fabs(xmu) + 1) + kTiny;
      if (training) tol += std::fabs(g) * is * dmean + t * dis_rel;
      CheckElem(k, "y", 2, e, ref, tol, !wild, wild);
    }
  }
}

// ---- backward (training, frozen, fused)

void CheckBackward(const Call& k) {
  const bool frozen = k.op == kBwdFrozen;
  const bool reduce = k.op == kBwdReduce;  // the sums only, in double
  const bool apply = k.op == kBwdApply;    // from the given sums of total_count values
  const bool relu = k.op == kBwdEx && k.Relu();
  const uint8_t* x = k.Before(0);
  const uint8_t* ymask = relu ? k.Before(1) : nullptr;
  const uint8_t* dy = k.Before(2);
  const uint8_t* gamma = k.Before(5);
  const int64_t m = k.Values();
  const double md = static_cast<double>(apply ? k.total : m);
  std::vector<double> gs(static_cast<size_t>(m)), xs(static_cast<size_t>(m));
  for (int64_t ch = 0; ch < k.c; ++ch) {
    const double mean = LoadF(k.Before(7), ch), is = reduce ? 0.0 : LoadF(k.Before(8), ch);
    const double gm = Opt(gamma, ch, 1);
    double sdy = 0, sdyxmu = 0, sabs = 0, sxabs = 0, gmax = 0, xmax = 0;
    bool g_nonfinite = false, x_nonfinite = false;
    for (int64_t v = 0; v < m; ++v) {
      const int64_t e = k.Index(v / k.sp, ch, v % k.sp);
      double g = LoadElem(dy, e, k.dtype);
      if (relu && LoadElem(ymask, e, k.dtype) <= 0) g = 0;  // a NaN y passes dy (bnorm.h)
      const double xv = LoadElem(x, e, k.dtype);
      gs[static_cast<size_t>(v)] = g;
      xs[static_cast<size_t>(v)] = xv;
      if (!Finite(g)) g_nonfinite = true;
      if (!Finite(xv)) x_nonfinite = true;
      gmax = std::max(gmax, std::fabs(g));
      xmax = std::max(xmax, std::fabs(xv));
      sdy += g;
      sdyxmu += g * (xv - mean);
      sabs += std::fabs(g);
      sxabs += std::fabs(g * (xv - mean));
    }
    // Errors of the float sums: kTolSum of the terms' magnitudes, plus half a
    // denormal per term (a product dy * (x - mean) may round in the denormals).
    double dsdy = kTolSum * sabs + static_cast<double>(m) * kDenorm;
    double dsdyxmu = kTolSum * sxabs + static_cast<double>(m) * kDenorm;
    bool beta_wild = g_nonfinite || gmax > kLarge;
    bool gamma_wild = beta_wild || x_nonfinite || !Finite(mean) || !Finite(is) ||
                      xmax > kLarge || std::fabs(mean) > kLarge || std::fabs(is) > kLarge ||
                      sxabs * std::fabs(is) > kHuge;
    bool dgamma_wild = gamma_wild;
    if (reduce) {
      const double got_dy = LoadD(k.Live(9), ch), got_dyxmu = LoadD(k.Live(10), ch);
      if (m == 0 && (got_dy != 0 || got_dyxmu != 0)) {
        Fail(k, "n == 0: sums of channel %" PRId64 " are %.9g and %.9g, not 0", ch, got_dy,
             got_dyxmu);
      }
      const bool xmu_wild = gamma_wild || sxabs > kHuge;
      CheckValue(k, "sum_dy", ch, got_dy, sdy, dsdy + kTiny, !beta_wild, beta_wild);
      CheckValue(k, "sum_dy_xmu", ch, got_dyxmu, sdyxmu, dsdyxmu + kTiny, !xmu_wild, xmu_wild);
      continue;
    }
    if (apply) {  // the given sums are exact; the data decides dx alone
      sdy = LoadD(k.Before(11), ch);
      sdyxmu = LoadD(k.Before(1), ch);
      dsdy = dsdyxmu = sabs = sxabs = 0;
      // (sum_dy / total_count is a float constant of dx: it must not overflow)
      gamma_wild = gamma_wild || !Finite(sdy) || !Finite(sdyxmu) || std::fabs(sdy) / md > kHuge;
      beta_wild = !Finite(sdy) || std::fabs(sdy) > kHuge;
      dgamma_wild = !Finite(sdyxmu) || !Finite(is) || std::fabs(sdyxmu * is) > kHuge;
    }
    if (!k.Null(10)) {
      CheckValue(k, "dbeta", ch, LoadF(k.Live(10), ch), sdy,
                 dsdy + (apply ? 4 * kU * std::fabs(sdy) : 0) + kTiny, !beta_wild, beta_wild);
    }
    if (!k.Null(9)) {
      const double ref = sdyxmu * is;
      const double tol = std::fabs(is) * dsdyxmu + 4 * kU * std::fabs(ref) + kTiny;
      CheckValue(k, "dgamma", ch, LoadF(k.Live(9), ch), ref, tol, !dgamma_wild, dgamma_wild);
    }
    // dx = ((g - c) - b * (x - mean)) * a with per-channel float constants
    // a = gamma * invstd, c = sum_dy / m, b = invstd^2 * sum_dy_xmu / m: none
    // of them may overflow, nor the bracket before its product with a. Each
    // may round in the denormals, or to 0: a by half a denormal times the
    // bracket, c times |a|, b times |x - mean| |a|, the bracket times |a|.
    const double a = gm * is;
    const bool a_wild = !Finite(gm) || !Finite(is) || std::fabs(gm) > kLarge ||
                        std::fabs(is) > kLarge;
    const bool consts_wild = a_wild || (std::fabs(sdy) + sabs) / md > kHuge ||
                             is * is * (std::fabs(sdyxmu) + sxabs) / md > kHuge;
    for (int64_t v = 0; v < m; ++v) {
      const int64_t e = k.Index(v / k.sp, ch, v % k.sp);
      const double g = gs[static_cast<size_t>(v)];
      if (!k.Null(4)) {  // dz = the masked dy, exactly
        const double got = LoadElem(k.Live(4), e, k.dtype);
        const bool ok = std::isnan(g) ? std::isnan(got) : got == g;
        if (!ok) Fail(k, "dz[%" PRId64 "] = %.9g, expected %.9g (masked dy)", e, got, g);
        if (Valid16(k.dtype)) CheckElem(k, "dz", 4, e, g, 0, false, true);  // NaN encoding
      }
      if (k.Null(3)) continue;
      if (frozen) {
        const double ref = g * a;
        const bool wild = a_wild || !Finite(g) || std::fabs(ref) > kHuge;
        CheckElem(k, "dx", 3, e, ref, 4 * kU * std::fabs(ref) + 4 * kDenorm * std::fabs(g) + kTiny,
                  !wild, wild);
        continue;
      }
      const double xmu = xs[static_cast<size_t>(v)] - mean;
      // The bracket's two terms, then each times |a|.
      const double u1 = std::fabs(g) + std::fabs(sdy) / md;
      const double u2 = is * is * std::fabs(xmu) * std::fabs(sdyxmu) / md;
      const double t1 = std::fabs(a) * u1, t2 = std::fabs(a) * u2;
      const double ref = a * (g - sdy / md) - a * is * is * xmu * sdyxmu / md;
      const bool wild = gamma_wild || consts_wild || u1 > kHuge || u2 > kHuge || t1 > kHuge ||
                        t2 > kHuge || is * is * std::fabs(xmu) * sxabs / md > kHuge ||
                        std::fabs(a) * is * is * std::fabs(xmu) * sxabs / md > kHuge;
      const double tol =
          std::fabs(a) * dsdy / md + std::fabs(a) * is * is * std::fabs(xmu) * dsdyxmu / md +
          8 * kU * (t1 + t2 + std::fabs(ref)) +
          4 * kDenorm *
              (u1 + u2 + std::fabs(a) * (std::fabs(xmu) + 1) + std::fabs(xmu) + std::fabs(a) + 1) +
          kTiny;
      CheckElem(k, "dx", 3, e, ref, tol, !wild, wild);
    }
  }
}

// ---- split statistics: bnorm_stats and bnorm_stats_merge

void CheckStats(const Call& k) {
  const uint8_t* x = k.Before(0);
  const int64_t m = k.Values();
  for (int64_t ch = 0; ch < k.c; ++ch) {
    const double got_mean = LoadD(k.Live(1), ch), got_m2 = LoadD(k.Live(2), ch);
    if (m == 0) {  // a part without samples: mean = m2 = 0
      if (got_mean != 0 || got_m2 != 0) {
        Fail(k, "n == 0: channel %" PRId64 " has mean %.17g, m2 %.17g, not 0", ch, got_mean, got_m2);
      }
      continue;
    }
    bool nonfinite = false;
    double amax = 0, sum = 0;
    for (int64_t v = 0; v < m; ++v) {
      const double xv = LoadElem(x, k.Index(v / k.sp, ch, v % k.sp), k.dtype);
      nonfinite = nonfinite || !Finite(xv);
      amax = std::max(amax, std::fabs(xv));
      sum += xv;
    }
    if (nonfinite) {  // documented: NaN/Inf in a channel make its results NaN
      if (!std::isnan(got_mean) || !std::isnan(got_m2)) {
        Fail(k, "channel %" PRId64 " holds NaN/Inf but its mean is %.17g and m2 %.17g, not NaN",
             ch, got_mean, got_m2);
      }
      continue;
    }
    const double mu = sum / static_cast<double>(m);
    double m2 = 0;
    for (int64_t v = 0; v < m; ++v) {
      const double d = LoadElem(x, k.Index(v / k.sp, ch, v % k.sp), k.dtype) - mu;
      m2 += d * d;
    }
    // The tolerances of bnorm_forward_training's statistics (the same bits).
    const double var = m2 / static_cast<double>(m);
    const bool wild = amax > kLarge;
    CheckValue(k, "mean", ch, got_mean, mu, 4 * kU * std::fabs(mu) + kTolSum * std::sqrt(var) + kTiny,
               !wild, wild);
    CheckValue(k, "m2", ch, got_m2, m2, kTolVar * m2 + kTiny, !wild, wild);
  }
}

// A long double merge of the partials with a nonzero count (Chan's formula,
// left to right), with a bound of the double algorithm's error grown step
// by step: e_mean for the mean, e_m2 for M2.
void CheckMerge(const Call& k) {
  const uint8_t* counts = k.Before(0);
  const uint8_t* means = k.Before(1);
  const uint8_t* m2s = k.Before(2);
  const int64_t parts = k.n;
  int64_t total = 0;
  for (int64_t j = 0; j < parts; ++j) total += LoadI64(counts, j);
  const int64_t got_count = LoadI64(k.Live(3), 0);
  if (got_count != total) Fail(k, "count_out = %" PRId64 ", expected %" PRId64, got_count, total);
  constexpr long double kU53 = 0x1.0p-53L;
  for (int64_t ch = 0; ch < k.c; ++ch) {
    const double got_mean = LoadD(k.Live(4), ch), got_m2 = LoadD(k.Live(5), ch);
    if (parts == 1) {  // documented: the outputs are the inputs, bit for bit
      const double in_mean = total == 0 ? 0.0 : LoadD(means, ch);
      const double in_m2 = total == 0 ? 0.0 : LoadD(m2s, ch);
      if (std::memcmp(&got_mean, &in_mean, 8) != 0 || std::memcmp(&got_m2, &in_m2, 8) != 0) {
        Fail(k, "k == 1: channel %" PRId64 " gives mean %.17g, m2 %.17g for inputs %.17g, %.17g "
                "(count %" PRId64 "): not the same bits",
             ch, got_mean, got_m2, in_mean, in_m2, total);
      }
      continue;
    }
    long double count = 0, mean = 0, m2 = 0, e_mean = 0, e_m2 = 0;
    bool wild = false;  // an included input is NaN/Inf, or a square may overflow
    for (int64_t j = 0; j < parts; ++j) {
      const int64_t cj = LoadI64(counts, j);
      if (cj == 0) continue;  // skipped: its numbers are not read
      const long double mb = LoadD(means, j * k.c + ch), m2b = LoadD(m2s, j * k.c + ch);
      wild = wild || !std::isfinite(static_cast<double>(mb)) ||
             !std::isfinite(static_cast<double>(m2b)) || std::fabs(mb) > 1e150L ||
             std::fabs(m2b) > 1e300L;
      if (count == 0) {  // the first included partial is taken as it is
        count = static_cast<long double>(cj);
        mean = mb;
        m2 = m2b;
        continue;
      }
      const long double n = count + static_cast<long double>(cj);
      const long double f = static_cast<long double>(cj) / n;
      const long double cross = count * f;
      const long double delta = mb - mean;
      const long double mean_new = mean + delta * f;
      e_m2 += (2 * std::fabs(delta) * e_mean + e_mean * e_mean) * cross +
              8 * kU53 * (std::fabs(m2) + std::fabs(m2b) + delta * (delta * cross));
      e_mean += 4 * kU53 * (std::fabs(mean) + std::fabs(delta) * f + std::fabs(mean_new));
      m2 += m2b + delta * (delta * cross);
      mean = mean_new;
      count = n;
    }
    if (count == 0) {  // the total count is 0: 0 and 0
      if (got_mean != 0 || got_m2 != 0) {
        Fail(k, "total count 0: channel %" PRId64 " gives mean %.17g, m2 %.17g, not 0", ch,
             got_mean, got_m2);
      }
      continue;
    }
    // Subnormal results: the relative bounds above do not hold there; each
    // product that lands below DBL_MIN adds up to half a denorm_min (sums of
    // subnormals are exact). The library forms delta * (delta * cross), so an
    // underflowing square costs about one denorm_min per merge; formed as
    // (delta * delta) * cross, its error would scale with cross (a crash
    // input in tests/fuzz/corpus/regress_merge_subnormal_square: 590 denorm_min).
    const double slack = 16 * std::numeric_limits<double>::denorm_min() * static_cast<double>(parts);
    CheckValue(k, "mean_out", ch, got_mean, static_cast<double>(mean),
               static_cast<double>(2 * e_mean) + slack, !wild, wild);
    CheckValue(k, "m2_out", ch, got_m2, static_cast<double>(m2), static_cast<double>(2 * e_m2) + slack,
               !wild, wild);
  }
}

// ---- folding

void CheckFold(const Call& k) {
  const bool weights = k.op == kFoldWeights;
  const uint8_t* gamma = k.Before(weights ? 2 : 0);
  const uint8_t* beta = k.Before(weights ? 3 : 1);
  const uint8_t* mean = k.Before(weights ? 4 : 2);
  const uint8_t* var = k.Before(weights ? 5 : 3);
  const uint8_t* w = weights ? k.Before(0) : nullptr;
  const uint8_t* bias = weights ? k.Before(1) : nullptr;
  const bool outer = k.layout == BNORM_WEIGHTS_OIHW || k.layout == BNORM_WEIGHTS_OHWI ||
                     k.layout == BNORM_WEIGHTS_OI;
  for (int64_t ch = 0; ch < k.c; ++ch) {
    const double g = Opt(gamma, ch, 1), b = Opt(beta, ch, 0);
    const double mu = LoadF(mean, ch), vr = LoadF(var, ch);
    const double s = vr + static_cast<double>(k.eps);
    const double scale = g / std::sqrt(s);
    // NaN is allowed where an input is NaN/Inf or var + eps <= 0 (Inf scale).
    const bool wild = !Finite(g) || !Finite(b) || !Finite(mu) || !Finite(vr) || !(s > 0);
    if (!weights) {
      CheckRounded(k, "scale_out", ch, static_cast<float>(LoadF(k.Live(4), ch)), scale, 0, !wild,
                   wild);
      const double shift = b - mu * scale;
      const double slack = 4 * 0x1.0p-53 * (std::fabs(b) + std::fabs(mu * scale)) + 1.5e-45;
      CheckRounded(k, "shift_out", ch, static_cast<float>(LoadF(k.Live(5), ch)), shift, slack,
                   !wild, wild);
      continue;
    }
    const double bi = Opt(bias, ch, 0);
    const bool bwild = wild || !Finite(bi);
    const double ref = (bi - mu) * scale + b;
    const double slack =
        4 * 0x1.0p-53 * (std::fabs(bi * scale) + std::fabs(mu * scale) + std::fabs(b)) + 1.5e-45;
    CheckRounded(k, "bias_out", ch, static_cast<float>(LoadF(k.Live(7), ch)), ref, slack, !bwild,
                 bwild);
    for (int64_t q = 0; q < k.sp; ++q) {
      const int64_t e = outer ? ch * k.sp + q : q * k.c + ch;
      const double wv = LoadF(w, e);
      const bool ww = wild || !Finite(wv);
      CheckRounded(k, "weights_out", e, static_cast<float>(LoadF(k.Live(6), e)), wv * scale, 1.5e-45,
                   !ww, ww);
    }
  }
}

// Bytes outside the outputs are unchanged (all bytes when outputs is false).
void CheckUnchanged(const Call& k, bool outputs_may_change, bnorm_status st) {
  for (size_t a = 0; a < k.arenas.size(); ++a) {
    const Arena& ar = k.arenas[a];
    std::vector<uint8_t> writable(ar.size, 0);
    if (outputs_may_change) {
      for (const Slot& s : k.slots) {
        if (!s.present || s.arena != static_cast<int>(a) || !s.output || s.bytes == 0) continue;
        std::memset(writable.data() + ar.pad + s.offset, 1, s.bytes);
      }
    }
    for (size_t b = 0; b < ar.size; ++b) {
      if (!writable[b] && ar.mem[b] != ar.before[b]) {
        const int64_t off = static_cast<int64_t>(b) - static_cast<int64_t>(ar.pad);
        const char* owner = "padding";
        for (const Slot& s : k.slots) {
          if (s.present && s.arena == static_cast<int>(a) && off >= s.offset &&
              off < s.offset + static_cast<int64_t>(s.bytes)) {
            owner = s.name;
          }
        }
        Fail(k, "status %d (%s): byte %" PRId64 " of arena %zu (%s) changed", st,
             bnorm_status_string(st), off, a, owner);
      }
    }
  }
}

// ------------------------------------------------------------ misc entry points

void RunMisc(Call& k) {
  Globals& g = G();
  const Input& in = k.in;
  const int64_t raw = static_cast<int64_t>(in.U64(kRawA));
  switch (in.U8(kActSel) % 6) {
    case 0: {  // context_create: statuses, *out untouched on error, the thread count
      const int threads = in.U8(kN) & 1 ? static_cast<int>(raw) : static_cast<int>(in.U8(kC)) - 8;
      const bool null_out = in.U8(kSpatial) % 8 == 0;
      bnorm_context* sentinel = reinterpret_cast<bnorm_context*>(uintptr_t{0x1234});
      bnorm_context* out = sentinel;
      const bnorm_status s = bnorm_context_create(threads, null_out ? nullptr : &out);
      const bnorm_status want = null_out       ? BNORM_ERR_NULL_POINTER
                                : threads < 0  ? BNORM_ERR_BAD_ARGUMENT
                                               : BNORM_OK;
      if (s != want && !(s == BNORM_ERR_OUT_OF_MEMORY && want == BNORM_OK)) {
        Fail(k, "bnorm_context_create(%d, %s) = %d, expected %d", threads,
             null_out ? "NULL" : "&out", s, want);
      }
      if (s != BNORM_OK) {
        if (out != sentinel) Fail(k, "bnorm_context_create wrote *out on error");
        return;
      }
      const int cores = bnorm_context_num_threads(nullptr);
      const int cap = std::max(256, 4 * cores);
      const int expect = threads == 0 ? cores : std::min(threads, cap);
      if (bnorm_context_num_threads(out) != expect) {
        Fail(k, "bnorm_context_num_threads = %d for %d requested, expected %d",
             bnorm_context_num_threads(out), threads, expect);
      }
      // One small call on it.
      const bnorm_tensor_desc d{2, 3, 5, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
      std::vector<float> x(30), y(30), mv(3, 0.5f);
      for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7);
      const bnorm_status s2 =
          bnorm_forward_inference(out, &d, x.data(), y.data(), nullptr, nullptr, mv.data(),
                                  mv.data(), 1e-5f);
      if (s2 != BNORM_OK) Fail(k, "inference on a new context: status %d", s2);
      bnorm_context_destroy(out);
      return;
    }
    case 1: {  // status strings: never NULL or empty, also for unknown values
      const int v = static_cast<int>(raw);
      const char* s = bnorm_status_string(static_cast<bnorm_status>(v));
      if (s == nullptr || s[0] == '\0') Fail(k, "bnorm_status_string(%d) empty", v);
      return;
    }
    case 2: {  // target names
      const int i = static_cast<int>(raw);
      const char* name = bnorm_target_name(i);
      const bool in_range = i >= 0 && i < bnorm_target_count();
      if ((name != nullptr) != in_range) Fail(k, "bnorm_target_name(%d) = %p", i, name);
      return;
    }
    case 3: {  // set_target with a fuzzed name
      std::string name;
      const size_t len = in.U8(kN) % 12;
      for (size_t i = 0; i < len; ++i) {
        char ch = static_cast<char>(k.in.U8(k.in.tail + i));
        if (ch == '\0') ch = 'x';
        name.push_back(ch);
      }
      if (in.U8(kC) & 1 && !g.targets.empty()) {  // a real name in mixed case
        name = g.targets[in.U8(kSpatial) % g.targets.size()];
        for (size_t i = 0; i < name.size(); ++i) {
          if ((in.U8(kRawB) >> (i % 8)) & 1) name[i] = static_cast<char>(std::tolower(name[i]));
        }
      }
      const bnorm_status s = bnorm_set_target(name.c_str());
      bool known = name.empty();
      for (const std::string& t : g.targets) {
        if (t.size() == name.size() &&
            std::equal(t.begin(), t.end(), name.begin(), [](char a, char b) {
              return std::tolower(static_cast<unsigned char>(a)) ==
                     std::tolower(static_cast<unsigned char>(b));
            })) {
          known = true;
        }
      }
      if (known && s != BNORM_OK) Fail(k, "bnorm_set_target(\"%s\") = %d", name.c_str(), s);
      if (!known && s == BNORM_OK) Fail(k, "bnorm_set_target(\"%s\") accepted", name.c_str());
      if (s != BNORM_OK && s != BNORM_ERR_BAD_ARGUMENT && s != BNORM_ERR_UNSUPPORTED) {
        Fail(k, "bnorm_set_target(\"%s\") = %d", name.c_str(), s);
      }
      return;
    }
    case 4: {  // back to the default
      if (bnorm_set_target(in.U8(kN) & 1 ? "" : nullptr) != BNORM_OK) Fail(k, "reset failed");
      if (g.default_target != bnorm_active_target()) {
        Fail(k, "default target %s, was %s", bnorm_active_target(), g.default_target.c_str());
      }
      return;
    }
    default: {
      char want[64];
      std::snprintf(want, sizeof(want), "%d.%d.%d", BNORM_VERSION_MAJOR, BNORM_VERSION_MINOR,
                    BNORM_VERSION_PATCH);
      if (std::strcmp(bnorm_version_string(), want) != 0) Fail(k, "version string");
      bnorm_context_destroy(nullptr);
      return;
    }
  }
}

bool ValidStatus(bnorm_status s) {
  const int v = static_cast<int>(s);
  return v >= BNORM_OK && v <= BNORM_ERR_INTERNAL;
}

void Run(const uint8_t* data, size_t size) {
  Globals& g = G();
  Call k;
  k.in.data = data;
  k.in.size = size;
  k.op = static_cast<Op>(k.in.U8(kOp) % kNumOps);
  k.target = static_cast<int>(k.in.U8(kTarget) % g.targets.size());
  if (bnorm_set_target(g.targets[static_cast<size_t>(k.target)].c_str()) != BNORM_OK) {
    Fail(k, "bnorm_set_target(%s) failed", g.targets[static_cast<size_t>(k.target)].c_str());
  }
  k.ctx_index = k.in.U8(kCtx) % 4;
  k.rng.s = k.in.U64(kSeed);
  if (k.op == kMisc) {
    RunMisc(k);
    return;
  }
  DecodeShape(k);
  if (SplitTensorOp(k.op) && (k.in.U8(kFlags) & 8)) k.n = 0;  // a part without samples
  if (k.op == kFwdApply || k.op == kBwdApply) k.total = DecodeTotal(k);
  k.layout = DecodeEnum(k.in, kLayout, k.op == kFoldWeights ? 5 : 2, 0);
  k.dtype = DecodeEnum(k.in, kDtype, 3, 8);
  k.act = DecodeEnum(k.in, kActSel, 2, 16);
  k.eps = DecodeEps(k.in);
  k.momentum = DecodeMomentum(k.in);
  k.desc_null = k.in.U8(kFlags) & 1;
  k.desc.n = k.n;
  k.desc.c = k.c;
  k.desc.spatial = k.sp;
  std::memcpy(&k.desc.layout, &k.layout, sizeof(int));  // raw, maybe out of range
  std::memcpy(&k.desc.dtype, &k.dtype, sizeof(int));
  DefineSlots(k);

  // Shapes too large to back with memory must fail before the data is
  // touched: if nothing else fails first, the first required buffer is NULL.
  bool ambiguous = false;
  if (k.op == kFold) {
    k.allocatable = k.c >= 1 && k.c <= kMaxAllocElems;
  } else if (k.op == kFoldWeights) {
    int64_t count = 0;
    k.allocatable = k.c >= 1 && k.sp >= 1 && MulOk(k.c, k.sp, &count) && count <= kMaxAllocElems;
  } else if (k.op == kStatsMerge) {
    k.allocatable = MergeShapeOk(k) && k.n * k.c <= kMaxAllocElems;
  } else {
    k.allocatable = TensorShapeOk(k, &ambiguous) && k.Elements() <= kMaxAllocElems &&
                    k.c <= kMaxAllocElems;
  }
  Place(k);
  int first_required = 0;
  while (!k.slots[first_required].present || !k.slots[first_required].required) ++first_required;
  if (!k.allocatable &&
      (PreAliasStatus(k, true) == BNORM_OK || PreAliasStatus(k, false) == BNORM_OK)) {
    k.slots[first_required].arena = -1;
    k.slots[first_required].how = "NULL (shape too large to allocate)";
  }
  Fill(k);
  DeriveDefaults(k);
  Snapshot(k);
  const Expect want = ExpectedStatus(k);

  const bnorm_status st = Invoke(k, k.ctx_index);
  static const bool verbose = std::getenv("BNORM_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "status %d (%s)\n%s", st, bnorm_status_string(st), Describe(k).c_str());
  if (!ValidStatus(st)) Fail(k, "invalid status %d", static_cast<int>(st));
  if (!want.Has(st)) {
    std::string list;
    for (int i = 0; i < want.count; ++i) list += std::to_string(static_cast<int>(want.s[i])) + " ";
    Fail(k, "status %d (%s), expected one of: %s", st, bnorm_status_string(st), list.c_str());
  }
  if (st != BNORM_OK) {
    CheckUnchanged(k, false, st);
    return;
  }
  CheckUnchanged(k, true, st);
  switch (k.op) {
    case kFwdTrain:
    case kFwdTrainEx:
    case kFwdInfer:
    case kFwdInferEx:
      CheckForward(k);
      break;
    case kBwd:
    case kBwdFrozen:
    case kBwdEx:
      CheckBackward(k);
      break;
    case kFwdApply:
      CheckForward(k);
      break;
    case kBwdReduce:
    case kBwdApply:
      CheckBackward(k);
      break;
    case kStats:
      CheckStats(k);
      break;
    case kStatsMerge:
      CheckMerge(k);
      break;
    default:
      CheckFold(k);
      break;
  }

  if (verbose) std::fprintf(stderr, "value checks so far: %" PRId64 "\n", g_value_checks);
  // Results never depend on the thread count: rerun on another context.
  if ((k.in.U8(kFlags) & 2) && k.op != kFold && k.op != kFoldWeights && k.op != kStatsMerge) {
    int other = k.in.U8(kRerunCtx) % 4;
    if (other == k.ctx_index) other = (other + 1) % 4;
    for (Arena& a : k.arenas) {
      a.after.assign(a.mem.get(), a.mem.get() + a.size);
      if (a.size != 0) std::memcpy(a.mem.get(), a.before.data(), a.size);  // (empty tensors)
    }
    const bnorm_status st2 = Invoke(k, other);
    if (st2 != st) Fail(k, "status %d on context %d, %d on context %d", st, k.ctx_index, st2, other);
    for (size_t a = 0; a < k.arenas.size(); ++a) {
      if (k.arenas[a].size != 0 &&
          std::memcmp(k.arenas[a].after.data(), k.arenas[a].mem.get(), k.arenas[a].size) != 0) {
        Fail(k, "results on context %d (%d threads) differ from context %d", other,
             bnorm_context_num_threads(G().ctx[other]), k.ctx_index);
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Run(data, size);
  return 0;
}
