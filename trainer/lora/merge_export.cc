#include "trainer/lora/merge_export.h"

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/checkpoint/hf_export.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"
#include "trainer/lora/merge.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/model/decoder.h"

namespace prefopt::lora {

absl::StatusOr<MergedExport> ExportMergedModel(const std::string& base_dir,
                                               const std::string& adapter_dir,
                                               const std::string& out_dir,
                                               io::DType dtype,
                                               size_t max_shard_bytes) {
  absl::StatusOr<io::ModelSpec> spec = io::ReadHfConfig(base_dir);
  if (!spec.ok()) return spec.status();
  absl::StatusOr<PeftAdapter> adapter = ReadPeftAdapter(adapter_dir, *spec);
  if (!adapter.ok()) return adapter.status();
  absl::StatusOr<io::WeightStore> store = io::WeightStore::Open(base_dir);
  if (!store.ok()) return store.status();
  // The Decoder gives the parameter layout and validates the weights; no
  // forward pass runs, so the smallest capacity does.
  kernels::CpuBackend backend;
  absl::StatusOr<std::unique_ptr<model::Decoder>> decoder =
      model::Decoder::Create(*spec, &backend, {1, 1, 1}, false);
  if (!decoder.ok()) return decoder.status();
  if (absl::Status s = (*decoder)->LoadHf(*store); !s.ok()) return s;
  const model::ParamLayout& layout = (*decoder)->layout();
  std::vector<float> params(layout.total());
  backend.CopyToHost(params.data(), (*decoder)->params(), layout.total());
  if (absl::Status s = MergeAdapter(*adapter, layout, params.data()); !s.ok()) {
    return s;
  }
  if (absl::Status s =
          checkpoint::ExportHfModel(out_dir, *spec, layout, params.data(),
                                    dtype, max_shard_bytes, base_dir);
      !s.ok()) {
    return s;
  }
  MergedExport result;
  result.modules = static_cast<int>(adapter->factors.size());
  result.scaling = adapter->settings.Scaling();
  result.adapter_base_model = adapter->base_model_name_or_path;
  return result;
}

}  // namespace prefopt::lora
