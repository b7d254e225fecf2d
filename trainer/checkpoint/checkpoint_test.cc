#include "trainer/checkpoint/checkpoint.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "trainer/checkpoint/forge_manifest.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/test_util.h"
#include "trainer/io/weight_store.h"
#include "trainer/util/rng.h"

namespace prefopt::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string NewRunDir(const std::string& name) {
  const std::string dir = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::set<std::string> Entries(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    names.insert(e.path().filename().string());
  }
  return names;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// A GPT-2-like model small enough to save in milliseconds: an embedding, a
// LayerNorm weight, a Conv1D weight that Hugging Face stores transposed and
// its bias, a fused tensor of three Hugging Face tensors, optionally one
// large tensor. Values are random and include
// bit patterns a lossy path would change (NaN payload, -0, denormal, inf).
class TinyModel {
 public:
  explicit TinyModel(uint64_t seed, size_t big_floats = 0) {
    spec_.arch = io::ModelSpec::Arch::kGpt2;
    spec_.vocab_size = 11;
    spec_.max_positions = 16;
    spec_.hidden = 8;
    spec_.n_layer = 1;
    spec_.n_head = 2;
    spec_.n_kv_head = 2;
    spec_.head_dim = 4;
    spec_.intermediate = 32;
    spec_.activation = "gelu_new";
    spec_.attention_bias = spec_.attention_out_bias = spec_.mlp_bias = true;
    spec_.bos_token_id = spec_.eos_token_id = 10;
    Add("transformer.wte.weight", {11, 8}, false);
    Add("transformer.h.0.ln_1.weight", {8}, false);
    Add("transformer.h.0.attn.c_attn.weight", {24, 8}, true);
    Add("transformer.h.0.attn.c_attn.bias", {24}, false);
    // A fused tensor holding three Hugging Face tensors (Llama's q/k/v).
    model::ParamTensor qkv;
    qkv.name = "model.layers.0.self_attn.qkv_proj.weight";
    qkv.shape = {12, 8};
    qkv.hf_parts = {{"model.layers.0.self_attn.q_proj.weight", 0, 8},
                    {"model.layers.0.self_attn.k_proj.weight", 8, 2},
                    {"model.layers.0.self_attn.v_proj.weight", 10, 2}};
    layout_.Add(std::move(qkv));
    if (big_floats > 0) {
      Add("transformer.big.weight", {static_cast<int64_t>(big_floats)}, false);
    }
    util::Rng rng(seed);
    auto fill = [&](std::vector<float>* v) {
      v->assign(layout_.total(), 0.0f);
      for (const model::ParamTensor& t : layout_.tensors()) {
        for (size_t i = 0; i < t.numel; ++i) {
          (*v)[t.offset + i] = static_cast<float>(rng.Normal());
        }
      }
    };
    fill(&params_);
    fill(&m_);
    fill(&v_);
    uint32_t nan_payload = 0x7fc12345u;
    std::memcpy(&params_[1], &nan_payload, 4);
    params_[2] = -0.0f;
    params_[3] = std::numeric_limits<float>::denorm_min();
    m_[5] = std::numeric_limits<float>::infinity();
    mask_w_ = {0.5f, -1.25f, 3.0f, 0.0f};
    mask_b_ = {0.125f};
  }

  const io::ModelSpec& spec() const { return spec_; }
  const model::ParamLayout& layout() const { return layout_; }
  std::vector<float>& params() { return params_; }
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }

