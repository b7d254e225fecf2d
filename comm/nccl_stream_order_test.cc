// The NCCL backend's stream and event ordering, in process: the real
// comm/nccl_communicator.cc over the fake NCCL of comm/fake_nccl.h on the CUDA
// CPU simulation, driven by the training loop's GradientSync as the backward
// pass drives it. Each gradient bucket's all-reduce must run on the
// communication stream after the compute-stream work that produced that
// bucket (an event recorded when its block's gradients are ready), and the
// optimizer's compute-stream work after every bucket's all-reduce; ZeRO-1's
// reduce-scatter and all-gather likewise. An asynchronous NCCL error ends a
// wait with an error naming the operation instead of hanging it, and
// aborting a rank aborts its NCCL communicator first.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "comm/failure.h"
#include "comm/fake_nccl.h"
#include "comm/nccl_communicator.h"
#include "gtest/gtest.h"
#include "kernels/cuda/sim/runtime.h"
#include "trainer/loop/gradient_sync.h"

namespace prefopt::comm {
namespace {

constexpr float kPeer = 1000.0f;

// Rank 0 of 2 whose host collectives change nothing (the fake peer agrees).
class FakeHost : public Communicator {
 public:
  std::string Name() const override { return "fake host"; }
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  absl::Status AllReduceSum(float*, size_t) override { return Ok(); }
  absl::Status AllReduceAvg(float*, size_t) override { return Ok(); }
  absl::Status AllReduceSum(double*, size_t) override { return Ok(); }
  absl::Status ReduceScatterSum(const float*, float*, size_t) override {
    return Ok();
  }
  absl::Status AllGather(const float*, float*, size_t) override { return Ok(); }
  absl::Status Broadcast(void*, size_t, int) override { return Ok(); }
  absl::Status Barrier() override { return Ok(); }
  std::unique_ptr<PendingReduce> StartAllReduceSum(float*, size_t) override {
    return FinishedReduce(absl::OkStatus());
  }
  // Exit code 3 only if the NCCL communicator was aborted first.
  void Abort(int exit_code) override {
    std::_Exit(fake_nccl::Aborted() ? exit_code : 100);
  }

 private:
  static absl::Status Ok() { return absl::OkStatus(); }
};

std::string At(const float* p) {
  return absl::StrCat(reinterpret_cast<uintptr_t>(p));
}

// The position of `entry` in the fake's log; fails the test when absent.
size_t Position(const std::string& entry) {
  const std::vector<std::string>& log = fake_nccl::Log();
  auto it = std::find(log.begin(), log.end(), entry);
  EXPECT_NE(it, log.end()) << entry << " never ran";
  return it - log.begin();
}

class NcclStreamOrderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_nccl::Log().clear();
    fake_nccl::SetAsyncError(ncclSuccess);
    fake_nccl::SetStalled(false);
    fake_nccl::SetPeerValue(kPeer);
    ASSERT_EQ(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking),
              cudaSuccess);
    auto comm = CreateNcclCommunicator(std::make_unique<FakeHost>(), 0,
                                       absl::Milliseconds(300));
    ASSERT_TRUE(comm.ok()) << comm.status();
    comm_ = *std::move(comm);
    comm_->SetComputeStream(compute_);
    ASSERT_EQ(cudaMalloc(&grads_, kTotal * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMemset(grads_, 0, kTotal * sizeof(float)), cudaSuccess);
  }

  void TearDown() override {
    comm_.reset();
    cudaFree(grads_);
    cudaStreamDestroy(compute_);
  }

  // Queues on the compute stream the backward work that writes `value` into
  // grads_[range), logged as `name`.
  void Backward(const std::string& name, model::ParamRange range, float value) {
    float* g = grads_;
    cudasim::Enqueue(compute_, [=] {
      fake_nccl::Log().push_back(name);
      std::fill(g + range.begin, g + range.end, value);
    });
  }

  // Queues on the compute stream the optimizer's read of grads_, logged as
  // "optimizer"; returns what it read once the stream has run.
  std::vector<float> Optimizer() {
    std::vector<float> seen(kTotal);
    float* g = grads_;
    float* out = seen.data();
    cudasim::Enqueue(compute_, [=] {
      fake_nccl::Log().push_back("optimizer");
      std::copy(g, g + kTotal, out);
    });
    EXPECT_EQ(cudaStreamSynchronize(compute_), cudaSuccess);
    return seen;
  }

  // 3 blocks of 4 gradients, then 4 outside any block (embeddings).
  static constexpr size_t kTotal = 16;
  static constexpr int kBlocks = 3;
  static model::ParamRange Block(int b) {
    return {static_cast<size_t>(4 * b), static_cast<size_t>(4 * b + 4)};
  }

  cudaStream_t compute_ = nullptr;
  std::unique_ptr<Communicator> comm_;
  float* grads_ = nullptr;
};

