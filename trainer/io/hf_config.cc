#include "trainer/io/hf_config.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "trainer/io/json_file.h"
#include "trainer/io/string_view_compat.h"

namespace prefopt::io {
namespace {

using nlohmann::json;
using Arch = ModelSpec::Arch;

// `name` inside the folder `model_dir` (empty: the working directory).
std::string FileIn(const std::string& model_dir, const char* name) {
  return model_dir.empty() || model_dir.back() == '/'
             ? absl::StrCat(model_dir, name)
             : absl::StrCat(model_dir, "/", name);
}

struct ArchInfo {
  std::string_view architecture;
  std::string_view model_type;
  Arch arch;
};

constexpr ArchInfo kArchs[] = {
    {"GPT2LMHeadModel", "gpt2", Arch::kGpt2},
    {"LlamaForCausalLM", "llama", Arch::kLlama},
    {"MistralForCausalLM", "mistral", Arch::kLlama},
    {"Qwen2ForCausalLM", "qwen2", Arch::kQwen2},
};

std::string SupportedArchitectures() {
  std::vector<std::string> names;
  for (const ArchInfo& a : kArchs) names.emplace_back(a.architecture);
  return absl::StrJoin(names, ", ");
}

const ArchInfo* FindArchitecture(std::string_view architecture) {
  for (const ArchInfo& a : kArchs) {
    if (a.architecture == architecture) return &a;
  }
  return nullptr;
}

const ArchInfo* FindModelType(std::string_view model_type) {
  for (const ArchInfo& a : kArchs) {
    if (a.model_type == model_type) return &a;
  }
  return nullptr;
}

const ArchInfo& DefaultArchInfo(Arch arch) {
  for (const ArchInfo& a : kArchs) {
    if (a.arch == arch) return a;
  }
  return kArchs[0];
}

// Reads fields of one config object, keeping the first error. Getters return
// their default after an error, so a whole config can be read before the
// status is checked.
class FieldReader {
 public:
  FieldReader(const json& config, std::string file)
      : config_(config), file_(std::move(file)) {}

  const std::string& file() const { return file_; }
  const absl::Status& status() const { return status_; }

  int64_t RequiredInt(std::string_view field) {
    return Take(GetInt(config_, field, file_), int64_t{0});
  }
  int64_t Int(std::string_view field, int64_t default_value) {
    return Take(GetIntOr(config_, field, file_, default_value), default_value);
  }
  double Float(std::string_view field, double default_value) {
    return Take(GetFloatOr(config_, field, file_, default_value),
                default_value);
  }
  bool Bool(std::string_view field, bool default_value) {
    return Take(GetBoolOr(config_, field, file_, default_value), default_value);
  }
  std::string String(std::string_view field, std::string_view default_value) {
    return Take(GetStringOr(config_, field, file_, default_value),
                std::string(default_value));
  }

  // An integer field that may be null: absent gives `absent_value`, null
  // gives nullopt.
  std::optional<int64_t> NullableInt(std::string_view field,
                                     std::optional<int64_t> absent_value) {
    if (!config_.contains(std::string(field))) return absent_value;
    if (!HasNonNull(config_, field)) return std::nullopt;
    return Int(field, 0);
  }

  // Records an error about `field` unless one is already recorded.
  void Fail(std::string_view field, std::string_view problem) {
    if (status_.ok()) {
      status_ = absl::InvalidArgumentError(absl::StrCat(
          file_, ": field '", AbslView(field), "' ", AbslView(problem)));
    }
  }

  // Records `status` unless an error is already recorded.
  void Adopt(const absl::Status& status) {
    if (status_.ok()) status_ = status;
  }

  // Fails unless `value` > 0.
  void RequirePositive(std::string_view field, int64_t value) {
    if (status_.ok() && value <= 0) {
      Fail(field, absl::StrCat("must be positive, found ", value));
    }
  }

  const json& config() const { return config_; }

 private:
  template <typename T>
  T Take(absl::StatusOr<T> value, T fallback) {
    if (!status_.ok()) return fallback;
    if (!value.ok()) {
      status_ = value.status();
      return fallback;
    }
    return *std::move(value);
  }

