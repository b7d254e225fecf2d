// CpuBackend against ReferenceBackend on random inputs (forward and backward),
// run-to-run determinism, and AdamW against values from torch.optim.AdamW.
//
// Parity tolerance: max |fast - reference| <= tol * max |reference| per output
// tensor, tol = 1e-5 unless a test says otherwise; for a Backward, over the
// part it added to the (random) initial gradient. Integer outputs (argmax
// hits) must match exactly.
#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
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

constexpr double kTol = 1e-5;

// Error of an accumulating op's contribution (after - initial) against the
// reference's, so that the initial values do not dilute the comparison.
double GradError(const std::vector<float>& cpu, const std::vector<float>& ref,
                 const std::vector<float>& initial) {
  return ErrorVsScale(Delta(cpu, initial), Delta(ref, initial));
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs op twice on identical copies of `initial` (its outputs, accumulated
// into or overwritten) and expects bitwise-identical results.
void ExpectDeterministic(
    const std::vector<std::vector<float>>& initial,
    const std::function<void(std::vector<std::vector<float>>*)>& op) {
  std::vector<std::vector<float>> first = initial, second = initial;
  op(&first);
  op(&second);
  for (size_t i = 0; i < initial.size(); ++i) {
    EXPECT_TRUE(BitwiseEqual(first[i], second[i])) << "output " << i;
  }
}

// Parameter: the OpenMP thread count, 1 (every op on the calling thread) and
// 3 (uneven slices of every split), whatever the machine has.
class CpuBackendTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    saved_threads_ = omp_get_max_threads();
    omp_set_num_threads(GetParam());
  }
  void TearDown() override { omp_set_num_threads(saved_threads_); }

  ReferenceBackend ref_;
  CpuBackend cpu_;
  int saved_threads_ = 1;
};

TEST_P(CpuBackendTest, MemoryOps) {
  const size_t n = 100003;  // large enough for the parallel copy
  float* p = cpu_.Alloc(n);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  const std::vector<float> src = RandomNormal(n, 1);
  cpu_.CopyToDevice(p, src.data(), n);
  std::vector<float> back(n);
  cpu_.CopyToHost(back.data(), p, n);
  EXPECT_TRUE(BitwiseEqual(back, src));
  float* q = cpu_.Alloc(n);
  cpu_.Copy(q, p, n);
  cpu_.CopyToHost(back.data(), q, n);
  EXPECT_TRUE(BitwiseEqual(back, src));
  cpu_.Zero(p, n);
  cpu_.CopyToHost(back.data(), p, n);
  EXPECT_TRUE(BitwiseEqual(back, std::vector<float>(n, 0.0f)));
  cpu_.Free(q);
  cpu_.Free(p);
}

TEST_P(CpuBackendTest, RowMeans) {
  const int N = 301, width = 70, stride = 96;
  const std::vector<float> x = RandomNormal(N * stride, 30);
  std::vector<float> want(N), got(N);
  ref_.RowMeans(want.data(), x.data() + 5, N, width, stride);
  cpu_.RowMeans(got.data(), x.data() + 5, N, width, stride);
  EXPECT_TRUE(BitwiseEqual(got, want));
  // Row 0 by hand.
  double sum = 0;
  for (int c = 0; c < width; ++c) sum += x[5 + c];
  EXPECT_FLOAT_EQ(want[0], static_cast<float>(sum / width));
}

// SparsePO's two-model output layer: the fused CPU kernels
// (fused_sparsepo.h, tested against a double-precision materialization in
// fused_sparsepo_test) against ReferenceBackend's, which the CUDA backend's
// tests take as the reference.
TEST_P(CpuBackendTest, SparsePoOutputLayer) {
  const int N = 37, C = 24, RC = 40, V = 517, chunk = 8;
  const std::vector<float> h = RandomNormal(N * C, 31);
  const std::vector<float> wout = RandomNormal(V * C, 32, 0.5f);
  const std::vector<float> ref_h = RandomNormal(N * RC, 33);
  const std::vector<float> ref_wout = RandomNormal(V * RC, 34, 0.4f);
  const std::vector<int32_t> labels = RandomInts(N, V, 35);
  std::vector<float> coef_a = RandomNormal(N, 36);
  std::vector<float> coef_b = RandomNormal(N, 37);
  coef_a[5] = coef_b[5] = coef_b[9] = 0.0f;
  const SparsePoOutputLayers layers{
      h.data(), wout.data(), C, ref_h.data(), ref_wout.data(), RC, V};
  std::vector<std::vector<float>> want(8, std::vector<float>(N)),
      got(8, std::vector<float>(N));
  auto stats_of = [](std::vector<std::vector<float>>& v) {
    return SparsePoRowStats{v[0].data(), v[1].data(), v[2].data(), v[3].data(),
                            v[4].data(), v[5].data(), v[6].data(), v[7].data()};
  };
  std::vector<float> buf(chunk * V), ref_buf(chunk * V);
  ref_.SparsePoOutputForward(layers, labels.data(), N, buf.data(),
                             ref_buf.data(), 1, stats_of(want));
  cpu_.SparsePoOutputForward(layers, labels.data(), N, buf.data(),
                             ref_buf.data(), chunk, stats_of(got));
  for (int i = 0; i < 8; ++i) {
    EXPECT_LE(ErrorVsScale(got[i], want[i]), kTol) << "member " << i;
  }
  const std::vector<float> dh0 = RandomNormal(N * C, 38);
  const std::vector<float> dwout0 = RandomNormal(V * C, 39);
  std::vector<float> dh_want = dh0, dwout_want = dwout0, dh = dh0,
                     dwout = dwout0;
  ref_.SparsePoOutputBackward(layers, labels.data(), N, want[0].data(),
                              want[1].data(), coef_a.data(), coef_b.data(),
                              buf.data(), ref_buf.data(), 1, dh_want.data(),
                              dwout_want.data());
  cpu_.SparsePoOutputBackward(layers, labels.data(), N, want[0].data(),
                              want[1].data(), coef_a.data(), coef_b.data(),
                              buf.data(), ref_buf.data(), chunk, dh.data(),
                              dwout.data());
  EXPECT_LE(ErrorVsScale(Delta(dh, dh0), Delta(dh_want, dh0)), kTol);
  EXPECT_LE(ErrorVsScale(Delta(dwout, dwout0), Delta(dwout_want, dwout0)),
            kTol);
}

