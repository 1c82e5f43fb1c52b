// The terminal chat client against a real HttpServer + FakeEngine: two turns,
// /reset, the prompts the engine received, the printed text, and errors
// (bad URL, unreachable server, a rejected request, a wrong API key).
#include "serve/chat_client.h"

#include <sstream>
#include <string>

#include "boost/json.hpp"
#include "gtest/gtest.h"
#include "text/chat/chat_template.h"
#include "serve/http_server.h"
#include "tests/serve/fake_engine.h"
#include "tests/util/tokenizers.h"

namespace deepshard::serve {
namespace {

namespace json = boost::json;
using testing::FakeEngine;

const Tokenizer& V3() { return testing_util::DeepseekV3Tokenizer(); }

std::vector<int32_t> ChatPrompt(const json::array& messages) {
  auto rendered = ApplyChatTemplate(V3().chat_template(), messages, true, V3().bos_token(), V3().eos_token());
  EXPECT_TRUE(rendered.ok()) << rendered.status();
  return V3().Encode(*rendered, false);
}

class ChatClientTest : public ::testing::Test {
 protected:
  void Start(HttpServerOptions o = {}) {
    reply_tokens_ = V3().Encode("Paris, of course.", false);
    reply_tokens_.push_back(*V3().eos_id());
    engine_.SetScript({reply_tokens_});
    o.model_name = "m";
    server_ = std::make_unique<HttpServer>(o, &V3(), engine_, metrics_);
    ASSERT_TRUE(server_->Start().ok());
    url_ = "http://127.0.0.1:" + std::to_string(server_->port());
  }
  FakeEngine engine_;
  Metrics metrics_;
  std::unique_ptr<HttpServer> server_;
  std::vector<int32_t> reply_tokens_;
  std::string url_;
};

TEST_F(ChatClientTest, TwoTurnsThenReset) {
  Start();
  std::istringstream in("Capital of France?\n\nAnd Italy?\n/reset\nHello\n/exit\nnever read\n");
  std::ostringstream out, err;
  ChatOptions o;
  o.url = url_ + "/";
  o.system = "Be brief.";
  o.model = "m";
  o.max_tokens = 64;
  o.temperature = 0;
  EXPECT_EQ(RunChat(o, in, out, err), 0);
  EXPECT_EQ(err.str(), "");
  const std::string reply = "Paris, of course.";
  EXPECT_EQ(out.str(), reply + "\n" + reply + "\n" + reply + "\n");

  const auto requests = engine_.requests();
  ASSERT_EQ(requests.size(), 3u);
  json::object sys{{"role", "system"}, {"content", "Be brief."}};
  json::object u1{{"role", "user"}, {"content", "Capital of France?"}};
  json::object a1{{"role", "assistant"}, {"content", reply}};
  json::object u2{{"role", "user"}, {"content", "And Italy?"}};
  json::object u3{{"role", "user"}, {"content", "Hello"}};
  EXPECT_EQ(requests[0].prompt, ChatPrompt(json::array{sys, u1}));
  EXPECT_EQ(requests[1].prompt, ChatPrompt(json::array{sys, u1, a1, u2}));
  EXPECT_EQ(requests[2].prompt, ChatPrompt(json::array{sys, u3}));  // /reset keeps the system prompt
  EXPECT_EQ(requests[0].max_tokens, 64);
  EXPECT_EQ(requests[0].sampling.temperature, 0.0f);
}

TEST_F(ChatClientTest, ServerErrorsArePrintedAndTheChatGoesOn) {
  Start();
  std::istringstream in("first\nsecond\n");
  std::ostringstream out, err;
  ChatOptions o;
  o.url = url_;
  o.max_tokens = 100000;  // more than the context: 400
  EXPECT_EQ(RunChat(o, in, out, err), 0);  // EOF ends it
  EXPECT_NE(err.str().find(url_ + ": HTTP 400: "), std::string::npos) << err.str();
  EXPECT_NE(err.str().find("maximum context length"), std::string::npos) << err.str();
  EXPECT_TRUE(engine_.requests().empty());

  // A generation that fails mid-stream: the SSE error event is reported.
  engine_.SetScript({reply_tokens_, FinishReason::kError, "rank 1 died"});
  std::istringstream in2("hi\n");
  std::ostringstream out2, err2;
  o.max_tokens.reset();
  EXPECT_EQ(RunChat(o, in2, out2, err2), 0);
  EXPECT_NE(err2.str().find("rank 1 died"), std::string::npos) << err2.str();
}

TEST_F(ChatClientTest, ApiKey) {
  HttpServerOptions so;
  so.api_key = "k1";
  Start(so);
  std::istringstream in("hi\n");
  std::ostringstream out, err;
  ChatOptions o;
  o.url = url_;
  EXPECT_EQ(RunChat(o, in, out, err), 1);  // the probe is refused
  EXPECT_NE(err.str().find("HTTP 401"), std::string::npos) << err.str();
  std::istringstream in2("hi\n");
  std::ostringstream out2, err2;
  o.api_key = "k1";
  EXPECT_EQ(RunChat(o, in2, out2, err2), 0);
  EXPECT_EQ(out2.str(), "Paris, of course.\n");
}

ChatOptions Url(const std::string& url) {
  ChatOptions o;
  o.url = url;
  return o;
}

TEST(ChatClientUrlTest, BadOrUnreachableUrl) {
  std::istringstream in("hi\n");
  std::ostringstream out, err;
  EXPECT_EQ(RunChat(Url("ftp://x"), in, out, err), 2);
  EXPECT_NE(err.str().find("ftp://x"), std::string::npos);
  EXPECT_EQ(RunChat(Url("http://127.0.0.1:99999"), in, out, err), 2);
  std::ostringstream err2;
  EXPECT_EQ(RunChat(Url("http://127.0.0.1:1"), in, out, err2), 1);  // nothing listens on port 1
  EXPECT_NE(err2.str().find("cannot reach http://127.0.0.1:1"), std::string::npos) << err2.str();

  auto u = ParseHttpUrl("http://[::1]:8080/base/");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, "8080");
  EXPECT_EQ(u->base, "/base");
  u = ParseHttpUrl("http://localhost");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->port, "80");
  EXPECT_EQ(u->base, "");
  EXPECT_FALSE(ParseHttpUrl("https://x").ok());
  EXPECT_FALSE(ParseHttpUrl("http://:80").ok());
  EXPECT_FALSE(ParseHttpUrl("http://h:0").ok());
}

}  // namespace
}  // namespace deepshard::serve
