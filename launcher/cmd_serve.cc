// `deepshard serve`: an OpenAI-compatible server over one rank or a pp × ep
// grid of MPI ranks. This file only reads the flags and sets up the rank's
// share; the job (KV pool, control plane, engine, workers) is serve/job.h and
// rank 0's HTTP front end is serve/server.h ([docs/serving.md]).
//
// Shutdown: SIGTERM/SIGINT on rank 0 drains (new requests get 503, running ones
// finish until --drain-timeout, then get an error), then rank 0 tells every
// rank to exit and all exit 0. A worker that gets SIGTERM asks rank 0 to drain
// (a kDrain frame), so signalling any rank, or the whole job as Slurm's scancel
// does, drains the job. Failure: a rank that dies, stops heartbeating or
// reports a fatal error makes rank 0 fail every request with an error, answer
// /health with 503, and end the job with a non-zero exit after
// --failure-linger seconds; a worker that loses rank 0 exits at once.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "boost/asio/ip/address.hpp"
#include "base/status_macros.h"
#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/mpi_bootstrap.h"
#include "launcher/rank_setup.h"
#include "text/tokenizer/tokenizer.h"
#include "serve/job.h"
#include "serve/server.h"
#include "serve/signals.h"

namespace deepshard {
namespace {

constexpr char kUsage[] =
    "usage: deepshard serve --model DIR [--host 127.0.0.1] [--port 8000]\n"
    "         [--api-key KEY | --api-key-file PATH] [--max-connections N] [--send-timeout 60]\n"
    "         [--served-model-name NAME] [--max-waiting 256] [--max-body-bytes 1048576] [--drain-timeout 30]\n"
    "         [--heartbeat-timeout 3] [--failure-linger 2] [--control-host HOST] [--control-bind ADDR]\n"
    "         [--tool-call-parser deepseek_v3|none] [--reasoning-parser deepseek_r1|none]\n"
    "         [--allowed-origins ORIGIN,... | '*']\n";
constexpr char kUsageNotes[] =
    "\n"
    "  --kv-cache-memory  KV pool per rank (\"4GiB\", \"512MiB\", bytes); each DP slot gets the\n"
    "                     blocks that fit on its tightest rank\n"
    "  --kv-cache-dtype   latent KV values: f32, or bf16 (half the memory)\n"
    "  --weights          int8 | int4: quantise the projections, experts and LM head at load, one\n"
    "                     f16 scale per --weights-group columns (32); fp8 stays fp8 unless\n"
    "                     --quantize-fp8 (default: stored, the checkpoint's own dtypes)\n"
    "  --max-num-seqs     running sequences per DP slot; --max-num-batched-tokens: tokens per\n"
    "                     step per DP slot; --prefill-chunk: prompt tokens of one sequence per step\n"
    "  --max-waiting      queued requests beyond which new ones get 429\n"
    "  --micro-batches    plans in flight, each with 1/N of the running decodes (default: --pp;\n"
    "                     1: one plan takes every decode, so pipeline stages take turns)\n"
    "  --drain-timeout    seconds running requests may take after SIGTERM\n"
    "  --no-prefix-cache  do not keep the KV of full blocks after their requests end for\n"
    "                     requests whose prompts start with the same tokens\n"
    "  --tool-call-parser chats with `tools`: parse DeepSeek's tool-call markers (V3, R1 and V3.1\n"
    "                     layouts) into `tool_calls` (default deepseek_v3; none: leave them as text)\n"
    "  --reasoning-parser deepseek_r1: text inside <think>...</think> goes to `reasoning_content`\n"
    "                     (default none)\n"
    "  --api-key-file     read the API key from a file (first line; keeps it out of `ps`); the\n"
    "                     environment variable DEEPSHARD_API_KEY is used when neither is given.\n"
    "                     Without a key on a non-loopback --host, a warning is logged\n"
    "  --max-connections  open HTTP connections at once; beyond, new ones get 503 (default 0: only\n"
    "                     the descriptor limit, where the same happens)\n"
    "  --send-timeout     seconds a client may leave written bytes unread (or unacknowledged) before\n"
    "                     its connection is dropped and its request cancelled (default 60; 0: the\n"
    "                     kernel's)\n"
    "  --control-bind     the address rank 0's control plane listens on (default 0.0.0.0 on several\n"
    "                     nodes, 127.0.0.1 on one); --control-host is the address the other ranks\n"
    "                     dial (default: --control-bind when it names one address, else rank 0's\n"
    "                     hostname)\n"
    "  --allowed-origins  CORS for browsers: origins allowed to call the API, comma-separated\n"
    "                     (https://app.example.com,http://localhost:3000), or '*' for any.\n"
    "                     Off by default (no CORS headers; OPTIONS gets 405)\n"
    "  The model's generation_config.json (temperature, top_p, top_k, min_p, repetition_penalty,\n"
    "  max_new_tokens) gives the defaults of requests that do not set them.\n"
    "\n"
    "Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models[/{id}],\n"
    "POST /tokenize, POST /detokenize, GET /health, GET /metrics (HEAD on every GET)\n";

void PrintUsage(FILE* f) {
  std::fputs(kUsage, f);
  std::fputs(kModelRunUsage, f);
  std::fputs(kUsageNotes, f);
}

struct Options {
  std::string model_dir;
  RuntimeConfig rt;
  PlacementOptions place;
  serve::HttpServerOptions http;
  serve::JobOptions job;
  double startup_timeout = kDefaultStartupTimeout;  // --startup-timeout
};

// --allowed-origins: "*", or origins as browsers send them: scheme://host[:port],
// no path (a trailing "/" is dropped).
absl::StatusOr<std::vector<std::string>> ParseAllowedOrigins(const std::string& value) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    std::string origin(absl::StripAsciiWhitespace(part));
    if (!origin.empty() && origin != "*" && origin.back() == '/') origin.pop_back();
    const size_t scheme = origin.find("://");
    const bool ok = origin == "*" ||
                    (scheme != std::string::npos && scheme > 0 && scheme + 3 < origin.size() &&
                     origin.find_first_of("/?#", scheme + 3) == std::string::npos);
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--allowed-origins: \"", origin, "\" is not an origin; give scheme://host[:port] (e.g. "
          "https://app.example.com), comma-separated, or '*'"));
    }
    out.push_back(std::move(origin));
  }
  return out;
}