  CheckpointContents Contents(int64_t step) const {
    CheckpointContents c;
    c.metadata.set_step(step);
    c.metadata.set_optimizer_step(step);
    c.metadata.set_config_text("seed: 7\nrun_dir: \"/tmp/r\"\n");
    c.metadata.set_config_fingerprint(0xfedcba9876543210ull);
    c.metadata.set_data_fingerprint(1);
    c.metadata.set_tokenizer_fingerprint(2);
    c.metadata.set_metrics_lines(step);
    RngState* rng = c.metadata.add_rng();
    rng->set_name("dropout");
    rng->set_state(0xffffffffffffff00ull + static_cast<uint64_t>(step));
    DataPosition* data = c.metadata.mutable_data();
    data->set_epoch(step / 4);
    data->set_next_batch(step % 4);
    data->set_batches_per_epoch(4);
    data->set_num_examples(30);
    data->set_global_batch_size(8);
    data->set_shuffle(true);
    data->set_shuffle_seed(7);
    data->set_examples_seen(8 * step);
    c.layout = &layout_;
    c.spec = &spec_;
    c.params = params_.data();
    c.extra = {{"mask_net",
                {{"mask_net.w", {2, 2}, mask_w_.data()},
                 {"mask_net.b", {1}, mask_b_.data()}}}};
    c.optimizer = OptimizerShard{{0, layout_.total()}, m_.data(), v_.data()};
    return c;
  }

 private:
  void Add(const std::string& name, std::vector<int64_t> shape,
           bool transposed) {
    model::ParamTensor t;
    t.name = name;
    t.shape = std::move(shape);
    t.hf_transposed = transposed;
    layout_.Add(std::move(t));
  }

  io::ModelSpec spec_;
  model::ParamLayout layout_;
  std::vector<float> params_, m_, v_, mask_w_, mask_b_;
};

std::string Save(const std::string& run_dir, const TinyModel& model,
                 int64_t step, int keep_last_n = 0) {
  absl::StatusOr<SaveResult> saved =
      SaveCheckpoint(run_dir, model.Contents(step), {keep_last_n});
  EXPECT_TRUE(saved.ok()) << saved.status();
  return saved.ok() ? saved->dir : "";
}

TEST(CheckpointTest, RoundTripIsBitExact) {
  const std::string run = NewRunDir("round_trip");
  TinyModel model(1);
  const std::string dir = Save(run, model, 12);
  EXPECT_EQ(dir, run + "/checkpoints/step_12");
  EXPECT_EQ(Entries(run + "/checkpoints"), std::set<std::string>{"step_12"});
  EXPECT_EQ(Entries(dir), (std::set<std::string>{
                              "COMPLETE", "manifest.textproto", "config.json",
                              "generation_config.json", "model.safetensors",
                              "optimizer.safetensors", "extra.safetensors"}));

  absl::StatusOr<LoadedCheckpoint> loaded = LoadCheckpoint(dir, model.layout());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameBits(loaded->params, model.params()));
  EXPECT_TRUE(SameBits(loaded->exp_avg, model.m()));
  EXPECT_TRUE(SameBits(loaded->exp_avg_sq, model.v()));
  const CheckpointManifest& m = loaded->manifest;
  EXPECT_EQ(m.step(), 12);
  EXPECT_EQ(m.format_version(), "1");
  EXPECT_EQ(m.config_text(), "seed: 7\nrun_dir: \"/tmp/r\"\n");
  EXPECT_EQ(m.config_fingerprint(), 0xfedcba9876543210ull);
  ASSERT_EQ(m.rng_size(), 1);
  EXPECT_EQ(m.rng(0).name(), "dropout");
  EXPECT_EQ(m.rng(0).state(), 0xffffffffffffff0cull);
  EXPECT_EQ(m.data().epoch(), 3);
  EXPECT_EQ(m.data().next_batch(), 0);
  EXPECT_EQ(m.data().examples_seen(), 96);
  EXPECT_EQ(m.metrics_lines(), 12);
  EXPECT_EQ(m.world_size(), 1);
  EXPECT_EQ(m.hf_architecture(), "GPT2LMHeadModel");
  EXPECT_EQ(m.flat_param_count(), model.layout().total());
  ASSERT_EQ(loaded->extra.size(), 2u);
  EXPECT_EQ(loaded->extra[0].role, "mask_net");
  EXPECT_EQ(loaded->extra[0].name, "mask_net.w");
  EXPECT_EQ(loaded->extra[0].shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(loaded->extra[0].values,
            (std::vector<float>{0.5f, -1.25f, 3.0f, 0.0f}));

  // The model file is a Hugging Face file: HF names, Conv1D as [in, out].
  absl::StatusOr<io::WeightStore> store = io::WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  const model::ParamTensor* attn =
      model.layout().Find("transformer.h.0.attn.c_attn.weight");
  std::vector<float> hf(attn->numel);
  ASSERT_TRUE(store->ReadFloat(attn->name, {8, 24}, hf.data()).ok());
  EXPECT_EQ(hf[1 * 24 + 5], model.params()[attn->offset + 5 * 8 + 1]);
  EXPECT_EQ(store->FileOf(attn->name)->metadata().at("format"), "pt");
  // Fused tensors are stored as their Hugging Face parts.
  const model::ParamTensor* qkv =
      model.layout().Find("model.layers.0.self_attn.qkv_proj.weight");
  EXPECT_FALSE(store->Has(qkv->name));
  std::vector<float> k(16);
  ASSERT_TRUE(store
                  ->ReadFloat("model.layers.0.self_attn.k_proj.weight", {2, 8},
                              k.data())
                  .ok());
  EXPECT_EQ(k[9], model.params()[qkv->offset + 8 * 8 + 9]);
}

