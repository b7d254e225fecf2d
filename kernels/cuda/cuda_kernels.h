// The device kernels behind CudaBackend, as plain launch functions: each
// enqueues its work on `stream` and returns the launch status
// (cudaGetLastError), which the caller checks. Every pointer is device memory.
// Internal to //kernels/cuda; CudaBackend (cuda_backend.h) is the public face.
// The kernels live in one .cu file per family (embedding.cu, normalization.cu,
// elementwise.cu, rope.cu, attention.cu, cached_attention.cu, output_layer.cu,
// objectives.cu, optimizer.cu), with what several families share in
// device_common.cuh.
//
// Precision: the kernels read and write fp32 tensors (the bf16 operand copies
// for GEMMs and the output layer's bf16 dz aside) and accumulate in fp32
// (SumSquares in double). The build compiles with --use_fast_math, so exp,
// log and division default to the hardware approximations; where an op is
// held to the fp32 reference at 1e-5 the code says which operation it wants:
// exp through exp2f (ex2.approx, about 2 ulp), correctly rounded sqrt and
// division (__fsqrt_rn, __fdiv_rn, __frcp_rn, __frsqrt_rn), and, where the CPU
// reference's exact sequence of roundings is cheap to mirror (Axpy, AdamW),
// __fmul_rn/__fadd_rn, which the compiler never fuses into an FMA.
//
// Determinism: no kernel uses floating-point atomics; each output element is
// written by one thread whose summation order is fixed by the launch shape,
// and every launch shape is a function of the problem size alone.
#ifndef PREFOPT_KERNELS_CUDA_CUDA_KERNELS_H_
#define PREFOPT_KERNELS_CUDA_CUDA_KERNELS_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"