  const json& config_;
  std::string file_;
  absl::Status status_;
};

// Reads bos_token_id / eos_token_id: an integer, null, or (eos only) a
// non-empty list of integers. Absent fields take `default_id`.
void ReadTokenIds(FieldReader& r, std::optional<int64_t> default_id,
                  ModelSpec& spec) {
  spec.bos_token_id = r.NullableInt("bos_token_id", default_id);
  const json& config = r.config();
  const auto eos = config.find("eos_token_id");
  if (eos == config.end()) {
    spec.eos_token_id = default_id;
    return;
  }
  if (eos->is_array()) {
    if (eos->empty()) {
      r.Fail("eos_token_id", "must be an integer or a non-empty list of them");
      return;
    }
    for (size_t i = 0; i < eos->size(); ++i) {
      const json& id = (*eos)[i];
      if (!id.is_number_integer()) {
        r.Fail("eos_token_id",
               absl::StrCat("must hold integers, found ", DescribeJson(id)));
        return;
      }
      if (i == 0) {
        spec.eos_token_id = id.get<int64_t>();
      } else {
        spec.extra_eos_token_ids.push_back(id.get<int64_t>());
      }
    }
    return;
  }
  spec.eos_token_id = r.NullableInt("eos_token_id", default_id);
}

void ReadTorchDType(FieldReader& r, ModelSpec& spec) {
  spec.torch_dtype = r.String("dtype", "");
  if (spec.torch_dtype.empty()) spec.torch_dtype = r.String("torch_dtype", "");
}

void ReadGpt2(FieldReader& r, ModelSpec& spec) {
  spec.vocab_size = r.RequiredInt("vocab_size");
  spec.max_positions = r.RequiredInt("n_positions");
  spec.hidden = r.RequiredInt("n_embd");
  spec.n_layer = r.RequiredInt("n_layer");
  spec.n_head = r.RequiredInt("n_head");
  spec.intermediate = r.Int("n_inner", 4 * spec.hidden);
  spec.norm_eps = r.Float("layer_norm_epsilon", 1e-5);
  spec.activation = r.String("activation_function", "gelu_new");
  spec.tie_word_embeddings = r.Bool("tie_word_embeddings", true);
  ReadTokenIds(r, 50256, spec);
  const bool scale_attn_weights = r.Bool("scale_attn_weights", true);
  const bool scale_by_layer = r.Bool("scale_attn_by_inverse_layer_idx", false);
  const bool reorder = r.Bool("reorder_and_upcast_attn", false);
  if (!r.status().ok()) return;

  r.RequirePositive("vocab_size", spec.vocab_size);
  r.RequirePositive("n_positions", spec.max_positions);
  r.RequirePositive("n_embd", spec.hidden);
  r.RequirePositive("n_layer", spec.n_layer);
  r.RequirePositive("n_head", spec.n_head);
  r.RequirePositive("n_inner", spec.intermediate);
  if (r.status().ok() && spec.hidden % spec.n_head != 0) {
    r.Fail("n_embd", absl::StrCat("is ", spec.hidden,
                                  ", not a multiple of n_head ", spec.n_head));
  }
  if (spec.activation != "gelu_new" && spec.activation != "gelu_pytorch_tanh") {
    r.Fail("activation_function",
           absl::StrCat("is ", json(spec.activation).dump(),
                        "; prefopt supports only \"gelu_new\" and "
                        "\"gelu_pytorch_tanh\" for GPT-2"));
  }
  if (!scale_attn_weights) {
    r.Fail("scale_attn_weights",
           "is false (unscaled attention), which prefopt does not support");
  }
  if (scale_by_layer) {
    r.Fail("scale_attn_by_inverse_layer_idx",
           "is true, which prefopt does not support");
  }
  if (reorder) {
    r.Fail("reorder_and_upcast_attn",
           "is true, which prefopt does not support");
  }
  spec.n_kv_head = spec.n_head;
  spec.head_dim = spec.n_head > 0 ? spec.hidden / spec.n_head : 0;
  spec.attention_bias = true;
  spec.attention_out_bias = true;
  spec.mlp_bias = true;
}

// The one RoPE parameter object of `value` (the value of `field`): the object
// itself, or transformers 5's per-layer-type form ({"full_attention": {...},
// ...}) when every layer type has the same parameters. Null on error.
const json* SingleRopeObject(FieldReader& r, std::string_view field,
                             const json& value) {
  if (!value.is_object()) {
    r.Fail(field, absl::StrCat("must be null or an object, found ",
                               DescribeJson(value)));
    return nullptr;
  }
  const bool nested = !value.empty() && std::all_of(value.begin(), value.end(),
                                                    [](const json& entry) {
                                                      return entry.is_object();
                                                    });
  if (!nested) return &value;
  const json& first = value.begin().value();
  for (const auto& [layer_type, params] : value.items()) {
    if (params != first) {
      r.Fail(field, absl::StrCat("gives layer type ", json(layer_type).dump(),
                                 " other RoPE parameters than ",
                                 json(value.begin().key()).dump(),
                                 "; prefopt uses one RoPE for every layer"));
      return nullptr;
    }
  }
  return &first;
}

// Reads RoPE as transformers 5 resolves it, so that folders written by
// transformers 4 and 5 load alike: the parameters come from "rope_scaling"
// (the v4 name) when it is set, else from "rope_parameters" (v5); rope_theta
// and partial_rotary_factor from inside that object, else from the top level.
// A llama3 scaling without original_max_position_embeddings takes
// max_position_embeddings, as transformers 5 does.
void ReadRope(FieldReader& r, ModelSpec& spec) {
  const json& config = r.config();
  std::string_view field;
  if (HasNonNull(config, "rope_scaling")) {
    field = "rope_scaling";
  } else if (HasNonNull(config, "rope_parameters")) {
    field = "rope_parameters";
  }
  const json empty = json::object();
  const json* rope = &empty;
  if (!field.empty()) {
    rope = SingleRopeObject(r, field, config[std::string(field)]);
    if (rope == nullptr) return;
  }
  FieldReader fields(*rope, absl::StrCat(r.file(), " (", AbslView(field), ")"));
  spec.rope_theta = rope->contains("rope_theta")
                        ? fields.Float("rope_theta", 0)
                        : r.Float("rope_theta", 10000.0);
  const double partial_rotary_factor =
      rope->contains("partial_rotary_factor")
          ? fields.Float("partial_rotary_factor", 1.0)
          : r.Float("partial_rotary_factor", 1.0);
  std::string type = fields.String("rope_type", "");
  if (type.empty()) type = fields.String("type", "default");
  if (!fields.status().ok()) {
    r.Adopt(fields.status());
    return;
  }
  if (!r.status().ok()) return;
  // transformers applies it when present; silently ignoring it would rotate
  // the wrong dimensions.
  if (partial_rotary_factor != 1.0) {
    r.Fail("partial_rotary_factor",
           "is not 1; prefopt rotates every head dimension (partial rotary "
           "embeddings are not supported)");
    return;
  }
  RopeScaling& scaling = spec.rope_scaling;
  if (type == "default") return;
  if (type == "linear") {
    scaling.type = RopeScaling::Type::kLinear;
    scaling.factor = fields.Float("factor", 0);
  } else if (type == "llama3") {
    scaling.type = RopeScaling::Type::kLlama3;
    scaling.factor = fields.Float("factor", 0);
    scaling.low_freq_factor = fields.Float("low_freq_factor", 0);
    scaling.high_freq_factor = fields.Float("high_freq_factor", 0);
    scaling.original_max_position_embeddings =
        fields.Int("original_max_position_embeddings", spec.max_positions);
    if (fields.status().ok() &&
        !(scaling.low_freq_factor > 0 &&
          scaling.low_freq_factor < scaling.high_freq_factor &&
          scaling.original_max_position_embeddings > 0)) {
      r.Fail(field,
             "of type llama3 needs 0 < low_freq_factor < high_freq_factor and "
             "a positive original_max_position_embeddings");
    }
  } else {
    r.Fail(field, absl::StrCat("has type ", json(type).dump(),
                               ", which prefopt does not support (supported: "
                               "\"default\", \"linear\", \"llama3\")"));
    return;
  }
  if (!fields.status().ok()) {
    r.Adopt(fields.status());
  } else if (!(scaling.factor >= 1.0)) {
    r.Fail(field,
           absl::StrCat("needs a \"factor\" >= 1, found ", scaling.factor));
  }
}

// Whether sliding-window attention, as transformers would configure it, limits
// attention below max_position_embeddings on any layer.
void CheckSlidingWindow(FieldReader& r, std::string_view model_type,
                        const ModelSpec& spec) {
  if (model_type == "mistral") {
    const std::optional<int64_t> window = r.NullableInt("sliding_window", 4096);
    if (r.status().ok() && window.has_value() && *window < spec.max_positions) {
      r.Fail("sliding_window",
             absl::StrCat("is ", *window, ", below max_position_embeddings ",
                          spec.max_positions,
                          ": sliding-window attention is not supported"));
    }
    return;
  }
  if (model_type != "qwen2") return;
  const bool use_window = r.Bool("use_sliding_window", false);
  const std::optional<int64_t> window = r.NullableInt("sliding_window", 4096);
  const int64_t max_window_layers = r.Int("max_window_layers", 28);
  if (!r.status().ok() || !use_window || !window.has_value() ||
      *window >= spec.max_positions) {
    return;
  }
  bool any_sliding_layer = max_window_layers < spec.n_layer;
  const json& config = r.config();
  if (HasNonNull(config, "layer_types")) {
    const json& types = config["layer_types"];
    any_sliding_layer = false;
    if (types.is_array()) {
      for (const json& t : types) {
        any_sliding_layer |= t == "sliding_attention";
      }
    }
  }
  if (any_sliding_layer) {
    r.Fail("use_sliding_window",
           absl::StrCat("is true with sliding_window ", *window,
                        " below max_position_embeddings ", spec.max_positions,
                        ": sliding-window attention is not supported"));
  }
}

void ReadLlamaFamily(FieldReader& r, std::string_view model_type,
                     ModelSpec& spec) {
  spec.vocab_size = r.RequiredInt("vocab_size");
  spec.max_positions = r.RequiredInt("max_position_embeddings");
  spec.hidden = r.RequiredInt("hidden_size");
  spec.intermediate = r.RequiredInt("intermediate_size");
  spec.n_layer = r.RequiredInt("num_hidden_layers");
  spec.n_head = r.RequiredInt("num_attention_heads");
  spec.n_kv_head = r.Int("num_key_value_heads", spec.n_head);
  if (r.status().ok() && !HasNonNull(r.config(), "head_dim") &&
      spec.n_head > 0 && spec.hidden % spec.n_head != 0) {
    r.Fail("hidden_size",
           absl::StrCat("is ", spec.hidden,
                        ", not a multiple of num_attention_heads ", spec.n_head,
                        ", and head_dim is not given"));
  }
  spec.head_dim =
      r.Int("head_dim", spec.n_head > 0 ? spec.hidden / spec.n_head : 0);
  spec.norm_eps = r.Float("rms_norm_eps", 1e-6);
  spec.activation = r.String("hidden_act", "silu");
  spec.tie_word_embeddings = r.Bool("tie_word_embeddings", false);
  ReadRope(r, spec);
  if (model_type == "qwen2") {
    ReadTokenIds(r, std::nullopt, spec);
    spec.attention_bias = true;
    spec.attention_out_bias = false;
    spec.mlp_bias = false;
  } else {
    ReadTokenIds(r, 1, spec);
    if (model_type == "llama") {
      spec.attention_bias = r.Bool("attention_bias", false);
      spec.attention_out_bias = spec.attention_bias;
      spec.mlp_bias = r.Bool("mlp_bias", false);
    }
  }
  if (!r.status().ok()) return;

  r.RequirePositive("vocab_size", spec.vocab_size);
  r.RequirePositive("max_position_embeddings", spec.max_positions);
  r.RequirePositive("hidden_size", spec.hidden);
  r.RequirePositive("intermediate_size", spec.intermediate);
  r.RequirePositive("num_hidden_layers", spec.n_layer);
  r.RequirePositive("num_attention_heads", spec.n_head);
  r.RequirePositive("num_key_value_heads", spec.n_kv_head);
  r.RequirePositive("head_dim", spec.head_dim);
  if (r.status().ok() && spec.n_head % spec.n_kv_head != 0) {
    r.Fail("num_attention_heads",
           absl::StrCat("is ", spec.n_head,
                        ", not a multiple of num_key_value_heads ",
                        spec.n_kv_head));
  }
  if (spec.activation != "silu") {
    r.Fail("hidden_act", absl::StrCat("is ", json(spec.activation).dump(),
                                      "; prefopt supports only \"silu\" for ",
                                      AbslView(model_type)));
  }
  CheckSlidingWindow(r, model_type, spec);
}

// Picks the architecture from "architectures", else "model_type".
absl::StatusOr<const ArchInfo*> ResolveArchitecture(const json& config,
                                                    const std::string& file) {
  absl::StatusOr<std::string> model_type =
      GetStringOr(config, "model_type", file, "");
  if (!model_type.ok()) return model_type.status();
  if (HasNonNull(config, "architectures")) {
    const json& list = config["architectures"];
    if (!list.is_array() || list.empty() || !list[0].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file,
          ": field 'architectures' must be a non-empty list of class "
          "names, found ",
          DescribeJson(list)));
    }
    const std::string& name = list[0].get_ref<const std::string&>();
    const ArchInfo* info = FindArchitecture(name);
    if (info == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": architecture ", json(name).dump(),
                       " (field 'architectures') is not supported; supported: ",
                       SupportedArchitectures()));
    }
    if (!model_type->empty() && *model_type != info->model_type) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": field 'model_type' is ",
                       json(*model_type).dump(), " but architecture ", name,
                       " has model_type \"", AbslView(info->model_type), "\""));
    }
    return info;
  }
  if (model_type->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        file,
        ": neither 'architectures' nor 'model_type' is set; supported "
        "architectures: ",
        SupportedArchitectures()));
  }
  const ArchInfo* info = FindModelType(*model_type);
  if (info == nullptr) {
    std::vector<std::string> types;
    for (const ArchInfo& a : kArchs) types.emplace_back(a.model_type);
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": model_type ", json(*model_type).dump(),
        " is not supported; supported: ", absl::StrJoin(types, ", ")));
  }
  return info;
}

