// Filters, tests, globals and methods of the chat-template interpreter. Each
// one mirrors jinja2 3.1 (filters.py, tests.py, sandbox.py) or the Python
// builtin it calls, with transformers' overrides (tojson, raise_exception,
// strftime_now).
#include "text/chat/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "text/chat/jinja_renderer.h"

namespace deepshard::jinja {
namespace {

using absl::InvalidArgumentError;
using absl::StatusOr;

// jinja2's sandbox refuses ranges longer than this (MAX_RANGE).
constexpr int64_t kMaxRange = 100000;

absl::Status UndefinedError(const Value& v) {
  return InvalidArgumentError(v.undefined_hint().empty() ? "value is undefined" : v.undefined_hint());
}

// ---------------------------------------------------------------------------
// Argument binding
// ---------------------------------------------------------------------------

// Python-style binding of positional and keyword arguments to parameter
// names. Missing arguments are nullopt.
class Params {
 public:
  static StatusOr<Params> Bind(std::string_view fn, CallArgs& args, std::initializer_list<std::string_view> names) {
    Params p;
    p.values_.resize(names.size());
    std::vector<std::string_view> n(names);
    if (args.args.size() > n.size()) {
      return InvalidArgumentError(
          absl::StrCat(AV(fn), "() takes at most ", n.size(), " argument(s) (", args.args.size(), " given)"));
    }
    for (size_t i = 0; i < args.args.size(); ++i) p.values_[i] = args.args[i];
    for (auto& [k, v] : args.kwargs) {
      size_t i = 0;
      while (i < n.size() && n[i] != k) ++i;
      if (i == n.size()) return InvalidArgumentError(absl::StrCat(AV(fn), "() got an unexpected keyword argument '", k, "'"));
      if (p.values_[i]) return InvalidArgumentError(absl::StrCat(AV(fn), "() got multiple values for argument '", k, "'"));
      p.values_[i] = v;
    }
    return p;
  }
  bool has(size_t i) const { return values_[i].has_value(); }
  const Value& get(size_t i) const { return *values_[i]; }
  Value get_or(size_t i, Value def) const { return values_[i] ? *values_[i] : std::move(def); }
  // Python truthiness of an optional flag argument.
  bool flag(size_t i) const { return values_[i] && Truthy(*values_[i]); }

