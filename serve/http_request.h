// The request side of the HTTP server (serve/http_server.cc) as pure functions,
// testable and fuzzable without sockets (tests/serve/http_request_test.cc,
// tests/fuzz/http_request_fuzz.cc):
//   - the Beast request parser with the server's limits, and what a read error
//     answers: 413 (body over max_body_bytes, by Content-Length before the body
//     is read, or while reading a chunked one), 431 (headers over
//     max_header_bytes), 400 (anything else malformed); a disconnect answers
//     nothing;
//   - the path of a request target (up to '?') and its metrics label;
//   - routing: a CORS preflight, /health, the API key, the endpoint and method
//     (405 with the Allow header), /v1/models/{id} with its id percent-decoded.
// ParseHttpRequests strings these together on raw bytes the way one connection
// does (request after request while keep-alive, the rest of the bytes carried
// to the next request); the server itself reads with Beast's async_read_header /
// async_read and calls the same pieces.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "boost/beast/core/error.hpp"
#include "boost/beast/http.hpp"
#include "serve/openai_api.h"

namespace deepshard::serve {

struct HttpLimits {
  size_t max_body_bytes = 1 << 20;     // larger bodies get 413
  size_t max_header_bytes = 16 << 10;  // larger request headers get 431
};

using HttpRequestParser = boost::beast::http::request_parser<boost::beast::http::string_body>;
using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;

// Sets the parser's header and body limits.
void ApplyHttpLimits(HttpRequestParser& parser, const HttpLimits& limits);

// After the header is parsed: a 413 when Content-Length exceeds max_body_bytes
// (checked before reading the body); nullopt to go on.
std::optional<ApiError> CheckRequestHeader(const HttpRequestParser& parser, const HttpLimits& limits);

// Whether a read/write error means the peer is gone (rather than bad input).
bool IsHttpDisconnect(const boost::beast::error_code& ec);

// The answer to a read error that is not a disconnect: 413 (body_limit),
// 431 (header_limit) or 400 "malformed HTTP request: ..."; the connection
// closes after it.
ApiError ReadErrorAnswer(const boost::beast::error_code& ec, const HttpLimits& limits);

// %XX-decoding of a path segment ("+" stays "+", as in paths); nullopt when a
// "%" is not followed by two hex digits.
std::optional<std::string> PercentDecode(std::string_view s);

// The path of a request target: everything before the first '?'.
std::string_view RequestPath(std::string_view target);
// The metrics label of a path: a known endpoint, "/v1/models/{id}", or "other".
std::string EndpointLabel(std::string_view path);

// The Access-Control-Allow-Origin value for a request's Origin ("" none):
// "*" when "*" is allowed, the origin when it is in the list (case-insensitive).
std::string AllowedOrigin(std::string_view origin, std::span<const std::string> allowed_origins);

// What the server's routing needs of its options.
struct HttpRouting {
  std::string_view api_key;                        // "" = no authentication
  std::span<const std::string> allowed_origins;    // empty: CORS off
  std::string_view model_name;                     // the id /v1/models/{id} must name
};

enum class HttpEndpoint {
  kError,  // answer HttpRoute::error
  kPreflight,
  kHealth,
  kModels,
  kModel,
  kMetrics,
  kCompletions,
  kChat,
  kTokenize,
  kDetokenize,
};

struct HttpRoute {
  HttpEndpoint endpoint = HttpEndpoint::kError;
  ApiError error;                 // kError: 400, 401, 404 or 405 (status in error.http_status)
  std::string allow;              // the Allow header of a 405
  bool www_authenticate = false;  // a 401: WWW-Authenticate: Bearer
};

// Routes a parsed request (HEAD is answered wherever GET is). Order: a CORS
// preflight (OPTIONS with CORS on, on any path, without the API key: 400 for a
// disallowed Origin), /health (no key), the API key (401), then the endpoints
// (404 for an unknown path or model id, 405 for a wrong method, 400 for a bad
// percent-encoding in /v1/models/{id}).
HttpRoute RouteRequest(const boost::beast::http::request_header<>& req, const HttpRouting& routing);

// One request of a connection as ParseHttpRequests saw it.
struct ParsedHttpRequest {
  std::optional<HttpRequest> request;  // a complete request (route below), else `error`
  std::optional<ApiError> error;       // a 400/413/431 answered before closing
  bool expect_continue = false;        // the server answers 100 Continue before reading the body
  bool keep_alive = false;
  HttpRoute route;                     // for a complete request
};

// Parses `bytes` as what one client sent before closing: requests one after
// the other while they keep the connection alive, at most `max_requests`. A
// request cut short by the end of the bytes is a 400 (a partial message), as
// for the server at EOF; an end right between requests ends the list. Not
// modelled: what a generation does to the connection (the 64 KiB cap on bytes
// pipelined behind it, a cancel on EOF; http_server.cc).
std::vector<ParsedHttpRequest> ParseHttpRequests(std::string_view bytes, const HttpLimits& limits,
                                                 const HttpRouting& routing, size_t max_requests = 16);

}  // namespace deepshard::serve