absl::StatusOr<Options> ParseOptions(const std::vector<std::string>& args, bool* help) {
  ASSIGN_OR_RETURN(Flags flags,
                   Flags::Parse(args,
                                WithModelRunFlags({"model", "host", "port", "api-key", "served-model-name",
                                                   "max-waiting", "max-body-bytes", "drain-timeout",
                                                   "heartbeat-timeout", "failure-linger", "control-host",
                                                   "control-bind", "api-key-file", "max-connections", "send-timeout",
                                                   "tool-call-parser", "reasoning-parser", "allowed-origins"}),
                                WithModelRunBoolFlags({"help"})));
  *help = flags.Bool("help");
  Options o;
  if (*help) return o;
  ASSIGN_OR_RETURN(o.model_dir, flags.String("model"));
  o.http.host = flags.String("host", "127.0.0.1");
  ASSIGN_OR_RETURN(int64_t port, flags.Int("port", 8000));
  if (port < 0 || port > 65535) return absl::InvalidArgumentError(absl::StrCat("--port must be in [0, 65535], got ", port));
  o.http.port = static_cast<int>(port);
  o.http.api_key = flags.String("api-key", "");
  if (flags.Has("api-key") && o.http.api_key.empty()) return absl::InvalidArgumentError("--api-key is empty");
  if (flags.Has("api-key-file")) {
    if (flags.Has("api-key")) return absl::InvalidArgumentError("give only one of --api-key and --api-key-file");
    const std::string path = flags.String("api-key-file", "");
    std::ifstream in(path);
    std::string key;
    if (!in || !std::getline(in, key)) {
      return absl::InvalidArgumentError(absl::StrCat("--api-key-file: cannot read \"", path, "\""));
    }
    key = std::string(absl::StripAsciiWhitespace(key));
    if (key.empty()) return absl::InvalidArgumentError(absl::StrCat("--api-key-file: \"", path, "\" has no key on its first line"));
    o.http.api_key = key;
  } else if (!flags.Has("api-key")) {
    if (const char* env = std::getenv("DEEPSHARD_API_KEY"); env != nullptr && *env != '\0') o.http.api_key = env;
  }
  ASSIGN_OR_RETURN(int64_t max_connections, flags.Int("max-connections", 0));
  if (max_connections < 0 || max_connections > (1 << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("--max-connections must be in [0, 16777216], got ", max_connections));
  }
  o.http.max_connections = static_cast<int>(max_connections);
  ASSIGN_OR_RETURN(int64_t send_timeout, flags.Int("send-timeout", 60));
  if (send_timeout < 0 || send_timeout > 86400) {
    return absl::InvalidArgumentError(absl::StrCat("--send-timeout must be in [0, 86400] seconds, got ", send_timeout));
  }
  o.http.send_timeout = std::chrono::seconds(send_timeout);
  if (flags.Has("allowed-origins")) {
    ASSIGN_OR_RETURN(o.http.allowed_origins, ParseAllowedOrigins(flags.String("allowed-origins", "")));
  }
  std::string name = std::filesystem::path(o.model_dir).lexically_normal().filename().string();
  if (name.empty() || name == ".") name = "deepseek";
  o.http.model_name = flags.String("served-model-name", name);
  const std::string tool_parser = flags.String("tool-call-parser", "deepseek_v3");
  if (tool_parser != "deepseek_v3" && tool_parser != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--tool-call-parser must be deepseek_v3 or none, got \"", tool_parser, "\""));
  }
  o.http.tool_call_parser = tool_parser == "deepseek_v3";
  const std::string reasoning_parser = flags.String("reasoning-parser", "none");
  if (reasoning_parser != "deepseek_r1" && reasoning_parser != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--reasoning-parser must be deepseek_r1 or none, got \"", reasoning_parser, "\""));
  }
  o.http.reasoning_parser = reasoning_parser == "deepseek_r1";
  ASSIGN_OR_RETURN(o.http.generation_defaults, serve::GenerationDefaults::FromDirectory(o.model_dir));
  serve::JobOptions& j = o.job;
  j.command = "serve";
  ASSIGN_OR_RETURN(j.max_waiting, flags.Int("max-waiting", 256));
  ASSIGN_OR_RETURN(int64_t body, flags.Int("max-body-bytes", 1 << 20));
  ASSIGN_OR_RETURN(j.drain_timeout, flags.Double("drain-timeout", 30));
  ASSIGN_OR_RETURN(j.heartbeat_timeout, flags.Double("heartbeat-timeout", 3));
  ASSIGN_OR_RETURN(j.failure_linger, flags.Double("failure-linger", 2));
  j.control_host = flags.String("control-host", "");
  j.control_bind = flags.String("control-bind", "");
  if (flags.Has("control-bind") && j.control_bind.empty()) return absl::InvalidArgumentError("--control-bind is empty");
  if (flags.Has("control-host") && j.control_host.empty()) return absl::InvalidArgumentError("--control-host is empty");
  if (j.max_waiting < 1) return absl::InvalidArgumentError("--max-waiting must be >= 1");
  if (body < 1) return absl::InvalidArgumentError("--max-body-bytes must be >= 1");
  o.http.max_body_bytes = static_cast<size_t>(body);
  // Bounded (not just finite) so that seconds convert to clock durations safely.
  if (!(j.drain_timeout >= 0 && j.drain_timeout <= 86400)) {
    return absl::InvalidArgumentError(absl::StrCat("--drain-timeout must be in [0, 86400] seconds, got ", j.drain_timeout));
  }
  if (!(j.heartbeat_timeout > 0.5 && j.heartbeat_timeout <= 3600)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--heartbeat-timeout must be in (0.5, 3600] seconds (heartbeats go every 0.5 s), got ", j.heartbeat_timeout));
  }
  if (!(j.failure_linger >= 0 && j.failure_linger <= 3600)) {
    return absl::InvalidArgumentError(absl::StrCat("--failure-linger must be in [0, 3600] seconds, got ", j.failure_linger));
  }
  RETURN_IF_ERROR(ParseModelRunFlags(flags, &o.rt, &o.place, &o.job, &o.startup_timeout));
  return o;
}

