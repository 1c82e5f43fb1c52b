// HttpServer end to end over real sockets, against FakeEngine and the real
// DeepSeek-V3 tokenizer: completions and chat (plain and streamed), stop
// strings that cancel the engine, request errors naming fields, auth, limits,
// engine errors, keep-alive, client disconnects, and /metrics.
#include "serve/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>
#include <string>
#include <vector>

#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
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
  if (method == http::verb::head) parser.skip(true);  // a HEAD response has no body, whatever its Content-Length
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
  // The model is kModel unless `o` names another.
  void StartServer(HttpServerOptions o = {}, const Tokenizer* tokenizer = &V3()) {
    if (o.model_name == HttpServerOptions{}.model_name) o.model_name = kModel;
    server_ = std::make_unique<HttpServer>(o, tokenizer, engine_, metrics_);
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
  Reply Get(const std::string& target, const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    return Request(http::verb::get, target, "", headers);
  }

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

// ---- protocol details: model ids, HEAD, CORS, /tokenize, /detokenize ----

TEST_F(HttpServerTest, ModelIdIsPercentDecoded) {
  HttpServerOptions o;
  o.model_name = "deepseek-ai/DeepSeek-V3";
  StartServer(o);
  for (const char* target : {"/v1/models/deepseek-ai%2FDeepSeek-V3", "/v1/models/deepseek-ai%2fDeepSeek-V3",
                             "/v1/models/deepseek-ai/DeepSeek-V3", "/v1/models/deepseek%2Dai%2FDeepSeek-V3?x=1"}) {
    Reply r = Get(target);
    ASSERT_EQ(r.status, 200) << target << ": " << r.body;
    EXPECT_EQ(json::parse(r.body).at("id"), "deepseek-ai/DeepSeek-V3") << target;
  }
  Reply r = Get("/v1/models/other%20model");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.body.find("`other model`"), std::string::npos) << r.body;  // named as decoded
  // An id that decodes to bytes that are not UTF-8: the error is still JSON (U+FFFD).
  r = Get("/v1/models/a%FFb");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(json::parse(r.body).at("error").at("message"),
            "the model `a\uFFFDb` does not exist; this server serves `deepseek-ai/DeepSeek-V3`")
      << r.body;
  for (const char* target : {"/v1/models/deepseek-ai%2GDeepSeek-V3", "/v1/models/deepseek-ai%2", "/v1/models/%"}) {
    r = Get(target);
    EXPECT_EQ(r.status, 400) << target;
    EXPECT_NE(json::parse(r.body).at("error").at("message").as_string().find(target), std::string::npos) << r.body;
  }
  r = Get("/metrics");
  EXPECT_NE(r.body.find("deepshard_http_requests_total{endpoint=\"/v1/models/{id}\",status=\"200\"} 4\n"),
            std::string::npos)
      << r.body;
}

TEST_F(HttpServerTest, HeadAnswersEveryGetEndpointWithoutABody) {
  StartServer();
  for (const std::string& target : std::vector<std::string>{"/health", "/v1/models", std::string("/v1/models/") + kModel,
                                                             "/v1/models/nope", "/nope"}) {
    Reply get = Get(target);
    Reply head = Request(http::verb::head, target);
    EXPECT_EQ(head.status, get.status) << target;
    EXPECT_EQ(head.content_type, get.content_type) << target;
    EXPECT_EQ(head.raw[http::field::content_length], std::to_string(get.body.size())) << target;
    EXPECT_TRUE(head.body.empty()) << target;
  }
  Reply head = Request(http::verb::head, "/metrics");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.content_type, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_GT(std::stoul(std::string(head.raw[http::field::content_length])), 100u);
  // No body bytes on the wire: the next request on the connection is answered in turn.
  beast::tcp_stream s = Connect();
  EXPECT_EQ(RoundTrip(s, http::verb::head, "/v1/models", "").status, 200);
  EXPECT_EQ(RoundTrip(s, http::verb::head, "/metrics", "").status, 200);
  Reply after = RoundTrip(s, http::verb::get, "/v1/models", "");
  ASSERT_EQ(after.status, 200);
  EXPECT_EQ(json::parse(after.body).at("object"), "list");
  // 405s name HEAD where GET is allowed, and HEAD is no POST.
  Reply r = Post("/health", "{}");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.raw[http::field::allow], "GET, HEAD");
  EXPECT_EQ(Post("/v1/models", "{}").raw[http::field::allow], "GET, HEAD");
  r = Request(http::verb::head, "/v1/completions");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.raw[http::field::allow], "POST");
  EXPECT_TRUE(engine_.requests().empty());
}

