#include "trainer/optim/optimizer.h"

#include <algorithm>
#include <cmath>

namespace prefopt::optim {

AdamWOptimizer::AdamWOptimizer(kernels::Backend* backend,
                               const model::ParamLayout& layout,
                               const OptimizerConfig& config)
    : backend_(backend), layout_(layout), config_(config) {
  m_ = backend_->Alloc(layout_.total());
  v_ = backend_->Alloc(layout_.total());
  backend_->Zero(m_, layout_.total());
  backend_->Zero(v_, layout_.total());
}

AdamWOptimizer::~AdamWOptimizer() {
  backend_->Free(m_);
  backend_->Free(v_);
}

double ClipGlobalNorm(kernels::Backend* backend,
                      absl::Span<const GradientSpan> buffers, double max_norm) {
  double squares = 0;
  for (const GradientSpan& b : buffers) {
    squares += backend->SumSquares(b.grads, b.n);
  }
  const double norm = std::sqrt(squares);
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
      for (const GradientSpan& b : buffers) {
        backend->Scale(b.grads, static_cast<float>(coef), b.n);
      }
    }
  }
  return norm;
}

double AdamWOptimizer::ClipGradients(float* grads) {
  return ClipGlobalNorm(backend_, {{grads, layout_.total()}},
                        config_.max_grad_norm());
}

void AdamWOptimizer::Step(float* params, const float* grads, float lr) {
  ++step_;
  for (const model::ParamTensor& t : layout_.tensors()) {
    kernels::AdamWParams hp;
    hp.lr = lr;
    hp.beta1 = config_.beta1();
    hp.beta2 = config_.beta2();
    hp.eps = config_.eps();
    hp.weight_decay = t.is_norm_or_bias && !config_.decay_norms_and_biases()
                          ? 0.0f
                          : config_.weight_decay();
    hp.step = step_;
    backend_->AdamW(params + t.offset, grads + t.offset, m_ + t.offset,
                    v_ + t.offset, t.numel, hp);
  }
}

int WarmupSteps(const ScheduleConfig& schedule, int total_steps) {
  if (schedule.warmup_steps() > 0) return schedule.warmup_steps();
  return static_cast<int>(std::ceil(schedule.warmup_ratio() * total_steps));
}

double ScheduledLearningRate(const ScheduleConfig& schedule, double peak_lr,
                             int step, int total_steps) {
  const int warmup = WarmupSteps(schedule, total_steps);
  if (step < warmup) {
    return peak_lr * static_cast<double>(step) / std::max(1, warmup);
  }
  const double decay_span = std::max(1, total_steps - warmup);
  switch (schedule.kind()) {
    case ScheduleConfig::LINEAR:
      return peak_lr * std::max(0.0, static_cast<double>(total_steps - step) /
                                         decay_span);
    case ScheduleConfig::COSINE: {
      const double progress = static_cast<double>(step - warmup) / decay_span;
      return peak_lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
    }
    default:
      return peak_lr;
  }
}

}  // namespace prefopt::optim