 private:
  std::vector<std::optional<Value>> values_;
};

StatusOr<std::string> StringArg(std::string_view fn, const Value& v, std::string_view what) {
  if (!v.is_string()) {
    return InvalidArgumentError(absl::StrCat(AV(fn), ": ", AV(what), " must be a string, not '", TypeName(v), "'"));
  }
  return v.as_string();
}

StatusOr<int64_t> IntArg(std::string_view fn, const Value& v, std::string_view what) {
  if (!v.is_integral()) {
    return InvalidArgumentError(absl::StrCat(AV(fn), ": ", AV(what), " must be an integer, not '", TypeName(v), "'"));
  }
  return v.as_int();
}

absl::Status NoArgs(std::string_view fn, const CallArgs& args) {
  if (!args.args.empty() || !args.kwargs.empty()) {
    return InvalidArgumentError(absl::StrCat(AV(fn), "() takes no arguments"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// String helpers (code-point based, like Python's str)
// ---------------------------------------------------------------------------

bool InCharSet(char32_t c, const std::u32string* chars) {
  if (chars == nullptr) return PyIsSpace(c);
  return chars->find(c) != std::u32string::npos;
}

// str.strip / lstrip / rstrip; `chars` nullptr means whitespace.
std::string Strip(const std::string& s, const std::u32string* chars, bool left, bool right) {
  std::u32string cps = utf8::Decode(s);
  size_t b = 0, e = cps.size();
  if (left) {
    while (b < e && InCharSet(cps[b], chars)) ++b;
  }
  if (right) {
    while (e > b && InCharSet(cps[e - 1], chars)) --e;
  }
  return utf8::Encode(std::u32string_view(cps).substr(b, e - b));
}

bool IsAsciiAlpha(char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsAsciiDigit(char32_t c) { return c >= '0' && c <= '9'; }
// str.islower() / str.isupper().
bool PyIsLower(const std::string& s, bool want_lower) {
  bool cased = false;
  for (char32_t c : utf8::Decode(s)) {
    if (want_lower ? (IsUpperChar(c) || IsTitleChar(c)) : (IsLowerChar(c) || IsTitleChar(c))) return false;
    if (!cased && (want_lower ? IsLowerChar(c) : IsUpperChar(c))) cased = true;
  }
  return cased;
}

// jinja2's `title` filter: words start after runs of [-\s({\[<].
std::string JinjaTitle(const std::string& s) {
  std::u32string cps = utf8::Decode(s);
  auto is_sep = [](char32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || PyIsSpace(c); };
  std::string out;
  size_t i = 0;
  while (i < cps.size()) {
    size_t j = i;
    const bool sep = is_sep(cps[i]);
    while (j < cps.size() && is_sep(cps[j]) == sep) ++j;
    // item = cps[i, j): first char upper, the rest lower (separators unchanged in effect).
    std::u32string_view item(cps.data() + i, j - i);
    out += PyUpper(utf8::Encode(item.substr(0, 1)));
    out += PyLower(utf8::Encode(item.substr(1)));
    i = j;
  }
  return out;
}

// str.split(sep, maxsplit) / str.rsplit.
std::vector<Value> Split(const std::string& s, const std::optional<std::string>& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (!sep) {
    std::u32string cps = utf8::Decode(s);
    if (!from_right) {
      size_t i = 0;
      while (true) {
        while (i < cps.size() && PyIsSpace(cps[i])) ++i;
        if (i >= cps.size()) break;
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
          parts.push_back(utf8::Encode(std::u32string_view(cps).substr(i)));  // keeps trailing space
          break;
        }
        size_t j = i;
        while (j < cps.size() && !PyIsSpace(cps[j])) ++j;
        parts.push_back(utf8::Encode(std::u32string_view(cps).substr(i, j - i)));
        i = j;
      }
    } else {
      size_t e = cps.size();
      while (true) {
        while (e > 0 && PyIsSpace(cps[e - 1])) --e;
        if (e == 0) break;
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
          parts.push_back(utf8::Encode(std::u32string_view(cps).substr(0, e)));  // keeps leading space
          break;
        }
        size_t b = e;
        while (b > 0 && !PyIsSpace(cps[b - 1])) --b;
        parts.push_back(utf8::Encode(std::u32string_view(cps).substr(b, e - b)));
        e = b;
      }
      std::reverse(parts.begin(), parts.end());
    }
  } else if (!from_right) {
    size_t start = 0;
    while (true) {
      const size_t p = (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) ? std::string::npos
                                                                                        : s.find(*sep, start);
      if (p == std::string::npos) {
        parts.push_back(s.substr(start));
        break;
      }
      parts.push_back(s.substr(start, p - start));
      start = p + sep->size();
    }
  } else {
    size_t end = s.size();
    while (true) {
      size_t p = std::string::npos;
      if (!(maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) && end >= sep->size()) {
        p = s.rfind(*sep, end - sep->size());
      }
      if (p == std::string::npos) {
        parts.push_back(s.substr(0, end));
        break;
      }
      parts.push_back(s.substr(p + sep->size(), end - p - sep->size()));
      end = p;
    }
    std::reverse(parts.begin(), parts.end());
  }
  std::vector<Value> out;
  out.reserve(parts.size());
  for (auto& p : parts) out.push_back(Value::Str(std::move(p)));
  return out;
}

// str.splitlines(): Python's line boundaries.
std::vector<std::string> SplitLines(const std::string& s, bool keepends) {
  std::u32string cps = utf8::Decode(s);
  std::vector<std::string> lines;
  size_t i = 0, start = 0;
  auto is_break = [](char32_t c) {
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
           c == 0x2028 || c == 0x2029;
  };
  while (i < cps.size()) {
    if (!is_break(cps[i])) {
      ++i;
      continue;
    }
    size_t eol = i + 1;
    if (cps[i] == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') eol = i + 2;
    lines.push_back(utf8::Encode(std::u32string_view(cps).substr(start, (keepends ? eol : i) - start)));
    start = i = eol;
  }
  if (start < cps.size()) lines.push_back(utf8::Encode(std::u32string_view(cps).substr(start)));
  return lines;
}

std::string Replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  std::string out;
  if (old.empty()) {
    // Python inserts `repl` between every character (and at both ends).
    std::u32string cps = utf8::Decode(s);
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size() && out.size() <= ReprCap(); ++i) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
      }
      if (i < cps.size()) utf8::Append(out, cps[i]);
    }
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while ((count < 0 || done < count) && out.size() <= ReprCap()) {  // the caller refuses an oversized result
    const size_t p = s.find(old, start);
    if (p == std::string::npos) break;
    out.append(s, start, p - start);
    out += repl;
    start = p + old.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

// Code-point index of a byte offset.
int64_t CodepointIndex(const std::string& s, size_t byte_offset) {
  return static_cast<int64_t>(utf8::Length(std::string_view(s).substr(0, byte_offset)));
}

// Python's int(str, base) for base 10: optional sign, digits with single
// underscores, surrounding whitespace.
std::optional<int64_t> ParsePyInt(const std::string& text) {
  std::string s = Strip(text, nullptr, true, true);
  size_t i = 0;
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (i >= s.size() || !IsAsciiDigit(s[i])) return std::nullopt;
  uint64_t v = 0;
  for (; i < s.size(); ++i) {
    if (s[i] == '_' && i + 1 < s.size() && IsAsciiDigit(s[i + 1]) && i > 0 && IsAsciiDigit(s[i - 1])) continue;
    if (!IsAsciiDigit(s[i])) return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(s[i] - '0');
    if (v > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
  }
  return neg ? -static_cast<int64_t>(v) : static_cast<int64_t>(v);
}

// Python's float(str).
std::optional<double> ParsePyFloat(const std::string& text) {
  std::string s = Strip(text, nullptr, true, true);
  std::string clean;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '_' && i > 0 && i + 1 < s.size() && IsAsciiDigit(s[i - 1]) && IsAsciiDigit(s[i + 1])) continue;
    if (!(IsAsciiDigit(c) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-' || IsAsciiAlpha(c))) {
      return std::nullopt;
    }
    clean.push_back(c);
  }
  if (clean.empty()) return std::nullopt;
  std::string lower = PyLower(clean);
  const std::string body = (lower[0] == '+' || lower[0] == '-') ? lower.substr(1) : lower;
  const bool neg = lower[0] == '-';
  if (body == "inf" || body == "infinity") return neg ? -INFINITY : INFINITY;
  if (body == "nan") return NAN;
  for (char c : body) {
    if (IsAsciiAlpha(c) && c != 'e') return std::nullopt;  // no hex floats, no words
  }
  char* end = nullptr;
  const double d = std::strtod(clean.c_str(), &end);
  if (end != clean.c_str() + clean.size()) return std::nullopt;
  return d;
}

// ---------------------------------------------------------------------------
// Attribute / item access
// ---------------------------------------------------------------------------

Value UnsafeAttr(const Value& obj, std::string_view name) {
  return Value::Undefined(
      absl::StrCat("access to attribute '", AV(name), "' of '", TypeName(obj), "' object is unsafe."));
}

Value NoAttr(const Value& obj, std::string_view name) {
  if (obj.is_none()) return Value::Undefined(absl::StrCat("'None' has no attribute '", AV(name), "'"));
  return Value::Undefined(absl::StrCat("'", TypeName(obj), " object' has no attribute '", AV(name), "'"));
}

Value Method(const Value& self, std::string_view name, NativeFn fn) {
  return Value::Function(absl::StrCat(TypeName(self), ".", AV(name)), std::move(fn));
}

// Methods of str.
std::optional<Value> StrMethod(const Value& self, std::string_view name) {
  auto strip = [self](bool left, bool right, std::string_view fn) -> NativeFn {
    return [self, left, right, fn = std::string(fn)](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      ASSIGN_OR_RETURN(Params p, Params::Bind(fn, args, {"chars"}));
      RETURN_IF_ERROR(r.ChargeString(self.as_string().size()));
      if (!p.has(0) || p.get(0).is_none()) return Value::Str(Strip(self.as_string(), nullptr, left, right));
      ASSIGN_OR_RETURN(std::string chars, StringArg(fn, p.get(0), "chars"));
      const std::u32string set = utf8::Decode(chars);
      return Value::Str(Strip(self.as_string(), &set, left, right));
    };
  };
  if (name == "strip") return Method(self, name, strip(true, true, "strip"));
  if (name == "lstrip") return Method(self, name, strip(true, false, "lstrip"));
  if (name == "rstrip") return Method(self, name, strip(false, true, "rstrip"));
  auto unary = [self, name](std::string (*f)(const std::string&)) -> Value {
    return Method(self, name, [self, name = std::string(name), f](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      RETURN_IF_ERROR(NoArgs(name, args));
      RETURN_IF_ERROR(r.ChargeString(self.as_string().size()));
      return Value::Str(f(self.as_string()));
    });
  };
  if (name == "upper") return unary([](const std::string& x) { return PyUpper(x); });
  if (name == "lower") return unary([](const std::string& x) { return PyLower(x); });
  if (name == "title") return unary([](const std::string& x) { return PyTitle(x); });
  if (name == "capitalize") return unary([](const std::string& x) { return PyCapitalize(x); });
  if (name == "startswith" || name == "endswith") {
    const bool starts = name == "startswith";
    return Method(self, name, [self, starts](Renderer&, CallArgs& args) -> StatusOr<Value> {
      const char* fn = starts ? "startswith" : "endswith";
      ASSIGN_OR_RETURN(Params p, Params::Bind(fn, args, {"prefix"}));
      if (!p.has(0)) return InvalidArgumentError(absl::StrCat(fn, "() takes at least 1 argument"));
      std::vector<Value> options;
      if (p.get(0).kind() == Kind::kTuple) {
        options = p.get(0).items();
      } else {
        options.push_back(p.get(0));
      }
      const std::string& str = self.as_string();
      for (const Value& o : options) {
        if (!o.is_string()) {
          return InvalidArgumentError(absl::StrCat(fn, " first arg must be str or a tuple of str, not ", TypeName(o)));
        }
        const std::string& x = o.as_string();
        if (x.size() <= str.size() &&
            (starts ? str.compare(0, x.size(), x) == 0 : str.compare(str.size() - x.size(), x.size(), x) == 0)) {
          return Value::Bool(true);
        }
      }
      return Value::Bool(false);
    });
  }
  if (name == "split" || name == "rsplit") {
    const bool right = name == "rsplit";
    return Method(self, name, [self, right](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      const char* fn = right ? "rsplit" : "split";
      ASSIGN_OR_RETURN(Params p, Params::Bind(fn, args, {"sep", "maxsplit"}));
      std::optional<std::string> sep;
      if (p.has(0) && !p.get(0).is_none()) {
        ASSIGN_OR_RETURN(sep, StringArg(fn, p.get(0), "sep"));
        if (sep->empty()) return InvalidArgumentError("empty separator");
      }
      int64_t maxsplit = -1;
      if (p.has(1)) {
        ASSIGN_OR_RETURN(maxsplit, IntArg(fn, p.get(1), "maxsplit"));
      }
      RETURN_IF_ERROR(r.ChargeString(self.as_string().size()));
      std::vector<Value> parts = Split(self.as_string(), sep, maxsplit, right);
      RETURN_IF_ERROR(r.ChargeList(parts.size()));
      return Value::List(std::move(parts));
    });
  }
  if (name == "splitlines") {
    return Method(self, name, [self](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      ASSIGN_OR_RETURN(Params p, Params::Bind("splitlines", args, {"keepends"}));
      RETURN_IF_ERROR(r.ChargeString(self.as_string().size()));
      std::vector<Value> out;
      for (auto& line : SplitLines(self.as_string(), p.flag(0))) out.push_back(Value::Str(std::move(line)));
      return Value::List(std::move(out));
    });
  }
  if (name == "replace") {
    return Method(self, name, [self](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      ASSIGN_OR_RETURN(Params p, Params::Bind("replace", args, {"old", "new", "count"}));
      if (!p.has(0) || !p.has(1)) return InvalidArgumentError("replace() takes at least 2 arguments");
      ASSIGN_OR_RETURN(std::string old, StringArg("replace", p.get(0), "old"));
      ASSIGN_OR_RETURN(std::string repl, StringArg("replace", p.get(1), "new"));
      int64_t count = -1;
      if (p.has(2)) {
        ASSIGN_OR_RETURN(count, IntArg("replace", p.get(2), "count"));
      }
      std::string out = Replace(self.as_string(), old, repl, count);
      RETURN_IF_ERROR(r.ChargeString(out.size()));
      return Value::Str(std::move(out));
    });
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    return Method(self, name, [self, name = std::string(name)](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      ASSIGN_OR_RETURN(Params p, Params::Bind(name, args, {"sub"}));
      if (!p.has(0)) return InvalidArgumentError(absl::StrCat(name, "() takes exactly 1 argument"));
      ASSIGN_OR_RETURN(std::string sub, StringArg(name, p.get(0), "sub"));
      const std::string& str = self.as_string();
      RETURN_IF_ERROR(r.ChargeString(str.size()));
      if (name == "count") {
        if (sub.empty()) return Value::Int(static_cast<int64_t>(utf8::Length(str)) + 1);
        int64_t n = 0;
        for (size_t q = str.find(sub); q != std::string::npos; q = str.find(sub, q + sub.size())) ++n;
        return Value::Int(n);
      }
      const bool right = name[0] == 'r';
      const size_t q = right ? str.rfind(sub) : str.find(sub);
      if (q == std::string::npos) {
        if (name == "index" || name == "rindex") return InvalidArgumentError("substring not found");
        return Value::Int(-1);
      }
      return Value::Int(CodepointIndex(str, q));
    });
  }
  if (name == "join") {
    return Method(self, name, [self](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      ASSIGN_OR_RETURN(Params p, Params::Bind("join", args, {"iterable"}));
      if (!p.has(0)) return InvalidArgumentError("join() takes exactly one argument");
      ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(p.get(0)));
      std::string out;
      for (size_t i = 0; i < items.size(); ++i) {
        if (!items[i].is_string()) {
          return InvalidArgumentError(
              absl::StrCat("sequence item ", i, ": expected str instance, ", TypeName(items[i]), " found"));
        }
        if (i) out += self.as_string();
        out += items[i].as_string();
        RETURN_IF_ERROR(r.ChargeString(out.size()));
      }
      return Value::Str(std::move(out));
    });
  }
  if (name == "removeprefix" || name == "removesuffix") {
    const bool prefix = name == "removeprefix";
    return Method(self, name, [self, prefix](Renderer&, CallArgs& args) -> StatusOr<Value> {
      const char* fn = prefix ? "removeprefix" : "removesuffix";
      ASSIGN_OR_RETURN(Params p, Params::Bind(fn, args, {"affix"}));
      if (!p.has(0)) return InvalidArgumentError(absl::StrCat(fn, "() takes exactly one argument"));
      ASSIGN_OR_RETURN(std::string x, StringArg(fn, p.get(0), "argument"));
      const std::string& str = self.as_string();
      if (x.size() <= str.size()) {
        if (prefix && str.compare(0, x.size(), x) == 0) return Value::Str(str.substr(x.size()));
        if (!prefix && str.compare(str.size() - x.size(), x.size(), x) == 0) {
          return Value::Str(str.substr(0, str.size() - x.size()));
        }
      }
      return self;
    });
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "islower" ||
      name == "isupper" || name == "isnumeric" || name == "isdecimal") {
    return Method(self, name, [self, name = std::string(name)](Renderer&, CallArgs& args) -> StatusOr<Value> {
      RETURN_IF_ERROR(NoArgs(name, args));
      if (name == "islower" || name == "isupper") return Value::Bool(PyIsLower(self.as_string(), name == "islower"));
      std::u32string cps = utf8::Decode(self.as_string());
      if (cps.empty()) return Value::Bool(false);
      for (char32_t c : cps) {
        bool ok;
        if (name == "isspace") {
          ok = PyIsSpace(c);
        } else if (name == "isalpha") {
          ok = IsAlphaChar(c);
        } else if (name == "isalnum") {
          ok = IsAlphaChar(c) || IsNumericChar(c);
        } else if (name == "isdigit") {
          ok = IsDigitChar(c);
        } else if (name == "isdecimal") {
          ok = IsDecimalChar(c);
        } else {
          ok = IsNumericChar(c);
        }
        if (!ok) return Value::Bool(false);
      }
      return Value::Bool(true);
    });
  }
  if (name == "format") {
    return Method(self, name, [self](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      ASSIGN_OR_RETURN(std::string out, PyStrFormat(self.as_string(), args));
      RETURN_IF_ERROR(r.ChargeString(out.size()));
      return Value::Str(std::move(out));
    });
  }
  return std::nullopt;
}

// Methods of dict that are safe in the immutable sandbox.
std::optional<Value> DictMethod(const Value& self, std::string_view name) {
  if (name == "items" || name == "keys" || name == "values") {
    const int which = name == "items" ? 0 : name == "keys" ? 1 : 2;
    return Method(self, name, [self, which](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      RETURN_IF_ERROR(NoArgs(which == 0 ? "items" : which == 1 ? "keys" : "values", args));
      RETURN_IF_ERROR(r.ChargeList(self.dict().size()));
      std::vector<Value> out;
      out.reserve(self.dict().size());
      for (const auto& [k, v] : self.dict().items()) {
        if (which == 0) {
          out.push_back(Value::Tuple({Value::Str(k), v}));
        } else if (which == 1) {
          out.push_back(Value::Str(k));
        } else {
          out.push_back(v);
        }
      }
      return Value::List(std::move(out));
    });
  }
  if (name == "get") {
    return Method(self, name, [self](Renderer&, CallArgs& args) -> StatusOr<Value> {
      ASSIGN_OR_RETURN(Params p, Params::Bind("get", args, {"key", "default"}));
      if (!p.has(0)) return InvalidArgumentError("get expected at least 1 argument, got 0");
      if (p.get(0).is_string()) {
        const Value* v = self.dict().Find(p.get(0).as_string());
        if (v != nullptr) return *v;
      } else if (p.get(0).is_list_like() || p.get(0).is_dict()) {
        return InvalidArgumentError(absl::StrCat("unhashable type: '", TypeName(p.get(0)), "'"));
      }
      return p.get_or(1, Value::None());
    });
  }
  if (name == "copy") {
    return Method(self, name, [self](Renderer&, CallArgs& args) -> StatusOr<Value> {
      RETURN_IF_ERROR(NoArgs("copy", args));
      return self;
    });
  }
  return std::nullopt;
}

// Methods of list / tuple that do not modify it.
std::optional<Value> ListMethod(const Value& self, std::string_view name) {
  if (name == "count" || name == "index") {
    const bool count = name == "count";
    return Method(self, name, [self, count](Renderer& r, CallArgs& args) -> StatusOr<Value> {
      ASSIGN_OR_RETURN(Params p, Params::Bind(count ? "count" : "index", args, {"value"}));
      if (!p.has(0)) return InvalidArgumentError("takes exactly one argument");
      RETURN_IF_ERROR(r.Charge(static_cast<int64_t>(self.items().size())));
      int64_t n = 0;
      for (size_t i = 0; i < self.items().size(); ++i) {
        if (PyEquals(self.items()[i], p.get(0))) {
          if (!count) return Value::Int(static_cast<int64_t>(i));
          ++n;
        }
      }
      if (!count) return InvalidArgumentError(absl::StrCat(PyRepr(p.get(0)), " is not in list"));
      return Value::Int(n);
    });
  }
  return std::nullopt;
}

bool IsListMutator(std::string_view name) {
  return name == "append" || name == "clear" || name == "extend" || name == "insert" || name == "pop" ||
         name == "remove" || name == "reverse" || name == "sort";
}
bool IsDictMutator(std::string_view name) {
  return name == "clear" || name == "pop" || name == "popitem" || name == "setdefault" || name == "update";
}

// An index into a sequence of `size` (negative counts from the end).
std::optional<size_t> NormalizeIndex(int64_t i, size_t size) {
  const int64_t n = static_cast<int64_t>(size);
  if (i < 0) i += n;
  if (i < 0 || i >= n) return std::nullopt;
  return static_cast<size_t>(i);
}

// Follows "a.b.0" paths as jinja2's make_attrgetter does (items first,
// integer parts as indexes); `def`, when given, replaces an undefined result
// at every step.
StatusOr<Value> GetPath(const Value& item, const Value& attribute, const Value* def = nullptr) {
  std::vector<Value> parts;
  if (attribute.is_string()) {
    const std::string& path = attribute.as_string();
    size_t start = 0;
    while (true) {
      const size_t dot = path.find('.', start);
      std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (!part.empty() && part.size() < 18 &&
          std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        parts.push_back(Value::Int(std::stoll(part)));
      } else {
        parts.push_back(Value::Str(std::move(part)));
      }
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
  } else if (!attribute.is_none()) {
    parts.push_back(attribute);
  }
  Value cur = item;
  for (const Value& part : parts) {
    ASSIGN_OR_RETURN(cur, GetItem(cur, part));
    if (def != nullptr && cur.is_undefined()) cur = *def;
  }
  return cur;
}

}  // namespace

StatusOr<Value> GetAttr(const Value& obj, std::string_view name) {
  if (obj.is_undefined()) return UndefinedError(obj);
  if (name.size() >= 2 && name[0] == '_' && name[1] == '_') return UnsafeAttr(obj, name);
  switch (obj.kind()) {
    case Kind::kString: {
      if (auto m = StrMethod(obj, name)) return *m;
      return NoAttr(obj, name);
    }
    case Kind::kDict: {
      if (auto m = DictMethod(obj, name)) return *m;
      if (IsDictMutator(name)) return UnsafeAttr(obj, name);
      const Value* v = obj.dict().Find(name);
      if (v != nullptr) return *v;
      return NoAttr(obj, name);
    }
    case Kind::kList:
    case Kind::kTuple: {
      if (auto m = ListMethod(obj, name)) return *m;
      if (obj.kind() == Kind::kList && IsListMutator(name)) return UnsafeAttr(obj, name);
      return NoAttr(obj, name);
    }
    case Kind::kNamespace: {
      const Value* v = obj.ns_attrs().Find(name);
      if (v != nullptr) return *v;
      return NoAttr(obj, name);
    }
    default:
      return NoAttr(obj, name);
  }
}

StatusOr<Value> GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return UndefinedError(obj);
  switch (obj.kind()) {
    case Kind::kString:
      if (key.is_integral()) {
        std::u32string cps = utf8::Decode(obj.as_string());
        auto i = NormalizeIndex(key.as_int(), cps.size());
        if (!i) return Value::Undefined(absl::StrCat("'str object' has no element ", key.as_int()));
        return Value::Str(utf8::Encode(std::u32string_view(cps).substr(*i, 1)));
      }
      break;
    case Kind::kList:
    case Kind::kTuple:
      if (key.is_integral()) {
        auto i = NormalizeIndex(key.as_int(), obj.items().size());
        if (!i) return Value::Undefined(absl::StrCat("'", TypeName(obj), " object' has no element ", key.as_int()));
        return obj.items()[*i];
      }
      break;
    case Kind::kDict:
      if (key.is_string()) {
        const Value* v = obj.dict().Find(key.as_string());
        if (v != nullptr) return *v;
      }
      break;
    default:
      break;
  }
  // jinja2: a failed item lookup with a string key falls back to the attribute.
  if (key.is_string()) {
    if (obj.is_dict()) {
      if (auto m = DictMethod(obj, key.as_string())) return *m;
      if (IsDictMutator(key.as_string())) return UnsafeAttr(obj, key.as_string());
      return NoAttr(obj, key.as_string());
    }
    return GetAttr(obj, key.as_string());
  }
  return Value::Undefined(absl::StrCat("'", TypeName(obj), " object' has no element ", PyRepr(key)));
}

StatusOr<Value> GetSlice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (obj.is_undefined()) return UndefinedError(obj);
  if (!obj.is_string() && !obj.is_list_like()) {
    return Value::Undefined(absl::StrCat("'", TypeName(obj), " object' is not subscriptable with a slice"));
  }
  for (const Value* v : {&start_v, &stop_v, &step_v}) {
    if (!v->is_none() && !v->is_integral()) {
      // Python raises TypeError, which jinja2's getitem turns into undefined.
      return Value::Undefined("slice indices must be integers or None");
    }
  }
  const int64_t step = step_v.is_none() ? 1 : step_v.as_int();
  if (step == 0) return InvalidArgumentError("slice step cannot be zero");
  std::u32string cps;
  int64_t len;
  if (obj.is_string()) {
    cps = utf8::Decode(obj.as_string());
    len = static_cast<int64_t>(cps.size());
  } else {
    len = static_cast<int64_t>(obj.items().size());
  }
  auto adjust = [&](const Value& v, int64_t def, bool is_stop) -> int64_t {
    if (v.is_none()) return def;
    int64_t i = v.as_int();
    if (i < 0) {
      i = i < -len ? -len - 1 : i;  // avoid overflow
      i += len;
      if (i < 0) i = step < 0 ? -1 : 0;
    } else if (i >= len) {
      i = step < 0 ? len - 1 : len;
    }
    (void)is_stop;
    return i;
  };
  const int64_t start = adjust(start_v, step < 0 ? len - 1 : 0, false);
  const int64_t stop = adjust(stop_v, step < 0 ? -1 : len, true);
  std::vector<int64_t> idx;
  if (step > 0) {
    for (int64_t i = start; i < stop; i += step) idx.push_back(i);
  } else {
    for (int64_t i = start; i > stop; i += step) idx.push_back(i);
  }
  if (obj.is_string()) {
    std::u32string out;
    out.reserve(idx.size());
    for (int64_t i : idx) out.push_back(cps[static_cast<size_t>(i)]);
    return Value::Str(utf8::Encode(out));
  }
  std::vector<Value> out;
  out.reserve(idx.size());
  for (int64_t i : idx) out.push_back(obj.items()[static_cast<size_t>(i)]);
  return obj.kind() == Kind::kList ? Value::List(std::move(out)) : Value::Tuple(std::move(out));
}

StatusOr<std::vector<Value>> Iterate(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined: return std::vector<Value>{};
    case Kind::kList:
    case Kind::kTuple: return v.items();
    case Kind::kDict: {
      std::vector<Value> keys;
      keys.reserve(v.dict().size());
      for (const auto& [k, _] : v.dict().items()) keys.push_back(Value::Str(k));
      return keys;
    }
    case Kind::kString: {
      std::vector<Value> chars;
      for (char32_t c : utf8::Decode(v.as_string())) {
        std::string s;
        utf8::Append(s, c);
        chars.push_back(Value::Str(std::move(s)));
      }
      return chars;
    }
    default:
      return InvalidArgumentError(absl::StrCat("'", TypeName(v), "' object is not iterable"));
  }
}

namespace {

// ---------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------

StatusOr<int64_t> PyLen(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined: return 0;
    case Kind::kString: return static_cast<int64_t>(utf8::Length(v.as_string()));
    case Kind::kList:
    case Kind::kTuple: return static_cast<int64_t>(v.items().size());
    case Kind::kDict: return static_cast<int64_t>(v.dict().size());
    default: return InvalidArgumentError(absl::StrCat("object of type '", TypeName(v), "' has no len()"));
  }
}

StatusOr<Value> FLength(Renderer&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("length", args));
  ASSIGN_OR_RETURN(int64_t n, PyLen(v));
  return Value::Int(n);
}

