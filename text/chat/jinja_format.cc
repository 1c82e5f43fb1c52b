// Python string formatting for chat templates: `str.format(...)` and
// printf-style `fmt % args`, the subset of both that templates plausibly use
// (see jinja_builtins.h for the list). Anything outside it is an error that
// says so.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "text/chat/jinja_builtins.h"

namespace deepshard::jinja {
namespace {

using absl::InvalidArgumentError;
using absl::StatusOr;

struct Spec {
  char fill = ' ';
  char align = 0;  // '<', '>', '^', '=' or 0 (default for the type)
  char sign = 0;   // '+', ' ' or 0
  bool alt = false;
  bool zero = false;
  int width = -1;
  int precision = -1;
  char type = 0;
};

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Reads digits at fmt[i...] (capped to keep snprintf sane).
int ReadNumber(const std::string& fmt, size_t& i) {
  int64_t n = 0;
  while (i < fmt.size() && IsDigit(fmt[i])) {
    n = std::min<int64_t>(n * 10 + (fmt[i] - '0'), 100000);
    ++i;
  }
  return static_cast<int>(n);
}

std::string Pad(const std::string& body, const Spec& s, char default_align, size_t sign_len) {
  const size_t len = utf8::Length(body);
  if (s.width < 0 || len >= static_cast<size_t>(s.width)) return body;
  const size_t pad = static_cast<size_t>(s.width) - len;
  std::string fill_unit(1, s.fill);
  auto fill = [&](size_t n) {
    std::string f;
    for (size_t k = 0; k < n; ++k) f += fill_unit;
    return f;
  };
  const char align = s.align ? s.align : default_align;
  switch (align) {
    case '<': return body + fill(pad);
    case '^': return fill(pad / 2) + body + fill(pad - pad / 2);
    case '=': return body.substr(0, sign_len) + fill(pad) + body.substr(sign_len);
    default: return fill(pad) + body;
  }
}

// A number with C formatting (`type` one of d x X o f F e E g G), sign flag
// applied; no width.
std::string CNumber(const Value& v, char type, int precision, char sign, bool alt) {
  std::string f = "%";
  if (sign) f.push_back(sign);
  if (alt) f.push_back('#');
  char buf[512];
  if (type == 'd' || type == 'x' || type == 'X' || type == 'o') {
    f += std::string("ll") + type;
    std::snprintf(buf, sizeof(buf), f.c_str(), static_cast<long long>(v.as_int()));
  } else {
    if (precision >= 0) f += "." + std::to_string(std::min(precision, 300));
    f.push_back(type);
    std::snprintf(buf, sizeof(buf), f.c_str(), v.as_double());
  }
  return buf;
}

StatusOr<std::string> FormatOne(const Value& v, const Spec& s, bool percent_style) {
  char type = s.type;
  if (type == 0 && percent_style) type = 's';
  if (type == 's' || type == 'r' || (type == 0 && !v.is_number())) {
    if (type == 0 && !v.is_string() && (s.width >= 0 || s.precision >= 0 || s.align)) {
      return InvalidArgumentError(absl::StrCat("unsupported format string passed to ", TypeName(v), ".__format__"));
    }
    if (type == 's' && !percent_style && !v.is_string()) {
      return InvalidArgumentError(absl::StrCat("Unknown format code 's' for object of type '", TypeName(v), "'"));
    }
    std::string text = type == 'r' ? PyRepr(v) : PyStr(v);
    if (s.precision >= 0) {
      std::u32string cps = utf8::Decode(text);
      if (cps.size() > static_cast<size_t>(s.precision)) text = utf8::Encode(cps.substr(0, s.precision));
    }
    return Pad(text, s, percent_style ? '>' : '<', 0);
  }
  if (type == 'c') {
    std::string text;
    if (v.is_integral() && v.as_int() >= 0 && v.as_int() <= 0x10FFFF) {
      utf8::Append(text, static_cast<char32_t>(v.as_int()));
    } else if (v.is_string() && utf8::Length(v.as_string()) == 1) {
      text = v.as_string();
    } else {
      return InvalidArgumentError("%c requires an int or a single character");
    }
    return Pad(text, s, '<', 0);
  }
  if (!v.is_number()) {
    return InvalidArgumentError(absl::StrCat("format type '", std::string(1, type ? type : '?'),
                                             "' needs a number, not '", TypeName(v), "'"));
  }
  std::string body;
  if (type == 0) {
    if (s.precision >= 0) return absl::UnimplementedError("unsupported format spec: precision without a type");
    body = v.kind() == Kind::kFloat ? FloatRepr(v.as_double()) : std::to_string(v.as_int());
    if (s.sign && body[0] != '-') body.insert(body.begin(), s.sign);
  } else if (type == 'd' || type == 'i' || type == 'x' || type == 'X' || type == 'o') {
    if (v.kind() == Kind::kFloat && !(percent_style && (type == 'd' || type == 'i'))) {
      return InvalidArgumentError(absl::StrCat("format type '", std::string(1, type), "' needs an integer, not float"));
    }
    if (type == 'o' && s.alt) return absl::UnimplementedError("unsupported format spec: '#o'");
    const double d = v.as_double();
    if (v.kind() == Kind::kFloat && (!std::isfinite(d) || std::fabs(d) >= 9.2e18)) {
      return InvalidArgumentError("cannot convert float to integer");
    }
    const Value iv = v.kind() == Kind::kFloat ? Value::Int(static_cast<int64_t>(d)) : v;
    body = CNumber(iv, type == 'i' ? 'd' : type, -1, s.sign, s.alt);
  } else if (type == 'f' || type == 'F' || type == 'e' || type == 'E' || type == 'g' || type == 'G') {
    body = CNumber(v, type, s.precision < 0 ? 6 : s.precision, s.sign, s.alt);
  } else if (type == '%' && !percent_style) {
    body = CNumber(Value::Float(v.as_double() * 100), 'f', s.precision < 0 ? 6 : s.precision, s.sign, s.alt) + "%";
  } else {
    return absl::UnimplementedError(absl::StrCat("unsupported format type '", std::string(1, type), "'"));
  }
  const size_t sign_len = (!body.empty() && (body[0] == '-' || body[0] == '+' || body[0] == ' ')) ? 1 : 0;
  if (s.zero && !s.align) {
    Spec z = s;
    z.fill = '0';
    z.align = '=';
    return Pad(body, z, '>', sign_len);
  }
  return Pad(body, s, '>', sign_len);
}

// Parses a str.format spec ("[[fill]align][sign][#][0][width][.precision][type]").
StatusOr<Spec> ParseFormatSpec(const std::string& spec) {
  Spec s;
  size_t i = 0;
  auto is_align = [](char c) { return c == '<' || c == '>' || c == '^' || c == '='; };
  if (spec.size() >= 2 && is_align(spec[1]) && static_cast<unsigned char>(spec[0]) < 0x80) {
    s.fill = spec[0];
    s.align = spec[1];
    i = 2;
  } else if (!spec.empty() && is_align(spec[0])) {
    s.align = spec[0];
    i = 1;
  }
  if (i < spec.size() && (spec[i] == '+' || spec[i] == '-' || spec[i] == ' ')) {
    s.sign = spec[i] == '-' ? 0 : spec[i];
    ++i;
  }
  if (i < spec.size() && spec[i] == '#') {
    s.alt = true;
    ++i;
  }
  if (i < spec.size() && spec[i] == '0') {
    s.zero = true;
    ++i;
  }
  if (i < spec.size() && IsDigit(spec[i])) s.width = ReadNumber(spec, i);
  if (i < spec.size() && spec[i] == '.') {
    ++i;
    if (i >= spec.size() || !IsDigit(spec[i])) return InvalidArgumentError("Format specifier missing precision");
    s.precision = ReadNumber(spec, i);
  }
  if (i < spec.size()) s.type = spec[i++];
  if (i != spec.size()) return absl::UnimplementedError(absl::StrCat("unsupported format spec '", spec, "'"));
  return s;
}

}  // namespace

StatusOr<std::string> PyStrFormat(const std::string& fmt, const CallArgs& args) {
  std::string out;
  int auto_index = 0;
  bool used_auto = false, used_manual = false;
  size_t i = 0;
  while (i < fmt.size()) {
    const char c = fmt[i];
    if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
        out.push_back('}');
        i += 2;
        continue;
      }
      return InvalidArgumentError("Single '}' encountered in format string");
    }
    if (c != '{') {
      out.push_back(c);
      ++i;
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out.push_back('{');
      i += 2;
      continue;
    }
    const size_t close = fmt.find('}', i + 1);
    if (close == std::string::npos) return InvalidArgumentError("Single '{' encountered in format string");
    std::string field = fmt.substr(i + 1, close - i - 1);
    if (field.find('{') != std::string::npos) return absl::UnimplementedError("unsupported nested format fields");
    i = close + 1;
    std::string spec, conversion;
    if (size_t colon = field.find(':'); colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field.resize(colon);
    }
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      conversion = field.substr(bang + 1);
      field.resize(bang);
      if (conversion != "s" && conversion != "r") {
        return absl::UnimplementedError(absl::StrCat("unsupported format conversion '!", conversion, "'"));
      }
    }
    // field name: (index | name) ("." name | "[" key "]")*
    size_t k = 0;
    while (k < field.size() && field[k] != '.' && field[k] != '[') ++k;
    const std::string head = field.substr(0, k);
    Value v;
    if (head.empty() || std::all_of(head.begin(), head.end(), IsDigit)) {
      size_t index;
      if (head.empty()) {
        used_auto = true;
        index = static_cast<size_t>(auto_index++);
      } else {
        used_manual = true;
        index = head.size() > 6 ? SIZE_MAX : std::stoul(head);
      }
      if (used_auto && used_manual) {
        return InvalidArgumentError("cannot switch between automatic and manual field numbering");
      }
      if (index >= args.args.size()) {
        return InvalidArgumentError(absl::StrCat("Replacement index ", index, " out of range for positional args tuple"));
      }
      v = args.args[index];
    } else {
      const Value* found = nullptr;
      for (const auto& [key, value] : args.kwargs) {
        if (key == head) found = &value;
      }
      if (found == nullptr) return InvalidArgumentError(absl::StrCat("KeyError: '", head, "'"));
      v = *found;
    }
    while (k < field.size()) {
      if (field[k] == '.') {
        size_t e = k + 1;
        while (e < field.size() && field[e] != '.' && field[e] != '[') ++e;
        ASSIGN_OR_RETURN(v, GetAttr(v, field.substr(k + 1, e - k - 1)));
        k = e;
      } else {
        const size_t e = field.find(']', k);
        if (e == std::string::npos) return InvalidArgumentError("Missing ']' in format string");
        const std::string key = field.substr(k + 1, e - k - 1);
        const bool numeric = !key.empty() && key.size() < 18 && std::all_of(key.begin(), key.end(), IsDigit);
        ASSIGN_OR_RETURN(v, GetItem(v, numeric ? Value::Int(std::stoll(key)) : Value::Str(key)));
        k = e + 1;
      }
    }
    if (v.is_undefined() && !v.undefined_hint().empty()) return InvalidArgumentError(v.undefined_hint());
    if (!conversion.empty()) v = Value::Str(conversion == "r" ? PyRepr(v) : PyStr(v));
    ASSIGN_OR_RETURN(Spec s, ParseFormatSpec(spec));
    ASSIGN_OR_RETURN(std::string piece, FormatOne(v, s, false));
    out += piece;
  }
  return out;
}

