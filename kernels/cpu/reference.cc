#include "kernels/cpu/reference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace prefopt::kernels {

namespace cpu {

size_t AttentionProbsFloats(const SeqSpan* spans, int num_seqs, int NH) {
  return AttentionProbsOffset(spans, num_seqs, NH);
}

size_t AttentionProbsOffset(const SeqSpan* spans, int s, int NH) {
  size_t offset = 0;
  for (int i = 0; i < s; ++i) {
    offset += static_cast<size_t>(NH) * spans[i].len * spans[i].len;
  }
  return offset;
}

}  // namespace cpu

namespace {

constexpr double kGeluScale = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluCubic = 0.044715;

// Labels index wout's rows; an out-of-range one is a caller bug.
void CheckLabel(int32_t label, int V) {
  if (label < 0 || label >= V) {
    std::fprintf(stderr, "OutputForward/Backward: label %d outside [0, %d)\n",
                 label, V);
    std::abort();
  }
}

// z = wout @ h_row, each logit accumulated in double and rounded to fp32 as
// the fast path's GEMM delivers it.
void Logits(float* z, const float* h_row, const float* wout, int C, int V) {
  for (int v = 0; v < V; ++v) {
    const float* w = wout + static_cast<size_t>(v) * C;
    double acc = 0.0;
    for (int c = 0; c < C; ++c) acc += static_cast<double>(w[c]) * h_row[c];
    z[v] = static_cast<float>(acc);
  }
}

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Rotates the query and key heads of every row by +theta (sign 1) or -theta
// (sign -1); see Backend::RopeForward.
void Rotate(float* qkv, const int32_t* pos, const float* cos, const float* sin,
            int N, int NH, int NKV, int hs, double sign) {
  const int h = hs / 2;
  const size_t row = static_cast<size_t>(NH + 2 * NKV) * hs;
  for (int n = 0; n < N; ++n) {
    const float* c = cos + static_cast<size_t>(pos[n]) * h;
    const float* s = sin + static_cast<size_t>(pos[n]) * h;
    for (int head = 0; head < NH + NKV; ++head) {
      float* x = qkv + n * row + static_cast<size_t>(head) * hs;
      for (int i = 0; i < h; ++i) {
        const double x1 = x[i], x2 = x[i + h];
        const double si = sign * s[i];
        x[i] = static_cast<float>(x1 * c[i] - x2 * si);
        x[i + h] = static_cast<float>(x2 * c[i] + x1 * si);
      }
    }
  }
}

}  // namespace

float* ReferenceBackend::Alloc(size_t n) { return new float[n]; }

void ReferenceBackend::Free(float* p) { delete[] p; }

void ReferenceBackend::Zero(float* p, size_t n) {
  for (size_t i = 0; i < n; ++i) p[i] = 0.0f;
}

void ReferenceBackend::CopyToDevice(float* dst, const float* host_src,
                                    size_t n) {
  std::memcpy(dst, host_src, n * sizeof(float));
}

void ReferenceBackend::CopyToHost(float* host_dst, const float* src, size_t n) {
  std::memcpy(host_dst, src, n * sizeof(float));
}

void ReferenceBackend::Copy(float* dst, const float* src, size_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}

void ReferenceBackend::EmbeddingForward(float* out, const int32_t* ids,
                                        const int32_t* pos, const float* wte,
                                        const float* wpe, int N, int C) {
  for (int n = 0; n < N; ++n) {
    const float* tok = wte + static_cast<size_t>(ids[n]) * C;
    float* o = out + static_cast<size_t>(n) * C;
    for (int c = 0; c < C; ++c) o[c] = tok[c];
    if (wpe != nullptr) {
      const float* p = wpe + static_cast<size_t>(pos[n]) * C;
      for (int c = 0; c < C; ++c) o[c] += p[c];
    }
  }
}

void ReferenceBackend::EmbeddingBackward(float* dwte, float* dwpe,
                                         const float* dout, const int32_t* ids,
                                         const int32_t* pos, int N, int C) {
  for (int n = 0; n < N; ++n) {
    const float* d = dout + static_cast<size_t>(n) * C;
    if (dwte != nullptr) {
      float* g = dwte + static_cast<size_t>(ids[n]) * C;
      for (int c = 0; c < C; ++c) g[c] += d[c];
    }
    if (dwpe != nullptr) {
      float* g = dwpe + static_cast<size_t>(pos[n]) * C;
      for (int c = 0; c < C; ++c) g[c] += d[c];
    }
  }
}