TEST_P(CpuBackendTest, Embedding) {
  // 300 x 200 floats takes the multi-threaded path; 300 rows over 50 ids and
  // 64 positions repeat both.
  const int N = 300, C = 200, V = 50, T = 64;
  const std::vector<int32_t> ids = RandomInts(N, V, 1);
  const std::vector<int32_t> pos = RandomInts(N, T, 2);
  const std::vector<float> wte = RandomNormal(V * C, 3);
  const std::vector<float> wpe = RandomNormal(T * C, 4);
  for (const float* wpe_ptr :
       {wpe.data(), static_cast<const float*>(nullptr)}) {
    std::vector<float> out_ref(N * C), out_cpu(N * C);
    ref_.EmbeddingForward(out_ref.data(), ids.data(), pos.data(), wte.data(),
                          wpe_ptr, N, C);
    cpu_.EmbeddingForward(out_cpu.data(), ids.data(), pos.data(), wte.data(),
                          wpe_ptr, N, C);
    EXPECT_LE(ErrorVsScale(out_cpu, out_ref), kTol);
  }
  const std::vector<float> dout = RandomNormal(N * C, 5);
  const std::vector<float> dwte0 = RandomNormal(V * C, 6);
  const std::vector<float> dwpe0 = RandomNormal(T * C, 7);
  std::vector<float> dwte_ref = dwte0, dwpe_ref = dwpe0;
  std::vector<float> dwte_cpu = dwte0, dwpe_cpu = dwpe0;
  ref_.EmbeddingBackward(dwte_ref.data(), dwpe_ref.data(), dout.data(),
                         ids.data(), pos.data(), N, C);
  cpu_.EmbeddingBackward(dwte_cpu.data(), dwpe_cpu.data(), dout.data(),
                         ids.data(), pos.data(), N, C);
  EXPECT_LE(GradError(dwte_cpu, dwte_ref, dwte0), kTol);
  EXPECT_LE(GradError(dwpe_cpu, dwpe_ref, dwpe0), kTol);
  // Null wpe gradient: dwte alone.
  std::vector<float> dwte_only = dwte0;
  cpu_.EmbeddingBackward(dwte_only.data(), nullptr, dout.data(), ids.data(),
                         nullptr, N, C);
  EXPECT_TRUE(BitwiseEqual(dwte_only, dwte_cpu));

  ExpectDeterministic({std::vector<float>(N * C)}, [&](auto* o) {
    cpu_.EmbeddingForward((*o)[0].data(), ids.data(), pos.data(), wte.data(),
                          wpe.data(), N, C);
  });
  ExpectDeterministic({dwte0, dwpe0}, [&](auto* o) {
    cpu_.EmbeddingBackward((*o)[0].data(), (*o)[1].data(), dout.data(),
                           ids.data(), pos.data(), N, C);
  });
}

TEST_P(CpuBackendTest, LayerNorm) {
  const int N = 256, C = 300;
  const float eps = 1e-5f;
  std::vector<float> inp = RandomNormal(N * C, 1, 2.0f);
  for (float& x : inp) x += 1.0f;
  const std::vector<float> weight = RandomNormal(C, 2);
  const std::vector<float> bias = RandomNormal(C, 3);
  for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
    std::vector<float> out_ref(N * C), mean_ref(N), rstd_ref(N);
    std::vector<float> out_cpu(N * C), mean_cpu(N), rstd_cpu(N);
    ref_.LayerNormForward(out_ref.data(), mean_ref.data(), rstd_ref.data(),
                          inp.data(), weight.data(), b, N, C, eps);
    cpu_.LayerNormForward(out_cpu.data(), mean_cpu.data(), rstd_cpu.data(),
                          inp.data(), weight.data(), b, N, C, eps);
    EXPECT_LE(ErrorVsScale(out_cpu, out_ref), kTol);
    EXPECT_LE(ErrorVsScale(mean_cpu, mean_ref), kTol);
    EXPECT_LE(ErrorVsScale(rstd_cpu, rstd_ref), kTol);
  }
  std::vector<float> out(N * C), mean(N), rstd(N);
  ref_.LayerNormForward(out.data(), mean.data(), rstd.data(), inp.data(),
                        weight.data(), bias.data(), N, C, eps);
  const std::vector<float> dout = RandomNormal(N * C, 4);
  const std::vector<float> dinp0 = RandomNormal(N * C, 5);
  const std::vector<float> dweight0 = RandomNormal(C, 6);
  const std::vector<float> dbias0 = RandomNormal(C, 7);
  std::vector<float> dinp_ref = dinp0, dweight_ref = dweight0,
                     dbias_ref = dbias0;
  std::vector<float> dinp_cpu = dinp0, dweight_cpu = dweight0,
                     dbias_cpu = dbias0;
  ref_.LayerNormBackward(dinp_ref.data(), dweight_ref.data(), dbias_ref.data(),
                         dout.data(), inp.data(), weight.data(), mean.data(),
                         rstd.data(), N, C);
  cpu_.LayerNormBackward(dinp_cpu.data(), dweight_cpu.data(), dbias_cpu.data(),
                         dout.data(), inp.data(), weight.data(), mean.data(),
                         rstd.data(), N, C);
  EXPECT_LE(GradError(dinp_cpu, dinp_ref, dinp0), kTol);
  EXPECT_LE(GradError(dweight_cpu, dweight_ref, dweight0), kTol);
  EXPECT_LE(GradError(dbias_cpu, dbias_ref, dbias0), kTol);
  // Parameter gradients only (dinp null), and dinp only.
  std::vector<float> dweight_only = dweight0, dbias_only = dbias0;
  cpu_.LayerNormBackward(nullptr, dweight_only.data(), dbias_only.data(),
                         dout.data(), inp.data(), weight.data(), mean.data(),
                         rstd.data(), N, C);
  EXPECT_TRUE(BitwiseEqual(dweight_only, dweight_cpu));
  EXPECT_TRUE(BitwiseEqual(dbias_only, dbias_cpu));
  std::vector<float> dinp_only = dinp0;
  cpu_.LayerNormBackward(dinp_only.data(), nullptr, nullptr, dout.data(),
                         inp.data(), weight.data(), mean.data(), rstd.data(), N,
                         C);
  EXPECT_TRUE(BitwiseEqual(dinp_only, dinp_cpu));

  ExpectDeterministic(
      {std::vector<float>(N * C), std::vector<float>(N), std::vector<float>(N)},
      [&](auto* o) {
        cpu_.LayerNormForward((*o)[0].data(), (*o)[1].data(), (*o)[2].data(),
                              inp.data(), weight.data(), bias.data(), N, C,
                              eps);
      });
  ExpectDeterministic({dinp0, dweight0, dbias0}, [&](auto* o) {
    cpu_.LayerNormBackward((*o)[0].data(), (*o)[1].data(), (*o)[2].data(),
                           dout.data(), inp.data(), weight.data(), mean.data(),
                           rstd.data(), N, C);
  });
}

