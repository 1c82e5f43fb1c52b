// OpenAI API pieces without networking: request validation (each 400 names its
// field), prompt building with the real DeepSeek-V3 tokenizer and chat
// template, stop strings across token boundaries, and the response JSON.
#include "serve/openai_api.h"
#include "serve/choice_output.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <string>

#include "boost/json.hpp"
#include "gtest/gtest.h"
#include "serve/structured_output.h"
#include "text/chat/chat_template.h"
#include "tests/util/tokenizers.h"

namespace deepshard::serve {
namespace {

namespace json = boost::json;

constexpr char kModel[] = "deepseek-v3";

const Tokenizer& V3() { return testing_util::DeepseekV3Tokenizer(); }

// The OpenAI `param` of a failed parse, checking it is a 400.
std::string BadParam(const absl::StatusOr<ApiRequest>& r, int http = 400) {
  EXPECT_FALSE(r.ok());
  if (r.ok()) return "<ok>";
  ApiError e = ToApiError(r.status());
  EXPECT_EQ(e.http_status, http) << r.status();
  return e.param;
}

TEST(OpenAiParseTest, CompletionDefaultsAndFields) {
  auto r = ParseCompletionRequest(R"({"prompt":"Hi","user":"x","unknown_extra":{"a":1}})", kModel);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_text, "Hi");
  EXPECT_FALSE(r->prompt_is_ids);
  EXPECT_FALSE(r->max_tokens.has_value());
  EXPECT_FALSE(r->stream);
  EXPECT_EQ(r->sampling.temperature, 1.0f);

  r = ParseCompletionRequest(R"({"model":"deepseek-v3","prompt":[1,2,3],"max_tokens":5,"temperature":0,
      "top_p":0.5,"top_k":-1,"seed":7,"stop":["a","b"],"stream":true,"stream_options":{"include_usage":true},
      "n":1,"ignore_eos":true,"return_token_ids":true,"logprobs":null,"echo":false,"presence_penalty":0,"logit_bias":{}})",
                             kModel);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->prompt_is_ids);
  EXPECT_EQ(r->prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(*r->max_tokens, 5);
  EXPECT_EQ(r->sampling.temperature, 0.0f);
  EXPECT_EQ(r->sampling.top_p, 0.5f);
  EXPECT_EQ(r->sampling.top_k, 0);
  EXPECT_EQ(r->sampling.seed, 7u);
  EXPECT_EQ(r->stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_TRUE(r->ignore_eos);
  EXPECT_TRUE(r->return_token_ids);

  r = ParseCompletionRequest(R"({"prompt":["one"],"stop":"x","max_tokens":3.0})", kModel);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_text, "one");
  EXPECT_EQ(r->stop, (std::vector<std::string>{"x"}));
  EXPECT_EQ(*r->max_tokens, 3);
  r = ParseCompletionRequest(R"({"prompt":[[4,5]]})", kModel);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_ids, (std::vector<int32_t>{4, 5}));
}