TEST_F(HttpServerTest, NoCorsByDefault) {
  StartServer();
  Reply r = Get("/v1/models", {{"Origin", "https://app.example"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.raw.count(http::field::access_control_allow_origin), 0u);
  EXPECT_EQ(r.raw.count(http::field::vary), 0u);
  r = Request(http::verb::options, "/v1/chat/completions", "",
              {{"Origin", "https://app.example"}, {"Access-Control-Request-Method", "POST"}});
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.raw[http::field::allow], "POST");
  EXPECT_EQ(r.raw.count(http::field::access_control_allow_origin), 0u);
  EXPECT_EQ(r.raw.count(http::field::access_control_allow_methods), 0u);
}

TEST_F(HttpServerTest, CorsWithAnOriginList) {
  HttpServerOptions o;
  o.allowed_origins = {"https://app.example", "http://localhost:3000"};
  o.api_key = "sekret";
  StartServer(o);
  const std::pair<std::string, std::string> auth{"Authorization", "Bearer sekret"};
  Reply r = Get("/v1/models", {{"Origin", "http://localhost:3000"}, auth});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.raw[http::field::access_control_allow_origin], "http://localhost:3000");
  EXPECT_EQ(r.raw[http::field::vary], "Origin");
  r = Get("/v1/models", {{"Origin", "https://evil.example"}, auth});
  EXPECT_EQ(r.status, 200);  // served, but the browser will not hand it over
  EXPECT_EQ(r.raw.count(http::field::access_control_allow_origin), 0u);
  EXPECT_EQ(r.raw[http::field::vary], "Origin");
  r = Get("/v1/models", {{"Origin", "https://app.example"}});  // no key: still 401, readable by the page
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.raw[http::field::access_control_allow_origin], "https://app.example");

  // Preflight: on any path, without the key.
  r = Request(http::verb::options, "/v1/chat/completions", "",
              {{"Origin", "https://app.example"},
               {"Access-Control-Request-Method", "POST"},
               {"Access-Control-Request-Headers", "authorization,content-type,x-stainless-os"}});
  EXPECT_EQ(r.status, 204);
  EXPECT_TRUE(r.body.empty());
  EXPECT_EQ(r.raw[http::field::access_control_allow_origin], "https://app.example");
  EXPECT_EQ(r.raw[http::field::vary], "Origin");
  EXPECT_EQ(r.raw[http::field::access_control_allow_methods], "GET, POST, HEAD, OPTIONS");
  EXPECT_EQ(r.raw[http::field::access_control_allow_headers], "authorization,content-type,x-stainless-os");
  EXPECT_EQ(r.raw[http::field::access_control_max_age], "600");
  r = Request(http::verb::options, "/tokenize", "", {{"Origin", "https://app.example"}});
  EXPECT_EQ(r.status, 204);
  EXPECT_EQ(r.raw[http::field::access_control_allow_headers], "Authorization, Content-Type");
  r = Request(http::verb::options, "/v1/models", "", {{"Origin", "https://evil.example"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.raw.count(http::field::access_control_allow_origin), 0u);
  EXPECT_NE(r.body.find("https://evil.example"), std::string::npos);

  // Generation responses, streamed too, carry the headers; 405s list OPTIONS.
  r = Request(http::verb::post, "/v1/completions", R"({"prompt":"a","stream":true})",
              {{"Origin", "https://app.example"}, auth});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "text/event-stream");
  EXPECT_EQ(r.raw[http::field::access_control_allow_origin], "https://app.example");
  r = Request(http::verb::get, "/v1/completions", "", {{"Origin", "https://app.example"}, auth});
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.raw[http::field::allow], "POST, OPTIONS");
  EXPECT_EQ(engine_.requests().size(), 1u);
}

