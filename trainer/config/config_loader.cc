#include "trainer/config/config_loader.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/message.h"
#include "google/protobuf/text_format.h"
#include "proto/config.pb.h"
#include "trainer/util/clip_text.h"
#include "trainer/util/input_file.h"

namespace prefopt::config {
namespace {

namespace fs = std::filesystem;
using ::google::protobuf::Descriptor;
using ::google::protobuf::EnumDescriptor;
using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::Message;
using ::google::protobuf::Reflection;

// Defaults for fields left at 0 (documented in config.proto).
constexpr float kDefaultDpoBeta = 0.1f;
constexpr float kDefaultAdamBeta1 = 0.9f;
constexpr float kDefaultAdamBeta2 = 0.999f;
constexpr float kDefaultAdamEps = 1e-8f;
// TRL's defaults (DPOConfig / SFTConfig and the TrainingArguments they keep).
constexpr int kDefaultNumEpochs = 3;
constexpr float kDefaultPreferenceLr = 1e-6f;     // DPOConfig.learning_rate
constexpr float kDefaultDemonstrationLr = 2e-5f;  // SFTConfig.learning_rate
constexpr float kDefaultMaxGradNorm = 1.0f;
constexpr int kDefaultMicroBatchSize = 8;  // per_device_train_batch_size
constexpr uint64_t kDefaultSeed = 42;
constexpr int kDefaultLogEverySteps = 1;
constexpr float kDefaultInitStd = 0.02f;
constexpr int kDefaultMaxLength = 1024;  // TRL's DPOConfig.max_length
// The most tokens one micro-batch may hold: a micro-batch of pairs holds
// twice as many, and the decoder counts them in an int.
constexpr int64_t kMaxMicroBatchTokens = int64_t{1} << 30;
// TrainConfig.resume's keyword; any other value is a path.
constexpr char kResumeLatest[] = "latest";

// The names of a message's fields in declaration order, for error messages.
std::string FieldNames(const Descriptor& descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor.field_count(); ++i) {
    names.push_back(descriptor.field(i)->name());
  }
  return absl::StrJoin(names, ", ");
}

// The names of an enum's values, leaving out a 0 value named *_UNSPECIFIED.
std::string EnumValueNames(const EnumDescriptor& descriptor) {
  std::vector<std::string> names;
  for (int i = 0; i < descriptor.value_count(); ++i) {
    const std::string& name = descriptor.value(i)->name();
    if (!absl::EndsWith(name, "_UNSPECIFIED")) names.push_back(name);
  }
  return absl::StrJoin(names, ", ");
}

// Protobuf reports an unknown field as `Message type "prefopt.DpoConfig" has
// no field named "betta".`; this adds the fields that the message does have.
std::string WithFieldList(const std::string& message) {
  constexpr absl::string_view kPrefix = "Message type \"";
  if (!absl::StartsWith(message, kPrefix) ||
      !absl::StrContains(message, "has no field named")) {
    return message;
  }
  const size_t end = message.find('"', kPrefix.size());
  const Descriptor* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(
          message.substr(kPrefix.size(), end - kPrefix.size()));
  if (descriptor == nullptr) return message;
  return absl::StrCat(message, " Its fields: ", FieldNames(*descriptor), ".");
}

// A position in text: 0-based line and column, as protobuf's tokenizer counts
// them (a tab advances the column to the next multiple of 8).
struct Position {
  int line;
  int column;
};

// Protobuf's text parser reports some errors (an unknown field name, an
// unknown enum value, a non-repeated field given twice) at the token after
// the offending one. Those messages quote the offending token, so when
// `message` quotes the token just before `reported` and not the token at it,
// this returns the position of the token before.
Position OffendingTokenPosition(const std::string& text, Position reported,
                                const std::string& message) {
  google::protobuf::io::ArrayInputStream input(text.data(),
                                               static_cast<int>(text.size()));
  // Tokenizing errors were reported by the parser already.
  struct Silent : google::protobuf::io::ErrorCollector {
    void AddError(int, google::protobuf::io::ColumnNumber,
                  const std::string&) override {}
  } silent;
  google::protobuf::io::Tokenizer tokenizer(&input, &silent);
  tokenizer.set_comment_style(
      google::protobuf::io::Tokenizer::SH_COMMENT_STYLE);
  tokenizer.set_allow_f_after_float(true);
  const auto quoted = [&](const std::string& token) {
    return absl::StrContains(message, absl::StrCat("\"", token, "\""));
  };
  const auto before = [](Position a, Position b) {
    return a.line < b.line || (a.line == b.line && a.column < b.column);
  };
  bool has_previous = false;
  Position previous_position{0, 0};
  std::string previous_text;
  while (tokenizer.Next()) {
    const google::protobuf::io::Tokenizer::Token& token = tokenizer.current();
    const Position position{token.line, token.column};
    if (!before(position, reported)) {
      const bool at_reported =
          position.line == reported.line && position.column == reported.column;
      if (at_reported && quoted(token.text)) return reported;
      break;
    }
    has_previous = true;
    previous_position = position;
    previous_text = token.text;
  }
  if (has_previous && quoted(previous_text)) return previous_position;
  return reported;
}

// Collects text-format parse errors with 1-based positions.
class ParseErrors : public google::protobuf::io::ErrorCollector {
 public:
  // `text` is what is being parsed. Each error is formatted as
  // "<prefix><line>:<column>: <message>".
  ParseErrors(const std::string& text, std::string prefix)
      : text_(text), prefix_(std::move(prefix)) {}

  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    const Position position =
        OffendingTokenPosition(text_, Position{line, column}, message);
    // Protobuf's message quotes the offending token, which may be
    // megabytes long; the message around it is short.
    errors_.push_back(absl::StrCat(
        prefix_, position.line + 1, ":", position.column + 1, ": ",
        WithFieldList(util::ClipText(message, 2 * util::kMaxEchoBytes))));
  }

  // All errors, one per line.
  std::string Text() const { return absl::StrJoin(errors_, "\n"); }

 private:
  const std::string& text_;
  std::string prefix_;
  std::vector<std::string> errors_;
};

// A value the text format parser accepts but no config may hold, found by
// CheckValues.
struct BadValue {
  std::string field;  // its path, e.g. "data.train_files[1]"
  std::string what;   // what is wrong with it
  google::protobuf::TextFormat::ParseLocation location;  // line -1: unknown
};

