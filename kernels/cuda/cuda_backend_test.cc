// CudaBackend against the CPU ReferenceBackend on random inputs, forward and
// backward, in both precisions; run-to-run determinism (each op twice on the
// same inputs gives the same bits); AdamW against torch.optim.AdamW.
//
// Tolerance: max |cuda - reference| <= tol * max |reference| per output
// tensor; for a Backward, over the part it added to a random initial
// gradient. Integer outputs (argmax hits) must match exactly.
// - fp32 mode: tol = 1e-5; attention 1e-4 (online softmax and a different
//   summation order over up to a few hundred keys).
// - bf16 mode, for the ops whose products run in bf16 (Matmul, attention, the
//   output layer): 1e-2 for forward outputs and 2e-2 for gradients, which
//   pass through two bf16 roundings (llm.c holds its bf16 build to about
//   1e-2). Every other op does not touch bf16 and keeps the fp32 tolerances.
//   Argmax hits are compared only on rows whose two largest logits differ by
//   more than bf16 rounding can move them.
//
// Without a GPU (or in a build without CUDA) every test prints why, once, as
// "SKIPPED: no GPU (...)", and skips. cuda_backend_sim_test runs the same
// tests on the CUDA CPU simulation (kernels/cuda/sim) and says so first:
// "CUDA backend (CPU simulation): ...".
#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/test_util.h"

