#!/bin/sh
# The kernels that read beyond the caches keep their prefetch instructions.
# GCC 12 once dropped every prefetch of the NCHW streaming passes without a
# word: a helper whose body was only __builtin_prefetch was not inlined, and
# its out-of-line call, having no effect GCC must keep, was deleted
# (docs/performance-history.md, "the NCHW streaming passes had lost their
# prefetches"). Nothing else fails when that happens: the results stay
# right, the passes only slow down. This test disassembles the library and
# counts the prefetch instructions of the kernel templates below, under
# every target the library was built for (functions of namespace
# bnorm::N_<TARGET>). An optimized build's layout: the CMake list registers
# it for build types other than Debug.
#   prefetch_guard_test.sh LIBRARY
set -eu
lib=$1
command -v objdump > /dev/null || { echo "objdump not found (binutils)"; exit 1; }

# Every instantiation must prefetch: the NCHW streaming passes (inference,
# the flat apply of two-phase plans, the fused plans' prefetch of the next
# group), the NCHW reduction units (WalkAhead beyond the LLC, the short runs'
# next run or next channel), the NHWC statistics rows ahead.
every="NormalizeNchwT GradApplyNchwT NchwUnitMomentsT NchwUnitGradSumsT StatsNhwcUnitT"
# At least one instantiation must (the others are variants that stay in
# cache, or inline their kernels elsewhere): the unit-range reductions, the
# NHWC gradient sums and elementwise passes.
some="StatsNchwUnits GradSumsNchwUnits GradSumsNhwcUnitT NormalizeNhwcT GradApplyNhwcT"
# Every instantiation on the targets with the pipelined kernels
# (kPacedWritesOf: AVX2 and AVX-512).
pipelined="StatsWhileNormalizingT GradSumsWhileApplyingT"

# Lines "TARGET KERNEL functions functions_without_prefetch prefetches".
counts=$(objdump -d -C --no-show-raw-insn "$lib" | awk '
  function close_fn() {
    if (key != "") { fns[key]++; if (cur == 0) zero[key]++; pf[key] += cur }
  }
  /^[0-9a-f]+ <.*>:$/ {
    close_fn()
    key = ""
    cur = 0
    # The first bnorm::N_<TARGET>::<name> followed by ( or <: the function,
    # after the return type objdump may print first.
    if (match($0, /bnorm::N_[A-Z0-9_]+::[A-Za-z0-9_]+[(<]/)) {
      key = substr($0, RSTART + 9, RLENGTH - 10)
      sub(/::/, " ", key)
    }
    next
  }
  key != "" && /\tprefetch/ { cur++ }
  END {
    close_fn()
    for (k in fns) print k, fns[k], zero[k] + 0, pf[k]
  }')
[ -n "$counts" ] || { echo "no bnorm::N_<TARGET>:: functions in $lib (stripped?)"; exit 1; }
targets=$(echo "$counts" | awk '{print $1}' | sort -u)
echo "targets: $(echo $targets)"
fail=0
check() {  # target kernel every|some
  line=$(echo "$counts" | awk -v t="$1" -v k="$2" '$1 == t && $2 == k')
  if [ -z "$line" ]; then
    echo "FAIL $1 $2: not found"
    fail=1
    return
  fi
  set -- $line "$3"
  if [ "$6" = every ] && [ "$4" -gt 0 ]; then
    echo "FAIL $1 $2: $4 of its $3 instantiations without a prefetch instruction"
    fail=1
  elif [ "$5" -eq 0 ]; then
    echo "FAIL $1 $2: no prefetch instruction in its $3 instantiations"
    fail=1
  else
    echo "ok   $1 $2: $5 prefetch instructions in $3 instantiations"
  fi
}
for t in $targets; do
  for k in $every; do check "$t" "$k" every; done
  for k in $some; do check "$t" "$k" some; done
  case $t in
    AVX2 | AVX3*) for k in $pipelined; do check "$t" "$k" every; done ;;
  esac
done
exit $fail