TEST_F(NcclStreamOrderTest, EachBucketFollowsItsBlockAndPrecedesTheOptimizer) {
  loop::GradientSync sync(comm_.get(), kTotal, /*zero_stage=*/0);
  sync.BeginLastBackward();
  // The backward pass runs from the last block to the first.
  for (int b = kBlocks - 1; b >= 0; --b) {
    Backward(absl::StrCat("backward ", b), Block(b), static_cast<float>(b + 1));
    sync.BlockReady(grads_, Block(b));
  }
  Backward("backward embeddings", {12, 16}, 7.0f);
  ASSERT_TRUE(sync.Finish(grads_).ok());
  const std::vector<float> seen = Optimizer();

  for (int b = 0; b < kBlocks; ++b) {
    const std::string bucket = "AllReduce " + At(grads_ + Block(b).begin);
    EXPECT_LT(Position(absl::StrCat("backward ", b)), Position(bucket))
        << "block " << b << "'s all-reduce ran before its backward";
    EXPECT_LT(Position(bucket), Position("optimizer"))
        << "the optimizer ran before block " << b << "'s all-reduce";
    for (size_t i = Block(b).begin; i < Block(b).end; ++i) {
      EXPECT_EQ(seen[i], b + 1 + kPeer) << i;
    }
  }
  const std::string rest = "AllReduce " + At(grads_ + 12);
  EXPECT_LT(Position("backward embeddings"), Position(rest));
  EXPECT_LT(Position(rest), Position("optimizer"));
  for (size_t i = 12; i < kTotal; ++i) EXPECT_EQ(seen[i], 7.0f + kPeer) << i;
  // Blocks are reduced as the backward pass finishes them: the last first.
  EXPECT_LT(Position("AllReduce " + At(grads_ + Block(2).begin)),
            Position("AllReduce " + At(grads_ + Block(0).begin)));
}

// As above for one bucket whose PendingReduce outlives the optimizer's work
// (GradientSync destroys its reduces in Finish, which on the simulation
// waits for their events and would hide a Wait that does not wait).
TEST_F(NcclStreamOrderTest, WaitOrdersTheOptimizerAfterTheReduce) {
  Backward("backward", {0, kTotal}, 3.0f);
  std::unique_ptr<PendingReduce> p = comm_->StartAllReduceSum(grads_, kTotal);
  ASSERT_TRUE(p->Wait().ok());
  const std::vector<float> seen = Optimizer();
  EXPECT_LT(Position("backward"), Position("AllReduce " + At(grads_)));
  EXPECT_LT(Position("AllReduce " + At(grads_)), Position("optimizer"));
  for (size_t i = 0; i < kTotal; ++i) EXPECT_EQ(seen[i], 3.0f + kPeer) << i;
}

TEST_F(NcclStreamOrderTest, ZeroOneReduceScattersThenGathersInStreamOrder) {
  loop::GradientSync sync(comm_.get(), kTotal, /*zero_stage=*/1);
  ASSERT_EQ(sync.shard().begin, 0u);
  ASSERT_EQ(sync.shard().end, kTotal / 2);
  sync.BeginLastBackward();
  for (int b = kBlocks - 1; b >= 0; --b) {
    Backward(absl::StrCat("backward ", b), Block(b), static_cast<float>(b + 1));
    sync.BlockReady(grads_, Block(b));
  }
  Backward("backward embeddings", {12, 16}, 7.0f);
  ASSERT_TRUE(sync.Finish(grads_).ok());
  std::vector<float> seen = Optimizer();
  EXPECT_LT(Position("backward 0"), Position("ReduceScatter " + At(grads_)));
  EXPECT_LT(Position("ReduceScatter " + At(grads_)), Position("optimizer"));
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(seen[i], (i < 4 ? 1.0f : 2.0f) + kPeer) << i;
  }
  // The gradient buffer stands in for the parameters: the optimizer wrote
  // this rank's shard (queued on the compute stream) before the all-gather.
  Backward("shard update", {0, 8}, 5.0f);
  ASSERT_TRUE(sync.GatherParams(grads_).ok());
  seen = Optimizer();
  EXPECT_LT(Position("shard update"), Position("AllGather " + At(grads_)));
  for (size_t i = 0; i < kTotal; ++i) {
    EXPECT_EQ(seen[i], i < 8 ? 5.0f : kPeer) << i;
  }
}

TEST_F(NcclStreamOrderTest, AsyncErrorEndsTheWaitWithAnError) {
  fake_nccl::SetAsyncError(ncclRemoteError);
  Backward("backward", {0, kTotal}, 1.0f);
  std::unique_ptr<PendingReduce> p = comm_->StartAllReduceSum(grads_, kTotal);
  const absl::Status s = p->Wait();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("NCCL (asynchronous error)"), std::string::npos)
      << s;
  EXPECT_NE(s.message().find("StartAllReduceSum(n=16)"), std::string::npos)
      << s;
}

// A peer that is alive but never joins gives NCCL no error: the wait ends
// after the timeout (300 ms here) with an error naming the operation, for a
// blocking collective and for a bucket's all-reduce alike.
TEST_F(NcclStreamOrderTest, StuckPeerEndsTheWaitAfterTheTimeout) {
  fake_nccl::SetStalled(true);
  const absl::Time start = absl::Now();
  const absl::Status s = comm_->AllReduceSum(grads_, kTotal);
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("did not finish within 300ms "
                             "(collective_timeout_s)"),
            std::string::npos)
      << s;
  EXPECT_GE(waited, absl::Milliseconds(300));
  const absl::Status bucket = comm_->StartAllReduceSum(grads_, kTotal)->Wait();
  EXPECT_EQ(bucket.code(), absl::StatusCode::kDeadlineExceeded) << bucket;
  EXPECT_NE(bucket.message().find("StartAllReduceSum(n=16)"), std::string::npos)
      << bucket;
  // The peers arrive after all: the queued collectives run, nothing hangs.
  fake_nccl::SetStalled(false);
}

TEST_F(NcclStreamOrderTest, AbortAllAbortsNcclThenEndsTheJobNamingTheRank) {
  fake_nccl::SetAsyncError(ncclRemoteError);
  const absl::Status s = comm_->StartAllReduceSum(grads_, kTotal)->Wait();
  ASSERT_FALSE(s.ok());
  EXPECT_EXIT(AbortAll(*comm_, s), ::testing::ExitedWithCode(1),
              "prefopt rank 0/2: fatal error, aborting all ranks: .*NCCL "
              "\\(asynchronous error\\)");
}

}  // namespace
}  // namespace prefopt::comm
