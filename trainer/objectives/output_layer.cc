#include "trainer/objectives/output_layer.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace prefopt::objectives {

int OutputChunkRows(int configured, int64_t vocab, int max_rows) {
  int rows = configured;
  if (rows <= 0) {
    constexpr int64_t kBudgetBytes = int64_t{64} << 20;
    constexpr int kStep = 32, kRows = 256;
    const int64_t fit =
        kBudgetBytes / (std::max<int64_t>(vocab, 1) * int64_t{sizeof(float)});
    rows = static_cast<int>(
        std::clamp<int64_t>(fit / kStep * kStep, kStep, kRows));
  }
  return std::max(1, std::min(rows, max_rows));
}

size_t OutputLayerFloats(int chunk, int64_t vocab, int max_rows, int hidden,
                         int models) {
  const size_t rows = static_cast<size_t>(std::max(max_rows, 0));
  constexpr size_t kRowValues = 16;
  return static_cast<size_t>(models) * static_cast<size_t>(chunk) *
             static_cast<size_t>(vocab) +
         static_cast<size_t>(models + 1) * rows * static_cast<size_t>(hidden) +
         kRowValues * rows;
}

ChunkedOutputLayer::ChunkedOutputLayer(kernels::Backend* backend, int max_rows,
                                       int hidden, int vocab, int chunk)
    : backend_(backend),
      max_rows_(max_rows),
      hidden_(hidden),
      vocab_(vocab),
      chunk_(OutputChunkRows(chunk, vocab, max_rows)) {
  chunk_buf_ = backend_->Alloc(static_cast<size_t>(chunk_) * vocab);
  lse_ = backend_->Alloc(max_rows);
  logp_ = backend_->Alloc(max_rows);
  logit_sum_ = backend_->Alloc(max_rows);
  static_assert(sizeof(float) == sizeof(int32_t));
  correct_ = backend_->Alloc(max_rows);
  entropy_ = backend_->Alloc(max_rows);
  log_sum_sq_ = backend_->Alloc(max_rows);
  coef_ = backend_->Alloc(max_rows);
  rows_h_ = backend_->Alloc(static_cast<size_t>(max_rows) * hidden);
  rows_dh_ = backend_->Alloc(static_cast<size_t>(max_rows) * hidden);
  labels_.reserve(max_rows);
  logp_host_.reserve(max_rows);
  logit_sum_host_.reserve(max_rows);
  entropy_host_.reserve(max_rows);
  correct_host_.reserve(max_rows);
}

ChunkedOutputLayer::~ChunkedOutputLayer() {
  for (float* p : {chunk_buf_, lse_, logp_, logit_sum_, correct_, entropy_,
                   log_sum_sq_, coef_, rows_h_, rows_dh_}) {
    backend_->Free(p);
  }
}

int GatherSegmentRows(kernels::Backend& backend, float* out, const float* rows,
                      int width, const std::vector<ResponseSegment>& segments) {
  int n = 0;
  for (const ResponseSegment& s : segments) {
    backend.Copy(out + static_cast<size_t>(n) * width,
                 rows + static_cast<size_t>(s.row) * width,
                 static_cast<size_t>(s.count) * width);
    n += s.count;
  }
  return n;
}

void ScatterAddSegmentRows(kernels::Backend& backend, float* rows,
                           const float* in, int width,
                           const std::vector<ResponseSegment>& segments) {
  int n = 0;
  for (const ResponseSegment& s : segments) {
    backend.Axpy(rows + static_cast<size_t>(s.row) * width, 1.0f,
                 in + static_cast<size_t>(n) * width,
                 static_cast<size_t>(s.count) * width);
    n += s.count;
  }
}

void SegmentLabels(const int32_t* tokens,
                   const std::vector<ResponseSegment>& segments,
                   std::vector<int32_t>* labels) {
  labels->clear();
  for (const ResponseSegment& s : segments) {
    labels->insert(labels->end(), tokens + s.row + 1,
                   tokens + s.row + 1 + s.count);
  }
}

const float* ChunkedOutputLayer::GatherRows(
    const float* hidden, const int32_t* tokens,
    const std::vector<ResponseSegment>& segments) {
  SegmentLabels(tokens, segments, &labels_);
  if (static_cast<int>(labels_.size()) > max_rows_) {
    // A caller bug: the trainer sizes the layer for its largest micro-batch.
    std::fprintf(stderr,
                 "ChunkedOutputLayer: %zu response rows, sized for %d\n",
                 labels_.size(), max_rows_);
    std::abort();
  }
  if (segments.size() == 1) {
    return hidden + static_cast<size_t>(segments[0].row) * hidden_;
  }
  GatherSegmentRows(*backend_, rows_h_, hidden, hidden_, segments);
  return rows_h_;
}

int ChunkedOutputLayer::Pass1(const float* hidden, const float* wout,
                              const int32_t* tokens,
                              const std::vector<ResponseSegment>& segments,
                              bool log_sum_sq_probs) {
  const float* rows = GatherRows(hidden, tokens, segments);
  const int total = static_cast<int>(labels_.size());
  backend_->OutputForward(
      lse_, logp_, logit_sum_, reinterpret_cast<int32_t*>(correct_), entropy_,
      log_sum_sq_probs ? log_sum_sq_ : nullptr, rows, wout, labels_.data(),
      total, hidden_, vocab_, chunk_buf_, chunk_);
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
  const float* rows = GatherRows(hidden, tokens, segments);
  const int total = static_cast<int>(labels_.size());
  // One segment is scored in place; gathered rows get their ∂hidden in
  // rows_dh_ and scatter it back.
  const bool in_place = segments.size() == 1;
  float* dh = dhidden;
  if (dhidden != nullptr) {
    if (in_place) {
      dh += static_cast<size_t>(segments[0].row) * hidden_;
    } else {
      dh = rows_dh_;
      backend_->Zero(rows_dh_, static_cast<size_t>(total) * hidden_);
    }
  }
  backend_->OutputBackward(dh, dwout, rows, wout, labels_.data(), lse_, coef_,
                           total, hidden_, vocab_, chunk_buf_, chunk_);
  if (dhidden != nullptr && !in_place) {
    ScatterAddSegmentRows(*backend_, dhidden, rows_dh_, hidden_, segments);
  }
}

}  // namespace prefopt::objectives
