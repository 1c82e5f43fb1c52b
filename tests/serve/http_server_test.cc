// HttpServer end to end over real sockets, against FakeEngine and the real
// DeepSeek-V3 tokenizer: completions and chat (plain and streamed), stop
// strings that cancel the engine, request errors naming fields, auth, limits,
// engine errors, keep-alive, client disconnects, and /metrics.
#include "serve/http_server.h"

#include <chrono>
#include <string>
#include <vector>

#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/json.hpp"
#include "gtest/gtest.h"
#include "text/chat/chat_template.h"
#include "tests/serve/fake_engine.h"
#include "tests/util/tokenizers.h"

namespace deepshard::serve {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace json = boost::json;
using tcp = net::ip::tcp;
using testing::FakeEngine;

constexpr char kModel[] = "deepseek-v3";

const Tokenizer& V3() { return testing_util::DeepseekV3Tokenizer(); }

int64_t I(const json::value& v) { return v.to_number<int64_t>(); }

struct Reply {
  int status = 0;
  std::string body;
  std::string content_type;
  http::response<http::string_body> raw;
};

// One request on an open connection.
Reply RoundTrip(beast::tcp_stream& stream, http::verb method, const std::string& target, const std::string& body,
                const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  for (const auto& [k, v] : headers) req.set(k, v);
  if (method == http::verb::post) {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
  }
  http::write(stream, req);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 << 20);
  http::read(stream, buffer, parser);
  Reply r;
  r.raw = parser.release();
  r.status = r.raw.result_int();
  r.body = r.raw.body();
  r.content_type = std::string(r.raw[http::field::content_type]);
  return r;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions o = {}) {
    o.model_name = kModel;
    server_ = std::make_unique<HttpServer>(o, &V3(), engine_, metrics_);
    ASSERT_TRUE(server_->Start().ok());
    ASSERT_GT(server_->port(), 0);
  }
  void SetUp() override {
    tokens_ = V3().Encode("Hello there! The capital of France is Paris.", false);
    tokens_.push_back(*V3().eos_id());  // engines report the EOS token too; its text is skipped
    engine_.SetScript({tokens_});
  }

  beast::tcp_stream Connect() {
    beast::tcp_stream stream(ioc_);
    stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(server_->port())));
    return stream;
  }
  Reply Request(http::verb method, const std::string& target, const std::string& body = "",
                const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    beast::tcp_stream stream = Connect();
    return RoundTrip(stream, method, target, body, headers);
  }
  Reply Post(const std::string& target, const std::string& body) { return Request(http::verb::post, target, body); }

  // The `data:` payloads of an SSE body.
  static std::vector<std::string> Events(const std::string& body) {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos < body.size()) {
      size_t end = body.find("\n\n", pos);
      EXPECT_NE(end, std::string::npos) << "unterminated event in: " << body;
      if (end == std::string::npos) break;
      std::string ev = body.substr(pos, end - pos);
      EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
      out.push_back(ev.substr(6));
      pos = end + 2;
    }
    return out;
  }

  static std::string ErrorParam(const Reply& r) {
    json::value v = json::parse(r.body);
    const json::value& p = v.at("error").at("param");
    return p.is_null() ? "" : std::string(p.as_string());
  }

  std::string Text() const { return V3().Decode(tokens_, /*skip_special_tokens=*/true); }

  net::io_context ioc_;
  FakeEngine engine_;  // before the server: outlives it
  Metrics metrics_;
  std::unique_ptr<HttpServer> server_;
  std::vector<int32_t> tokens_;
};