TEST_P(CpuBackendTest, RmsNorm) {
  const int N = 256, C = 300;
  const float eps = 1e-6f;
  std::vector<float> inp = RandomNormal(N * C, 1, 2.0f);
  for (float& x : inp) x += 1.0f;
  const std::vector<float> weight = RandomNormal(C, 2);
  std::vector<float> out_ref(N * C), rstd_ref(N);
  std::vector<float> out_cpu(N * C, NAN), rstd_cpu(N, NAN);
  ref_.RmsNormForward(out_ref.data(), rstd_ref.data(), inp.data(),
                      weight.data(), N, C, eps);
  cpu_.RmsNormForward(out_cpu.data(), rstd_cpu.data(), inp.data(),
                      weight.data(), N, C, eps);
  EXPECT_LE(ErrorVsScale(out_cpu, out_ref), kTol);
  EXPECT_LE(ErrorVsScale(rstd_cpu, rstd_ref), kTol);

  const std::vector<float> dout = RandomNormal(N * C, 4);
  const std::vector<float> dinp0 = RandomNormal(N * C, 5);
  const std::vector<float> dweight0 = RandomNormal(C, 6);
  std::vector<float> dinp_ref = dinp0, dweight_ref = dweight0;
  std::vector<float> dinp_cpu = dinp0, dweight_cpu = dweight0;
  ref_.RmsNormBackward(dinp_ref.data(), dweight_ref.data(), dout.data(),
                       inp.data(), weight.data(), rstd_ref.data(), N, C);
  cpu_.RmsNormBackward(dinp_cpu.data(), dweight_cpu.data(), dout.data(),
                       inp.data(), weight.data(), rstd_ref.data(), N, C);
  EXPECT_LE(GradError(dinp_cpu, dinp_ref, dinp0), kTol);
  EXPECT_LE(GradError(dweight_cpu, dweight_ref, dweight0), kTol);
  // Each gradient alone.
  std::vector<float> dinp_only = dinp0, dweight_only = dweight0;
  cpu_.RmsNormBackward(dinp_only.data(), nullptr, dout.data(), inp.data(),
                       weight.data(), rstd_ref.data(), N, C);
  cpu_.RmsNormBackward(nullptr, dweight_only.data(), dout.data(), inp.data(),
                       weight.data(), rstd_ref.data(), N, C);
  EXPECT_TRUE(BitwiseEqual(dinp_only, dinp_cpu));
  EXPECT_TRUE(BitwiseEqual(dweight_only, dweight_cpu));

  ExpectDeterministic(
      {std::vector<float>(N * C), std::vector<float>(N)}, [&](auto* o) {
        cpu_.RmsNormForward((*o)[0].data(), (*o)[1].data(), inp.data(),
                            weight.data(), N, C, eps);
      });
  ExpectDeterministic({dinp0, dweight0}, [&](auto* o) {
    cpu_.RmsNormBackward((*o)[0].data(), (*o)[1].data(), dout.data(),
                         inp.data(), weight.data(), rstd_ref.data(), N, C);
  });
}

TEST_P(CpuBackendTest, Matmul) {
  // 1.35M multiply-adds: above the threshold for splitting GEMMs.
  const int N = 150, C = 100, OC = 90;
  const std::vector<float> inp = RandomNormal(N * C, 1);
  const std::vector<float> weight = RandomNormal(OC * C, 2);
  const std::vector<float> bias = RandomNormal(OC, 3);
  for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
    std::vector<float> out_ref(N * OC), out_cpu(N * OC, 123.0f);
    ref_.MatmulForward(out_ref.data(), inp.data(), weight.data(), b, N, C, OC);
    cpu_.MatmulForward(out_cpu.data(), inp.data(), weight.data(), b, N, C, OC);
    EXPECT_LE(ErrorVsScale(out_cpu, out_ref), kTol);
  }
  const std::vector<float> dout = RandomNormal(N * OC, 4);
  const std::vector<float> dinp0 = RandomNormal(N * C, 5);
  const std::vector<float> dweight0 = RandomNormal(OC * C, 6);
  const std::vector<float> dbias0 = RandomNormal(OC, 7);
  std::vector<float> dinp_ref = dinp0, dweight_ref = dweight0,
                     dbias_ref = dbias0;
  std::vector<float> dinp_cpu = dinp0, dweight_cpu = dweight0,
                     dbias_cpu = dbias0;
  ref_.MatmulBackward(dinp_ref.data(), dweight_ref.data(), dbias_ref.data(),
                      dout.data(), inp.data(), weight.data(), N, C, OC);
  cpu_.MatmulBackward(dinp_cpu.data(), dweight_cpu.data(), dbias_cpu.data(),
                      dout.data(), inp.data(), weight.data(), N, C, OC);
  EXPECT_LE(GradError(dinp_cpu, dinp_ref, dinp0), kTol);
  EXPECT_LE(GradError(dweight_cpu, dweight_ref, dweight0), kTol);
  EXPECT_LE(GradError(dbias_cpu, dbias_ref, dbias0), kTol);
  // Each gradient alone.
  std::vector<float> dinp_only = dinp0, dweight_only = dweight0,
                     dbias_only = dbias0;
  cpu_.MatmulBackward(dinp_only.data(), nullptr, nullptr, dout.data(),
                      inp.data(), weight.data(), N, C, OC);
  cpu_.MatmulBackward(nullptr, dweight_only.data(), nullptr, dout.data(),
                      inp.data(), weight.data(), N, C, OC);
  cpu_.MatmulBackward(nullptr, nullptr, dbias_only.data(), dout.data(),
                      inp.data(), weight.data(), N, C, OC);
  EXPECT_TRUE(BitwiseEqual(dinp_only, dinp_cpu));
  EXPECT_TRUE(BitwiseEqual(dweight_only, dweight_cpu));
  EXPECT_TRUE(BitwiseEqual(dbias_only, dbias_cpu));

  ExpectDeterministic({std::vector<float>(N * OC)}, [&](auto* o) {
    cpu_.MatmulForward((*o)[0].data(), inp.data(), weight.data(), bias.data(),
                       N, C, OC);
  });
  ExpectDeterministic({dinp0, dweight0, dbias0}, [&](auto* o) {
    cpu_.MatmulBackward((*o)[0].data(), (*o)[1].data(), (*o)[2].data(),
                        dout.data(), inp.data(), weight.data(), N, C, OC);
  });
}

TEST_P(CpuBackendTest, Gelu) {
  // Odd length: the parallel slices and a partial last vector.
  const size_t n = 100003;
  std::vector<float> inp = RandomNormal(n, 1, 3.0f);
  inp[0] = -30.0f;  // tanh saturates at -1: 0.5 x (1 + tanh) is 0 or tiny
  inp[1] = 30.0f;
  inp[2] = 0.0f;
  std::vector<float> out_ref(n), out_cpu(n);
  ref_.GeluForward(out_ref.data(), inp.data(), n);
  cpu_.GeluForward(out_cpu.data(), inp.data(), n);
  EXPECT_LE(ErrorVsScale(out_cpu, out_ref), kTol);
  // Elementwise, not only against the largest value: 2e-6 relative to
  // max(|gelu(x)|, 1e-3).
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NEAR(out_cpu[i], out_ref[i],
                2e-6 * std::max(1e-3, std::fabs(double{out_ref[i]})))
        << "x = " << inp[i];
  }
  const std::vector<float> dout = RandomNormal(n, 2);
  const std::vector<float> dinp0 = RandomNormal(n, 3);
  std::vector<float> dinp_ref = dinp0, dinp_cpu = dinp0;
  ref_.GeluBackward(dinp_ref.data(), inp.data(), dout.data(), n);
  cpu_.GeluBackward(dinp_cpu.data(), inp.data(), dout.data(), n);
  EXPECT_LE(GradError(dinp_cpu, dinp_ref, dinp0), kTol);

  ExpectDeterministic({std::vector<float>(n)}, [&](auto* o) {
    cpu_.GeluForward((*o)[0].data(), inp.data(), n);
  });
  ExpectDeterministic({dinp0}, [&](auto* o) {
    cpu_.GeluBackward((*o)[0].data(), inp.data(), dout.data(), n);
  });
}

