// The prefopt command. Every rank of an mpirun/srun job runs this same binary.
//
//   prefopt train    --config=run.textproto [--set=field.path=value ...]
//                    [--run_dir=DIR] [--resume=latest|PATH]
//   prefopt eval     --config=run.textproto [--model=HF_DIR] [--set=...]
//                    [--run_dir=DIR]
//   prefopt export   --checkpoint=DIR --out=HF_DIR [--dtype=bf16|fp16|fp32]
//                    [--max_shard_size=BYTES]
//   prefopt export   --merge_lora --model=HF_DIR --adapter=PEFT_DIR
//                    --out=HF_DIR [--dtype=...] [--max_shard_size=BYTES]
//   prefopt generate --model=HF_DIR --prompt=TEXT|--prompt_ids=1,2,3|
//                    --data=FILE.jsonl [--max_new_tokens=N]
//                    [--temperature=T] [--top_p=P] [--seed=S]
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "comm/create_communicator.h"
#include "comm/failure.h"
#include "comm/gpu_ranks.h"
#include "comm/launch_env.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/omp_wait_policy.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/select/backend_select.h"
#include "trainer/checkpoint/checkpoint_export.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/json_file.h"
#include "trainer/io/weight_store.h"
#include "trainer/loop/checkpointing.h"
#include "trainer/loop/device_select.h"
#include "trainer/loop/evaluator.h"
#include "trainer/loop/trainer.h"
#include "trainer/lora/merge_export.h"
#include "trainer/metrics/progress.h"
#include "trainer/model/decoder.h"
#include "trainer/model/generation.h"
#include "trainer/tokenizer/tokenizer.h"
#include "trainer/util/clip_text.h"
#include "trainer/util/input_file.h"

namespace prefopt {
namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  prefopt train --config=FILE [--set=field.path=value ...] "
    "[--run_dir=DIR] [--resume=latest|PATH]\n"
    "  prefopt eval --config=FILE [--model=HF_DIR] [--set=...] "
    "[--run_dir=DIR]\n"
    "  prefopt export --checkpoint=DIR --out=HF_DIR "
    "[--dtype=bf16|fp16|fp32] [--max_shard_size=BYTES]\n"
    "  prefopt export --merge_lora --model=HF_DIR --adapter=PEFT_DIR "
    "--out=HF_DIR [--dtype=...] [--max_shard_size=...]\n"
    "  prefopt generate --model=HF_DIR (--prompt=TEXT | --prompt_ids=1,2,3 | "
    "--data=FILE.jsonl)\n"
    "                   [--max_new_tokens=N] [--temperature=T] [--top_p=P] "
    "[--seed=S]\n"
    "                   [--device=AUTO|CPU|GPU] [--precision=FP32|BF16]\n"
    "\n"
    "  --config          a TrainConfig in protobuf text format (see "
    "proto/config.proto)\n"
    "  --set             override one config field, e.g. "
    "--set=optimizer.lr=5e-7 (repeatable)\n"
    "  --run_dir         where the resolved config, metrics.jsonl, eval.json, "
    "checkpoints and caches go (overrides run_dir)\n"
    "  --resume          train: continue from the newest complete checkpoint "
    "of the run dir (latest;\n"
    "                    a fresh start when there is none) or from the "
    "checkpoint folder PATH\n"
    "  --checkpoint      export: a checkpoint folder "
    "(RUN_DIR/checkpoints/step_N), or a run dir for\n"
    "                    its latest checkpoint; eval: the same as --model\n"
    "  --out             export: the Hugging Face folder to write (must not "
    "exist or be empty)\n"
    "  --dtype           export: weight dtype, default fp32 (the "
    "checkpoint's own)\n"
    "  --max_shard_size  export: bytes per weight file, e.g. 2GB, 500MiB; "
    "default 5GB\n"
    "  --merge_lora      export: fold the PEFT LoRA adapter --adapter "
    "(adapter_config.json +\n"
    "                    adapter_model.safetensors) into the base model "
    "--model: W + s * B A (docs/lora.md)\n"
    "  --model           a Hugging Face model folder (config.json + "
    "model.safetensors); a checkpoint folder\n"
    "                    is one (--checkpoint=DIR is the same). eval: "
    "default the config's own model\n"
    "  --prompt          text; needs the model folder's tokenizer.json\n"
    "  --prompt_ids      token ids, comma-separated\n"
    "  --data            JSONL, one prompt per line (\"prompt_ids\" or "
    "\"prompt\"); prints one JSON line\n"
    "                    per prompt and, where the line has \"chosen_ids\" or "
    "\"completion_ids\", how many\n"
    "                    generations equal them\n"
    "  --max_new_tokens  default 64, lowered to fit the model's positions\n"
    "  --temperature     0 (default): greedy; > 0: sampling\n"
    "  --top_p           nucleus sampling, in (0, 1]; default 1\n"
    "  --device          generate: AUTO (default), CPU or GPU; --precision: "
    "FP32 or BF16 (train and\n"
    "                    eval: the config fields device and precision, "
    "e.g. --set=device=GPU)\n"
    "  --seed            of the sampling; default 0\n";

// Flags of the form --name=value after the command word; each at most once,
// except --set, which may repeat.
struct Flags {
  std::map<std::string, std::string> values;
  std::vector<std::string> sets;

