// The prefopt command. Every rank of an mpirun/srun job runs this same binary.
//
//   prefopt train --config=run.textproto [--set=field.path=value ...]
//                 [--run_dir=DIR] [--resume=latest|PATH]
//   prefopt export --checkpoint=DIR --out=HF_DIR [--dtype=bf16|fp16|fp32]
//                  [--max_shard_size=BYTES]
#include <unistd.h>

#include <iostream>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "comm/create_communicator.h"
#include "comm/failure.h"
#include "comm/launch_env.h"
#include "kernels/cpu/omp_wait_policy.h"
#include "trainer/checkpoint/checkpoint_export.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/checkpointing.h"
#include "trainer/loop/trainer.h"
#include "trainer/metrics/progress.h"

namespace prefopt {
namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  prefopt train --config=FILE [--set=field.path=value ...] "
    "[--run_dir=DIR] [--resume=latest|PATH]\n"
    "  prefopt export --checkpoint=DIR --out=HF_DIR "
    "[--dtype=bf16|fp16|fp32] [--max_shard_size=BYTES]\n"
    "\n"
    "train:\n"
    "  --config    a TrainConfig in protobuf text format (see "
    "proto/config.proto)\n"
    "  --set       override one config field, e.g. "
    "--set=optimizer.lr=5e-7 (repeatable)\n"
    "  --run_dir   where the resolved config, metrics.jsonl, checkpoints and "
    "caches go (overrides run_dir)\n"
    "  --resume    continue from the newest complete checkpoint of the run "
    "dir (latest; a fresh start when there is none) or from the checkpoint "
    "folder PATH\n"
    "export:\n"
    "  --checkpoint  a checkpoint folder (RUN_DIR/checkpoints/step_N), or a "
    "run dir for its latest checkpoint\n"
    "  --out         the Hugging Face folder to write (must not exist or be "
    "empty)\n"
    "  --dtype       weight dtype, default fp32 (the checkpoint's own)\n"
    "  --max_shard_size  bytes per weight file, e.g. 2GB, 500MiB; default "
    "5GB\n";

// Reads "--name=value" flags from argv[2...] into `flags` (name -> where to
// store it); "--set" may repeat and goes to `repeated`.
absl::Status ParseFlags(int argc, char** argv,
                        const std::map<std::string, std::string*>& flags,
                        std::vector<std::string>* repeated) {
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t equals = arg.find('=');
    const std::string name =
        arg.rfind("--", 0) == 0 && equals != std::string::npos
            ? arg.substr(2, equals - 2)
            : std::string();
    const std::string value =
        equals == std::string::npos ? "" : arg.substr(equals + 1);
    if (name == "set" && repeated != nullptr) {
      repeated->push_back(value);
      continue;
    }
    auto it = flags.find(name);
    if (it == flags.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown argument \"", arg, "\" (flags take the form --name=value)"));
    }
    *it->second = value;
  }
  return absl::OkStatus();
}

struct TrainFlags {
  std::string config;
  std::vector<std::string> overrides;
  std::string run_dir;
  std::string resume;
};

absl::Status ParseTrainFlags(int argc, char** argv, TrainFlags* flags) {
  absl::Status s = ParseFlags(argc, argv,
                              {{"config", &flags->config},
                               {"run_dir", &flags->run_dir},
                               {"resume", &flags->resume}},
                              &flags->overrides);
  if (!s.ok()) return s;
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
  if (!flags.resume.empty()) {
    flags.overrides.push_back(absl::StrCat("resume=", flags.resume));
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
  // Before the long preparation (data, reference pass): a signal then stops
  // the run after its first step, with a checkpoint.
  if (config->save_on_signal()) loop::InstallStopSignalHandlers();
  auto trainer = loop::Trainer::Create(*config, std::cout, comm, live_progress);
  if (!trainer.ok()) return Fail(comm, trainer.status(), 1);
  s = (*trainer)->Run();
  if (!s.ok()) return Fail(comm, s, 1);
  if (comm->rank() == 0) {
    const loop::Trainer& t = **trainer;
    if (t.stopped_by_signal() != 0) {
      std::cout << "stopped by " << loop::SignalName(t.stopped_by_signal())
                << " after step " << t.steps_done() << " of " << t.total_steps()
                << "; continue with --resume=latest\n";
    } else {
      std::cout << "done: " << t.steps_done() << " steps; metrics in "
                << config->run_dir() << "/metrics.jsonl, charts in "
                << config->run_dir() << "/report.html\n";
    }
  }
  return 0;
}

int Export(int argc, char** argv) {
  std::string checkpoint_dir, out, dtype_name = "fp32", shard_size;
  absl::Status s = ParseFlags(argc, argv,
                              {{"checkpoint", &checkpoint_dir},
                               {"out", &out},
                               {"dtype", &dtype_name},
                               {"max_shard_size", &shard_size}},
                              nullptr);
  if (s.ok() && (checkpoint_dir.empty() || out.empty())) {
    s = absl::InvalidArgumentError(
        "--checkpoint=DIR and --out=HF_DIR are required");
  }
  if (!s.ok()) {
    std::cerr << "prefopt export: " << s.message() << "\n\n" << kUsage;
    return 2;
  }
  absl::StatusOr<io::DType> dtype = checkpoint::ParseExportDType(dtype_name);
  absl::StatusOr<size_t> shard_bytes =
      shard_size.empty()
          ? absl::StatusOr<size_t>(checkpoint::kDefaultMaxShardBytes)
          : checkpoint::ParseByteSize(shard_size);
  for (const absl::Status& bad : {dtype.status(), shard_bytes.status()}) {
    if (!bad.ok()) {
      std::cerr << "prefopt export: " << bad.message() << "\n";
      return 2;
    }
  }
  absl::StatusOr<checkpoint::CheckpointExport> exported =
      checkpoint::ExportCheckpoint(checkpoint_dir, out, *dtype, *shard_bytes);
  if (!exported.ok()) {
    std::cerr << "prefopt export: " << exported.status().message() << "\n";
    return 1;
  }
  for (const std::string& reason : exported->skipped) {
    std::cout << "skipped " << reason << "\n";
  }
  std::cout << "exported " << exported->checkpoint_dir << " (step "
            << exported->step << ") to " << out << " as " << dtype_name << "\n";
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
  if (command == "export") return prefopt::Export(argc, argv);
  std::cerr << "prefopt: unknown command \"" << command << "\"\n\n"
            << prefopt::kUsage;
  return 2;
}
