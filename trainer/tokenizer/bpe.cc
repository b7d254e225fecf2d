#include "trainer/tokenizer/bpe.h"

#include <queue>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/tokenizer/utf8.h"

namespace prefopt::tokenizer {
namespace {

// Words longer than this are not cached.
constexpr size_t kMaxCachedWordBytes = 256;

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
         static_cast<uint32_t>(right);
}

// Reads one entry of "merges": "left right" or ["left", "right"].
absl::StatusOr<std::pair<std::string, std::string>> ParseMergeEntry(
    const Json& entry, std::string_view path) {
  if (entry.is_string()) {
    const std::string text = entry.get<std::string>();
    const size_t space = text.find(' ');
    if (space == std::string::npos ||
        text.find(' ', space + 1) != std::string::npos) {
      return JsonError(path, absl::StrCat("merge \"", text,
                                          "\" is not two tokens separated by "
                                          "one space"));
    }
    return std::make_pair(text.substr(0, space), text.substr(space + 1));
  }
  if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
      entry[1].is_string()) {
    return std::make_pair(entry[0].get<std::string>(),
                          entry[1].get<std::string>());
  }
  return JsonError(
      path, "expected a merge as \"left right\" or [\"left\", \"right\"]");
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(
    const Json& json, std::string_view path, size_t id_limit) {
  std::unique_ptr<BpeModel> model(new BpeModel());

  if (const auto it = json.find("dropout");
      it != json.end() && !it->is_null()) {
    if (!it->is_number()) {
      return JsonError(FieldPath(path, "dropout"), "expected a number or null");
    }
    if (it->get<double>() > 0.0) {
      return JsonError(FieldPath(path, "dropout"),
                       absl::StrCat("BPE dropout ", it->dump(),
                                    " is not supported (tokenization would "
                                    "not be deterministic); set it to null"));
    }
  }
  for (const char* affix :
       {"continuing_subword_prefix", "end_of_word_suffix"}) {
    absl::StatusOr<std::optional<std::string>> value =
        GetOptionalString(json, affix, path);
    if (!value.ok()) return value.status();
    if (value->has_value() && !(*value)->empty()) {
      return JsonError(FieldPath(path, affix),
                       absl::StrCat("a non-empty ", affix, " (\"", **value,
                                    "\") is not supported"));
    }
  }
  for (auto [field, target] :
       {std::make_pair("fuse_unk", &model->fuse_unk_),
        std::make_pair("byte_fallback", &model->byte_fallback_),
        std::make_pair("ignore_merges", &model->ignore_merges_)}) {
    absl::StatusOr<bool> value = GetBool(json, field, path, false);
    if (!value.ok()) return value.status();
    *target = *value;
  }

  absl::StatusOr<const Json*> vocab = RequiredField(json, "vocab", path);
  if (!vocab.ok()) return vocab.status();
  const std::string vocab_path = FieldPath(path, "vocab");
  if (!(*vocab)->is_object()) {
    return JsonError(vocab_path, "expected an object mapping tokens to ids");
  }
  model->vocab_.reserve((*vocab)->size());
  int32_t max_id = -1;
  for (const auto& [token, id_json] : (*vocab)->items()) {
    absl::StatusOr<int32_t> id =
        AsTokenId(id_json, FieldPath(vocab_path, token));
    if (!id.ok()) return id.status();
    if (static_cast<size_t>(*id) >= id_limit) {
      return JsonError(
          FieldPath(vocab_path, token),
          absl::StrCat("token id ", *id, " is not below ", id_limit,
                       ", the file's size in bytes, which bounds the ids of "
                       "any vocabulary it can hold (ids count up from 0)"));
    }
    model->vocab_.emplace(token, *id);
    max_id = std::max(max_id, *id);
  }
  model->id_to_token_.resize(max_id + 1);
  model->has_id_.assign(max_id + 1, false);
  for (const auto& [token, id] : model->vocab_) {
    if (model->has_id_[id]) continue;
    model->id_to_token_[id] = token;
    model->has_id_[id] = true;
  }

  absl::StatusOr<std::optional<std::string>> unk =
      GetOptionalString(json, "unk_token", path);
  if (!unk.ok()) return unk.status();
  if (unk->has_value()) {
    const std::optional<int32_t> unk_id = model->TokenToId(**unk);
    if (!unk_id.has_value()) {
      return JsonError(
          FieldPath(path, "unk_token"),
          absl::StrCat("unk_token \"", **unk, "\" is not in the vocabulary"));
    }
    model->unk_id_ = unk_id;
  }
  for (int b = 0; b < 256; ++b) {
    model->byte_ids_[b] =
        model->TokenToId(absl::StrFormat("<0x%02X>", b)).value_or(-1);
  }

  absl::StatusOr<const Json*> merges = RequiredField(json, "merges", path);
  if (!merges.ok()) return merges.status();
  const std::string merges_path = FieldPath(path, "merges");
  if (!(*merges)->is_array())
    return JsonError(merges_path, "expected an array");
  model->merges_.reserve((*merges)->size());
  for (size_t rank = 0; rank < (*merges)->size(); ++rank) {
    const std::string entry_path = IndexPath(merges_path, rank);
    absl::StatusOr<std::pair<std::string, std::string>> pair =
        ParseMergeEntry((**merges)[rank], entry_path);
    if (!pair.ok()) return pair.status();
    const std::string merged = pair->first + pair->second;
    int32_t ids[3];
    const std::string* parts[3] = {&pair->first, &pair->second, &merged};
    for (int i = 0; i < 3; ++i) {
      const std::optional<int32_t> id = model->TokenToId(*parts[i]);
      if (!id.has_value()) {
        return JsonError(entry_path,
                         absl::StrCat("merge token \"", *parts[i],
                                      "\" is not in the vocabulary"));
      }
      ids[i] = *id;
    }
    // As in tokenizers, a repeated pair keeps its last rank.
    model->merges_.insert_or_assign(PairKey(ids[0], ids[1]),
                                    Merge{static_cast<int32_t>(rank), ids[2]});
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const auto it = vocab_.find(AbslView(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id > max_id() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

const BpeModel::Merge* BpeModel::FindMerge(int32_t left, int32_t right) const {
  const auto it = merges_.find(PairKey(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::Tokenize(std::string_view word,
                        std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto it = vocab_.find(AbslView(word)); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWordBytes;
  if (cacheable && cache_->Lookup(word, ids)) return;
  const size_t first = ids->size();
  MergeWord(word, ids);
  if (cacheable) cache_->Insert(word, ids->data() + first, ids->size() - first);
}

void BpeModel::MergeWord(std::string_view word,
                         std::vector<int32_t>* ids) const {
  // A doubly linked list of symbols; merged-away symbols get id -1.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&symbols](int32_t id) {
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, index + 1});
  };

  // An unknown character is held back so that a run of them can become one
  // unknown token (fuse_unk). Byte-fallback tokens do not flush it, as in
  // tokenizers.
  bool unk_pending = false;
  for (size_t pos = 0; pos < word.size();) {
    const size_t length = Utf8CharLength(word[pos]);
    const std::string_view character = word.substr(pos, length);
    pos += length;
    if (const auto it = vocab_.find(AbslView(character)); it != vocab_.end()) {
      if (unk_pending) add(*unk_id_);
      unk_pending = false;
      add(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (const char c : character) {
        all_bytes = all_bytes && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      }
      if (all_bytes) {
        for (const char c : character) {
          add(byte_ids_[static_cast<unsigned char>(c)]);
        }
        continue;
      }
    }
    if (unk_id_.has_value()) {
      if (unk_pending && !fuse_unk_) add(*unk_id_);
      unk_pending = true;
    }
  }
  if (unk_pending) add(*unk_id_);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // Merge the lowest-ranked pair first, leftmost among equal ranks. A queued
  // candidate is stale when its pair has changed; like tokenizers, it is
  // only skipped if the pair there no longer merges into the same token.
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(
      later);
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const Merge* current = FindMerge(left.id, right.id);
    if (current == nullptr || current->new_id != top.new_id) continue;
    left.id = top.new_id;
    left.next = right.next;
    right.id = -1;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const Merge* m = FindMerge(symbols[left.prev].id, left.id)) {
        queue.push({m->rank, left.prev, m->new_id});
      }
    }
    if (left.next >= 0) {
      if (const Merge* m = FindMerge(left.id, symbols[left.next].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.id >= 0) ids->push_back(s.id);
  }
}

BpeModel::WordCache::Shard& BpeModel::WordCache::ShardFor(
    std::string_view word) const {
  const size_t hash = absl::Hash<absl::string_view>{}(AbslView(word));
  return shards_[(hash >> 32) % kShards];
}

bool BpeModel::WordCache::Lookup(std::string_view word,
                                 std::vector<int32_t>* ids) const {
  Shard& shard = ShardFor(word);
  std::lock_guard<std::mutex> lock(shard.mutex);
  const auto it = shard.words.find(AbslView(word));
  if (it == shard.words.end()) return false;
  ids->insert(ids->end(), it->second.begin(), it->second.end());
  return true;
}

void BpeModel::WordCache::Insert(std::string_view word, const int32_t* ids,
                                 size_t count) {
  Shard& shard = ShardFor(word);
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (shard.words.size() >= kWordsPerShard) return;
  shard.words.try_emplace(AbslView(word), ids, ids + count);
}

}  // namespace prefopt::tokenizer
