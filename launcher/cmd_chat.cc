// deepshard chat: a terminal chat client for `deepshard serve` (or any
// OpenAI-compatible server). The loop itself is serve/chat_client.h.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "serve/chat_client.h"

namespace deepshard {

namespace {
constexpr char kUsage[] =
    "usage: deepshard chat --url http://HOST:PORT\n"
    "         [--api-key KEY]      sent as Authorization: Bearer KEY\n"
    "         [--model NAME]       the model to ask for (default: the server's)\n"
    "         [--system TEXT]      system prompt\n"
    "         [--max-tokens N]     longest reply (default: the server's)\n"
    "         [--temperature T]    0 = greedy (default: the server's)\n"
    "       Type a message and press Enter; /reset starts over, /exit (or Ctrl-D) quits.\n";
}  // namespace

int RunChat(const std::vector<std::string>& args) {
  auto fail = [](const absl::Status& s, int code) {
    std::fprintf(stderr, "deepshard chat: error: %s\n", std::string(s.message()).c_str());
    if (code == 2) std::fputs(kUsage, stderr);
    return code;
  };
  auto flags = Flags::Parse(args, {"url", "api-key", "model", "system", "max-tokens", "temperature"}, {"help"});
  if (!flags.ok()) return fail(flags.status(), 2);
  if (flags->Bool("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  serve::ChatOptions o;
  auto url = flags->String("url");
  if (!url.ok()) return fail(url.status(), 2);
  o.url = *url;
  o.api_key = flags->String("api-key", "");
  o.model = flags->String("model", "");
  o.system = flags->String("system", "");
  if (flags->Has("max-tokens")) {
    auto n = flags->Int("max-tokens");
    if (!n.ok()) return fail(n.status(), 2);
    if (*n < 1) return fail(absl::InvalidArgumentError("--max-tokens must be >= 1"), 2);
    o.max_tokens = *n;
  }
  if (flags->Has("temperature")) {
    auto t = flags->Double("temperature", 0);
    if (!t.ok()) return fail(t.status(), 2);
    if (*t < 0 || *t > 2) return fail(absl::InvalidArgumentError("--temperature must be in [0, 2]"), 2);
    o.temperature = *t;
  }
  o.show_prompt = isatty(STDIN_FILENO) != 0;
  return serve::RunChat(o, std::cin, std::cout, std::cerr);
}

}  // namespace deepshard
