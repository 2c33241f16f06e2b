/* Synchronized batch norm over MPI: each rank holds part of a batch (here a
 * different number of samples per rank), and the forward and backward
 * passes use the statistics of the whole batch.
 *
 *   mpirun -np 2 build/release/tests/mpi/mpi_example     (or tests: ctest -L mpi)
 */
#include <bnorm/bnorm_mpi.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char** argv) {
  int provided = 0; /* bnorm contexts run worker threads (which never call MPI) */
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  /* Rank r holds r + 1 images of 16 channels of 8x8, NCHW. */
  enum { C = 16, HW = 64 };
  bnorm_tensor_desc desc = {rank + 1, C, HW, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  const size_t count = (size_t)desc.n * C * HW;
  float* x = malloc(count * sizeof(float));
  float* y = malloc(count * sizeof(float));
  float* dy = malloc(count * sizeof(float));
  float* dx = malloc(count * sizeof(float));
  unsigned state = 12345u + 977u * (unsigned)rank;
  for (size_t i = 0; i < count; ++i) {
    state = state * 1664525u + 1013904223u;
    x[i] = 1000.0f + (float)(state >> 8) / 16777216.0f; /* 1000 + U(0,1) */
    dy[i] = (float)((state >> 4) & 255u) / 255.0f - 0.5f;
  }
  float gamma[C], beta[C], running_mean[C], running_var[C];
  float save_mean[C], save_invstd[C], dgamma[C], dbeta[C];
  for (int ch = 0; ch < C; ++ch) {
    gamma[ch] = 1.0f;
    beta[ch] = 0.0f;
    running_mean[ch] = 0.0f;
    running_var[ch] = 1.0f;
  }

  bnorm_status s = bnorm_mpi_forward_training(MPI_COMM_WORLD, NULL, &desc, x, y, gamma, beta,
                                              1e-5f, 0.1f, running_mean, running_var, save_mean,
                                              save_invstd);
  if (s == BNORM_OK) {
    s = bnorm_mpi_backward(MPI_COMM_WORLD, NULL, &desc, x, dy, dx, gamma, save_mean, save_invstd,
                           dgamma, dbeta);
  }
  if (s != BNORM_OK) {
    fprintf(stderr, "rank %d: %s\n", rank, bnorm_status_string(s));
    MPI_Abort(MPI_COMM_WORLD, 1);
  }

  /* Every rank holds bitwise the same statistics: compare with rank 0's. */
  float stats[4 * C], stats0[4 * C];
  memcpy(stats, save_mean, sizeof save_mean);
  memcpy(stats + C, save_invstd, sizeof save_invstd);
  memcpy(stats + 2 * C, dgamma, sizeof dgamma);
  memcpy(stats + 3 * C, dbeta, sizeof dbeta);
  memcpy(stats0, stats, sizeof stats);
  MPI_Bcast(stats0, 4 * C, MPI_FLOAT, 0, MPI_COMM_WORLD);
  int same = memcmp(stats, stats0, sizeof stats) == 0, all_same = 0;
  MPI_Allreduce(&same, &all_same, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);

  /* A bad argument on one rank is an error on every rank, not a hang. */
  bnorm_tensor_desc bad = desc;
  if (rank == size - 1) bad.spatial = 0;
  s = bnorm_mpi_forward_training(MPI_COMM_WORLD, NULL, &bad, x, y, gamma, beta, 1e-5f, 0.1f,
                                 NULL, NULL, NULL, NULL);

  if (rank == 0) {
    printf("%d ranks, %d images in all; channel 0: mean %.6f, var %.6f (uniform: 1/12 = %.6f)\n",
           size, size * (size + 1) / 2, save_mean[0],
           1.0 / ((double)save_invstd[0] * save_invstd[0]) - 1e-5, 1.0 / 12.0);
    printf("statistics and parameter gradients bitwise identical on all ranks: %s\n",
           all_same ? "yes" : "NO");
    printf("bad shape on the last rank -> rank 0 gets: %s\n", bnorm_status_string(s));
  }
  free(x);
  free(y);
  free(dy);
  free(dx);
  MPI_Finalize();
  return all_same ? 0 : 1;
}