namespace prefopt::kernels {
namespace {

using testing::Delta;
using testing::ErrorVsScale;
using testing::RandomInts;
using testing::RandomNormal;
using Precision = CudaBackend::Precision;

constexpr double kTol = 1e-5;
constexpr double kAttentionTol = 1e-4;
constexpr double kBf16Tol = 1e-2;
constexpr double kBf16GradTol = 2e-2;

// Creates a backend, or prints why not (once per process) and returns null.
std::unique_ptr<CudaBackend> CreateOrExplain(Precision precision) {
  absl::StatusOr<std::unique_ptr<CudaBackend>> created =
      CudaBackend::Create(0, precision);
  static bool explained = false;
  if (created.ok()) {
    if (!explained) {
      explained = true;
#if defined(PREFOPT_CUDA_SIMULATION)
      std::cout << "CUDA backend (CPU simulation): ";
#else
      std::cout << "CUDA backend (GPU): ";
#endif
      std::cout << (*created)->DeviceName() << "\n";
    }
    return *std::move(created);
  }
  if (!explained) {
    explained = true;
    std::cout << "SKIPPED: no GPU (" << created.status().message() << ")\n";
  }
  return nullptr;
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double GradError(const std::vector<float>& got, const std::vector<float>& ref,
                 const std::vector<float>& initial) {
  return ErrorVsScale(Delta(got, initial), Delta(ref, initial));
}

// Device memory for one test: uploads, reads back, frees at scope exit.
class DeviceBuffers {
 public:
  explicit DeviceBuffers(Backend* backend) : b_(backend) {}
  ~DeviceBuffers() {
    for (float* p : owned_) b_->Free(p);
  }
  DeviceBuffers(const DeviceBuffers&) = delete;
  DeviceBuffers& operator=(const DeviceBuffers&) = delete;

  float* Upload(const std::vector<float>& host) {
    float* p = b_->Alloc(host.size());
    b_->CopyToDevice(p, host.data(), host.size());
    owned_.push_back(p);
    return p;
  }
  // NaN-filled: an output element the op fails to write shows up.
  float* Unwritten(size_t n) {
    return Upload(std::vector<float>(n, std::nanf("")));
  }
  std::vector<float> Read(const float* p, size_t n) {
    std::vector<float> host(n);
    b_->CopyToHost(host.data(), p, n);
    return host;
  }
  std::vector<int32_t> ReadInts(const float* p, size_t n) {
    const std::vector<float> raw = Read(p, n);
    std::vector<int32_t> ints(n);
    std::memcpy(ints.data(), raw.data(), n * sizeof(int32_t));
    return ints;
  }

 private:
  Backend* b_;
  std::vector<float*> owned_;
};

// Runs op twice, each time on fresh device copies of `initial` (the op's
// outputs, accumulated into or overwritten), and expects the same bits.
void ExpectDeterministic(
    Backend* backend, const std::vector<std::vector<float>>& initial,
    const std::function<void(const std::vector<float*>&)>& op) {
  std::vector<std::vector<float>> results[2];
  for (auto& result : results) {
    DeviceBuffers buf(backend);
    std::vector<float*> ptrs;
    for (const std::vector<float>& v : initial) ptrs.push_back(buf.Upload(v));
    op(ptrs);
    for (size_t i = 0; i < initial.size(); ++i) {
      result.push_back(buf.Read(ptrs[i], initial[i].size()));
    }
  }
  for (size_t i = 0; i < initial.size(); ++i) {
    EXPECT_TRUE(BitwiseEqual(results[0][i], results[1][i])) << "output " << i;
  }
}

std::string PrecisionName(const ::testing::TestParamInfo<Precision>& info) {
  return info.param == Precision::kBf16 ? "bf16" : "fp32";
}

class CudaBackendTest : public ::testing::TestWithParam<Precision> {
 protected:
  void SetUp() override {
    cuda_ = CreateOrExplain(GetParam());
    if (cuda_ == nullptr) GTEST_SKIP() << "no GPU";
  }

  bool bf16() const { return GetParam() == Precision::kBf16; }
  // Tolerances of the ops that run in bf16 in bf16 mode.
  double ForwardTol(double fp32_tol = kTol) const {
    return bf16() ? kBf16Tol : fp32_tol;
  }
  double GradTol(double fp32_tol = kTol) const {
    return bf16() ? kBf16GradTol : fp32_tol;
  }

  void LayerNormCase(int N, int C);
  void RmsNormCase(int N, int C);

  ReferenceBackend ref_;
  std::unique_ptr<CudaBackend> cuda_;
};

TEST_P(CudaBackendTest, MemoryOps) {
  EXPECT_EQ(cuda_->Name(), bf16() ? "cuda_bf16" : "cuda_fp32");
  const size_t n = 100003;
  const std::vector<float> src = RandomNormal(n, 1);
  DeviceBuffers buf(cuda_.get());
  float* p = buf.Upload(src);
  EXPECT_TRUE(BitwiseEqual(buf.Read(p, n), src));
  cuda_->Zero(p + 1, n - 2);
  const std::vector<float> back = buf.Read(p, n);
  EXPECT_EQ(back[0], src[0]);
  EXPECT_EQ(back[n - 1], src[n - 1]);
  EXPECT_TRUE(std::all_of(back.begin() + 1, back.end() - 1,
                          [](float x) { return x == 0.0f; }));
}

TEST_P(CudaBackendTest, Embedding) {
  // 300 rows over 50 ids and 64 positions: every id and position repeats.
  const int N = 300, C = 200, V = 50, T = 64;
  const std::vector<int32_t> ids = RandomInts(N, V, 1);
  const std::vector<int32_t> pos = RandomInts(N, T, 2);
  const std::vector<float> wte = RandomNormal(V * C, 3);
  const std::vector<float> wpe = RandomNormal(T * C, 4);
  DeviceBuffers buf(cuda_.get());
  float* d_wte = buf.Upload(wte);
  float* d_wpe = buf.Upload(wpe);
  for (bool with_wpe : {true, false}) {
    std::vector<float> out_ref(N * C);
    ref_.EmbeddingForward(out_ref.data(), ids.data(), pos.data(), wte.data(),
                          with_wpe ? wpe.data() : nullptr, N, C);
    float* out = buf.Unwritten(N * C);
    cuda_->EmbeddingForward(out, ids.data(), pos.data(), d_wte,
                            with_wpe ? d_wpe : nullptr, N, C);
    EXPECT_LE(ErrorVsScale(buf.Read(out, N * C), out_ref), kTol);
  }
  const std::vector<float> dout = RandomNormal(N * C, 5);
  const std::vector<float> dwte0 = RandomNormal(V * C, 6);
  const std::vector<float> dwpe0 = RandomNormal(T * C, 7);
  std::vector<float> dwte_ref = dwte0, dwpe_ref = dwpe0;
  ref_.EmbeddingBackward(dwte_ref.data(), dwpe_ref.data(), dout.data(),
                         ids.data(), pos.data(), N, C);
  float* d_dout = buf.Upload(dout);
  float* dwte = buf.Upload(dwte0);
  float* dwpe = buf.Upload(dwpe0);
  cuda_->EmbeddingBackward(dwte, dwpe, d_dout, ids.data(), pos.data(), N, C);
  const std::vector<float> dwte_cuda = buf.Read(dwte, V * C);
  EXPECT_LE(GradError(dwte_cuda, dwte_ref, dwte0), kTol);
  EXPECT_LE(GradError(buf.Read(dwpe, T * C), dwpe_ref, dwpe0), kTol);
  // Null wpe gradient: dwte alone.
  float* dwte_only = buf.Upload(dwte0);
  cuda_->EmbeddingBackward(dwte_only, nullptr, d_dout, ids.data(), nullptr, N,
                           C);
  EXPECT_TRUE(BitwiseEqual(buf.Read(dwte_only, V * C), dwte_cuda));

  ExpectDeterministic(cuda_.get(), {dwte0, dwpe0}, [&](const auto& o) {
    cuda_->EmbeddingBackward(o[0], o[1], d_dout, ids.data(), pos.data(), N, C);
  });
}

// Rows x columns for the normalizations: full and partial blocks of rows (8
// rows per block), C not a multiple of the warp (32) or of 4, one row, and
// rows of 3 (most lanes idle). Not C = 1: there RMSNorm's input gradient is
// g rstd eps / (x^2 + eps), a cancellation to almost nothing whose rounding
// differs between any two correct implementations.
struct NormShape {
  int N, C;
};
const NormShape kNormShapes[] = {{256, 300}, {13, 33}, {1, 64}, {9, 3}};

TEST_P(CudaBackendTest, LayerNorm) {
  for (const NormShape& shape : kNormShapes) {
    SCOPED_TRACE(::testing::Message() << "N " << shape.N << " C " << shape.C);
    LayerNormCase(shape.N, shape.C);
  }
}

void CudaBackendTest::LayerNormCase(int N, int C) {
  const float eps = 1e-5f;
  std::vector<float> inp = RandomNormal(N * C, 1, 2.0f);
  for (float& x : inp) x += 1.0f;
  const std::vector<float> weight = RandomNormal(C, 2);
  const std::vector<float> bias = RandomNormal(C, 3);
  DeviceBuffers buf(cuda_.get());
  float* d_inp = buf.Upload(inp);
  float* d_weight = buf.Upload(weight);
  float* d_bias = buf.Upload(bias);
  std::vector<float> mean(N), rstd(N);
  for (bool with_bias : {true, false}) {
    std::vector<float> out_ref(N * C);
    ref_.LayerNormForward(out_ref.data(), mean.data(), rstd.data(), inp.data(),
                          weight.data(), with_bias ? bias.data() : nullptr, N,
                          C, eps);
    float* out = buf.Unwritten(N * C);
    float* d_mean = buf.Unwritten(N);
    float* d_rstd = buf.Unwritten(N);
    cuda_->LayerNormForward(out, d_mean, d_rstd, d_inp, d_weight,
                            with_bias ? d_bias : nullptr, N, C, eps);
    EXPECT_LE(ErrorVsScale(buf.Read(out, N * C), out_ref), kTol);
    EXPECT_LE(ErrorVsScale(buf.Read(d_mean, N), mean), kTol);
    EXPECT_LE(ErrorVsScale(buf.Read(d_rstd, N), rstd), kTol);
  }
  // Backward from the reference's saved statistics (last loop: no bias).
  const std::vector<float> dout = RandomNormal(N * C, 4);
  const std::vector<float> dinp0 = RandomNormal(N * C, 5);
  const std::vector<float> dweight0 = RandomNormal(C, 6);
  const std::vector<float> dbias0 = RandomNormal(C, 7);
  std::vector<float> dinp_ref = dinp0, dweight_ref = dweight0,
                     dbias_ref = dbias0;
  ref_.LayerNormBackward(dinp_ref.data(), dweight_ref.data(), dbias_ref.data(),
                         dout.data(), inp.data(), weight.data(), mean.data(),
                         rstd.data(), N, C);
  float* d_dout = buf.Upload(dout);
  float* d_mean = buf.Upload(mean);
  float* d_rstd = buf.Upload(rstd);
  float* dinp = buf.Upload(dinp0);
  float* dweight = buf.Upload(dweight0);
  float* dbias = buf.Upload(dbias0);
  cuda_->LayerNormBackward(dinp, dweight, dbias, d_dout, d_inp, d_weight,
                           d_mean, d_rstd, N, C);
  const std::vector<float> dinp_cuda = buf.Read(dinp, N * C);
  const std::vector<float> dweight_cuda = buf.Read(dweight, C);
  const std::vector<float> dbias_cuda = buf.Read(dbias, C);
  EXPECT_LE(GradError(dinp_cuda, dinp_ref, dinp0), kTol);
  EXPECT_LE(GradError(dweight_cuda, dweight_ref, dweight0), kTol);
  EXPECT_LE(GradError(dbias_cuda, dbias_ref, dbias0), kTol);
  // Parameter gradients only, then the input gradient only.
  float* dweight_only = buf.Upload(dweight0);
  float* dbias_only = buf.Upload(dbias0);
  cuda_->LayerNormBackward(nullptr, dweight_only, dbias_only, d_dout, d_inp,
                           d_weight, d_mean, d_rstd, N, C);
  EXPECT_TRUE(BitwiseEqual(buf.Read(dweight_only, C), dweight_cuda));
  EXPECT_TRUE(BitwiseEqual(buf.Read(dbias_only, C), dbias_cuda));
  float* dinp_only = buf.Upload(dinp0);
  cuda_->LayerNormBackward(dinp_only, nullptr, nullptr, d_dout, d_inp, d_weight,
                           d_mean, d_rstd, N, C);
  EXPECT_TRUE(BitwiseEqual(buf.Read(dinp_only, N * C), dinp_cuda));

  ExpectDeterministic(
      cuda_.get(),
      {std::vector<float>(N * C), std::vector<float>(N), std::vector<float>(N)},
      [&](const auto& o) {
        cuda_->LayerNormForward(o[0], o[1], o[2], d_inp, d_weight, d_bias, N, C,
                                eps);
      });
  ExpectDeterministic(
      cuda_.get(), {dinp0, dweight0, dbias0}, [&](const auto& o) {
        cuda_->LayerNormBackward(o[0], o[1], o[2], d_dout, d_inp, d_weight,
                                 d_mean, d_rstd, N, C);
      });
}

TEST_P(CudaBackendTest, RmsNorm) {
  for (const NormShape& shape : kNormShapes) {
    SCOPED_TRACE(::testing::Message() << "N " << shape.N << " C " << shape.C);
    RmsNormCase(shape.N, shape.C);
  }
  RmsNormCase(200, 333);
}

void CudaBackendTest::RmsNormCase(int N, int C) {
  const float eps = 1e-6f;
  const std::vector<float> inp = RandomNormal(N * C, 1, 2.0f);
  const std::vector<float> weight = RandomNormal(C, 2);
  std::vector<float> out_ref(N * C), rstd(N);
  ref_.RmsNormForward(out_ref.data(), rstd.data(), inp.data(), weight.data(), N,
                      C, eps);
  DeviceBuffers buf(cuda_.get());
  float* d_inp = buf.Upload(inp);
  float* d_weight = buf.Upload(weight);
  float* out = buf.Unwritten(N * C);
  float* d_rstd_out = buf.Unwritten(N);
  cuda_->RmsNormForward(out, d_rstd_out, d_inp, d_weight, N, C, eps);
  EXPECT_LE(ErrorVsScale(buf.Read(out, N * C), out_ref), kTol);
  EXPECT_LE(ErrorVsScale(buf.Read(d_rstd_out, N), rstd), kTol);

  const std::vector<float> dout = RandomNormal(N * C, 3);
  const std::vector<float> dinp0 = RandomNormal(N * C, 4);
  const std::vector<float> dweight0 = RandomNormal(C, 5);
  std::vector<float> dinp_ref = dinp0, dweight_ref = dweight0;
  ref_.RmsNormBackward(dinp_ref.data(), dweight_ref.data(), dout.data(),
                       inp.data(), weight.data(), rstd.data(), N, C);
  float* d_dout = buf.Upload(dout);
  float* d_rstd = buf.Upload(rstd);
  float* dinp = buf.Upload(dinp0);
  float* dweight = buf.Upload(dweight0);
  cuda_->RmsNormBackward(dinp, dweight, d_dout, d_inp, d_weight, d_rstd, N, C);
  const std::vector<float> dinp_cuda = buf.Read(dinp, N * C);
  const std::vector<float> dweight_cuda = buf.Read(dweight, C);
  EXPECT_LE(GradError(dinp_cuda, dinp_ref, dinp0), kTol);
  EXPECT_LE(GradError(dweight_cuda, dweight_ref, dweight0), kTol);
  float* dinp_only = buf.Upload(dinp0);
  float* dweight_only = buf.Upload(dweight0);
  cuda_->RmsNormBackward(dinp_only, nullptr, d_dout, d_inp, d_weight, d_rstd, N,
                         C);
  cuda_->RmsNormBackward(nullptr, dweight_only, d_dout, d_inp, d_weight, d_rstd,
                         N, C);
  EXPECT_TRUE(BitwiseEqual(buf.Read(dinp_only, N * C), dinp_cuda));
  EXPECT_TRUE(BitwiseEqual(buf.Read(dweight_only, C), dweight_cuda));

  ExpectDeterministic(cuda_.get(), {dinp0, dweight0}, [&](const auto& o) {
    cuda_->RmsNormBackward(o[0], o[1], d_dout, d_inp, d_weight, d_rstd, N, C);
  });
}

struct MatmulCase {
  int N, C, OC;
  // Operands and outputs start this many floats into their buffers, so that
  // they are only 4-byte aligned: the GEMM must not assume more.
  int offset;
};

TEST_P(CudaBackendTest, Matmul) {
  // Also one row, a single input column, and odd everything.
  const std::vector<MatmulCase> cases = {{150, 100, 90, 0},
                                         {256, 512, 384, 0},
                                         {37, 64, 130, 1},
                                         {1, 3, 5, 0},
                                         {33, 1, 7, 1}};
  for (const MatmulCase& tc : cases) {
    SCOPED_TRACE(::testing::Message()
                 << "N " << tc.N << " C " << tc.C << " OC " << tc.OC);
    const int N = tc.N, C = tc.C, OC = tc.OC, off = tc.offset;
    const std::vector<float> inp = RandomNormal(N * C, 1);
    const std::vector<float> weight = RandomNormal(OC * C, 2);
    const std::vector<float> bias = RandomNormal(OC, 3);
    auto padded = [off](const std::vector<float>& v) {
      std::vector<float> p(v.size() + off, 0.0f);
      std::copy(v.begin(), v.end(), p.begin() + off);
      return p;
    };
    DeviceBuffers buf(cuda_.get());
    float* d_inp = buf.Upload(padded(inp)) + off;
    float* d_weight = buf.Upload(padded(weight)) + off;
    float* d_bias = buf.Upload(padded(bias)) + off;
    for (bool with_bias : {true, false}) {
      std::vector<float> out_ref(N * OC);
      ref_.MatmulForward(out_ref.data(), inp.data(), weight.data(),
                         with_bias ? bias.data() : nullptr, N, C, OC);
      float* out = buf.Unwritten(N * OC + off) + off;
      cuda_->MatmulForward(out, d_inp, d_weight, with_bias ? d_bias : nullptr,
                           N, C, OC);
      EXPECT_LE(ErrorVsScale(buf.Read(out, N * OC), out_ref), ForwardTol())
          << "bias " << with_bias;
    }
    const std::vector<float> dout = RandomNormal(N * OC, 4);
    const std::vector<float> dinp0 = RandomNormal(N * C, 5);
    const std::vector<float> dweight0 = RandomNormal(OC * C, 6);
    const std::vector<float> dbias0 = RandomNormal(OC, 7);
    std::vector<float> dinp_ref = dinp0, dweight_ref = dweight0,
                       dbias_ref = dbias0;
    ref_.MatmulBackward(dinp_ref.data(), dweight_ref.data(), dbias_ref.data(),
                        dout.data(), inp.data(), weight.data(), N, C, OC);
    float* d_dout = buf.Upload(padded(dout)) + off;
    float* dinp = buf.Upload(padded(dinp0)) + off;
    float* dweight = buf.Upload(padded(dweight0)) + off;
    float* dbias = buf.Upload(padded(dbias0)) + off;
    cuda_->MatmulBackward(dinp, dweight, dbias, d_dout, d_inp, d_weight, N, C,
                          OC);
    const std::vector<float> dinp_cuda = buf.Read(dinp, N * C);
    const std::vector<float> dweight_cuda = buf.Read(dweight, OC * C);
    const std::vector<float> dbias_cuda = buf.Read(dbias, OC);
    EXPECT_LE(GradError(dinp_cuda, dinp_ref, dinp0), GradTol());
    EXPECT_LE(GradError(dweight_cuda, dweight_ref, dweight0), GradTol());
    // The bias gradient is a plain fp32 column sum in both modes.
    EXPECT_LE(GradError(dbias_cuda, dbias_ref, dbias0), kTol);
    // Each gradient alone.
    float* dinp_only = buf.Upload(padded(dinp0)) + off;
    float* dweight_only = buf.Upload(padded(dweight0)) + off;
    float* dbias_only = buf.Upload(padded(dbias0)) + off;
    cuda_->MatmulBackward(dinp_only, nullptr, nullptr, d_dout, d_inp, d_weight,
                          N, C, OC);
    cuda_->MatmulBackward(nullptr, dweight_only, nullptr, d_dout, d_inp,
                          d_weight, N, C, OC);
    cuda_->MatmulBackward(nullptr, nullptr, dbias_only, d_dout, d_inp, d_weight,
                          N, C, OC);
    EXPECT_TRUE(BitwiseEqual(buf.Read(dinp_only, N * C), dinp_cuda));
    EXPECT_TRUE(BitwiseEqual(buf.Read(dweight_only, OC * C), dweight_cuda));
    EXPECT_TRUE(BitwiseEqual(buf.Read(dbias_only, OC), dbias_cuda));

    ExpectDeterministic(
        cuda_.get(), {std::vector<float>(N * OC)}, [&](const auto& o) {
          cuda_->MatmulForward(o[0], d_inp, d_weight, d_bias, N, C, OC);
        });
    ExpectDeterministic(cuda_.get(), {dinp0, dweight0, dbias0},
                        [&](const auto& o) {
                          cuda_->MatmulBackward(o[0], o[1], o[2], d_dout, d_inp,
                                                d_weight, N, C, OC);
                        });
  }
}

TEST_P(CudaBackendTest, Gelu) {
  const size_t n = 100003;
  std::vector<float> inp = RandomNormal(n, 1, 3.0f);
  inp[0] = -30.0f;
  inp[1] = 30.0f;
  inp[2] = 0.0f;
  std::vector<float> out_ref(n);
  ref_.GeluForward(out_ref.data(), inp.data(), n);
  DeviceBuffers buf(cuda_.get());
  float* d_inp = buf.Upload(inp);
  float* out = buf.Unwritten(n);
  cuda_->GeluForward(out, d_inp, n);
  const std::vector<float> out_cuda = buf.Read(out, n);
  EXPECT_LE(ErrorVsScale(out_cuda, out_ref), kTol);
  // Elementwise too: 1e-5 relative to max(|gelu(x)|, 1e-3).
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NEAR(out_cuda[i], out_ref[i],
                1e-5 * std::max(1e-3, std::fabs(double{out_ref[i]})))
        << "x = " << inp[i];
  }
  const std::vector<float> dout = RandomNormal(n, 2);
  const std::vector<float> dinp0 = RandomNormal(n, 3);
  std::vector<float> dinp_ref = dinp0;
  ref_.GeluBackward(dinp_ref.data(), inp.data(), dout.data(), n);
  float* d_dout = buf.Upload(dout);
  float* dinp = buf.Upload(dinp0);
  cuda_->GeluBackward(dinp, d_inp, d_dout, n);
  EXPECT_LE(GradError(buf.Read(dinp, n), dinp_ref, dinp0), kTol);

  ExpectDeterministic(cuda_.get(), {dinp0}, [&](const auto& o) {
    cuda_->GeluBackward(o[0], d_inp, d_dout, n);
  });
}

TEST_P(CudaBackendTest, SwiGlu) {
  const int N = 37, FF = 1001;
  std::vector<float> gate_up = RandomNormal(N * 2 * FF, 1, 3.0f);
  gate_up[0] = -40.0f;  // sigmoid underflows to 0
  gate_up[1] = 40.0f;
  gate_up[2] = 0.0f;
  std::vector<float> out_ref(N * FF);
  ref_.SwiGluForward(out_ref.data(), gate_up.data(), N, FF);
  DeviceBuffers buf(cuda_.get());
  float* d_gate_up = buf.Upload(gate_up);
  float* out = buf.Unwritten(N * FF);
  cuda_->SwiGluForward(out, d_gate_up, N, FF);
  EXPECT_LE(ErrorVsScale(buf.Read(out, N * FF), out_ref), kTol);

  const std::vector<float> dout = RandomNormal(N * FF, 2);
  const std::vector<float> dgu0 = RandomNormal(N * 2 * FF, 3);
  std::vector<float> dgu_ref = dgu0;
  ref_.SwiGluBackward(dgu_ref.data(), gate_up.data(), dout.data(), N, FF);
  float* d_dout = buf.Upload(dout);
  float* dgu = buf.Upload(dgu0);
  cuda_->SwiGluBackward(dgu, d_gate_up, d_dout, N, FF);
  EXPECT_LE(GradError(buf.Read(dgu, N * 2 * FF), dgu_ref, dgu0), kTol);

  ExpectDeterministic(cuda_.get(), {dgu0}, [&](const auto& o) {
    cuda_->SwiGluBackward(o[0], d_gate_up, d_dout, N, FF);
  });
}

TEST_P(CudaBackendTest, AddAxpyScale) {
  const size_t n = 100003;
  const std::vector<float> a = RandomNormal(n, 1);
  const std::vector<float> b = RandomNormal(n, 2);
  DeviceBuffers buf(cuda_.get());
  float* d_a = buf.Upload(a);
  float* d_b = buf.Upload(b);

  std::vector<float> out_ref(n);
  ref_.Add(out_ref.data(), a.data(), b.data(), n);
  float* out = buf.Unwritten(n);
  cuda_->Add(out, d_a, d_b, n);
  EXPECT_TRUE(BitwiseEqual(buf.Read(out, n), out_ref));  // one rounding

  std::vector<float> y_ref = a;
  ref_.Axpy(y_ref.data(), -0.37f, b.data(), n);
  float* y = buf.Upload(a);
  cuda_->Axpy(y, -0.37f, d_b, n);
  EXPECT_LE(ErrorVsScale(buf.Read(y, n), y_ref), 1e-7);

  std::vector<float> x_ref = a;
  ref_.Scale(x_ref.data(), 1.7f, n);
  float* x = buf.Upload(a);
  cuda_->Scale(x, 1.7f, n);
  EXPECT_TRUE(BitwiseEqual(buf.Read(x, n), x_ref));

  std::vector<float> product_ref(n);
  ref_.Multiply(product_ref.data(), a.data(), b.data(), n);
  float* product = buf.Unwritten(n);
  cuda_->Multiply(product, d_a, d_b, n);
  EXPECT_TRUE(BitwiseEqual(buf.Read(product, n), product_ref));
}

TEST_P(CudaBackendTest, WidenBf16) {
  // Every bf16 bit pattern (NaN payloads, infinities, signed zeros,
  // subnormals), plus an odd tail; read from an odd offset too.
  std::vector<uint16_t> in(65536 + 3);
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = static_cast<uint16_t>(i * 40503u);
  }
  const size_t n = in.size();
  std::vector<float> packed((n + 1) / 2);
  std::memcpy(packed.data(), in.data(), n * sizeof(uint16_t));
  DeviceBuffers buf(cuda_.get());
  const auto* d_in = reinterpret_cast<const uint16_t*>(buf.Upload(packed));
  for (const size_t offset : {size_t{0}, size_t{1}}) {
    std::vector<float> out_ref(n - offset);
    ref_.WidenBf16(out_ref.data(), in.data() + offset, n - offset);
    float* out = buf.Unwritten(n - offset);
    cuda_->WidenBf16(out, d_in + offset, n - offset);
    EXPECT_TRUE(BitwiseEqual(buf.Read(out, n - offset), out_ref)) << offset;
  }
}

struct AttentionCase {
  std::vector<SeqSpan> spans;
  int NH, NKV, hs;
};

TEST_P(CudaBackendTest, Attention) {
  const std::vector<AttentionCase> cases = {
      // Lengths around the 64-row tile, a single token, GQA 2:1.
      {{{0, 1}, {1, 64}, {65, 65}, {130, 130}, {260, 7}}, 4, 2, 16},
      // Multi-head (NKV == NH), as GPT-2.
      {{{0, 100}, {100, 37}}, 3, 3, 32},
      // GQA 4:1 with a head size below one tensor-core tile (padded).
      {{{0, 90}}, 8, 2, 8},
      // Multi-query (one KV head), head size 64, several tiles per sequence.
      {{{0, 200}, {200, 131}}, 4, 1, 64},
      // Head size 128 and one not divisible by 16.
      {{{0, 150}}, 2, 2, 128},
      {{{0, 33}, {33, 70}}, 2, 1, 80},
      // Head size 256: 32-row tiles.
      {{{0, 70}, {70, 45}}, 2, 1, 256},
  };
  const double fwd_tol = ForwardTol(kAttentionTol);
  const double grad_tol = GradTol(kAttentionTol);
  for (const AttentionCase& tc : cases) {
    SCOPED_TRACE(::testing::Message()
                 << "NH " << tc.NH << " NKV " << tc.NKV << " hs " << tc.hs);
    const int num_seqs = static_cast<int>(tc.spans.size());
    const int N = tc.spans.back().start + tc.spans.back().len;
    const int row = (tc.NH + 2 * tc.NKV) * tc.hs;
    const int out_row = tc.NH * tc.hs;
    const std::vector<float> qkv = RandomNormal(N * row, 1);
    const size_t ref_probs_size =
        ref_.AttentionProbsSize(tc.spans.data(), num_seqs, tc.NH);
    const size_t probs_size =
        cuda_->AttentionProbsSize(tc.spans.data(), num_seqs, tc.NH);
    EXPECT_EQ(probs_size, static_cast<size_t>(N) * tc.NH);
    std::vector<float> out_ref(N * out_row), probs_ref(ref_probs_size);
    ref_.AttentionForward(out_ref.data(), probs_ref.data(), qkv.data(),
                          tc.spans.data(), num_seqs, tc.NH, tc.NKV, tc.hs);
    DeviceBuffers buf(cuda_.get());
    float* d_qkv = buf.Upload(qkv);
    float* out = buf.Unwritten(N * out_row);
    float* probs = buf.Unwritten(probs_size);
    cuda_->AttentionForward(out, probs, d_qkv, tc.spans.data(), num_seqs, tc.NH,
                            tc.NKV, tc.hs);
    EXPECT_LE(ErrorVsScale(buf.Read(out, N * out_row), out_ref), fwd_tol);
    for (float l : buf.Read(probs, probs_size)) ASSERT_TRUE(std::isfinite(l));

    const std::vector<float> dout = RandomNormal(N * out_row, 2);
    const std::vector<float> dqkv0 = RandomNormal(N * row, 3);
    std::vector<float> dqkv_ref = dqkv0;
    ref_.AttentionBackward(dqkv_ref.data(), dout.data(), qkv.data(),
                           out_ref.data(), probs_ref.data(), tc.spans.data(),
                           num_seqs, tc.NH, tc.NKV, tc.hs);
    float* d_dout = buf.Upload(dout);
    float* dqkv = buf.Upload(dqkv0);
    cuda_->AttentionBackward(dqkv, d_dout, d_qkv, out, probs, tc.spans.data(),
                             num_seqs, tc.NH, tc.NKV, tc.hs);
    EXPECT_LE(GradError(buf.Read(dqkv, N * row), dqkv_ref, dqkv0), grad_tol);

    ExpectDeterministic(
        cuda_.get(),
        {std::vector<float>(N * out_row), std::vector<float>(probs_size)},
        [&](const auto& o) {
          cuda_->AttentionForward(o[0], o[1], d_qkv, tc.spans.data(), num_seqs,
                                  tc.NH, tc.NKV, tc.hs);
        });
    ExpectDeterministic(cuda_.get(), {dqkv0}, [&](const auto& o) {
      cuda_->AttentionBackward(o[0], d_dout, d_qkv, out, probs, tc.spans.data(),
                               num_seqs, tc.NH, tc.NKV, tc.hs);
    });
  }
}

// Decoding attention against the reference's whole-sequence attention; fp32
// in both precisions.
TEST_P(CudaBackendTest, CachedAttention) {
  struct Case {
    int past, n, NH, NKV, hs;
  };
  const std::vector<Case> cases = {
      {0, 9, 4, 2, 16},   {9, 1, 4, 2, 16},  {64, 1, 3, 3, 32},
      {300, 1, 4, 1, 64}, {100, 3, 8, 2, 8}, {30, 70, 2, 1, 80},
      {50, 2, 2, 1, 256},
  };
  for (const Case& tc : cases) {
    SCOPED_TRACE(::testing::Message() << "past " << tc.past << " n " << tc.n
                                      << " NH " << tc.NH << " hs " << tc.hs);
    const int T = tc.past + tc.n;
    const int row = (tc.NH + 2 * tc.NKV) * tc.hs;
    const int out_row = tc.NH * tc.hs;
    const std::vector<float> qkv = RandomNormal(T * row, 4);
    const SeqSpan span{0, T};
    std::vector<float> full(T * out_row),
        probs(ref_.AttentionProbsSize(&span, 1, tc.NH));
    ref_.AttentionForward(full.data(), probs.data(), qkv.data(), &span, 1,
                          tc.NH, tc.NKV, tc.hs);
    const std::vector<float> expected(full.begin() + tc.past * out_row,
                                      full.end());
    DeviceBuffers buf(cuda_.get());
    float* d_qkv = buf.Upload(qkv);
    float* out = buf.Unwritten(tc.n * out_row);
    cuda_->CachedAttentionForward(out, d_qkv, tc.past, tc.n, tc.NH, tc.NKV,
                                  tc.hs);
    EXPECT_LE(ErrorVsScale(buf.Read(out, tc.n * out_row), expected),
              kAttentionTol);
    ExpectDeterministic(cuda_.get(), {std::vector<float>(tc.n * out_row)},
                        [&](const auto& o) {
                          cuda_->CachedAttentionForward(
                              o[0], d_qkv, tc.past, tc.n, tc.NH, tc.NKV, tc.hs);
                        });
  }
}

TEST_P(CudaBackendTest, Rope) {
  const int N = 50, NH = 4, NKV = 2, hs = 16, max_pos = 64, half = hs / 2;
  const int row = (NH + 2 * NKV) * hs;
  std::vector<float> cos(max_pos * half), sin(max_pos * half);
  for (int p = 0; p < max_pos; ++p) {
    for (int i = 0; i < half; ++i) {
      const double theta = p * std::pow(10000.0, -2.0 * i / hs);
      cos[p * half + i] = static_cast<float>(std::cos(theta));
      sin[p * half + i] = static_cast<float>(std::sin(theta));
    }
  }
  const std::vector<int32_t> pos = RandomInts(N, max_pos, 1);
  const std::vector<float> qkv = RandomNormal(N * row, 2);
  DeviceBuffers buf(cuda_.get());
  float* d_cos = buf.Upload(cos);
  float* d_sin = buf.Upload(sin);

  std::vector<float> fwd_ref = qkv;
  ref_.RopeForward(fwd_ref.data(), pos.data(), cos.data(), sin.data(), N, NH,
                   NKV, hs);
  float* x = buf.Upload(qkv);
  cuda_->RopeForward(x, pos.data(), d_cos, d_sin, N, NH, NKV, hs);
  const std::vector<float> fwd = buf.Read(x, N * row);
  EXPECT_LE(ErrorVsScale(fwd, fwd_ref), kTol);
  // Value heads untouched.
  for (int n = 0; n < N; ++n) {
    for (int c = (NH + NKV) * hs; c < row; ++c) {
      ASSERT_EQ(fwd[n * row + c], qkv[n * row + c]);
    }
  }
  std::vector<float> bwd_ref = qkv;
  ref_.RopeBackward(bwd_ref.data(), pos.data(), cos.data(), sin.data(), N, NH,
                    NKV, hs);
  float* g = buf.Upload(qkv);
  cuda_->RopeBackward(g, pos.data(), d_cos, d_sin, N, NH, NKV, hs);
  EXPECT_LE(ErrorVsScale(buf.Read(g, N * row), bwd_ref), kTol);
  // Backward undoes forward (the rotation is orthogonal).
  cuda_->RopeBackward(x, pos.data(), d_cos, d_sin, N, NH, NKV, hs);
  EXPECT_LE(ErrorVsScale(buf.Read(x, N * row), qkv), kTol);

  ExpectDeterministic(cuda_.get(), {qkv}, [&](const auto& o) {
    cuda_->RopeForward(o[0], pos.data(), d_cos, d_sin, N, NH, NKV, hs);
  });
}

// Host logits z = wout h_n in double, for argmax margins.
std::vector<double> HostLogits(const std::vector<float>& h,
                               const std::vector<float>& wout, int N, int C,
                               int V) {
  std::vector<double> z(static_cast<size_t>(N) * V);
  for (int n = 0; n < N; ++n) {
    for (int v = 0; v < V; ++v) {
      double acc = 0.0;
      for (int c = 0; c < C; ++c) {
        acc += double{wout[static_cast<size_t>(v) * C + c]} * h[n * C + c];
      }
      z[static_cast<size_t>(n) * V + v] = acc;
    }
  }
  return z;
}

struct OutputCase {
  int N, C, V;
  std::vector<int> chunks;
};

TEST_P(CudaBackendTest, OutputLayer) {
  // Chunk sizes that do not divide N, one row, and more than N.
  const std::vector<OutputCase> cases = {{70, 32, 1003, {1, 16, 128}},
                                         {33, 96, 4099, {8}}};
  for (const OutputCase& tc : cases) {
    const int N = tc.N, C = tc.C, V = tc.V;
    SCOPED_TRACE(::testing::Message() << "V " << V);
    const std::vector<float> h = RandomNormal(N * C, 1);
    const std::vector<float> wout = RandomNormal(V * C, 2, 0.5f);
    const std::vector<double> z = HostLogits(h, wout, N, C, V);
    std::vector<int32_t> labels = RandomInts(N, V, 3);
    // Every third row's label is its argmax, so `correct` sees both values;
    // argmax hits are compared where the top two logits are well apart.
    std::vector<bool> clear_margin(N);
    for (int n = 0; n < N; ++n) {
      const double* row = z.data() + static_cast<size_t>(n) * V;
      std::vector<double> sorted(row, row + V);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(),
                        std::greater<double>());
      clear_margin[n] = !bf16() || sorted[0] - sorted[1] > 0.1;
      if (n % 3 == 0) labels[n] = std::max_element(row, row + V) - row;
    }
    // Zero coefficients: leading rows, a run longer than some chunks,
    // scattered rows and the last row.
    std::vector<float> coef = RandomNormal(N, 4);
    for (int n : {0, 1, 2, 9, 20, N - 1}) coef[n] = 0.0f;
    for (int n = 40; n < std::min(N, 60); ++n) coef[n] = 0.0f;

    std::vector<float> lse_ref(N), logp_ref(N), sum_ref(N), entropy_ref(N),
        sq_ref(N);
    std::vector<int32_t> correct_ref(N);
    std::vector<float> ref_buf(V);
    ref_.OutputForward(lse_ref.data(), logp_ref.data(), sum_ref.data(),
                       correct_ref.data(), entropy_ref.data(), sq_ref.data(),
                       h.data(), wout.data(), labels.data(), N, C, V,
                       ref_buf.data(), 1);
    const std::vector<float> dh0 = RandomNormal(N * C, 5);
    const std::vector<float> dwout0 = RandomNormal(V * C, 6);
    std::vector<float> dh_ref = dh0, dwout_ref = dwout0;
    ref_.OutputBackward(dh_ref.data(), dwout_ref.data(), h.data(), wout.data(),
                        labels.data(), lse_ref.data(), coef.data(), N, C, V,
                        ref_buf.data(), 1);

    DeviceBuffers buf(cuda_.get());
    float* d_h = buf.Upload(h);
    float* d_wout = buf.Upload(wout);
    float* d_coef = buf.Upload(coef);
    float* d_lse_ref = buf.Upload(lse_ref);
    for (int chunk : tc.chunks) {
      SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
      float* chunk_buf = buf.Unwritten(static_cast<size_t>(chunk) * V);
      float* lse = buf.Unwritten(N);
      float* logp = buf.Unwritten(N);
      float* sum = buf.Unwritten(N);
      float* correct = buf.Unwritten(N);
      float* entropy = buf.Unwritten(N);
      float* sq = buf.Unwritten(N);
      cuda_->OutputForward(lse, logp, sum, reinterpret_cast<int32_t*>(correct),
                           entropy, sq, d_h, d_wout, labels.data(), N, C, V,
                           chunk_buf, chunk);
      EXPECT_LE(ErrorVsScale(buf.Read(lse, N), lse_ref), ForwardTol());
      EXPECT_LE(ErrorVsScale(buf.Read(logp, N), logp_ref), ForwardTol());
      EXPECT_LE(ErrorVsScale(buf.Read(sum, N), sum_ref), ForwardTol());
      EXPECT_LE(ErrorVsScale(buf.Read(entropy, N), entropy_ref), ForwardTol());
      EXPECT_LE(ErrorVsScale(buf.Read(sq, N), sq_ref), ForwardTol());
      // Without log sum p^2 the entropy is the same, bit for bit.
      float* entropy_alone = buf.Unwritten(N);
      cuda_->OutputForward(lse, logp, sum, reinterpret_cast<int32_t*>(correct),
                           entropy_alone, nullptr, d_h, d_wout, labels.data(),
                           N, C, V, chunk_buf, chunk);
      EXPECT_TRUE(
          BitwiseEqual(buf.Read(entropy_alone, N), buf.Read(entropy, N)));
      const std::vector<int32_t> hits = buf.ReadInts(correct, N);
      for (int n = 0; n < N; ++n) {
        if (clear_margin[n]) {
          EXPECT_EQ(hits[n], correct_ref[n]) << "row " << n;
        }
      }

      // The backward from the reference's lse, as the CPU tests do.
      float* dh = buf.Upload(dh0);
      float* dwout = buf.Upload(dwout0);
      cuda_->OutputBackward(dh, dwout, d_h, d_wout, labels.data(), d_lse_ref,
                            d_coef, N, C, V, chunk_buf, chunk);
      const std::vector<float> dh_cuda = buf.Read(dh, N * C);
      const std::vector<float> dwout_cuda = buf.Read(dwout, V * C);
      EXPECT_LE(GradError(dh_cuda, dh_ref, dh0), GradTol());
      EXPECT_LE(GradError(dwout_cuda, dwout_ref, dwout0), GradTol());
      // dh alone, then dwout alone.
      float* dh_only = buf.Upload(dh0);
      float* dwout_only = buf.Upload(dwout0);
      cuda_->OutputBackward(dh_only, nullptr, d_h, d_wout, labels.data(),
                            d_lse_ref, d_coef, N, C, V, chunk_buf, chunk);
      cuda_->OutputBackward(nullptr, dwout_only, d_h, d_wout, labels.data(),
                            d_lse_ref, d_coef, N, C, V, chunk_buf, chunk);
      EXPECT_TRUE(BitwiseEqual(buf.Read(dh_only, N * C), dh_cuda));
      EXPECT_TRUE(BitwiseEqual(buf.Read(dwout_only, V * C), dwout_cuda));

      ExpectDeterministic(
          cuda_.get(),
          {std::vector<float>(N), std::vector<float>(N), std::vector<float>(N),
           std::vector<float>(N), std::vector<float>(N), std::vector<float>(N)},
          [&](const auto& o) {
            cuda_->OutputForward(
                o[0], o[1], o[2], reinterpret_cast<int32_t*>(o[3]), o[4], o[5],
                d_h, d_wout, labels.data(), N, C, V, chunk_buf, chunk);
          });
      ExpectDeterministic(cuda_.get(), {dh0, dwout0}, [&](const auto& o) {
        cuda_->OutputBackward(o[0], o[1], d_h, d_wout, labels.data(), d_lse_ref,
                              d_coef, N, C, V, chunk_buf, chunk);
      });
    }

    // All coefficients zero: nothing is added.
    float* zeros = buf.Upload(std::vector<float>(N, 0.0f));
    float* dh = buf.Upload(dh0);
    float* dwout = buf.Upload(dwout0);
    float* chunk_buf = buf.Unwritten(static_cast<size_t>(16) * V);
    cuda_->OutputBackward(dh, dwout, d_h, d_wout, labels.data(), d_lse_ref,
                          zeros, N, C, V, chunk_buf, 16);
    EXPECT_TRUE(BitwiseEqual(buf.Read(dh, N * C), dh0));
    EXPECT_TRUE(BitwiseEqual(buf.Read(dwout, V * C), dwout0));
  }
}