namespace prefopt::kernels::cuda {

// ---- embeddings ----
// out[n] = wte[ids[n]] + (wpe ? wpe[pos[n]] : 0).
cudaError_t EmbeddingForward(cudaStream_t stream, float* out,
                             const int32_t* ids, const int32_t* pos,
                             const float* wte, const float* wpe, int N, int C);
// Deterministic scatter-add without atomics: bucket b holds the rows
// rows[begin[b]..begin[b+1]) (ascending), all with table row keys[b]; one
// thread per (bucket, column) adds them to grad[keys[b]] in row order.
cudaError_t BucketAccumulate(cudaStream_t stream, float* grad,
                             const float* dout, const int32_t* rows,
                             const int32_t* keys, const int32_t* begin,
                             int num_buckets, int C);

// ---- normalization (one warp per row, fp32 accumulation) ----
cudaError_t LayerNormForward(cudaStream_t stream, float* out, float* mean,
                             float* rstd, const float* inp, const float* weight,
                             const float* bias, int N, int C, float eps);
// dinp += the input gradient; the parameter gradients come from
// ColumnGradients.
cudaError_t LayerNormBackwardInput(cudaStream_t stream, float* dinp,
                                   const float* dout, const float* inp,
                                   const float* weight, const float* mean,
                                   const float* rstd, int N, int C);
// Backend::RowMeans: one warp per row.
cudaError_t RowMeans(cudaStream_t stream, float* out, const float* in, int N,
                     int width, int stride);
cudaError_t RmsNormForward(cudaStream_t stream, float* out, float* rstd,
                           const float* inp, const float* weight, int N, int C,
                           float eps);
cudaError_t RmsNormBackwardInput(cudaStream_t stream, float* dinp,
                                 const float* dout, const float* inp,
                                 const float* weight, const float* rstd, int N,
                                 int C);

// Column sums over the N rows, reduced deterministically: fixed row slices
// give partial sums (ColumnSlices(N) x C floats in each of two scratch
// arrays), which a second kernel adds up in slice order into the outputs.
enum class ColumnGradient {
  kLayerNorm,  // out0 += sum dout * xhat, out1 += sum dout
  kRmsNorm,    // out0 += sum dout * inp * rstd
  kBias,       // out1 += sum dout
};
int ColumnSlices(int N);
// out0/out1 may be null (not wanted); inp/mean/rstd are read only where
// `kind` needs them. partials holds 2 * ColumnSlices(N) * C floats.
cudaError_t ColumnGradients(cudaStream_t stream, ColumnGradient kind,
                            float* out0, float* out1, const float* dout,
                            const float* inp, const float* mean,
                            const float* rstd, int N, int C, float* partials);
// out[n, :] += bias, for GEMMs whose bias epilogue cuBLASLt cannot fuse.
cudaError_t AddBias(cudaStream_t stream, float* out, const float* bias, int N,
                    int OC);

// ---- elementwise ----
cudaError_t GeluForward(cudaStream_t stream, float* out, const float* inp,
                        size_t n);
cudaError_t GeluBackward(cudaStream_t stream, float* dinp, const float* inp,
                         const float* dout, size_t n);
cudaError_t SwiGluForward(cudaStream_t stream, float* out, const float* gate_up,
                          int N, int FF);
cudaError_t SwiGluBackward(cudaStream_t stream, float* dgate_up,
                           const float* gate_up, const float* dout, int N,
                           int FF);
cudaError_t Add(cudaStream_t stream, float* out, const float* a, const float* b,
                size_t n);
cudaError_t Axpy(cudaStream_t stream, float* y, float alpha, const float* x,
                 size_t n);
cudaError_t Scale(cudaStream_t stream, float* x, float alpha, size_t n);
cudaError_t Multiply(cudaStream_t stream, float* out, const float* a,
                     const float* b, size_t n);
// out[i] = the fp32 value of the bf16 bits in[i], exactly (Backend::WidenBf16).
cudaError_t WidenBf16(cudaStream_t stream, float* out, const uint16_t* in,
                      size_t n);
// dst[i] = bf16(src[i]) with round-to-nearest-even; dst is n bf16 values.
cudaError_t ToBf16(cudaStream_t stream, void* dst, const float* src, size_t n);

// ---- rotary position embedding ----
// Rotates the NH query and NKV key heads of every row of qkv by +theta
// (sign = 1) or -theta (sign = -1); see Backend::RopeForward.
cudaError_t RopeRotate(cudaStream_t stream, float* qkv, const int32_t* pos,
                       const float* cos, const float* sin, int N, int NH,
                       int NKV, int hs, float sign);

// ---- attention (flash-attention-2 style; see attention.cu) ----
// One block's share of a packed sequence: rows
// [tile_start, tile_start + AttentionTileRows(hs)) of the sequence at rows
// [seq_start, seq_start + seq_len) of the batch (queries for the forward and
// dQ kernels, keys for the dK/dV kernel).
struct AttentionTile {
  int32_t seq_start;
  int32_t seq_len;
  int32_t tile_start;
  int32_t reserved;  // keeps the struct 16 bytes
};
// The largest head size the kernels take.
constexpr int kMaxAttentionHeadSize = 256;
// Rows per tile for a head size (64, or 32 above 128).
int AttentionTileRows(int hs);
// Dynamic shared memory one block needs.
size_t AttentionSmemBytes(bool bf16, int hs, bool backward);
// Forward over query tiles: out[N, NH*hs] and lse[N, NH] (natural log). With
// dout non-null it instead recomputes the output and writes
// dsum[n, h] = sum_d dout[n, h, d] * out[n, h, d] (backward's D), leaving out
// and lse alone. bf16: Q K^T and P V on tensor cores (bf16 in, fp32
// accumulate); otherwise fp32 throughout.
cudaError_t AttentionForward(cudaStream_t stream, bool bf16, float* out,
                             float* lse, const float* dout, float* dsum,
                             const float* qkv, const AttentionTile* q_tiles,
                             int num_q_tiles, int NH, int NKV, int hs);
// dqkv += the gradient, from lse and dsum (AttentionForward's outputs):
// one kernel over key tiles (dK, dV, summing a KV head's query heads in
// order), one over query tiles (dQ). No atomics.
cudaError_t AttentionBackward(cudaStream_t stream, bool bf16, float* dqkv,
                              const float* dout, const float* qkv,
                              const float* lse, const float* dsum,
                              const AttentionTile* q_tiles, int num_q_tiles,
                              const AttentionTile* k_tiles, int num_k_tiles,
                              int NH, int NKV, int hs);

// Incremental decoding: rows [past, past + n) of one sequence attending to
// rows [0, own row] (Backend::CachedAttentionForward). One block per (new
// row, head); scores holds n * NH * (past + n) floats of scratch. fp32 in
// both precisions: decoding is bound by reading the cache, not by math.
cudaError_t CachedAttentionForward(cudaStream_t stream, float* out,
                                   float* scores, const float* qkv, int past,
                                   int n, int NH, int NKV, int hs);

// ---- chunked output layer ----
// Per row r of logits[rows, V]: lse, logp = z[label] - lse, logit_sum,
// correct (argmax == label, first index on ties), the softmax's entropy and,
// unless log_sum_sq_probs is null, log sum_v p_v^2.
cudaError_t OutputRowStats(cudaStream_t stream, float* lse, float* logp,
                           float* logit_sum, int32_t* correct, float* entropy,
                           float* log_sum_sq_probs, const float* logits,
                           const int32_t* labels, int rows, int V);
// Overwrites logits[rows, V] with dz = coef * (softmax - onehot) (exact zeros
// where coef == 0). bf16: row r's dz is written as V bf16 values at the start
// of the row's own storage, so the bf16 matrix has a row stride of 2V.
cudaError_t OutputRowGrad(cudaStream_t stream, bool bf16, float* logits,
                          const int32_t* labels, const float* lse,
                          const float* coef, int rows, int V);

// SparsePO's two-model output layer: per row r of logits and ref_logits
// [rows, V], SparsePoRowStats' values (logit_sum, ref_logit_sum and entropy
// may be null).
cudaError_t SparsePoRowStats(cudaStream_t stream, float* lse, float* ref_lse,
                             float* logp, float* ref_logp, float* kl,
                             float* logit_sum, float* ref_logit_sum,
                             float* entropy, const float* logits,
                             const float* ref_logits, const int32_t* labels,
                             int rows, int V);
// Overwrites logits[rows, V] with SparsePO's logit gradient
// dz = (A + B) softmax(z) − B softmax(z̃) − A onehot (exact zeros where A and B
// are 0), in place as OutputRowGrad (bf16: row stride 2V).
cudaError_t SparsePoRowGrad(cudaStream_t stream, bool bf16, float* logits,
                            const float* ref_logits, const int32_t* labels,
                            const float* lse, const float* ref_lse,
                            const float* coef_a, const float* coef_b, int rows,
                            int V);

// ---- objectives (objectives.cu) ----
// Backend::ObjectiveCoefficients with spans, reference and reference_tokens
// in device memory (log_sum_sq and reference_tokens may be null where params
// reads none); scratch holds ObjectiveScratchDoubles(num_seqs) doubles.
size_t ObjectiveScratchDoubles(int num_seqs);
cudaError_t ObjectiveCoefficients(
    cudaStream_t stream, float* coef, double* metrics, const float* logp,
    const float* logit_sum, const int32_t* correct, const float* entropy,
    const float* log_sum_sq, const SeqSpan* spans, const double* reference,
    const float* reference_tokens, int num_seqs, const ObjectiveParams& params,
    double* scratch);

// ---- SparsePO's masks and pair objective (sparsepo.cu) ----
// Backend::SparsePoMaskForward/Backward; scratch holds
// SparsePoMaskScratchDoubles(shape, rows) doubles.
size_t SparsePoMaskScratchDoubles(const SparsePoMaskNetShape& shape, int rows);
cudaError_t SparsePoMaskForward(cudaStream_t stream, float* mask,
                                const float* hidden, int rows,
                                const float* params,
                                const SparsePoMaskNetShape& shape,
                                double* scratch);
cudaError_t SparsePoMaskBackward(cudaStream_t stream, float* grads,
                                 const float* dmask, const float* hidden,
                                 int rows, const float* params,
                                 const SparsePoMaskNetShape& shape,
                                 double* scratch);
// Backend::MapoMask with map_groups, groups (MapoGroup values) and spans in
// device memory; work holds 2 * rows doubles.
cudaError_t MapoMask(cudaStream_t stream, float* mask, const float* scores,
                     int rows, const int32_t* map_groups, int num_maps,
                     const int32_t* groups, int num_groups,
                     const SeqSpan* spans, int num_spans, double* work);
// Backend::SparsePoCoefficients with spans in device memory; pair_metrics
// holds num_pairs * kSparsePoMetricCount doubles.
cudaError_t SparsePoCoefficients(cudaStream_t stream,
                                 const SparsePoRowOutputs& out, double* metrics,
                                 const SparsePoRowInputs& in,
                                 const SeqSpan* spans, int num_pairs,
                                 const SparsePoParams& params,
                                 double* pair_metrics);

// ---- optimizer ----
// Blocks of the first SumSquares pass for n values (at most 1024; a function
// of n alone, so the reduction order does not depend on the device).
int SumSquaresBlocks(size_t n);
// result[0] = sum x^2 in double: per-block partials (SumSquaresBlocks(n)
// doubles in partials), then one block adds them in a fixed tree order.
cudaError_t SumSquares(cudaStream_t stream, double* result, double* partials,
                       const float* x, size_t n);
// torch.optim.AdamW's single-tensor step, operation for operation as the CPU
// reference (no fused multiply-adds), with the host-computed factors.
struct AdamWFactors {
  float decay;            // 1 - lr * weight_decay
  float one_minus_beta1;  // 1 - beta1
  float beta2;
  float one_minus_beta2;        // 1 - beta2
  float step_size;              // lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  float eps;
};
cudaError_t AdamW(cudaStream_t stream, float* p, const float* grad, float* m,
                  float* v, size_t n, const AdamWFactors& f);

}  // namespace prefopt::kernels::cuda

#endif  // PREFOPT_KERNELS_CUDA_CUDA_KERNELS_H_
