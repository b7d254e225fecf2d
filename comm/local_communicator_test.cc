#include "comm/local_communicator.h"

#include <memory>
#include <vector>

#include "comm/create_communicator.h"
#include "comm/failure.h"
#include "gtest/gtest.h"

namespace prefopt::comm {
namespace {

TEST(LocalCommunicatorTest, CollectivesOverOneRankAreIdentities) {
  LocalCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.world_size(), 1);
  std::vector<float> data = {1.5f, -2.0f, 3.25f};
  ASSERT_TRUE(comm.AllReduceSum(data.data(), data.size()).ok());
  ASSERT_TRUE(comm.AllReduceAvg(data.data(), data.size()).ok());
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  std::vector<double> sums = {1e300, 7.0};
  ASSERT_TRUE(comm.AllReduceSum(sums.data(), sums.size()).ok());
  EXPECT_EQ(sums, (std::vector<double>{1e300, 7.0}));

  std::vector<float> shard(3, 0.0f);
  ASSERT_TRUE(comm.ReduceScatterSum(data.data(), shard.data(), 3).ok());
  EXPECT_EQ(shard, data);
  ASSERT_TRUE(comm.ReduceScatterSum(data.data(), data.data(), 3).ok());
  std::vector<float> gathered(3, 0.0f);
  ASSERT_TRUE(comm.AllGather(data.data(), gathered.data(), 3).ok());
  EXPECT_EQ(gathered, data);

  int value = 42;
  ASSERT_TRUE(comm.Broadcast(&value, sizeof(value), 0).ok());
  EXPECT_EQ(value, 42);
  const absl::Status bad_root = comm.Broadcast(&value, sizeof(value), 1);
  EXPECT_EQ(bad_root.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_root.message().find("root rank 1 does not exist"),
            absl::string_view::npos);
  EXPECT_TRUE(comm.Barrier().ok());

  std::unique_ptr<PendingReduce> pending =
      comm.StartAllReduceSum(data.data(), data.size());
  ASSERT_NE(pending, nullptr);
  const absl::StatusOr<bool> done = pending->Test();
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(*done);
  EXPECT_TRUE(pending->Wait().ok());
  EXPECT_TRUE(pending->Wait().ok());
}

TEST(LocalCommunicatorTest, FactoryPicksLocalWithoutLauncher) {
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      CreateCommunicator(LaunchEnv{}, Device::kCpu, nullptr, nullptr);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ((*comm)->Name(), "local");
  EXPECT_TRUE(CheckSameAcrossRanks(**comm, 1234, "config hash").ok());
}

TEST(LocalCommunicatorTest, FinishedReduceCarriesItsError) {
  std::unique_ptr<PendingReduce> pending =
      FinishedReduce(absl::InternalError("MPI_Iallreduce failed"));
  EXPECT_EQ(pending->Test().status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(pending->Wait().message(), "MPI_Iallreduce failed");
}

TEST(LocalCommunicatorDeathTest, AbortAllExitsWithTheError) {
  LocalCommunicator comm;
  EXPECT_EXIT(AbortAll(comm, absl::DataLossError("checkpoint is torn")),
              testing::ExitedWithCode(1),
              "prefopt rank 0/1: fatal error, aborting all ranks: "
              "DATA_LOSS: checkpoint is torn");
}

}  // namespace
}  // namespace prefopt::comm
