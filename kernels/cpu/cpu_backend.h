// The fast fp32 CPU backend: GEMMs through OpenBLAS, the other loops
// vectorized (AVX2/FMA) and parallelized with OpenMP. Same layouts and
// semantics as ReferenceBackend (kernels/cpu/reference.h), which it is tested
// against.
//
// Threads: an op runs on the OpenMP threads (omp_get_max_threads()), or on the
// calling thread alone when it is too small to gain from more. While an op
// runs, OpenBLAS is set to one thread per call and each OpenMP thread computes
// its own part of a GEMM, so the two thread pools never compete; the previous
// OpenBLAS thread count is restored when the op returns.
//
// Determinism: with the same inputs and the same OpenMP thread count, every op
// returns bitwise-identical results (no atomics; reductions run in a fixed
// order).
//
// A label outside [0, V) or a chunk < 1 in OutputForward/OutputBackward is a
// caller bug: it aborts with a message.
//
// Attention has two paths, chosen per batch by the bytes the probabilities
// would take (docs/architecture.md, "Attention memory"):
//  - stored: while NH * sum_s len_s^2 floats fit in stored_attention_limit(),
//    Forward saves the softmax probabilities (ReferenceBackend's layout) and
//    Backward reads them;
//  - tiled: above it, Forward saves only the row logsumexp, N * NH floats,
//    lse[n * NH + h] for row n and query head h (the CUDA backend's layout),
//    and Backward recomputes the probabilities tile by tile (128 keys by 256
//    query rows, 64-row strips on the causal diagonal) from q, k and the
//    logsumexp, with the softmax backward's row term rowsum(dout * out) from
//    the forward's output, so attention memory grows with T, not T^2.
// Both forwards work on blocks of 64 query rows; the two paths agree within
// fp32 rounding.
//
// Not thread-safe: one caller at a time. Scratch memory (attention, SumSquares
// partials) is allocated on first use and reused, growing only when a larger
// shape arrives.
#ifndef PREFOPT_KERNELS_CPU_CPU_BACKEND_H_
#define PREFOPT_KERNELS_CPU_CPU_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/fused_sparsepo.h"
#include "kernels/cpu/host_objective_ops.h"

namespace prefopt::kernels {

class CpuBackend : public HostObjectiveOps {
 public:
  CpuBackend();

  std::string Name() const override { return "cpu"; }

  // Allocations are 64-byte aligned.
  float* Alloc(size_t n) override;
  void Free(float* p) override;
  void Zero(float* p, size_t n) override;
  void CopyToDevice(float* dst, const float* host_src, size_t n) override;
  void CopyToHost(float* host_dst, const float* src, size_t n) override;
  void Copy(float* dst, const float* src, size_t n) override {
    CopyToDevice(dst, src, n);
  }

  void EmbeddingForward(float* out, const int32_t* ids, const int32_t* pos,
                        const float* wte, const float* wpe, int N,
                        int C) override;
  void EmbeddingBackward(float* dwte, float* dwpe, const float* dout,
                         const int32_t* ids, const int32_t* pos, int N,
                         int C) override;

  void LayerNormForward(float* out, float* mean, float* rstd, const float* inp,
                        const float* weight, const float* bias, int N, int C,
                        float eps) override;
  void LayerNormBackward(float* dinp, float* dweight, float* dbias,
                         const float* dout, const float* inp,
                         const float* weight, const float* mean,
                         const float* rstd, int N, int C) override;

  void RmsNormForward(float* out, float* rstd, const float* inp,
                      const float* weight, int N, int C, float eps) override;
  void RmsNormBackward(float* dinp, float* dweight, const float* dout,
                       const float* inp, const float* weight, const float* rstd,
                       int N, int C) override;

  void RowMeans(float* out, const float* in, int N, int width,
                int stride) override;

  void MatmulForward(float* out, const float* inp, const float* weight,
                     const float* bias, int N, int C, int OC) override;
  void MatmulBackward(float* dinp, float* dweight, float* dbias,
                      const float* dout, const float* inp, const float* weight,
                      int N, int C, int OC) override;

  void GeluForward(float* out, const float* inp, size_t n) override;
  void GeluBackward(float* dinp, const float* inp, const float* dout,
                    size_t n) override;
  void SwiGluForward(float* out, const float* gate_up, int N, int FF) override;
  void SwiGluBackward(float* dgate_up, const float* gate_up, const float* dout,
                      int N, int FF) override;
  void Add(float* out, const float* a, const float* b, size_t n) override;
  void Axpy(float* y, float alpha, const float* x, size_t n) override;
  void Multiply(float* out, const float* a, const float* b, size_t n) override;
  void WidenBf16(float* out, const uint16_t* in, size_t n) override;