// Adds to `bad` every value of `message` (nested and repeated fields
// included) that the parser lets through: an enum number that names no value
// of its enum (proto3 text format takes any number, e.g. loss_type: 7), and a
// string holding a NUL byte (a path or name would silently end there).
// `prefix` starts the field paths; `tree`, where the message was parsed
// (null otherwise), gives each value's position.
void CheckValues(const Message& message, const std::string& prefix,
                 const google::protobuf::TextFormat::ParseInfoTree* tree,
                 std::vector<BadValue>* bad) {
  const Reflection& reflection = *message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection.ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    const int count =
        field->is_repeated() ? reflection.FieldSize(message, field) : 1;
    for (int i = 0; i < count; ++i) {
      const int index = field->is_repeated() ? i : -1;
      const std::string path =
          field->is_repeated()
              ? absl::StrCat(prefix, field->name(), "[", i, "]")
              : absl::StrCat(prefix, field->name());
      std::string what;
      switch (field->cpp_type()) {
        case FieldDescriptor::CPPTYPE_MESSAGE:
          CheckValues(
              field->is_repeated()
                  ? reflection.GetRepeatedMessage(message, field, i)
                  : reflection.GetMessage(message, field),
              path + ".",
              tree != nullptr ? tree->GetTreeForNested(field, index) : nullptr,
              bad);
          break;
        case FieldDescriptor::CPPTYPE_ENUM: {
          const int number =
              field->is_repeated()
                  ? reflection.GetRepeatedEnumValue(message, field, i)
                  : reflection.GetEnumValue(message, field);
          if (field->enum_type()->FindValueByNumber(number) == nullptr) {
            what = absl::StrCat("is ", number, ", which is no value of ",
                                field->enum_type()->full_name(), " (one of: ",
                                EnumValueNames(*field->enum_type()), ")");
          }
          break;
        }
        case FieldDescriptor::CPPTYPE_STRING: {
          std::string scratch;
          const std::string& value =
              field->is_repeated()
                  ? reflection.GetRepeatedStringReference(message, field, i,
                                                          &scratch)
                  : reflection.GetStringReference(message, field, &scratch);
          const size_t nul = value.find('\0');
          if (nul != std::string::npos) {
            what = absl::StrCat("holds a NUL byte (\\000) at byte ", nul,
                                ", which would cut the text short there: \"",
                                util::ClipText(absl::CEscape(value)), "\"");
          }
          break;
        }
        default:
          break;
      }
      if (what.empty()) continue;
      google::protobuf::TextFormat::ParseLocation location;
      if (tree != nullptr) {
        location = tree->GetLocation(field, index);
        // The parser records no position for the elements of a list
        // ("field: [a, b]") but the first.
        if (location.line < 0) location = tree->GetLocation(field, 0);
      }
      bad->push_back({path, what, location});
    }
  }
}

// Parses text format into `message`, replacing its contents, and refuses the
// values CheckValues finds. `error_prefix` starts each error message, which
// then continues with "line:column: "; `field_prefix` starts the field paths
// they name.
absl::Status ParseText(const std::string& text, const std::string& error_prefix,
                       const std::string& field_prefix, Message* message) {
  ParseErrors errors(text, error_prefix);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  google::protobuf::TextFormat::ParseInfoTree tree;
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(text, message)) {
    return absl::InvalidArgumentError(errors.Text());
  }
  std::vector<BadValue> bad;
  CheckValues(*message, field_prefix, &tree, &bad);
  if (bad.empty()) return absl::OkStatus();
  std::vector<std::string> lines;
  for (const BadValue& b : bad) {
    const std::string position =
        b.location.line < 0 ? ""
                            : absl::StrCat(b.location.line + 1, ":",
                                           b.location.column + 1, ": ");
    lines.push_back(
        absl::StrCat(error_prefix, position, "field '", b.field, "' ", b.what));
  }
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  if (absl::Status s = util::CheckInputFile(path); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file ", s.message()));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat("cannot open config file \"", path, "\""));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(
        absl::StrCat("error while reading config file \"", path, "\""));
  }
  return text.str();
}

// Makes a relative, non-empty `path` absolute against the directory `base`.
void ResolvePath(const fs::path& base, std::string* path) {
  if (path->empty() || fs::path(*path).is_absolute()) return;
  *path = (base / *path).lexically_normal().string();
}

// Resolves the model and data paths of `config` against `base`.
void ResolvePaths(const fs::path& base, TrainConfig* config) {
  ModelConfig& model = *config->mutable_model();
  ResolvePath(base, model.mutable_hf_path());
  ResolvePath(base, model.mutable_reference_hf_path());
  if (model.has_lora()) {
    ResolvePath(base, model.mutable_lora()->mutable_adapter_path());
  }
  ResolvePath(base, config->mutable_export_hf_path());
  DataConfig& data = *config->mutable_data();
  for (std::string& file : *data.mutable_train_files()) {
    ResolvePath(base, &file);
  }
  for (std::string& file : *data.mutable_eval_files()) {
    ResolvePath(base, &file);
  }
  ResolvePath(base, data.mutable_tokenizer_path());
  ResolvePath(base, data.mutable_cache_dir());
  if (config->resume() != kResumeLatest) {
    ResolvePath(base, config->mutable_resume());
  }
}

// "int32", "enum prefopt.DpoConfig.LossType", "message prefopt.DpoConfig".
std::string TypeName(const FieldDescriptor& field) {
  switch (field.cpp_type()) {
    case FieldDescriptor::CPPTYPE_ENUM:
      return absl::StrCat("enum ", field.enum_type()->full_name());
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return absl::StrCat("message ", field.message_type()->full_name());
    default:
      return field.type_name();
  }
}

// Parses a base-10 integer of type T, telling a number out of T's range apart
// from text that is not an integer.
template <typename T>
absl::StatusOr<T> ParseInteger(absl::string_view text,
                               const std::string& field_path,
                               const FieldDescriptor& field) {
  T value;
  if (absl::SimpleAtoi(text, &value)) return value;
  absl::string_view digits = text;
  if (absl::StartsWith(digits, "-") || absl::StartsWith(digits, "+")) {
    digits.remove_prefix(1);
  }
  if (!digits.empty() &&
      std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field_path, " expects ", field.type_name(), " in [",
        std::numeric_limits<T>::min(), ", ", std::numeric_limits<T>::max(),
        "], got ", util::ClipText(text)));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field_path, " expects ", field.type_name(),
                   " (an integer), got \"", util::ClipText(text), "\""));
}