TEST(OpenAiParseTest, ErrorsNameTheField) {
  EXPECT_EQ(BadParam(ParseCompletionRequest("{not json", kModel)), "");
  EXPECT_EQ(BadParam(ParseCompletionRequest("[1]", kModel)), "");
  EXPECT_EQ(BadParam(ParseCompletionRequest("{}", kModel)), "prompt");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":["a",3]})", kModel)), "prompt");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":[[1],[]]})", kModel)), "prompt");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":["a","b","c","d","e","f","g","h","i"],"n":2})", kModel)),
            "prompt");  // 18 choices > 16
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":[]})", kModel)), "prompt");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":[1,-2]})", kModel)), "prompt");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":[1,"a"]})", kModel)), "prompt");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":7})", kModel)), "prompt");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","temperature":"hot"})", kModel)), "temperature");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","temperature":2.5})", kModel)), "temperature");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","top_p":0})", kModel)), "top_p");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","top_k":-2})", kModel)), "top_k");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","max_tokens":0})", kModel)), "max_tokens");
  EXPECT_TRUE(ParseCompletionRequest(R"({"prompt":"a","max_tokens":0,"echo":true})", kModel).ok());
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","max_tokens":1.5})", kModel)), "max_tokens");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","seed":"1"})", kModel)), "seed");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","stream":"yes"})", kModel)), "stream");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","stop":[1]})", kModel)), "stop");
  EXPECT_EQ(BadParam(ParseCompletionRequest(
                R"({"prompt":"a","stop":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]})",
                kModel)),
            "stop");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","n":0})", kModel)), "n");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","n":17})", kModel)), "n");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","best_of":3})", kModel)), "best_of");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","logprobs":21})", kModel)), "logprobs");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","logprobs":true})", kModel)), "logprobs");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","echo":1})", kModel)), "echo");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","suffix":"z"})", kModel)), "suffix");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","logit_bias":{"x":1}})", kModel)), "logit_bias");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","logit_bias":{"5":101}})", kModel)), "logit_bias");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","presence_penalty":2.5})", kModel)),
            "presence_penalty");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","frequency_penalty":-3})", kModel)),
            "frequency_penalty");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","repetition_penalty":0})", kModel)),
            "repetition_penalty");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","min_p":2})", kModel)), "min_p");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","min_tokens":-1})", kModel)), "min_tokens");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","stop_token_ids":[1,"x"]})", kModel)),
            "stop_token_ids");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","functions":[{"name":"f"}]})", kModel)), "functions");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","parallel_tool_calls":false})", kModel)),
            "parallel_tool_calls");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","stream_options":{"include_usage":1}})", kModel)),
            "stream_options");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","ignore_eos":1})", kModel)), "ignore_eos");
  EXPECT_EQ(BadParam(ParseCompletionRequest(R"({"prompt":"a","return_token_ids":"yes"})", kModel)), "return_token_ids");

  auto model = ParseCompletionRequest(R"({"prompt":"a","model":"gpt-4"})", kModel);
  EXPECT_EQ(BadParam(model, 404), "model");
  EXPECT_EQ(ToApiError(model.status()).code, "model_not_found");
  EXPECT_NE(ToApiError(model.status()).message.find("gpt-4"), std::string::npos);
  auto temp = ParseCompletionRequest(R"({"prompt":"a","temperature":"hot"})", kModel);
  EXPECT_EQ(ToApiError(temp.status()).message, "`temperature` must be a number");
}

TEST(OpenAiParseTest, ChatMessagesAndErrors) {
  auto r = ParseChatRequest(R"({"messages":[{"role":"system","content":"S"},
      {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
      {"role":"developer","content":"D"}],"max_tokens":9,"max_completion_tokens":4})",
                            kModel);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->messages.size(), 3u);
  EXPECT_EQ(r->messages[1].content, "a\nb");
  EXPECT_EQ(r->messages[2].role, "system");
  EXPECT_EQ(*r->max_tokens, 4);

  EXPECT_EQ(BadParam(ParseChatRequest(R"({})", kModel)), "messages");
  EXPECT_EQ(BadParam(ParseChatRequest(R"({"messages":[]})", kModel)), "messages");
  auto bad = ParseChatRequest(R"({"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},
      {"role":"user","content":5}]})",
                              kModel);
  EXPECT_EQ(BadParam(bad), "messages");
  EXPECT_NE(bad.status().message().find("messages[2].content"), std::string::npos) << bad.status();
  bad = ParseChatRequest(R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]})", kModel);
  EXPECT_NE(bad.status().message().find("messages[0].content[0]"), std::string::npos) << bad.status();
  bad = ParseChatRequest(R"({"messages":[{"role":"wizard","content":"x"}]})", kModel);
  EXPECT_NE(bad.status().message().find("messages[0].role"), std::string::npos) << bad.status();
  EXPECT_EQ(BadParam(ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})",
                                      kModel)),
            "tools");
  EXPECT_EQ(BadParam(ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],"logprobs":1})", kModel)),
            "logprobs");
  EXPECT_EQ(BadParam(ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":3})", kModel)),
            "top_logprobs");  // needs logprobs: true
  EXPECT_EQ(BadParam(ParseChatRequest(
                R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}})", kModel)),
            "response_format");
  EXPECT_EQ(BadParam(ParseChatRequest(
                R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema"}})", kModel)),
            "response_format");
  EXPECT_EQ(BadParam(ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],"tool_choice":"required"})",
                                      kModel)),
            "tool_choice");  // no tools
  EXPECT_EQ(BadParam(ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],
      "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}})",
                                      kModel)),
            "tool_choice");  // not among the tools
  EXPECT_EQ(BadParam(ParseChatRequest(R"({"messages":[{"role":"user","content":null}]})", kModel)), "messages");
  EXPECT_EQ(BadParam(ParseChatRequest(R"({"messages":[{"role":"user","content":"x","tool_calls":[]}]})", kModel)),
            "messages");  // tool_calls only on assistant turns
  EXPECT_TRUE(ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"},
      "tools":[],"logprobs":false})",
                               kModel)
                  .ok());
  EXPECT_EQ(BadParam(ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-1})",
                                      kModel)),
            "max_completion_tokens");
}

