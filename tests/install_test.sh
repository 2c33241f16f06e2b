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
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/cmake-build" >/dev/null
LD_LIBRARY_PATH="$libdir" "$work/cmake-build/consumer"

export PKG_CONFIG_PATH="$libdir/pkgconfig"
pkg-config --exists bnorm
cc -std=c99 -pedantic -Wall -Werror "$source_dir/tests/consumer/main.c" -o "$work/pc-consumer" \
  $(pkg-config --cflags --libs bnorm) -lm
LD_LIBRARY_PATH="$libdir" "$work/pc-consumer"
echo "install test: cmake and pkg-config consumers ok"