// SparsePO's two-model output layer against ReferenceBackend's, which
// materializes every logit and sums in double: a reference with another
// hidden size, chunks that do not divide N, rows with A = 0, B = 0 and both
// 0, and the optional outputs left null.
TEST_P(CudaBackendTest, SparsePoOutputLayer) {
  const int N = 45, C = 32, RC = 48, V = 1003;
  const std::vector<float> h = RandomNormal(N * C, 11);
  const std::vector<float> wout = RandomNormal(V * C, 12, 0.5f);
  const std::vector<float> ref_h = RandomNormal(N * RC, 13);
  const std::vector<float> ref_wout = RandomNormal(V * RC, 14, 0.4f);
  const std::vector<int32_t> labels = RandomInts(N, V, 15);
  std::vector<float> coef_a = RandomNormal(N, 16);
  std::vector<float> coef_b = RandomNormal(N, 17);
  for (int n : {0, 7, 30}) coef_a[n] = 0.0f;
  for (int n : {3, 7, 31, N - 1}) coef_b[n] = 0.0f;
  coef_a[N - 1] = 0.0f;

  constexpr int kOut = 8;  // SparsePoRowStats' arrays, in its order
  std::vector<std::vector<float>> want(kOut, std::vector<float>(N));
  auto stats_of = [](std::vector<float*> p) {
    return SparsePoRowStats{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]};
  };
  std::vector<float> z(V), zr(V);
  const SparsePoOutputLayers host_layers{
      h.data(), wout.data(), C, ref_h.data(), ref_wout.data(), RC, V};
  std::vector<float*> want_ptrs;
  for (auto& w : want) want_ptrs.push_back(w.data());
  ref_.SparsePoOutputForward(host_layers, labels.data(), N, z.data(), zr.data(),
                             1, stats_of(want_ptrs));
  const std::vector<float> dh0 = RandomNormal(N * C, 18);
  const std::vector<float> dwout0 = RandomNormal(V * C, 19);
  std::vector<float> dh_want = dh0, dwout_want = dwout0;
  ref_.SparsePoOutputBackward(host_layers, labels.data(), N, want[0].data(),
                              want[1].data(), coef_a.data(), coef_b.data(),
                              z.data(), zr.data(), 1, dh_want.data(),
                              dwout_want.data());

  DeviceBuffers buf(cuda_.get());
  const SparsePoOutputLayers layers{buf.Upload(h),
                                    buf.Upload(wout),
                                    C,
                                    buf.Upload(ref_h),
                                    buf.Upload(ref_wout),
                                    RC,
                                    V};
  float* d_a = buf.Upload(coef_a);
  float* d_b = buf.Upload(coef_b);
  for (int chunk : {1, 16, 64}) {
    SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
    float* chunk_buf = buf.Unwritten(static_cast<size_t>(chunk) * V);
    float* ref_chunk_buf = buf.Unwritten(static_cast<size_t>(chunk) * V);
    std::vector<float*> out;
    for (int i = 0; i < kOut; ++i) out.push_back(buf.Unwritten(N));
    cuda_->SparsePoOutputForward(layers, labels.data(), N, chunk_buf,
                                 ref_chunk_buf, chunk, stats_of(out));
    for (int i = 0; i < kOut; ++i) {
      EXPECT_LE(ErrorVsScale(buf.Read(out[i], N), want[i]), ForwardTol())
          << "SparsePoRowStats member " << i;
    }
    // The optional sums left out: the rest is the same, bit for bit.
    std::vector<float*> some = out;
    for (int i = 0; i < kOut; ++i) some[i] = buf.Unwritten(N);
    some[5] = some[6] = some[7] = nullptr;
    cuda_->SparsePoOutputForward(layers, labels.data(), N, chunk_buf,
                                 ref_chunk_buf, chunk, stats_of(some));
    for (int i = 0; i < 5; ++i) {
      EXPECT_TRUE(BitwiseEqual(buf.Read(some[i], N), buf.Read(out[i], N)))
          << "member " << i;
    }

    // The backward from the reference's lse, as the OutputLayer test.
    float* lse = buf.Upload(want[0]);
    float* ref_lse = buf.Upload(want[1]);
    float* dh = buf.Upload(dh0);
    float* dwout = buf.Upload(dwout0);
    cuda_->SparsePoOutputBackward(layers, labels.data(), N, lse, ref_lse, d_a,
                                  d_b, chunk_buf, ref_chunk_buf, chunk, dh,
                                  dwout);
    const std::vector<float> dh_cuda = buf.Read(dh, N * C);
    const std::vector<float> dwout_cuda = buf.Read(dwout, V * C);
    EXPECT_LE(GradError(dh_cuda, dh_want, dh0), GradTol());
    EXPECT_LE(GradError(dwout_cuda, dwout_want, dwout0), GradTol());
    float* dwout_only = buf.Upload(dwout0);
    cuda_->SparsePoOutputBackward(layers, labels.data(), N, lse, ref_lse, d_a,
                                  d_b, chunk_buf, ref_chunk_buf, chunk, nullptr,
                                  dwout_only);
    EXPECT_TRUE(BitwiseEqual(buf.Read(dwout_only, V * C), dwout_cuda));
    ExpectDeterministic(cuda_.get(), {dh0, dwout0}, [&](const auto& o) {
      cuda_->SparsePoOutputBackward(layers, labels.data(), N, lse, ref_lse, d_a,
                                    d_b, chunk_buf, ref_chunk_buf, chunk, o[0],
                                    o[1]);
    });
  }
}

