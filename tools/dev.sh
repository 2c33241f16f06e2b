#!/bin/sh
# Sets up a Debian 12 machine and runs one of bnorm's jobs.
#   tools/dev.sh bench   install dependencies, build, run the benchmark table
#   tools/dev.sh test    install dependencies, build, run the whole test suite
#                        (Release with -Werror, then AddressSanitizer+UBSan)
# Run as root, or as a user with sudo. Build trees go to build/.
set -eu
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

install_deps() {
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends \
    ca-certificates cmake ninja-build g++ make pkg-config binutils \
    libhwy-dev libtbb-dev libgtest-dev libgmock-dev libbenchmark-dev \
    libdnnl-dev python3-matplotlib python3-numpy >/dev/null
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
    configure_and_build build/release -DCMAKE_BUILD_TYPE=Release -DBNORM_WERROR=ON
    (cd build/release && ctest -j "$jobs" --output-on-failure)
    configure_and_build build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBNORM_WERROR=ON \
      -DBNORM_SANITIZE=address,undefined -DBNORM_BUILD_BENCH=OFF
    (cd build/asan && ctest -j "$jobs" -L unit --output-on-failure)
    echo "bnorm: all tests passed"
    ;;
  *)
    echo "usage: $0 bench|test" >&2
    exit 2
    ;;
esac
