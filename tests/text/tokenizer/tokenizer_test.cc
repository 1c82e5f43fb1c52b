// Tokenizer unit tests: the public API on the real DeepSeek-V3 files, tokenizer_config.json
// handling, error messages for malformed and unsupported files, the regex translation
// (every code point against Oniguruma), UTF-8 repair, BPE merge strategies and the
// streaming detokenizer's edge cases.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "text/tokenizer/bpe.h"
#include "text/tokenizer/json_node.h"
#include "text/tokenizer/pre_tokenizer.h"
#include "text/tokenizer/regex.h"
#include "text/tokenizer/streaming_detokenizer.h"
#include "text/tokenizer/tokenizer.h"
#include "text/tokenizer/unicode.h"
#include "tests/text/tokenizer/tokenizer_test_util.h"

namespace deepshard {
namespace {

namespace ti = tokenizer_internal;
using testing::LoadedTokenizer;
using testing::ParseJsonFile;
using testing::TokenizerDataDir;

// EXPECT_TRUE(Contains(text, part)) prints both on failure.
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

std::string Lossy(std::string_view s) {
  std::string out;
  ti::AppendUtf8Lossy(s, &out);
  return out;
}

// ---------------------------------------------------------------------------------
// Public API on DeepSeek-V3

TEST(TokenizerApi, DeepSeekV3SpecialTokensAndVocab) {
  const Tokenizer& tok = LoadedTokenizer("deepseek-v3");
  EXPECT_EQ(tok.vocab_size(), 128815);
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.eos_id(), 1);
  EXPECT_EQ(tok.bos_token(), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(tok.eos_token(), "<｜end▁of▁sentence｜>");
  EXPECT_TRUE(tok.add_bos_token());
  EXPECT_FALSE(tok.add_eos_token());
  EXPECT_EQ(tok.TokenToId("<｜User｜>"), 128803);
  EXPECT_EQ(tok.TokenToId("Hello"), 19923);
  EXPECT_EQ(tok.TokenToId("no such token"), std::nullopt);
  EXPECT_EQ(tok.IdToToken(19923), "Hello");
  EXPECT_EQ(tok.IdToToken(2058), "Ġworld");
  EXPECT_EQ(tok.IdToToken(128814), "<｜tool▁sep｜>");
  EXPECT_EQ(tok.IdToToken(-1), "");
  EXPECT_EQ(tok.IdToToken(1 << 30), "");
  EXPECT_TRUE(tok.IsSpecialId(0));
  EXPECT_FALSE(tok.IsSpecialId(128803));  // <｜User｜> is an added token, not special
  EXPECT_FALSE(tok.IsSpecialId(19923));
  EXPECT_TRUE(Contains(tok.chat_template(), "{% if not add_generation_prompt is defined %}"));
  EXPECT_EQ(tok.chat_template_named("tool_use"), std::nullopt);
}

TEST(TokenizerApi, DeepSeekV3EncodeDecode) {
  const Tokenizer& tok = LoadedTokenizer("deepseek-v3");
  EXPECT_EQ(tok.Encode("Hello world", true), (std::vector<int32_t>{0, 19923, 2058}));
  EXPECT_EQ(tok.Encode("Hello world", false), (std::vector<int32_t>{19923, 2058}));
  EXPECT_EQ(tok.Encode("", true), (std::vector<int32_t>{0}));
  EXPECT_TRUE(tok.Encode("", false).empty());
  const std::vector<int32_t> ids = {0, 19923, 2058, 1};
  EXPECT_EQ(tok.Decode(ids, false), "<｜begin▁of▁sentence｜>Hello world<｜end▁of▁sentence｜>");
  EXPECT_EQ(tok.Decode(ids, true), "Hello world");
  // Ids without a token are skipped, as Hugging Face does.
  const std::vector<int32_t> odd = {-7, 19923, 128815, 1 << 30, 2058};
  EXPECT_EQ(tok.Decode(odd, false), "Hello world");
  // Special-token text is recognised in the input.
  EXPECT_EQ(tok.Encode("<｜User｜>Hi<｜Assistant｜>", false).front(), 128803);
}

TEST(TokenizerApi, DeepSeekV3ByteLevelRoundTrip) {
  // Without a normalizer, byte-level BPE decodes back to the (repaired) input.
  const Tokenizer& tok = LoadedTokenizer("deepseek-v3");
  for (const std::string& s : testing::CorpusInputs()) {
    EXPECT_EQ(tok.Decode(tok.Encode(s, false), false), Lossy(s)) << testing::Printable(s);
  }
}

TEST(TokenizerApi, ConcurrentEncode) {
  // Several threads share one tokenizer (and its word cache) and get the same ids.
  const Tokenizer& tok = LoadedTokenizer("synth-bytelevel");
  const std::vector<std::string> inputs = testing::CorpusInputs();
  std::vector<std::vector<int32_t>> want;
  for (const auto& s : inputs) want.push_back(tok.Encode(s, true));
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < inputs.size(); ++i) {
        const size_t k = (i * 7 + static_cast<size_t>(t) * 131) % inputs.size();
        if (tok.Encode(inputs[k], true) != want[k]) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(TokenizerApi, ConfigOfSynthSentencePiece) {
  // LlamaTokenizerFast with add_bos_token and add_eos_token, a pad token outside the
  // vocabulary (becomes a new added token), and a list-form chat_template.
  const Tokenizer& tok = LoadedTokenizer("synth-sentencepiece");
  EXPECT_TRUE(tok.add_bos_token());
  EXPECT_TRUE(tok.add_eos_token());
  EXPECT_EQ(tok.bos_token(), "<s>");
  EXPECT_EQ(tok.eos_token(), "</s>");
  std::vector<int32_t> ids = tok.Encode("Hello", true);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), tok.bos_id());
  EXPECT_EQ(ids.back(), tok.eos_id());
  EXPECT_TRUE(tok.TokenToId("<pad>").has_value());
  EXPECT_TRUE(tok.IsSpecialId(*tok.TokenToId("<pad>")));
  EXPECT_TRUE(tok.IsSpecialId(*tok.TokenToId("<extra_id>")));
  EXPECT_EQ(tok.chat_template(), "{% for m in messages %}{{ m['content'] }}{% endfor %}");
  EXPECT_EQ(tok.chat_template_named("tool_use"), "{{ tools | length }}");
}

// ---------------------------------------------------------------------------------
// Errors: each names the file and the JSON path, and nothing crashes.

// A small but complete tokenizer.json; `{MODEL}` etc. are replaced per test.
std::string MiniTokenizerJson(const std::string& pre = "null", const std::string& normalizer = "null",
                              const std::string& decoder = "null", const std::string& post = "null",
                              const std::string& model_extra = "", const std::string& merges = R"(["a b"])",
                              const std::string& added = "[]") {
  return R"({"version": "1.0", "added_tokens": )" + added + R"(, "normalizer": )" + normalizer +
         R"(, "pre_tokenizer": )" + pre + R"(, "post_processor": )" + post + R"(, "decoder": )" + decoder +
         R"(, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3})" + model_extra +
         R"(, "merges": )" + merges + "}}";
}

std::string LoadError(const std::string& tokenizer_json, const std::string& config_json = "") {
  auto tok = Tokenizer::FromJson(tokenizer_json, config_json, "dir/tokenizer.json", "dir/tokenizer_config.json");
  if (tok.ok()) return "OK";
  return std::string(tok.status().message());
}

TEST(TokenizerErrors, MiniTokenizerLoads) {
  auto tok = Tokenizer::FromJson(MiniTokenizerJson(), "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("ab", false), (std::vector<int32_t>{2}));
  EXPECT_EQ((*tok)->Encode("aba", false), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ((*tok)->vocab_size(), 4);
}

TEST(TokenizerErrors, MalformedJson) {
  EXPECT_TRUE(Contains(LoadError("{\"model\": "), "dir/tokenizer.json: invalid JSON at line 1, column"));
  EXPECT_TRUE(Contains(LoadError("[1, 2]"), "dir/tokenizer.json: (top level): expected an object, got an array"));
  EXPECT_TRUE(Contains(LoadError("{}"), "dir/tokenizer.json: model: missing (expected an object)"));
  EXPECT_TRUE(Contains(LoadError(R"({"version": "2.0", "model": {}})"), "version: unknown tokenizer version \"2.0\""));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(), "{\"bos_token\": "), "dir/tokenizer_config.json: invalid JSON at line 1"));
}