TEST_P(CpuBackendTest, SwiGlu) {
  // FF = 1003: the parallel path and a partial last vector per row.
  const int N = 70, FF = 1003;
  std::vector<float> gate_up = RandomNormal(N * 2 * FF, 1, 3.0f);
  // Saturated gates: sigmoid is 0 (exp overflows) or 1.
  gate_up[0] = -100.0f;
  gate_up[1] = 100.0f;
  gate_up[2] = 0.0f;
  std::vector<float> out_ref(N * FF), out_cpu(N * FF, NAN);
  ref_.SwiGluForward(out_ref.data(), gate_up.data(), N, FF);
  cpu_.SwiGluForward(out_cpu.data(), gate_up.data(), N, FF);
  EXPECT_LE(ErrorVsScale(out_cpu, out_ref), kTol);
  EXPECT_EQ(out_cpu[0], 0.0f);
  EXPECT_EQ(out_cpu[1], out_ref[1]);

  const std::vector<float> dout = RandomNormal(N * FF, 2);
  const std::vector<float> dgate_up0 = RandomNormal(N * 2 * FF, 3);
  std::vector<float> dref = dgate_up0, dcpu = dgate_up0;
  ref_.SwiGluBackward(dref.data(), gate_up.data(), dout.data(), N, FF);
  cpu_.SwiGluBackward(dcpu.data(), gate_up.data(), dout.data(), N, FF);
  EXPECT_LE(GradError(dcpu, dref, dgate_up0), kTol);

  ExpectDeterministic({std::vector<float>(N * FF)}, [&](auto* o) {
    cpu_.SwiGluForward((*o)[0].data(), gate_up.data(), N, FF);
  });
  ExpectDeterministic({dgate_up0}, [&](auto* o) {
    cpu_.SwiGluBackward((*o)[0].data(), gate_up.data(), dout.data(), N, FF);
  });
}

TEST_P(CpuBackendTest, Rope) {
  // GQA 3:1, 200 rows: the parallel path.
  const int N = 200, NH = 6, NKV = 2, hs = 64, max_pos = 50;
  const int row = (NH + 2 * NKV) * hs;
  const std::vector<int32_t> pos = RandomInts(N, max_pos, 1);
  const std::vector<float> angle = RandomNormal(max_pos * hs / 2, 2, 3.0f);
  std::vector<float> cos(angle.size()), sin(angle.size());
  for (size_t i = 0; i < angle.size(); ++i) {
    cos[i] = std::cos(angle[i]);
    sin[i] = std::sin(angle[i]);
  }
  const std::vector<float> qkv = RandomNormal(N * row, 3);
  std::vector<float> ref = qkv, cpu = qkv;
  ref_.RopeForward(ref.data(), pos.data(), cos.data(), sin.data(), N, NH, NKV,
                   hs);
  cpu_.RopeForward(cpu.data(), pos.data(), cos.data(), sin.data(), N, NH, NKV,
                   hs);
  EXPECT_LE(ErrorVsScale(cpu, ref), kTol);
  // Value heads are not touched.
  for (int n = 0; n < N; ++n) {
    for (int c = (NH + NKV) * hs; c < row; ++c) {
      ASSERT_EQ(cpu[n * row + c], qkv[n * row + c]) << n << " " << c;
    }
  }
  // Backward (rotation by -theta) undoes forward: R(-t) R(t) = I.
  cpu_.RopeBackward(cpu.data(), pos.data(), cos.data(), sin.data(), N, NH, NKV,
                    hs);
  EXPECT_LE(ErrorVsScale(cpu, qkv), 1e-6);
  std::vector<float> back_ref = ref;
  ref_.RopeBackward(back_ref.data(), pos.data(), cos.data(), sin.data(), N, NH,
                    NKV, hs);
  EXPECT_LE(ErrorVsScale(back_ref, qkv), 1e-6);

  ExpectDeterministic({qkv}, [&](auto* o) {
    cpu_.RopeForward((*o)[0].data(), pos.data(), cos.data(), sin.data(), N, NH,
                     NKV, hs);
  });
  ExpectDeterministic({qkv}, [&](auto* o) {
    cpu_.RopeBackward((*o)[0].data(), pos.data(), cos.data(), sin.data(), N, NH,
                      NKV, hs);
  });
}

// transformers' rotate_half convention, on exact values: with hs = 4 the
// pairs are (x0, x2) and (x1, x3), not (x0, x1) and (x2, x3).
TEST_P(CpuBackendTest, RopePairsFirstHalfWithSecondHalf) {
  // One query head, one key head, one value head; angles 90 and 180 degrees.
  const std::vector<int32_t> pos = {1};
  const std::vector<float> cos = {1.0f, 1.0f, 0.0f, -1.0f};
  const std::vector<float> sin = {0.0f, 0.0f, 1.0f, 0.0f};
  const std::vector<float> qkv = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  // (x0, x2) = (1, 3) rotated by 90 degrees -> (-3, 1); (x1, x3) = (2, 4) by
  // 180 degrees -> (-2, -4).
  const std::vector<float> expected = {-3, -2, 1, -4, -7, -6,
                                       5,  -8, 9, 10, 11, 12};
  for (Backend* backend :
       {static_cast<Backend*>(&ref_), static_cast<Backend*>(&cpu_)}) {
    std::vector<float> x = qkv;
    backend->RopeForward(x.data(), pos.data(), cos.data(), sin.data(), 1, 1, 1,
                         4);
    EXPECT_EQ(x, expected) << backend->Name();
  }
}

