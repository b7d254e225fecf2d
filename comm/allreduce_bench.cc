// All-reduce bandwidth over a size sweep, reported as nccl-tests does:
// algbw = bytes / time, busbw = algbw * 2(n-1)/n (the traffic each rank's
// link carries in a ring all-reduce, comparable to the link's peak).
//
//   mpirun -np 2 bazel-bin/comm/allreduce_bench                 # MPI, CPU
//   mpirun -np 8 bazel-bin/comm/allreduce_bench --device=gpu    # NCCL
//
// Flags: --device=cpu|gpu, --min_bytes=8, --max_bytes=268435456 (suffixes
// K, M, G), --factor=2, --iters=20, --warmup=5. Times are in-place
// all-reduces of fp32 buffers, averaged over iterations and ranks; #wrong
// counts the elements of one checked all-reduce that differ from the exact
// sum.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "comm/communicator.h"
#include "comm/create_communicator.h"
#include "comm/device_buffer.h"
#include "comm/failure.h"
#include "comm/launch_env.h"

namespace prefopt::comm {
namespace {

struct Options {
  Device device = Device::kCpu;
  size_t min_bytes = 8;
  size_t max_bytes = size_t{256} << 20;
  size_t factor = 2;
  int iters = 20;
  int warmup = 5;
};

absl::StatusOr<size_t> ParseBytes(const std::string& flag,
                                  const std::string& text) {
  size_t scale = 1;
  std::string digits = text;
  if (!digits.empty()) {
    switch (digits.back()) {
      case 'K':
        scale = size_t{1} << 10;
        break;
      case 'M':
        scale = size_t{1} << 20;
        break;
      case 'G':
        scale = size_t{1} << 30;
        break;
      default:
        scale = 1;
    }
    if (scale != 1) digits.pop_back();
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(digits, &value) || value == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, "=", text, ": expected a positive size like 8, 64K, 256M"));
  }
  return value * scale;
}

absl::StatusOr<Options> ParseFlags(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    int number = 0;
    if (name == "--device" && (value == "cpu" || value == "gpu")) {
      o.device = value == "gpu" ? Device::kGpu : Device::kCpu;
    } else if (name == "--min_bytes" || name == "--max_bytes") {
      absl::StatusOr<size_t> bytes = ParseBytes(name, value);
      if (!bytes.ok()) return bytes.status();
      (name == "--min_bytes" ? o.min_bytes : o.max_bytes) = *bytes;
    } else if ((name == "--factor" || name == "--iters" ||
                name == "--warmup") &&
               absl::SimpleAtoi(value, &number) &&
               number >= (name == "--warmup"   ? 0
                          : name == "--factor" ? 2
                                               : 1)) {
      if (name == "--factor") o.factor = number;
      if (name == "--iters") o.iters = number;
      if (name == "--warmup") o.warmup = number;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad flag ", arg,
          "; flags: --device=cpu|gpu --min_bytes=N --max_bytes=N --factor=N "
          "(>= 2) --iters=N (>= 1) --warmup=N (>= 0)"));
    }
  }
  if (o.min_bytes > o.max_bytes) {
    return absl::InvalidArgumentError("--min_bytes exceeds --max_bytes");
  }
  return o;
}

// Small integers: every partial sum is exact, so a correct all-reduce gives
// exactly the expected value.
float Value(int rank, size_t i) {
  return static_cast<float>((rank + 1) * static_cast<int>(i % 7));
}

// Mean seconds per all-reduce of `count` floats, over iterations and ranks.
absl::StatusOr<double> TimeAllReduce(Communicator& comm, const Options& o,
                                     float* data, size_t count) {
  for (int i = 0; i < o.warmup; ++i) {
    absl::Status s = comm.AllReduceSum(data, count);
    if (!s.ok()) return s;
  }
  absl::Status s = comm.Barrier();
  if (!s.ok()) return s;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < o.iters; ++i) {
    s = comm.AllReduceSum(data, count);
    if (!s.ok()) return s;
  }
  s = SynchronizeDevice(o.device);
  if (!s.ok()) return s;
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count() /
      o.iters;
  s = comm.AllReduceSum(&seconds, 1);
  if (!s.ok()) return s;
  return seconds / comm.world_size();
}

