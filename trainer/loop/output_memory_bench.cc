// Benchmark: peak resident memory of a training step as the vocabulary grows
// (docs/objectives.md §7). With the chunked output layer, the memory beyond the
// trained state (weights, gradients, AdamW moments) must not grow with the
// vocabulary except for the [chunk, V] logits buffer; a naive output layer
// that materializes the logits of every response token and their gradient
// grows by 2 · tokens · V floats.
//
//   bazel run -c opt //trainer/loop:output_memory_bench --
//     [--vocabs=32000,65536,131072,262144] [--n_embd=256] [--n_layer=2]
//     [--n_head=4] [--prompt=128] [--response=128] [--chunk=64]
//
// Every (vocabulary, variant) is measured in a fresh child process (this
// binary re-executed with --child=...), which builds a from-scratch GPT-2
// through loop::Trainer, trains two steps on one pair (chosen and rejected:
// 2 × response response tokens), and reports its peak resident set (VmHWM in
// /proc/self/status). The variants:
//   dpo       DPO with the chunked output layer (precomputed reference).
//   sparsepo  SparsePO with the fused two-model chunked output layer and a
//             learned mask; the live reference's weights are counted as
//             trained state too (they are weights, not step memory).
//   naive     the same DPO trainer after its steps, then the backend's
//             output layer run once over all response rows unchunked
//             (chunk = rows), with the logits and their gradient in two
//             separate [rows, V] buffers, as an unfused implementation holds
//             them.
// The table prints peak RSS minus the trained state's bytes, beside the sizes
// of one [chunk, V] buffer and of two [response tokens, V] buffers.
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/backend.h"
#include "trainer/config/config_loader.h"
#include "trainer/data/batch.h"
#include "trainer/loop/trainer.h"
#include "trainer/util/rng.h"

namespace {

struct Options {
  std::vector<int> vocabs = {32000, 65536, 131072, 262144};
  int n_embd = 256, n_layer = 2, n_head = 4;
  int prompt = 128, response = 128, chunk = 64;
  std::string child;  // empty in the parent
  int vocab = 0;      // the child's
};

bool Parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    const std::string name = a.substr(2, eq - 2), value = a.substr(eq + 1);
    if (name == "child") {
      if (value != "dpo" && value != "sparsepo" && value != "naive") {
        return false;
      }
      o->child = value;
      continue;
    }
    if (name == "vocabs") {
      o->vocabs.clear();
      for (absl::string_view v : absl::StrSplit(value, ',')) {
        int x;
        if (!absl::SimpleAtoi(v, &x) || x <= 0) return false;
        o->vocabs.push_back(x);
      }
      continue;
    }
    int v;
    if (!absl::SimpleAtoi(value, &v) || v <= 0) return false;
    if (name == "vocab") {
      o->vocab = v;
    } else if (name == "n_embd") {
      o->n_embd = v;
    } else if (name == "n_layer") {
      o->n_layer = v;
    } else if (name == "n_head") {
      o->n_head = v;
    } else if (name == "prompt") {
      o->prompt = v;
    } else if (name == "response") {
      o->response = v;
    } else if (name == "chunk") {
      o->chunk = v;
    } else {
      return false;
    }
  }
  return o->n_embd % o->n_head == 0;
}

// VmHWM of this process in bytes, or -1.
long long PeakRssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::atoll(line.c_str() + 6) * 1024;
    }
  }
  return -1;
}

