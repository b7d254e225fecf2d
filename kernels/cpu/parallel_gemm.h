// GEMM helpers shared by the CPU kernels: OpenMP threads split each GEMM
// between themselves while OpenBLAS runs single-threaded, so the two thread
// pools never compete and each element of C is computed by one thread with one
// sgemm call (results do not depend on timing).
#ifndef PREFOPT_KERNELS_CPU_PARALLEL_GEMM_H_
#define PREFOPT_KERNELS_CPU_PARALLEL_GEMM_H_

namespace prefopt::kernels::cpu {

// Sets OpenBLAS to one thread for the lifetime of the guard.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int saved_;
};

// Row-major C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C (cblas_sgemm).
void Sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
           const float* A, int lda, const float* B, int ldb, float beta,
           float* C, int ldc);

// Called by every thread of an OpenMP parallel region: computes this thread's
// share of Sgemm(...), cutting the longer of C's two dimensions into one slice
// per thread (slices are multiples of 16, OpenBLAS's register blocks).
void GemmPart(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const float* A, int lda, const float* B, int ldb, float beta,
              float* C, int ldc);

}  // namespace prefopt::kernels::cpu

#endif  // PREFOPT_KERNELS_CPU_PARALLEL_GEMM_H_
