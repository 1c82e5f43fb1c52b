// HttpServer: the OpenAI-compatible HTTP front end of `deepshard serve`, on
// Boost.Beast/Asio, in front of an Engine (serve/generation_api.h).
//
// Endpoints:
//   GET  /health               200 {"status":"ok"} when the engine is healthy and
//                              accepting, else 503 with the detail; never needs the key
//   GET  /v1/models            the served model (OpenAI list, with max_model_len)
//   GET  /v1/models/{id}       the model object; the id is percent-decoded
//                              (deepseek-ai%2FDeepSeek-V3 = deepseek-ai/DeepSeek-V3;
//                              bad percent-encoding is a 400 naming the path)
//   GET  /metrics              Prometheus text (Metrics::Render)
//   POST /v1/completions       text or token-id prompt
//   POST /v1/chat/completions  messages rendered with the model's chat template
//   POST /tokenize             vLLM's: a prompt or a chat -> token ids (serve/tokenize_api.h)
//   POST /detokenize           vLLM's: token ids -> text
// HEAD is answered on every GET endpoint: the GET response's status and
// headers (Content-Length included), no body. CORS (allowed_origins, off when
// empty): a request whose Origin is allowed gets Access-Control-Allow-Origin
// (the origin, or * when "*" is allowed) and every response Vary: Origin; an
// OPTIONS request on any path is a preflight, answered 204 with the allowed
// methods and headers without the API key (a disallowed Origin: 400). With
// CORS off, OPTIONS is a 405 like any other method.
// Unknown paths are 404, wrong methods 405, a missing/wrong API key 401, a body
// over max_body_bytes 413 (checked on Content-Length before reading), headers
// over max_header_bytes 431, malformed HTTP 400; all errors have OpenAI's
// {"error": {...}} body. While the engine is not accepting (draining, failed)
// completions get 503; Submit's errors map as in openai_api.h (429 queue full).
//
// Design:
//   - one io_context run by `threads` threads; each connection is a Session on
//     its own strand, so a connection's state is only touched by one thread;
//   - the engine calls TokenSinks on its own thread; a sink only posts the
//     event to the session's strand (never blocks the engine). A shared
//     "lifeline" flag, cleared by Stop() under a mutex, makes sinks that fire
//     after Stop() do nothing, so the engine may outlive the server;
//   - while a request is generating (streaming or not), a read stays pending on
//     the socket: a reset means the client went away, and Engine::Cancel is
//     called at once; a write error also cancels. An EOF is a close or a
//     half-close: a probe (an SSE comment, or an interim 100 Continue) makes a
//     closed client answer with a reset, checked at every engine event and
//     every 10 ms; a half-closed one gets its responses, then the connection
//     closes. Bytes that arrive instead are pipelined requests, served in
//     order after the response. At most 64 KiB of them are read ahead: then
//     reading stops (back-pressure: the socket buffers fill and the client's
//     writes block) until the response is written, and the socket's state is
//     checked instead at every engine event and every 10 ms (a reset: gone;
//     a FIN, or bytes left unread, which may hold the client's FIN back: a
//     non-streaming HTTP/1.1 response gets a 100 Continue probe per event,
//     a stream's own events are the probes);
//   - out of descriptors (EMFILE/ENFILE) or over max_connections, a new
//     connection is answered 503 and closed (a reserve descriptor makes that
//     possible at the limit), and accepting pauses 50 ms after EMFILE/ENFILE;
//   - streams are `text/event-stream` with chunked transfer (HTTP/1.1; HTTP/1.0
//     gets the raw events and a close), one `data: ...\n\n` event per chunk,
//     each written as soon as the previous write completes (events that arrive
//     meanwhile are coalesced into the next write);
//   - every accepted request ends with a final response or, for a stream that
//     has started, an SSE error event followed by `data: [DONE]`.
//
// Metrics (DescribeHttpMetrics): deepshard_http_requests_total{endpoint,status}
// (status 499 = the client went away mid-generation), deepshard_prompt_tokens_total,
// deepshard_generation_tokens_total, deepshard_time_to_first_token_seconds,
// deepshard_inter_token_latency_seconds, deepshard_request_latency_seconds{endpoint},
// deepshard_requests_in_flight, deepshard_http_accept_failures_total{reason},
// deepshard_http_connections_refused_total{reason}.
//
// Example:
//   HttpServer server({.port = 8000, .model_name = "deepseek-v3"}, tokenizer.get(), engine, metrics);
//   RETURN_IF_ERROR(server.Start());   // listening on server.port()
//   ...                                // until SIGTERM
//   server.Stop();                     // cancels in-flight requests, joins the threads
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "text/tokenizer/tokenizer.h"
#include "serve/generation_api.h"
#include "serve/openai_api.h"
#include "serve/metrics.h"

