// Benchmark: tokens/s and achieved GFLOP/s of one DPO training step on the CPU
// (one pair per step: chosen and rejected, prompt + response tokens each),
// beside OpenBLAS sgemm GFLOP/s measured in the same process.
//
//   bazel run -c opt //trainer/loop:dpo_step_bench -- [--arch=gpt2|llama]
//     [--n_embd=768] [--n_layer=12] [--n_head=12] [--n_kv_head=n_head]
//     [--intermediate=4*n_embd] [--vocab=50257] [--prompt=256]
//     [--response=256] [--n_positions=prompt+response] [--warmup=1]
//     [--steps=3] [--activation_checkpointing=0|1|both] [--live_reference=0|1]
//     [--output_chunk=N]
//     [--lora_r=N [--lora_alpha=2*r] [--lora_targets=q_proj,v_proj,...]
//      [--base_dtype=fp32|bf16]] [--sweep=1024,2048,4096,8192]
//
// --activation_checkpointing=1 trains with activation recomputation
// (TrainConfig.activation_checkpointing); =both runs this benchmark twice,
// as separate processes (peak RSS is per process), without and with it, and
// prints the step-time overhead and the peak-RSS ratio. Every run prints its
// peak resident memory (VmHWM), and with --arch=llama also the peak of its
// anonymous memory (RssAnon, sampled every 10 ms): VmHWM counts the pages of
// the mapped bf16 checkpoint the model is loaded from, which the kernel can
// drop, RssAnon only the process's own buffers.
//
// --sweep=T1,T2,... runs T = prompt + response tokens per sequence (prompt =
// response = T/2) without and with recomputation, one process each (peak RSS
// is per process), all with n_positions = the largest T unless given, and
// prints a table of peak RSS and s/step and the RSS increments between
// consecutive T per 1024 tokens (constant when memory grows linearly in T).
// A run that fails (e.g. out of memory under `prlimit --as`) is listed as
// failed. Every run prints the attention path its batch takes on the CPU
// backend (docs/architecture.md, "Attention memory") and the memory the
// stored path would save: NH * 2 * T^2 floats per block.
//
// --n_positions sets the model's position count (default T): GPT-2 small
// has 1024, so longer sequences need a model with more, random-initialized
// as every model here.
//
// --lora_r trains LoRA adapters (model.lora, docs/lora.md) of that rank on
// --lora_targets (default PEFT's for the architecture) with lora_alpha
// --lora_alpha; --base_dtype=bf16 sets model.base_dtype: WEIGHT_BF16 (the
// frozen base held in bf16). --live_reference=1 scores the reference every
// step (model.live_reference; with LoRA the same weights, adapters off, as
// TRL's reference for a peft model) instead of precomputing it before the
// first step. --warmup=0 times the first step (the big models, where one
// step is minutes).
//
// --arch=llama builds a Llama decoder (RMSNorm, RoPE, grouped KV heads,
// SwiGLU, tied embeddings as SmolLM2), e.g. SmolLM2-135M's shape:
//   --arch=llama --n_embd=576 --n_layer=30 --n_head=9 --n_kv_head=3
//     --intermediate=1536 --vocab=49152
// The config proto has no from-scratch Llama fields, so the benchmark writes
// a Hugging Face folder (config.json and N(0, 0.02) bf16 weights) into its
// temporary directory and loads it through model.hf_path.
//
// FLOPs counted (model FLOPs, the work a step must do; the output layer's
// recomputation in pass 2 is not counted), per sequence of T tokens with R
// response tokens: 6·L·T·P for the dense layers (forward + backward), P the
// multiply-adds of one token through one layer's projections (12·C² for
// GPT-2; C·(NH + 2·NKV)·hd + NH·hd·C + 3·C·FF for Llama), 6·L·T²·NH·hd for
// causal attention, and 6·R·C·V for the output layer. With LoRA the frozen
// weights get no gradient: 4·L·T·P and 4·R·C·V (the adapters' own FLOPs,
// r/C of a projection's, are not counted); a live reference adds one
// forward, 2·L·T·P + 2·L·T²·NH·hd + 2·R·C·V. The load average of the
// machine is printed before and after, as other work on it slows the step.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/omp_wait_policy.h"
#include "kernels/cpu/sgemm_probe.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/output_layer.h"
#include "trainer/util/rng.h"

