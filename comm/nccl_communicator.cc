// The NCCL backend (built when the CUDA toolkit is present). Host code only:
// the CUDA runtime and NCCL APIs, compiled by the host compiler.
#include "comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace prefopt::comm {
namespace {

absl::Status CudaError(cudaError_t e, const std::string& call,
                       const std::string& operation) {
  return absl::InternalError(absl::StrCat(call, " failed in ", operation, ": ",
                                          cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}

absl::Status NcclError(ncclResult_t r, const std::string& call,
                       const std::string& operation) {
  const char* last = ncclGetLastError(nullptr);
  return absl::InternalError(absl::StrCat(
      call, " failed in ", operation, ": ", ncclGetErrorString(r),
      last != nullptr && *last != '\0' ? absl::StrCat(" (", last, ")")
                                       : std::string()));
}

std::string Op(const char* name, size_t n) {
  return absl::StrCat(name, "(n=", n, ")");
}

bool OnDevice(const void* p) {
  cudaPointerAttributes attributes;
  if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
    // Drivers before CUDA 11 report plain host memory as an error; clear it.
    cudaGetLastError();
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice ||
         attributes.type == cudaMemoryTypeManaged;
}

bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const char* pa = static_cast<const char*>(a);
  const char* pb = static_cast<const char*>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

absl::Status MixedMemory(const std::string& operation) {
  return absl::InvalidArgumentError(
      absl::StrCat(operation,
                   ": one buffer is in GPU memory and the other in host "
                   "memory; both must be on the same side"));
}

// Picks this rank's GPU and makes it current.
absl::StatusOr<int> SelectDevice(int local_rank) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string visible_text =
      absl::StrCat("CUDA_VISIBLE_DEVICES=", visible ? visible : "(unset)");
  if (e != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no usable CUDA device for the GPU communicator (",
        e != cudaSuccess ? cudaGetErrorString(e) : "no device found", "; ",
        visible_text, "); run on a GPU node or train on the CPU"));
  }
  int device = local_rank;
  if (local_rank >= count) {
    if (count != 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("local rank ", local_rank, " needs GPU ", local_rank,
                       " but only ", count, " are visible (", visible_text,
                       "); start at most one rank per GPU on each node"));
    }
    // The launcher gave each rank its own single GPU (srun --gpus-per-task).
    device = 0;
  }
  const cudaError_t set = cudaSetDevice(device);
  if (set != cudaSuccess) {
    return CudaError(set, absl::StrCat("cudaSetDevice(", device, ")"),
                     "CreateNcclCommunicator");
  }
  return device;
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> host, int device,
                   absl::Duration timeout)
      : host_(std::move(host)), device_(device), timeout_(timeout) {}

  ~NcclCommunicator() override {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    if (async_stream_ != nullptr) cudaStreamSynchronize(async_stream_);
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    if (ready_ != nullptr) cudaEventDestroy(ready_);
    if (async_stream_ != nullptr) cudaStreamDestroy(async_stream_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // The streams and the ordering event; local to this rank.
  absl::Status CreateStreams() {
    const std::string op = "CreateNcclCommunicator";
    cudaError_t e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (e != cudaSuccess) return CudaError(e, "cudaStreamCreateWithFlags", op);
    e = cudaStreamCreateWithFlags(&async_stream_, cudaStreamNonBlocking);
    if (e != cudaSuccess) return CudaError(e, "cudaStreamCreateWithFlags", op);
    e = cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming);
    if (e != cudaSuccess) return CudaError(e, "cudaEventCreateWithFlags", op);
    return absl::OkStatus();
  }

  // Collective: rank 0's ncclUniqueId travels over the host communicator.
  absl::Status InitNccl() {
    const std::string op = "CreateNcclCommunicator";
    struct {
      ncclUniqueId id;
      int ok;
    } message = {};
    absl::Status id_status;
    if (rank() == 0) {
      const ncclResult_t r = ncclGetUniqueId(&message.id);
      id_status = r == ncclSuccess ? absl::OkStatus()
                                   : NcclError(r, "ncclGetUniqueId", op);
      message.ok = id_status.ok() ? 1 : 0;
    }
    absl::Status s = host_->Broadcast(&message, sizeof(message), 0);
    if (!s.ok()) return s;
    if (!id_status.ok()) return id_status;
    if (message.ok == 0) {
      return absl::InternalError(absl::StrCat(
          op, ": rank 0 could not create the NCCL id (see its error)"));
    }
    const ncclResult_t r =
        ncclCommInitRank(&comm_, world_size(), message.id, rank());
    if (r != ncclSuccess) {
      comm_ = nullptr;
      return NcclError(r, absl::StrCat("ncclCommInitRank on GPU ", device_),
                       op);
    }
    return absl::OkStatus();
  }

  Communicator& host() { return *host_; }

  std::string Name() const override { return "nccl"; }
  int rank() const override { return host_->rank(); }
  int world_size() const override { return host_->world_size(); }

  absl::Status AllReduceSum(float* data, size_t n) override {
    if (!OnDevice(data)) return host_->AllReduceSum(data, n);
    return AllReduce(data, n, ncclFloat, ncclSum, Op("AllReduceSum", n));
  }

  absl::Status AllReduceAvg(float* data, size_t n) override {
    if (!OnDevice(data)) return host_->AllReduceAvg(data, n);
    return AllReduce(data, n, ncclFloat, ncclAvg, Op("AllReduceAvg", n));
  }

  absl::Status AllReduceSum(double* data, size_t n) override {
    if (!OnDevice(data)) return host_->AllReduceSum(data, n);
    return AllReduce(data, n, ncclDouble, ncclSum,
                     Op("AllReduceSum(double)", n));
  }

  absl::Status ReduceScatterSum(const float* send, float* recv,
                                size_t recv_count) override {
    const std::string op = Op("ReduceScatterSum", recv_count);
    const bool device = OnDevice(send);
    if (device != OnDevice(recv)) return MixedMemory(op);
    if (!device) return host_->ReduceScatterSum(send, recv, recv_count);
    const size_t shard_bytes = recv_count * sizeof(float);
    if (recv != send + rank() * recv_count &&
        Overlap(send, shard_bytes * world_size(), recv, shard_bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          op,
          ": recv overlaps send without being this rank's shard of it "
          "(in place means recv == send + rank * recv_count)"));
    }
    return RunBlocking(op, [&](cudaStream_t s) {
      return ncclReduceScatter(send, recv, recv_count, ncclFloat, ncclSum,
                               comm_, s);
    });
  }

  absl::Status AllGather(const float* send, float* recv,
                         size_t send_count) override {
    const std::string op = Op("AllGather", send_count);
    const bool device = OnDevice(send);
    if (device != OnDevice(recv)) return MixedMemory(op);
    if (!device) return host_->AllGather(send, recv, send_count);
    const size_t shard_bytes = send_count * sizeof(float);
    if (send != recv + rank() * send_count &&
        Overlap(send, shard_bytes, recv, shard_bytes * world_size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          op,
          ": send overlaps recv without being this rank's block of it "
          "(in place means send == recv + rank * send_count)"));
    }
    return RunBlocking(op, [&](cudaStream_t s) {
      return ncclAllGather(send, recv, send_count, ncclFloat, comm_, s);
    });
  }

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    if (!OnDevice(data)) return host_->Broadcast(data, bytes, root);
    const std::string op = absl::StrCat("Broadcast(bytes=", bytes, ")");
    if (root < 0 || root >= world_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": root rank ", root,
                       " does not exist in a world of ", world_size()));
    }
    return RunBlocking(op, [&](cudaStream_t s) {
      return ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, s);
    });
  }

  absl::Status Barrier() override {
    absl::Status s =
        WaitUntil([this] { return cudaStreamQuery(stream_); }, "Barrier");
    if (s.ok()) {
      s = WaitUntil([this] { return cudaStreamQuery(async_stream_); },
                    "Barrier");
    }
    if (!s.ok()) return s;
    return host_->Barrier();
  }

  std::unique_ptr<PendingReduce> StartAllReduceSum(float* data,
                                                   size_t n) override;

  void SetComputeStream(void* stream) override {
    compute_ = static_cast<cudaStream_t>(stream);
  }

  void Abort(int exit_code) override {
    // Unblocks this rank's NCCL operations; the host communicator then ends
    // every process of the job.
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    host_->Abort(exit_code);
  }

  // Waits until `query` (a cudaStreamQuery or cudaEventQuery) reports
  // completion while watching NCCL's asynchronous errors, so that a broken
  // connection to a peer comes back as an error instead of a hang, and at
  // most timeout_: a peer that is alive but never joins (stuck, or far
  // behind) gives NCCL no error to report.
  template <typename Query>
  absl::Status WaitUntil(Query query, const std::string& operation) {
    const absl::Time deadline = absl::Now() + timeout_;
    for (;;) {
      absl::StatusOr<bool> done = Poll(query(), operation);
      if (!done.ok()) return done.status();
      if (*done) return absl::OkStatus();
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "rank ", rank(), ": NCCL ", operation, " did not finish within ",
            absl::FormatDuration(timeout_),
            " (collective_timeout_s): another rank is stuck or far behind; "
            "see the other ranks' logs"));
      }
      std::this_thread::yield();
    }
  }

  // Whether a query's result means done; an error when it or NCCL failed.
  absl::StatusOr<bool> Poll(cudaError_t query_result,
                            const std::string& operation) {
    if (query_result == cudaSuccess) return true;
    if (query_result != cudaErrorNotReady) {
      return CudaError(query_result, "waiting for the GPU", operation);
    }
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &async);
    if (r != ncclSuccess)
      return NcclError(r, "ncclCommGetAsyncError", operation);
    if (async != ncclSuccess && async != ncclInProgress) {
      return NcclError(async, "NCCL (asynchronous error)", operation);
    }
    return false;
  }

 private:
  // Makes `stream` wait for the work queued so far on the compute stream.
  absl::Status AfterCompute(cudaStream_t stream, const std::string& operation) {
    cudaError_t e = cudaEventRecord(ready_, compute_);
    if (e != cudaSuccess) return CudaError(e, "cudaEventRecord", operation);
    e = cudaStreamWaitEvent(stream, ready_, 0);
    if (e != cudaSuccess) return CudaError(e, "cudaStreamWaitEvent", operation);
    return absl::OkStatus();
  }

  template <typename Enqueue>
  absl::Status RunBlocking(const std::string& operation, Enqueue enqueue) {
    absl::Status s = AfterCompute(stream_, operation);
    if (!s.ok()) return s;
    const ncclResult_t r = enqueue(stream_);
    if (r != ncclSuccess) return NcclError(r, "NCCL", operation);
    return WaitUntil([this] { return cudaStreamQuery(stream_); }, operation);
  }

  absl::Status AllReduce(void* data, size_t n, ncclDataType_t type,
                         ncclRedOp_t op, const std::string& operation) {
    return RunBlocking(operation, [&](cudaStream_t s) {
      return ncclAllReduce(data, data, n, type, op, comm_, s);
    });
  }

  std::unique_ptr<Communicator> host_;
  int device_;
  absl::Duration timeout_;  // the longest wait for one operation
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaStream_t async_stream_ = nullptr;
  cudaStream_t compute_ = nullptr;
  cudaEvent_t ready_ = nullptr;
};

