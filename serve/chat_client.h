// A terminal chat client for an OpenAI-compatible server (`deepshard chat`).
//
// It reads one line at a time, sends the whole conversation to
// POST <url>/v1/chat/completions with "stream": true, prints the streamed
// deltas as they arrive, and appends the assistant's reply to the
// conversation. Commands: `/reset` starts a new conversation (the system
// prompt stays), `/exit` (or end of input) quits.
//
// Errors (connection refused, a non-200 status, an SSE error event, a broken
// stream) are printed to `err` naming the URL; the failed turn is dropped from
// the conversation and the client carries on. Before the first turn it checks
// the server with GET <url>/v1/models, and gives up (exit code 1) when that
// fails; a malformed --url is exit code 2.
//
// The loop takes its streams as arguments so that tests can drive it:
//   std::istringstream in("Hi\n/exit\n");
//   std::ostringstream out, err;
//   int rc = RunChat({.url = "http://127.0.0.1:8000"}, in, out, err);
//
// Plain HTTP only (Boost.Beast, synchronous); one connection per turn.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace deepshard::serve {

struct ChatOptions {
  std::string url;                     // http://host:port[/prefix]
  std::string api_key;                 // sent as "Authorization: Bearer <key>" when set
  std::string model;                   // "model" of each request; "" = leave it out
  std::string system;                  // system prompt; "" = none
  std::optional<int64_t> max_tokens;   // per reply; unset = the server's default
  std::optional<double> temperature;   // unset = the server's default
  bool show_prompt = false;            // print "> " before reading each line (a terminal)
};

// A parsed http:// URL.
struct HttpUrl {
  std::string host;
  std::string port = "80";
  std::string base;  // path prefix without a trailing '/', e.g. "" or "/proxy"
};
// Errors (InvalidArgument) name the URL: not http://, no host, a bad port.
absl::StatusOr<HttpUrl> ParseHttpUrl(std::string_view url);

// Runs the chat loop. Returns 0 at /exit or end of input, 1 when the server
// cannot be reached at start, 2 for a malformed URL.
int RunChat(const ChatOptions& options, std::istream& in, std::ostream& out, std::ostream& err);

}  // namespace deepshard::serve