  bool Has(const std::string& name) const { return values.count(name) != 0; }
  std::string Get(const std::string& name) const {
    auto it = values.find(name);
    return it == values.end() ? "" : it->second;
  }
};

absl::StatusOr<Flags> ParseFlags(int argc, char** argv,
                                 const std::set<std::string>& names) {
  Flags flags;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string name = arg.rfind("--", 0) == 0 && eq != std::string::npos
                                 ? arg.substr(2, eq - 2)
                                 : "";
    if (name.empty() || names.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown argument \"", util::ClipText(arg),
                       "\" (flags: --", absl::StrJoin(names, "=, --"), "=)"));
    }
    const std::string value = arg.substr(eq + 1);
    if (name == "set") {
      flags.sets.push_back(value);
    } else if (!flags.values.emplace(name, value).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", util::ClipText(name), " is given twice"));
    }
  }
  return flags;
}

// Reports a fatal error: a lone process returns `code`; in a multi-rank job
// every rank is brought down, since a rank that simply returned would leave
// the others waiting in a collective forever.
int Fail(comm::Communicator* comm, const absl::Status& status, int code,
         const char* command = "train") {
  if (comm != nullptr && comm->world_size() > 1) comm::AbortAll(*comm, status);
  std::cerr << "prefopt " << command << ": " << status.message() << "\n";
  return code;
}

// What every rank of `train` and `eval` sets up before its work: the launch
// environment, the communicator between the ranks, and the config (read on
// every rank, it is small; the trainer compares it across ranks).
struct RankSetup {
  comm::LaunchEnv env;
  std::unique_ptr<comm::Communicator> comm;
  TrainConfig config;
  // mpirun gives every rank a pseudo-terminal of its own, even when mpirun's
  // output goes to a file, so isatty() only means a terminal without it.
  bool live_progress = false;
};

// Returns 0 with `setup` filled, or the exit code after reporting the error.
int SetUpRank(int argc, char** argv, const char* command,
              const std::string& config_path,
              const std::vector<std::string>& overrides, RankSetup* setup) {
  auto env = comm::DetectLaunchEnv();
  if (!env.ok()) return Fail(nullptr, env.status(), 2, command);
  setup->env = *env;
  auto communicator =
      comm::CreateCommunicator(*env, comm::Device::kCpu, &argc, &argv);
  if (!communicator.ok()) {
    return Fail(nullptr, communicator.status(), 1, command);
  }
  setup->comm = *std::move(communicator);
  auto config = config::LoadTrainConfig(config_path, overrides);
  if (!config.ok()) return Fail(setup->comm.get(), config.status(), 2, command);
  setup->config = *std::move(config);
  setup->live_progress =
      env->launcher != "mpirun" && metrics::IsTerminal(STDOUT_FILENO);
  return 0;
}