// Parses `text` as one value of the scalar `field` and stores it in `message`
// (appending if the field is repeated).
absl::Status StoreScalar(absl::string_view text, const std::string& field_path,
                         const FieldDescriptor& field, Message* message) {
  const Reflection& reflection = *message->GetReflection();
  const bool add = field.is_repeated();
  const auto expected = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(
        field_path, " expects ", what, ", got \"", util::ClipText(text), "\""));
  };
  switch (field.cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      absl::StatusOr<int32_t> value =
          ParseInteger<int32_t>(text, field_path, field);
      if (!value.ok()) return value.status();
      add ? reflection.AddInt32(message, &field, *value)
          : reflection.SetInt32(message, &field, *value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      absl::StatusOr<int64_t> value =
          ParseInteger<int64_t>(text, field_path, field);
      if (!value.ok()) return value.status();
      add ? reflection.AddInt64(message, &field, *value)
          : reflection.SetInt64(message, &field, *value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      absl::StatusOr<uint32_t> value =
          ParseInteger<uint32_t>(text, field_path, field);
      if (!value.ok()) return value.status();
      add ? reflection.AddUInt32(message, &field, *value)
          : reflection.SetUInt32(message, &field, *value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      absl::StatusOr<uint64_t> value =
          ParseInteger<uint64_t>(text, field_path, field);
      if (!value.ok()) return value.status();
      add ? reflection.AddUInt64(message, &field, *value)
          : reflection.SetUInt64(message, &field, *value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_FLOAT: {
      float value;
      if (!absl::SimpleAtof(text, &value) || !std::isfinite(value)) {
        return expected("a finite float");
      }
      add ? reflection.AddFloat(message, &field, value)
          : reflection.SetFloat(message, &field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      double value;
      if (!absl::SimpleAtod(text, &value) || !std::isfinite(value)) {
        return expected("a finite double");
      }
      add ? reflection.AddDouble(message, &field, value)
          : reflection.SetDouble(message, &field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      bool value;
      if (text == "true" || text == "1") {
        value = true;
      } else if (text == "false" || text == "0") {
        value = false;
      } else {
        return expected("a bool (true, false, 1 or 0)");
      }
      add ? reflection.AddBool(message, &field, value)
          : reflection.SetBool(message, &field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_STRING:
      add ? reflection.AddString(message, &field, std::string(text))
          : reflection.SetString(message, &field, std::string(text));
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_ENUM: {
      const google::protobuf::EnumValueDescriptor* value =
          field.enum_type()->FindValueByName(std::string(text));
      if (value == nullptr) {
        std::vector<std::string> names;
        for (int i = 0; i < field.enum_type()->value_count(); ++i) {
          names.push_back(field.enum_type()->value(i)->name());
        }
        return expected(absl::StrCat("one of ", absl::StrJoin(names, ", "),
                                     " (", field.enum_type()->full_name(),
                                     ", exact case)"));
      }
      add ? reflection.AddEnum(message, &field, value)
          : reflection.SetEnum(message, &field, value);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field_path, " is a ", TypeName(field), ", not a scalar"));
}

// Sets the last field of an override path from its value text.
absl::Status StoreValue(absl::string_view text, const std::string& field_path,
                        const FieldDescriptor& field, Message* message) {
  const Reflection& reflection = *message->GetReflection();
  if (field.cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
    if (field.is_repeated()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field_path,
                       " is a repeated message; set it in the "
                       "config file instead"));
    }
    const absl::string_view braced = absl::StripAsciiWhitespace(text);
    if (!absl::StartsWith(braced, "{") || !absl::EndsWith(braced, "}")) {
      return absl::InvalidArgumentError(absl::StrCat(
          field_path, " is a ", TypeName(field), "; set one of its fields (",
          FieldNames(*field.message_type()), ") as ", field_path,
          ".FIELD=VALUE, or give the whole message in braces, e.g. ",
          field_path, "={}"));
    }
    // Blank out the braces so that error columns count from the value's start.
    std::string inner(text);
    inner[inner.find('{')] = ' ';
    inner[inner.rfind('}')] = ' ';
    return ParseText(inner, absl::StrCat(field_path, " value at "),
                     field_path + ".",
                     reflection.MutableMessage(message, &field));
  }
  if (!field.is_repeated()) {
    return StoreScalar(text, field_path, field, message);
  }
  reflection.ClearField(message, &field);
  if (text.empty()) return absl::OkStatus();
  for (absl::string_view element : absl::StrSplit(text, ',')) {
    absl::Status stored = StoreScalar(element, field_path, field, message);
    if (!stored.ok()) return stored;
  }
  return absl::OkStatus();
}

// Walks `path_text` (dot-separated field names) from `config` and stores
// `value` in the last field.
absl::Status ApplyAssignment(absl::string_view path_text,
                             absl::string_view value, TrainConfig* config) {
  if (path_text.empty()) {
    return absl::InvalidArgumentError("empty field path before '='");
  }
  const std::vector<absl::string_view> names = absl::StrSplit(path_text, '.');
  Message* message = config;
  std::string field_path;
  for (size_t i = 0; i < names.size(); ++i) {
    const Descriptor& descriptor = *message->GetDescriptor();
    if (names[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "empty field name in \"", util::ClipText(path_text), "\""));
    }
    const FieldDescriptor* field =
        descriptor.FindFieldByName(std::string(names[i]));
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "no field \"", util::ClipText(names[i]), "\" in ",
          descriptor.full_name(), " (fields: ", FieldNames(descriptor), ")"));
    }
    absl::StrAppend(&field_path, i == 0 ? "" : ".", field->name());
    if (i + 1 == names.size()) {
      return StoreValue(value, field_path, *field, message);
    }
    if (field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) {
      return absl::InvalidArgumentError(
          absl::StrCat(field_path, " is a ", TypeName(*field),
                       ", not a message; it has no field \"",
                       util::ClipText(names[i + 1]), "\""));
    }
    if (field->is_repeated()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field_path,
                       " is a repeated message; set it in the "
                       "config file instead"));
    }
    message = message->GetReflection()->MutableMessage(message, field);
  }
  return absl::OkStatus();
}

// Adds "<path>: must be a finite number, got <value>" for every non-finite
// float or double set in `message`. The config's repeated fields hold no
// numbers or messages, so only singular fields are visited.
void CheckFinite(const Message& message, const std::string& prefix,
                 std::vector<std::string>* problems) {
  const Reflection& reflection = *message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection.ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    if (field->is_repeated()) continue;
    const std::string path = absl::StrCat(prefix, field->name());
    double value = 0;
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_MESSAGE:
        CheckFinite(reflection.GetMessage(message, field), path + ".",
                    problems);
        continue;
      case FieldDescriptor::CPPTYPE_FLOAT:
        value = reflection.GetFloat(message, field);
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        value = reflection.GetDouble(message, field);
        break;
      default:
        continue;
    }
    if (!std::isfinite(value)) {
      problems->push_back(
          absl::StrCat(path, ": must be a finite number, got ", value));
    }
  }
}

// LoRA (docs/lora.md): PEFT's ranges, and what TRL refuses with a
// peft_config. The target modules are checked against the model when it is
// built (they depend on its config.json).
void CheckLora(const TrainConfig& config, std::vector<std::string>* problems) {
  const ModelConfig& model = config.model();
  if (!model.has_lora()) {
    if (model.base_dtype() != ModelConfig::WEIGHT_DTYPE_DEFAULT) {
      problems->push_back(absl::StrCat(
          "model.base_dtype: holds the frozen weights of a LoRA run and needs "
          "model.lora (got ",
          ModelConfig::WeightDtype_Name(model.base_dtype()),
          " without it); add model { lora {} } or remove base_dtype"));
    }
    return;
  }
  const LoraConfig& lora = model.lora();
  if (lora.has_r() && lora.r() <= 0) {
    problems->push_back(
        absl::StrCat("model.lora.r: must be > 0, got ", lora.r()));
  }
  if (lora.has_alpha() && !(lora.alpha() > 0)) {
    problems->push_back(
        absl::StrCat("model.lora.alpha: must be > 0, got ", lora.alpha()));
  }
  if (!(lora.dropout() >= 0 && lora.dropout() < 1)) {
    problems->push_back(absl::StrCat(
        "model.lora.dropout: must be in [0, 1), got ", lora.dropout()));
  }
  if (!model.reference_hf_path().empty()) {
    problems->push_back(absl::StrCat(
        "model.reference_hf_path: with model.lora the reference is the model "
        "the run starts from, held once (docs/lora.md; TRL likewise refuses "
        "a ref_model with a peft_config); remove reference_hf_path (got ",
        model.reference_hf_path(), ")"));
  }
  const ObjectiveConfig& objective = config.objective();
  if (objective.dpo().sync_ref_model()) {
    problems->push_back(
        "objective.dpo.sync_ref_model: TR-DPO mixes the policy's weights into "
        "a separate reference, but with model.lora the reference is the "
        "frozen base model (TRL likewise refuses sync_ref_model with a "
        "peft_config); remove sync_ref_model or model.lora");
  }
}

