#include "trainer/data/preference_data.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace prefopt::data {
namespace {

absl::Status ReadIds(const nlohmann::json& obj, const char* field,
                     int vocab_size, const std::string& where,
                     std::vector<int32_t>* out) {
  auto it = obj.find(field);
  if (it == obj.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": missing field \"", field, "\""));
  }
  if (!it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": field \"", field, "\" must be an array of token ids, got ",
        it->type_name()));
  }
  out->clear();
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

bool TruncatePair(const TruncationOptions& t, PreferencePair* pair,
                  bool* was_truncated) {
  *was_truncated = false;
  auto& prompt = pair->prompt;
  if (t.max_prompt_length > 0 &&
      static_cast<int>(prompt.size()) > t.max_prompt_length) {
    *was_truncated = true;
    if (t.mode == KEEP_END) {
      prompt.erase(prompt.begin(), prompt.end() - t.max_prompt_length);
    } else {
      prompt.resize(t.max_prompt_length);
    }
  }
  const int room = t.max_length - static_cast<int>(prompt.size());
  if (room <= 0) return false;
  for (auto* response : {&pair->chosen, &pair->rejected}) {
    if (static_cast<int>(response->size()) > room) {
      response->resize(room);
      *was_truncated = true;
    }
  }
  return true;
}

absl::StatusOr<PreferenceDataset> ReadPreferenceJsonl(
    const std::vector<std::string>& files, int vocab_size,
    const TruncationOptions& truncation) {
  PreferenceDataset ds;
  for (const std::string& file : files) {
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
      nlohmann::json obj;
      try {
        obj = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": malformed JSON at byte ", e.byte, ": ", e.what()));
      }
      if (!obj.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": expected a JSON object, got ", obj.type_name()));
      }
      PreferencePair pair;
      pair.source = where;
      for (auto [field, dst] : {std::pair{"prompt_ids", &pair.prompt},
                                std::pair{"chosen_ids", &pair.chosen},
                                std::pair{"rejected_ids", &pair.rejected}}) {
        absl::Status s = ReadIds(obj, field, vocab_size, where, dst);
        if (!s.ok()) return s;
      }
      if (pair.chosen == pair.rejected) ++ds.identical_responses;
      bool was_truncated = false;
      if (!TruncatePair(truncation, &pair, &was_truncated)) {
        ++ds.dropped_too_long;
        continue;
      }
      if (was_truncated) ++ds.truncated;
      ds.pairs.push_back(std::move(pair));
    }
    if (in.bad()) {
      return absl::DataLossError(absl::StrCat(file, ": read error"));
    }
  }
  if (ds.pairs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no usable preference pairs in the data files (", ds.dropped_too_long,
        " dropped because the prompt leaves no room within max_length)"));
  }
  return ds;
}

}  // namespace prefopt::data