TEST_F(HttpServerTest, CompletionNonStreaming) {
  StartServer();
  Reply r = Post("/v1/completions", R"({"model":"deepseek-v3","prompt":"Say hi","max_tokens":100,"temperature":0})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "application/json");
  json::value v = json::parse(r.body);
  EXPECT_EQ(v.at("object"), "text_completion");
  EXPECT_EQ(v.at("model"), kModel);
  EXPECT_EQ(std::string(v.at("id").as_string()).rfind("cmpl-", 0), 0u);
  EXPECT_EQ(v.at("choices").at(0).at("text").as_string(), Text());
  EXPECT_EQ(v.at("choices").at(0).at("finish_reason"), "stop");
  const auto prompt = V3().Encode("Say hi", true);
  EXPECT_EQ(I(v.at("usage").at("prompt_tokens")), static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(I(v.at("usage").at("completion_tokens")), static_cast<int64_t>(tokens_.size()));
  EXPECT_EQ(I(v.at("usage").at("total_tokens")), static_cast<int64_t>(prompt.size() + tokens_.size()));
  ASSERT_EQ(engine_.requests().size(), 1u);
  EXPECT_EQ(engine_.requests()[0].prompt, prompt);
  EXPECT_EQ(engine_.requests()[0].max_tokens, 100);
  EXPECT_EQ(engine_.requests()[0].sampling.temperature, 0.0f);
}

TEST_F(HttpServerTest, CompletionLengthAndTokenIdPrompt) {
  StartServer();
  Reply r = Post("/v1/completions", R"({"prompt":[0,19923,14],"max_tokens":3})");
  ASSERT_EQ(r.status, 200) << r.body;
  json::value v = json::parse(r.body);
  EXPECT_EQ(v.at("choices").at(0).at("finish_reason"), "length");
  EXPECT_EQ(v.at("choices").at(0).at("text").as_string(), V3().Decode(std::vector<int32_t>(tokens_.begin(), tokens_.begin() + 3), true));
  EXPECT_EQ(I(v.at("usage").at("completion_tokens")), 3);
  EXPECT_EQ(I(v.at("usage").at("prompt_tokens")), 3);
  EXPECT_EQ(engine_.requests()[0].prompt, (std::vector<int32_t>{0, 19923, 14}));
}

TEST_F(HttpServerTest, CompletionStreamingWithUsage) {
  engine_.SetScript({tokens_, FinishReason::kStop, "", std::chrono::milliseconds(2), /*final_carries_last_token=*/true});
  StartServer();
  Reply r = Post("/v1/completions",
                 R"({"prompt":"Say hi","stream":true,"stream_options":{"include_usage":true}})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "text/event-stream");
  EXPECT_TRUE(r.raw.chunked());
  std::vector<std::string> events = Events(r.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    json::value v = json::parse(events[i]);
    EXPECT_EQ(v.at("object"), "text_completion");
    EXPECT_TRUE(v.at("usage").is_null());
    text += std::string(v.at("choices").at(0).at("text").as_string());
    if (!v.at("choices").at(0).at("finish_reason").is_null()) {
      finish = std::string(v.at("choices").at(0).at("finish_reason").as_string());
      EXPECT_EQ(i + 3, events.size()) << "finish_reason only on the last chunk";
    }
  }
  EXPECT_EQ(text, Text());
  EXPECT_EQ(finish, "stop");
  json::value usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage.at("choices").as_array().empty());
  EXPECT_EQ(I(usage.at("usage").at("completion_tokens")), static_cast<int64_t>(tokens_.size()));
  EXPECT_EQ(I(usage.at("usage").at("prompt_tokens")), static_cast<int64_t>(V3().Encode("Say hi", true).size()));
}

TEST_F(HttpServerTest, ChatNonStreamingAndStreaming) {
  StartServer();
  const std::string body = R"({"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi!"}],
                              "max_completion_tokens":50)";
  Reply r = Post("/v1/chat/completions", body + "}");
  ASSERT_EQ(r.status, 200) << r.body;
  json::value v = json::parse(r.body);
  EXPECT_EQ(v.at("object"), "chat.completion");
  EXPECT_EQ(std::string(v.at("id").as_string()).rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(v.at("choices").at(0).at("message").at("role"), "assistant");
  EXPECT_EQ(v.at("choices").at(0).at("message").at("content").as_string(), Text());
  EXPECT_EQ(v.at("choices").at(0).at("finish_reason"), "stop");
  const std::vector<int32_t> prompt =
      V3().Encode("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi!<｜Assistant｜>", false);
  ASSERT_EQ(engine_.requests().size(), 1u);
  EXPECT_EQ(engine_.requests()[0].prompt, prompt);
  EXPECT_EQ(engine_.requests()[0].max_tokens, 50);
  EXPECT_EQ(I(v.at("usage").at("prompt_tokens")), static_cast<int64_t>(prompt.size()));

  r = Post("/v1/chat/completions", body + R"(,"stream":true})");
  ASSERT_EQ(r.status, 200) << r.body;
  std::vector<std::string> events = Events(r.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  json::value first = json::parse(events[0]);
  EXPECT_EQ(first.at("object"), "chat.completion.chunk");
  EXPECT_EQ(first.at("choices").at(0).at("delta").at("role"), "assistant");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json::value e = json::parse(events[i]);
    const json::object& delta = e.at("choices").at(0).at("delta").as_object();
    if (auto* c = delta.if_contains("content")) text += std::string(c->as_string());
    if (i > 0) {
      EXPECT_EQ(delta.count("role"), 0u);
    }
  }
  EXPECT_EQ(text, Text());
  json::value last = json::parse(events[events.size() - 2]);
  EXPECT_EQ(last.at("choices").at(0).at("finish_reason"), "stop");
  EXPECT_EQ(last.as_object().count("usage"), 0u);  // no include_usage
  // The default max_tokens of a chat is the rest of the context.
  r = Post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}]})");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(engine_.requests().back().max_tokens,
            4096 - static_cast<int64_t>(V3().Encode("<｜begin▁of▁sentence｜><｜User｜>x<｜Assistant｜>", false).size()));
}

