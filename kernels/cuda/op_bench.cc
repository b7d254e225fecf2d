// Per-op throughput of CudaBackend on GPU 0, at the shapes of a 1B
// Llama-style model (d = 2048, 32 heads, 8 KV heads, FF = 8192,
// V = 128256) and a micro-batch of 8 sequences of 1024 tokens:
// - cuBLASLt's own GEMM rates (bf16, fp32, fp32 with bf16 compute): the
//   ceilings;
// - MatmulForward/Backward in bf16 and fp32 against those ceilings;
// - attention forward/backward at T = 1024, head size 64 and 128;
// - the chunked output layer at V = 128256, chunk 1024;
// - AdamW, SumSquares, RMSNorm, LayerNorm, embedding (memory-bound: GB/s).
// Each result is one line "op_bench: <name>: <numbers>". Without a GPU it
// prints "SKIPPED: no GPU (...)" and the list of what it would measure, and
// exits 0.
//
//   bazel run //kernels/cuda:op_bench
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/gemm_probe.h"

namespace prefopt::kernels {
namespace {

using Precision = CudaBackend::Precision;
using Clock = std::chrono::steady_clock;

// The model and batch.
constexpr int kDim = 2048, kHeads = 32, kKvHeads = 8, kFF = 8192;
constexpr int kVocab = 128256;
constexpr int kSeqs = 8, kSeqLen = 1024, kTokens = kSeqs * kSeqLen;

constexpr const char* kPlan[] = {
    "cuBLASLt GEMM ceilings: bf16 / fp32 / fp32-with-bf16-compute, TFLOP/s",
    "MatmulForward and MatmulBackward (bf16, fp32) at N=8192 for the qkv, "
    "gate|up and down projections: TFLOP/s and % of the cuBLASLt ceiling",
    "AttentionForward / AttentionBackward, bf16 and fp32, T=1024 x 8 seqs, "
    "hs=64 (32 heads, 8 KV) and hs=128 (16 heads, 4 KV): TFLOP/s",
    "OutputForward + OutputBackward, N=4096 rows, C=2048, V=128256, chunk "
    "1024 (bf16): ms and TFLOP/s",
    "AdamW over 256M parameters: GB/s; SumSquares over 256M: GB/s",
    "RmsNorm / LayerNorm forward+backward and embedding forward/backward at "
    "N=8192, C=2048: GB/s",
};

// Device memory freed at scope exit.
class Buffers {
 public:
  explicit Buffers(Backend* b) : b_(b) {}
  ~Buffers() {
    for (float* p : owned_) b_->Free(p);
  }
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;

  // n floats of N(0, scale^2), generated on the host in blocks of 1M values
  // repeated over the buffer (benchmarks need values, not independence).
  float* Random(size_t n, float scale) {
    float* p = b_->Alloc(n);
    owned_.push_back(p);
    static const std::vector<float> block = [] {
      std::mt19937 rng(1);
      std::normal_distribution<float> dist(0.0f, 1.0f);
      std::vector<float> v(size_t{1} << 20);
      for (float& x : v) x = dist(rng);
      return v;
    }();
    std::vector<float> scaled(std::min(n, block.size()));
    for (size_t i = 0; i < scaled.size(); ++i) scaled[i] = block[i] * scale;
    for (size_t off = 0; off < n; off += scaled.size()) {
      b_->CopyToDevice(p + off, scaled.data(),
                       std::min(scaled.size(), n - off));
    }
    return p;
  }
  float* Zeros(size_t n) {
    float* p = b_->Alloc(n);
    owned_.push_back(p);
    b_->Zero(p, n);
    return p;
  }

