// AdamW over a model's parameter buffer with global-norm gradient clipping,
// and the learning-rate schedules of transformers' get_scheduler.
#ifndef PREFOPT_TRAINER_OPTIM_OPTIMIZER_H_
#define PREFOPT_TRAINER_OPTIM_OPTIMIZER_H_

#include <cstddef>

#include "absl/types/span.h"
#include "kernels/backend.h"
#include "proto/config.pb.h"
#include "trainer/model/param_layout.h"

namespace prefopt::optim {

// n gradient floats in backend memory.
struct GradientSpan {
  float* grads;
  size_t n;
};

// Clips several gradient buffers as one vector (the policy's and SparsePO's
// mask networks'): returns their joint L2 norm before clipping, and when
// max_norm > 0 scales every buffer by max_norm/(norm + 1e-6) if that is < 1
// (torch.nn.utils.clip_grad_norm_ over all the parameters).
double ClipGlobalNorm(kernels::Backend* backend,
                      absl::Span<const GradientSpan> buffers, double max_norm);

// Scales every buffer as clipping a gradient of global L2 norm `norm` to
// `max_norm` requires (nothing when max_norm is 0 or the norm is below it).
void ScaleForClip(kernels::Backend* backend,
                  absl::Span<const GradientSpan> buffers, double norm,
                  double max_norm);

class AdamWOptimizer {
 public:
  // Moments start at zero, allocated on `backend` for the floats
  // [shard_begin, shard_end) of the flat parameter buffer: the whole layout by
  // default, one rank's shard under ZeRO-1 (the range may cut tensors; each
  // element keeps its tensor's weight-decay rule).
  AdamWOptimizer(kernels::Backend* backend, const model::ParamLayout& layout,
                 const OptimizerConfig& config, size_t shard_begin = 0,
                 size_t shard_end = static_cast<size_t>(-1));
  ~AdamWOptimizer();
  AdamWOptimizer(const AdamWOptimizer&) = delete;
  AdamWOptimizer& operator=(const AdamWOptimizer&) = delete;

  // Returns the global L2 norm of grads before clipping, and scales grads so
  // that their norm is at most max_grad_norm when that is set (the same rule
  // as torch.nn.utils.clip_grad_norm_: coefficient max/(norm + 1e-6), ≤ 1).
  // For an unsharded optimizer; a sharded one combines LocalGradSquares over
  // ranks and calls ClipWithNorm.
  double ClipGradients(float* grads);
  // Σ grad² over this optimizer's range.
  double LocalGradSquares(const float* grads) const;
  // Scales this optimizer's range of grads as clipping at `norm` requires.
  void ClipWithNorm(float* grads, double norm);

  // One AdamW update of this optimizer's range at learning rate lr. Biases
  // and norm weights get no weight decay unless decay_norms_and_biases is set.
  void Step(float* params, const float* grads, float lr);

  // Updates made so far (AdamW's bias correction uses the count). Resume
  // restores it with set_steps_taken.
  int steps_taken() const { return step_; }
  void set_steps_taken(int steps) { step_ = steps; }

  // The range [moments_begin(), moments_end()) of the flat parameter buffer
  // whose moments this optimizer holds, saves and restores: the whole layout
  // without ZeRO, this rank's shard under ZeRO-1. first_moment() and
  // second_moment() point at the moments of moments_begin().
  size_t moments_begin() const { return begin_; }
  size_t moments_end() const { return end_; }
  float* first_moment() { return m_; }
  float* second_moment() { return v_; }

 private:
  kernels::Backend* backend_;
  const model::ParamLayout& layout_;
  OptimizerConfig config_;
  size_t begin_, end_;
  float* m_;  // moments of [begin_, end_): m_[i - begin_]
  float* v_;
  int step_ = 0;
};

// The learning rate of optimizer step `step` (0-based) of `total_steps`, as
// transformers' schedulers give it: linear warm-up from 0 over the warm-up
// steps, then constant, linear decay to 0, or cosine decay to 0.
double ScheduledLearningRate(const ScheduleConfig& schedule, double peak_lr,
                             int step, int total_steps);

// Warm-up steps from warmup_steps, or ceil(warmup_ratio × total_steps) as
// transformers' TrainingArguments computes it.
int WarmupSteps(const ScheduleConfig& schedule, int total_steps);

}  // namespace prefopt::optim

#endif  // PREFOPT_TRAINER_OPTIM_OPTIMIZER_H_