class NcclPendingReduce : public PendingReduce {
 public:
  NcclPendingReduce(NcclCommunicator* comm, cudaEvent_t done, size_t n)
      : comm_(comm),
        done_event_(done),
        operation_(Op("StartAllReduceSum", n)) {}

  ~NcclPendingReduce() override {
    if (!finished_) Wait().IgnoreError();
    cudaEventDestroy(done_event_);
  }

  absl::StatusOr<bool> Test() override {
    if (finished_) return Result();
    absl::StatusOr<bool> done =
        comm_->Poll(cudaEventQuery(done_event_), operation_);
    if (done.ok() && !*done) return false;
    finished_ = true;
    status_ = done.status();
    return Result();
  }

  absl::Status Wait() override {
    if (finished_) return status_;
    finished_ = true;
    status_ = comm_->WaitUntil([this] { return cudaEventQuery(done_event_); },
                               operation_);
    return status_;
  }

 private:
  absl::StatusOr<bool> Result() const {
    if (!status_.ok()) return status_;
    return true;
  }

  NcclCommunicator* comm_;
  cudaEvent_t done_event_;
  std::string operation_;
  bool finished_ = false;
  absl::Status status_;
};

std::unique_ptr<PendingReduce> NcclCommunicator::StartAllReduceSum(float* data,
                                                                   size_t n) {
  if (!OnDevice(data)) return host_->StartAllReduceSum(data, n);
  const std::string op = Op("StartAllReduceSum", n);
  cudaEvent_t done = nullptr;
  const cudaError_t e = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
  if (e != cudaSuccess) {
    return FinishedReduce(CudaError(e, "cudaEventCreateWithFlags", op));
  }
  absl::Status s = AfterCompute(async_stream_, op);
  if (s.ok()) {
    const ncclResult_t r =
        ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm_, async_stream_);
    if (r != ncclSuccess) s = NcclError(r, "ncclAllReduce", op);
  }
  if (s.ok()) {
    const cudaError_t record = cudaEventRecord(done, async_stream_);
    if (record != cudaSuccess) s = CudaError(record, "cudaEventRecord", op);
  }
  if (!s.ok()) {
    cudaEventDestroy(done);
    return FinishedReduce(std::move(s));
  }
  return std::make_unique<NcclPendingReduce>(this, done, n);
}

}  // namespace