namespace {

using prefopt::io::ModelSpec;

struct Options {
  bool llama = false;
  int n_embd = 768, n_layer = 12, n_head = 12, vocab = 50257;
  int n_kv_head = 0, intermediate = 0;  // 0: n_head, 4 * n_embd
  int prompt = 256, response = 256, steps = 3, warmup = 1;
  int n_positions = 0;   // 0: prompt + response
  int output_chunk = 0;  // output_chunk_tokens; 0: sized from the vocabulary
  // 0 or 1: TrainConfig.activation_checkpointing; -1: both, one process each.
  int activation_checkpointing = 0;
  bool live_reference = false;
  int lora_r = 0;                         // 0: no LoRA, a full fine-tune
  int lora_alpha = 0;                     // 0: 2 * lora_r
  std::vector<std::string> lora_targets;  // empty: PEFT's default
  bool bf16_base = false;
  std::vector<int> sweep;  // tokens per sequence; empty: one run
};

bool Parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    const std::string name = a.substr(2, eq - 2);
    const std::string value = a.substr(eq + 1);
    if (name == "activation_checkpointing") {
      if (value != "0" && value != "1" && value != "both") return false;
      o->activation_checkpointing = value == "both" ? -1 : value == "1";
      continue;
    }
    if (name == "live_reference") {
      if (value != "0" && value != "1") return false;
      o->live_reference = value == "1";
      continue;
    }
    if (name == "base_dtype") {
      if (value != "fp32" && value != "bf16") return false;
      o->bf16_base = value == "bf16";
      continue;
    }
    if (name == "lora_targets") {
      o->lora_targets = absl::StrSplit(value, ',', absl::SkipEmpty());
      continue;
    }
    if (name == "sweep") {
      for (absl::string_view t : absl::StrSplit(value, ',')) {
        int v;
        if (!absl::SimpleAtoi(t, &v) || v < 2 || v % 2) return false;
        o->sweep.push_back(v);
      }
      continue;
    }
    if (name == "warmup") {
      if (!absl::SimpleAtoi(value, &o->warmup) || o->warmup < 0) return false;
      continue;
    }
    if (name == "arch") {
      if (value != "gpt2" && value != "llama") return false;
      o->llama = value == "llama";
      continue;
    }
    int v;
    if (!absl::SimpleAtoi(value, &v) || v <= 0) return false;
    if (name == "n_kv_head")
      o->n_kv_head = v;
    else if (name == "intermediate")
      o->intermediate = v;
    else if (name == "n_embd")
      o->n_embd = v;
    else if (name == "n_layer")
      o->n_layer = v;
    else if (name == "n_head")
      o->n_head = v;
    else if (name == "vocab")
      o->vocab = v;
    else if (name == "prompt")
      o->prompt = v;
    else if (name == "response")
      o->response = v;
    else if (name == "steps")
      o->steps = v;
    else if (name == "n_positions")
      o->n_positions = v;
    else if (name == "lora_r")
      o->lora_r = v;
    else if (name == "lora_alpha")
      o->lora_alpha = v;
    else if (name == "output_chunk")
      o->output_chunk = v;
    else
      return false;
  }
  return true;
}

std::string LoadAverage() {
  std::string line;
  std::getline(std::ifstream("/proc/loadavg"), line);
  return line;
}