void ReferenceBackend::LayerNormForward(float* out, float* mean, float* rstd,
                                        const float* inp, const float* weight,
                                        const float* bias, int N, int C,
                                        float eps) {
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    double sum = 0.0;
    for (int c = 0; c < C; ++c) sum += x[c];
    const double mu = sum / C;
    double sq = 0.0;
    for (int c = 0; c < C; ++c) sq += (x[c] - mu) * (x[c] - mu);
    // Biased variance, eps inside the square root (torch.nn.LayerNorm).
    const double rs = 1.0 / std::sqrt(sq / C + eps);
    float* o = out + static_cast<size_t>(n) * C;
    for (int c = 0; c < C; ++c) {
      const double y = (x[c] - mu) * rs * weight[c];
      o[c] = static_cast<float>(bias != nullptr ? y + bias[c] : y);
    }
    mean[n] = static_cast<float>(mu);
    rstd[n] = static_cast<float>(rs);
  }
}

void ReferenceBackend::LayerNormBackward(float* dinp, float* dweight,
                                         float* dbias, const float* dout,
                                         const float* inp, const float* weight,
                                         const float* mean, const float* rstd,
                                         int N, int C) {
  std::vector<double> dw(C, 0.0), db(C, 0.0);
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    const float* d = dout + static_cast<size_t>(n) * C;
    // With xhat = (x - mean) * rstd and g = dout * weight:
    // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    double g_mean = 0.0, g_xhat_mean = 0.0;
    for (int c = 0; c < C; ++c) {
      const double xhat = (static_cast<double>(x[c]) - mean[n]) * rstd[n];
      const double g = static_cast<double>(d[c]) * weight[c];
      g_mean += g;
      g_xhat_mean += g * xhat;
      dw[c] += d[c] * xhat;
      db[c] += d[c];
    }
    g_mean /= C;
    g_xhat_mean /= C;
    if (dinp != nullptr) {
      float* dx = dinp + static_cast<size_t>(n) * C;
      for (int c = 0; c < C; ++c) {
        const double xhat = (static_cast<double>(x[c]) - mean[n]) * rstd[n];
        const double g = static_cast<double>(d[c]) * weight[c];
        dx[c] +=
            static_cast<float>(rstd[n] * (g - g_mean - xhat * g_xhat_mean));
      }
    }
  }
  for (int c = 0; c < C; ++c) {
    if (dweight != nullptr) dweight[c] += static_cast<float>(dw[c]);
    if (dbias != nullptr) dbias[c] += static_cast<float>(db[c]);
  }
}

void ReferenceBackend::RmsNormForward(float* out, float* rstd, const float* inp,
                                      const float* weight, int N, int C,
                                      float eps) {
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    double sq = 0.0;
    for (int c = 0; c < C; ++c) sq += static_cast<double>(x[c]) * x[c];
    const double rs = 1.0 / std::sqrt(sq / C + eps);
    float* o = out + static_cast<size_t>(n) * C;
    for (int c = 0; c < C; ++c)
      o[c] = static_cast<float>(x[c] * rs * weight[c]);
    rstd[n] = static_cast<float>(rs);
  }
}

void ReferenceBackend::RmsNormBackward(float* dinp, float* dweight,
                                       const float* dout, const float* inp,
                                       const float* weight, const float* rstd,
                                       int N, int C) {
  std::vector<double> dw(C, 0.0);
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    const float* d = dout + static_cast<size_t>(n) * C;
    const double rs = rstd[n];
    // y = x * rs * w with rs = (mean(x^2) + eps)^(-1/2), so with g = dout * w:
    // dx = rs * g - x * rs^3 * mean(g * x).
    double g_x_mean = 0.0;
    for (int c = 0; c < C; ++c) {
      g_x_mean += static_cast<double>(d[c]) * weight[c] * x[c];
      dw[c] += static_cast<double>(d[c]) * x[c] * rs;
    }
    g_x_mean /= C;
    if (dinp != nullptr) {
      float* dx = dinp + static_cast<size_t>(n) * C;
      for (int c = 0; c < C; ++c) {
        const double g = static_cast<double>(d[c]) * weight[c];
        dx[c] += static_cast<float>(rs * g - x[c] * rs * rs * rs * g_x_mean);
      }
    }
  }
  if (dweight != nullptr) {
    for (int c = 0; c < C; ++c) dweight[c] += static_cast<float>(dw[c]);
  }
}

