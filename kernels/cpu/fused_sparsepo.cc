#include "kernels/cpu/fused_sparsepo.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "kernels/cpu/parallel_gemm.h"
#include "kernels/cpu/vec_math.h"

namespace prefopt::kernels::cpu {
namespace {

// Below this many multiply-adds a pass is not worth waking threads for (the
// same threshold as CpuBackend's output layer).
constexpr double kMinParallelMacs = 1 << 20;
// Float lane sums cover this many vocabulary entries before going into a
// double, bounding the rounding error of sums over large vocabularies.
constexpr int kSumBlock = 512;

void CheckChunk(int chunk) {
  if (chunk < 1) {
    std::fprintf(stderr, "SparsePoOutputForward/Backward: chunk %d < 1\n",
                 chunk);
    std::abort();
  }
}

void CheckLabel(int32_t label, int V) {
  if (label < 0 || label >= V) {
    std::fprintf(stderr,
                 "SparsePoOutputForward/Backward: label %d outside [0, %d)\n",
                 label, V);
    std::abort();
  }
}

float RowMax(const float* x, int n) {
  const __m256 neg_inf =
      _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 m = neg_inf;
  int i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  if (i < n) {
    const __m256i mask = FirstLanes(n - i);
    m = _mm256_max_ps(m,
                      _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(x + i, mask),
                                       _mm256_castsi256_ps(mask)));
  }
  return HorizontalMax(m);
}

// The sums over the vocabulary that one row's statistics need, with
// e = exp(z − max z) and ẽ = exp(z̃ − max z̃).
struct RowSums {
  double exp = 0;           // Σ e
  double ref_exp = 0;       // Σ ẽ
  double ref_exp_diff = 0;  // Σ ẽ (z − z̃)
  double logits = 0;        // Σ z
  double ref_logits = 0;    // Σ z̃
  double exp_shifted = 0;   // Σ e (z − max z), the entropy's
};

// One pass over both rows: fp32 lanes within kSumBlock entries, double across
// blocks.
RowSums SumRows(const float* z, const float* zr, int V, float max_z,
                float max_zr) {
  const __m256 vmax = _mm256_set1_ps(max_z);
  const __m256 vmax_r = _mm256_set1_ps(max_zr);
  RowSums s;
  for (int b = 0; b < V; b += kSumBlock) {
    const int e = std::min(V, b + kSumBlock);
    __m256 se = _mm256_setzero_ps(), sre = _mm256_setzero_ps();
    __m256 sd = _mm256_setzero_ps(), sz = _mm256_setzero_ps();
    __m256 szr = _mm256_setzero_ps(), ses = _mm256_setzero_ps();
    for (int i = b; i < e; i += 8) {
      __m256 x, xr, keep;
      if (i + 8 <= e) {
        x = _mm256_loadu_ps(z + i);
        xr = _mm256_loadu_ps(zr + i);
        keep = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
      } else {
        // Lanes past the end load as 0; their exps are masked to 0 below.
        const __m256i mask = FirstLanes(e - i);
        x = _mm256_maskload_ps(z + i, mask);
        xr = _mm256_maskload_ps(zr + i, mask);
        keep = _mm256_castsi256_ps(mask);
      }
      const __m256 ex = _mm256_and_ps(Exp8(_mm256_sub_ps(x, vmax)), keep);
      const __m256 er = _mm256_and_ps(Exp8(_mm256_sub_ps(xr, vmax_r)), keep);
      se = _mm256_add_ps(se, ex);
      sre = _mm256_add_ps(sre, er);
      sd = _mm256_fmadd_ps(er, _mm256_sub_ps(x, xr), sd);
      sz = _mm256_add_ps(sz, x);
      szr = _mm256_add_ps(szr, xr);
      ses = _mm256_fmadd_ps(ex, _mm256_sub_ps(x, vmax), ses);
    }
    s.exp += HorizontalSum(se);
    s.ref_exp += HorizontalSum(sre);
    s.ref_exp_diff += HorizontalSum(sd);
    s.logits += HorizontalSum(sz);
    s.ref_logits += HorizontalSum(szr);
    s.exp_shifted += HorizontalSum(ses);
  }
  return s;
}

// Overwrites the policy logits z with dz = (a + b)·π − b·p − a·onehot(label),
// π = exp(z − lse), p = exp(z̃ − ref_lse). z̃ is read only when b ≠ 0.
void WriteLogitGrad(float* z, const float* zr, int V, int label, float lse,
                    float ref_lse, float a, float b) {
  const __m256 vab = _mm256_set1_ps(a + b);
  const __m256 vb = _mm256_set1_ps(b);
  const __m256 vlse = _mm256_set1_ps(lse);
  const __m256 vref_lse = _mm256_set1_ps(ref_lse);
  for (int i = 0; i < V; i += 8) {
    const bool full = i + 8 <= V;
    const __m256i mask = FirstLanes(V - i);
    const __m256 x =
        full ? _mm256_loadu_ps(z + i) : _mm256_maskload_ps(z + i, mask);
    __m256 d = _mm256_mul_ps(vab, Exp8(_mm256_sub_ps(x, vlse)));
    if (b != 0.0f) {
      const __m256 xr =
          full ? _mm256_loadu_ps(zr + i) : _mm256_maskload_ps(zr + i, mask);
      d = _mm256_fnmadd_ps(vb, Exp8(_mm256_sub_ps(xr, vref_lse)), d);
    }
    if (full) {
      _mm256_storeu_ps(z + i, d);
    } else {
      _mm256_maskstore_ps(z + i, mask, d);
    }
  }
  z[label] -= a;
}

}  // namespace

