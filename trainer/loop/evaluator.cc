#include "trainer/loop/evaluator.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "trainer/data/dataset_loader.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/json_file.h"
#include "trainer/io/weight_store.h"
#include "trainer/loop/device_select.h"
#include "trainer/loop/reference_model.h"
#include "trainer/loop/trainer.h"
#include "trainer/objectives/reference_free.h"
#include "trainer/reference/reference_logps.h"

namespace prefopt::loop {
namespace {

// The metrics EvalSummaryLine shows, in order, when present.
constexpr const char* kSummaryMetrics[] = {
    "loss",
    "rewards/accuracies",
    "rewards/margins",
    "ranking/accuracy",
    "ranking/idealized_accuracy",
    "ranking/alignment_gap",
    "sft/loss",
    "mean_token_accuracy",
    "greedy/exact_match",
};

std::string FormatValue(double value) {
  return std::isfinite(value) ? absl::StrFormat("%.6g", value) : "nan";
}

// A decoder of `spec` for `capacity`, loaded from `dir`, or initialized as a
// from-scratch run of `config` does when `dir` is empty.
absl::StatusOr<std::unique_ptr<model::Decoder>> LoadFrozen(
    const std::string& dir, const io::ModelSpec& spec,
    kernels::Backend* backend, const model::Capacity& capacity,
    const TrainConfig& config) {
  auto decoder = model::Decoder::Create(spec, backend, capacity, false);
  if (!decoder.ok()) return decoder.status();
  if (dir.empty()) {
    (*decoder)->InitRandom(config.seed(), config.model().init_std());
    return decoder;
  }
  auto store = io::WeightStore::Open(dir);
  if (!store.ok()) return store.status();
  const absl::Status s = (*decoder)->LoadHf(*store);
  if (!s.ok()) return s;
  return decoder;
}

// The spec of the model in `dir`, or of the config's from-scratch model.
absl::StatusOr<io::ModelSpec> SpecOf(const std::string& dir,
                                     const TrainConfig& config) {
  if (dir.empty()) return SpecFromConfig(config.model());
  return io::ReadHfConfig(dir);
}

}  // namespace

absl::StatusOr<data::Dataset> ReadEvalData(
    const TrainConfig& config, const objectives::Objective& objective,
    int vocab_size, int world_size) {
  // The held-out files take the training data's path: text or token ids,
  // the same tokenizer, template, truncation and cache.
  const DataConfig& dc = config.data();
  data::DataOptions options;
  options.vocab_size = vocab_size;
  options.truncation.max_length = dc.max_length();
  options.truncation.max_prompt_length = dc.max_prompt_length();
  options.truncation.mode = dc.truncation_mode();
  options.tokenizer_path =
      data::DefaultTokenizerPath(dc.tokenizer_path(), config.model().hf_path());
  options.chat_template = dc.chat_template();
  options.cache_dir = dc.cache_dir().empty() ? config.run_dir() + "/data_cache"
                                             : dc.cache_dir();
  options.kl_chunk = KlChunk(config, &objective, world_size);
  return data::LoadDataset({dc.eval_files().begin(), dc.eval_files().end()},
                           objective.example_kind(), options, nullptr);
}

absl::StatusOr<std::unique_ptr<Evaluator>> Evaluator::Create(
    const objectives::Objective* objective, data::Dataset data,
    objectives::ReferenceValues references, int micro_batch,
    comm::Communicator* comm) {
  const int world = comm != nullptr ? comm->world_size() : 1;
  const size_t n = data.examples.size();
  if (n < static_cast<size_t>(world)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.eval_files: ", n, " held-out examples, fewer than the ", world,
        " ranks (each rank evaluates a share)"));
  }
  return std::unique_ptr<Evaluator>(new Evaluator(
      objective, std::move(data), std::move(references), micro_batch, comm));
}

Evaluator::Evaluator(const objectives::Objective* objective, data::Dataset data,
                     objectives::ReferenceValues references, int micro_batch,
                     comm::Communicator* comm)
    : objective_(objective),
      data_(std::move(data)),
      references_(std::move(references)),
      micro_batch_(micro_batch),
      comm_(comm) {
  const int rank = comm != nullptr ? comm->rank() : 0;
  const int world = comm != nullptr ? comm->world_size() : 1;
  const size_t n = data_.examples.size();
  for (size_t i = n * rank / world; i < n * (rank + 1) / world; ++i) {
    local_.push_back(static_cast<int>(i));
  }
}

