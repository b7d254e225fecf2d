// SparsePO's learned token mask (docs/objectives.md §2, "Learned"): a small
// network over the frozen reference model's hidden states,
//   m_t = ReLU( Σ_l c_l · ReLU(w_lᵀ LN(h_{l,t}) + b_l) ),
// with one affine LayerNorm shared by the L layers, per-layer w_l ∈ R^H and
// scalar b_l, and a bias-free mixer c ∈ R^L. The ReLUs make exact zeros, which
// are the mask's sparsity. The hidden states belong to the frozen reference,
// so the backward pass produces gradients for the network's own parameters
// only.
//
// Parameters live in one contiguous host buffer described by a
// model::ParamLayout, so the policy's AdamW, clipping and checkpointing code
// can treat them as one more tensor set:
//   <name>.ln.weight [H]   LN scale, init 1     no weight decay
//   <name>.ln.bias   [H]   LN shift, init 0     no weight decay
//   <name>.w.<l>     [H]   l = 0..L−1           weight decay
//   <name>.b         [L]   b_0..b_{L−1}, init 0 no weight decay
//   <name>.c         [L]   the mixer            weight decay
// (is_norm_or_bias marks the undecayed ones; docs/objectives.md fixes the decay
// of w and c at 0.01.) They go into checkpoints but not into the Hugging Face
// export.
//
// Threads: rows (forward) and layers (backward) are split over OpenMP threads;
// results do not depend on the thread count. Not thread-safe: one caller at a
// time (Forward and Backward share a scratch buffer).
#ifndef PREFOPT_TRAINER_OBJECTIVES_SPARSEPO_MASK_NET_H_
#define PREFOPT_TRAINER_OBJECTIVES_SPARSEPO_MASK_NET_H_

#include <string>
#include <vector>

#include "absl/types/span.h"
#include "trainer/model/param_layout.h"
#include "trainer/util/rng.h"

namespace prefopt::objectives {

class SparsePoMaskNet {
 public:
  // The weight decay docs/objectives.md §2 gives w and c.
  static constexpr double kWeightDecay = 0.01;

  // `name` prefixes the tensor names: "sparsepo_mask" for a common mask, and
  // e.g. "sparsepo_mask_reward" / "sparsepo_mask_kl" for two independent
  // networks. num_layers L and hidden H are the reference model's; ln_eps is
  // its normalization epsilon. Parameters start at 0; call Init.
  SparsePoMaskNet(const std::string& name, int num_layers, int hidden,
                  float ln_eps);

  // w and c ~ N(0, init_std²), drawn from `rng` in layout order (w_0 … w_{L−1},
  // then c); b = 0; LayerNorm weight 1, bias 0. Gradients are zeroed.
  void Init(util::Rng* rng, double init_std = 0.02);

  // hidden[l] points to `rows` rows of H floats (row-major, contiguous): the
  // reference's hidden state after layer l, the last one after the final
  // norm, for the tokens to be masked (hidden.size() == L). Writes mask[rows].
  void Forward(absl::Span<const float* const> hidden, int rows,
               float* mask) const;

  // Given dmask[rows] = ∂loss/∂m_t for the same rows, accumulates (+=) the
  // parameter gradients into grads().
  void Backward(absl::Span<const float* const> hidden, int rows,
                const float* dmask);

  const model::ParamLayout& layout() const { return layout_; }
  float* params() { return params_.data(); }
  const float* params() const { return params_.data(); }
  float* grads() { return grads_.data(); }
  const float* grads() const { return grads_.data(); }
  void ZeroGrads();

  int num_layers() const { return L_; }
  int hidden() const { return H_; }

 private:
  // Per (layer, row) pre-activations a = w_lᵀ LN(h) + b_l and the row's
  // normalization statistics, into scratch_ (layer-major).
  void PreActivations(absl::Span<const float* const> hidden, int rows) const;

  int L_, H_;
  float ln_eps_;
  model::ParamLayout layout_;
  // Offsets of the tensors in params_ (w_[l] for w_l).
  size_t ln_w_, ln_b_, b_, c_;
  std::vector<size_t> w_;
  std::vector<float> params_, grads_;

  struct RowStats {
    double a;     // pre-activation w_lᵀ LN(h) + b_l
    double mean;  // of h_{l,t}
    double rstd;  // 1 / sqrt(var + eps)
  };
  // Scratch buffers, grown to the largest call and reused, so that the
  // steady-state step allocates nothing.
  mutable std::vector<RowStats> scratch_;
  mutable std::vector<double> folded_w_, folded_offset_;  // PreActivations
  std::vector<double> row_grad_, dc_, db_, x_, dgamma_, dshift_;  // Backward
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_SPARSEPO_MASK_NET_H_
