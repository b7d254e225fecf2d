// Benchmark: one DPO training step of a Llama-shaped model on the GPU
// (device: GPU through loop::Trainer, the code `prefopt train` runs), with
// random weights and random token ids (nothing is downloaded). Defaults are
// Llama-3.2-1B's shape (d 2048, 16 layers, 32 heads, 8 KV heads, FF 8192,
// V 128256, tied embeddings) and a global batch of 16 pairs of a 1024-token
// prompt and 1024-token responses, in bf16, as tests/gpu/torch_dpo_step.py
// measures PyTorch; tests/gpu/run_gpu_checks.sh runs both and compares.
//
//   gpu_dpo_step_bench [--n_embd=2048] [--n_layer=16] [--n_head=32]
//     [--n_kv_head=8] [--intermediate=8192] [--vocab=128256] [--prompt=1024]
//     [--response=1024] [--pairs=16] [--micro_pairs=4] [--steps=3]
//     [--warmup=1] [--precision=bf16|fp32] [--activation_checkpointing=0|1]
//     [--peak_tflops=989]
//
// :gpu_dpo_step_bench_sim is the same program on the CUDA CPU simulation
// (kernels/cuda/sim), for tiny shapes on a machine without a GPU: its times
// say nothing about a GPU.
//
// The reference log-probs are precomputed before the timed steps (prefopt's
// default, and the PyTorch script's), so a step is the policy's forward and
// backward over 2 * pairs sequences plus the AdamW update.
//
// Model FLOPs of a step (the work a DPO step needs; torch_dpo_step.py counts
// PyTorch's the same way), summed over its 2 * pairs sequences of
// T = prompt + response tokens with R = response labelled tokens; 2 FLOPs
// per multiply-add, forward + backward = 3 x forward:
//   6 * T * L * P_layer       the projections, P_layer = their weights per
//                             layer: d*(NH + 2*NKV)*hd + NH*hd*d + 3*d*FF
//   + 6 * L * T^2 * NH * hd   causal attention: QK^T and PV over the T^2/2
//                             causal pairs, 2 * 2 * T^2/2 * NH * hd forward
//   + 6 * R * d * V           the output layer, on the labelled tokens only
//                             (prefopt computes no prompt logits)
// (4.61e14 per step at the default shapes.) Not counted: the reference
// pre-pass (before the timed steps), recomputation under
// activation_checkpointing, norms, RoPE, softmax and AdamW.
// MFU = model FLOPs / step time / peak (the H200's 989 TFLOP/s dense bf16).
// Peak device memory is the most this process held through the CUDA backend
// (parameters, gradients, AdamW moments, activations, scratch), without the
// CUDA context and cuBLASLt's fixed 32 MiB workspace.
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
#include "kernels/cuda/cuda_backend.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/trainer.h"
#include "trainer/util/rng.h"

