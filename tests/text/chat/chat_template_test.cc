// Tests for text/chat/chat_template (one suite, `chat_template`, so
// that `ctest -R chat_template` selects them all): rendered text must be
// byte-identical to transformers' apply_chat_template / jinja2 on the fixtures
// in tests/data/chat_templates (made by
// tools/reference/make_chat_template_fixtures.py); errors must name the
// construct and its line:column; no template or input may crash or hang.
#include "text/chat/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "boost/json.hpp"
#include "text/chat/jinja_parser.h"
#include "text/chat/jinja_renderer.h"

namespace deepshard {
namespace {
namespace json = boost::json;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json::object LoadFixture(const std::string& name) {
  const std::string text = ReadFile(std::string(DS_SOURCE_DIR) + "/tests/data/chat_templates/" + name);
  return json::parse(text).as_object();
}

// Renders one case and compares it with the fixture's "expected" (or checks
// that it fails when the reference raised, "error"). Returns true on a match.
bool CheckCase(const std::string& label, const absl::StatusOr<std::string>& got, const json::object& c) {
  if (const json::value* expected = c.if_contains("expected")) {
    if (!got.ok()) {
      ADD_FAILURE() << label << ": error " << got.status() << "\nexpected: " << json::serialize(*expected);
      return false;
    }
    if (*got != expected->as_string()) {
      ADD_FAILURE() << label << "\n     got: " << json::serialize(json::value(*got))
                    << "\nexpected: " << json::serialize(*expected);
      return false;
    }
    return true;
  }
  if (got.ok()) {
    ADD_FAILURE() << label << ": rendered " << json::serialize(json::value(*got))
                  << " but the reference raised " << json::serialize(c.at("error"));
    return false;
  }
  // Errors carry the position of the construct.
  if (std::string(got.status().message()).rfind("chat template line ", 0) != 0) {
    ADD_FAILURE() << label << ": error without a position: " << got.status();
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Golden comparisons
// ---------------------------------------------------------------------------

TEST(chat_template, GoldenDeepseekV3MatchesTransformers) {
  const json::object fx = LoadFixture("deepseek_v3.json");
  const std::string tmpl(fx.at("template").as_string());
  const std::string bos(fx.at("bos_token").as_string());
  const std::string eos(fx.at("eos_token").as_string());
  int compared = 0, mismatches = 0;
  for (const json::value& v : fx.at("cases").as_array()) {
    const json::object& c = v.as_object();
    const json::value* tools = c.if_contains("tools");
    auto got = ApplyChatTemplate(tmpl, c.at("messages").as_array(), c.at("add_generation_prompt").as_bool(), bos,
                                 eos, tools);
    ++compared;
    mismatches += !CheckCase(std::string(c.at("name").as_string()), got, c);
  }
  std::printf("# deepseek-v3: %d conversations compared, %d mismatches\n", compared, mismatches);
  EXPECT_GE(compared, 20);
  EXPECT_EQ(mismatches, 0);
}

TEST(chat_template, GoldenDeepseekV3FixtureUsesTheShippedTemplate) {
  const std::string path = std::string(DS_SOURCE_DIR) + "/tests/data/tokenizers/deepseek-v3/tokenizer_config.json";
  std::ifstream probe(path);
  if (!probe) GTEST_SKIP() << "no " << path;
  const json::object config = json::parse(ReadFile(path)).as_object();
  EXPECT_EQ(config.at("chat_template").as_string(), LoadFixture("deepseek_v3.json").at("template").as_string());
}

// Compares every case of a templates.json-style fixture file.
void CompareTemplateFixture(const json::object& fx, const char* label) {
  const json::object& templates = fx.at("templates").as_object();
  std::map<std::string, ChatTemplate> parsed;
  for (const auto& kv : templates) {
    auto t = ChatTemplate::Parse(std::string(kv.value().as_string()));
    ASSERT_TRUE(t.ok()) << kv.key() << ": " << t.status();
    parsed.emplace(std::string(kv.key()), *t);
  }
  int compared = 0, mismatches = 0;
  for (const json::value& v : fx.at("cases").as_array()) {
    const json::object& c = v.as_object();
    json::object ctx;
    ctx["messages"] = c.at("messages");
    ctx["tools"] = c.contains("tools") ? c.at("tools") : json::value(nullptr);
    ctx["documents"] = nullptr;
    ctx["add_generation_prompt"] = c.at("add_generation_prompt");
    ctx["bos_token"] = fx.at("bos_token");
    ctx["eos_token"] = fx.at("eos_token");
    if (const json::value* extra = fx.if_contains("extra_vars")) {
      for (const auto& kv : extra->as_object()) ctx[kv.key()] = kv.value();
    }
    auto got = parsed.at(std::string(c.at("template").as_string())).Render(ctx);
    ++compared;
    mismatches += !CheckCase(std::string(c.at("name").as_string()), got, c);
  }
  std::printf("# %s: %d conversations compared, %d mismatches\n", label, compared, mismatches);
  EXPECT_EQ(mismatches, 0);
}

TEST(chat_template, GoldenTemplatesMatchTransformers) {
  CompareTemplateFixture(LoadFixture("templates.json"), "templates");
}

// Real model templates cannot all be committed; render them locally with
//   make_chat_template_fixtures.py --extra-templates DIR --extra-out FILE
// and point DS_CHAT_TEMPLATE_EXTRA_FIXTURES at FILE.
TEST(chat_template, GoldenExtraTemplatesMatchTransformers) {
  const char* path = std::getenv("DS_CHAT_TEMPLATE_EXTRA_FIXTURES");
  if (path == nullptr || *path == 0) GTEST_SKIP() << "DS_CHAT_TEMPLATE_EXTRA_FIXTURES not set";
  CompareTemplateFixture(json::parse(ReadFile(path)).as_object(), path);
}

TEST(chat_template, GoldenSnippetsMatchJinja2) {
  const json::object fx = LoadFixture("snippets.json");
  const json::object& ctx = fx.at("context").as_object();
  int compared = 0, mismatches = 0;
  for (const json::value& v : fx.at("cases").as_array()) {
    const json::object& c = v.as_object();
    const std::string name(c.at("name").as_string());
    auto t = ChatTemplate::Parse(std::string(c.at("template").as_string()));
    absl::StatusOr<std::string> got = t.ok() ? t->Render(ctx) : absl::StatusOr<std::string>(t.status());
    ++compared;
    mismatches += !CheckCase(name + " " + std::string(c.at("template").as_string()), got, c);
  }
  std::printf("# snippets: %d compared, %d mismatches\n", compared, mismatches);
  EXPECT_EQ(mismatches, 0);
}

// ---------------------------------------------------------------------------
// API and error messages
// ---------------------------------------------------------------------------

absl::StatusOr<std::string> Render(const std::string& tmpl, const json::object& ctx = {}) {
  auto t = ChatTemplate::Parse(tmpl);
  if (!t.ok()) return t.status();
  return t->Render(ctx);
}

std::string ErrorOf(const std::string& tmpl, const json::object& ctx = {}) {
  auto r = Render(tmpl, ctx);
  EXPECT_FALSE(r.ok()) << tmpl << " rendered " << *r;
  return r.ok() ? "" : std::string(r.status().message());
}

TEST(chat_template, ApiParseOnceRenderMany) {
  auto t = ChatTemplate::Parse("{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}");
  ASSERT_TRUE(t.ok()) << t.status();
  for (int i = 0; i < 3; ++i) {
    json::object ctx;
    ctx["messages"] = json::array{json::object{{"role", "user"}, {"content", std::to_string(i)}}};
    auto r = t->Render(ctx);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, "[user:" + std::to_string(i) + "]");
  }
  ChatTemplate copy = *t;  // copies share the parsed tree
  EXPECT_TRUE(copy.Render({}).ok());
}

TEST(chat_template, ApiApplyChatTemplatePassesTheStandardVariables) {
  const std::string tmpl =
      "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ tools is none }}|{{ documents is none }}|"
      "{{ messages | length }}{% if tools %}|{{ tools[0].function.name }}{% endif %}";
  json::array messages{json::object{{"role", "user"}, {"content", "hi"}}};
  auto r = ApplyChatTemplate(tmpl, messages, true, "<s>", "</s>");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "<s>|</s>|True|True|True|1");
  json::value tools = json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  r = ApplyChatTemplate(tmpl, messages, false, "<s>", "</s>", &tools);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "<s>|</s>|False|False|True|1|f");
}

TEST(chat_template, ApiExtraVariables) {
  json::object ctx;
  ctx["enable_thinking"] = false;
  ctx["date_string"] = "26 Jul 2024";
  ctx["n"] = 3.0;
  auto r = Render("{{ enable_thinking }} {{ date_string }} {{ n }} [{{ missing }}]", ctx);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "False 26 Jul 2024 3.0 []");
}

