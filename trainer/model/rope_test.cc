// The rotary tables against transformers 4.57.1. Expected values printed by
// /opt/fixenv/bin/python (torch 2.6.0) from
//   transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS[rope_type](config,
//   "cpu")
// (inv_freq, as fp32 bit patterns) and
//   LlamaRotaryEmbedding(config)(x, position_ids=[[4095]]) (cos, sin)
// for three LlamaConfigs: Llama 3.1's (head_dim 128, rope_theta 5e5, llama3
// scaling: factor 8, low/high_freq_factor 1/4, original_max_position_embeddings
// 8192), linear scaling (head_dim 64, rope_theta 1e4, factor 4) and no scaling
// (SmolLM2's head_dim 64, rope_theta 1e5).
#include "trainer/model/rope.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"

namespace prefopt::model {
namespace {

io::ModelSpec Llama31() {
  io::ModelSpec spec;
  spec.arch = io::ModelSpec::Arch::kLlama;
  spec.head_dim = 128;
  spec.rope_theta = 500000.0;
  spec.rope_scaling.type = io::RopeScaling::Type::kLlama3;
  spec.rope_scaling.factor = 8.0;
  spec.rope_scaling.low_freq_factor = 1.0;
  spec.rope_scaling.high_freq_factor = 4.0;
  spec.rope_scaling.original_max_position_embeddings = 8192;
  return spec;
}

std::vector<uint32_t> Bits(const std::vector<float>& v) {
  std::vector<uint32_t> bits(v.size());
  std::memcpy(bits.data(), v.data(), v.size() * sizeof(float));
  return bits;
}

// Every inverse frequency bit for bit: the three llama3 regimes (kept,
// interpolated, divided by factor) all occur among Llama 3.1's 64.
TEST(Rope, InverseFrequenciesMatchTransformersBitForBit) {
  const std::vector<uint32_t> llama31_bits = {
      0x3f800000, 0x3f508ac1, 0x3f29e1c6, 0x3f0a6384, 0x3ee177bc, 0x3eb7ab7d,
      0x3e959ee3, 0x3e73c461, 0x3e4693b0, 0x3e21c3a0, 0x3e03c6a0, 0x3dd6b19c,
      0x3daee4ad, 0x3d8e7898, 0x3d681e67, 0x3d3d1684, 0x3d1a08c8, 0x3cfaf53f,
      0x3ccc6f49, 0x3ca68939, 0x3c87a9c3, 0x3c5d06ec, 0x3c340d6d, 0x3c12ac7f,
      0x3beef74f, 0x3bc2aa76, 0x3b9e9402, 0x3b812e35, 0x3b527720, 0x3b0dfd06,
      0x3ab3d11d, 0x3a60979e, 0x3a0995d2, 0x39a3f108, 0x393b2dd2, 0x38c86886,
      0x38a3418d, 0x3884fdbf, 0x3858ac81, 0x38308199, 0x380fc8f8, 0x37ea426f,
      0x37bed4f4, 0x379b7475, 0x377d45c3, 0x374e51f5, 0x3728126b, 0x3708ea0f,
      0x36df10c4, 0x36b5b687, 0x369406cb, 0x36712b80, 0x36447610, 0x36200a69,
      0x36025f34, 0x35d46808, 0x35ad07a7, 0x358cf400, 0x3565a54d, 0x353b12c7,
      0x351864a7, 0x34f848c2, 0x34ca41b0, 0x34a4c2ff};
  EXPECT_EQ(Bits(RopeInverseFrequencies(Llama31())), llama31_bits);

  io::ModelSpec linear;
  linear.head_dim = 64;
  linear.rope_theta = 10000.0;
  linear.rope_scaling.type = io::RopeScaling::Type::kLinear;
  linear.rope_scaling.factor = 4.0;
  const std::vector<uint32_t> linear_bits = {
      0x3e800000, 0x3e3ff911, 0x3e0ff59a, 0x3dd7e89b, 0x3da1e89b, 0x3d72d423,
      0x3d361887, 0x3d088d77, 0x3ccccccd, 0x3c99940d, 0x3c6655c2, 0x3c2cba15,
      0x3c0186e3, 0x3bc2434f, 0x3b91ad39, 0x3b5a7bf2, 0x3b23d70a, 0x3af5b9b0,
      0x3ab8449c, 0x3a8a2e77, 0x3a4f3e38, 0x3a1b690d, 0x39e91528, 0x39aec98e,
      0x3983126f, 0x3944948c, 0x39136a16, 0x38dd1725, 0x38a5cb60, 0x3878a815,
      0x383a7753, 0x380bd472};
  EXPECT_EQ(Bits(RopeInverseFrequencies(linear)), linear_bits);

  io::ModelSpec plain;
  plain.head_dim = 64;
  plain.rope_theta = 100000.0;
  const std::vector<uint32_t> default_bits = {
      0x3f800000, 0x3f32a506, 0x3ef953cf, 0x3eadfcff, 0x3e72d423, 0x3e297409,
      0x3dec7fd6, 0x3da50956, 0x3d6655c2, 0x3d20bc1d, 0x3ce054d2, 0x3c9c8b97,
      0x3c5a7bf2, 0x3c187705, 0x3bd4ca15, 0x3b947dae, 0x3b4f3e38, 0x3b109edb,
      0x3ac9d75c, 0x3a8cd9db, 0x3a44948c, 0x3a092e02, 0x39bf74d7, 0x39859aa9,
      0x393a7753, 0x39021f2b, 0x38b59b1b, 0x387d75d4, 0x3830df52, 0x37f6da96,
      0x37ac431d, 0x37706b6d};
  EXPECT_EQ(Bits(RopeInverseFrequencies(plain)), default_bits);
}

// At a large position the fp32 angle p * inv_freq must be formed as
// transformers forms it; cos/sin then agree to one rounding (6e-8).
TEST(Rope, TablesMatchTransformersAtPosition4095) {
  const std::vector<float> cos_4095 = {
      -0.06597599387168884f, 0.8707965016365051f,   -0.9995385408401489f,
      -0.4143010973930359f,  0.9996298551559448f,   0.3009403645992279f,
      -0.9627429842948914f,  0.5924814343452454f,   -0.7588617205619812f,
      0.9639294147491455f,   0.6875314116477966f,   -0.4397750198841095f,
      -0.5533989667892456f,  -0.5298497676849365f,  0.9148062467575073f,
      0.8544865846633911f,   -0.9982806444168091f,  0.9769033789634705f,
      -0.09051278233528137f, 0.004524640738964081f, 0.26746419072151184f,
      0.262294739484787f,    0.523516058921814f,    0.5065550804138184f,
      0.01833311840891838f,  0.6927869915962219f,   0.5670514702796936f,
      -0.9065932631492615f,  0.8339871764183044f,   -0.851125180721283f,
      0.7867435812950134f,   -0.933478057384491f,   -0.5467252731323242f,
      0.2862548530101776f,   0.7445142269134521f,   0.9244037866592407f,
      0.9496179819107056f,   0.9664708971977234f,   0.9777079224586487f,
      0.985188364982605f,    0.9901627898216248f,   0.9934684038162231f,
      0.9956640601158142f,   0.9971219301223755f,   0.9980897903442383f,
      0.9987322688102722f,   0.9991586804389954f,   0.9994416832923889f,
      0.9996294975280762f,   0.9997541308403015f,   0.999836802482605f,
      0.9998916983604431f,   0.9999281167984009f,   0.9999523162841797f,
      0.9999683499336243f,   0.9999790191650391f,   0.9999860525131226f,
      0.9999907612800598f,   0.9999938607215881f,   0.9999959468841553f,
      0.9999973177909851f,   0.9999982118606567f,   0.9999988079071045f,
      0.9999992251396179f};
  const std::vector<float> sin_4095 = {
      -0.9978212118148804f,   -0.49164360761642456f,  0.030375057831406593f,
      0.9101398587226868f,    0.027205083519220352f,  -0.9536429643630981f,
      0.2704181969165802f,    0.8055841326713562f,    0.6512517929077148f,
      -0.26615795493125916f,  -0.726154625415802f,    0.8981080055236816f,
      -0.8329163193702698f,   0.8480914831161499f,    -0.4038929343223572f,
      0.5194734334945679f,    -0.058615200221538544f, -0.2136814296245575f,
      0.995895266532898f,     0.9999897480010986f,    -0.9635677933692932f,
      -0.9649878144264221f,   0.8520157933235168f,    -0.8622075915336609f,
      -0.9998319149017334f,   -0.7211422920227051f,   0.8236823678016663f,
      -0.42200547456741333f,  0.5517838001251221f,    0.5249627828598022f,
      -0.6172799468040466f,   -0.35863450169563293f,  0.8373120427131653f,
      0.9581535458564758f,    0.6676065921783447f,    0.38141530752182007f,
      0.31340983510017395f,   0.2567761242389679f,    0.209969624876976f,
      0.1714756339788437f,    0.1399201601743698f,    0.11410751193761826f,
      0.0930221825838089f,    0.0758143737912178f,    0.06177964806556702f,
      0.050337549299001694f,  0.04101166874170303f,   0.03341195732355118f,
      0.027219664305448532f,  0.02217452973127365f,   0.01806425116956234f,
      0.014715719036757946f,  0.01198782492429018f,   0.0097655663266778f,
      0.007955241948366165f,  0.006480500102043152f,  0.005279139615595341f,
      0.004300484899431467f,  0.003503252752125263f,  0.002853811951354146f,
      0.0023247655481100082f, 0.0018937945133075118f, 0.0015427180333063006f,
      0.0012567248195409775f};
  std::vector<float> cos, sin;
  RopeTables(Llama31(), 4096, &cos, &sin);
  ASSERT_EQ(cos.size(), 4096u * 64);
  ASSERT_EQ(sin.size(), 4096u * 64);
  for (int i = 0; i < 64; ++i) {
    EXPECT_NEAR(cos[4095 * 64 + i], cos_4095[i], 1.2e-7) << "cos " << i;
    EXPECT_NEAR(sin[4095 * 64 + i], sin_4095[i], 1.2e-7) << "sin " << i;
  }
  // Position 0 is the identity rotation.
  for (int i = 0; i < 64; ++i) {
    EXPECT_EQ(cos[i], 1.0f);
    EXPECT_EQ(sin[i], 0.0f);
  }
}

}  // namespace
}  // namespace prefopt::model
