// libFuzzer target for the whole C API of bnorm.h.
//
// Each input is decoded into one complete call of an entry point: the
// descriptor (small valid shapes mostly; sometimes huge, negative or zero
// sizes and garbage enum values), the ISA target and the context (thread
// count), eps/momentum (sane values or raw bit patterns: NaN, Inf, denormals,
// -0), which pointers are NULL, where each buffer lies (an exactly sized
// allocation of its own, the same address as another buffer, a partial
// overlap, or adjacent to another) and the data (sane distributions, or raw
// bit patterns from the input). The call is then checked against the
// header's contract:
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
  kActSel = 11,     // < 240: value % 2; else raw. misc: the sub-call
  kDataMode = 12,   // 4 bytes: x-like tensors, dy/z, the y mask, per-channel arrays
  kFlags = 16,      // bit0 desc NULL, bit1 rerun on another context, bit2 misaligned arenas
  kRerunCtx = 17,
  kPlacement = 18,  // 2 bytes per slot (Place), kMaxSlots slots
  kRawA = 42,       // raw int64s (garbage shapes, misc arguments)
  kRawB = 50,
  kRawC = 58,
  kEpsBits = 66,    // raw float bits
  kMomBits = 70,
  kRawEnum = 74,    // raw int32
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
  kNumOps
};
const char* const kOpNames[kNumOps] = {
    "bnorm_forward_training",   "bnorm_forward_inference", "bnorm_backward",
    "bnorm_backward_frozen",    "bnorm_forward_training_ex", "bnorm_forward_inference_ex",
    "bnorm_backward_ex",        "bnorm_fold",              "bnorm_fold_into_weights",
    "misc"};

enum Kind { kTensor, kChannel, kWeightsKind };
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
  kRoleBias
};

struct Slot {
  const char* name = "";
  bool present = false;  // an argument of this entry point
  Kind kind = kTensor;
  Role role = kRoleX;
  bool input = false;     // read (running stats are read and written)
  bool output = false;    // written
  bool required = false;  // NULL is NULL_POINTER
  bool ignored = false;   // accepted but unused (backward_ex beta; y without ReLU)
  int partner1 = -1, partner2 = -1;  // slots this output may equal exactly
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

int DecodeEnum(const Input& in, size_t off, int valid_count, int raw_shift) {
  const uint8_t v = in.U8(off);
  const uint32_t r = in.U32(kRawEnum);
  if (v >= 240) return static_cast<int>(raw_shift == 0 ? r : (r << raw_shift) | (r >> (32 - raw_shift)));
  return v % valid_count;
}

// Slots of each entry point, inputs before outputs where it matters little.
void DefineSlots(Call& k) {
  auto def = [&](int i, const char* name, Kind kind, Role role, bool input, bool output,
                 bool required, int p1 = -1, int p2 = -1) {
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
  };
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
    default:
      break;
  }
  if (k.op == kBwdEx) {
    k.slots[6].ignored = true;                    // beta
    if (!k.Relu()) k.slots[1].ignored = true;     // y
    else k.slots[1].required = true;
  }
}

// ------------------------------------------------------------ the status model

