// The BPE model of tokenizer.json: vocabulary, ranked merges, unknown-token
// and byte-fallback handling, and ignore_merges, with the merge order of the
// Hugging Face `tokenizers` library. Results for words shorter than 256 bytes
// are cached (at most 64K words), so repeated words cost one hash lookup.
// Thread-safe.
#ifndef PREFOPT_TRAINER_TOKENIZER_BPE_H_
#define PREFOPT_TRAINER_TOKENIZER_BPE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "trainer/tokenizer/json_util.h"

namespace prefopt::tokenizer {

class BpeModel {
 public:
  // Reads the "model" object at `path`. Rejects dropout > 0 (not
  // deterministic), a non-empty continuing_subword_prefix or
  // end_of_word_suffix, merges naming tokens missing from the vocabulary, an
  // unk_token missing from the vocabulary, and ids not below `id_limit` (the
  // model keeps a table indexed by id; callers pass the file's size, which
  // bounds the ids of any vocabulary the file can hold).
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(
      const Json& json, std::string_view path, size_t id_limit);

  // Appends the ids of the word `word` (valid UTF-8). Characters that are
  // not in the vocabulary become byte-fallback tokens, the unknown token, or
  // nothing, as the model's options say.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when no token has this id.
  const std::string* IdToToken(int32_t id) const;
  // The number of vocabulary entries.
  size_t vocab_entries() const { return vocab_.size(); }
  // The largest id in the vocabulary, or -1 when it is empty.
  int32_t max_id() const {
    return static_cast<int32_t>(id_to_token_.size()) - 1;
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };

  class WordCache {
   public:
    bool Lookup(std::string_view word, std::vector<int32_t>* ids) const;
    void Insert(std::string_view word, const int32_t* ids, size_t count);

   private:
    static constexpr int kShards = 16;
    static constexpr size_t kWordsPerShard = 4096;
    struct Shard {
      mutable std::mutex mutex;
      absl::flat_hash_map<std::string, std::vector<int32_t>> words;
    };
    Shard& ShardFor(std::string_view word) const;
    mutable std::array<Shard, kShards> shards_;
  };

  BpeModel() = default;

  const Merge* FindMerge(int32_t left, int32_t right) const;
  // Splits `word` into per-character symbols and merges them.
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_;  // <0xXX> tokens, -1 when absent
  std::unique_ptr<WordCache> cache_ = std::make_unique<WordCache>();
};

}  // namespace prefopt::tokenizer

#endif  // PREFOPT_TRAINER_TOKENIZER_BPE_H_