// The config.json names of the size fields, in the order ModelSpec lists them.
struct SizeFields {
  std::string_view vocab, positions, hidden, layers, heads, kv_heads, head_dim,
      intermediate, norm_eps;
};

SizeFields SizeFieldNames(Arch arch) {
  if (arch == Arch::kGpt2) {
    return {"vocab_size", "n_positions", "n_embd",
            "n_layer",    "n_head",      "n_head",
            "n_embd",     "n_inner",     "layer_norm_epsilon"};
  }
  return {"vocab_size",        "max_position_embeddings", "hidden_size",
          "num_hidden_layers", "num_attention_heads",     "num_key_value_heads",
          "head_dim",          "intermediate_size",       "rms_norm_eps"};
}

// The model indexes rows, widths and layers with int; larger sizes (which no
// real model has) would overflow there, and a size beyond memory would
// throw std::bad_alloc where it is allocated.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

// Bounds the sizes, and the products of them the model uses as widths, so
// that nothing downstream overflows; the memory they need is checked against
// the machine when the model is built.
void CheckSizeLimits(FieldReader& r, const ModelSpec& spec) {
  const SizeFields f = SizeFieldNames(spec.arch);
  for (const auto& [field, value] : {std::pair{f.vocab, spec.vocab_size},
                                     {f.positions, spec.max_positions},
                                     {f.hidden, spec.hidden},
                                     {f.layers, spec.n_layer},
                                     {f.heads, spec.n_head},
                                     {f.kv_heads, spec.n_kv_head},
                                     {f.head_dim, spec.head_dim},
                                     {f.intermediate, spec.intermediate}}) {
    if (value <= kMaxSize) continue;
    if (field == f.intermediate && spec.arch == Arch::kGpt2 &&
        !HasNonNull(r.config(), "n_inner")) {
      r.Fail(f.hidden, absl::StrCat("is ", spec.hidden,
                                    "; n_inner (null) is 4 times it, ", value,
                                    ", above the limit ", kMaxSize));
    }
    r.Fail(field, absl::StrCat("is ", value, ", above the limit ", kMaxSize));
  }
  if (!r.status().ok()) return;
  // Each factor is at most 2^31, so these products fit in int64.
  const int64_t qkv_width = (spec.n_head + 2 * spec.n_kv_head) * spec.head_dim;
  if (qkv_width > kMaxSize) {
    r.Fail(f.heads,
           absl::StrCat("is ", spec.n_head, "; with ", AbslView(f.kv_heads),
                        " ", spec.n_kv_head, " and head_dim ", spec.head_dim,
                        " the query/key/value projection has ", qkv_width,
                        " rows, above the limit ", kMaxSize));
  } else if (2 * spec.intermediate > kMaxSize) {
    r.Fail(f.intermediate,
           absl::StrCat("is ", spec.intermediate,
                        "; the fused gate/up projection (twice it) is above "
                        "the limit ",
                        kMaxSize));
  }
}

