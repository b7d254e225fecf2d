// The communicator of a single-rank run: every collective over one rank is
// the identity (or a copy), so nothing leaves the process. Host buffers.
#ifndef PREFOPT_COMM_LOCAL_COMMUNICATOR_H_
#define PREFOPT_COMM_LOCAL_COMMUNICATOR_H_

#include <cstddef>
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace prefopt::comm {

class LocalCommunicator : public Communicator {
 public:
  std::string Name() const override { return "local"; }
  int rank() const override { return 0; }
  int world_size() const override { return 1; }

  absl::Status AllReduceSum(float* data, size_t n) override;
  absl::Status AllReduceAvg(float* data, size_t n) override;
  absl::Status AllReduceSum(double* data, size_t n) override;
  absl::Status ReduceScatterSum(const float* send, float* recv,
                                size_t recv_count) override;
  absl::Status AllGather(const float* send, float* recv,
                         size_t send_count) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Barrier() override;
  std::unique_ptr<PendingReduce> StartAllReduceSum(float* data,
                                                   size_t n) override;
  // Exits the process (there are no other ranks).
  [[noreturn]] void Abort(int exit_code) override;
};

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_LOCAL_COMMUNICATOR_H_