TEST_F(HttpServerTest, CorsWithAnyOrigin) {
  HttpServerOptions o;
  o.allowed_origins = {"*"};
  StartServer(o);
  Reply r = Get("/health", {{"Origin", "https://anything.example"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.raw[http::field::access_control_allow_origin], "*");
  r = Get("/health");  // no Origin: no CORS answer
  EXPECT_EQ(r.raw.count(http::field::access_control_allow_origin), 0u);
  r = Request(http::verb::options, "/nowhere", "", {{"Origin", "null"}});
  EXPECT_EQ(r.status, 204);
  EXPECT_EQ(r.raw[http::field::access_control_allow_origin], "*");
}

TEST_F(HttpServerTest, TokenizeAPrompt) {
  StartServer();
  Reply r = Post("/tokenize", R"({"model":"deepseek-v3","prompt":"Hello world"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "application/json");
  json::value v = json::parse(r.body);
  const std::vector<int32_t> want = V3().Encode("Hello world", true);
  ASSERT_EQ(v.at("tokens").as_array().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(I(v.at("tokens").at(i)), want[i]);
  EXPECT_EQ(want.front(), *V3().bos_id());
  EXPECT_EQ(I(v.at("count")), static_cast<int64_t>(want.size()));
  EXPECT_EQ(I(v.at("max_model_len")), 4096);
  EXPECT_FALSE(v.as_object().contains("token_strs"));

  v = json::parse(Post("/tokenize", R"({"prompt":"Hello world","add_special_tokens":false,
                                        "return_token_strs":true})").body);
  const std::vector<int32_t> plain = V3().Encode("Hello world", false);
  ASSERT_EQ(I(v.at("count")), static_cast<int64_t>(plain.size()));
  ASSERT_EQ(v.at("token_strs").as_array().size(), plain.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_EQ(I(v.at("tokens").at(i)), plain[i]);
    EXPECT_EQ(v.at("token_strs").at(i).as_string(), V3().IdToToken(plain[i]));
  }
  EXPECT_EQ(v.at("token_strs").at(1).as_string(), "Ġworld");
  EXPECT_TRUE(engine_.requests().empty());  // the engine is not involved
}

TEST_F(HttpServerTest, TokenizeAChat) {
  StartServer();
  const std::string messages = R"("messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi!"}])";
  auto tokens = [&](const std::string& body) {
    Reply r = Post("/tokenize", body);
    EXPECT_EQ(r.status, 200) << body << ": " << r.body;
    std::vector<int32_t> out;
    if (r.status != 200) return out;
    json::value v = json::parse(r.body);
    for (const json::value& t : v.at("tokens").as_array()) out.push_back(static_cast<int32_t>(I(t)));
    EXPECT_EQ(I(v.at("count")), static_cast<int64_t>(out.size()));
    return out;
  };
  // What /v1/chat/completions sends to the engine.
  ASSERT_EQ(Post("/v1/chat/completions", "{" + messages + "}").status, 200);
  const std::vector<int32_t> chat_prompt = engine_.requests().at(0).prompt;
  EXPECT_EQ(tokens("{" + messages + "}"), chat_prompt);
  EXPECT_EQ(tokens("{" + messages + R"(,"add_generation_prompt":true})"), chat_prompt);
  EXPECT_EQ(V3().Decode(chat_prompt, false), "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi!<｜Assistant｜>");
  // Without the generation prompt: the same, less "<｜Assistant｜>".
  std::vector<int32_t> no_gen = tokens("{" + messages + R"(,"add_generation_prompt":false})");
  EXPECT_EQ(no_gen, std::vector<int32_t>(chat_prompt.begin(), chat_prompt.end() - 1));
  EXPECT_EQ(tokens("{" + messages + R"(,"chat_template_kwargs":{"add_generation_prompt":false}})"), no_gen);
  // add_special_tokens: BOS on top of the template's own.
  std::vector<int32_t> special = tokens("{" + messages + R"(,"add_special_tokens":true})");
  ASSERT_EQ(special.size(), chat_prompt.size() + 1);
  EXPECT_EQ(special[0], *V3().bos_id());
  EXPECT_EQ(std::vector<int32_t>(special.begin() + 1, special.end()), chat_prompt);
  // continue_final_message: the last (assistant) message is left open.
  const std::string prefill = R"("messages":[{"role":"user","content":"Hi!"},
                                             {"role":"assistant","content":"The answer is "}])";
  std::vector<int32_t> cont = tokens("{" + prefill + R"(,"continue_final_message":true})");
  EXPECT_EQ(V3().Decode(cont, false), "<｜begin▁of▁sentence｜><｜User｜>Hi!<｜Assistant｜>The answer is");
  EXPECT_EQ(V3().Decode(tokens("{" + prefill + R"(,"add_generation_prompt":false})"), false),
            "<｜begin▁of▁sentence｜><｜User｜>Hi!<｜Assistant｜>The answer is <｜end▁of▁sentence｜>");
  Reply r = Post("/tokenize", "{" + prefill + R"(,"continue_final_message":true,"add_generation_prompt":true})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(ErrorParam(r), "continue_final_message");
  // token_strs of a chat.
  json::value v = json::parse(Post("/tokenize", "{" + messages + R"(,"return_token_strs":true})").body);
  EXPECT_EQ(v.at("token_strs").as_array().back().as_string(), "<｜Assistant｜>");
}

TEST_F(HttpServerTest, TokenizeErrorsNameTheField) {
  StartServer();
  struct Case {
    std::string body;
    int status;
    std::string param;
  } cases[] = {
      {R"({"prompt":5})", 400, "prompt"},
      {R"({"prompt":["a"]})", 400, "prompt"},
      {R"({})", 400, "prompt"},
      {R"({"prompt":"a","messages":[{"role":"user","content":"x"}]})", 400, "prompt"},
      {R"({"prompt":"a","add_special_tokens":"yes"})", 400, "add_special_tokens"},
      {R"({"prompt":"a","return_token_strs":1})", 400, "return_token_strs"},
      {R"({"prompt":"a","model":"gpt-4"})", 404, "model"},
      {R"({"prompt":"a","model":7})", 400, "model"},
      {R"({"messages":[]})", 400, "messages"},
      {R"({"messages":[{"role":"wizard","content":"x"}]})", 400, "messages"},
      {R"({"messages":[{"role":"user","content":"x"}],"add_generation_prompt":"no"})", 400, "add_generation_prompt"},
      {R"({"messages":[{"role":"user","content":"x"}],"chat_template":"{{ messages }}"})", 400, "chat_template"},
      {R"({"messages":[{"role":"user","content":"x"}],"model":"gpt-4"})", 404, "model"},
      {R"(["prompt"])", 400, ""},
      {R"({"prompt":)", 400, ""},
  };
  for (const Case& c : cases) {
    Reply r = Post("/tokenize", c.body);
    EXPECT_EQ(r.status, c.status) << c.body << ": " << r.body;
    EXPECT_EQ(ErrorParam(r), c.param) << c.body << ": " << r.body;
  }
  EXPECT_EQ(json::parse(Post("/tokenize", R"({"prompt":"a","model":"gpt-4"})").body).at("error").at("code"),
            "model_not_found");
  Reply r = Get("/tokenize");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.raw[http::field::allow], "POST");
  EXPECT_EQ(Get("/detokenize").status, 405);
}

TEST_F(HttpServerTest, Detokenize) {
  StartServer();
  const std::vector<int32_t> ids = V3().Encode("Hello world", true);
  json::array a;
  for (int32_t id : ids) a.push_back(id);
  Reply r = Post("/detokenize", json::serialize(json::object{{"model", kModel}, {"tokens", a}}));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "application/json");
  json::value v = json::parse(r.body);
  EXPECT_EQ(v.as_object().size(), 1u);
  EXPECT_EQ(v.at("prompt").as_string(), "<｜begin▁of▁sentence｜>Hello world");  // special tokens kept, as vLLM
  EXPECT_EQ(json::parse(Post("/detokenize", R"({"tokens":[]})").body).at("prompt"), "");

  struct Case {
    std::string body;
    int status;
    std::string param;
    std::string needle;
  } cases[] = {
      {R"({})", 400, "tokens", "`tokens`"},
      {R"({"tokens":"Hello"})", 400, "tokens", "`tokens`"},
      {R"({"tokens":[1,"a"]})", 400, "tokens", "`tokens[1]`"},
      {R"({"tokens":[1,2.5]})", 400, "tokens", "`tokens[1]`"},
      {R"({"tokens":[-1]})", 400, "tokens", "`tokens[0]` = -1"},
      {R"({"tokens":[0,999999999]})", 400, "tokens", "`tokens[1]` = 999999999"},
      {R"({"tokens":[0],"model":"gpt-4"})", 404, "model", "gpt-4"},
  };
  for (const Case& c : cases) {
    r = Post("/detokenize", c.body);
    EXPECT_EQ(r.status, c.status) << c.body << ": " << r.body;
    EXPECT_EQ(ErrorParam(r), c.param) << c.body;
    EXPECT_NE(r.body.find(c.needle), std::string::npos) << c.body << ": " << r.body;
  }
  // Counted by endpoint, like the others.
  ASSERT_EQ(Post("/tokenize", R"({"prompt":"a"})").status, 200);
  r = Get("/metrics");
  EXPECT_NE(r.body.find("deepshard_http_requests_total{endpoint=\"/detokenize\",status=\"200\"} 2\n"),
            std::string::npos)
      << r.body;
  EXPECT_NE(r.body.find("deepshard_http_requests_total{endpoint=\"/detokenize\",status=\"400\"} 6\n"),
            std::string::npos);
  EXPECT_NE(r.body.find("deepshard_http_requests_total{endpoint=\"/tokenize\",status=\"200\"} 1\n"),
            std::string::npos);
}

TEST_F(HttpServerTest, TokenizerEndpointsNeedATokenizer) {
  StartServer({}, /*tokenizer=*/nullptr);
  for (const char* path : {"/tokenize", "/detokenize"}) {
    Reply r = Post(path, R"({"prompt":"a","tokens":[1]})");
    EXPECT_EQ(r.status, 404) << path;
    json::value v = json::parse(r.body);
    EXPECT_EQ(v.at("error").at("code"), "not_found");
    EXPECT_NE(std::string(v.at("error").at("message").as_string()).find("no tokenizer"), std::string::npos);
  }
}

}  // namespace
// ---- issue 16: connections that go away in odd ways, and descriptor shortage ----

