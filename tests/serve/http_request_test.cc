// The HTTP server's request side without sockets (serve/http_request.h): limits,
// read-error answers, keep-alive/pipelining, paths, routing. The server over real
// sockets is tested in http_server_test.cc; this is what http_request_fuzz runs.
#include "serve/http_request.h"

#include <string>
#include <tuple>
#include <vector>

#include "boost/json.hpp"

#include "gtest/gtest.h"

namespace deepshard::serve {
namespace {

namespace http = boost::beast::http;

const std::vector<std::string> kNoOrigins;
const std::vector<std::string> kOneOrigin = {"https://app.example"};

HttpRouting Routing(std::string_view key = "", const std::vector<std::string>& origins = kNoOrigins) {
  return HttpRouting{.api_key = key, .allowed_origins = origins, .model_name = "deepseek-ai/DeepSeek-V3"};
}

http::request_header<> Req(http::verb method, std::string_view target,
                           std::vector<std::pair<http::field, std::string>> fields = {}) {
  http::request_header<> h;
  h.method(method);
  h.target(target);
  h.version(11);
  for (auto& [f, v] : fields) h.set(f, v);
  return h;
}

TEST(HttpRequest, RoutesEveryEndpointWithItsMethod) {
  const HttpRouting r = Routing();
  EXPECT_EQ(RouteRequest(Req(http::verb::get, "/health"), r).endpoint, HttpEndpoint::kHealth);
  EXPECT_EQ(RouteRequest(Req(http::verb::head, "/health"), r).endpoint, HttpEndpoint::kHealth);
  EXPECT_EQ(RouteRequest(Req(http::verb::get, "/v1/models?x=1"), r).endpoint, HttpEndpoint::kModels);
  EXPECT_EQ(RouteRequest(Req(http::verb::get, "/metrics"), r).endpoint, HttpEndpoint::kMetrics);
  EXPECT_EQ(RouteRequest(Req(http::verb::post, "/v1/completions"), r).endpoint, HttpEndpoint::kCompletions);
  EXPECT_EQ(RouteRequest(Req(http::verb::post, "/v1/chat/completions"), r).endpoint, HttpEndpoint::kChat);
  EXPECT_EQ(RouteRequest(Req(http::verb::post, "/tokenize"), r).endpoint, HttpEndpoint::kTokenize);
  EXPECT_EQ(RouteRequest(Req(http::verb::post, "/detokenize"), r).endpoint, HttpEndpoint::kDetokenize);

  HttpRoute wrong = RouteRequest(Req(http::verb::get, "/v1/completions"), r);
  EXPECT_EQ(wrong.endpoint, HttpEndpoint::kError);
  EXPECT_EQ(wrong.error.http_status, 405);
  EXPECT_EQ(wrong.allow, "POST");
  EXPECT_EQ(wrong.error.message, "method GET is not allowed on /v1/completions; use POST");
  HttpRoute post_health = RouteRequest(Req(http::verb::post, "/health"), r);
  EXPECT_EQ(post_health.error.http_status, 405);
  EXPECT_EQ(post_health.allow, "GET, HEAD");

  HttpRoute unknown = RouteRequest(Req(http::verb::get, "/v2/x?y"), r);
  EXPECT_EQ(unknown.error.http_status, 404);
  EXPECT_EQ(unknown.error.code, "not_found");
  EXPECT_NE(unknown.error.message.find("no endpoint /v2/x;"), std::string::npos) << unknown.error.message;
}

TEST(HttpRequest, ApiKeyIsCheckedAfterHealthAndBeforeEverythingElse) {
  const HttpRouting r = Routing("sk-1");
  EXPECT_EQ(RouteRequest(Req(http::verb::get, "/health"), r).endpoint, HttpEndpoint::kHealth);
  for (std::string auth : {"", "Bearer sk-2", "Bearer sk-1x", "Basic sk-1", "sk-1", "Bearer "}) {
    HttpRoute no = RouteRequest(Req(http::verb::get, "/nowhere", {{http::field::authorization, auth}}), r);
    EXPECT_EQ(no.error.http_status, 401) << auth;
    EXPECT_TRUE(no.www_authenticate) << auth;
    EXPECT_EQ(no.error.code, "invalid_api_key");
  }
  for (std::string auth : {"Bearer sk-1", "bearer sk-1", "BEARER sk-1"}) {
    HttpRoute ok = RouteRequest(Req(http::verb::get, "/v1/models", {{http::field::authorization, auth}}), r);
    EXPECT_EQ(ok.endpoint, HttpEndpoint::kModels) << auth;
    EXPECT_FALSE(ok.www_authenticate);
  }
}

TEST(HttpRequest, ModelIdIsPercentDecoded) {
  const HttpRouting r = Routing();
  EXPECT_EQ(RouteRequest(Req(http::verb::get, "/v1/models/deepseek-ai%2FDeepSeek-V3"), r).endpoint,
            HttpEndpoint::kModel);
  EXPECT_EQ(RouteRequest(Req(http::verb::get, "/v1/models/deepseek-ai/DeepSeek-V3"), r).endpoint,
            HttpEndpoint::kModel);
  HttpRoute other = RouteRequest(Req(http::verb::get, "/v1/models/gpt%2d4"), r);
  EXPECT_EQ(other.error.http_status, 404);
  EXPECT_EQ(other.error.code, "model_not_found");
  EXPECT_NE(other.error.message.find("`gpt-4`"), std::string::npos) << other.error.message;
  for (std::string bad : {"/v1/models/%", "/v1/models/a%2", "/v1/models/%zz", "/v1/models/x%4g"}) {
    HttpRoute b = RouteRequest(Req(http::verb::get, bad), r);
    EXPECT_EQ(b.error.http_status, 400) << bad;
    EXPECT_NE(b.error.message.find("invalid percent-encoding"), std::string::npos);
  }
  EXPECT_EQ(PercentDecode("a%41%2f%2F+"), "aA//+");
  EXPECT_EQ(PercentDecode(""), "");
  EXPECT_FALSE(PercentDecode("%4").has_value());
}

// Paths, model ids and origins are quoted in errors as sent; Beast lets bytes
// 0x80-0xFF through in targets and field values, and %XX decodes to any byte. The
// error body must still be JSON (found by http_request_fuzz).
TEST(HttpRequest, ErrorsQuotingBytesThatAreNotUtf8AreStillJson) {
  const HttpRouting r = Routing("", kOneOrigin);
  for (auto [method, target, origin] : std::vector<std::tuple<http::verb, std::string, std::string>>{
           {http::verb::get, "/v1/models/%FF%2F", ""},         // 404, the decoded id
           {http::verb::get, "/v1/models/\xbf%", ""},          // 400, the path
           {http::verb::get, "/v\xc3\x28", ""},                 // 404, the path
           {http::verb::delete_, "/metrics\xe4\xbd", ""},       // 404 (an unknown path)
           {http::verb::options, "/", "https://\xff.example"}}) {  // 400, the origin
    HttpRoute route = RouteRequest(Req(method, target, {{http::field::origin, origin}}), r);
    ASSERT_EQ(route.endpoint, HttpEndpoint::kError) << target;
    boost::json::value v = boost::json::parse(ErrorJson(route.error));  // throws on invalid UTF-8
    EXPECT_NE(std::string(v.at("error").at("message").as_string()).find("\uFFFD"), std::string::npos) << target;
  }
}

TEST(HttpRequest, CorsPreflightNeedsNoKeyAndAnAllowedOrigin) {
  const HttpRouting r = Routing("sk-1", kOneOrigin);
  EXPECT_EQ(RouteRequest(Req(http::verb::options, "/v1/completions",
                             {{http::field::origin, "https://APP.example"}}),
                         r)
                .endpoint,
            HttpEndpoint::kPreflight);
  EXPECT_EQ(RouteRequest(Req(http::verb::options, "/anything"), r).endpoint, HttpEndpoint::kPreflight);
  HttpRoute evil = RouteRequest(Req(http::verb::options, "/v1/models", {{http::field::origin, "https://evil"}}), r);
  EXPECT_EQ(evil.error.http_status, 400);
  EXPECT_EQ(evil.error.message, "the origin https://evil is not allowed (--allowed-origins)");
  // CORS on: the Allow header of a 405 names OPTIONS too; CORS off: OPTIONS is a 405.
  HttpRoute wrong = RouteRequest(Req(http::verb::get, "/tokenize", {{http::field::authorization, "Bearer sk-1"}}), r);
  EXPECT_EQ(wrong.allow, "POST, OPTIONS");
  HttpRoute off = RouteRequest(Req(http::verb::options, "/v1/models"), Routing());
  EXPECT_EQ(off.error.http_status, 405);
  EXPECT_EQ(off.allow, "GET, HEAD");

  const std::vector<std::string> any = {"*"};
  EXPECT_EQ(AllowedOrigin("https://x", any), "*");
  EXPECT_EQ(AllowedOrigin("https://app.EXAMPLE", kOneOrigin), "https://app.EXAMPLE");
  EXPECT_EQ(AllowedOrigin("https://x", kOneOrigin), "");
  EXPECT_EQ(AllowedOrigin("", any), "");
}

TEST(HttpRequest, PathsAndMetricsLabels) {
  EXPECT_EQ(RequestPath("/v1/models?a=b?c"), "/v1/models");
  EXPECT_EQ(RequestPath("/x"), "/x");
  EXPECT_EQ(EndpointLabel("/v1/chat/completions"), "/v1/chat/completions");
  EXPECT_EQ(EndpointLabel("/v1/models/abc"), "/v1/models/{id}");
  EXPECT_EQ(EndpointLabel("/v1/completionsX"), "other");
}

TEST(HttpRequest, PipelinedKeepAliveRequestsUntilClose) {
  const std::string bytes =
      "GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
      "POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
      "POST /tokenize HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
      "GET /never HTTP/1.1\r\n\r\n";
  auto got = ParseHttpRequests(bytes, HttpLimits{}, Routing());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].route.endpoint, HttpEndpoint::kHealth);
  EXPECT_TRUE(got[0].keep_alive);
  ASSERT_TRUE(got[1].request.has_value());
  EXPECT_EQ(got[1].request->body(), "{}");
  EXPECT_EQ(got[1].route.endpoint, HttpEndpoint::kCompletions);
  EXPECT_EQ(got[2].request->body(), "abc");
  EXPECT_FALSE(got[2].keep_alive);
}