TEST(chat_template, ErrorsUnsupportedConstructsNameThemselvesAndTheirPlace) {
  EXPECT_EQ(ErrorOf("ab\n  {{ x | wordwrap(10) }}"), "chat template line 2 col 10: unsupported filter 'wordwrap'");
  EXPECT_EQ(ErrorOf("{% if x is nosuch %}{% endif %}"), "chat template line 1 col 12: unsupported test 'nosuch'");
  EXPECT_EQ(ErrorOf("x\n{% include 'a' %}"), "chat template line 2 col 4: unsupported statement 'include'");
  EXPECT_EQ(ErrorOf("{% extends 'a' %}"), "chat template line 1 col 4: unsupported statement 'extends'");
  EXPECT_EQ(ErrorOf("{% for x in l recursive %}{% endfor %}"),
            "chat template line 1 col 15: unsupported recursive for loop");
  EXPECT_EQ(ErrorOf("{{ f(*args) }}"), "chat template line 1 col 6: unsupported '*' argument unpacking in a call");
  EXPECT_EQ(ErrorOf("{{ '%*d' % (1, 2) }}"), "chat template line 1 col 10: unsupported '*' width in % formatting");
  EXPECT_EQ(ErrorOf("{{ '{:,}'.format(1) }}"), "chat template line 1 col 17: unsupported format type ','");
  EXPECT_EQ(ErrorOf("{{ cycler('a') }}"), "chat template line 1 col 10: 'cycler' is undefined");
  EXPECT_EQ(ErrorOf("{% endif %}"), "chat template line 1 col 4: unexpected 'endif'");
  EXPECT_EQ(ErrorOf("{% for x in l %}"), "chat template line 1 col 17: unexpected end of template, expected 'endfor' or 'else'");
  EXPECT_EQ(ErrorOf("{{ 'abc }}"), "chat template line 1 col 4: unterminated string literal");
  EXPECT_EQ(ErrorOf("{{ x ! y }}"), "chat template line 1 col 6: unexpected char '!' inside a tag");
}

