// The OpenAI-compatible HTTP server: see http_server.h for the endpoints and
// the design. The request side (parser limits, read-error answers, paths,
// routing) lives in http_request.cc; request bodies, prompts, text and JSON in
// openai_api.cc; this file is the connection state machine:
//
//   ReadHeader -> (413/431/400 and close) | [100 Continue] -> ReadBody -> Handle
//   Handle -> plain response -> Write -> ReadHeader (keep-alive) | close
//   Handle -> generation: Submit, [stream header], Watch (read pending; or
//             paused past 64 KiB of pipelined bytes: socket checks instead)
//          -> engine events (posted to the strand) -> chunks / accumulate
//          -> final event (or stop string: Cancel) -> last write -> AfterResponse
//   AfterResponse cancels the watch read, then ReadHeader (which parses the
//   pipelined bytes first) or close.
#include "serve/http_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <functional>
#include <cstdio>
#include <deque>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/json.hpp"
#include "serve/choice_output.h"
#include "serve/http_request.h"
#include "serve/openai_api.h"
#include "serve/rate_limited_log.h"
#include "serve/structured_output.h"
#include "serve/tokenize_api.h"

namespace deepshard::serve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace json = boost::json;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr char kRequestsTotal[] = "deepshard_http_requests_total";
constexpr char kPromptTokens[] = "deepshard_prompt_tokens_total";
constexpr char kGenerationTokens[] = "deepshard_generation_tokens_total";
constexpr char kTimeToFirstToken[] = "deepshard_time_to_first_token_seconds";
constexpr char kInterTokenLatency[] = "deepshard_inter_token_latency_seconds";
constexpr char kRequestLatency[] = "deepshard_request_latency_seconds";
constexpr char kInFlight[] = "deepshard_requests_in_flight";
constexpr char kAcceptFailures[] = "deepshard_http_accept_failures_total";
constexpr char kRefused[] = "deepshard_http_connections_refused_total";

constexpr size_t kMaxPipelinedBytes = 64 << 10;  // read ahead from a client while it waits for a generation
constexpr size_t kMaxDrainBytes = 1 << 20;       // read and dropped before closing after an error
constexpr auto kDrainTime = std::chrono::seconds(2);
constexpr auto kAcceptBackoff = std::chrono::milliseconds(50);  // after EMFILE/ENFILE
constexpr auto kPeerCheckPeriod = std::chrono::milliseconds(10);  // a half-closed client: is it still there?

// What a connection refused for lack of descriptors (or over --max-connections) gets.
const std::string& Refusal() {
  static const std::string* r = [] {
    const std::string body =
        R"({"error":{"message":"the server has too many open connections; retry later","type":"server_error",)"
        R"("param":null,"code":"overloaded"}})";
    return new std::string(absl::StrCat(
        "HTTP/1.1 503 Service Unavailable\r\nServer: deepshard\r\nContent-Type: application/json\r\n"
        "Retry-After: 1\r\nConnection: close\r\nContent-Length: ",
        body.size(), "\r\n\r\n", body));
  }();
  return *r;
}

// Answers an accepted connection with Refusal() and closes it (never blocks).
void RefuseFd(int fd) {
  (void)::send(fd, Refusal().data(), Refusal().size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  char sink[4096];
  while (::recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {
  }
  ::close(fd);
}

// What the socket says about the client without reading it (the bytes it
// sent may still be unread, in our buffer or the kernel's).
enum class PeerState {
  kOpen,         // connected (a close may still be on its way, or held back: see CheckPeer)
  kFinReceived,  // it sent FIN: closed, or half-closed and waiting for its responses
  kGone,         // reset (it closed with our data unread, or answered a write on a closed socket)
};

PeerState PeerStateOf(int fd) {
#ifdef __linux__
  struct tcp_info info {};
  socklen_t len = sizeof info;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0) {
    if (info.tcpi_state == TCP_CLOSE) return PeerState::kGone;
    if (info.tcpi_state == TCP_CLOSE_WAIT || info.tcpi_state == TCP_LAST_ACK) return PeerState::kFinReceived;
    return PeerState::kOpen;
  }
#endif
  char c;
  const ssize_t r = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (r == 0) return PeerState::kFinReceived;
  if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return PeerState::kGone;
  return PeerState::kOpen;
}

// Bytes the kernel holds for us that were not read yet.
size_t UnreadBytes(int fd) {
  int n = 0;
  return ::ioctl(fd, FIONREAD, &n) == 0 && n > 0 ? static_cast<size_t>(n) : 0;
}

std::string_view SV(beast::string_view s) { return std::string_view(s.data(), s.size()); }
// Debian's Abseil has its own string_view type.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// CORS preflight answers.
constexpr char kCorsMethods[] = "GET, POST, HEAD, OPTIONS";
constexpr char kCorsDefaultHeaders[] = "Authorization, Content-Type";
constexpr char kCorsMaxAge[] = "600";  // seconds a browser may cache a preflight (Starlette's default)

// Engine sinks may fire after the server is gone: they check this first.
struct Lifeline {
  std::mutex mu;
  bool alive = true;
};

}  // namespace