void CheckModel(const TrainConfig& config, std::vector<std::string>* problems) {
  const ModelConfig& model = config.model();
  const auto problem = [&](absl::string_view field, absl::string_view what) {
    problems->push_back(absl::StrCat("model.", field, ": ", what));
  };
  CheckLora(config, problems);
  if (model.live_reference() && config.objective().has_sft()) {
    problem("live_reference",
            "objective sft uses no reference model; remove live_reference");
  }
  if (config.objective().dpo().sync_ref_model() && !model.live_reference()) {
    problems->push_back(
        "objective.dpo.sync_ref_model: needs model.live_reference: true; "
        "TR-DPO moves the reference during training, so the reference "
        "log-probs precomputed before training would go stale (TRL likewise "
        "refuses sync_ref_model with precompute_ref_log_probs). Add "
        "model { live_reference: true }, or remove sync_ref_model");
  }
  // CPO and ORPO are reference-free (docs/objectives.md §8): a reference
  // model set for them would be ignored, which a user would not expect.
  if (config.objective().has_cpo() || config.objective().has_orpo()) {
    const char* name = config.objective().has_cpo() ? "cpo" : "orpo";
    if (model.live_reference()) {
      problem("live_reference",
              absl::StrCat("objective ", name,
                           " uses no reference model; remove live_reference"));
    }
    if (!model.reference_hf_path().empty()) {
      problem("reference_hf_path",
              absl::StrCat("objective ", name,
                           " uses no reference model; remove "
                           "reference_hf_path (got ",
                           model.reference_hf_path(), ")"));
    }
  }
  const std::pair<const char*, int32_t> sizes[] = {
      {"vocab_size", model.vocab_size()}, {"n_positions", model.n_positions()},
      {"n_embd", model.n_embd()},         {"n_layer", model.n_layer()},
      {"n_head", model.n_head()},
  };
  if (!model.hf_path().empty()) {
    constexpr absl::string_view kUnset =
        "must be unset when model.hf_path is set (the Hugging Face folder's "
        "config.json defines the model), got ";
    if (model.architecture() != ARCHITECTURE_UNSPECIFIED) {
      problem("architecture",
              absl::StrCat(kUnset, Architecture_Name(model.architecture())));
    }
    for (const auto& [name, value] : sizes) {
      if (value != 0) problem(name, absl::StrCat(kUnset, value));
    }
    if (model.init_std() != 0) {
      problem("init_std", absl::StrCat(kUnset, model.init_std()));
    }
    if (model.has_eos_token_id()) {
      problem("eos_token_id", absl::StrCat(kUnset, model.eos_token_id()));
    }
    return;
  }
  if (model.architecture() == ARCHITECTURE_UNSPECIFIED &&
      std::all_of(std::begin(sizes), std::end(sizes),
                  [](const auto& size) { return size.second == 0; })) {
    problems->push_back(absl::StrCat(
        "model: set model.hf_path to a Hugging Face model folder, or "
        "model.architecture (one of: ",
        EnumValueNames(*Architecture_descriptor()),
        ") and the sizes vocab_size, n_positions, n_embd, n_layer, n_head for "
        "a from-scratch model"));
    return;
  }
  if (model.architecture() == ARCHITECTURE_UNSPECIFIED) {
    problem("architecture",
            absl::StrCat("must be set for a from-scratch model (one of: ",
                         EnumValueNames(*Architecture_descriptor()),
                         "), or set model.hf_path to a Hugging Face model "
                         "folder"));
  }
  for (const auto& [name, value] : sizes) {
    if (value <= 0) {
      problem(name, absl::StrCat("must be > 0 for a from-scratch model, got ",
                                 value));
    }
  }
  if (model.n_embd() > 0 && model.n_head() > 0 &&
      model.n_embd() % model.n_head() != 0) {
    problem("n_embd", absl::StrCat("must be a multiple of model.n_head (",
                                   model.n_head(), "), got ", model.n_embd()));
  }
  if (model.init_std() <= 0) {
    problem("init_std", absl::StrCat("must be > 0, got ", model.init_std()));
  }
  const bool rope_family =
      model.architecture() == LLAMA || model.architecture() == QWEN2;
  if (!rope_family) {
    const std::pair<const char*, bool> llama_only[] = {
        {"n_kv_head", model.n_kv_head() != 0},
        {"intermediate_size", model.intermediate_size() != 0},
        {"head_dim", model.head_dim() != 0},
        {"rope_theta", model.rope_theta() != 0},
        {"rms_norm_eps", model.rms_norm_eps() != 0},
        {"tie_word_embeddings", model.has_tie_word_embeddings()},
        {"attention_bias", model.attention_bias()},
        {"mlp_bias", model.mlp_bias()}};
    for (const auto& [name, set] : llama_only) {
      if (set) problem(name, "applies to LLAMA and QWEN2 only; leave it unset");
    }
  } else {
    if (model.intermediate_size() <= 0) {
      problem("intermediate_size",
              absl::StrCat("must be > 0 for ",
                           Architecture_Name(model.architecture()), ", got ",
                           model.intermediate_size()));
    }
    if (model.n_kv_head() < 0 ||
        (model.n_kv_head() > 0 && model.n_head() % model.n_kv_head() != 0)) {
      problem("n_kv_head",
              absl::StrCat("must divide model.n_head (", model.n_head(),
                           "), got ", model.n_kv_head()));
    }
    if (model.head_dim() < 0 || model.head_dim() % 2 != 0) {
      problem("head_dim", absl::StrCat("must be even (rotary pairs), got ",
                                       model.head_dim()));
    }
    if (model.architecture() == QWEN2 &&
        (model.attention_bias() || model.mlp_bias())) {
      problem("attention_bias",
              "QWEN2 always has q/k/v biases and no others; leave "
              "attention_bias and mlp_bias unset");
    }
  }
  if (model.has_eos_token_id() &&
      (model.eos_token_id() < 0 ||
       model.eos_token_id() >= model.vocab_size())) {
    problem("eos_token_id",
            absl::StrCat("must be in [0, model.vocab_size) = [0, ",
                         model.vocab_size(), "), got ", model.eos_token_id()));
  }
  if (model.n_positions() > 0 &&
      config.data().max_length() > model.n_positions()) {
    problems->push_back(absl::StrCat(
        "data.max_length: must be <= model.n_positions (", model.n_positions(),
        ") for this model, got ", config.data().max_length(), " (",
        kDefaultMaxLength, " when unset)"));
  }
}

void CheckData(const DataConfig& data, std::vector<std::string>* problems) {
  if (data.train_files().empty()) {
    problems->push_back(
        "data.train_files: must list at least one JSONL file, got none");
  }
  for (int i = 0; i < data.train_files_size(); ++i) {
    if (data.train_files(i).empty()) {
      problems->push_back(
          absl::StrCat("data.train_files[", i, "]: must not be empty"));
    }
  }
  for (int i = 0; i < data.eval_files_size(); ++i) {
    if (data.eval_files(i).empty()) {
      problems->push_back(
          absl::StrCat("data.eval_files[", i, "]: must not be empty"));
    }
  }
  if (data.max_length() < 2) {
    problems->push_back(absl::StrCat(
        "data.max_length: must be >= 2 (a prompt token and a response token), "
        "got ",
        data.max_length()));
  }
  if (data.max_prompt_length() < 0) {
    problems->push_back(absl::StrCat(
        "data.max_prompt_length: must be >= 0 (0 = no separate limit), got ",
        data.max_prompt_length()));
  } else if (data.max_prompt_length() >= data.max_length()) {
    problems->push_back(absl::StrCat(
        "data.max_prompt_length: must be < data.max_length (",
        data.max_length(), ") to leave room for the response, got ",
        data.max_prompt_length()));
  }
}

// Conversational data needs a tokenizer; data.tokenizer_path defaults to the
// model folder's tokenizer.json, so one of the two must be set.
void CheckChatTemplate(const TrainConfig& config,
                       std::vector<std::string>* problems) {
  const DataConfig& data = config.data();
  if (data.chat_template() != DataConfig::NONE &&
      data.tokenizer_path().empty() && config.model().hf_path().empty()) {
    problems->push_back(absl::StrCat(
        "data.chat_template: ",
        DataConfig::ChatTemplate_Name(data.chat_template()),
        " renders text, which needs a tokenizer: set data.tokenizer_path (or "
        "model.hf_path to a folder with tokenizer.json)"));
  }
}