TEST(CheckpointTest, WeightsOnlyAndShardRange) {
  const std::string run = NewRunDir("weights_only");
  TinyModel model(2);
  const std::string dir = Save(run, model, 3);
  absl::StatusOr<LoadedCheckpoint> weights =
      LoadCheckpoint(dir, model.layout(), {false, std::nullopt});
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_TRUE(weights->exp_avg.empty());
  const FlatRange half = EvenShardRange(model.layout().total(), 1, 2);
  absl::StatusOr<LoadedCheckpoint> shard =
      LoadCheckpoint(dir, model.layout(), {true, half});
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_TRUE(SameBits(shard->exp_avg,
                       std::vector<float>(model.m().begin() + half.begin,
                                          model.m().begin() + half.end)));
}

// Flips one byte of `path` at `offset` and returns a function-like restore.
class FlippedByte {
 public:
  FlippedByte(std::string path, size_t offset)
      : path_(std::move(path)), original_(ReadAll(path_)) {
    std::string changed = original_;
    changed[offset] ^= 0x10;
    WriteAll(path_, changed);
  }
  ~FlippedByte() { WriteAll(path_, original_); }

 private:
  std::string path_;
  std::string original_;
};

TEST(CheckpointTest, FlippedByteInAnyTensorIsNamed) {
  const std::string run = NewRunDir("flipped");
  TinyModel model(3);
  const std::string dir = Save(run, model, 40);
  absl::StatusOr<CheckpointManifest> manifest = VerifyCheckpoint(dir);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_EQ(manifest->tensors_size(), 11);
  for (const TensorEntry& t : manifest->tensors()) {
    SCOPED_TRACE(t.name());
    FlippedByte flip(dir + "/" + t.file(),
                     t.offset_bytes() + t.size_bytes() / 2);
    absl::StatusOr<CheckpointManifest> verified = VerifyCheckpoint(dir);
    ASSERT_FALSE(verified.ok());
    const std::string message(verified.status().message());
    EXPECT_NE(message.find(absl::StrCat("checkpoint ", dir, ": tensor ",
                                        t.name(), " in ", t.file(),
                                        ": CRC32C mismatch (stored 0x")),
              std::string::npos)
        << message;
    absl::StatusOr<LoadedCheckpoint> loaded =
        LoadCheckpoint(dir, model.layout());
    EXPECT_FALSE(loaded.ok());
  }
  EXPECT_TRUE(VerifyCheckpoint(dir).ok());

  {
    FlippedByte flip(dir + "/config.json", 10);
    absl::StatusOr<CheckpointManifest> verified = VerifyCheckpoint(dir);
    ASSERT_FALSE(verified.ok());
    EXPECT_NE(verified.status().message().find("config.json: CRC32C mismatch"),
              std::string::npos)
        << verified.status();
  }
  {
    // A manifest edited by hand (or damaged) no longer matches COMPLETE.
    const std::string text = ReadAll(dir + "/manifest.textproto");
    FlippedByte flip(dir + "/manifest.textproto", text.find("step: 40") + 7);
    absl::StatusOr<CheckpointManifest> verified = VerifyCheckpoint(dir);
    ASSERT_FALSE(verified.ok());
    EXPECT_NE(
        verified.status().message().find("manifest.textproto: CRC32C mismatch"),
        std::string::npos)
        << verified.status();
  }
}

