// The copy bnorm is measured against: read once, write once with
// non-temporal (streaming) stores, on the best SIMD target of this CPU.
#ifndef BNORM_BENCH_STREAM_COPY_H_
#define BNORM_BENCH_STREAM_COPY_H_

#include <cstddef>

namespace bnorm_bench {

// Copies n floats; dst need not be aligned (it is peeled to alignment).
void StreamCopy(const float* src, float* dst, size_t n);

}  // namespace bnorm_bench

#endif  // BNORM_BENCH_STREAM_COPY_H_
