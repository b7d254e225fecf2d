// Benchmark: tokens/s and achieved GFLOP/s of one DPO training step on the CPU
// (one pair per step: chosen and rejected, prompt + response tokens each),
// beside OpenBLAS sgemm GFLOP/s measured in the same process.
//
//   bazel run -c opt //trainer/loop:dpo_step_bench -- [--arch=gpt2|llama]
//     [--n_embd=768] [--n_layer=12] [--n_head=12] [--n_kv_head=n_head]
//     [--intermediate=4*n_embd] [--vocab=50257] [--prompt=256]
//     [--response=256] [--steps=3] [--activation_checkpointing=0|1|both]
//
// --activation_checkpointing=1 trains with activation recomputation
// (TrainConfig.activation_checkpointing); =both runs this benchmark twice,
// as separate processes (peak RSS is per process), without and with it, and
// prints the step-time overhead and the peak-RSS ratio. Every run prints its
// peak resident memory (VmHWM).
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
// causal attention, and 6·R·C·V for the output layer. The load average of the
// machine is printed before and after, as other work on it slows the step.
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/omp_wait_policy.h"
#include "kernels/cpu/sgemm_probe.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/decoder.h"
#include "trainer/util/rng.h"

namespace {

using prefopt::io::ModelSpec;

struct Options {
  bool llama = false;
  int n_embd = 768, n_layer = 12, n_head = 12, vocab = 50257;
  int n_kv_head = 0, intermediate = 0;  // 0: n_head, 4 * n_embd
  int prompt = 256, response = 256, steps = 3;
  // 0 or 1: TrainConfig.activation_checkpointing; -1: both, one process each.
  int activation_checkpointing = 0;
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

// The process's peak resident memory in MiB (VmHWM), or -1.
double PeakRssMib() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmHWM:") {
      double kib;
      status >> kib;
      return kib / 1024.0;
    }
    status.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return -1;
}

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

// --activation_checkpointing=both: reruns this binary without and with
// recomputation, echoes both reports and compares them.
int CompareCheckpointing(int argc, char** argv) {
  std::string args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--activation_checkpointing=", 0) != 0) args += " " + a;
  }
  // popen runs a shell, whose /proc/self/exe is the shell's.
  const std::string self = std::filesystem::read_symlink("/proc/self/exe");
  std::array<std::string, 2> reports;
  for (int on = 0; on < 2; ++on) {
    const std::string command =
        absl::StrCat("'", self, "'", args, " --activation_checkpointing=", on);
    FILE* pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) return 1;
    std::array<char, 4096> buffer;
    size_t n;
    while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
      reports[on].append(buffer.data(), n);
    }
    std::fputs(reports[on].c_str(), stdout);
    std::fflush(stdout);
    if (pclose(pipe) != 0) return 1;
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

}  // namespace

