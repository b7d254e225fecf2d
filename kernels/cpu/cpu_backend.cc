#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "kernels/cpu/parallel_gemm.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/vec_math.h"

namespace prefopt::kernels {
namespace {

using cpu::Exp8;
using cpu::FirstLanes;
using cpu::GemmPart;
using cpu::HorizontalMax;
using cpu::HorizontalSum;
using cpu::Sgemm;
using cpu::SingleThreadedBlas;

// Below this many elements an elementwise loop is not worth waking threads for.
constexpr size_t kMinParallel = size_t{1} << 15;
// Nor a GEMM-based op below this many multiply-adds.
constexpr double kMinParallelMacs = 1 << 20;
// Attention works on blocks of this many query rows, so that the GEMMs of a
// block only touch the keys its causal mask lets through.
constexpr int kAttentionBlock = 64;
// The tiled backward's tiles: this many keys by this many query rows (P and
// dS of a tile, 128 KiB each, stay in a core's L2). 128 keys rather than 64
// lengthen its GEMMs, which made the backward 11-12% faster at T >= 2048
// (docs/benchmarks.md, "CPU kernels").
constexpr int kTiledKeys = 128;
constexpr int kTiledQueries = 256;
// Column tile of the reductions over rows (LayerNorm dweight/dbias, Matmul
// dbias, embedding backward): each tile is summed by one thread in row order.
constexpr int kColumnTile = 64;
// Float partial sums cover this many elements before going into a double.
constexpr int kSumBlock = 512;
// SumSquares sums blocks of this many elements in parallel.
constexpr size_t kSumSquaresBlock = size_t{1} << 16;
constexpr size_t kAlignment = 64;

template <typename T>
T CeilDiv(T a, T b) {
  return (a + b - 1) / b;
}

// Runs body(begin, end) over contiguous slices of [0, n), one per thread. Each
// element's result must not depend on the slicing (elementwise bodies).
template <typename Body>
void ParallelSlices(size_t n, const Body& body) {
  if (n == 0) return;
  if (n < kMinParallel || omp_get_max_threads() == 1) {
    body(size_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    const size_t threads = omp_get_num_threads();
    const size_t t = omp_get_thread_num();
    const size_t per = CeilDiv(CeilDiv(n, threads), size_t{16}) * 16;
    const size_t begin = std::min(n, t * per);
    const size_t end = std::min(n, begin + per);
    if (begin < end) body(begin, end);
  }
}

// Runs body(c0, c1) over column tiles [c0, c1) of width kColumnTile covering
// [0, C), in parallel when rows * C is large enough to pay for it.
template <typename Body>
void ParallelColumnTiles(int C, size_t rows, const Body& body) {
  const int tiles = CeilDiv(C, kColumnTile);
#pragma omp parallel for schedule(static) if (rows * C >= kMinParallel)
  for (int tile = 0; tile < tiles; ++tile) {
    body(tile * kColumnTile, std::min(C, (tile + 1) * kColumnTile));
  }
}

// Multiply-adds of one attention GEMM over all sequences and heads, the
// measure of whether an attention op is worth running on several threads.
double AttentionMacs(const SeqSpan* spans, int num_seqs, int NH, int hs) {
  double macs = 0.0;
  for (int s = 0; s < num_seqs; ++s) {
    macs += double{1} * NH * spans[s].len * spans[s].len * hs;
  }
  return macs;
}

int MaxLen(const SeqSpan* spans, int num_seqs) {
  int max_len = 0;
  for (int s = 0; s < num_seqs; ++s) max_len = std::max(max_len, spans[s].len);
  return max_len;
}

// ---- row primitives of the softmax-like loops ----

float RowMax(const float* x, int n) {
  const __m256 neg_inf =
      _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 m0 = neg_inf, m1 = neg_inf;
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
  }
  for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
  if (i < n) {
    const __m256i mask = FirstLanes(n - i);
    const __m256 tail = _mm256_blendv_ps(
        neg_inf, _mm256_maskload_ps(x + i, mask), _mm256_castsi256_ps(mask));
    m0 = _mm256_max_ps(m0, tail);
  }
  return HorizontalMax(_mm256_max_ps(m0, m1));
}

// First i with x[i] == value, or n if none.
int FirstIndexOf(const float* x, int n, float value) {
  const __m256 target = _mm256_set1_ps(value);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const int bits = _mm256_movemask_ps(
        _mm256_cmp_ps(_mm256_loadu_ps(x + i), target, _CMP_EQ_OQ));
    if (bits != 0) return i + __builtin_ctz(bits);
  }
  for (; i < n; ++i) {
    if (x[i] == value) return i;
  }
  return n;
}

// Sum of x[0..n): fp32 lanes within kSumBlock elements, double across blocks.
double RowSum(const float* x, int n) {
  double total = 0.0;
  for (int b = 0; b < n; b += kSumBlock) {
    const int e = std::min(n, b + kSumBlock);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = b;
    for (; i + 16 <= e; i += 16) {
      s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
      s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
    }
    for (; i + 8 <= e; i += 8) s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
    if (i < e) {
      s1 = _mm256_add_ps(s1, _mm256_maskload_ps(x + i, FirstLanes(e - i)));
    }
    total += HorizontalSum(_mm256_add_ps(s0, s1));
  }
  return total;
}

// Returns the sum over x[0..n) of exp(x[i] - shift) (fp32 lanes within
// kSumBlock elements, double across blocks), handing each vector of exps to
// consume(i, exps of x[i..i+8)) on the way; on the last partial vector the
// lanes past n are 0 and must not be stored. consume may overwrite x[i..i+8).
template <typename Consume>
double ExpShifted(const float* x, int n, float shift, const Consume& consume) {
  const __m256 vshift = _mm256_set1_ps(shift);
  double total = 0.0;
  for (int b = 0; b < n; b += kSumBlock) {
    const int e = std::min(n, b + kSumBlock);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = b;
    for (; i + 16 <= e; i += 16) {
      const __m256 y0 = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vshift));
      const __m256 y1 = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vshift));
      s0 = _mm256_add_ps(s0, y0);
      s1 = _mm256_add_ps(s1, y1);
      consume(i, y0);
      consume(i + 8, y1);
    }
    for (; i + 8 <= e; i += 8) {
      const __m256 y = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vshift));
      s0 = _mm256_add_ps(s0, y);
      consume(i, y);
    }
    if (i < e) {
      const __m256i mask = FirstLanes(e - i);
      const __m256 y = _mm256_and_ps(
          Exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vshift)),
          _mm256_castsi256_ps(mask));
      s1 = _mm256_add_ps(s1, y);
      consume(i, y);
    }
    total += HorizontalSum(_mm256_add_ps(s0, s1));
  }
  return total;
}