TEST(CheckpointTest, TruncatedFileIsDetected) {
  const std::string run = NewRunDir("truncated");
  TinyModel model(4);
  const std::string dir = Save(run, model, 5);
  const std::string path = dir + "/optimizer.safetensors";
  const uint64_t size = fs::file_size(path);
  fs::resize_file(path, size - 10);
  absl::StatusOr<LoadedCheckpoint> loaded = LoadCheckpoint(dir, model.layout());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(absl::StrCat(
                "optimizer.safetensors is ", size - 10,
                " bytes, the manifest says ", size, " (truncated")),
            std::string::npos)
      << loaded.status();
}

TEST(CheckpointTest, LatestSkipsIncompleteAndCorruptWithReasons) {
  const std::string run = NewRunDir("latest");
  TinyModel model(5);
  Save(run, model, 10);
  const std::string dir20 = Save(run, model, 20);
  const std::string dir30 = Save(run, model, 30);
  std::vector<std::string> reasons;
  absl::StatusOr<std::string> latest = FindLatestCheckpoint(run, &reasons);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, dir30);
  EXPECT_TRUE(reasons.empty());

  fs::remove(dir30 + "/COMPLETE");
  FlippedByte flip(dir20 + "/model.safetensors",
                   fs::file_size(dir20 + "/model.safetensors") - 3);
  latest = FindLatestCheckpoint(run, &reasons);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, run + "/checkpoints/step_10");
  ASSERT_EQ(reasons.size(), 2u);
  EXPECT_NE(reasons[0].find("step_30: no COMPLETE marker"), std::string::npos)
      << reasons[0];
  EXPECT_NE(reasons[1].find("step_20: tensor "), std::string::npos)
      << reasons[1];
  EXPECT_NE(reasons[1].find("CRC32C mismatch"), std::string::npos)
      << reasons[1];
}

TEST(CheckpointTest, NoCheckpointIsNotFound) {
  const std::string run = NewRunDir("none");
  absl::StatusOr<std::string> latest = FindLatestCheckpoint(run, nullptr);
  EXPECT_TRUE(absl::IsNotFound(latest.status())) << latest.status();
}

TEST(CheckpointTest, LeftoversOfCrashedSavesAreIgnoredThenRemoved) {
  const std::string run = NewRunDir("leftovers");
  TinyModel model(6);
  const std::string dir10 = Save(run, model, 10);
  const std::string root = run + "/checkpoints";
  // A crashed launch's temporary folder with a partial file, a folder renamed
  // into place whose COMPLETE was never written, and a replaced folder.
  fs::create_directories(root + "/.tmp_step_20_999-0badc0de");
  WriteAll(root + "/.tmp_step_20_999-0badc0de/model.safetensors.tmp.999",
           "partial");
  fs::copy(dir10, root + "/step_30");
  fs::remove(root + "/step_30/COMPLETE");
  fs::create_directories(root + "/.trash_step_5_999-0badc0de");
  // This launch's folder of a later step (as if written asynchronously).
  CheckpointContents later = model.Contents(99);
  later.writer_id = "ours";
  ASSERT_TRUE(WriteRankFiles(run, later).ok());

  std::vector<std::string> reasons;
  absl::StatusOr<std::string> latest = FindLatestCheckpoint(run, &reasons);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, dir10);
  // Newest first; the temporary folders are reported as unfinished saves.
  ASSERT_EQ(reasons.size(), 3u);
  EXPECT_EQ(reasons[0], "checkpoint " + root +
                            "/step_99: the save did not finish (only its "
                            "temporary folder .tmp_step_99_ours exists)");
  EXPECT_NE(reasons[1].find("step_30: no COMPLETE marker"), std::string::npos)
      << reasons[1];
  EXPECT_NE(reasons[2].find("step_20: the save did not finish (only its "
                            "temporary folder .tmp_step_20_999-0badc0de"),
            std::string::npos)
      << reasons[2];

  CheckpointContents now = model.Contents(20);
  now.writer_id = "ours";
  absl::StatusOr<SaveResult> saved = SaveCheckpoint(run, now, {0});
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_TRUE(saved->cleanup_errors.empty());
  EXPECT_EQ(saved->removed.size(), 3u);
  EXPECT_EQ(Entries(root),
            (std::set<std::string>{"step_10", "step_20", ".tmp_step_99_ours"}));
  latest = FindLatestCheckpoint(run, nullptr);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, root + "/step_20");
}