TEST(OpenAiParseTest, VllmExtensionsThatChangeTheOutputAreRejected) {
  for (const char* body : {R"({"prompt":"a","guided_json":{"type":"object"}})", R"({"prompt":"a","use_beam_search":true})",
                           R"({"prompt":"a","include_stop_str_in_output":true})",
                           R"({"prompt":"a","skip_special_tokens":false})", R"({"prompt":"a","prompt_logprobs":1})",
                           R"({"prompt":"a","allowed_token_ids":[1]})", R"({"prompt":"a","length_penalty":2})"}) {
    auto r = ParseCompletionRequest(body, kModel);
    ASSERT_FALSE(r.ok()) << body;
    const std::string param = ToApiError(r.status()).param;
    EXPECT_NE(std::string(body).find(param), std::string::npos) << body << " named " << param;
    EXPECT_FALSE(param.empty()) << body;
  }
  // Their no-op values pass.
  EXPECT_TRUE(ParseCompletionRequest(R"({"prompt":"a","use_beam_search":false,"skip_special_tokens":true,
      "length_penalty":1,"user":"u"})",
                                     kModel)
                  .ok());
}

TEST(OpenAiParseTest, GenerationConfigDefaultsFillWhatTheRequestLeavesOut) {
  const std::string dir = std::string(DS_BINARY_DIR) + "/tests/serve/genconfig_" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir + "/generation_config.json");
    f << R"({"bos_token_id": 0, "do_sample": true, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 5})";
  }
  auto d = GenerationDefaults::FromDirectory(dir);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d->temperature, 0.6f);
  EXPECT_EQ(*d->top_p, 0.95f);
  EXPECT_FALSE(d->top_k.has_value());
  PromptBuilder pb(nullptr);
  pb.set_defaults(*d);
  auto r = ParseCompletionRequest(R"({"prompt":[1,2,3]})", kModel);
  ASSERT_TRUE(r.ok());
  auto g = pb.Build(*r, 100);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->sampling.temperature, 0.6f);
  EXPECT_EQ(g->sampling.top_p, 0.95f);
  EXPECT_EQ(g->max_tokens, 5);
  r = ParseCompletionRequest(R"({"prompt":[1,2,3],"temperature":0,"top_p":0.5,"max_tokens":7})", kModel);
  g = pb.Build(*r, 100);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->sampling.temperature, 0.0f);  // the request wins
  EXPECT_EQ(g->sampling.top_p, 0.5f);
  EXPECT_EQ(g->max_tokens, 7);
  {
    std::ofstream f(dir + "/generation_config.json");
    f << R"({"temperature": "hot"})";
  }
  auto bad = GenerationDefaults::FromDirectory(dir);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("generation_config.json"), std::string::npos);
  EXPECT_NE(bad.status().message().find("temperature"), std::string::npos);
  std::filesystem::remove_all(dir);
  EXPECT_TRUE(GenerationDefaults::FromDirectory(dir).ok());  // no file: no defaults
}

