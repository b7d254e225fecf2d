#include "trainer/loop/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "comm/failure.h"
#include "comm/gpu_communicator.h"
#include "comm/launch_env.h"
#include "kernels/memory_purpose.h"
#include "trainer/checkpoint/hf_export.h"
#include "trainer/config/config_loader.h"
#include "trainer/data/dataset_loader.h"
#include "trainer/io/atomic_file.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/run_dir.h"
#include "trainer/io/weight_store.h"
#include "trainer/loop/checkpointing.h"
#include "trainer/loop/device_select.h"
#include "trainer/lora/lora_modules.h"
#include "trainer/metrics/run_report.h"
#include "trainer/objectives/cpo.h"
#include "trainer/objectives/demonstration_objectives.h"
#include "trainer/objectives/dpo.h"
#include "trainer/objectives/kto.h"
#include "trainer/objectives/orpo.h"
#include "trainer/objectives/reference_free.h"
#include "trainer/reference/reference_logps.h"
#include "trainer/util/fingerprint.h"
#include "trainer/util/rng.h"

namespace prefopt::loop {

io::ModelSpec SpecFromConfig(const ModelConfig& m) {
  io::ModelSpec spec;
  spec.vocab_size = m.vocab_size();
  spec.max_positions = m.n_positions();
  spec.hidden = m.n_embd();
  spec.n_layer = m.n_layer();
  spec.n_head = m.n_head();
  if (m.has_eos_token_id()) spec.eos_token_id = m.eos_token_id();
  if (m.architecture() == GPT2) {
    spec.arch = io::ModelSpec::Arch::kGpt2;
    spec.hf_architecture = "GPT2LMHeadModel";
    spec.hf_model_type = "gpt2";
    spec.n_kv_head = m.n_head();
    spec.head_dim = m.n_embd() / m.n_head();
    spec.intermediate = 4 * m.n_embd();
    spec.norm_eps = 1e-5;
    spec.tie_word_embeddings = true;
    spec.activation = "gelu_new";
    // GPT-2 has biases on every projection (as ReadHfConfig sets them); the
    // exported config.json must say so.
    spec.attention_bias = spec.attention_out_bias = spec.mlp_bias = true;
    return spec;
  }
  // LLAMA and QWEN2, with LlamaConfig's / Qwen2Config's defaults.
  const bool qwen2 = m.architecture() == QWEN2;
  spec.arch = qwen2 ? io::ModelSpec::Arch::kQwen2 : io::ModelSpec::Arch::kLlama;
  spec.hf_architecture = qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  spec.hf_model_type = qwen2 ? "qwen2" : "llama";
  spec.n_kv_head = m.n_kv_head() > 0 ? m.n_kv_head() : m.n_head();
  spec.head_dim = m.head_dim() > 0 ? m.head_dim() : m.n_embd() / m.n_head();
  spec.intermediate = m.intermediate_size();
  spec.norm_eps = m.rms_norm_eps() > 0 ? m.rms_norm_eps() : 1e-6;
  spec.rope_theta = m.rope_theta() > 0 ? m.rope_theta() : 10000.0;
  spec.tie_word_embeddings = m.tie_word_embeddings();
  spec.activation = "silu";
  if (spec.arch == io::ModelSpec::Arch::kQwen2) {
    spec.attention_bias = true;
  } else {
    spec.attention_bias = m.attention_bias();
    spec.attention_out_bias = m.attention_bias();
    spec.mlp_bias = m.mlp_bias();
  }
  return spec;
}

lora::LoraSettings SettingsFromConfig(const LoraConfig& config) {
  lora::LoraSettings settings;
  settings.r = config.r();
  settings.alpha = config.alpha();
  settings.dropout = config.dropout();
  settings.use_rslora = config.use_rslora();
  settings.target_modules.assign(config.target_modules().begin(),
                                 config.target_modules().end());
  return settings;
}

absl::StatusOr<model::LoraOptions> LoraOptionsFor(
    const lora::LoraSettings& settings, const io::ModelSpec& spec) {
  auto modules = lora::ResolveTargetModules(spec, settings.target_modules,
                                            "model.lora.target_modules");
  if (!modules.ok()) return modules.status();
  model::LoraOptions options;
  options.modules = *std::move(modules);
  options.r = settings.r;
  options.scaling = settings.Scaling();
  options.dropout = settings.dropout;
  return options;
}

absl::StatusOr<std::pair<model::LoraOptions, lora::PeftAdapter>>
ReadStartingAdapter(const LoraConfig& config, const io::ModelSpec& spec) {
  const std::string& dir = config.adapter_path();
  auto adapter = lora::ReadPeftAdapter(dir, spec);
  if (!adapter.ok()) return adapter.status();
  const lora::LoraSettings& settings = adapter->settings;
  // The adapter's own settings apply; the config may only repeat them.
  const auto disagree = [&](const std::string& field, const std::string& ours,
                            const std::string& theirs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.lora.", field, ": is ", ours, " but the adapter at ", dir,
        " has ", theirs, "; leave it unset to use the adapter's"));
  };
  if (config.has_r() && config.r() != settings.r) {
    return disagree("r", absl::StrCat(config.r()), absl::StrCat(settings.r));
  }
  if (config.has_alpha() && config.alpha() != settings.alpha) {
    return disagree("alpha", absl::StrCat(config.alpha()),
                    absl::StrCat("lora_alpha ", settings.alpha));
  }
  if (config.use_rslora() && !settings.use_rslora) {
    return disagree("use_rslora", "true", "use_rslora false");
  }
  const std::vector<std::string> targets(config.target_modules().begin(),
                                         config.target_modules().end());
  if (!targets.empty() && targets != settings.target_modules) {
    return disagree("target_modules", absl::StrJoin(targets, ", "),
                    absl::StrCat("target_modules ",
                                 absl::StrJoin(settings.target_modules, ", ")));
  }
  model::LoraOptions options;
  for (const lora::AdapterFactors& f : adapter->factors) {
    options.modules.push_back(f.module);
  }
  options.r = settings.r;
  options.scaling = settings.Scaling();
  options.dropout = config.dropout();
  return std::make_pair(std::move(options), *std::move(adapter));
}

