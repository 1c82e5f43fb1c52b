// libFuzzer: the HTTP server's request side on raw connection bytes
// (serve/http_request.h): Beast's request parser with the server's limits, the
// 413/431/400 answers, keep-alive and pipelining, the path and metrics label,
// routing (CORS preflight, API key, methods, /v1/models/{id} percent-decoding),
// then the OpenAI parsers on the body of a completion or chat request.
// Input: one byte of server options, then what the client sent:
//   bit 0: an API key ("sk-fuzz"); bits 1-2: CORS off / one origin / "*";
//   bit 3: small limits (256-byte body, 512-byte header) instead of the defaults.
// Every answer must be well-formed: an error JSON that parses, a status the
// server can send, the Allow / WWW-Authenticate headers where they belong.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "boost/json.hpp"
#include "serve/http_request.h"
#include "serve/openai_api.h"

using namespace deepshard::serve;
namespace http = boost::beast::http;

namespace {

[[noreturn]] void Fail(const char* what, std::string_view detail = "") {
  std::fprintf(stderr, "http_request_fuzz: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

// An error body must be JSON (valid UTF-8 included) of OpenAI's shape.
void CheckErrorJson(const ApiError& e) {
  const std::string body = ErrorJson(e);
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(body, ec);
  if (ec) Fail("error body is not JSON", body);
  const boost::json::object* top = v.if_object();
  const boost::json::value* err = top != nullptr ? top->if_contains("error") : nullptr;
  const boost::json::object* fields = err != nullptr ? err->if_object() : nullptr;
  const boost::json::value* message = fields != nullptr ? fields->if_contains("message") : nullptr;
  if (message == nullptr || !message->is_string()) Fail("error body shape", body);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 65536) return 0;
  const uint8_t opts = data[0];
  std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);

  static const std::vector<std::string> kOneOrigin = {"https://app.example"};
  static const std::vector<std::string> kAnyOrigin = {"*"};
  HttpRouting routing;
  routing.api_key = (opts & 1) ? "sk-fuzz" : "";
  const int cors = (opts >> 1) & 3;
  if (cors == 1) routing.allowed_origins = kOneOrigin;
  if (cors >= 2) routing.allowed_origins = kAnyOrigin;
  routing.model_name = "deepseek-ai/DeepSeek-V3";
  HttpLimits limits;
  if (opts & 8) limits = HttpLimits{.max_body_bytes = 256, .max_header_bytes = 512};

  const std::vector<ParsedHttpRequest> got = ParseHttpRequests(bytes, limits, routing, 8);
  for (size_t i = 0; i < got.size(); ++i) {
    const ParsedHttpRequest& r = got[i];
    if (r.request.has_value() == r.error.has_value()) Fail("exactly one of request and error");
    if (r.error) {
      const int s = r.error->http_status;
      if (s != 400 && s != 413 && s != 431) Fail("read error status", std::to_string(s));
      if (r.keep_alive || i + 1 != got.size()) Fail("the connection must close after a read error");
      CheckErrorJson(*r.error);
      continue;
    }
    const HttpRequest& req = *r.request;
    if (req.body().size() > limits.max_body_bytes) Fail("body over the limit accepted");
    if (!r.keep_alive && i + 1 != got.size()) Fail("a request after Connection: close");
    const std::string_view target(req.target().data(), req.target().size());
    const std::string_view path = RequestPath(target);
    if (path.find('?') != std::string_view::npos) Fail("path with a query", path);
    const std::string label = EndpointLabel(path);
    if (label.empty()) Fail("empty metrics label");
    const HttpRoute& route = r.route;
    if (!route.allow.empty() && route.error.http_status != 405) Fail("Allow outside a 405");
    if (route.www_authenticate != (route.endpoint == HttpEndpoint::kError && route.error.http_status == 401)) {
      Fail("WWW-Authenticate without a 401 or a 401 without it");
    }
    switch (route.endpoint) {
      case HttpEndpoint::kError: {
        const int s = route.error.http_status;
        if (s != 400 && s != 401 && s != 404 && s != 405) Fail("route status", std::to_string(s));
        if (s == 405 && route.allow.empty()) Fail("405 without Allow");
        if (s == 401 && routing.api_key.empty()) Fail("401 without an API key configured");
        CheckErrorJson(route.error);
        break;
      }
      case HttpEndpoint::kPreflight:
        if (req.method() != http::verb::options || routing.allowed_origins.empty()) Fail("preflight");
        break;
      case HttpEndpoint::kModel: {
        auto id = PercentDecode(path.substr(11));
        if (!id || *id != routing.model_name) Fail("model route for another id", path);
        break;
      }
      case HttpEndpoint::kCompletions:
      case HttpEndpoint::kChat: {
        if (req.method() != http::verb::post) Fail("generation route without POST");
        auto p = route.endpoint == HttpEndpoint::kChat ? ParseChatRequest(req.body(), routing.model_name)
                                                       : ParseCompletionRequest(req.body(), routing.model_name);
        if (!p.ok()) CheckErrorJson(ToApiError(p.status()));
        break;
      }
      default:
        break;
    }
    if (route.endpoint != HttpEndpoint::kError && route.endpoint != HttpEndpoint::kPreflight &&
        route.endpoint != HttpEndpoint::kHealth && !routing.api_key.empty()) {
      const auto auth = req[http::field::authorization];
      if (std::string_view(auth.data(), auth.size()).find(routing.api_key) == std::string_view::npos) {
        Fail("routed past the API key without it");
      }
    }
  }
  return 0;
}