// Fails unless the token id `field`, when the file sets it, is in
// [0, vocab_size).
void CheckTokenId(FieldReader& r, std::string_view field,
                  std::optional<int64_t> id, const ModelSpec& spec) {
  if (!r.status().ok() || !id.has_value() || !HasNonNull(r.config(), field)) {
    return;
  }
  if (*id < 0 || *id >= spec.vocab_size) {
    r.Fail(field,
           absl::StrCat("holds token id ", *id, ", outside the vocabulary [0, ",
                        spec.vocab_size, ") of vocab_size"));
  }
}

// A default id (GPT2Config's 50256, LlamaConfig's 1) that is no token of a
// smaller model names nothing; keeping it would make the config.json written
// for this model one that fails CheckTokenId.
void DropDefaultIdsOutsideVocabulary(const json& config, ModelSpec& spec) {
  for (auto [field, id] : {std::pair{"bos_token_id", &spec.bos_token_id},
                           {"eos_token_id", &spec.eos_token_id}}) {
    if (!config.contains(field) && id->has_value() && **id >= spec.vocab_size) {
      id->reset();
    }
  }
}

// Values transformers takes as given but that make every output NaN or
// meaningless.
void CheckNumerics(FieldReader& r, const ModelSpec& spec) {
  if (!r.status().ok()) return;
  if (!(std::isfinite(spec.norm_eps) && spec.norm_eps > 0)) {
    r.Fail(
        SizeFieldNames(spec.arch).norm_eps,
        absl::StrCat("must be a finite number above 0, found ", spec.norm_eps));
  }
  // theta^(-2i/d) are the rotary frequencies: theta <= 1 makes none of them
  // slower than one radian per position, and rope tables are computed in
  // fp32, where a larger theta is infinite.
  if (spec.arch != Arch::kGpt2 &&
      !(spec.rope_theta > 1 &&
        spec.rope_theta <= std::numeric_limits<float>::max())) {
    r.Fail("rope_theta",
           absl::StrCat("must be a finite number above 1 (in fp32 range), "
                        "found ",
                        spec.rope_theta));
  }
  CheckTokenId(r, "bos_token_id", spec.bos_token_id, spec);
  CheckTokenId(r, "eos_token_id", spec.eos_token_id, spec);
  for (const int64_t id : spec.extra_eos_token_ids) {
    CheckTokenId(r, "eos_token_id", id, spec);
  }
}