lora::PeftAdapter AdapterFromDecoder(const model::Decoder& policy,
                                     const lora::LoraSettings& settings,
                                     const std::string& base_model) {
  lora::PeftAdapter adapter;
  const model::LoraOptions& options = policy.lora();
  adapter.settings = settings;
  adapter.base_model_name_or_path = base_model;
  kernels::Backend* backend = policy.backend();
  for (const model::LoraAdapterRef& ref : policy.lora_adapters()) {
    lora::AdapterFactors f;
    f.module = ref.module;
    f.a.resize(static_cast<size_t>(options.r) * ref.module.in_features);
    f.b.resize(static_cast<size_t>(ref.module.out_features) * options.r);
    backend->CopyToHost(f.a.data(), policy.params() + ref.a, f.a.size());
    backend->CopyToHost(f.b.data(), policy.params() + ref.b, f.b.size());
    adapter.factors.push_back(std::move(f));
  }
  return adapter;
}

uint64_t LoraDropoutSeed(uint64_t seed, int step, int micro_batch, int rank) {
  uint64_t h = seed ^ 0x4C6F524144726F70ull;  // "LoRADrop"
  for (const int64_t v : {int64_t{step}, int64_t{micro_batch}, int64_t{rank}}) {
    util::Rng rng(h ^ static_cast<uint64_t>(v));
    h = rng.NextU64();
  }
  return h;
}

absl::StatusOr<std::unique_ptr<objectives::Objective>> CreateObjective(
    const ObjectiveConfig& config, int vocab_size) {
  switch (config.kind_case()) {
    case ObjectiveConfig::kDpo: {
      auto dpo = objectives::DpoObjective::Create(config.dpo(), vocab_size);
      if (!dpo.ok()) return dpo.status();
      return std::unique_ptr<objectives::Objective>(*std::move(dpo));
    }
    case ObjectiveConfig::kSft:
      return std::unique_ptr<objectives::Objective>(
          std::make_unique<objectives::SftPlugin>());
    case ObjectiveConfig::kPrior: {
      auto prior = objectives::PriorPlugin::Create(config.prior());
      if (!prior.ok()) return prior.status();
      return std::unique_ptr<objectives::Objective>(*std::move(prior));
    }
    case ObjectiveConfig::kImplicitSft: {
      auto isft = objectives::ImplicitSftPlugin::Create(config.implicit_sft());
      if (!isft.ok()) return isft.status();
      return std::unique_ptr<objectives::Objective>(*std::move(isft));
    }
    case ObjectiveConfig::kSparsepo:
      return absl::InvalidArgumentError(
          "objective.sparsepo: not a coefficient-form objective; the loop runs "
          "it with SparsePoStep");
    case ObjectiveConfig::kCpo: {
      auto cpo = objectives::CpoObjective::Create(config.cpo(), vocab_size);
      if (!cpo.ok()) return cpo.status();
      return std::unique_ptr<objectives::Objective>(*std::move(cpo));
    }
    case ObjectiveConfig::kOrpo: {
      auto orpo = objectives::OrpoObjective::Create(config.orpo(), vocab_size);
      if (!orpo.ok()) return orpo.status();
      return std::unique_ptr<objectives::Objective>(*std::move(orpo));
    }
    case ObjectiveConfig::kKto: {
      auto kto = objectives::KtoObjective::Create(config.kto(), vocab_size);
      if (!kto.ok()) return kto.status();
      return std::unique_ptr<objectives::Objective>(*std::move(kto));
    }
    default:
      return absl::InvalidArgumentError(
          "objective: no objective is set (choose one of: dpo, sft, prior, "
          "implicit_sft, sparsepo, kto, cpo, orpo)");
  }
}

int KlChunk(const TrainConfig& config, const objectives::Objective* objective,
            int world_size) {
  if (objective == nullptr || !objective->has_prepass()) return 0;
  const BatchConfig& batch = config.batch();
  return batch.global_batch_size() > 0 ? batch.global_batch_size()
                                       : batch.micro_batch_size() * world_size;
}

Trainer::Trainer(const TrainConfig& config, std::ostream& log,
                 comm::Communicator* comm, bool log_is_terminal)
    : config_(config),
      log_(log),
      comm_(comm),
      log_is_terminal_(log_is_terminal),
      rank_(comm ? comm->rank() : 0),
      world_(comm ? comm->world_size() : 1) {}

absl::Status Trainer::SelectDevice() {
  absl::StatusOr<kernels::SelectedBackend> selected =
      loop::SelectDevice(config_, rank_);
  // A rank that fails here ends the job (AbortAll in the caller), also the
  // ranks already waiting in the GPU communicator's setup below.
  if (!selected.ok()) return selected.status();
  if (selected->gpu && world_ > 1) {
    // GPU ranks exchange device buffers (comm/gpu_communicator.h); host
    // buffers (metric sums, fingerprints) still travel over the caller's
    // communicator, through this one.
    absl::StatusOr<comm::LaunchEnv> env = comm::DetectLaunchEnv();
    if (!env.ok()) return env.status();
    const absl::Duration timeout =
        config_.collective_timeout_s() > 0
            ? absl::Seconds(config_.collective_timeout_s())
            : comm::kDefaultCollectiveTimeout;
    absl::StatusOr<std::unique_ptr<comm::Communicator>> gpu =
        comm::CreateGpuCommunicator(comm_, env->local_rank, selected->stream,
                                    timeout);
    if (!gpu.ok()) {
      return absl::Status(
          gpu.status().code(),
          absl::StrCat("rank ", rank_, ": ", gpu.status().message()));
    }
    gpu_comm_ = *std::move(gpu);
    comm_ = gpu_comm_.get();
  }
  backend_ = std::move(selected->backend);
  out() << selected->description << "\n";
  if (gpu_comm_ != nullptr) {
    out() << "data-parallel GPU ranks: " << gpu_comm_->Name() << "\n";
  }
  return absl::OkStatus();
}

std::ostream& Trainer::out() {
  static std::ostream* const null_stream = new std::ostream(nullptr);
  return rank_ == 0 ? log_ : *null_stream;
}

