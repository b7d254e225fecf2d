// Every collective of the communicator that this process's launch selects,
// checked against values each rank computes locally. Run on 2 ranks by
// mpi_collectives_test.sh (any world size works). The buffers are on the
// device named by PREFOPT_COMM_TEST_DEVICE ("cpu", the default, or "gpu" for
// NCCL, one GPU per rank).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/communicator.h"
#include "comm/create_communicator.h"
#include "comm/device_buffer.h"
#include "comm/failure.h"
#include "comm/launch_env.h"
#include "gtest/gtest.h"

namespace prefopt::comm {
namespace {

Communicator* g_comm = nullptr;
Device g_device = Device::kCpu;

// Integer-valued, so that sums are exact in any order.
float Value(int rank, size_t i) {
  return static_cast<float>((rank + 1) * static_cast<int>(i % 13) - 5);
}

std::vector<float> Values(int rank, size_t n, size_t offset = 0) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = Value(rank, offset + i);
  return v;
}

std::vector<float> SumOverRanks(size_t n, size_t offset = 0) {
  std::vector<float> sum(n, 0.0f);
  for (int r = 0; r < g_comm->world_size(); ++r) {
    for (size_t i = 0; i < n; ++i) sum[i] += Value(r, offset + i);
  }
  return sum;
}

// A device buffer holding `host`.
DeviceBuffer OnDevice(const std::vector<float>& host) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(
      g_device, std::max<size_t>(host.size(), 1) * sizeof(float));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!buffer.ok()) std::abort();
  EXPECT_TRUE(buffer->Upload(host.data(), host.size() * sizeof(float)).ok());
  return *std::move(buffer);
}

std::vector<float> ToHost(const DeviceBuffer& buffer, size_t n,
                          size_t offset = 0) {
  std::vector<float> host(n);
  EXPECT_TRUE(
      buffer.Download(host.data(), n * sizeof(float), offset * sizeof(float))
          .ok());
  return host;
}

TEST(Collectives, AllReduceSum) {
  for (const size_t n : {size_t{1}, size_t{1000}, size_t{(1 << 20) + 3}}) {
    DeviceBuffer data = OnDevice(Values(g_comm->rank(), n));
    ASSERT_TRUE(g_comm->AllReduceSum(data.floats(), n).ok());
    EXPECT_EQ(ToHost(data, n), SumOverRanks(n)) << "n=" << n;
  }
}

TEST(Collectives, AllReduceAvg) {
  const size_t n = 4097;
  DeviceBuffer data = OnDevice(Values(g_comm->rank(), n));
  ASSERT_TRUE(g_comm->AllReduceAvg(data.floats(), n).ok());
  const std::vector<float> got = ToHost(data, n);
  const std::vector<float> sum = SumOverRanks(n);
  for (size_t i = 0; i < n; ++i) {
    const float want = sum[i] / g_comm->world_size();
    ASSERT_NEAR(got[i], want, 1e-6f * (1.0f + std::fabs(want))) << "i=" << i;
  }
}

// 1e10 + rank is exact in fp64 but not in fp32 (whose spacing there is 1024),
// so this fails if the sum goes through floats.
TEST(Collectives, AllReduceSumDoubleIsExact) {
  const int world = g_comm->world_size();
  double want = 0.0;
  for (int r = 0; r < world; ++r) want += 1e10 + r;
  std::vector<double> host = {1e10 + g_comm->rank(), 0.5, -1.0};
  ASSERT_TRUE(g_comm->AllReduceSum(host.data(), host.size()).ok());
  EXPECT_EQ(host, (std::vector<double>{want, 0.5 * world, -1.0 * world}));

  // The same in device memory (GPU: NCCL's fp64 sum rather than MPI's).
  absl::StatusOr<DeviceBuffer> device =
      DeviceBuffer::Allocate(g_device, 3 * sizeof(double));
  ASSERT_TRUE(device.ok()) << device.status();
  const std::vector<double> mine = {1e10 + g_comm->rank(), 0.5, -1.0};
  ASSERT_TRUE(device->Upload(mine.data(), 3 * sizeof(double)).ok());
  ASSERT_TRUE(
      g_comm->AllReduceSum(static_cast<double*>(device->data()), 3).ok());
  std::vector<double> got(3);
  ASSERT_TRUE(device->Download(got.data(), 3 * sizeof(double)).ok());
  EXPECT_EQ(got, host);
}