std::string RawRequest(const std::string& body, const std::string& target = "/v1/completions") {
  return absl::StrCat("POST ", target, " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ",
                      body.size(), "\r\n\r\n", body);
}

// Reads until EOF or `timeout`; returns what came.
std::string ReadAll(int fd, std::chrono::milliseconds timeout) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    const int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
    if (::poll(&p, 1, std::max(left, 1)) <= 0) break;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

int RawConnect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return fd;
}

void SendAll(int fd, const std::string& s) {
  size_t sent = 0;
  while (sent < s.size()) {
    const ssize_t n = ::send(fd, s.data() + sent, s.size() - sent, MSG_NOSIGNAL);
    ASSERT_GT(n, 0);
    sent += static_cast<size_t>(n);
  }
}

// The final responses (1xx interim ones skipped) of a connection, read from
// `fd` (which stays open) until `n` came, EOF, or `timeout` without a byte.
std::vector<http::response<http::string_body>> ReadResponses(int fd, size_t n, std::chrono::milliseconds timeout,
                                                             bool* eof_after = nullptr) {
  net::io_context ioc;
  tcp::socket sock(ioc, tcp::v4(), ::dup(fd));
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
  ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::vector<http::response<http::string_body>> out;
  beast::flat_buffer buffer;
  while (out.size() < n) {
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    beast::error_code ec;
    http::read(sock, buffer, parser, ec);
    if (ec) break;
    if (parser.get().result_int() / 100 == 1) continue;
    out.push_back(parser.release());
  }
  if (eof_after != nullptr) {
    char c;
    *eof_after = buffer.size() == 0 && ::recv(sock.native_handle(), &c, 1, 0) == 0;
  }
  return out;
}