// The softmax moments of the output layer's forward over x[0..n), with
// d_i = x[i] - shift and y_i = exp(d_i): sum_exp = sum y (the logsumexp's),
// sum_exp_shifted = sum y d (the entropy's) and, when kSquares, sum_exp_sq =
// sum y^2 (log sum p^2's). Accumulated as ExpShifted does.
struct ExpMoments {
  double sum_exp = 0.0;
  double sum_exp_shifted = 0.0;
  double sum_exp_sq = 0.0;
};

template <bool kSquares>
ExpMoments ExpShiftedMoments(const float* x, int n, float shift) {
  const __m256 vshift = _mm256_set1_ps(shift);
  ExpMoments m;
  for (int b = 0; b < n; b += kSumBlock) {
    const int e = std::min(n, b + kSumBlock);
    // Two accumulators of each sum, filled in the same order as
    // ExpShifted's, so the logsumexp is the same bit for bit.
    __m256 s0[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 s1[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 s2[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    const auto add = [&](int k, __m256 d, __m256 y) {
      s0[k] = _mm256_add_ps(s0[k], y);
      s1[k] = _mm256_fmadd_ps(y, d, s1[k]);
      if constexpr (kSquares) s2[k] = _mm256_fmadd_ps(y, y, s2[k]);
    };
    int i = b;
    for (; i + 16 <= e; i += 16) {
      const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), vshift);
      const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vshift);
      add(0, d0, Exp8(d0));
      add(1, d1, Exp8(d1));
    }
    for (; i + 8 <= e; i += 8) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vshift);
      add(0, d, Exp8(d));
    }
    if (i < e) {
      // The lanes past e have y = 0, so they add 0 to every sum.
      const __m256i mask = FirstLanes(e - i);
      const __m256 d = _mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vshift);
      add(1, d, _mm256_and_ps(Exp8(d), _mm256_castsi256_ps(mask)));
    }
    m.sum_exp += HorizontalSum(_mm256_add_ps(s0[0], s0[1]));
    m.sum_exp_shifted += HorizontalSum(_mm256_add_ps(s1[0], s1[1]));
    if constexpr (kSquares) {
      m.sum_exp_sq += HorizontalSum(_mm256_add_ps(s2[0], s2[1]));
    }
  }
  return m;
}

// Stores 8 lanes at x + i, only those below n.
inline void StoreLanes(float* x, int i, int n, __m256 v) {
  if (i + 8 <= n) {
    _mm256_storeu_ps(x + i, v);
  } else {
    _mm256_maskstore_ps(x + i, FirstLanes(n - i), v);
  }
}

// A chunk of fewer than one row is a caller bug (the loops would not advance).
void CheckChunk(int chunk) {
  if (chunk < 1) {
    std::fprintf(stderr, "OutputForward/Backward: chunk %d < 1\n", chunk);
    std::abort();
  }
}

// Labels index wout's rows; an out-of-range one is a caller bug.
void CheckLabel(int32_t label, int V) {
  if (label < 0 || label >= V) {
    std::fprintf(stderr, "OutputForward/Backward: label %d outside [0, %d)\n",
                 label, V);
    std::abort();
  }
}

// ---- GELU, tanh form ----
// 0.5 x (1 + tanh(u)) = x * sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3);
// the sigmoid form has no cancellation near tanh(u) = -1.

struct GeluTerms {
  __m256 sig;    // sigmoid(2u)
  __m256 du_dx;  // du/dx
};

inline GeluTerms Gelu8(__m256 x) {
  const __m256 k = _mm256_set1_ps(0.7978845608028654f);
  const __m256 c = _mm256_set1_ps(0.044715f);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 x2 = _mm256_mul_ps(x, x);
  const __m256 u =
      _mm256_mul_ps(_mm256_mul_ps(k, x), _mm256_fmadd_ps(c, x2, one));
  const __m256 e = Exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
  GeluTerms t;
  t.sig = _mm256_div_ps(one, _mm256_add_ps(one, e));
  t.du_dx = _mm256_mul_ps(
      k, _mm256_fmadd_ps(_mm256_set1_ps(3.0f * 0.044715f), x2, one));
  return t;
}

// d/dx [x * sigmoid(2u)] = sig + 2 x sig (1 - sig) du/dx.
inline __m256 GeluGrad8(__m256 x) {
  const GeluTerms t = Gelu8(x);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 two_x_sig = _mm256_mul_ps(_mm256_add_ps(x, x), t.sig);
  const __m256 slope = _mm256_mul_ps(
      _mm256_mul_ps(two_x_sig, _mm256_sub_ps(one, t.sig)), t.du_dx);
  return _mm256_add_ps(t.sig, slope);
}

