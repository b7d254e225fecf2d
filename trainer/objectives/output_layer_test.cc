// OutputChunkRows: the output layer's chunk when output_chunk_tokens is 0
// (docs/objectives.md §7), and the cap at the batch's rows.
#include "trainer/objectives/output_layer.h"

#include "gtest/gtest.h"

namespace prefopt::objectives {
namespace {

TEST(OutputChunkRows, Takes256RowsWhereTheyFit64MiB) {
  EXPECT_EQ(OutputChunkRows(0, 101, 4096), 256);
  EXPECT_EQ(OutputChunkRows(0, 32000, 4096), 256);  // Llama 2: 524 fit
  EXPECT_EQ(OutputChunkRows(0, 50257, 4096), 256);  // GPT-2: 333 fit
}

TEST(OutputChunkRows, ElseAsManyAsFitInMultiplesOf32) {
  // 64 MiB / (V * 4 bytes), rounded down to a multiple of 32.
  EXPECT_EQ(OutputChunkRows(0, 128256, 4096), 128);  // Llama 3: 130 fit
  EXPECT_EQ(OutputChunkRows(0, 151936, 4096), 96);   // Qwen2: 110 fit
  EXPECT_EQ(OutputChunkRows(0, 1000000, 4096), 32);  // 16 fit
}

TEST(OutputChunkRows, TakesTheConfiguredRows) {
  EXPECT_EQ(OutputChunkRows(64, 50257, 4096), 64);
  EXPECT_EQ(OutputChunkRows(7, 101, 4096), 7);
}

TEST(OutputChunkRows, NeverExceedsTheBatchRows) {
  EXPECT_EQ(OutputChunkRows(0, 50257, 100), 100);
  EXPECT_EQ(OutputChunkRows(512, 50257, 300), 300);
  EXPECT_EQ(OutputChunkRows(0, 50257, 0), 1);
}

}  // namespace
}  // namespace prefopt::objectives