void DescribeHttpMetrics(Metrics& m) {
  m.Describe(kRequestsTotal, MetricType::kCounter,
             "HTTP requests by endpoint and status code (499: the client went away during generation).");
  m.Describe(kPromptTokens, MetricType::kCounter, "Prompt tokens of accepted generation requests.");
  m.Describe(kGenerationTokens, MetricType::kCounter, "Tokens generated for HTTP requests.");
  m.Describe(kTimeToFirstToken, MetricType::kHistogram,
             "Seconds from a request's arrival to its first generated token.", LatencyBuckets());
  m.Describe(kInterTokenLatency, MetricType::kHistogram, "Seconds between consecutive generated tokens.",
             LatencyBuckets());
  m.Describe(kRequestLatency, MetricType::kHistogram,
             "Seconds from a generation request's arrival to its last byte.", LatencyBuckets());
  m.Describe(kInFlight, MetricType::kGauge, "Generation requests submitted to the engine and not finished.");
  m.Describe(kAcceptFailures, MetricType::kCounter,
             "Failed accepts of HTTP connections by reason (fd_limit: EMFILE/ENFILE, then a 50 ms back-off; other).");
  m.Describe(kRefused, MetricType::kCounter,
             "HTTP connections answered 503 and closed at once (reason: fd_limit, max_connections).");
}

class HttpSession;

// ---------------------------------------------------------------------------

class HttpServer::Impl {
 public:
  Impl(HttpServerOptions o, const Tokenizer* tok, GenerationApi& e, Metrics& m)
      : opts(std::move(o)),
        engine(e),
        metrics(m),
        builder(MakeBuilder(tok, opts.generation_defaults)),
        structured(tok),
        tokenizer(tok),
        created(std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count()),
        lifeline(std::make_shared<Lifeline>()),
        ioc(std::max(1, opts.threads)),
        acceptor(net::make_strand(ioc)),
        accept_timer(acceptor.get_executor()) {
    DescribeHttpMetrics(metrics);
  }
  ~Impl() {
    if (reserve_fd >= 0) ::close(reserve_fd);
  }

  absl::Status Start();
  void Stop(double grace_s);
  void DoAccept();
  void OnAcceptExhausted(const beast::error_code& ec);
  size_t SessionCount() {
    std::lock_guard<std::mutex> lock(sessions_mu);
    return sessions.size();
  }

  void Register(const std::shared_ptr<HttpSession>& s);
  void Unregister(HttpSession* s) {
    std::lock_guard<std::mutex> lock(sessions_mu);
    sessions.erase(s);
  }
  int64_t max_context() const { return opts.max_model_len > 0 ? opts.max_model_len : engine.max_context(); }
  HttpRouting routing() const {
    return HttpRouting{.api_key = opts.api_key, .allowed_origins = opts.allowed_origins, .model_name = opts.model_name};
  }

  const HttpServerOptions opts;
  const HttpLimits limits{.max_body_bytes = opts.max_body_bytes, .max_header_bytes = opts.max_header_bytes};
  GenerationApi& engine;
  Metrics& metrics;
  static PromptBuilder MakeBuilder(const Tokenizer* tok, GenerationDefaults d) {
    PromptBuilder b(tok);
    b.set_defaults(std::move(d));
    return b;
  }

  const PromptBuilder builder;
  StructuredOutput structured;
  const Tokenizer* tokenizer;
  const int64_t created;
  std::shared_ptr<Lifeline> lifeline;
  int port = 0;

  // Declared before ioc: sessions destroyed with the io_context unregister here.
  std::mutex sessions_mu;
  std::unordered_map<HttpSession*, std::weak_ptr<HttpSession>> sessions;

  net::io_context ioc;
  tcp::acceptor acceptor;  // on its own strand: the accept loop and Stop's close
  net::steady_timer accept_timer;  // the back-off after EMFILE/ENFILE (acceptor's strand)
  int reserve_fd = -1;             // released to accept-and-refuse when out of descriptors
  RateLimitedLog accept_log{3, std::chrono::seconds(10)};
  std::vector<std::thread> threads;
  std::atomic<int> running{0};
  std::atomic<int> generating{0};  // sessions between Submit and the end of their response
  bool started = false;
  bool stopped = false;
};

