#include "trainer/data/examples.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "trainer/io/json_file.h"
#include "trainer/util/input_file.h"

namespace prefopt::data {
namespace {

// Reads the token-id array `field`. A missing field is an error unless
// `optional`, in which case `out` is left empty.
absl::Status ReadIds(const nlohmann::json& obj, const char* field,
                     int vocab_size, const std::string& where,
                     std::vector<int32_t>* out, bool optional = false) {
  out->clear();
  auto it = obj.find(field);
  if (it == obj.end()) {
    if (optional) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": missing field \"", field, "\""));
  }
  if (!it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": field \"", field, "\" must be an array of token ids, got ",
        it->type_name()));
  }
  out->reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const nlohmann::json& v = (*it)[i];
    if (!v.is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": field \"", field, "\"[", i,
                       "] must be an integer token id, got ", v.dump()));
    }
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": field \"", field, "\"[", i, "] = ", id,
          " is outside the model's vocabulary [0, ", vocab_size, ")"));
    }
    out->push_back(static_cast<int32_t>(id));
  }
  if (out->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": field \"", field, "\" is empty"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParsePreferenceFraction(const nlohmann::json& obj,
                                     const std::string& where,
                                     float* fraction) {
  auto frac = obj.find("preference_fraction");
  if (frac == obj.end()) return absl::OkStatus();
  if (!frac->is_number() || frac->get<double>() <= 0.0 ||
      frac->get<double>() >= 1.0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where,
                     ": field \"preference_fraction\" must be a number in "
                     "(0, 1), got ",
                     frac->dump()));
  }
  *fraction = frac->get<float>();
  return absl::OkStatus();
}

namespace {

// The shape a field marks a line as, for messages.
const char* ShapeOfField(const std::string& field) {
  if (field == "chosen" || field == "rejected") return "preference pairs";
  if (field == "label") return "unpaired examples (KTO)";
  if (field == "context") return "demonstrations with a context (PRIOR)";
  return "demonstrations";
}

std::string KindDescription(ExampleKind kind, bool ids) {
  const char* suffix = ids ? "_ids" : "";
  switch (kind) {
    case ExampleKind::kPreference:
      return absl::StrCat("preference pairs {\"prompt", suffix, "\", \"chosen",
                          suffix, "\", \"rejected", suffix, "\"}");
    case ExampleKind::kDemonstration:
      return absl::StrCat("demonstrations {\"prompt", suffix,
                          "\", \"completion", suffix, "\"}");
    case ExampleKind::kUnpaired:
      return absl::StrCat("unpaired examples {\"prompt", suffix,
                          "\", \"completion", suffix, "\", \"label\"}");
  }
  return "";
}

}  // namespace

absl::Status CheckShapeFields(const nlohmann::json& obj, ExampleKind kind,
                              bool ids, const std::string& where) {
  std::vector<std::string> others;
  switch (kind) {
    case ExampleKind::kPreference:
      others = {"label", "completion", "context"};
      break;
    case ExampleKind::kDemonstration:
      others = {"label", "chosen", "rejected"};
      break;
    case ExampleKind::kUnpaired:
      others = {"chosen", "rejected", "context"};
      break;
  }
  for (const std::string& other : others) {
    const std::string field =
        ids && other != "label" ? absl::StrCat(other, "_ids") : other;
    if (obj.contains(field)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": field \"", field, "\" belongs to ", ShapeOfField(other),
          ", but the objective trains on ", KindDescription(kind, ids)));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseLabel(const nlohmann::json& obj, const std::string& where,
                        bool* label) {
  auto it = obj.find("label");
  if (it == obj.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where,
        ": missing field \"label\" (unpaired examples, KTO's data, are "
        "{\"prompt\", \"completion\", \"label\"} with label true for a "
        "desirable completion and false for an undesirable one)"));
  }
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": field \"label\" must be true or false, got ", it->dump()));
  }
  *label = it->get<bool>();
  return absl::OkStatus();
}

absl::Status ParseTokenIdsExample(const nlohmann::json& obj, ExampleKind kind,
                                  int vocab_size, const std::string& where,
                                  Example* ex) {
  absl::Status s = CheckShapeFields(obj, kind, /*ids=*/true, where);
  if (!s.ok()) return s;
  s = ReadIds(obj, "prompt_ids", vocab_size, where, &ex->prompt);
  if (!s.ok()) return s;
  switch (kind) {
    case ExampleKind::kPreference:
      s = ReadIds(obj, "chosen_ids", vocab_size, where, &ex->chosen);
      if (!s.ok()) return s;
      s = ReadIds(obj, "rejected_ids", vocab_size, where, &ex->rejected);
      if (!s.ok()) return s;
      return ParsePreferenceFraction(obj, where, &ex->preference_fraction);
    case ExampleKind::kDemonstration:
      s = ReadIds(obj, "completion_ids", vocab_size, where, &ex->chosen);
      if (!s.ok()) return s;
      return ReadIds(obj, "context_ids", vocab_size, where, &ex->context,
                     /*optional=*/true);
    case ExampleKind::kUnpaired:
      s = ReadIds(obj, "completion_ids", vocab_size, where, &ex->chosen);
      if (!s.ok()) return s;
      return ParseLabel(obj, where, &ex->label);
  }
  return absl::OkStatus();
}

