// SparsePO (docs/objectives.md §2; Christopoulou et al. 2024, official code
// huawei-noah/HEBO/SparsePO): token-level preference optimization in which a
// reward mask m^u and a KL mask m^d weight each response token's log-ratio
// r_t = ℓ_t − ℓ̃_t and KL term K_t = −KL(p_t‖π_t). With both masks ≡ 1 it is
// TDPO1 (Zeng et al. 2024).
//
// The objective works on per-token quantities: ℓ_t, ℓ̃_t, K_t from the fused
// two-model output layer (kernels/cpu/fused_sparsepo.h) and the masks from a
// mask network (sparsepo_mask_net.h) or from activations (mapo_masks.h). Its
// outputs are the per-token coefficients A_t, B_t of the logit gradient
//   ∂loss/∂z_{t,v} = A_t (π_{t,v} − 1[v = y_t]) + B_t (π_{t,v} − p_{t,v}),
// which the fused backward pass consumes, and the gradient w.r.t. the masks.
#ifndef PREFOPT_TRAINER_OBJECTIVES_SPARSEPO_H_
#define PREFOPT_TRAINER_OBJECTIVES_SPARSEPO_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "trainer/objectives/metric_sums.h"

namespace prefopt::objectives {

struct SparsePoOptions {
  double beta = 0.8;       // > 0
  double l1_reward = 0.0;  // c_u ≥ 0, weight of ‖λ⊙m^u‖₁ per response
  double l1_kl = 0.0;  // c_d ≥ 0, weight of ‖λ⊙m^d‖₁ per response
  // One mask m = m^u = m^d (the L1 weight becomes (c_u + c_d)/2), or two
  // independent masks.
  bool common_mask = true;
  // Which terms are masked (the official code's mask_on_reward / mask_on_kl):
  // an unmasked term has m ≡ 1, no L1 term and no mask gradient. A common
  // mask that masks only one term takes that term's L1 weight. At least one
  // must be set.
  bool mask_on_reward = true;
  bool mask_on_kl = true;
};

// One response (chosen or rejected) of a pair: per-token inputs over its k
// response tokens, in order.
struct SparsePoResponse {
  absl::Span<const float> logp;      // ℓ_t (policy)
  absl::Span<const float> ref_logp;  // ℓ̃_t (reference)
  absl::Span<const float> kl;        // K_t = Σ_v p (log π − log p) ≤ 0
  // m^u_t; with a common mask, the mask m_t. Ignored (may be empty) with
  // independent masks and mask_on_reward unset.
  absl::Span<const float> mask_reward;
  // m^d_t with independent masks and mask_on_kl set; ignored (may be empty)
  // otherwise.
  absl::Span<const float> mask_kl;
  // Σ over the response tokens and the vocabulary of the policy logits, for
  // the logits/* metrics.
  double logit_sum = 0;
};

// Per-token outputs, appended by Pair in the order chosen tokens, rejected
// tokens. All are already divided by the global pair count.
struct SparsePoGradients {
  std::vector<float> coef_a;  // A_t
  std::vector<float> coef_b;  // B_t
  // ∂loss/∂m^u_t, or ∂loss/∂m_t (= ∂/∂m^u + ∂/∂m^d) with a common mask;
  // left untouched with independent masks and mask_on_reward unset.
  std::vector<float> dmask_reward;
  // ∂loss/∂m^d_t with independent masks and mask_on_kl set; left untouched
  // otherwise.
  std::vector<float> dmask_kl;

  void Clear() {
    coef_a.clear();
    coef_b.clear();
    dmask_reward.clear();
    dmask_kl.clear();
  }
};

class SparsePoObjective {
 public:
  // Validates the options (β > 0, c_u, c_d ≥ 0, all finite, at least one
  // term masked). vocab_size is the denominator of the logits/* metrics.
  static absl::StatusOr<SparsePoObjective> Create(
      const SparsePoOptions& options, int vocab_size);