// sigmoid(x) on 8 lanes: 1 / (1 + exp(-x)); exp(-x) = +inf gives exactly 0.
inline __m256 Sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(
      one, _mm256_add_ps(one, Exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// Rotates the query and key heads of every row by +theta (sign 1) or -theta
// (sign -1); see Backend::RopeForward. Rows are independent.
void Rotate(float* qkv, const int32_t* pos, const float* cos, const float* sin,
            int N, int NH, int NKV, int hs, float sign) {
  const int h = hs / 2;
  const size_t row = static_cast<size_t>(NH + 2 * NKV) * hs;
#pragma omp parallel for schedule(static) if (row * N >= kMinParallel)
  for (int n = 0; n < N; ++n) {
    const float* c = cos + static_cast<size_t>(pos[n]) * h;
    const float* s = sin + static_cast<size_t>(pos[n]) * h;
    for (int head = 0; head < NH + NKV; ++head) {
      float* x1 = qkv + n * row + static_cast<size_t>(head) * hs;
      float* x2 = x1 + h;
#pragma omp simd
      for (int i = 0; i < h; ++i) {
        const float a = x1[i], b = x2[i], si = sign * s[i];
        x1[i] = a * c[i] - b * si;
        x2[i] = b * c[i] + a * si;
      }
    }
  }
}

}  // namespace

CpuBackend::CpuBackend() = default;

float* CpuBackend::Alloc(size_t n) {
  return static_cast<float*>(::operator new (
      std::max<size_t>(n, 1) * sizeof(float), std::align_val_t{kAlignment}));
}

void CpuBackend::Free(float* p) {
  ::operator delete (p, std::align_val_t{kAlignment});
}

void CpuBackend::Zero(float* p, size_t n) {
  ParallelSlices(n, [&](size_t b, size_t e) {
    std::memset(p + b, 0, (e - b) * sizeof(float));
  });
}

void CpuBackend::CopyToDevice(float* dst, const float* host_src, size_t n) {
  ParallelSlices(n, [&](size_t b, size_t e) {
    std::memcpy(dst + b, host_src + b, (e - b) * sizeof(float));
  });
}

void CpuBackend::CopyToHost(float* host_dst, const float* src, size_t n) {
  CopyToDevice(host_dst, src, n);
}

void CpuBackend::EmbeddingForward(float* out, const int32_t* ids,
                                  const int32_t* pos, const float* wte,
                                  const float* wpe, int N, int C) {
#pragma omp parallel for schedule(static) if (size_t{1} * N * C >= kMinParallel)
  for (int n = 0; n < N; ++n) {
    const float* tok = wte + static_cast<size_t>(ids[n]) * C;
    float* o = out + static_cast<size_t>(n) * C;
    if (wpe != nullptr) {
      const float* p = wpe + static_cast<size_t>(pos[n]) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = tok[c] + p[c];
    } else {
      std::memcpy(o, tok, C * sizeof(float));
    }
  }
}

void CpuBackend::EmbeddingBackward(float* dwte, float* dwpe, const float* dout,
                                   const int32_t* ids, const int32_t* pos,
                                   int N, int C) {
  // Threads own column tiles and walk the rows in order, so repeated ids
  // accumulate in a fixed order without atomics.
  ParallelColumnTiles(C, N, [&](int c0, int c1) {
    for (int n = 0; n < N; ++n) {
      const float* d = dout + static_cast<size_t>(n) * C;
      if (dwte != nullptr) {
        float* g = dwte + static_cast<size_t>(ids[n]) * C;
#pragma omp simd
        for (int c = c0; c < c1; ++c) g[c] += d[c];
      }
      if (dwpe != nullptr) {
        float* g = dwpe + static_cast<size_t>(pos[n]) * C;
#pragma omp simd
        for (int c = c0; c < c1; ++c) g[c] += d[c];
      }
    }
  });
}

void CpuBackend::LayerNormForward(float* out, float* mean, float* rstd,
                                  const float* inp, const float* weight,
                                  const float* bias, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if (size_t{1} * N * C >= kMinParallel)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; ++c) sum += x[c];
    const float mu = sum / C;
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int c = 0; c < C; ++c) sq += (x[c] - mu) * (x[c] - mu);
    const float rs = 1.0f / std::sqrt(sq / C + eps);
    float* o = out + static_cast<size_t>(n) * C;
    if (bias != nullptr) {
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = (x[c] - mu) * rs * weight[c] + bias[c];
    } else {
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = (x[c] - mu) * rs * weight[c];
    }
    mean[n] = mu;
    rstd[n] = rs;
  }
}

void CpuBackend::LayerNormBackward(float* dinp, float* dweight, float* dbias,
                                   const float* dout, const float* inp,
                                   const float* weight, const float* mean,
                                   const float* rstd, int N, int C) {
  if (dinp != nullptr) {
#pragma omp parallel for schedule(static) if (size_t{1} * N * C >= kMinParallel)
    for (int n = 0; n < N; ++n) {
      const float* x = inp + static_cast<size_t>(n) * C;
      const float* d = dout + static_cast<size_t>(n) * C;
      const float mu = mean[n], rs = rstd[n];
      // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight.
      float g_sum = 0.0f, g_xhat_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, g_xhat_sum)
      for (int c = 0; c < C; ++c) {
        const float g = d[c] * weight[c];
        g_sum += g;
        g_xhat_sum += g * ((x[c] - mu) * rs);
      }
      const float g_mean = g_sum / C, g_xhat_mean = g_xhat_sum / C;
      float* dx = dinp + static_cast<size_t>(n) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) {
        const float xhat = (x[c] - mu) * rs;
        dx[c] += rs * (d[c] * weight[c] - g_mean - xhat * g_xhat_mean);
      }
    }
  }
  if (dweight == nullptr && dbias == nullptr) return;
  ParallelColumnTiles(C, N, [&](int c0, int c1) {
    float dw[kColumnTile] = {0.0f}, db[kColumnTile] = {0.0f};
    const int width = c1 - c0;
    for (int n = 0; n < N; ++n) {
      const float* x = inp + static_cast<size_t>(n) * C + c0;
      const float* d = dout + static_cast<size_t>(n) * C + c0;
      const float mu = mean[n], rs = rstd[n];
#pragma omp simd
      for (int c = 0; c < width; ++c) {
        dw[c] += d[c] * ((x[c] - mu) * rs);
        db[c] += d[c];
      }
    }
    for (int c = 0; c < width; ++c) {
      if (dweight != nullptr) dweight[c0 + c] += dw[c];
      if (dbias != nullptr) dbias[c0 + c] += db[c];
    }
  });
}

void CpuBackend::RmsNormForward(float* out, float* rstd, const float* inp,
                                const float* weight, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if (size_t{1} * N * C >= kMinParallel)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int c = 0; c < C; ++c) sq += x[c] * x[c];
    const float rs = 1.0f / std::sqrt(sq / C + eps);
    float* o = out + static_cast<size_t>(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = x[c] * rs * weight[c];
    rstd[n] = rs;
  }
}

void CpuBackend::RmsNormBackward(float* dinp, float* dweight, const float* dout,
                                 const float* inp, const float* weight,
                                 const float* rstd, int N, int C) {
  if (dinp != nullptr) {
#pragma omp parallel for schedule(static) if (size_t{1} * N * C >= kMinParallel)
    for (int n = 0; n < N; ++n) {
      const float* x = inp + static_cast<size_t>(n) * C;
      const float* d = dout + static_cast<size_t>(n) * C;
      const float rs = rstd[n];
      // dx = rs * g - x * rs^3 * mean(g * x), g = dout * weight.
      float g_x_sum = 0.0f;
#pragma omp simd reduction(+ : g_x_sum)
      for (int c = 0; c < C; ++c) g_x_sum += d[c] * weight[c] * x[c];
      const float k = rs * rs * rs * (g_x_sum / C);
      float* dx = dinp + static_cast<size_t>(n) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) dx[c] += rs * d[c] * weight[c] - x[c] * k;
    }
  }
  if (dweight == nullptr) return;
  ParallelColumnTiles(C, N, [&](int c0, int c1) {
    float dw[kColumnTile] = {0.0f};
    const int width = c1 - c0;
    for (int n = 0; n < N; ++n) {
      const float* x = inp + static_cast<size_t>(n) * C + c0;
      const float* d = dout + static_cast<size_t>(n) * C + c0;
      const float rs = rstd[n];
#pragma omp simd
      for (int c = 0; c < width; ++c) dw[c] += d[c] * (x[c] * rs);
    }
    for (int c = 0; c < width; ++c) dweight[c0 + c] += dw[c];
  });
}

void CpuBackend::RowMeans(float* out, const float* in, int N, int width,
                          int stride) {
#pragma omp parallel for schedule(static) if (size_t{1} * N * width >= 1 << 16)
  for (int r = 0; r < N; ++r) {
    const float* row = in + static_cast<size_t>(r) * stride;
    double sum = 0;
    for (int c = 0; c < width; ++c) sum += row[c];
    out[r] = static_cast<float>(sum / width);
  }
}

