// Tokenizer fuzzing (seeded, deterministic): random bytes to Encode, random ids to Decode
// and to the streaming detokenizer, and randomly damaged tokenizer.json files to the
// loader. Nothing may crash; ids stay in range; streaming equals Decode.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "text/tokenizer/streaming_detokenizer.h"
#include "text/tokenizer/tokenizer.h"
#include "text/tokenizer/unicode.h"
#include "tests/text/tokenizer/tokenizer_test_util.h"

namespace deepshard {
namespace {

using testing::LoadedTokenizer;

// Random input: raw bytes, random code points, or corpus text with damage.
std::string RandomInput(std::mt19937& rng, const std::vector<std::string>& corpus) {
  std::string s;
  const int kind = static_cast<int>(rng() % 4);
  const size_t len = rng() % (rng() % 8 == 0 ? 2000 : 80);
  if (kind == 0) {
    for (size_t i = 0; i < len; ++i) s.push_back(static_cast<char>(rng() % 256));
  } else if (kind == 1) {
    for (size_t i = 0; i < len; ++i) {
      uint32_t cp;
      switch (rng() % 4) {
        case 0: cp = rng() % 0x80; break;
        case 1: cp = rng() % 0x800; break;
        case 2: cp = rng() % 0x10000; break;
        default: cp = rng() % 0x110000; break;
      }
      if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;
      tokenizer_internal::AppendUtf8(cp, &s);
    }
  } else {
    // Corpus pieces glued together, with a few bytes overwritten.
    const int pieces = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < pieces; ++i) s += corpus[rng() % corpus.size()];
    if (kind == 3 && !s.empty()) {
      for (int i = 0; i < 3; ++i) s[rng() % s.size()] = static_cast<char>(rng() % 256);
    }
  }
  return s;
}

class FuzzTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FuzzTest, RandomBytesToEncode) {
  const Tokenizer& tok = LoadedTokenizer(GetParam());
  const std::vector<std::string> corpus = testing::CorpusInputs();
  std::mt19937 rng(1234);
  for (int k = 0; k < 1500; ++k) {
    const std::string input = RandomInput(rng, corpus);
    for (bool special : {false, true}) {
      std::vector<int32_t> ids = tok.Encode(input, special);
      for (int32_t id : ids) {
        ASSERT_TRUE(id >= 0 && id < tok.vocab_size()) << id << " from " << testing::Printable(input);
      }
      // Decoding what was encoded is always valid UTF-8.
      ASSERT_TRUE(tokenizer_internal::IsValidUtf8(tok.Decode(ids, false)));
    }
  }
}

TEST_P(FuzzTest, RandomIdsToDecodeAndStream) {
  const Tokenizer& tok = LoadedTokenizer(GetParam());
  std::mt19937 rng(99);
  const int32_t v = static_cast<int32_t>(tok.vocab_size());
  for (int k = 0; k < 1500; ++k) {
    std::vector<int32_t> ids(rng() % 64);
    for (int32_t& id : ids) {
      switch (rng() % 8) {
        case 0: id = static_cast<int32_t>(rng() % 300); break;  // byte tokens in byte-level vocabularies
        case 1: id = v - 1 - static_cast<int32_t>(rng() % 20); break;  // added tokens
        case 2: id = static_cast<int32_t>(rng()); break;  // anything, negative included
        case 3: id = v + static_cast<int32_t>(rng() % 10); break;
        default: id = static_cast<int32_t>(rng() % static_cast<uint32_t>(v)); break;
      }
    }
    for (bool skip : {false, true}) {
      const std::string text = tok.Decode(ids, skip);
      ASSERT_TRUE(tokenizer_internal::IsValidUtf8(text));
      StreamingDetokenizer stream(tok, skip);
      std::string streamed;
      for (int32_t id : ids) streamed += stream.Add(id);
      streamed += stream.Flush();
      ASSERT_EQ(streamed, text) << "ids " << testing::IdsString(ids);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FuzzTest, ::testing::ValuesIn(testing::FixtureTokenizers()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name;
                           for (char c : info.param) name.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
                           return name;
                         });

// A small tokenizer.json that uses every supported component.
constexpr char kAllComponents[] = R"({
  "version": "1.0",
  "added_tokens": [
    {"id": 6, "content": "<s>", "single_word": false, "lstrip": true, "rstrip": true, "normalized": false, "special": true},
    {"id": 7, "content": "ab", "single_word": true, "lstrip": false, "rstrip": false, "normalized": true, "special": false}],
  "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "NFKC"}, {"type": "Lowercase"},
    {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Prepend", "prepend": "_"},
    {"type": "Strip", "strip_left": true, "strip_right": true}, {"type": "StripAccents"}, {"type": "NFD"}]},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"String": "_"}, "behavior": "MergedWithNext", "invert": false},
    {"type": "Split", "pattern": {"Regex": "\\w+|x*"}, "behavior": "Contiguous", "invert": true},
    {"type": "Digits", "individual_digits": true},
    {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}]},
  "post_processor": {"type": "Sequence", "processors": [{"type": "ByteLevel", "add_prefix_space": true,
    "trim_offsets": false, "use_regex": true}, {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [6], "tokens": ["<s>"]}}}]},
  "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "_"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "ByteLevel"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
  "model": {"type": "BPE", "dropout": null, "unk_token": "u", "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
    "vocab": {"a": 0, "b": 1, "ab": 2, "u": 3, "<0x41>": 4, "Ġ": 5, "Ġa": 8}, "merges": ["a b", ["Ġ", "a"]]}
})";

TEST(FuzzLoader, DamagedTokenizerJsonNeverCrashes) {
  {
    auto tok = Tokenizer::FromJson(kAllComponents, "");
    ASSERT_TRUE(tok.ok()) << tok.status();
  }
  std::mt19937 rng(7);
  const std::string base = kAllComponents;
  const std::string junk[] = {"null", "1", "-3", "\"x\"", "[]", "{}", "true", "[[\"a\"]]", "{\"type\": \"BPE\"}"};
  int loaded = 0, rejected = 0;
  for (int k = 0; k < 10000; ++k) {
    std::string s = base;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % s.size();
      switch (rng() % 4) {
        case 0: s.erase(pos, 1 + rng() % 8); break;
        case 1: s[pos] = "{}[]\":,0aZ \\"[rng() % 13]; break;
        case 2: {
          // Replace a JSON value (after a ':') by a value of another type.
          size_t colon = s.find(':', pos);
          if (colon == std::string::npos) break;
          size_t end = s.find_first_of(",}]", colon + 1);
          if (end == std::string::npos) break;
          s.replace(colon + 1, end - colon - 1, junk[rng() % std::size(junk)]);
          break;
        }
        default: s.insert(pos, junk[rng() % std::size(junk)]); break;
      }
    }
    auto tok = Tokenizer::FromJson(s, k % 5 == 0 ? "{\"add_bos_token\": true, \"bos_token\": \"<s>\"}" : "");
    if (!tok.ok()) {
      ++rejected;
      ASSERT_FALSE(tok.status().message().empty());
      continue;
    }
    ++loaded;
    // Whatever loaded must encode and decode without crashing.
    std::vector<int32_t> ids = (*tok)->Encode("aB ab <s> 12\xFF x", true);
    (*tok)->Decode(ids, false);
    (*tok)->Decode(std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, -1}, true);
  }
  std::printf("damaged tokenizer.json: %d loaded, %d rejected with an error\n", loaded, rejected);
}

}  // namespace
}  // namespace deepshard
