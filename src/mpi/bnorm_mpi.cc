// libbnorm_mpi: synchronized batch norm over an MPI communicator, built on
// the core's split-statistics C API (bnorm_stats, bnorm_forward_apply,
// bnorm_backward_reduce, bnorm_backward_apply). See include/bnorm/bnorm_mpi.h
// for the contract and docs/distributed.md for the choice of collectives.
//
// One call, on every rank:
//   1. check the arguments locally (src/validate.h, the core's own rules);
//   2. start the agreement: a non-blocking MPI_MAX allreduce of a few int64
//      (a failure flag, and each field that must agree as +v and -v, so the
//      maximum of both tells whether all ranks agree);
//   3. run the local reduction into the exchange buffer (it overlaps the
//      agreement's latency);
//   4. finish the agreement; on a failure or a mismatch every rank returns
//      here, before any output was written;
//   5. allreduce the exchange buffer: [failed, count, c values, c values]
//      doubles; forward with Chan's merge as a non-commutative operator (MPI
//      applies it in rank order), backward with MPI_SUM;
//   6. run the local elementwise pass with the global statistics.
#include "bnorm/bnorm_mpi.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "moments.h"
#include "validate.h"

namespace bnorm_mpi {
namespace {

// Layout of the exchange buffer (doubles).
constexpr int64_t kFailedAt = 0;  // > 0: some rank failed in its local reduction
constexpr int64_t kCountAt = 1;   // values per channel
constexpr int64_t kValuesAt = 2;  // c means (sum_dy), then c M2s (sum_dy_xmu)

int64_t ExchangeDoubles(int64_t c) { return kValuesAt + 2 * c; }
constexpr int64_t kMaxExchangeDoubles = INT_MAX / static_cast<int64_t>(sizeof(double));

// Whether the whole batch's count of values per channel (a sum of the ranks'
// counts in double) is exact, as the apply functions require: beyond 2^53
// (never reached by real tensors) it would not convert to int64 safely.
bool WithinExactCount(double count) { return count <= static_cast<double>(bnorm::kMaxExactCount); }

// Which call a rank is in, so that forward on one rank and backward on
// another is a mismatch rather than a garbled exchange.
enum class Call : int64_t { kForward = 1, kBackward = 2 };

// The agreement record: a failure flag, then each field as +v, -v.
constexpr int kAgreeFields = 7;  // call, c, spatial, layout, dtype, eps, momentum
constexpr int kAgreeInts = 1 + 2 * kAgreeFields;

struct Agreement {
  int64_t v[kAgreeInts] = {};