  // One pair (the formulas are kernels/sparsepo_math.h's). With U = Σ_t m^u_t
  // r_t, D = Σ_t m^d_t K_t per response,
  //   Δ = [U_w − U_l] − [D_w − D_l],
  //   loss = softplus(−βΔ) + c_u(‖m^u_w‖₁ + ‖m^u_l‖₁) + c_d(‖m^d_w‖₁ +
  //   ‖m^d_l‖₁)
  // (the batch loss is the mean over the `global_pairs` pairs of the global
  // batch). With g = −β σ(−βΔ) and P = global_pairs, the appended
  // coefficients are
  //   chosen:   A_t = −g m^u_t / P,  B_t = +g m^d_t / P
  //   rejected: A_t = +g m^u_t / P,  B_t = −g m^d_t / P
  // (docs/objectives.md §2's chosen gradient g[m^u(1[v=y] − π) − m^d(p − π)]
  // rewritten in the A/B form), and the mask gradients
  //   ∂/∂m^u_{w,t} = (g r^w_t + c_u s)/P,   ∂/∂m^u_{l,t} = (−g r^l_t + c_u
  //   s)/P, ∂/∂m^d_{w,t} = (−g K^w_t + c_d s)/P,  ∂/∂m^d_{l,t} = (g K^l_t + c_d
  //   s)/P,
  // s = sign(m_t) (the L1 term's derivative; 0 at m_t = 0, as torch's |·|,
  // which for the ReLU masks is where no gradient passes anyway). A common
  // mask gets the sum of the two rows, with (c_u + c_d)/2 for both weights.
  // A term that is not masked (mask_on_reward / mask_on_kl unset) has m ≡ 1,
  // no L1 term and no mask-gradient row. Aborts when a response's inputs
  // differ in length.
  //
  // Metrics added to `sums` (means over pairs unless stated):
  //   loss
  //   rewards/chosen     β(U_w + D_w), as the official code (D ≤ 0)
  //   rewards/rejected   β(U_l + D_l)
  //   rewards/margins, rewards/accuracies (strict >), as DPO
  //   logps/chosen, logps/rejected       Σ_t ℓ_t, unweighted
  //   logits/chosen, logits/rejected     mean over tokens × vocabulary
  //   kl/chosen, kl/rejected             −D (masked KL; the official
  //                   WgtSeqKL/*)
  //   kl/unmasked_chosen, kl/unmasked_rejected   −Σ_t K_t over the response
  //                   tokens (the official SeqKL/* also sums the prompt and
  //                   padding positions)
  //   mask/sparsity   % of response tokens (chosen and rejected pooled) whose
  //                   mask is exactly 0
  //   mask/mean       mean mask value over those tokens
  //   mask/l1         ‖m_w‖₁ + ‖m_l‖₁
  // where the mask is the common mask, or m^u with independent masks (then
  // only with mask_on_reward); mask/kl_sparsity, mask/kl_mean, mask/kl_l1
  // are the same for m^d, with independent masks and mask_on_kl only.
  double Pair(const SparsePoResponse& chosen, const SparsePoResponse& rejected,
              double global_pairs, MetricSums* sums,
              SparsePoGradients* grads) const;

  // The options as the backends' SparsePoCoefficients reads them, for a
  // global batch of `global_pairs` pairs.
  kernels::SparsePoParams Params(double global_pairs) const;

  // Adds metric values summed over `pairs` pairs (SparsePoMetric order, as
  // Pair and Backend::SparsePoCoefficients produce them) to `sums` under
  // Pair's names and counts, with TRL's "entropy" (a mean over the response
  // tokens) when `entropy` is set.
  void AddMetrics(const double* metrics, double pairs, double chosen_tokens,
                  double rejected_tokens, bool entropy, MetricSums* sums) const;

  const SparsePoOptions& options() const { return options_; }

 private:
  SparsePoObjective(const SparsePoOptions& options, int vocab_size)
      : options_(options), vocab_(vocab_size) {}

  SparsePoOptions options_;
  int vocab_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_SPARSEPO_H_
