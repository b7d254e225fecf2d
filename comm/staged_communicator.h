// Collectives on GPU buffers over a host communicator (MPI), by staging:
// each operation copies its device buffer into page-locked host memory on the
// communicator's own CUDA stream, after an event recorded on the compute
// stream; the host communicator reduces the copies; the result is copied back
// on the same stream, and the compute stream waits for that copy (an event)
// before its later work. Host buffers go to the host communicator directly.
//
// The GPU ranks of the CUDA CPU simulation use it in place of NCCL, which the
// simulation does not have, so that `mpirun -np N` of a --config=cudasim
// build runs the training loop's data-parallel GPU path (the stream and event
// ordering included). It is correct on a GPU too, but each byte crosses PCIe
// twice; GPU ranks on real devices use NCCL (comm/nccl_communicator.h).
//
// Non-blocking all-reduces start their host reductions in the order they were
// started (MPI needs the same order on every rank), each once its copy has
// reached host memory; blocking operations first start every waiting one.
#ifndef PREFOPT_COMM_STAGED_COMMUNICATOR_H_
#define PREFOPT_COMM_STAGED_COMMUNICATOR_H_

#include <memory>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace prefopt::comm {

// Over `host`, which must outlive the result; `compute_stream` is a
// cudaStream_t (null: the legacy default stream). Local: creates this rank's
// stream and events only.
absl::StatusOr<std::unique_ptr<Communicator>> CreateStagedCommunicator(
    Communicator* host, void* compute_stream);

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_STAGED_COMMUNICATOR_H_
