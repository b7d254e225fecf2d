#include "comm/staged_communicator.h"

#include <cuda_runtime.h>

#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace prefopt::comm {
namespace {

bool OnDevice(const void* p) {
  cudaPointerAttributes attributes;
  if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice ||
         attributes.type == cudaMemoryTypeManaged;
}

absl::Status Check(cudaError_t e, const char* call,
                   const std::string& operation) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(call, " failed in ", operation, ": ",
                                          cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")"));
}

absl::Status MixedMemory(const std::string& operation) {
  return absl::InvalidArgumentError(
      absl::StrCat(operation,
                   ": one buffer is in GPU memory and the other in host "
                   "memory; both must be on the same side"));
}

// Page-locked host memory, so that copies into and out of it run in stream
// order (a copy into pageable memory would complete when it is queued).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (data_ != nullptr) cudaFreeHost(data_);
  }

  // At least `bytes` bytes; the contents are not kept.
  absl::StatusOr<char*> Get(size_t bytes, const std::string& operation) {
    if (bytes <= bytes_) return data_;
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = nullptr;
    bytes_ = 0;
    void* p = nullptr;
    absl::Status s =
        Check(cudaMallocHost(&p, bytes), "cudaMallocHost", operation);
    if (!s.ok()) return s;
    data_ = static_cast<char*>(p);
    bytes_ = bytes;
    return data_;
  }

 private:
  char* data_ = nullptr;
  size_t bytes_ = 0;
};

class StagedPendingReduce;

class StagedCommunicator : public Communicator {
 public:
  StagedCommunicator(Communicator* host, cudaStream_t compute)
      : host_(host), compute_(compute) {}

