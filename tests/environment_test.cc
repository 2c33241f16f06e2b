// The library in a hostile process environment: BNORM_TARGET set to garbage
// or to an ISA this CPU lacks (a clear message, the best supported target,
// never SIGILL), and a process that forks after using the library (the child
// still computes, on the default context and on contexts made before or
// after the fork).
//
// BNORM_TARGET is read once per process, so each case runs this binary again
// as a probe (`environment_test --probe`) with the variable set, and checks
// the probe's output and exit status.
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bnorm/bnorm.h"
#include "gtest/gtest.h"

extern char** environ;

namespace {

// A forward training call large enough to be split across threads; returns
// its status and fills y, mean, invstd.
struct Result {
  bnorm_status status = BNORM_ERR_INTERNAL;
  std::vector<float> y, mean, invstd;
};

Result Train(const bnorm_context* ctx) {
  bnorm_tensor_desc desc{};
  desc.n = 8;
  desc.c = 48;
  desc.spatial = 3001;
  desc.layout = BNORM_LAYOUT_NCHW;
  const size_t count = static_cast<size_t>(desc.n * desc.c * desc.spatial);
  std::vector<float> x(count);
  for (size_t i = 0; i < count; ++i) x[i] = 100.0f + static_cast<float>((i * 7919) % 1013) / 64.0f;
  std::vector<float> gamma(48, 1.5f), beta(48, -0.25f);
  Result r;
  r.y.assign(count, 0.0f);
  r.mean.assign(48, 0.0f);
  r.invstd.assign(48, 0.0f);
  r.status = bnorm_forward_training(ctx, &desc, x.data(), r.y.data(), gamma.data(), beta.data(),
                                    1e-5f, 0.1f, nullptr, nullptr, r.mean.data(), r.invstd.data());
  return r;
}

bool Same(const Result& a, const Result& b) {
  return a.status == b.status && a.y == b.y && a.mean == b.mean && a.invstd == b.invstd;
}

// The probe: prints the active target, then checks one call against the
// mean it must produce (every channel holds the same values).
int Probe() {
  std::printf("active=%s\n", bnorm_active_target());
  const Result r = Train(nullptr);
  if (r.status != BNORM_OK) {
    std::printf("status=%d\n", static_cast<int>(r.status));
    return 1;
  }
  double expected = 0.0;
  for (size_t i = 0; i < 8 * 3001; ++i) {
    // Channel 0's elements: image i / 3001, position i % 3001.
    const size_t flat = (i / 3001) * 48 * 3001 + i % 3001;
    expected += 100.0 + static_cast<double>((flat * 7919) % 1013) / 64.0;
  }
  expected /= 8 * 3001;
  if (std::fabs(r.mean[0] - expected) > 1e-4) {
    std::printf("mean=%.9g expected=%.9g\n", r.mean[0], expected);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}

// Training, inference and backward of an n x c x spatial tensor of `dtype`
// (bytes per element: elem); every output is passed to mix. NHWC shapes with
// C = 64 (f32 rows of 256 bytes: four to 4 KiB) and C = 1024 (4 KiB rows)
// take the grouped row stores (RowStores in src/plan.h) where enabled; NCHW
// shapes whose channels fit L2 take channel-fused plans, whose next group is
// reduced in the write loop or prefetched (NextGroupPolicy in src/plan.h).
template <class Mix>
bool Calls(const bnorm_context* ctx, bnorm_layout layout, int64_t n, int64_t c, int64_t spatial,
           bnorm_dtype dtype, size_t elem, const Mix& mix) {
  const bnorm_tensor_desc desc{n, c, spatial, layout, dtype};
  const size_t count = static_cast<size_t>(n * c * spatial);
  std::vector<unsigned char> x(count * elem), dy(count * elem), y(count * elem), dx(count * elem);
  uint32_t state = 12345u;
  const auto next = [&state]() {
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(state >> 8) / 16777216.0f - 0.5f;  // [-0.5, 0.5)
  };
  const auto fill = [&](std::vector<unsigned char>& t, float offset) {
    for (size_t i = 0; i < count; ++i) {
      const float v = offset + next();
      if (elem == 4) {
        std::memcpy(t.data() + 4 * i, &v, 4);
      } else {  // bf16: the high half of the float (a valid bf16 value)
        uint32_t bits = 0;
        std::memcpy(&bits, &v, 4);
        const uint16_t half = static_cast<uint16_t>(bits >> 16);
        std::memcpy(t.data() + 2 * i, &half, 2);
      }
    }
  };
  fill(x, 7.0f);
  fill(dy, 0.0f);
  const size_t cs = static_cast<size_t>(c);
  std::vector<float> gamma(cs), beta(cs), mean(cs), invstd(cs), var(cs, 2.0f), dgamma(cs),
      dbeta(cs);
  for (size_t i = 0; i < cs; ++i) {
    gamma[i] = 1.0f + next();
    beta[i] = next();
  }
  if (bnorm_forward_training(ctx, &desc, x.data(), y.data(), gamma.data(), beta.data(), 1e-5f,
                             0.1f, nullptr, nullptr, mean.data(), invstd.data()) != BNORM_OK ||
      bnorm_backward(ctx, &desc, x.data(), dy.data(), dx.data(), gamma.data(), mean.data(),
                     invstd.data(), dgamma.data(), dbeta.data()) != BNORM_OK) {
    return false;
  }
  mix(y.data(), y.size());
  mix(dx.data(), dx.size());
  mix(mean.data(), 4 * cs);
  mix(invstd.data(), 4 * cs);
  mix(dgamma.data(), 4 * cs);
  mix(dbeta.data(), 4 * cs);
  if (bnorm_forward_inference(ctx, &desc, x.data(), y.data(), gamma.data(), beta.data(),
                              mean.data(), var.data(), 1e-5f) != BNORM_OK) {
    return false;
  }
  mix(y.data(), y.size());
  return true;
}

// The bits probe: prints a hash of every output of Train and of Calls on
// the default context and on a 1-thread context (the plan may change with the
// cache sizes in the environment and the step to the next channel group, the
// kernels with the NHWC row order and the bf16 rounding; the bits may not).
int ProbeBits() {
  uint64_t hash = 1469598103934665603ull;  // FNV-1a over the outputs' bytes
  const auto mix_bytes = [&hash](const void* data, size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) hash = (hash ^ bytes[i]) * 1099511628211ull;
  };
  const auto mix = [&mix_bytes](const std::vector<float>& v) {
    mix_bytes(v.data(), v.size() * sizeof(float));
  };
  bnorm_context* one = nullptr;
  if (bnorm_context_create(1, &one) != BNORM_OK) return 1;
  for (const bnorm_context* ctx : {static_cast<const bnorm_context*>(nullptr),
                                   static_cast<const bnorm_context*>(one)}) {
    const Result r = Train(ctx);
    if (r.status != BNORM_OK) return 1;
    mix(r.y);
    mix(r.mean);
    mix(r.invstd);
    // The NCHW shapes: f32 runs of 1000 values, bf16 runs of 8200 (the
    // 16-bit backward is pipelined from 8192 on: src/grad_sums_apply.cc),
    // which "auto" pipelines within the LLC (kWithinLlcMinRunF32 and
    // kWithinLlcMinRun16 in src/plan.h), and f32 runs of 49 values, which
    // "auto" prefetches and "reduce" pipelines (several channel groups a
    // thread either way).
    if (!Calls(ctx, BNORM_LAYOUT_NHWC, 37, 64, 5, BNORM_DTYPE_F32, 4, mix_bytes) ||
        !Calls(ctx, BNORM_LAYOUT_NHWC, 3, 1024, 7, BNORM_DTYPE_F32, 4, mix_bytes) ||
        !Calls(ctx, BNORM_LAYOUT_NHWC, 29, 32, 9, BNORM_DTYPE_BF16, 2, mix_bytes) ||
        !Calls(ctx, BNORM_LAYOUT_NCHW, 8, 24, 1000, BNORM_DTYPE_F32, 4, mix_bytes) ||
        !Calls(ctx, BNORM_LAYOUT_NCHW, 2, 16, 8200, BNORM_DTYPE_BF16, 2, mix_bytes) ||
        !Calls(ctx, BNORM_LAYOUT_NCHW, 64, 64, 49, BNORM_DTYPE_F32, 4, mix_bytes)) {
      return 1;
    }
  }
  bnorm_context_destroy(one);
  std::printf("bits=%016llx\n", static_cast<unsigned long long>(hash));
  return 0;
}

struct ProbeRun {
  int exit_code = -1;  // -1: killed by a signal or timed out
  int signal = 0;
  std::string out, err;
};

// Runs `this_binary <flag>` (--probe or --probe-bits) with the variable
// `name` set to value (unset for nullptr), collecting stdout and stderr;
// kills it after 60 s.
ProbeRun RunProbe(const char* value, const char* name = "BNORM_TARGET",
                  const char* flag = "--probe") {
  const std::string prefix = std::string(name) + "=";
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, prefix.c_str(), prefix.size()) != 0) env_storage.emplace_back(*e);
  }
  if (value != nullptr) env_storage.push_back(prefix + value);
  std::vector<char*> envp;
  for (std::string& s : env_storage) envp.push_back(s.data());
  envp.push_back(nullptr);

  int out_pipe[2], err_pipe[2];
  ProbeRun run;
  if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0) return run;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  posix_spawn_file_actions_addclose(&actions, out_pipe[0]);
  posix_spawn_file_actions_addclose(&actions, err_pipe[0]);
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len <= 0) return run;
  self[len] = '\0';
  std::string probe_flag = flag;
  char* argv[] = {self, probe_flag.data(), nullptr};
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, self, &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (spawned != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return run;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0 && std::chrono::steady_clock::now() < deadline) {
    if (poll(fds, 2, 1000) <= 0) continue;
    for (int k = 0; k < 2; ++k) {
      if (fds[k].fd < 0 || (fds[k].revents & (POLLIN | POLLHUP)) == 0) continue;
      char buf[4096];
      const ssize_t got = read(fds[k].fd, buf, sizeof(buf));
      if (got <= 0) {
        close(fds[k].fd);
        fds[k].fd = -1;
        --open_fds;
      } else {
        (k == 0 ? run.out : run.err).append(buf, static_cast<size_t>(got));
      }
    }
  }
  for (pollfd& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  if (open_fds > 0) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status) && open_fds == 0) run.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) run.signal = WTERMSIG(status);
  return run;
}