TEST(chat_template, ErrorsRenderErrorsCarryThePosition) {
  EXPECT_EQ(ErrorOf("{{ raise_exception('Only user and assistant roles are supported!') }}"),
            "chat template line 1 col 19: raise_exception: Only user and assistant roles are supported!");
  EXPECT_EQ(ErrorOf("line\n{{ 1 + 'a' }}"),
            "chat template line 2 col 6: unsupported operand type(s) for +: 'int' and 'str'");
  EXPECT_EQ(ErrorOf("{{ foo.bar }}"), "chat template line 1 col 7: 'foo' is undefined");
  EXPECT_EQ(ErrorOf("{% for x in 3 %}{% endfor %}"), "chat template line 1 col 13: 'int' object is not iterable");
  EXPECT_EQ(ErrorOf("{{ [1].append(2) }}"),
            "chat template line 1 col 14: access to attribute 'append' of 'list' object is unsafe.");
}

TEST(chat_template, BuiltinsStrftimeNowUsesLocalTime) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char want[64];
    std::strftime(want, sizeof(want), "%d %b %Y %H", &tm);
    auto r = Render("{{ strftime_now('%d %b %Y %H') }}");
    ASSERT_TRUE(r.ok()) << r.status();
    if (*r == want) return;  // else the hour rolled over between the two calls
  }
  ADD_FAILURE() << "strftime_now never matched strftime";
}