TEST(Collectives, ReduceScatterSum) {
  const int world = g_comm->world_size();
  const int rank = g_comm->rank();
  const size_t count = 1001;
  const std::vector<float> shard_sum = SumOverRanks(count, rank * count);

  DeviceBuffer send = OnDevice(Values(rank, world * count));
  DeviceBuffer recv = OnDevice(std::vector<float>(count, 0.0f));
  ASSERT_TRUE(
      g_comm->ReduceScatterSum(send.floats(), recv.floats(), count).ok());
  EXPECT_EQ(ToHost(recv, count), shard_sum);
  EXPECT_EQ(ToHost(send, world * count), Values(rank, world * count))
      << "out of place must leave send alone";

  // In place: this rank's shard of the full buffer.
  float* mine = send.floats() + rank * count;
  ASSERT_TRUE(g_comm->ReduceScatterSum(send.floats(), mine, count).ok());
  EXPECT_EQ(ToHost(send, count, rank * count), shard_sum);
}

TEST(Collectives, AllGather) {
  const int world = g_comm->world_size();
  const int rank = g_comm->rank();
  const size_t count = 777;
  std::vector<float> want;
  for (int r = 0; r < world; ++r) {
    const std::vector<float> v = Values(r, count, 5);
    want.insert(want.end(), v.begin(), v.end());
  }
  DeviceBuffer send = OnDevice(Values(rank, count, 5));
  DeviceBuffer recv = OnDevice(std::vector<float>(world * count, 0.0f));
  ASSERT_TRUE(g_comm->AllGather(send.floats(), recv.floats(), count).ok());
  EXPECT_EQ(ToHost(recv, world * count), want);

  // In place: each rank's block already sits at its offset.
  std::vector<float> own(world * count, -1.0f);
  const std::vector<float> v = Values(rank, count, 5);
  std::copy(v.begin(), v.end(), own.begin() + rank * count);
  DeviceBuffer buffer = OnDevice(own);
  ASSERT_TRUE(
      g_comm->AllGather(buffer.floats() + rank * count, buffer.floats(), count)
          .ok());
  EXPECT_EQ(ToHost(buffer, world * count), want);
}

TEST(Collectives, BroadcastFromEveryRoot) {
  for (int root = 0; root < g_comm->world_size(); ++root) {
    // Host bytes of an odd size (a struct, a seed, a config).
    char text[37];
    std::snprintf(text, sizeof(text), "rank %d's message, odd length.",
                  g_comm->rank());
    ASSERT_TRUE(g_comm->Broadcast(text, sizeof(text), root).ok());
    EXPECT_EQ(std::string(text),
              absl::StrCat("rank ", root, "'s message, odd length."));
    // A tensor (weights at startup) on the device.
    const size_t n = (3 << 20) / sizeof(float) + 1;
    DeviceBuffer weights = OnDevice(Values(g_comm->rank(), n));
    ASSERT_TRUE(
        g_comm->Broadcast(weights.data(), n * sizeof(float), root).ok());
    EXPECT_EQ(ToHost(weights, n), Values(root, n)) << "root " << root;
  }
}