// The combinations of DPO-family options that TRL 1.16's DPOTrainer refuses
// or cannot compute (docs/objectives.md §1).
void CheckDpoFamily(const DpoConfig& dpo, std::vector<std::string>* problems) {
  const auto name = [](DpoConfig::LossType type) {
    return DpoConfig::LossType_Name(type);
  };
  if (dpo.loss_weights_size() > 0 &&
      dpo.loss_weights_size() != dpo.loss_type_size()) {
    problems->push_back(absl::StrCat(
        "objective.dpo.loss_weights: has ", dpo.loss_weights_size(),
        " entries but objective.dpo.loss_type has ", dpo.loss_type_size(),
        " (one weight per loss type, or none for 1.0 each)"));
  }
  for (int k = 0; k < dpo.loss_type_size(); ++k) {
    const DpoConfig::LossType type = dpo.loss_type(k);
    for (int j = 0; j < k; ++j) {
      if (dpo.loss_type(j) == type) {
        problems->push_back(
            absl::StrCat("objective.dpo.loss_type[", k, "]: ", name(type),
                         " is already objective.dpo.loss_type[", j,
                         "] (list each loss once; loss_weights scale it)"));
      }
    }
    switch (type) {
      case DpoConfig::SIGMOID:
      case DpoConfig::SIGMOID_NORM:
      case DpoConfig::HINGE:
      case DpoConfig::IPO:
      case DpoConfig::EXO_PAIR:
      case DpoConfig::ROBUST:
      case DpoConfig::DISCOPOP:
      case DpoConfig::SFT:
        break;
      default:
        if (dpo.f_divergence_type() != DpoConfig::REVERSE_KL) {
          problems->push_back(absl::StrCat(
              "objective.dpo.f_divergence_type: ",
              DpoConfig::FDivergenceType_Name(dpo.f_divergence_type()),
              " does not apply to loss_type ", name(type),
              " (only to SIGMOID, SIGMOID_NORM, HINGE, IPO, EXO_PAIR, ROBUST, "
              "DISCOPOP and SFT, as TRL); use REVERSE_KL with it"));
        }
    }
    if (type == DpoConfig::EXO_PAIR && !(dpo.label_smoothing() > 0)) {
      problems->push_back(absl::StrCat(
          "objective.dpo.label_smoothing: must be > 0 for loss_type EXO_PAIR "
          "(its loss has log(label_smoothing); the paper uses 1e-3), got ",
          dpo.label_smoothing()));
    }
    if (dpo.use_weighting() && type == DpoConfig::SFT) {
      problems->push_back(
          "objective.dpo.use_weighting: not with loss_type SFT (its term is a "
          "token mean over the whole batch, which has no per-pair weight; TRL "
          "1.16 fails on this combination)");
    }
    if (dpo.use_weighting() &&
        (type == DpoConfig::AOT || type == DpoConfig::AOT_UNPAIRED)) {
      problems->push_back(absl::StrCat(
          "objective.dpo.use_weighting: not with loss_type ", name(type),
          " (it sorts the pairs, which would misalign WPO's per-pair weights; "
          "TRL refuses it too)"));
    }
  }
  if (dpo.has_ld_alpha() && !(dpo.ld_alpha() >= 0 && dpo.ld_alpha() <= 1)) {
    problems->push_back(absl::StrCat(
        "objective.dpo.ld_alpha: must be in [0, 1], got ", dpo.ld_alpha()));
  }
  if (dpo.has_discopop_tau() && !(dpo.discopop_tau() > 0)) {
    problems->push_back(absl::StrCat(
        "objective.dpo.discopop_tau: must be > 0, got ", dpo.discopop_tau()));
  }
}