TEST_P(CpuBackendTest, AddAxpyScale) {
  const size_t n = 100003;
  const std::vector<float> a = RandomNormal(n, 1);
  const std::vector<float> b = RandomNormal(n, 2);
  std::vector<float> out_ref(n), out_cpu(n);
  ref_.Add(out_ref.data(), a.data(), b.data(), n);
  cpu_.Add(out_cpu.data(), a.data(), b.data(), n);
  EXPECT_TRUE(BitwiseEqual(out_cpu, out_ref));  // one rounding either way

  std::vector<float> y_ref = a, y_cpu = a;
  ref_.Axpy(y_ref.data(), -0.37f, b.data(), n);
  cpu_.Axpy(y_cpu.data(), -0.37f, b.data(), n);
  EXPECT_LE(ErrorVsScale(y_cpu, y_ref), 1e-7);

  std::vector<float> x_ref = a, x_cpu = a;
  ref_.Scale(x_ref.data(), 1.7f, n);
  cpu_.Scale(x_cpu.data(), 1.7f, n);
  EXPECT_TRUE(BitwiseEqual(x_cpu, x_ref));

  std::vector<float> product_ref(n), product_cpu(n);
  ref_.Multiply(product_ref.data(), a.data(), b.data(), n);
  cpu_.Multiply(product_cpu.data(), a.data(), b.data(), n);
  EXPECT_TRUE(BitwiseEqual(product_cpu, product_ref));
  EXPECT_EQ(product_ref[7], a[7] * b[7]);

  ExpectDeterministic({std::vector<float>(n)}, [&](auto* o) {
    cpu_.Add((*o)[0].data(), a.data(), b.data(), n);
  });
  ExpectDeterministic(
      {a}, [&](auto* o) { cpu_.Axpy((*o)[0].data(), -0.37f, b.data(), n); });
  ExpectDeterministic({a},
                      [&](auto* o) { cpu_.Scale((*o)[0].data(), 1.7f, n); });
}

// Every bf16 bit pattern (NaNs with their payloads, infinities, signed zeros,
// subnormals) twice, plus an odd tail, so that the parallel path splits it.
std::vector<uint16_t> AllBf16Patterns() {
  std::vector<uint16_t> bits(2 * 65536 + 3);
  for (size_t i = 0; i < bits.size(); ++i) {
    bits[i] = static_cast<uint16_t>(i * 40503u);  // odd: a permutation
  }
  return bits;
}

TEST_P(CpuBackendTest, WidenBf16) {
  const std::vector<uint16_t> in = AllBf16Patterns();
  const size_t n = in.size();
  std::vector<float> out_ref(n), out_cpu(n, std::nanf(""));
  ref_.WidenBf16(out_ref.data(), in.data(), n);
  cpu_.WidenBf16(out_cpu.data(), in.data(), n);
  EXPECT_TRUE(BitwiseEqual(out_cpu, out_ref));
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &out_cpu[i], sizeof(bits));
    ASSERT_EQ(bits, static_cast<uint32_t>(in[i]) << 16) << i;
  }
  // A few by value: 1, -2, +-inf, -0, the smallest subnormal, a NaN.
  const std::vector<uint16_t> named = {0x3f80, 0xc000, 0x7f80, 0xff80,
                                       0x8000, 0x0001, 0x7fc1};
  std::vector<float> v(named.size());
  cpu_.WidenBf16(v.data(), named.data(), named.size());
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.0f);
  EXPECT_EQ(v[2], std::numeric_limits<float>::infinity());
  EXPECT_EQ(v[3], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(v[4] == 0.0f && std::signbit(v[4]));
  EXPECT_EQ(v[5], std::ldexp(1.0f, -133));
  EXPECT_TRUE(std::isnan(v[6]));
}

TEST_P(CpuBackendTest, SumSquares) {
  // Several parallel blocks plus a partial one.
  const size_t n = (size_t{1} << 18) + 5;
  const std::vector<float> x = RandomNormal(n, 1);
  const double expected = ref_.SumSquares(x.data(), n);
  const double got = cpu_.SumSquares(x.data(), n);
  EXPECT_NEAR(got, expected, 1e-12 * expected);
  EXPECT_EQ(cpu_.SumSquares(x.data(), n), got);  // bitwise, run to run
  EXPECT_EQ(cpu_.SumSquares(x.data(), 3),
            double{x[0]} * x[0] + double{x[1]} * x[1] + double{x[2]} * x[2]);
}

TEST_P(CpuBackendTest, AdamW) {
  const size_t n = 100003;
  const std::vector<float> p0 = RandomNormal(n, 1);
  const std::vector<float> grad = RandomNormal(n, 2, 0.1f);
  const std::vector<float> m0 = RandomNormal(n, 3, 0.01f);
  std::vector<float> v0 = RandomNormal(n, 4, 0.01f);
  for (float& x : v0) x *= x;
  const AdamWParams hp{3e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 5};
  std::vector<float> p_ref = p0, m_ref = m0, v_ref = v0;
  std::vector<float> p_cpu = p0, m_cpu = m0, v_cpu = v0;
  ref_.AdamW(p_ref.data(), grad.data(), m_ref.data(), v_ref.data(), n, hp);
  cpu_.AdamW(p_cpu.data(), grad.data(), m_cpu.data(), v_cpu.data(), n, hp);
  // 1e-6 relative to each element: only fused multiply-adds differ.
  for (size_t i = 0; i < n; ++i) {
    ASSERT_NEAR(p_cpu[i], p_ref[i], 1e-6 * std::fabs(p_ref[i])) << i;
    ASSERT_NEAR(m_cpu[i], m_ref[i], 1e-6 * std::fabs(m_ref[i])) << i;
    ASSERT_NEAR(v_cpu[i], v_ref[i], 1e-6 * std::fabs(v_ref[i])) << i;
  }
  ExpectDeterministic({p0, m0, v0}, [&](auto* o) {
    cpu_.AdamW((*o)[0].data(), grad.data(), (*o)[1].data(), (*o)[2].data(), n,
               hp);
  });
}

// Expected values from torch 2.6.0:
//   p = torch.nn.Parameter(p0); opt = torch.optim.AdamW([p], lr=1e-2,
//       betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
//   for g in grads: p.grad = g; opt.step()
// then p, exp_avg, exp_avg_sq printed with %.9g.
TEST(AdamWTest, MatchesTorchOverThreeSteps) {
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
  ReferenceBackend ref;
  CpuBackend cpu;
  for (Backend* backend :
       {static_cast<Backend*>(&ref), static_cast<Backend*>(&cpu)}) {
    std::vector<float> p = p0, m(8, 0.0f), v(8, 0.0f);
    for (int step = 1; step <= 3; ++step) {
      const AdamWParams hp{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step};
      backend->AdamW(p.data(), grads[step - 1].data(), m.data(), v.data(), 8,
                     hp);
    }
    // fp32 hyper-parameters (0.9f is not 0.9) and fused multiply-adds move
    // the result by a few ulp from torch's.
    for (int i = 0; i < 8; ++i) {
      EXPECT_NEAR(p[i], torch_p[i], 2e-6 * std::fabs(torch_p[i]) + 1e-9)
          << backend->Name() << " p[" << i << "]";
      EXPECT_NEAR(m[i], torch_m[i], 2e-6 * std::fabs(torch_m[i]))
          << backend->Name() << " m[" << i << "]";
      EXPECT_NEAR(v[i], torch_v[i], 2e-6 * std::fabs(torch_v[i]))
          << backend->Name() << " v[" << i << "]";
    }
  }
}