TEST(CheckpointTest, ProcessKilledMidSaveLeavesEarlierCheckpointsIntact) {
  const std::string run = NewRunDir("killed");
  // 4M floats: each save takes long enough that the kill lands mid-write.
  TinyModel model(7, 4 << 20);
  const std::string root = run + "/checkpoints";
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Another launch: its own writer id.
    const std::string writer = NewWriterId();
    for (int64_t step = 1;; ++step) {
      CheckpointContents c = model.Contents(step);
      c.writer_id = writer;
      if (!SaveCheckpoint(run, c, {0}).ok()) _exit(1);
    }
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(root + "/step_1/COMPLETE") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // Let the next save get under way, then kill without warning.
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the child failed to save";

  // Every folder marked complete verifies; the newest of them is found.
  for (const std::string& name : Entries(root)) {
    std::cout << "after the kill: " << name
              << (fs::exists(root + "/" + name + "/COMPLETE") ? " (complete)"
                                                              : "")
              << "\n";
  }
  int64_t newest = -1;
  for (const std::string& name : Entries(root)) {
    if (name.rfind("step_", 0) != 0) continue;
    const std::string dir = root + "/" + name;
    if (!fs::exists(dir + "/COMPLETE")) continue;
    EXPECT_TRUE(VerifyCheckpoint(dir).ok()) << name;
    newest = std::max<int64_t>(newest, std::stoll(name.substr(5)));
  }
  ASSERT_GE(newest, 1);
  absl::StatusOr<std::string> latest = FindLatestCheckpoint(run, nullptr);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, root + "/step_" + std::to_string(newest));
  absl::StatusOr<LoadedCheckpoint> loaded =
      LoadCheckpoint(*latest, model.layout());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameBits(loaded->params, model.params()));

  // The next save (another launch) removes whatever the killed one left.
  absl::StatusOr<SaveResult> saved =
      SaveCheckpoint(run, model.Contents(newest + 100), {0});
  ASSERT_TRUE(saved.ok()) << saved.status();
  for (const std::string& name : Entries(root)) {
    EXPECT_EQ(name.rfind("step_", 0), 0u) << name;
    EXPECT_TRUE(fs::exists(root + "/" + name + "/COMPLETE")) << name;
  }
}

TEST(CheckpointTest, FullDiskLeavesTheEarlierCheckpointIntact) {
  const std::string run = NewRunDir("full_disk");
  const std::string root = run + "/checkpoints";
  // 16 KiB of extra floats: more than the file size limit below.
  TinyModel model(8, 4096);
  ASSERT_FALSE(Save(run, model, 1).empty());
  for (int64_t step : {2, 1}) {
    io::testing::ScopedFileSizeLimit limit(4096);
    const absl::StatusOr<SaveResult> saved =
        SaveCheckpoint(run, model.Contents(step), {0});
    ASSERT_FALSE(saved.ok()) << "step " << step;
    EXPECT_TRUE(io::testing::ErrorContains(
        saved.status(), {"cannot write", root, "File too large"}))
        << saved.status();
  }
  EXPECT_EQ(Entries(root), std::set<std::string>{"step_1"});
  absl::StatusOr<std::string> latest = FindLatestCheckpoint(run, nullptr);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, root + "/step_1");
  absl::StatusOr<LoadedCheckpoint> loaded =
      LoadCheckpoint(*latest, model.layout());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameBits(loaded->params, model.params()));
}