// Sends `chunk` over and over without blocking, until `cap` bytes went or the
// socket has accepted nothing for `stuck`; returns the bytes sent.
size_t SendUntilStuck(int fd, const std::string& chunk, size_t cap, std::chrono::milliseconds stuck) {
  size_t sent = 0;
  while (sent < cap) {
    const ssize_t n = ::send(fd, chunk.data(), std::min(chunk.size(), cap - sent), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) break;
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, static_cast<int>(stuck.count())) <= 0) break;
  }
  return sent;
}

// Pipelined bytes behind a running generation are read ahead up to 64 KiB,
// then the server stops reading (back-pressure: the socket buffers fill and
// the client's writes block, instead of the bytes being read and dropped as
// before); a client that then closes is still noticed at once, streaming or
// not (issue 16: "cancelled within one step, whatever state the connection is
// in"), although its close sits behind bytes the server has not read.
TEST_F(HttpServerTest, PipelinedBytesAreBackPressuredAndACloseIsStillNoticed) {
  engine_.SetScript({std::vector<int32_t>(100000, 19923), FinishReason::kStop, "", std::chrono::milliseconds(2)});
  engine_.SetMaxContext(1 << 20);
  StartServer();
  std::string chunk;
  while (chunk.size() < (64u << 10)) chunk += "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  size_t cancels = 0;
  for (const bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "stream" : "non-streaming");
    const int fd = RawConnect(server_->port());
    SendAll(fd, RawRequest(stream ? R"({"prompt":"a","max_tokens":100000,"stream":true})"
                                  : R"({"prompt":"a","max_tokens":100000})"));
    ASSERT_TRUE(engine_.WaitForRequests(cancels + 1, std::chrono::seconds(2)));
    // Far more than the socket buffers can hold (here at most 32 MiB for the
    // server's receive buffer, 4 MiB for the client's send buffer): a server
    // that reads on (and drops, or buffers) takes all of it.
    constexpr size_t kCap = 64u << 20;
    const size_t sent = SendUntilStuck(fd, chunk, kCap, std::chrono::milliseconds(500));
    RecordProperty(stream ? "bytes_accepted_stream" : "bytes_accepted_plain", std::to_string(sent));
    EXPECT_LT(sent, kCap) << "the server kept reading pipelined bytes behind a generation";
    EXPECT_GT(sent, 64u << 10);
    EXPECT_TRUE(engine_.cancelled().size() == cancels) << "cancelled before the client went away";
    ::close(fd);
    ++cancels;
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(engine_.WaitForCancels(cancels, std::chrono::seconds(1)));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (metrics_.Value("deepshard_requests_in_flight") != 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(metrics_.Value("deepshard_requests_in_flight"), 0);
  }
  EXPECT_EQ(metrics_.Value("deepshard_http_requests_total", {{"endpoint", "/v1/completions"}, {"status", "499"}}), 2);
}

