#include "trainer/lora/peft_adapter.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "trainer/io/json_file.h"
#include "trainer/io/safetensors.h"

namespace prefopt::lora {
namespace {

using nlohmann::json;

constexpr char kConfigFile[] = "adapter_config.json";
constexpr char kWeightsFile[] = "adapter_model.safetensors";
constexpr char kKeyPrefix[] = "base_model.model.";
constexpr char kASuffix[] = ".lora_A.weight";
constexpr char kBSuffix[] = ".lora_B.weight";
// The PEFT release whose adapter_config.json WritePeftAdapter reproduces
// (tests/fixtures/lora/).
constexpr char kPeftFormatVersion[] = "0.21.2";

absl::Status ConfigError(const std::string& file, const std::string& field,
                         const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": field '", field, "' ", what));
}

// A field that must be absent, null, false, empty ({} or []) for prefopt to
// read the adapter as PEFT would use it.
bool IsUnset(const json& config, const std::string& field) {
  if (!config.contains(field)) return true;
  const json& value = config[field];
  if (value.is_null()) return true;
  if (value.is_boolean()) return !value.get<bool>();
  if (value.is_object() || value.is_array()) return value.empty();
  return false;
}

// The LoRA variants and extras PEFT can save that change the math or add
// trained tensors beyond lora_A/lora_B, with what each one is.
struct UnsupportedField {
  const char* field;
  const char* what;
};
constexpr UnsupportedField kUnsupportedFields[] = {
    {"use_dora", "DoRA (weight-decomposed LoRA)"},
    {"rank_pattern", "per-module ranks"},
    {"alpha_pattern", "per-module alphas"},
    {"modules_to_save", "fully trained extra modules"},
    {"layers_to_transform", "adapting only some layers"},
    {"layers_pattern", "adapting only some layers"},
    {"exclude_modules", "excluded modules"},
    {"layer_replication", "replicated layers"},
    {"trainable_token_indices", "trainable token embeddings"},
    {"target_parameters", "LoRA on parameters"},
    {"lora_bias", "a trained bias on lora_B"},
    {"use_qalora", "QALoRA"},
    {"use_bdlora", "block-diagonal LoRA"},
    {"alora_invocation_tokens", "activated LoRA"},
    {"arrow_config", "Arrow routing"},
};

absl::StatusOr<std::vector<std::string>> ReadTargetModules(
    const json& config, const std::string& file) {
  std::vector<std::string> targets;
  if (!config.contains("target_modules") ||
      config["target_modules"].is_null()) {
    return targets;
  }
  const json& value = config["target_modules"];
  if (value.is_string()) {
    if (value.get<std::string>() == "all-linear")
      return std::vector<std::string>{"all-linear"};
    return ConfigError(
        file, "target_modules",
        absl::StrCat("is the string ", value.dump(),
                     ", which PEFT reads as a regular expression; prefopt "
                     "takes a list of module names (or \"all-linear\")"));
  }
  if (!value.is_array()) {
    return ConfigError(file, "target_modules",
                       absl::StrCat("must be a list of module names, got ",
                                    io::DescribeJson(value)));
  }
  for (const json& entry : value) {
    if (!entry.is_string()) {
      return ConfigError(file, "target_modules",
                         absl::StrCat("must hold module names, got ",
                                      io::DescribeJson(entry)));
    }
    targets.push_back(entry.get<std::string>());
  }
  return targets;
}