TEST(TokenizerErrors, Model) {
  EXPECT_TRUE(Contains(LoadError(R"({"model": {"type": "Unigram", "vocab": []}})"), "dir/tokenizer.json: model.type: unsupported model \"Unigram\""));
  EXPECT_TRUE(Contains(LoadError(R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})"), "dir/tokenizer.json: model.vocab.a: expected an integer id, got a string"));
  EXPECT_TRUE(Contains(LoadError(R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})"), "model.vocab.a: token id -1 is out of range"));
  EXPECT_TRUE(Contains(LoadError(R"({"model": {"type": "BPE", "vocab": {"a": 0}}})"), "model.merges: missing (expected an array)"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", "null", "null", "", R"(["a b", 7])")), "model.merges[1]: a merge must be a string \"a b\" (one space) or a pair"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", "null", "null", "", R"(["a b c"])")), "model.merges[0]: a merge must be"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", "null", "null", "", R"([["a", "x"]])")), "model.merges[0]: merge token \"x\" is not in the vocabulary"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", "null", "null", "", R"(["b a"])")), "model.merges[0]: merged token \"ba\" is not in the vocabulary"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", "null", "null", R"(, "dropout": 0.1)")), "model.dropout: BPE dropout"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", "null", "null", R"(, "unk_token": "<unk>")")), "model.unk_token: unk_token \"<unk>\" is not in the vocabulary"));
  // Merges as pairs are accepted as well as strings.
  EXPECT_EQ(LoadError(MiniTokenizerJson("null", "null", "null", "null", "", R"([["a", "b"]])")), "OK");
}