int main(int argc, char** argv) {
  prefopt::kernels::cpu::ReexecWithPassiveOpenMpWait(argv);
  Options o;
  if (!Parse(argc, argv, &o)) {
    std::cerr << "usage: dpo_step_bench [--arch=gpt2|llama] [--n_embd=N] "
                 "[--n_layer=N] [--n_head=N] [--n_kv_head=N] "
                 "[--intermediate=N] [--vocab=N] [--prompt=N] [--response=N] "
                 "[--steps=N] [--activation_checkpointing=0|1|both]\n";
    return 2;
  }
  if (o.activation_checkpointing < 0) return CompareCheckpointing(argc, argv);
  if (o.n_kv_head == 0) o.n_kv_head = o.n_head;
  if (o.intermediate == 0) o.intermediate = 4 * o.n_embd;
  if (!o.llama && (o.n_kv_head != o.n_head || o.intermediate != 4 * o.n_embd)) {
    std::cerr << "--n_kv_head and --intermediate need --arch=llama (GPT-2 "
                 "has n_kv_head = n_head and intermediate = 4 * n_embd)\n";
    return 2;
  }
  const std::string load_before = LoadAverage();
  // sgemm is measured before and after the steps: the machine's speed can
  // drift (other load, clocks), and the ratio uses their mean.
  const double sgemm_before =
      prefopt::kernels::cpu::MeasureSgemmGflops(2048, 2.0);
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir =
      absl::StrCat(tmp ? tmp : "/tmp", "/prefopt_dpo_bench_", getpid());
  std::filesystem::create_directories(dir);
  // Random token ids: the cost of a step does not depend on their values.
  prefopt::util::Rng rng(1);
  {
    std::ofstream data(dir + "/pairs.jsonl");
    for (int p = 0; p < o.steps + 1; ++p) {
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
  const int T = o.prompt + o.response;
  std::string model_text;
  if (o.llama) {
    const absl::Status s = WriteRandomModel(LlamaSpec(o, T), dir + "/model");
    if (!s.ok()) {
      std::cerr << s << "\n";
      std::filesystem::remove_all(dir);
      return 1;
    }
    model_text = absl::StrCat("model { hf_path: '", dir, "/model' }\n");
  } else {
    model_text =
        absl::StrCat("model { architecture: GPT2 vocab_size: ", o.vocab,
                     " n_positions: ", T, " n_embd: ", o.n_embd,
                     " n_layer: ", o.n_layer, " n_head: ", o.n_head, " }\n");
  }
  const std::string config_text = absl::StrCat(
      model_text, "data { train_files: '", dir, "/pairs.jsonl' max_length: ", T,
      " }\n", "objective { dpo { beta: 0.1 } }\n",
      "optimizer { lr: 1e-5 max_grad_norm: 1.0 }\n",
      "batch { micro_batch_size: 1 global_batch_size: 1 }\n",
      "max_steps: ", o.steps + 1, "\nrun_dir: '", dir,
      "/run'\nactivation_checkpointing: ",
      o.activation_checkpointing ? "true" : "false", "\n");
  std::ofstream(dir + "/bench.textproto") << config_text;
  auto config = prefopt::config::LoadTrainConfig(dir + "/bench.textproto", {});
  if (!config.ok()) {
    std::cerr << config.status() << "\n";
    return 1;
  }
  std::ostringstream log;
  auto trainer = prefopt::loop::Trainer::Create(*config, log);
  if (!trainer.ok()) {
    std::cerr << trainer.status() << "\n";
    return 1;
  }
  // One untimed step warms caches, page-faults the buffers and lets OpenBLAS
  // start its threads.
  if (!(*trainer)->Step().ok()) return 1;
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < o.steps; ++s) {
    auto m = (*trainer)->Step();
    if (!m.ok()) {
      std::cerr << m.status() << "\n";
      return 1;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count() /
      o.steps;

  const double C = o.n_embd, L = o.n_layer, V = o.vocab, R = o.response;
  const double hd = o.n_embd / o.n_head, att = o.n_head * hd;
  const double qkv = (o.n_head + 2 * o.n_kv_head) * hd;
  const double ff = o.intermediate;
  const double layer_macs = C * qkv + att * C + (o.llama ? 3 : 2) * C * ff;
  const double per_seq = 6.0 * L * T * layer_macs +
                         6.0 * L * double(T) * T * att + 6.0 * R * C * V;
  const double flops = 2 * per_seq;
  const double step_gflops = flops / seconds / 1e9;
  const double sgemm_after =
      prefopt::kernels::cpu::MeasureSgemmGflops(2048, 2.0);
  const double sgemm = 0.5 * (sgemm_before + sgemm_after);
  std::printf(
      "DPO step, %s shape: d=%d layers=%d heads=%d kv_heads=%d ff=%d V=%d, "
      "1 pair, prompt %d + response %d tokens per sequence, activation "
      "checkpointing %s\n",
      o.llama ? "Llama" : "GPT-2", o.n_embd, o.n_layer, o.n_head, o.n_kv_head,
      o.intermediate, o.vocab, o.prompt, o.response,
      o.activation_checkpointing ? "on" : "off");
  std::printf("step time         %.3f s\n", seconds);
  std::printf("tokens/s          %.1f\n", 2.0 * T / seconds);
  std::printf("model GFLOP/step  %.1f\n", flops / 1e9);
  std::printf("achieved GFLOP/s  %.1f\n", step_gflops);
  std::printf(
      "sgemm GFLOP/s     %.1f (OpenBLAS, n=2048, same process; %.1f before, "
      "%.1f after the steps)\n",
      sgemm, sgemm_before, sgemm_after);
  std::printf("ratio             %.1f%% of sgemm\n",
              100.0 * step_gflops / sgemm);
  std::printf("peak RSS          %.0f MiB\n", PeakRssMib());
  std::printf("CPU vector ISA    %s\n", VectorFeatures().c_str());
  std::printf("load average      %s (before), %s (after)\n",
              load_before.c_str(), LoadAverage().c_str());
  std::filesystem::remove_all(dir);
  return 0;
}