  size_t AttentionProbsSize(const SeqSpan* spans, int num_seqs,
                            int NH) const override;
  size_t MaxAttentionProbsSize(int max_rows, int max_seq_len,
                               int NH) const override;
  void AttentionForward(float* out, float* probs, const float* qkv,
                        const SeqSpan* spans, int num_seqs, int NH, int NKV,
                        int hs) override;
  void AttentionBackward(float* dqkv, const float* dout, const float* qkv,
                         const float* out, const float* probs,
                         const SeqSpan* spans, int num_seqs, int NH, int NKV,
                         int hs) override;
  void CachedAttentionForward(float* out, const float* qkv, int past, int n,
                              int NH, int NKV, int hs) override;

  void RopeForward(float* qkv, const int32_t* pos, const float* cos,
                   const float* sin, int N, int NH, int NKV, int hs) override;
  void RopeBackward(float* dqkv, const int32_t* pos, const float* cos,
                    const float* sin, int N, int NH, int NKV, int hs) override;

  void OutputForward(float* lse, float* logp, float* logit_sum,
                     int32_t* correct, float* entropy, float* log_sum_sq_probs,
                     const float* h, const float* wout, const int32_t* labels,
                     int N, int C, int V, float* chunk_buf, int chunk) override;
  void OutputBackward(float* dh, float* dwout, const float* h,
                      const float* wout, const int32_t* labels,
                      const float* lse, const float* coef, int N, int C, int V,
                      float* chunk_buf, int chunk) override;

  // kernels/cpu/fused_sparsepo.h.
  void SparsePoOutputForward(const SparsePoOutputLayers& layers,
                             const int32_t* labels, int N, float* chunk_buf,
                             float* ref_chunk_buf, int chunk,
                             const SparsePoRowStats& out) override {
    cpu::SparsePoOutputForward(layers, labels, N, chunk_buf, ref_chunk_buf,
                               chunk, out);
  }
  void SparsePoOutputBackward(const SparsePoOutputLayers& layers,
                              const int32_t* labels, int N, const float* lse,
                              const float* ref_lse, const float* coef_a,
                              const float* coef_b, float* chunk_buf,
                              float* ref_chunk_buf, int chunk, float* dh,
                              float* dwout) override {
    cpu::SparsePoOutputBackward(layers, labels, N, lse, ref_lse, coef_a, coef_b,
                                chunk_buf, ref_chunk_buf, chunk, dh, dwout);
  }

  double SumSquares(const float* x, size_t n) override;
  void Scale(float* x, float alpha, size_t n) override;
  void AdamW(float* p, const float* grad, float* m, float* v, size_t n,
             const AdamWParams& hp) override;

  // The default of stored_attention_limit(): 2^22 floats (16 MiB) per
  // attention, which keeps GPT-2 small's 12 heads on the stored path up to one
  // sequence of 591 tokens.
  static constexpr size_t kStoredAttentionLimit = size_t{1} << 22;
  // The most probability floats (NH * sum_s len_s^2) a batch may save on the
  // stored path; larger batches take the tiled path. Set it only between a
  // Backward and the next Forward (both must see the same value): 0 makes
  // every batch tiled, SIZE_MAX every batch stored.
  size_t stored_attention_limit() const { return stored_attention_limit_; }
  void set_stored_attention_limit(size_t floats) {
    stored_attention_limit_ = floats;
  }
  // Whether a batch takes the stored path.
  bool StoresAttentionProbs(const SeqSpan* spans, int num_seqs, int NH) const;

 private:
  void StoredAttentionForward(float* out, float* probs, const float* qkv,
                              const SeqSpan* spans, int num_seqs, int NH,
                              int NKV, int hs);
  void StoredAttentionBackward(float* dqkv, const float* dout, const float* qkv,
                               const float* probs, const SeqSpan* spans,
                               int num_seqs, int NH, int NKV, int hs);
  void TiledAttentionForward(float* out, float* lse, const float* qkv,
                             const SeqSpan* spans, int num_seqs, int NH,
                             int NKV, int hs);
  void TiledAttentionBackward(float* dqkv, const float* dout, const float* qkv,
                              const float* out, const float* lse,
                              const SeqSpan* spans, int num_seqs, int NH,
                              int NKV, int hs);
  // attention_scratch_ holding per_thread floats for each OpenMP thread.
  float* AttentionScratch(size_t per_thread);

  size_t stored_attention_limit_ = kStoredAttentionLimit;

  // Per-thread dS blocks of the stored backward, probability blocks of the
  // tiled forward, probability and dS blocks of the tiled backward, score
  // blocks of CachedAttentionForward.
  std::vector<float> attention_scratch_;
  // Per-block partial sums for SumSquares.
  std::vector<double> sum_partials_;
};

}  // namespace prefopt::kernels

#endif  // PREFOPT_KERNELS_CPU_CPU_BACKEND_H_