 private:
  Backend* b_;
  std::vector<float*> owned_;
};

// Seconds per call: one untimed call, then `reps` timed back to back. The
// clock stops at a CopyToHost, which returns only after every op enqueued
// before it has finished.
double TimeIt(Backend* b, int reps, const std::function<void()>& op) {
  float* probe = b->Alloc(1);
  float sink;
  op();
  b->CopyToHost(&sink, probe, 1);
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < reps; ++i) op();
  b->CopyToHost(&sink, probe, 1);
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();
  b->Free(probe);
  return seconds / reps;
}

using cuda::GemmProbeType;

// cuBLASLt's rate for the shape, or 0 (after saying why) when it cannot run.
double Ceiling(GemmProbeType type, int m, int n, int k) {
  const absl::StatusOr<double> r =
      cuda::MeasureCublasGemmTflops(type, m, n, k, 10);
  if (!r.ok()) {
    std::printf("op_bench: cuBLASLt probe m=%d n=%d k=%d failed: %s\n", m, n, k,
                std::string(r.status().message()).c_str());
    return 0.0;
  }
  return *r;
}

void GemmCeilings() {
  std::printf("op_bench: cublasLt bf16 8192^3: %.1f TFLOP/s\n",
              Ceiling(GemmProbeType::kBf16, 8192, 8192, 8192));
  std::printf("op_bench: cublasLt fp32 4096^3: %.1f TFLOP/s\n",
              Ceiling(GemmProbeType::kFp32, 4096, 4096, 4096));
  std::printf(
      "op_bench: cublasLt fp32 operands with bf16 compute "
      "(COMPUTE_32F_FAST_16BF) 8192^3: %.1f TFLOP/s\n",
      Ceiling(GemmProbeType::kFp32FastBf16, 8192, 8192, 8192));
}

void Matmuls(CudaBackend* cuda, const char* mode, GemmProbeType ceiling_type) {
  struct Shape {
    const char* name;
    int C, OC;
  };
  const Shape shapes[] = {{"qkv", kDim, (kHeads + 2 * kKvHeads) * 64},
                          {"gate_up", kDim, 2 * kFF},
                          {"down", kFF, kDim}};
  for (const Shape& s : shapes) {
    Buffers buf(cuda);
    const int N = kTokens;
    float* inp = buf.Random(static_cast<size_t>(N) * s.C, 1.0f);
    float* w = buf.Random(static_cast<size_t>(s.OC) * s.C, 0.02f);
    float* out = buf.Zeros(static_cast<size_t>(N) * s.OC);
    float* dinp = buf.Zeros(static_cast<size_t>(N) * s.C);
    float* dw = buf.Zeros(static_cast<size_t>(s.OC) * s.C);
    const double flops = 2.0 * N * s.C * static_cast<double>(s.OC);
    const double fwd = TimeIt(cuda, 10, [&] {
      cuda->MatmulForward(out, inp, w, nullptr, N, s.C, s.OC);
    });
    const double bwd = TimeIt(cuda, 10, [&] {
      cuda->MatmulBackward(dinp, dw, nullptr, out, inp, w, N, s.C, s.OC);
    });
    const double ceiling = Ceiling(ceiling_type, s.OC, N, s.C);
    std::printf(
        "op_bench: matmul %s %s N=%d C=%d OC=%d: forward %.3f ms %.1f "
        "TFLOP/s, backward %.3f ms %.1f TFLOP/s; cuBLASLt on %s operands "
        "%.1f TFLOP/s (forward at %.0f%%)\n",
        mode, s.name, N, s.C, s.OC, fwd * 1e3, flops / fwd * 1e-12, bwd * 1e3,
        2 * flops / bwd * 1e-12, mode, ceiling,
        ceiling > 0 ? 100.0 * flops / fwd * 1e-12 / ceiling : 0.0);
  }
}

void Attention(CudaBackend* cuda, const char* mode) {
  for (int hs : {64, 128}) {
    const int NH = kDim / hs, NKV = NH / 4;
    std::vector<SeqSpan> spans;
    for (int s = 0; s < kSeqs; ++s) spans.push_back({s * kSeqLen, kSeqLen});
    Buffers buf(cuda);
    const size_t row = static_cast<size_t>(NH + 2 * NKV) * hs;
    float* qkv = buf.Random(kTokens * row, 1.0f);
    float* dqkv = buf.Zeros(kTokens * row);
    float* out = buf.Zeros(static_cast<size_t>(kTokens) * NH * hs);
    float* dout = buf.Random(static_cast<size_t>(kTokens) * NH * hs, 1.0f);
    float* lse = buf.Zeros(cuda->AttentionProbsSize(spans.data(), kSeqs, NH));
    const int reps = 5;
    const double fwd = TimeIt(cuda, reps, [&] {
      cuda->AttentionForward(out, lse, qkv, spans.data(), kSeqs, NH, NKV, hs);
    });
    const double bwd = TimeIt(cuda, reps, [&] {
      cuda->AttentionBackward(dqkv, dout, qkv, out, lse, spans.data(), kSeqs,
                              NH, NKV, hs);
    });
    // Causal: half of the two T x T x hs products forward; the usual 2.5x of
    // that backward (five products), whatever the kernels recompute.
    const double flops =
        kSeqs * 2.0 * kSeqLen * static_cast<double>(kSeqLen) * hs * NH;
    std::printf(
        "op_bench: attention %s T=%d x %d seqs NH=%d NKV=%d hs=%d: forward "
        "%.3f ms %.1f TFLOP/s, backward %.3f ms %.1f TFLOP/s (2.5x forward "
        "flops)\n",
        mode, kSeqLen, kSeqs, NH, NKV, hs, fwd * 1e3, flops / fwd * 1e-12,
        bwd * 1e3, 2.5 * flops / bwd * 1e-12);
  }
}

void OutputLayer(CudaBackend* cuda) {
  const int N = kSeqs * kSeqLen / 2, C = kDim, V = kVocab, chunk = 1024;
  Buffers buf(cuda);
  float* h = buf.Random(static_cast<size_t>(N) * C, 1.0f);
  float* wout = buf.Random(static_cast<size_t>(V) * C, 0.02f);
  float* dh = buf.Zeros(static_cast<size_t>(N) * C);
  float* dwout = buf.Zeros(static_cast<size_t>(V) * C);
  float* chunk_buf = buf.Zeros(static_cast<size_t>(chunk) * V);
  float* lse = buf.Zeros(N);
  float* logp = buf.Zeros(N);
  float* logit_sum = buf.Zeros(N);
  float* correct = buf.Zeros(N);
  float* entropy = buf.Zeros(N);
  float* coef = buf.Random(N, 1e-3f);
  std::vector<int32_t> labels(N);
  std::mt19937 rng(3);
  for (int32_t& l : labels) l = static_cast<int32_t>(rng() % V);
  const double fwd = TimeIt(cuda, 3, [&] {
    cuda->OutputForward(lse, logp, logit_sum,
                        reinterpret_cast<int32_t*>(correct), entropy, nullptr,
                        h, wout, labels.data(), N, C, V, chunk_buf, chunk);
  });
  const double bwd = TimeIt(cuda, 3, [&] {
    cuda->OutputBackward(dh, dwout, h, wout, labels.data(), lse, coef, N, C, V,
                         chunk_buf, chunk);
  });
  const double gemm = 2.0 * N * C * static_cast<double>(V);
  std::printf(
      "op_bench: output layer %s N=%d C=%d V=%d chunk=%d: forward %.2f ms "
      "%.1f TFLOP/s, backward %.2f ms %.1f TFLOP/s (3 GEMMs incl. the "
      "recomputed logits); peak scratch O(chunk x V)\n",
      cuda->Name().c_str(), N, C, V, chunk, fwd * 1e3, gemm / fwd * 1e-12,
      bwd * 1e3, 3 * gemm / bwd * 1e-12);
}

void MemoryBound(CudaBackend* cuda) {
  {
    const size_t n = size_t{256} << 20;
    Buffers buf(cuda);
    float* p = buf.Random(n, 1.0f);
    float* g = buf.Random(n, 1e-3f);
    float* m = buf.Zeros(n);
    float* v = buf.Zeros(n);
    int step = 0;
    const double t = TimeIt(cuda, 5, [&] {
      cuda->AdamW(p, g, m, v, n,
                  AdamWParams{1e-5f, 0.9f, 0.95f, 1e-8f, 0.1f, ++step});
    });
    // Reads p, g, m, v; writes p, m, v.
    std::printf("op_bench: adamw n=%zu: %.3f ms %.0f GB/s\n", n, t * 1e3,
                28.0 * n / t * 1e-9);
    const double ts = TimeIt(cuda, 5, [&] { cuda->SumSquares(g, n); });
    std::printf("op_bench: sum_squares n=%zu: %.3f ms %.0f GB/s\n", n, ts * 1e3,
                4.0 * n / ts * 1e-9);
  }
  const int N = kTokens, C = kDim;
  const size_t nc = static_cast<size_t>(N) * C;
  Buffers buf(cuda);
  float* x = buf.Random(nc, 1.0f);
  float* w = buf.Random(C, 1.0f);
  float* b = buf.Random(C, 1.0f);
  float* out = buf.Zeros(nc);
  float* dx = buf.Zeros(nc);
  float* dw = buf.Zeros(C);
  float* db = buf.Zeros(C);
  float* mean = buf.Zeros(N);
  float* rstd = buf.Zeros(N);
  const double rms_f = TimeIt(
      cuda, 10, [&] { cuda->RmsNormForward(out, rstd, x, w, N, C, 1e-5f); });
  const double rms_b = TimeIt(
      cuda, 10, [&] { cuda->RmsNormBackward(dx, dw, out, x, w, rstd, N, C); });
  const double ln_f = TimeIt(cuda, 10, [&] {
    cuda->LayerNormForward(out, mean, rstd, x, w, b, N, C, 1e-5f);
  });
  const double ln_b = TimeIt(cuda, 10, [&] {
    cuda->LayerNormBackward(dx, dw, db, out, x, w, mean, rstd, N, C);
  });
  // Forward: read x, write out; backward: read dout and x (twice: input and
  // parameter gradients), read and write dinp.
  std::printf(
      "op_bench: rmsnorm N=%d C=%d: forward %.3f ms %.0f GB/s, backward %.3f "
      "ms %.0f GB/s\n",
      N, C, rms_f * 1e3, 8.0 * nc / rms_f * 1e-9, rms_b * 1e3,
      24.0 * nc / rms_b * 1e-9);
  std::printf(
      "op_bench: layernorm N=%d C=%d: forward %.3f ms %.0f GB/s, backward "
      "%.3f ms %.0f GB/s\n",
      N, C, ln_f * 1e3, 8.0 * nc / ln_f * 1e-9, ln_b * 1e3,
      24.0 * nc / ln_b * 1e-9);

  float* wte = buf.Random(static_cast<size_t>(kVocab) * C, 0.02f);
  float* dwte = buf.Zeros(static_cast<size_t>(kVocab) * C);
  std::vector<int32_t> ids(N), pos(N);
  std::mt19937 rng(5);
  for (int n = 0; n < N; ++n) {
    ids[n] = static_cast<int32_t>(rng() % kVocab);
    pos[n] = n % kSeqLen;
  }
  const double emb_f = TimeIt(cuda, 10, [&] {
    cuda->EmbeddingForward(out, ids.data(), pos.data(), wte, nullptr, N, C);
  });
  const double emb_b = TimeIt(cuda, 10, [&] {
    cuda->EmbeddingBackward(dwte, nullptr, out, ids.data(), pos.data(), N, C);
  });
  std::printf(
      "op_bench: embedding N=%d C=%d V=%d: forward %.3f ms %.0f GB/s, "
      "backward %.3f ms %.0f GB/s (incl. host bucketing)\n",
      N, C, kVocab, emb_f * 1e3, 8.0 * nc / emb_f * 1e-9, emb_b * 1e3,
      12.0 * nc / emb_b * 1e-9);
}

}  // namespace
}  // namespace prefopt::kernels

