#include "trainer/io/weight_store.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "trainer/io/json_file.h"
#include "trainer/io/string_view_compat.h"

namespace prefopt::io {
namespace {

using nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

std::string JoinPath(const std::string& dir, std::string_view name) {
  if (dir.empty()) return std::string(name);
  if (dir.back() == '/') return absl::StrCat(dir, AbslView(name));
  return absl::StrCat(dir, "/", AbslView(name));
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// True for names transformers gives shards: model-DDDDD-of-DDDDD.safetensors.
bool IsShardName(std::string_view name) {
  constexpr std::string_view kPrefix = "model-";
  constexpr std::string_view kOf = "-of-";
  constexpr std::string_view kSuffix = ".safetensors";
  const auto digits = [](std::string_view s) {
    if (s.size() < 5) return false;
    for (const char c : s) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    }
    return true;
  };
  if (name.substr(0, kPrefix.size()) != kPrefix) return false;
  if (name.size() < kPrefix.size() + kSuffix.size()) return false;
  if (name.substr(name.size() - kSuffix.size()) != kSuffix) return false;
  const std::string_view middle = name.substr(
      kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  const size_t of = middle.find(kOf);
  return of != std::string_view::npos && digits(middle.substr(0, of)) &&
         digits(middle.substr(of + kOf.size()));
}

// A shard path from the index must stay inside the model folder.
bool IsSafeRelativePath(std::string_view name) {
  if (name.empty() || name.front() == '/') return false;
  size_t start = 0;
  while (start <= name.size()) {
    size_t slash = name.find('/', start);
    if (slash == std::string_view::npos) slash = name.size();
    if (name.substr(start, slash - start) == "..") return false;
    start = slash + 1;
  }
  return true;
}

absl::Status RemoveIfPresent(const std::string& path) {
  if (unlink(path.c_str()) == 0 || errno == ENOENT) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("cannot remove stale file ", path,
                                          ": ", std::strerror(errno)));
}

// Removes weight files in `dir` that the layout just written does not use.
absl::Status RemoveStaleWeightFiles(const std::string& dir,
                                    const std::set<std::string>& keep) {
  for (const char* name : {kSingleFile, kIndexFile}) {
    if (keep.count(name) == 0) {
      if (absl::Status s = RemoveIfPresent(JoinPath(dir, name)); !s.ok()) {
        return s;
      }
    }
  }
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot list ", dir, ": ", std::strerror(errno)));
  }
  std::vector<std::string> stale;
  while (const dirent* entry = readdir(d)) {
    const std::string name = entry->d_name;
    if (IsShardName(name) && keep.count(name) == 0) stale.push_back(name);
  }
  closedir(d);
  for (const std::string& name : stale) {
    if (absl::Status s = RemoveIfPresent(JoinPath(dir, name)); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status MakeDirectory(const std::string& dir) {
  if (mkdir(dir.c_str(), 0755) == 0) return absl::OkStatus();
  const int err = errno;
  struct stat st;
  if (err == EEXIST && stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return absl::OkStatus();
  }
  return absl::InternalError(
      absl::StrCat("cannot create directory ", dir, ": ", std::strerror(err)));
}

}  // namespace

absl::StatusOr<WeightStore> WeightStore::Open(const std::string& model_dir) {
  WeightStore store;
  store.model_dir_ = model_dir;
  const std::string single = JoinPath(model_dir, kSingleFile);
  if (IsRegularFile(single)) {
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(single);
    if (!file.ok()) return file.status();
    for (const TensorInfo& t : file->tensors()) {
      store.file_index_.emplace(t.name, 0);
    }
    store.files_.push_back(*std::move(file));
    return store;
  }

  const std::string index_path = JoinPath(model_dir, kIndexFile);
  if (!IsRegularFile(index_path)) {
    std::string hint;
    for (const char* bin :
         {"pytorch_model.bin", "pytorch_model.bin.index.json"}) {
      if (hint.empty() && IsRegularFile(JoinPath(model_dir, bin))) {
        hint = absl::StrCat("; the folder holds ", bin,
                            " (PyTorch pickle weights), which prefopt does "
                            "not read: re-save the model with "
                            "save_pretrained(..., safe_serialization=True)");
      }
    }
    return absl::NotFoundError(absl::StrCat("no weights in ", model_dir,
                                            ": looked for ", single, " and ",
                                            index_path, hint));
  }
  absl::StatusOr<json> index = ReadJsonFile(index_path);
  if (!index.ok()) return index.status();
  const auto map_it =
      index->is_object() ? index->find("weight_map") : index->end();
  if (!index->is_object() || map_it == index->end() || !map_it->is_object() ||
      map_it->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path,
                     ": expected an object with a non-empty \"weight_map\" "
                     "object mapping tensor names to shard files"));
  }