// ---------------------------------------------------------------------------
// One connection. Every member is touched only on the session's strand
// (stream_'s executor), except `this` pointer bookkeeping in the server.

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(HttpServer::Impl& srv, tcp::socket socket)
      : srv_(srv), stream_(std::move(socket)), peer_timer_(stream_.get_executor()) {}
  ~HttpSession() { srv_.Unregister(this); }

  void Start() { ReadHeader(); }

  // From Stop(): cancel what is running and close, on the strand.
  void Abort() {
    net::post(stream_.get_executor(), [self = shared_from_this()] { self->ClientGone(); });
  }

 private:
  // What AfterResponse asked for once the watch read is cancelled.
  enum class Next { kNone, kRead, kClose };

  struct Choice {
    int64_t engine_id = -1;
    std::optional<ChoiceOutput> out;
    bool done = false;
    int64_t cached_tokens = 0;  // prompt tokens found in the prefix cache or shared with choice 0
  };
  struct Generation {
    uint64_t seq = 0;
    bool stream = false;
    ResponseContext ctx;
    std::vector<Choice> choices;  // [choices[].index]
    int open = 0;                 // choices not finished
    int64_t n = 1;                // choices per prompt
    int64_t prompt_tokens = 0;    // every prompt once (not per choice), as OpenAI counts
    Clock::time_point last_token;
    bool got_token = false;
    bool done = false;                       // the response is complete (or failed, or cancelled by us)
    std::vector<json::object> finals;        // non-streaming: finished choices
  };

  // ---- reading a request ----

  void ReadHeader() {
    if (closed_) return;
    paused_ = false;  // the pipelined bytes are read from here
    parser_.emplace();
    ApplyHttpLimits(*parser_, srv_.limits);
    endpoint_ = "other";
    recorded_ = false;
    head_ = false;
    cors_origin_.clear();
    if (peer_eof_) {
      // The client sent EOF (its pipelined requests are buffered): Asio reports
      // an EOF once, and a later async read would wait for an event that never
      // comes. A read of the socket now returns at once (0, or an error), so
      // the buffered requests are parsed synchronously, then the EOF closes.
      beast::error_code ec;
      http::read_header(stream_.socket(), buffer_, *parser_, ec);
      return OnHeader(ec);
    }
    stream_.expires_after(srv_.opts.idle_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    auto& req = parser_->get();
    version_ = req.version();
    keep_alive_ = req.keep_alive();
    SetEndpoint(SV(req.target()));
    head_ = req.method() == http::verb::head;
    cors_origin_ = AllowedOrigin(SV(req[http::field::origin]), srv_.opts.allowed_origins);
    if (std::optional<ApiError> e = CheckRequestHeader(*parser_, srv_.limits)) {
      keep_alive_ = false;
      return SendError(static_cast<http::status>(e->http_status), *e);
    }
    if (absl::EqualsIgnoreCase(AV(SV(req[http::field::expect])), "100-continue")) {
      auto res = std::make_shared<http::response<http::empty_body>>(http::status::continue_, version_);
      http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, size_t) {
        if (ec) return self->Close();
        self->ReadBody();
      });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    if (peer_eof_) {  // as in ReadHeader
      beast::error_code ec;
      http::read(stream_.socket(), buffer_, *parser_, ec);
      return OnBody(ec);
    }
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnBody(ec); });
  }

  void OnBody(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    stream_.expires_never();
    start_ = Clock::now();
    Handle(parser_->release());
  }

  // 413 (body_limit), 431 (header_limit), a disconnect (close), or a malformed
  // request (400); the connection closes after the answer.
  void OnReadError(beast::error_code ec) {
    const bool limit = ec == http::error::body_limit || ec == http::error::header_limit;
    // A request cut short by the client's EOF (after pipelined ones): it is gone.
    if (!limit && (IsHttpDisconnect(ec) || closed_ || (peer_eof_ && ec == http::error::partial_message))) {
      return Close();
    }
    keep_alive_ = false;
    if (!limit) version_ = 11;
    const ApiError e = ReadErrorAnswer(ec, srv_.limits);
    SendError(static_cast<http::status>(e.http_status), e);
  }

  void SetEndpoint(std::string_view target) {
    path_ = std::string(RequestPath(target));
    endpoint_ = EndpointLabel(path_);
  }

  // ---- routing ----

  void Handle(http::request<http::string_body> req) {
    const HttpRoute route = RouteRequest(req, srv_.routing());
    switch (route.endpoint) {
      case HttpEndpoint::kError:
        allow_ = route.allow;
        www_authenticate_ = route.www_authenticate;
        return SendError(static_cast<http::status>(route.error.http_status), route.error);
      case HttpEndpoint::kPreflight: return HandlePreflight(req);
      case HttpEndpoint::kHealth: return HandleHealth();
      case HttpEndpoint::kModels: return HandleModels();
      case HttpEndpoint::kModel:  // GET /v1/models/{id}: the id named the served model
        return SendText(http::status::ok, "application/json", json::serialize(ModelObject()));
      case HttpEndpoint::kMetrics:
        return SendText(http::status::ok, "text/plain; version=0.0.4; charset=utf-8", srv_.metrics.Render());
      case HttpEndpoint::kCompletions: return HandleGenerate(ApiKind::kCompletion, req.body());
      case HttpEndpoint::kChat: return HandleGenerate(ApiKind::kChat, req.body());
      case HttpEndpoint::kTokenize: return HandleTokenize(/*detokenize=*/false, req.body());
      case HttpEndpoint::kDetokenize: return HandleTokenize(/*detokenize=*/true, req.body());
    }
  }

  void HandleHealth() {
    const EngineHealth h = srv_.engine.Health();
    if (h.healthy && h.accepting) {
      return SendText(http::status::ok, "application/json", R"({"status":"ok"})");
    }
    json::object body{{"status", h.healthy ? "draining" : "unhealthy"}, {"healthy", h.healthy},
                      {"accepting", h.accepting}, {"detail", h.detail}};
    SendText(http::status::service_unavailable, "application/json", json::serialize(body));
  }

  json::object ModelObject() const {
    return json::object{{"id", srv_.opts.model_name}, {"object", "model"},       {"created", srv_.created},
                        {"owned_by", "deepshard"},    {"root", srv_.opts.model_name}, {"max_model_len", srv_.max_context()}};
  }

  void HandleModels() {
    json::object list;
    list["object"] = "list";
    list["data"] = json::array();
    list["data"].as_array().push_back(ModelObject());
    SendText(http::status::ok, "application/json", json::serialize(list));
  }

  // POST /tokenize, POST /detokenize (serve/tokenize_api.h).
  void HandleTokenize(bool detokenize, const std::string& body) {
    auto out = detokenize ? DetokenizeResponseJson(body, srv_.tokenizer, srv_.opts.model_name)
                          : TokenizeResponseJson(body, srv_.builder, srv_.opts.model_name, srv_.max_context());
    if (!out.ok()) return SendStatus(out.status());
    SendText(http::status::ok, "application/json", *std::move(out));
  }

  // ---- CORS ----

  bool cors_on() const { return !srv_.opts.allowed_origins.empty(); }

  template <class Response>
  void AddCors(Response& res) const {
    if (!cors_on()) return;
    res.set(http::field::vary, "Origin");
    if (!cors_origin_.empty()) res.set(http::field::access_control_allow_origin, cors_origin_);
  }

  // OPTIONS with CORS on and an allowed (or no) Origin: 204 with what a browser
  // may send (RouteRequest answers a disallowed origin 400).
  void HandlePreflight(const http::request<http::string_body>& req) {
    auto res = std::make_shared<http::response<http::empty_body>>(http::status::no_content, version_ ? version_ : 11);
    res->set(http::field::server, "deepshard");
    AddCors(*res);
    res->set(http::field::access_control_allow_methods, kCorsMethods);
    const std::string_view asked = SV(req[http::field::access_control_request_headers]);
    res->set(http::field::access_control_allow_headers, asked.empty() ? std::string_view(kCorsDefaultHeaders) : asked);
    res->set(http::field::access_control_max_age, kCorsMaxAge);
    res->keep_alive(keep_alive_);
    RecordRequest(204);
    writing_ = true;
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->OnWriteError();
      self->AfterResponse(res->keep_alive());
    });
  }

  // ---- generation ----

  void HandleGenerate(ApiKind kind, const std::string& body) {
    const EngineHealth h = srv_.engine.Health();
    if (!h.accepting || !h.healthy) {
      return SendStatus(absl::UnavailableError(absl::StrCat("the server is not accepting requests",
                                                            h.detail.empty() ? "" : ": ", h.detail)));
    }
    auto req = kind == ApiKind::kChat ? ParseChatRequest(body, srv_.opts.model_name)
                                      : ParseCompletionRequest(body, srv_.opts.model_name);
    if (!req.ok()) return SendStatus(req.status());
    auto built = srv_.builder.BuildAll(*req, srv_.max_context());
    if (!built.ok()) return SendStatus(built.status());

    auto g = std::make_unique<Generation>();
    g->seq = ++gen_seq_;
    g->stream = req->stream;
    g->ctx.kind = kind;
    g->ctx.id = NewRequestId(kind);
    g->ctx.created = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    g->ctx.model = srv_.opts.model_name;
    g->ctx.include_usage = req->stream && req->include_usage;
    g->ctx.with_token_ids = srv_.tokenizer == nullptr || req->return_token_ids;
    for (const auto& ids : built->prompt_ids) g->prompt_tokens += static_cast<int64_t>(ids.size());
    const size_t n_choices = built->choices.size();
    g->choices.resize(n_choices);
    for (size_t i = 0; i < n_choices; ++i) {
      const size_t prompt = i / static_cast<size_t>(req->n);
      ChoiceOptions o;
      o.kind = kind;
      o.index = static_cast<int>(i);
      o.tokenizer = srv_.tokenizer;
      o.stops = req->stop;
      o.stop_token_ids = req->sampling.stop_token_ids;
      o.logprobs = req->logprobs;
      o.echo = req->echo;
      o.echo_text = built->prompt_texts[prompt];
      o.prompt_ids = built->prompt_ids[prompt];
      o.discard_output = built->discard_output;
      o.with_token_ids = g->ctx.with_token_ids;
      o.reasoning = srv_.opts.reasoning_parser;
      o.starts_in_reasoning = built->starts_in_reasoning;
      o.tools = srv_.opts.tool_call_parser && !req->tools.empty() && req->tool_choice.kind == ToolChoice::kAuto;
      if (!req->tools.empty() && req->tool_choice.kind == ToolChoice::kFunction) {
        o.forced_function = req->tool_choice.function;
      }
      o.required_tools = !req->tools.empty() && req->tool_choice.kind == ToolChoice::kRequired;
      o.request_id = g->ctx.id;
      g->choices[i].out.emplace(std::move(o));
    }

    // The sinks run on the engine's thread: they only post to this strand.
    // NOTES: a sink must not hold the executor itself (a strand outliving its
    // io_context is undefined); a live session implies a live io_context while
    // the lifeline is held, and `self` is released before the lock.
    for (size_t i = 0; i < n_choices; ++i) {
      TokenSink sink = [life = srv_.lifeline, weak = weak_from_this(), seq = g->seq, i](TokenEvent ev) {
        std::lock_guard<std::mutex> lock(life->mu);
        if (!life->alive) return;
        std::shared_ptr<HttpSession> self = weak.lock();
        if (!self) return;  // the connection is gone (and the request was cancelled)
        auto ex = self->stream_.get_executor();
        net::post(ex, [self = std::move(self), seq, i, ev = std::move(ev)]() mutable {
          self->OnEvent(seq, i, std::move(ev));
        });
      };
      // Each choice its own constraint state (the grammar and its masks are shared).
      auto constraint = srv_.structured.ConstraintFor(*req);
      if (!constraint.ok()) {
        for (size_t k = 0; k < i; ++k) srv_.engine.Cancel(g->choices[k].engine_id);
        return SendStatus(constraint.status());
      }
      built->choices[i].constraint = *std::move(constraint);
      // Choices after the first of a prompt share its prompt KV (copy-on-write).
      if (i % static_cast<size_t>(req->n) != 0) {
        built->choices[i].share_prompt_with = g->choices[i - i % static_cast<size_t>(req->n)].engine_id;
      }
      auto id = srv_.engine.Submit(std::move(built->choices[i]), std::move(sink));
      if (!id.ok()) {
        for (size_t k = 0; k < i; ++k) srv_.engine.Cancel(g->choices[k].engine_id);
        return SendStatus(id.status());
      }
      g->choices[i].engine_id = *id;
    }
    g->open = static_cast<int>(n_choices);
    g->n = req->n;
    gen_ = std::move(g);
    SetGenerating(true);
    srv_.metrics.Add(kInFlight, {}, 1);
    srv_.metrics.Add(kPromptTokens, {}, static_cast<double>(gen_->prompt_tokens));
    if (gen_->stream) StartStream();
    Watch();  // after the stream's header: it may probe the client at once
  }

  void StartStream() {
    chunked_ = version_ >= 11;
    auto res = std::make_shared<http::response<http::empty_body>>(http::status::ok, version_);
    res->set(http::field::server, "deepshard");
    res->set(http::field::content_type, "text/event-stream");
    res->set(http::field::cache_control, "no-cache");
    AddCors(*res);
    res->keep_alive(keep_alive_ && chunked_);
    if (chunked_) res->chunked(true);
    auto sr = std::make_shared<http::response_serializer<http::empty_body>>(*res);
    writing_ = true;
    http::async_write_header(stream_, *sr, [self = shared_from_this(), res, sr](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->OnWriteError();
      self->Pump();
    });
    if (gen_->ctx.kind == ApiKind::kChat) {
      for (Choice& c : gen_->choices) QueueEvent(ChunkWithChoices(gen_->ctx, {c.out->OpeningDelta()}));
    }
  }

  void OnEvent(uint64_t seq, size_t index, TokenEvent ev) {
    if (!gen_ || gen_->seq != seq || gen_->done || index >= gen_->choices.size()) return;  // stale
    // A client that sent EOF, or whose reads are paused: still there? Checked every step.
    if ((peer_eof_ || paused_) && CheckPeer(/*probe=*/true)) return;
    Generation& g = *gen_;
    Choice& c = g.choices[index];
    if (c.done) return;  // stopped by a stop string: its kCancelled event is ignored
    c.cached_tokens = std::max(c.cached_tokens, ev.cached_tokens);
    if (!ev.tokens.empty()) {
      const auto now = Clock::now();
      const double n = static_cast<double>(ev.tokens.size());
      if (!g.got_token) {
        srv_.metrics.Observe(kTimeToFirstToken, {}, Seconds(now - start_));
      } else {
        for (size_t i = 0; i < ev.tokens.size(); ++i) {
          srv_.metrics.Observe(kInterTokenLatency, {}, Seconds(now - g.last_token) / n);
        }
      }
      g.got_token = true;
      g.last_token = now;
      srv_.metrics.Add(kGenerationTokens, {}, n);
    }
    if (ev.finished && (ev.reason == FinishReason::kError || ev.reason == FinishReason::kCancelled)) {
      return FinishWithError(absl::StatusCode::kUnavailable,
                             ev.reason == FinishReason::kCancelled ? "the request was cancelled by the server"
                             : ev.error.empty()                    ? "the generation failed"
                                                                   : ev.error);
    }
    ChoiceOutput::Step step = c.out->Add(ev);
    if (g.stream && !step.deltas.empty()) QueueEvent(ChunkWithChoices(g.ctx, std::move(step.deltas)));
    if (step.stopped) {
      srv_.engine.Cancel(c.engine_id);  // the final kCancelled event will be ignored
      return FinishChoice(c, "stop");
    }
    if (!ev.finished) return;
    const std::string_view reason = c.out->stopped() ? "stop" : FinishReasonString(ev.reason);
    FinishChoice(c, reason.empty() ? "stop" : reason);
  }

  void FinishChoice(Choice& c, std::string_view reason) {
    c.done = true;
    Generation& g = *gen_;
    if (g.stream) {
      QueueEvent(ChunkWithChoices(g.ctx, c.out->FinishStream(reason)));
    } else {
      g.finals.push_back(c.out->FinalChoice(reason));
    }
    if (--g.open == 0) Finish();
  }

  // Marks the response finished (once): metrics, in-flight gauge.
  void EndGeneration() {
    gen_->done = true;
    srv_.metrics.Add(kInFlight, {}, -1);
  }

  void Finish() {
    EndGeneration();
    Generation& g = *gen_;
    Usage usage{g.prompt_tokens, 0};
    int64_t cached = 0;  // the first choice of each prompt: the others share its prompt
    for (size_t i = 0; i < g.choices.size(); ++i) {
      usage.completion_tokens += g.choices[i].out->completion_tokens();
      if (i % static_cast<size_t>(g.n) == 0) cached += g.choices[i].cached_tokens;
    }
    srv_.metrics.Observe(kRequestLatency, {{"endpoint", endpoint_}}, Seconds(Clock::now() - start_));
    if (!g.stream) {
      return SendText(http::status::ok, "application/json", ResponseJson(g.ctx, std::move(g.finals), usage, cached));
    }
    if (g.ctx.include_usage) QueueEvent(UsageChunkJson(g.ctx, usage, cached));
    EndStream(200);
  }

  // Ends the whole response with an error; the other choices are cancelled.
  void FinishWithError(absl::StatusCode code, const std::string& message) {
    CancelOpenChoices();
    EndGeneration();
    absl::Status s(code, message);
    // An engine failure while it still runs healthy is an internal error.
    const EngineHealth h = srv_.engine.Health();
    if (code == absl::StatusCode::kUnavailable && h.healthy && h.accepting) s = absl::InternalError(message);
    if (!gen_->stream) return SendStatus(s);
    QueueEvent(ErrorJson(ToApiError(s)));
    EndStream(200);
  }

  void CancelOpenChoices() {
    for (Choice& c : gen_->choices) {
      if (!c.done) srv_.engine.Cancel(c.engine_id);
      c.done = true;
    }
  }

  void EndStream(int status) {
    RecordRequest(status);
    QueueSse(std::string(kSseDone));
    if (chunked_) out_.push_back("0\r\n\r\n");  // the last chunk
    stream_done_ = true;
    Pump();
  }

  void QueueEvent(const std::string& payload) { QueueSse(SseEvent(payload)); }

  // One SSE event ("data: ...\n\n"), as one HTTP chunk when chunked. A client
  // that stops reading while its generation goes on would make the queue grow
  // without bound: past max_queued_bytes it is treated as gone (cancelled).
  void QueueSse(std::string event) {
    queued_bytes_ += event.size();
    if (queued_bytes_ > srv_.opts.max_queued_bytes) {
      std::fprintf(stderr, "deepshard http: a client stopped reading (%zu bytes queued); cancelling its request\n",
                   queued_bytes_);
      return ClientGone();
    }
    if (chunked_) {
      char size[32];
      std::snprintf(size, sizeof size, "%zx\r\n", event.size());
      out_.push_back(absl::StrCat(size, event, "\r\n"));
    } else {
      out_.push_back(std::move(event));
    }
    Pump();
  }

  // Writes everything queued as one write; when the stream is over and the
  // queue is empty, moves on to the next request.
  void Pump() {
    if (writing_ || closed_) return;
    if (out_.empty()) {
      if (stream_done_) {
        stream_done_ = false;
        AfterResponse(keep_alive_ && chunked_);
      }
      return;
    }
    writing_ = true;
    current_.clear();
    for (std::string& s : out_) current_ += s;
    out_.clear();
    queued_bytes_ = 0;  // what is being written is the socket's now
    net::async_write(stream_, net::buffer(current_), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->OnWriteError();
      if (self->after_write_ && self->out_.empty()) {
        auto next = std::move(self->after_write_);
        self->after_write_ = nullptr;
        return next();
      }
      self->Pump();
    });
  }

  void OnWriteError() { ClientGone(); }

  // The client went away (EOF, reset, write error) or the server stops.
  void ClientGone() {
    if (gen_ && !gen_->done) {
      CancelOpenChoices();
      EndGeneration();
      RecordRequest(499);
    }
    Close();
  }

  // ---- the read that watches the socket during a generation ----

  // While a generation runs, a read stays pending: it is how a close (EOF, or
  // a reset) is noticed at once. Bytes that arrive instead are pipelined
  // requests; they stay in buffer_ and are served in order after this
  // response. Past kMaxPipelinedBytes, reading stops (back-pressure: the
  // kernel's buffers fill, then the client's writes block) and CheckPeer
  // watches the socket instead until the response is written.
  void Watch() {
    if (watching_ || paused_ || closed_) return;
    if (peer_eof_) return ProbeAfterEof();  // nothing more to read: probe instead
    if (buffer_.size() >= kMaxPipelinedBytes) return Pause();
    watching_ = true;
    stream_.async_read_some(buffer_.prepare(std::min<size_t>(4096, kMaxPipelinedBytes - buffer_.size())),
                            [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnWatch(ec, n); });
  }

  void OnWatch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (!ec) buffer_.commit(n);
    const bool eof = ec == net::error::eof || ec == http::error::end_of_stream;
    if (next_ != Next::kNone && (!ec || eof || ec == net::error::operation_aborted)) {
      if (eof) MarkPeerEof();  // ReadHeader serves what is buffered, then sees the EOF and closes
      const Next next = next_;
      next_ = Next::kNone;
      return next == Next::kRead ? ReadHeader() : GracefulClose();
    }
    if (!ec) {
      if (generating_) Watch();  // a pipelined request: keep it for later, keep watching
      return;
    }
    if (ec == net::error::operation_aborted && closed_) return;
    if (eof) return OnPeerEof();
    ClientGone();
  }

  // Reads are paused with kMaxPipelinedBytes buffered: a close can no longer
  // be read, only seen in the socket's state (CheckPeer), at every engine
  // event and every kPeerCheckPeriod, until the response is written.
  void Pause() {
    paused_ = true;
    if (CheckPeer(/*probe=*/true)) return;
    CheckPeerLater();
  }

  void MarkPeerEof() {
    peer_eof_ = true;
    // Nothing more can come: close after this response, unless pipelined
    // requests are buffered (they are served first; the close comes after).
    if (buffer_.size() == 0) keep_alive_ = false;
  }

  // The client sent EOF during a generation: either it closed the socket (gone:
  // cancel) or it half-closed and waits for the response.
  void OnPeerEof() {
    MarkPeerEof();
    if (!gen_ || gen_->done) return;  // the response is being written: let it finish
    ProbeAfterEof();
  }

  // A write tells a closed client from a half-closed one (a closed socket
  // answers it with a reset): the stream's own events, or else a probe that
  // changes nothing for the client (an SSE comment, or an interim "100
  // Continue", which HTTP/1.1 clients skip). The state is then checked at
  // every engine event (with a probe each time for a non-streaming response:
  // the client may close later) and every kPeerCheckPeriod.
  void ProbeAfterEof() {
    if (gen_->stream) {
      QueueSse(": waiting\n\n");
      if (closed_) return;
    } else if (!Probe()) {
      return ClientGone();  // HTTP/1.0 has no interim responses to probe with
    }
    CheckPeerLater();
  }

  // An interim "100 Continue" for a non-streaming HTTP/1.1 response; false
  // when there is no way to probe (HTTP/1.0). Skipped while a write is in
  // flight: that write is the probe.
  bool Probe() {
    if (version_ < 11) return false;
    if (!writing_ && out_.empty()) {
      out_.push_back("HTTP/1.1 100 Continue\r\n\r\n");
      Pump();
    }
    return true;
  }

  // Whether the client is gone, when reads cannot tell (after its EOF, or
  // paused); calls ClientGone and returns true if so. A reset shows in the
  // socket's state. A close does not, unless a write provokes a reset: after
  // a FIN (closed or half-closed?), and while paused with bytes unread in the
  // kernel (our full receive window may hold the client's FIN back in its
  // send queue). A stream's events are such writes; a non-streaming response
  // gets a probe when `probe` (at each engine event).
  bool CheckPeer(bool probe) {
    const int fd = stream_.socket().native_handle();
    const PeerState state = PeerStateOf(fd);
    if (state == PeerState::kGone) {
      ClientGone();
      return true;
    }
    if (!probe || !gen_ || gen_->done || gen_->stream) return false;
    const bool fin = peer_eof_ || state == PeerState::kFinReceived;
    if (!fin && !(paused_ && UnreadBytes(fd) > 0)) return false;
    if (!Probe() && fin) {  // HTTP/1.0, after a FIN: as at an EOF
      ClientGone();
      return true;
    }
    return false;
  }

  void CheckPeerLater() {
    peer_timer_.expires_after(kPeerCheckPeriod);
    peer_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->closed_ || !self->gen_ || self->gen_->done) return;
      if (self->CheckPeer(/*probe=*/false)) return;
      self->CheckPeerLater();
    });
  }

  // The response of a request is fully written: the next request, or close.
  void AfterResponse(bool keep_alive) {
    SetGenerating(false);
    gen_.reset();
    if (watching_) {
      next_ = keep_alive ? Next::kRead : Next::kClose;
      beast::error_code ec;
      stream_.socket().cancel(ec);
      return;
    }
    if (keep_alive) return ReadHeader();
    GracefulClose();
  }

  // ---- plain responses ----

  void RecordRequest(int status) {
    if (recorded_) return;
    recorded_ = true;
    srv_.metrics.Add(kRequestsTotal, {{"endpoint", endpoint_}, {"status", std::to_string(status)}});
  }

  void SendStatus(const absl::Status& s) {
    ApiError e = ToApiError(s);
    SendError(static_cast<http::status>(e.http_status), e);
  }

  void SendError(http::status status, const ApiError& e) { SendText(status, "application/json", ErrorJson(e)); }

  void SendText(http::status status, std::string_view content_type, std::string body) {
    if (writing_) {  // a probe (100 Continue) is being written: the response goes after it
      after_write_ = [self = shared_from_this(), status, type = std::string(content_type),
                      body = std::move(body)]() mutable { self->SendText(status, type, std::move(body)); };
      return;
    }
    auto res = std::make_shared<http::response<http::string_body>>(status, version_ ? version_ : 11);
    res->set(http::field::server, "deepshard");
    res->set(http::field::content_type, content_type);
    if (!allow_.empty()) res->set(http::field::allow, allow_);
    if (www_authenticate_) res->set(http::field::www_authenticate, "Bearer");
    AddCors(*res);
    allow_.clear();
    www_authenticate_ = false;
    res->keep_alive(keep_alive_);
    res->body() = std::move(body);
    res->prepare_payload();
    RecordRequest(static_cast<int>(status));
    if (head_) {  // HEAD: the headers of the GET response (Content-Length too), no body
      auto sr = std::make_shared<http::response_serializer<http::string_body>>(*res);
      writing_ = true;
      http::async_write_header(stream_, *sr, [self = shared_from_this(), res, sr](beast::error_code ec, size_t) {
        self->writing_ = false;
        if (ec) return self->OnWriteError();
        self->AfterResponse(res->keep_alive());
      });
      return;
    }
    writing_ = true;
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->OnWriteError();
      self->AfterResponse(res->keep_alive());
    });
  }

  // Half-close, then read (and drop) what the client still sends for a while,
  // so that an early error response (413) is not lost to a TCP reset.
  void GracefulClose() {
    if (closed_) return;
    if (peer_eof_) return Close();  // everything was read: nothing to drain (and no EOF to wait for)
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(kDrainTime);
    Drain();
  }

  void Drain() {
    drain_buffer_.resize(16 << 10);
    stream_.async_read_some(net::buffer(drain_buffer_), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->drained_ += n;
      if (ec || self->drained_ > kMaxDrainBytes) return self->Close();
      self->Drain();
    });
  }

  // generating_ mirrored in the server's count, which a graceful Stop waits on.
  void SetGenerating(bool on) {
    if (on == generating_) return;
    generating_ = on;
    srv_.generating += on ? 1 : -1;
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    SetGenerating(false);
    peer_timer_.cancel();
    after_write_ = nullptr;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  HttpServer::Impl& srv_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;

  // The current request.
  unsigned version_ = 11;
  bool keep_alive_ = true;
  std::string path_;
  std::string endpoint_ = "other";  // metrics label: a known path or "other"
  Clock::time_point start_;
  bool recorded_ = false;
  std::string allow_;              // Allow header of a 405
  bool head_ = false;              // a HEAD request: responses go without their body
  std::string cors_origin_;        // Access-Control-Allow-Origin of the response ("" none)
  bool www_authenticate_ = false;  // WWW-Authenticate header of a 401

  // The current generation.
  std::unique_ptr<Generation> gen_;
  uint64_t gen_seq_ = 0;
  bool generating_ = false;  // from Submit until the response is written

  // Output.
  bool writing_ = false;
  bool chunked_ = false;
  bool stream_done_ = false;
  std::deque<std::string> out_;
  size_t queued_bytes_ = 0;  // in out_
  std::string current_;
  std::function<void()> after_write_;  // a response held back while a probe is written

  // Socket state.
  net::steady_timer peer_timer_;  // checks a half-closed client (OnPeerEof)
  bool peer_eof_ = false;         // the client sent EOF
  bool paused_ = false;           // kMaxPipelinedBytes buffered: not reading until the response is written
  bool watching_ = false;
  Next next_ = Next::kNone;
  bool closed_ = false;
  std::vector<char> drain_buffer_;
  size_t drained_ = 0;
};

