#include "comm/gpu_communicator.h"

#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/status/status.h"

namespace prefopt::comm {
namespace {

std::mutex& FactoryMutex() {
  static std::mutex mu;
  return mu;
}

GpuCommunicatorFactory& Factory() {
  static GpuCommunicatorFactory* factory = new GpuCommunicatorFactory();
  return *factory;
}

class BorrowedCommunicator : public Communicator {
 public:
  explicit BorrowedCommunicator(Communicator* target) : target_(target) {}

  std::string Name() const override { return target_->Name(); }
  int rank() const override { return target_->rank(); }
  int world_size() const override { return target_->world_size(); }
  absl::Status AllReduceSum(float* data, size_t n) override {
    return target_->AllReduceSum(data, n);
  }
  absl::Status AllReduceAvg(float* data, size_t n) override {
    return target_->AllReduceAvg(data, n);
  }
  absl::Status AllReduceSum(double* data, size_t n) override {
    return target_->AllReduceSum(data, n);
  }
  absl::Status ReduceScatterSum(const float* send, float* recv,
                                size_t recv_count) override {
    return target_->ReduceScatterSum(send, recv, recv_count);
  }
  absl::Status AllGather(const float* send, float* recv,
                         size_t send_count) override {
    return target_->AllGather(send, recv, send_count);
  }
  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    return target_->Broadcast(data, bytes, root);
  }
  absl::Status Barrier() override { return target_->Barrier(); }
  std::unique_ptr<PendingReduce> StartAllReduceSum(float* data,
                                                   size_t n) override {
    return target_->StartAllReduceSum(data, n);
  }
  void SetComputeStream(void* stream) override {
    target_->SetComputeStream(stream);
  }
  void Abort(int exit_code) override { target_->Abort(exit_code); }

 private:
  Communicator* target_;
};

}  // namespace

void RegisterGpuCommunicator(GpuCommunicatorFactory factory) {
  std::lock_guard<std::mutex> lock(FactoryMutex());
  Factory() = std::move(factory);
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateGpuCommunicator(
    Communicator* host, int local_rank, void* compute_stream,
    absl::Duration timeout) {
  GpuCommunicatorFactory factory;
  {
    std::lock_guard<std::mutex> lock(FactoryMutex());
    factory = Factory();
  }
  if (!factory) {
    return absl::FailedPreconditionError(
        "this program has no GPU communicator (it did not call "
        "comm::RegisterGpuCommunicators), so its GPU ranks cannot exchange "
        "gradients");
  }
  return factory(host, local_rank, compute_stream, timeout);
}

std::unique_ptr<Communicator> Borrow(Communicator* target) {
  return std::make_unique<BorrowedCommunicator>(target);
}

}  // namespace prefopt::comm