// A long conversation renders in linear time (prints the time per render).
TEST(chat_template, PerfLongDeepseekConversation) {
  const json::object fx = LoadFixture("deepseek_v3.json");
  auto t = ChatTemplate::Parse(std::string(fx.at("template").as_string()));
  ASSERT_TRUE(t.ok()) << t.status();
  json::array messages;
  messages.push_back(json::object{{"role", "system"}, {"content", "You are a helpful assistant."}});
  const std::string text(500, 'x');
  for (int i = 0; i < 2000; ++i) {
    messages.push_back(json::object{{"role", i % 2 ? "assistant" : "user"}, {"content", text}});
  }
  json::object ctx{{"messages", messages}, {"add_generation_prompt", true}, {"bos_token", "<s>"}};
  const auto start = std::chrono::steady_clock::now();
  auto r = t->Render(ctx);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->size(), 2000u * 500u);
  std::printf("# deepseek-v3 template, 2001 messages (%zu bytes out): %.1f ms\n", r->size(), ms);
  EXPECT_LT(ms, 5000.0);
}

// ---------------------------------------------------------------------------
// Limits: nothing may crash or hang
// ---------------------------------------------------------------------------

TEST(chat_template, LimitsRunawayTemplatesStopWithAnError) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const std::vector<std::string> runaway = {
      "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
      "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
      "{{ 'x' * 10000000000 }}",
      "{{ [1] * 10000000000 }}",
      "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
      "{% set ns = namespace(l=[]) %}{% for i in range(10000) %}{% set ns.l = [ns.l] %}{% endfor %}",
      "{{ 2 ** 100 }}",
      "{{ 9223372036854775807 + 1 }}",
      "{{ 99999999999999999999 }}",
      "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}",
      "{{ " + std::string(5000, '-') + "1 }}",
      "{{ 1" + [] {
        std::string s;
        for (int i = 0; i < 5000; ++i) s += " + 1";
        return s;
      }() + " }}",
      "{{ x" + [] {
        std::string s;
        for (int i = 0; i < 5000; ++i) s += "|trim";
        return s;
      }() + " }}",
      [] {
        std::string s;
        for (int i = 0; i < 500; ++i) s += "{% if true %}";
        for (int i = 0; i < 500; ++i) s += "{% endif %}";
        return s;
      }(),
  };
  for (const std::string& t : runaway) {
    const auto t0 = clock::now();
    auto r = Render(t);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    if (dt > 0.2) std::printf("# %.2f s: %s\n", dt, t.substr(0, 60).c_str());
    EXPECT_FALSE(r.ok()) << t.substr(0, 80);
    if (!r.ok()) {
      EXPECT_EQ(std::string(r.status().message()).rfind("chat template line ", 0), 0u) << r.status();
    }
  }
  const double secs = std::chrono::duration<double>(clock::now() - start).count();
  std::printf("# %zu runaway templates stopped in %.2f s\n", runaway.size(), secs);
  EXPECT_LT(secs, 60.0);
}

TEST(chat_template, LimitsNamespaceCyclesAreHarmless) {
  auto r = Render("{% set ns = namespace() %}{% set ns.self = ns %}{% set ns.l = [ns, ns] %}{{ ns.self.self.l | length }}");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "2");
  r = Render("{% set ns = namespace() %}{% set ns.self = ns %}{{ ns }}");  // repr of a cycle stops at a depth
  EXPECT_TRUE(r.ok()) << r.status();
}