void CpuBackend::MatmulForward(float* out, const float* inp,
                               const float* weight, const float* bias, int N,
                               int C, int OC) {
  SingleThreadedBlas blas;
#pragma omp parallel if (double{1} * N * C * OC >= kMinParallelMacs)
  {
    if (bias != nullptr) {
#pragma omp for schedule(static)
      for (int n = 0; n < N; ++n) {
        std::memcpy(out + static_cast<size_t>(n) * OC, bias,
                    OC * sizeof(float));
      }
    }
    GemmPart(false, true, N, OC, C, 1.0f, inp, C, weight, C,
             bias != nullptr ? 1.0f : 0.0f, out, OC);
  }
}

void CpuBackend::MatmulBackward(float* dinp, float* dweight, float* dbias,
                                const float* dout, const float* inp,
                                const float* weight, int N, int C, int OC) {
  {
    SingleThreadedBlas blas;
#pragma omp parallel if (double{1} * N * C * OC >= kMinParallelMacs)
    {
      if (dinp != nullptr) {
        GemmPart(false, false, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp,
                 C);
      }
      if (dweight != nullptr) {
        GemmPart(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight,
                 C);
      }
    }
  }
  if (dbias == nullptr) return;
  ParallelColumnTiles(OC, N, [&](int c0, int c1) {
    float acc[kColumnTile] = {0.0f};
    const int width = c1 - c0;
    for (int n = 0; n < N; ++n) {
      const float* d = dout + static_cast<size_t>(n) * OC + c0;
#pragma omp simd
      for (int c = 0; c < width; ++c) acc[c] += d[c];
    }
    for (int c = 0; c < width; ++c) dbias[c0 + c] += acc[c];
  });
}

void CpuBackend::GeluForward(float* out, const float* inp, size_t n) {
  ParallelSlices(n, [&](size_t b, size_t e) {
    size_t i = b;
    for (; i + 8 <= e; i += 8) {
      const __m256 x = _mm256_loadu_ps(inp + i);
      _mm256_storeu_ps(out + i, _mm256_mul_ps(x, Gelu8(x).sig));
    }
    if (i < e) {
      const __m256i mask = FirstLanes(static_cast<int>(e - i));
      const __m256 x = _mm256_maskload_ps(inp + i, mask);
      _mm256_maskstore_ps(out + i, mask, _mm256_mul_ps(x, Gelu8(x).sig));
    }
  });
}

void CpuBackend::GeluBackward(float* dinp, const float* inp, const float* dout,
                              size_t n) {
  ParallelSlices(n, [&](size_t b, size_t e) {
    size_t i = b;
    for (; i + 8 <= e; i += 8) {
      const __m256 g = GeluGrad8(_mm256_loadu_ps(inp + i));
      _mm256_storeu_ps(dinp + i, _mm256_fmadd_ps(g, _mm256_loadu_ps(dout + i),
                                                 _mm256_loadu_ps(dinp + i)));
    }
    if (i < e) {
      const __m256i mask = FirstLanes(static_cast<int>(e - i));
      const __m256 g = GeluGrad8(_mm256_maskload_ps(inp + i, mask));
      _mm256_maskstore_ps(dinp + i, mask,
                          _mm256_fmadd_ps(g, _mm256_maskload_ps(dout + i, mask),
                                          _mm256_maskload_ps(dinp + i, mask)));
    }
  });
}

void CpuBackend::SwiGluForward(float* out, const float* gate_up, int N,
                               int FF) {
#pragma omp parallel for schedule(static) if (size_t{1} * N * FF >= \
                                              kMinParallel)
  for (int n = 0; n < N; ++n) {
    const float* gate = gate_up + static_cast<size_t>(n) * 2 * FF;
    const float* up = gate + FF;
    float* o = out + static_cast<size_t>(n) * FF;
    for (int j = 0; j < FF; j += 8) {
      const __m256i mask = FirstLanes(std::min(8, FF - j));
      const __m256 g = _mm256_maskload_ps(gate + j, mask);
      const __m256 u = _mm256_maskload_ps(up + j, mask);
      StoreLanes(o, j, FF, _mm256_mul_ps(_mm256_mul_ps(g, Sigmoid8(g)), u));
    }
  }
}

void CpuBackend::SwiGluBackward(float* dgate_up, const float* gate_up,
                                const float* dout, int N, int FF) {
  const __m256 one = _mm256_set1_ps(1.0f);
#pragma omp parallel for schedule(static) if (size_t{1} * N * FF >= \
                                              kMinParallel)
  for (int n = 0; n < N; ++n) {
    const float* gate = gate_up + static_cast<size_t>(n) * 2 * FF;
    const float* up = gate + FF;
    const float* d = dout + static_cast<size_t>(n) * FF;
    float* dgate = dgate_up + static_cast<size_t>(n) * 2 * FF;
    float* dup = dgate + FF;
    for (int j = 0; j < FF; j += 8) {
      const __m256i mask = FirstLanes(std::min(8, FF - j));
      const __m256 g = _mm256_maskload_ps(gate + j, mask);
      const __m256 u = _mm256_maskload_ps(up + j, mask);
      const __m256 dj = _mm256_maskload_ps(d + j, mask);
      const __m256 sig = Sigmoid8(g);
      // silu'(g) = sig * (1 + g * (1 - sig)).
      const __m256 dsilu =
          _mm256_mul_ps(sig, _mm256_fmadd_ps(g, _mm256_sub_ps(one, sig), one));
      StoreLanes(dgate, j, FF,
                 _mm256_fmadd_ps(_mm256_mul_ps(dj, u), dsilu,
                                 _mm256_maskload_ps(dgate + j, mask)));
      StoreLanes(dup, j, FF,
                 _mm256_fmadd_ps(dj, _mm256_mul_ps(g, sig),
                                 _mm256_maskload_ps(dup + j, mask)));
    }
  }
}

void CpuBackend::Add(float* out, const float* a, const float* b, size_t n) {
  ParallelSlices(n, [&](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) out[i] = a[i] + b[i];
  });
}

void CpuBackend::Axpy(float* y, float alpha, const float* x, size_t n) {
  ParallelSlices(n, [&](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) y[i] += alpha * x[i];
  });
}

void CpuBackend::Multiply(float* out, const float* a, const float* b,
                          size_t n) {
  ParallelSlices(n, [&](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) out[i] = a[i] * b[i];
  });
}

void CpuBackend::WidenBf16(float* out, const uint16_t* in, size_t n) {
  // Integer moves only: a float conversion could quiet a NaN's payload.
  ParallelSlices(n, [&](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) {
      const uint32_t bits = static_cast<uint32_t>(in[i]) << 16;
      std::memcpy(&out[i], &bits, sizeof(bits));
    }
  });
}

