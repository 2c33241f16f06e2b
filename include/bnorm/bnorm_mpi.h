/*
 * bnorm_mpi: synchronized batch norm across the processes of an MPI
 * communicator (libbnorm_mpi, built when MPI is found; link bnorm::bnorm_mpi
 * or `pkg-config bnorm_mpi`).
 *
 * A data-parallel batch is split along n over the ranks of comm. These calls
 * compute what bnorm_forward_training and bnorm_backward compute on the union
 * of all ranks' batches (the concatenation in rank order), each rank reading
 * and writing only its own part of the tensors:
 *  - Every rank calls, with the same c, spatial, layout, dtype, eps and
 *    momentum; desc->n may differ between ranks and may be 0 (x, y, dy, dx
 *    may then be NULL; the rank still takes part and gets the per-channel
 *    outputs).
 *  - Statistics travel as (count, mean, M2) in double and are merged with
 *    Chan's formula by an MPI reduction operator applied in rank order; the
 *    backward sums travel in double with MPI_SUM. Where MPI gives every rank
 *    of an allreduce the same result (Open MPI and MPICH do; the standard
 *    recommends it without requiring it), every rank ends with bitwise the
 *    same statistics, save_mean/save_invstd, running statistics (given equal
 *    running statistics before) and dgamma/dbeta.
 *  - Each call runs two collectives on comm: a small agreement (status and
 *    the fields above; started before the local pass, so that its messages
 *    travel meanwhile as far as the MPI progresses them without being
 *    called) and the data: 2*c + 2 doubles forward, 2*c + 2 backward. The
 *    agreement is what turns a mismatched c into an error instead of a hang
 *    or a crash.
 *  - Errors: arguments are checked on each rank before any collective (the
 *    same checks as the core functions). A rank with bad arguments returns
 *    its own status and every other rank BNORM_ERR_PEER; fields that
 *    disagree across ranks give BNORM_ERR_MISMATCH on every rank; fewer than
 *    2 values per channel in the whole batch give BNORM_ERR_TOO_FEW_VALUES
 *    (forward) on every rank; c above 134,217,726 (an exchange of more than
 *    INT_MAX bytes, which MPI's int sizes cannot describe) is
 *    BNORM_ERR_BAD_SHAPE, and so is a whole batch of more than 2^53 values
 *    per channel (found after the exchange, on every rank alike). In all
 *    these cases no output is written on any rank and no rank waits
 *    forever. An MPI error (with an error handler that returns) gives
 *    BNORM_ERR_COMM; if MPI fails on some ranks only, or comm is
 *    MPI_COMM_NULL on some ranks only, the others may wait forever, as in
 *    any collective. BNORM_ERR_OUT_OF_MEMORY during the local reduction is
 *    agreed like a bad argument; during the final elementwise
 *    pass (after the exchange) it is returned by that rank alone, whose
 *    outputs are then unchanged.
 *  - Like every MPI collective, calls on one communicator must be made in
 *    the same order on every rank. A context with worker threads makes the
 *    process multithreaded (they never call MPI), so initialize MPI with
 *    MPI_Init_thread at MPI_THREAD_FUNNELED or above: FUNNELED for calls from
 *    the main thread, SERIALIZED for calls from any one thread at a time,
 *    MULTIPLE for concurrent calls (on different communicators).
 */
#ifndef BNORM_BNORM_MPI_H_
#define BNORM_BNORM_MPI_H_

#include <mpi.h>

#include "bnorm/bnorm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* bnorm_forward_training over the union of the ranks' batches.
 *   x, y       this rank's n*c*spatial elements; y == x allowed.
 *   gamma, beta, eps, momentum, running_mean, running_var, save_mean,
 *   save_invstd as bnorm_forward_training; the per-channel outputs are those
 *              of the whole batch, written on every rank.
 * Returns BNORM_OK, the statuses of bnorm_forward_training (n == 0 is not an
 * error), BNORM_ERR_MISMATCH, BNORM_ERR_PEER, BNORM_ERR_COMM. */
BNORM_API bnorm_status bnorm_mpi_forward_training(MPI_Comm comm, const bnorm_context* ctx,
                                                  const bnorm_tensor_desc* desc, const void* x,
                                                  void* y, const float* gamma, const float* beta,
                                                  float eps, float momentum, float* running_mean,
                                                  float* running_var, float* save_mean,
                                                  float* save_invstd);

/* bnorm_backward over the union of the ranks' batches: dx is this rank's
 * part of the gradient; dgamma and dbeta are the gradients of the whole
 * batch, globally reduced and written on every rank (do not allreduce them
 * again). They are sums over all ranks: where the other parameters'
 * gradients are averaged over the ranks (PyTorch's DistributedDataParallel,
 * whose SyncBatchNorm returns each rank's local sums for it to average),
 * divide them by the number of ranks to match.
 *   x, dy, dx  this rank's tensors; dx may be NULL; dx == dy allowed.
 *   gamma, save_mean, save_invstd (from bnorm_mpi_forward_training), dgamma,
 *   dbeta as bnorm_backward.
 * Returns BNORM_OK, the statuses of bnorm_backward, BNORM_ERR_BAD_SHAPE when
 * the whole batch is empty, BNORM_ERR_MISMATCH, BNORM_ERR_PEER,
 * BNORM_ERR_COMM. */
BNORM_API bnorm_status bnorm_mpi_backward(MPI_Comm comm, const bnorm_context* ctx,
                                          const bnorm_tensor_desc* desc, const void* x,
                                          const void* dy, void* dx, const float* gamma,
                                          const float* save_mean, const float* save_invstd,
                                          float* dgamma, float* dbeta);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BNORM_BNORM_MPI_H_ */
