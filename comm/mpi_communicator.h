// Collectives over MPI on host buffers: the CPU data-parallel backend, and the
// bootstrap and host-side channel of the NCCL backend. Operations run on a
// duplicate of MPI_COMM_WORLD whose error handler is MPI_ERRORS_RETURN, so MPI
// failures come back as a Status naming the operation and MPI's message.
#ifndef PREFOPT_COMM_MPI_COMMUNICATOR_H_
#define PREFOPT_COMM_MPI_COMMUNICATOR_H_

#include <mpi.h>

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace prefopt::comm {

class MpiCommunicator : public Communicator {
 public:
  // Initializes MPI with at least MPI_THREAD_FUNNELED (argc and argv may be
  // null), unless it already is; then only whoever initialized it finalizes
  // it. MPI can be initialized once per process: a second communicator after
  // the first one finalized MPI is a FailedPrecondition error.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create(int* argc,
                                                                 char*** argv);

  // Frees the communicator and, when Create initialized MPI, calls
  // MPI_Finalize, which waits for every rank to reach it. A rank that hits an
  // error while others may be inside a collective must therefore not just
  // return from main: it calls AbortAll (failure.h) instead.
  ~MpiCommunicator() override;

  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  std::string Name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }

  absl::Status AllReduceSum(float* data, size_t n) override;
  absl::Status AllReduceAvg(float* data, size_t n) override;
  absl::Status AllReduceSum(double* data, size_t n) override;
  // In place, the shards other than rank()'s are overwritten.
  absl::Status ReduceScatterSum(const float* send, float* recv,
                                size_t recv_count) override;
  absl::Status AllGather(const float* send, float* recv,
                         size_t send_count) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Barrier() override;
  // MPI_Iallreduce. See PendingReduce::Test for how it makes progress.
  std::unique_ptr<PendingReduce> StartAllReduceSum(float* data,
                                                   size_t n) override;
  // MPI_Abort on the job.
  [[noreturn]] void Abort(int exit_code) override;

  // Maximal element count of one MPI call (MPI counts are int): larger
  // all-reduces and broadcasts are split into several calls.
  static constexpr size_t kMaxCount = size_t{1} << 30;

 private:
  MpiCommunicator(MPI_Comm comm, bool finalize_mpi, int rank, int world_size);

  MPI_Comm comm_;
  bool finalize_mpi_;
  int rank_;
  int world_size_;
};

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_MPI_COMMUNICATOR_H_