bool CpuBackend::StoresAttentionProbs(const SeqSpan* spans, int num_seqs,
                                      int NH) const {
  return cpu::AttentionProbsFloats(spans, num_seqs, NH) <=
         stored_attention_limit_;
}

size_t CpuBackend::AttentionProbsSize(const SeqSpan* spans, int num_seqs,
                                      int NH) const {
  if (StoresAttentionProbs(spans, num_seqs, NH)) {
    return cpu::AttentionProbsFloats(spans, num_seqs, NH);
  }
  size_t rows = 0;
  for (int s = 0; s < num_seqs; ++s) {
    rows = std::max(rows, static_cast<size_t>(spans[s].start) + spans[s].len);
  }
  return rows * NH;
}

size_t CpuBackend::MaxAttentionProbsSize(int max_rows, int max_seq_len,
                                         int NH) const {
  // A stored batch has at most the limit and at most the fullest batch's
  // probabilities; a tiled one its row logsumexp.
  const std::vector<SeqSpan> fullest = FullestBatch(max_rows, max_seq_len);
  const size_t stored =
      std::min(stored_attention_limit_,
               cpu::AttentionProbsFloats(fullest.data(),
                                         static_cast<int>(fullest.size()), NH));
  return std::max(stored, static_cast<size_t>(std::max(max_rows, 0)) * NH);
}

void CpuBackend::AttentionForward(float* out, float* probs, const float* qkv,
                                  const SeqSpan* spans, int num_seqs, int NH,
                                  int NKV, int hs) {
  if (StoresAttentionProbs(spans, num_seqs, NH)) {
    StoredAttentionForward(out, probs, qkv, spans, num_seqs, NH, NKV, hs);
  } else {
    TiledAttentionForward(out, probs, qkv, spans, num_seqs, NH, NKV, hs);
  }
}

void CpuBackend::AttentionBackward(float* dqkv, const float* dout,
                                   const float* qkv, const float* out,
                                   const float* probs, const SeqSpan* spans,
                                   int num_seqs, int NH, int NKV, int hs) {
  if (StoresAttentionProbs(spans, num_seqs, NH)) {
    StoredAttentionBackward(dqkv, dout, qkv, probs, spans, num_seqs, NH, NKV,
                            hs);
  } else {
    TiledAttentionBackward(dqkv, dout, qkv, out, probs, spans, num_seqs, NH,
                           NKV, hs);
  }
}

float* CpuBackend::AttentionScratch(size_t per_thread) {
  const size_t scratch = per_thread * omp_get_max_threads();
  if (attention_scratch_.size() < scratch) attention_scratch_.resize(scratch);
  return attention_scratch_.data();
}

void CpuBackend::TiledAttentionForward(float* out, float* lse, const float* qkv,
                                       const SeqSpan* spans, int num_seqs,
                                       int NH, int NKV, int hs) {
  const int row = (NH + 2 * NKV) * hs;
  const int out_row = NH * hs;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int group = NH / NKV;
  const size_t per_thread =
      static_cast<size_t>(kAttentionBlock) * MaxLen(spans, num_seqs);
  float* const scratch_base = AttentionScratch(per_thread);
  SingleThreadedBlas blas;
  const bool parallel =
      AttentionMacs(spans, num_seqs, NH, hs) >= kMinParallelMacs;
  // One (sequence, query head) per iteration. Iterations write disjoint
  // outputs, so the dynamic schedule (sequences differ in length) cannot change
  // any result.
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int unit = 0; unit < num_seqs * NH; ++unit) {
    const int s = unit / NH, h = unit % NH, kv = h / group;
    const int T = spans[s].len;
    const float* base = qkv + static_cast<size_t>(spans[s].start) * row;
    const float* Q = base + h * hs;
    const float* K = base + (NH + kv) * hs;
    const float* V = base + (NH + NKV + kv) * hs;
    float* O = out + static_cast<size_t>(spans[s].start) * out_row + h * hs;
    float* L = lse + static_cast<size_t>(spans[s].start) * NH + h;
    // The probabilities of one block of query rows live only here, so the
    // memory of an attention grows with T, not T^2.
    float* P = scratch_base + per_thread * omp_get_thread_num();
    for (int i0 = 0; i0 < T; i0 += kAttentionBlock) {
      const int i1 = std::min(T, i0 + kAttentionBlock);
      // Scores of rows [i0, i1) against keys [0, i1).
      Sgemm(false, true, i1 - i0, i1, hs, scale,
            Q + static_cast<size_t>(i0) * row, row, K, row, 0.0f, P, i1);
      for (int i = i0; i < i1; ++i) {
        float* p = P + static_cast<size_t>(i - i0) * i1;
        const float max_score = RowMax(p, i + 1);
        const float sum = static_cast<float>(
            ExpShifted(p, i + 1, max_score,
                       [&](int j, __m256 y) { StoreLanes(p, j, i + 1, y); }));
        L[static_cast<size_t>(i) * NH] = max_score + std::log(sum);
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j <= i; ++j) p[j] *= inv;
        std::fill(p + i + 1, p + i1, 0.0f);
      }
      Sgemm(false, false, i1 - i0, hs, i1, 1.0f, P, i1, V, row, 0.0f,
            O + static_cast<size_t>(i0) * out_row, out_row);
    }
  }
}

void CpuBackend::StoredAttentionForward(float* out, float* probs,
                                        const float* qkv, const SeqSpan* spans,
                                        int num_seqs, int NH, int NKV, int hs) {
  const int row = (NH + 2 * NKV) * hs;
  const int out_row = NH * hs;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int group = NH / NKV;
  SingleThreadedBlas blas;
  const bool parallel =
      AttentionMacs(spans, num_seqs, NH, hs) >= kMinParallelMacs;
  // One (sequence, query head) per iteration. Iterations write disjoint
  // outputs, so the dynamic schedule (sequences differ in length) cannot change
  // any result.
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int unit = 0; unit < num_seqs * NH; ++unit) {
    const int s = unit / NH, h = unit % NH, kv = h / group;
    const int T = spans[s].len;
    const float* base = qkv + static_cast<size_t>(spans[s].start) * row;
    const float* Q = base + h * hs;
    const float* K = base + (NH + kv) * hs;
    const float* V = base + (NH + NKV + kv) * hs;
    float* O = out + static_cast<size_t>(spans[s].start) * out_row + h * hs;
    float* P = probs + cpu::AttentionProbsOffset(spans, s, NH) +
               static_cast<size_t>(h) * T * T;
    for (int i0 = 0; i0 < T; i0 += kAttentionBlock) {
      const int i1 = std::min(T, i0 + kAttentionBlock);
      float* Pb = P + static_cast<size_t>(i0) * T;
      // Scores of rows [i0, i1) against keys [0, i1).
      Sgemm(false, true, i1 - i0, i1, hs, scale,
            Q + static_cast<size_t>(i0) * row, row, K, row, 0.0f, Pb, T);
      for (int i = i0; i < i1; ++i) {
        float* p = P + static_cast<size_t>(i) * T;
        const float max_score = RowMax(p, i + 1);
        const float sum = static_cast<float>(
            ExpShifted(p, i + 1, max_score,
                       [&](int j, __m256 y) { StoreLanes(p, j, i + 1, y); }));
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j <= i; ++j) p[j] *= inv;
        std::memset(p + i + 1, 0, (T - i - 1) * sizeof(float));
      }
      Sgemm(false, false, i1 - i0, hs, i1, 1.0f, Pb, T, V, row, 0.0f,
            O + static_cast<size_t>(i0) * out_row, out_row);
    }
  }
}