// Untrusted templates (issue 16): filters that build strings are bounded by
// RenderLimits::max_string_bytes (an error naming the limit, not bad_alloc).
TEST(chat_template, LimitsStringBuildingFiltersAreBounded) {
  using clock = std::chrono::steady_clock;
  // The issue's case under the default limits. Before: std::bad_alloc (6.5 GB).
  auto r = Render("{{ range(100000) | list | tojson(indent=65536) }}");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().message().find("exceeds the limit of 67108864 bytes (RenderLimits::max_string_bytes)") !=
              std::string::npos)
      << r.status();
  // The others under a 1 MB limit (fast). Each built its whole result before its
  // size was checked: tojson, str()/repr() of lists, replace.
  jinja::RenderLimits limits;
  limits.max_string_bytes = 1 << 20;
  const std::vector<std::string> amplifiers = {
      "{{ range(3000) | list | tojson(indent=4096) }}",
      "{{ [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]] | tojson(indent=65536) }}",
      "{{ {'a': range(3000) | list} | tojson(indent=4096) }}",
      "{{ ['x' * 1000000] * 100000 }}",
      "{{ (['x' * 1000000] * 100000) | string }}",
      "{{ {'a': ['x' * 1000000] * 100000} | string }}",
      "{{ (['x' * 1000000] * 100000) | tojson }}",
      "{{ ('a\n' * 10000) | indent(100000) }}",
      "{{ range(100000) | join('x' * 100000) }}",
      "{{ ('a' * 100000) | replace('a', 'x' * 100000) }}",
      "{{ ('a' * 100000).replace('a', 'x' * 100000) }}",
      "{{ ('a' * 100000) | replace('', 'x' * 100000) }}",
      "{{ ('x' * 100000).join(range(100000) | map('string')) }}",
      "{{ ('x' * 1000000) ~ ('y' * 1000000) }}",
      "{{ ('x' * 1000000) + ('y' * 1000000) }}",
  };
  for (const std::string& t : amplifiers) {
    auto ast = jinja::ParseTemplate(t);
    ASSERT_TRUE(ast.ok()) << t << ": " << ast.status();
    const auto t0 = clock::now();
    jinja::Renderer renderer(*ast, limits);
    auto out = renderer.Render({});
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    EXPECT_FALSE(out.ok()) << t;
    if (!out.ok()) {
      const std::string msg(out.status().message());
      EXPECT_TRUE(msg.find("RenderLimits::max_string_bytes") != std::string::npos ||
                  msg.find("render budget exceeded") != std::string::npos)
          << t << ": " << msg;
    }
    EXPECT_LT(dt, 0.5) << t;
  }
  // printf and str.format widths are clamped (to 100000) by design.
  for (const char* t : {"{{ '%1000000000s' % 'a' }}", "{{ '{:>1000000000}'.format(1) }}"}) {
    r = Render(t);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_LE(r->size(), 100001u);
  }
}

// Before: the lexer computed each token's column from the start of its line, so a
// 100k-link chain on one line took 15-55 s to reach the parser's height limit.
TEST(chat_template, LimitsLongAttributeChainsParseInLinearTime) {
  using clock = std::chrono::steady_clock;
  for (const char* link : {".b", "['b']", "|trim", "()", ".b()"}) {
    std::string t = "{{ a";
    for (int i = 0; i < 100000; ++i) t += link;
    t += " }}";
    const auto t0 = clock::now();
    auto r = ChatTemplate::Parse(t);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    std::printf("# %.3f s: chain of 100000 '%s': %s\n", dt, link,
                r.ok() ? "ok" : std::string(r.status().message()).substr(0, 120).c_str());
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(r.status().message().find("too long a chain") != std::string::npos) << r.status();
    EXPECT_LT(dt, 1.0) << link;
  }
}

