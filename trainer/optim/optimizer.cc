#include "trainer/optim/optimizer.h"

#include <algorithm>
#include <cmath>

namespace prefopt::optim {

AdamWOptimizer::AdamWOptimizer(kernels::Backend* backend,
                               const model::ParamLayout& layout,
                               const OptimizerConfig& config,
                               size_t shard_begin, size_t shard_end)
    : backend_(backend),
      layout_(layout),
      config_(config),
      begin_(std::min(shard_begin, layout.total())),
      end_(std::max(begin_, std::min(shard_end, layout.total()))) {
  // At least one float, so that an empty shard still has valid buffers.
  const size_t n = std::max<size_t>(end_ - begin_, 1);
  m_ = backend_->Alloc(n);
  v_ = backend_->Alloc(n);
  backend_->Zero(m_, n);
  backend_->Zero(v_, n);
}

AdamWOptimizer::~AdamWOptimizer() {
  backend_->Free(m_);
  backend_->Free(v_);
}

double AdamWOptimizer::LocalGradSquares(const float* grads) const {
  return backend_->SumSquares(grads + begin_, end_ - begin_);
}

void AdamWOptimizer::ClipWithNorm(float* grads, double norm) {
  const GradientSpan mine{grads + begin_, end_ - begin_};
  ScaleForClip(backend_, {mine}, norm, config_.max_grad_norm());
}

void ScaleForClip(kernels::Backend* backend,
                  absl::Span<const GradientSpan> buffers, double norm,
                  double max_norm) {
  if (max_norm <= 0) return;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return;
  for (const GradientSpan& b : buffers) {
    backend->Scale(b.grads, static_cast<float>(coef), b.n);
  }
}

double ClipGlobalNorm(kernels::Backend* backend,
                      absl::Span<const GradientSpan> buffers, double max_norm) {
  double squares = 0;
  for (const GradientSpan& b : buffers) {
    squares += backend->SumSquares(b.grads, b.n);
  }
  const double norm = std::sqrt(squares);
  ScaleForClip(backend, buffers, norm, max_norm);
  return norm;
}

double AdamWOptimizer::ClipGradients(float* grads) {
  const double norm = std::sqrt(LocalGradSquares(grads));
  ClipWithNorm(grads, norm);
  return norm;
}

void AdamWOptimizer::Step(float* params, const float* grads, float lr) {
  ++step_;
  for (const model::ParamTensor& t : layout_.tensors()) {
    const size_t lo = std::max(t.offset, begin_);
    const size_t hi = std::min(t.offset + t.numel, end_);
    if (lo >= hi) continue;
    kernels::AdamWParams hp;
    hp.lr = lr;
    hp.beta1 = config_.beta1();
    hp.beta2 = config_.beta2();
    hp.eps = config_.eps();
    hp.weight_decay = t.is_norm_or_bias && !config_.decay_norms_and_biases()
                          ? 0.0f
                          : config_.weight_decay();
    hp.step = step_;
    backend_->AdamW(params + lo, grads + lo, m_ + (lo - begin_),
                    v_ + (lo - begin_), hi - lo, hp);
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