void CpuBackend::CachedAttentionForward(float* out, const float* qkv, int past,
                                        int n, int NH, int NKV, int hs) {
  const int row = (NH + 2 * NKV) * hs;
  const int out_row = NH * hs;
  const int T = past + n;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int group = NH / NKV;
  // Scores of one block of new rows against every key they may see.
  const size_t per_thread = static_cast<size_t>(kAttentionBlock) * T;
  float* const scratch_base = AttentionScratch(per_thread);
  SingleThreadedBlas blas;
  const bool parallel = double{1} * NH * n * T * hs >= kMinParallelMacs;
  // One query head per iteration; iterations write disjoint outputs.
#pragma omp parallel for schedule(static) if (parallel)
  for (int h = 0; h < NH; ++h) {
    const int kv = h / group;
    const float* K = qkv + (NH + kv) * hs;
    const float* V = qkv + (NH + NKV + kv) * hs;
    float* S = scratch_base + per_thread * omp_get_thread_num();
    for (int i0 = 0; i0 < n; i0 += kAttentionBlock) {
      const int i1 = std::min(n, i0 + kAttentionBlock);
      const int keys = past + i1;
      Sgemm(false, true, i1 - i0, keys, hs, scale,
            qkv + static_cast<size_t>(past + i0) * row + h * hs, row, K, row,
            0.0f, S, keys);
      for (int i = i0; i < i1; ++i) {
        float* p = S + static_cast<size_t>(i - i0) * keys;
        const int seen = past + i + 1;
        const float max_score = RowMax(p, seen);
        const float sum = static_cast<float>(
            ExpShifted(p, seen, max_score,
                       [&](int j, __m256 y) { StoreLanes(p, j, seen, y); }));
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < seen; ++j) p[j] *= inv;
        std::memset(p + seen, 0, (keys - seen) * sizeof(float));
      }
      Sgemm(false, false, i1 - i0, hs, keys, 1.0f, S, keys, V, row, 0.0f,
            out + static_cast<size_t>(i0) * out_row + h * hs, out_row);
    }
  }
}

void CpuBackend::TiledAttentionBackward(float* dqkv, const float* dout,
                                        const float* qkv, const float* out,
                                        const float* lse, const SeqSpan* spans,
                                        int num_seqs, int NH, int NKV, int hs) {
  const int row = (NH + 2 * NKV) * hs;
  const int out_row = NH * hs;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int group = NH / NKV;
  // Per thread: the recomputed probabilities and dS of one tile, and the row
  // terms of one sequence.
  const size_t tile_floats = static_cast<size_t>(kTiledQueries) * kTiledKeys;
  const size_t per_thread = 2 * tile_floats + MaxLen(spans, num_seqs);
  float* const scratch_base = AttentionScratch(per_thread);

  SingleThreadedBlas blas;
  const bool parallel =
      AttentionMacs(spans, num_seqs, NH, hs) >= kMinParallelMacs;
  // One (sequence, KV head) per iteration: the query heads sharing a KV head
  // all add into its dK and dV, so they run in order inside one iteration.
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int unit = 0; unit < num_seqs * NKV; ++unit) {
    const int s = unit / NKV, kv = unit % NKV;
    const int T = spans[s].len;
    const size_t first = spans[s].start;
    const float* K = qkv + first * row + (NH + kv) * hs;
    const float* V = qkv + first * row + (NH + NKV + kv) * hs;
    float* dK = dqkv + first * row + (NH + kv) * hs;
    float* dV = dqkv + first * row + (NH + NKV + kv) * hs;
    float* P = scratch_base + per_thread * omp_get_thread_num();
    float* dS = P + tile_floats;
    float* D = dS + tile_floats;
    for (int h = kv * group; h < (kv + 1) * group; ++h) {
      const float* Q = qkv + first * row + h * hs;
      float* dQ = dqkv + first * row + h * hs;
      const float* dO = dout + first * out_row + h * hs;
      const float* O = out + first * out_row + h * hs;
      const float* L = lse + first * NH + h;
      // The softmax backward's row term rowsum(P * dP) = rowsum(dO * O)
      // (FlashAttention-2), so that no tile needs the rest of its row.
      for (int i = 0; i < T; ++i) {
        const float* o = O + static_cast<size_t>(i) * out_row;
        const float* d_o = dO + static_cast<size_t>(i) * out_row;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < hs; ++d) dot += o[d] * d_o[d];
        D[i] = dot;
      }
      // One tile: query rows [c0, c1) against keys [j0, j1). A tile's P and
      // dS stay in cache from their GEMMs to the three that consume them.
      const auto tile = [&](int c0, int c1, int j0, int j1) {
        const int rows = c1 - c0, keys = j1 - j0;
        const float* Qc = Q + static_cast<size_t>(c0) * row;
        const float* dOc = dO + static_cast<size_t>(c0) * out_row;
        const float* Kj = K + static_cast<size_t>(j0) * row;
        const float* Vj = V + static_cast<size_t>(j0) * row;
        // The forward's probabilities, recomputed from the scores and the
        // saved logsumexp: P = exp(scale * Q_c K_j^T - lse); dP = dO_c V_j^T
        // into dS.
        Sgemm(false, true, rows, keys, hs, scale, Qc, row, Kj, row, 0.0f, P,
              keys);
        Sgemm(false, true, rows, keys, hs, 1.0f, dOc, out_row, Vj, row, 0.0f,
              dS, keys);
        // dS = P * (dP - D) * scale; row i sees keys j <= i only.
        for (int r = 0; r < rows; ++r) {
          const int i = c0 + r;
          const int seen = std::min(keys, i - j0 + 1);
          float* p = P + static_cast<size_t>(r) * keys;
          float* ds = dS + static_cast<size_t>(r) * keys;
          const __m256 row_lse = _mm256_set1_ps(L[static_cast<size_t>(i) * NH]);
          const __m256 row_d = _mm256_set1_ps(D[i]);
          const __m256 scale8 = _mm256_set1_ps(scale);
          for (int j = 0; j < keys; j += 8) {
            const __m256i in = FirstLanes(std::min(8, keys - j));
            const __m256 visible = _mm256_castsi256_ps(
                FirstLanes(std::max(0, std::min(8, seen - j))));
            const __m256 y = _mm256_and_ps(
                Exp8(_mm256_sub_ps(_mm256_maskload_ps(p + j, in), row_lse)),
                visible);
            const __m256 g = _mm256_mul_ps(
                _mm256_mul_ps(
                    y, _mm256_sub_ps(_mm256_maskload_ps(ds + j, in), row_d)),
                scale8);
            _mm256_maskstore_ps(p + j, in, y);
            _mm256_maskstore_ps(ds + j, in, g);
          }
        }
        // dV_j += P^T dO_c; dK_j += dS^T Q_c; dQ_c += dS K_j.
        Sgemm(true, false, keys, hs, rows, 1.0f, P, keys, dOc, out_row, 1.0f,
              dV + static_cast<size_t>(j0) * row, row);
        Sgemm(true, false, keys, hs, rows, 1.0f, dS, keys, Qc, row, 1.0f,
              dK + static_cast<size_t>(j0) * row, row);
        Sgemm(false, false, rows, hs, keys, 1.0f, dS, keys, Kj, row, 1.0f,
              dQ + static_cast<size_t>(c0) * row, row);
      };
      // Key blocks [j0, j1) outside, the query rows that see them inside, so
      // that dK and dV of a key block take long updates. Within the key
      // block's own rows (the causal diagonal), strips of kAttentionBlock rows
      // each take only the keys up to their last row: a large key block then
      // wastes no more of the masked triangle than a small one.
      for (int j0 = 0; j0 < T; j0 += kTiledKeys) {
        const int j1 = std::min(T, j0 + kTiledKeys);
        for (int r0 = j0; r0 < j1; r0 += kAttentionBlock) {
          const int r1 = std::min(j1, r0 + kAttentionBlock);
          tile(r0, r1, j0, r1);
        }
        for (int c0 = j1; c0 < T; c0 += kTiledQueries) {
          tile(c0, std::min(T, c0 + kTiledQueries), j0, j1);
        }
      }
    }
  }
}