// ---------------------------------------------------------------------------

void HttpServer::Impl::Register(const std::shared_ptr<HttpSession>& s) {
  std::lock_guard<std::mutex> lock(sessions_mu);
  sessions[s.get()] = s;
}

absl::Status HttpServer::Impl::Start() {
  if (started) return absl::FailedPreconditionError("HttpServer::Start called twice");
  const std::string where = absl::StrCat(opts.host, ":", opts.port);
  beast::error_code ec;
  tcp::resolver resolver(ioc);
  auto results = resolver.resolve(opts.host, std::to_string(opts.port), tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve the listen address ", where, ": ", ec.message()));
  }
  const tcp::endpoint endpoint = results.begin()->endpoint();
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    beast::error_code ignored;
    acceptor.close(ignored);
    return absl::UnavailableError(absl::StrCat("cannot listen on ", where, ": ", ec.message()));
  }
  port = acceptor.local_endpoint().port();
  acceptor.native_non_blocking(true, ec);  // OnAcceptExhausted's accept must not block
  // Kept in reserve: when the process is out of descriptors, it is closed to
  // accept one waiting connection, answer it 503 and close it (then reopened).
  reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  started = true;
  DoAccept();
  const int n = std::max(1, opts.threads);
  running = n;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([this] {
      ioc.run();
      --running;
    });
  }
  return absl::OkStatus();
}