struct AttentionCase {
  std::vector<SeqSpan> spans;
  int NH, NKV, hs;
};

// The causal attention's per-row logsumexp of scale * q . k, in double,
// laid out lse[n * NH + h] as CpuBackend saves it.
std::vector<double> AttentionLogSumExp(const std::vector<float>& qkv,
                                       const AttentionCase& tc) {
  const int row = (tc.NH + 2 * tc.NKV) * tc.hs;
  const double scale = 1.0 / std::sqrt(static_cast<double>(tc.hs));
  std::vector<double> lse(
      static_cast<size_t>(tc.spans.back().start + tc.spans.back().len) * tc.NH);
  for (const SeqSpan& span : tc.spans) {
    for (int h = 0; h < tc.NH; ++h) {
      const int kv = h / (tc.NH / tc.NKV);
      std::vector<double> score(span.len);
      for (int i = 0; i < span.len; ++i) {
        const float* q = qkv.data() + (span.start + i) * row + h * tc.hs;
        double max_score = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          const float* k =
              qkv.data() + (span.start + j) * row + (tc.NH + kv) * tc.hs;
          double dot = 0.0;
          for (int d = 0; d < tc.hs; ++d) dot += double{q[d]} * k[d];
          score[j] = dot * scale;
          max_score = std::max(max_score, score[j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += std::exp(score[j] - max_score);
        lse[static_cast<size_t>(span.start + i) * tc.NH + h] =
            max_score + std::log(sum);
      }
    }
  }
  return lse;
}

// Both paths against the reference that saves the full probabilities: the
// stored one (probabilities saved, ReferenceBackend's layout) and the tiled
// one (only the logsumexp saved, probabilities recomputed block by block in
// the backward), each forced by the limit.
TEST_P(CpuBackendTest, Attention) {
  const std::vector<AttentionCase> cases = {
      // Lengths around the 64-row block, a single token, GQA 2:1.
      {{{0, 1}, {1, 64}, {65, 65}, {130, 130}, {260, 7}}, 4, 2, 16},
      // Multi-head (NKV == NH), as GPT-2.
      {{{0, 100}, {100, 37}}, 3, 3, 32},
      // GQA 4:1 (Llama/Qwen2 style), one sequence.
      {{{0, 90}}, 8, 2, 8},
      // Long sequences not a multiple of the block, GPT-2's head size, GQA.
      {{{0, 1021}, {1021, 3}, {1024, 200}}, 4, 2, 64},
      {{{0, 1000}, {1000, 129}}, 6, 3, 8},
  };
  for (const bool stored : {true, false}) {
    cpu_.set_stored_attention_limit(stored ? SIZE_MAX : 0);
    for (const AttentionCase& tc : cases) {
      SCOPED_TRACE(::testing::Message()
                   << (stored ? "stored" : "tiled") << " NH " << tc.NH << " hs "
                   << tc.hs << " N "
                   << tc.spans.back().start + tc.spans.back().len);
      const int num_seqs = static_cast<int>(tc.spans.size());
      const int N = tc.spans.back().start + tc.spans.back().len;
      const int row = (tc.NH + 2 * tc.NKV) * tc.hs;
      const int out_row = tc.NH * tc.hs;
      const std::vector<float> qkv = RandomNormal(N * row, 1);
      const size_t probs_size =
          ref_.AttentionProbsSize(tc.spans.data(), num_seqs, tc.NH);
      const size_t saved_size =
          cpu_.AttentionProbsSize(tc.spans.data(), num_seqs, tc.NH);
      ASSERT_EQ(cpu_.StoresAttentionProbs(tc.spans.data(), num_seqs, tc.NH),
                stored);
      ASSERT_EQ(saved_size,
                stored ? probs_size : static_cast<size_t>(N) * tc.NH);
      std::vector<float> out_ref(N * out_row), probs_ref(probs_size);
      // NaN-filled: every output element and every saved float must be
      // written.
      std::vector<float> out_cpu(N * out_row, NAN), saved(saved_size, NAN);
      ref_.AttentionForward(out_ref.data(), probs_ref.data(), qkv.data(),
                            tc.spans.data(), num_seqs, tc.NH, tc.NKV, tc.hs);
      cpu_.AttentionForward(out_cpu.data(), saved.data(), qkv.data(),
                            tc.spans.data(), num_seqs, tc.NH, tc.NKV, tc.hs);
      EXPECT_LE(ErrorVsScale(out_cpu, out_ref), kTol);
      if (stored) {
        EXPECT_LE(ErrorVsScale(saved, probs_ref), kTol);
      } else {
        const std::vector<double> lse_ref = AttentionLogSumExp(qkv, tc);
        double lse_error = 0.0;
        for (size_t i = 0; i < saved_size; ++i) {
          const double diff = std::fabs(saved[i] - lse_ref[i]);
          lse_error = std::isnan(diff) ? INFINITY : std::max(lse_error, diff);
        }
        // fp32 scores of size ~ 10 and fp32 sums: a few ulp of 10.
        EXPECT_LE(lse_error, 1e-5);
      }

      const std::vector<float> dout = RandomNormal(N * out_row, 2);
      const std::vector<float> dqkv0 = RandomNormal(N * row, 3);
      std::vector<float> dqkv_ref = dqkv0, dqkv_cpu = dqkv0;
      ref_.AttentionBackward(dqkv_ref.data(), dout.data(), qkv.data(),
                             out_ref.data(), probs_ref.data(), tc.spans.data(),
                             num_seqs, tc.NH, tc.NKV, tc.hs);
      cpu_.AttentionBackward(dqkv_cpu.data(), dout.data(), qkv.data(),
                             out_cpu.data(), saved.data(), tc.spans.data(),
                             num_seqs, tc.NH, tc.NKV, tc.hs);
      // dq, dk and dv of every head and row are all in dqkv.
      EXPECT_LE(GradError(dqkv_cpu, dqkv_ref, dqkv0), kTol);

      ExpectDeterministic(
          {std::vector<float>(N * out_row), std::vector<float>(saved_size)},
          [&](auto* o) {
            cpu_.AttentionForward((*o)[0].data(), (*o)[1].data(), qkv.data(),
                                  tc.spans.data(), num_seqs, tc.NH, tc.NKV,
                                  tc.hs);
          });
      ExpectDeterministic({dqkv0}, [&](auto* o) {
        cpu_.AttentionBackward((*o)[0].data(), dout.data(), qkv.data(),
                               out_cpu.data(), saved.data(), tc.spans.data(),
                               num_seqs, tc.NH, tc.NKV, tc.hs);
      });
    }
  }
}

// The rule: a batch whose probabilities (NH * sum len^2 floats) fit in the
// limit is stored, bitwise as a backend forced to store; above it, tiled.
// MaxAttentionProbsSize bounds every batch's size.
TEST_P(CpuBackendTest, AttentionPathRule) {
  const int NH = 4, NKV = 2, hs = 16;
  CpuBackend forced_stored;
  forced_stored.set_stored_attention_limit(SIZE_MAX);
  EXPECT_EQ(cpu_.stored_attention_limit(), CpuBackend::kStoredAttentionLimit);
  // 4 * (600^2 + 400^2) = 2.08M floats, under the 4M default: stored.
  const std::vector<SeqSpan> short_spans = {{0, 600}, {600, 400}};
  // 4 * 1030^2 = 4.24M floats, over it: tiled.
  const std::vector<SeqSpan> long_spans = {{0, 1030}};
  EXPECT_TRUE(cpu_.StoresAttentionProbs(short_spans.data(), 2, NH));
  EXPECT_FALSE(cpu_.StoresAttentionProbs(long_spans.data(), 1, NH));
  EXPECT_EQ(cpu_.AttentionProbsSize(long_spans.data(), 1, NH),
            size_t{1030 * 4});

  const int N = 1000, row = (NH + 2 * NKV) * hs, out_row = NH * hs;
  const std::vector<float> qkv = RandomNormal(N * row, 1);
  const std::vector<float> dout = RandomNormal(N * out_row, 2);
  std::vector<float> out(N * out_row), out_stored(N * out_row);
  std::vector<float> saved(cpu_.AttentionProbsSize(short_spans.data(), 2, NH));
  std::vector<float> saved_stored(saved.size());
  std::vector<float> dqkv(N * row, 0.0f), dqkv_stored(N * row, 0.0f);
  cpu_.AttentionForward(out.data(), saved.data(), qkv.data(),
                        short_spans.data(), 2, NH, NKV, hs);
  cpu_.AttentionBackward(dqkv.data(), dout.data(), qkv.data(), out.data(),
                         saved.data(), short_spans.data(), 2, NH, NKV, hs);
  forced_stored.AttentionForward(out_stored.data(), saved_stored.data(),
                                 qkv.data(), short_spans.data(), 2, NH, NKV,
                                 hs);
  forced_stored.AttentionBackward(dqkv_stored.data(), dout.data(), qkv.data(),
                                  out_stored.data(), saved_stored.data(),
                                  short_spans.data(), 2, NH, NKV, hs);
  EXPECT_TRUE(BitwiseEqual(out, out_stored));
  EXPECT_TRUE(BitwiseEqual(saved, saved_stored));
  EXPECT_TRUE(BitwiseEqual(dqkv, dqkv_stored));

  // Up to 8192 rows in sequences of up to 4096: the limit (a stored batch) is
  // the most; up to 64 rows of 64: the probabilities of one whole sequence;
  // up to 8192 rows with a limit of 0: the logsumexp.
  EXPECT_EQ(cpu_.MaxAttentionProbsSize(8192, 4096, NH),
            CpuBackend::kStoredAttentionLimit);
  EXPECT_EQ(cpu_.MaxAttentionProbsSize(64, 64, NH), size_t{4 * 64 * 64});
  CpuBackend tiled;
  tiled.set_stored_attention_limit(0);
  EXPECT_EQ(tiled.MaxAttentionProbsSize(8192, 4096, NH), size_t{8192 * 4});
  EXPECT_EQ(forced_stored.MaxAttentionProbsSize(8192, 4096, NH),
            size_t{4} * 4096 * 8192);
}

struct CachedAttentionCase {
  int past, n, NH, NKV, hs;
};

// Rows [past, past + n) of the whole sequence's attention, from the cache.
TEST_P(CpuBackendTest, CachedAttention) {
  const std::vector<CachedAttentionCase> cases = {
      // A prompt without cache, one decoding step, steps at the 64-row block.
      {0, 9, 4, 2, 16},  {9, 1, 4, 2, 16},  {63, 1, 3, 3, 32},
      {64, 1, 3, 3, 32}, {100, 3, 8, 2, 8}, {30, 70, 8, 1, 8},
  };
  for (const CachedAttentionCase& tc : cases) {
    SCOPED_TRACE(::testing::Message() << "past " << tc.past << " n " << tc.n
                                      << " NH " << tc.NH << " NKV " << tc.NKV);
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
    std::vector<float> out_ref(tc.n * out_row, NAN),
        out_cpu(tc.n * out_row, NAN);
    ref_.CachedAttentionForward(out_ref.data(), qkv.data(), tc.past, tc.n,
                                tc.NH, tc.NKV, tc.hs);
    cpu_.CachedAttentionForward(out_cpu.data(), qkv.data(), tc.past, tc.n,
                                tc.NH, tc.NKV, tc.hs);
    EXPECT_LE(ErrorVsScale(out_ref, expected), 1e-6);
    EXPECT_LE(ErrorVsScale(out_cpu, expected), kTol);
    ExpectDeterministic({std::vector<float>(tc.n * out_row)}, [&](auto* o) {
      cpu_.CachedAttentionForward((*o)[0].data(), qkv.data(), tc.past, tc.n,
                                  tc.NH, tc.NKV, tc.hs);
    });
  }
}

TEST_P(CpuBackendTest, OutputLayer) {
  const int N = 70, C = 32, V = 1003;
  const std::vector<float> h = RandomNormal(N * C, 1);
  const std::vector<float> wout = RandomNormal(V * C, 2, 0.5f);
  std::vector<int32_t> labels = RandomInts(N, V, 3);
  // Every third row's label is its argmax, so `correct` sees both values.
  for (int n = 0; n < N; n += 3) {
    int best = 0;
    double best_z = -1e30;
    for (int v = 0; v < V; ++v) {
      double z = 0.0;
      for (int c = 0; c < C; ++c) z += double{wout[v * C + c]} * h[n * C + c];
      if (z > best_z) best_z = z, best = v;
    }
    labels[n] = best;
  }
  // Zero coefficients: leading rows, a run longer than any chunk below,
  // scattered rows and the last row.
  std::vector<float> coef = RandomNormal(N, 4);
  for (int n : {0, 1, 2, 9, 33, 69}) coef[n] = 0.0f;
  for (int n = 40; n < 60; ++n) coef[n] = 0.0f;

  std::vector<float> lse_ref(N), logp_ref(N), sum_ref(N), entropy_ref(N),
      sq_ref(N);
  std::vector<int32_t> correct_ref(N);
  std::vector<float> ref_buf(V);
  ref_.OutputForward(lse_ref.data(), logp_ref.data(), sum_ref.data(),
                     correct_ref.data(), entropy_ref.data(), sq_ref.data(),
                     h.data(), wout.data(), labels.data(), N, C, V,
                     ref_buf.data(), 1);
  // The reference's entropy and log sum p^2 against the definitions, in
  // double from p itself, on a few rows.
  for (int n : {0, 7, N - 1}) {
    std::vector<double> z(V);
    double max_z = -1e300;
    for (int v = 0; v < V; ++v) {
      for (int c = 0; c < C; ++c)
        z[v] += double{wout[v * C + c]} * h[n * C + c];
      max_z = std::max(max_z, z[v]);
    }
    double sum_exp = 0.0;
    for (int v = 0; v < V; ++v) sum_exp += std::exp(z[v] - max_z);
    const double lse = max_z + std::log(sum_exp);
    double entropy = 0.0, sum_sq = 0.0;
    for (int v = 0; v < V; ++v) {
      const double p = std::exp(z[v] - lse);
      entropy -= p * std::log(p);
      sum_sq += p * p;
    }
    EXPECT_NEAR(entropy_ref[n], entropy, 1e-5 * std::abs(entropy)) << n;
    EXPECT_NEAR(sq_ref[n], std::log(sum_sq), 1e-5 * std::abs(std::log(sum_sq)))
        << n;
  }
  int hits = 0;
  for (int32_t c : correct_ref) hits += c;
  ASSERT_GE(hits, N / 3);
  ASSERT_LT(hits, N);
  const std::vector<float> dh0 = RandomNormal(N * C, 5);
  const std::vector<float> dwout0 = RandomNormal(V * C, 6);
  std::vector<float> dh_ref = dh0, dwout_ref = dwout0;
  ref_.OutputBackward(dh_ref.data(), dwout_ref.data(), h.data(), wout.data(),
                      labels.data(), lse_ref.data(), coef.data(), N, C, V,
                      ref_buf.data(), 1);

  for (int chunk : {1, 16, 128}) {
    SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
    std::vector<float> buf(static_cast<size_t>(chunk) * V);
    std::vector<float> lse(N), logp(N), sum(N), entropy(N), sq(N);
    std::vector<int32_t> correct(N);
    cpu_.OutputForward(lse.data(), logp.data(), sum.data(), correct.data(),
                       entropy.data(), sq.data(), h.data(), wout.data(),
                       labels.data(), N, C, V, buf.data(), chunk);
    EXPECT_LE(ErrorVsScale(lse, lse_ref), kTol);
    EXPECT_LE(ErrorVsScale(logp, logp_ref), kTol);
    EXPECT_LE(ErrorVsScale(sum, sum_ref), kTol);
    EXPECT_LE(ErrorVsScale(entropy, entropy_ref), kTol);
    EXPECT_LE(ErrorVsScale(sq, sq_ref), kTol);
    EXPECT_EQ(correct, correct_ref);
    // Without log sum p^2 the other values are the same, bit for bit.
    std::vector<float> entropy_alone(N), lse_alone(N);
    cpu_.OutputForward(lse_alone.data(), logp.data(), sum.data(),
                       correct.data(), entropy_alone.data(), nullptr, h.data(),
                       wout.data(), labels.data(), N, C, V, buf.data(), chunk);
    EXPECT_TRUE(BitwiseEqual(entropy_alone, entropy));
    EXPECT_TRUE(BitwiseEqual(lse_alone, lse));

    std::vector<float> dh = dh0, dwout = dwout0;
    cpu_.OutputBackward(dh.data(), dwout.data(), h.data(), wout.data(),
                        labels.data(), lse_ref.data(), coef.data(), N, C, V,
                        buf.data(), chunk);
    EXPECT_LE(GradError(dh, dh_ref, dh0), kTol);
    EXPECT_LE(GradError(dwout, dwout_ref, dwout0), kTol);
    // dh alone, then dwout alone.
    std::vector<float> dh_only = dh0, dwout_only = dwout0;
    cpu_.OutputBackward(dh_only.data(), nullptr, h.data(), wout.data(),
                        labels.data(), lse_ref.data(), coef.data(), N, C, V,
                        buf.data(), chunk);
    cpu_.OutputBackward(nullptr, dwout_only.data(), h.data(), wout.data(),
                        labels.data(), lse_ref.data(), coef.data(), N, C, V,
                        buf.data(), chunk);
    EXPECT_TRUE(BitwiseEqual(dh_only, dh));
    EXPECT_TRUE(BitwiseEqual(dwout_only, dwout));

    ExpectDeterministic(
        {std::vector<float>(N), std::vector<float>(N), std::vector<float>(N),
         std::vector<float>(N), std::vector<float>(N)},
        [&](auto* o) {
          cpu_.OutputForward((*o)[0].data(), (*o)[1].data(), (*o)[2].data(),
                             correct.data(), (*o)[3].data(), (*o)[4].data(),
                             h.data(), wout.data(), labels.data(), N, C, V,
                             buf.data(), chunk);
        });
    ExpectDeterministic({dh0, dwout0}, [&](auto* o) {
      cpu_.OutputBackward((*o)[0].data(), (*o)[1].data(), h.data(), wout.data(),
                          labels.data(), lse_ref.data(), coef.data(), N, C, V,
                          buf.data(), chunk);
    });
  }

  // All coefficients zero: nothing to add.
  const std::vector<float> zeros(N, 0.0f);
  std::vector<float> dh = dh0, dwout = dwout0, buf(16 * V);
  cpu_.OutputBackward(dh.data(), dwout.data(), h.data(), wout.data(),
                      labels.data(), lse_ref.data(), zeros.data(), N, C, V,
                      buf.data(), 16);
  EXPECT_TRUE(BitwiseEqual(dh, dh0));
  EXPECT_TRUE(BitwiseEqual(dwout, dwout0));
}

// torch.argmax returns the first of equal maxima; so must `correct`. Rows 5
// and 700 of wout are equal and give both rows their largest logit.
TEST_P(CpuBackendTest, OutputArgmaxTiesGoToTheFirstIndex) {
  const int N = 2, C = 32, V = 1003;
  std::vector<float> h = RandomNormal(N * C, 1);
  std::copy(h.begin(), h.begin() + C, h.begin() + C);
  std::vector<float> wout = RandomNormal(V * C, 2, 0.01f);
  for (int c = 0; c < C; ++c) wout[5 * C + c] = wout[700 * C + c] = h[c];
  const std::vector<int32_t> labels = {5, 700};
  for (Backend* backend :
       {static_cast<Backend*>(&ref_), static_cast<Backend*>(&cpu_)}) {
    std::vector<float> lse(N), logp(N), sum(N), entropy(N), buf(2 * V);
    std::vector<int32_t> correct(N);
    backend->OutputForward(lse.data(), logp.data(), sum.data(), correct.data(),
                           entropy.data(), nullptr, h.data(), wout.data(),
                           labels.data(), N, C, V, buf.data(), 2);
    EXPECT_EQ(logp[0], logp[1]) << backend->Name();
    EXPECT_EQ(correct, (std::vector<int32_t>{1, 0})) << backend->Name();
  }
}

INSTANTIATE_TEST_SUITE_P(Threads, CpuBackendTest, ::testing::Values(1, 3),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "_threads";
                         });

}  // namespace
}  // namespace prefopt::kernels