void ReferenceBackend::RowMeans(float* out, const float* in, int N, int width,
                                int stride) {
  for (int r = 0; r < N; ++r) {
    const float* row = in + static_cast<size_t>(r) * stride;
    double sum = 0;
    for (int c = 0; c < width; ++c) sum += row[c];
    out[r] = static_cast<float>(sum / width);
  }
}

void ReferenceBackend::MatmulForward(float* out, const float* inp,
                                     const float* weight, const float* bias,
                                     int N, int C, int OC) {
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    for (int o = 0; o < OC; ++o) {
      const float* w = weight + static_cast<size_t>(o) * C;
      double acc = bias != nullptr ? bias[o] : 0.0;
      for (int c = 0; c < C; ++c) acc += static_cast<double>(x[c]) * w[c];
      out[static_cast<size_t>(n) * OC + o] = static_cast<float>(acc);
    }
  }
}

void ReferenceBackend::MatmulBackward(float* dinp, float* dweight, float* dbias,
                                      const float* dout, const float* inp,
                                      const float* weight, int N, int C,
                                      int OC) {
  if (dinp != nullptr) {
    for (int n = 0; n < N; ++n) {
      for (int c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int o = 0; o < OC; ++o) {
          acc += static_cast<double>(dout[static_cast<size_t>(n) * OC + o]) *
                 weight[static_cast<size_t>(o) * C + c];
        }
        dinp[static_cast<size_t>(n) * C + c] += static_cast<float>(acc);
      }
    }
  }
  if (dweight != nullptr) {
    for (int o = 0; o < OC; ++o) {
      for (int c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int n = 0; n < N; ++n) {
          acc += static_cast<double>(dout[static_cast<size_t>(n) * OC + o]) *
                 inp[static_cast<size_t>(n) * C + c];
        }
        dweight[static_cast<size_t>(o) * C + c] += static_cast<float>(acc);
      }
    }
  }
  if (dbias != nullptr) {
    for (int o = 0; o < OC; ++o) {
      double acc = 0.0;
      for (int n = 0; n < N; ++n) acc += dout[static_cast<size_t>(n) * OC + o];
      dbias[o] += static_cast<float>(acc);
    }
  }
}

void ReferenceBackend::GeluForward(float* out, const float* inp, size_t n) {
  // HF's NewGELUActivation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
  for (size_t i = 0; i < n; ++i) {
    const double x = inp[i];
    const double t = std::tanh(kGeluScale * (x + kGeluCubic * x * x * x));
    out[i] = static_cast<float>(0.5 * x * (1.0 + t));
  }
}

void ReferenceBackend::GeluBackward(float* dinp, const float* inp,
                                    const float* dout, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const double x = inp[i];
    const double t = std::tanh(kGeluScale * (x + kGeluCubic * x * x * x));
    const double du_dx = kGeluScale * (1.0 + 3.0 * kGeluCubic * x * x);
    const double grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx;
    dinp[i] += static_cast<float>(grad * dout[i]);
  }
}

void ReferenceBackend::SwiGluForward(float* out, const float* gate_up, int N,
                                     int FF) {
  for (int n = 0; n < N; ++n) {
    const float* gate = gate_up + static_cast<size_t>(n) * 2 * FF;
    const float* up = gate + FF;
    float* o = out + static_cast<size_t>(n) * FF;
    for (int j = 0; j < FF; ++j) {
      const double g = gate[j];
      o[j] = static_cast<float>(g * Sigmoid(g) * up[j]);
    }
  }
}

void ReferenceBackend::SwiGluBackward(float* dgate_up, const float* gate_up,
                                      const float* dout, int N, int FF) {
  for (int n = 0; n < N; ++n) {
    const float* gate = gate_up + static_cast<size_t>(n) * 2 * FF;
    const float* up = gate + FF;
    const float* d = dout + static_cast<size_t>(n) * FF;
    float* dgate = dgate_up + static_cast<size_t>(n) * 2 * FF;
    float* dup = dgate + FF;
    for (int j = 0; j < FF; ++j) {
      const double g = gate[j];
      const double sig = Sigmoid(g);
      dgate[j] +=
          static_cast<float>(d[j] * up[j] * sig * (1.0 + g * (1.0 - sig)));
      dup[j] += static_cast<float>(d[j] * g * sig);
    }
  }
}

