// libFuzzer: ChatTemplate::Parse + Render with a bounded context.
// Input: template source, then optionally a NUL byte and a JSON array of messages
// (default: a system/user/assistant/user conversation). The renderer's own
// RenderLimits bound steps, output and nesting (smaller here than by default).
#include <cstdint>
#include <string>
#include <string_view>

#include "boost/json.hpp"
#include "text/chat/chat_template.h"
#include "text/chat/jinja_renderer.h"

namespace {
boost::json::array DefaultMessages() {
  return boost::json::parse(R"([
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!", "tool_calls": [{"type": "function",
      "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
    {"role": "tool", "content": "42"},
    {"role": "user", "content": "Bye"}])").as_array();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 16384) return 0;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string_view source = in, ctx_json;
  if (size_t nul = in.find('\0'); nul != std::string_view::npos) {
    source = in.substr(0, nul);
    ctx_json = in.substr(nul + 1);
  }
  auto t = deepshard::ChatTemplate::Parse(source);
  if (!t.ok()) return 0;
  boost::json::object ctx;
  boost::system::error_code ec;
  boost::json::value msgs;
  if (!ctx_json.empty() && ctx_json.size() < 4096) {
    boost::json::parse_options opt;
    opt.max_depth = 16;
    msgs = boost::json::parse(ctx_json, ec, {}, opt);
  }
  if (ec || !msgs.is_array()) msgs = DefaultMessages();
  ctx["messages"] = msgs;
  ctx["add_generation_prompt"] = true;
  ctx["bos_token"] = "<s>";
  ctx["eos_token"] = "</s>";
  ctx["tools"] = boost::json::parse(
      R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])");
  // Budgets far below the defaults (30M steps, 64 MiB): the limit checks are
  // what is fuzzed, not how long a legal runaway loop takes to reach them, and
  // the default budgets made a looping input cost seconds (40-130 execs/s).
  deepshard::jinja::RenderLimits limits;
  limits.max_steps = 200'000;
  limits.max_string_bytes = 1u << 20;
  limits.max_list_items = 1u << 14;
  auto out = t->Render(ctx, limits);
  (void)out;
  return 0;
}