  ~StagedCommunicator() override {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    if (done_ != nullptr) cudaEventDestroy(done_);
    if (ready_ != nullptr) cudaEventDestroy(ready_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  StagedCommunicator(const StagedCommunicator&) = delete;
  StagedCommunicator& operator=(const StagedCommunicator&) = delete;

  absl::Status Init() {
    const std::string op = "CreateStagedCommunicator";
    absl::Status s =
        Check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
              "cudaStreamCreateWithFlags", op);
    if (s.ok()) {
      s = Check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming),
                "cudaEventCreateWithFlags", op);
    }
    if (s.ok()) {
      s = Check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming),
                "cudaEventCreateWithFlags", op);
    }
    return s;
  }

  std::string Name() const override {
    return absl::StrCat("staged GPU over ", host_->Name());
  }
  int rank() const override { return host_->rank(); }
  int world_size() const override { return host_->world_size(); }

  absl::Status AllReduceSum(float* data, size_t n) override {
    if (!OnDevice(data)) return host_->AllReduceSum(data, n);
    const size_t bytes = n * sizeof(float);
    return RunStaged(absl::StrCat("AllReduceSum(n=", n, ")"), data, bytes, 0,
                     data, bytes, 0, bytes, [&](char* stage) {
                       return host_->AllReduceSum(
                           reinterpret_cast<float*>(stage), n);
                     });
  }

  absl::Status AllReduceAvg(float* data, size_t n) override {
    if (!OnDevice(data)) return host_->AllReduceAvg(data, n);
    const size_t bytes = n * sizeof(float);
    return RunStaged(absl::StrCat("AllReduceAvg(n=", n, ")"), data, bytes, 0,
                     data, bytes, 0, bytes, [&](char* stage) {
                       return host_->AllReduceAvg(
                           reinterpret_cast<float*>(stage), n);
                     });
  }

  absl::Status AllReduceSum(double* data, size_t n) override {
    if (!OnDevice(data)) return host_->AllReduceSum(data, n);
    const size_t bytes = n * sizeof(double);
    return RunStaged(absl::StrCat("AllReduceSum(double, n=", n, ")"), data,
                     bytes, 0, data, bytes, 0, bytes, [&](char* stage) {
                       return host_->AllReduceSum(
                           reinterpret_cast<double*>(stage), n);
                     });
  }

  absl::Status ReduceScatterSum(const float* send, float* recv,
                                size_t recv_count) override {
    const std::string op = absl::StrCat("ReduceScatterSum(n=", recv_count, ")");
    const bool device = OnDevice(send);
    if (device != OnDevice(recv)) return MixedMemory(op);
    if (!device) return host_->ReduceScatterSum(send, recv, recv_count);
    const size_t shard = recv_count * sizeof(float);
    const size_t mine = shard * rank();
    return RunStaged(op, send, shard * world_size(), 0, recv, shard, mine,
                     shard * world_size(), [&](char* stage) {
                       float* all = reinterpret_cast<float*>(stage);
                       return host_->ReduceScatterSum(
                           all, all + rank() * recv_count, recv_count);
                     });
  }

  absl::Status AllGather(const float* send, float* recv,
                         size_t send_count) override {
    const std::string op = absl::StrCat("AllGather(n=", send_count, ")");
    const bool device = OnDevice(send);
    if (device != OnDevice(recv)) return MixedMemory(op);
    if (!device) return host_->AllGather(send, recv, send_count);
    const size_t shard = send_count * sizeof(float);
    const size_t mine = shard * rank();
    return RunStaged(op, send, shard, mine, recv, shard * world_size(), 0,
                     shard * world_size(), [&](char* stage) {
                       float* all = reinterpret_cast<float*>(stage);
                       return host_->AllGather(all + rank() * send_count, all,
                                               send_count);
                     });
  }

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    if (!OnDevice(data)) return host_->Broadcast(data, bytes, root);
    return RunStaged(absl::StrCat("Broadcast(bytes=", bytes, ")"), data, bytes,
                     0, data, bytes, 0, bytes, [&](char* stage) {
                       return host_->Broadcast(stage, bytes, root);
                     });
  }

  absl::Status Barrier() override {
    absl::Status s = StartWaiting();
    if (s.ok())
      s = Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize",
                "Barrier");
    if (!s.ok()) return s;
    return host_->Barrier();
  }

  std::unique_ptr<PendingReduce> StartAllReduceSum(float* data,
                                                   size_t n) override;

  void SetComputeStream(void* stream) override {
    compute_ = static_cast<cudaStream_t>(stream);
  }

  void Abort(int exit_code) override { host_->Abort(exit_code); }

  // Starts the host reductions of waiting non-blocking all-reduces, oldest
  // first, while their copies have reached host memory; with `block`, waits
  // for the copies until `until` (or, when null, every one) has started.
  absl::Status StartHostReductions(bool block,
                                   const StagedPendingReduce* until);
  // Every waiting non-blocking all-reduce, before a blocking operation.
  absl::Status StartWaiting() { return StartHostReductions(true, nullptr); }
  void Forget(const StagedPendingReduce* pending);

  Communicator& host() { return *host_; }
  cudaStream_t stream() const { return stream_; }
  cudaStream_t compute() const { return compute_; }

  // Makes `stream` wait for the work queued so far on the compute stream.
  absl::Status AfterCompute(const std::string& operation) {
    absl::Status s =
        Check(cudaEventRecord(ready_, compute_), "cudaEventRecord", operation);
    if (!s.ok()) return s;
    return Check(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent",
                 operation);
  }

  // Makes the compute stream's later work wait for `event`, recorded now on
  // this communicator's stream.
  absl::Status BeforeCompute(cudaEvent_t event, const std::string& operation) {
    absl::Status s =
        Check(cudaEventRecord(event, stream_), "cudaEventRecord", operation);
    if (!s.ok()) return s;
    return Check(cudaStreamWaitEvent(compute_, event, 0), "cudaStreamWaitEvent",
                 operation);
  }

 private:
  // Copies `in_bytes` of `in` to stage + `in_offset`, runs `host_op` on the
  // stage, copies `out_bytes` of stage + `out_offset` to `out`.
  template <typename HostOp>
  absl::Status RunStaged(const std::string& operation, const void* in,
                         size_t in_bytes, size_t in_offset, void* out,
                         size_t out_bytes, size_t out_offset,
                         size_t stage_bytes, HostOp host_op) {
    absl::Status s = StartWaiting();
    if (!s.ok()) return s;
    absl::StatusOr<char*> stage = stage_.Get(stage_bytes, operation);
    if (!stage.ok()) return stage.status();
    s = AfterCompute(operation);
    if (s.ok()) {
      s = Check(cudaMemcpyAsync(*stage + in_offset, in, in_bytes,
                                cudaMemcpyDeviceToHost, stream_),
                "cudaMemcpyAsync", operation);
    }
    if (s.ok()) {
      s = Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize",
                operation);
    }
    if (s.ok()) s = host_op(*stage);
    if (s.ok()) {
      s = Check(cudaMemcpyAsync(out, *stage + out_offset, out_bytes,
                                cudaMemcpyHostToDevice, stream_),
                "cudaMemcpyAsync", operation);
    }
    if (s.ok()) s = BeforeCompute(done_, operation);
    // The stage is reused by the next operation: the copy back must be done.
    if (s.ok()) {
      s = Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize",
                operation);
    }
    return s;
  }

  Communicator* host_;
  cudaStream_t compute_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  cudaEvent_t done_ = nullptr;
  PinnedBuffer stage_;
  // Non-blocking all-reduces whose host reduction has not started, oldest
  // first.
  std::deque<StagedPendingReduce*> waiting_;
};

class StagedPendingReduce : public PendingReduce {
 public:
  StagedPendingReduce(StagedCommunicator* comm, float* data, size_t n)
      : comm_(comm),
        data_(data),
        n_(n),
        operation_(absl::StrCat("StartAllReduceSum(n=", n, ")")) {}

  ~StagedPendingReduce() override {
    if (!finished_) Wait().IgnoreError();
    comm_->Forget(this);
    // The copy back reads the stage when the stream runs.
    if (done_ != nullptr) cudaEventSynchronize(done_);
    if (done_ != nullptr) cudaEventDestroy(done_);
    if (copied_ != nullptr) cudaEventDestroy(copied_);
  }

