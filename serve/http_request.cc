// The request side of the HTTP server: see http_request.h.
#include "serve/http_request.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/buffer.hpp"
#include "boost/asio/error.hpp"

namespace deepshard::serve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;

namespace {

std::string_view SV(beast::string_view s) { return std::string_view(s.data(), s.size()); }
// Debian's Abseil has its own string_view type.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

ApiError Err(int status, std::string message, std::string type = "invalid_request_error", std::string code = "") {
  ApiError e;
  e.http_status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.code = std::move(code);
  return e;
}

// Constant-time comparison of the presented and the configured key.
bool KeyMatches(std::string_view given, std::string_view want) {
  unsigned char diff = given.size() == want.size() ? 0 : 1;
  for (size_t i = 0; i < want.size(); ++i) {
    diff |= static_cast<unsigned char>(want[i] ^ (i < given.size() ? given[i] : 0));
  }
  return diff == 0;
}

// Feeds `bytes` to the parser as Beast's read_header (header_only: eager off)
// or read (eager on) does, with the end of `bytes` as the client's EOF: put()
// until done; "need more" (or nothing left) reads again, which here is the EOF:
// put_eof() when the parser got some of a message (a partial_message error
// unless it is complete), else end_of_stream. Returns the bytes consumed.
size_t Feed(HttpRequestParser& parser, std::string_view bytes, bool header_only, beast::error_code& ec) {
  parser.eager(!header_only);
  auto done = [&] { return header_only ? parser.is_header_done() : parser.is_done(); };
  size_t used = 0;
  ec = {};
  while (!done()) {
    if (used < bytes.size()) {
      const size_t n = parser.put(net::const_buffer(bytes.data() + used, bytes.size() - used), ec);
      used += n;
      if (!ec && n > 0) continue;
      if (ec && ec != http::error::need_more) return used;
    }
    ec = {};
    if (parser.got_some()) {
      parser.put_eof(ec);
    } else {
      ec = http::error::end_of_stream;
    }
    return used;
  }
  return used;
}

}  // namespace

void ApplyHttpLimits(HttpRequestParser& parser, const HttpLimits& limits) {
  parser.header_limit(static_cast<uint32_t>(std::min<size_t>(limits.max_header_bytes, UINT32_MAX)));
  parser.body_limit(limits.max_body_bytes);
}

std::optional<ApiError> CheckRequestHeader(const HttpRequestParser& parser, const HttpLimits& limits) {
  if (auto len = parser.content_length(); len && *len > limits.max_body_bytes) {
    return Err(413, absl::StrCat("the request body is larger than the server's limit of ", limits.max_body_bytes,
                                 " bytes"));
  }
  return std::nullopt;
}

bool IsHttpDisconnect(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset ||
         ec == net::error::broken_pipe || ec == net::error::operation_aborted || ec == beast::error::timeout ||
         ec == net::error::bad_descriptor || ec == net::error::not_connected;
}

ApiError ReadErrorAnswer(const beast::error_code& ec, const HttpLimits& limits) {
  if (ec == http::error::body_limit) {
    return Err(413, absl::StrCat("the request body is larger than the server's limit of ", limits.max_body_bytes,
                                 " bytes"));
  }
  if (ec == http::error::header_limit) return Err(431, "the request headers are larger than the server's limit");
  return Err(400, absl::StrCat("malformed HTTP request: ", ec.message()));
}

