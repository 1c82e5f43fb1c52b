// Chat templates: renders the Jinja `chat_template` of a Hugging Face
// tokenizer_config.json into the prompt text, byte for byte as transformers'
// `apply_chat_template(..., tokenize=False)` does (transformers 4.57, jinja2
// 3.1, ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the
// loopcontrols extension).
//
//   ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::Parse(config["chat_template"]));
//   ASSIGN_OR_RETURN(std::string prompt, t.Render(context));  // many times
//
// Supported Jinja (see docs/chat-templates.md for details and differences):
//  * text, {{ }}, {% %}, {# #}, whitespace control (-, +), raw blocks;
//  * statements: if/elif/else, for (tuple unpacking, `for x in xs if c`,
//    else, loop.index/index0/revindex/revindex0/first/last/length/
//    previtem/nextitem/cycle), break/continue, set (name, ns.attr, tuples,
//    block set with filters), macro (defaults, varargs, kwargs, caller), call
//    blocks, filter blocks, with, print, generation;
//  * expressions: literals (str, int, float, list, tuple, dict, true/True,
//    false/False, none/None), + - * / // % ** ~, comparisons (chained),
//    in / not in, and/or/not, `x if c else y`, attribute and item access,
//    slices ([::-1]), calls with keyword arguments, filters, tests,
//    printf-style `'%s' % x`;
//  * filters: abs attr capitalize count d default dictsort e escape first
//    float indent int items join last length list lower map max min reject
//    rejectattr replace reverse round safe select selectattr sort string sum
//    title tojson trim unique upper;
//  * tests: boolean callable defined divisibleby eq equalto escaped even false
//    filter float ge gt greaterthan in integer iterable le lower lt lessthan
//    mapping ne none number odd sameas sequence string test true undefined
//    upper (and ==, !=, <, <=, >, >= by name in select/reject);
//  * globals: range, dict, namespace, raise_exception (transformers),
//    strftime_now (transformers);
//  * methods: str.strip/lstrip/rstrip/split/rsplit/splitlines/startswith/
//    endswith/upper/lower/title/capitalize/replace/find/rfind/index/rindex/
//    count/join/removeprefix/removesuffix/format/isdigit/isdecimal/isnumeric/
//    isalpha/isalnum/isspace/islower/isupper; dict.items/keys/values/get/copy;
//    list.count/index.
// Not supported (errors): include/import/from/extends/block/autoescape/do,
// recursive loops, *args/**kwargs, other filters (wordwrap, truncate, format,
// groupby, ...), cycler/joiner/lipsum, integers beyond 64 bits.
//
// Semantics follow Python and jinja2: undefined prints as "", a missing key
// (`d.missing`) is undefined but an attribute *of* undefined (`missing.x`) is
// an error (jinja2's default Undefined), Python truthiness, `and`/`or` return an
// operand, str() of floats/lists/dicts is Python's repr, `tojson` is
// json.dumps(ensure_ascii=False), case mapping is Unicode's (via ICU), `set`
// in a loop body is local to the iteration.
//
// Errors name the construct and its place:
//   "chat template line 3 col 12: unsupported filter 'wordwrap'"
//   "chat template line 1 col 40: raise_exception: Conversation roles must alternate"
// Parse errors cover syntax and unsupported statements/filters/tests; render
// errors cover type errors, undefined values used as real ones, raise_exception
// and exhausted budgets (RenderLimits: steps, output size, nesting). No
// template or input can crash or hang the renderer: strings are bounded while
// they are built (tojson with any indent, str()/repr() of containers, replace,
// join, indent, ~, +, *), failing with "... exceeds the limit of N bytes
// (RenderLimits::max_string_bytes)", and parsing is linear in the template's
// length (expression height at most 250). See docs/reliability.md.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "boost/json.hpp"

namespace deepshard {

namespace jinja {
struct TemplateAst;
struct RenderLimits;
}  // namespace jinja

class ChatTemplate {
 public:
  // Parses once; the result is immutable and cheap to copy (shared).
  // Errors: "chat template line L col C: ...".
  static absl::StatusOr<ChatTemplate> Parse(std::string_view source);

  // Renders with `context` as the template's variables, e.g.
  //   {"messages": [...], "add_generation_prompt": true,
  //    "bos_token": "<s>", "eos_token": "</s>", "tools": [...], ...}.
  // Variables the template reads but the context lacks are undefined.
  absl::StatusOr<std::string> Render(const boost::json::object& context) const;
  // The same with other budgets than the defaults (jinja_renderer.h), e.g. the
  // fuzzer's small ones, so that a runaway loop ends in milliseconds.
  absl::StatusOr<std::string> Render(const boost::json::object& context, const jinja::RenderLimits& limits) const;

 private:
  explicit ChatTemplate(std::shared_ptr<const jinja::TemplateAst> ast) : ast_(std::move(ast)) {}
  std::shared_ptr<const jinja::TemplateAst> ast_;
};

// Parses and renders with the variables transformers' apply_chat_template
// passes: messages, tools (null when absent), documents (null),
// add_generation_prompt, bos_token, eos_token.
absl::StatusOr<std::string> ApplyChatTemplate(std::string_view chat_template, const boost::json::array& messages,
                                              bool add_generation_prompt, const std::string& bos_token,
                                              const std::string& eos_token,
                                              const boost::json::value* tools = nullptr);

}  // namespace deepshard