std::string Best() { return bnorm_target_name(0); }

TEST(TargetEnvironment, UnsetUsesTheBestTargetSilently) {
  const ProbeRun run = RunProbe(nullptr);
  EXPECT_EQ(run.exit_code, 0) << run.out << run.err;
  EXPECT_EQ(run.out, "active=" + Best() + "\nok\n");
  EXPECT_EQ(run.err, "");
}

// A value as a warning quotes it: control characters as '?', at most 40
// characters and "...".
std::string Shown(const std::string& value) {
  std::string shown;
  for (char ch : value.substr(0, 40)) {
    shown += std::isprint(static_cast<unsigned char>(ch)) ? ch : '?';
  }
  if (value.size() > 40) shown += "...";
  return shown;
}

TEST(TargetEnvironment, EmptyUsesTheBestTargetSilently) {
  for (const char* value : {"", " ", "\t \n"}) {
    const ProbeRun run = RunProbe(value);
    EXPECT_EQ(run.exit_code, 0) << run.out << run.err;
    EXPECT_EQ(run.out, "active=" + Best() + "\nok\n");
    EXPECT_EQ(run.err, "");
  }
}

TEST(TargetEnvironment, GarbageWarnsOnceAndUsesTheBest) {
  for (const std::string& value :
       {std::string("garbage"), std::string("AVX 2"), std::string("AVX2x"),
        std::string("\x01\x7f\xff"), std::string(10000, 'x'), std::string("%s%n%s%n"),
        std::string("AVX2\x1b[2J")}) {
    const ProbeRun run = RunProbe(value.c_str());
    EXPECT_EQ(run.exit_code, 0) << run.out << run.err;
    EXPECT_EQ(run.signal, 0);
    EXPECT_EQ(run.out, "active=" + Best() + "\nok\n");
    EXPECT_EQ(run.err, "bnorm: BNORM_TARGET=" + Shown(value) + " is not a known target; using " +
                           Best() + "\n");
  }
}

