// Fuzzes checkpoint::VerifyCheckpoint and LoadCheckpoint on a real checkpoint
// of a tiny GPT-2-like model (saved once per process) whose
// manifest.textproto is replaced by the input and re-signed as Finalize signs
// it (COMPLETE holds the manifest's CRC-32C), so that the manifest's fields,
// not its checksum, are what the readers see.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "tests/fuzz/fuzz_util.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/io/hf_config.h"
#include "trainer/model/param_layout.h"
#include "trainer/util/crc32c.h"

namespace {

using prefopt::checkpoint::CheckpointContents;

struct TinyCheckpoint {
  prefopt::io::ModelSpec spec;
  prefopt::model::ParamLayout layout;
  std::vector<float> params, m, v, mask;
  std::string dir;
};

void AddTensor(const std::string& name, std::vector<int64_t> shape,
               bool transposed, prefopt::model::ParamLayout* layout) {
  prefopt::model::ParamTensor t;
  t.name = name;
  t.shape = std::move(shape);
  t.hf_transposed = transposed;
  layout->Add(std::move(t));
}

// A GPT-2 embedding, a LayerNorm weight, a transposed Conv1D weight and its
// bias, optimizer moments and an extra tensor group: every kind of entry a
// manifest lists.
const TinyCheckpoint& Checkpoint() {
  static const TinyCheckpoint* saved = [] {
    auto* c = new TinyCheckpoint;
    prefopt::io::ModelSpec& spec = c->spec;
    spec.arch = prefopt::io::ModelSpec::Arch::kGpt2;
    spec.vocab_size = 11;
    spec.max_positions = 16;
    spec.hidden = 8;
    spec.n_layer = 1;
    spec.n_head = 2;
    spec.n_kv_head = 2;
    spec.head_dim = 4;
    spec.intermediate = 32;
    spec.activation = "gelu_new";
    spec.attention_bias = spec.attention_out_bias = spec.mlp_bias = true;
    spec.bos_token_id = spec.eos_token_id = 10;
    AddTensor("transformer.wte.weight", {11, 8}, false, &c->layout);
    AddTensor("transformer.h.0.ln_1.weight", {8}, false, &c->layout);
    AddTensor("transformer.h.0.attn.c_attn.weight", {24, 8}, true, &c->layout);
    AddTensor("transformer.h.0.attn.c_attn.bias", {24}, false, &c->layout);
    const size_t n = c->layout.total();
    for (size_t i = 0; i < n; ++i) {
      c->params.push_back(0.01f * static_cast<float>(i));
      c->m.push_back(-0.5f * static_cast<float>(i));
      c->v.push_back(0.25f * static_cast<float>(i));
    }
    c->mask = {0.5f, -1.25f};
    CheckpointContents contents;
    contents.metadata.set_step(6);
    contents.metadata.set_optimizer_step(6);
    contents.metadata.set_config_text("seed: 7\n");
    contents.metadata.set_metrics_lines(6);
    prefopt::RngState* rng = contents.metadata.add_rng();
    rng->set_name("dropout");
    rng->set_state(42);
    prefopt::DataPosition* position = contents.metadata.mutable_data();
    position->set_epoch(1);
    position->set_next_batch(2);
    position->set_batches_per_epoch(4);
    position->set_num_examples(30);
    position->set_global_batch_size(8);
    position->set_examples_seen(48);
    contents.writer_id = "fuzz";
    contents.layout = &c->layout;
    contents.spec = &c->spec;
    contents.params = c->params.data();
    contents.extra = {{"mask_net", {{"mask_net.w", {2}, c->mask.data()}}}};
    contents.optimizer = prefopt::checkpoint::OptimizerShard{
        {0, c->layout.total()}, c->m.data(), c->v.data()};
    absl::StatusOr<prefopt::checkpoint::SaveResult> result =
        prefopt::checkpoint::SaveCheckpoint(
            prefopt::fuzz::ScratchDir() + "/run", contents, {});
    if (!result.ok()) {
      std::fprintf(stderr, "checkpoint_fuzzer: cannot save: %s\n",
                   result.status().ToString().c_str());
      std::abort();
    }
    c->dir = result->dir;
    return c;
  }();
  return *saved;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const TinyCheckpoint& c = Checkpoint();
  const std::string_view manifest = prefopt::fuzz::AsView(data, size);
  const std::string relative = c.dir.substr(prefopt::fuzz::ScratchDir().size());
  prefopt::fuzz::WriteScratchFile(relative + "/manifest.textproto", manifest);
  prefopt::fuzz::WriteScratchFile(
      relative + "/COMPLETE",
      absl::StrFormat("manifest_crc32c: 0x%08x\n",
                      prefopt::util::Crc32c(manifest.data(), manifest.size())));
  prefopt::fuzz::CheckErrorNames(
      prefopt::checkpoint::VerifyCheckpoint(c.dir).status(), c.dir);
  // The whole optimizer state, a shard of it, and the weights alone.
  std::vector<prefopt::checkpoint::LoadOptions> loads(3);
  loads[1].optimizer_range = prefopt::checkpoint::FlatRange{3, 40};
  loads[2].load_optimizer = false;
  for (const prefopt::checkpoint::LoadOptions& options : loads) {
    prefopt::fuzz::CheckErrorNames(
        prefopt::checkpoint::LoadCheckpoint(c.dir, c.layout, options).status(),
        c.dir);
  }
  return 0;
}