  void Set(bool failed, Call call, const bnorm::Tensor& t, float eps, float momentum) {
    v[0] = failed ? 1 : 0;
    if (failed) return;  // fields unknown: the flag decides
    // Compared by their bits; + 0.0f turns -0 into +0 (equal values agree).
    const float eps_value = eps + 0.0f, momentum_value = momentum + 0.0f;
    uint32_t eps_bits = 0, momentum_bits = 0;
    std::memcpy(&eps_bits, &eps_value, sizeof(eps_bits));
    std::memcpy(&momentum_bits, &momentum_value, sizeof(momentum_bits));
    const int64_t fields[kAgreeFields] = {static_cast<int64_t>(call), t.c, t.spatial, t.layout,
                                          t.dtype, eps_bits, momentum_bits};
    for (int f = 0; f < kAgreeFields; ++f) {
      v[1 + 2 * f] = fields[f];
      v[2 + 2 * f] = -fields[f];
    }
  }
  // After the MPI_MAX reduction.
  bool AnyFailed() const { return v[0] != 0; }
  bool AllAgree() const {
    for (int f = 0; f < kAgreeFields; ++f) {
      if (v[1 + 2 * f] != -v[2 + 2 * f]) return false;  // max != min
    }
    return true;
  }
};

// Chan's merge of two exchange buffers: inout = in ∪ inout, where `in` holds
// the lower ranks (MPI applies a non-commutative operator in rank order).
void MergeExchange(void* in, void* inout, int* len, MPI_Datatype* type) {
  int bytes = 0;
  MPI_Type_size(*type, &bytes);
  const int64_t doubles = bytes / static_cast<int64_t>(sizeof(double));
  const int64_t c = (doubles - kValuesAt) / 2;
  for (int i = 0; i < *len; ++i) {
    const double* a = static_cast<const double*>(in) + i * doubles;
    double* b = static_cast<double*>(inout) + i * doubles;
    b[kFailedAt] = std::max(a[kFailedAt], b[kFailedAt]);
    b[kCountAt] = bnorm::MergeMomentsRow(a[kCountAt], a + kValuesAt, a + kValuesAt + c,
                                         b[kCountAt], b + kValuesAt, b + kValuesAt + c, c,
                                         b + kValuesAt, b + kValuesAt + c);
  }
}

// The merge operator, created on first use (MPI_Op_create is local) and
// kept for the life of the process.
MPI_Op MergeOp() {
  static std::once_flag once;
  static MPI_Op op = MPI_OP_NULL;
  std::call_once(once, [] {
    if (MPI_Op_create(&MergeExchange, /*commute=*/0, &op) != MPI_SUCCESS) op = MPI_OP_NULL;
  });
  return op;
}

// The exchange buffer of this thread: grows to the largest c seen, then the
// calls allocate nothing.
bool ExchangeBuffer(int64_t c, double** out) {
  thread_local std::vector<double> buffer;
  try {
    const size_t size = static_cast<size_t>(ExchangeDoubles(c));
    if (buffer.size() < size) buffer.resize(size);
  } catch (const std::bad_alloc&) {
    return false;
  }
  *out = buffer.data();
  return true;
}

// BNORM_ERR_BAD_ARGUMENT for a handle no allreduce can run on; checked on
// each rank before anything else (these are properties of the communicator
// or the process, the same on every rank of a valid one).
bnorm_status CheckComm(MPI_Comm comm) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return BNORM_ERR_COMM;
  if (comm == MPI_COMM_NULL) return BNORM_ERR_BAD_ARGUMENT;
  int inter = 0;
  if (MPI_Comm_test_inter(comm, &inter) != MPI_SUCCESS) return BNORM_ERR_COMM;
  return inter ? BNORM_ERR_BAD_ARGUMENT : BNORM_OK;
}

// Steps 2-5 of a call (see the top of this file). `reduce` fills the
// exchange buffer's values for this rank and returns a status. On
// BNORM_OK, *exchange holds the global buffer.
template <typename Reduce>
bnorm_status Exchange(MPI_Comm comm, Call call, bnorm_status local, const bnorm::Tensor& t,
                      float eps, float momentum, MPI_Op op, const Reduce& reduce,
                      double** exchange) {
  double* buffer = nullptr;
  // MPI counts and type sizes are ints: the merge operator reads the
  // record's c back from MPI_Type_size, which is MPI_UNDEFINED for a record
  // of more than INT_MAX bytes (c > 134,217,726: it merged only the counts).
  if (local == BNORM_OK && ExchangeDoubles(t.c) > kMaxExchangeDoubles) {
    local = BNORM_ERR_BAD_SHAPE;
  }
  if (local == BNORM_OK && !ExchangeBuffer(t.c, &buffer)) local = BNORM_ERR_OUT_OF_MEMORY;
  Agreement agree;
  agree.Set(local != BNORM_OK, call, t, eps, momentum);
  MPI_Request request = MPI_REQUEST_NULL;
  if (MPI_Iallreduce(MPI_IN_PLACE, agree.v, kAgreeInts, MPI_INT64_T, MPI_MAX, comm, &request) !=
      MPI_SUCCESS) {
    return BNORM_ERR_COMM;
  }
  // The local reduction, while the agreement travels.
  bnorm_status late = BNORM_OK;
  if (local == BNORM_OK) {
    buffer[kFailedAt] = 0.0;
    buffer[kCountAt] = static_cast<double>(t.n * t.spatial);
    late = reduce(buffer + kValuesAt, buffer + kValuesAt + t.c);
  }
  if (MPI_Wait(&request, MPI_STATUS_IGNORE) != MPI_SUCCESS) return BNORM_ERR_COMM;
  if (agree.AnyFailed()) return local != BNORM_OK ? local : BNORM_ERR_PEER;
  if (!agree.AllAgree()) return BNORM_ERR_MISMATCH;

  // Every rank agrees on c: the exchange is well formed on all of them.
  if (late != BNORM_OK) {
    buffer[kFailedAt] = 1.0;
    buffer[kCountAt] = 0.0;  // merged as empty
    std::fill(buffer + kValuesAt, buffer + ExchangeDoubles(t.c), 0.0);
  }
  const int doubles = static_cast<int>(ExchangeDoubles(t.c));
  int rc = MPI_SUCCESS;
  if (op == MPI_SUM) {
    // A sum is elementwise: the buffer as plain doubles.
    rc = MPI_Allreduce(MPI_IN_PLACE, buffer, doubles, MPI_DOUBLE, MPI_SUM, comm);
  } else {
    // One record, so that the operator always sees whole buffers.
    MPI_Datatype record = MPI_DATATYPE_NULL;
    rc = MPI_Type_contiguous(doubles, MPI_DOUBLE, &record);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&record);
    if (rc == MPI_SUCCESS) rc = MPI_Allreduce(MPI_IN_PLACE, buffer, 1, record, op, comm);
    if (record != MPI_DATATYPE_NULL) MPI_Type_free(&record);
  }
  if (rc != MPI_SUCCESS) return BNORM_ERR_COMM;
  if (buffer[kFailedAt] != 0.0) return late != BNORM_OK ? late : BNORM_ERR_PEER;
  *exchange = buffer;
  return BNORM_OK;
}

}  // namespace
}  // namespace bnorm_mpi

