// The communicator of data-parallel GPU ranks, for code that must not depend
// on CUDA (the training loop): the program registers how to make one
// (RegisterGpuCommunicators in comm/gpu_ranks.h), the loop asks for one over
// its host communicator once it knows its backend runs on a GPU.
#ifndef PREFOPT_COMM_GPU_COMMUNICATOR_H_
#define PREFOPT_COMM_GPU_COMMUNICATOR_H_

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"

namespace prefopt::comm {

// A communicator over `host`'s ranks whose collectives accept GPU buffers
// (host buffers still go to `host`) and start after the work queued so far on
// `compute_stream` (a cudaStream_t); a rank that waits longer than `timeout`
// for one operation ends with an error naming it. `host` must outlive it.
// Collective: every rank calls it.
using GpuCommunicatorFactory =
    std::function<absl::StatusOr<std::unique_ptr<Communicator>>(
        Communicator* host, int local_rank, void* compute_stream,
        absl::Duration timeout)>;

// Makes `factory` the one CreateGpuCommunicator uses (replacing an earlier
// one).
void RegisterGpuCommunicator(GpuCommunicatorFactory factory);

// The registered factory's communicator; an error naming the missing piece
// when the program registered none.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGpuCommunicator(
    Communicator* host, int local_rank, void* compute_stream,
    absl::Duration timeout);

// A communicator that forwards every call to `target`, which must outlive it:
// for backends that take ownership of their host communicator.
std::unique_ptr<Communicator> Borrow(Communicator* target);

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_GPU_COMMUNICATOR_H_