  std::map<std::string, size_t> shard_index;
  for (const auto& [name, shard] : map_it->items()) {
    if (!shard.is_string() ||
        !IsSafeRelativePath(shard.get_ref<const std::string&>())) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map entry for tensor '", name,
                       "' must be a file name inside the model folder, found ",
                       DescribeJson(shard)));
    }
    const std::string& shard_name = shard.get_ref<const std::string&>();
    auto it = shard_index.find(shard_name);
    if (it == shard_index.end()) {
      absl::StatusOr<SafetensorsFile> file =
          SafetensorsFile::Open(JoinPath(model_dir, shard_name));
      if (!file.ok()) {
        return absl::Status(
            file.status().code(),
            absl::StrCat(index_path, " maps tensor '", name, "' to shard '",
                         shard_name,
                         "', which cannot be used: ", file.status().message()));
      }
      it = shard_index.emplace(shard_name, store.files_.size()).first;
      store.files_.push_back(*std::move(file));
    }
    const SafetensorsFile& file = store.files_[it->second];
    if (file.Find(name) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, " maps tensor '", name, "' to shard ",
                       file.path(), ", which has no tensor of that name"));
    }
    store.file_index_.emplace(name, it->second);
  }
  return store;
}

bool WeightStore::Has(std::string_view name) const {
  return file_index_.find(name) != file_index_.end();
}

const SafetensorsFile* WeightStore::FileOf(std::string_view name) const {
  const auto it = file_index_.find(name);
  return it == file_index_.end() ? nullptr : &files_[it->second];
}

const TensorInfo* WeightStore::Find(std::string_view name) const {
  const SafetensorsFile* file = FileOf(name);
  return file == nullptr ? nullptr : file->Find(name);
}

absl::Status WeightStore::ReadFloat(std::string_view name,
                                    absl::Span<const int64_t> expected_shape,
                                    float* out) const {
  const SafetensorsFile* file = FileOf(name);
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        "no tensor named '", AbslView(name), "' in the weights of ", model_dir_,
        " (", files_.size() == 1 ? files_[0].path() : std::string(kIndexFile),
        " lists ", file_index_.size(), " tensors)"));
  }
  return file->ReadFloat(name, expected_shape, out);
}

std::vector<std::string> WeightStore::Names() const {
  std::vector<std::string> names;
  names.reserve(file_index_.size());
  for (const auto& [name, file] : file_index_) names.push_back(name);
  return names;
}

absl::StatusOr<DType> WeightStore::StorageDType() const {
  std::map<DType, int64_t> elements;
  for (const auto& [name, file] : file_index_) {
    const TensorInfo* t = files_[file].Find(name);
    elements[t->dtype] += t->numel();
  }
  if (elements.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the weights of ", model_dir_, " hold no tensors"));
  }
  auto best = elements.begin();
  for (auto it = elements.begin(); it != elements.end(); ++it) {
    if (it->second > best->second) best = it;
  }
  return best->first;
}

absl::Status WriteWeightStore(const std::string& model_dir,
                              const std::vector<TensorToWrite>& tensors,
                              DType dtype, size_t max_shard_bytes) {
  if (max_shard_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot write weights to ", model_dir, ": max_shard_bytes is 0"));
  }
  const size_t element_size = DTypeSize(dtype);
  std::set<std::string_view> names;
  // Shards as lists of indices into `tensors`, following huggingface_hub's
  // split_torch_state_dict_into_shards.
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_bytes = 0;
  uint64_t total_bytes = 0;
  int64_t total_parameters = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!names.insert(tensors[i].name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write weights to ", model_dir, ": tensor '",
                       tensors[i].name, "' appears twice"));
    }
    int64_t numel = 1;
    for (const int64_t dim : tensors[i].shape) {
      if (dim < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("cannot write weights to ", model_dir, ": tensor '",
                         tensors[i].name, "' has invalid shape ",
                         ShapeString(tensors[i].shape)));
      }
      numel *= dim;
    }
    const uint64_t bytes = static_cast<uint64_t>(numel) * element_size;
    total_bytes += bytes;
    total_parameters += numel;
    if (bytes > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_bytes + bytes > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(i);
    current_bytes += bytes;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));

  if (absl::Status s = MakeDirectory(model_dir); !s.ok()) return s;
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (shards.size() == 1) {
    if (absl::Status s = WriteSafetensors(JoinPath(model_dir, kSingleFile),
                                          tensors, dtype, metadata);
        !s.ok()) {
      return s;
    }
    return RemoveStaleWeightFiles(model_dir, {kSingleFile});
  }

  std::set<std::string> written = {kIndexFile};
  json weight_map = json::object();
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string shard_name =
        absl::StrFormat("model-%05d-of-%05d.safetensors", k + 1, shards.size());
    std::vector<TensorToWrite> shard_tensors;
    for (const size_t i : shards[k]) {
      shard_tensors.push_back(tensors[i]);
      weight_map[tensors[i].name] = shard_name;
    }
    if (absl::Status s = WriteSafetensors(JoinPath(model_dir, shard_name),
                                          shard_tensors, dtype, metadata);
        !s.ok()) {
      return s;
    }
    written.insert(shard_name);
  }
  const json index = {
      {"metadata",
       {{"total_parameters", total_parameters}, {"total_size", total_bytes}}},
      {"weight_map", std::move(weight_map)}};
  if (absl::Status s = WriteJsonFile(JoinPath(model_dir, kIndexFile), index);
      !s.ok()) {
    return s;
  }
  return RemoveStaleWeightFiles(model_dir, written);
}

}  // namespace prefopt::io
