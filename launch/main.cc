// The prefopt command. Every rank of an mpirun/srun job runs this same binary.
//
//   prefopt train --config=run.textproto [--set=field.path=value ...]
//                 [--run_dir=DIR]
#include <unistd.h>

#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "comm/create_communicator.h"
#include "comm/failure.h"
#include "comm/launch_env.h"
#include "kernels/cpu/omp_wait_policy.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/trainer.h"
#include "trainer/metrics/progress.h"

namespace prefopt {
namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  prefopt train --config=FILE [--set=field.path=value ...] "
    "[--run_dir=DIR]\n"
    "\n"
    "  --config    a TrainConfig in protobuf text format (see "
    "proto/config.proto)\n"
    "  --set       override one config field, e.g. "
    "--set=optimizer.lr=5e-7 (repeatable)\n"
    "  --run_dir   where the resolved config, metrics.jsonl and caches go "
    "(overrides run_dir)\n";

struct TrainFlags {
  std::string config;
  std::vector<std::string> overrides;
  std::string run_dir;
};

absl::Status ParseTrainFlags(int argc, char** argv, TrainFlags* flags) {
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value_of = [&](const std::string& name, std::string* out) {
      const std::string prefix = absl::StrCat("--", name, "=");
      if (arg.rfind(prefix, 0) != 0) return false;
      *out = arg.substr(prefix.size());
      return true;
    };
    std::string v;
    if (value_of("config", &flags->config) ||
        value_of("run_dir", &flags->run_dir)) {
      continue;
    }
    if (value_of("set", &v)) {
      flags->overrides.push_back(v);
      continue;
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown argument \"", arg, "\" (flags take the form --name=value)"));
  }
  if (flags->config.empty()) {
    return absl::InvalidArgumentError("--config=FILE is required");
  }
  return absl::OkStatus();
}

// Reports a fatal error: a lone process returns `code`; in a multi-rank job
// every rank is brought down, since a rank that simply returned would leave
// the others waiting in a collective forever.
int Fail(comm::Communicator* comm, const absl::Status& status, int code) {
  if (comm != nullptr && comm->world_size() > 1) comm::AbortAll(*comm, status);
  std::cerr << "prefopt train: " << status.message() << "\n";
  return code;
}

int Train(int argc, char** argv) {
  TrainFlags flags;
  absl::Status s = ParseTrainFlags(argc, argv, &flags);
  if (!s.ok()) {
    std::cerr << "prefopt train: " << s.message() << "\n\n" << kUsage;
    return 2;
  }
  if (!flags.run_dir.empty()) {
    flags.overrides.push_back(absl::StrCat("run_dir=", flags.run_dir));
  }
  auto env = comm::DetectLaunchEnv();
  if (!env.ok()) return Fail(nullptr, env.status(), 2);
  auto communicator =
      comm::CreateCommunicator(*env, comm::Device::kCpu, &argc, &argv);
  if (!communicator.ok()) return Fail(nullptr, communicator.status(), 1);
  comm::Communicator* comm = communicator->get();
  // Configs are read on every rank (they are small) and compared by hash.
  auto config = config::LoadTrainConfig(flags.config, flags.overrides);
  if (!config.ok()) return Fail(comm, config.status(), 2);
  if (comm->rank() == 0 && comm->world_size() > 1) {
    std::cout << "data-parallel: " << comm::DescribeLaunchEnv(*env) << "\n";
  }
  // mpirun gives every rank a pseudo-terminal of its own, even when mpirun's
  // output goes to a file, so isatty() only means a terminal without it.
  const bool live_progress =
      env->launcher != "mpirun" && metrics::IsTerminal(STDOUT_FILENO);
  auto trainer = loop::Trainer::Create(*config, std::cout, comm, live_progress);
  if (!trainer.ok()) return Fail(comm, trainer.status(), 1);
  s = (*trainer)->Run();
  if (!s.ok()) return Fail(comm, s, 1);
  if (comm->rank() == 0) {
    std::cout << "done: " << (*trainer)->steps_done() << " steps; metrics in "
              << config->run_dir() << "/metrics.jsonl, charts in "
              << config->run_dir() << "/report.html\n";
  }
  return 0;
}

}  // namespace
}  // namespace prefopt

int main(int argc, char** argv) {
  prefopt::kernels::cpu::ReexecWithPassiveOpenMpWait(argv);
  if (argc < 2 || std::string_view(argv[1]) == "--help" ||
      std::string_view(argv[1]) == "help") {
    std::cout << prefopt::kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string_view command = argv[1];
  if (command == "train") return prefopt::Train(argc, argv);
  std::cerr << "prefopt: unknown command \"" << command << "\"\n\n"
            << prefopt::kUsage;
  return 2;
}