void ReferenceBackend::Add(float* out, const float* a, const float* b,
                           size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void ReferenceBackend::Axpy(float* y, float alpha, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void ReferenceBackend::Multiply(float* out, const float* a, const float* b,
                                size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

void ReferenceBackend::WidenBf16(float* out, const uint16_t* in, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(in[i]) << 16;
    std::memcpy(&out[i], &bits, sizeof(bits));
  }
}

size_t ReferenceBackend::AttentionProbsSize(const SeqSpan* spans, int num_seqs,
                                            int NH) const {
  return cpu::AttentionProbsFloats(spans, num_seqs, NH);
}

void ReferenceBackend::AttentionForward(float* out, float* probs,
                                        const float* qkv, const SeqSpan* spans,
                                        int num_seqs, int NH, int NKV, int hs) {
  const size_t row = static_cast<size_t>(NH + 2 * NKV) * hs;
  const size_t out_row = static_cast<size_t>(NH) * hs;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  const int group = NH / NKV;
  for (int s = 0; s < num_seqs; ++s) {
    const int T = spans[s].len;
    const float* base = qkv + spans[s].start * row;
    for (int h = 0; h < NH; ++h) {
      const int kv = h / group;
      float* P = probs + cpu::AttentionProbsOffset(spans, s, NH) +
                 static_cast<size_t>(h) * T * T;
      for (int i = 0; i < T; ++i) {
        const float* q = base + i * row + static_cast<size_t>(h) * hs;
        float* p = P + static_cast<size_t>(i) * T;
        double max_score = -std::numeric_limits<double>::infinity();
        std::vector<double> score(i + 1);
        for (int j = 0; j <= i; ++j) {
          const float* k = base + j * row + static_cast<size_t>(NH + kv) * hs;
          double dot = 0.0;
          for (int d = 0; d < hs; ++d) dot += static_cast<double>(q[d]) * k[d];
          score[j] = dot * scale;
          if (score[j] > max_score) max_score = score[j];
        }
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += std::exp(score[j] - max_score);
        for (int j = 0; j < T; ++j) {
          p[j] = j <= i
                     ? static_cast<float>(std::exp(score[j] - max_score) / sum)
                     : 0.0f;
        }
        float* o =
            out + (spans[s].start + i) * out_row + static_cast<size_t>(h) * hs;
        for (int d = 0; d < hs; ++d) {
          double acc = 0.0;
          for (int j = 0; j <= i; ++j) {
            const float* v =
                base + j * row + static_cast<size_t>(NH + NKV + kv) * hs;
            acc += static_cast<double>(p[j]) * v[d];
          }
          o[d] = static_cast<float>(acc);
        }
      }
    }
  }
}

void ReferenceBackend::CachedAttentionForward(float* out, const float* qkv,
                                              int past, int n, int NH, int NKV,
                                              int hs) {
  const size_t row = static_cast<size_t>(NH + 2 * NKV) * hs;
  const size_t out_row = static_cast<size_t>(NH) * hs;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  const int group = NH / NKV;
  std::vector<double> score(past + n);
  for (int h = 0; h < NH; ++h) {
    const int kv = h / group;
    for (int i = past; i < past + n; ++i) {
      const float* q = qkv + i * row + static_cast<size_t>(h) * hs;
      double max_score = -std::numeric_limits<double>::infinity();
      for (int j = 0; j <= i; ++j) {
        const float* k = qkv + j * row + static_cast<size_t>(NH + kv) * hs;
        double dot = 0.0;
        for (int d = 0; d < hs; ++d) dot += static_cast<double>(q[d]) * k[d];
        score[j] = dot * scale;
        if (score[j] > max_score) max_score = score[j];
      }
      double sum = 0.0;
      for (int j = 0; j <= i; ++j) {
        score[j] = std::exp(score[j] - max_score);
        sum += score[j];
      }
      float* o = out + (i - past) * out_row + static_cast<size_t>(h) * hs;
      for (int d = 0; d < hs; ++d) {
        double acc = 0.0;
        for (int j = 0; j <= i; ++j) {
          const float* v =
              qkv + j * row + static_cast<size_t>(NH + NKV + kv) * hs;
          // Rounded to float as AttentionForward's saved probabilities are.
          acc += static_cast<double>(static_cast<float>(score[j] / sum)) * v[d];
        }
        o[d] = static_cast<float>(acc);
      }
    }
  }
}

void ReferenceBackend::AttentionBackward(float* dqkv, const float* dout,
                                         const float* qkv, const float* /*out*/,
                                         const float* probs,
                                         const SeqSpan* spans, int num_seqs,
                                         int NH, int NKV, int hs) {
  const size_t row = static_cast<size_t>(NH + 2 * NKV) * hs;
  const size_t out_row = static_cast<size_t>(NH) * hs;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  const int group = NH / NKV;
  for (int s = 0; s < num_seqs; ++s) {
    const int T = spans[s].len;
    const size_t first = spans[s].start;
    for (int h = 0; h < NH; ++h) {
      const int kv = h / group;
      const size_t q_off = static_cast<size_t>(h) * hs;
      const size_t k_off = static_cast<size_t>(NH + kv) * hs;
      const size_t v_off = static_cast<size_t>(NH + NKV + kv) * hs;
      const float* P = probs + cpu::AttentionProbsOffset(spans, s, NH) +
                       static_cast<size_t>(h) * T * T;
      for (int i = 0; i < T; ++i) {
        const float* p = P + static_cast<size_t>(i) * T;
        const float* d_o = dout + (first + i) * out_row + q_off;
        // dP[j] = dout_i . v_j; dv_j += P[i][j] * dout_i.
        std::vector<double> dp(i + 1);
        for (int j = 0; j <= i; ++j) {
          const float* v = qkv + (first + j) * row + v_off;
          float* dv = dqkv + (first + j) * row + v_off;
          double dot = 0.0;
          for (int d = 0; d < hs; ++d) {
            dot += static_cast<double>(d_o[d]) * v[d];
            dv[d] += static_cast<float>(static_cast<double>(p[j]) * d_o[d]);
          }
          dp[j] = dot;
        }
        // Softmax backward: dS[j] = P[i][j] * (dP[j] - sum_k P[i][k] dP[k]).
        double p_dot_dp = 0.0;
        for (int j = 0; j <= i; ++j) p_dot_dp += p[j] * dp[j];
        const float* q = qkv + (first + i) * row + q_off;
        float* dq = dqkv + (first + i) * row + q_off;
        for (int j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - p_dot_dp) * scale;
          const float* k = qkv + (first + j) * row + k_off;
          float* dk = dqkv + (first + j) * row + k_off;
          for (int d = 0; d < hs; ++d) {
            dq[d] += static_cast<float>(ds * k[d]);
            dk[d] += static_cast<float>(ds * q[d]);
          }
        }
      }
    }
  }
}

void ReferenceBackend::RopeForward(float* qkv, const int32_t* pos,
                                   const float* cos, const float* sin, int N,
                                   int NH, int NKV, int hs) {
  Rotate(qkv, pos, cos, sin, N, NH, NKV, hs, 1.0);
}

void ReferenceBackend::RopeBackward(float* dqkv, const int32_t* pos,
                                    const float* cos, const float* sin, int N,
                                    int NH, int NKV, int hs) {
  // The rotation is orthogonal: its transpose (the backward) is the rotation
  // by -theta.
  Rotate(dqkv, pos, cos, sin, N, NH, NKV, hs, -1.0);
}

void ReferenceBackend::OutputForward(float* lse, float* logp, float* logit_sum,
                                     int32_t* correct, float* entropy,
                                     float* log_sum_sq_probs, const float* h,
                                     const float* wout, const int32_t* labels,
                                     int N, int C, int V, float* chunk_buf,
                                     int /*chunk*/) {
  // One row at a time through the first row of chunk_buf.
  float* z = chunk_buf;
  for (int n = 0; n < N; ++n) {
    CheckLabel(labels[n], V);
    Logits(z, h + static_cast<size_t>(n) * C, wout, C, V);
    int argmax = 0;
    double sum = 0.0;
    for (int v = 0; v < V; ++v) {
      if (z[v] > z[argmax]) argmax = v;
      sum += z[v];
    }
    // With y_v = exp(z_v - max) (each <= 1, the largest = 1): p_v = y_v / S0,
    // H = log S0 - S1 / S0 with S1 = sum y_v (z_v - max), and
    // log sum p^2 = log S2 - 2 log S0 with S2 = sum y_v^2 >= 1.
    const double max_z = z[argmax];
    double s0 = 0.0, s1 = 0.0, s2 = 0.0;
    for (int v = 0; v < V; ++v) {
      const double d = z[v] - max_z;
      const double y = std::exp(d);
      s0 += y;
      s1 += y * d;
      s2 += y * y;
    }
    const double log_s0 = std::log(s0);
    const double l = max_z + log_s0;
    lse[n] = static_cast<float>(l);
    logp[n] = static_cast<float>(z[labels[n]] - l);
    logit_sum[n] = static_cast<float>(sum);
    correct[n] = argmax == labels[n] ? 1 : 0;
    entropy[n] = static_cast<float>(log_s0 - s1 / s0);
    if (log_sum_sq_probs != nullptr) {
      log_sum_sq_probs[n] = static_cast<float>(std::log(s2) - 2.0 * log_s0);
    }
  }
}

void ReferenceBackend::OutputBackward(float* dh, float* dwout, const float* h,
                                      const float* wout, const int32_t* labels,
                                      const float* lse, const float* coef,
                                      int N, int C, int V, float* chunk_buf,
                                      int /*chunk*/) {
  float* dz = chunk_buf;
  for (int n = 0; n < N; ++n) {
    if (coef[n] == 0.0f) continue;
    CheckLabel(labels[n], V);
    const float* h_row = h + static_cast<size_t>(n) * C;
    Logits(dz, h_row, wout, C, V);
    for (int v = 0; v < V; ++v) {
      const double softmax = std::exp(static_cast<double>(dz[v]) - lse[n]);
      const double onehot = v == labels[n] ? 1.0 : 0.0;
      dz[v] = static_cast<float>(coef[n] * (softmax - onehot));
    }
    if (dh != nullptr) {
      float* g = dh + static_cast<size_t>(n) * C;
      for (int c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int v = 0; v < V; ++v) {
          acc +=
              static_cast<double>(dz[v]) * wout[static_cast<size_t>(v) * C + c];
        }
        g[c] += static_cast<float>(acc);
      }
    }
    if (dwout != nullptr) {
      for (int v = 0; v < V; ++v) {
        float* g = dwout + static_cast<size_t>(v) * C;
        for (int c = 0; c < C; ++c) g[c] += dz[v] * h_row[c];
      }
    }
  }
}