TEST(HttpRequest, LimitsAndMalformedRequestsAnswerThenClose) {
  const HttpLimits small{.max_body_bytes = 8, .max_header_bytes = 128};
  auto too_long = ParseHttpRequests("POST /v1/completions HTTP/1.1\r\nContent-Length: 9\r\n\r\n123456789", small,
                                    Routing());
  ASSERT_EQ(too_long.size(), 1u);
  ASSERT_TRUE(too_long[0].error.has_value());
  EXPECT_EQ(too_long[0].error->http_status, 413);
  EXPECT_EQ(too_long[0].error->message, "the request body is larger than the server's limit of 8 bytes");

  auto chunked = ParseHttpRequests(
      "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n12345\r\n0\r\n\r\n", small,
      Routing());
  ASSERT_EQ(chunked.size(), 1u);
  EXPECT_EQ(chunked[0].error->http_status, 413);

  auto headers = ParseHttpRequests("GET /health HTTP/1.1\r\nX-Big: " + std::string(200, 'x') + "\r\n\r\n", small,
                                   Routing());
  ASSERT_EQ(headers.size(), 1u);
  EXPECT_EQ(headers[0].error->http_status, 431);

  for (std::string bad : {"GARBAGE\r\n\r\n", "GET /health HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                          "GET /health HTTP/1.1\r\nHost", "POST /tokenize HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"}) {
    auto got = ParseHttpRequests(bad, HttpLimits{}, Routing());
    ASSERT_EQ(got.size(), 1u) << bad;
    ASSERT_TRUE(got[0].error.has_value()) << bad;
    EXPECT_EQ(got[0].error->http_status, 400) << bad;
    EXPECT_EQ(got[0].error->message.rfind("malformed HTTP request: ", 0), 0u) << got[0].error->message;
    EXPECT_FALSE(got[0].keep_alive);
  }
  EXPECT_TRUE(ParseHttpRequests("", HttpLimits{}, Routing()).empty());

  auto expect = ParseHttpRequests("POST /tokenize HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
                                  HttpLimits{}, Routing());
  ASSERT_EQ(expect.size(), 1u);
  EXPECT_TRUE(expect[0].expect_continue);
  EXPECT_EQ(expect[0].request->body(), "x");
}

}  // namespace
}  // namespace deepshard::serve
