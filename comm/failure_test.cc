// CheckSameAcrossRanks over several ranks, simulated by threads that share an
// in-memory all-reduce, so that the mismatch report is checked without MPI.
#include "comm/failure.h"

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace prefopt::comm {
namespace {

// What the threads of one simulated job share: a sum that every rank adds to,
// released when the last rank has added.
struct SharedSum {
  explicit SharedSum(int world) : world(world) {}
  const int world;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<double> sum;
  int arrived = 0;
  int generation = 0;
};

// Only the fp64 all-reduce that CheckSameAcrossRanks uses.
class ThreadCommunicator : public Communicator {
 public:
  ThreadCommunicator(SharedSum* shared, int rank)
      : shared_(shared), rank_(rank) {}

  std::string Name() const override { return "threads"; }
  int rank() const override { return rank_; }
  int world_size() const override { return shared_->world; }

  absl::Status AllReduceSum(double* data, size_t n) override {
    std::unique_lock<std::mutex> lock(shared_->mu);
    if (shared_->arrived == 0) shared_->sum.assign(n, 0.0);
    for (size_t i = 0; i < n; ++i) shared_->sum[i] += data[i];
    const int generation = shared_->generation;
    if (++shared_->arrived == shared_->world) {
      shared_->arrived = 0;
      ++shared_->generation;
      shared_->cv.notify_all();
    } else {
      shared_->cv.wait(lock, [&] { return shared_->generation != generation; });
    }
    for (size_t i = 0; i < n; ++i) data[i] = shared_->sum[i];
    return absl::OkStatus();
  }

  absl::Status AllReduceSum(float*, size_t) override { return Unused(); }
  absl::Status AllReduceAvg(float*, size_t) override { return Unused(); }
  absl::Status ReduceScatterSum(const float*, float*, size_t) override {
    return Unused();
  }
  absl::Status AllGather(const float*, float*, size_t) override {
    return Unused();
  }
  absl::Status Broadcast(void*, size_t, int) override { return Unused(); }
  absl::Status Barrier() override { return Unused(); }
  std::unique_ptr<PendingReduce> StartAllReduceSum(float*, size_t) override {
    return FinishedReduce(Unused());
  }
  void Abort(int) override { std::abort(); }

 private:
  static absl::Status Unused() {
    return absl::UnimplementedError("not used by CheckSameAcrossRanks");
  }

  SharedSum* shared_;
  int rank_;
};

// Runs CheckSameAcrossRanks on one thread per entry of `fingerprints`.
std::vector<absl::Status> CheckOnThreads(
    const std::vector<uint64_t>& fingerprints) {
  const int world = static_cast<int>(fingerprints.size());
  SharedSum shared(world);
  std::vector<absl::Status> results(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(&shared, r);
      results[r] = CheckSameAcrossRanks(comm, fingerprints[r], "data hash");
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

TEST(CheckSameAcrossRanksTest, AgreeingRanksPass) {
  for (const absl::Status& s : CheckOnThreads(
           {0xfedcba9876543210u, 0xfedcba9876543210u, 0xfedcba9876543210u})) {
    EXPECT_TRUE(s.ok()) << s;
  }
}

TEST(CheckSameAcrossRanksTest, EveryRankNamesTheValuesAndTheirRanks) {
  // Values differing only in their top or bottom 16 bits must be told apart.
  const uint64_t a = 0xffff000000000001u;
  const uint64_t b = 0x7fff000000000001u;
  const uint64_t c = 0xffff000000000000u;
  const std::vector<absl::Status> results =
      CheckOnThreads({a, b, a, a, c, b, a});
  const std::string expected =
      "data hash differs across ranks: 0xffff000000000001 on ranks 0,2-3,6; "
      "0x7fff000000000001 on ranks 1,5; 0xffff000000000000 on rank 4";
  for (const absl::Status& s : results) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.message(), expected);
  }
}

}  // namespace
}  // namespace prefopt::comm