bool BuiltWithNccl() { return true; }

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    std::unique_ptr<Communicator> host, int local_rank,
    absl::Duration timeout) {
  if (host == nullptr) {
    return absl::InvalidArgumentError(
        "CreateNcclCommunicator: no host communicator to bootstrap over");
  }
  std::unique_ptr<NcclCommunicator> comm;
  absl::Status local;
  absl::StatusOr<int> device = SelectDevice(local_rank);
  if (device.ok()) {
    comm =
        std::make_unique<NcclCommunicator>(std::move(host), *device, timeout);
    local = comm->CreateStreams();
  } else {
    local = device.status();
  }
  Communicator& bootstrap = comm != nullptr ? comm->host() : *host;
  // Every rank learns which ranks failed, so that none waits in NCCL's
  // initialization for a rank that gave up.
  std::vector<double> failed(bootstrap.world_size(), 0.0);
  failed[bootstrap.rank()] = local.ok() ? 0.0 : 1.0;
  absl::Status s = bootstrap.AllReduceSum(failed.data(), failed.size());
  if (!s.ok()) return s;
  if (!local.ok()) return local;
  std::vector<int> failed_ranks;
  for (size_t r = 0; r < failed.size(); ++r) {
    if (failed[r] != 0.0) failed_ranks.push_back(static_cast<int>(r));
  }
  if (!failed_ranks.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CreateNcclCommunicator: GPU setup failed on rank(s) ",
                     absl::StrJoin(failed_ranks, ","), " (see their errors)"));
  }
  s = comm->InitNccl();
  if (!s.ok()) return s;
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace prefopt::comm