TEST(TargetEnvironment, EveryRunnableTargetIsHonoured) {
  for (int i = 0; i < bnorm_target_count(); ++i) {
    const std::string name = bnorm_target_name(i);
    for (std::string spelling : {name, std::string()}) {
      if (spelling.empty()) {  // names are case-insensitive, whitespace around ignored
        spelling = " " + name + "\t\n";
        for (char& ch : spelling) ch = static_cast<char>(std::tolower(ch));
      }
      const ProbeRun run = RunProbe(spelling.c_str());
      EXPECT_EQ(run.exit_code, 0) << spelling << run.out << run.err;
      EXPECT_EQ(run.out, "active=" + name + "\nok\n");
      EXPECT_EQ(run.err, "");
    }
  }
}

// ISAs this build knows but this CPU may lack: asking for one must fall back,
// never run its code (SIGILL).
TEST(TargetEnvironment, UnsupportedTargetFallsBackWithoutSigill) {
  int tried = 0;
  for (const char* name : {"AVX3_DL", "AVX3", "AVX2", "SSE4", "SSSE3"}) {
    bool runnable = false;
    for (int i = 0; i < bnorm_target_count(); ++i) {
      runnable |= strcasecmp(bnorm_target_name(i), name) == 0;
    }
    if (runnable) continue;
    ++tried;
    const ProbeRun run = RunProbe(name);
    EXPECT_EQ(run.exit_code, 0) << name << run.out << run.err;
    EXPECT_EQ(run.signal, 0) << name;
    EXPECT_EQ(run.out, "active=" + Best() + "\nok\n");
    EXPECT_EQ(run.err, std::string("bnorm: BNORM_TARGET=") + name +
                           " is not supported by this CPU or build; using " + Best() + "\n");
  }
  if (tried == 0) GTEST_SKIP() << "this CPU runs every target bnorm builds";
}

