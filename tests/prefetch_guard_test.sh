#!/bin/sh
# The kernels that read beyond the caches keep their prefetch instructions.
# GCC 12 once dropped every prefetch of the NCHW streaming passes without a
# word: a helper whose body was only __builtin_prefetch was not inlined, and
# its out-of-line call, having no effect GCC must keep, was deleted
# (docs/performance-history.md, "the NCHW streaming passes had lost their
# prefetches"). Nothing else fails when that happens: the results stay
# right, the passes only slow down. This test disassembles the library and
# counts the prefetch instructions of the functions below under every
# target the library was built for. A function is keyed by the first
# bnorm::N_<TARGET>::<name> of its demangled symbol (its lambdas and
# clones with it; the kernels return no bnorm::N_<TARGET> type), and
# "[clone ...]" pieces of one symbol are summed. x86-64 prefetch
# instructions, an optimized build's layout: the CMake list registers it
# for x86-64 builds other than Debug.
#   prefetch_guard_test.sh LIBRARY
set -eu
lib=$1
command -v objdump > /dev/null || { echo "objdump not found (binutils)"; exit 1; }

# Every out-of-line symbol must prefetch: the NCHW streaming passes
# (inference, the flat apply of two-phase plans, the fused plans' prefetch
# of the next group), the NHWC statistics rows ahead.
every="NormalizeNchwT GradApplyNchwT StatsNhwcUnitT"
# At least one symbol must (the others are variants that stay in cache, or
# inline their kernels elsewhere): the NCHW reduction units (WalkAhead beyond
# the LLC; the short runs' next run or next channel, inlined into the
# unit-range functions), the NHWC gradient sums and elementwise passes.
some="StatsNchwUnits GradSumsNchwUnits NchwUnitMomentsT NchwUnitGradSumsT GradSumsNhwcUnitT
      NormalizeNhwcT GradApplyNhwcT"
# Every symbol, on the targets with the pipelined kernels (kPacedWritesOf:
# AVX2 and AVX-512).
pipelined="StatsWhileNormalizingT GradSumsWhileApplyingT"
# Targets the library must have been built for (config.h leaves Highway's
# x86 set: SSSE3, SSE4, AVX2, AVX3 and the scalar fallback).
required="SSSE3 SSE4 AVX2 AVX3"

# Lines "TARGET KERNEL symbols symbols_without_prefetch prefetches".
counts=$(objdump -d -C --no-show-raw-insn "$lib" | awk '
  function close_fn() {
    if (key != "") { sym[key SUBSEP base] = 1; pf[key SUBSEP base] += cur }
  }
  /^[0-9a-f]+ <.*>:$/ {
    close_fn()
    key = ""
    cur = 0
    base = $0
    sub(/^[0-9a-f]+ </, "", base)
    gsub(/ \[clone [^]]*\]/, "", base)
    if (match(base, /bnorm::N_[A-Z0-9_]+::[A-Za-z0-9_]+[(<]/)) {
      key = substr(base, RSTART + 9, RLENGTH - 10)
      sub(/::/, " ", key)
    }
    next
  }
  key != "" && /\tprefetch/ { cur++ }
  END {
    close_fn()
    for (ks in sym) {
      split(ks, part, SUBSEP)
      k = part[1]
      fns[k]++
      total[k] += pf[ks]
      if (pf[ks] == 0) zero[k]++
    }
    for (k in fns) print k, fns[k], zero[k] + 0, total[k]
  }')
[ -n "$counts" ] || { echo "no bnorm::N_<TARGET>:: functions in $lib (stripped?)"; exit 1; }
targets=$(echo "$counts" | awk '{print $1}' | sort -u)
echo "targets: $(echo $targets)"
for t in $required; do
  echo "$targets" | grep -qx "$t" || { echo "FAIL target $t: no function of bnorm::N_$t"; exit 1; }
done
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
    echo "FAIL $1 $2: $4 of its $3 symbols without a prefetch instruction"
    fail=1
  elif [ "$5" -eq 0 ]; then
    echo "FAIL $1 $2: no prefetch instruction in its $3 symbols"
    fail=1
  else
    echo "ok   $1 $2: $5 prefetch instructions in $3 symbols"
  fi
}
for t in $targets; do
  for k in $every; do check "$t" "$k" every; done
  for k in $some; do check "$t" "$k" some; done
  case $t in
    AVX2 | AVX3* | AVX10*) for k in $pipelined; do check "$t" "$k" every; done ;;
  esac
done
exit $fail