void SparsePoOutputForward(const SparsePoOutputLayers& layers,
                           const int32_t* labels, int N, float* chunk_buf,
                           float* ref_chunk_buf, int chunk,
                           const SparsePoRowStats& out) {
  CheckChunk(chunk);
  const int C = layers.C, RC = layers.ref_C, V = layers.V;
  SingleThreadedBlas blas;
#pragma omp parallel if (double{1} * N * (C + RC) * V >= kMinParallelMacs)
  for (int n0 = 0; n0 < N; n0 += chunk) {
    const int rows = std::min(chunk, N - n0);
    GemmPart(false, true, rows, V, C, 1.0f,
             layers.h + static_cast<size_t>(n0) * C, C, layers.wout, C, 0.0f,
             chunk_buf, V);
    GemmPart(false, true, rows, V, RC, 1.0f,
             layers.ref_h + static_cast<size_t>(n0) * RC, RC, layers.ref_wout,
             RC, 0.0f, ref_chunk_buf, V);
#pragma omp barrier
    // The implicit barrier at the end of this loop keeps the next chunk's
    // GEMMs from overwriting logits still being read.
#pragma omp for schedule(static)
    for (int r = 0; r < rows; ++r) {
      const int n = n0 + r;
      const int32_t y = labels[n];
      CheckLabel(y, V);
      const float* z = chunk_buf + static_cast<size_t>(r) * V;
      const float* zr = ref_chunk_buf + static_cast<size_t>(r) * V;
      const float max_z = RowMax(z, V);
      const float max_zr = RowMax(zr, V);
      const RowSums s = SumRows(z, zr, V, max_z, max_zr);
      const double lse = max_z + std::log(s.exp);
      const double ref_lse = max_zr + std::log(s.ref_exp);
      out.lse[n] = static_cast<float>(lse);
      out.ref_lse[n] = static_cast<float>(ref_lse);
      out.logp[n] = static_cast<float>(z[y] - lse);
      out.ref_logp[n] = static_cast<float>(zr[y] - ref_lse);
      // E_p[z − z̃] − (lse z − lse z̃) = Σ_v p_v (log π_v − log p_v).
      out.kl[n] =
          static_cast<float>(s.ref_exp_diff / s.ref_exp - (lse - ref_lse));
      if (out.logit_sum != nullptr) {
        out.logit_sum[n] = static_cast<float>(s.logits);
      }
      if (out.ref_logit_sum != nullptr) {
        out.ref_logit_sum[n] = static_cast<float>(s.ref_logits);
      }
      // H(π) = log Σ e − Σ e (z − max z) / Σ e, as in CpuBackend's.
      if (out.entropy != nullptr) {
        out.entropy[n] =
            static_cast<float>(std::log(s.exp) - s.exp_shifted / s.exp);
      }
    }
  }
}

void SparsePoOutputBackward(const SparsePoOutputLayers& layers,
                            const int32_t* labels, int N, const float* lse,
                            const float* ref_lse, const float* coef_a,
                            const float* coef_b, float* chunk_buf,
                            float* ref_chunk_buf, int chunk, float* dh,
                            float* dwout) {
  CheckChunk(chunk);
  const int C = layers.C, RC = layers.ref_C, V = layers.V;
  auto skipped = [&](int n) { return coef_a[n] == 0.0f && coef_b[n] == 0.0f; };
  SingleThreadedBlas blas;
#pragma omp parallel if (double{1} * N * (3 * C + RC) * V >= kMinParallelMacs)
  {
    // Every thread walks the same chunks: runs of at most `chunk` rows that
    // start and end on a row with a nonzero coefficient.
    int n0 = 0;
    while (true) {
      while (n0 < N && skipped(n0)) ++n0;
      if (n0 == N) break;
      int n1 = std::min(N, n0 + chunk);
      while (skipped(n1 - 1)) --n1;
      const int rows = n1 - n0;
      bool need_ref = false;
      for (int n = n0; n < n1; ++n) need_ref |= coef_b[n] != 0.0f;
      const float* hb = layers.h + static_cast<size_t>(n0) * C;
      GemmPart(false, true, rows, V, C, 1.0f, hb, C, layers.wout, C, 0.0f,
               chunk_buf, V);
      if (need_ref) {
        GemmPart(false, true, rows, V, RC, 1.0f,
                 layers.ref_h + static_cast<size_t>(n0) * RC, RC,
                 layers.ref_wout, RC, 0.0f, ref_chunk_buf, V);
      }
#pragma omp barrier
#pragma omp for schedule(static)
      for (int r = 0; r < rows; ++r) {
        const int n = n0 + r;
        float* z = chunk_buf + static_cast<size_t>(r) * V;
        if (skipped(n)) {
          std::memset(z, 0, V * sizeof(float));
          continue;
        }
        CheckLabel(labels[n], V);
        WriteLogitGrad(z, ref_chunk_buf + static_cast<size_t>(r) * V, V,
                       labels[n], lse[n], ref_lse[n], coef_a[n], coef_b[n]);
      }
      if (dh != nullptr) {
        GemmPart(false, false, rows, C, V, 1.0f, chunk_buf, V, layers.wout, C,
                 1.0f, dh + static_cast<size_t>(n0) * C, C);
      }
      if (dwout != nullptr) {
        GemmPart(true, false, V, C, rows, 1.0f, chunk_buf, V, hb, C, 1.0f,
                 dwout, C);
      }
      // The next chunk's GEMMs overwrite both buffers.
#pragma omp barrier
      n0 = n1;
    }
  }
}

}  // namespace prefopt::kernels::cpu
