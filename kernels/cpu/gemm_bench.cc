// Prints the CPU's vector features and OpenBLAS sgemm throughput for
// n = 512, 1024, 2048, then times CpuBackend's chunked output layer
// (OutputForward + OutputBackward) for N = 256 rows, C = 768, V = 50257
// (GPT-2), chunk = 64, and its attention (AttentionForward +
// AttentionBackward) on one sequence of T = 512 .. 8192 rows in GPT-2 small's
// shape (12 heads of 64), the stored and the tiled path each, with the bytes
// the forward saves for the backward (stored at T = 8192: 3.2 GB).
//
//   bazel run //kernels/cpu:gemm_bench
//   bazel run //kernels/cpu:gemm_bench -- attention [T ...]   (the attention
//   part only, at the lengths T given or all of them)
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/omp_wait_policy.h"
#include "kernels/cpu/sgemm_probe.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::vector<float> Random(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void OutputLayer(int N, int chunk) {
  const int C = 768, V = 50257, reps = 3;
  prefopt::kernels::CpuBackend cpu;
  const std::vector<float> h = Random(static_cast<size_t>(N) * C, 1.0f, 1);
  const std::vector<float> wout = Random(static_cast<size_t>(V) * C, 0.02f, 2);
  std::vector<int32_t> labels(N);
  std::mt19937 rng(3);
  for (int32_t& l : labels) l = static_cast<int32_t>(rng() % V);
  const std::vector<float> coef(N, 1.0f / N);
  std::vector<float> lse(N), logp(N), logit_sum(N), entropy(N),
      log_sum_sq_probs(N), dh(N * C, 0.0f);
  std::vector<float> dwout(static_cast<size_t>(V) * C, 0.0f);
  std::vector<float> chunk_buf(static_cast<size_t>(chunk) * V);
  std::vector<int32_t> correct(N);

  // Every training step computes the entropy; WPO also asks for log sum p^2.
  auto forward = [&] {
    cpu.OutputForward(lse.data(), logp.data(), logit_sum.data(), correct.data(),
                      entropy.data(), nullptr, h.data(), wout.data(),
                      labels.data(), N, C, V, chunk_buf.data(), chunk);
  };
  auto forward_sq = [&] {
    cpu.OutputForward(lse.data(), logp.data(), logit_sum.data(), correct.data(),
                      entropy.data(), log_sum_sq_probs.data(), h.data(),
                      wout.data(), labels.data(), N, C, V, chunk_buf.data(),
                      chunk);
  };
  auto backward = [&] {
    cpu.OutputBackward(dh.data(), dwout.data(), h.data(), wout.data(),
                       labels.data(), lse.data(), coef.data(), N, C, V,
                       chunk_buf.data(), chunk);
  };
  forward();  // warm-up: page faults of every buffer
  backward();

  double t_forward = 1e30, t_forward_sq = 1e30, t_backward = 1e30;
  for (int r = 0; r < reps; ++r) {
    Clock::time_point start = Clock::now();
    forward();
    t_forward = std::min(t_forward, Seconds(start));
    start = Clock::now();
    forward_sq();
    t_forward_sq = std::min(t_forward_sq, Seconds(start));
    start = Clock::now();
    backward();
    t_backward = std::min(t_backward, Seconds(start));
  }
  const double gemm_flops = 2.0 * N * C * static_cast<double>(V);
  const double total = t_forward + t_backward;
  std::printf(
      "output layer N=%d C=%d V=%d chunk=%d, %d threads (best of %d):\n", N, C,
      V, chunk, omp_get_max_threads(), reps);
  std::printf("  OutputForward  %8.1f ms\n", t_forward * 1e3);
  std::printf("    + log sum p^2 %7.1f ms\n", t_forward_sq * 1e3);
  std::printf("  OutputBackward %8.1f ms\n", t_backward * 1e3);
  std::printf(
      "  total          %8.1f ms  = %.1f GFLOP/s counting 3 GEMMs of "
      "2NCV (%.1f GFLOP/s counting the 4 it runs)\n",
      total * 1e3, 3.0 * gemm_flops / total * 1e-9,
      4.0 * gemm_flops / total * 1e-9);
}