// SmolLM2's choices where the options say nothing: tied embeddings,
// rope_theta 1e5, RMSNorm eps 1e-5, no biases.
ModelSpec LlamaSpec(const Options& o, int max_positions) {
  ModelSpec spec;
  spec.arch = ModelSpec::Arch::kLlama;
  spec.vocab_size = o.vocab;
  spec.max_positions = max_positions;
  spec.hidden = o.n_embd;
  spec.n_layer = o.n_layer;
  spec.n_head = o.n_head;
  spec.n_kv_head = o.n_kv_head;
  spec.head_dim = o.n_embd / o.n_head;
  spec.intermediate = o.intermediate;
  spec.norm_eps = 1e-5;
  spec.activation = "silu";
  spec.tie_word_embeddings = true;
  spec.rope_theta = 100000.0;
  return spec;
}

// Writes `spec` as a Hugging Face folder `dir` with bf16 weights initialized
// as transformers does (N(0, 0.02) weights, unit norms).
absl::Status WriteRandomModel(const ModelSpec& spec, const std::string& dir) {
  std::filesystem::create_directories(dir);
  absl::Status s = prefopt::io::WriteHfConfig(spec, dir);
  if (!s.ok()) return s;
  prefopt::kernels::CpuBackend backend;
  auto decoder = prefopt::model::Decoder::Create(spec, &backend, {1, 1, 1},
                                                 /*trainable=*/false);
  if (!decoder.ok()) return decoder.status();
  (*decoder)->InitRandom(1, 0.02f);
  std::vector<prefopt::io::TensorToWrite> tensors;
  // Llama's tensors are all stored untransposed, so each one is a range of
  // the (host) parameter buffer.
  for (const prefopt::model::HfTensorRef& ref :
       (*decoder)->layout().HfTensors()) {
    tensors.push_back({ref.name, ref.shape, (*decoder)->params() + ref.offset});
  }
  return prefopt::io::WriteWeightStore(dir, tensors, prefopt::io::DType::kBF16,
                                       std::numeric_limits<size_t>::max());
}

// The vector instruction sets this CPU has, of those the kernels' speed
// depends on.
std::string VectorFeatures() {
  std::string features;
  auto add = [&](bool has, const char* name) {
    if (has) absl::StrAppend(&features, features.empty() ? "" : " ", name);
  };
  __builtin_cpu_init();
  add(__builtin_cpu_supports("avx"), "avx");
  add(__builtin_cpu_supports("avx2"), "avx2");
  add(__builtin_cpu_supports("fma"), "fma");
  add(__builtin_cpu_supports("avx512f"), "avx512f");
  add(__builtin_cpu_supports("avx512bw"), "avx512bw");
  add(__builtin_cpu_supports("avx512vl"), "avx512vl");
  return features.empty() ? "none of avx, avx2, fma, avx512" : features;
}

// The value of `field` ("VmHWM:", "RssAnon:") in /proc/self/status in MiB,
// or -1.
double StatusMib(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == field) {
      double kib;
      status >> kib;
      return kib / 1024.0;
    }
    status.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return -1;
}

// Samples RssAnon every 10 ms on a thread of its own while it lives and
// keeps the largest value seen.
class AnonPeakSampler {
 public:
  AnonPeakSampler()
      : thread_([this] {
          while (!stop_.load()) {
            const double mib = StatusMib("RssAnon:");
            if (mib > peak_.load()) peak_.store(mib);
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
          }
        }) {}
  ~AnonPeakSampler() { Stop(); }
  // Ends the sampling; returns the peak in MiB.
  double Stop() {
    if (thread_.joinable()) {
      stop_.store(true);
      thread_.join();
    }
    return peak_.load();
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<double> peak_{0.0};
  std::thread thread_;
};

// The number after `label` on the first line of `text` that starts with it,
// or -1.
double ValueAfter(const std::string& text, const std::string& label) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(label, 0) == 0) {
      return std::strtod(line.c_str() + label.size(), nullptr);
    }
  }
  return -1;
}

// This binary's arguments but those named `drop` (each "--name=").
std::string ArgsWithout(int argc, char** argv,
                        const std::vector<std::string>& drop) {
  std::string args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool dropped = std::any_of(
        drop.begin(), drop.end(),
        [&](const std::string& d) { return a.rfind("--" + d + "=", 0) == 0; });
    if (!dropped) absl::StrAppend(&args, " '", a, "'");
  }
  return args;
}