// Filters that turn their input into str() first.
template <std::string (*F)(const std::string&)>
StatusOr<Value> StrFilter(Renderer& r, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("filter", args));
  std::string s = PyStr(v);
  RETURN_IF_ERROR(r.ChargeString(s.size()));
  return Value::Str(F(s));
}
std::string UpperS(const std::string& s) { return PyUpper(s); }
std::string LowerS(const std::string& s) { return PyLower(s); }

StatusOr<Value> FTrim(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("trim", args, {"chars"}));
  std::string s = PyStr(v);
  RETURN_IF_ERROR(r.ChargeString(s.size()));
  if (!p.has(0) || p.get(0).is_none()) return Value::Str(Strip(s, nullptr, true, true));
  ASSIGN_OR_RETURN(std::string chars, StringArg("trim", p.get(0), "chars"));
  const std::u32string set = utf8::Decode(chars);
  return Value::Str(Strip(s, &set, true, true));
}

StatusOr<Value> FReplace(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("replace", args, {"old", "new", "count"}));
  if (!p.has(0) || !p.has(1)) return InvalidArgumentError("replace filter needs 'old' and 'new'");
  // jinja2 calls str(s).replace(old, new, count): old/new must be str.
  ASSIGN_OR_RETURN(std::string old, StringArg("replace", p.get(0), "old"));
  ASSIGN_OR_RETURN(std::string repl, StringArg("replace", p.get(1), "new"));
  int64_t count = -1;
  if (p.has(2) && !p.get(2).is_none()) {
    ASSIGN_OR_RETURN(count, IntArg("replace", p.get(2), "count"));
  }
  std::string out = Replace(PyStr(v), old, repl, count);
  RETURN_IF_ERROR(r.ChargeString(out.size()));
  return Value::Str(std::move(out));
}

