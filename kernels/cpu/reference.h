// The scalar fp32 reference implementation of the kernel interface: every op
// as plain loops written for clarity (accumulating in double where that makes
// the reference more exact), the yardstick the fast CPU path and the CUDA path
// are tested against. Not meant to be fast. A label outside [0, V) in
// OutputForward/OutputBackward aborts with a message.
#ifndef PREFOPT_KERNELS_CPU_REFERENCE_H_
#define PREFOPT_KERNELS_CPU_REFERENCE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/backend.h"
#include "kernels/cpu/host_objective_ops.h"

namespace prefopt::kernels {

namespace cpu {

// The attention probabilities layout ReferenceBackend saves: for each sequence
// s in order, for each query head h, a full row-major len_s x len_s matrix
// P[i][j] (zero above the diagonal, j > i).
size_t AttentionProbsFloats(const SeqSpan* spans, int num_seqs, int NH);
// Offset of sequence s's first matrix in that layout.
size_t AttentionProbsOffset(const SeqSpan* spans, int s, int NH);

}  // namespace cpu

class ReferenceBackend : public HostObjectiveOps {
 public:
  ReferenceBackend() = default;

  std::string Name() const override { return "cpu_reference"; }

  float* Alloc(size_t n) override;
  void Free(float* p) override;
  void Zero(float* p, size_t n) override;
  void CopyToDevice(float* dst, const float* host_src, size_t n) override;
  void CopyToHost(float* host_dst, const float* src, size_t n) override;
  void Copy(float* dst, const float* src, size_t n) override;

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

  // One row at a time through the first row of each chunk buffer, every sum
  // in double.
  void SparsePoOutputForward(const SparsePoOutputLayers& layers,
                             const int32_t* labels, int N, float* chunk_buf,
                             float* ref_chunk_buf, int chunk,
                             const SparsePoRowStats& out) override;
  void SparsePoOutputBackward(const SparsePoOutputLayers& layers,
                              const int32_t* labels, int N, const float* lse,
                              const float* ref_lse, const float* coef_a,
                              const float* coef_b, float* chunk_buf,
                              float* ref_chunk_buf, int chunk, float* dh,
                              float* dwout) override;

  double SumSquares(const float* x, size_t n) override;
  void Scale(float* x, float alpha, size_t n) override;
  void AdamW(float* p, const float* grad, float* m, float* v, size_t n,
             const AdamWParams& hp) override;
};

}  // namespace prefopt::kernels

#endif  // PREFOPT_KERNELS_CPU_REFERENCE_H_
