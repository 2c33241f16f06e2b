#!/bin/sh
# Sets up a Debian 12 machine and runs one of bnorm's jobs.
#   tools/dev.sh bench   install dependencies, build, run the benchmark table
#   tools/dev.sh test    install dependencies, build, run the whole test suite
#                        (Release with -Werror, including the MPI tests under
#                        mpirun -np 1..4; then AddressSanitizer+UBSan,
#                        ThreadSanitizer on the concurrency tests, and
#                        BNORM_FUZZ_SECONDS (60) of libFuzzer)
# Run as root, or as a user with sudo. Build trees go to build/.
set -eu
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
# Sanitizer builds: -O1, as the sanitizers' documentation recommends, and line
# tables only (-g1 still gives file:line in reports). With -O2 -g, the
# kernels' heavy inlining took 9 minutes to compile the library under
# ASan + UBSan on 2 cores; with these flags under 4, and the tests ran 233 s
# instead of 192. Without SSSE3: the sanitizer builds compile every kernel
# once per target and were the CI's long pole (backward_apply.cc alone 215 s
# under ASan); SSSE3 runs SSE4's 128-bit code paths with a few emulated ops,
# so SSE4 covers its accesses, and the Release build still tests it.
# tools/fuzz.sh uses the same flags.
sanitizer_flags="-O1 -g1 -DNDEBUG -DHWY_DISABLED_TARGETS=HWY_SSSE3"
# ThreadSanitizer checks the scheduling (contexts, the thread pool, target
# switches), which is the same code under every target: AVX2 and the scalar
# fallback only (6528 = HWY_SSSE3 | HWY_SSE4 | HWY_AVX3 | HWY_AVX3_DL in
# Highway 1.0.3; a number, as the flags pass through a shell), which keeps
# its build off CI's long pole.
tsan_flags="-O1 -g1 -DNDEBUG -DHWY_DISABLED_TARGETS=6528"

install_deps() {
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends \
    ca-certificates cmake ninja-build g++ make pkg-config binutils \
    libhwy-dev libtbb-dev libgtest-dev libgmock-dev libbenchmark-dev \
    libdnnl-dev ocl-icd-opencl-dev python3-matplotlib python3-numpy clang libclang-rt-dev \
    libopenmpi-dev openmpi-bin >/dev/null
}

# Prints how long the step since the previous call took (the CI's budget is
# 30 minutes on 2 cores; these lines show where it goes).
step_start=$(date +%s)
step_done() {  # name
  now=$(date +%s)
  echo "bnorm: $1 took $((now - step_start)) s"
  step_start=$now
}

configure_and_build() {  # dir, extra cmake args...
  dir=$1
  shift
  cmake -S . -B "$dir" -G Ninja "$@"
  cmake --build "$dir" -j "$jobs"
}

case "${1:-}" in
  bench)
    install_deps
    configure_and_build build/release -DCMAKE_BUILD_TYPE=Release -DBNORM_BUILD_TESTS=OFF
    shift
    ./build/release/bench/bnorm_bench --benchmark_min_time=0.2 "$@"
    ;;
  test)
    install_deps
    step_done "installing dependencies"
    configure_and_build build/release -DCMAKE_BUILD_TYPE=Release -DBNORM_WERROR=ON
    step_done "the Release build"
    (cd build/release && ctest -j "$jobs" --output-on-failure)
    step_done "the Release tests"
    configure_and_build build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBNORM_WERROR=ON \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$sanitizer_flags" \
      -DCMAKE_C_FLAGS_RELWITHDEBINFO="$sanitizer_flags" \
      -DBNORM_SANITIZE=address,undefined -DBNORM_BUILD_BENCH=OFF
    step_done "the ASan + UBSan build"
    (cd build/asan && ctest -j "$jobs" -L unit --output-on-failure)
    # libbnorm_mpi under ASan + UBSan too; LeakSanitizer off there, since Open
    # MPI itself keeps allocations to exit (bnorm's leaks: the unit tests above).
    if [ -e build/asan/tests/mpi/CTestTestfile.cmake ]; then
      (cd build/asan && ASAN_OPTIONS=detect_leaks=0 ctest -L mpi --output-on-failure)
    fi
    step_done "the ASan + UBSan tests"
    # ThreadSanitizer (clang) on the concurrency tests, each in its own process.
    CC=clang CXX=clang++ cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$tsan_flags" \
      -DCMAKE_C_FLAGS_RELWITHDEBINFO="$tsan_flags" \
      -DBNORM_SANITIZE=thread -DBNORM_BUILD_BENCH=OFF \
      -DCMAKE_CXX_FLAGS="-fsanitize-ignorelist=$PWD/tools/tsan-ignorelist.txt"
    cmake --build build/tsan -j "$jobs" --target threads_test
    (cd build/tsan && TSAN_OPTIONS="halt_on_error=1 suppressions=$PWD/../../tools/tsan-suppressions.txt" \
      ctest -j "$jobs" -R '^Concurrency\.' --no-tests=error --output-on-failure)
    step_done "the ThreadSanitizer build and tests"
    # The tests, the benchmarks and the MPI layer compile with clang too (the
    # builds above compile them with GCC only): a syntax and warning check.
    ls tests/*.cc bench/*.cc | grep -v mpi | xargs -P "$jobs" -n 1 clang++ -std=c++17 -fsyntax-only \
      -Wall -Wextra -Werror -Iinclude -Isrc -Itests -Ibench
    if command -v mpicxx >/dev/null 2>&1; then
      # shellcheck disable=SC2046  # mpicxx prints several flags
      ls tests/mpi/*.cc bench/*mpi*.cc src/mpi/*.cc | xargs -P "$jobs" -n 1 clang++ -std=c++17 \
        -fsyntax-only -Wall -Wextra -Werror -Iinclude -Isrc -Itests $(mpicxx --showme:compile)
    fi
    step_done "the clang check of the tests, benchmarks and MPI layer"
    # libFuzzer (clang, ASan + UBSan) on the whole C API, bounded.
    tools/fuzz.sh "${BNORM_FUZZ_SECONDS:-60}"
    step_done "the fuzzer build and run"
    echo "bnorm: all tests passed"
    ;;
  *)
    echo "usage: $0 bench|test" >&2
    exit 2
    ;;
esac