TEST(TokenizerErrors, UnsupportedComponents) {
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(
                  R"({"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "Whitespace"}]})")), "dir/tokenizer.json: pre_tokenizer.pretokenizers[1].type: unsupported pre-tokenizer "
                        "\"Whitespace\""));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", R"({"type": "BertNormalizer"})")), "normalizer.type: unsupported normalizer \"BertNormalizer\""));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", R"({"type": "Metaspace"})")), "decoder.type: unsupported decoder \"Metaspace\""));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", "null", R"({"type": "Magic"})")), "post_processor.type: unsupported post-processor \"Magic\""));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(
                  R"({"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways", "invert": false})")), "pre_tokenizer.behavior: unknown split behavior \"Sideways\""));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(
                  R"({"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated", "invert": false})")), "pre_tokenizer.pattern.Regex: regex \"(a\""));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(
                  R"({"type": "Split", "pattern": {"Glob": "*"}, "behavior": "Isolated", "invert": false})")), "pre_tokenizer.pattern: expected {\"String\": ...} or {\"Regex\": ...}"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", R"({"type": "Sequence", "normalizers": [{"type": 5}]})")), "normalizer.normalizers[0].type: expected a string, got an integer"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", R"({"type": "Strip", "content": "ab"})")), "decoder.content: must be exactly one character"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(
                  "null", "null", "null",
                  R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}],
                      "pair": [], "special_tokens": {}})")), "post_processor.single[0].SpecialToken.id: special token \"<s>\" is not in special_tokens"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson("null", "null", "null", "null", "", R"(["a b"])", R"([{"id": 4}])")), "added_tokens[0].content: missing (expected a string)"));
}

