// What synchronizing batch norm over MPI costs per call, against the local
// work it rides on: bnorm_mpi_forward_training / bnorm_mpi_backward vs the
// same call on this rank's part alone (bnorm_forward_training /
// bnorm_backward), and a bare MPI_Allreduce of the same bytes.
//
//   mpirun -np 2 build/bench/bnorm_mpi_bench [--threads=N] [Google Benchmark flags]
//
// Every rank runs the same fixed iteration counts (collectives must match),
// and each timed call starts after a barrier, so a time is that of the
// slowest rank's call; rank 0 reports. Counters per call (microseconds):
// local_us (no exchange), mpi_us (synchronized), sync_us = mpi_us -
// local_us (what the synchronization adds), allreduce_us (MPI_Allreduce of
// exchange_bytes, the floor of one collective), exchange_bytes (the data
// allreduce of a call: 2c + 2 doubles).
#include <benchmark/benchmark.h>
#include <bnorm/bnorm_mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

bnorm_context* g_ctx = nullptr;
int g_rank = 0, g_size = 1;

constexpr int kIterations = 200;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void BM_Sync(benchmark::State& state, bool backward, int64_t n, int64_t c, int64_t spatial) {
  const bnorm_tensor_desc desc{n, c, spatial, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  const size_t elems = static_cast<size_t>(n * c * spatial), C = static_cast<size_t>(c);
  std::vector<float> x(elems), y(elems), dy(elems), dx(elems);
  std::mt19937 rng(static_cast<unsigned>(1 + g_rank));
  std::normal_distribution<float> normal(0.5f, 2.0f);
  for (size_t i = 0; i < elems; ++i) {
    x[i] = normal(rng);
    dy[i] = normal(rng);
  }
  std::vector<float> gamma(C, 1.5f), beta(C, 0.25f), rm(C, 0.0f), rv(C, 1.0f), mean(C),
      invstd(C), dgamma(C), dbeta(C);
  std::vector<double> exchange(2 * C + 2, 1.0);
  const auto local = [&] {
    return backward ? bnorm_backward(g_ctx, &desc, x.data(), dy.data(), dx.data(), gamma.data(),
                                     mean.data(), invstd.data(), dgamma.data(), dbeta.data())
                    : bnorm_forward_training(g_ctx, &desc, x.data(), y.data(), gamma.data(),
                                             beta.data(), 1e-5f, 0.1f, rm.data(), rv.data(),
                                             mean.data(), invstd.data());
  };
  const auto synced = [&] {
    return backward
               ? bnorm_mpi_backward(MPI_COMM_WORLD, g_ctx, &desc, x.data(), dy.data(), dx.data(),
                                    gamma.data(), mean.data(), invstd.data(), dgamma.data(),
                                    dbeta.data())
               : bnorm_mpi_forward_training(MPI_COMM_WORLD, g_ctx, &desc, x.data(), y.data(),
                                            gamma.data(), beta.data(), 1e-5f, 0.1f, rm.data(),
                                            rv.data(), mean.data(), invstd.data());
  };
  // Warm: scratch, exchange buffers, MPI connections; save_* for backward.
  bnorm_status st = bnorm_mpi_forward_training(MPI_COMM_WORLD, g_ctx, &desc, x.data(), y.data(),
                                               gamma.data(), beta.data(), 1e-5f, 0.1f, rm.data(),
                                               rv.data(), mean.data(), invstd.data());
  if (st == BNORM_OK) st = local();
  if (st == BNORM_OK) st = synced();
  if (st != BNORM_OK) {
    state.SkipWithError(bnorm_status_string(st));
    return;
  }
  double t_local = 0, t_mpi = 0, t_allreduce = 0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = Now();
    local();
    double t1 = Now();
    MPI_Barrier(MPI_COMM_WORLD);
    double t2 = Now();
    synced();
    double t3 = Now();
    MPI_Barrier(MPI_COMM_WORLD);
    double t4 = Now();
    MPI_Allreduce(MPI_IN_PLACE, exchange.data(), static_cast<int>(exchange.size()), MPI_DOUBLE,
                  MPI_SUM, MPI_COMM_WORLD);
    double t5 = Now();
    // The slowest rank's time of each.
    double times[3] = {t1 - t0, t3 - t2, t5 - t4};
    MPI_Allreduce(MPI_IN_PLACE, times, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    t_local += times[0];
    t_mpi += times[1];
    t_allreduce += times[2];
    state.SetIterationTime(times[1]);
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["local_us"] = 1e6 * t_local / iters;
  state.counters["mpi_us"] = 1e6 * t_mpi / iters;
  state.counters["sync_us"] = 1e6 * (t_mpi - t_local) / iters;
  state.counters["allreduce_us"] = 1e6 * t_allreduce / iters;
  state.counters["exchange_bytes"] = static_cast<double>(exchange.size() * sizeof(double));
  state.counters["ranks"] = g_size;
}

// Reports nothing (ranks other than 0).
class NullReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;  // bnorm contexts run worker threads (which never call MPI)
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  int threads = 0;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
    } else if (g_rank != 0 && std::strncmp(argv[i], "--benchmark_out", 15) == 0) {
      // Rank 0 writes the file.
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (bnorm_context_create(threads, &g_ctx) != BNORM_OK) MPI_Abort(MPI_COMM_WORLD, 1);
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::AddCustomContext("bnorm_target", bnorm_active_target());
  benchmark::AddCustomContext("bnorm_threads", std::to_string(bnorm_context_num_threads(g_ctx)));
  benchmark::AddCustomContext("mpi_ranks", std::to_string(g_size));
  // Per rank: 8 images of c channels, 7x7 (small layers, where latency
  // dominates) and 28x28.
  for (bool backward : {false, true}) {
    for (int64_t spatial : {int64_t{49}, int64_t{784}}) {
      for (int64_t c : {16, 64, 256, 1024, 4096}) {
        const std::string name = std::string(backward ? "mpi_backward" : "mpi_forward_training") +
                                 "/8x" + std::to_string(c) + "x" + std::to_string(spatial);
        benchmark::RegisterBenchmark(name.c_str(), BM_Sync, backward, int64_t{8}, c, spatial)
            ->Iterations(kIterations)
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  if (g_rank == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    NullReporter null_reporter;
    benchmark::RunSpecifiedBenchmarks(&null_reporter);
  }
  benchmark::Shutdown();
  bnorm_context_destroy(g_ctx);
  MPI_Finalize();
  return 0;
}