// generation_config.json's bos/eos ids (what `prefopt generate` stops at)
// must be ids of the model: integers (eos also a list of them) or null, in
// [0, vocab_size).
absl::Status CheckGenerationConfig(const std::string& model_dir,
                                   const ModelSpec& spec) {
  const std::string path = FileIn(model_dir, "generation_config.json");
  absl::StatusOr<json> config = ReadJsonFile(path);
  if (absl::IsNotFound(config.status())) return absl::OkStatus();
  if (!config.ok()) return config.status();
  if (!config->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": expected a JSON object, found ", DescribeJson(*config)));
  }
  for (const std::string_view field : {"bos_token_id", "eos_token_id"}) {
    if (!HasNonNull(*config, field)) continue;
    const json& value = (*config)[std::string(field)];
    const bool list_allowed = field == "eos_token_id";
    std::vector<const json*> ids;
    if (value.is_array() && list_allowed) {
      for (const json& id : value) ids.push_back(&id);
    } else {
      ids.push_back(&value);
    }
    for (const json* id : ids) {
      // An unsigned value above int64's range reads as negative here.
      if (!id->is_number_integer() || id->get<int64_t>() < 0 ||
          id->get<int64_t>() >= spec.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": field '", AbslView(field), "' must be a token id in [0, ",
            spec.vocab_size, ") (config.json's vocab_size)",
            list_allowed ? " or a non-empty list of them" : "", ", found ",
            DescribeJson(*id)));
      }
    }
    if (ids.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": field '", AbslView(field),
          "' must be a token id or a non-empty list of them, found []"));
    }
  }
  return absl::OkStatus();
}

