#!/bin/sh
# Builds the libFuzzer target (clang, ASan + UBSan, build/fuzz) and fuzzes the
# C API for a bounded time, starting from the seed corpus in tests/fuzz/corpus.
#   tools/fuzz.sh [seconds] [libFuzzer flags...]     (default 120 seconds)
# New corpus entries go to a scratch directory (BNORM_FUZZ_WORK_DIR to keep
# them somewhere), never into tests/fuzz/corpus. A failing input is written to
# build/fuzz/artifacts/ and the script exits non-zero; reproduce it with
#   build/fuzz/tests/fuzz/bnorm_fuzz build/fuzz/artifacts/crash-...
# (BNORM_FUZZ_VERBOSE=1 also prints each decoded call and its status.)
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-120}
[ $# -gt 0 ] && shift
jobs=$(nproc 2>/dev/null || echo 2)
build=build/fuzz
fuzzer=$build/tests/fuzz/bnorm_fuzz

# clang with its libFuzzer runtime: can it link a fuzz target?
runtime_ok() {
  command -v clang++ >/dev/null 2>&1 &&
    printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' |
    clang++ -x c++ -fsanitize=fuzzer - -o /dev/null >/dev/null 2>&1
}
if ! runtime_ok; then
  echo "fuzz.sh: installing clang and its libFuzzer runtime" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends clang libclang-rt-dev cmake ninja-build \
    libhwy-dev libtbb-dev >/dev/null
fi

# -O1 and line tables only, as tools/dev.sh's sanitizer builds, and no SSSE3
# or SSE4 target (6144 = HWY_SSSE3 | HWY_SSE4 in Highway 1.0.3; a number, as
# the flags pass through a shell): compile time, which was most of this
# step's ~9 minutes in CI. The fuzzer still switches between AVX3, AVX2 and
# the scalar fallback; the ASan + UBSan tests run every kernel on SSE4.
# The SIMD kernels are built without UBSan (BNORM_KERNELS_NO_SANITIZE): its
# checks doubled their compile time with clang (backward_apply.cc 353 s ->
# 142 s in CI's two-job build), and the GCC ASan + UBSan unit tests run the
# kernels with them (every target of the host but SSSE3). ASan stays on
# everywhere, UBSan on the API, validation and planner, where fuzzed shapes
# could overflow.
sanitizer_flags="-O1 -g1 -DNDEBUG -DHWY_DISABLED_TARGETS=6144"
# Configured on every run (quick on an existing tree), so that a tree from
# an older version of this script gets today's options.
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$sanitizer_flags" \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="$sanitizer_flags" \
  -DBNORM_BUILD_FUZZ=ON -DBNORM_BUILD_TESTS=OFF -DBNORM_BUILD_BENCH=OFF \
  -DBNORM_SANITIZE=fuzzer-no-link,address,undefined -DBNORM_KERNELS_NO_SANITIZE=undefined >/dev/null
cmake --build "$build" -j "$jobs" --target bnorm_fuzz

work=${BNORM_FUZZ_WORK_DIR:-}
cleanup=""
if [ -z "$work" ]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/bnorm_fuzz.XXXXXX")
  cleanup=$work
fi
trap '[ -n "$cleanup" ] && rm -rf "$cleanup"' EXIT
mkdir -p "$work" "$build/artifacts"

# -max_len: the 86-byte header plus room for raw-bits data.
status=0
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=1024 \
  -print_final_stats=1 -artifact_prefix="$build/artifacts/" "$@" "$work" tests/fuzz/corpus ||
  status=$?
if [ "$status" != 0 ]; then
  echo "fuzz.sh: bnorm_fuzz failed (exit $status); the input is in $build/artifacts/" >&2
  exit "$status"
fi
echo "fuzz.sh: no failure in ${seconds}s"