  // Queues the copy to host memory; the host reduction starts later.
  absl::Status Enqueue() {
    absl::StatusOr<char*> stage = stage_.Get(n_ * sizeof(float), operation_);
    if (!stage.ok()) return stage.status();
    absl::Status s =
        Check(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming),
              "cudaEventCreateWithFlags", operation_);
    if (s.ok()) {
      s = Check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming),
                "cudaEventCreateWithFlags", operation_);
    }
    if (s.ok()) s = comm_->AfterCompute(operation_);
    if (s.ok()) {
      s = Check(cudaMemcpyAsync(*stage, data_, n_ * sizeof(float),
                                cudaMemcpyDeviceToHost, comm_->stream()),
                "cudaMemcpyAsync", operation_);
    }
    if (s.ok()) {
      s = Check(cudaEventRecord(copied_, comm_->stream()), "cudaEventRecord",
                operation_);
    }
    // A reduction that could not be queued is over: its error is the result.
    finished_ = !s.ok();
    status_ = s;
    return s;
  }

  // Whether the copy to host memory has finished; `block` waits for it.
  absl::StatusOr<bool> Copied(bool block) {
    if (block) {
      absl::Status s = Check(cudaEventSynchronize(copied_),
                             "cudaEventSynchronize", operation_);
      if (!s.ok()) return s;
      return true;
    }
    const cudaError_t e = cudaEventQuery(copied_);
    if (e == cudaErrorNotReady) return false;
    absl::Status s = Check(e, "cudaEventQuery", operation_);
    if (!s.ok()) return s;
    return true;
  }

  void StartHost() {
    host_ = comm_->host().StartAllReduceSum(
        reinterpret_cast<float*>(*stage_.Get(n_ * sizeof(float), operation_)),
        n_);
  }
  bool host_started() const { return host_ != nullptr; }

  absl::StatusOr<bool> Test() override {
    if (finished_) return Result();
    absl::Status s = comm_->StartHostReductions(false, nullptr);
    if (!s.ok()) return s;
    if (host_ == nullptr) return false;
    return host_->Test();
  }

  absl::Status Wait() override {
    if (finished_) return status_;
    finished_ = true;
    if (host_ == nullptr) status_ = comm_->StartHostReductions(true, this);
    if (status_.ok() && host_ == nullptr) {
      status_ = absl::InternalError(
          absl::StrCat(operation_, ": the host reduction never started"));
    }
    if (status_.ok()) status_ = host_->Wait();
    if (status_.ok()) {
      status_ = Check(
          cudaMemcpyAsync(data_, *stage_.Get(n_ * sizeof(float), operation_),
                          n_ * sizeof(float), cudaMemcpyHostToDevice,
                          comm_->stream()),
          "cudaMemcpyAsync", operation_);
    }
    if (status_.ok()) status_ = comm_->BeforeCompute(done_, operation_);
    return status_;
  }

 private:
  absl::StatusOr<bool> Result() const {
    if (!status_.ok()) return status_;
    return true;
  }

  StagedCommunicator* comm_;
  float* data_;
  size_t n_;
  std::string operation_;
  PinnedBuffer stage_;
  cudaEvent_t copied_ = nullptr;
  cudaEvent_t done_ = nullptr;
  std::unique_ptr<PendingReduce> host_;
  bool finished_ = false;
  absl::Status status_;
};

absl::Status StagedCommunicator::StartHostReductions(
    bool block, const StagedPendingReduce* until) {
  while (!waiting_.empty()) {
    StagedPendingReduce* next = waiting_.front();
    absl::StatusOr<bool> copied = next->Copied(block);
    if (!copied.ok()) return copied.status();
    if (!*copied) return absl::OkStatus();
    next->StartHost();
    waiting_.pop_front();
    if (next == until) return absl::OkStatus();
  }
  return absl::OkStatus();
}

void StagedCommunicator::Forget(const StagedPendingReduce* pending) {
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (*it == pending) {
      waiting_.erase(it);
      return;
    }
  }
}

std::unique_ptr<PendingReduce> StagedCommunicator::StartAllReduceSum(
    float* data, size_t n) {
  if (!OnDevice(data)) return host_->StartAllReduceSum(data, n);
  auto pending = std::make_unique<StagedPendingReduce>(this, data, n);
  absl::Status s = pending->Enqueue();
  if (!s.ok()) return FinishedReduce(std::move(s));
  waiting_.push_back(pending.get());
  return pending;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateStagedCommunicator(
    Communicator* host, void* compute_stream) {
  if (host == nullptr) {
    return absl::InvalidArgumentError(
        "CreateStagedCommunicator: no host communicator");
  }
  auto comm = std::make_unique<StagedCommunicator>(
      host, static_cast<cudaStream_t>(compute_stream));
  absl::Status s = comm->Init();
  if (!s.ok()) return s;
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace prefopt::comm