StatusOr<Value> FDefault(Renderer&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("default", args, {"default_value", "boolean"}));
  if (v.is_undefined() || (p.flag(1) && !Truthy(v))) return p.get_or(0, Value::Str(""));
  return v;
}

StatusOr<Value> FJoin(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("join", args, {"d", "attribute"}));
  const std::string sep = p.has(0) ? PyStr(p.get(0)) : "";
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    Value item = items[i];
    if (p.has(1) && !p.get(1).is_none()) {
      ASSIGN_OR_RETURN(item, GetPath(item, p.get(1)));
    }
    if (i) out += sep;
    out += PyStr(item);
    RETURN_IF_ERROR(r.ChargeString(out.size()));
  }
  return Value::Str(std::move(out));
}

StatusOr<Value> FFirst(Renderer&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("first", args));
  if (v.is_list_like()) {
    if (v.items().empty()) return Value::Undefined("No first item, sequence was empty.");
    return v.items().front();
  }
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
  return items.front();
}

StatusOr<Value> FLast(Renderer&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("last", args));
  if (v.is_list_like()) {
    if (v.items().empty()) return Value::Undefined("No last item, sequence was empty.");
    return v.items().back();
  }
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  if (items.empty()) return Value::Undefined("No last item, sequence was empty.");
  return items.back();
}