// A LoRA policy is its own reference: both layers read the same output
// embedding (rounded to bf16 once), with different hidden rows.
TEST_P(CudaBackendTest, SparsePoOutputLayerWithASharedEmbedding) {
  const int N = 20, C = 32, V = 515;
  const std::vector<float> h = RandomNormal(N * C, 41);
  const std::vector<float> ref_h = RandomNormal(N * C, 42);
  const std::vector<float> wout = RandomNormal(V * C, 43, 0.5f);
  const std::vector<int32_t> labels = RandomInts(N, V, 44);
  std::vector<std::vector<float>> want(8, std::vector<float>(N));
  std::vector<float> z(V), zr(V);
  ref_.SparsePoOutputForward(
      {h.data(), wout.data(), C, ref_h.data(), wout.data(), C, V},
      labels.data(), N, z.data(), zr.data(), 1,
      {want[0].data(), want[1].data(), want[2].data(), want[3].data(),
       want[4].data(), want[5].data(), want[6].data(), want[7].data()});
  DeviceBuffers buf(cuda_.get());
  float* d_wout = buf.Upload(wout);
  std::vector<float*> out;
  for (int i = 0; i < 8; ++i) out.push_back(buf.Unwritten(N));
  cuda_->SparsePoOutputForward(
      {buf.Upload(h), d_wout, C, buf.Upload(ref_h), d_wout, C, V},
      labels.data(), N, buf.Unwritten(16 * V), buf.Unwritten(16 * V), 16,
      {out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]});
  for (int i = 0; i < 8; ++i) {
    EXPECT_LE(ErrorVsScale(buf.Read(out[i], N), want[i]), ForwardTol())
        << "SparsePoRowStats member " << i;
  }
}