extern "C" {

bnorm_status bnorm_mpi_forward_training(MPI_Comm comm, const bnorm_context* ctx,
                                        const bnorm_tensor_desc* desc, const void* x, void* y,
                                        const float* gamma, const float* beta, float eps,
                                        float momentum, float* running_mean, float* running_var,
                                        float* save_mean, float* save_invstd) {
  using namespace bnorm_mpi;
  if (bnorm_status s = CheckComm(comm); s != BNORM_OK) return s;
  return bnorm::Guard([&] {
    bnorm::Tensor t;
    const bnorm_status local =
        bnorm::CheckForwardApply(desc, &t, x, y, gamma, beta, eps, momentum, running_mean,
                                 running_var, save_mean, save_invstd, nullptr, nullptr, nullptr);
    const MPI_Op op = MergeOp();
    if (op == MPI_OP_NULL) return BNORM_ERR_COMM;
    double* exchange = nullptr;
    const bnorm_status s = Exchange(
        comm, Call::kForward, local, t, eps, momentum, op,
        [&](double* mean, double* m2) { return bnorm_stats(ctx, desc, x, mean, m2); }, &exchange);
    if (s != BNORM_OK) return s;
    if (!WithinExactCount(exchange[kCountAt])) return BNORM_ERR_BAD_SHAPE;
    const int64_t total = static_cast<int64_t>(exchange[kCountAt]);
    if (total < 2) return BNORM_ERR_TOO_FEW_VALUES;
    const double* mean = exchange + kValuesAt;
    return bnorm_forward_apply(ctx, desc, x, y, gamma, beta, total, mean, mean + t.c, eps,
                               momentum, running_mean, running_var, save_mean, save_invstd);
  });
}

bnorm_status bnorm_mpi_backward(MPI_Comm comm, const bnorm_context* ctx,
                                const bnorm_tensor_desc* desc, const void* x, const void* dy,
                                void* dx, const float* gamma, const float* save_mean,
                                const float* save_invstd, float* dgamma, float* dbeta) {
  using namespace bnorm_mpi;
  if (bnorm_status s = CheckComm(comm); s != BNORM_OK) return s;
  return bnorm::Guard([&] {
    bnorm::Tensor t;
    const bnorm_status local =
        bnorm::CheckBackwardApply(desc, &t, x, dy, dx, gamma, save_mean, save_invstd, dgamma,
                                  dbeta, nullptr, nullptr, nullptr);
    double* exchange = nullptr;
    const bnorm_status s = Exchange(
        comm, Call::kBackward, local, t, 0.0f, 0.0f, MPI_SUM,
        [&](double* sum_dy, double* sum_dy_xmu) {
          return bnorm_backward_reduce(ctx, desc, x, dy, save_mean, sum_dy, sum_dy_xmu);
        },
        &exchange);
    if (s != BNORM_OK) return s;
    if (!WithinExactCount(exchange[kCountAt])) return BNORM_ERR_BAD_SHAPE;
    const int64_t total = static_cast<int64_t>(exchange[kCountAt]);
    if (total < 1) return BNORM_ERR_BAD_SHAPE;
    const double* sum_dy = exchange + kValuesAt;
    return bnorm_backward_apply(ctx, desc, x, dy, dx, gamma, save_mean, save_invstd, total,
                                sum_dy, sum_dy + t.c, dgamma, dbeta);
  });
}

}  // extern "C"