StatusOr<Value> FList(Renderer& r, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("list", args));
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  RETURN_IF_ERROR(r.ChargeList(items.size()));
  return Value::List(std::move(items));
}

StatusOr<Value> FString(Renderer& r, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("string", args));
  if (v.is_string()) return v;
  std::string s = PyStr(v);
  RETURN_IF_ERROR(r.ChargeString(s.size()));
  return Value::Str(std::move(s));
}

StatusOr<Value> FEscape(Renderer& r, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("escape", args));
  std::string s = HtmlEscape(PyStr(v));
  RETURN_IF_ERROR(r.ChargeString(s.size()));
  return Value::Str(std::move(s));
}

StatusOr<Value> FInt(Renderer&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("int", args, {"default", "base"}));
  const Value def = p.get_or(0, Value::Int(0));
  if (v.is_undefined()) return UndefinedError(v);
  if (p.has(1) && !(p.get(1).is_integral() && p.get(1).as_int() == 10)) {
    return absl::UnimplementedError("int filter: only base 10 is supported");
  }
  if (v.is_integral()) return Value::Int(v.as_int());
  if (v.kind() == Kind::kFloat) {
    const double d = v.as_double();
    if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return def;
    return Value::Int(static_cast<int64_t>(d));
  }
  if (v.is_string()) {
    if (auto i = ParsePyInt(v.as_string())) return Value::Int(*i);
    if (auto d = ParsePyFloat(v.as_string())) {
      if (std::isfinite(*d) && std::fabs(*d) < 9.2e18) return Value::Int(static_cast<int64_t>(*d));
    }
  }
  return def;
}

StatusOr<Value> FFloat(Renderer&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("float", args, {"default"}));
  const Value def = p.get_or(0, Value::Float(0.0));
  if (v.is_undefined()) return UndefinedError(v);
  if (v.is_number()) return Value::Float(v.as_double());
  if (v.is_string()) {
    if (auto d = ParsePyFloat(v.as_string())) return Value::Float(*d);
  }
  return def;
}

StatusOr<Value> FAbs(Renderer&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("abs", args));
  if (v.kind() == Kind::kFloat) return Value::Float(std::fabs(v.as_double()));
  if (v.is_integral()) {
    if (v.as_int() == std::numeric_limits<int64_t>::min()) return absl::OutOfRangeError("integer overflow");
    return Value::Int(v.as_int() < 0 ? -v.as_int() : v.as_int());
  }
  if (v.is_undefined()) return UndefinedError(v);
  return InvalidArgumentError(absl::StrCat("bad operand type for abs(): '", TypeName(v), "'"));
}

// Python's round(x, ndigits) for floats: correctly rounded, ties to even on
// the exact binary value (glibc's printf rounds the same way).
double PyRound(double x, int64_t ndigits) {
  if (!std::isfinite(x)) return x;
  if (ndigits >= 0) {
    if (ndigits > 300) return x;
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(ndigits), x);
    return std::strtod(buf, nullptr);
  }
  if (ndigits < -308) return std::copysign(0.0, x);
  const double pow10 = std::pow(10.0, static_cast<double>(-ndigits));
  const double y = x / pow10;
  double z = std::nearbyint(y);  // ties to even
  return z * pow10;
}

StatusOr<Value> FRound(Renderer&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("round", args, {"precision", "method"}));
  int64_t precision = 0;
  if (p.has(0)) {
    ASSIGN_OR_RETURN(precision, IntArg("round", p.get(0), "precision"));
  }
  std::string method = "common";
  if (p.has(1)) {
    ASSIGN_OR_RETURN(method, StringArg("round", p.get(1), "method"));
  }
  if (method != "common" && method != "ceil" && method != "floor") {
    return InvalidArgumentError("method must be 'common', 'ceil' or 'floor'");
  }
  if (v.is_undefined()) return UndefinedError(v);
  if (!v.is_number()) return InvalidArgumentError(absl::StrCat("round: '", TypeName(v), "' is not a number"));
  if (method == "common") {
    if (v.is_integral()) {
      if (precision >= 0) return Value::Int(v.as_int());
      return Value::Int(static_cast<int64_t>(PyRound(static_cast<double>(v.as_int()), precision)));
    }
    return Value::Float(PyRound(v.as_double(), precision));
  }
  if (precision < -308 || precision > 308) return InvalidArgumentError("round: precision out of range");
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = v.as_double() * scale;
  return Value::Float((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

StatusOr<Value> FCapitalize(Renderer& r, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("capitalize", args));
  std::string s = PyStr(v);
  RETURN_IF_ERROR(r.ChargeString(s.size()));
  return Value::Str(PyCapitalize(s));
}

StatusOr<Value> FTitle(Renderer& r, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("title", args));
  std::string s = PyStr(v);
  RETURN_IF_ERROR(r.ChargeString(s.size()));
  return Value::Str(JinjaTitle(s));
}

StatusOr<Value> FIndent(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("indent", args, {"width", "first", "blank"}));
  std::string indention = "    ";
  if (p.has(0)) {
    if (p.get(0).is_string()) {
      indention = p.get(0).as_string();
    } else {
      ASSIGN_OR_RETURN(int64_t w, IntArg("indent", p.get(0), "width"));
      indention = std::string(static_cast<size_t>(std::clamp<int64_t>(w, 0, 1 << 20)), ' ');
    }
  }
  if (v.is_undefined()) return UndefinedError(v);
  std::string s = PyStr(v);
  s += "\n";  // jinja2 appends a newline before splitting (its own quirk)
  std::vector<std::string> lines = SplitLines(s, false);
  std::string rv;
  if (p.flag(2)) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i) rv += "\n" + indention;
      rv += lines[i];
      RETURN_IF_ERROR(r.ChargeString(rv.size()));
    }
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      rv += "\n";
      if (!lines[i].empty()) rv += indention;
      rv += lines[i];
      RETURN_IF_ERROR(r.ChargeString(rv.size()));
    }
  }
  if (p.flag(1)) rv = indention + rv;
  return Value::Str(std::move(rv));
}

StatusOr<Value> FItems(Renderer& r, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("items", args));
  if (v.is_undefined()) return Value::List({});
  if (!v.is_dict()) return InvalidArgumentError("Can only get item pairs from a mapping.");
  RETURN_IF_ERROR(r.ChargeList(v.dict().size()));
  std::vector<Value> out;
  for (const auto& [k, x] : v.dict().items()) out.push_back(Value::Tuple({Value::Str(k), x}));
  return Value::List(std::move(out));
}

// Sort key helper: lower-cases strings unless case-sensitive.
Value SortKey(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::Str(PyLower(v.as_string()));
  return v;
}

// Stable sort of `items` by `keys`; incomparable keys are an error.
absl::Status SortByKeys(Renderer& r, std::vector<Value>& items, std::vector<Value>& keys, bool reverse) {
  const size_t n = items.size();
  RETURN_IF_ERROR(r.Charge(static_cast<int64_t>(n) * (1 + static_cast<int64_t>(std::log2(n + 1)))));
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  absl::Status error;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (!error.ok()) return false;
    auto lt = reverse ? PyLess(keys[b], keys[a]) : PyLess(keys[a], keys[b]);
    if (!lt.ok()) {
      error = lt.status();
      return false;
    }
    return *lt;
  });
  RETURN_IF_ERROR(error);
  std::vector<Value> sorted;
  sorted.reserve(n);
  for (size_t i : order) sorted.push_back(std::move(items[i]));
  items = std::move(sorted);
  return absl::OkStatus();
}

