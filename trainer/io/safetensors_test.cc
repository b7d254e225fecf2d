#include "trainer/io/safetensors.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "trainer/io/test_util.h"

namespace prefopt::io {
namespace {

using testing::CountEntriesContaining;
using testing::ErrorContains;
using testing::Exists;
using testing::NewTempDir;
using testing::ReadBytes;
using testing::TestdataPath;
using testing::WriteBytes;

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

uint16_t Raw16(const SafetensorsFile& file, const TensorInfo& t, int64_t i) {
  uint16_t v;
  std::memcpy(&v, file.Data(t) + 2 * i, 2);
  return v;
}

// Equal bits, except that any two NaNs of the same sign match: torch's own
// NaN payloads depend on which of its code paths ran.
void ExpectSameFloat(float got, float want, const std::string& where) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << where;
    EXPECT_EQ(std::signbit(got), std::signbit(want)) << where;
  } else {
    EXPECT_EQ(Bits(got), Bits(want))
        << where << ": got " << got << ", want " << want;
  }
}

// A safetensors file from a raw header and `data_size` zero bytes.
std::string RawFile(const std::string& header, size_t data_size) {
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  return bytes + header + std::string(data_size, '\0');
}

TEST(DTypeTest, NamesRoundTrip) {
  for (const DType d :
       {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64,
        DType::kI32, DType::kI16, DType::kI8, DType::kU8, DType::kBool}) {
    EXPECT_EQ(ParseDType(DTypeName(d)), d) << DTypeName(d);
  }
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kBool), "BOOL");
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF64), 8u);
  EXPECT_FALSE(ParseDType("F8_E4M3").has_value());
  EXPECT_FALSE(ParseDType("f32").has_value());
}

TEST(ConversionTest, KnownValues) {
  EXPECT_EQ(Fp16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(Fp16ToFloat(0x03ff), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(Fp16ToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(Bits(Fp16ToFloat(0x8000)), 0x80000000u);
  EXPECT_EQ(Fp16ToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Fp16ToFloat(0x7c01)));
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie to even
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(FloatToFp16(65520.0f), 0x7c00);  // rounds up to infinity
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even
  EXPECT_EQ(FloatToFp16(std::ldexp(3.0f, -26)), 0x0001);
  EXPECT_EQ(FloatToFp16(-0.0f), 0x8000);
  // NaN stays NaN even when only low payload bits are set.
  EXPECT_EQ(FloatToBf16(FromBits(0x7f800001)) & 0x7fc0, 0x7fc0);
  EXPECT_EQ(FloatToFp16(FromBits(0xff800001)) & 0xfe00, 0xfe00);
}

TEST(ConversionTest, AllSixteenBitPatternsRoundTrip) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    const float f16 = Fp16ToFloat(bits);
    const float bf16 = Bf16ToFloat(bits);
    if (std::isnan(f16)) {
      EXPECT_TRUE(std::isnan(Fp16ToFloat(FloatToFp16(f16)))) << h;
    } else {
      EXPECT_EQ(FloatToFp16(f16), bits) << h;
    }
    if (std::isnan(bf16)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(bf16)))) << h;
    } else {
      EXPECT_EQ(FloatToBf16(bf16), bits) << h;
    }
  }
}

TEST(ConversionTest, RoundingMatchesTorch) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(TestdataPath("rounding.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<std::vector<float>> input = file->ReadFloat("input");
  ASSERT_TRUE(input.ok()) << input.status();
  const TensorInfo* bf16 = file->Find("bf16");
  const TensorInfo* f16 = file->Find("f16");
  ASSERT_NE(bf16, nullptr);
  ASSERT_NE(f16, nullptr);
  ASSERT_EQ(bf16->numel(), static_cast<int64_t>(input->size()));
  ASSERT_GT(input->size(), 150u);
  for (size_t i = 0; i < input->size(); ++i) {
    const float x = (*input)[i];
    const std::string where =
        "input " + std::to_string(i) + " bits " + std::to_string(Bits(x));
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(x)))) << where;
      EXPECT_TRUE(std::isnan(Fp16ToFloat(FloatToFp16(x)))) << where;
      continue;
    }
    EXPECT_EQ(FloatToBf16(x), Raw16(*file, *bf16, i)) << where;
    EXPECT_EQ(FloatToFp16(x), Raw16(*file, *f16, i)) << where;
  }
}