// The forward's per-row statistics alone: with C = 8 the GEMM is cheap and the
// passes over the [chunk, V] logits (max, exp moments, sum, argmax) dominate,
// so the cost of the entropy and of log sum p^2 shows.
void OutputRowStatistics() {
  const int N = 256, C = 8, V = 50257, chunk = 64, reps = 10;
  prefopt::kernels::CpuBackend cpu;
  const std::vector<float> h = Random(static_cast<size_t>(N) * C, 1.0f, 1);
  const std::vector<float> wout = Random(static_cast<size_t>(V) * C, 1.0f, 2);
  std::vector<int32_t> labels(N);
  std::mt19937 rng(3);
  for (int32_t& l : labels) l = static_cast<int32_t>(rng() % V);
  std::vector<float> lse(N), logp(N), logit_sum(N), entropy(N), sq(N);
  std::vector<float> chunk_buf(static_cast<size_t>(chunk) * V);
  std::vector<int32_t> correct(N);
  auto run = [&](float* log_sum_sq_probs) {
    cpu.OutputForward(lse.data(), logp.data(), logit_sum.data(), correct.data(),
                      entropy.data(), log_sum_sq_probs, h.data(), wout.data(),
                      labels.data(), N, C, V, chunk_buf.data(), chunk);
  };
  run(sq.data());
  double t = 1e30, t_sq = 1e30;
  for (int r = 0; r < reps; ++r) {
    Clock::time_point start = Clock::now();
    run(nullptr);
    t = std::min(t, Seconds(start));
    start = Clock::now();
    run(sq.data());
    t_sq = std::min(t_sq, Seconds(start));
  }
  const double logits = static_cast<double>(N) * V;
  std::printf(
      "output row statistics N=%d C=%d V=%d chunk=%d, %d threads (best of "
      "%d):\n",
      N, C, V, chunk, omp_get_max_threads(), reps);
  std::printf("  OutputForward  %8.2f ms = %.2f ns/logit\n", t * 1e3,
              t / logits * 1e9);
  std::printf("    + log sum p^2 %7.2f ms = %.2f ns/logit\n", t_sq * 1e3,
              t_sq / logits * 1e9);
}

// CPU time of every thread of the process: on a shared machine it counts only
// the time this process ran, not the time others held the cores.
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 == 1 ? v[v.size() / 2]
                           : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Forward + backward of both attention paths, alternating repetition by