// Runs this binary with `args` as a separate process, echoing its output;
// returns its output, and whether it exited 0 in *ok.
std::string RunSelf(const std::string& args, bool* ok) {
  // popen runs a shell, whose /proc/self/exe is the shell's.
  const std::string self = std::filesystem::read_symlink("/proc/self/exe");
  const std::string command = absl::StrCat("'", self, "'", args, " 2>&1");
  std::string report;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *ok = false;
    return report;
  }
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    report.append(buffer.data(), n);
    std::fwrite(buffer.data(), 1, n, stdout);
    std::fflush(stdout);
  }
  *ok = pclose(pipe) == 0;
  return report;
}

// --activation_checkpointing=both: reruns this binary without and with
// recomputation, echoes both reports and compares them.
int CompareCheckpointing(int argc, char** argv) {
  const std::string args =
      ArgsWithout(argc, argv, {"activation_checkpointing"});
  std::array<std::string, 2> reports;
  for (int on = 0; on < 2; ++on) {
    bool ok;
    reports[on] =
        RunSelf(absl::StrCat(args, " --activation_checkpointing=", on), &ok);
    if (!ok) return 1;
  }
  const double stored_s = ValueAfter(reports[0], "step time");
  const double recomputed_s = ValueAfter(reports[1], "step time");
  const double stored_mib = ValueAfter(reports[0], "peak RSS");
  const double recomputed_mib = ValueAfter(reports[1], "peak RSS");
  std::printf(
      "activation checkpointing: step time %.3f s -> %.3f s (%+.1f%%), peak "
      "RSS %.0f MiB -> %.0f MiB (%.2fx less)\n",
      stored_s, recomputed_s, 100.0 * (recomputed_s / stored_s - 1.0),
      stored_mib, recomputed_mib, stored_mib / recomputed_mib);
  return 0;
}

// --sweep: one process per T and recomputation setting; a table of their
// peak RSS and step times, and the RSS increments per 1024 tokens.
int Sweep(int argc, char** argv, const Options& o) {
  std::string args = ArgsWithout(
      argc, argv, {"sweep", "activation_checkpointing", "prompt", "response"});
  if (o.n_positions == 0) {
    absl::StrAppend(&args, " --n_positions=",
                    *std::max_element(o.sweep.begin(), o.sweep.end()));
  }
  struct Row {
    int T, recompute;
    double seconds, rss;  // -1: the run failed
    std::string path;
  };
  std::vector<Row> rows;
  // T outermost, so that a sweep cut short has both settings of its
  // shorter T.
  for (int T : o.sweep) {
    for (int recompute = 0; recompute < 2; ++recompute) {
      Row row{T, recompute, -1.0, -1.0, ""};
      bool ok;
      const std::string report =
          RunSelf(absl::StrCat(args, " --prompt=", T / 2, " --response=", T / 2,
                               " --activation_checkpointing=", recompute),
                  &ok);
      if (ok) {
        row.seconds = ValueAfter(report, "step time");
        row.rss = ValueAfter(report, "peak RSS");
        const size_t at = report.find("attention path    ");
        if (at != std::string::npos) {
          row.path =
              report.substr(at + 18, report.find(' ', at + 18) - at - 18);
        }
      }
      rows.push_back(row);
    }
  }
  std::printf(
      "\nsweep: T = prompt + response tokens per sequence, 1 pair per step\n"
      "%-6s %-13s %-14s %-9s %-8s %s\n",
      "T", "recompute", "peak RSS MiB", "s/step", "attn", "dRSS/1024 tokens");
  std::stable_sort(rows.begin(), rows.end(), [](const Row& x, const Row& y) {
    return x.recompute < y.recompute;
  });
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::string increment = "-";
    if (i > 0 && rows[i - 1].recompute == r.recompute && r.rss > 0 &&
        rows[i - 1].rss > 0) {
      increment = absl::StrCat(
          static_cast<int>(
              (r.rss - rows[i - 1].rss) * 1024.0 / (r.T - rows[i - 1].T) + 0.5),
          " MiB (T ", rows[i - 1].T, " -> ", r.T, ")");
    }
    if (r.rss < 0) {
      std::printf("%-6d %-13s failed\n", r.T, r.recompute ? "on" : "off");
      continue;
    }
    std::printf("%-6d %-13s %-14.0f %-9.2f %-8s %s\n", r.T,
                r.recompute ? "on" : "off", r.rss, r.seconds, r.path.c_str(),
                increment.c_str());
  }
  std::printf("CPU vector ISA    %s\n", VectorFeatures().c_str());
  std::printf("load average      %s (after)\n", LoadAverage().c_str());
  return 0;
}