TEST(TokenizerErrors, Config) {
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(), R"({"bos_token": 5})"), "dir/tokenizer_config.json: bos_token: expected an object, got an integer"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(), R"({"bos_token": {"lstrip": false}})"), "dir/tokenizer_config.json: bos_token.content: missing"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(), R"({"add_bos_token": "yes"})"), "dir/tokenizer_config.json: add_bos_token: expected a boolean, got a string"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(), R"({"add_bos_token": true})"), "add_bos_token: add_bos_token is true but there is no bos_token"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(), R"({"chat_template": 3})"), "dir/tokenizer_config.json: chat_template: expected an array, got an integer"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(), R"({"chat_template": [{"name": "default"}]})"), "chat_template[0].template: missing (expected a string)"));
  EXPECT_TRUE(Contains(LoadError(MiniTokenizerJson(), R"({"added_tokens_decoder": {"x": {"content": "a"}}})"), "added_tokens_decoder.x: key must be an integer id"));
}

TEST(TokenizerErrors, MissingFiles) {
  auto tok = Tokenizer::FromDirectory("/nonexistent/model");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(std::string(tok.status().message()), "/nonexistent/model/tokenizer.json: cannot open"));
}

TEST(TokenizerConfig, BosEosFromConfig) {
  const std::string tj = MiniTokenizerJson("null", "null", "null", "null", "", R"(["a b"])",
                                           R"([{"id": 3, "content": "<s>", "special": true, "normalized": false}])");
  // add_bos_token / add_eos_token from the config, bos as a string, eos as an object.
  auto tok = Tokenizer::FromJson(
      tj, R"({"add_bos_token": true, "add_eos_token": true, "bos_token": "<s>", "eos_token": {"content": "</s>"}})");
  ASSERT_TRUE(tok.ok()) << tok.status();
  // "</s>" is not in the vocabulary: it becomes a new added special token with id 4.
  EXPECT_EQ((*tok)->eos_id(), 4);
  EXPECT_EQ((*tok)->vocab_size(), 5);
  EXPECT_EQ((*tok)->Encode("ab", true), (std::vector<int32_t>{3, 2, 4}));
  EXPECT_EQ((*tok)->Encode("ab</s>", false), (std::vector<int32_t>{2, 4}));
  EXPECT_EQ((*tok)->Decode(std::vector<int32_t>{3, 2, 4}, true), "ab");
  // LlamaTokenizerFast defaults to add_bos_token=true, and to eos "</s>" and unk "<unk>",
  // which become added tokens 4 and 5 (transformers 4.57 gives the same: encode("ab") =
  // [3, 2], encode("ab</s><unk>", add_special_tokens=False) = [2, 4, 5], len = 6).
  auto llama = Tokenizer::FromJson(tj, R"({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>"})");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ((*llama)->Encode("ab", true), (std::vector<int32_t>{3, 2}));
  EXPECT_EQ((*llama)->Encode("ab</s><unk>", false), (std::vector<int32_t>{2, 4, 5}));
  EXPECT_EQ((*llama)->vocab_size(), 6);
  // PreTrainedTokenizerFast ignores add_bos_token / add_eos_token (transformers: [2]).
  auto plain = Tokenizer::FromJson(tj, R"({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                          "eos_token": "</s>", "add_bos_token": true, "add_eos_token": true})");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*plain)->Encode("ab", true), (std::vector<int32_t>{2}));
  EXPECT_FALSE((*plain)->add_bos_token());
  EXPECT_EQ((*plain)->vocab_size(), 5);
}

// ---------------------------------------------------------------------------------
// Regex translation

