#!/bin/sh
# The shared library exports the C API and nothing else, and carries a SONAME.
set -eu
lib=$1
extra=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v -e '^bnorm_' -e '^BNORM_0$' || true)
if [ -n "$extra" ]; then
  echo "unexpected exported symbols:"; echo "$extra"; exit 1
fi
count=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -c '^bnorm_')
[ "$count" -ge 13 ] || { echo "only $count bnorm_ symbols exported"; exit 1; }
soname=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
[ "$soname" = "libbnorm.so.0" ] || { echo "SONAME is '$soname'"; exit 1; }
echo "exports ok: $count C API symbols, SONAME $soname"