int Train(int argc, char** argv) {
  auto flags = ParseFlags(argc, argv, {"config", "run_dir", "resume", "set"});
  if (flags.ok() && !flags->Has("config")) {
    flags = absl::InvalidArgumentError("--config=FILE is required");
  }
  if (!flags.ok()) {
    std::cerr << "prefopt train: " << flags.status().message() << "\n\n"
              << kUsage;
    return 2;
  }
  std::vector<std::string> overrides = flags->sets;
  for (const char* name : {"run_dir", "resume"}) {
    if (flags->Has(name)) {
      overrides.push_back(absl::StrCat(name, "=", flags->Get(name)));
    }
  }
  RankSetup run;
  if (int code =
          SetUpRank(argc, argv, "train", flags->Get("config"), overrides, &run);
      code != 0) {
    return code;
  }
  comm::Communicator* comm = run.comm.get();
  const TrainConfig* config = &run.config;
  if (comm->rank() == 0 && comm->world_size() > 1) {
    std::cout << "data-parallel: " << comm::DescribeLaunchEnv(run.env) << "\n";
  }
  // Before the long preparation (data, reference pass), which a signal ends
  // at once, with a message; Run defers the signals to a checkpoint.
  if (config->save_on_signal()) loop::InstallStopSignalHandlers();
  auto trainer =
      loop::Trainer::Create(*config, std::cout, comm, run.live_progress);
  if (!trainer.ok()) return Fail(comm, trainer.status(), 1);
  const absl::Status s = (*trainer)->Run();
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
  // --merge_lora is a switch: alone it means --merge_lora=true.
  std::vector<std::string> args(argv, argv + argc);
  for (std::string& arg : args) {
    if (arg == "--merge_lora") arg = "--merge_lora=true";
  }
  std::vector<char*> arg_ptrs;
  for (std::string& arg : args) arg_ptrs.push_back(arg.data());
  auto flags = ParseFlags(argc, arg_ptrs.data(),
                          {"checkpoint", "out", "dtype", "max_shard_size",
                           "merge_lora", "model", "adapter"});
  const std::string merge_lora = flags.ok() ? flags->Get("merge_lora") : "";
  if (flags.ok() && !merge_lora.empty() && merge_lora != "true" &&
      merge_lora != "false") {
    flags = absl::InvalidArgumentError(
        absl::StrCat("--merge_lora takes no value (or true/false), got \"",
                     util::ClipText(merge_lora), "\""));
  }
  const bool merge = merge_lora == "true";
  if (flags.ok() && merge && flags->Has("checkpoint")) {
    flags = absl::InvalidArgumentError(
        "--merge_lora merges a PEFT adapter folder into a Hugging Face "
        "model: give --model=HF_DIR --adapter=PEFT_DIR, not --checkpoint");
  }
  if (flags.ok() && merge &&
      (!flags->Has("model") || !flags->Has("adapter") || !flags->Has("out"))) {
    flags = absl::InvalidArgumentError(
        "--merge_lora needs --model=HF_DIR, --adapter=PEFT_DIR and "
        "--out=HF_DIR");
  }
  if (flags.ok() && !merge && (flags->Has("model") || flags->Has("adapter"))) {
    flags = absl::InvalidArgumentError(
        "--model and --adapter go with --merge_lora");
  }
  if (flags.ok() && !merge &&
      (!flags->Has("checkpoint") || !flags->Has("out"))) {
    flags = absl::InvalidArgumentError(
        "--checkpoint=DIR and --out=HF_DIR are required");
  }
  if (!flags.ok()) {
    std::cerr << "prefopt export: " << flags.status().message() << "\n\n"
              << kUsage;
    return 2;
  }
  const std::string checkpoint_dir = flags->Get("checkpoint");
  const std::string out = flags->Get("out");
  const std::string dtype_name =
      flags->Has("dtype") ? flags->Get("dtype") : "fp32";
  const std::string shard_size = flags->Get("max_shard_size");
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
  if (merge) {
    const std::string model = flags->Get("model");
    const std::string adapter = flags->Get("adapter");
    absl::StatusOr<lora::MergedExport> merged =
        lora::ExportMergedModel(model, adapter, out, *dtype, *shard_bytes);
    if (!merged.ok()) {
      std::cerr << "prefopt export: " << merged.status().message() << "\n";
      return 1;
    }
    std::cout << "merged " << merged->modules << " LoRA modules of " << adapter
              << " (scaling " << merged->scaling << ") into " << model
              << "; wrote " << out << " as " << dtype_name << "\n";
    return 0;
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

int Eval(int argc, char** argv) {
  auto flags = ParseFlags(argc, argv,
                          {"config", "model", "checkpoint", "set", "run_dir"});
  if (flags.ok() && !flags->Has("config")) {
    flags = absl::InvalidArgumentError("--config=FILE is required");
  }
  if (flags.ok() && flags->Has("model") && flags->Has("checkpoint")) {
    flags = absl::InvalidArgumentError(
        "give the model folder once, as --model or as --checkpoint");
  }
  if (!flags.ok()) {
    std::cerr << "prefopt eval: " << flags.status().message() << "\n\n"
              << kUsage;
    return 2;
  }
  std::vector<std::string> overrides = flags->sets;
  if (flags->Has("run_dir")) {
    overrides.push_back(absl::StrCat("run_dir=", flags->Get("run_dir")));
  }
  const std::string model_dir =
      flags->Has("model") ? flags->Get("model") : flags->Get("checkpoint");
  RankSetup run;
  if (int code =
          SetUpRank(argc, argv, "eval", flags->Get("config"), overrides, &run);
      code != 0) {
    return code;
  }
  comm::Communicator* comm = run.comm.get();
  const TrainConfig* config = &run.config;
  const bool rank0 = comm->rank() == 0;
  const bool live = run.live_progress;
  std::optional<metrics::ProgressReporter> progress;
  if (rank0) progress.emplace(std::cout, live, 0);
  auto result = loop::EvaluateModel(
      *config, model_dir, rank0 ? std::cout : std::cerr, comm,
      [&](const std::string& phase, int64_t done, int64_t total) {
        if (progress.has_value()) progress->Phase(phase, done, total);
      });
  if (!result.ok()) return Fail(comm, result.status(), 1, "eval");
  if (!rank0) return 0;
  progress.reset();
  const std::string model =
      model_dir.empty() ? "the config's model" : model_dir;
  std::cout << "eval of " << model << " on " << result->examples
            << " held-out examples:\n"
            << loop::EvalTableText(result->metrics);
  std::error_code ec;
  std::filesystem::create_directories(config->run_dir(), ec);
  const std::string path = config->run_dir() + "/eval.json";
  const absl::Status s = loop::WriteEvalJson(
      path, std::nullopt, result->examples, model, result->metrics);
  if (!s.ok()) return Fail(comm, s, 1, "eval");
  std::cout << "written to " << path << "\n";
  return 0;
}

// Comma-separated token ids.
absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& flag,
                                              const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": \"", util::ClipText(part),
                       "\" is not a token id (expected e.g. 1,2,3)"));
    }
    ids.push_back(id);
  }
  return ids;
}