TEST(OpenAiParseTest, NewParametersAreRead) {
  auto r = ParseCompletionRequest(R"({"prompt":["a",[5,6]],"n":3,"logprobs":2,"echo":true,"presence_penalty":0.5,
      "frequency_penalty":-1,"repetition_penalty":1.2,"min_p":0.1,"min_tokens":4,"stop_token_ids":[7,8],
      "logit_bias":{"12":-100,"3":2.5},"stop":["a","b","c","d","e"],"seed":9,"best_of":3})",
                                  kModel);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->prompts.size(), 2u);
  EXPECT_EQ(r->prompts[0].text, "a");
  EXPECT_EQ(r->prompts[1].ids, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(r->n, 3);
  EXPECT_EQ(r->logprobs, 2);
  EXPECT_TRUE(r->echo);
  EXPECT_EQ(r->sampling.presence_penalty, 0.5f);
  EXPECT_EQ(r->sampling.frequency_penalty, -1.0f);
  EXPECT_EQ(r->sampling.repetition_penalty, 1.2f);
  EXPECT_EQ(r->sampling.min_p, 0.1f);
  EXPECT_EQ(r->sampling.min_tokens, 4);
  EXPECT_EQ(r->sampling.stop_token_ids, (std::vector<int32_t>{7, 8}));
  ASSERT_EQ(r->sampling.logit_bias.size(), 2u);
  EXPECT_EQ(r->stop.size(), 5u);
  auto c = ParseChatRequest(R"({"messages":[{"role":"user","content":"x"},
      {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
        "function":{"name":"get","arguments":"{\"a\":1}"}}]},
      {"role":"tool","tool_call_id":"call_1","content":"42"}],
      "tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}],
      "tool_choice":"auto","logprobs":true,"top_logprobs":4,"chat_template_kwargs":{"thinking":true}})",
                            kModel);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->logprobs, 4);
  EXPECT_EQ(c->tools.size(), 1u);
  EXPECT_EQ(c->tool_choice.kind, ToolChoice::kAuto);
  EXPECT_TRUE(c->messages[1].raw.at("content").is_null());
  EXPECT_EQ(c->messages[1].raw.at("tool_calls").as_array()[0].at("function").at("name").as_string(), "get");
  EXPECT_EQ(c->messages[2].raw.at("tool_call_id").as_string(), "call_1");
  EXPECT_TRUE(c->chat_template_kwargs.at("thinking").as_bool());
  c = ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],"logprobs":true})", kModel);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->logprobs, 0);
}

// parallel_tool_calls false (LangChain's with_structured_output(method="function_calling")
// sends it with a named tool_choice): a named function is one call anyway, "required"
// is constrained to one call, "auto" cannot be held to one (400).
TEST(OpenAiParseTest, ParallelToolCallsFalse) {
  const std::string kTools =
      R"("messages":[{"role":"user","content":"x"}],"parallel_tool_calls":false,
      "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}])";
  auto named = ParseChatRequest(
      "{" + kTools + R"(,"tool_choice":{"type":"function","function":{"name":"f"}}})", kModel);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_FALSE(named->parallel_tool_calls);
  auto schema = StructuredOutput::ToolChoiceSchema(*named);
  ASSERT_TRUE(schema.ok());
  EXPECT_EQ(schema->as_object().at("type").as_string(), "object");  // the arguments: one call
  auto required = ParseChatRequest("{" + kTools + R"(,"tool_choice":"required"})", kModel);
  ASSERT_TRUE(required.ok()) << required.status();
  schema = StructuredOutput::ToolChoiceSchema(*required);
  ASSERT_TRUE(schema.ok());
  EXPECT_EQ(schema->as_object().at("maxItems").as_int64(), 1);
  required->parallel_tool_calls = true;
  EXPECT_FALSE(StructuredOutput::ToolChoiceSchema(*required)->as_object().contains("maxItems"));
  EXPECT_EQ(BadParam(ParseChatRequest("{" + kTools + "}", kModel)), "parallel_tool_calls");
  EXPECT_TRUE(ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}],"parallel_tool_calls":false})", kModel)
                  .ok());  // no tools: nothing to hold back
}