TEST_F(HttpServerTest, StopStringCutsTextAndCancelsTheEngine) {
  // A long script, so that the engine is still running when the stop matches.
  std::vector<int32_t> long_tokens = V3().Encode("Hello there! The capital of France is Paris. " +
                                                     std::string(200, 'x'),
                                                 false);
  engine_.SetScript({long_tokens, FinishReason::kStop, "", std::chrono::milliseconds(5)});
  StartServer();
  Reply r = Post("/v1/completions", R"({"prompt":"a","stop":["of Fra","zzz"],"max_tokens":500})");
  ASSERT_EQ(r.status, 200) << r.body;
  json::value v = json::parse(r.body);
  EXPECT_EQ(v.at("choices").at(0).at("text"), "Hello there! The capital ");
  EXPECT_EQ(v.at("choices").at(0).at("finish_reason"), "stop");
  EXPECT_LT(v.at("usage").at("completion_tokens").as_int64(), 12);
  ASSERT_TRUE(engine_.WaitForCancels(1, std::chrono::seconds(2)));
  EXPECT_EQ(engine_.cancelled()[0], 1);

  r = Post("/v1/chat/completions",
           R"({"messages":[{"role":"user","content":"x"}],"stop":"capital","stream":true,"max_tokens":500})");
  ASSERT_EQ(r.status, 200) << r.body;
  std::vector<std::string> events = Events(r.body);
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json::value e = json::parse(events[i]);
    const json::object& delta = e.at("choices").at(0).at("delta").as_object();
    if (auto* c = delta.if_contains("content")) text += std::string(c->as_string());
  }
  EXPECT_EQ(text, "Hello there! The ");
  EXPECT_EQ(json::parse(events[events.size() - 2]).at("choices").at(0).at("finish_reason"), "stop");
  ASSERT_TRUE(engine_.WaitForCancels(2, std::chrono::seconds(2)));
}