TEST(Collectives, BadArgumentsAreErrorsNotHangs) {
  int value = 0;
  const absl::Status bad_root =
      g_comm->Broadcast(&value, sizeof(value), g_comm->world_size());
  EXPECT_EQ(bad_root.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_root.message().find("does not exist"), absl::string_view::npos)
      << bad_root;
  if (g_comm->world_size() > 1) {
    // recv straddles two shards of send.
    DeviceBuffer buffer =
        OnDevice(std::vector<float>(g_comm->world_size() * 8, 1.0f));
    const absl::Status overlap =
        g_comm->ReduceScatterSum(buffer.floats(), buffer.floats() + 4, 8);
    EXPECT_EQ(overlap.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(overlap.message().find("overlaps"), absl::string_view::npos)
        << overlap;
  }
}

// The loop's pattern: the backward pass finishes gradient buckets one at a
// time (last layer first), starts each bucket's all-reduce at once, keeps
// computing, and waits for all buckets before clipping.
TEST(Collectives, BucketedNonBlockingAllReduceOverlapsComputation) {
  const std::vector<size_t> bucket_sizes = {300000, 1, 65536,
                                            250001, 7, 1 << 19};
  size_t total = 0;
  for (const size_t s : bucket_sizes) total += s;
  DeviceBuffer grads = OnDevice(std::vector<float>(total, 0.0f));

  std::vector<std::unique_ptr<PendingReduce>> pending;
  std::vector<float> other_work(1 << 16, 1.0f);
  size_t end = total;
  for (const size_t size : bucket_sizes) {
    const size_t begin = end - size;
    // "Backward" of this bucket: produce its gradients.
    ASSERT_TRUE(grads
                    .Upload(Values(g_comm->rank(), size, begin).data(),
                            size * sizeof(float), begin * sizeof(float))
                    .ok());
    pending.push_back(g_comm->StartAllReduceSum(grads.floats() + begin, size));
    ASSERT_NE(pending.back(), nullptr);
    // Backward of the next layer, polling the in-flight reduces as the loop
    // does between layers.
    for (int step = 0; step < 20; ++step) {
      for (float& x : other_work) x = x * 0.999f + 0.001f;
      for (const std::unique_ptr<PendingReduce>& p : pending) {
        ASSERT_TRUE(p->Test().ok());
      }
    }
    end = begin;
  }
  // Polling alone must finish them (without Wait), as the MPI progress rules
  // allow once every rank has started them.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(30);
  bool all_done = false;
  while (!all_done && std::chrono::steady_clock::now() < deadline) {
    all_done = true;
    for (const std::unique_ptr<PendingReduce>& p : pending) {
      const absl::StatusOr<bool> done = p->Test();
      ASSERT_TRUE(done.ok()) << done.status();
      all_done = all_done && *done;
    }
  }
  EXPECT_TRUE(all_done);
  for (const std::unique_ptr<PendingReduce>& p : pending) {
    ASSERT_TRUE(p->Wait().ok());
    ASSERT_TRUE(p->Wait().ok());  // idempotent
  }
  EXPECT_EQ(ToHost(grads, total), SumOverRanks(total));
  EXPECT_NEAR(other_work[0], 1.0f, 1e-5f);
}

TEST(Collectives, PendingReduceDestroyedWithoutWaitCompletes) {
  const size_t n = 50000;
  DeviceBuffer data = OnDevice(Values(g_comm->rank(), n));
  g_comm->StartAllReduceSum(data.floats(), n).reset();
  EXPECT_EQ(ToHost(data, n), SumOverRanks(n));
}

TEST(Collectives, Barrier) { EXPECT_TRUE(g_comm->Barrier().ok()); }

TEST(Collectives, CheckSameAcrossRanksAgrees) {
  EXPECT_TRUE(
      CheckSameAcrossRanks(*g_comm, 0x0123456789abcdefu, "config hash").ok());
}

TEST(Collectives, CheckSameAcrossRanksReportsEveryDifferingRank) {
  const int world = g_comm->world_size();
  if (world == 1) GTEST_SKIP() << "needs two ranks";
  // The last rank read different data.
  const uint64_t mine =
      g_comm->rank() == world - 1 ? 0xdeadbeef00000001u : 0x00000000cafe0002u;
  const absl::Status s = CheckSameAcrossRanks(*g_comm, mine, "data hash");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  const std::string others =
      world == 2 ? "on rank 0" : absl::StrCat("on ranks 0-", world - 2);
  EXPECT_EQ(s.message(),
            absl::StrCat("data hash differs across ranks: 0x00000000cafe0002 ",
                         others, "; 0xdeadbeef00000001 on rank ", world - 1));
}

}  // namespace
}  // namespace prefopt::comm

int main(int argc, char** argv) {
  namespace comm = prefopt::comm;
  testing::InitGoogleTest(&argc, argv);
  const char* device = std::getenv("PREFOPT_COMM_TEST_DEVICE");
  comm::g_device = device != nullptr && std::string(device) == "gpu"
                       ? comm::Device::kGpu
                       : comm::Device::kCpu;
  absl::StatusOr<comm::LaunchEnv> env = comm::DetectLaunchEnv();
  if (!env.ok()) {
    std::cerr << "launch environment: " << env.status() << "\n";
    return 1;
  }
  absl::StatusOr<std::unique_ptr<comm::Communicator>> communicator =
      comm::CreateCommunicator(*env, comm::g_device, &argc, &argv);
  if (!communicator.ok()) {
    std::cerr << "creating the communicator: " << communicator.status() << "\n";
    return 1;
  }
  comm::g_comm = communicator->get();
  std::cout << comm::DescribeLaunchEnv(*env) << ", communicator "
            << comm::g_comm->Name() << "\n";
  const int result = RUN_ALL_TESTS();
  communicator->reset();
  return result;
}
