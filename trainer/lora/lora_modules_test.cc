#include "trainer/lora/lora_modules.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace prefopt::lora {
namespace {

io::ModelSpec Gpt2() {
  io::ModelSpec spec;
  spec.arch = io::ModelSpec::Arch::kGpt2;
  spec.hidden = 8;
  spec.n_layer = 2;
  spec.n_head = 2;
  spec.n_kv_head = 2;
  spec.head_dim = 4;
  spec.intermediate = 32;
  return spec;
}

io::ModelSpec Llama() {
  io::ModelSpec spec;
  spec.arch = io::ModelSpec::Arch::kLlama;
  spec.hidden = 16;
  spec.n_layer = 2;
  spec.n_head = 4;
  spec.n_kv_head = 2;
  spec.head_dim = 4;
  spec.intermediate = 24;
  return spec;
}

std::vector<std::string> Paths(const std::vector<LinearModule>& modules) {
  std::vector<std::string> paths;
  for (const LinearModule& module : modules) paths.push_back(module.path);
  return paths;
}

TEST(LoraModulesTest, DefaultsArePeftsPerArchitecture) {
  auto gpt2 = ResolveTargetModules(Gpt2(), {}, "f");
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  EXPECT_EQ(Paths(*gpt2),
            (std::vector<std::string>{"transformer.h.0.attn.c_attn",
                                      "transformer.h.1.attn.c_attn"}));
  EXPECT_EQ((*gpt2)[0].in_features, 8);
  EXPECT_EQ((*gpt2)[0].out_features, 24);
  EXPECT_TRUE((*gpt2)[0].fan_in_fan_out);

  auto llama = ResolveTargetModules(Llama(), {}, "f");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(Paths(*llama),
            (std::vector<std::string>{"model.layers.0.self_attn.q_proj",
                                      "model.layers.0.self_attn.v_proj",
                                      "model.layers.1.self_attn.q_proj",
                                      "model.layers.1.self_attn.v_proj"}));
  EXPECT_EQ((*llama)[1].out_features, 8);  // 2 KV heads of 4
  EXPECT_FALSE((*llama)[1].fan_in_fan_out);
}

TEST(LoraModulesTest, SuffixMatchingAsPeft) {
  // "c_proj" is both GPT-2 projections; "mlp.c_proj" only the MLP's.
  auto both = ResolveTargetModules(Gpt2(), {"c_proj"}, "f");
  ASSERT_TRUE(both.ok());
  EXPECT_EQ(both->size(), 4u);
  auto mlp = ResolveTargetModules(Gpt2(), {"mlp.c_proj"}, "f");
  ASSERT_TRUE(mlp.ok());
  ASSERT_EQ(mlp->size(), 2u);
  EXPECT_EQ((*mlp)[0].projection, Projection::kMlpOut);
  EXPECT_EQ((*mlp)[0].in_features, 32);
  // A whole path names one module.
  auto one =
      ResolveTargetModules(Llama(), {"model.layers.1.mlp.down_proj"}, "f");
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].layer, 1);
  // A partial word is not a match ("proj" is not ".proj").
  EXPECT_FALSE(ResolveTargetModules(Llama(), {"proj"}, "f").ok());
}

TEST(LoraModulesTest, AllLinearIsEveryBlockProjection) {
  auto all = ResolveTargetModules(Llama(), {"all-linear"}, "f");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 14u);
  EXPECT_FALSE(
      ResolveTargetModules(Llama(), {"all-linear", "q_proj"}, "f").ok());
}

TEST(LoraModulesTest, UnknownTargetNamesFieldAndLayers) {
  auto bad =
      ResolveTargetModules(Gpt2(), {"q_proj"}, "model.lora.target_modules");
  ASSERT_FALSE(bad.ok());
  const std::string message(bad.status().message());
  EXPECT_NE(message.find("model.lora.target_modules"), std::string::npos);
  EXPECT_NE(message.find("\"q_proj\""), std::string::npos);
  EXPECT_NE(message.find("attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj"),
            std::string::npos)
      << message;
}

}  // namespace
}  // namespace prefopt::lora