absl::StatusOr<LoraSettings> ReadSettings(const json& config,
                                          const std::string& file) {
  absl::StatusOr<std::string> peft_type =
      io::GetString(config, "peft_type", file);
  if (!peft_type.ok()) return peft_type.status();
  if (*peft_type != "LORA") {
    return ConfigError(file, "peft_type",
                       absl::StrCat("is \"", *peft_type,
                                    "\"; prefopt reads only LoRA adapters "
                                    "(\"LORA\")"));
  }
  absl::StatusOr<std::string> task_type =
      io::GetStringOr(config, "task_type", file, "CAUSAL_LM");
  if (!task_type.ok()) return task_type.status();
  if (*task_type != "CAUSAL_LM") {
    return ConfigError(file, "task_type",
                       absl::StrCat("is \"", *task_type,
                                    "\"; prefopt trains causal language "
                                    "models (\"CAUSAL_LM\")"));
  }
  absl::StatusOr<std::string> bias =
      io::GetStringOr(config, "bias", file, "none");
  if (!bias.ok()) return bias.status();
  if (*bias != "none") {
    return ConfigError(file, "bias",
                       absl::StrCat("is \"", *bias,
                                    "\"; prefopt trains no biases with LoRA "
                                    "(only \"none\")"));
  }
  for (const UnsupportedField& unsupported : kUnsupportedFields) {
    if (!IsUnset(config, unsupported.field)) {
      return ConfigError(
          file, unsupported.field,
          absl::StrCat("is ", io::DescribeJson(config[unsupported.field]), ": ",
                       unsupported.what, ", which prefopt does not implement"));
    }
  }

  LoraSettings settings;
  absl::StatusOr<int64_t> r = io::GetInt(config, "r", file);
  if (!r.ok()) return r.status();
  if (*r <= 0 || *r > (int64_t{1} << 20)) {
    return ConfigError(file, "r",
                       absl::StrCat("must be in [1, 2^20], got ", *r));
  }
  settings.r = static_cast<int>(*r);
  absl::StatusOr<double> alpha = io::GetFloat(config, "lora_alpha", file);
  if (!alpha.ok()) return alpha.status();
  if (!(*alpha > 0) || !std::isfinite(*alpha)) {
    return ConfigError(file, "lora_alpha",
                       absl::StrCat("must be positive, got ", *alpha));
  }
  settings.alpha = static_cast<float>(*alpha);
  absl::StatusOr<double> dropout =
      io::GetFloatOr(config, "lora_dropout", file, 0.0);
  if (!dropout.ok()) return dropout.status();
  if (!(*dropout >= 0 && *dropout < 1)) {
    return ConfigError(file, "lora_dropout",
                       absl::StrCat("must be in [0, 1), got ", *dropout));
  }
  settings.dropout = static_cast<float>(*dropout);
  absl::StatusOr<bool> rslora =
      io::GetBoolOr(config, "use_rslora", file, false);
  if (!rslora.ok()) return rslora.status();
  settings.use_rslora = *rslora;
  absl::StatusOr<std::vector<std::string>> targets =
      ReadTargetModules(config, file);
  if (!targets.ok()) return targets.status();
  settings.target_modules = *std::move(targets);
  return settings;
}

// Rejects NaN and infinities, naming the tensor and the first bad index.
absl::Status CheckFinite(const std::vector<float>& values,
                         const std::string& file, const std::string& tensor) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": tensor '", tensor, "' holds ",
                       std::isnan(values[i]) ? "NaN" : "an infinity",
                       " at flat index ", i, " (of ", values.size(), ")"));
    }
  }
  return absl::OkStatus();
}

std::string TensorKey(const LinearModule& module, bool a) {
  return absl::StrCat(kKeyPrefix, module.path, a ? kASuffix : kBSuffix);
}

// Why the tensor `key` of an adapter for `spec` names no targeted module.
std::string UnknownTensorReason(const std::string& key,
                                const io::ModelSpec& spec) {
  const bool a = absl::EndsWith(key, kASuffix);
  if (!absl::StartsWith(key, kKeyPrefix) ||
      !(a || absl::EndsWith(key, kBSuffix))) {
    return absl::StrCat("is not a LoRA factor (\"", kKeyPrefix,
                        "<module>.lora_A.weight\" or \".lora_B.weight\"); "
                        "prefopt reads only plain LoRA adapters");
  }
  const size_t prefix = std::string(kKeyPrefix).size();
  const size_t suffix = std::string(a ? kASuffix : kBSuffix).size();
  const std::string path = key.substr(prefix, key.size() - prefix - suffix);
  for (const LinearModule& module : LinearModules(spec)) {
    if (module.path == path) {
      return "is for a module that adapter_config.json's target_modules does "
             "not select";
    }
  }
  return absl::StrCat("is for '", path,
                      "', which is not a linear layer of the model's "
                      "transformer blocks");
}

// The double Python prints for the float `value` (0.05f as 0.05, not
// 0.0500000007): the shortest decimal that reads back as `value`.
double ShortestDouble(float value) {
  char text[32];
  for (int digits = 1; digits < 10; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, value);
    if (std::strtof(text, nullptr) == value) break;
  }
  return std::strtod(text, nullptr);
}

}  // namespace

float LoraSettings::Scaling() const {
  // PEFT computes the scale as a Python float and applies it in fp32.
  const double r_term =
      use_rslora ? std::sqrt(static_cast<double>(r)) : static_cast<double>(r);
  return static_cast<float>(static_cast<double>(alpha) / r_term);
}