absl::StatusOr<std::map<std::string, double>> Evaluator::Evaluate(
    model::Decoder& policy, objectives::ChunkedOutputLayer& output,
    const std::function<void(int64_t, int64_t)>& progress) {
  std::vector<int> all(data_.examples.size());
  std::iota(all.begin(), all.end(), 0);
  // Coefficients wants the loss's denominator; the coefficients themselves
  // are not used.
  const double denominator = objective_->Denominator(data_.examples, all);
  const double token_denominator =
      objective_->TokenDenominator(data_.examples, all);
  const bool pairs = data_.kind == data::ExampleKind::kPreference;
  const bool demonstrations = data_.kind == data::ExampleKind::kDemonstration;
  // The objective's pre-pass (KTO's KL estimate) covers the whole set.
  objectives::MetricSums prepass;
  const bool has_prepass = objective_->has_prepass();
  if (absl::Status s = ScorePrepass(
          *objective_, data_.examples, local_, micro_batch_, &policy, &output,
          [this](const std::vector<int>&) { return &references_; }, comm_,
          &batch_, /*device=*/nullptr, &prepass);
      !s.ok()) {
    return s;
  }
  std::vector<int> micro;
  objectives::MetricSums sums, common;
  for (size_t begin = 0; begin < local_.size(); begin += micro_batch_) {
    const size_t n = std::min<size_t>(micro_batch_, local_.size() - begin);
    micro.assign(local_.begin() + begin, local_.begin() + begin + n);
    data::BuildBatch(data_.examples, micro.data(), static_cast<int>(n),
                     /*include_context=*/true, &batch_, has_prepass ? 0 : -1);
    const float* hidden = policy.Forward(batch_.packed);
    std::vector<objectives::ResponseSegment> with_prompts;
    if (objective_->scores_prompts()) {
      with_prompts = objectives::WithPromptSegments(batch_.segments,
                                                    data_.examples, micro);
    }
    const bool log_sum_sq = objective_->needs_row_log_sum_sq_probs();
    const std::vector<objectives::SequenceScores> scores = output.Forward(
        hidden, policy.output_embedding(), batch_.packed.tokens.data(),
        objective_->scores_prompts() ? with_prompts : batch_.segments,
        log_sum_sq);
    objectives::MicroBatchView view{&micro, &scores, &output.row_logp(),
                                    &references_};
    view.denominator = denominator;
    view.token_denominator = token_denominator;
    view.dataset = &data_.examples;
    view.prepass = has_prepass ? &prepass : nullptr;
    if (log_sum_sq) view.row_log_sum_sq_probs = &output.row_log_sum_sq_probs();
    objective_->Coefficients(view, denominator, &coef_, &sums);
    objectives::AddEntropyMetric(scores, batch_.segments.size(), &sums);
    objective_->AddEvalMetrics(view, data_.examples, &sums);
    for (size_t i = 0; i < n; ++i) {
      const objectives::SequenceScores& s = scores[pairs ? 2 * i : i];
      // The reference response: the chosen one, the completion, or a
      // desirable (label true) unpaired completion. Undesirable ones add a
      // count of 0, so that every rank has the metric.
      const double counted = data_.kind != data::ExampleKind::kUnpaired ||
                                     data_.examples[micro[i]].label
                                 ? 1.0
                                 : 0.0;
      common.Add("greedy/exact_match",
                 counted * (s.correct == s.tokens ? 1.0 : 0.0), counted);
      if (demonstrations) {
        common.Add("sft/loss", -s.logp, s.tokens);
        common.Add("mean_token_accuracy", s.correct, s.tokens);
      }
    }
    if (progress) progress(static_cast<int64_t>(begin + n), local_.size());
  }
  if (comm_ != nullptr && comm_->world_size() > 1) {
    std::vector<double> flat = sums.Flattened();
    const size_t own = flat.size();
    const std::vector<double> more = common.Flattened();
    flat.insert(flat.end(), more.begin(), more.end());
    const absl::Status s = comm_->AllReduceSum(flat.data(), flat.size());
    if (!s.ok()) return s;
    sums.SetFlattened(std::vector<double>(flat.begin(), flat.begin() + own));
    common.SetFlattened(std::vector<double>(flat.begin() + own, flat.end()));
  }
  std::map<std::string, double> metrics = sums.Means();
  objective_->FinishMetrics(sums, &metrics);
  // The objective's own value of a common metric wins (they agree).
  for (const auto& [name, value] : common.Means()) {
    if (common.Count(name) > 0) metrics.emplace(name, value);
  }
  return metrics;
}

std::map<std::string, double> WithPrefix(
    const std::map<std::string, double>& metrics, const std::string& prefix) {
  std::map<std::string, double> out;
  for (const auto& [name, value] : metrics) out[prefix + name] = value;
  return out;
}

std::string EvalSummaryLine(int64_t step,
                            const std::map<std::string, double>& metrics) {
  std::string line = absl::StrCat("eval at step ", step, ":");
  for (const char* name : kSummaryMetrics) {
    auto it = metrics.find(name);
    if (it == metrics.end()) continue;
    absl::StrAppend(&line, "  ", name, " ",
                    std::isfinite(it->second)
                        ? absl::StrFormat("%.4f", it->second)
                        : std::string("nan"));
  }
  return line;
}

std::string EvalTableText(const std::map<std::string, double>& metrics) {
  size_t width = 0;
  for (const auto& [name, value] : metrics)
    width = std::max(width, name.size());
  std::string text;
  for (const auto& [name, value] : metrics) {
    absl::StrAppend(&text, name, std::string(width + 2 - name.size(), ' '),
                    FormatValue(value), "\n");
  }
  return text;
}