void ReferenceBackend::SparsePoOutputForward(const SparsePoOutputLayers& layers,
                                             const int32_t* labels, int N,
                                             float* chunk_buf,
                                             float* ref_chunk_buf,
                                             int /*chunk*/,
                                             const SparsePoRowStats& out) {
  const int V = layers.V;
  float* z = chunk_buf;
  float* zr = ref_chunk_buf;
  for (int n = 0; n < N; ++n) {
    CheckLabel(labels[n], V);
    Logits(z, layers.h + static_cast<size_t>(n) * layers.C, layers.wout,
           layers.C, V);
    Logits(zr, layers.ref_h + static_cast<size_t>(n) * layers.ref_C,
           layers.ref_wout, layers.ref_C, V);
    const double max_z = *std::max_element(z, z + V);
    const double max_zr = *std::max_element(zr, zr + V);
    double s0 = 0, s1 = 0, ref_s0 = 0, sum = 0, ref_sum = 0;
    for (int v = 0; v < V; ++v) {
      const double d = z[v] - max_z;
      s0 += std::exp(d);
      s1 += std::exp(d) * d;
      ref_s0 += std::exp(zr[v] - max_zr);
      sum += z[v];
      ref_sum += zr[v];
    }
    const double lse = max_z + std::log(s0);
    const double ref_lse = max_zr + std::log(ref_s0);
    // K from its definition, Σ_v p_v (log π_v − log p_v).
    double kl = 0;
    for (int v = 0; v < V; ++v) {
      const double log_p = zr[v] - ref_lse;
      kl += std::exp(log_p) * ((z[v] - lse) - log_p);
    }
    const int32_t y = labels[n];
    out.lse[n] = static_cast<float>(lse);
    out.ref_lse[n] = static_cast<float>(ref_lse);
    out.logp[n] = static_cast<float>(z[y] - lse);
    out.ref_logp[n] = static_cast<float>(zr[y] - ref_lse);
    out.kl[n] = static_cast<float>(kl);
    if (out.logit_sum != nullptr) out.logit_sum[n] = static_cast<float>(sum);
    if (out.ref_logit_sum != nullptr) {
      out.ref_logit_sum[n] = static_cast<float>(ref_sum);
    }
    if (out.entropy != nullptr) {
      out.entropy[n] = static_cast<float>(std::log(s0) - s1 / s0);
    }
  }
}

