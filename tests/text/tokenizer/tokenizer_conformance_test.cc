// Conformance with Hugging Face: every corpus entry is encoded (with and without
// special tokens) and decoded (with and without skip_special_tokens) by each fixture
// tokenizer, and compared id for id and byte for byte with the fixtures written by
// tools/reference/make_tokenizer_fixtures.py. The streaming detokenizer must produce
// the same text as Decode for every id sequence.
#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "text/tokenizer/streaming_detokenizer.h"
#include "text/tokenizer/tokenizer.h"
#include "tests/text/tokenizer/tokenizer_test_util.h"

namespace deepshard {
namespace {

using testing::CorpusInputs;
using testing::IdsOf;
using testing::IdsString;
using testing::LoadedTokenizer;
using testing::ParseJsonFile;
using testing::Printable;
using testing::TokenizerDataDir;

class ConformanceTest : public ::testing::TestWithParam<std::string> {
 protected:
  const Tokenizer& tok() { return LoadedTokenizer(GetParam()); }
  boost::json::value fixture() {
    return ParseJsonFile(TokenizerDataDir() + "/" + GetParam() + "/fixtures.json");
  }
};

std::string StreamDecode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  StreamingDetokenizer stream(tok, skip);
  std::string out;
  for (int32_t id : ids) out += stream.Add(id);
  out += stream.Flush();
  return out;
}

TEST_P(ConformanceTest, VocabSize) {
  boost::json::value f = fixture();
  EXPECT_EQ(tok().vocab_size(), f.at("vocab_size").as_int64());
}

TEST_P(ConformanceTest, EncodeMatchesReference) {
  boost::json::value f = fixture();
  const std::vector<std::string> inputs = CorpusInputs();
  const auto& cases = f.at("encode").as_array();
  ASSERT_EQ(cases.size(), inputs.size());
  int compared = 0, mismatches = 0;
  for (const auto& c : cases) {
    const auto& o = c.as_object();
    const std::string& input = inputs[static_cast<size_t>(o.at("i").as_int64())];
    for (bool special : {true, false}) {
      std::vector<int32_t> want = IdsOf(o.at(special ? "ids" : "ids_plain"));
      std::vector<int32_t> got = tok().Encode(input, special);
      ++compared;
      if (got != want) {
        if (++mismatches <= 5) {
          ADD_FAILURE() << GetParam() << " add_special_tokens=" << special << " input \"" << Printable(input)
                        << "\"\n  want " << IdsString(want) << "\n  got  " << IdsString(got);
        }
      }
    }
  }
  std::printf("[%s] encode: %d comparisons (%zu strings x 2), %d mismatches\n", GetParam().c_str(), compared,
              inputs.size(), mismatches);
  EXPECT_EQ(mismatches, 0);
  EXPECT_GE(inputs.size(), 500u);
}

TEST_P(ConformanceTest, DecodeMatchesReference) {
  boost::json::value f = fixture();
  int compared = 0, mismatches = 0;
  for (const char* section : {"encode", "decode"}) {
    for (const auto& c : f.at(section).as_array()) {
      const auto& o = c.as_object();
      std::vector<int32_t> ids = IdsOf(o.at("ids"));
      for (bool skip : {false, true}) {
        std::string want(o.at(skip ? "text_skip" : "text").as_string());
        std::string got = tok().Decode(ids, skip);
        ++compared;
        if (got != want && ++mismatches <= 5) {
          ADD_FAILURE() << GetParam() << " " << section << " skip_special_tokens=" << skip << " ids "
                        << IdsString(ids) << "\n  want \"" << Printable(want) << "\"\n  got  \"" << Printable(got)
                        << "\"";
        }
      }
    }
  }
  std::printf("[%s] decode: %d comparisons, %d mismatches\n", GetParam().c_str(), compared, mismatches);
  EXPECT_EQ(mismatches, 0);
}

TEST_P(ConformanceTest, StreamingMatchesDecode) {
  boost::json::value f = fixture();
  int compared = 0, mismatches = 0;
  for (const char* section : {"encode", "decode"}) {
    for (const auto& c : f.at(section).as_array()) {
      const auto& o = c.as_object();
      std::vector<int32_t> ids = IdsOf(o.at("ids"));
      for (bool skip : {false, true}) {
        std::string want(o.at(skip ? "text_skip" : "text").as_string());
        std::string got = StreamDecode(tok(), ids, skip);
        ++compared;
        if (got != want && ++mismatches <= 5) {
          ADD_FAILURE() << GetParam() << " streaming " << section << " skip_special_tokens=" << skip << " ids "
                        << IdsString(ids) << "\n  want \"" << Printable(want) << "\"\n  got  \"" << Printable(got)
                        << "\"";
        }
      }
    }
  }
  std::printf("[%s] streaming: %d comparisons, %d mismatches\n", GetParam().c_str(), compared, mismatches);
  EXPECT_EQ(mismatches, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ConformanceTest, ::testing::ValuesIn(testing::FixtureTokenizers()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name;
                           for (char c : info.param) name.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
                           return name;
                         });

}  // namespace
}  // namespace deepshard
