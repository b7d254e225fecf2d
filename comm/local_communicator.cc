#include "comm/local_communicator.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace prefopt::comm {

absl::Status LocalCommunicator::AllReduceSum(float* /*data*/, size_t /*n*/) {
  return absl::OkStatus();
}

absl::Status LocalCommunicator::AllReduceAvg(float* /*data*/, size_t /*n*/) {
  return absl::OkStatus();
}

absl::Status LocalCommunicator::AllReduceSum(double* /*data*/, size_t /*n*/) {
  return absl::OkStatus();
}

absl::Status LocalCommunicator::ReduceScatterSum(const float* send, float* recv,
                                                 size_t recv_count) {
  // With one rank the only shard is the whole buffer; in place is a no-op.
  if (recv != send && recv_count > 0) {
    std::memcpy(recv, send, recv_count * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status LocalCommunicator::AllGather(const float* send, float* recv,
                                          size_t send_count) {
  if (recv != send && send_count > 0) {
    std::memcpy(recv, send, send_count * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status LocalCommunicator::Broadcast(void* /*data*/, size_t /*bytes*/,
                                          int root) {
  if (root != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Broadcast: root rank ", root, " does not exist in a world of 1"));
  }
  return absl::OkStatus();
}

absl::Status LocalCommunicator::Barrier() { return absl::OkStatus(); }

std::unique_ptr<PendingReduce> LocalCommunicator::StartAllReduceSum(
    float* /*data*/, size_t /*n*/) {
  return FinishedReduce(absl::OkStatus());
}

void LocalCommunicator::Abort(int exit_code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(exit_code);
}

}  // namespace prefopt::comm