bool MulOk(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// Tensor shape: BAD_SHAPE unless n, c, spatial >= 1 and the byte size fits in
// int64 (the widest dtype, 4 bytes, decides; with 2-byte elements a size that
// only overflows at 4 bytes may go either way: *ambiguous).
bool TensorShapeOk(const Call& k, bool* ambiguous) {
  *ambiguous = false;
  int64_t nc = 0, el = 0, b4 = 0, b2 = 0;
  if (k.n < 1 || k.c < 1 || k.sp < 1) return false;
  if (!MulOk(k.n, k.c, &nc) || !MulOk(nc, k.sp, &el)) return false;
  const bool fits4 = MulOk(el, 4, &b4), fits2 = MulOk(el, 2, &b2);
  if (!fits4 && fits2) *ambiguous = true;
  return fits4;
}

bool Overlap(const Call& k, int a, int b) {
  if (k.Null(a) || k.Null(b)) return false;
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
      const bool exact = k.Live(i) == k.Live(j) && o.bytes == k.slots[j].bytes;
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
  if (k.desc_null) return BNORM_ERR_NULL_POINTER;
  bool ambiguous = false;
  const bool shape_ok = TensorShapeOk(k, &ambiguous);
  if (!shape_ok && !(ambiguous && !shape_bad_if_ambiguous)) return BNORM_ERR_BAD_SHAPE;
  const bool layout_ok = k.layout == BNORM_LAYOUT_NCHW || k.layout == BNORM_LAYOUT_NHWC;
  const bool dtype_ok = k.dtype == BNORM_DTYPE_F32 || Valid16(k.dtype);
  const bool ex = k.op == kFwdTrainEx || k.op == kFwdInferEx || k.op == kBwdEx;
  const bool act_ok = !ex || k.act == BNORM_ACT_NONE || k.act == BNORM_ACT_RELU;
  bool args_ok = layout_ok && dtype_ok && act_ok;
  if (k.op == kFwdTrain || k.op == kFwdTrainEx || k.op == kFwdInfer || k.op == kFwdInferEx) {
    args_ok = args_ok && ValidEps(k.eps);
  }
  if (k.op == kFwdTrain || k.op == kFwdTrainEx) args_ok = args_ok && ValidMomentum(k.momentum);
  if (!args_ok) return BNORM_ERR_BAD_ARGUMENT;
  if (AnyRequiredNull(k)) return BNORM_ERR_NULL_POINTER;
  if ((k.op == kFwdTrain || k.op == kFwdTrainEx)) {
    int64_t values = 0;
    // n*spatial cannot overflow once the shape is valid.
    if (MulOk(k.n, k.sp, &values) && values < 2) return BNORM_ERR_TOO_FEW_VALUES;
  }
  return BNORM_OK;
}

Expect ExpectedStatus(const Call& k) {
  Expect e;
  for (bool bad : {true, false}) {
    const bnorm_status pre = PreAliasStatus(k, bad);
    if (pre != BNORM_OK) {
      e.Add(pre);
      continue;
    }
    for (bool with_ignored : {true, false}) {
      e.Add(AliasModel(k, with_ignored) ? BNORM_ERR_ALIAS : BNORM_OK);
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
  }
  return kDummyBytes;
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
    const int64_t align = s.kind == kTensor && Valid16(k.dtype) ? 2 : 4;
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
  // Arena starts keep every float 4-byte aligned (16-bit tensors may sit at
  // any even offset).
  for (Pending& e : extent) e.lo = FloorTo(e.lo, 4);
  const bool pad = k.in.U8(kFlags) & 4;
  k.arenas.resize(extent.size());
  for (size_t a = 0; a < extent.size(); ++a) {
    Arena& ar = k.arenas[a];
    ar.pad = pad ? 4 * (1 + k.rng.Below(3)) : 0;
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

void FillSlot(Call& k, int i) {
  Slot& s = k.slots[i];
  uint8_t* p = k.Live(i);
  Rng r{k.rng.Next() + static_cast<uint64_t>(i)};
  const int64_t count = static_cast<int64_t>(s.bytes) / (s.kind == kTensor ? ElemSize(k.dtype) : 4);
  if (s.role == kRoleOut || !k.allocatable) {  // garbage, often NaN: unwritten outputs show
    for (size_t b = 0; b < s.bytes; ++b) p[b] = static_cast<uint8_t>(r.Next());
    return;
  }
  const size_t mode_byte =
      s.kind != kTensor ? 3 : s.role == kRoleX || s.role == kRoleWeights ? 0 : s.role == kRoleYMask ? 2 : 1;
  const int mode = k.in.U8(kDataMode + mode_byte) % 16;
  if (mode == 6) {  // raw bits from the input's tail
    for (size_t b = 0; b < s.bytes; ++b) p[b] = k.in.TailByte();
    return;
  }
  const int m = mode > 10 ? 0 : mode;
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

void Snapshot(Call& k) {
  for (Arena& a : k.arenas) a.before.assign(a.mem.get(), a.mem.get() + a.size);
}

// ------------------------------------------------------------ calling

bnorm_status Invoke(const Call& k, int ctx_index) {
  const bnorm_context* ctx = G().ctx[ctx_index];
  const bnorm_tensor_desc* d = k.desc_null ? nullptr : &k.desc;
  auto F = [&](int i) { return reinterpret_cast<float*>(k.Live(i)); };
  auto V = [&](int i) { return static_cast<void*>(k.Live(i)); };
  // Out-of-range enum values are passed as a C caller would. They are cast
  // in the argument list itself: a load from an enum-typed variable holding
  // one would be undefined here (UBSan's enum check); the library reads them
  // through memcpy.
#define act static_cast<bnorm_activation>(k.act)
#define wl static_cast<bnorm_weight_layout>(k.layout)
  switch (k.op) {
    case kFwdTrain:
      return bnorm_forward_training(ctx, d, V(0), V(2), F(3), F(4), k.eps, k.momentum, F(5), F(6),
                                    F(7), F(8));
    case kFwdTrainEx:
      return bnorm_forward_training_ex(ctx, d, V(0), V(1), V(2), act, F(3), F(4), k.eps,
                                       k.momentum, F(5), F(6), F(7), F(8));
    case kFwdInfer:
      return bnorm_forward_inference(ctx, d, V(0), V(2), F(3), F(4), F(5), F(6), k.eps);
    case kFwdInferEx:
      return bnorm_forward_inference_ex(ctx, d, V(0), V(1), V(2), act, F(3), F(4), F(5), F(6),
                                        k.eps);
    case kBwd:
      return bnorm_backward(ctx, d, V(0), V(2), V(3), F(5), F(7), F(8), F(9), F(10));
    case kBwdFrozen:
      return bnorm_backward_frozen(ctx, d, V(0), V(2), V(3), F(5), F(7), F(8), F(9), F(10));
    case kBwdEx:
      return bnorm_backward_ex(ctx, d, V(0), V(1), V(2), V(3), V(4), act, F(5), F(6), F(7), F(8),
                               F(9), F(10));
    case kFold:
      return bnorm_fold(k.c, F(0), F(1), F(2), F(3), k.eps, F(4), F(5));
    case kFoldWeights:
      return bnorm_fold_into_weights(wl, k.c, k.sp, F(0), F(1), F(6), F(7), F(2), F(3), F(4), F(5),
                                     k.eps);
    default:
      return BNORM_ERR_INTERNAL;
  }
#undef act
#undef wl
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
  if (!(std::fabs(got - ref) <= tol)) {
    Fail(k, "%s[%" PRId64 "] = %.9g, reference %.9g, |diff| %.3g > tolerance %.3g", what, idx, got,
         ref, std::fabs(got - ref), tol);
  }
}

// A tensor output element (in the call's dtype): adds the rounding of the
// 16-bit formats, f16 overflow to Inf, and checks NaN encodings.
// TODO(16-bit NaN encoding of backward outputs on AVX2): bnorm.h promises
// bf16 NaN 0x7FC0 and f16 NaN 0x7E00 | sign; since the IsNaN fix the
// forwards give them on every target, but bnorm_backward, _frozen and _ex
// on AVX2 still store dx and dz NaNs with their payload (bf16 0xFFC0,
// 0x7FC1; f16 0x7E01). Remove this exemption once they are canonical.
bool NanEncodingExempt(const Call& k) {
  const bool backward = k.op == kBwd || k.op == kBwdFrozen || k.op == kBwdEx;
  return backward && G().targets[static_cast<size_t>(k.target)].rfind("AVX", 0) == 0;
}

void CheckElem(const Call& k, const char* what, int slot, int64_t e, double ref, double tol,
               bool check, bool nan_ok) {
  const uint8_t* p = k.Live(slot);
  const double got = LoadElem(p, e, k.dtype);
  const bool exempt = NanEncodingExempt(k);
  if (k.dtype == BNORM_DTYPE_BF16) {
    tol += std::fabs(ref) * 0x1.0p-8 + 1e-40;
    if (std::isnan(got) && !exempt && LoadBits16(p, e) != 0x7FC0) {
      Fail(k, "%s[%" PRId64 "]: bf16 NaN is 0x%04x, not 0x7FC0", what, e, LoadBits16(p, e));
    }
  } else if (k.dtype == BNORM_DTYPE_F16) {
    tol += std::fabs(ref) * 0x1.0p-11 + 0x1.0p-25;
    if (std::isnan(got) && !exempt && (LoadBits16(p, e) & 0x7FFF) != 0x7E00) {
      Fail(k, "%s[%" PRId64 "]: f16 NaN is 0x%04x, not 0x7E00 with a sign", what, e,
           LoadBits16(p, e));
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
  const bool relu = k.op == kBwdEx && k.Relu();
  const uint8_t* x = k.Before(0);
  const uint8_t* ymask = relu ? k.Before(1) : nullptr;
  const uint8_t* dy = k.Before(2);
  const uint8_t* gamma = k.Before(5);
  const int64_t m = k.Values();
  const double md = static_cast<double>(m);
  std::vector<double> gs(static_cast<size_t>(m)), xs(static_cast<size_t>(m));
  for (int64_t ch = 0; ch < k.c; ++ch) {
    const double mean = LoadF(k.Before(7), ch), is = LoadF(k.Before(8), ch);
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
    const double dsdy = kTolSum * sabs + md * kDenorm;
    const double dsdyxmu = kTolSum * sxabs + md * kDenorm;
    const bool beta_wild = g_nonfinite || gmax > kLarge;
    const bool gamma_wild = beta_wild || x_nonfinite || !Finite(mean) || !Finite(is) ||
                            xmax > kLarge || std::fabs(mean) > kLarge || std::fabs(is) > kLarge ||
                            sxabs * std::fabs(is) > kHuge;
    if (!k.Null(10)) {
      CheckValue(k, "dbeta", ch, LoadF(k.Live(10), ch), sdy, dsdy + kTiny, !beta_wild,
                 beta_wild);
    }
    if (!k.Null(9)) {
      const double ref = sdyxmu * is;
      const double tol = std::fabs(is) * dsdyxmu + 4 * kU * std::fabs(ref) + kTiny;
      CheckValue(k, "dgamma", ch, LoadF(k.Live(9), ch), ref, tol, !gamma_wild, gamma_wild);
    }
    // dx = a * g - c - b * (x - mean) with per-channel float constants
    // a = gamma * invstd, c = a * sum_dy / m, b = a * invstd^2 * sum_dy_xmu / m:
    // none of them may overflow.
    const double a = gm * is;
    const bool a_wild = !Finite(gm) || !Finite(is) || std::fabs(gm) > kLarge ||
                        std::fabs(is) > kLarge;
    const bool consts_wild = a_wild || std::fabs(a) * (std::fabs(sdy) + sabs) / md > kHuge ||
                             std::fabs(a) * is * is * (std::fabs(sdyxmu) + sxabs) / md > kHuge;
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
      const double t1 = std::fabs(a) * (std::fabs(g) + std::fabs(sdy) / md);
      const double t2 = std::fabs(a) * is * is * std::fabs(xmu) * std::fabs(sdyxmu) / md;
      const double ref = a * (g - sdy / md) - a * is * is * xmu * sdyxmu / md;
      const bool wild = gamma_wild || consts_wild || t1 > kHuge || t2 > kHuge ||
                        std::fabs(a) * is * is * std::fabs(xmu) * sxabs / md > kHuge;
      const double tol = std::fabs(a) * dsdy / md +
                         std::fabs(a) * is * is * std::fabs(xmu) * dsdyxmu / md +
                         8 * kU * (t1 + t2 + std::fabs(ref)) +
                         4 * kDenorm * (std::fabs(xmu) + std::fabs(g) + 1) + kTiny;
      CheckElem(k, "dx", 3, e, ref, tol, !wild, wild);
    }
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
        if (!s.present || s.arena != static_cast<int>(a) || !s.output) continue;
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
  } else {
    k.allocatable = TensorShapeOk(k, &ambiguous) && k.Elements() <= kMaxAllocElems;
  }
  Place(k);
  const int first_required = k.op == kFold ? 2 : 0;
  if (!k.allocatable &&
      (PreAliasStatus(k, true) == BNORM_OK || PreAliasStatus(k, false) == BNORM_OK)) {
    k.slots[first_required].arena = -1;
    k.slots[first_required].how = "NULL (shape too large to allocate)";
  }
  Fill(k);
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
    default:
      CheckFold(k);
      break;
  }

  if (verbose) std::fprintf(stderr, "value checks so far: %" PRId64 "\n", g_value_checks);
  // Results never depend on the thread count: rerun on another context.
  if ((k.in.U8(kFlags) & 2) && k.op != kFold && k.op != kFoldWeights) {
    int other = k.in.U8(kRerunCtx) % 4;
    if (other == k.ctx_index) other = (other + 1) % 4;
    for (Arena& a : k.arenas) {
      a.after.assign(a.mem.get(), a.mem.get() + a.size);
      std::memcpy(a.mem.get(), a.before.data(), a.size);
    }
    const bnorm_status st2 = Invoke(k, other);
    if (st2 != st) Fail(k, "status %d on context %d, %d on context %d", st, k.ctx_index, st2, other);
    for (size_t a = 0; a < k.arenas.size(); ++a) {
      if (std::memcmp(k.arenas[a].after.data(), k.arenas[a].mem.get(), k.arenas[a].size) != 0) {
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