// Replaces PipelinedOverflowGetsItsResponseThenClose, whose expectation was
// the old behaviour: past 64 KiB the pipelined requests were read and dropped,
// and the connection closed after the running generation's response. Now they
// are all served, in order, whatever their size (the server stops reading
// instead of dropping), also when the client half-closes after sending them.
TEST_F(HttpServerTest, PipelinedRequestsBeyondTheReadAheadAreServedInOrder) {
  engine_.SetScript({tokens_, FinishReason::kStop, "", std::chrono::milliseconds(20)});
  StartServer();
  const std::string padding(40 << 10, ' ');  // JSON whitespace: 3 bodies of 40 KiB, 120 KiB in all
  for (const bool half_close : {false, true}) {
    SCOPED_TRACE(half_close ? "then half-closed" : "kept open");
    const size_t before = engine_.requests().size();
    const int fd = RawConnect(server_->port());
    SendAll(fd, RawRequest(R"({"prompt":"a","stream":true})"));
    ASSERT_TRUE(engine_.WaitForRequests(before + 1, std::chrono::seconds(2)));
    // Behind the running stream: a stream, a plain completion, a stream,
    // told apart by max_tokens (and so by their usage).
    std::string pipelined;
    for (int k = 1; k <= 3; ++k) {
      pipelined += RawRequest(absl::StrCat(R"({"prompt":"b","max_tokens":)", k,
                                           k % 2 ? R"(,"stream":true,"stream_options":{"include_usage":true})" : "",
                                           padding, "}"));
    }
    ASSERT_GT(pipelined.size(), 64u << 10);
    // Written while the responses are read, as a pipelining client must
    // (neither side can block the other).
    std::thread writer([&] {
      SendAll(fd, pipelined);
      if (half_close) ::shutdown(fd, SHUT_WR);
    });
    bool eof = false;
    auto got = ReadResponses(fd, 4, std::chrono::seconds(5), half_close ? &eof : nullptr);
    writer.join();
    ::close(fd);
    ASSERT_EQ(got.size(), 4u) << "responses before the connection ended";
    for (const auto& r : got) EXPECT_EQ(r.result_int(), 200) << r.body();
    std::string text;
    for (const std::string& ev : Events(got[0].body())) {
      if (ev != "[DONE]") text += std::string(json::parse(ev).at("choices").at(0).at("text").as_string());
    }
    EXPECT_EQ(text, Text());
    for (int k = 1; k <= 3; ++k) {
      json::value usage;
      if (k % 2) {
        // A stream that starts after the client's EOF opens with a probe (an SSE comment).
        std::vector<std::string> events = Events(absl::StrReplaceAll(got[k].body(), {{": waiting\n\n", ""}}));
        ASSERT_GE(events.size(), 2u);
        EXPECT_EQ(events.back(), "[DONE]");
        usage = json::parse(events[events.size() - 2]).at("usage");
      } else {
        usage = json::parse(got[k].body()).at("usage");
      }
      EXPECT_EQ(I(usage.at("completion_tokens")), k) << "response " << k << " out of order";
    }
    if (half_close) {
      EXPECT_TRUE(eof) << "the connection closes after the last response";
    }
    const auto reqs = engine_.requests();
    ASSERT_EQ(reqs.size(), before + 4);
    for (int k = 1; k <= 3; ++k) EXPECT_EQ(reqs[before + k].max_tokens, k);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (metrics_.Value("deepshard_requests_in_flight") != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(metrics_.Value("deepshard_requests_in_flight"), 0);
  EXPECT_EQ(metrics_.Value("deepshard_http_requests_total", {{"endpoint", "/v1/completions"}, {"status", "200"}}), 8);
  EXPECT_TRUE(engine_.cancelled().empty());
}

TEST_F(HttpServerTest, FireAndForgetRequestsAreCancelled) {
  engine_.SetScript({std::vector<int32_t>(100000, 19923), FinishReason::kStop, "", std::chrono::milliseconds(2)});
  engine_.SetMaxContext(1 << 20);
  StartServer();
  constexpr int kClients = 20;
  for (int i = 0; i < kClients; ++i) {
    const int fd = RawConnect(server_->port());
    SendAll(fd, RawRequest(i % 2 ? R"({"prompt":"a","max_tokens":100000})"
                                 : R"({"prompt":"a","max_tokens":100000,"stream":true})"));
    ::close(fd);
  }
  ASSERT_TRUE(engine_.WaitForRequests(kClients, std::chrono::seconds(2)));
  EXPECT_TRUE(engine_.WaitForCancels(kClients, std::chrono::seconds(1))) << engine_.cancelled().size();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (metrics_.Value("deepshard_requests_in_flight") != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(metrics_.Value("deepshard_requests_in_flight"), 0);
}

TEST_F(HttpServerTest, HalfClosedClientGetsItsResponse) {
  engine_.SetScript({tokens_, FinishReason::kStop, "", std::chrono::milliseconds(5)});
  StartServer();
  for (const bool stream : {false, true}) {
    const int fd = RawConnect(server_->port());
    SendAll(fd, RawRequest(stream ? R"({"prompt":"a","stream":true})" : R"({"prompt":"a"})"));
    ::shutdown(fd, SHUT_WR);
    const std::string got = ReadAll(fd, std::chrono::seconds(2));
    ::close(fd);
    // An interim 100 Continue may come first.
    EXPECT_NE(got.find("HTTP/1.1 200 OK"), std::string::npos) << "stream=" << stream << ": " << got;
    EXPECT_NE(got.find(stream ? "[DONE]" : "\"finish_reason\":\"stop\""), std::string::npos) << got;
  }
  EXPECT_TRUE(engine_.cancelled().empty());
}

// A client that half-closes, reads what came (the first probe), then closes
// while its non-streaming response is still being generated: a closed socket
// answers data with a reset, so the server probes at every engine event, not
// once (one probe, already read, left the close unnoticed until the response).
TEST_F(HttpServerTest, HalfClosedThenClosedClientIsCancelled) {
  engine_.SetScript({std::vector<int32_t>(100000, 19923), FinishReason::kStop, "", std::chrono::milliseconds(2)});
  engine_.SetMaxContext(1 << 20);
  StartServer();
  const int fd = RawConnect(server_->port());
  SendAll(fd, RawRequest(R"({"prompt":"a","max_tokens":100000})"));
  ASSERT_TRUE(engine_.WaitForRequests(1, std::chrono::seconds(2)));
  ::shutdown(fd, SHUT_WR);
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (got.find("100 Continue\r\n\r\n") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  ASSERT_NE(got.find("HTTP/1.1 100 Continue\r\n\r\n"), std::string::npos) << got;
  char buf[4096];
  while (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
  EXPECT_TRUE(engine_.cancelled().empty()) << "a half-closed client is not gone";
  ::close(fd);  // nothing unread: no reset of its own, the close is silent
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(engine_.WaitForCancels(1, std::chrono::seconds(1)));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  const auto gauge_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (metrics_.Value("deepshard_requests_in_flight") != 0 && std::chrono::steady_clock::now() < gauge_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(metrics_.Value("deepshard_requests_in_flight"), 0);
}

TEST_F(HttpServerTest, MaxConnectionsAnswers503Beyond) {
  HttpServerOptions o;
  o.max_connections = 2;
  StartServer(o);
  beast::tcp_stream a = Connect();
  beast::tcp_stream b = Connect();
  EXPECT_EQ(RoundTrip(a, http::verb::get, "/health", "").status, 200);
  EXPECT_EQ(RoundTrip(b, http::verb::get, "/health", "").status, 200);
  const int fd = RawConnect(server_->port());
  const std::string got = ReadAll(fd, std::chrono::seconds(1));
  ::close(fd);
  EXPECT_EQ(got.rfind("HTTP/1.1 503", 0), 0u) << got;
  EXPECT_NE(got.find("\"code\":\"overloaded\""), std::string::npos) << got;
  EXPECT_EQ(metrics_.Value("deepshard_http_connections_refused_total", {{"reason", "max_connections"}}), 1);
  a.close();
  // Once a connection is gone, a new one is served.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  int status = 0;
  while (status != 200 && std::chrono::steady_clock::now() < deadline) {
    status = Request(http::verb::get, "/health").status;
    if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(status, 200);
}

// Out of descriptors: no busy accept loop, waiting clients get a 503, the
// failures are counted, and the server serves again once descriptors free up.
TEST_F(HttpServerTest, OutOfDescriptorsBacksOffAndAnswers503) {
  StartServer();
  constexpr int kClients = 3;
  std::vector<int> clients;
  for (int i = 0; i < kClients; ++i) clients.push_back(::socket(AF_INET, SOCK_STREAM, 0));
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  int max_fd = 0;
  for (int fd = 0; fd < 65536 && fd < static_cast<int>(old.rlim_cur); ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) max_fd = fd;
  }
  // One descriptor above the highest open one, so at least one filler exists
  // even when the open descriptors have no holes (a fresh CI process).
  rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(max_fd + 2);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> fillers;  // every free descriptor below the limit
  for (int fd; (fd = ::open("/dev/null", O_RDONLY)) >= 0;) fillers.push_back(fd);
  if (fillers.empty()) {
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);
    FAIL() << "no descriptor could be opened below the lowered limit " << low.rlim_cur;
  }
  ::close(fillers.back());  // room for exactly one connection
  fillers.pop_back();
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(server_->port()));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int fd : clients) ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  timespec c0{}, c1{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
  const double cpu = (c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) * 1e-9;
  EXPECT_LT(cpu, 0.1) << "the accept loop spins";
  int refused = 0;
  for (int i = 1; i < kClients; ++i) {
    const std::string got = ReadAll(clients[i], std::chrono::milliseconds(300));
    if (got.rfind("HTTP/1.1 503", 0) == 0) ++refused;
  }
  for (int fd : fillers) ::close(fd);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);
  for (int fd : clients) ::close(fd);
  EXPECT_EQ(refused, kClients - 1);
  EXPECT_GE(metrics_.Value("deepshard_http_accept_failures_total", {{"reason", "fd_limit"}}), 1);
  EXPECT_EQ(metrics_.Value("deepshard_http_connections_refused_total", {{"reason", "fd_limit"}}), kClients - 1);
  EXPECT_EQ(Request(http::verb::get, "/health").status, 200);
}

// A streaming client that stops reading: once its receive window has been shut
// for --send-timeout, the kernel drops the connection (TCP_USER_TIMEOUT) and
// the generation is cancelled. Without the timeout (0) nothing would end it
// before max_tokens: the control half of the test.
TEST_F(HttpServerTest, ClientThatStopsReadingIsDroppedAfterTheSendTimeout) {
  engine_.SetScript({std::vector<int32_t>(100000, 19923), FinishReason::kStop, "", std::chrono::milliseconds(1)});
  engine_.SetMaxContext(1 << 20);
  for (const int timeout_s : {1, 0}) {
    SCOPED_TRACE(absl::StrCat("send timeout ", timeout_s, " s"));
    HttpServerOptions o;
    o.send_timeout = std::chrono::seconds(timeout_s);
    StartServer(o);
    const size_t cancels_before = engine_.cancelled().size();
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    const int rcvbuf = 4096;  // a small window, shut after a few events
    ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(server_->port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    SendAll(fd, RawRequest(R"({"prompt":"a","max_tokens":100000,"stream":true})"));
    const bool cancelled = engine_.WaitForCancels(cancels_before + 1, std::chrono::seconds(timeout_s > 0 ? 10 : 3));
    EXPECT_EQ(cancelled, timeout_s > 0);
    ::close(fd);
    server_->Stop(0);
    server_.reset();
  }
}

}  // namespace deepshard::serve
