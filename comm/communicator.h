// The collectives data-parallel training needs, over one of three backends:
// local (a single rank), MPI (CPU buffers) and NCCL (GPU buffers). Every rank
// calls the same operations in the same order with the same sizes; a rank
// that skips one makes the others wait for it forever (see failure.h for
// turning errors into a job-wide exit).
//
// Buffers live in the memory of the communicator's device: host memory for
// the local and MPI backends, GPU memory for NCCL (which also accepts host
// buffers and sends those over MPI, for small metadata such as metric sums).
// Calls are not thread-safe: make them all from the thread that created the
// communicator (MPI is initialized with MPI_THREAD_FUNNELED).
#ifndef PREFOPT_COMM_COMMUNICATOR_H_
#define PREFOPT_COMM_COMMUNICATOR_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace prefopt::comm {

// How long a GPU rank waits for one collective by default
// (TrainConfig.collective_timeout_s): Hugging Face's ddp_timeout.
inline constexpr absl::Duration kDefaultCollectiveTimeout = absl::Seconds(1800);

// Where a communicator's buffers live.
enum class Device { kCpu, kGpu };

// A non-blocking all-reduce in flight. Its buffer must be neither read nor
// written until Wait() has returned, and it must not outlive its communicator.
// Destroying it without Wait() blocks until the operation is done (so the
// buffer is never written after it may have been freed), discarding any error.
class PendingReduce {
 public:
  virtual ~PendingReduce() = default;

  // Whether the operation has finished, without blocking. For MPI this is also
  // what moves it forward: Open MPI advances non-blocking collectives only
  // inside MPI calls, so call Test() on any pending reduce now and then while
  // computing (between layers of the backward pass) for the transfer to
  // overlap with the computation. An error means the operation failed.
  virtual absl::StatusOr<bool> Test() = 0;

  // Blocks until the operation is done; afterwards the buffer holds the sum
  // over all ranks. Errors from starting the operation, or reported by
  // Test(), are returned here too.
  // Further calls return the first call's result.
  virtual absl::Status Wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  // "local", "mpi" or "nccl".
  virtual std::string Name() const = 0;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // data[i] = Σ over ranks of data[i], in place.
  virtual absl::Status AllReduceSum(float* data, size_t n) = 0;
  // data[i] = (Σ over ranks of data[i]) / world_size, in place.
  virtual absl::Status AllReduceAvg(float* data, size_t n) = 0;
  // Sums in fp64: for metric sums and counts, whose totals must be exact.
  virtual absl::Status AllReduceSum(double* data, size_t n) = 0;

  // `send` holds world_size shards of `recv_count` elements (callers pad the
  // tensor to a multiple of world_size); `recv` receives the sum over ranks of
  // shard rank(). `recv` may be `send + rank() * recv_count` (in place;
  // the other shards of `send` are unspecified afterwards); otherwise the two
  // must not overlap.
  virtual absl::Status ReduceScatterSum(const float* send, float* recv,
                                        size_t recv_count) = 0;
  // `recv` (world_size * send_count elements) receives every rank's `send`,
  // in rank order. `send` may be `recv + rank() * send_count` (in place);
  // otherwise the two must not overlap.
  virtual absl::Status AllGather(const float* send, float* recv,
                                 size_t send_count) = 0;
  // Copies `bytes` bytes of `data` on rank `root` to `data` on every rank.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;
  // Returns once every rank has called Barrier() (and, on GPU, once this
  // rank's queued communication has finished).
  virtual absl::Status Barrier() = 0;

  // Starts data[i] = Σ over ranks of data[i] without waiting for it: one call
  // per gradient bucket as the backward pass finishes it, then Wait() on each
  // before the buckets are read (clipping, optimizer). Every rank must start
  // the same buckets in the same order. Never null; errors surface from
  // Test()/Wait().
  virtual std::unique_ptr<PendingReduce> StartAllReduceSum(float* data,
                                                           size_t n) = 0;

  // GPU backends: the CUDA stream (a cudaStream_t, passed as void*) on which
  // the caller's kernels produce and consume the buffers; operations start
  // after the work queued on it so far. Null means the legacy default stream.
  // CPU backends ignore it.
  virtual void SetComputeStream(void* /*stream*/) {}

  // Ends every rank of the job with `exit_code`, as fast as the backend can
  // (MPI_Abort). Does not return. Use AbortAll (failure.h), which says why.
  [[noreturn]] virtual void Abort(int exit_code) = 0;
};

// A PendingReduce that has already finished with `status`: for backends that
// reduce synchronously, and for operations that failed to start.
std::unique_ptr<PendingReduce> FinishedReduce(absl::Status status);

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_COMMUNICATOR_H_