TEST(SafetensorsFileTest, ListsTensorsAndMetadata) {
  const std::string path = TestdataPath("tensors.safetensors");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(file->tensors().size(), 12u);
  EXPECT_EQ(file->metadata().at("source"), "make_testdata.py");
  EXPECT_EQ(file->metadata().at("format"), "pt");
  const TensorInfo* f16 = file->Find("f16");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->dtype, DType::kF16);
  EXPECT_EQ(f16->shape, (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(f16->numel(), 18);
  EXPECT_EQ(f16->end - f16->begin, 36u);
  EXPECT_EQ(file->Find("scalar")->numel(), 1);
  EXPECT_EQ(file->Find("empty")->numel(), 0);
  EXPECT_EQ(file->Find("nope"), nullptr);
  size_t previous_end = 0;
  for (const TensorInfo& t : file->tensors()) {
    EXPECT_EQ(t.begin, previous_end) << t.name;
    previous_end = t.end;
  }
}

TEST(SafetensorsFileTest, FloatValuesMatchTorch) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(TestdataPath("tensors.safetensors"));
  absl::StatusOr<SafetensorsFile> expected =
      SafetensorsFile::Open(TestdataPath("tensors_expected.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(expected.ok()) << expected.status();
  for (const char* name : {"f32", "f16", "bf16", "f64", "scalar", "empty"}) {
    absl::StatusOr<std::vector<float>> got = file->ReadFloat(name);
    absl::StatusOr<std::vector<float>> want = expected->ReadFloat(name);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(got->size(), want->size()) << name;
    for (size_t i = 0; i < got->size(); ++i) {
      ExpectSameFloat((*got)[i], (*want)[i],
                      std::string(name) + "[" + std::to_string(i) + "]");
    }
  }
}

TEST(SafetensorsFileTest, IntValuesMatchTorch) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(TestdataPath("tensors.safetensors"));
  absl::StatusOr<SafetensorsFile> expected =
      SafetensorsFile::Open(TestdataPath("tensors_expected.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE(expected.ok()) << expected.status();
  for (const char* name : {"i64", "i32", "i16", "i8", "u8", "bool"}) {
    absl::StatusOr<std::vector<int64_t>> got = file->ReadInt(name);
    absl::StatusOr<std::vector<int64_t>> want = expected->ReadInt(name);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(*got, *want) << name;
  }
  EXPECT_EQ(file->ReadInt("i64")->at(3), -(int64_t{1} << 62));
}

TEST(SafetensorsFileTest, ReadErrorsNameFileTensorAndShapes) {
  const std::string path = TestdataPath("tensors.safetensors");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> out(18);
  const int64_t shape[] = {3, 6};
  EXPECT_TRUE(file->ReadFloat("f16", shape, out.data()).ok());

  const int64_t wrong[] = {6, 3};
  absl::Status s = file->ReadFloat("f16", wrong, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ErrorContains(
      s, {path, "'f16'", "expected shape [6, 3]", "found [3, 6]"}));

  s = file->ReadFloat("missing_weight", shape, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ErrorContains(s, {path, "missing_weight"}));

  EXPECT_TRUE(
      ErrorContains(file->ReadFloat("i64").status(), {path, "'i64'", "I64"}));
  EXPECT_TRUE(
      ErrorContains(file->ReadInt("bf16").status(), {path, "'bf16'", "BF16"}));
}

TEST(SafetensorsFileTest, MoveKeepsMapping) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(TestdataPath("tensors.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  SafetensorsFile moved = *std::move(file);
  SafetensorsFile assigned = std::move(moved);
  EXPECT_EQ(assigned.ReadFloat("scalar")->at(0), 4.0f);
}

struct BadFile {
  std::string name;
  std::string bytes;
  std::string_view problem;  // A part of the expected message.
  std::string_view culprit;  // The tensor or field named, or "".
};

TEST(SafetensorsFileTest, RejectsBadFiles) {
  const std::string dir = NewTempDir("bad_files");
  std::string huge(8, '\xff');
  huge += "{}";
  std::string beyond(8, '\0');
  beyond[0] = 100;
  beyond += "{}";
  const std::string f32_entry = R"("dtype":"F32","shape":[2],"data_offsets":)";
  const std::vector<BadFile> cases = {
      {"short3", "abc", "3 bytes, too short", ""},
      {"short7", "abcdefg", "7 bytes, too short", ""},
      {"huge_header", huge, "header length 18446744073709551615", ""},
      {"beyond", beyond, "header length 100 (the first 8 bytes) exceeds", ""},
      {"not_json", RawFile("{\"w\": [1,", 0), "invalid JSON", ""},
      {"not_object", RawFile("[1, 2]", 0), "must be a JSON object", ""},
      {"bad_dtype",
       RawFile(
           R"({"w.weight":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})",
           1),
       "unsupported dtype the string \"F8_E4M3\"", "'w.weight'"},
      {"size_mismatch",
       RawFile(
           R"({"w.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
           8),
       "shape [3] of F32 needs 12 bytes, but data_offsets [0, 8] span 8",
       "'w.weight'"},
      {"overlap",
       RawFile(
           "{\"a\":{" + f32_entry + "[0,8]},\"b\":{" + f32_entry + "[4,12]}}",
           12),
       "overlap tensor 'a', which ends at byte 8", "'b'"},
      {"gap",
       RawFile(
           "{\"a\":{" + f32_entry + "[0,8]},\"b\":{" + f32_entry + "[12,20]}}",
           20),
       "leave a gap after tensor 'a'", "'b'"},
      {"trailing", RawFile("{\"a\":{" + f32_entry + "[0,8]}}", 12),
       "the tensors cover 8 bytes of the data section, but it holds 12", ""},
      {"past_end", RawFile("{\"a\":{" + f32_entry + "[0,8]}}", 4),
       "is the file truncated?", "'a'"},
      {"bad_metadata", RawFile(R"({"__metadata__":{"format":1}})", 0),
       "must be a string", "__metadata__ entry 'format'"},
      {"bad_shape",
       RawFile(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 0),
       "non-negative integers", "'w'"},
      // The format pads with spaces; the reference reader refuses NULs.
      {"nul_padding",
       RawFile("{\"a\":{" + f32_entry + "[0,8]}}" + std::string(5, '\0'), 8),
       "(header):1:55: NUL byte", ""},
  };
  for (const BadFile& c : cases) {
    const std::string path = dir + "/" + c.name + ".safetensors";
    WriteBytes(path, c.bytes);
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    EXPECT_TRUE(ErrorContains(file.status(), {path, c.problem, c.culprit}))
        << c.name;
  }
}

TEST(SafetensorsFileTest, RejectsTruncatedFile) {
  const std::string dir = NewTempDir("truncated");
  const std::string original =
      ReadBytes(TestdataPath("gpt2/model.safetensors"));
  ASSERT_GT(original.size(), 100u);
  const std::string path = dir + "/model.safetensors";
  WriteBytes(path, original.substr(0, original.size() - 100));
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  // The last tensor in the file is the token embedding.
  EXPECT_TRUE(ErrorContains(file.status(),
                            {path, "'transformer.wte.weight'", "truncated"}));
}

TEST(SafetensorsFileTest, MissingFileIsNotFound) {
  const std::string path = TestdataPath("no_such.safetensors");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ErrorContains(file.status(), {path}));
}

std::vector<float> SpecialValues() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -3.5f,
                          1e-40f,
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          FromBits(0x7fc00001),
                          FromBits(0xff812345)};
  for (int i = 0; i < 50; ++i) v.push_back(std::sin(i * 1.7f) * 100.0f);
  return v;
}

TEST(WriteSafetensorsTest, F32RoundTripIsBitExact) {
  const std::string dir = NewTempDir("write_f32");
  const std::string path = dir + "/out.safetensors";
  const std::vector<float> a = SpecialValues();
  const std::vector<float> b = {7.0f};
  const std::vector<TensorToWrite> tensors = {
      {"z.first", {2, 30}, a.data()},
      {"a.second", {}, b.data()},
      {"empty", {0, 4}, nullptr},
  };
  ASSERT_TRUE(WriteSafetensors(path, tensors, DType::kF32,
                               {{"format", "pt"}, {"step", "3"}})
                  .ok());
  EXPECT_EQ(CountEntriesContaining(dir, ".tmp."), 0);

  const std::string bytes = ReadBytes(path);
  uint64_t header_size;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);
  EXPECT_EQ(bytes.substr(8, 30), R"({"__metadata__":{"format":"pt")");

  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("step"), "3");
  // Laid out in the given order.
  ASSERT_EQ(file->tensors().size(), 3u);
  EXPECT_EQ(file->tensors()[0].name, "z.first");
  EXPECT_EQ(file->tensors()[1].name, "a.second");
  EXPECT_EQ(file->tensors()[1].shape, std::vector<int64_t>{});
  absl::StatusOr<std::vector<float>> read = file->ReadFloat("z.first");
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(Bits((*read)[i]), Bits(a[i])) << i;
  }
}