StatusOr<std::string> PyPercentFormat(const std::string& fmt, const Value& args) {
  std::vector<Value> positional;
  const bool is_tuple = args.kind() == Kind::kTuple;
  if (is_tuple) {
    positional = args.items();
  } else {
    positional.push_back(args);
  }
  size_t next = 0;
  bool used_mapping = false;
  std::string out;
  size_t i = 0;
  while (i < fmt.size()) {
    if (fmt[i] != '%') {
      out.push_back(fmt[i++]);
      continue;
    }
    ++i;
    if (i >= fmt.size()) return InvalidArgumentError("incomplete format");
    Value v;
    bool have_value = false;
    if (fmt[i] == '(') {
      const size_t close = fmt.find(')', i);
      if (close == std::string::npos) return InvalidArgumentError("incomplete format key");
      if (!args.is_dict()) return InvalidArgumentError("format requires a mapping");
      const Value* found = args.dict().Find(fmt.substr(i + 1, close - i - 1));
      if (found == nullptr) return InvalidArgumentError(absl::StrCat("KeyError: '", fmt.substr(i + 1, close - i - 1), "'"));
      v = *found;
      have_value = true;
      used_mapping = true;
      i = close + 1;
    }
    Spec s;
    for (; i < fmt.size(); ++i) {
      const char f = fmt[i];
      if (f == '-') {
        s.align = '<';
      } else if (f == '+' || (f == ' ' && s.sign != '+')) {
        s.sign = f;
      } else if (f == '#') {
        s.alt = true;
      } else if (f == '0') {
        s.zero = true;
      } else {
        break;
      }
    }
    if (i < fmt.size() && fmt[i] == '*') return absl::UnimplementedError("unsupported '*' width in % formatting");
    if (i < fmt.size() && IsDigit(fmt[i])) s.width = ReadNumber(fmt, i);
    if (i < fmt.size() && fmt[i] == '.') {
      ++i;
      s.precision = ReadNumber(fmt, i);
    }
    while (i < fmt.size() && (fmt[i] == 'l' || fmt[i] == 'h' || fmt[i] == 'L')) ++i;
    if (i >= fmt.size()) return InvalidArgumentError("incomplete format");
    const char type = fmt[i++];
    if (type == '%') {
      out.push_back('%');
      continue;
    }
    if (std::string("sridiouxXeEfFgGc").find(type) == std::string::npos) {
      return absl::UnimplementedError(absl::StrCat("unsupported format character '", std::string(1, type), "'"));
    }
    if (!have_value) {
      if (next >= positional.size()) return InvalidArgumentError("not enough arguments for format string");
      v = positional[next++];
    }
    if (s.zero && s.align == '<') s.zero = false;
    s.type = type == 'u' ? 'd' : type;
    if (type == 's' || type == 'r') s.zero = false;
    ASSIGN_OR_RETURN(std::string piece, FormatOne(v, s, true));
    out += piece;
  }
  const bool consumed = used_mapping || next == positional.size() || (!is_tuple && args.is_dict());
  if (!consumed) return InvalidArgumentError("not all arguments converted during string formatting");
  return out;
}

}  // namespace deepshard::jinja
