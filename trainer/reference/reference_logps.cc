#include "trainer/reference/reference_logps.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "trainer/data/pair_batch.h"
#include "trainer/io/atomic_file.h"
#include "trainer/objectives/output_layer.h"
#include "trainer/util/fingerprint.h"

namespace prefopt::reference {
namespace {

constexpr char kMagic[8] = {'P', 'F', 'R', 'E', 'F', 'L', 'P', '1'};

// File layout: magic[8], key u64, count u64, count × (chosen, rejected) f64,
// payload fingerprint u64.
std::string Serialize(uint64_t key,
                      const std::vector<objectives::PairReference>& values) {
  std::string out(kMagic, sizeof(kMagic));
  auto put = [&out](const void* p, size_t n) {
    out.append(static_cast<const char*>(p), n);
  };
  const uint64_t count = values.size();
  put(&key, 8);
  put(&count, 8);
  for (const auto& v : values) {
    put(&v.chosen, 8);
    put(&v.rejected, 8);
  }
  util::Fingerprinter fp;
  fp.Update(out);
  const uint64_t check = fp.Value();
  put(&check, 8);
  return out;
}

// Returns the values, or an empty optional-like status message saying why the
// file cannot be used.
absl::StatusOr<std::vector<objectives::PairReference>> Deserialize(
    const std::string& bytes, uint64_t key, size_t expected_count) {
  const size_t header = sizeof(kMagic) + 16;
  if (bytes.size() < header + 8 ||
      std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError("not a reference cache file, or truncated");
  }
  uint64_t file_key, count;
  std::memcpy(&file_key, bytes.data() + 8, 8);
  std::memcpy(&count, bytes.data() + 16, 8);
  if (file_key != key) {
    return absl::FailedPreconditionError(
        "its fingerprint differs (other weights or data)");
  }
  if (count != expected_count || bytes.size() != header + count * 16 + 8) {
    return absl::DataLossError("its size does not match its pair count");
  }
  util::Fingerprinter fp;
  fp.Update(bytes.data(), bytes.size() - 8);
  uint64_t check;
  std::memcpy(&check, bytes.data() + bytes.size() - 8, 8);
  if (check != fp.Value()) {
    return absl::DataLossError("its checksum does not match (corrupted)");
  }
  std::vector<objectives::PairReference> values(count);
  const char* p = bytes.data() + header;
  for (auto& v : values) {
    std::memcpy(&v.chosen, p, 8);
    std::memcpy(&v.rejected, p + 8, 8);
    p += 16;
  }
  return values;
}

}  // namespace

uint64_t ReferenceFingerprint(const model::Decoder& reference,
                              const std::vector<data::PreferencePair>& pairs) {
  util::Fingerprinter fp;
  fp.Update("prefopt reference log-probs v1");
  const io::ModelSpec& spec = reference.spec();
  for (int64_t v : {static_cast<int64_t>(spec.arch), spec.vocab_size,
                    spec.hidden, spec.n_layer, spec.n_head, spec.n_kv_head,
                    spec.head_dim, spec.intermediate}) {
    fp.UpdateValue(v);
  }
  fp.UpdateValue(spec.norm_eps);
  std::vector<float> host(reference.layout().total());
  reference.backend()->CopyToHost(host.data(), reference.params(), host.size());
  fp.Update(host.data(), host.size() * sizeof(float));
  for (const data::PreferencePair& p : pairs) {
    for (const auto* ids : {&p.prompt, &p.chosen, &p.rejected}) {
      const uint64_t n = ids->size();
      fp.UpdateValue(n);
      fp.Update(ids->data(), n * sizeof(int32_t));
    }
  }
  return fp.Value();
}

absl::StatusOr<ReferenceCacheResult> ComputePairReferences(
    model::Decoder& reference, const std::vector<data::PreferencePair>& pairs,
    int micro_batch_pairs, int output_chunk, const std::string& cache_dir,
    const ProgressFn& progress) {
  ReferenceCacheResult result;
  const uint64_t key = ReferenceFingerprint(reference, pairs);
  result.cache_path = absl::StrCat(cache_dir, "/reference_logps_",
                                   util::FingerprintHex(key), ".bin");
  if (std::ifstream in{result.cache_path, std::ios::binary}) {
    std::stringstream ss;
    ss << in.rdbuf();
    auto values = Deserialize(ss.str(), key, pairs.size());
    if (values.ok()) {
      result.values = *std::move(values);
      result.loaded_from_cache = true;
      return result;
    }
    result.rebuilt_because = std::string(values.status().message());
  }

  const int max_rows = reference.capacity().max_rows;
  objectives::ChunkedOutputLayer output(reference.backend(), max_rows,
                                        reference.hidden_size(),
                                        reference.vocab_size(), output_chunk);
  std::vector<int> order(pairs.size());
  std::iota(order.begin(), order.end(), 0);
  data::PairBatch batch;
  result.values.resize(pairs.size());
  const int64_t total = static_cast<int64_t>(pairs.size());
  for (int64_t begin = 0; begin < total; begin += micro_batch_pairs) {
    const int n =
        static_cast<int>(std::min<int64_t>(micro_batch_pairs, total - begin));
    data::BuildPairBatch(pairs, order.data() + begin, n, &batch);
    const float* hidden = reference.Forward(batch.packed);
    const std::vector<objectives::SequenceScores> scores =
        output.Forward(hidden, reference.output_embedding(),
                       batch.packed.tokens.data(), batch.segments);
    for (int i = 0; i < n; ++i) {
      result.values[begin + i] = {scores[2 * i].logp, scores[2 * i + 1].logp};
    }
    if (progress) progress(begin + n, total);
  }

  std::error_code ec;
  std::filesystem::create_directories(cache_dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat(
        cache_dir,
        ": cannot create the reference cache directory: ", ec.message()));
  }
  absl::Status s =
      io::WriteFileAtomically(result.cache_path, Serialize(key, result.values));
  if (!s.ok()) return s;
  return result;
}

}  // namespace prefopt::reference