// Elements of one all-reduce of `count` floats that differ from the exact
// sum, summed over ranks.
absl::StatusOr<double> CountWrong(Communicator& comm, DeviceBuffer& buffer,
                                  size_t count, std::vector<float>& host) {
  for (size_t i = 0; i < count; ++i) host[i] = Value(comm.rank(), i);
  absl::Status s = buffer.Upload(host.data(), count * sizeof(float));
  if (s.ok()) s = comm.AllReduceSum(buffer.floats(), count);
  if (s.ok()) s = buffer.Download(host.data(), count * sizeof(float));
  if (!s.ok()) return s;
  const int n = comm.world_size();
  double wrong = 0;
  for (size_t i = 0; i < count; ++i) {
    const float want =
        static_cast<float>(n * (n + 1) / 2 * static_cast<int>(i % 7));
    if (host[i] != want) ++wrong;
  }
  s = comm.AllReduceSum(&wrong, 1);
  if (!s.ok()) return s;
  return wrong;
}

absl::Status Run(Communicator& comm, const Options& o) {
  const bool root = comm.rank() == 0;
  const size_t max_count = std::max<size_t>(o.max_bytes / sizeof(float), 1);
  absl::StatusOr<DeviceBuffer> buffer =
      DeviceBuffer::Allocate(o.device, max_count * sizeof(float));
  if (!buffer.ok()) return buffer.status();
  std::vector<float> host(max_count);
  const int n = comm.world_size();
  const double bus_factor = n > 1 ? 2.0 * (n - 1) / n : 0.0;
  if (root) {
    std::printf("# prefopt allreduce_bench: backend %s, %d ranks, %s buffers\n",
                comm.Name().c_str(), n,
                o.device == Device::kGpu ? "GPU" : "host");
    std::printf("# warmup %d, iters %d, in-place fp32 sum\n", o.warmup,
                o.iters);
    std::printf("#\n# %10s %12s %6s %6s %10s %8s %8s %7s\n", "size", "count",
                "type", "redop", "time", "algbw", "busbw", "#wrong");
    std::printf("# %10s %12s %6s %6s %10s %8s %8s %7s\n", "(B)", "(elements)",
                "", "", "(us)", "(GB/s)", "(GB/s)", "");
  }
  double busbw_sum = 0;
  int sizes = 0;
  for (size_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= o.factor) {
    const size_t count = std::max<size_t>(bytes / sizeof(float), 1);
    const size_t size = count * sizeof(float);
    absl::StatusOr<double> wrong = CountWrong(comm, *buffer, count, host);
    if (!wrong.ok()) return wrong.status();
    absl::StatusOr<double> seconds =
        TimeAllReduce(comm, o, buffer->floats(), count);
    if (!seconds.ok()) return seconds.status();
    const double algbw = size / *seconds / 1e9;
    const double busbw = algbw * bus_factor;
    busbw_sum += busbw;
    ++sizes;
    if (root) {
      std::printf("  %10zu %12zu %6s %6s %10.2f %8.3f %8.3f %7.0f\n", size,
                  count, "float", "sum", *seconds * 1e6, algbw, busbw, *wrong);
      std::fflush(stdout);
    }
    if (bytes > o.max_bytes / o.factor) break;
  }
  if (root) {
    std::printf("# Avg bus bandwidth    : %.3f GB/s\n",
                sizes > 0 ? busbw_sum / sizes : 0.0);
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  absl::StatusOr<Options> options = ParseFlags(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "%s\n", options.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<LaunchEnv> env = DetectLaunchEnv();
  if (!env.ok()) {
    std::fprintf(stderr, "%s\n", env.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      CreateCommunicator(*env, options->device, &argc, &argv);
  if (!comm.ok()) {
    std::fprintf(stderr, "%s\n", comm.status().ToString().c_str());
    return 1;
  }
  const absl::Status s = Run(**comm, *options);
  if (!s.ok()) AbortAll(**comm, s);
  return 0;
}

}  // namespace
}  // namespace prefopt::comm

int main(int argc, char** argv) { return prefopt::comm::Main(argc, argv); }