Trainer::~Trainer() {
  if (reference_adapters_ != nullptr) backend_->Free(reference_adapters_);
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(
    const TrainConfig& config, std::ostream& log, comm::Communicator* comm,
    bool log_is_terminal) {
  std::unique_ptr<Trainer> t(new Trainer(config, log, comm, log_is_terminal));
  absl::Status s = t->Init();
  if (!s.ok()) return s;
  return t;
}

absl::Status Trainer::Init() {
  const std::string& run_dir = config_.run_dir();
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat(
        run_dir, ": cannot create the run directory: ", ec.message()));
  }
  absl::Status s = io::CheckRunDirectory(run_dir);
  if (!s.ok()) return s;
  s = config::FillBatchForWorld(world_, &config_);
  if (!s.ok()) return s;
  s = config::CheckBatchForWorld(config_, world_);
  if (!s.ok()) return s;
  const std::string resolved = config::ResolvedConfigText(config_);
  if (world_ > 1) {
    // Every rank reads the config itself; a rank started with other flags or
    // another file would silently train something else.
    util::Fingerprinter fp;
    fp.Update(resolved);
    s = comm::CheckSameAcrossRanks(*comm_, fp.Value(), "the resolved config");
    if (!s.ok()) return s;
  }
  if (rank_ == 0) {
    s = io::WriteFileAtomically(run_dir + "/config.textproto", resolved);
    if (!s.ok()) return s;
  }
  // Before training, not after it: a run must not end by failing to save.
  const std::string& export_dir = config_.export_hf_path();
  if (!export_dir.empty() && std::filesystem::exists(export_dir, ec) &&
      !std::filesystem::is_empty(export_dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "export_hf_path: ", export_dir,
        " exists and is not empty; name a new folder or remove it"));
  }

  s = SelectDevice();
  if (!s.ok()) return s;
  const ModelConfig& mc = config_.model();
  std::optional<io::WeightStore> store;
  if (!mc.hf_path().empty()) {
    auto spec = io::ReadHfConfig(mc.hf_path());
    if (!spec.ok()) return spec.status();
    spec_ = *spec;
    auto opened = io::WeightStore::Open(mc.hf_path());
    if (!opened.ok()) return opened.status();
    store.emplace(*std::move(opened));
  } else {
    spec_ = SpecFromConfig(mc);
  }

  const bool sparsepo = config_.objective().has_sparsepo();
  if (!sparsepo) {
    auto objective = CreateObjective(config_.objective(),
                                     static_cast<int>(spec_.vocab_size));
    if (!objective.ok()) return objective.status();
    objective_ = *std::move(objective);
  }
  const data::ExampleKind kind =
      sparsepo ? data::ExampleKind::kPreference : objective_->example_kind();

  const DataConfig& dc = config_.data();
  data::DataOptions data_options;
  data_options.vocab_size = static_cast<int>(spec_.vocab_size);
  data_options.truncation.max_length = dc.max_length();
  data_options.truncation.max_prompt_length = dc.max_prompt_length();
  data_options.truncation.mode = dc.truncation_mode();
  data_options.tokenizer_path =
      data::DefaultTokenizerPath(dc.tokenizer_path(), mc.hf_path());
  data_options.chat_template = dc.chat_template();
  data_options.cache_dir =
      dc.cache_dir().empty() ? run_dir + "/data_cache" : dc.cache_dir();
  data_options.kl_chunk = KlChunk(config_, objective_.get(), world_);
  const std::vector<std::string> train_files(dc.train_files().begin(),
                                             dc.train_files().end());
  // Rank 0 tokenizes text data and writes its token cache first; the other
  // ranks then read the cache instead of all tokenizing (and writing) the
  // same files at once. Every rank reaches the barrier, even after an error.
  absl::StatusOr<data::Dataset> ds = absl::UnknownError("not loaded");
  if (rank_ == 0) {
    ds = data::LoadDataset(train_files, kind, data_options, &out());
  }
  if (world_ > 1) {
    s = comm_->Barrier();
    if (!s.ok()) return s;
  }
  if (rank_ != 0) {
    ds = data::LoadDataset(train_files, kind, data_options, nullptr);
  }
  if (!ds.ok()) return ds.status();
  dataset_ = *std::move(ds);
  out() << "data: " << dataset_.examples.size() << " examples";
  if (dataset_.truncated > 0)
    out() << ", " << dataset_.truncated << " truncated";
  if (dataset_.dropped_too_long > 0) {
    out() << ", " << dataset_.dropped_too_long
          << " dropped (prompt leaves no room within max_length)";
  }
  out() << "\n";
  if (config_.objective().has_kto()) {
    const int64_t desirable =
        std::count_if(dataset_.examples.begin(), dataset_.examples.end(),
                      [](const data::Example& ex) { return ex.label; });
    const KtoConfig& kto = config_.objective().kto();
    const std::string advice = objectives::KtoWeightWarning(
        kto.desirable_weight(), kto.undesirable_weight(), desirable,
        static_cast<int64_t>(dataset_.examples.size()) - desirable);
    if (!advice.empty()) out() << "warning: " << advice << "\n";
  }
  if (dataset_.identical_responses > 0) {
    out() << "warning: " << dataset_.identical_responses
          << " pairs have identical chosen and rejected responses\n";
  }
  if (!dc.eval_files().empty() && (sparsepo || mc.live_reference())) {
    return absl::UnimplementedError(
        "data.eval_files: held-out evaluation runs with a precomputed "
        "reference; it is not available yet for objective.sparsepo or "
        "model.live_reference (leave data.eval_files empty)");
  }
  if (!dc.eval_files().empty()) {
    auto eval = ReadEvalData(config_, *objective_,
                             static_cast<int>(spec_.vocab_size), world_);
    if (!eval.ok()) return eval.status();
    out() << "eval data: " << eval->examples.size() << " examples\n";
    eval_data_ = *std::move(eval);
  }

  data_fingerprint_ = DataFingerprint(dataset_);
  if (world_ > 1) {
    s = comm::CheckSameAcrossRanks(*comm_, data_fingerprint_,
                                   "the training data");
    if (!s.ok()) return s;
  }

  global_batch_ = config_.batch().global_batch_size();
  const int n = static_cast<int>(dataset_.examples.size());
  // Rounded up without n + global_batch_ - 1, which overflows for a
  // global batch near the int limit.
  steps_per_epoch_ = n / global_batch_ + (n % global_batch_ != 0 ? 1 : 0);
  // A last, partial global batch must give every rank at least one example.
  if (n % global_batch_ != 0 && n % global_batch_ < world_) {
    --steps_per_epoch_;
    out() << "notice: the last " << n % global_batch_
          << " examples of each epoch are skipped (fewer than the " << world_
          << " ranks)\n";
  }
  if (steps_per_epoch_ == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the data has ", n, " examples, fewer than the ", world_, " ranks"));
  }
  if (config_.max_steps() > 0) {
    total_steps_ = config_.max_steps();
  } else if (__builtin_mul_overflow(config_.num_epochs(), steps_per_epoch_,
                                    &total_steps_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_epochs: ", config_.num_epochs(), " epochs of ", steps_per_epoch_,
        " steps are more than ", std::numeric_limits<int>::max(),
        " steps; lower num_epochs or set max_steps"));
  }
  // Before the reference pass, which reports its progress through it.
  if (rank_ == 0) {
    progress_ = std::make_unique<metrics::ProgressReporter>(
        log_, log_is_terminal_, total_steps_, /*first_step=*/step_);
    if (log_is_terminal_) {
      progress_->set_columns(metrics::TerminalColumns(STDOUT_FILENO));
    }
  }

  const int mb = config_.batch().micro_batch_size();
  model::Capacity cap;
  cap.max_seq_len = data::MaxSequenceLength(dataset_.examples);
  if (eval_data_.has_value()) {
    cap.max_seq_len = std::max(cap.max_seq_len,
                               data::MaxSequenceLength(eval_data_->examples));
  }
  // ValidateTrainConfig bounds micro_batch_size * data.max_length; a config
  // built in code may not be validated.
  // SparsePO (no coefficient-form objective) trains on pairs.
  const int sequences_per_example =
      objective_ != nullptr ? objectives::SequencesPerExample(*objective_) : 2;
  if (__builtin_mul_overflow(sequences_per_example, mb, &cap.max_seqs) ||
      __builtin_mul_overflow(cap.max_seqs, cap.max_seq_len, &cap.max_rows)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch.micro_batch_size: ", mb, " sequences of up to ", cap.max_seq_len,
        " tokens are more than ", std::numeric_limits<int>::max(),
        " tokens in one micro-batch"));
  }
  // Equal ZeRO-1 shards, each a multiple of 16 floats (vector alignment).
  cap.param_multiple = 16 * world_;
  cap.activation_checkpointing = config_.activation_checkpointing();
  // The output layer and SparsePO's mask inputs are allocated after the
  // models; each model's memory check counts them (SparsePO's reference is
  // counted with the policy's shape).
  const int output_chunk = objectives::OutputChunkRows(
      config_.output_chunk_tokens(), spec_.vocab_size, cap.max_rows);
  cap.objective_floats = objectives::OutputLayerFloats(
      output_chunk, spec_.vocab_size, cap.max_rows, spec_.hidden,
      sparsepo ? 2 : 1);
  if (sparsepo) {
    cap.objective_floats += SparsePoStep::MaskInputFloats(
        config_.objective().sparsepo().mask() == SparsePoConfig::LEARNED,
        spec_.n_layer, spec_.hidden, cap.max_rows);
  }
  model::LoraOptions lora;
  if (mc.has_lora()) {
    if (!mc.lora().adapter_path().empty()) {
      auto read = ReadStartingAdapter(mc.lora(), spec_);
      if (!read.ok()) return read.status();
      start_adapter_ = *std::move(read);
      lora = start_adapter_->first;
      lora_settings_ = start_adapter_->second.settings;
      lora_settings_.dropout = lora.dropout;
    } else {
      lora_settings_ = SettingsFromConfig(mc.lora());
      auto options = LoraOptionsFor(lora_settings_, spec_);
      if (!options.ok()) return options.status();
      lora = *std::move(options);
    }
    lora.base_bf16 = mc.base_dtype() == ModelConfig::WEIGHT_BF16;
  }
  absl::StatusOr<std::unique_ptr<model::Decoder>> policy;
  {
    kernels::MemoryPurpose purpose("policy model");
    policy = model::Decoder::Create(spec_, backend_.get(), cap, true, lora);
  }
  if (!policy.ok()) return policy.status();
  policy_ = *std::move(policy);
  if (store.has_value()) {
    s = policy_->LoadHf(*store);
    if (!s.ok()) return s;
  } else {
    policy_->InitRandom(config_.seed(), mc.init_std());
  }
  if (start_adapter_.has_value()) {
    const std::vector<model::LoraAdapterRef> refs = policy_->lora_adapters();
    const std::vector<lora::AdapterFactors>& factors =
        start_adapter_->second.factors;
    for (size_t i = 0; i < refs.size(); ++i) {
      backend_->CopyToDevice(policy_->params() + refs[i].a, factors[i].a.data(),
                             factors[i].a.size());
      backend_->CopyToDevice(policy_->params() + refs[i].b, factors[i].b.data(),
                             factors[i].b.size());
    }
    // TRL's reference for a model that already holds an adapter is a frozen
    // copy of that adapter (docs/lora.md): kept beside the trained one.
    {
      kernels::MemoryPurpose purpose("the starting adapter (the reference)");
      reference_adapters_ = backend_->Alloc(policy_->padded_param_count());
    }
    backend_->Zero(reference_adapters_, policy_->padded_param_count());
    backend_->Axpy(reference_adapters_, 1.0f, policy_->params(),
                   policy_->padded_param_count());
    policy_->set_reference_adapters(reference_adapters_);
    out() << "LoRA: adapters from " << mc.lora().adapter_path() << "\n";
    start_adapter_.reset();
  } else if (policy_->has_lora()) {
    policy_->InitAdapters(config_.seed() ^ 0x4C6F5241496E6974ull);  // LoRAInit
  }
  if (policy_->has_lora()) {
    size_t adapter_params = 0, base_params = 0;
    for (const model::ParamTensor& t : policy_->layout().tensors()) {
      adapter_params += t.numel;
    }
    for (const model::ParamTensor& t : policy_->base_layout().tensors()) {
      base_params += t.numel;
    }
    out() << "LoRA: r " << lora.r << ", scaling " << lora.scaling
          << ", dropout " << lora.dropout << ", " << lora.modules.size()
          << " adapted layers; " << adapter_params
          << " trainable parameters (base model " << base_params << ", frozen, "
          << (lora.base_bf16 ? "bf16" : "fp32") << ": " << policy_->base_bytes()
          << " bytes)\n";
  }

  if (sparsepo) {
    // SparsePO's reference stays in memory for the whole run (§6); a LoRA
    // policy is its own reference, in reference mode (docs/lora.md).
    std::unique_ptr<model::Decoder> reference;
    if (!policy_->has_lora()) {
      auto copy = CreateReferenceModel(mc, *policy_);
      if (!copy.ok()) return copy.status();
      reference = *std::move(copy);
    }
    auto step =
        SparsePoStep::Create(config_, policy_.get(), std::move(reference));
    if (!step.ok()) return step.status();
    sparsepo_ = *std::move(step);
    if (policy_->has_lora()) {
      out() << "reference: live (the model in reference mode: "
            << (reference_adapters_ != nullptr ? "its starting adapter"
                                               : "its adapters off")
            << ")\n";
    } else {
      out() << "reference: live (frozen copy in memory)\n";
    }
  } else if (objective_->reference_needs() !=
             objectives::ReferenceNeeds::kNone) {
    if (mc.live_reference() && policy_->has_lora()) {
      live_reference_ = std::make_unique<LiveReference>(
          policy_.get(), config_.output_chunk_tokens(),
          dataset_.examples.size());
      out() << "reference: live (the model in reference mode: "
            << (reference_adapters_ != nullptr ? "its starting adapter"
                                               : "its adapters off")
            << ")\n";
    } else if (mc.live_reference()) {
      auto reference = CreateReferenceModel(mc, *policy_);
      if (!reference.ok()) return reference.status();
      live_reference_ = std::make_unique<LiveReference>(
          *std::move(reference), config_.output_chunk_tokens(),
          dataset_.examples.size());
      out() << "reference: live (frozen copy in memory)\n";
    } else {
      s = BuildReferences();
      if (!s.ok()) return s;
    }
  }

  // TR-DPO moves the live reference towards the policy (Step).
  if (const DpoConfig& dpo = config_.objective().dpo(); dpo.sync_ref_model()) {
    s = CheckReferenceSync(dpo, live_reference_.get(), *policy_);
    if (!s.ok()) return s;
    sync_reference_ = true;
    out() << "reference: synced to the policy every "
          << dpo.ref_model_sync_steps() << " steps with alpha "
          << dpo.ref_model_mixup_alpha() << " (TR-DPO)\n";
  }

  out() << "output layer: chunks of " << output_chunk << " rows ("
        << (sparsepo ? "2 x " : "") << "[" << output_chunk << ", "
        << spec_.vocab_size << "] logits, "
        << absl::StrFormat("%.1f MiB", static_cast<double>(output_chunk) *
                                           spec_.vocab_size * sizeof(float) /
                                           (1 << 20) * (sparsepo ? 2 : 1))
        << (config_.output_chunk_tokens() > 0 ? ", output_chunk_tokens"
                                              : ", sized from the vocabulary")
        << ")\n";
  if (!sparsepo) {
    kernels::MemoryPurpose purpose("output layer");
    output_ = std::make_unique<objectives::ChunkedOutputLayer>(
        backend_.get(), cap.max_rows, spec_.hidden, spec_.vocab_size,
        config_.output_chunk_tokens());
    device_objective_ = objectives::DeviceObjective::Create(
        *objective_, backend_.get(), cap.max_seqs,
        static_cast<int>(spec_.vocab_size));
  }
  sync_ = std::make_unique<GradientSync>(world_ > 1 ? comm_ : nullptr,
                                         policy_->padded_param_count(),
                                         config_.zero_stage());
  policy_->set_grads_ready_callback([this](int, model::ParamRange range) {
    sync_->BlockReady(policy_->grads(), range);
  });
  if (eval_data_.has_value()) {
    auto evaluator = Evaluator::Create(objective_.get(), *std::move(eval_data_),
                                       std::move(eval_references_), mb, comm_);
    if (!evaluator.ok()) return evaluator.status();
    evaluator_ = *std::move(evaluator);
    eval_data_.reset();
  }
  {
    kernels::MemoryPurpose purpose("AdamW moments");
    optimizer_ = std::make_unique<optim::AdamWOptimizer>(
        backend_.get(), policy_->layout(), config_.optimizer(),
        sync_->shard().begin, sync_->shard().end);
  }
  // After the reference pass, which must see the initial policy.
  s = InitCheckpoints();
  if (!s.ok()) return s;

  if (rank_ == 0) {
    auto metrics = metrics::MetricsLog::Open(run_dir + "/metrics.jsonl",
                                             resumed_metrics_lines_);
    if (!metrics.ok()) return metrics.status();
    metrics_log_.emplace(*std::move(metrics));
    if (metrics_log_->lines() < resumed_metrics_lines_) {
      out() << "notice: " << run_dir << "/metrics.jsonl has "
            << metrics_log_->lines() << " lines, the checkpoint counted "
            << resumed_metrics_lines_ << "; appending after them\n";
    }
    // Next to metrics.jsonl, so `tensorboard --logdir=RUN_DIR` (or its
    // parent, to compare runs) finds it.
    auto events = metrics::TensorBoardWriter::Open(run_dir);
    if (!events.ok()) return events.status();
    tensorboard_.emplace(*std::move(events));
    if (step_ > 0) {
      s = tensorboard_->WriteSessionStart(step_ + 1);
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

namespace {

// Makes a LoRA decoder the reference model for its lifetime (its starting
// adapter, or none: Decoder::set_reference_mode).
class ReferenceMode {
 public:
  explicit ReferenceMode(model::Decoder* decoder) : decoder_(decoder) {
    decoder_->set_reference_mode(true);
  }
  ~ReferenceMode() { decoder_->set_reference_mode(false); }
  ReferenceMode(const ReferenceMode&) = delete;
  ReferenceMode& operator=(const ReferenceMode&) = delete;

 private:
  model::Decoder* decoder_;
};

}  // namespace

absl::Status Trainer::BuildReferences() {
  // The frozen reference lives only for this pass; training holds no second
  // model (docs/objectives.md §6). With LoRA it is the policy in reference
  // mode (its starting adapter, or its adapters off: docs/lora.md).
  std::unique_ptr<model::Decoder> copy;
  std::optional<ReferenceMode> reference_mode;
  if (policy_->has_lora()) {
    reference_mode.emplace(policy_.get());
  } else {
    auto ref = CreateReferenceModel(config_.model(), *policy_);
    if (!ref.ok()) return ref.status();
    copy = *std::move(ref);
  }
  model::Decoder& reference = copy != nullptr ? *copy : *policy_;
  kernels::MemoryPurpose purpose("reference log-probs pre-pass");
  const reference::ReferenceOptions options =
      ReferenceOptionsFor(*objective_, config_, comm_);
  auto result = reference::ComputeReferenceValues(
      reference, dataset_.examples, options,
      config_.run_dir() + "/reference_cache",
      [this](int64_t done, int64_t total) {
        if (progress_ != nullptr) {
          progress_->Phase("reference log-probs", done, total);
        }
      });
  if (!result.ok()) return result.status();
  if (!result->rebuilt_because.empty()) {
    out() << "reference cache " << result->cache_path
          << " was rebuilt: " << result->rebuilt_because << "\n";
  }
  out() << "reference log-probs: "
        << (result->loaded_from_cache ? "loaded from " : "computed into ")
        << result->cache_path << "\n";
  references_ = std::move(result->values);
  if (eval_data_.has_value()) {
    auto eval = reference::ComputeReferenceValues(
        reference, eval_data_->examples, options,
        config_.run_dir() + "/reference_cache",
        [this](int64_t done, int64_t total) {
          if (progress_ != nullptr) {
            progress_->Phase("eval reference log-probs", done, total);
          }
        });
    if (!eval.ok()) return eval.status();
    eval_references_ = std::move(eval->values);
  }
  return absl::OkStatus();
}

std::vector<int> Trainer::GlobalBatch(int step) {
  const int n = static_cast<int>(dataset_.examples.size());
  const int epoch = step / steps_per_epoch_;
  const int index = step % steps_per_epoch_;
  if (epoch_order_for_ != epoch) {
    epoch_order_.resize(n);
    std::iota(epoch_order_.begin(), epoch_order_.end(), 0);
    if (config_.data().shuffle()) {
      // Fisher-Yates with a generator derived from (seed, epoch), so any
      // epoch's order can be recreated on resume without replaying the others.
      util::Rng rng(config_.seed() * 0x9E3779B97F4A7C15ull + epoch + 1);
      for (int i = n - 1; i > 0; --i) {
        std::swap(epoch_order_[i], epoch_order_[rng.Below(i + 1)]);
      }
    }
    epoch_order_for_ = epoch;
  }
  const int begin = index * global_batch_;
  const int end = std::min(n, begin + global_batch_);
  return std::vector<int>(epoch_order_.begin() + begin,
                          epoch_order_.begin() + end);
}

std::map<std::string, double> Trainer::ForwardBackward(
    const std::vector<int>& indices) {
  objectives::MetricSums prepass, sums;
  // One rank's share, as the sums below; without a communicator it cannot
  // fail.
  LocalPrepass(indices, /*comm=*/nullptr, &prepass).IgnoreError();
  const int64_t tokens =
      LocalForwardBackward(indices, Denominator(indices),
                           TokenDenominator(indices), &prepass, &sums);
  std::map<std::string, double> m = sums.Means();
  if (objective_ != nullptr) objective_->FinishMetrics(sums, &m);
  m["tokens"] = static_cast<double>(tokens);
  return m;
}

absl::Status ScorePrepass(
    const objectives::Objective& objective,
    const std::vector<data::Example>& examples, const std::vector<int>& indices,
    int micro_batch, model::Decoder* policy,
    objectives::ChunkedOutputLayer* output,
    const std::function<const objectives::ReferenceValues*(
        const std::vector<int>& micro)>& reference,
    comm::Communicator* comm, data::Batch* batch,
    objectives::DeviceObjective* device, objectives::MetricSums* prepass) {
  if (!objective.has_prepass()) return absl::OkStatus();
  std::vector<int> micro;
  for (size_t begin = 0; begin < indices.size(); begin += micro_batch) {
    const size_t n = std::min<size_t>(micro_batch, indices.size() - begin);
    micro.assign(indices.begin() + begin, indices.begin() + begin + n);
    data::BuildBatch(examples, micro.data(), static_cast<int>(n),
                     /*include_context=*/true, batch, /*only_response=*/1);
    const objectives::ReferenceValues* values = reference(micro);
    const float* hidden = policy->Forward(batch->packed);
    if (device != nullptr) {
      output->ForwardOnBackend(hidden, policy->output_embedding(),
                               batch->packed.tokens.data(), batch->segments,
                               /*log_sum_sq_probs=*/false);
      device->Prepass(batch->segments, micro, *values, output);
      continue;
    }
    const std::vector<objectives::SequenceScores> scores =
        output->Forward(hidden, policy->output_embedding(),
                        batch->packed.tokens.data(), batch->segments);
    objectives::MicroBatchView view{&micro, &scores, &output->row_logp(),
                                    values};
    view.dataset = &examples;
    objective.AddPrepass(view, prepass);
  }
  if (device != nullptr) device->TakeMetrics(prepass);
  if (comm == nullptr || comm->world_size() <= 1) return absl::OkStatus();
  std::vector<double> flat = prepass->Flattened();
  absl::Status s = comm->AllReduceSum(flat.data(), flat.size());
  if (s.ok()) prepass->SetFlattened(flat);
  return s;
}

absl::Status Trainer::LocalPrepass(const std::vector<int>& local,
                                   comm::Communicator* comm,
                                   objectives::MetricSums* prepass) {
  if (objective_ == nullptr) return absl::OkStatus();
  return ScorePrepass(
      *objective_, dataset_.examples, local, config_.batch().micro_batch_size(),
      policy_.get(), output_.get(),
      [this](
          const std::vector<int>& micro) -> const objectives::ReferenceValues* {
        if (live_reference_ == nullptr) return &references_;
        return &live_reference_->Score(dataset_.examples, micro,
                                       objective_->reference_sees_context(),
                                       /*only_response=*/1);
      },
      comm, &batch_, device_objective_.get(), prepass);
}

double Trainer::TokenDenominator(const std::vector<int>& batch) const {
  if (objective_ == nullptr) return 0;
  return objective_->TokenDenominator(dataset_.examples, batch);
}

double Trainer::Denominator(const std::vector<int>& batch) const {
  // SparsePO's loss is a mean over pairs.
  if (sparsepo_ != nullptr) return static_cast<double>(batch.size());
  return objective_->Denominator(dataset_.examples, batch);
}

std::vector<optim::GradientSpan> Trainer::ExtraGradients() {
  if (sparsepo_ == nullptr) return {};
  return sparsepo_->Gradients();
}

std::vector<io::TensorToWrite> Trainer::ExtraCheckpointTensors() {
  if (sparsepo_ == nullptr) return {};
  return sparsepo_->CheckpointTensors();
}

absl::Status Trainer::RestoreExtraCheckpointTensors(
    absl::Span<const io::TensorToWrite> tensors) {
  if (sparsepo_ != nullptr) return sparsepo_->RestoreCheckpointTensors(tensors);
  if (tensors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("extra checkpoint tensors (e.g. ", tensors[0].name,
                   ") need objective.sparsepo"));
}

std::vector<int> Trainer::LocalShard(const std::vector<int>& global) const {
  const size_t n = global.size();
  const size_t begin = n * rank_ / world_, end = n * (rank_ + 1) / world_;
  return std::vector<int>(global.begin() + begin, global.begin() + end);
}

int64_t Trainer::LocalForwardBackward(const std::vector<int>& indices,
                                      double denominator,
                                      double token_denominator,
                                      const objectives::MetricSums* prepass,
                                      objectives::MetricSums* sums) {
  // Every micro-batch's contribution is divided by the global batch's
  // denominator, so the update does not depend on how the batch is split into
  // micro-batches and ranks (docs/objectives.md §0).
  const int mb = config_.batch().micro_batch_size();
  const int C = static_cast<int>(spec_.hidden);
  int64_t tokens = 0;
  std::vector<int> micro;
  std::vector<objectives::SequenceScores> scores;
  // After a pre-pass, the training pass builds response 0 only (objective.h).
  const int only_response =
      objective_ != nullptr && objective_->has_prepass() ? 0 : -1;

  for (size_t begin = 0; begin < indices.size(); begin += mb) {
    const size_t n = std::min<size_t>(mb, indices.size() - begin);
    micro.assign(indices.begin() + begin, indices.begin() + begin + n);
    data::BuildBatch(dataset_.examples, micro.data(), static_cast<int>(n),
                     /*include_context=*/true, &batch_, only_response);
    tokens += batch_.packed.rows();
    if (sparsepo_ != nullptr) {
      // LoRA's dropout draws a mask per training micro-batch (docs/lora.md);
      // the reference forward, in reference mode, never drops.
      policy_->set_lora_dropout_seed(LoraDropoutSeed(
          config_.seed(), step_, static_cast<int>(begin / mb), rank_));
      sparsepo_->ForwardBackward(batch_, denominator);
      policy_->set_lora_dropout_seed(std::nullopt);
      continue;
    }
    const objectives::ReferenceValues* reference = &references_;
    if (live_reference_ != nullptr) {
      reference = &live_reference_->Score(dataset_.examples, micro,
                                          objective_->reference_sees_context(),
                                          only_response);
    }
    // LoRA's dropout draws a mask per training micro-batch (docs/lora.md).
    policy_->set_lora_dropout_seed(LoraDropoutSeed(
        config_.seed(), step_, static_cast<int>(begin / mb), rank_));
    const float* hidden = policy_->Forward(batch_.packed);
    std::vector<objectives::ResponseSegment> with_prompts;
    const std::vector<objectives::ResponseSegment>* segments = &batch_.segments;
    if (objective_->scores_prompts()) {
      with_prompts = objectives::WithPromptSegments(batch_.segments,
                                                    dataset_.examples, micro);
      segments = &with_prompts;
    }
    if (device_objective_ != nullptr) {
      // The coefficients stay on the backend (docs/objectives.md §7).
      output_->ForwardOnBackend(hidden, policy_->output_embedding(),
                                batch_.packed.tokens.data(), *segments,
                                objective_->needs_row_log_sum_sq_probs());
      device_objective_->Coefficients(*segments, micro, dataset_.examples,
                                      reference, prepass, denominator,
                                      token_denominator, output_.get());
    } else {
      const bool log_sum_sq = objective_->needs_row_log_sum_sq_probs();
      scores =
          output_->Forward(hidden, policy_->output_embedding(),
                           batch_.packed.tokens.data(), *segments, log_sum_sq);
      objectives::MicroBatchView view{&micro, &scores, &output_->row_logp(),
                                      reference};
      view.denominator = denominator;
      view.token_denominator = token_denominator;
      view.dataset = &dataset_.examples;
      view.prepass = prepass;
      if (log_sum_sq) {
        view.row_log_sum_sq_probs = &output_->row_log_sum_sq_probs();
      }
      objective_->Coefficients(view, denominator, &coef_, sums);
      objectives::AddEntropyMetric(scores, batch_.segments.size(), sums);
    }
    backend_->Zero(policy_->dhidden(),
                   static_cast<size_t>(batch_.packed.rows()) * C);
    if (device_objective_ != nullptr) {
      output_->BackwardOnBackend(
          policy_->dhidden(), policy_->output_embedding_grad(), hidden,
          policy_->output_embedding(), batch_.packed.tokens.data(), *segments);
    } else {
      output_->Backward(policy_->dhidden(), policy_->output_embedding_grad(),
                        hidden, policy_->output_embedding(),
                        batch_.packed.tokens.data(), *segments, coef_);
    }
    // The last micro-batch's backward finishes each block's gradients: their
    // exchange can start while the blocks below are still computed.
    if (begin + n == indices.size()) sync_->BeginLastBackward();
    policy_->Backward(batch_.packed);
    policy_->set_lora_dropout_seed(std::nullopt);
  }
  if (device_objective_ != nullptr) device_objective_->TakeMetrics(sums);
  if (sparsepo_ != nullptr) sparsepo_->TakeMetrics(sums);
  return tokens;
}

absl::StatusOr<std::map<std::string, double>> Trainer::Step() {
  const auto t0 = std::chrono::steady_clock::now();
  kernels::MemoryPurpose purpose(absl::StrCat("training step ", step_ + 1));
  const std::vector<int> global = GlobalBatch(step_);
  const std::vector<int> local = LocalShard(global);
  objectives::MetricSums prepass, sums;
  // The KL sequences of the pre-pass count in neither tokens nor num_tokens,
  // as TRL's num_tokens counts only the training batch.
  if (absl::Status s =
          LocalPrepass(local, world_ > 1 ? comm_ : nullptr, &prepass);
      !s.ok()) {
    return s;
  }
  double tokens = static_cast<double>(LocalForwardBackward(
      local, Denominator(global), TokenDenominator(global), &prepass, &sums));
  // Every rank calls Finish, also one whose share of the batch was empty.
  absl::Status s = sync_->Finish(policy_->grads());
  if (!s.ok()) return s;
  if (world_ > 1) {
    // The mask networks' gradients (SparsePO) are summed in full: they are
    // small and their optimizers are not sharded.
    for (const optim::GradientSpan& g : ExtraGradients()) {
      if (s.ok()) s = comm_->AllReduceSum(g.grads, g.n);
    }
    if (!s.ok()) return s;
    std::vector<double> flat = sums.Flattened();
    flat.push_back(tokens);
    s = comm_->AllReduceSum(flat.data(), flat.size());
    if (!s.ok()) return s;
    tokens = flat.back();
    flat.pop_back();
    sums.SetFlattened(flat);
  }
  // Every token of every sequence, prompt included, as TRL's num_tokens
  // counts attention-mask tokens; skipped steps count too.
  num_tokens_ += static_cast<int64_t>(tokens);
  std::map<std::string, double> m = sums.Means();
  if (objective_ != nullptr) objective_->FinishMetrics(sums, &m);
  m["num_tokens"] = static_cast<double>(num_tokens_);
  // The global norm covers the policy (sharded under ZeRO-1, so its squares
  // are summed across ranks) and the mask networks (whole on every rank).
  auto squares =
      sync_->GlobalGradSquares(optimizer_->LocalGradSquares(policy_->grads()));
  if (!squares.ok()) return squares.status();
  double total_squares = *squares;
  for (const optim::GradientSpan& g : ExtraGradients()) {
    total_squares += sparsepo_->mask_backend()->SumSquares(g.grads, g.n);
  }
  const double grad_norm = std::sqrt(total_squares);
  const double lr = optim::ScheduledLearningRate(
      config_.schedule(), config_.optimizer().lr(), step_, total_steps_);
  // Every rank sees the same reduced values, so every rank decides alike.
  const bool finite = std::isfinite(grad_norm) && std::isfinite(m["loss"]);
  if (!finite && !config_.skip_nonfinite_steps()) {
    return absl::InternalError(absl::StrCat(
        "step ", step_ + 1, ": the ",
        std::isfinite(m["loss"]) ? "gradient" : "loss",
        " is not finite (NaN or Inf); lower the learning rate, check the "
        "data, or set skip_nonfinite_steps to skip such steps"));
  }
  if (finite) {
    optimizer_->ClipWithNorm(policy_->grads(), grad_norm);
    if (sparsepo_ != nullptr) {
      optim::ScaleForClip(sparsepo_->mask_backend(), ExtraGradients(),
                          grad_norm, config_.optimizer().max_grad_norm());
    }
    optimizer_->Step(policy_->params(), policy_->grads(),
                     static_cast<float>(lr));
    if (sparsepo_ != nullptr) sparsepo_->Update(static_cast<float>(lr));
    s = sync_->GatherParams(policy_->params());
    if (!s.ok()) return s;
  } else {
    out() << "step " << step_ + 1
          << ": the gradient is not finite; update skipped "
             "(skip_nonfinite_steps)\n";
    if (sparsepo_ != nullptr) sparsepo_->ZeroGradients();
  }
  m["skipped_nonfinite"] = finite ? 0.0 : 1.0;
  backend_->Zero(policy_->grads(), policy_->padded_param_count());
  ++step_;
  // TR-DPO: after the optimizer step, as TRL's SyncRefModelCallback at
  // on_step_end (docs/objectives.md §1). Every rank holds the whole updated
  // policy (GatherParams) and mixes its own copy of the reference alike.
  const DpoConfig& dpo = config_.objective().dpo();
  if (sync_reference_ && step_ % dpo.ref_model_sync_steps() == 0) {
    live_reference_->MixIn(*policy_, dpo.ref_model_mixup_alpha());
  }

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  m["grad_norm"] = grad_norm;
  m["lr"] = lr;
  m["epoch"] = static_cast<double>(step_) / steps_per_epoch_;
  m["tokens_per_second"] = seconds > 0 ? tokens / seconds : 0.0;
  return m;
}

absl::Status Trainer::Run() {
  // From the first step on there is a state to save.
  if (config_.save_on_signal()) DeferStopSignals();
  absl::Status s = RunSteps();
  // A run stopped by a signal continues later from its checkpoint: the final
  // evaluation and export belong to the run's real end.
  const bool finished = stop_signal_ == 0;
  if (s.ok() && finished && evaluator_ != nullptr && last_eval_step_ != step_) {
    s = Evaluate();
  }
  if (s.ok() && finished && !config_.export_hf_path().empty()) {
    s = ExportPolicy();
  }
  if (rank_ != 0) return s;
  // End the live line before the caller prints the outcome.
  progress_->Finish();
  // Also after a failed step: the curves up to the failure help find its
  // cause. The step's error is the one returned.
  const absl::Status report = metrics::WriteRunReport(
      config_.run_dir(), config::ResolvedConfigText(config_),
      EvalReportRows(last_eval_));
  return s.ok() ? report : s;
}

absl::Status Trainer::Evaluate() {
  auto m = evaluator_->Evaluate(*policy_, *output_);
  if (!m.ok()) return m.status();
  last_eval_ = *std::move(m);
  // TRL logs its training-token count with the evaluation's metrics too.
  last_eval_["num_tokens"] = static_cast<double>(num_tokens_);
  last_eval_step_ = step_;
  if (rank_ != 0) return absl::OkStatus();
  absl::Status s = metrics_log_->Write(step_, WithPrefix(last_eval_, "eval_"));
  if (s.ok()) s = tensorboard_->Write(step_, WithPrefix(last_eval_, "eval/"));
  if (s.ok()) {
    s = WriteEvalJson(config_.run_dir() + "/eval.json", step_,
                      static_cast<int64_t>(evaluator_->data().examples.size()),
                      "policy after step " + std::to_string(step_), last_eval_);
  }
  progress_->Print(EvalSummaryLine(step_, last_eval_));
  return s;
}

absl::Status Trainer::ExportPolicy() {
  if (rank_ != 0) return absl::OkStatus();
  if (policy_->has_lora()) {
    // A LoRA run exports its adapters as a PEFT adapter folder (docs/lora.md).
    absl::Status s =
        lora::WritePeftAdapter(config_.export_hf_path(), spec_,
                               AdapterFromDecoder(*policy_, lora_settings_,
                                                  config_.model().hf_path()));
    if (s.ok()) {
      progress_->Print("exported (PEFT adapter): " + config_.export_hf_path());
    }
    return s;
  }
  std::vector<float> params(policy_->layout().total());
  backend_->CopyToHost(params.data(), policy_->params(), params.size());
  // Hugging Face's own default shard size.
  constexpr size_t kMaxShardBytes = size_t{5} * 1000 * 1000 * 1000;
  absl::Status s = checkpoint::ExportHfModel(
      config_.export_hf_path(), spec_, policy_->layout(), params.data(),
      io::DType::kF32, kMaxShardBytes, config_.model().hf_path());
  if (s.ok()) progress_->Print("exported: " + config_.export_hf_path());
  return s;
}

absl::Status Trainer::RunSteps() {
  const int log_every = config_.log_every_steps();
  while (step_ < total_steps_) {
    auto m = Step();
    if (!m.ok()) return m.status();
    if (rank_ == 0) {
      const bool logged = step_ % log_every == 0 || step_ == total_steps_;
      if (logged) {
        absl::Status s = metrics_log_->Write(step_, *m);
        if (s.ok()) s = tensorboard_->Write(step_, *m);
        if (!s.ok()) return s;
      }
      progress_->Step(step_, *m, logged);
    }
    // Before the checkpoint, which counts the metrics.jsonl lines so far.
    const int eval_every = config_.eval_every_steps();
    if (evaluator_ != nullptr && eval_every > 0 && step_ % eval_every == 0) {
      absl::Status s = Evaluate();
      if (!s.ok()) return s;
    }
    absl::StatusOr<bool> stop = CheckpointAfterStep();
    if (!stop.ok()) return stop.status();
    if (*stop) break;
  }
  return absl::OkStatus();
}

}  // namespace prefopt::loop