TEST_F(HttpServerTest, BadRequestsNameTheField) {
  StartServer();
  Reply r = Post("/v1/completions", R"({"prompt": "a",)");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(json::parse(r.body).at("error").at("type"), "invalid_request_error");
  r = Post("/v1/completions", R"({"prompt":"a","temperature":"hot"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(ErrorParam(r), "temperature");
  EXPECT_EQ(json::parse(r.body).at("error").at("message"), "`temperature` must be a number");
  r = Post("/v1/completions", R"({"prompt":"a","n":20})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(ErrorParam(r), "n");
  r = Post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"logit_bias":{"1":500}})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(ErrorParam(r), "logit_bias");
  r = Post("/v1/chat/completions", R"({"messages":[{"role":"user","content":{"a":1}}]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("messages[0].content"), std::string::npos);
  r = Post("/v1/completions", "{\"prompt\":\"\xc3\x28\"}");  // invalid UTF-8
  EXPECT_EQ(r.status, 400);
  r = Post("/v1/completions", std::string(5000, '['));  // nesting bomb
  EXPECT_EQ(r.status, 400);
  r = Post("/v1/completions", R"({"prompt":"a","model":"gpt-4o"})");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(json::parse(r.body).at("error").at("code"), "model_not_found");
  engine_.SetMaxContext(8);
  r = Post("/v1/completions", R"({"prompt":"one two three four five six seven eight nine"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(ErrorParam(r), "prompt");
  EXPECT_TRUE(engine_.requests().empty());
}

TEST_F(HttpServerTest, ApiKey) {
  HttpServerOptions o;
  o.api_key = "sekret";
  StartServer(o);
  EXPECT_EQ(Request(http::verb::get, "/v1/models").status, 401);
  Reply r = Request(http::verb::get, "/v1/models", "", {{"Authorization", "Bearer wrong"}});
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(json::parse(r.body).at("error").at("code"), "invalid_api_key");
  EXPECT_EQ(Request(http::verb::get, "/v1/models", "", {{"Authorization", "Bearer sekre"}}).status, 401);
  EXPECT_EQ(Request(http::verb::get, "/v1/models", "", {{"Authorization", "Bearer sekret"}}).status, 200);
  EXPECT_EQ(Request(http::verb::get, "/metrics").status, 401);
  EXPECT_EQ(Request(http::verb::post, "/v1/completions", R"({"prompt":"a"})").status, 401);
  EXPECT_EQ(Request(http::verb::post, "/v1/completions", R"({"prompt":"a"})", {{"Authorization", "Bearer sekret"}})
                .status,
            200);
  EXPECT_EQ(Request(http::verb::get, "/health").status, 200);  // exempt
  EXPECT_EQ(engine_.requests().size(), 1u);
}

TEST_F(HttpServerTest, ModelsHealthAndRouting) {
  StartServer();
  Reply r = Request(http::verb::get, "/v1/models");
  ASSERT_EQ(r.status, 200);
  json::value v = json::parse(r.body);
  EXPECT_EQ(v.at("object"), "list");
  EXPECT_EQ(v.at("data").at(0).at("id"), kModel);
  EXPECT_EQ(v.at("data").at(0).at("object"), "model");
  EXPECT_EQ(v.at("data").at(0).at("owned_by"), "deepshard");
  EXPECT_EQ(I(v.at("data").at(0).at("max_model_len")), 4096);
  r = Request(http::verb::get, std::string("/v1/models/") + kModel);  // models.retrieve
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(json::parse(r.body).at("id"), kModel);
  r = Request(http::verb::get, "/v1/models/other-model");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(json::parse(r.body).at("error").at("code"), "model_not_found");
  r = Request(http::verb::get, "/health");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"status":"ok"})");
  r = Request(http::verb::get, "/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(json::parse(r.body).at("error").is_object());
  r = Request(http::verb::get, "/v1/completions");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.raw[http::field::allow], "POST");
  EXPECT_EQ(Request(http::verb::post, "/health").status, 405);
}