std::vector<std::pair<std::string, std::string>> EvalReportRows(
    const std::map<std::string, double>& metrics) {
  std::vector<std::pair<std::string, std::string>> rows;
  for (const auto& [name, value] : metrics) {
    rows.emplace_back(name, FormatValue(value));
  }
  return rows;
}

absl::Status WriteEvalJson(const std::string& path, std::optional<int64_t> step,
                           int64_t examples, const std::string& model,
                           const std::map<std::string, double>& metrics) {
  nlohmann::json j;
  for (const auto& [name, value] : metrics) {
    j[name] =
        std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
  }
  if (step.has_value()) j["step"] = *step;
  j["examples"] = examples;
  j["model"] = model;
  return io::WriteJsonFile(path, j);
}

absl::StatusOr<ModelEvaluation> EvaluateModel(
    const TrainConfig& config, const std::string& model_dir, std::ostream& log,
    comm::Communicator* comm,
    const std::function<void(const std::string&, int64_t, int64_t)>& progress) {
  if (config.data().eval_files().empty()) {
    return absl::InvalidArgumentError(
        "data.eval_files: no held-out data to evaluate on; name it in the "
        "config or with --set=data.eval_files=FILE.jsonl");
  }
  const bool rank0 = comm == nullptr || comm->rank() == 0;
  absl::StatusOr<kernels::SelectedBackend> selected =
      SelectDevice(config, comm == nullptr ? 0 : comm->rank());
  if (!selected.ok()) return selected.status();
  if (rank0) log << selected->description << "\n";
  kernels::Backend& backend = *selected->backend;
  const std::string policy_dir =
      model_dir.empty() ? config.model().hf_path() : model_dir;
  auto spec = SpecOf(policy_dir, config);
  if (!spec.ok()) return spec.status();
  const int vocab = static_cast<int>(spec->vocab_size);
  auto objective = CreateObjective(config.objective(), vocab);
  if (!objective.ok()) return objective.status();
  auto data = ReadEvalData(config, **objective, vocab,
                           comm == nullptr ? 1 : comm->world_size());
  if (!data.ok()) return data.status();
  if (rank0) {
    log << "eval data: " << data->examples.size() << " examples";
    if (data->truncated > 0) log << ", " << data->truncated << " truncated";
    if (data->dropped_too_long > 0) {
      log << ", " << data->dropped_too_long
          << " dropped (prompt leaves no room within max_length)";
    }
    log << "\n";
  }

  const int mb = config.batch().micro_batch_size();
  model::Capacity cap;
  cap.max_seq_len = data::MaxSequenceLength(data->examples);
  cap.max_seqs = objectives::SequencesPerExample(**objective) * mb;
  cap.max_rows = cap.max_seqs * cap.max_seq_len;
  // The output layer, allocated after the models (CheckModelFitsInMemory).
  cap.objective_floats = objectives::OutputLayerFloats(
      objectives::OutputChunkRows(config.output_chunk_tokens(),
                                  spec->vocab_size, cap.max_rows),
      spec->vocab_size, cap.max_rows, spec->hidden, 1);
  auto policy = LoadFrozen(policy_dir, *spec, &backend, cap, config);
  if (!policy.ok()) return policy.status();

  objectives::ReferenceValues references;
  if ((*objective)->reference_needs() != objectives::ReferenceNeeds::kNone) {
    const ModelConfig& mc = config.model();
    const std::string ref_dir =
        !mc.reference_hf_path().empty() ? mc.reference_hf_path() : mc.hf_path();
    auto ref_spec = SpecOf(ref_dir, config);
    if (!ref_spec.ok()) return ref_spec.status();
    if (ref_spec->vocab_size != spec->vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the reference model's vocabulary (", ref_spec->vocab_size, ", from ",
          ref_dir.empty() ? "the config's model" : ref_dir,
          ") differs from the evaluated model's (", spec->vocab_size, ")"));
    }
    auto reference = LoadFrozen(ref_dir, *ref_spec, &backend, cap, config);
    if (!reference.ok()) return reference.status();
    const reference::ReferenceOptions options =
        ReferenceOptionsFor(**objective, config, comm);
    auto result = reference::ComputeReferenceValues(
        **reference, data->examples, options,
        config.run_dir() + "/reference_cache",
        [&](int64_t done, int64_t total) {
          if (progress) progress("reference log-probs", done, total);
        });
    if (!result.ok()) return result.status();
    references = std::move(result->values);
  }

  objectives::ChunkedOutputLayer output(&backend, cap.max_rows, spec->hidden,
                                        spec->vocab_size,
                                        config.output_chunk_tokens());
  const int64_t examples = static_cast<int64_t>(data->examples.size());
  auto evaluator = Evaluator::Create(objective->get(), *std::move(data),
                                     std::move(references), mb, comm);
  if (!evaluator.ok()) return evaluator.status();
  auto metrics =
      (*evaluator)
          ->Evaluate(**policy, output, [&](int64_t done, int64_t total) {
            if (progress) progress("evaluation", done, total);
          });
  if (!metrics.ok()) return metrics.status();
  return ModelEvaluation{*std::move(metrics), examples};
}

}  // namespace prefopt::loop
