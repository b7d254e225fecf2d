// Prints OpenBLAS sgemm throughput for n = 512, 1024, 2048, then times
// CpuBackend's chunked output layer (OutputForward + OutputBackward) for
// N = 256 rows, C = 768, V = 50257 (GPT-2), chunk = 64.
//
//   bazel run //kernels/cpu:gemm_bench
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
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

void OutputLayer() {
  const int N = 256, C = 768, V = 50257, chunk = 64, reps = 3;
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

}  // namespace

int main(int, char** argv) {
  prefopt::kernels::cpu::ReexecWithPassiveOpenMpWait(argv);
  for (int n : {512, 1024, 2048}) {
    std::printf("sgemm n=%4d: %7.1f GFLOP/s (%d OpenBLAS threads)\n", n,
                prefopt::kernels::cpu::MeasureSgemmGflops(n, 1.0),
                openblas_get_num_threads());
  }
  OutputLayer();
  OutputRowStatistics();
  return 0;
}
