#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/tokenizer/regex.h"

#include <pcre2.h>  // PCRE2 8-bit API

#include "absl/strings/str_cat.h"
#include "text/tokenizer/string_util.h"
#include "text/tokenizer/unicode.h"

namespace deepshard::tokenizer_internal {
namespace {

// Oniguruma's \w inside a character class: Alphabetic, Mark, Nd, Pc (its CR_Word).
constexpr std::string_view kWordClassBody = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}";
// Outside a class Oniguruma also counts the Latin-1 digits-like signs as word
// characters: superscripts 1-3 and the fractions 1/4, 1/2, 3/4.
constexpr std::string_view kWordBody = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";
constexpr std::string_view kHexClassBody = "0-9a-fA-F";

std::string PcreErrorMessage(int code) {
  PCRE2_UCHAR buf[256];
  int n = pcre2_get_error_message(code, buf, sizeof(buf));
  if (n < 0) return absl::StrCat("PCRE2 error ", code);
  return std::string(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

// Per-thread matching state shared by every pattern: match data only needs room for
// the whole-match pair, and the JIT stack is sized for long inputs.
struct ThreadMatchState {
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* match_context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;

  ThreadMatchState() {
    match_data = pcre2_match_data_create(1, nullptr);
    match_context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (match_context != nullptr && jit_stack != nullptr) {
      pcre2_jit_stack_assign(match_context, nullptr, jit_stack);
    }
  }
  ~ThreadMatchState() {
    pcre2_match_data_free(match_data);
    pcre2_match_context_free(match_context);
    pcre2_jit_stack_free(jit_stack);
  }
};

ThreadMatchState& MatchState() {
  thread_local ThreadMatchState state;
  return state;
}

// True when PCRE2 knows `name` as a script (it then compiles as \p{sc:name}).
bool IsScriptName(std::string_view name) {
  if (name.empty() || name.find_first_of("{}\\") != std::string_view::npos) return false;
  std::string pattern = absl::StrCat("\\p{sc:", AsAbsl(name), "}");
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  const bool is_script = code != nullptr;
  pcre2_code_free(code);
  return is_script;
}

}  // namespace

struct Regex::Impl {
  std::string source;
  std::string translated;
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Impl() { pcre2_code_free(code); }
};

absl::StatusOr<std::string> TranslateOnigurumaPattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  size_t class_start = 0;  // index in `p` just after '[' or '[^'
  size_t i = 0;
  auto error = [&](std::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("regex \"", AsAbsl(p), "\" at offset ", i, ": ", AsAbsl(what), " is not supported"));
  };
  while (i < p.size()) {
    char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) {
        return absl::InvalidArgumentError(absl::StrCat("regex \"", AsAbsl(p), "\" ends with a lone backslash"));
      }
      char e = p[i + 1];
      switch (e) {
        case 's':
          out += "\\p{White_Space}";
          break;
        case 'S':
          out += "\\P{White_Space}";
          break;
        case 'd':
          out += "\\p{Nd}";
          break;
        case 'D':
          out += "\\P{Nd}";
          break;
        case 'w':
          if (in_class) {
            out += kWordClassBody;
          } else {
            absl::StrAppend(&out, "[", AsAbsl(kWordBody), "]");
          }
          break;
        case 'W':
          if (in_class) return error("\\W inside a character class");
          absl::StrAppend(&out, "[^", AsAbsl(kWordBody), "]");
          break;
        case 'p':
        case 'P': {
          // \p{Name}: Oniguruma matches scripts by Script, PCRE2 by Script_Extensions
          // unless the name is written sc:Name.
          size_t close = i + 2 < p.size() && p[i + 2] == '{' ? p.find('}', i + 3) : std::string_view::npos;
          if (close == std::string_view::npos) {
            out.append(p.substr(i, 2));  // \pL form or malformed: PCRE2 decides
            break;
          }
          std::string_view name = p.substr(i + 3, close - i - 3);
          bool negate = e == 'P';
          if (!name.empty() && name[0] == '^') {
            negate = !negate;
            name.remove_prefix(1);
          }
          absl::StrAppend(&out, negate ? "\\P{" : "\\p{", IsScriptName(name) ? "sc:" : "", AsAbsl(name), "}");
          i = close + 1;
          continue;
        }
        case 'h':
          if (in_class) {
            out += kHexClassBody;
          } else {
            absl::StrAppend(&out, "[", AsAbsl(kHexClassBody), "]");
          }
          break;
        case 'H':
          if (in_class) return error("\\H inside a character class");
          absl::StrAppend(&out, "[^", AsAbsl(kHexClassBody), "]");
          break;
        case 'Q': {
          // Quoted run: copy verbatim up to \E.
          size_t end = p.find("\\E", i + 2);
          size_t stop = end == std::string_view::npos ? p.size() : end + 2;
          out.append(p.substr(i, stop - i));
          i = stop;
          continue;
        }
        default:
          out.push_back('\\');
          // Copy the escaped character whole (it may be multi-byte).
          {
            size_t len = Utf8SeqLen(static_cast<unsigned char>(e));
            out.append(p.substr(i + 1, len));
            i += 1 + len;
          }
          continue;
      }
      i += 2;
      continue;
    }
    if (in_class) {
      if (c == ']' && i > class_start) {
        in_class = false;
        out.push_back(c);
        ++i;
        continue;
      }
      if (c == '[') {
        if (i + 1 < p.size() && p[i + 1] == ':') {
          size_t end = p.find(":]", i + 2);
          if (end == std::string_view::npos) return error("an unterminated POSIX bracket");
          out.append(p.substr(i, end + 2 - i));
          i = end + 2;
          continue;
        }
        return error("a nested character class");
      }
      if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') return error("class intersection (&&)");
      out.push_back(c);
      ++i;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out.push_back(c);
      ++i;
      if (i < p.size() && p[i] == '^') {
        out.push_back('^');
        ++i;
      }
      class_start = i;  // a ']' right here is a literal
      if (i < p.size() && p[i] == ']') {
        out.push_back(']');
        ++i;
      }
      continue;
    }
    if (c == '(' && i + 1 < p.size() && p[i + 1] == '?') {
      // Inline options (?imx-imx) or (?imx-imx:...): Ruby's m is PCRE2's s.
      size_t j = i + 2;
      std::string flags;
      while (j < p.size() && (p[j] == 'i' || p[j] == 'm' || p[j] == 'x' || p[j] == '-')) {
        flags.push_back(p[j] == 'm' ? 's' : p[j]);
        ++j;
      }
      if (!flags.empty() && j < p.size() && (p[j] == ':' || p[j] == ')')) {
        absl::StrAppend(&out, "(?", flags);
        i = j;
        continue;
      }
      out += "(?";
      i += 2;
      continue;
    }
    out.push_back(c);
    ++i;
  }
  if (in_class) return absl::InvalidArgumentError(absl::StrCat("regex \"", AsAbsl(p), "\": unterminated character class"));
  return out;
}