StatusOr<Value> FSort(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("sort", args, {"reverse", "case_sensitive", "attribute"}));
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  std::vector<Value> keys;
  for (const Value& item : items) {
    Value k = item;
    if (p.has(2) && !p.get(2).is_none()) {
      ASSIGN_OR_RETURN(k, GetPath(item, p.get(2)));
    }
    keys.push_back(SortKey(k, p.flag(1)));
  }
  RETURN_IF_ERROR(SortByKeys(r, items, keys, p.flag(0)));
  return Value::List(std::move(items));
}

StatusOr<Value> FDictSort(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("dictsort", args, {"case_sensitive", "by", "reverse"}));
  if (!v.is_dict()) return InvalidArgumentError("dictsort: value is not a dict");
  std::string by = "key";
  if (p.has(1)) {
    ASSIGN_OR_RETURN(by, StringArg("dictsort", p.get(1), "by"));
  }
  if (by != "key" && by != "value") return InvalidArgumentError("You can only sort by either \"key\" or \"value\"");
  std::vector<Value> items, keys;
  for (const auto& [k, x] : v.dict().items()) {
    items.push_back(Value::Tuple({Value::Str(k), x}));
    keys.push_back(SortKey(by == "key" ? Value::Str(k) : x, p.flag(0)));
  }
  RETURN_IF_ERROR(SortByKeys(r, items, keys, p.flag(2)));
  return Value::List(std::move(items));
}

StatusOr<Value> FReverse(Renderer& r, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("reverse", args));
  if (v.is_string()) {
    std::u32string cps = utf8::Decode(v.as_string());
    std::reverse(cps.begin(), cps.end());
    return Value::Str(utf8::Encode(cps));
  }
  auto items = Iterate(v);
  if (!items.ok()) return InvalidArgumentError("argument to reverse filter must be iterable");
  RETURN_IF_ERROR(r.ChargeList(items->size()));
  std::reverse(items->begin(), items->end());
  return Value::List(std::move(*items));
}

// Hashable identity of a value for unique(): Python hashes 1, 1.0 and True alike.
StatusOr<std::string> HashKey(const Value& v) {
  switch (v.kind()) {
    case Kind::kNone: return std::string("N");
    case Kind::kBool:
    case Kind::kInt: return absl::StrCat("n", v.as_int());
    case Kind::kFloat: {
      const double d = v.as_double();
      if (d == std::floor(d) && std::fabs(d) < 9.2e18) return absl::StrCat("n", static_cast<int64_t>(d));
      return absl::StrCat("f", FloatRepr(d));
    }
    case Kind::kString: return absl::StrCat("s", v.as_string());
    case Kind::kTuple: {
      std::string k = "t(";
      for (const Value& x : v.items()) {
        ASSIGN_OR_RETURN(std::string inner, HashKey(x));
        absl::StrAppend(&k, inner.size(), ":", inner);
      }
      return k;
    }
    default: return InvalidArgumentError(absl::StrCat("unhashable type: '", TypeName(v), "'"));
  }
}

StatusOr<Value> FUnique(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("unique", args, {"case_sensitive", "attribute"}));
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  RETURN_IF_ERROR(r.ChargeList(items.size()));
  absl::flat_hash_set<std::string> seen;
  std::vector<Value> out;
  for (const Value& item : items) {
    Value k = item;
    if (p.has(1) && !p.get(1).is_none()) {
      ASSIGN_OR_RETURN(k, GetPath(item, p.get(1)));
    }
    ASSIGN_OR_RETURN(std::string key, HashKey(SortKey(k, p.flag(0))));
    if (seen.insert(key).second) out.push_back(item);
  }
  return Value::List(std::move(out));
}

StatusOr<Value> MinMax(Renderer& r, const Value& v, CallArgs& args, bool want_max) {
  ASSIGN_OR_RETURN(Params p, Params::Bind(want_max ? "max" : "min", args, {"case_sensitive", "attribute"}));
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  RETURN_IF_ERROR(r.Charge(static_cast<int64_t>(items.size())));
  if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
  auto key_of = [&](const Value& item) -> StatusOr<Value> {
    Value k = item;
    if (p.has(1) && !p.get(1).is_none()) {
      ASSIGN_OR_RETURN(k, GetPath(item, p.get(1)));
    }
    return SortKey(k, p.flag(0));
  };
  size_t best = 0;
  ASSIGN_OR_RETURN(Value best_key, key_of(items[0]));
  for (size_t i = 1; i < items.size(); ++i) {
    ASSIGN_OR_RETURN(Value k, key_of(items[i]));
    ASSIGN_OR_RETURN(bool better, want_max ? PyLess(best_key, k) : PyLess(k, best_key));
    if (better) {
      best = i;
      best_key = k;
    }
  }
  return items[best];
}
StatusOr<Value> FMax(Renderer& r, const Value& v, CallArgs& args) { return MinMax(r, v, args, true); }
StatusOr<Value> FMin(Renderer& r, const Value& v, CallArgs& args) { return MinMax(r, v, args, false); }

StatusOr<Value> FSum(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("sum", args, {"attribute", "start"}));
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  RETURN_IF_ERROR(r.Charge(static_cast<int64_t>(items.size())));
  Value total = p.get_or(1, Value::Int(0));
  for (const Value& item : items) {
    Value x = item;
    if (p.has(0) && !p.get(0).is_none()) {
      ASSIGN_OR_RETURN(x, GetPath(item, p.get(0)));
    }
    if (!total.is_number() || !x.is_number()) {
      if (x.is_undefined()) return UndefinedError(x);
      return InvalidArgumentError(absl::StrCat("unsupported operand type(s) for +: '", TypeName(total), "' and '",
                                               TypeName(x), "'"));
    }
    if (total.is_integral() && x.is_integral()) {
      int64_t s;
      if (__builtin_add_overflow(total.as_int(), x.as_int(), &s)) return absl::OutOfRangeError("integer overflow");
      total = Value::Int(s);
    } else {
      total = Value::Float(total.as_double() + x.as_double());
    }
  }
  return total;
}

StatusOr<Value> FAttr(Renderer&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("attr", args, {"name"}));
  if (!p.has(0)) return InvalidArgumentError("attr filter needs a name");
  ASSIGN_OR_RETURN(std::string name, StringArg("attr", p.get(0), "name"));
  // Attributes only: dict keys are not attributes.
  if (v.is_dict()) {
    if (auto m = DictMethod(v, name)) return *m;
    return NoAttr(v, name);
  }
  return GetAttr(v, name);
}

// select / reject / selectattr / rejectattr.
StatusOr<Value> SelectImpl(Renderer& r, const Value& v, CallArgs& args, bool select, bool by_attr) {
  const char* fn = by_attr ? (select ? "selectattr" : "rejectattr") : (select ? "select" : "reject");
  if (!args.kwargs.empty()) return InvalidArgumentError(absl::StrCat(fn, "() takes no keyword arguments"));
  size_t next_arg = 0;
  Value attribute;
  if (by_attr) {
    if (args.args.empty()) return InvalidArgumentError(absl::StrCat(fn, "() missing the attribute to test"));
    attribute = args.args[next_arg++];
  }
  std::string test;
  if (next_arg < args.args.size()) {
    ASSIGN_OR_RETURN(test, StringArg(fn, args.args[next_arg++], "test name"));
  }
  CallArgs test_args;
  test_args.args.assign(args.args.begin() + static_cast<std::ptrdiff_t>(next_arg), args.args.end());
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  std::vector<Value> out;
  for (const Value& item : items) {
    Value x = item;
    if (by_attr) {
      ASSIGN_OR_RETURN(x, GetPath(item, attribute));
    }
    bool ok;
    if (test.empty()) {
      RETURN_IF_ERROR(r.Charge(1));
      ok = Truthy(x);
    } else {
      CallArgs copy = test_args;
      ASSIGN_OR_RETURN(ok, r.ApplyTest(test, x, copy));
    }
    if (ok == select) out.push_back(item);
  }
  return Value::List(std::move(out));
}
StatusOr<Value> FSelect(Renderer& r, const Value& v, CallArgs& a) { return SelectImpl(r, v, a, true, false); }
StatusOr<Value> FReject(Renderer& r, const Value& v, CallArgs& a) { return SelectImpl(r, v, a, false, false); }
StatusOr<Value> FSelectAttr(Renderer& r, const Value& v, CallArgs& a) { return SelectImpl(r, v, a, true, true); }
StatusOr<Value> FRejectAttr(Renderer& r, const Value& v, CallArgs& a) { return SelectImpl(r, v, a, false, true); }