void CheckObjective(const ObjectiveConfig& objective,
                    std::vector<std::string>* problems) {
  switch (objective.kind_case()) {
    case ObjectiveConfig::KIND_NOT_SET: {
      const google::protobuf::OneofDescriptor& kind =
          *ObjectiveConfig::descriptor()->FindOneofByName("kind");
      std::vector<std::string> options;
      for (int i = 0; i < kind.field_count(); ++i) {
        options.push_back(kind.field(i)->name());
      }
      problems->push_back(
          absl::StrCat("objective: must set one of the oneof objective.kind (",
                       absl::StrJoin(options, ", "),
                       "), e.g. objective { dpo { beta: 0.1 } } or "
                       "--set=objective.dpo.beta=0.1"));
      return;
    }
    case ObjectiveConfig::kDpo: {
      const DpoConfig& dpo = objective.dpo();
      if (dpo.beta() <= 0) {
        problems->push_back(
            absl::StrCat("objective.dpo.beta: must be > 0, got ", dpo.beta()));
      }
      const float epsilon = dpo.label_smoothing();
      const bool robust =
          std::find(dpo.loss_type().begin(), dpo.loss_type().end(),
                    DpoConfig::ROBUST) != dpo.loss_type().end();
      if (robust && epsilon >= 0.5f) {
        problems->push_back(absl::StrCat(
            "objective.dpo.label_smoothing: must be < 0.5 for loss_type "
            "ROBUST, got ",
            epsilon, " (the robust loss divides by 1 - 2 * label_smoothing)"));
      } else if (epsilon < 0 || epsilon >= 0.5f) {
        problems->push_back(absl::StrCat(
            "objective.dpo.label_smoothing: must be in [0, 0.5), got ", epsilon,
            " (the probability that a preference label is flipped)"));
      }
      CheckDpoFamily(dpo, problems);
      {
        // TR-DPO's reference sync (docs/objectives.md §1). The two settings
        // are checked also without sync_ref_model, which ignores them (as
        // TRL), so that turning it on later cannot meet a bad value;
        // CheckModel checks that it has a live reference. Unset (a config
        // built in code, before FillDefaults) is not a value to check.
        const float alpha = dpo.ref_model_mixup_alpha();
        if (dpo.has_ref_model_mixup_alpha() && !(alpha >= 0 && alpha <= 1)) {
          problems->push_back(absl::StrCat(
              "objective.dpo.ref_model_mixup_alpha: must be in [0, 1], got ",
              alpha, " (the policy's share of the reference after each sync)"));
        }
        if (dpo.has_ref_model_sync_steps() && dpo.ref_model_sync_steps() < 1) {
          problems->push_back(absl::StrCat(
              "objective.dpo.ref_model_sync_steps: must be >= 1, got ",
              dpo.ref_model_sync_steps(),
              " (the reference is synced every that many optimizer steps)"));
        }
      }
      return;
    }
    case ObjectiveConfig::kKto: {
      const KtoConfig& kto = objective.kto();
      if (!(kto.beta() > 0)) {
        problems->push_back(
            absl::StrCat("objective.kto.beta: must be > 0, got ", kto.beta()));
      }
      if (!(kto.desirable_weight() >= 0)) {
        problems->push_back(
            absl::StrCat("objective.kto.desirable_weight: must be >= 0, got ",
                         kto.desirable_weight()));
      }
      if (!(kto.undesirable_weight() >= 0)) {
        problems->push_back(
            absl::StrCat("objective.kto.undesirable_weight: must be >= 0, got ",
                         kto.undesirable_weight()));
      }
      return;
    }
    case ObjectiveConfig::kCpo: {
      const CpoConfig& cpo = objective.cpo();
      if (!(cpo.beta() > 0)) {
        problems->push_back(
            absl::StrCat("objective.cpo.beta: must be > 0, got ", cpo.beta()));
      }
      if (!(cpo.label_smoothing() >= 0 && cpo.label_smoothing() < 0.5f)) {
        problems->push_back(absl::StrCat(
            "objective.cpo.label_smoothing: must be in [0, 0.5), got ",
            cpo.label_smoothing(),
            " (the probability that a preference label is flipped)"));
      }
      if (cpo.label_smoothing() != 0 && (cpo.loss_type() == CpoConfig::HINGE ||
                                         cpo.loss_type() == CpoConfig::IPO)) {
        problems->push_back(absl::StrCat(
            "objective.cpo.label_smoothing: used only by loss_type SIGMOID, "
            "SIMPO and ALPHAPO (TRL ignores it for ",
            CpoConfig::LossType_Name(cpo.loss_type()), "), got ",
            cpo.label_smoothing()));
      }
      if (!(cpo.cpo_alpha() >= 0)) {
        problems->push_back(absl::StrCat(
            "objective.cpo.cpo_alpha: must be >= 0 (the weight of the chosen "
            "responses' NLL), got ",
            cpo.cpo_alpha()));
      }
      if (cpo.loss_type() == CpoConfig::ALPHAPO && cpo.cpo_alpha() != 0) {
        problems->push_back(absl::StrCat(
            "objective.cpo.cpo_alpha: loss_type ALPHAPO is SIMPO with "
            "cpo_alpha 0 (as TRL's CPOConfig sets it), got ",
            cpo.cpo_alpha(),
            "; for an NLL term use loss_type SIMPO with alpha"));
      }
      if (cpo.has_simpo_gamma() && cpo.loss_type() != CpoConfig::SIMPO &&
          cpo.loss_type() != CpoConfig::ALPHAPO && cpo.simpo_gamma() != 0.5f) {
        problems->push_back(absl::StrCat(
            "objective.cpo.simpo_gamma: used only by loss_type SIMPO and "
            "ALPHAPO, got ",
            cpo.simpo_gamma(), " with ",
            CpoConfig::LossType_Name(cpo.loss_type())));
      }
      return;
    }
    case ObjectiveConfig::kOrpo:
      if (!(objective.orpo().beta() > 0)) {
        problems->push_back(absl::StrCat(
            "objective.orpo.beta: must be > 0, got ", objective.orpo().beta()));
      }
      return;
    case ObjectiveConfig::kSft:
      return;
    case ObjectiveConfig::kPrior: {
      const PriorConfig& prior = objective.prior();
      if (prior.has_alpha() && !(prior.alpha() >= 0)) {
        problems->push_back(absl::StrCat(
            "objective.prior.alpha: must be >= 0, got ", prior.alpha()));
      }
      if (!(prior.weight_sum_floor() > 0)) {
        problems->push_back(
            absl::StrCat("objective.prior.weight_sum_floor: must be > 0, got ",
                         prior.weight_sum_floor()));
      }
      return;
    }
    case ObjectiveConfig::kImplicitSft: {
      const ImplicitSftConfig& isft = objective.implicit_sft();
      if (isft.divergence() == ImplicitSftConfig::DIVERGENCE_UNSPECIFIED) {
        problems->push_back(
            "objective.implicit_sft.divergence: must be set (TOTAL_VARIATION, "
            "PEARSON_CHI2, NEYMAN_CHI2, KL, SQUARED_HELLINGER or "
            "JENSEN_SHANNON)");
      }
      if (!(isft.beta() > 0)) {
        problems->push_back(absl::StrCat(
            "objective.implicit_sft.beta: must be > 0, got ", isft.beta()));
      }
      if (!(isft.domain_margin() > 0 && isft.domain_margin() <= 0.5f)) {
        problems->push_back(
            absl::StrCat("objective.implicit_sft.domain_margin: must be in "
                         "(0, 0.5], got ",
                         isft.domain_margin()));
      }
      return;
    }
    case ObjectiveConfig::kSparsepo: {
      const SparsePoConfig& sp = objective.sparsepo();
      if (!(sp.beta() > 0)) {
        problems->push_back(absl::StrCat(
            "objective.sparsepo.beta: must be > 0, got ", sp.beta()));
      }
      for (auto [name, value] : {std::pair{"l1_reward", sp.l1_reward()},
                                 std::pair{"l1_kl", sp.l1_kl()}}) {
        if (!(value >= 0)) {
          problems->push_back(absl::StrCat("objective.sparsepo.", name,
                                           ": must be >= 0, got ", value));
        }
      }
      if (sp.mask() == SparsePoConfig::MAPO &&
          (sp.independent_masks() || sp.l1_reward() > 0 || sp.l1_kl() > 0)) {
        problems->push_back(
            "objective.sparsepo.mask: MAPO masks are fixed and common, so "
            "independent_masks, l1_reward and l1_kl must be unset with it");
      }
      if (sp.has_mask_on_reward() && sp.has_mask_on_kl() &&
          !sp.mask_on_reward() && !sp.mask_on_kl()) {
        problems->push_back(
            "objective.sparsepo: mask_on_reward and mask_on_kl are both "
            "false, so nothing would be masked");
      }
      if (sp.mask() != SparsePoConfig::MAPO && sp.mapo_groups_size() > 0) {
        problems->push_back(
            "objective.sparsepo.mapo_groups: only used with mask: MAPO");
      }
      for (int g : sp.mapo_groups()) {
        if (g == SparsePoConfig::MAPO_GROUP_UNSPECIFIED) {
          problems->push_back(
              "objective.sparsepo.mapo_groups: MAPO_GROUP_UNSPECIFIED is not "
              "a group (choose MLP, ATTN, RESID or LOGITS)");
        }
      }
      return;
    }
  }
}

void CheckOptimizer(const OptimizerConfig& optimizer,
                    std::vector<std::string>* problems) {
  if (optimizer.lr() <= 0) {
    problems->push_back(
        absl::StrCat("optimizer.lr: must be > 0, got ", optimizer.lr()));
  }
  const std::pair<const char*, float> betas[] = {{"beta1", optimizer.beta1()},
                                                 {"beta2", optimizer.beta2()}};
  for (const auto& [name, value] : betas) {
    if (value < 0 || value >= 1) {
      problems->push_back(
          absl::StrCat("optimizer.", name, ": must be in [0, 1), got ", value));
    }
  }
  if (optimizer.eps() <= 0) {
    problems->push_back(
        absl::StrCat("optimizer.eps: must be > 0, got ", optimizer.eps()));
  }
  if (optimizer.weight_decay() < 0) {
    problems->push_back(
        absl::StrCat("optimizer.weight_decay: must be >= 0, got ",
                     optimizer.weight_decay()));
  }
  if (optimizer.max_grad_norm() < 0) {
    problems->push_back(absl::StrCat(
        "optimizer.max_grad_norm: must be >= 0 (0 disables clipping), got ",
        optimizer.max_grad_norm()));
  }
}

void CheckSchedule(const ScheduleConfig& schedule,
                   std::vector<std::string>* problems) {
  if (schedule.warmup_steps() < 0) {
    problems->push_back(absl::StrCat(
        "schedule.warmup_steps: must be >= 0, got ", schedule.warmup_steps()));
  }
  if (schedule.warmup_ratio() < 0 || schedule.warmup_ratio() >= 1) {
    problems->push_back(
        absl::StrCat("schedule.warmup_ratio: must be in [0, 1), got ",
                     schedule.warmup_ratio()));
  }
  if (schedule.warmup_steps() > 0 && schedule.warmup_ratio() > 0) {
    problems->push_back(absl::StrCat(
        "schedule.warmup_ratio: set at most one of schedule.warmup_steps (",
        schedule.warmup_steps(), ") and schedule.warmup_ratio (",
        schedule.warmup_ratio(), ")"));
  }
}

