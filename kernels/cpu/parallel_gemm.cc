#include "kernels/cpu/parallel_gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstddef>

namespace prefopt::kernels::cpu {
namespace {

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace

SingleThreadedBlas::SingleThreadedBlas() : saved_(openblas_get_num_threads()) {
  if (saved_ != 1) openblas_set_num_threads(1);
}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (saved_ != 1) openblas_set_num_threads(saved_);
}

void Sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
           const float* A, int lda, const float* B, int ldb, float beta,
           float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B,
              ldb, beta, C, ldc);
}

void GemmPart(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const float* A, int lda, const float* B, int ldb, float beta,
              float* C, int ldc) {
  const int threads = omp_get_num_threads();
  const int t = omp_get_thread_num();
  const bool split_columns = N >= M;
  const int extent = split_columns ? N : M;
  const int per = CeilDiv(CeilDiv(extent, threads), 16) * 16;
  const int begin = std::min(extent, t * per);
  const int end = std::min(extent, begin + per);
  if (begin >= end) return;
  if (split_columns) {
    B += trans_b ? static_cast<size_t>(begin) * ldb : begin;
    C += begin;
    N = end - begin;
  } else {
    A += trans_a ? begin : static_cast<size_t>(begin) * lda;
    C += static_cast<size_t>(begin) * ldc;
    M = end - begin;
  }
  Sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace prefopt::kernels::cpu