void CpuBackend::StoredAttentionBackward(float* dqkv, const float* dout,
                                         const float* qkv, const float* probs,
                                         const SeqSpan* spans, int num_seqs,
                                         int NH, int NKV, int hs) {
  const int row = (NH + 2 * NKV) * hs;
  const int out_row = NH * hs;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int group = NH / NKV;
  int max_len = 0;
  for (int s = 0; s < num_seqs; ++s) max_len = std::max(max_len, spans[s].len);
  const size_t per_thread = static_cast<size_t>(kAttentionBlock) * max_len;
  const size_t scratch = per_thread * omp_get_max_threads();
  if (attention_scratch_.size() < scratch) attention_scratch_.resize(scratch);
  float* const scratch_base = attention_scratch_.data();

  SingleThreadedBlas blas;
  const bool parallel =
      AttentionMacs(spans, num_seqs, NH, hs) >= kMinParallelMacs;
  // One (sequence, KV head) per iteration: the query heads sharing a KV head
  // all add into its dK and dV, so they run in order inside one iteration.
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int unit = 0; unit < num_seqs * NKV; ++unit) {
    const int s = unit / NKV, kv = unit % NKV;
    const int T = spans[s].len;
    const size_t first = spans[s].start;
    const float* K = qkv + first * row + (NH + kv) * hs;
    const float* V = qkv + first * row + (NH + NKV + kv) * hs;
    float* dK = dqkv + first * row + (NH + kv) * hs;
    float* dV = dqkv + first * row + (NH + NKV + kv) * hs;
    float* dS = scratch_base + per_thread * omp_get_thread_num();
    for (int h = kv * group; h < (kv + 1) * group; ++h) {
      const float* Q = qkv + first * row + h * hs;
      float* dQ = dqkv + first * row + h * hs;
      const float* dO = dout + first * out_row + h * hs;
      const float* P = probs + cpu::AttentionProbsOffset(spans, s, NH) +
                       static_cast<size_t>(h) * T * T;
      for (int i0 = 0; i0 < T; i0 += kAttentionBlock) {
        const int i1 = std::min(T, i0 + kAttentionBlock);
        const int rows = i1 - i0;
        const float* Pb = P + static_cast<size_t>(i0) * T;
        const float* dOb = dO + static_cast<size_t>(i0) * out_row;
        // dP = dO_b @ V[0:i1]^T, into dS (rows x i1).
        Sgemm(false, true, rows, i1, hs, 1.0f, dOb, out_row, V, row, 0.0f, dS,
              i1);
        // dV[0:i1] += P_b^T @ dO_b.
        Sgemm(true, false, i1, hs, rows, 1.0f, Pb, T, dOb, out_row, 1.0f, dV,
              row);
        // Softmax backward: dS = P * (dP - rowsum(P * dP)) * scale.
        for (int r = 0; r < rows; ++r) {
          const int i = i0 + r;
          const float* p = Pb + static_cast<size_t>(r) * T;
          float* ds = dS + static_cast<size_t>(r) * i1;
          float p_dot_dp = 0.0f;
#pragma omp simd reduction(+ : p_dot_dp)
          for (int j = 0; j <= i; ++j) p_dot_dp += p[j] * ds[j];
#pragma omp simd
          for (int j = 0; j <= i; ++j)
            ds[j] = p[j] * (ds[j] - p_dot_dp) * scale;
          std::fill(ds + i + 1, ds + i1, 0.0f);
        }
        // dQ_b += dS @ K[0:i1]; dK[0:i1] += dS^T @ Q_b.
        Sgemm(false, false, rows, hs, i1, 1.0f, dS, i1, K, row, 1.0f,
              dQ + static_cast<size_t>(i0) * row, row);
        Sgemm(true, false, i1, hs, rows, 1.0f, dS, i1,
              Q + static_cast<size_t>(i0) * row, row, 1.0f, dK, row);
      }
    }
  }
}

void CpuBackend::RopeForward(float* qkv, const int32_t* pos, const float* cos,
                             const float* sin, int N, int NH, int NKV, int hs) {
  Rotate(qkv, pos, cos, sin, N, NH, NKV, hs, 1.0f);
}

void CpuBackend::RopeBackward(float* dqkv, const int32_t* pos, const float* cos,
                              const float* sin, int N, int NH, int NKV,
                              int hs) {
  Rotate(dqkv, pos, cos, sin, N, NH, NKV, hs, -1.0f);
}