// repetition so that the shared machine's noise falls on both alike.
void Attention(const std::vector<int>& lengths) {
  const int NH = 12, NKV = 12, hs = 64;
  const int row = (NH + 2 * NKV) * hs, out_row = NH * hs;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::printf(
      "attention NH=%d hs=%d, one sequence, %d threads; stored and tiled "
      "paths alternate, min / median of the repetitions (ms; cpu: CPU time of "
      "all "
      "threads):\n",
      NH, hs, omp_get_max_threads());
  for (int T : lengths) {
    const int reps = T <= 1024 ? 9 : T <= 2048 ? 5 : T <= 4096 ? 3 : 1;
    const prefopt::kernels::SeqSpan span{0, T};
    const std::vector<float> qkv =
        Random(static_cast<size_t>(T) * row, 1.0f, 1);
    const std::vector<float> dout =
        Random(static_cast<size_t>(T) * out_row, 1.0f, 2);
    std::vector<float> out(static_cast<size_t>(T) * out_row);
    std::vector<float> dqkv(static_cast<size_t>(T) * row, 0.0f);
    struct Path {
      const char* name;
      size_t limit;
      prefopt::kernels::CpuBackend cpu;
      std::vector<float> saved;
      std::vector<double> forward, backward, total, cpu_forward, cpu_backward;
    };
    Path paths[2] = {{"stored", SIZE_MAX, {}, {}, {}, {}, {}, {}, {}},
                     {"tiled", 0, {}, {}, {}, {}, {}, {}, {}}};
    for (Path& p : paths) {
      p.cpu.set_stored_attention_limit(p.limit);
      p.saved.resize(p.cpu.AttentionProbsSize(&span, 1, NH));
    }
    auto run = [&](Path& p, bool timed) {
      const double cpu_start = ProcessCpuSeconds();
      Clock::time_point start = Clock::now();
      p.cpu.AttentionForward(out.data(), p.saved.data(), qkv.data(), &span, 1,
                             NH, NKV, hs);
      const double forward = Seconds(start);
      const double cpu_middle = ProcessCpuSeconds();
      start = Clock::now();
      p.cpu.AttentionBackward(dqkv.data(), dout.data(), qkv.data(), out.data(),
                              p.saved.data(), &span, 1, NH, NKV, hs);
      const double backward = Seconds(start);
      const double cpu_end = ProcessCpuSeconds();
      if (!timed) return;
      p.cpu_forward.push_back((cpu_middle - cpu_start) * 1e3);
      p.cpu_backward.push_back((cpu_end - cpu_middle) * 1e3);
      p.forward.push_back(forward * 1e3);
      p.backward.push_back(backward * 1e3);
      p.total.push_back((forward + backward) * 1e3);
    };
    // Warm-up: page faults of every buffer and of the scratch.
    for (Path& p : paths) run(p, false);
    for (int r = 0; r < reps; ++r) {
      for (Path& p : paths) run(p, true);
    }
    for (Path& p : paths) {
      std::printf(
          "  T=%4d %-6s forward %8.1f / %8.1f  backward %8.1f / %8.1f  "
          "total %8.1f / %8.1f  cpu forward %8.1f / %8.1f  backward %8.1f / "
          "%8.1f  saved %11zu bytes  (%d reps)\n",
          T, p.name, *std::min_element(p.forward.begin(), p.forward.end()),
          Median(p.forward),
          *std::min_element(p.backward.begin(), p.backward.end()),
          Median(p.backward), *std::min_element(p.total.begin(), p.total.end()),
          Median(p.total),
          *std::min_element(p.cpu_forward.begin(), p.cpu_forward.end()),
          Median(p.cpu_forward),
          *std::min_element(p.cpu_backward.begin(), p.cpu_backward.end()),
          Median(p.cpu_backward), p.saved.size() * sizeof(float), reps);
    }
  }
}

void PrintVectorFeatures() {
  std::printf("CPU vector features:");
  if (__builtin_cpu_supports("sse4.2")) std::printf(" sse4.2");
  if (__builtin_cpu_supports("avx")) std::printf(" avx");
  if (__builtin_cpu_supports("avx2")) std::printf(" avx2");
  if (__builtin_cpu_supports("fma")) std::printf(" fma");
  if (__builtin_cpu_supports("avx512f")) std::printf(" avx512f");
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  prefopt::kernels::cpu::ReexecWithCpuRuntimeSettings(argv);
  PrintVectorFeatures();
  const std::vector<int> lengths = {512, 1024, 2048, 4096, 8192};
  if (argc > 1 && std::string(argv[1]) == "attention") {
    std::vector<int> chosen;
    for (int a = 2; a < argc; ++a) chosen.push_back(std::atoi(argv[a]));
    Attention(chosen.empty() ? lengths : chosen);
    return 0;
  }
  if (argc > 1 && std::string(argv[1]) == "output") {
    for (int a = 2; a < argc; ++a) OutputLayer(512, std::atoi(argv[a]));
    return 0;
  }
  for (int n : {512, 1024, 2048}) {
    std::printf("sgemm n=%4d: %7.1f GFLOP/s (%d OpenBLAS threads)\n", n,
                prefopt::kernels::cpu::MeasureSgemmGflops(n, 1.0),
                openblas_get_num_threads());
  }
  OutputLayer(256, 64);
  OutputRowStatistics();
  Attention(lengths);
  return 0;
}