absl::Status SpecError(std::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("cannot write config.json: ", AbslView(problem)));
}

absl::StatusOr<const ArchInfo*> ValidateForWriting(const ModelSpec& spec) {
  const ArchInfo* info = &DefaultArchInfo(spec.arch);
  if (!spec.hf_architecture.empty()) {
    info = FindArchitecture(spec.hf_architecture);
    if (info == nullptr || info->arch != spec.arch) {
      return SpecError(absl::StrCat(
          "hf_architecture \"", spec.hf_architecture,
          "\" does not match arch; supported: ", SupportedArchitectures()));
    }
  }
  if (!spec.hf_model_type.empty() && spec.hf_model_type != info->model_type) {
    return SpecError(absl::StrCat("hf_model_type \"", spec.hf_model_type,
                                  "\" does not match architecture ",
                                  AbslView(info->architecture)));
  }
  for (const auto& [name, value] :
       {std::pair<const char*, int64_t>{"vocab_size", spec.vocab_size},
        {"max_positions", spec.max_positions},
        {"hidden", spec.hidden},
        {"n_layer", spec.n_layer},
        {"n_head", spec.n_head},
        {"n_kv_head", spec.n_kv_head},
        {"head_dim", spec.head_dim},
        {"intermediate", spec.intermediate}}) {
    if (value <= 0) {
      return SpecError(absl::StrCat(name, " must be positive, found ", value));
    }
  }
  if (spec.n_head % spec.n_kv_head != 0) {
    return SpecError(absl::StrCat("n_head ", spec.n_head,
                                  " is not a multiple of n_kv_head ",
                                  spec.n_kv_head));
  }
  if (!spec.extra_eos_token_ids.empty() && !spec.eos_token_id.has_value()) {
    return SpecError("extra_eos_token_ids is set without eos_token_id");
  }
  if (spec.arch == Arch::kGpt2) {
    if (spec.n_kv_head != spec.n_head ||
        spec.head_dim * spec.n_head != spec.hidden) {
      return SpecError(
          "GPT-2 needs n_kv_head == n_head and head_dim * n_head == hidden");
    }
    if (spec.activation != "gelu_new" &&
        spec.activation != "gelu_pytorch_tanh") {
      return SpecError(
          absl::StrCat("GPT-2 activation must be gelu_new or "
                       "gelu_pytorch_tanh, found \"",
                       spec.activation, "\""));
    }
    if (!spec.attention_bias || !spec.attention_out_bias || !spec.mlp_bias) {
      return SpecError("GPT-2 has biases on all projections");
    }
    if (spec.rope_scaling.type != RopeScaling::Type::kNone) {
      return SpecError("GPT-2 has no rotary embeddings to scale");
    }
    return info;
  }
  if (spec.activation != "silu") {
    return SpecError(absl::StrCat(AbslView(info->architecture),
                                  " needs activation "
                                  "\"silu\", found \"",
                                  spec.activation, "\""));
  }
  const bool biases_ok =
      info->model_type == "llama"
          ? spec.attention_bias == spec.attention_out_bias
      : info->model_type == "mistral"
          ? !spec.attention_bias && !spec.attention_out_bias && !spec.mlp_bias
          : spec.attention_bias && !spec.attention_out_bias && !spec.mlp_bias;
  if (!biases_ok) {
    return SpecError(absl::StrCat(
        "the bias settings (attention ", spec.attention_bias,
        ", attention output ", spec.attention_out_bias, ", MLP ", spec.mlp_bias,
        ") cannot be expressed as ", AbslView(info->architecture)));
  }
  return info;
}