TEST(OpenAiParseTest, HostileBodiesAreErrorsNotCrashes) {
  std::string deep(100000, '[');
  EXPECT_FALSE(ParseCompletionRequest(deep, kModel).ok());
  std::string nested = "{\"prompt\":" + std::string(200, '[') + std::string(200, ']') + "}";
  EXPECT_FALSE(ParseCompletionRequest(nested, kModel).ok());
  EXPECT_FALSE(ParseCompletionRequest("{\"prompt\":\"\xff\xfe\"}", kModel).ok());  // invalid UTF-8
  std::string nul = "{\"prompt\":\"a";
  nul += '\0';
  nul += "b\"}";
  EXPECT_FALSE(ParseCompletionRequest(nul, kModel).ok());  // raw control character in a string
  EXPECT_FALSE(ParseCompletionRequest("", kModel).ok());
  EXPECT_FALSE(ParseCompletionRequest(R"({"prompt":[1e400]})", kModel).ok());
  EXPECT_FALSE(ParseCompletionRequest(R"({"prompt":[99999999999999999999]})", kModel).ok());
}

TEST(OpenAiPromptTest, BuildsCompletionAndChatPrompts) {
  PromptBuilder pb(&V3());
  auto r = ParseCompletionRequest(R"({"prompt":"Hello, world!"})", kModel);
  ASSERT_TRUE(r.ok());
  auto g = pb.Build(*r, 4096);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->prompt, (std::vector<int32_t>{0, 19923, 14, 2058, 3}));
  EXPECT_EQ(g->max_tokens, 16);

  auto c = ParseChatRequest(R"({"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi!"}]})",
                            kModel);
  ASSERT_TRUE(c.ok());
  g = pb.Build(*c, 4096);
  ASSERT_TRUE(g.ok()) << g.status();
  json::array messages{json::object{{"role", "system"}, {"content", "Be brief."}},
                       json::object{{"role", "user"}, {"content", "Hi!"}}};
  auto rendered = ApplyChatTemplate(V3().chat_template(), messages, true, V3().bos_token(), V3().eos_token());
  ASSERT_TRUE(rendered.ok());
  EXPECT_EQ(*rendered, "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi!<｜Assistant｜>");
  EXPECT_EQ(g->prompt, V3().Encode(*rendered, false));
  EXPECT_EQ(g->prompt[0], 0);  // one BOS, written by the template
  EXPECT_NE(g->prompt[1], 0);
  EXPECT_EQ(g->max_tokens, 4096 - static_cast<int64_t>(g->prompt.size()));  // chat default: rest of the context
}

TEST(OpenAiPromptTest, ContextAndVocabularyLimits) {
  PromptBuilder pb(&V3());
  auto r = ParseCompletionRequest(R"({"prompt":"one two three four five six seven"})", kModel);
  ASSERT_TRUE(r.ok());
  auto g = pb.Build(*r, 5);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(ToApiError(g.status()).param, "prompt");
  EXPECT_EQ(ToApiError(g.status()).http_status, 400);
  g = pb.Build(*r, 20);  // 9 prompt tokens + 16 default > 20
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(ToApiError(g.status()).param, "max_tokens");
  // Ids are the engine's to check, against the model's vocabulary (which can
  // be larger than the tokenizer's: V3 has 129,280 embeddings, 128,815 tokens).
  r = ParseCompletionRequest(R"({"prompt":[1,129000]})", kModel);
  ASSERT_TRUE(r.ok());
  g = pb.Build(*r, 4096);
  EXPECT_TRUE(g.ok()) << g.status();

  PromptBuilder none(nullptr);
  r = ParseCompletionRequest(R"({"prompt":"text"})", kModel);
  EXPECT_FALSE(none.Build(*r, 100).ok());
  r = ParseCompletionRequest(R"({"prompt":[3,4]})", kModel);
  EXPECT_TRUE(none.Build(*r, 100).ok());
  auto c = ParseChatRequest(R"({"messages":[{"role":"user","content":"x"}]})", kModel);
  EXPECT_EQ(ToApiError(none.Build(*c, 100).status()).param, "messages");
}