void CheckBatch(const TrainConfig& config, std::vector<std::string>* problems) {
  const BatchConfig& batch = config.batch();
  const int micro = batch.micro_batch_size();
  const int global = batch.global_batch_size();
  if (micro < 1) {
    problems->push_back(
        absl::StrCat("batch.micro_batch_size: must be >= 1, got ", micro));
  }
  if (global < 0) {
    problems->push_back(absl::StrCat(
        "batch.global_batch_size: must be >= 1 (or 0: micro_batch_size × "
        "world size), got ",
        global));
  }
  const int64_t max_length = config.data().max_length();
  if (micro >= 1 && max_length >= 1 &&
      micro * max_length > kMaxMicroBatchTokens) {
    problems->push_back(absl::StrCat(
        "batch.micro_batch_size: micro_batch_size * data.max_length must be "
        "at most ",
        kMaxMicroBatchTokens,
        " tokens (a micro-batch of pairs holds twice as many), got ", micro,
        " * ", max_length, " = ", micro * max_length));
  }
  if (micro >= 1 && global >= 1 && global % micro != 0) {
    problems->push_back(
        absl::StrCat("batch.global_batch_size: must be a multiple of "
                     "batch.micro_batch_size (",
                     micro, "), got ", global));
  }
  // KTO's KL completions are the other completions of the same global batch
  // of the data in file order (docs/objectives.md §9), as TRL's KTOTrainer
  // requires sequential sampling and more than one example per batch.
  if (config.objective().has_kto() &&
      config.objective().kto().loss_type() == KtoConfig::KTO) {
    if (config.data().shuffle()) {
      problems->push_back(
          "data.shuffle: must be false for objective.kto with loss_type KTO "
          "(its default): each example's KL completion is the completion of "
          "its neighbour in the same global batch of the data in file order, "
          "as TRL's KTOTrainer requires sequential sampling");
    }
    if (global == 1) {
      problems->push_back(
          "batch.global_batch_size: must be >= 2 for objective.kto with "
          "loss_type KTO, got 1 (with one example per batch its KL "
          "completion is its own completion, and the KL estimate equals the "
          "reward)");
    }
  }
}

void CheckRun(const TrainConfig& config, std::vector<std::string>* problems) {
  if (config.collective_timeout_s() < 0) {
    problems->push_back(absl::StrCat(
        "collective_timeout_s: must be >= 0 (0 = 1800 seconds), got ",
        config.collective_timeout_s()));
  }
  if (config.zero_stage() != 0 && config.zero_stage() != 1) {
    problems->push_back(absl::StrCat(
        "zero_stage: must be 0 (no sharding) or 1 (AdamW moments sharded), "
        "got ",
        config.zero_stage()));
  }
  if (config.max_steps() < 0) {
    problems->push_back(
        absl::StrCat("max_steps: must be >= 0 (0 = train for num_epochs), got ",
                     config.max_steps()));
  }
  if (config.num_epochs() < 0) {
    problems->push_back(
        absl::StrCat("num_epochs: must be >= 0, got ", config.num_epochs()));
  }
  if (config.log_every_steps() < 1) {
    problems->push_back(absl::StrCat("log_every_steps: must be >= 1, got ",
                                     config.log_every_steps()));
  }
  if (config.output_chunk_tokens() < 0) {
    problems->push_back(absl::StrCat(
        "output_chunk_tokens: must be >= 0 (0 = sized from the vocabulary), "
        "got ",
        config.output_chunk_tokens()));
  }
  if (config.save_every_steps() < 0) {
    problems->push_back(absl::StrCat(
        "save_every_steps: must be >= 0 (0 = only after the last step), got ",
        config.save_every_steps()));
  }
  if (config.keep_last_n() < 0) {
    problems->push_back(
        absl::StrCat("keep_last_n: must be >= 0 (0 = keep all), got ",
                     config.keep_last_n()));
  }
  if (config.eval_every_steps() < 0) {
    problems->push_back(
        absl::StrCat("eval_every_steps: must be >= 0 (0 = after the last step "
                     "only), got ",
                     config.eval_every_steps()));
  }
  if (config.eval_every_steps() > 0 && config.data().eval_files().empty()) {
    problems->push_back(absl::StrCat(
        "eval_every_steps: is ", config.eval_every_steps(),
        " but data.eval_files is empty; name the held-out data to evaluate"));
  }
}

}  // namespace

absl::StatusOr<TrainConfig> LoadTrainConfig(
    const std::string& path, const std::vector<std::string>& overrides) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  TrainConfig config;
  absl::Status parsed = ParseText(*text, path + ":", "", &config);
  if (!parsed.ok()) return parsed;

  std::error_code error;
  const fs::path config_file = fs::absolute(path, error);
  if (error) {
    return absl::InternalError(absl::StrCat(
        "cannot make \"", path, "\" an absolute path: ", error.message()));
  }
  ResolvePaths(config_file.parent_path(), &config);

  for (const std::string& override_text : overrides) {
    absl::Status applied = ApplyOverride(override_text, &config);
    if (!applied.ok()) return applied;
  }
  const fs::path working_dir = fs::current_path(error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot read the working directory: ", error.message()));
  }
  ResolvePaths(working_dir, &config);

  FillDefaults(&config);
  absl::Status valid = ValidateTrainConfig(config);
  if (!valid.ok()) {
    std::vector<std::string> lines = absl::StrSplit(valid.message(), '\n');
    for (std::string& line : lines) line = absl::StrCat(path, ": ", line);
    return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
  }
  return config;
}

absl::Status ApplyOverride(const std::string& override_text,
                           TrainConfig* config) {
  const size_t equals = override_text.find('=');
  absl::Status applied;
  if (equals == std::string::npos) {
    applied = absl::InvalidArgumentError(
        "expected path.to.field=value, but there is no '='");
  } else {
    // Work on a copy so that a failed override leaves `config` unchanged.
    TrainConfig updated = *config;
    const absl::string_view text = override_text;
    applied = ApplyAssignment(text.substr(0, equals), text.substr(equals + 1),
                              &updated);
    if (applied.ok()) *config = std::move(updated);
  }
  if (applied.ok()) return applied;
  return absl::Status(applied.code(),
                      absl::StrCat("--set=", util::ClipText(override_text),
                                   ": ", applied.message()));
}