int main() {
  using prefopt::kernels::CudaBackend;
  absl::StatusOr<std::unique_ptr<CudaBackend>> bf16 =
      CudaBackend::Create(0, CudaBackend::Precision::kBf16);
  if (!bf16.ok()) {
    std::printf("SKIPPED: no GPU (%s)\n",
                std::string(bf16.status().message()).c_str());
    std::printf("op_bench would measure:\n");
    for (const char* line : prefopt::kernels::kPlan) {
      std::printf("  - %s\n", line);
    }
    return 0;
  }
  absl::StatusOr<std::unique_ptr<CudaBackend>> fp32 =
      CudaBackend::Create(0, CudaBackend::Precision::kFp32);
  if (!fp32.ok()) {
    std::printf("op_bench: fp32 backend: %s\n",
                std::string(fp32.status().message()).c_str());
    return 1;
  }
  prefopt::kernels::GemmCeilings();
  prefopt::kernels::Matmuls(bf16->get(), "bf16",
                            prefopt::kernels::GemmProbeType::kBf16);
  prefopt::kernels::Matmuls(fp32->get(), "fp32",
                            prefopt::kernels::GemmProbeType::kFp32);
  prefopt::kernels::Attention(bf16->get(), "bf16");
  prefopt::kernels::Attention(fp32->get(), "fp32");
  prefopt::kernels::OutputLayer(bf16->get());
  prefopt::kernels::MemoryBound(bf16->get());
  return 0;
}