// Rows of a wider, strided buffer (a view of some heads of qkv).
TEST_P(CudaBackendTest, RowMeans) {
  const int N = 37, width = 70, stride = 96;
  const std::vector<float> x = RandomNormal(N * stride, 21);
  std::vector<float> want(N);
  ref_.RowMeans(want.data(), x.data() + 5, N, width, stride);
  DeviceBuffers buf(cuda_.get());
  float* in = buf.Upload(x);
  float* out = buf.Unwritten(N);
  cuda_->RowMeans(out, in + 5, N, width, stride);
  EXPECT_LE(ErrorVsScale(buf.Read(out, N), want), kTol);
}

TEST_P(CudaBackendTest, CopyBetweenDeviceBuffers) {
  const std::vector<float> x = RandomNormal(1000, 20);
  DeviceBuffers buf(cuda_.get());
  float* src = buf.Upload(x);
  float* dst = buf.Unwritten(1000);
  cuda_->Copy(dst, src + 10, 990);
  const std::vector<float> got = buf.Read(dst, 990);
  EXPECT_TRUE(BitwiseEqual(got, std::vector<float>(x.begin() + 10, x.end())));
}

// torch.argmax returns the first of equal maxima; so must `correct`. Rows 5
// and 700 of wout are equal (also after rounding to bf16) and give both rows
// their largest logit.
TEST_P(CudaBackendTest, OutputArgmaxTiesGoToTheFirstIndex) {
  const int N = 2, C = 32, V = 1003;
  std::vector<float> h = RandomNormal(N * C, 1);
  std::copy(h.begin(), h.begin() + C, h.begin() + C);
  std::vector<float> wout = RandomNormal(V * C, 2, 0.01f);
  for (int c = 0; c < C; ++c) wout[5 * C + c] = wout[700 * C + c] = h[c];
  const std::vector<int32_t> labels = {5, 700};
  DeviceBuffers buf(cuda_.get());
  float* d_h = buf.Upload(h);
  float* d_wout = buf.Upload(wout);
  float* lse = buf.Unwritten(N);
  float* logp = buf.Unwritten(N);
  float* sum = buf.Unwritten(N);
  float* correct = buf.Unwritten(N);
  float* entropy = buf.Unwritten(N);
  float* chunk_buf = buf.Unwritten(2 * V);
  cuda_->OutputForward(lse, logp, sum, reinterpret_cast<int32_t*>(correct),
                       entropy, nullptr, d_h, d_wout, labels.data(), N, C, V,
                       chunk_buf, 2);
  const std::vector<float> lp = buf.Read(logp, N);
  EXPECT_EQ(lp[0], lp[1]);
  EXPECT_EQ(buf.ReadInts(correct, N), (std::vector<int32_t>{1, 0}));
}