TEST(TokenizerRegex, Translation) {
  EXPECT_EQ(*ti::TranslateOnigurumaPattern("(?m)a.b"), "(?s)a.b");
  EXPECT_EQ(*ti::TranslateOnigurumaPattern("(?i:ab)"), "(?i:ab)");
  EXPECT_EQ(*ti::TranslateOnigurumaPattern("\\h+"), "[0-9a-fA-F]+");
  EXPECT_EQ(*ti::TranslateOnigurumaPattern("[^\\s\\d]"), "[^\\p{White_Space}\\p{Nd}]");
  EXPECT_EQ(*ti::TranslateOnigurumaPattern("\\p{Han}\\p{L}\\P{Latin}\\p{^Greek}"),
            "\\p{sc:Han}\\p{L}\\P{sc:Latin}\\P{sc:Greek}");
  EXPECT_EQ(*ti::TranslateOnigurumaPattern("[]a]"), "[]a]");
  EXPECT_EQ(*ti::TranslateOnigurumaPattern("\\Q\\s\\E\\s"), "\\Q\\s\\E\\p{White_Space}");
  EXPECT_FALSE(ti::TranslateOnigurumaPattern("[a[b]]").ok());
  EXPECT_FALSE(ti::TranslateOnigurumaPattern("[a&&b]").ok());
  EXPECT_FALSE(ti::TranslateOnigurumaPattern("[\\W]").ok());
  EXPECT_FALSE(ti::TranslateOnigurumaPattern("[abc").ok());
  EXPECT_FALSE(ti::TranslateOnigurumaPattern("abc\\").ok());
}

std::vector<std::tuple<size_t, size_t, bool>> Spans(const ti::Regex& re, std::string_view text) {
  std::vector<ti::MatchSpan> spans;
  re.FindMatches(text, &spans);
  std::vector<std::tuple<size_t, size_t, bool>> out;
  for (const auto& s : spans) out.emplace_back(s.start, s.end, s.is_match);
  return out;
}

TEST(TokenizerRegex, EmptyMatchesLikeOnigCrate) {
  // Same spans as `tokenizers` gives for Split(Regex("x*")) on "xxaxb" (checked in Python).
  auto re = ti::Regex::FromOniguruma("x*");
  ASSERT_TRUE(re.ok());
  using T = std::tuple<size_t, size_t, bool>;
  EXPECT_EQ(Spans(*re, "xxaxb"),
            (std::vector<T>{{0, 2, true}, {2, 3, false}, {3, 4, true}, {4, 5, false}, {5, 5, true}}));
  EXPECT_EQ(Spans(*re, ""), (std::vector<T>{{0, 0, false}}));
  auto lit = ti::Regex::FromLiteral("a.b");
  ASSERT_TRUE(lit.ok());
  EXPECT_EQ(Spans(*lit, "xa.bya_b"), (std::vector<T>{{0, 1, false}, {1, 4, true}, {4, 8, false}}));
}

TEST(TokenizerRegex, EveryCodePointClassifiedLikeOniguruma) {
  // oniguruma_classes.json lists, per pattern, the code points Oniguruma (inside
  // `tokenizers`) matches. PCRE2 10.42 has Unicode 14 tables and Oniguruma Unicode 16:
  // code points unassigned in PCRE2's tables (\p{Cn}) are the only allowed difference.
  boost::json::value data = ParseJsonFile(TokenizerDataDir() + "/oniguruma_classes.json");
  auto cn = ti::Regex::FromOniguruma("\\p{Cn}");
  ASSERT_TRUE(cn.ok());
  std::vector<bool> unassigned(0x110000);
  std::vector<ti::MatchSpan> spans;
  std::string s;
  auto matches_alone = [&](const ti::Regex& re, uint32_t cp) {
    s.clear();
    ti::AppendUtf8(cp, &s);
    spans.clear();
    re.FindMatches(s, &spans);
    return spans.size() == 1 && spans[0].is_match;
  };
  size_t n_unassigned = 0;
  for (uint32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp < 0xE000) continue;
    unassigned[cp] = matches_alone(*cn, cp);
    n_unassigned += unassigned[cp];
  }
  for (const auto& c : data.at("classes").as_array()) {
    const auto& o = c.as_object();
    std::string name(o.at("name").as_string());
    std::string pattern(o.at("pattern").as_string());
    auto re = ti::Regex::FromOniguruma(pattern);
    ASSERT_TRUE(re.ok()) << re.status();
    std::vector<bool> want(0x110000);
    for (const auto& r : o.at("ranges").as_array()) {
      for (int64_t cp = r.as_array()[0].as_int64(); cp <= r.as_array()[1].as_int64(); ++cp) want[cp] = true;
    }
    size_t differ = 0, tolerated = 0;
    for (uint32_t cp = 0; cp < 0x110000; ++cp) {
      if (cp >= 0xD800 && cp < 0xE000) continue;
      if (matches_alone(*re, cp) == want[cp]) continue;
      if (unassigned[cp]) {
        ++tolerated;
      } else if (++differ <= 5) {
        ADD_FAILURE() << name << " (" << pattern << " -> " << re->pcre2_pattern() << "): U+" << std::hex << cp;
      }
    }
    EXPECT_EQ(differ, 0u) << name;
    std::printf("%-12s %-22s differs on %zu code points unassigned in PCRE2's Unicode tables\n", name.c_str(),
                pattern.c_str(), tolerated);
  }
  std::printf("(PCRE2 treats %zu code points as unassigned)\n", n_unassigned);
}

