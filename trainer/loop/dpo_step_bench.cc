// Benchmark: tokens/s and achieved GFLOP/s of one DPO training step on the CPU
// (one pair per step: chosen and rejected, prompt + response tokens each),
// beside OpenBLAS sgemm GFLOP/s measured in the same process.
//
//   bazel run -c opt //trainer/loop:dpo_step_bench -- [--n_embd=768]
//     [--n_layer=12] [--n_head=12] [--vocab=50257] [--prompt=256]
//     [--response=256] [--steps=3]
//
// FLOPs counted (model FLOPs, the work a step must do; the output layer's
// recomputation in pass 2 is not counted): per sequence of T tokens with R
// response tokens, 72·L·C²·T for the dense layers (forward + backward),
// 6·L·T²·C for causal attention, and 6·R·C·V for the output layer.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/sgemm_probe.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/trainer.h"
#include "trainer/util/rng.h"

namespace {

struct Options {
  int n_embd = 768, n_layer = 12, n_head = 12, vocab = 50257;
  int prompt = 256, response = 256, steps = 3;
};

bool Parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    const std::string name = a.substr(2, eq - 2);
    int v;
    if (!absl::SimpleAtoi(a.substr(eq + 1), &v) || v <= 0) return false;
    if (name == "n_embd")
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

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!Parse(argc, argv, &o)) {
    std::cerr << "usage: dpo_step_bench [--n_embd=N] [--n_layer=N] "
                 "[--n_head=N] [--vocab=N] [--prompt=N] [--response=N] "
                 "[--steps=N]\n";
    return 2;
  }
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
  const std::string config_text = absl::StrCat(
      "model { architecture: GPT2 vocab_size: ", o.vocab, " n_positions: ", T,
      " n_embd: ", o.n_embd, " n_layer: ", o.n_layer, " n_head: ", o.n_head,
      " }\n", "data { train_files: '", dir, "/pairs.jsonl' max_length: ", T,
      " }\n", "objective { dpo { beta: 0.1 } }\n",
      "optimizer { lr: 1e-5 max_grad_norm: 1.0 }\n",
      "batch { micro_batch_size: 1 global_batch_size: 1 }\n",
      "max_steps: ", o.steps + 1, "\nrun_dir: '", dir, "/run'\n");
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
  const double per_seq =
      72.0 * L * C * C * T + 6.0 * L * double(T) * T * C + 6.0 * R * C * V;
  const double flops = 2 * per_seq;
  const double step_gflops = flops / seconds / 1e9;
  const double sgemm_after =
      prefopt::kernels::cpu::MeasureSgemmGflops(2048, 2.0);
  const double sgemm = 0.5 * (sgemm_before + sgemm_after);
  std::printf(
      "DPO step, GPT-2 shape: d=%d layers=%d heads=%d V=%d, 1 pair, "
      "prompt %d + response %d tokens per sequence\n",
      o.n_embd, o.n_layer, o.n_head, o.vocab, o.prompt, o.response);
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
  std::filesystem::remove_all(dir);
  return 0;
}