// Backend::ObjectiveCoefficients against the host reference
// (objective_math::HostObjectiveCoefficients) for every pair loss, a weighted
// mixture with DPO's SFT term, f-DPO's scores, LD-DPO and WPO, the token
// mean, implicit-reward SFT at both granularities with every divergence,
// PRIOR, CPO with every loss, ORPO and KTO with its pre-pass: 300 pairs (more
// than the units kernel's threads), sequences of 1 to 700 rows (more than a
// block's threads) with a row between two spans that no span covers.
// Coefficients to 1e-6 relative (the same double math, summed in another
// order), metric sums to 1e-12, added to what the buffer held.
TEST_P(CudaBackendTest, ObjectiveCoefficients) {
  // No GEMM: the fp32 run covers both precisions (and the simulation's
  // time is better spent on the cases below).
  if (bf16()) GTEST_SKIP() << "precision-independent";
  const int pairs = 300, seqs = 2 * pairs;
  std::vector<SeqSpan> spans(seqs);
  const std::vector<int32_t> lengths = RandomInts(seqs, 40, 1);
  int rows = 0;
  for (int s = 0; s < seqs; ++s) {
    const int len = s == 7 ? 700 : 1 + lengths[s];
    if (s == 11) ++rows;  // a row of no span
    spans[s] = {rows, len};
    rows += len;
  }
  std::vector<float> logp = RandomNormal(rows, 3, 0.3f);
  for (float& v : logp) v = -std::fabs(v) - 0.05f;
  const std::vector<float> logit_sum = RandomNormal(rows, 4, 50.0f);
  std::vector<float> entropy = RandomNormal(rows, 5);
  for (float& v : entropy) v = std::fabs(v);
  const std::vector<int32_t> correct_ints = RandomInts(rows, 2, 6);
  std::vector<float> correct(rows);
  std::memcpy(correct.data(), correct_ints.data(), rows * sizeof(int32_t));
  // log Σ p² (WPO) below ℓ_t's scale; per-token reference log-probs near the
  // policy's, a few of them nearly 0 (PRIOR's small weights).
  std::vector<float> log_sum_sq = RandomNormal(rows, 8, 0.5f);
  for (float& v : log_sum_sq) v = -std::fabs(v) - 0.5f;
  std::vector<float> reference_tokens = RandomNormal(rows, 9, 0.4f);
  for (int r = 0; r < rows; ++r) {
    reference_tokens[r] =
        r % 7 == 2
            ? -1e-5f
            : std::min(-1e-3f, logp[r] + 0.2f - std::fabs(reference_tokens[r]));
  }
  // Reference sums near the policy's, so ratios are of order 1.
  std::vector<double> reference(seqs);
  const std::vector<float> noise = RandomNormal(seqs, 7, 2.0f);
  for (int s = 0; s < seqs; ++s) {
    double sum = 0;
    for (int r = spans[s].start; r < spans[s].start + spans[s].len; ++r) {
      sum += logp[r];
    }
    reference[s] = sum + noise[s];
  }
  // KTO's: L̃ and a label per sequence (every third undesirable).
  std::vector<double> kto_reference;
  for (int s = 0; s < seqs; ++s) {
    kto_reference.push_back(reference[s]);
    kto_reference.push_back(s % 3 == 0 ? 0.0 : 1.0);
  }
  std::vector<double> initial_metrics(kObjectiveMetricCount);
  for (int k = 0; k < kObjectiveMetricCount; ++k) initial_metrics[k] = 0.5 * k;

  std::vector<ObjectiveParams> cases;
  for (int type = 0; type <= static_cast<int>(PairLoss::kAotUnpaired); ++type) {
    ObjectiveParams p;
    p.num_terms = 1;
    p.loss[0] = static_cast<PairLoss>(type);
    p.weight[0] = 1;
    p.beta = 0.3;
    p.label_smoothing = p.loss[0] == PairLoss::kExoPair ||
                                p.loss[0] == PairLoss::kRobust ||
                                p.loss[0] == PairLoss::kSigmoid ||
                                p.loss[0] == PairLoss::kAotUnpaired
                            ? 0.1
                            : 0;
    p.denominator = 8;
    cases.push_back(p);
  }
  ObjectiveParams mixture;
  mixture.num_terms = 3;
  mixture.loss[0] = PairLoss::kSigmoid;
  mixture.loss[1] = PairLoss::kIpo;
  mixture.loss[2] = PairLoss::kBcoPair;
  mixture.weight[0] = 0.8;
  mixture.weight[1] = 0.3;
  mixture.weight[2] = 0.2;
  mixture.sft_weight = 1.5;
  mixture.pairs_per_token = 0.05;
  mixture.denominator = 5;
  cases.push_back(mixture);
  ObjectiveParams token_mean;
  token_mean.kind = ObjectiveKind::kTokenMean;
  token_mean.denominator = 1234;
  cases.push_back(token_mean);
  for (int score = 1;
       score <= static_cast<int>(ScoreDivergence::kAlphaDivergence); ++score) {
    ObjectiveParams f_dpo = mixture;
    f_dpo.score = static_cast<ScoreDivergence>(score);
    f_dpo.score_alpha = 0.3;
    f_dpo.ld_alpha = score == 2 ? 0.4 : -1;
    cases.push_back(f_dpo);
  }
  // Both sorted losses in one mixture, LD-weighted: each pair gets its share
  // of both sorts.
  ObjectiveParams sorted = mixture;
  sorted.loss[1] = PairLoss::kAot;
  sorted.loss[2] = PairLoss::kAotUnpaired;
  sorted.ld_alpha = 0.5;
  cases.push_back(sorted);
  ObjectiveParams ld_wpo = cases[0];
  ld_wpo.ld_alpha = 0.25;
  ld_wpo.use_weighting = true;
  cases.push_back(ld_wpo);
  for (ObjectiveKind kind :
       {ObjectiveKind::kImplicitSequence, ObjectiveKind::kImplicitToken}) {
    for (int d = 0; d <= static_cast<int>(ImplicitDivergence::kJensenShannon);
         ++d) {
      ObjectiveParams isft;
      isft.kind = kind;
      isft.divergence = static_cast<ImplicitDivergence>(d);
      isft.beta = kind == ObjectiveKind::kImplicitToken ? 3.0 : 0.5;
      isft.denominator = 300;
      cases.push_back(isft);
    }
  }
  for (double alpha : {1.0, 0.0, 2.5}) {
    ObjectiveParams prior;
    prior.kind = ObjectiveKind::kPrior;
    prior.prior_alpha = alpha;
    prior.denominator = 4321;
    cases.push_back(prior);
  }
  // CPO with each loss (SimPO's margin, AlphaPO's reward shape, the NLL
  // term) and ORPO, whose units are the 200 triples [chosen, rejected,
  // prompt] of the same 600 spans.
  for (int loss = 0; loss <= static_cast<int>(CpoLoss::kSimpo); ++loss) {
    ObjectiveParams cpo;
    cpo.kind = ObjectiveKind::kCpo;
    cpo.cpo_loss = static_cast<CpoLoss>(loss);
    cpo.beta = cpo.cpo_loss == CpoLoss::kSimpo ? 2.0 : 0.3;
    cpo.label_smoothing = 0.1;
    cpo.simpo_gamma = 0.7;
    cpo.reward_alpha = loss == 3 ? 0.5 : 0;
    cpo.nll_weight = loss == 1 ? 0 : 1.5;
    cpo.token_denominator = 2345;
    cpo.denominator = 9;
    cases.push_back(cpo);
  }
  ObjectiveParams orpo;
  orpo.kind = ObjectiveKind::kOrpo;
  orpo.beta = 0.2;
  orpo.token_denominator = 3456;
  orpo.denominator = 7;
  cases.push_back(orpo);
  // KTO (z₀ > 0) and APO_ZERO_UNPAIRED over 600 examples, and KTO's
  // pre-pass: `reference` then holds each sequence's L̃ and label
  // (kto_reference above).
  for (bool apo : {false, true}) {
    ObjectiveParams kto;
    kto.kind = ObjectiveKind::kKto;
    kto.beta = 0.2;
    kto.kto_apo = apo;
    kto.kto_kl = apo ? 0 : 0.8;
    kto.desirable_weight = 1.3;
    kto.undesirable_weight = 0.6;
    kto.denominator = 600;
    cases.push_back(kto);
  }
  ObjectiveParams kto_kl;
  kto_kl.kind = ObjectiveKind::kKtoKl;
  cases.push_back(kto_kl);

  for (const ObjectiveParams& params : cases) {
    SCOPED_TRACE(::testing::Message()
                 << "kind " << static_cast<int>(params.kind) << " loss "
                 << static_cast<int>(params.loss[0]) << " terms "
                 << params.num_terms << " divergence "
                 << static_cast<int>(params.divergence) << " score "
                 << static_cast<int>(params.score) << " ld " << params.ld_alpha
                 << " wpo " << params.use_weighting << " prior alpha "
                 << params.prior_alpha << " cpo loss "
                 << static_cast<int>(params.cpo_loss));
    const double* ref_values = params.kind == ObjectiveKind::kKto
                                   ? kto_reference.data()
                                   : reference.data();
    std::vector<float> want_coef(rows, std::nanf(""));
    std::vector<double> want_metrics = initial_metrics;
    ref_.ObjectiveCoefficients(
        want_coef.data(), want_metrics.data(), logp.data(), logit_sum.data(),
        correct_ints.data(), entropy.data(), log_sum_sq.data(), spans.data(),
        ref_values, reference_tokens.data(), seqs, params);
    DeviceBuffers buf(cuda_.get());
    float* d_logp = buf.Upload(logp);
    float* d_logit_sum = buf.Upload(logit_sum);
    float* d_correct = buf.Upload(correct);
    float* d_entropy = buf.Upload(entropy);
    float* d_log_sum_sq = buf.Upload(log_sum_sq);
    float* d_coef = buf.Unwritten(rows);
    std::vector<float> metric_words(2 * kObjectiveMetricCount);
    std::memcpy(metric_words.data(), initial_metrics.data(),
                kObjectiveMetricCount * sizeof(double));
    float* d_metrics = buf.Upload(metric_words);
    cuda_->ObjectiveCoefficients(
        d_coef, reinterpret_cast<double*>(d_metrics), d_logp, d_logit_sum,
        reinterpret_cast<const int32_t*>(d_correct), d_entropy, d_log_sum_sq,
        spans.data(), ref_values, reference_tokens.data(), seqs, params);
    const std::vector<float> coef = buf.Read(d_coef, rows);
    const std::vector<float> got_words =
        buf.Read(d_metrics, metric_words.size());
    std::vector<double> metrics(kObjectiveMetricCount);
    std::memcpy(metrics.data(), got_words.data(),
                kObjectiveMetricCount * sizeof(double));
    int nonzero = 0;
    for (int r = 0; r < rows; ++r) {
      if (std::isnan(want_coef[r])) {
        EXPECT_TRUE(std::isnan(coef[r])) << "row " << r << " is no span's";
        continue;
      }
      nonzero += want_coef[r] != 0;
      ASSERT_NEAR(coef[r], want_coef[r], 1e-6 * std::fabs(want_coef[r]))
          << "row " << r;
    }
    if (params.kind == ObjectiveKind::kKtoKl) {
      EXPECT_EQ(nonzero, 0) << "the pre-pass has no gradient";
    } else {
      EXPECT_GT(nonzero, rows / 4);
    }
    for (int k = 0; k < kObjectiveMetricCount; ++k) {
      EXPECT_NEAR(metrics[k], want_metrics[k],
                  1e-12 * (1.0 + std::fabs(want_metrics[k])))
          << "metric " << k;
    }
  }
}