// ---------------------------------------------------------------------------------
// UTF-8

TEST(TokenizerUtf8, LossyLikePython) {
  // Expected values: bytes.decode("utf-8", errors="replace") in Python 3.
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(Lossy("\xE4\xB8"), r);
  EXPECT_EQ(Lossy("\xED\xA0\x80"), r + r + r);
  EXPECT_EQ(Lossy("\xF4\x90\x80\x80"), r + r + r + r);
  EXPECT_EQ(Lossy("\xE0\x80\xAF"), r + r + r);
  EXPECT_EQ(Lossy("\xC3\x28"), r + "(");
  EXPECT_EQ(Lossy("\xF0\x9F\x98 x"), r + " x");
  EXPECT_EQ(Lossy("a\xE4\xB8\xAD"), "a\xE4\xB8\xAD");
  EXPECT_TRUE(ti::IsValidUtf8("plain ascii text, long enough for the 8-byte path"));
  EXPECT_FALSE(ti::IsValidUtf8("plain ascii text, long enough for the 8-byte path\xFF"));
}

// ---------------------------------------------------------------------------------
// BPE: the quadratic scan (short words) and the heap (long words) agree.

TEST(TokenizerBpe, ScanAndHeapAgree) {
  boost::json::value root = ParseJsonFile(TokenizerDataDir() + "/deepseek-v3/tokenizer.json");
  auto model = ti::BpeModel::Parse(ti::JsonNode(&root.at("model"), "tokenizer.json", "model"));
  ASSERT_TRUE(model.ok()) << model.status();
  std::mt19937 rng(42);
  const std::string alphabet = "  eeetaoinshrdlucmfwypvbgkjqxz0123456789.,'";
  for (int k = 0; k < 1500; ++k) {
    std::string raw;
    const int len = 1 + static_cast<int>(rng() % (k % 10 == 0 ? 300 : 40));
    for (int i = 0; i < len; ++i) {
      raw.push_back(k % 3 == 0 ? static_cast<char>(rng() % 256) : alphabet[rng() % alphabet.size()]);
    }
    std::string word;
    ti::AppendByteLevel(raw, &word);
    std::vector<int32_t> scan, heap;
    (*model)->TokenizeForTest(word, true, &scan);
    (*model)->TokenizeForTest(word, false, &heap);
    ASSERT_EQ(scan, heap) << word;
  }
}

// ---------------------------------------------------------------------------------
// Streaming detokenizer

TEST(TokenizerStreaming, CharacterSplitAcrossTokens) {
  const Tokenizer& tok = LoadedTokenizer("deepseek-v3");
  const std::string goose = "\xF0\x9F\xAA\xBF";  // U+1FABF, not a single token
  std::vector<int32_t> ids = tok.Encode(goose, false);
  ASSERT_GT(ids.size(), 1u);
  StreamingDetokenizer stream(tok, /*skip_special_tokens=*/false);
  for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(stream.Add(ids[i]), "") << i;
  EXPECT_EQ(stream.Add(ids.back()), goose);
  EXPECT_EQ(stream.Flush(), "");
}