TEST(chat_template, ErrorsColumnsOnLongLines) {
  // Columns count code points, continued across tokens of the same line.
  std::string t = "{{ 'é' }}" + std::string(1000, ' ') + "{{ x.y.z +* 1 }}";
  auto r = ChatTemplate::Parse(t);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(std::string(r.status().message()).rfind("chat template line 1 col 1020:", 0), 0u) << r.status();
  r = ChatTemplate::Parse("{{ a }}\n  {{ 'é' }} {{ +* }}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(std::string(r.status().message()).rfind("chat template line 2 col 17:", 0), 0u) << r.status();
}

// Random and mutated templates: errors are fine, crashes and hangs are not.
TEST(chat_template, FuzzRandomAndMutatedTemplatesNeverCrash) {
  std::vector<std::string> seeds;
  const json::object snippets = LoadFixture("snippets.json");
  for (const json::value& v : snippets.at("cases").as_array()) {
    seeds.emplace_back(v.as_object().at("template").as_string());
  }
  const json::object ds = LoadFixture("deepseek_v3.json");
  seeds.emplace_back(ds.at("template").as_string());
  const json::object templates = LoadFixture("templates.json");
  for (const auto& kv : templates.at("templates").as_object()) {
    seeds.emplace_back(kv.value().as_string());
  }
  const std::vector<std::string> pieces = {
      "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "{{-", "-}}", "if", "else", "elif", "endif", "for", "in",
      "endfor", "set", "=", "namespace(", ")", "(", "[", "]", "{", "}", "|", "is", "not", "and", "or", "~", "+",
      "*", "**", "//", "%", ".", ",", ":", "'", "\"", "x", "messages", "loop", "ns.x", "range(", "macro", "endmacro",
      "call", "endcall", "raw", "endraw", "none", "true", "1", "-1", "0.5", "\n", " ", "\\", "caller()", "tojson",
      "join", "map", "selectattr", "[::-1]", "items()", "raise_exception(", "break", "continue", "\xff", "é"};
  json::object ctx = snippets.at("context").as_object();
  std::mt19937 rng(12345);
  jinja::RenderLimits limits;
  limits.max_steps = 200000;
  limits.max_string_bytes = 1 << 20;
  int parsed = 0, rendered = 0;
  const int kIterations = 20000;
  const auto start = std::chrono::steady_clock::now();
  for (int it = 0; it < kIterations; ++it) {
    std::string t;
    if (it % 4 == 3) {
      const int n = 1 + static_cast<int>(rng() % 30);
      for (int k = 0; k < n; ++k) t += pieces[rng() % pieces.size()];
    } else {
      t = seeds[rng() % seeds.size()];
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < edits && !t.empty(); ++k) {
        const size_t pos = rng() % (t.size() + 1);
        switch (rng() % 4) {
          case 0: t.erase(pos, 1 + rng() % 8); break;
          case 1: t.insert(std::min(pos, t.size()), pieces[rng() % pieces.size()]); break;
          case 2: t[std::min(pos, t.size() - 1)] = static_cast<char>(rng() % 256); break;
          default: {
            const size_t from = rng() % t.size();
            t.insert(std::min(pos, t.size()), t.substr(from, 1 + rng() % 20));
          }
        }
      }
    }
    auto ast = jinja::ParseTemplate(t);
    if (!ast.ok()) {
      EXPECT_EQ(std::string(ast.status().message()).rfind("chat template line ", 0), 0u) << ast.status();
      continue;
    }
    ++parsed;
    jinja::DictData vars;
    for (const auto& kv : ctx) vars.Set(std::string(kv.key()), *jinja::FromJson(kv.value()));
    jinja::Renderer renderer(*ast, limits);
    auto r = renderer.Render(std::move(vars));
    rendered += r.ok();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("# fuzz: %d templates, %d parsed, %d rendered without error, %.2f s\n", kIterations, parsed, rendered,
              secs);
  EXPECT_GT(parsed, kIterations / 10);
}

}  // namespace
}  // namespace deepshard