// The child: one variant at one vocabulary size. Prints
// "peak_rss_bytes <n> state_bytes <n>" on success.
int Child(const Options& o) {
  const std::string dir =
      absl::StrCat(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp",
                   "/prefopt_memory_bench_", getpid());
  std::filesystem::create_directories(dir);
  {
    // Random token ids; two pairs, so that a second step sees a fresh batch.
    prefopt::util::Rng rng(1);
    std::ofstream data(dir + "/pairs.jsonl");
    auto ids = [&](int n) {
      std::string s = "[";
      for (int i = 0; i < n; ++i) {
        absl::StrAppend(&s, i ? "," : "", rng.Below(o.vocab));
      }
      return s + "]";
    };
    for (int p = 0; p < 2; ++p) {
      data << "{\"prompt_ids\":" << ids(o.prompt)
           << ",\"chosen_ids\":" << ids(o.response)
           << ",\"rejected_ids\":" << ids(o.response) << "}\n";
    }
  }
  const int T = o.prompt + o.response;
  const bool sparsepo = o.child == "sparsepo";
  std::ofstream(dir + "/bench.textproto") << absl::StrCat(
      "model { architecture: GPT2 vocab_size: ", o.vocab, " n_positions: ", T,
      " n_embd: ", o.n_embd, " n_layer: ", o.n_layer, " n_head: ", o.n_head,
      " }\n", "data { train_files: '", dir, "/pairs.jsonl' max_length: ", T,
      " }\n",
      sparsepo ? "objective { sparsepo {} }\n"
               : "objective { dpo { beta: 0.1 } }\n",
      "optimizer { lr: 1e-5 max_grad_norm: 1.0 }\n",
      "batch { micro_batch_size: 1 global_batch_size: 1 }\n",
      "max_steps: 2\noutput_chunk_tokens: ", o.chunk, "\nrun_dir: '", dir,
      "/run'\n");
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
  for (int s = 0; s < 2; ++s) {
    auto m = (*trainer)->Step();
    if (!m.ok()) {
      std::cerr << m.status() << "\n";
      return 1;
    }
  }
  prefopt::model::Decoder& policy = (*trainer)->mutable_policy();
  const long long P = static_cast<long long>(policy.layout().total());
  // Weights, gradients and AdamW's two moments.
  long long state = 4 * P * 4;
  if (sparsepo) {
    prefopt::loop::SparsePoStep& step = *(*trainer)->sparsepo();
    state += static_cast<long long>(step.reference().layout().total()) * 4;
    for (const auto& net : step.mask_nets()) {
      state += 4 * static_cast<long long>(net->layout().total()) * 4;
    }
  }
  if (o.child == "naive") {
    // The response rows of one pair through the backend's output layer in
    // one piece: [rows, V] logits from pass 1, and pass 2 writing the
    // gradient into a second [rows, V] buffer.
    prefopt::data::Batch batch;
    const int example = 0;
    prefopt::data::BuildBatch((*trainer)->dataset().examples, &example, 1, true,
                              &batch);
    prefopt::kernels::Backend& b = *policy.backend();
    const float* hidden = policy.Forward(batch.packed);
    const int C = o.n_embd, V = o.vocab;
    int rows = 0;
    for (const auto& s : batch.segments) rows += s.count;
    float* h = b.Alloc(static_cast<size_t>(rows) * C);
    float* dh = b.Alloc(static_cast<size_t>(rows) * C);
    float* logits = b.Alloc(static_cast<size_t>(rows) * V);
    float* dlogits = b.Alloc(static_cast<size_t>(rows) * V);
    std::vector<int32_t> labels;
    std::vector<float> lse(rows), logp(rows), logit_sum(rows), entropy(rows),
        coef(rows, 1.0f / rows);
    std::vector<int32_t> correct(rows);
    int r = 0;
    for (const auto& s : batch.segments) {
      b.CopyToDevice(h + static_cast<size_t>(r) * C,
                     hidden + static_cast<size_t>(s.row) * C,
                     static_cast<size_t>(s.count) * C);
      labels.insert(labels.end(), batch.packed.tokens.begin() + s.row + 1,
                    batch.packed.tokens.begin() + s.row + 1 + s.count);
      r += s.count;
    }
    b.OutputForward(lse.data(), logp.data(), logit_sum.data(), correct.data(),
                    entropy.data(), nullptr, h, policy.output_embedding(),
                    labels.data(), rows, C, V, logits, rows);
    b.Zero(dh, static_cast<size_t>(rows) * C);
    b.OutputBackward(dh, policy.output_embedding_grad(), h,
                     policy.output_embedding(), labels.data(), lse.data(),
                     coef.data(), rows, C, V, dlogits, rows);
    for (float* p : {h, dh, logits, dlogits}) b.Free(p);
  }
  const long long peak = PeakRssBytes();
  std::filesystem::remove_all(dir);
  std::printf("peak_rss_bytes %lld state_bytes %lld\n", peak, state);
  return peak < 0 ? 1 : 0;
}