absl::StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& dir,
                                            const io::ModelSpec& spec) {
  const std::string config_file = absl::StrCat(dir, "/", kConfigFile);
  absl::StatusOr<json> config = io::ReadJsonFile(config_file);
  if (!config.ok()) {
    if (absl::IsNotFound(config.status())) {
      return absl::NotFoundError(absl::StrCat(
          dir, ": no ", kConfigFile,
          " (a PEFT adapter folder holds adapter_config.json and "
          "adapter_model.safetensors, as PeftModel.save_pretrained writes)"));
    }
    return config.status();
  }
  if (!config->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_file, ": expected a JSON object, got ",
                     io::DescribeJson(*config)));
  }
  PeftAdapter adapter;
  absl::StatusOr<LoraSettings> settings = ReadSettings(*config, config_file);
  if (!settings.ok()) return settings.status();
  adapter.settings = *std::move(settings);
  absl::StatusOr<std::string> base =
      io::GetStringOr(*config, "base_model_name_or_path", config_file, "");
  if (!base.ok()) return base.status();
  adapter.base_model_name_or_path = *std::move(base);

  absl::StatusOr<std::vector<LinearModule>> modules = ResolveTargetModules(
      spec, adapter.settings.target_modules,
      absl::StrCat(config_file, ": field 'target_modules'"));
  if (!modules.ok()) return modules.status();

  const std::string weights_file = absl::StrCat(dir, "/", kWeightsFile);
  std::error_code ec;
  if (!std::filesystem::exists(weights_file, ec)) {
    const bool pickle =
        std::filesystem::exists(absl::StrCat(dir, "/adapter_model.bin"), ec);
    return absl::NotFoundError(absl::StrCat(
        dir, ": no ", kWeightsFile,
        pickle ? " (adapter_model.bin is PyTorch's pickle format, which "
                 "prefopt does not read: save with safe_serialization=True)"
               : ""));
  }
  absl::StatusOr<io::SafetensorsFile> file =
      io::SafetensorsFile::Open(weights_file);
  if (!file.ok()) return file.status();

  std::set<std::string> expected;
  for (const LinearModule& module : *modules) {
    expected.insert(TensorKey(module, true));
    expected.insert(TensorKey(module, false));
  }
  for (const io::TensorInfo& tensor : file->tensors()) {
    if (expected.count(tensor.name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(weights_file, ": tensor '", tensor.name, "' ",
                       UnknownTensorReason(tensor.name, spec)));
    }
  }

  const int64_t r = adapter.settings.r;
  for (const LinearModule& module : *modules) {
    AdapterFactors factors;
    factors.module = module;
    for (const bool a : {true, false}) {
      const std::string key = TensorKey(module, a);
      const io::TensorInfo* info = file->Find(key);
      if (info == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            weights_file, ": no tensor '", key, "', but ", config_file,
            "'s target_modules selects ", module.path));
      }
      const std::vector<int64_t> shape =
          a ? std::vector<int64_t>{r, module.in_features}
            : std::vector<int64_t>{module.out_features, r};
      // Before allocating: a wrong r in the config must not size the buffer.
      if (info->shape != shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            weights_file, ": tensor '", key, "' has shape ",
            io::ShapeString(info->shape), ", expected ", io::ShapeString(shape),
            " (r = ", r, " from ", config_file, "; the model's ", module.name,
            " is ", module.in_features, " -> ", module.out_features, ")"));
      }
      std::vector<float>& values = a ? factors.a : factors.b;
      values.resize(shape[0] * shape[1]);
      if (absl::Status s = file->ReadFloat(key, shape, values.data());
          !s.ok()) {
        return s;
      }
      if (absl::Status s = CheckFinite(values, weights_file, key); !s.ok()) {
        return s;
      }
    }
    adapter.factors.push_back(std::move(factors));
  }
  return adapter;
}