TEST(CheckpointTest, KeepLastNPrunes) {
  const std::string run = NewRunDir("keep");
  TinyModel model(8);
  for (int step = 1; step <= 5; ++step) Save(run, model, step, 2);
  EXPECT_EQ(Entries(run + "/checkpoints"),
            (std::set<std::string>{"step_4", "step_5"}));
  // Resumed from an earlier step: the folder just written is kept even
  // though a higher step exists.
  Save(run, model, 3, 1);
  EXPECT_EQ(Entries(run + "/checkpoints"),
            (std::set<std::string>{"step_3", "step_5"}));
  // Saving a step again replaces its folder.
  model.params()[0] += 1.0f;
  const std::string dir = Save(run, model, 3, 1);
  absl::StatusOr<LoadedCheckpoint> loaded = LoadCheckpoint(dir, model.layout());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameBits(loaded->params, model.params()));
  EXPECT_EQ(Entries(run + "/checkpoints"),
            (std::set<std::string>{"step_3", "step_5"}));
}

TEST(CheckpointTest, LayoutMismatchIsAnError) {
  const std::string run = NewRunDir("mismatch");
  TinyModel model(9);
  const std::string dir = Save(run, model, 1);
  TinyModel bigger(9, 100);
  absl::StatusOr<LoadedCheckpoint> loaded =
      LoadCheckpoint(dir, bigger.layout());
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("different parameter layout"),
            std::string::npos)
      << loaded.status();
}

std::vector<float> Iota(size_t n, float start) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = start + static_cast<float>(i);
  return v;
}

// The shards `world_size` ranks hold of `full` under EvenShardRange.
std::vector<FlatShard> ShardsOf(const std::vector<float>& full,
                                int world_size) {
  std::vector<FlatShard> shards;
  for (int r = 0; r < world_size; ++r) {
    const FlatRange range = EvenShardRange(full.size(), r, world_size);
    shards.push_back({range, full.data() + range.begin});
  }
  return shards;
}

TEST(ReshardTest, AcrossWorldSizes) {
  const std::vector<float> full = Iota(101, 0.5f);
  for (auto [from, to] : {std::pair{2, 1}, {1, 2}, {2, 3}, {3, 2}, {4, 3}}) {
    SCOPED_TRACE(absl::StrCat(from, " -> ", to));
    const std::vector<FlatShard> shards = ShardsOf(full, from);
    std::vector<float> joined;
    for (int r = 0; r < to; ++r) {
      const FlatRange want = EvenShardRange(full.size(), r, to);
      absl::StatusOr<std::vector<float>> mine = Reshard(shards, want);
      ASSERT_TRUE(mine.ok()) << mine.status();
      EXPECT_EQ(*mine, std::vector<float>(full.begin() + want.begin,
                                          full.begin() + want.end));
      joined.insert(joined.end(), mine->begin(), mine->end());
    }
    EXPECT_EQ(joined, full);
  }
}

TEST(ReshardTest, GapsAndOverlapsAreErrors) {
  const std::vector<float> full = Iota(10, 0.0f);
  std::vector<FlatShard> gap = {{{0, 4}, full.data()},
                                {{5, 10}, full.data() + 5}};
  absl::StatusOr<std::vector<float>> r = Reshard(gap, {0, 10});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("floats [4, 5) are in no shard"),
            std::string::npos)
      << r.status();
  EXPECT_TRUE(Reshard(gap, {5, 10}).ok());
  std::vector<FlatShard> overlap = {{{0, 6}, full.data()},
                                    {{5, 10}, full.data() + 5}};
  r = Reshard(overlap, {0, 10});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("overlaps"), std::string::npos)
      << r.status();
}