TEST(TokenizerStreaming, IncompleteTailAndSpecialTokens) {
  const Tokenizer& tok = LoadedTokenizer("deepseek-v3");
  std::vector<int32_t> ids = tok.Encode("\xF0\x9F\xAA\xBF", false);
  StreamingDetokenizer stream(tok, /*skip_special_tokens=*/true);
  EXPECT_EQ(stream.Add(0), "");  // BOS, skipped
  EXPECT_EQ(stream.Add(19923), "Hello");
  EXPECT_EQ(stream.Add(ids[0]), "");
  // The stream ends inside a character: Flush gives what Decode gives.
  EXPECT_EQ(stream.Flush(), tok.Decode(std::vector<int32_t>{ids[0]}, true));
  EXPECT_EQ(stream.Flush(), "");
  EXPECT_EQ(stream.Add(2058), " world");
  EXPECT_EQ(stream.Add(-1), "");
}

TEST(TokenizerStreaming, CleanUpSpacesHeldBack) {
  // synth-sentencepiece has clean_up_tokenization_spaces: " ." must become "." even when
  // the space and the dot arrive in different tokens.
  const Tokenizer& tok = LoadedTokenizer("synth-sentencepiece");
  for (const std::string text : {"Hello . world", "don 't stop", "a , b ' c", "x n't y 's z 're"}) {
    std::vector<int32_t> ids = tok.Encode(text, false);
    StreamingDetokenizer stream(tok, false);
    std::string out;
    for (int32_t id : ids) out += stream.Add(id);
    out += stream.Flush();
    EXPECT_EQ(out, tok.Decode(ids, false)) << text;
  }
}


// ---------------------------------------------------------------------------------
// Untrusted input (issue 16): sizes in the file are bounded by the file, amplifying
// components fail with an error, and long inputs stay linear.

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(TokenizerUntrusted, HugeVocabIdIsAnErrorNotAnAllocation) {
  // Before: id 2^26 - 1 sized the id table at 2^26 strings (2.1 GB).
  const std::string tj =
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 67108863}, "merges": []}})";
  std::string err = LoadError(tj);
  EXPECT_TRUE(Contains(err, "dir/tokenizer.json: model.vocab.b: token id 67108863")) << err;
  // Ids may have holes, within a bound set by the number of entries.
  EXPECT_EQ(LoadError(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1000}, "merges": []}})"), "OK");
}

TEST(TokenizerUntrusted, AmplifyingReplaceIsRefusedAtLoad) {
  // Before: every "a" became 1 MB, and Encode("aaaa...") died of bad_alloc.
  const std::string big(1 << 20, 'x');
  std::string err = LoadError(MiniTokenizerJson(
      "null", R"({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Replace", "pattern": {"String": "a"}, "content": ")" +
                  big + R"("}]})"));
  EXPECT_TRUE(Contains(err, "dir/tokenizer.json: normalizer.normalizers[1]: Replace may grow the text")) << err.substr(0, 200);
  // A regex may match between every two characters: content + 1 per byte.
  err = LoadError(MiniTokenizerJson("null", R"({"type": "Replace", "pattern": {"Regex": ""}, "content": ")" +
                                                std::string(64, 'x') + R"("})"));
  EXPECT_TRUE(Contains(err, "normalizer: Replace may grow the text 65x")) << err;
  // Growth multiplies along a Sequence: 8 x 8 is fine, 8 x 8 x 2 is not.
  const std::string x8 = R"({"type": "Replace", "pattern": {"String": "a"}, "content": "xxxxxxxx"})";
  EXPECT_EQ(LoadError(MiniTokenizerJson("null", R"({"type": "Sequence", "normalizers": [)" + x8 + "," + x8 + "]}")), "OK");
  err = LoadError(MiniTokenizerJson("null", R"({"type": "Sequence", "normalizers": [)" + x8 + "," + x8 + "," +
                                                R"({"type": "Replace", "pattern": {"String": "x"}, "content": "yy"}]})"));
  EXPECT_TRUE(Contains(err, "normalizer.normalizers[2]: Replace may grow the text 128x")) << err;
  // Llama's normalizer (Prepend "▁", Replace " " -> "▁") loads.
  EXPECT_EQ(LoadError(MiniTokenizerJson("null", R"({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})")), "OK");
  // The Replace decoder is bounded the same way.
  err = LoadError(MiniTokenizerJson("null", "null", R"({"type": "Replace", "pattern": {"String": "a"}, "content": ")" +
                                                        std::string(1000, 'x') + R"("})"));
  EXPECT_TRUE(Contains(err, "dir/tokenizer.json: decoder.content: Replace may grow the text 1000x")) << err;
  EXPECT_EQ(LoadError(MiniTokenizerJson("null", "null", R"({"type": "Replace", "pattern": {"String": "▁"}, "content": " "})")), "OK");
  // A Prepend is added to every piece of text: its length is bounded.
  err = LoadError(MiniTokenizerJson("null", R"({"type": "Prepend", "prepend": ")" + std::string(30000, 'a') + R"("})"));
  EXPECT_TRUE(Contains(err, "normalizer.prepend: Prepend of 30000 bytes exceeds the limit of 256 bytes")) << err;
}