void FillDefaults(TrainConfig* config) {
  if (config->model().has_lora()) {
    // PEFT's LoraConfig defaults.
    // An adapter_path's own settings apply instead (docs/lora.md).
    LoraConfig& lora = *config->mutable_model()->mutable_lora();
    if (!lora.has_r() && lora.adapter_path().empty()) lora.set_r(8);
    if (!lora.has_alpha() && lora.adapter_path().empty()) lora.set_alpha(8);
  }
  ObjectiveConfig& objective = *config->mutable_objective();
  if (objective.has_dpo()) {
    // TRL's DPOConfig defaults.
    DpoConfig& dpo = *objective.mutable_dpo();
    if (dpo.beta() == 0) dpo.set_beta(kDefaultDpoBeta);
    if (dpo.loss_type_size() == 0) dpo.add_loss_type(DpoConfig::SIGMOID);
    if (!dpo.has_f_alpha_divergence_coef()) {
      dpo.set_f_alpha_divergence_coef(0.5f);
    }
    if (!dpo.has_discopop_tau()) dpo.set_discopop_tau(0.05f);
    if (!dpo.has_ref_model_mixup_alpha()) dpo.set_ref_model_mixup_alpha(0.6f);
    if (!dpo.has_ref_model_sync_steps()) dpo.set_ref_model_sync_steps(512);
  }
  if (objective.has_kto()) {
    KtoConfig& kto = *objective.mutable_kto();
    if (kto.beta() == 0) kto.set_beta(0.1f);
    if (!kto.has_desirable_weight()) kto.set_desirable_weight(1.0f);
    if (!kto.has_undesirable_weight()) kto.set_undesirable_weight(1.0f);
  }
  if (objective.has_cpo()) {
    CpoConfig& cpo = *objective.mutable_cpo();
    if (cpo.beta() == 0) cpo.set_beta(0.1f);
    // TRL's CPOConfig turns "alphapo" into "simpo" with cpo_alpha 0.
    if (!cpo.has_cpo_alpha()) {
      cpo.set_cpo_alpha(cpo.loss_type() == CpoConfig::ALPHAPO ? 0.0f : 1.0f);
    }
    if (!cpo.has_simpo_gamma()) cpo.set_simpo_gamma(0.5f);
  }
  if (objective.has_orpo() && objective.orpo().beta() == 0) {
    objective.mutable_orpo()->set_beta(0.1f);
  }
  if (objective.has_prior()) {
    PriorConfig& prior = *objective.mutable_prior();
    if (!prior.has_alpha()) prior.set_alpha(1.0f);
    if (prior.weight_sum_floor() == 0) prior.set_weight_sum_floor(1e-6f);
  }
  if (objective.has_implicit_sft()) {
    ImplicitSftConfig& isft = *objective.mutable_implicit_sft();
    if (isft.beta() == 0) isft.set_beta(0.1f);
    if (isft.domain_margin() == 0) isft.set_domain_margin(0.01f);
  }
  if (objective.has_sparsepo()) {
    SparsePoConfig& sp = *objective.mutable_sparsepo();
    if (sp.beta() == 0) sp.set_beta(0.8f);
    if (sp.mask_init_std() == 0) sp.set_mask_init_std(0.02f);
    if (!sp.has_mask_weight_decay()) sp.set_mask_weight_decay(0.01f);
    if (!sp.has_mask_on_reward()) sp.set_mask_on_reward(true);
    if (!sp.has_mask_on_kl()) sp.set_mask_on_kl(true);
  }
  OptimizerConfig& optimizer = *config->mutable_optimizer();
  if (!optimizer.has_lr()) {
    const bool preference = objective.has_dpo() || objective.has_sparsepo() ||
                            objective.has_kto() || objective.has_cpo() ||
                            objective.has_orpo();
    optimizer.set_lr(preference ? kDefaultPreferenceLr
                                : kDefaultDemonstrationLr);
  }
  if (!optimizer.has_max_grad_norm()) {
    optimizer.set_max_grad_norm(kDefaultMaxGradNorm);
  }
  ScheduleConfig& schedule = *config->mutable_schedule();
  if (!schedule.has_kind()) schedule.set_kind(ScheduleConfig::LINEAR);
  BatchConfig& batch = *config->mutable_batch();
  if (batch.micro_batch_size() == 0) {
    batch.set_micro_batch_size(kDefaultMicroBatchSize);
  }
  if (!config->has_seed()) config->set_seed(kDefaultSeed);
  if (optimizer.beta1() == 0) optimizer.set_beta1(kDefaultAdamBeta1);
  if (optimizer.beta2() == 0) optimizer.set_beta2(kDefaultAdamBeta2);
  if (optimizer.eps() == 0) optimizer.set_eps(kDefaultAdamEps);
  if (config->max_steps() == 0 && config->num_epochs() == 0) {
    config->set_num_epochs(kDefaultNumEpochs);
  }
  if (config->log_every_steps() == 0) {
    config->set_log_every_steps(kDefaultLogEverySteps);
  }
  if (!config->has_save_on_signal()) config->set_save_on_signal(true);
  ModelConfig& model = *config->mutable_model();
  if (model.hf_path().empty() && model.init_std() == 0) {
    model.set_init_std(kDefaultInitStd);
  }
  DataConfig& data = *config->mutable_data();
  if (data.max_length() == 0) data.set_max_length(kDefaultMaxLength);
  // TRL's KTOConfig samples in order ("sequential"): KTO's KL completions are
  // paired within consecutive global batches (docs/objectives.md §9).
  if (!data.has_shuffle()) data.set_shuffle(!objective.has_kto());
}

absl::Status ValidateTrainConfig(const TrainConfig& config) {
  std::vector<std::string> problems;
  // A config built in code, or read by LoadTrainConfig (whose parse reports
  // these with their positions).
  std::vector<BadValue> bad;
  CheckValues(config, "", nullptr, &bad);
  for (const BadValue& b : bad) {
    problems.push_back(absl::StrCat(b.field, ": ", b.what));
  }
  CheckFinite(config, "", &problems);
  // Range checks on a NaN or infinity would only repeat the problem.
  if (problems.empty()) {
    CheckModel(config, &problems);
    CheckData(config.data(), &problems);
    CheckChatTemplate(config, &problems);
    CheckObjective(config.objective(), &problems);
    CheckOptimizer(config.optimizer(), &problems);
    CheckSchedule(config.schedule(), &problems);
    CheckBatch(config, &problems);
    CheckRun(config, &problems);
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
}

absl::Status FillBatchForWorld(int world_size, TrainConfig* config) {
  BatchConfig& batch = *config->mutable_batch();
  if (batch.global_batch_size() != 0) return absl::OkStatus();
  const int64_t global = int64_t{batch.micro_batch_size()} * world_size;
  if (global > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch.global_batch_size: unset, so micro_batch_size * world size = ",
        batch.micro_batch_size(), " * ", world_size, " = ", global,
        ", more than ", std::numeric_limits<int32_t>::max(),
        "; set it or lower batch.micro_batch_size"));
  }
  batch.set_global_batch_size(static_cast<int32_t>(global));
  return absl::OkStatus();
}

absl::Status CheckBatchForWorld(const TrainConfig& config, int world_size) {
  const int64_t micro = config.batch().micro_batch_size();
  const int64_t global = config.batch().global_batch_size();
  if (world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("world size must be >= 1, got ", world_size));
  }
  if (micro < 1 || global < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch.micro_batch_size (", micro, ") and batch.global_batch_size (",
        global, ") must both be >= 1"));
  }
  if (global == 1 && config.objective().has_kto() &&
      config.objective().kto().loss_type() == KtoConfig::KTO) {
    return absl::InvalidArgumentError(
        "batch.global_batch_size: 1 (micro_batch_size * world size), but "
        "objective.kto with loss_type KTO needs >= 2 examples per global "
        "batch to estimate its KL term from other examples' completions");
  }
  const int64_t per_pass = micro * world_size;
  if (global % per_pass == 0) return absl::OkStatus();
  const int64_t below = global / per_pass * per_pass;
  const std::string suggestion =
      below > 0 ? absl::StrCat(below, " or ", below + per_pass)
                : absl::StrCat(per_pass);
  return absl::InvalidArgumentError(absl::StrCat(
      "batch.global_batch_size: must be a multiple of batch.micro_batch_size "
      "* world size = ",
      micro, " * ", world_size, " = ", per_pass, " so that every rank runs ",
      "the same number of accumulation steps, got ", global, "; use ",
      suggestion, ", or change batch.micro_batch_size or the number of ranks"));
}

int GradientAccumulationSteps(const TrainConfig& config, int world_size) {
  return config.batch().global_batch_size() /
         (config.batch().micro_batch_size() * world_size);
}

std::string ResolvedConfigText(const TrainConfig& config) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(config, &text);
  return absl::StrCat(
      "# Resolved prefopt config: the file after --set overrides, defaults "
      "and absolute paths.\n",
      text);
}

}  // namespace prefopt::config
