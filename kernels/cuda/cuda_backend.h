// The CUDA implementation of the kernel interface (kernels/backend.h) on one
// GPU: fp32 tensors in device memory, cuBLASLt GEMMs, fused kernels of our own
// for everything else. A binary built without the CUDA toolkit still links:
// Create then reports that it was built without CUDA.
//
// Memory and host arrays. Alloc is cudaMalloc (never managed memory); every
// op runs on the backend's own stream and returns without waiting for the
// GPU, except CopyToHost and SumSquares, which return data to the host. As
// the interface's callers use them, ids, pos, labels and spans are host
// arrays (uploaded on the stream); every other pointer, `correct` included,
// is device memory. Scratch (bf16 operand copies, reduction partials, uploaded
// indices) is owned by the backend and grows to the largest call, so a steady
// state step allocates nothing.
//
// Precision (Create's `precision`):
// - kFp32: every op in fp32, GEMMs with CUBLAS_COMPUTE_32F (no TF32): the
//   mode the parity tests hold to the CPU reference at 1e-5 (attention 1e-4).
// - kBf16: GEMMs and attention's tile products run on bf16 tensor cores with
//   fp32 accumulation; everything else is as in kFp32. Tensors stay fp32 in
//   memory (the interface is fp32, and the parameters are the fp32 master
//   weights AdamW updates): each GEMM rounds its operands to bf16 on the fly
//   into backend scratch (round-to-nearest-even, one fused pass per operand)
//   and writes fp32 results, accumulating (beta = 1) where the op says +=.
//   There are no persistent bf16 shadow copies of the weights: the backend
//   cannot tell when memory it does not write (an NCCL all-gather, a load)
//   changes a weight, and a stale shadow would be a silent error; converting
//   costs one read of the fp32 operand per GEMM, a few percent of a large
//   GEMM's time. The output layer converts wout once per call, not per chunk.
//   Reductions (norms, softmax, logsumexp, losses, SumSquares) accumulate in
//   fp32 or double in both modes.
//
// Attention saves only the row logsumexp: AttentionProbsSize is N * NH
// floats (not the T x T probabilities of the CPU backends), and the backward
// recomputes the probabilities tile by tile (see attention.cu). Head sizes
// up to 256. CachedAttentionForward (decoding) runs in fp32 in both modes.
//
// Determinism: every op gives bitwise-identical results run to run on the
// same GPU model (no floating-point atomics; embedding and parameter-gradient
// column sums are reduced in a fixed order; GEMM algorithms are chosen once
// per shape and reused).
//
// Errors: Create returns a status (no device, a driver older than the CUDA
// runtime, unsupported device, setup failures). Inside ops, a failed
// CUDA/cuBLAS call is a bug or a lost device and aborts with the call and its
// error string. A device allocation that does not fit ends the process with
// exit status 1 and "CudaBackend: out of GPU memory: ..." naming the buffer
// (the caller's kernels::MemoryPurpose scopes, kernels/memory_purpose.h), its
// size and the memory free.
#ifndef PREFOPT_KERNELS_CUDA_CUDA_BACKEND_H_
#define PREFOPT_KERNELS_CUDA_CUDA_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace prefopt::kernels {

class CudaBackend : public Backend {
 public:
  enum class Precision { kFp32, kBf16 };

  // A backend on CUDA device `device` (0-based). Fails with kUnavailable when
  // there is no usable GPU or the binary was built without CUDA, kOutOfRange
  // for a device number past the device count, kFailedPrecondition for a GPU
  // older than compute capability 8.0 (bf16 tensor cores).
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(
      int device, Precision precision);

  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  // "cuda_fp32" or "cuda_bf16".
  std::string Name() const override;
  // The device's name as the CUDA runtime reports it (the CPU simulation
  // reports "CUDA CPU simulation (prefopt cudasim)").
  std::string DeviceName() const;
  // The CUDA stream (a cudaStream_t) every op runs on: the compute stream a
  // GPU communicator orders its collectives after (comm/gpu_communicator.h).
  void* stream() const;

  bool HostAddressable() const override { return false; }

  // Device memory the CUDA backends of this process hold (every Alloc and
  // their scratch; not the CUDA context or cuBLASLt's fixed workspace).
  struct MemoryStats {
    size_t allocated_bytes = 0;
    size_t peak_allocated_bytes = 0;
    size_t allocations = 0;  // cudaMalloc calls so far
  };
  static MemoryStats ProcessMemoryStats();

  float* Alloc(size_t n) override;
  void Free(float* p) override;
  void Zero(float* p, size_t n) override;
  // host_src may be reused as soon as the call returns.
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

  // N * NH floats: the row logsumexp per (row, head).
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

  // sparsepo.cu. MapoMask and SparsePoCoefficients upload their host arrays
  // in one copy each.
  void SparsePoMaskForward(float* mask, const float* hidden, int rows,
                           const float* params,
                           const SparsePoMaskNetShape& shape) override;
  void SparsePoMaskBackward(float* grads, const float* dmask,
                            const float* hidden, int rows, const float* params,
                            const SparsePoMaskNetShape& shape) override;
  void MapoMask(float* mask, const float* scores, int rows,
                const MapoGroup* map_groups, int num_maps,
                const MapoGroup* groups, int num_groups, const SeqSpan* spans,
                int num_spans) override;
  void SparsePoCoefficients(const SparsePoRowOutputs& out, double* metrics,
                            const SparsePoRowInputs& in, const SeqSpan* spans,
                            int num_pairs,
                            const SparsePoParams& params) override;

  // Uploads spans and reference values in one copy; three kernels
  // (objectives.cu).
  void ObjectiveCoefficients(float* coef, double* metrics, const float* logp,
                             const float* logit_sum, const int32_t* correct,
                             const float* entropy,
                             const float* log_sum_sq_probs,
                             const SeqSpan* spans, const double* reference,
                             const float* reference_tokens, int num_seqs,
                             const ObjectiveParams& params) override;

  double SumSquares(const float* x, size_t n) override;
  void Scale(float* x, float alpha, size_t n) override;
  void AdamW(float* p, const float* grad, float* m, float* v, size_t n,
             const AdamWParams& hp) override;

 private:
  struct State;
  struct OutputOperands;
  // h[N, C] and wout[V, C] as the output layer's GEMMs read them: in place
  // (fp32), or rounded to bf16 into the model's pair of scratch buffers
  // (slot 0: the policy's, 1: SparsePO's reference's), except that wout is
  // taken from `same_wout` when given (the same matrix, already rounded).
  OutputOperands Operands(const float* h, const float* wout, int N, int C,
                          int V, int slot,
                          const OutputOperands* same_wout = nullptr);
  OutputOperands ReferenceOperands(const SparsePoOutputLayers& layers, int N,
                                   const OutputOperands& op);
  void AccumulateOutputGrads(float* dh, float* dwout, const OutputOperands& op,
                             int r0, int rows, int C, int V,
                             const float* chunk_buf);
  explicit CudaBackend(std::unique_ptr<State> state);

  std::unique_ptr<State> s_;
};

// Makes CudaBackend the GPU backend that kernels/select's SelectBackend
// creates (device: GPU / AUTO). In a build without the toolkit it registers a
// factory that says so.
void RegisterCudaBackend();

}  // namespace prefopt::kernels

#endif  // PREFOPT_KERNELS_CUDA_CUDA_BACKEND_H_