StatusOr<Value> FMap(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v));
  std::vector<Value> out;
  out.reserve(items.size());
  const Value* attribute = nullptr;
  const Value* def = nullptr;
  for (const auto& [k, x] : args.kwargs) {
    if (k == "attribute") {
      attribute = &x;
    } else if (k == "default") {
      def = &x;
    } else {
      return InvalidArgumentError(absl::StrCat("map() got an unexpected keyword argument '", k, "'"));
    }
  }
  if (attribute != nullptr) {
    if (!args.args.empty()) return InvalidArgumentError("map() with 'attribute' takes no positional arguments");
    for (const Value& item : items) {
      RETURN_IF_ERROR(r.Charge(1));
      ASSIGN_OR_RETURN(Value x, GetPath(item, *attribute, def));
      out.push_back(std::move(x));
    }
    return Value::List(std::move(out));
  }
  if (def != nullptr) return InvalidArgumentError("map(): 'default' needs 'attribute'");
  if (args.args.empty()) return InvalidArgumentError("map() needs a filter name or attribute=");
  ASSIGN_OR_RETURN(std::string filter, StringArg("map", args.args[0], "filter name"));
  CallArgs filter_args;
  filter_args.args.assign(args.args.begin() + 1, args.args.end());
  for (const Value& item : items) {
    CallArgs copy = filter_args;
    ASSIGN_OR_RETURN(Value x, r.ApplyFilter(filter, item, copy));
    out.push_back(std::move(x));
  }
  return Value::List(std::move(out));
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None,
// separators=None, sort_keys=False).
StatusOr<Value> FToJson(Renderer& r, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"}));
  JsonDumpOptions o;
  o.ensure_ascii = p.flag(0);
  if (p.has(1) && !p.get(1).is_none()) {
    const Value& ind = p.get(1);
    if (ind.is_string()) {
      o.indent = ind.as_string();
    } else if (ind.is_integral()) {
      o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(ind.as_int(), 0, 1 << 16)), ' ');
    } else {
      return InvalidArgumentError(absl::StrCat("tojson: indent must be an int or a string, not '", TypeName(ind), "'"));
    }
  }
  if (p.has(2) && !p.get(2).is_none()) {
    const Value& sep = p.get(2);
    if (!sep.is_list_like() || sep.items().size() != 2 || !sep.items()[0].is_string() || !sep.items()[1].is_string()) {
      return InvalidArgumentError("tojson: separators must be a pair of strings");
    }
    o.item_separator = sep.items()[0].as_string();
    o.key_separator = sep.items()[1].as_string();
  }
  o.sort_keys = p.flag(3);
  ASSIGN_OR_RETURN(std::string s, JsonDumps(v, o));
  RETURN_IF_ERROR(r.ChargeString(s.size()));
  return Value::Str(std::move(s));
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

StatusOr<Value> OneArg(std::string_view test, CallArgs& args) {
  if (args.args.size() + args.kwargs.size() != 1) {
    return InvalidArgumentError(absl::StrCat("test '", AV(test), "' takes exactly one argument"));
  }
  return args.args.empty() ? args.kwargs[0].second : args.args[0];
}

#define DS_SIMPLE_TEST(fn_name, test_name, expr)                               \
  StatusOr<bool> fn_name(Renderer&, const Value& v, CallArgs& args) {          \
    RETURN_IF_ERROR(NoArgs("test " test_name, args));                          \
    return (expr);                                                             \
  }

DS_SIMPLE_TEST(TDefined, "defined", !v.is_undefined())
DS_SIMPLE_TEST(TUndefined, "undefined", v.is_undefined())
DS_SIMPLE_TEST(TNone, "none", v.is_none())
DS_SIMPLE_TEST(TBoolean, "boolean", v.kind() == Kind::kBool)
DS_SIMPLE_TEST(TFalse, "false", v.kind() == Kind::kBool && !v.as_bool())
DS_SIMPLE_TEST(TTrue, "true", v.kind() == Kind::kBool && v.as_bool())
DS_SIMPLE_TEST(TInteger, "integer", v.kind() == Kind::kInt)
DS_SIMPLE_TEST(TFloat, "float", v.kind() == Kind::kFloat)
DS_SIMPLE_TEST(TNumber, "number", v.is_number())
DS_SIMPLE_TEST(TString, "string", v.is_string())
DS_SIMPLE_TEST(TMapping, "mapping", v.is_dict())
// Undefined is iterable, has a length and is "callable" in jinja2.
DS_SIMPLE_TEST(TIterable, "iterable", v.is_undefined() || v.is_string() || v.is_list_like() || v.is_dict())
DS_SIMPLE_TEST(TSequence, "sequence", v.is_undefined() || v.is_string() || v.is_list_like() || v.is_dict())
DS_SIMPLE_TEST(TCallable, "callable", v.kind() == Kind::kCallable || v.is_undefined())
DS_SIMPLE_TEST(TEscaped, "escaped", false)
#undef DS_SIMPLE_TEST

StatusOr<bool> TLowerUpper(const Value& v, CallArgs& args, bool lower) {
  RETURN_IF_ERROR(NoArgs(lower ? "lower" : "upper", args));
  return PyIsLower(PyStr(v), lower);
}
StatusOr<bool> TLower(Renderer&, const Value& v, CallArgs& args) { return TLowerUpper(v, args, true); }
StatusOr<bool> TUpper(Renderer&, const Value& v, CallArgs& args) { return TLowerUpper(v, args, false); }

StatusOr<int64_t> ModTwo(const Value& v, std::string_view test, int64_t divisor) {
  if (v.is_undefined()) return UndefinedError(v);
  if (!v.is_integral()) {
    return InvalidArgumentError(absl::StrCat("test '", AV(test), "' needs an integer, not '", TypeName(v), "'"));
  }
  if (divisor == 0) return InvalidArgumentError("integer division or modulo by zero");
  if (divisor == -1) return 0;
  int64_t r = v.as_int() % divisor;
  if (r != 0 && ((r < 0) != (divisor < 0))) r += divisor;
  return r;
}
StatusOr<bool> TOdd(Renderer&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("odd", args));
  ASSIGN_OR_RETURN(int64_t m, ModTwo(v, "odd", 2));
  return m == 1;
}
StatusOr<bool> TEven(Renderer&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("even", args));
  ASSIGN_OR_RETURN(int64_t m, ModTwo(v, "even", 2));
  return m == 0;
}
StatusOr<bool> TDivisibleBy(Renderer&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Value num, OneArg("divisibleby", args));
  ASSIGN_OR_RETURN(int64_t d, IntArg("divisibleby", num, "num"));
  ASSIGN_OR_RETURN(int64_t m, ModTwo(v, "divisibleby", d));
  return m == 0;
}

StatusOr<bool> TSameAs(Renderer&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Value other, OneArg("sameas", args));
  if (v.kind() != other.kind()) return false;
  switch (v.kind()) {
    case Kind::kNone:
    case Kind::kUndefined: return true;
    case Kind::kBool: return v.as_bool() == other.as_bool();
    case Kind::kInt: return v.as_int() == other.as_int() && v.as_int() >= -5 && v.as_int() <= 256;  // CPython's small ints
    default: return v.identity() != nullptr && v.identity() == other.identity();
  }
}

template <CompareOp Op>
StatusOr<bool> TCompare(Renderer&, const Value& v, CallArgs& args) {
  ASSIGN_OR_RETURN(Value other, OneArg("comparison", args));
  switch (Op) {
    case CompareOp::kEq: return PyEquals(v, other);
    case CompareOp::kNe: return !PyEquals(v, other);
    case CompareOp::kLt: return PyLess(v, other);
    case CompareOp::kGt: return PyLess(other, v);
    case CompareOp::kLe: {
      ASSIGN_OR_RETURN(bool lt, PyLess(v, other));
      return lt || PyEquals(v, other);
    }
    case CompareOp::kGe: {
      ASSIGN_OR_RETURN(bool gt, PyLess(other, v));
      return gt || PyEquals(v, other);
    }
    default: return PyContains(other, v);
  }
}

StatusOr<bool> TFilter(Renderer&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("filter", args));
  return v.is_string() && FindFilter(v.as_string()) != nullptr;
}
StatusOr<bool> TTest(Renderer&, const Value& v, CallArgs& args) {
  RETURN_IF_ERROR(NoArgs("test", args));
  return v.is_string() && FindTest(v.as_string()) != nullptr;
}