// The ids generation stops after: generation_config.json's eos_token_id
// (an id or a list) when the folder has one, else config.json's.
absl::StatusOr<std::vector<int32_t>> StopIds(const std::string& model_dir,
                                             const io::ModelSpec& spec) {
  std::vector<int32_t> ids;
  const std::string path = model_dir + "/generation_config.json";
  if (std::filesystem::exists(path)) {
    auto j = io::ReadJsonFile(path);
    if (!j.ok()) return j.status();
    auto eos = j->find("eos_token_id");
    if (eos != j->end() && eos->is_number_integer()) {
      ids.push_back(eos->get<int32_t>());
    } else if (eos != j->end() && eos->is_array()) {
      for (const auto& id : *eos) {
        if (id.is_number_integer()) ids.push_back(id.get<int32_t>());
      }
    }
    if (!ids.empty()) return ids;
  }
  if (spec.eos_token_id.has_value()) {
    ids.push_back(static_cast<int32_t>(*spec.eos_token_id));
  }
  for (int64_t id : spec.extra_eos_token_ids) {
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// One prompt of a --data file, with the response the data holds for it.
struct DataPrompt {
  std::vector<int32_t> prompt;
  std::optional<std::vector<int32_t>> reference;
};

absl::StatusOr<std::vector<DataPrompt>> ReadPrompts(
    const std::string& path, const tokenizer::Tokenizer* tok,
    const std::string& model_dir) {
  if (absl::Status s = util::CheckInputFile(path); !s.ok()) return s;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<DataPrompt> prompts;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    auto j = io::ParseJson(line, where);
    if (!j.ok()) return j.status();
    DataPrompt p;
    try {
      if (j->contains("prompt_ids")) {
        p.prompt = (*j)["prompt_ids"].get<std::vector<int32_t>>();
      } else if (j->contains("prompt") && (*j)["prompt"].is_string()) {
        if (tok == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ": a text \"prompt\" needs ", model_dir,
              "/tokenizer.json, which is missing; give \"prompt_ids\""));
        }
        auto ids = tok->Encode((*j)["prompt"].get<std::string>(), true);
        if (!ids.ok()) return ids.status();
        p.prompt = *std::move(ids);
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(where,
                         ": expected \"prompt_ids\" (token ids) or \"prompt\" "
                         "(text)"));
      }
      for (const char* field : {"chosen_ids", "completion_ids"}) {
        if (j->contains(field)) {
          p.reference = (*j)[field].get<std::vector<int32_t>>();
        }
      }
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": token ids must be integer arrays (", e.what(), ")"));
    }
    if (p.prompt.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": the prompt has no tokens"));
    }
    prompts.push_back(std::move(p));
  }
  if (prompts.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no prompts"));
  }
  return prompts;
}