TEST(StopMatcherTest, HoldsBackPossibleStarts) {
  StopMatcher m({"STOP", "", "xyz"});
  auto r = m.Feed("abc ST");
  EXPECT_EQ(r.text, "abc ");
  EXPECT_FALSE(r.stopped);
  r = m.Feed("A");  // "STA" is not a prefix: emitted
  EXPECT_EQ(r.text, "STA");
  r = m.Feed("x S");
  EXPECT_EQ(r.text, "x ");
  r = m.Feed("TO");
  EXPECT_EQ(r.text, "");
  r = m.Feed("P and more");
  EXPECT_EQ(r.text, "");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(m.Feed("later").text, "");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcherTest, EarliestStopWinsAndFlushReturnsTail) {
  StopMatcher m({"bc", "ab"});
  auto r = m.Feed("xabc");
  EXPECT_EQ(r.text, "x");
  EXPECT_TRUE(r.stopped);
  StopMatcher n({"END"});
  EXPECT_EQ(n.Feed("the E").text, "the ");
  EXPECT_EQ(n.Flush(), "E");
  StopMatcher none({});
  EXPECT_EQ(none.Feed("abc").text, "abc");
}

TEST(GenerationTextTest, StopStringAcrossTokenBoundariesWithRealTokenizer) {
  const Tokenizer& tok = V3();
  const std::string full = "The capital of France is Paris. It is lovely.";
  const std::vector<int32_t> ids = tok.Encode(full, false);
  ASSERT_GT(ids.size(), 6u);
  // "of Fra" starts inside the token " of" (its space is outside) and ends inside " France".
  GenerationText gen(&tok, {"of Fra"});
  std::string out;
  bool stopped = false;
  size_t used = 0;
  for (int32_t id : ids) {
    ++used;
    auto piece = gen.Add(std::span<const int32_t>(&id, 1));
    out += piece.text;
    EXPECT_EQ(full.substr(0, out.size()), out);  // never emits past the stop
    if (piece.stopped) {
      stopped = true;
      break;
    }
  }
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "The capital ");
  EXPECT_EQ(gen.completion_tokens(), static_cast<int64_t>(used));
  EXPECT_EQ(gen.Finish(), "");

  // Without a stop, the pieces join to Decode of all ids, even split mid-character.
  const std::vector<int32_t> cjk = tok.Encode("北京是中国的首都。🙂 done", false);
  GenerationText all(&tok, {"nothing-matches"});
  std::string joined;
  for (size_t i = 0; i < cjk.size(); i += 2) {
    joined += all.Add(std::span<const int32_t>(cjk.data() + i, std::min<size_t>(2, cjk.size() - i))).text;
  }
  joined += all.Finish();
  EXPECT_EQ(joined, tok.Decode(cjk, true));
  EXPECT_FALSE(all.stopped());
}

TEST(GenerationTextTest, StopStringInTheHeldBackTail) {
  const Tokenizer& tok = V3();
  const std::vector<int32_t> ids = tok.Encode("alpha beta", false);
  GenerationText gen(&tok, {"beta"});
  std::string out;
  for (int32_t id : ids) out += gen.Add(std::span<const int32_t>(&id, 1)).text;
  out += gen.Finish();
  EXPECT_EQ(out, "alpha ");
  EXPECT_TRUE(gen.stopped());
}