namespace deepshard::serve {

struct HttpServerOptions {
  std::string host = "127.0.0.1";  // address or host name to listen on ("0.0.0.0" for all)
  int port = 0;                    // 0: an ephemeral port (see HttpServer::port())
  std::string api_key;             // "" = no authentication
  size_t max_body_bytes = 1 << 20;      // larger bodies get 413
  size_t max_header_bytes = 16 << 10;   // larger request headers get 431
  size_t max_queued_bytes = 16 << 20;   // a stream whose client stops reading is cancelled past this
  int threads = 2;                      // io_context threads
  // Connections open at once; past it a new connection is answered 503 and
  // closed (0: no cap but the descriptor limit, where the same happens).
  int max_connections = 0;
  std::string model_name = "deepseek";  // the id in /v1/models; requests may name it
  int64_t max_model_len = 0;            // 0: Engine::max_context()
  // Chat output parsers (docs/serving.md): DeepSeek tool calls, for requests
  // with `tools` (--tool-call-parser deepseek_v3, on by default), and R1's
  // <think> reasoning into `reasoning_content` (--reasoning-parser deepseek_r1).
  bool tool_call_parser = true;
  bool reasoning_parser = false;
  // Sampling defaults from the model's generation_config.json (request values win).
  GenerationDefaults generation_defaults;
  std::chrono::seconds idle_timeout{60};  // keep-alive connection idle / header read limit
  // A client that reads nothing of what is written to it for this long (its
  // receive window stays shut), or whose host stops acknowledging, is dropped
  // and its generation cancelled: the kernel's TCP_USER_TIMEOUT on each
  // accepted socket (--send-timeout; 0: the kernel's default, ~15 min of
  // retransmits, and forever for a shut window).
  std::chrono::seconds send_timeout{60};
  // CORS (--allowed-origins): origins as browsers send them ("https://app.example:8443"),
  // or "*" for any. Empty: CORS off (no CORS headers, OPTIONS is a 405).
  std::vector<std::string> allowed_origins;
};

class HttpServer {
 public:
  // `tokenizer` may be null (then only token-id completions work); it, `engine`
  // and `metrics` must outlive the server. Describes the HTTP metrics.
  HttpServer(HttpServerOptions options, const Tokenizer* tokenizer, GenerationApi& engine, Metrics& metrics);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds, listens and starts the threads; returns once connections are
  // accepted. Unavailable when the address cannot be bound (message names it).
  absl::Status Start();
  // The bound port (after Start).
  int port() const;
  // Stops accepting, cancels in-flight generations (Engine::Cancel), closes
  // the connections and joins the threads. Idempotent.
  // With grace_s > 0, first waits up to that long for responses in progress
  // to be written out (after an engine drain, their final events are already
  // delivered), then stops as above.
  void Stop(double grace_s = 0);

 private:
  class Impl;
  friend class HttpSession;  // one connection (http_server.cc)
  std::unique_ptr<Impl> impl_;
};

// Declares the metric families the HTTP server records (idempotent).
void DescribeHttpMetrics(Metrics& metrics);

}  // namespace deepshard::serve