// generate's backend: --device=AUTO|CPU|GPU and --precision=FP32|BF16, as
// the config fields device and precision are for train and eval.
absl::StatusOr<kernels::SelectedBackend> GenerateBackend(const Flags& flags) {
  TrainConfig config;
  if (flags.Has("device")) {
    TrainConfig::Device device;
    if (!TrainConfig::Device_Parse(flags.Get("device"), &device)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--device=", util::ClipText(flags.Get("device")),
                       ": expected AUTO, CPU or GPU"));
    }
    config.set_device(device);
  }
  if (flags.Has("precision")) {
    TrainConfig::Precision precision;
    if (!TrainConfig::Precision_Parse(flags.Get("precision"), &precision) ||
        precision == TrainConfig::PRECISION_DEFAULT) {
      return absl::InvalidArgumentError(
          absl::StrCat("--precision=", util::ClipText(flags.Get("precision")),
                       ": expected FP32 or BF16"));
    }
    config.set_precision(precision);
  }
  return loop::SelectDevice(config, 0);
}

// --max_new_tokens, --temperature, --top_p and --seed.
absl::StatusOr<model::GenerationOptions> SamplingFlags(const Flags& flags) {
  model::GenerationOptions options;
  std::string bad;  // the first flag that is not a number
  const auto check = [&](const char* name, bool parsed) {
    if (!parsed && bad.empty()) bad = name;
  };
  if (flags.Has("max_new_tokens")) {
    check("max_new_tokens", absl::SimpleAtoi(flags.Get("max_new_tokens"),
                                             &options.max_new_tokens));
  }
  if (flags.Has("temperature")) {
    check("temperature",
          absl::SimpleAtod(flags.Get("temperature"), &options.temperature));
  }
  if (flags.Has("top_p")) {
    check("top_p", absl::SimpleAtod(flags.Get("top_p"), &options.top_p));
  }
  if (flags.Has("seed")) {
    check("seed", absl::SimpleAtoi(flags.Get("seed"), &options.seed));
  }
  if (!bad.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", bad, ": not a number: \"", util::ClipText(flags.Get(bad)), "\""));
  }
  if (options.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_new_tokens: must be >= 1, got ", options.max_new_tokens));
  }
  return options;
}

// The prompt(s) of --data, --prompt_ids or --prompt.
absl::StatusOr<std::vector<DataPrompt>> CollectPrompts(
    const Flags& flags, const tokenizer::Tokenizer* tok,
    const std::string& model_dir) {
  if (flags.Has("data")) return ReadPrompts(flags.Get("data"), tok, model_dir);
  if (flags.Has("prompt_ids")) {
    auto ids = ParseIds("prompt_ids", flags.Get("prompt_ids"));
    if (!ids.ok()) return ids.status();
    return std::vector<DataPrompt>{{*std::move(ids), std::nullopt}};
  }
  if (tok == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prompt needs a tokenizer, and ", model_dir,
                     " has no tokenizer.json; give token ids with "
                     "--prompt_ids=1,2,3"));
  }
  auto ids = tok->Encode(flags.Get("prompt"), /*add_special_tokens=*/true);
  if (!ids.ok()) return ids.status();
  if (ids->empty()) {
    return absl::InvalidArgumentError(
        "--prompt: the text has no tokens in this tokenizer");
  }
  return std::vector<DataPrompt>{{*std::move(ids), std::nullopt}};
}

