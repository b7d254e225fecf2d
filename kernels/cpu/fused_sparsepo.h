// SparsePO's fused, chunked output layer on the CPU (docs/objectives.md §2 and
// §7), CpuBackend's Backend::SparsePoOutputForward/Backward: the policy's and
// the frozen reference's logits of the same response rows are computed chunk by
// chunk, reduced to the per-token quantities SparsePO needs (ℓ_t, ℓ̃_t and the
// KL term K_t), and discarded; the backward pass recomputes them and writes the
// logit gradient
//   dz_{t,v} = A_t (π_{t,v} − 1[v = y_t]) + B_t (π_{t,v} − p_{t,v})
// (π = softmax(z), p = softmax(z̃)) straight into the GEMMs that produce the
// hidden-state and output-embedding gradients. Memory is two [chunk, V]
// buffers, never [N, V].
//
// Layout and threading follow CpuBackend::OutputForward/OutputBackward
// (kernels/cpu/cpu_backend.h): row-major fp32 host memory, OpenMP threads that
// each compute a slice of every GEMM with single-threaded OpenBLAS, results
// bitwise reproducible for a fixed thread count. A label outside [0, V) or a
// chunk < 1 is a caller bug and aborts with a message.
#ifndef PREFOPT_KERNELS_CPU_FUSED_SPARSEPO_H_
#define PREFOPT_KERNELS_CPU_FUSED_SPARSEPO_H_

#include <cstdint>

#include "kernels/backend.h"

namespace prefopt::kernels::cpu {

// Pass 1 over rows [0, N) with next-token labels[N]. chunk_buf holds chunk*V
// floats, ref_chunk_buf another chunk*V.
void SparsePoOutputForward(const SparsePoOutputLayers& layers,
                           const int32_t* labels, int N, float* chunk_buf,
                           float* ref_chunk_buf, int chunk,
                           const SparsePoRowStats& out);

// Pass 2: with pass 1's lse and ref_lse and per-row coefficients coef_a[N],
// coef_b[N], forms dz (above) and accumulates dh[N, C] += dz @ wout and
// dwout[V, C] += dz^T @ h. Either output may be null. Rows whose two
// coefficients are both 0 are skipped, and the reference logits of a chunk
// are recomputed only when one of its rows has B ≠ 0.
void SparsePoOutputBackward(const SparsePoOutputLayers& layers,
                            const int32_t* labels, int N, const float* lse,
                            const float* ref_lse, const float* coef_a,
                            const float* coef_b, float* chunk_buf,
                            float* ref_chunk_buf, int chunk, float* dh,
                            float* dwout);

}  // namespace prefopt::kernels::cpu

#endif  // PREFOPT_KERNELS_CPU_FUSED_SPARSEPO_H_