TEST(CheckpointTest, ZeroShardsFromTwoRanksLoadIntoThree) {
  const std::string run = NewRunDir("zero");
  TinyModel model(10);
  const size_t total = model.layout().total();
  const std::string writer = NewWriterId();
  std::vector<CheckpointContents> ranks;
  for (int r = 0; r < 2; ++r) {
    CheckpointContents c = model.Contents(8);
    c.rank = r;
    c.world_size = 2;
    c.writer_id = writer;
    c.metadata.set_zero_stage(1);
    c.metadata.mutable_rng(0)->set_name(absl::StrCat("dropout/rank", r));
    const FlatRange range = EvenShardRange(total, r, 2);
    c.optimizer = OptimizerShard{range, model.m().data() + range.begin,
                                 model.v().data() + range.begin};
    ranks.push_back(std::move(c));
  }
  ASSERT_TRUE(WriteRankFiles(run, ranks[0]).ok());
  // Rank 1 has not written yet: Finalize refuses and names it.
  absl::StatusOr<SaveResult> early = Finalize(run, ranks[0], {0});
  ASSERT_FALSE(early.ok());
  EXPECT_NE(early.status().message().find("rank 1 has not reported"),
            std::string::npos)
      << early.status();
  ASSERT_TRUE(WriteRankFiles(run, ranks[1]).ok());
  EXPECT_FALSE(Finalize(run, ranks[1], {0}).ok());  // rank 0 only
  absl::StatusOr<SaveResult> saved = Finalize(run, ranks[0], {0});
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(Entries(saved->dir),
            (std::set<std::string>{"COMPLETE", "manifest.textproto",
                                   "config.json", "generation_config.json",
                                   "model.safetensors", "extra.safetensors",
                                   "optimizer-rank0-of-2.safetensors",
                                   "optimizer-rank1-of-2.safetensors"}));

  std::vector<float> joined_m, joined_v;
  for (int r = 0; r < 3; ++r) {
    LoadOptions options;
    options.optimizer_range = EvenShardRange(total, r, 3);
    absl::StatusOr<LoadedCheckpoint> loaded =
        LoadCheckpoint(saved->dir, model.layout(), options);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_TRUE(SameBits(loaded->params, model.params()));
    joined_m.insert(joined_m.end(), loaded->exp_avg.begin(),
                    loaded->exp_avg.end());
    joined_v.insert(joined_v.end(), loaded->exp_avg_sq.begin(),
                    loaded->exp_avg_sq.end());
    ASSERT_EQ(loaded->manifest.rng_size(), 2);
    EXPECT_EQ(loaded->manifest.rng(1).name(), "dropout/rank1");
    EXPECT_EQ(loaded->manifest.world_size(), 2);
  }
  EXPECT_TRUE(SameBits(joined_m, model.m()));
  EXPECT_TRUE(SameBits(joined_v, model.v()));
}

TEST(CheckpointTest, InvalidContentsAreRejected) {
  const std::string run = NewRunDir("invalid");
  TinyModel model(11);
  CheckpointContents c = model.Contents(1);
  c.world_size = 2;
  absl::StatusOr<SaveResult> saved = SaveCheckpoint(run, c, {0});
  EXPECT_FALSE(saved.ok());
  c = model.Contents(1);
  c.writer_id = "has/slash";
  EXPECT_FALSE(SaveCheckpoint(run, c, {0}).ok());
  c = model.Contents(1);
  c.optimizer->range.end = model.layout().total() - 1;  // leaves a gap
  saved = SaveCheckpoint(run, c, {0});
  ASSERT_FALSE(saved.ok());
  EXPECT_NE(saved.status().message().find("are in no shard"), std::string::npos)
      << saved.status();
  // A failed save leaves nothing behind.
  EXPECT_TRUE(Entries(run + "/checkpoints").empty());
}