TEST(TokenizerUntrusted, LongAddedTokensMatchInLinearTime) {
  // Before: added tokens were matched by a trie walk from every position, O(text x
  // content length): 30 KB contents of "a...a" against 30 KB of "a" (as made by a
  // long Prepend in front of normalized added tokens) took about a minute.
  const std::string long_a(30000, 'a');
  for (const char* flags : {R"("special": true)", R"("special": false, "normalized": true)"}) {
    const std::string added = R"([{"id": 4, "content": ")" + long_a + R"(c", )" + flags + R"(},
                                  {"id": 5, "content": ")" + long_a + R"(", )" + flags + R"(}])";
    auto tok = Tokenizer::FromJson(MiniTokenizerJson("null", "null", "null", "null", "", R"(["a b"])", added), "");
    ASSERT_TRUE(tok.ok()) << tok.status();
    const int32_t long_id = *(*tok)->TokenToId(long_a);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<int32_t> ids = (*tok)->Encode(long_a.substr(1) + "b", false);
    const double secs = SecondsSince(t0);
    std::printf("# %s: 30 KB without a match in %.3f s\n", flags, secs);
    EXPECT_LT(secs, 0.5);
    std::vector<int32_t> want(29998, 0);
    want.push_back(2);  // "ab"
    EXPECT_EQ(ids, want);
    // "a" + long_a + "c": the longest content at 0 is long_a, then "ac" is text.
    EXPECT_EQ((*tok)->Encode(long_a + "ac", false), (std::vector<int32_t>{long_id, 0}));
  }
  // Leftmost-longest on small cases.
  const std::string added = R"([{"id": 4, "content": "ab", "special": true}, {"id": 5, "content": "abab", "special": true},
                                {"id": 6, "content": "bab", "special": true}])";
  auto tok = Tokenizer::FromJson(MiniTokenizerJson("null", "null", "null", "null", "", R"(["a b"])", added), "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const int32_t ab = *(*tok)->TokenToId("ab"), abab = *(*tok)->TokenToId("abab"), bab = *(*tok)->TokenToId("bab");
  EXPECT_EQ((*tok)->Encode("ababab", false), (std::vector<int32_t>{abab, ab}));
  EXPECT_EQ((*tok)->Encode("aabab", false), (std::vector<int32_t>{0, abab}));
  EXPECT_EQ((*tok)->Encode("bbabab", false), (std::vector<int32_t>{1, bab, ab}));
  EXPECT_EQ((*tok)->Encode("babab", false), (std::vector<int32_t>{bab, ab}));
}

}  // namespace
}  // namespace deepshard