void AddExample(Example example, const TruncationOptions& truncation,
                Dataset* dataset) {
  if (!example.rejected.empty() && example.chosen == example.rejected) {
    ++dataset->identical_responses;
  }
  // An unpaired completion is cut later (AttachKlCompletions); it still
  // counts as truncated here when it will be.
  const bool unpaired = dataset->kind == ExampleKind::kUnpaired;
  std::vector<int32_t> whole_completion;
  if (unpaired) whole_completion = example.chosen;
  bool was_truncated = false;
  if (!TruncateExample(truncation, &example, &was_truncated)) {
    ++dataset->dropped_too_long;
    return;
  }
  if (was_truncated) ++dataset->truncated;
  if (unpaired) example.chosen = std::move(whole_completion);
  dataset->examples.push_back(std::move(example));
}

void AttachKlCompletions(int kl_chunk, const TruncationOptions& truncation,
                         std::vector<Example>* examples) {
  std::vector<Example>& ex = *examples;
  const size_t n = ex.size();
  if (kl_chunk > 0) {
    for (size_t begin = 0; begin < n; begin += kl_chunk) {
      const size_t end = std::min(n, begin + static_cast<size_t>(kl_chunk));
      ex[begin].rejected = ex[end - 1].chosen;
      for (size_t i = begin + 1; i < end; ++i) {
        ex[i].rejected = ex[i - 1].chosen;
      }
    }
  }
  for (Example& e : ex) {
    const size_t room = static_cast<size_t>(truncation.max_length) -
                        e.context.size() - e.prompt.size();
    if (e.chosen.size() > room) e.chosen.resize(room);
    if (e.rejected.size() > room) e.rejected.resize(room);
  }
}

bool TruncateExample(const TruncationOptions& t, Example* example,
                     bool* was_truncated) {
  *was_truncated = false;
  auto& prompt = example->prompt;
  if (t.max_prompt_length > 0 &&
      static_cast<int>(prompt.size()) > t.max_prompt_length) {
    *was_truncated = true;
    if (t.mode == KEEP_END) {
      prompt.erase(prompt.begin(), prompt.end() - t.max_prompt_length);
    } else {
      prompt.resize(t.max_prompt_length);
    }
  }
  const int room =
      t.max_length - static_cast<int>(example->context.size() + prompt.size());
  if (room <= 0) return false;
  for (auto* response : {&example->chosen, &example->rejected}) {
    if (static_cast<int>(response->size()) > room) {
      response->resize(room);
      *was_truncated = true;
    }
  }
  return true;
}

absl::StatusOr<Dataset> ReadExamplesJsonl(const std::vector<std::string>& files,
                                          ExampleKind kind, int vocab_size,
                                          const TruncationOptions& truncation) {
  Dataset ds;
  ds.kind = kind;
  for (const std::string& file : files) {
    if (absl::Status s = util::CheckInputFile(file); !s.ok()) return s;
    std::ifstream in(file);
    if (!in) {
      return absl::NotFoundError(absl::StrCat(file, ": cannot open data file"));
    }
    std::string line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      const std::string where = absl::StrCat(file, ":", line_no);
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      if (absl::Status s = io::CheckJsonDepth(line, where, /*jsonl_line=*/true);
          !s.ok())
        return s;
      nlohmann::json obj;
      try {
        obj = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": malformed JSON at byte ", e.byte, ": ", e.what()));
      } catch (const nlohmann::json::exception& e) {
        // out_of_range: a number such as 1e400 that no double holds.
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": invalid JSON: ", e.what()));
      }
      if (!obj.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": expected a JSON object, got ", obj.type_name()));
      }
      Example ex;
      ex.source = where;
      absl::Status s = ParseTokenIdsExample(obj, kind, vocab_size, where, &ex);
      if (!s.ok()) return s;
      AddExample(std::move(ex), truncation, &ds);
    }
    if (in.bad()) {
      return absl::DataLossError(absl::StrCat(file, ": read error"));
    }
  }
  if (kind == ExampleKind::kUnpaired) {
    AttachKlCompletions(/*kl_chunk=*/0, truncation, &ds.examples);
  }
  if (ds.examples.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no usable examples in ", absl::StrJoin(files, ", "), " (",
        ds.dropped_too_long,
        " dropped because the prompt leaves no room within max_length)"));
  }
  return ds;
}

}  // namespace prefopt::data