namespace {

absl::StatusOr<pcre2_code*> CompilePcre2(std::string_view source, const std::string& pattern,
                                         uint32_t extra_options) {
  pcre2_compile_context* cctx = pcre2_compile_context_create(nullptr);
  if (cctx == nullptr) return absl::ResourceExhaustedError("PCRE2: out of memory");
  pcre2_set_newline(cctx, PCRE2_NEWLINE_LF);
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_NO_UTF_CHECK | extra_options, &err,
                                   &err_offset, cctx);
  pcre2_compile_context_free(cctx);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("regex \"", AsAbsl(source), "\" (as PCRE2 \"", pattern,
                                                   "\") does not compile: ", PcreErrorMessage(err),
                                                   " at offset ", err_offset));
  }
  return code;
}

}  // namespace

absl::StatusOr<Regex> Regex::FromOniguruma(std::string_view pattern) {
  if (!IsValidUtf8(pattern)) return absl::InvalidArgumentError("regex is not valid UTF-8");
  auto translated = TranslateOnigurumaPattern(pattern);
  if (!translated.ok()) return translated.status();
  auto code = CompilePcre2(pattern, *translated, PCRE2_UCP | PCRE2_MULTILINE);
  if (!code.ok()) return code.status();
  auto impl = std::make_shared<Impl>();
  impl->source = std::string(pattern);
  impl->translated = std::move(*translated);
  impl->code = *code;
  impl->jit = pcre2_jit_compile(impl->code, PCRE2_JIT_COMPLETE) == 0;
  return Regex(std::move(impl));
}