void HttpServer::Impl::DoAccept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
    if (ec == net::error::no_descriptors || ec.value() == ENFILE || ec == net::error::no_buffer_space ||
        ec == net::error::no_memory) {
      return OnAcceptExhausted(ec);
    }
    if (ec) {
      metrics.Add(kAcceptFailures, {{"reason", "other"}});
      accept_log.Print(absl::StrCat("deepshard http: accept failed: ", ec.message()), "accept failures");
    } else if (opts.max_connections > 0 && SessionCount() >= static_cast<size_t>(opts.max_connections)) {
      metrics.Add(kRefused, {{"reason", "max_connections"}});
      accept_log.Print(absl::StrCat("deepshard http: ", opts.max_connections,
                                    " connections open (--max-connections): answering 503 to new ones"),
                       "refused connections");
      RefuseFd(socket.release());
    } else {
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);  // SSE events are small and latency matters
      if (opts.send_timeout.count() > 0) {
        const unsigned ms = static_cast<unsigned>(std::chrono::milliseconds(opts.send_timeout).count());
        ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
      }
      auto session = std::make_shared<HttpSession>(*this, std::move(socket));
      Register(session);
      session->Start();
    }
    DoAccept();
  });
}

// Out of descriptors: the waiting connection cannot be accepted, and accepting
// again at once would fail the same way (a busy loop). Answer one waiting
// client 503 with the reserve descriptor, then wait kAcceptBackoff.
void HttpServer::Impl::OnAcceptExhausted(const beast::error_code& ec) {
  metrics.Add(kAcceptFailures, {{"reason", "fd_limit"}});
  accept_log.Print(absl::StrCat("deepshard http: cannot accept a connection: ", ec.message(),
                                " (raise `ulimit -n` or lower --max-connections); answering 503 and retrying in ",
                                kAcceptBackoff.count(), " ms"),
                   "accept failures");
  if (reserve_fd >= 0) {
    ::close(reserve_fd);
    reserve_fd = -1;
    const int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
      RefuseFd(fd);
      metrics.Add(kRefused, {{"reason", "fd_limit"}});
    }
    reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
  accept_timer.expires_after(kAcceptBackoff);
  accept_timer.async_wait([this](beast::error_code ec) {
    if (ec || !acceptor.is_open()) return;
    DoAccept();
  });
}

