#include "comm/communicator.h"

#include <memory>
#include <utility>

namespace prefopt::comm {
namespace {

class FinishedPendingReduce : public PendingReduce {
 public:
  explicit FinishedPendingReduce(absl::Status status)
      : status_(std::move(status)) {}

  absl::StatusOr<bool> Test() override {
    if (!status_.ok()) return status_;
    return true;
  }
  absl::Status Wait() override { return status_; }

 private:
  absl::Status status_;
};

}  // namespace

std::unique_ptr<PendingReduce> FinishedReduce(absl::Status status) {
  return std::make_unique<FinishedPendingReduce>(std::move(status));
}

}  // namespace prefopt::comm
