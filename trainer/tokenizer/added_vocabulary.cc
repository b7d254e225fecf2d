#include "trainer/tokenizer/added_vocabulary.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "trainer/tokenizer/utf8.h"

namespace prefopt::tokenizer {
namespace {

// The Unicode White_Space property (Rust regex `\s`).
bool IsWhiteSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Start of the run of white space that ends text[..end].
size_t WhiteSpaceRunBefore(std::string_view text, size_t end) {
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 &&
           (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
      --start;
    }
    if (!IsWhiteSpace(DecodeUtf8(text, start))) break;
    end = start;
  }
  return end;
}

// End of the run of white space that starts text[begin..].
size_t WhiteSpaceRunAfter(std::string_view text, size_t begin) {
  while (begin < text.size() && IsWhiteSpace(DecodeUtf8(text, begin))) {
    begin += Utf8CharLength(text[begin]);
  }
  return begin;
}

bool SameOptions(const AddedToken& a, const AddedToken& b) {
  return a.content == b.content && a.single_word == b.single_word &&
         a.lstrip == b.lstrip && a.rstrip == b.rstrip &&
         a.normalized == b.normalized && a.special == b.special;
}

}  // namespace

absl::StatusOr<AddedVocabulary> AddedVocabulary::FromJson(
    const Json* json, std::string_view path, const BpeModel& model,
    const Normalizer* normalizer) {
  AddedVocabulary vocabulary;
  if (json == nullptr || json->is_null()) return vocabulary;
  if (!json->is_array()) return JsonError(path, "expected an array");

  std::vector<size_t> specials_in_order;
  std::vector<size_t> others_in_order;
  for (size_t i = 0; i < json->size(); ++i) {
    const Json& entry = (*json)[i];
    const std::string entry_path = IndexPath(path, i);
    AddedToken token;
    absl::StatusOr<std::string> content =
        GetString(entry, "content", entry_path);
    if (!content.ok()) return content.status();
    token.content = *std::move(content);
    // tokenizers requires an "id" but assigns ids itself (below).
    absl::StatusOr<const Json*> id_json =
        RequiredField(entry, "id", entry_path);
    if (!id_json.ok()) return id_json.status();
    absl::Status id_status =
        AsTokenId(**id_json, FieldPath(entry_path, "id")).status();
    if (!id_status.ok()) return id_status;
    absl::StatusOr<bool> special = GetBool(entry, "special", entry_path, false);
    if (!special.ok()) return special.status();
    token.special = *special;
    for (auto [field, target, fallback] :
         {std::make_tuple("single_word", &token.single_word, false),
          std::make_tuple("lstrip", &token.lstrip, false),
          std::make_tuple("rstrip", &token.rstrip, false),
          std::make_tuple("normalized", &token.normalized, !token.special)}) {
      absl::StatusOr<bool> value = GetBool(entry, field, entry_path, fallback);
      if (!value.ok()) return value.status();
      *target = *value;
    }
    if (token.content.empty()) continue;
    // A token listed again with the same options changes nothing. Content
    // keeps the id it first got, so the one token to compare is the one at
    // that id (comparing with every token would take time quadratic in the
    // length of the list).
    if (const std::optional<int32_t> id = vocabulary.IdOf(token.content)) {
      const AddedToken* existing = vocabulary.TokenWithId(*id);
      if (existing != nullptr && SameOptions(*existing, token)) continue;
    }

    // The listed id, for consistent files: an added token's id, else the
    // model's, else the next id after the model and the added tokens.
    if (std::optional<int32_t> id = vocabulary.IdOf(token.content)) {
      token.id = *id;
    } else if (std::optional<int32_t> model_id =
                   model.TokenToId(token.content)) {
      token.id = *model_id;
    } else {
      const auto vocab_entries = static_cast<int32_t>(model.vocab_entries());
      token.id =
          vocabulary.id_by_content_.empty() ||
                  (vocabulary.max_id_ < vocab_entries && vocab_entries != 0)
              ? vocab_entries
              : vocabulary.max_id_ + 1;
    }
    if (token.special) vocabulary.special_contents_.insert(token.content);
    vocabulary.id_by_content_[token.content] = token.id;
    vocabulary.max_id_ = std::max(vocabulary.max_id_, token.id);
    if (token.single_word && !vocabulary.word_char_.has_value()) {
      absl::StatusOr<Regex> word_char = Regex::Compile(
          "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]");
      if (!word_char.ok()) return word_char.status();
      vocabulary.word_char_ = *std::move(word_char);
    }
    const auto existing = vocabulary.index_by_id_.find(token.id);
    if (existing != vocabulary.index_by_id_.end()) {
      vocabulary.tokens_[existing->second] = std::move(token);
      continue;
    }
    const size_t index = vocabulary.tokens_.size();
    vocabulary.index_by_id_[token.id] = index;
    (token.special ? specials_in_order : others_in_order).push_back(index);
    vocabulary.tokens_.push_back(std::move(token));
  }

  // tokenizers matches special tokens first, then the others, each in the
  // order they were added.
  std::vector<size_t> order = std::move(specials_in_order);
  order.insert(order.end(), others_in_order.begin(), others_in_order.end());
  for (const size_t index : order) {
    const AddedToken& token = vocabulary.tokens_[index];
    if (!token.normalized) {
      vocabulary.raw_.Add(token.content, static_cast<int32_t>(index));
      continue;
    }
    std::string pattern = token.content;
    if (normalizer != nullptr) {
      absl::Status status = normalizer->Normalize(&pattern);
      if (!status.ok()) return status;
    }
    if (!pattern.empty()) {
      vocabulary.normalized_.Add(pattern, static_cast<int32_t>(index));
    }
  }
  return vocabulary;
}

