#include "trainer/objectives/output_layer.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace prefopt::objectives {

ChunkedOutputLayer::ChunkedOutputLayer(kernels::Backend* backend, int max_rows,
                                       int hidden, int vocab, int chunk)
    : backend_(backend),
      max_rows_(max_rows),
      hidden_(hidden),
      vocab_(vocab),
      chunk_(chunk) {
  chunk_buf_ = backend_->Alloc(static_cast<size_t>(chunk) * vocab);
  lse_ = backend_->Alloc(max_rows);
  logp_ = backend_->Alloc(max_rows);
  logit_sum_ = backend_->Alloc(max_rows);
  static_assert(sizeof(float) == sizeof(int32_t));
  correct_ = backend_->Alloc(max_rows);
  entropy_ = backend_->Alloc(max_rows);
  log_sum_sq_ = backend_->Alloc(max_rows);
  coef_ = backend_->Alloc(max_rows);
  logp_host_.reserve(max_rows);
  logit_sum_host_.reserve(max_rows);
  entropy_host_.reserve(max_rows);
  correct_host_.reserve(max_rows);
}

ChunkedOutputLayer::~ChunkedOutputLayer() {
  for (float* p : {chunk_buf_, lse_, logp_, logit_sum_, correct_, entropy_,
                   log_sum_sq_, coef_}) {
    backend_->Free(p);
  }
}

int ChunkedOutputLayer::Pass1(const float* hidden, const float* wout,
                              const int32_t* tokens,
                              const std::vector<ResponseSegment>& segments,
                              bool log_sum_sq_probs) {
  int total = 0;
  for (const ResponseSegment& s : segments) total += s.count;
  if (total > max_rows_) {
    // A caller bug: the trainer sizes the layer for its largest micro-batch.
    std::fprintf(
        stderr, "ChunkedOutputLayer::Forward: %d response rows, sized for %d\n",
        total, max_rows_);
    std::abort();
  }
  total = 0;
  for (const ResponseSegment& s : segments) {
    backend_->OutputForward(
        lse_ + total, logp_ + total, logit_sum_ + total,
        reinterpret_cast<int32_t*>(correct_ + total), entropy_ + total,
        log_sum_sq_probs ? log_sum_sq_ + total : nullptr,
        hidden + static_cast<size_t>(s.row) * hidden_, wout, tokens + s.row + 1,
        s.count, hidden_, vocab_, chunk_buf_, chunk_);
    total += s.count;
  }
  return total;
}

void ChunkedOutputLayer::ForwardOnBackend(
    const float* hidden, const float* wout, const int32_t* tokens,
    const std::vector<ResponseSegment>& segments, bool log_sum_sq_probs) {
  Pass1(hidden, wout, tokens, segments, log_sum_sq_probs);
}

ChunkedOutputLayer::BackendRows ChunkedOutputLayer::rows() const {
  return {logp_,    logit_sum_,  reinterpret_cast<const int32_t*>(correct_),
          entropy_, log_sum_sq_, coef_};
}

std::vector<SequenceScores> ChunkedOutputLayer::Forward(
    const float* hidden, const float* wout, const int32_t* tokens,
    const std::vector<ResponseSegment>& segments, bool log_sum_sq_probs) {
  const int total = Pass1(hidden, wout, tokens, segments, log_sum_sq_probs);
  logp_host_.resize(total);
  logit_sum_host_.resize(total);
  correct_host_.resize(total);
  entropy_host_.resize(total);
  log_sum_sq_host_.resize(log_sum_sq_probs ? total : 0);
  backend_->CopyToHost(logp_host_.data(), logp_, total);
  backend_->CopyToHost(logit_sum_host_.data(), logit_sum_, total);
  backend_->CopyToHost(entropy_host_.data(), entropy_, total);
  if (log_sum_sq_probs) {
    backend_->CopyToHost(log_sum_sq_host_.data(), log_sum_sq_, total);
  }
  backend_->CopyToHost(reinterpret_cast<float*>(correct_host_.data()), correct_,
                       total);

  std::vector<SequenceScores> scores(segments.size());
  int r = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    SequenceScores& sc = scores[i];
    sc.tokens = segments[i].count;
    for (int t = 0; t < segments[i].count; ++t, ++r) {
      sc.logp += logp_host_[r];
      sc.logit_sum += logit_sum_host_[r];
      sc.correct += correct_host_[r];
      sc.entropy_sum += entropy_host_[r];
    }
  }
  return scores;
}

void ChunkedOutputLayer::Backward(float* dhidden, float* dwout,
                                  const float* hidden, const float* wout,
                                  const int32_t* tokens,
                                  const std::vector<ResponseSegment>& segments,
                                  const std::vector<float>& coef) {
  backend_->CopyToDevice(coef_, coef.data(), coef.size());
  BackwardOnBackend(dhidden, dwout, hidden, wout, tokens, segments);
}

void ChunkedOutputLayer::BackwardOnBackend(
    float* dhidden, float* dwout, const float* hidden, const float* wout,
    const int32_t* tokens, const std::vector<ResponseSegment>& segments) {
  int total = 0;
  for (const ResponseSegment& s : segments) {
    const size_t off = static_cast<size_t>(s.row) * hidden_;
    backend_->OutputBackward(dhidden + off, dwout, hidden + off, wout,
                             tokens + s.row + 1, lse_ + total, coef_ + total,
                             s.count, hidden_, vocab_, chunk_buf_, chunk_);
    total += s.count;
  }
}

}  // namespace prefopt::objectives