// The learned mask network: L = 3 layers of H = 300 channels (more than a
// block's threads), rows with their own offset and scale as residual streams
// have; the parameter array's alignment gaps hold NaN, so reading one shows.
TEST_P(CudaBackendTest, SparsePoMaskNet) {
  if (bf16()) GTEST_SKIP() << "precision-independent";
  const SparsePoMaskNetShape shape{3, 300, 1e-5f};
  const int rows = 77, H = shape.hidden;
  std::vector<float> hidden = RandomNormal(shape.layers * rows * H, 31);
  const std::vector<float> row_shift = RandomNormal(shape.layers * rows, 32);
  for (size_t i = 0; i < hidden.size(); ++i) {
    hidden[i] =
        3 * row_shift[i / H] + (1.5f + 0.5f * row_shift[i / H]) * hidden[i];
  }
  std::vector<float> params(shape.params(), std::nanf(""));
  const std::vector<float> noise = RandomNormal(shape.params(), 33, 0.3f);
  for (int c = 0; c < H; ++c) {
    params[shape.ln_weight() + c] = 1 + noise[c];
    params[shape.ln_bias() + c] = noise[H + c];
    for (int l = 0; l < shape.layers; ++l) {
      params[shape.w(l) + c] = 0.5f * noise[(2 + l) * H + c];
    }
  }
  // Mixer weights of both signs, so that some masks are exactly 0.
  const float b[3] = {0.2f, -0.1f, 0.3f}, c[3] = {1.0f, -0.8f, 0.6f};
  for (int l = 0; l < shape.layers; ++l) {
    params[shape.b() + l] = b[l];
    params[shape.c() + l] = c[l];
  }
  std::vector<float> want_mask(rows);
  ref_.SparsePoMaskForward(want_mask.data(), hidden.data(), rows, params.data(),
                           shape);
  int zeros = 0;
  for (float m : want_mask) zeros += m == 0.0f;
  EXPECT_GT(zeros, 0);
  EXPECT_LT(zeros, rows);

  const std::vector<float> dmask = RandomNormal(rows, 34);
  std::vector<float> initial = RandomNormal(shape.params(), 35);
  std::vector<float> want_grads = initial;
  ref_.SparsePoMaskBackward(want_grads.data(), dmask.data(), hidden.data(),
                            rows, params.data(), shape);

  DeviceBuffers buf(cuda_.get());
  float* d_hidden = buf.Upload(hidden);
  float* d_params = buf.Upload(params);
  float* d_dmask = buf.Upload(dmask);
  float* d_mask = buf.Unwritten(rows);
  float* d_grads = buf.Upload(initial);
  cuda_->SparsePoMaskForward(d_mask, d_hidden, rows, d_params, shape);
  const std::vector<float> mask = buf.Read(d_mask, rows);
  EXPECT_LE(ErrorVsScale(mask, want_mask), kTol);
  for (int t = 0; t < rows; ++t) {
    EXPECT_EQ(mask[t] == 0.0f, want_mask[t] == 0.0f) << "row " << t;
  }
  cuda_->SparsePoMaskBackward(d_grads, d_dmask, d_hidden, rows, d_params,
                              shape);
  EXPECT_LE(GradError(buf.Read(d_grads, shape.params()), want_grads, initial),
            kTol);
  ExpectDeterministic(cuda_.get(), {std::vector<float>(rows), initial},
                      [&](const std::vector<float*>& out) {
                        cuda_->SparsePoMaskForward(out[0], d_hidden, rows,
                                                   d_params, shape);
                        cuda_->SparsePoMaskBackward(out[1], d_dmask, d_hidden,
                                                    rows, d_params, shape);
                      });
}

// MaPO's masks: spans of 1 token (no ranking), 2, 3 and 300 (more than a
// block's threads) tokens, a map that is constant over one span, an
// unselected group, and groups of one and of several maps.
TEST_P(CudaBackendTest, MapoMask) {
  if (bf16()) GTEST_SKIP() << "precision-independent";
  const std::vector<int> lengths = {5, 1, 300, 2, 40, 3};
  std::vector<SeqSpan> spans;
  int rows = 0;
  for (int len : lengths) {
    spans.push_back({rows, len});
    rows += len;
  }
  const std::vector<MapoGroup> map_groups = {
      MapoGroup::kAttn,   MapoGroup::kResid, MapoGroup::kAttn, MapoGroup::kMlp,
      MapoGroup::kLogits, MapoGroup::kResid, MapoGroup::kAttn};
  const int maps = static_cast<int>(map_groups.size());
  std::vector<float> scores = RandomNormal(maps * rows, 41, 2.0f);
  for (int t = 0; t < lengths[4]; ++t) scores[rows + spans[4].start + t] = 0.7f;
  const std::vector<MapoGroup> groups = {MapoGroup::kAttn, MapoGroup::kResid,
                                         MapoGroup::kLogits};
  std::vector<float> want(rows);
  ref_.MapoMask(want.data(), scores.data(), rows, map_groups.data(), maps,
                groups.data(), 3, spans.data(), static_cast<int>(spans.size()));
  for (int t = 0; t < lengths[1]; ++t) {
    EXPECT_EQ(want[spans[1].start + t], 1.0f) << "a single token is all ones";
  }
  DeviceBuffers buf(cuda_.get());
  float* d_scores = buf.Upload(scores);
  float* d_mask = buf.Unwritten(rows);
  cuda_->MapoMask(d_mask, d_scores, rows, map_groups.data(), maps,
                  groups.data(), 3, spans.data(),
                  static_cast<int>(spans.size()));
  EXPECT_LE(ErrorVsScale(buf.Read(d_mask, rows), want), kTol);
  ExpectDeterministic(cuda_.get(), {std::vector<float>(rows)},
                      [&](const std::vector<float*>& out) {
                        cuda_->MapoMask(out[0], d_scores, rows,
                                        map_groups.data(), maps, groups.data(),
                                        3, spans.data(),
                                        static_cast<int>(spans.size()));
                      });
}

