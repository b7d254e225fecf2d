// SparsePO's learned token mask (docs/objectives.md §2, "Learned"): a small
// network over the frozen reference model's hidden states,
//   m_t = ReLU( Σ_l c_l · ReLU(w_lᵀ LN(h_{l,t}) + b_l) ),
// with one affine LayerNorm shared by the L layers, per-layer w_l ∈ R^H and
// scalar b_l, and a bias-free mixer c ∈ R^L. The ReLUs make exact zeros, which
// are the mask's sparsity. The hidden states belong to the frozen reference,
// so the backward pass produces gradients for the network's own parameters
// only.
//
// Parameters live in one contiguous buffer in the backend's memory described
// by a model::ParamLayout (the order of kernels::SparsePoMaskNetShape), so the
// policy's AdamW, clipping and checkpointing code can treat them as one more
// tensor set:
//   <name>.ln.weight [H]   LN scale, init 1     no weight decay
//   <name>.ln.bias   [H]   LN shift, init 0     no weight decay
//   <name>.w.<l>     [H]   l = 0..L−1           weight decay
//   <name>.b         [L]   b_0..b_{L−1}, init 0 no weight decay
//   <name>.c         [L]   the mixer            weight decay
// (is_norm_or_bias marks the undecayed ones; docs/objectives.md fixes the decay
// of w and c at 0.01.) They go into checkpoints but not into the Hugging Face
// export. Forward and Backward are the backend's SparsePoMaskForward/Backward.
#ifndef PREFOPT_TRAINER_OBJECTIVES_SPARSEPO_MASK_NET_H_
#define PREFOPT_TRAINER_OBJECTIVES_SPARSEPO_MASK_NET_H_

#include <string>
#include <vector>

#include "kernels/backend.h"
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
  // its normalization epsilon. The parameters and gradients live on
  // `backend` (not owned, outlives this object) and start at 0; call Init.
  SparsePoMaskNet(kernels::Backend* backend, const std::string& name,
                  int num_layers, int hidden, float ln_eps);
  ~SparsePoMaskNet();
  SparsePoMaskNet(const SparsePoMaskNet&) = delete;
  SparsePoMaskNet& operator=(const SparsePoMaskNet&) = delete;

  // w and c ~ N(0, init_std²), drawn from `rng` in layout order (w_0 … w_{L−1},
  // then c); b = 0; LayerNorm weight 1, bias 0. Gradients are zeroed.
  void Init(util::Rng* rng, double init_std = 0.02);

  // hidden holds, in backend memory, L blocks of `rows` rows of H floats
  // ([L, rows, H]): the reference's hidden state after layer l, the last one
  // after the final norm, for the tokens to be masked. Writes mask[rows]
  // (backend memory).
  void Forward(const float* hidden, int rows, float* mask) const;

  // Given dmask[rows] = ∂loss/∂m_t for the same rows (backend memory),
  // accumulates (+=) the parameter gradients into grads().
  void Backward(const float* hidden, int rows, const float* dmask);

  const model::ParamLayout& layout() const { return layout_; }
  const kernels::SparsePoMaskNetShape& shape() const { return shape_; }
  // Backend memory, layout().total() floats each.
  float* params() { return params_; }
  const float* params() const { return params_; }
  float* grads() { return grads_; }
  const float* grads() const { return grads_; }
  void ZeroGrads();

  int num_layers() const { return shape_.layers; }
  int hidden() const { return shape_.hidden; }

 private:
  kernels::Backend* backend_;
  kernels::SparsePoMaskNetShape shape_;
  model::ParamLayout layout_;
  float* params_ = nullptr;
  float* grads_ = nullptr;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_SPARSEPO_MASK_NET_H_