// A setting read from the environment variable `name`: each of `values`
// runs silently and gives the bits of the run without it.
void ExpectSettingsKeepTheBits(const char* name, const std::vector<std::string>& values) {
  const ProbeRun plain = RunProbe(nullptr, name, "--probe-bits");
  ASSERT_EQ(plain.exit_code, 0) << plain.out << plain.err;
  ASSERT_EQ(plain.out.rfind("bits=", 0), 0u) << plain.out;
  EXPECT_EQ(plain.err, "");
  for (const std::string& value : values) {
    const ProbeRun run = RunProbe(value.c_str(), name, "--probe-bits");
    EXPECT_EQ(run.exit_code, 0) << name << "=" << value << run.err;
    EXPECT_EQ(run.out, plain.out) << name << "=" << value;
    EXPECT_EQ(run.err, "") << name << "=" << value;
  }
}

// Each of `garbage` in `name` prints one line starting "bnorm: name=value
// <complaint>" and gives the bits of the run without it.
void ExpectGarbageWarnsOnce(const char* name, const std::vector<std::string>& garbage,
                            const std::string& complaint) {
  const ProbeRun plain = RunProbe(nullptr, name, "--probe-bits");
  ASSERT_EQ(plain.exit_code, 0) << plain.out << plain.err;
  for (const std::string& value : garbage) {
    const ProbeRun run = RunProbe(value.c_str(), name, "--probe-bits");
    EXPECT_EQ(run.exit_code, 0) << name << "=" << value << run.err;
    EXPECT_EQ(run.signal, 0);
    EXPECT_EQ(run.out, plain.out) << name << "=" << value;
    const std::string start = std::string("bnorm: ") + name + "=" + Shown(value) + " " + complaint;
    EXPECT_EQ(run.err.rfind(start, 0), 0u) << run.err;
    EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << run.err;
  }
}

// Cache sizes from the environment (BNORM_L2_SIZE, BNORM_LLC_SIZE) change the
// plan (fused or two-phase, streamed stores or not), never the bits.
TEST(CacheEnvironment, SizesChangeThePlanNotTheBits) {
  // Train's channel slices are 96 KB and its tensors 4.6 MB: a 64 KiB L2 with
  // a 4 KiB LLC makes its plan two-phase (with the LLC's room, slices beyond
  // L2 are fused: FusesBeyondL2 in src/plan.h), a 4 KiB LLC streams every
  // output, 1 GiB none.
  ExpectSettingsKeepTheBits("BNORM_L2_SIZE", {"64K", "64M"});
  {
    const char* outer = std::getenv("BNORM_LLC_SIZE");
    const std::string saved = outer != nullptr ? outer : "";
    setenv("BNORM_LLC_SIZE", "4K", 1);  // for the probes, which inherit it
    ExpectSettingsKeepTheBits("BNORM_L2_SIZE", {"64K", "64M"});
    if (outer != nullptr) {
      setenv("BNORM_LLC_SIZE", saved.c_str(), 1);
    } else {
      unsetenv("BNORM_LLC_SIZE");
    }
  }
  ExpectSettingsKeepTheBits("BNORM_LLC_SIZE",
                            {"4K", "1G", "1048576", "1T", " 2m\t", "8M\r\n", " "});
}

TEST(CacheEnvironment, GarbageWarnsOnceAndIsIgnored) {
  for (const char* name : {"BNORM_L2_SIZE", "BNORM_LLC_SIZE"}) {
    ExpectGarbageWarnsOnce(name,
                           {"garbage", "-2M", "+2M", " -2M", "0", "12Q", "1K", "4095",
                            "99999999999999999999", "2T", "1025G", std::string(10000, '9'),
                            "%s%n", "2M\x1b[2J", "2 M"},
                           "is not a size");
  }
}