TEST_F(HttpServerTest, DrainingAndEngineErrors) {
  StartServer();
  engine_.SetHealth({true, false, "draining"});
  Reply r = Request(http::verb::get, "/health");
  EXPECT_EQ(r.status, 503);
  EXPECT_NE(r.body.find("draining"), std::string::npos);
  r = Post("/v1/completions", R"({"prompt":"a"})");
  EXPECT_EQ(r.status, 503);
  EXPECT_NE(r.body.find("draining"), std::string::npos);
  engine_.SetHealth({});

  engine_.SetSubmitError(absl::ResourceExhaustedError("the queue is full (64 waiting)"));
  r = Post("/v1/completions", R"({"prompt":"a"})");
  EXPECT_EQ(r.status, 429);
  EXPECT_NE(r.body.find("queue is full"), std::string::npos);
  engine_.SetSubmitError(absl::OutOfRangeError("prompt + max_tokens = 5000 > 4096"));
  EXPECT_EQ(Post("/v1/completions", R"({"prompt":"a"})").status, 400);
  engine_.SetSubmitError(absl::UnavailableError("rank 3 is down"));
  EXPECT_EQ(Post("/v1/completions", R"({"prompt":"a"})").status, 503);
  engine_.SetSubmitError(absl::InvalidArgumentError("`top_k` too large"));
  EXPECT_EQ(Post("/v1/completions", R"({"prompt":"a"})").status, 400);
  engine_.SetSubmitError(absl::OkStatus());

  // A failure mid-generation: an error response, or an error event in a stream.
  engine_.SetScript({tokens_, FinishReason::kError, "rank 2 died"});
  r = Post("/v1/completions", R"({"prompt":"a"})");
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(r.body.find("rank 2 died"), std::string::npos);
  r = Post("/v1/completions", R"({"prompt":"a","stream":true})");
  EXPECT_EQ(r.status, 200);
  std::vector<std::string> events = Events(r.body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  json::value err = json::parse(events[events.size() - 2]);
  EXPECT_NE(std::string(err.at("error").at("message").as_string()).find("rank 2 died"), std::string::npos);
}

TEST_F(HttpServerTest, BodyAndHeaderLimits) {
  HttpServerOptions o;
  o.max_body_bytes = 1000;
  o.max_header_bytes = 2000;
  StartServer(o);
  Reply r = Post("/v1/completions", R"({"prompt":")" + std::string(2000, 'a') + "\"}");
  EXPECT_EQ(r.status, 413);
  // Content-Length alone is enough: the body is never read.
  {
    beast::tcp_stream s = Connect();
    const std::string head =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{";
    net::write(s, net::buffer(head));
    beast::flat_buffer b;
    http::response<http::string_body> res;
    http::read(s, b, res);
    EXPECT_EQ(res.result_int(), 413);
  }
  r = Request(http::verb::get, "/v1/models", "", {{"X-Big", std::string(5000, 'b')}});
  EXPECT_EQ(r.status, 431);
  {
    beast::tcp_stream s = Connect();
    net::write(s, net::buffer(std::string("THIS IS NOT HTTP\r\n\r\n")));
    beast::flat_buffer b;
    http::response<http::string_body> res;
    http::read(s, b, res);
    EXPECT_EQ(res.result_int(), 400);
  }
  EXPECT_EQ(Request(http::verb::get, "/health").status, 200);  // still serving
}

TEST_F(HttpServerTest, ExpectContinue) {
  StartServer();
  beast::tcp_stream s = Connect();
  const std::string body = R"({"prompt":"a"})";
  const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: " +
                           std::to_string(body.size()) + "\r\n\r\n";
  net::write(s, net::buffer(head));
  std::string interim;
  net::read_until(s, net::dynamic_buffer(interim), "\r\n\r\n");
  EXPECT_EQ(interim.rfind("HTTP/1.1 100 Continue\r\n", 0), 0u) << interim;
  net::write(s, net::buffer(body));
  beast::flat_buffer b;
  http::response<http::string_body> res;
  http::read(s, b, res);
  EXPECT_EQ(res.result_int(), 200) << res.body();
}

TEST_F(HttpServerTest, KeepAliveServesTwoRequestsOnOneConnection) {
  StartServer();
  beast::tcp_stream s = Connect();
  Reply a = RoundTrip(s, http::verb::post, "/v1/completions", R"({"prompt":"a"})");
  EXPECT_EQ(a.status, 200);
  EXPECT_TRUE(a.raw.keep_alive());
  Reply b = RoundTrip(s, http::verb::post, "/v1/completions", R"({"prompt":"b","stream":true})");
  EXPECT_EQ(b.status, 200);
  Reply c = RoundTrip(s, http::verb::get, "/v1/models", "");
  EXPECT_EQ(c.status, 200);
  EXPECT_EQ(engine_.requests().size(), 2u);
}

TEST_F(HttpServerTest, ClientDisconnectCancelsPromptly) {
  engine_.SetScript({std::vector<int32_t>(100000, 19923), FinishReason::kStop, "", std::chrono::milliseconds(2)});
  engine_.SetMaxContext(1 << 20);
  StartServer();
  {
    beast::tcp_stream s = Connect();
    http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
    req.set(http::field::host, "x");
    req.body() = R"({"prompt":"a","stream":true,"max_tokens":100000})";
    req.prepare_payload();
    http::write(s, req);
    beast::flat_buffer b;
    http::response_parser<http::buffer_body> p;
    http::read_header(s, b, p);  // the stream has started
    EXPECT_EQ(p.get().result_int(), 200);
  }  // closes the socket mid-stream
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(engine_.WaitForCancels(1, std::chrono::seconds(1)));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));

  // Non-streaming: the pending read notices the close just the same.
  {
    beast::tcp_stream s = Connect();
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "x");
    req.body() = R"({"messages":[{"role":"user","content":"x"}],"max_tokens":100000})";
    req.prepare_payload();
    http::write(s, req);
    ASSERT_TRUE(engine_.WaitForRequests(2, std::chrono::seconds(2)));
  }
  ASSERT_TRUE(engine_.WaitForCancels(2, std::chrono::seconds(1)));

  // The server is fine afterwards, and counts the abandoned requests.
  EXPECT_EQ(Request(http::verb::get, "/health").status, 200);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (metrics_.Value("deepshard_requests_in_flight") != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(metrics_.Value("deepshard_requests_in_flight"), 0);
  EXPECT_EQ(metrics_.Value("deepshard_http_requests_total", {{"endpoint", "/v1/completions"}, {"status", "499"}}), 1);
}

