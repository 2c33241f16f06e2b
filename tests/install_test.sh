#!/bin/sh
# Installs the built library into a fresh prefix, then builds and runs the C
# consumer against it twice: with find_package(bnorm) and with pkg-config.
set -eu
build_dir=$1
source_dir=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
libdir=$(find "$work/prefix" -name 'libbnorm.so*' -printf '%h\n' | head -n 1)

cmake -S "$source_dir/tests/consumer" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_BUILD_TYPE=Release -DBNORM_MPI_EXAMPLE="$source_dir/examples/mpi_example.c" >/dev/null
cmake --build "$work/cmake-build" >/dev/null
LD_LIBRARY_PATH="$libdir" "$work/cmake-build/consumer"

# find_package(bnorm) from a project that enables only C++ (no MPI asked
# for or found: bnorm::bnorm alone), and the bnorm_mpi component where the
# package has it (required: found; from the C++-only project: not found).
mkdir -p "$work/cxx-only" "$work/component"
cat > "$work/cxx-only/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(cxx_only LANGUAGES CXX)
find_package(bnorm 0.1 REQUIRED OPTIONAL_COMPONENTS bnorm_mpi)
if(NOT TARGET bnorm::bnorm OR TARGET bnorm::bnorm_mpi OR bnorm_bnorm_mpi_FOUND)
  message(FATAL_ERROR "C++ only: bnorm::bnorm alone expected")
endif()
CMAKE
cmake -S "$work/cxx-only" -B "$work/cxx-only/build" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
if [ -e "$libdir/pkgconfig/bnorm_mpi.pc" ]; then
  cat > "$work/component/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(component LANGUAGES C CXX)
find_package(bnorm 0.1 REQUIRED COMPONENTS bnorm_mpi)
if(NOT TARGET bnorm::bnorm_mpi)
  message(FATAL_ERROR "bnorm_mpi component found without its target")
endif()
CMAKE
  cmake -S "$work/component" -B "$work/component/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
    >/dev/null
  echo "install test: find_package components ok"
fi

export PKG_CONFIG_PATH="$libdir/pkgconfig"
pkg-config --exists bnorm
cc -std=c99 -pedantic -Wall -Werror "$source_dir/tests/consumer/main.c" -o "$work/pc-consumer" \
  $(pkg-config --cflags --libs bnorm) -lm
LD_LIBRARY_PATH="$libdir" "$work/pc-consumer"

# libbnorm_mpi, if this build made it: the MPI example through CMake and
# through pkg-config, run on 2 ranks (shared memory only, as tests/mpi does).
if [ -e "$libdir/pkgconfig/bnorm_mpi.pc" ]; then
  test -x "$work/cmake-build/mpi_consumer"
  cc -std=c99 -Wall -Werror "$source_dir/examples/mpi_example.c" -o "$work/pc-mpi-consumer" \
    $(pkg-config --cflags --libs bnorm_mpi) -lm
  for exe in "$work/cmake-build/mpi_consumer" "$work/pc-mpi-consumer"; do
    OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none \
      OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_hwloc_base_binding_policy=none \
      LD_LIBRARY_PATH="$libdir" mpiexec --oversubscribe --allow-run-as-root -n 2 "$exe" |
      grep -q "bitwise identical on all ranks: yes"
  done
  echo "install test: bnorm_mpi cmake and pkg-config consumers ok"
fi
# Installed programs find the installed library by their run path, and the
# installed Python package finds it by _install_paths.py: no LD_LIBRARY_PATH,
# no BNORM_LIBRARY. The loader must resolve libbnorm inside the prefix (not a
# copy elsewhere on the system).
prefix_real=$(realpath "$work/prefix")
for exe in "$work"/prefix/*/bnorm_bench; do
  [ -x "$exe" ] || continue
  resolved=$(env -u LD_LIBRARY_PATH LD_TRACE_LOADED_OBJECTS=1 "$exe" |
    awk '/libbnorm\.so/ {print $3}')
  case "$(realpath "$resolved")" in
    "$prefix_real"/*) ;;
    *) echo "install test: $exe loads libbnorm from '$resolved', not the prefix"; exit 1 ;;
  esac
  env -u LD_LIBRARY_PATH "$exe" --benchmark_list_tests | grep -q forward_training
  echo "install test: installed bnorm_bench runs without LD_LIBRARY_PATH"
done
pkgdir=$(find "$work/prefix" -name _install_paths.py -printf '%h\n' | head -n 1)
if [ -n "$pkgdir" ] && /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
  (cd "$work" && env -u LD_LIBRARY_PATH -u BNORM_LIBRARY PYTHONPATH="$(dirname "$pkgdir")" \
    /usr/bin/python3 -c '
import os, sys, numpy as np, bnorm
lib = os.path.realpath(bnorm._lib._name)
assert lib.startswith(os.path.realpath(sys.argv[1]) + os.sep), lib
x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
y, mean, invstd = bnorm.batch_norm_training(x)
assert np.allclose(mean, [3.5, 5.5, 7.5]), mean
' "$work/prefix")
  echo "install test: installed Python package loads the installed library"
fi
echo "install test: cmake and pkg-config consumers ok"