void Log(const std::string& m) { serve::Log("serve", m); }

bool IsLoopback(const std::string& host) {
  if (host == "localhost") return true;
  boost::system::error_code ec;
  const auto a = boost::asio::ip::make_address(host, ec);
  return !ec && a.is_loopback();
}

// Rank 0's tokenizer (token-id prompts still work without one).
std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& dir) {
  auto tok = Tokenizer::FromDirectory(dir);
  if (tok.ok()) return *std::move(tok);
  Log(absl::StrCat("warning: no usable tokenizer in ", dir, " (", tok.status().message(),
                   "); only token-id prompts will work"));
  return nullptr;
}

int Serve(const Options& o, RankShare& share, serve::StopSignals& signals) {
  int code = 0;
  auto job = serve::Job::Start(JobResources(share, "serve"), o.job, &code);
  EndStartupWatch(share);  // the job's own heartbeats watch the ranks from here
  if (!job) return code;
  if (!job->is_root()) return job->RunWorker(&signals);
  if (o.http.api_key.empty() && !IsLoopback(o.http.host)) {
    Log(absl::StrCat("warning: listening on ", o.http.host, " (not loopback) without an API key: anyone who can reach "
                     "it can use the model; set --api-key-file or DEEPSHARD_API_KEY"));
  }
  auto tokenizer = LoadTokenizer(o.model_dir);
  return serve::RunServer(*job, o.http, tokenizer.get(), signals);
}

}  // namespace

int RunServe(const std::vector<std::string>& args) {
  bool help = false;
  auto o = ParseOptions(args, &help);
  if (!o.ok()) {
    if (IsRootProcess()) {
      Log(absl::StrCat("error: ", o.status().message()));
      PrintUsage(stderr);
    }
    return 2;
  }
  if (help) {
    PrintUsage(stdout);
    return 0;
  }
  serve::StopSignals stop_signals("serve");  // before MPI and every other thread
  if (!LaunchedUnderMpi()) {
    if (o->place.pp * o->place.ep > 1) {
      Log(absl::StrCat("error: --pp ", o->place.pp, " --ep ", o->place.ep, " needs ", o->place.pp * o->place.ep,
                       " ranks: launch with mpirun -np ", o->place.pp * o->place.ep, " deepshard serve ..."));
      return 2;
    }
    auto share = SetUpSingleRank(o->model_dir, o->rt);
    if (!share.ok()) {
      Log(absl::StrCat("error: ", share.status().message()));
      return 1;
    }
    return Serve(*o, *share, stop_signals);
  }
  MpiSession mpi(nullptr, nullptr, "serve", o->startup_timeout);
  int code = 0;
  auto share = SetUpRankShare("serve", o->model_dir, o->place, o->rt, mpi, &code);
  if (!share) return code;
  return Serve(*o, *share, stop_signals);
}

}  // namespace deepshard