std::optional<std::string> PercentDecode(std::string_view s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    const int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

std::string_view RequestPath(std::string_view target) { return target.substr(0, target.find('?')); }

std::string EndpointLabel(std::string_view path) {
  static constexpr std::string_view kKnown[] = {"/health", "/v1/models", "/metrics", "/v1/completions",
                                                "/v1/chat/completions", "/tokenize", "/detokenize"};
  std::string label = "other";
  for (std::string_view k : kKnown) {
    if (path == k) label = std::string(k);
  }
  if (absl::StartsWith(AV(path), "/v1/models/")) label = "/v1/models/{id}";
  return label;
}

std::string AllowedOrigin(std::string_view origin, std::span<const std::string> allowed_origins) {
  if (origin.empty()) return "";
  for (const std::string& o : allowed_origins) {
    if (o == "*") return "*";
    if (absl::EqualsIgnoreCase(AV(o), AV(origin))) return std::string(origin);
  }
  return "";
}

HttpRoute RouteRequest(const http::request_header<>& req, const HttpRouting& routing) {
  const http::verb method = req.method();
  const std::string_view path = RequestPath(SV(req.target()));
  const bool cors_on = !routing.allowed_origins.empty();
  HttpRoute route;
  auto to = [&](HttpEndpoint e) {
    route.endpoint = e;
    return route;
  };
  auto fail = [&](ApiError e) {
    route.endpoint = HttpEndpoint::kError;
    route.error = std::move(e);
    return route;
  };
  // HEAD is answered wherever GET is (the server leaves the body out).
  auto method_is = [&](http::verb want, const char* allow) {
    if (method == want || (want == http::verb::get && method == http::verb::head)) return true;
    route.allow = cors_on ? absl::StrCat(allow, ", OPTIONS") : allow;
    route.error = Err(405, absl::StrCat("method ", AV(SV(req.method_string())), " is not allowed on ", AV(path),
                                        "; use ", allow));
    return false;
  };
  // A CORS preflight, on any path: browsers send it without the API key.
  if (method == http::verb::options && cors_on) {
    const std::string_view origin = SV(req[http::field::origin]);
    if (!origin.empty() && AllowedOrigin(origin, routing.allowed_origins).empty()) {
      return fail(Err(400, absl::StrCat("the origin ", AV(origin), " is not allowed (--allowed-origins)")));
    }
    return to(HttpEndpoint::kPreflight);
  }
  if (path == "/health") return method_is(http::verb::get, "GET, HEAD") ? to(HttpEndpoint::kHealth) : route;
  if (!routing.api_key.empty()) {
    std::string_view auth = SV(req[http::field::authorization]);
    std::string_view key;
    if (auth.size() > 7 && absl::EqualsIgnoreCase(AV(auth.substr(0, 7)), "bearer ")) key = auth.substr(7);
    if (!KeyMatches(key, routing.api_key)) {
      route.www_authenticate = true;
      return fail(Err(401, "missing or invalid API key; send the header `Authorization: Bearer <key>`",
                      "authentication_error", "invalid_api_key"));
    }
  }
  if (path == "/v1/models") return method_is(http::verb::get, "GET, HEAD") ? to(HttpEndpoint::kModels) : route;
  if (absl::StartsWith(AV(path), "/v1/models/")) {
    if (!method_is(http::verb::get, "GET, HEAD")) return route;
    // GET /v1/models/{id} (the openai client's models.retrieve). The id is
    // percent-decoded: clients send deepseek-ai%2FDeepSeek-V3 or deepseek-ai/DeepSeek-V3.
    const std::optional<std::string> id = PercentDecode(path.substr(11));
    if (!id) {
      return fail(Err(400, absl::StrCat("the path ", AV(path), " has an invalid percent-encoding (a % must be "
                                        "followed by two hex digits)")));
    }
    if (*id != routing.model_name) {
      return fail(Err(404, absl::StrCat("the model `", AV(*id), "` does not exist; this server serves `",
                                        AV(routing.model_name), "`"),
                      "invalid_request_error", "model_not_found"));
    }
    return to(HttpEndpoint::kModel);
  }
  if (path == "/metrics") return method_is(http::verb::get, "GET, HEAD") ? to(HttpEndpoint::kMetrics) : route;
  if (path == "/v1/completions") return method_is(http::verb::post, "POST") ? to(HttpEndpoint::kCompletions) : route;
  if (path == "/v1/chat/completions") return method_is(http::verb::post, "POST") ? to(HttpEndpoint::kChat) : route;
  if (path == "/tokenize") return method_is(http::verb::post, "POST") ? to(HttpEndpoint::kTokenize) : route;
  if (path == "/detokenize") return method_is(http::verb::post, "POST") ? to(HttpEndpoint::kDetokenize) : route;
  return fail(Err(404, absl::StrCat("no endpoint ", AV(path), "; this server has /v1/completions, "
                                    "/v1/chat/completions, /v1/models, /tokenize, /detokenize, /health "
                                    "and /metrics"),
                  "invalid_request_error", "not_found"));
}

std::vector<ParsedHttpRequest> ParseHttpRequests(std::string_view bytes, const HttpLimits& limits,
                                                 const HttpRouting& routing, size_t max_requests) {
  std::vector<ParsedHttpRequest> out;
  while (out.size() < max_requests && !bytes.empty()) {
    HttpRequestParser parser;
    ApplyHttpLimits(parser, limits);
    ParsedHttpRequest r;
    beast::error_code ec;
    size_t used = Feed(parser, bytes, /*header_only=*/true, ec);
    if (!ec) {
      const auto& head = parser.get();
      r.keep_alive = head.keep_alive();
      if (std::optional<ApiError> e = CheckRequestHeader(parser, limits)) {
        r.error = std::move(e);
        r.keep_alive = false;
        out.push_back(std::move(r));
        break;
      }
      r.expect_continue = absl::EqualsIgnoreCase(AV(SV(head[http::field::expect])), "100-continue");
      used += Feed(parser, bytes.substr(used), /*header_only=*/false, ec);
    }
    if (ec) {
      if (IsHttpDisconnect(ec)) break;  // closed between requests: nothing to answer
      r.error = ReadErrorAnswer(ec, limits);
      r.keep_alive = false;
      out.push_back(std::move(r));
      break;
    }
    bytes.remove_prefix(used);
    r.request = parser.release();
    r.route = RouteRequest(*r.request, routing);
    const bool more = r.keep_alive;
    out.push_back(std::move(r));
    if (!more) break;
  }
  return out;
}

}  // namespace deepshard::serve