// SparsePO's pair math over 40 pairs (one response of 300 tokens) for a
// common mask and independent masks, each masking both terms or one, with L1
// weights; metrics are added to nonzero sums.
TEST_P(CudaBackendTest, SparsePoCoefficients) {
  if (bf16()) GTEST_SKIP() << "precision-independent";
  const int pairs = 40, seqs = 2 * pairs;
  const std::vector<int32_t> lengths = RandomInts(seqs, 30, 51);
  std::vector<SeqSpan> spans;
  int rows = 0;
  for (int s = 0; s < seqs; ++s) {
    const int len = s == 5 ? 300 : 1 + lengths[s];
    spans.push_back({rows, len});
    rows += len;
  }
  std::vector<float> logp = RandomNormal(rows, 52, 0.5f);
  std::vector<float> ref_logp = RandomNormal(rows, 53, 0.5f);
  std::vector<float> kl = RandomNormal(rows, 54, 0.1f);
  for (int r = 0; r < rows; ++r) {
    logp[r] = -std::fabs(logp[r]) - 0.01f;
    ref_logp[r] = -std::fabs(ref_logp[r]) - 0.01f;
    kl[r] = -std::fabs(kl[r]);
  }
  const std::vector<float> logit_sum = RandomNormal(rows, 55, 40.0f);
  std::vector<float> entropy = RandomNormal(rows, 56);
  for (float& v : entropy) v = std::fabs(v);
  std::vector<float> mask_reward = RandomNormal(rows, 57);
  std::vector<float> mask_kl = RandomNormal(rows, 58);
  for (int r = 0; r < rows; ++r) {
    mask_reward[r] = std::max(0.0f, mask_reward[r]);
    mask_kl[r] = std::max(0.0f, mask_kl[r] + 0.3f);
  }
  std::vector<double> initial_metrics(kSparsePoMetricCount);
  for (int k = 0; k < kSparsePoMetricCount; ++k) initial_metrics[k] = 0.25 * k;

  DeviceBuffers buf(cuda_.get());
  const SparsePoRowInputs d_in{buf.Upload(logp),    buf.Upload(ref_logp),
                               buf.Upload(kl),      buf.Upload(logit_sum),
                               buf.Upload(entropy), buf.Upload(mask_reward),
                               buf.Upload(mask_kl)};
  for (bool common : {true, false}) {
    for (int masked : {0, 1, 2}) {  // both terms, the reward only, the KL only
      SparsePoParams p;
      p.beta = 0.7;
      p.l1_reward = 0.01;
      p.l1_kl = 0.03;
      p.common_mask = common;
      p.mask_on_reward = masked != 2;
      p.mask_on_kl = masked != 1;
      p.denominator = 64;
      SCOPED_TRACE(::testing::Message()
                   << "common " << common << " masked " << masked);
      const bool reads_reward = common || p.mask_on_reward;
      const bool reads_kl = !common && p.mask_on_kl;
      SparsePoRowInputs in{logp.data(),
                           ref_logp.data(),
                           kl.data(),
                           logit_sum.data(),
                           entropy.data(),
                           reads_reward ? mask_reward.data() : nullptr,
                           reads_kl ? mask_kl.data() : nullptr};
      std::vector<std::vector<float>> want(4, std::vector<float>(rows, 0.0f));
      std::vector<double> want_metrics = initial_metrics;
      ref_.SparsePoCoefficients({want[0].data(), want[1].data(),
                                 reads_reward ? want[2].data() : nullptr,
                                 reads_kl ? want[3].data() : nullptr},
                                want_metrics.data(), in, spans.data(), pairs,
                                p);

      SparsePoRowInputs dev = d_in;
      if (!reads_reward) dev.mask_reward = nullptr;
      if (!reads_kl) dev.mask_kl = nullptr;
      float* out[4];
      for (float*& o : out) o = buf.Unwritten(rows);
      std::vector<float> metric_words(2 * kSparsePoMetricCount);
      std::memcpy(metric_words.data(), initial_metrics.data(),
                  kSparsePoMetricCount * sizeof(double));
      float* d_metrics = buf.Upload(metric_words);
      cuda_->SparsePoCoefficients(
          {out[0], out[1], reads_reward ? out[2] : nullptr,
           reads_kl ? out[3] : nullptr},
          reinterpret_cast<double*>(d_metrics), dev, spans.data(), pairs, p);
      for (int k = 0; k < 4; ++k) {
        if ((k == 2 && !reads_reward) || (k == 3 && !reads_kl)) continue;
        EXPECT_LE(ErrorVsScale(buf.Read(out[k], rows), want[k]), 1e-6)
            << "output " << k;
      }
      const std::vector<float> words = buf.Read(d_metrics, metric_words.size());
      std::vector<double> metrics(kSparsePoMetricCount);
      std::memcpy(metrics.data(), words.data(),
                  kSparsePoMetricCount * sizeof(double));
      for (int k = 0; k < kSparsePoMetricCount; ++k) {
        EXPECT_NEAR(metrics[k], want_metrics[k],
                    1e-12 * (1.0 + std::fabs(want_metrics[k])))
            << "metric " << k;
      }
    }
  }
}

TEST_P(CudaBackendTest, SumSquares) {
  // Many blocks of the first pass plus a partial one.
  const size_t n = (size_t{1} << 20) + 5;
  const std::vector<float> x = RandomNormal(n, 1);
  const double expected = ref_.SumSquares(x.data(), n);
  DeviceBuffers buf(cuda_.get());
  float* d_x = buf.Upload(x);
  const double got = cuda_->SumSquares(d_x, n);
  EXPECT_NEAR(got, expected, 1e-12 * expected);
  EXPECT_EQ(cuda_->SumSquares(d_x, n), got);  // bitwise, run to run
  EXPECT_NEAR(cuda_->SumSquares(d_x, 3),
              double{x[0]} * x[0] + double{x[1]} * x[1] + double{x[2]} * x[2],
              1e-15);
  EXPECT_EQ(cuda_->SumSquares(d_x, 0), 0.0);
}

TEST_P(CudaBackendTest, AdamW) {
  const size_t n = 100003;
  const std::vector<float> p0 = RandomNormal(n, 1);
  const std::vector<float> grad = RandomNormal(n, 2, 0.1f);
  const std::vector<float> m0 = RandomNormal(n, 3, 0.01f);
  std::vector<float> v0 = RandomNormal(n, 4, 0.01f);
  for (float& x : v0) x *= x;
  const AdamWParams hp{3e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 5};
  std::vector<float> p_ref = p0, m_ref = m0, v_ref = v0;
  ref_.AdamW(p_ref.data(), grad.data(), m_ref.data(), v_ref.data(), n, hp);
  DeviceBuffers buf(cuda_.get());
  float* p = buf.Upload(p0);
  float* d_grad = buf.Upload(grad);
  float* m = buf.Upload(m0);
  float* v = buf.Upload(v0);
  cuda_->AdamW(p, d_grad, m, v, n, hp);
  const std::vector<float> p_cuda = buf.Read(p, n);
  const std::vector<float> m_cuda = buf.Read(m, n);
  const std::vector<float> v_cuda = buf.Read(v, n);
  // The kernel rounds after every operation; the host compiler fuses the
  // reference's multiply-adds (GCC's default -ffp-contract=fast), and where
  // m + (1 - beta1) (g - m) or p * decay - update cancel, that one rounding
  // is many ulp of the result. So the bound scales with the operands (the
  // old and new values), not with the result alone.
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NEAR(p_cuda[i], p_ref[i],
                1e-6 * (std::fabs(p0[i]) + std::fabs(p_ref[i])))
        << i;
    ASSERT_NEAR(m_cuda[i], m_ref[i],
                1e-6 * (std::fabs(m0[i]) + std::fabs(m_ref[i])))
        << i;
    ASSERT_NEAR(v_cuda[i], v_ref[i], 1e-6 * std::fabs(v_ref[i])) << i;
  }
  ExpectDeterministic(cuda_.get(), {p0, m0, v0}, [&](const auto& o) {
    cuda_->AdamW(o[0], d_grad, o[1], o[2], n, hp);
  });
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaBackendTest,
                         ::testing::Values(Precision::kFp32, Precision::kBf16),
                         PrecisionName);

// Expected values from torch 2.6.0 (the CPU backend test's fixture):
//   p = torch.nn.Parameter(p0); opt = torch.optim.AdamW([p], lr=1e-2,
//       betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
//   for g in grads: p.grad = g; opt.step()
TEST(CudaAdamWTest, MatchesTorchOverThreeSteps) {
  std::unique_ptr<CudaBackend> cuda = CreateOrExplain(Precision::kFp32);
  if (cuda == nullptr) GTEST_SKIP() << "no GPU";
  const std::vector<float> p0 = {0.5f,    -1.25f, 2.0f,  0.0f,
                                 3.5e-3f, -0.75f, 1e-4f, -2.5f};
  const std::vector<std::vector<float>> grads = {
      {0.1f, -0.2f, 0.3f, -0.4f, 0.5f, 1e-3f, -2.0f, 0.0f},
      {-0.05f, 0.25f, 0.3f, 0.8f, -0.5f, 2e-3f, 1.0f, 1e-6f},
      {0.2f, 0.0f, -0.1f, 0.4f, 0.05f, -3e-3f, 0.5f, -1e-6f}};
  const std::vector<float> torch_p = {
      0.47935304f,     -1.23916566f, 1.96791339f,   0.00115635945f,
      -0.00601037545f, -0.76664573f, 0.0133858845f, -2.49930763f};
  const std::vector<float> torch_m = {
      0.0236000009f,   0.00630000001f,   0.0413000025f,  0.0796000063f,
      0.000499999151f, -3.89999987e-05f, -0.0219999999f, -9.99999639e-09f};
  const std::vector<float> torch_v = {
      0.00257000024f, 0.00477375044f, 0.00883625075f, 0.0456200056f,
      0.0232812483f,  6.8512503e-07f, 0.240499988f,   9.74999974e-14f};
  DeviceBuffers buf(cuda.get());
  float* p = buf.Upload(p0);
  float* m = buf.Upload(std::vector<float>(8, 0.0f));
  float* v = buf.Upload(std::vector<float>(8, 0.0f));
  for (int step = 1; step <= 3; ++step) {
    float* g = buf.Upload(grads[step - 1]);
    cuda->AdamW(p, g, m, v, 8,
                AdamWParams{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step});
  }
  const std::vector<float> p_got = buf.Read(p, 8), m_got = buf.Read(m, 8),
                           v_got = buf.Read(v, 8);
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(p_got[i], torch_p[i], 2e-6 * std::fabs(torch_p[i]) + 1e-9)
        << "p[" << i << "]";
    EXPECT_NEAR(m_got[i], torch_m[i], 2e-6 * std::fabs(torch_m[i]))
        << "m[" << i << "]";
    EXPECT_NEAR(v_got[i], torch_v[i], 2e-6 * std::fabs(torch_v[i]))
        << "v[" << i << "]";
  }
}

}  // namespace
}  // namespace prefopt::kernels