void ReferenceBackend::SparsePoOutputBackward(
    const SparsePoOutputLayers& layers, const int32_t* labels, int N,
    const float* lse, const float* ref_lse, const float* coef_a,
    const float* coef_b, float* chunk_buf, float* ref_chunk_buf, int /*chunk*/,
    float* dh, float* dwout) {
  const int C = layers.C, V = layers.V;
  float* dz = chunk_buf;
  float* zr = ref_chunk_buf;
  for (int n = 0; n < N; ++n) {
    const double a = coef_a[n], b = coef_b[n];
    if (a == 0 && b == 0) continue;
    CheckLabel(labels[n], V);
    const float* h_row = layers.h + static_cast<size_t>(n) * C;
    Logits(dz, h_row, layers.wout, C, V);
    Logits(zr, layers.ref_h + static_cast<size_t>(n) * layers.ref_C,
           layers.ref_wout, layers.ref_C, V);
    for (int v = 0; v < V; ++v) {
      const double pi = std::exp(static_cast<double>(dz[v]) - lse[n]);
      const double p = std::exp(static_cast<double>(zr[v]) - ref_lse[n]);
      const double onehot = v == labels[n] ? 1.0 : 0.0;
      dz[v] = static_cast<float>(a * (pi - onehot) + b * (pi - p));
    }
    if (dh != nullptr) {
      float* g = dh + static_cast<size_t>(n) * C;
      for (int c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int v = 0; v < V; ++v) {
          acc += static_cast<double>(dz[v]) *
                 layers.wout[static_cast<size_t>(v) * C + c];
        }
        g[c] += static_cast<float>(acc);
      }
    }
    if (dwout != nullptr) {
      for (int v = 0; v < V; ++v) {
        float* g = dwout + static_cast<size_t>(v) * C;
        for (int c = 0; c < C; ++c) g[c] += dz[v] * h_row[c];
      }
    }
  }
}

