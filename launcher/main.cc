// The deepshard executable: dispatches to a subcommand.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "launcher/commands.h"

namespace {
constexpr char kUsage[] =
    "deepshard: serve DeepSeek-family models\n"
    "\n"
    "usage: deepshard <command> [flags]   (deepshard <command> --help for its flags)\n"
    "\n"
    "commands:\n"
    "  make-model   write a random-weight model in the Hugging Face layout\n"
    "  generate     continue a prompt (text, chat message or token ids) on one rank or pp x ep ranks\n"
    "  plan         print the placement of layers and experts over a pp x ep grid\n"
    "  tokenize     text to token ids, or ids to text, with a model's tokenizer\n"
    "  serve        an OpenAI-compatible HTTP server (continuous batching, paged latent KV) on 1 or pp x ep ranks\n"
    "  chat         a terminal chat client for a running server (deepshard chat --url http://127.0.0.1:8000)\n";
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  // Last resort: sizes are checked before allocating, but no exception may
  // reach std::terminate (an abort with a core dump and no message).
  try {
    if (cmd == "make-model") return deepshard::RunMakeModel(args);
    if (cmd == "generate") return deepshard::RunGenerate(args);
    if (cmd == "plan") return deepshard::RunPlan(args);
    if (cmd == "tokenize") return deepshard::RunTokenize(args);
    if (cmd == "serve") return deepshard::RunServe(args);
    if (cmd == "chat") return deepshard::RunChat(args);
  } catch (const std::bad_alloc& e) {
    std::fprintf(stderr, "deepshard %s: error: out of memory (%s); a size from the config or the flags is too "
                 "large for this machine\n", cmd.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deepshard %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
  std::fprintf(stderr, "deepshard: unknown command \"%s\"\n\n%s", cmd.c_str(), kUsage);
  return 2;
}
