// Collectives over NCCL on GPU buffers: the GPU data-parallel backend. One
// rank per GPU; the NCCL communicator is bootstrapped over a host
// communicator (MPI across processes), which also carries every operation
// whose buffers are in host memory (metric sums, fingerprints, broadcasts of
// host structures). Blocking operations run on the communicator's own CUDA
// stream; non-blocking all-reduces run on a second stream, so they overlap
// with the kernels of the compute stream (SetComputeStream) and report
// completion through CUDA events.
//
// In a build without the CUDA toolkit the backend is absent:
// CreateNcclCommunicator returns an error saying so.
#ifndef PREFOPT_COMM_NCCL_COMMUNICATOR_H_
#define PREFOPT_COMM_NCCL_COMMUNICATOR_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"

namespace prefopt::comm {

// Whether this build has the NCCL backend.
bool BuiltWithNccl();

// Collective over `host`'s ranks. Selects this rank's GPU (device
// `local_rank`, or device 0 when the launcher made exactly one GPU visible to
// each rank), then creates the NCCL communicator: rank 0 makes the
// ncclUniqueId and broadcasts it over `host`. The ranks first agree over
// `host` that every one of them found its GPU, so a rank without one makes
// all of them fail rather than hang. `host` is an MpiCommunicator for a
// multi-process job, a LocalCommunicator for a single GPU without a launcher;
// the returned communicator owns it.
//
// A rank that waits longer than `timeout` for one operation (a peer rank
// alive but stuck, or far behind: NCCL reports no error for it) gets a
// DeadlineExceeded error naming the operation, which the caller turns into
// the end of the job (AbortAll: ncclCommAbort, then the host communicator's
// abort) instead of a hang.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    std::unique_ptr<Communicator> host, int local_rank,
    absl::Duration timeout = kDefaultCollectiveTimeout);

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_NCCL_COMMUNICATOR_H_