absl::StatusOr<Regex> Regex::FromLiteral(std::string_view literal) {
  if (!IsValidUtf8(literal)) return absl::InvalidArgumentError("pattern is not valid UTF-8");
  std::string pattern(literal);
  auto code = CompilePcre2(literal, pattern, PCRE2_LITERAL);
  if (!code.ok()) return code.status();
  auto impl = std::make_shared<Impl>();
  impl->source = pattern;
  impl->translated = pattern;
  impl->code = *code;
  impl->jit = pcre2_jit_compile(impl->code, PCRE2_JIT_COMPLETE) == 0;
  return Regex(std::move(impl));
}

absl::StatusOr<Regex> ParsePattern(const JsonNode& node) {
  auto obj = node.Object();
  if (!obj.ok()) return obj.status();
  JsonNode str = node["String"];
  JsonNode re = node["Regex"];
  absl::StatusOr<Regex> regex = absl::InvalidArgumentError("unreachable");
  if (!str.missing()) {
    auto s = str.String();
    if (!s.ok()) return s.status();
    regex = Regex::FromLiteral(*s);
    if (!regex.ok()) return str.Error(std::string(regex.status().message()));
  } else if (!re.missing()) {
    auto s = re.String();
    if (!s.ok()) return s.status();
    regex = Regex::FromOniguruma(*s);
    if (!regex.ok()) return re.Error(std::string(regex.status().message()));
  } else {
    return node.Error("expected {\"String\": ...} or {\"Regex\": ...}");
  }
  return regex;
}

const std::string& Regex::pcre2_pattern() const { return impl_->translated; }

bool Regex::Search(std::string_view text, size_t start, size_t* m_start, size_t* m_end) const {
  ThreadMatchState& st = MatchState();
  if (st.match_data == nullptr) return false;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc = PCRE2_ERROR_JIT_STACKLIMIT;
  if (impl_->jit) {
    rc = pcre2_jit_match(impl_->code, subject, text.size(), start, 0, st.match_data,
                         st.match_context);
  }
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    // No JIT, or the JIT stack ran out: the interpreter keeps its backtracking on the heap.
    rc = pcre2_match(impl_->code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, st.match_data,
                     nullptr);
  }
  if (rc < 0) return false;  // no match (or a resource limit on pathological input)
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.match_data);
  *m_start = ov[0];
  *m_end = ov[1];
  return true;
}

void Regex::FindMatches(std::string_view text, std::vector<MatchSpan>* out) const {
  const size_t n = text.size();
  if (n == 0) {
    out->push_back({0, 0, false});
    return;
  }
  size_t last_end = 0;
  size_t prev = 0;
  bool skip_next_empty = false;
  while (last_end <= n) {
    size_t s = 0, e = 0;
    if (!Search(text, last_end, &s, &e)) break;
    last_end = e;
    if (s == e) {
      // The onig crate steps over one character after an empty match, and drops an
      // empty match that comes right after a non-empty one.
      last_end += e < n ? Utf8SeqLen(static_cast<unsigned char>(text[e])) : 1;
      if (skip_next_empty) {
        skip_next_empty = false;
        continue;
      }
    } else {
      skip_next_empty = true;
    }
    if (prev != s) out->push_back({prev, s, false});
    out->push_back({s, e, true});
    prev = e;
  }
  if (prev != n) out->push_back({prev, n, false});
}

}  // namespace deepshard::tokenizer_internal