TEST(OpenAiResponseTest, JsonShapes) {
  ResponseContext ctx{ApiKind::kCompletion, "cmpl-1", 1700000000, "m"};
  // A choice of `text`, finished with `reason`, as the server builds it.
  auto choice = [](ApiKind kind, const std::string& text, std::string_view reason) {
    ChoiceOptions o;
    o.kind = kind;
    o.tokenizer = &V3();
    ChoiceOutput c(o);
    TokenEvent ev;
    ev.tokens = V3().Encode(text, false);
    (void)c.Add(ev);
    return c.FinalChoice(reason);
  };
  json::value v = json::parse(ResponseJson(ctx, {choice(ApiKind::kCompletion, "hi", "length")}, {3, 2}));
  EXPECT_EQ(v.at("object"), "text_completion");
  EXPECT_EQ(v.at("choices").at(0).at("text"), "hi");
  EXPECT_EQ(v.at("choices").at(0).at("finish_reason"), "length");
  EXPECT_TRUE(v.at("choices").at(0).at("logprobs").is_null());
  EXPECT_EQ(v.at("usage").at("total_tokens"), 5);

  ctx.kind = ApiKind::kChat;
  v = json::parse(ResponseJson(ctx, {choice(ApiKind::kChat, "yo", "stop")}, {1, 1}));
  EXPECT_EQ(v.at("object"), "chat.completion");
  EXPECT_EQ(v.at("choices").at(0).at("message").at("role"), "assistant");
  EXPECT_EQ(v.at("choices").at(0).at("message").at("content"), "yo");

  ChoiceOptions chat;
  chat.kind = ApiKind::kChat;
  ChoiceOutput streamed(chat);
  v = json::parse(ChunkWithChoices(ctx, {streamed.OpeningDelta()}));
  EXPECT_EQ(v.at("object"), "chat.completion.chunk");
  EXPECT_EQ(v.at("choices").at(0).at("delta").at("role"), "assistant");
  EXPECT_TRUE(v.at("choices").at(0).at("finish_reason").is_null());
  EXPECT_EQ(v.as_object().count("usage"), 0u);
  v = json::parse(ChunkWithChoices(ctx, streamed.FinishStream("stop")));
  EXPECT_TRUE(v.at("choices").at(0).at("delta").as_object().empty());
  EXPECT_EQ(v.at("choices").at(0).at("finish_reason"), "stop");
  ctx.include_usage = true;
  v = json::parse(UsageChunkJson(ctx, {4, 6}));
  EXPECT_TRUE(v.at("choices").as_array().empty());
  EXPECT_EQ(v.at("usage").at("completion_tokens"), 6);

  EXPECT_EQ(SseEvent("{}"), "data: {}\n\n");
  EXPECT_EQ(NewRequestId(ApiKind::kChat).rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(NewRequestId(ApiKind::kCompletion).size(), 5u + 24u);
  EXPECT_NE(NewRequestId(ApiKind::kCompletion), NewRequestId(ApiKind::kCompletion));

  ApiError e = ToApiError(absl::ResourceExhaustedError("queue full"));
  EXPECT_EQ(e.http_status, 429);
  v = json::parse(ErrorJson(e));
  EXPECT_EQ(v.at("error").at("message"), "queue full");
  EXPECT_TRUE(v.at("error").at("param").is_null());
  // An error quoting bytes that are not UTF-8 (a request path, a model id) is
  // still valid JSON: they become U+FFFD (found by http_request_fuzz).
  e = ApiError{};
  e.http_status = 404;
  e.message = "the model `a\xbf\xff\xe4\xbd` does not exist";
  e.param = "\xc3";
  v = json::parse(ErrorJson(e));
  EXPECT_EQ(v.at("error").at("message"), "the model `a\uFFFD\uFFFD\uFFFD` does not exist");
  EXPECT_EQ(v.at("error").at("param"), "\uFFFD");
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kOutOfRange), 400);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusForCode(absl::StatusCode::kInternal), 500);
}

}  // namespace
}  // namespace deepshard::serve