struct ForgedField {
  std::string name;
  std::function<void(CheckpointManifest*)> edit;
  std::string expected;  // follows "checkpoint <dir>: " in the error
};

TEST(CheckpointTest, ReSignedManifestWithFieldsOutOfRangeIsRefused) {
  const std::string run = NewRunDir("forged");
  TinyModel model(12);
  const std::string dir = Save(run, model, 6);
  // Signed again unchanged, the manifest still verifies: the forgeries below
  // are refused for their values alone.
  ASSERT_TRUE(checkpoint::ForgeManifest(dir, [](CheckpointManifest*) {}).ok());
  ASSERT_TRUE(LoadCheckpoint(dir, model.layout()).ok());
  const std::string manifest = ReadAll(dir + "/manifest.textproto");
  const std::string complete = ReadAll(dir + "/COMPLETE");

  const std::vector<ForgedField> forgeries = {
      {"negative optimizer_step",
       [](CheckpointManifest* m) { m->set_optimizer_step(-5); },
       "manifest.textproto: field 'optimizer_step' must be in [0, step = 6] "
       "(AdamW updates once per step at most), got -5"},
      {"optimizer_step past step",
       [](CheckpointManifest* m) { m->set_optimizer_step(7); },
       "manifest.textproto: field 'optimizer_step' must be in [0, step = 6]"},
      {"negative next_batch",
       [](CheckpointManifest* m) { m->mutable_data()->set_next_batch(-1); },
       "manifest.textproto: field 'data.next_batch' must be in [0, "
       "data.batches_per_epoch = 4), got -1"},
      {"next_batch past the epoch",
       [](CheckpointManifest* m) { m->mutable_data()->set_next_batch(4); },
       "manifest.textproto: field 'data.next_batch' must be in [0, "
       "data.batches_per_epoch = 4), "
       "got 4"},
      {"negative metrics_lines",
       [](CheckpointManifest* m) { m->set_metrics_lines(-3); },
       "manifest.textproto: field 'metrics_lines' must be >= 0, got -3"},
      {"no ranks", [](CheckpointManifest* m) { m->set_world_size(0); },
       "manifest.textproto: field 'world_size' must be >= 1, got 0"},
      {"negative world_size",
       [](CheckpointManifest* m) { m->set_world_size(-2); },
       "manifest.textproto: field 'world_size' must be >= 1, got -2"},
      {"negative epoch",
       [](CheckpointManifest* m) { m->mutable_data()->set_epoch(-1); },
       "manifest.textproto: field 'data.epoch' must be >= 0, got -1"},
      {"model tensor past the parameter buffer",
       [](CheckpointManifest* m) {
         for (TensorEntry& t : *m->mutable_tensors()) {
           if (t.role() == "model") {
             t.set_flat_end(m->flat_param_count() + 1);
             break;
           }
         }
       },
       "manifest.textproto: tensor transformer.wte.weight in "
       "model.safetensors: field 'flat_end': the range [0, "},
      {"file of a rank past world_size",
       [](CheckpointManifest* m) { m->mutable_files(0)->set_rank(1); },
       "manifest.textproto: file config.json: field 'rank' must be in [0, "
       "world_size = 1), got 1"},
  };
  for (const ForgedField& forged : forgeries) {
    SCOPED_TRACE(forged.name);
    WriteAll(dir + "/manifest.textproto", manifest);
    WriteAll(dir + "/COMPLETE", complete);
    ASSERT_TRUE(checkpoint::ForgeManifest(dir, forged.edit).ok());
    absl::StatusOr<LoadedCheckpoint> loaded =
        LoadCheckpoint(dir, model.layout());
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(
        std::string(loaded.status().message())
            .find(absl::StrCat("checkpoint ", dir, ": ", forged.expected)),
        std::string::npos)
        << loaded.status();
  }
}

}  // namespace
}  // namespace prefopt::checkpoint
