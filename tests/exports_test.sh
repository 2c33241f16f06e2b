#!/bin/sh
# A shared library exports its C API and nothing else, and carries a SONAME.
#   exports_test.sh LIB [PREFIX VERSION_NODE SONAME MIN_COUNT]
# defaults: libbnorm (bnorm_, BNORM_0, libbnorm.so.0, 13 symbols at least);
# libbnorm_mpi: bnorm_mpi_ BNORM_MPI_0 libbnorm_mpi.so.0 2.
set -eu
lib=$1
prefix=${2:-bnorm_}
node=${3:-BNORM_0}
want_soname=${4:-libbnorm.so.0}
min=${5:-13}
extra=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v -e "^$prefix" -e "^$node\$" || true)
if [ -n "$extra" ]; then
  echo "unexpected exported symbols:"; echo "$extra"; exit 1
fi
count=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -c "^$prefix")
[ "$count" -ge "$min" ] || { echo "only $count $prefix symbols exported"; exit 1; }
soname=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
[ "$soname" = "$want_soname" ] || { echo "SONAME is '$soname'"; exit 1; }
echo "exports ok: $count C API symbols, SONAME $soname"
