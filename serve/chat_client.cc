// The terminal chat client: see chat_client.h.
#include "serve/chat_client.h"

#include <charconv>
#include <istream>
#include <ostream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/json.hpp"

namespace deepshard::serve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace json = boost::json;
using tcp = net::ip::tcp;

namespace {

absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The message of an OpenAI error body, or the body itself (shortened).
std::string ErrorMessage(std::string_view body) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (!ec && v.is_object()) {
    if (const json::value* e = v.as_object().if_contains("error")) {
      if (e->is_object()) {
        if (const json::value* m = e->as_object().if_contains("message"); m && m->is_string()) {
          return std::string(m->get_string());
        }
      } else if (e->is_string()) {
        return std::string(e->get_string());
      }
    }
  }
  std::string s(body.substr(0, 300));
  return s.empty() ? "(empty body)" : s;
}

class ChatSession {
 public:
  ChatSession(const ChatOptions& o, HttpUrl url, std::ostream& out, std::ostream& err)
      : o_(o), url_(std::move(url)), out_(out), err_(err) {
    Reset();
  }

  void Reset() {
    messages_ = json::array();
    if (!o_.system.empty()) messages_.push_back(json::object{{"role", "system"}, {"content", o_.system}});
  }

  // GET /v1/models: is the server there, and does it take our key?
  bool Probe() {
    beast::error_code ec;
    tcp::socket socket(ioc_);
    if (!Connect(socket, ec)) return Fail("cannot reach", ec);
    http::request<http::empty_body> req{http::verb::get, url_.base + "/v1/models", 11};
    SetHeaders(req);
    http::write(socket, req, ec);
    beast::flat_buffer buffer;
    http::response<http::string_body> res;
    if (!ec) http::read(socket, buffer, res, ec);
    if (ec) return Fail("no answer from", ec);
    if (res.result_int() != 200) {
      err_ << "deepshard chat: " << o_.url << ": HTTP " << res.result_int() << ": " << ErrorMessage(res.body())
           << "\n";
      return false;
    }
    return true;
  }

  // One turn: sends the conversation plus `line`, streams the reply.
  void Turn(const std::string& line) {
    messages_.push_back(json::object{{"role", "user"}, {"content", line}});
    std::string reply;
    if (Send(reply)) {
      messages_.push_back(json::object{{"role", "assistant"}, {"content", reply}});
    } else {
      messages_.pop_back();  // the turn failed: forget it
      err_ << "deepshard chat: (that message was not added to the conversation)\n";
    }
  }

 private:
  template <class Request>
  void SetHeaders(Request& req) {
    req.set(http::field::host, url_.host + ":" + url_.port);
    req.set(http::field::user_agent, "deepshard-chat");
    if (!o_.api_key.empty()) req.set(http::field::authorization, "Bearer " + o_.api_key);
  }

  bool Connect(tcp::socket& socket, beast::error_code& ec) {
    tcp::resolver resolver(ioc_);
    auto results = resolver.resolve(url_.host, url_.port, ec);
    if (ec) return false;
    net::connect(socket, results, ec);
    return !ec;
  }

  bool Fail(std::string_view what, const beast::error_code& ec) {
    err_ << "deepshard chat: " << what << " " << o_.url << ": " << ec.message() << "\n";
    return false;
  }