json TokenIdJson(const std::optional<int64_t>& id) {
  return id.has_value() ? json(*id) : json(nullptr);
}

}  // namespace

absl::StatusOr<ModelSpec> ReadHfConfig(const std::string& model_dir) {
  const std::string path = FileIn(model_dir, "config.json");
  absl::StatusOr<json> config = ReadJsonFile(path);
  if (!config.ok()) return config.status();
  if (!config->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": expected a JSON object, found ", DescribeJson(*config)));
  }
  absl::StatusOr<const ArchInfo*> info = ResolveArchitecture(*config, path);
  if (!info.ok()) return info.status();

  ModelSpec spec;
  spec.arch = (*info)->arch;
  spec.hf_architecture = std::string((*info)->architecture);
  spec.hf_model_type = std::string((*info)->model_type);
  FieldReader reader(*config, path);
  if (spec.arch == Arch::kGpt2) {
    ReadGpt2(reader, spec);
  } else {
    ReadLlamaFamily(reader, (*info)->model_type, spec);
  }
  ReadTorchDType(reader, spec);
  if (reader.status().ok()) CheckSizeLimits(reader, spec);
  CheckNumerics(reader, spec);
  DropDefaultIdsOutsideVocabulary(*config, spec);
  if (!reader.status().ok()) return reader.status();
  if (absl::Status s = CheckGenerationConfig(model_dir, spec); !s.ok()) {
    return s;
  }
  spec.config_path = path;
  return spec;
}

