// An in-process stand-in for NCCL on the CUDA CPU simulation, for testing
// comm/nccl_communicator.cc's stream and event ordering without GPUs: the
// nccl.h calls that file makes, defined over the simulation's streams. This
// process is rank 0 of a job whose other ranks hold `peer` in every element of
// every buffer, so each collective's result shows what it read, and when:
// each runs as work queued on the stream it was given, appending to Log()
// when the stream reaches it.
//
// The simulation runs queued work only when the host synchronizes, while a
// GPU progresses on its own: ncclCommGetAsyncError, which the communicator
// calls while it polls for completion, stands for that progress by running
// the work queued on every stream given to a collective so far.
#ifndef PREFOPT_COMM_FAKE_NCCL_H_
#define PREFOPT_COMM_FAKE_NCCL_H_

#include <nccl.h>

#include <string>
#include <vector>

namespace prefopt::comm::fake_nccl {

// What every other rank contributes to each element (default 1000).
void SetPeerValue(float peer);
// Returned by later ncclCommGetAsyncError calls (default ncclSuccess).
void SetAsyncError(ncclResult_t error);
// While stalled, the other ranks never join: ncclCommGetAsyncError lets no
// queued work run and reports no error, as NCCL does for a peer that is
// alive but stuck (default false).
void SetStalled(bool stalled);
// Entries "AllReduce <first element's address>" etc., in execution order;
// tests append their own entries from work they queue.
std::vector<std::string>& Log();
// Whether ncclCommAbort was called.
bool Aborted();

}  // namespace prefopt::comm::fake_nccl

#endif  // PREFOPT_COMM_FAKE_NCCL_H_