absl::Status WritePeftAdapter(const std::string& dir, const io::ModelSpec& spec,
                              const PeftAdapter& adapter) {
  const LoraSettings& settings = adapter.settings;
  if (settings.r <= 0 || !(settings.alpha > 0) ||
      !(settings.dropout >= 0 && settings.dropout < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("writing the LoRA adapter ", dir, ": invalid settings (r ",
                     settings.r, ", lora_alpha ", settings.alpha,
                     ", lora_dropout ", settings.dropout, ")"));
  }
  absl::StatusOr<std::vector<LinearModule>> modules = ResolveTargetModules(
      spec, settings.target_modules,
      absl::StrCat("writing the LoRA adapter ", dir, ": target_modules"));
  if (!modules.ok()) return modules.status();
  if (modules->size() != adapter.factors.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "writing the LoRA adapter ", dir, ": target_modules selects ",
        modules->size(), " modules but the adapter holds ",
        adapter.factors.size()));
  }
  std::vector<io::TensorToWrite> tensors;
  for (size_t i = 0; i < modules->size(); ++i) {
    const LinearModule& module = (*modules)[i];
    const AdapterFactors& factors = adapter.factors[i];
    const int64_t r = settings.r;
    if (factors.module.path != module.path ||
        factors.a.size() != static_cast<size_t>(r * module.in_features) ||
        factors.b.size() != static_cast<size_t>(module.out_features * r)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "writing the LoRA adapter ", dir, ": factors ", i, " are for '",
          factors.module.path, "' with ", factors.a.size(), " + ",
          factors.b.size(), " values; expected '", module.path, "' with ",
          r * module.in_features, " + ", module.out_features * r));
    }
    const std::string key_a = TensorKey(module, true);
    const std::string key_b = TensorKey(module, false);
    for (const auto& [key, values] :
         {std::pair(key_a, &factors.a), std::pair(key_b, &factors.b)}) {
      if (absl::Status s = CheckFinite(*values, dir, key); !s.ok()) return s;
    }
    tensors.push_back({key_a, {r, module.in_features}, factors.a.data()});
    tensors.push_back({key_b, {module.out_features, r}, factors.b.data()});
  }
  // safetensors' save_file orders tensors by name (all have one dtype here).
  std::sort(tensors.begin(), tensors.end(),
            [](const io::TensorToWrite& x, const io::TensorToWrite& y) {
              return x.name < y.name;
            });

  std::error_code ec;
  if (std::filesystem::exists(dir, ec) &&
      !(std::filesystem::is_directory(dir, ec) &&
        std::filesystem::is_empty(dir, ec))) {
    return absl::FailedPreconditionError(absl::StrCat(
        "writing the LoRA adapter: ", dir,
        " exists and is not an empty folder (nothing is overwritten)"));
  }
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }

  // Every key PEFT 0.21's LoraConfig writes, with its values for the
  // settings prefopt does not use (tests/fixtures/lora/*/adapter_config.json).
  std::vector<std::string> target_modules = settings.target_modules;
  if (target_modules.empty()) target_modules = DefaultTargetModules(spec);
  if (target_modules.size() == 1 && target_modules[0] == "all-linear") {
    // PEFT saves "all-linear" expanded into the layers' names.
    std::set<std::string> names;
    for (const LinearModule& module : *modules) {
      names.insert(module.name.substr(module.name.rfind('.') + 1));
    }
    target_modules.assign(names.begin(), names.end());
  }
  const double alpha = ShortestDouble(settings.alpha);
  json config = {
      {"alora_invocation_tokens", nullptr},
      {"alpha_pattern", json::object()},
      {"arrow_config", nullptr},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", adapter.base_model_name_or_path.empty()
                                      ? json(nullptr)
                                      : json(adapter.base_model_name_or_path)},
      {"bias", "none"},
      {"corda_config", nullptr},
      {"ensure_weight_tying", false},
      {"eva_config", nullptr},
      {"exclude_modules", nullptr},
      {"fan_in_fan_out", spec.arch == io::ModelSpec::Arch::kGpt2},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"kasa_config", nullptr},
      {"layer_replication", nullptr},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"loftq_config", json::object()},
      // PEFT writes lora_alpha as given: 16, not 16.0, for a whole number.
      {"lora_alpha", alpha == std::floor(alpha) && std::abs(alpha) < 1e15
                         ? json(static_cast<int64_t>(alpha))
                         : json(alpha)},
      {"lora_bias", false},
      {"lora_dropout", ShortestDouble(settings.dropout)},
      {"lora_ga_config", nullptr},
      {"megatron_config", nullptr},
      {"megatron_core", "megatron.core"},
      {"modules_to_save", nullptr},
      {"monteclora_config", nullptr},
      {"peft_type", "LORA"},
      {"peft_version", kPeftFormatVersion},
      {"qalora_group_size", 16},
      {"r", settings.r},
      {"rank_pattern", json::object()},
      {"revision", nullptr},
      {"target_modules", target_modules},
      {"target_parameters", nullptr},
      {"task_type", "CAUSAL_LM"},
      {"trainable_token_indices", nullptr},
      {"use_bdlora", nullptr},
      {"use_dora", false},
      {"use_qalora", false},
      {"use_rslora", settings.use_rslora},
      {"velora_config", nullptr},
  };
  if (absl::Status s =
          io::WriteSafetensors(absl::StrCat(dir, "/", kWeightsFile), tensors,
                               io::DType::kF32, {{"format", "pt"}});
      !s.ok()) {
    return s;
  }
  return io::WriteJsonFile(absl::StrCat(dir, "/", kConfigFile), config);
}

}  // namespace prefopt::lora