const absl::flat_hash_map<std::string_view, FilterFn>& Filters() {
  static const auto* const filters = new absl::flat_hash_map<std::string_view, FilterFn>{
      {"abs", &FAbs},
      {"attr", &FAttr},
      {"capitalize", &FCapitalize},
      {"count", &FLength},
      {"d", &FDefault},
      {"default", &FDefault},
      {"dictsort", &FDictSort},
      {"e", &FEscape},
      {"escape", &FEscape},
      {"first", &FFirst},
      {"float", &FFloat},
      {"indent", &FIndent},
      {"int", &FInt},
      {"items", &FItems},
      {"join", &FJoin},
      {"last", &FLast},
      {"length", &FLength},
      {"list", &FList},
      {"lower", &StrFilter<&LowerS>},
      {"map", &FMap},
      {"max", &FMax},
      {"min", &FMin},
      {"reject", &FReject},
      {"rejectattr", &FRejectAttr},
      {"replace", &FReplace},
      {"reverse", &FReverse},
      {"round", &FRound},
      {"safe", &FString},
      {"select", &FSelect},
      {"selectattr", &FSelectAttr},
      {"sort", &FSort},
      {"string", &FString},
      {"sum", &FSum},
      {"title", &FTitle},
      {"tojson", &FToJson},
      {"trim", &FTrim},
      {"unique", &FUnique},
      {"upper", &StrFilter<&UpperS>},
  };
  return *filters;
}

const absl::flat_hash_map<std::string_view, TestFn>& Tests() {
  static const auto* const tests = new absl::flat_hash_map<std::string_view, TestFn>{
      {"boolean", &TBoolean},
      {"callable", &TCallable},
      {"defined", &TDefined},
      {"divisibleby", &TDivisibleBy},
      {"eq", &TCompare<CompareOp::kEq>},
      {"equalto", &TCompare<CompareOp::kEq>},
      {"==", &TCompare<CompareOp::kEq>},
      {"escaped", &TEscaped},
      {"even", &TEven},
      {"false", &TFalse},
      {"filter", &TFilter},
      {"float", &TFloat},
      {"ge", &TCompare<CompareOp::kGe>},
      {">=", &TCompare<CompareOp::kGe>},
      {"gt", &TCompare<CompareOp::kGt>},
      {"greaterthan", &TCompare<CompareOp::kGt>},
      {">", &TCompare<CompareOp::kGt>},
      {"in", &TCompare<CompareOp::kIn>},
      {"integer", &TInteger},
      {"iterable", &TIterable},
      {"le", &TCompare<CompareOp::kLe>},
      {"<=", &TCompare<CompareOp::kLe>},
      {"lower", &TLower},
      {"lt", &TCompare<CompareOp::kLt>},
      {"lessthan", &TCompare<CompareOp::kLt>},
      {"<", &TCompare<CompareOp::kLt>},
      {"mapping", &TMapping},
      {"ne", &TCompare<CompareOp::kNe>},
      {"!=", &TCompare<CompareOp::kNe>},
      {"none", &TNone},
      {"number", &TNumber},
      {"odd", &TOdd},
      {"sameas", &TSameAs},
      {"sequence", &TSequence},
      {"string", &TString},
      {"test", &TTest},
      {"true", &TTrue},
      {"undefined", &TUndefined},
      {"upper", &TUpper},
  };
  return *tests;
}

// ---------------------------------------------------------------------------
// Globals
// ---------------------------------------------------------------------------

StatusOr<Value> GRange(Renderer& r, CallArgs& args) {
  if (!args.kwargs.empty()) return InvalidArgumentError("range() takes no keyword arguments");
  if (args.args.empty() || args.args.size() > 3) {
    return InvalidArgumentError(absl::StrCat("range expected 1 to 3 arguments, got ", args.args.size()));
  }
  int64_t v[3];
  for (size_t i = 0; i < args.args.size(); ++i) {
    const Value& a = args.args[i];
    if (!a.is_integral()) {
      return InvalidArgumentError(absl::StrCat("'", TypeName(a), "' object cannot be interpreted as an integer"));
    }
    v[i] = a.as_int();
  }
  int64_t start = 0, stop, step = 1;
  if (args.args.size() == 1) {
    stop = v[0];
  } else {
    start = v[0];
    stop = v[1];
    if (args.args.size() == 3) step = v[2];
  }
  if (step == 0) return InvalidArgumentError("range() arg 3 must not be zero");
  // Length computed in floating point first so that huge bounds cannot overflow.
  const long double span = static_cast<long double>(stop) - static_cast<long double>(start);
  const long double count_ld = step > 0 ? std::ceil(span / step) : std::ceil(span / step);
  const int64_t count = count_ld <= 0 ? 0 : static_cast<int64_t>(std::min<long double>(count_ld, 1e18L));
  if (count > kMaxRange) {
    return absl::OutOfRangeError(
        absl::StrCat("Range too big. The sandbox blocks ranges larger than MAX_RANGE (", kMaxRange, ")."));
  }
  RETURN_IF_ERROR(r.ChargeList(static_cast<size_t>(count)));
  std::vector<Value> out;
  out.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) out.push_back(Value::Int(start + i * step));
  return Value::List(std::move(out));
}

// dict(mapping_or_pairs, **kwargs) as Python builds it.
StatusOr<DictData> BuildDict(std::string_view fn, CallArgs& args) {
  DictData d;
  if (args.args.size() > 1) return InvalidArgumentError(absl::StrCat(AV(fn), " expected at most 1 positional argument"));
  if (!args.args.empty()) {
    const Value& src = args.args[0];
    if (src.is_dict()) {
      d = src.dict();
    } else if (src.kind() == Kind::kNamespace) {
      return InvalidArgumentError(absl::StrCat(AV(fn), ": cannot convert a namespace"));
    } else {
      ASSIGN_OR_RETURN(std::vector<Value> pairs, Iterate(src));
      for (const Value& pair : pairs) {
        if (!pair.is_list_like() || pair.items().size() != 2 || !pair.items()[0].is_string()) {
          return InvalidArgumentError(
              absl::StrCat(AV(fn), ": each element must be a (string key, value) pair"));
        }
        d.Set(pair.items()[0].as_string(), pair.items()[1]);
      }
    }
  }
  for (auto& [k, v] : args.kwargs) d.Set(k, v);
  return d;
}

StatusOr<Value> GDict(Renderer&, CallArgs& args) {
  ASSIGN_OR_RETURN(DictData d, BuildDict("dict()", args));
  return Value::Dict(std::move(d));
}

StatusOr<Value> GNamespace(Renderer& r, CallArgs& args) {
  ASSIGN_OR_RETURN(DictData d, BuildDict("namespace()", args));
  Value ns = Value::NewNamespace(std::move(d));
  r.TrackNamespace(ns);
  return ns;
}

StatusOr<Value> GRaiseException(Renderer&, CallArgs& args) {
  std::string message = args.args.empty() ? "" : PyStr(args.args[0]);
  return InvalidArgumentError(absl::StrCat("raise_exception: ", message));
}

StatusOr<Value> GStrftimeNow(Renderer&, CallArgs& args) {
  ASSIGN_OR_RETURN(Params p, Params::Bind("strftime_now", args, {"format"}));
  if (!p.has(0)) return InvalidArgumentError("strftime_now() missing the format");
  ASSIGN_OR_RETURN(std::string format, StringArg("strftime_now", p.get(0), "format"));
  if (format.find('\0') != std::string::npos) return InvalidArgumentError("strftime_now: embedded null character");
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  // strftime returns 0 both for "buffer too small" and for an empty result;
  // a marker character tells them apart.
  const std::string marked = format + "\x01";
  for (size_t size = 64 + format.size() * 4; size <= (1u << 20); size *= 4) {
    std::string buf(size, '\0');
    const size_t n = std::strftime(buf.data(), buf.size(), marked.c_str(), &tm);
    if (n > 0) {
      buf.resize(n - 1);
      return Value::Str(std::move(buf));
    }
  }
  return InvalidArgumentError("strftime_now: result too long");
}

}  // namespace

FilterFn FindFilter(std::string_view name) {
  auto it = Filters().find(name);
  return it == Filters().end() ? nullptr : it->second;
}

TestFn FindTest(std::string_view name) {
  auto it = Tests().find(name);
  return it == Tests().end() ? nullptr : it->second;
}

void AddGlobals(DictData& globals) {
  globals.Set("range", Value::Function("range", &GRange));
  globals.Set("dict", Value::Function("dict", &GDict));
  globals.Set("namespace", Value::Function("namespace", &GNamespace));
  globals.Set("raise_exception", Value::Function("raise_exception", &GRaiseException));
  globals.Set("strftime_now", Value::Function("strftime_now", &GStrftimeNow));
}

}  // namespace deepshard::jinja