int Generate(int argc, char** argv) {
  const auto fail = [](const absl::Status& status, int code) {
    return Fail(nullptr, status, code, "generate");
  };
  auto flags = ParseFlags(
      argc, argv,
      {"model", "checkpoint", "prompt", "prompt_ids", "data", "max_new_tokens",
       "temperature", "top_p", "seed", "device", "precision"});
  if (flags.ok()) {
    const int prompts =
        flags->Has("prompt") + flags->Has("prompt_ids") + flags->Has("data");
    if (!flags->Has("model") && !flags->Has("checkpoint")) {
      flags = absl::InvalidArgumentError("--model=HF_DIR is required");
    } else if (prompts != 1) {
      flags = absl::InvalidArgumentError(
          "give exactly one of --prompt=TEXT, --prompt_ids=1,2,3 and "
          "--data=FILE.jsonl");
    }
  }
  if (!flags.ok()) {
    std::cerr << "prefopt generate: " << flags.status().message() << "\n\n"
              << kUsage;
    return 2;
  }
  const std::string model_dir =
      flags->Has("model") ? flags->Get("model") : flags->Get("checkpoint");
  auto options = SamplingFlags(*flags);
  if (!options.ok()) return fail(options.status(), 2);

  auto spec = io::ReadHfConfig(model_dir);
  if (!spec.ok()) return fail(spec.status(), 1);
  std::optional<tokenizer::Tokenizer> tok;
  const std::string tok_path = model_dir + "/tokenizer.json";
  if (std::filesystem::exists(tok_path)) {
    auto t = tokenizer::Tokenizer::FromFile(tok_path);
    if (!t.ok()) return fail(t.status(), 1);
    // Prompt ids past the vocabulary would index past the embeddings.
    if (absl::Status s = t->CheckIdsBelow(spec->vocab_size); !s.ok()) {
      return fail(
          absl::Status(s.code(), absl::StrCat(tok_path, ": ", s.message())), 1);
    }
    tok.emplace(*std::move(t));
  }
  auto prompts = CollectPrompts(*flags, tok ? &*tok : nullptr, model_dir);
  if (!prompts.ok()) return fail(prompts.status(), 2);

  // The decoder holds the longest prompt and its new tokens.
  int longest = 0;
  for (const DataPrompt& p : *prompts) {
    longest = std::max(longest, static_cast<int>(p.prompt.size()));
  }
  const int positions = static_cast<int>(spec->max_positions);
  if (longest >= positions) {
    return fail(
        absl::InvalidArgumentError(absl::StrCat(
            "a prompt of ", longest, " tokens leaves no room in the model's ",
            positions, " positions")),
        2);
  }
  // Compared so that a --max_new_tokens near the int limit cannot overflow.
  if (options->max_new_tokens > positions - longest) {
    if (flags->Has("max_new_tokens")) {
      std::cerr << "notice: max_new_tokens lowered from "
                << options->max_new_tokens << " to " << positions - longest
                << " to fit the model's " << positions << " positions\n";
    }
    options->max_new_tokens = positions - longest;
  }
  auto stop_ids = StopIds(model_dir, *spec);
  if (!stop_ids.ok()) return fail(stop_ids.status(), 1);
  options->stop_ids = *std::move(stop_ids);

  auto selected = GenerateBackend(*flags);
  if (!selected.ok()) return fail(selected.status(), 2);
  std::cerr << selected->description << "\n";
  kernels::Backend& backend = *selected->backend;
  model::Capacity cap;
  // Prompts run in chunks of up to 64 tokens, which bounds the attention
  // buffers a long prompt would otherwise need.
  cap.max_rows = std::min(64, longest);
  cap.max_seq_len = longest + options->max_new_tokens;
  cap.max_seqs = 1;
  auto decoder = model::Decoder::Create(*spec, &backend, cap, false);
  if (!decoder.ok()) return fail(decoder.status(), 1);
  auto store = io::WeightStore::Open(model_dir);
  if (!store.ok()) return fail(store.status(), 1);
  const absl::Status loaded = (*decoder)->LoadHf(*store);
  if (!loaded.ok()) return fail(loaded, 1);
  auto generator = model::Generator::Create(decoder->get());
  if (!generator.ok()) return fail(generator.status(), 1);

  const bool data = flags->Has("data");
  int with_reference = 0, matches = 0;
  for (const DataPrompt& p : *prompts) {
    auto out = (*generator)->Generate(p.prompt, *options);
    if (!out.ok()) return fail(out.status(), 2);
    std::optional<std::string> text;
    if (tok.has_value()) {
      auto decoded = tok->Decode(*out, /*skip_special_tokens=*/true);
      if (!decoded.ok()) return fail(decoded.status(), 1);
      text = *std::move(decoded);
    }
    if (!data) {
      std::cout << (text ? *text : absl::StrJoin(*out, ",")) << "\n";
      continue;
    }
    nlohmann::json line = {{"prompt_ids", p.prompt}, {"generated_ids", *out}};
    if (text) line["text"] = *text;
    if (p.reference) {
      const bool match = *out == *p.reference;
      line["matches_reference"] = match;
      ++with_reference;
      matches += match;
    }
    std::cout << line.dump() << "\n";
  }
  if (data) {
    std::cerr << prompts->size() << " prompts";
    if (with_reference > 0) {
      std::cerr << "; the generation equals the data's response "
                   "(chosen_ids/completion_ids) for "
                << matches << " of " << with_reference << " ("
                << absl::StrFormat("%.1f", 100.0 * matches / with_reference)
                << "%)";
    }
    std::cerr << "\n";
  }
  return 0;
}

