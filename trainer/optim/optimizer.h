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

class AdamWOptimizer {
 public:
  // Moments start at zero, allocated on `backend` for every tensor of layout.
  AdamWOptimizer(kernels::Backend* backend, const model::ParamLayout& layout,
                 const OptimizerConfig& config);
  ~AdamWOptimizer();
  AdamWOptimizer(const AdamWOptimizer&) = delete;
  AdamWOptimizer& operator=(const AdamWOptimizer&) = delete;

  // Returns the global L2 norm of grads before clipping, and scales grads so
  // that their norm is at most max_grad_norm when that is set (the same rule
  // as torch.nn.utils.clip_grad_norm_: coefficient max/(norm + 1e-6), ≤ 1).
  double ClipGradients(float* grads);

  // One AdamW update of every tensor at learning rate lr. Biases and norm
  // weights get no weight decay unless decay_norms_and_biases is set.
  void Step(float* params, const float* grads, float lr);

  int steps_taken() const { return step_; }
  float* first_moment() { return m_; }
  float* second_moment() { return v_; }

 private:
  kernels::Backend* backend_;
  const model::ParamLayout& layout_;
  OptimizerConfig config_;
  float* m_;
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
