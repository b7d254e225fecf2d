// The chunked output layer over the response rows of a packed batch
// (docs/objectives.md §7): pass 1 reduces each response row's logits to its
// log-prob and summaries; after the objective has turned those into per-row
// coefficients G_t, pass 2 recomputes the logits and backpropagates
// G_t·(softmax − onehot) into the hidden states and the output embedding.
// Prompt rows are never touched.
#ifndef PREFOPT_TRAINER_OBJECTIVES_OUTPUT_LAYER_H_
#define PREFOPT_TRAINER_OBJECTIVES_OUTPUT_LAYER_H_

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace prefopt::objectives {

// A run of consecutive rows of a packed batch whose next tokens are response
// tokens: rows [row, row + count) predict tokens[row + 1 .. row + count].
// Within one sequence the response rows are always consecutive.
struct ResponseSegment {
  int row;
  int count;
};

// The segments' rows of `rows` (backend memory, `width` floats each) copied
// back to back into `out`, so that one output-layer call covers them all and
// its chunks span segments; returns their count.
int GatherSegmentRows(kernels::Backend& backend, float* out, const float* rows,
                      int width, const std::vector<ResponseSegment>& segments);
// The inverse: adds rows [0, count) of `in` to the segments' rows of `rows`.
void ScatterAddSegmentRows(kernels::Backend& backend, float* rows,
                           const float* in, int width,
                           const std::vector<ResponseSegment>& segments);
// The next tokens of the segments' rows, back to back (host arrays).
void SegmentLabels(const int32_t* tokens,
                   const std::vector<ResponseSegment>& segments,
                   std::vector<int32_t>* labels);

// The rows of one output-layer chunk: `configured` (output_chunk_tokens) when
// positive, else 256, or fewer where a [256, V] fp32 logits buffer would
// exceed 64 MiB: then as many as fit, a multiple of 32 and at least 32
// (GPT-2's V = 50257: 256 rows; Llama 3's 128256: 128; Qwen2's 151936: 96).
// Never more than `max_rows`, the rows of the largest batch. Each chunk's
// logits GEMM reads the whole [V, C] embedding, so a small chunk leaves the
// layer bound by that read, below the GEMM's rate; from about 256 rows it
// runs at it (docs/benchmarks.md, "Output-layer chunk size").
int OutputChunkRows(int configured, int64_t vocab, int max_rows);

// An upper bound on the floats an output layer allocates for batches of up to
// `max_rows` rows: `models` [chunk, V] logits buffers (two for SparsePO's
// fused layer), its gathered rows and their gradient ([max_rows, hidden]
// each, three for SparsePO) and its per-row values.
size_t OutputLayerFloats(int chunk, int64_t vocab, int max_rows, int hidden,
                         int models);

// Per-sequence reductions of pass 1.
struct SequenceScores {
  double logp = 0;         // Σ_t ℓ_t over the response tokens
  int tokens = 0;          // k
  double logit_sum = 0;    // Σ over response tokens and the vocabulary of z
  int correct = 0;         // response tokens whose argmax is the label
  double entropy_sum = 0;  // Σ_t H(softmax(z_t)) over the response tokens
};

class ChunkedOutputLayer {
 public:
  // max_rows bounds the response rows of one batch; chunk is how many rows
  // share one [chunk, V] logits buffer (0: OutputChunkRows' choice).
  ChunkedOutputLayer(kernels::Backend* backend, int max_rows, int hidden,
                     int vocab, int chunk);
  ~ChunkedOutputLayer();
  ChunkedOutputLayer(const ChunkedOutputLayer&) = delete;
  ChunkedOutputLayer& operator=(const ChunkedOutputLayer&) = delete;

  // Pass 1 over `segments` (one per sequence) of `hidden` [N, C] with labels
  // from `tokens` (host). Fills row_logp() (concatenated over the segments, in
  // order), and row_log_sum_sq_probs() when `log_sum_sq_probs`, and returns
  // one SequenceScores per segment.
  std::vector<SequenceScores> Forward(
      const float* hidden, const float* wout, const int32_t* tokens,
      const std::vector<ResponseSegment>& segments,
      bool log_sum_sq_probs = false);

  // Pass 1 without bringing anything to the host: the per-row values stay in
  // backend memory (rows()) for Backend::ObjectiveCoefficients, log Σ p²
  // among them when `log_sum_sq_probs`.
  void ForwardOnBackend(const float* hidden, const float* wout,
                        const int32_t* tokens,
                        const std::vector<ResponseSegment>& segments,
                        bool log_sum_sq_probs = false);
  // Pass 1's per-row values in backend memory, rows of the segments back to
  // back, and the coefficient buffer BackwardOnBackend reads.
  struct BackendRows {
    const float* logp;
    const float* logit_sum;
    const int32_t* correct;
    const float* entropy;
    const float* log_sum_sq;  // written by ForwardOnBackend when asked
    float* coef;
  };
  BackendRows rows() const;

  // ℓ_t of every response row of the last Forward, segment after segment.
  const std::vector<float>& row_logp() const { return logp_host_; }
  // log Σ_v p_v² of every response row of the last Forward, in row_logp()'s
  // order; empty unless that Forward was asked for it.
  const std::vector<float>& row_log_sum_sq_probs() const {
    return log_sum_sq_host_;
  }

  // Pass 2: coef holds G_t for every response row, in row_logp()'s order.
  // Accumulates into dhidden [N, C] and dwout [V, C].
  void Backward(float* dhidden, float* dwout, const float* hidden,
                const float* wout, const int32_t* tokens,
                const std::vector<ResponseSegment>& segments,
                const std::vector<float>& coef);
  // Pass 2 with the coefficients already in rows().coef.
  void BackwardOnBackend(float* dhidden, float* dwout, const float* hidden,
                         const float* wout, const int32_t* tokens,
                         const std::vector<ResponseSegment>& segments);

 private:
  // Runs OutputForward over the segments; returns their rows.
  int Pass1(const float* hidden, const float* wout, const int32_t* tokens,
            const std::vector<ResponseSegment>& segments,
            bool log_sum_sq_probs);
  // The segments' rows of `hidden` back to back, so that one Output* call
  // covers them all and its chunks span segments (one GEMM per chunk, and on
  // a GPU one bf16 rounding of wout per pass, instead of per sequence):
  // in place for one segment, else gathered into rows_h_. Fills labels_ with
  // their next tokens (so labels_.size() is the rows' count).
  const float* GatherRows(const float* hidden, const int32_t* tokens,
                          const std::vector<ResponseSegment>& segments);

  kernels::Backend* backend_;
  int max_rows_, hidden_, vocab_, chunk_;
  float* chunk_buf_;
  float* lse_;
  float* logp_;
  float* logit_sum_;
  // int32 results stored in a float-typed backend allocation of equal width.
  float* correct_;
  float* entropy_;
  float* log_sum_sq_;
  float* coef_;
  // Gathered response rows of the hidden states and of their gradient
  // (GatherRows), and their labels (host).
  float* rows_h_;
  float* rows_dh_;
  std::vector<int32_t> labels_;
  std::vector<float> logp_host_, logit_sum_host_, entropy_host_,
      log_sum_sq_host_;
  std::vector<int32_t> correct_host_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_OUTPUT_LAYER_H_