std::optional<int32_t> AddedVocabulary::IdOf(std::string_view content) const {
  const auto it = id_by_content_.find(AbslView(content));
  if (it == id_by_content_.end()) return std::nullopt;
  return it->second;
}

const AddedToken* AddedVocabulary::TokenWithId(int32_t id) const {
  const auto it = index_by_id_.find(id);
  return it == index_by_id_.end() ? nullptr : &tokens_[it->second];
}

bool AddedVocabulary::IsWordChar(char32_t c) const {
  std::string utf8;
  AppendUtf8(c, &utf8);
  return word_char_->FullMatch(utf8);
}

void AddedVocabulary::Matcher::Add(std::string_view pattern,
                                   int32_t token_index) {
  int32_t node = 0;
  for (const char c : pattern) {
    const auto byte = static_cast<unsigned char>(c);
    auto& children = nodes_[node].children;
    const auto it =
        std::find_if(children.begin(), children.end(),
                     [byte](const auto& e) { return e.first == byte; });
    if (it != children.end()) {
      node = it->second;
      continue;
    }
    const auto child = static_cast<int32_t>(nodes_.size());
    children.emplace_back(byte, child);
    nodes_.emplace_back();
    node = child;
  }
  first_bytes_[static_cast<unsigned char>(pattern[0])] = true;
  if (nodes_[node].token_index < 0) nodes_[node].token_index = token_index;
}

int32_t AddedVocabulary::Matcher::LongestAt(std::string_view text, size_t pos,
                                            size_t* length) const {
  int32_t found = -1;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    const auto& children = nodes_[node].children;
    const auto it =
        std::find_if(children.begin(), children.end(),
                     [byte](const auto& e) { return e.first == byte; });
    if (it == children.end()) break;
    node = it->second;
    if (nodes_[node].token_index >= 0) {
      found = nodes_[node].token_index;
      *length = i + 1 - pos;
    }
  }
  return found;
}

void AddedVocabulary::Matcher::Split(const AddedVocabulary& vocabulary,
                                     std::string_view text,
                                     std::vector<TextSegment>* out) const {
  size_t text_start = 0;  // where the current run of plain text starts
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_bytes_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t length = 0;
    const int32_t index = LongestAt(text, pos, &length);
    if (index < 0) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + length;
    // The next match is searched after this one even when the options below
    // discard it or move its ends.
    pos = stop;
    const AddedToken& token = vocabulary.tokens_[index];
    if (token.single_word) {
      const bool word_before =
          start > 0 &&
          vocabulary.IsWordChar(DecodeLastUtf8(text.substr(0, start)));
      const bool word_after =
          stop < text.size() && vocabulary.IsWordChar(DecodeUtf8(text, stop));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      start = std::max(WhiteSpaceRunBefore(text, start), text_start);
    }
    if (token.rstrip) stop = WhiteSpaceRunAfter(text, stop);
    if (text_start < start) out->push_back({text_start, start, -1});
    out->push_back({start, stop, token.id});
    text_start = stop;
  }
  if (text_start < text.size()) out->push_back({text_start, text.size(), -1});
}

}  // namespace prefopt::tokenizer
