// Moves a model between Hugging Face folders and checkpoints the way
// `prefopt export` and the training loop do; used by
// tests/export/check_export_with_transformers.py.
//
// Usage:
//   export_tool export IN_DIR OUT_DIR F32|F16|BF16 MAX_SHARD_BYTES [TOK_DIR]
//       Loads the Hugging Face folder IN_DIR into a Decoder and exports it
//       with ExportHfModel (tokenizer files from TOK_DIR).
//   export_tool checkpoint IN_DIR RUN_DIR
//       Loads IN_DIR into a Decoder and saves it as the step-0 checkpoint of
//       RUN_DIR (zero optimizer moments, IN_DIR's tokenizer files).
//   export_tool export-checkpoint CHECKPOINT_DIR OUT_DIR F32|F16|BF16
//       MAX_SHARD_BYTES
//       ExportCheckpoint, as `prefopt export` runs it.

#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/checkpoint/checkpoint_export.h"
#include "trainer/checkpoint/hf_export.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/weight_store.h"
#include "trainer/model/decoder.h"

namespace prefopt::checkpoint {
namespace {

// A Decoder for `spec`; no forward pass runs, so the smallest capacity does.
absl::StatusOr<std::unique_ptr<model::Decoder>> MakeDecoder(
    const io::ModelSpec& spec, kernels::Backend* backend) {
  return model::Decoder::Create(spec, backend, {1, 1, 1}, false);
}

// The spec and host parameters of the Hugging Face folder `dir`.
absl::Status LoadHfFolder(const std::string& dir, kernels::Backend* backend,
                          io::ModelSpec* spec,
                          std::unique_ptr<model::Decoder>* decoder,
                          std::vector<float>* params) {
  absl::StatusOr<io::ModelSpec> read = io::ReadHfConfig(dir);
  if (!read.ok()) return read.status();
  *spec = *read;
  absl::StatusOr<io::WeightStore> store = io::WeightStore::Open(dir);
  if (!store.ok()) return store.status();
  absl::StatusOr<std::unique_ptr<model::Decoder>> made =
      MakeDecoder(*spec, backend);
  if (!made.ok()) return made.status();
  *decoder = *std::move(made);
  if (absl::Status s = (*decoder)->LoadHf(*store); !s.ok()) return s;
  params->resize((*decoder)->layout().total());
  backend->CopyToHost(params->data(), (*decoder)->params(), params->size());
  return absl::OkStatus();
}

absl::Status Export(const std::string& in_dir, const std::string& out_dir,
                    io::DType dtype, size_t max_shard_bytes,
                    const std::string& tokenizer_dir) {
  kernels::CpuBackend backend;
  io::ModelSpec spec;
  std::unique_ptr<model::Decoder> decoder;
  std::vector<float> params;
  if (absl::Status s = LoadHfFolder(in_dir, &backend, &spec, &decoder, &params);
      !s.ok()) {
    return s;
  }
  return ExportHfModel(out_dir, spec, decoder->layout(), params.data(), dtype,
                       max_shard_bytes, tokenizer_dir);
}

absl::Status Checkpoint(const std::string& in_dir, const std::string& run_dir) {
  kernels::CpuBackend backend;
  io::ModelSpec spec;
  std::unique_ptr<model::Decoder> decoder;
  std::vector<float> params;
  if (absl::Status s = LoadHfFolder(in_dir, &backend, &spec, &decoder, &params);
      !s.ok()) {
    return s;
  }
  const std::vector<float> zeros(params.size(), 0.0f);
  CheckpointContents contents;
  contents.layout = &decoder->layout();
  contents.spec = &spec;
  contents.params = params.data();
  contents.tokenizer_dir = in_dir;
  contents.optimizer =
      OptimizerShard{{0, params.size()}, zeros.data(), zeros.data()};
  absl::StatusOr<SaveResult> saved = SaveCheckpoint(run_dir, contents, {});
  if (!saved.ok()) return saved.status();
  std::cout << saved->dir << "\n";
  return absl::OkStatus();
}

}  // namespace
}  // namespace prefopt::checkpoint

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  std::optional<prefopt::io::DType> dtype;
  if ((mode == "export" || mode == "export-checkpoint") && argc >= 6) {
    dtype = prefopt::io::ParseDType(argv[4]);
  }
  absl::Status status;
  if (mode == "export" && (argc == 6 || argc == 7) && dtype.has_value()) {
    status = prefopt::checkpoint::Export(argv[2], argv[3], *dtype,
                                         std::strtoull(argv[5], nullptr, 10),
                                         argc == 7 ? argv[6] : "");
  } else if (mode == "checkpoint" && argc == 4) {
    status = prefopt::checkpoint::Checkpoint(argv[2], argv[3]);
  } else if (mode == "export-checkpoint" && argc == 6 && dtype.has_value()) {
    status = prefopt::checkpoint::ExportCheckpoint(
                 argv[2], argv[3], *dtype, std::strtoull(argv[5], nullptr, 10))
                 .status();
  } else {
    std::cerr << "usage:\n  " << argv[0]
              << " export IN_DIR OUT_DIR F32|F16|BF16 MAX_SHARD_BYTES "
                 "[TOKENIZER_DIR]\n  "
              << argv[0] << " checkpoint IN_DIR RUN_DIR\n  " << argv[0]
              << " export-checkpoint CHECKPOINT_DIR OUT_DIR F32|F16|BF16 "
                 "MAX_SHARD_BYTES\n";
    return 2;
  }
  if (!status.ok()) {
    std::cerr << status << "\n";
    return 1;
  }
  return 0;
}
