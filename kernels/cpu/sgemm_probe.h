// Measures OpenBLAS single-precision GEMM throughput on this machine: the
// yardstick a benchmark divides its achieved GEMM rate by.
#ifndef PREFOPT_KERNELS_CPU_SGEMM_PROBE_H_
#define PREFOPT_KERNELS_CPU_SGEMM_PROBE_H_

namespace prefopt::kernels::cpu {

// GFLOP/s (2 n^3 flops per product) of repeated row-major n x n x n
// cblas_sgemm calls with OpenBLAS's current thread count, timed over at least
// min_seconds after one untimed warm-up call. n >= 1.
double MeasureSgemmGflops(int n, double min_seconds);

}  // namespace prefopt::kernels::cpu

#endif  // PREFOPT_KERNELS_CPU_SGEMM_PROBE_H_