TEST(WriteSafetensorsTest, MatchesTransformersFileByteForByte) {
  const std::string original_path = TestdataPath("gpt2/model.safetensors");
  absl::StatusOr<SafetensorsFile> original =
      SafetensorsFile::Open(original_path);
  ASSERT_TRUE(original.ok()) << original.status();
  std::vector<std::vector<float>> values;
  for (const TensorInfo& t : original->tensors()) {
    values.push_back(*original->ReadFloat(t.name));
  }
  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < values.size(); ++i) {
    const TensorInfo& t = original->tensors()[i];
    tensors.push_back({t.name, t.shape, values[i].data()});
  }
  const std::string path = NewTempDir("byte_for_byte") + "/model.safetensors";
  ASSERT_TRUE(
      WriteSafetensors(path, tensors, DType::kF32, {{"format", "pt"}}).ok());
  EXPECT_EQ(ReadBytes(path), ReadBytes(original_path));
}

TEST(WriteSafetensorsTest, NarrowingMatchesTorch) {
  absl::StatusOr<SafetensorsFile> rounding =
      SafetensorsFile::Open(TestdataPath("rounding.safetensors"));
  ASSERT_TRUE(rounding.ok()) << rounding.status();
  const std::vector<float> input = *rounding->ReadFloat("input");
  const std::string dir = NewTempDir("write_narrow");
  for (const auto& [dtype, name] :
       {std::pair<DType, const char*>{DType::kBF16, "bf16"},
        {DType::kF16, "f16"}}) {
    const std::string path = dir + "/" + name + ".safetensors";
    ASSERT_TRUE(WriteSafetensors(
                    path,
                    {{"x", {static_cast<int64_t>(input.size())}, input.data()}},
                    dtype, {})
                    .ok());
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_TRUE(file->metadata().empty());
    const TensorInfo* written = file->Find("x");
    const TensorInfo* torch = rounding->Find(name);
    ASSERT_EQ(written->dtype, dtype);
    for (size_t i = 0; i < input.size(); ++i) {
      if (std::isnan(input[i])) continue;
      EXPECT_EQ(Raw16(*file, *written, i), Raw16(*rounding, *torch, i))
          << name << " input " << i;
    }
  }
}

