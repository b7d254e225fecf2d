// The reference cache: values reused on a second run, per-token values that sum
// to the sequence values, and a corrupted or stale file rebuilt with a reason.
#include "trainer/reference/reference_logps.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/util/fingerprint.h"

namespace prefopt::reference {
namespace {

io::ModelSpec TinySpec() {
  io::ModelSpec spec;
  spec.arch = io::ModelSpec::Arch::kGpt2;
  spec.vocab_size = 17;
  spec.max_positions = 16;
  spec.hidden = 8;
  spec.n_layer = 1;
  spec.n_head = 2;
  spec.n_kv_head = 2;
  spec.head_dim = 4;
  spec.intermediate = 32;
  return spec;
}

std::vector<data::Example> Examples() {
  std::vector<data::Example> out(3);
  out[0].prompt = {1, 2, 3};
  out[0].chosen = {4, 5};
  out[0].rejected = {6};
  out[1].prompt = {7};
  out[1].chosen = {8, 9, 10};
  out[1].rejected = {11, 12};
  out[2].prompt = {13, 14};
  out[2].chosen = {15};
  out[2].rejected = {16, 0, 1, 2};
  return out;
}

TEST(ReferenceLogps, CachesTokenValuesAndRebuildsCorruptFiles) {
  kernels::CpuBackend backend;
  auto model = model::Decoder::Create(TinySpec(), &backend, {32, 8, 4}, false);
  ASSERT_TRUE(model.ok());
  (*model)->InitRandom(3, 0.5f);
  const std::string dir = std::string(std::getenv("TEST_TMPDIR")) + "/cache";
  ReferenceOptions options;
  options.token_logps = true;
  options.micro_batch_examples = 2;

  auto first = ComputeReferenceValues(**model, Examples(), options, dir, {});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->loaded_from_cache);
  const objectives::ReferenceValues& v = first->values;
  for (int ex = 0; ex < 3; ++ex) {
    for (int r = 0; r < 2; ++r) {
      double sum = 0;
      for (float x : v.TokenLogps(ex, r)) sum += x;
      EXPECT_NEAR(sum, v.SequenceLogp(ex, r), 1e-5);
      EXPECT_LT(v.SequenceLogp(ex, r), 0.0);
    }
  }
  EXPECT_EQ(v.TokenLogps(2, 1).size(), 4u);

  auto second = ComputeReferenceValues(**model, Examples(), options, dir, {});
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->loaded_from_cache);
  EXPECT_EQ(second->values.token_logp, v.token_logp);
  EXPECT_EQ(second->values.sequence_logp, v.sequence_logp);

  {  // Flip one byte in the middle of the file.
    std::fstream f(first->cache_path,
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(40);
    f.put('\x7f');
  }
  auto third = ComputeReferenceValues(**model, Examples(), options, dir, {});
  ASSERT_TRUE(third.ok());
  EXPECT_FALSE(third->loaded_from_cache);
  EXPECT_NE(third->rebuilt_because.find("corrupted"), std::string::npos)
      << third->rebuilt_because;
  EXPECT_EQ(third->values.sequence_logp, v.sequence_logp);

  // A forged cache, its checksum recomputed: the second example's first
  // response points past the entries. Refused with the reason, rebuilt.
  {
    std::ifstream in(first->cache_path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    in.close();
    // magic[8], key, then first_response: its length (8 bytes) and entries.
    const int64_t forged = 100;
    std::memcpy(&bytes[16 + 8 + 8], &forged, sizeof(forged));
    util::Fingerprinter fp;
    fp.Update(bytes.data(), bytes.size() - 8);
    const uint64_t check = fp.Value();
    std::memcpy(&bytes[bytes.size() - 8], &check, sizeof(check));
    std::ofstream(first->cache_path, std::ios::binary | std::ios::trunc)
        << bytes;
  }
  auto forged = ComputeReferenceValues(**model, Examples(), options, dir, {});
  ASSERT_TRUE(forged.ok());
  EXPECT_FALSE(forged->loaded_from_cache);
  EXPECT_EQ(forged->rebuilt_because,
            "its entries do not match the examples' responses and tokens");
  EXPECT_EQ(forged->values.sequence_logp, v.sequence_logp);

  // A forged positive log-prob (no probability exceeds 1), signed again.
  {
    std::ifstream in(forged->cache_path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    in.close();
    const double real = v.sequence_logp[1], fake = 5.0;
    const size_t at = bytes.find(
        std::string(reinterpret_cast<const char*>(&real), sizeof(real)));
    ASSERT_NE(at, std::string::npos);
    std::memcpy(&bytes[at], &fake, sizeof(fake));
    util::Fingerprinter fp;
    fp.Update(bytes.data(), bytes.size() - 8);
    const uint64_t check = fp.Value();
    std::memcpy(&bytes[bytes.size() - 8], &check, sizeof(check));
    std::ofstream(forged->cache_path, std::ios::binary | std::ios::trunc)
        << bytes;
  }
  auto positive = ComputeReferenceValues(**model, Examples(), options, dir, {});
  ASSERT_TRUE(positive.ok());
  EXPECT_FALSE(positive->loaded_from_cache);
  EXPECT_EQ(positive->rebuilt_because,
            "response 1 has log-prob 5, which is not a finite number <= 0");
  EXPECT_EQ(positive->values.sequence_logp, v.sequence_logp);

  // Other weights: another key, so another file.
  (*model)->InitRandom(4, 0.5f);
  auto other = ComputeReferenceValues(**model, Examples(), options, dir, {});
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(other->loaded_from_cache);
  EXPECT_NE(other->cache_path, first->cache_path);
}

}  // namespace
}  // namespace prefopt::reference