void CpuBackend::OutputForward(float* lse, float* logp, float* logit_sum,
                               int32_t* correct, float* entropy,
                               float* log_sum_sq_probs, const float* h,
                               const float* wout, const int32_t* labels, int N,
                               int C, int V, float* chunk_buf, int chunk) {
  CheckChunk(chunk);
  SingleThreadedBlas blas;
#pragma omp parallel if (double{1} * N * C * V >= kMinParallelMacs)
  for (int n0 = 0; n0 < N; n0 += chunk) {
    const int rows = std::min(chunk, N - n0);
    GemmPart(false, true, rows, V, C, 1.0f, h + static_cast<size_t>(n0) * C, C,
             wout, C, 0.0f, chunk_buf, V);
#pragma omp barrier
    // The implicit barrier at the end of this loop keeps the next chunk's
    // GEMM from overwriting logits still being read.
#pragma omp for schedule(static)
    for (int r = 0; r < rows; ++r) {
      const int n = n0 + r;
      CheckLabel(labels[n], V);
      const float* z = chunk_buf + static_cast<size_t>(r) * V;
      const float max_z = RowMax(z, V);
      // As in ReferenceBackend::OutputForward: H = log S0 - S1 / S0 and
      // log sum p^2 = log S2 - 2 log S0, every y <= 1 and S0, S2 >= 1.
      const ExpMoments mo = log_sum_sq_probs != nullptr
                                ? ExpShiftedMoments<true>(z, V, max_z)
                                : ExpShiftedMoments<false>(z, V, max_z);
      const double log_s0 = std::log(mo.sum_exp);
      const double l = max_z + log_s0;
      lse[n] = static_cast<float>(l);
      logp[n] = static_cast<float>(z[labels[n]] - l);
      logit_sum[n] = static_cast<float>(RowSum(z, V));
      correct[n] = FirstIndexOf(z, V, max_z) == labels[n] ? 1 : 0;
      entropy[n] = static_cast<float>(log_s0 - mo.sum_exp_shifted / mo.sum_exp);
      if (log_sum_sq_probs != nullptr) {
        log_sum_sq_probs[n] =
            static_cast<float>(std::log(mo.sum_exp_sq) - 2.0 * log_s0);
      }
    }
  }
}

void CpuBackend::OutputBackward(float* dh, float* dwout, const float* h,
                                const float* wout, const int32_t* labels,
                                const float* lse, const float* coef, int N,
                                int C, int V, float* chunk_buf, int chunk) {
  CheckChunk(chunk);
  SingleThreadedBlas blas;
#pragma omp parallel if (double{1} * N * C * V >= kMinParallelMacs)
  {
    // Every thread walks the same chunks: runs of at most `chunk` rows that
    // start and end on a row with a nonzero coefficient.
    int n0 = 0;
    while (true) {
      while (n0 < N && coef[n0] == 0.0f) ++n0;
      if (n0 == N) break;
      int n1 = std::min(N, n0 + chunk);
      while (coef[n1 - 1] == 0.0f) --n1;
      const int rows = n1 - n0;
      const float* hb = h + static_cast<size_t>(n0) * C;
      GemmPart(false, true, rows, V, C, 1.0f, hb, C, wout, C, 0.0f, chunk_buf,
               V);
#pragma omp barrier
      // dz = coef * (softmax(z) - onehot(label)), in place.
#pragma omp for schedule(static)
      for (int r = 0; r < rows; ++r) {
        const int n = n0 + r;
        float* z = chunk_buf + static_cast<size_t>(r) * V;
        const float c = coef[n];
        if (c == 0.0f) {
          std::memset(z, 0, V * sizeof(float));
          continue;
        }
        CheckLabel(labels[n], V);
        const __m256 vc = _mm256_set1_ps(c);
        ExpShifted(z, V, lse[n], [&](int j, __m256 y) {
          StoreLanes(z, j, V, _mm256_mul_ps(vc, y));
        });
        z[labels[n]] -= c;
      }
      if (dh != nullptr) {
        GemmPart(false, false, rows, C, V, 1.0f, chunk_buf, V, wout, C, 1.0f,
                 dh + static_cast<size_t>(n0) * C, C);
      }
      if (dwout != nullptr) {
        GemmPart(true, false, V, C, rows, 1.0f, chunk_buf, V, hb, C, 1.0f,
                 dwout, C);
      }
      // The next chunk's GEMM overwrites chunk_buf.
#pragma omp barrier
      n0 = n1;
    }
  }
}

double CpuBackend::SumSquares(const float* x, size_t n) {
  const size_t blocks = CeilDiv(n, kSumSquaresBlock);
  if (sum_partials_.size() < blocks) sum_partials_.resize(blocks);
  double* const partial = sum_partials_.data();
#pragma omp parallel for schedule(static) if (n >= 2 * kSumSquaresBlock)
  for (size_t b = 0; b < blocks; ++b) {
    const size_t end = std::min(n, (b + 1) * kSumSquaresBlock);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (size_t i = b * kSumSquaresBlock; i < end; ++i) {
      acc += static_cast<double>(x[i]) * x[i];
    }
    partial[b] = acc;
  }
  double total = 0.0;
  for (size_t b = 0; b < blocks; ++b) total += partial[b];
  return total;
}

void CpuBackend::Scale(float* x, float alpha, size_t n) {
  ParallelSlices(n, [&](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) x[i] *= alpha;
  });
}

void CpuBackend::AdamW(float* p, const float* grad, float* m, float* v,
                       size_t n, const AdamWParams& hp) {
  // torch.optim.AdamW (single-tensor path), as in ReferenceBackend::AdamW.
  const double bias_correction1 = 1.0 - std::pow(double{hp.beta1}, hp.step);
  const double bias_correction2 = 1.0 - std::pow(double{hp.beta2}, hp.step);
  const float decay = static_cast<float>(1.0 - double{hp.lr} * hp.weight_decay);
  const float step_size = static_cast<float>(hp.lr / bias_correction1);
  const float bias_correction2_sqrt =
      static_cast<float>(std::sqrt(bias_correction2));
  const float one_minus_beta1 = static_cast<float>(1.0 - hp.beta1);
  const float one_minus_beta2 = static_cast<float>(1.0 - hp.beta2);
  const float beta2 = hp.beta2, eps = hp.eps;
  ParallelSlices(n, [&](size_t begin, size_t end) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) {
      const float g = grad[i];
      const float mi = m[i] + one_minus_beta1 * (g - m[i]);
      const float vi = v[i] * beta2 + one_minus_beta2 * g * g;
      const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
      p[i] = p[i] * decay - step_size * (mi / denom);
      m[i] = mi;
      v[i] = vi;
    }
  });
}

}  // namespace prefopt::kernels
