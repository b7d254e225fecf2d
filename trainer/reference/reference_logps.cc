#include "trainer/reference/reference_logps.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "trainer/data/batch.h"
#include "trainer/io/atomic_file.h"
#include "trainer/objectives/output_layer.h"
#include "trainer/util/fingerprint.h"
#include "trainer/util/input_file.h"

namespace prefopt::reference {
namespace {

constexpr char kMagic[8] = {'P', 'F', 'R', 'E', 'F', 'L', 'P', '2'};

void Put(std::string* out, const void* p, size_t n) {
  out->append(static_cast<const char*>(p), n);
}

template <typename T>
void PutVector(std::string* out, const std::vector<T>& v) {
  const uint64_t n = v.size();
  Put(out, &n, 8);
  Put(out, v.data(), n * sizeof(T));
}

// Reads a length-prefixed vector at *pos; false if the bytes run out.
template <typename T>
bool GetVector(const std::string& in, size_t* pos, std::vector<T>* v) {
  uint64_t n;
  if (in.size() - *pos < 8) return false;
  std::memcpy(&n, in.data() + *pos, 8);
  *pos += 8;
  if (n > (in.size() - *pos) / sizeof(T)) return false;
  v->resize(n);
  if (n > 0) std::memcpy(v->data(), in.data() + *pos, n * sizeof(T));
  *pos += n * sizeof(T);
  return true;
}

// File layout: magic[8], key u64, then the four vectors of ReferenceValues
// (each u64 length + data), then a fingerprint of everything before it.
std::string Serialize(uint64_t key, const objectives::ReferenceValues& v) {
  std::string out(kMagic, sizeof(kMagic));
  Put(&out, &key, 8);
  PutVector(&out, v.first_response);
  PutVector(&out, v.sequence_logp);
  PutVector(&out, v.token_offset);
  PutVector(&out, v.token_logp);
  util::Fingerprinter fp;
  fp.Update(out);
  const uint64_t check = fp.Value();
  Put(&out, &check, 8);
  return out;
}

absl::StatusOr<objectives::ReferenceValues> Deserialize(
    const std::string& bytes, uint64_t key, size_t num_examples) {
  if (bytes.size() < sizeof(kMagic) + 16 ||
      std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError("not a reference cache file, or truncated");
  }
  uint64_t file_key;
  std::memcpy(&file_key, bytes.data() + 8, 8);
  if (file_key != key) {
    return absl::FailedPreconditionError(
        "its fingerprint differs (other weights, data or options)");
  }
  util::Fingerprinter fp;
  fp.Update(bytes.data(), bytes.size() - 8);
  uint64_t check;
  std::memcpy(&check, bytes.data() + bytes.size() - 8, 8);
  if (check != fp.Value()) {
    return absl::DataLossError("its checksum does not match (corrupted)");
  }
  objectives::ReferenceValues v;
  size_t pos = 16;
  const std::string body = bytes.substr(0, bytes.size() - 8);
  if (!GetVector(body, &pos, &v.first_response) ||
      !GetVector(body, &pos, &v.sequence_logp) ||
      !GetVector(body, &pos, &v.token_offset) ||
      !GetVector(body, &pos, &v.token_logp) || pos != body.size() ||
      v.first_response.size() != num_examples) {
    return absl::DataLossError("its layout does not match its example count");
  }
  return v;
}

// Where each example's responses and (with token_logps) their tokens go in
// ReferenceValues, and how many of each there are.
struct Layout {
  std::vector<int64_t> first_response;
  std::vector<int64_t> token_offset;
  size_t responses = 0;
  size_t tokens = 0;
};

Layout LayoutOf(const std::vector<data::Example>& examples, bool token_logps) {
  Layout l;
  for (const data::Example& ex : examples) {
    l.first_response.push_back(static_cast<int64_t>(l.responses));
    for (int r = 0; r < ex.num_responses(); ++r) {
      ++l.responses;
      if (token_logps) {
        l.token_offset.push_back(static_cast<int64_t>(l.tokens));
        l.tokens += ex.response(r).size();
      }
    }
  }
  return l;
}

// The entries of `examples` with every log-prob 0.
objectives::ReferenceValues EmptyValues(
    const std::vector<data::Example>& examples, bool token_logps) {
  Layout l = LayoutOf(examples, token_logps);
  objectives::ReferenceValues v;
  v.first_response = std::move(l.first_response);
  v.token_offset = std::move(l.token_offset);
  v.sequence_logp.assign(l.responses, 0.0);
  v.token_logp.assign(l.tokens, 0.0f);
  return v;
}

// A cache whose checksum matches can still be someone else's file: its
// layout must be the one the examples give, and its log-probs finite, before
// anything indexes it.
absl::Status CheckLoadedValues(const objectives::ReferenceValues& loaded,
                               const std::vector<data::Example>& examples,
                               bool token_logps) {
  const Layout want = LayoutOf(examples, token_logps);
  if (loaded.first_response != want.first_response ||
      loaded.sequence_logp.size() != want.responses ||
      loaded.token_offset != want.token_offset ||
      loaded.token_logp.size() != want.tokens) {
    return absl::DataLossError(
        "its entries do not match the examples' responses and tokens");
  }
  // A log-probability is never above 0; the margin leaves room for another
  // backend's rounding of a probability of 1.
  constexpr double kMaxLogp = 1e-4;
  for (size_t i = 0; i < loaded.sequence_logp.size(); ++i) {
    const double v = loaded.sequence_logp[i];
    if (!std::isfinite(v) || v > kMaxLogp) {
      return absl::DataLossError(
          absl::StrCat("response ", i, " has log-prob ", v,
                       ", which is not a finite number <= 0"));
    }
  }
  for (size_t i = 0; i < loaded.token_logp.size(); ++i) {
    const double v = loaded.token_logp[i];
    if (!std::isfinite(v) || v > kMaxLogp) {
      return absl::DataLossError(
          absl::StrCat("token entry ", i, " has log-prob ", v,
                       ", which is not a finite number <= 0"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<objectives::ReferenceValues> ParseReferenceCache(
    const std::string& bytes, uint64_t key,
    const std::vector<data::Example>& examples, bool token_logps) {
  absl::StatusOr<objectives::ReferenceValues> values =
      Deserialize(bytes, key, examples.size());
  if (!values.ok()) return values;
  if (absl::Status checked = CheckLoadedValues(*values, examples, token_logps);
      !checked.ok()) {
    return checked;
  }
  return values;
}

uint64_t ReferenceFingerprint(const model::Decoder& reference,
                              const std::vector<data::Example>& examples,
                              const ReferenceOptions& options) {
  util::Fingerprinter fp;
  fp.Update("prefopt reference log-probs v2");
  const io::ModelSpec& spec = reference.spec();
  for (int64_t v : {static_cast<int64_t>(spec.arch), spec.vocab_size,
                    spec.hidden, spec.n_layer, spec.n_head, spec.n_kv_head,
                    spec.head_dim, spec.intermediate}) {
    fp.UpdateValue(v);
  }
  fp.UpdateValue(spec.norm_eps);
  fp.UpdateValue(options.token_logps);
  fp.UpdateValue(options.include_context);
  // The base weights, and a LoRA reference's starting adapter when it has
  // one (docs/lora.md).
  std::vector<float> host(reference.base_layout().total());
  reference.CopyBaseToHost(host.data());
  fp.Update(host.data(), host.size() * sizeof(float));
  if (reference.has_lora() && reference.reference_adapters() != nullptr) {
    fp.UpdateValue(reference.lora().r);
    fp.UpdateValue(reference.lora().scaling);
    for (const lora::LinearModule& module : reference.lora().modules) {
      fp.Update(module.path.data(), module.path.size());
    }
    host.resize(reference.layout().total());
    reference.backend()->CopyToHost(host.data(), reference.reference_adapters(),
                                    host.size());
    fp.Update(host.data(), host.size() * sizeof(float));
  }
  for (const data::Example& ex : examples) {
    for (const auto* ids :
         {&ex.context, &ex.prompt, &ex.chosen, &ex.rejected}) {
      const uint64_t n = ids->size();
      fp.UpdateValue(n);
      fp.Update(ids->data(), n * sizeof(int32_t));
    }
  }
  return fp.Value();
}

absl::StatusOr<ReferenceCacheResult> ComputeReferenceValues(
    model::Decoder& reference, const std::vector<data::Example>& examples,
    const ReferenceOptions& options, const std::string& cache_dir,
    const ProgressFn& progress) {
  ReferenceCacheResult result;
  const uint64_t key = ReferenceFingerprint(reference, examples, options);
  result.cache_path = absl::StrCat(cache_dir, "/reference_logps_",
                                   util::FingerprintHex(key), ".bin");
  const int rank = options.comm ? options.comm->rank() : 0;
  const int world = options.comm ? options.comm->world_size() : 1;
  // Anything but a regular file there is replaced by the new cache.
  if (absl::Status special = util::CheckInputFile(result.cache_path);
      !special.ok()) {
    result.rebuilt_because = std::string(special.message());
  } else if (std::ifstream in{result.cache_path, std::ios::binary}) {
    std::stringstream ss;
    ss << in.rdbuf();
    auto values =
        ParseReferenceCache(ss.str(), key, examples, options.token_logps);
    if (values.ok()) {
      result.values = *std::move(values);
      result.loaded_from_cache = true;
    } else {
      result.rebuilt_because = std::string(values.status().message());
    }
  }
  if (world > 1) {
    // Every rank must take the same path: use the cache only if all could.
    double missing = result.loaded_from_cache ? 0.0 : 1.0;
    absl::Status s = options.comm->AllReduceSum(&missing, 1);
    if (!s.ok()) return s;
    if (missing > 0) result.loaded_from_cache = false;
  }
  if (result.loaded_from_cache) return result;

  result.values = EmptyValues(examples, options.token_logps);
  objectives::ReferenceValues& v = result.values;

  objectives::ChunkedOutputLayer output(
      reference.backend(), reference.capacity().max_rows,
      reference.hidden_size(), reference.vocab_size(), options.output_chunk);
  std::vector<int> order(examples.size());
  std::iota(order.begin(), order.end(), 0);
  data::Batch batch;
  // Each rank scores a contiguous slice; the others' entries stay 0 and the
  // all-reduce below fills them in (a sum with zeros is exact).
  const int64_t total = static_cast<int64_t>(examples.size());
  const int64_t slice_begin = total * rank / world;
  const int64_t slice_end = total * (rank + 1) / world;
  for (int64_t begin = slice_begin; begin < slice_end;
       begin += options.micro_batch_examples) {
    const int n = static_cast<int>(
        std::min<int64_t>(options.micro_batch_examples, slice_end - begin));
    data::BuildBatch(examples, order.data() + begin, n, options.include_context,
                     &batch);
    const float* hidden = reference.Forward(batch.packed);
    const std::vector<objectives::SequenceScores> scores =
        output.Forward(hidden, reference.output_embedding(),
                       batch.packed.tokens.data(), batch.segments);
    size_t seq = 0, row = 0;
    for (int i = 0; i < n; ++i) {
      const int64_t first = v.first_response[begin + i];
      for (int r = 0; r < examples[begin + i].num_responses(); ++r, ++seq) {
        v.sequence_logp[first + r] = scores[seq].logp;
        const int k = scores[seq].tokens;
        if (options.token_logps) {
          std::copy(output.row_logp().begin() + row,
                    output.row_logp().begin() + row + k,
                    v.token_logp.begin() + v.token_offset[first + r]);
        }
        row += k;
      }
    }
    if (progress) progress(begin + n - slice_begin, slice_end - slice_begin);
  }
  if (world > 1) {
    absl::Status s = options.comm->AllReduceSum(v.sequence_logp.data(),
                                                v.sequence_logp.size());
    if (s.ok() && !v.token_logp.empty()) {
      s = options.comm->AllReduceSum(v.token_logp.data(), v.token_logp.size());
    }
    if (!s.ok()) return s;
  }
  if (rank != 0) return result;

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