absl::Status WriteHfConfig(const ModelSpec& spec,
                           const std::string& model_dir) {
  absl::StatusOr<const ArchInfo*> info = ValidateForWriting(spec);
  if (!info.ok()) return info.status();
  json config = {
      {"architectures", {std::string((*info)->architecture)}},
      {"model_type", std::string((*info)->model_type)},
      {"vocab_size", spec.vocab_size},
      {"tie_word_embeddings", spec.tie_word_embeddings},
      {"bos_token_id", TokenIdJson(spec.bos_token_id)},
  };
  if (spec.extra_eos_token_ids.empty()) {
    config["eos_token_id"] = TokenIdJson(spec.eos_token_id);
  } else {
    json ids = {*spec.eos_token_id};
    for (const int64_t id : spec.extra_eos_token_ids) ids.push_back(id);
    config["eos_token_id"] = std::move(ids);
  }
  if (!spec.torch_dtype.empty()) {
    // transformers >= 4.56 reads "dtype"; earlier versions "torch_dtype".
    config["dtype"] = spec.torch_dtype;
    config["torch_dtype"] = spec.torch_dtype;
  }
  if (spec.arch == Arch::kGpt2) {
    config["n_positions"] = spec.max_positions;
    config["n_embd"] = spec.hidden;
    config["n_layer"] = spec.n_layer;
    config["n_head"] = spec.n_head;
    config["n_inner"] = spec.intermediate;
    config["activation_function"] = spec.activation;
    config["layer_norm_epsilon"] = spec.norm_eps;
    config["scale_attn_weights"] = true;
    config["scale_attn_by_inverse_layer_idx"] = false;
    config["reorder_and_upcast_attn"] = false;
  } else {
    config["max_position_embeddings"] = spec.max_positions;
    config["hidden_size"] = spec.hidden;
    config["intermediate_size"] = spec.intermediate;
    config["num_hidden_layers"] = spec.n_layer;
    config["num_attention_heads"] = spec.n_head;
    config["num_key_value_heads"] = spec.n_kv_head;
    config["head_dim"] = spec.head_dim;
    config["rms_norm_eps"] = spec.norm_eps;
    config["hidden_act"] = spec.activation;
    // Both forms, alike: transformers 4 reads rope_theta and rope_scaling and
    // ignores rope_parameters; transformers 5 reads rope_scaling when it is
    // set, else rope_parameters.
    config["rope_theta"] = spec.rope_theta;
    const RopeScaling& rope = spec.rope_scaling;
    switch (rope.type) {
      case RopeScaling::Type::kNone:
        config["rope_scaling"] = nullptr;
        break;
      case RopeScaling::Type::kLinear:
        config["rope_scaling"] = {{"rope_type", "linear"},
                                  {"factor", rope.factor}};
        break;
      case RopeScaling::Type::kLlama3:
        config["rope_scaling"] = {{"rope_type", "llama3"},
                                  {"factor", rope.factor},
                                  {"low_freq_factor", rope.low_freq_factor},
                                  {"high_freq_factor", rope.high_freq_factor},
                                  {"original_max_position_embeddings",
                                   rope.original_max_position_embeddings}};
        break;
    }
    json rope_parameters = config["rope_scaling"].is_null()
                               ? json{{"rope_type", "default"}}
                               : config["rope_scaling"];
    rope_parameters["rope_theta"] = spec.rope_theta;
    config["rope_parameters"] = std::move(rope_parameters);
    const std::string_view model_type = (*info)->model_type;
    if (model_type == "llama") {
      config["attention_bias"] = spec.attention_bias;
      config["mlp_bias"] = spec.mlp_bias;
    } else if (model_type == "mistral") {
      config["sliding_window"] = nullptr;
    } else {
      config["use_sliding_window"] = false;
      config["sliding_window"] = nullptr;
      config["max_window_layers"] = spec.n_layer;
    }
  }
  const std::string path = FileIn(model_dir, "config.json");
  return WriteJsonFile(path, config);
}

}  // namespace prefopt::io