TEST_F(HttpServerTest, AClientThatStopsReadingIsCancelled) {
  // As fast as the engine can: the socket buffers fill, then the server's queue.
  engine_.SetScript({std::vector<int32_t>(400000, 19923), FinishReason::kStop, "", std::chrono::milliseconds(0)});
  engine_.SetMaxContext(1 << 20);
  HttpServerOptions o;
  o.max_queued_bytes = 256 << 10;
  StartServer(o);
  beast::tcp_stream s(ioc_);
  s.socket().open(tcp::v4());
  s.socket().set_option(net::socket_base::receive_buffer_size(4096));
  s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(server_->port())));
  http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
  req.set(http::field::host, "x");
  req.body() = R"({"prompt":"a","stream":true,"max_tokens":400000})";
  req.prepare_payload();
  http::write(s, req);
  // ... and never read the response.
  ASSERT_TRUE(engine_.WaitForCancels(1, std::chrono::seconds(60)));
  EXPECT_EQ(Request(http::verb::get, "/health").status, 200);  // everyone else is fine
}

TEST_F(HttpServerTest, MetricsEndpoint) {
  StartServer();
  ASSERT_EQ(Post("/v1/completions", R"({"prompt":"a"})").status, 200);
  ASSERT_EQ(Post("/v1/completions", R"({"prompt":"a","n":30})").status, 400);
  Reply r = Request(http::verb::get, "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(r.body.find("deepshard_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1\n"),
            std::string::npos)
      << r.body;
  EXPECT_NE(r.body.find("deepshard_http_requests_total{endpoint=\"/v1/completions\",status=\"400\"} 1\n"),
            std::string::npos);
  EXPECT_NE(r.body.find("deepshard_generation_tokens_total " + std::to_string(tokens_.size()) + "\n"),
            std::string::npos);
  EXPECT_NE(r.body.find("deepshard_prompt_tokens_total 2\n"), std::string::npos);  // BOS + "a"
  EXPECT_NE(r.body.find("deepshard_time_to_first_token_seconds_count 1\n"), std::string::npos);
  EXPECT_NE(r.body.find("deepshard_inter_token_latency_seconds_count " + std::to_string(tokens_.size() - 1) + "\n"),
            std::string::npos);
  EXPECT_NE(r.body.find("deepshard_request_latency_seconds_count{endpoint=\"/v1/completions\"} 1\n"),
            std::string::npos);
  EXPECT_NE(r.body.find("deepshard_requests_in_flight 0\n"), std::string::npos);
}

TEST_F(HttpServerTest, StopWithRequestsInFlight) {
  engine_.SetScript({std::vector<int32_t>(100000, 19923), FinishReason::kStop, "", std::chrono::milliseconds(2)});
  engine_.SetMaxContext(1 << 20);
  StartServer();
  beast::tcp_stream s = Connect();
  http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
  req.set(http::field::host, "x");
  req.body() = R"({"prompt":"a","max_tokens":100000})";
  req.prepare_payload();
  http::write(s, req);
  ASSERT_TRUE(engine_.WaitForRequests(1, std::chrono::seconds(2)));
  server_->Stop();
  EXPECT_TRUE(engine_.WaitForCancels(1, std::chrono::seconds(1)));
  server_.reset();  // the engine's late events go nowhere
}

TEST_F(HttpServerTest, StartFailsOnABusyPort) {
  StartServer();
  Metrics m2;
  HttpServerOptions o;
  o.port = server_->port();
  HttpServer second(o, &V3(), engine_, m2);
  absl::Status s = second.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(std::string(s.message()).find(std::to_string(server_->port())), std::string::npos);
}

}  // namespace
}  // namespace deepshard::serve
