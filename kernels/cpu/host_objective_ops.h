// The objective ops both CPU backends share: the per-token objective
// coefficients and SparsePO's mask networks, MaPO masks and coefficients, all
// on host memory through the host references (kernels/objective_math.h,
// kernels/cpu/sparsepo_host.h), which the CUDA kernels are tested against.
#ifndef PREFOPT_KERNELS_CPU_HOST_OBJECTIVE_OPS_H_
#define PREFOPT_KERNELS_CPU_HOST_OBJECTIVE_OPS_H_

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cpu/sparsepo_host.h"
#include "kernels/objective_math.h"

namespace prefopt::kernels {

class HostObjectiveOps : public Backend {
 public:
  void ObjectiveCoefficients(float* coef, double* metrics, const float* logp,
                             const float* logit_sum, const int32_t* correct,
                             const float* entropy,
                             const float* log_sum_sq_probs,
                             const SeqSpan* spans, const double* reference,
                             const float* reference_tokens, int num_seqs,
                             const ObjectiveParams& params) override {
    objective_math::HostObjectiveCoefficients(
        coef, metrics, logp, logit_sum, correct, entropy, log_sum_sq_probs,
        spans, reference, reference_tokens, num_seqs, params);
  }
  void SparsePoMaskForward(float* mask, const float* hidden, int rows,
                           const float* params,
                           const SparsePoMaskNetShape& shape) override {
    cpu::SparsePoMaskForward(mask, hidden, rows, params, shape,
                             &sparsepo_scratch_);
  }
  void SparsePoMaskBackward(float* grads, const float* dmask,
                            const float* hidden, int rows, const float* params,
                            const SparsePoMaskNetShape& shape) override {
    cpu::SparsePoMaskBackward(grads, dmask, hidden, rows, params, shape,
                              &sparsepo_scratch_);
  }
  void MapoMask(float* mask, const float* scores, int rows,
                const MapoGroup* map_groups, int num_maps,
                const MapoGroup* groups, int num_groups, const SeqSpan* spans,
                int num_spans) override {
    cpu::MapoMask(mask, scores, rows, map_groups, num_maps, groups, num_groups,
                  spans, num_spans, &sparsepo_scratch_);
  }
  void SparsePoCoefficients(const SparsePoRowOutputs& out, double* metrics,
                            const SparsePoRowInputs& in, const SeqSpan* spans,
                            int num_pairs,
                            const SparsePoParams& params) override {
    cpu::SparsePoCoefficients(out, metrics, in, spans, num_pairs, params);
  }

 private:
  cpu::SparsePoScratch sparsepo_scratch_;
};

}  // namespace prefopt::kernels

#endif  // PREFOPT_KERNELS_CPU_HOST_OBJECTIVE_OPS_H_