// The exit code of an internal error (sysexits.h's EX_SOFTWARE): not one of
// the codes a user's mistake gives, and below 128, so that it is not taken
// for a death by signal.
constexpr int kInternalErrorCode = 70;

// The message of the exception being handled, for the last-resort handlers.
std::string CurrentExceptionText() {
  try {
    throw;
  } catch (const std::bad_alloc& e) {
    return absl::StrCat("out of memory (", e.what(), ")");
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception of unknown type";
  }
}

[[noreturn]] void ReportInternalError(const std::string& what) {
  std::cerr << "prefopt: internal error: " << what
            << "; please report it with the command line\n"
            << std::flush;
  _exit(kInternalErrorCode);
}

// An exception that escapes a thread (OpenMP, communicator) or a noexcept
// function ends in std::terminate, which would abort with SIGABRT and a core
// dump; this says what it was and exits instead.
[[noreturn]] void OnTerminate() {
  ReportInternalError(std::current_exception() != nullptr
                          ? CurrentExceptionText()
                          : "std::terminate called without an exception");
}

int Main(int argc, char** argv) {
  kernels::cpu::ReexecWithCpuRuntimeSettings(argv);
  // device: GPU/AUTO use the CUDA backend (the CPU simulation of it in a
  // --config=cudasim build), and GPU ranks the GPU communicator (NCCL; staged
  // over MPI on the simulation).
  kernels::RegisterCudaBackend();
  comm::RegisterGpuCommunicators();
  if (argc < 2 || std::string_view(argv[1]) == "--help" ||
      std::string_view(argv[1]) == "help") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  // Test hook for tests/special_input_test.sh: no input is known to make an
  // exception escape, so the test throws one to see it reported.
  if (const char* kind = std::getenv("PREFOPT_TEST_THROW"); kind != nullptr) {
    if (std::string_view(kind) == "bad_alloc") throw std::bad_alloc();
    throw std::runtime_error(kind);
  }
  const std::string_view command = argv[1];
  if (command == "train") return Train(argc, argv);
  if (command == "export") return Export(argc, argv);
  if (command == "eval") return Eval(argc, argv);
  if (command == "generate") return Generate(argc, argv);
  std::cerr << "prefopt: unknown command \"" << command << "\"\n\n" << kUsage;
  return 2;
}

}  // namespace
}  // namespace prefopt

// Errors are values (absl::Status) throughout; an exception reaching here
// (std::bad_alloc when memory runs out, or a bug) is reported as an internal
// error with a non-zero exit instead of an abort.
int main(int argc, char** argv) {
  std::set_terminate(prefopt::OnTerminate);
  try {
    return prefopt::Main(argc, argv);
  } catch (...) {
    prefopt::ReportInternalError(prefopt::CurrentExceptionText());
  }
}