// Writes the random Llama model in a child process, so that its fp32
// parameters do not count in this process's peak RSS.
absl::Status WriteRandomModelInChild(const ModelSpec& spec,
                                     const std::string& dir) {
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    const absl::Status s = WriteRandomModel(spec, dir);
    if (!s.ok()) std::cerr << s << "\n";
    _exit(s.ok() ? 0 : 1);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0) {
    return absl::InternalError(
        absl::StrCat("writing the random model into ", dir, " failed"));
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  prefopt::kernels::cpu::ReexecWithCpuRuntimeSettings(argv);
  Options o;
  if (!Parse(argc, argv, &o)) {
    std::cerr << "usage: dpo_step_bench [--arch=gpt2|llama] [--n_embd=N] "
                 "[--n_layer=N] [--n_head=N] [--n_kv_head=N] "
                 "[--intermediate=N] [--vocab=N] [--prompt=N] [--response=N] "
                 "[--n_positions=N] [--warmup=N] [--steps=N] "
                 "[--activation_checkpointing=0|1|both] "
                 "[--live_reference=0|1] [--lora_r=N] [--lora_alpha=N] "
                 "[--lora_targets=a,b,...] [--base_dtype=fp32|bf16] "
                 "[--output_chunk=N] [--sweep=T1,T2,... (even)]\n";
    return 2;
  }
  if (!o.sweep.empty()) return Sweep(argc, argv, o);
  if (o.activation_checkpointing < 0) return CompareCheckpointing(argc, argv);
  if (o.n_kv_head == 0) o.n_kv_head = o.n_head;
  if (o.intermediate == 0) o.intermediate = 4 * o.n_embd;
  if (o.lora_alpha == 0) o.lora_alpha = 2 * o.lora_r;
  if (!o.llama && (o.n_kv_head != o.n_head || o.intermediate != 4 * o.n_embd)) {
    std::cerr << "--n_kv_head and --intermediate need --arch=llama (GPT-2 "
                 "has n_kv_head = n_head and intermediate = 4 * n_embd)\n";
    return 2;
  }
  if (o.lora_r == 0 && (o.bf16_base || !o.lora_targets.empty())) {
    std::cerr << "--base_dtype and --lora_targets need --lora_r\n";
    return 2;
  }
  const int T = o.prompt + o.response;
  if (o.n_positions == 0) o.n_positions = T;
  if (o.n_positions < T) {
    std::cerr << "--n_positions=" << o.n_positions
              << " is below prompt + response = " << T << "\n";
    return 2;
  }
  const std::string load_before = LoadAverage();
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir =
      absl::StrCat(tmp ? tmp : "/tmp", "/prefopt_dpo_bench_", getpid());
  std::filesystem::create_directories(dir);
  // Before any thread starts: the model is written by a forked child.
  if (o.llama) {
    const absl::Status s =
        WriteRandomModelInChild(LlamaSpec(o, o.n_positions), dir + "/model");
    if (!s.ok()) {
      std::cerr << s << "\n";
      std::filesystem::remove_all(dir);
      return 1;
    }
  }
  // sgemm is measured before and after the steps: the machine's speed can
  // drift (other load, clocks), and the ratio uses their mean.
  const double sgemm_before =
      prefopt::kernels::cpu::MeasureSgemmGflops(2048, 2.0);
  // Random token ids: the cost of a step does not depend on their values.
  prefopt::util::Rng rng(1);
  {
    std::ofstream data(dir + "/pairs.jsonl");
    for (int p = 0; p < o.steps + o.warmup; ++p) {
      auto ids = [&](int n) {
        std::string s = "[";
        for (int i = 0; i < n; ++i) {
          absl::StrAppend(&s, i ? "," : "", rng.Below(o.vocab));
        }
        return s + "]";
      };
      data << "{\"prompt_ids\":" << ids(o.prompt)
           << ",\"chosen_ids\":" << ids(o.response)
           << ",\"rejected_ids\":" << ids(o.response) << "}\n";
    }
  }
  std::string model_text =
      o.llama
          ? absl::StrCat("hf_path: '", dir, "/model'")
          : absl::StrCat("architecture: GPT2 vocab_size: ", o.vocab,
                         " n_positions: ", o.n_positions, " n_embd: ", o.n_embd,
                         " n_layer: ", o.n_layer, " n_head: ", o.n_head);
  if (o.live_reference) absl::StrAppend(&model_text, " live_reference: true");
  if (o.lora_r > 0) {
    absl::StrAppend(&model_text, " lora { r: ", o.lora_r,
                    " alpha: ", o.lora_alpha);
    for (const std::string& t : o.lora_targets) {
      absl::StrAppend(&model_text, " target_modules: '", t, "'");
    }
    absl::StrAppend(&model_text, " } base_dtype: ",
                    o.bf16_base ? "WEIGHT_BF16" : "WEIGHT_FP32");
  }
  const std::string config_text =
      absl::StrCat("model { ", model_text, " }\n", "data { train_files: '", dir,
                   "/pairs.jsonl' max_length: ", T, " }\n",
                   "objective { dpo { beta: 0.1 } }\n",
                   "optimizer { lr: 1e-5 max_grad_norm: 1.0 }\n",
                   "batch { micro_batch_size: 1 global_batch_size: 1 }\n",
                   "output_chunk_tokens: ", o.output_chunk, "\n",
                   "max_steps: ", o.steps + o.warmup, "\nrun_dir: '", dir,
                   "/run'\nactivation_checkpointing: ",
                   o.activation_checkpointing ? "true" : "false", "\n");
  std::ofstream(dir + "/bench.textproto") << config_text;
  auto config = prefopt::config::LoadTrainConfig(dir + "/bench.textproto", {});
  if (!config.ok()) {
    std::cerr << config.status() << "\n";
    std::filesystem::remove_all(dir);
    return 1;
  }
  AnonPeakSampler anon_peak;
  std::ostringstream log;
  auto trainer = prefopt::loop::Trainer::Create(*config, log);
  if (!trainer.ok()) {
    std::cerr << trainer.status() << "\n";
    std::filesystem::remove_all(dir);
    return 1;
  }
  // Untimed steps warm caches, page-fault the buffers and let OpenBLAS start
  // its threads.
  for (int s = 0; s < o.warmup; ++s) {
    auto m = (*trainer)->Step();
    if (!m.ok()) {
      std::cerr << m.status() << "\n";
      std::filesystem::remove_all(dir);
      return 1;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < o.steps; ++s) {
    auto m = (*trainer)->Step();
    if (!m.ok()) {
      std::cerr << m.status() << "\n";
      std::filesystem::remove_all(dir);
      return 1;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count() /
      o.steps;
  const double anon_peak_mib = anon_peak.Stop();

  const double C = o.n_embd, L = o.n_layer, V = o.vocab, R = o.response;
  const double hd = o.n_embd / o.n_head, att = o.n_head * hd;
  const double qkv = (o.n_head + 2 * o.n_kv_head) * hd;
  const double ff = o.intermediate;
  const double layer_macs = C * qkv + att * C + (o.llama ? 3 : 2) * C * ff;
  // Forward + backward passes over the weights: 3 (forward, dX, dW), or 2
  // with frozen weights (LoRA); a live reference adds a forward.
  const double weight_passes =
      (o.lora_r > 0 ? 2.0 : 3.0) + (o.live_reference ? 1.0 : 0.0);
  const double attention_passes = 3.0 + (o.live_reference ? 1.0 : 0.0);
  const double per_seq = 2.0 * weight_passes * L * T * layer_macs +
                         2.0 * attention_passes * L * double(T) * T * att +
                         2.0 * weight_passes * R * C * V;
  const double flops = 2 * per_seq;
  const double step_gflops = flops / seconds / 1e9;
  const double sgemm_after =
      prefopt::kernels::cpu::MeasureSgemmGflops(2048, 2.0);
  const double sgemm = 0.5 * (sgemm_before + sgemm_after);
  // The batch: the chosen and the rejected sequence, T tokens each.
  const prefopt::kernels::SeqSpan spans[2] = {{0, T}, {T, T}};
  const bool stored =
      prefopt::kernels::CpuBackend().StoresAttentionProbs(spans, 2, o.n_head);
  const double stored_mib_per_block = 4.0 * o.n_head * 2.0 * T * T / 1048576;
  const std::string lora =
      o.lora_r == 0
          ? std::string("full fine-tune")
          : absl::StrCat("LoRA r=", o.lora_r, " alpha=", o.lora_alpha, " on ",
                         o.lora_targets.empty()
                             ? std::string("PEFT's default modules")
                             : absl::StrJoin(o.lora_targets, ","),
                         ", ", o.bf16_base ? "bf16" : "fp32", " base");
  std::printf(
      "DPO step, %s shape: d=%d layers=%d heads=%d kv_heads=%d ff=%d V=%d "
      "positions=%d, 1 pair, prompt %d + response %d tokens per sequence, "
      "%s, %s reference, activation checkpointing %s, output-layer chunk %d "
      "rows\n",
      o.llama ? "Llama" : "GPT-2", o.n_embd, o.n_layer, o.n_head, o.n_kv_head,
      o.intermediate, o.vocab, o.n_positions, o.prompt, o.response,
      lora.c_str(), o.live_reference ? "live" : "precomputed",
      o.activation_checkpointing ? "on" : "off",
      prefopt::objectives::OutputChunkRows(o.output_chunk, o.vocab, 2 * T));
  std::printf("step time         %.3f s (mean of %d after %d warm-up)\n",
              seconds, o.steps, o.warmup);
  std::printf("tokens/s          %.1f\n", 2.0 * T / seconds);
  std::printf("model GFLOP/step  %.1f\n", flops / 1e9);
  std::printf("achieved GFLOP/s  %.1f\n", step_gflops);
  std::printf(
      "sgemm GFLOP/s     %.1f (OpenBLAS, n=2048, same process; %.1f before, "
      "%.1f after the steps)\n",
      sgemm, sgemm_before, sgemm_after);
  std::printf("ratio             %.1f%% of sgemm\n",
              100.0 * step_gflops / sgemm);
  std::printf("peak RSS          %.0f MiB\n", StatusMib("VmHWM:"));
  if (o.llama) {
    std::printf(
        "peak RssAnon      %.0f MiB (sampled; without the mapped "
        "checkpoint's pages)\n",
        anon_peak_mib);
  }
  std::printf(
      "attention path    %s (stored probabilities would be %.0f MiB per "
      "block, %.0f MiB for %d blocks)\n",
      stored ? "stored" : "tiled", stored_mib_per_block,
      stored_mib_per_block * o.n_layer, o.n_layer);
  std::printf("CPU vector ISA    %s\n", VectorFeatures().c_str());
  std::printf("load average      %s (before), %s (after)\n",
              load_before.c_str(), LoadAverage().c_str());
  std::filesystem::remove_all(dir);
  return 0;
}