// The NHWC row order (BNORM_NHWC_ROW_STORES, detected from the CPU by
// default) changes how rows are stored, never the bits.
TEST(RowStoresEnvironment, OrderChangesNotTheBits) {
  ExpectSettingsKeepTheBits("BNORM_NHWC_ROW_STORES",
                            {"grouped", "sequential", "Grouped", " SEQUENTIAL\n", " \t"});
}

TEST(RowStoresEnvironment, GarbageWarnsOnceAndIsIgnored) {
  ExpectGarbageWarnsOnce("BNORM_NHWC_ROW_STORES",
                         {"seq", "1", "%s%n", "grouped sequential", "grouped\x1b[2J"},
                         "is not grouped or sequential");
}

// The step to the next channel group (BNORM_NEXT_GROUP, detected from the
// CPU by default): the NCHW calls of the bits probe (training and backward,
// f32 and bf16) fit every LLC the planner counts on, so "auto" reduces the
// next group in the write loop where the kernels can and the runs are long
// enough, "reduce" wherever the kernels can, and "prefetch" never does; the
// bits are the same.
TEST(NextGroupEnvironment, StepChangesNotTheBits) {
  ExpectSettingsKeepTheBits("BNORM_NEXT_GROUP",
                            {"reduce", "prefetch", "auto", "Prefetch", "\tREDUCE\n", " "});
}

TEST(NextGroupEnvironment, GarbageWarnsOnceAndIsIgnored) {
  ExpectGarbageWarnsOnce("BNORM_NEXT_GROUP", {"pre fetch", "0", "%s%n", "reduced", "auto\x1b[2J"},
                         "is not reduce, prefetch or auto");
}

// bf16 stores by instruction or by integer steps (BNORM_BF16_ROUNDING, the
// instruction by default where the CPU has AVX512_BF16) give the same bits.
TEST(Bf16RoundingEnvironment, ChangesNotTheBits) {
  ExpectSettingsKeepTheBits("BNORM_BF16_ROUNDING",
                            {"instruction", "integer", "Integer", "\tINSTRUCTION ", "  "});
}

TEST(Bf16RoundingEnvironment, GarbageWarnsOnceAndIsIgnored) {
  ExpectGarbageWarnsOnce("BNORM_BF16_ROUNDING", {"avx512", "0", "%s%n", "in teger", "integers"},
                         "is not instruction or integer");
}

// Waits for a child for up to 60 s; its exit code, or -1 (signal, timeout).
int WaitChild(pid_t pid) {
  for (int i = 0; i < 600; ++i) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

TEST(Fork, ChildComputesAfterTheParentUsedTheLibrary) {
  bnorm_context* ctx = nullptr;
  ASSERT_EQ(bnorm_context_create(2, &ctx), BNORM_OK);
  const Result parent_default = Train(nullptr);
  const Result parent_ctx = Train(ctx);
  ASSERT_EQ(parent_default.status, BNORM_OK);
  ASSERT_TRUE(Same(parent_default, parent_ctx));  // bitwise for any thread count
  std::fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: only async-signal-safe exits, no gtest assertions.
    int code = 0;
    if (!Same(Train(nullptr), parent_default)) code |= 1;
    if (!Same(Train(ctx), parent_default)) code |= 2;
    bnorm_context* fresh = nullptr;
    if (bnorm_context_create(3, &fresh) != BNORM_OK || !Same(Train(fresh), parent_default)) {
      code |= 4;
    }
    bnorm_context_destroy(fresh);
    bnorm_context_destroy(ctx);
    _exit(code);
  }
  EXPECT_EQ(WaitChild(pid), 0) << "1: default context, 2: parent's context, 4: new context";
  // The parent is unaffected.
  EXPECT_TRUE(Same(Train(ctx), parent_default));
  EXPECT_TRUE(Same(Train(nullptr), parent_default));
  bnorm_context_destroy(ctx);
}

TEST(Fork, ChildOfAChildStillComputes) {
  const Result parent = Train(nullptr);
  ASSERT_EQ(parent.status, BNORM_OK);
  std::fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (!Same(Train(nullptr), parent)) _exit(1);
    const pid_t grandchild = fork();
    if (grandchild < 0) _exit(2);
    if (grandchild == 0) _exit(Same(Train(nullptr), parent) ? 0 : 3);
    _exit(WaitChild(grandchild) == 0 ? 0 : 4);
  }
  EXPECT_EQ(WaitChild(pid), 0);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--probe") == 0) return Probe();
  if (argc > 1 && std::strcmp(argv[1], "--probe-bits") == 0) return ProbeBits();
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