  // Streams one reply into `reply` (and out_). False on any error.
  bool Send(std::string& reply) {
    json::object body;
    body["messages"] = messages_;
    body["stream"] = true;
    if (!o_.model.empty()) body["model"] = o_.model;
    if (o_.max_tokens) body["max_tokens"] = *o_.max_tokens;
    if (o_.temperature) body["temperature"] = *o_.temperature;

    beast::error_code ec;
    tcp::socket socket(ioc_);
    if (!Connect(socket, ec)) return Fail("cannot reach", ec);
    http::request<http::string_body> req{http::verb::post, url_.base + "/v1/chat/completions", 11};
    SetHeaders(req);
    req.set(http::field::content_type, "application/json");
    req.set(http::field::accept, "text/event-stream");
    req.body() = json::serialize(body);
    req.prepare_payload();
    http::write(socket, req, ec);
    if (ec) return Fail("cannot send to", ec);

    beast::flat_buffer buffer;
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(boost::none);
    http::read_header(socket, buffer, parser, ec);
    if (ec) return Fail("no answer from", ec);
    const int status = parser.get().result_int();
    std::string pending;  // SSE text not yet split into events
    bool done = false, failed = false;
    auto on_event = [&](std::string_view event) {
      for (size_t pos = 0; pos < event.size();) {
        size_t eol = event.find('\n', pos);
        std::string_view line = event.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
        pos = eol == std::string_view::npos ? event.size() : eol + 1;
        if (line.substr(0, 5) != "data:") continue;
        line.remove_prefix(5);
        if (!line.empty() && line[0] == ' ') line.remove_prefix(1);
        if (line == "[DONE]") {
          done = true;
          continue;
        }
        boost::system::error_code jec;
        json::value v = json::parse(line, jec);
        if (jec || !v.is_object()) continue;
        if (v.as_object().contains("error")) {
          out_ << "\n" << std::flush;
          err_ << "deepshard chat: " << o_.url << ": error from the server: " << ErrorMessage(line) << "\n";
          failed = true;
          continue;
        }
        const json::value* choices = v.as_object().if_contains("choices");
        if (!choices || !choices->is_array() || choices->as_array().empty()) continue;
        const json::value& c = choices->as_array()[0];
        const json::value* delta = c.is_object() ? c.as_object().if_contains("delta") : nullptr;
        const json::value* content = delta && delta->is_object() ? delta->as_object().if_contains("content") : nullptr;
        if (content && content->is_string()) {
          out_ << std::string_view(content->get_string()) << std::flush;
          reply += std::string_view(content->get_string());
        }
      }
    };
    std::string error_body;
    char chunk[4096];
    while (!parser.is_done()) {
      parser.get().body().data = chunk;
      parser.get().body().size = sizeof chunk;
      http::read(socket, buffer, parser, ec);
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {
        if (status == 200) out_ << "\n" << std::flush;
        return Fail("the reply broke off from", ec);
      }
      const size_t n = sizeof chunk - parser.get().body().size;
      if (status != 200) {
        if (error_body.size() < 65536) error_body.append(chunk, n);
        continue;
      }
      for (size_t i = 0; i < n; ++i) {
        if (chunk[i] != '\r') pending += chunk[i];
      }
      for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
        on_event(std::string_view(pending).substr(0, end));
        pending.erase(0, end + 2);
      }
    }
    if (status != 200) {
      err_ << "deepshard chat: " << o_.url << ": HTTP " << status << ": " << ErrorMessage(error_body) << "\n";
      return false;
    }
    if (!pending.empty()) on_event(pending);
    if (!failed) out_ << "\n" << std::flush;
    if (!failed && !done) {
      err_ << "deepshard chat: " << o_.url << ": the stream ended without [DONE]\n";
      return false;
    }
    return !failed;
  }

  const ChatOptions& o_;
  HttpUrl url_;
  std::ostream& out_;
  std::ostream& err_;
  net::io_context ioc_;
  json::array messages_;
};

}  // namespace

absl::StatusOr<HttpUrl> ParseHttpUrl(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("--url \"", AV(url), "\": ", AV(why)));
  };
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return bad(url.substr(0, 8) == "https://" ? "https is not supported; use http://" : "must start with http://");
  }
  std::string_view rest = url.substr(kScheme.size());
  const size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  HttpUrl u;
  u.base = std::string(path);
  if (authority.find('@') != std::string_view::npos) return bad("user info is not supported");
  std::string_view host = authority, port;
  if (!authority.empty() && authority[0] == '[') {  // [::1]:8000
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 address");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("junk after the IPv6 address");
      port = after.substr(1);
    }
  } else if (const size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty()) return bad("no host");
  u.host = std::string(host);
  if (!port.empty()) {
    int p = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc() || ptr != port.data() + port.size() || p < 1 || p > 65535) return bad("bad port");
    u.port = std::string(port);
  }
  return u;
}

int RunChat(const ChatOptions& options, std::istream& in, std::ostream& out, std::ostream& err) {
  auto url = ParseHttpUrl(options.url);
  if (!url.ok()) {
    err << "deepshard chat: error: " << url.status().message() << "\n";
    return 2;
  }
  ChatSession chat(options, *url, out, err);
  if (!chat.Probe()) return 1;
  if (options.show_prompt) out << "Chatting with " << options.url << " (/reset: new conversation, /exit: quit)\n";
  std::string line;
  while (true) {
    if (options.show_prompt) out << "> " << std::flush;
    if (!std::getline(in, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      chat.Reset();
      if (options.show_prompt) out << "(new conversation)\n";
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    chat.Turn(line);
  }
  if (options.show_prompt) out << "\n";
  return 0;
}

}  // namespace deepshard::serve