double ReferenceBackend::SumSquares(const float* x, size_t n) {
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * x[i];
  return acc;
}

void ReferenceBackend::Scale(float* x, float alpha, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] *= alpha;
}

void ReferenceBackend::AdamW(float* p, const float* grad, float* m, float* v,
                             size_t n, const AdamWParams& hp) {
  // torch.optim.AdamW (single-tensor path): scalar factors in double as Python
  // computes them, applied to fp32 tensors.
  const double bias_correction1 = 1.0 - std::pow(double{hp.beta1}, hp.step);
  const double bias_correction2 = 1.0 - std::pow(double{hp.beta2}, hp.step);
  const float decay = static_cast<float>(1.0 - double{hp.lr} * hp.weight_decay);
  const float step_size = static_cast<float>(hp.lr / bias_correction1);
  const float bias_correction2_sqrt =
      static_cast<float>(std::sqrt(bias_correction2));
  const float one_minus_beta1 = static_cast<float>(1.0 - hp.beta1);
  const float one_minus_beta2 = static_cast<float>(1.0 - hp.beta2);
  for (size_t i = 0; i < n; ++i) {
    p[i] *= decay;
    m[i] += one_minus_beta1 * (grad[i] - m[i]);  // exp_avg.lerp_(grad, 1-beta1)
    v[i] = v[i] * hp.beta2 + one_minus_beta2 * grad[i] * grad[i];
    const float denom = std::sqrt(v[i]) / bias_correction2_sqrt + hp.eps;
    p[i] -= step_size * (m[i] / denom);
  }
}

}  // namespace prefopt::kernels
