// Regressions found by the libFuzzer targets (tests/fuzz/, scripts/fuzz.sh).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "text/tokenizer/tokenizer.h"

namespace deepshard {
namespace {

std::string WithPostProcessor(const std::string& post) {
  return R"({"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
             "post_processor": )" + post + R"(, "decoder": null,
             "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3}, "merges": ["a b"]}})";
}

std::string Template(int id) {
  return R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
             {"Sequence": {"id": "A", "type_id": 0}}], "pair": [],
             "special_tokens": {"<s>": {"id": "<s>", "ids": [)" + std::to_string(id) + R"(], "tokens": ["<s>"]}}})";
}

// tokenizer_fuzz: a TemplateProcessing special token id beyond the vocabulary made
// Encode return an id >= vocab_size() (a later embedding or bitset lookup out of range).
TEST(TokenizerFuzzRegression, PostProcessorIdOutsideVocabularyIsRejected) {
  auto bad = Tokenizer::FromJson(WithPostProcessor(Template(300)), "", "dir/tokenizer.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("dir/tokenizer.json: post_processor adds token id 300, "
                                                     "outside the vocabulary [0, 4)"),
            std::string::npos)
      << bad.status();
  auto in_seq = Tokenizer::FromJson(
      WithPostProcessor(R"({"type": "Sequence", "processors": [)" + Template(4) + "]}"), "");
  EXPECT_FALSE(in_seq.ok());

  auto good = Tokenizer::FromJson(WithPostProcessor(Template(3)), "");
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ((*good)->Encode("ab", true), (std::vector<int32_t>{3, 2}));
}

}  // namespace
}  // namespace deepshard