namespace {

struct Options {
  int n_embd = 2048, n_layer = 16, n_head = 32, n_kv_head = 8;
  int intermediate = 8192, vocab = 128256;
  int prompt = 1024, response = 1024;
  int pairs = 16, micro_pairs = 4, steps = 3, warmup = 1;
  int activation_checkpointing = 0;
  bool bf16 = true;
  double peak_tflops = 989.0;
};

bool Parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    const std::string name = a.substr(2, eq - 2);
    const std::string value = a.substr(eq + 1);
    if (name == "precision") {
      if (value != "bf16" && value != "fp32") return false;
      o->bf16 = value == "bf16";
      continue;
    }
    if (name == "peak_tflops") {
      if (!absl::SimpleAtod(value, &o->peak_tflops) || o->peak_tflops <= 0) {
        return false;
      }
      continue;
    }
    int v;
    if (!absl::SimpleAtoi(value, &v) || v < 0) return false;
    int* field = name == "n_embd"         ? &o->n_embd
                 : name == "n_layer"      ? &o->n_layer
                 : name == "n_head"       ? &o->n_head
                 : name == "n_kv_head"    ? &o->n_kv_head
                 : name == "intermediate" ? &o->intermediate
                 : name == "vocab"        ? &o->vocab
                 : name == "prompt"       ? &o->prompt
                 : name == "response"     ? &o->response
                 : name == "pairs"        ? &o->pairs
                 : name == "micro_pairs"  ? &o->micro_pairs
                 : name == "steps"        ? &o->steps
                 : name == "warmup"       ? &o->warmup
                 : name == "activation_checkpointing"
                     ? &o->activation_checkpointing
                     : nullptr;
    if (field == nullptr) return false;
    *field = v;
  }
  return o->n_embd > 0 && o->n_layer > 0 && o->n_head > 0 && o->n_kv_head > 0 &&
         o->intermediate > 0 && o->vocab > 0 && o->prompt > 0 &&
         o->response > 0 && o->pairs > 0 && o->micro_pairs > 0 &&
         o->pairs % o->micro_pairs == 0 && o->steps > 0 &&
         o->activation_checkpointing <= 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!Parse(argc, argv, &o)) {
    std::cerr << "usage: gpu_dpo_step_bench [--n_embd=N] [--n_layer=N] "
                 "[--n_head=N] [--n_kv_head=N] [--intermediate=N] "
                 "[--vocab=N] [--prompt=N] [--response=N] [--pairs=N] "
                 "[--micro_pairs=N dividing pairs] [--steps=N] [--warmup=N] "
                 "[--precision=bf16|fp32] [--activation_checkpointing=0|1] "
                 "[--peak_tflops=X]\n";
    return 2;
  }
  prefopt::kernels::RegisterCudaBackend();
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir =
      absl::StrCat(tmp ? tmp : "/tmp", "/prefopt_gpu_dpo_bench_", getpid());
  std::filesystem::create_directories(dir);
  // Random token ids: a step's cost does not depend on their values.
  prefopt::util::Rng rng(1);
  {
    std::ofstream data(dir + "/pairs.jsonl");
    for (int p = 0; p < (o.warmup + o.steps) * o.pairs; ++p) {
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
      "model { architecture: LLAMA vocab_size: ", o.vocab, " n_positions: ", T,
      " n_embd: ", o.n_embd, " n_layer: ", o.n_layer, " n_head: ", o.n_head,
      " n_kv_head: ", o.n_kv_head, " intermediate_size: ", o.intermediate,
      " rope_theta: 500000 tie_word_embeddings: true }\n",
      "data { train_files: '", dir, "/pairs.jsonl' max_length: ", T,
      " shuffle: false }\n", "objective { dpo { beta: 0.1 } }\n",
      "optimizer { lr: 5e-7 max_grad_norm: 1.0 }\n",
      "batch { micro_batch_size: ", o.micro_pairs,
      " global_batch_size: ", o.pairs, " }\n",
      "max_steps: ", o.warmup + o.steps, "\nrun_dir: '", dir, "/run'\n",
      "device: GPU\nprecision: ", o.bf16 ? "BF16" : "FP32",
      "\nactivation_checkpointing: ",
      o.activation_checkpointing ? "true" : "false", "\n");
  std::ofstream(dir + "/bench.textproto") << config_text;
  auto fail = [&](const auto& what) {
    std::cerr << "gpu_dpo_step_bench: " << what << "\n";
    std::filesystem::remove_all(dir);
    return 1;
  };
  auto config = prefopt::config::LoadTrainConfig(dir + "/bench.textproto", {});
  if (!config.ok()) return fail(config.status());
  std::ostringstream log;
  const auto create_start = std::chrono::steady_clock::now();
  auto trainer = prefopt::loop::Trainer::Create(*config, log);
  if (!trainer.ok())
    return fail(absl::StrCat(trainer.status().ToString(), "\n", log.str()));
  const double create_s = std::chrono::duration<double>(
                              std::chrono::steady_clock::now() - create_start)
                              .count();
  // Warm-up steps choose the GEMM algorithms and grow the backend's scratch.
  double loss = 0;
  for (int s = 0; s < o.warmup; ++s) {
    auto m = (*trainer)->Step();
    if (!m.ok()) return fail(m.status());
  }
  // Step returns its metrics, which come from the device, so each timed
  // step has finished when it returns.
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < o.steps; ++s) {
    auto m = (*trainer)->Step();
    if (!m.ok()) return fail(m.status());
    loss = m->count("loss") ? m->at("loss") : 0.0;
  }
  const double step_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count() /
      o.steps;

  const double C = o.n_embd, L = o.n_layer, V = o.vocab, R = o.response;
  const double hd = C / o.n_head, att = o.n_head * hd;
  const double layer_params = C * (o.n_head + 2 * o.n_kv_head) * hd + att * C +
                              3.0 * C * o.intermediate;
  const double per_seq = 6.0 * T * L * layer_params +
                         6.0 * L * double(T) * T * att + 6.0 * R * C * V;
  const double flops = 2.0 * o.pairs * per_seq;
  const double tokens = 2.0 * o.pairs * T;
  const prefopt::kernels::CudaBackend::MemoryStats memory =
      prefopt::kernels::CudaBackend::ProcessMemoryStats();
  const std::string device = log.str().substr(0, log.str().find('\n'));
  std::printf(
      "gpu_dpo_step: {\"device\": \"%s\", \"precision\": \"%s\", "
      "\"shape\": \"d=%d layers=%d heads=%d kv_heads=%d ff=%d V=%d\", "
      "\"pairs\": %d, \"micro_pairs\": %d, \"prompt\": %d, \"response\": %d, "
      "\"activation_checkpointing\": %d, \"tokens_per_step\": %.0f, "
      "\"setup_s\": %.2f, \"step_s\": %.4f, \"tokens_per_s\": %.1f, "
      "\"model_flops_per_step\": %.4e, \"tflops_per_s\": %.1f, "
      "\"mfu\": %.4f, \"peak_tflops\": %.1f, \"peak_mem_gib\": %.3f, "
      "\"loss\": %.5f}\n",
      device.c_str(), o.bf16 ? "bf16" : "fp32", o.n_embd, o.n_layer, o.n_head,
      o.n_kv_head, o.intermediate, o.vocab, o.pairs, o.micro_pairs, o.prompt,
      o.response, o.activation_checkpointing, tokens, create_s, step_s,
      tokens / step_s, flops, flops / step_s / 1e12,
      flops / step_s / (o.peak_tflops * 1e12), o.peak_tflops,
      memory.peak_allocated_bytes / double(1 << 30), loss);
  std::filesystem::remove_all(dir);
  return 0;
}