TEST(WriteSafetensorsTest, ErrorsLeaveNothingBehind) {
  const std::string dir = NewTempDir("write_errors");
  const std::string path = dir + "/out.safetensors";
  const float one = 1.0f;
  absl::Status s = WriteSafetensors(path, {{"w", {1}, &one}}, DType::kI64, {});
  EXPECT_TRUE(ErrorContains(s, {path, "I64"}));
  s = WriteSafetensors(path, {{"w", {1}, &one}, {"w", {1}, &one}}, DType::kF32,
                       {});
  EXPECT_TRUE(ErrorContains(s, {path, "'w'", "used twice"}));
  s = WriteSafetensors(path, {{"w", {-1}, &one}}, DType::kF32, {});
  EXPECT_TRUE(ErrorContains(s, {path, "'w'", "[-1]"}));
  s = WriteSafetensors(dir + "/no_dir/out.safetensors", {{"w", {1}, &one}},
                       DType::kF32, {});
  EXPECT_TRUE(ErrorContains(s, {"no_dir/out.safetensors.tmp."}));
  EXPECT_FALSE(Exists(path));
  EXPECT_EQ(CountEntriesContaining(dir, ".tmp."), 0);
}

TEST(WriteSafetensorsTest, ReplacesExistingFile) {
  const std::string path = NewTempDir("replace") + "/out.safetensors";
  const float one = 1.0f;
  const float two = 2.0f;
  ASSERT_TRUE(WriteSafetensors(path, {{"w", {1}, &one}}, DType::kF32, {}).ok());
  ASSERT_TRUE(
      WriteSafetensors(path, {{"v", {1}, &two}}, DType::kBF16, {}).ok());
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->Find("w"), nullptr);
  EXPECT_EQ(file->ReadFloat("v")->at(0), 2.0f);
}

}  // namespace
}  // namespace prefopt::io
