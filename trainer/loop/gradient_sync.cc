#include "trainer/loop/gradient_sync.h"

#include <algorithm>

namespace prefopt::loop {

GradientSync::GradientSync(comm::Communicator* comm, size_t padded_total,
                           int zero_stage)
    : comm_(comm), total_(padded_total), zero_stage_(zero_stage) {
  const int world = comm_ ? comm_->world_size() : 1;
  shard_ = {0, total_};
  if (zero_stage_ == 1) {
    const size_t per_rank = total_ / world;
    shard_ = {per_rank * comm_->rank(), per_rank * (comm_->rank() + 1)};
  }
}

void GradientSync::BlockReady(float* grads, model::ParamRange range) {
  if (!overlapping_ || comm_ == nullptr || comm_->world_size() == 1) return;
  pending_.push_back(
      comm_->StartAllReduceSum(grads + range.begin, range.end - range.begin));
  started_.push_back(range);
  // Open MPI progresses non-blocking collectives only inside MPI calls.
  for (auto& p : pending_) (void)p->Test();
}

absl::Status GradientSync::Finish(float* grads) {
  absl::Status status;
  if (comm_ != nullptr && comm_->world_size() > 1) {
    if (zero_stage_ == 1) {
      const size_t per_rank = total_ / comm_->world_size();
      status = comm_->ReduceScatterSum(grads, grads + shard_.begin, per_rank);
    } else {
      // The ranges not covered by a block: everything outside the started
      // blocks (embeddings, final norm, output layer, padding).
      std::sort(started_.begin(), started_.end(),
                [](const model::ParamRange& a, const model::ParamRange& b) {
                  return a.begin < b.begin;
                });
      size_t cursor = 0;
      for (const model::ParamRange& r : started_) {
        if (r.begin > cursor) {
          pending_.push_back(
              comm_->StartAllReduceSum(grads + cursor, r.begin - cursor));
        }
        cursor = std::max(cursor, r.end);
      }
      if (cursor < total_) {
        pending_.push_back(
            comm_->StartAllReduceSum(grads + cursor, total_ - cursor));
      }
    }
    for (auto& p : pending_) {
      absl::Status s = p->Wait();
      if (status.ok() && !s.ok()) status = s;
    }
  }
  pending_.clear();
  started_.clear();
  overlapping_ = false;
  return status;
}

absl::StatusOr<double> GradientSync::GlobalGradSquares(double local_squares) {
  if (zero_stage_ == 1 && comm_ != nullptr && comm_->world_size() > 1) {
    absl::Status s = comm_->AllReduceSum(&local_squares, 1);
    if (!s.ok()) return s;
  }
  return local_squares;
}

absl::Status GradientSync::GatherParams(float* params) {
  if (zero_stage_ != 1 || comm_ == nullptr || comm_->world_size() == 1) {
    return absl::OkStatus();
  }
  return comm_->AllGather(params + shard_.begin, params,
                          shard_.end - shard_.begin);
}

}  // namespace prefopt::loop