void HttpServer::Impl::Stop(double grace_s) {
  if (!started || stopped) return;
  stopped = true;
  net::post(acceptor.get_executor(), [this] {
    beast::error_code ec;
    acceptor.close(ec);
    accept_timer.cancel();
  });
  // Let responses whose final event was already delivered finish writing.
  const auto grace = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_s));
  while (generating > 0 && Clock::now() < grace) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  {
    std::lock_guard<std::mutex> lock(lifeline->mu);
    lifeline->alive = false;
  }
  std::vector<std::shared_ptr<HttpSession>> live;
  {
    std::lock_guard<std::mutex> lock(sessions_mu);
    for (auto& [ptr, weak] : sessions) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  for (auto& s : live) s->Abort();
  live.clear();
  // Give the handlers a moment to run down, then stop whatever is left.
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  while (running > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ioc.stop();
  for (auto& t : threads) t.join();
  threads.clear();
}

// ---------------------------------------------------------------------------

HttpServer::HttpServer(HttpServerOptions options, const Tokenizer* tokenizer, GenerationApi& engine, Metrics& metrics)
    : impl_(std::make_unique<Impl>(std::move(options), tokenizer, engine, metrics)) {}

HttpServer::~HttpServer() { Stop(0); }

absl::Status HttpServer::Start() { return impl_->Start(); }

int HttpServer::port() const { return impl_->port; }

void HttpServer::Stop(double grace_s) { impl_->Stop(grace_s); }

}  // namespace deepshard::serve