struct Measurement {
  long long peak = -1;
  long long state = -1;
};

// Runs this binary as a child for one (variant, vocabulary) and parses its
// line.
Measurement Measure(const Options& o, const std::string& variant, int vocab) {
  std::vector<std::string> args = {"/proc/self/exe",
                                   "--child=" + variant,
                                   absl::StrCat("--vocab=", vocab),
                                   absl::StrCat("--n_embd=", o.n_embd),
                                   absl::StrCat("--n_layer=", o.n_layer),
                                   absl::StrCat("--n_head=", o.n_head),
                                   absl::StrCat("--prompt=", o.prompt),
                                   absl::StrCat("--response=", o.response),
                                   absl::StrCat("--chunk=", o.chunk)};
  int fds[2];
  Measurement m;
  if (pipe(fds) != 0) return m;
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return m;
  }
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return m;
  std::sscanf(out.c_str(), "peak_rss_bytes %lld state_bytes %lld", &m.peak,
              &m.state);
  return m;
}

double MiB(long long bytes) { return bytes / (1024.0 * 1024.0); }

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!Parse(argc, argv, &o) || (!o.child.empty() && o.vocab == 0)) {
    std::cerr << "usage: output_memory_bench [--vocabs=V1,V2,...] "
                 "[--n_embd=N] [--n_layer=N] [--n_head=N] [--prompt=N] "
                 "[--response=N] [--chunk=N]\n";
    return 2;
  }
  if (!o.child.empty()) {
    // Buffers of 1 MiB and more are mapped and unmapped directly: glibc's
    // default threshold adapts to earlier frees (up to 32 MiB), after which
    // freed buffers stay in its heap and the peak depends on the order of
    // past allocations rather than on what the step holds.
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    return Child(o);
  }

  const int tokens = 2 * o.response;
  std::printf(
      "Peak RSS of a training step minus the trained state (weights + "
      "gradients + AdamW moments; SparsePO: + the live reference's "
      "weights)\nGPT-2 n_embd=%d n_layer=%d n_head=%d, 1 pair per step, "
      "prompt %d + response %d tokens per sequence (%d response tokens), "
      "output chunk %d; each cell a fresh process\n\n",
      o.n_embd, o.n_layer, o.n_head, o.prompt, o.response, tokens, o.chunk);
  std::printf("%8s %12s | %14s %14s %14s | %14s %14s\n", "vocab", "state MiB",
              "DPO chunked", "SparsePO fused", "naive", "[chunk,V] MiB",
              "2x[tok,V] MiB");
  const char* variants[] = {"dpo", "sparsepo", "naive"};
  bool ok = true;
  for (int vocab : o.vocabs) {
    Measurement m[3];
    for (int i = 0; i < 3; ++i) {
      m[i] = Measure(o, variants[i], vocab);
      ok &= m[i].peak >= 0;
    }
    std::printf("%8d %12.1f | %14.1f %14.1f %14.1f | %14.1f %14.1f\n", vocab,
                MiB(m[0].state), MiB(m[0].peak - m[0].state),
                MiB(m[1].peak - m[1].state), MiB(m[2].peak - m[2].state),
                MiB(4LL * o.chunk * vocab), MiB(2LL * 4 * tokens * vocab));
    std::fflush(stdout);
  }
  if (!ok) {
    std::fprintf(stderr, "a child process failed (see its messages above)\n");
    return 1;
  }
  return 0;
}
