// Python semantics of chat-template values: str()/repr(), equality, ordering,
// json.dumps and the Unicode helpers behind them.
#include "text/chat/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace deepshard::jinja {
namespace {

// str()/repr()/== of containers recurse; values nested deeper than this are
// printed as "..." and compared by identity instead (Python would raise
// RecursionError much later, around depth 1000).
constexpr int kMaxReprDepth = 200;

const std::string& EmptyString() {
  static const std::string* const empty = new std::string();
  return *empty;
}

}  // namespace

// ---------------------------------------------------------------------------
// Value
// ---------------------------------------------------------------------------

Value Value::Undefined(std::string hint) {
  Value v;
  if (!hint.empty()) v.ptr_ = std::make_shared<std::string>(std::move(hint));
  return v;
}
Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}
Value Value::Float(double f) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = f;
  return v;
}
Value Value::Str(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.ptr_ = std::make_shared<std::string>(std::move(s));
  return v;
}
Value Value::List(std::vector<Value> items) {
  Value v;
  v.kind_ = Kind::kList;
  int depth = 0;
  for (const Value& item : items) depth = std::max(depth, item.depth());
  v.depth_ = static_cast<uint16_t>(std::min(depth + 1, 65535));
  v.ptr_ = std::make_shared<std::vector<Value>>(std::move(items));
  return v;
}
Value Value::Tuple(std::vector<Value> items) {
  Value v = List(std::move(items));
  v.kind_ = Kind::kTuple;
  return v;
}
Value Value::Dict(DictData d) { return Dict(std::make_shared<const DictData>(std::move(d))); }
Value Value::Dict(std::shared_ptr<const DictData> d) {
  Value v;
  v.kind_ = Kind::kDict;
  int depth = 0;
  for (const auto& item : d->items()) depth = std::max(depth, item.second.depth());
  v.depth_ = static_cast<uint16_t>(std::min(depth + 1, 65535));
  v.ptr_ = std::const_pointer_cast<DictData>(std::move(d));
  return v;
}
Value Value::NewNamespace(DictData attrs) {
  Value v;
  v.kind_ = Kind::kNamespace;
  v.depth_ = 1;
  v.ptr_ = std::make_shared<DictData>(std::move(attrs));
  return v;
}
Value Value::Function(std::string name, NativeFn fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.ptr_ = std::make_shared<Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

const std::string& Value::as_string() const { return *static_cast<const std::string*>(ptr_.get()); }
const std::vector<Value>& Value::items() const { return *static_cast<const std::vector<Value>*>(ptr_.get()); }
const DictData& Value::dict() const { return *static_cast<const DictData*>(ptr_.get()); }
DictData& Value::ns_attrs() const { return *static_cast<DictData*>(ptr_.get()); }
const Callable& Value::callable() const { return *static_cast<const Callable*>(ptr_.get()); }
const std::string& Value::undefined_hint() const {
  return ptr_ ? *static_cast<const std::string*>(ptr_.get()) : EmptyString();
}

const Value* DictData::Find(std::string_view key) const {
  auto it = index_.find(AV(key));
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

void DictData::Set(std::string key, Value value) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    items_[it->second].second = std::move(value);
    return;
  }
  index_.emplace(key, items_.size());
  items_.emplace_back(std::move(key), std::move(value));
}

// ---------------------------------------------------------------------------
// Unicode
// ---------------------------------------------------------------------------
namespace utf8 {

std::u32string Decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    int len = 0;
    char32_t cp = 0;
    char32_t min = 0;
    if ((b0 & 0xE0) == 0xC0) {
      len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4, cp = b0 & 0x07, min = 0x10000;
    }
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (b & 0x3F);
    }
    // Surrogates are accepted (WTF-8) so that Encode(Decode(x)) == x for them too.
    if (ok && cp >= min && cp <= 0x10FFFF) {
      out.push_back(cp);
      i += len;
    } else {
      out.push_back(0xDC80 + b0);  // surrogate escape
      ++i;
    }
  }
  return out;
}

void Append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c >= 0xDC80 && c <= 0xDCFF) {
    out.push_back(static_cast<char>(c - 0xDC00));  // surrogate escape: the original byte
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string Encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) Append(out, c);
  return out;
}

size_t Length(std::string_view s) {
  bool ascii = true;
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  return ascii ? s.size() : Decode(s).size();
}

}  // namespace utf8

bool PyIsSpace(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  if (c < 0x85) return false;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// ---------------------------------------------------------------------------
// str() and repr()
// ---------------------------------------------------------------------------

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  // Shortest round-trip digits, as Python's repr uses.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string_view s(buf, res.ptr - buf);
  std::string out;
  if (!s.empty() && s[0] == '-') {
    out.push_back('-');
    s.remove_prefix(1);
  }
  const size_t e = s.find('e');
  std::string digits;
  for (char c : s.substr(0, e)) {
    if (c != '.') digits.push_back(c);
  }
  const int exp = std::atoi(std::string(s.substr(e + 1)).c_str());
  if (exp < -4 || exp >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) absl::StrAppend(&out, ".", digits.substr(1));
    out += exp < 0 ? "e-" : "e+";
    const int a = std::abs(exp);
    if (a < 10) out.push_back('0');
    out += std::to_string(a);
  } else if (exp >= 0) {
    const size_t int_digits = static_cast<size_t>(exp) + 1;
    if (digits.size() <= int_digits) {
      absl::StrAppend(&out, digits, std::string(int_digits - digits.size(), '0'), ".0");
    } else {
      absl::StrAppend(&out, digits.substr(0, int_digits), ".", digits.substr(int_digits));
    }
  } else {
    absl::StrAppend(&out, "0.", std::string(-exp - 1, '0'), digits);
  }
  return out;
}

namespace {

void AppendStringRepr(std::string& out, const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  out.push_back(quote);
  char buf[16];
  for (char32_t c : utf8::Decode(s)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (IsPrintableChar(c)) {
      utf8::Append(out, c);
    } else if (c < 0x100) {
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(c));
      out += buf;
    } else if (c < 0x10000) {
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(c));
      out += buf;
    }
  }
  out.push_back(quote);
}

thread_local size_t repr_cap = SIZE_MAX;

void AppendRepr(std::string& out, const Value& v, int depth);

void AppendStr(std::string& out, const Value& v, int depth) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return;
    case Kind::kString:
      out += v.as_string();
      return;
    default:
      AppendRepr(out, v, depth);
  }
}

void AppendRepr(std::string& out, const Value& v, int depth) {
  if (out.size() > repr_cap) return;  // the caller's size check refuses it
  if (depth > kMaxReprDepth) {
    out += "...";
    return;
  }
  switch (v.kind()) {
    case Kind::kUndefined:
      return;  // str(Undefined) is "", and so is what Jinja shows for it
    case Kind::kNone:
      out += "None";
      return;
    case Kind::kBool:
      out += v.as_bool() ? "True" : "False";
      return;
    case Kind::kInt:
      out += std::to_string(v.as_int());
      return;
    case Kind::kFloat:
      out += FloatRepr(v.as_double());
      return;
    case Kind::kString:
      AppendStringRepr(out, v.as_string());
      return;
    case Kind::kList:
    case Kind::kTuple: {
      const bool tuple = v.kind() == Kind::kTuple;
      out.push_back(tuple ? '(' : '[');
      const auto& items = v.items();
      for (size_t i = 0; i < items.size(); ++i) {
        if (out.size() > repr_cap) break;
        if (i) out += ", ";
        AppendRepr(out, items[i], depth + 1);
      }
      if (tuple && items.size() == 1) out.push_back(',');
      out.push_back(tuple ? ')' : ']');
      return;
    }
    case Kind::kDict:
    case Kind::kNamespace: {
      const DictData& d = v.kind() == Kind::kDict ? v.dict() : v.ns_attrs();
      if (v.kind() == Kind::kNamespace) out += "<Namespace ";
      out.push_back('{');
      bool first = true;
      for (const auto& [k, item] : d.items()) {
        if (out.size() > repr_cap) break;
        if (!first) out += ", ";
        first = false;
        AppendStringRepr(out, k);
        out += ": ";
        AppendRepr(out, item, depth + 1);
      }
      out.push_back('}');
      if (v.kind() == Kind::kNamespace) out.push_back('>');
      return;
    }
    case Kind::kCallable:
      absl::StrAppend(&out, "<function ", v.callable().name, ">");
      return;
  }
}

}  // namespace

size_t ReprCap() { return repr_cap; }
ReprCapScope::ReprCapScope(size_t cap) : saved_(repr_cap) { repr_cap = cap; }
ReprCapScope::~ReprCapScope() { repr_cap = saved_; }

std::string PyStr(const Value& v) {
  if (v.is_string()) return v.as_string();
  std::string out;
  AppendStr(out, v, 0);
  return out;
}

std::string PyRepr(const Value& v) {
  std::string out;
  AppendRepr(out, v, 0);
  return out;
}

std::string TypeName(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kNone: return "NoneType";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kList: return "list";
    case Kind::kTuple: return "tuple";
    case Kind::kDict: return "dict";
    case Kind::kNamespace: return "Namespace";
    case Kind::kCallable: return "function";
  }
  return "object";
}

bool Truthy(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
    case Kind::kNone: return false;
    case Kind::kBool: return v.as_bool();
    case Kind::kInt: return v.as_int() != 0;
    case Kind::kFloat: return v.as_double() != 0.0;
    case Kind::kString: return !v.as_string().empty();
    case Kind::kList:
    case Kind::kTuple: return !v.items().empty();
    case Kind::kDict: return !v.dict().empty();
    case Kind::kNamespace:
    case Kind::kCallable: return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------
namespace {

bool EqualsAt(const Value& a, const Value& b, int depth) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind() != b.kind()) return false;
  if (depth > kMaxReprDepth) return a.identity() == b.identity();
  switch (a.kind()) {
    case Kind::kUndefined:
    case Kind::kNone: return true;
    case Kind::kString: return a.as_string() == b.as_string();
    case Kind::kList:
    case Kind::kTuple: {
      const auto& x = a.items();
      const auto& y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!EqualsAt(x[i], y[i], depth + 1)) return false;
      }
      return true;
    }
    case Kind::kDict: {
      const DictData& x = a.dict();
      const DictData& y = b.dict();
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x.items()) {
        const Value* w = y.Find(k);
        if (w == nullptr || !EqualsAt(v, *w, depth + 1)) return false;
      }
      return true;
    }
    default: return a.identity() == b.identity();
  }
}

absl::StatusOr<bool> LessAt(const Value& a, const Value& b, int depth) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() < b.as_int();
    return a.as_double() < b.as_double();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();  // UTF-8 order = code point order
  if (a.kind() == b.kind() && a.is_list_like() && depth <= kMaxReprDepth) {
    const auto& x = a.items();
    const auto& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!EqualsAt(x[i], y[i], depth + 1)) return LessAt(x[i], y[i], depth + 1);
    }
    return x.size() < y.size();
  }
  if (a.is_undefined()) return absl::InvalidArgumentError(a.undefined_hint().empty() ? "value is undefined" : a.undefined_hint());
  if (b.is_undefined()) return absl::InvalidArgumentError(b.undefined_hint().empty() ? "value is undefined" : b.undefined_hint());
  return absl::InvalidArgumentError(
      absl::StrCat("'<' not supported between instances of '", TypeName(a), "' and '", TypeName(b), "'"));
}

}  // namespace

bool PyEquals(const Value& a, const Value& b) { return EqualsAt(a, b, 0); }

absl::StatusOr<bool> PyLess(const Value& a, const Value& b) { return LessAt(a, b, 0); }

absl::StatusOr<bool> PyContains(const Value& container, const Value& x) {
  switch (container.kind()) {
    case Kind::kString:
      if (!x.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("'in <string>' requires string as left operand, not ", TypeName(x)));
      }
      return container.as_string().find(x.as_string()) != std::string::npos;
    case Kind::kList:
    case Kind::kTuple:
      for (const Value& item : container.items()) {
        if (PyEquals(item, x)) return true;
      }
      return false;
    case Kind::kDict:
      if (x.is_list_like() || x.is_dict()) {
        return absl::InvalidArgumentError(absl::StrCat("unhashable type: '", TypeName(x), "'"));
      }
      return x.is_string() && container.dict().Find(x.as_string()) != nullptr;
    case Kind::kUndefined:
      return false;  // iterating an Undefined yields nothing
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("argument of type '", TypeName(container), "' is not iterable"));
  }
}

// ---------------------------------------------------------------------------
// json.dumps
// ---------------------------------------------------------------------------
namespace {

void AppendJsonString(std::string& out, const std::string& s, bool ensure_ascii) {
  out.push_back('"');
  char buf[16];
  auto escape_unit = [&](unsigned u) {
    std::snprintf(buf, sizeof(buf), "\\u%04x", u);
    out += buf;
  };
  auto plain = [&](char32_t c) -> bool {
    switch (c) {
      case '"': out += "\\\""; return true;
      case '\\': out += "\\\\"; return true;
      case '\n': out += "\\n"; return true;
      case '\r': out += "\\r"; return true;
      case '\t': out += "\\t"; return true;
      case '\b': out += "\\b"; return true;
      case '\f': out += "\\f"; return true;
      default: return false;
    }
  };
  if (!ensure_ascii) {
    // Only the ASCII specials are escaped; every other byte passes through.
    for (char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      if (plain(c)) continue;
      if (c < 0x20) {
        escape_unit(c);
      } else {
        out.push_back(ch);
      }
    }
  } else {
    for (char32_t c : utf8::Decode(s)) {
      if (plain(c)) continue;
      if (c >= 0x20 && c < 0x7F) {
        out.push_back(static_cast<char>(c));
      } else if (c < 0x10000) {
        escape_unit(c);
      } else {
        const char32_t v = c - 0x10000;
        escape_unit(0xD800 | (v >> 10));
        escape_unit(0xDC00 | (v & 0x3FF));
      }
    }
  }
  out.push_back('"');
}

absl::Status TooLong(size_t bytes) {
  return absl::ResourceExhaustedError(absl::StrCat("tojson: output of more than ", bytes,
                                                   " bytes exceeds the limit of ", repr_cap - 1,
                                                   " bytes (RenderLimits::max_string_bytes)"));
}

absl::Status DumpAt(std::string& out, const Value& v, const JsonDumpOptions& o, const std::string& item_sep,
                    int level) {
  if (level > kMaxReprDepth) return absl::InvalidArgumentError("tojson: value nested too deeply");
  if (out.size() > repr_cap) return TooLong(out.size());
  switch (v.kind()) {
    case Kind::kNone: out += "null"; return absl::OkStatus();
    case Kind::kBool: out += v.as_bool() ? "true" : "false"; return absl::OkStatus();
    case Kind::kInt: out += std::to_string(v.as_int()); return absl::OkStatus();
    case Kind::kFloat: {
      const double d = v.as_double();
      if (std::isnan(d)) {
        out += "NaN";
      } else if (std::isinf(d)) {
        out += d > 0 ? "Infinity" : "-Infinity";
      } else {
        out += FloatRepr(d);
      }
      return absl::OkStatus();
    }
    case Kind::kString: AppendJsonString(out, v.as_string(), o.ensure_ascii); return absl::OkStatus();
    case Kind::kList:
    case Kind::kTuple: {
      const auto& items = v.items();
      if (items.empty()) {
        out += "[]";
        return absl::OkStatus();
      }
      out.push_back('[');
      std::string newline_indent;
      if (o.indent) {
        if (o.indent->size() * static_cast<size_t>(level + 1) > repr_cap) {
          return TooLong(o.indent->size() * static_cast<size_t>(level + 1));
        }
        newline_indent = "\n";
        for (int i = 0; i <= level; ++i) newline_indent += *o.indent;
        out += newline_indent;
      }
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) absl::StrAppend(&out, item_sep, newline_indent);
        absl::Status st = DumpAt(out, items[i], o, item_sep, level + 1);
        if (!st.ok()) return st;
      }
      if (o.indent) {
        out.push_back('\n');
        for (int i = 0; i < level; ++i) out += *o.indent;
      }
      out.push_back(']');
      return absl::OkStatus();
    }
    case Kind::kDict: {
      const DictData& d = v.dict();
      if (d.empty()) {
        out += "{}";
        return absl::OkStatus();
      }
      std::vector<const std::pair<std::string, Value>*> entries;
      entries.reserve(d.size());
      for (const auto& e : d.items()) entries.push_back(&e);
      if (o.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
      }
      out.push_back('{');
      std::string newline_indent;
      if (o.indent) {
        if (o.indent->size() * static_cast<size_t>(level + 1) > repr_cap) {
          return TooLong(o.indent->size() * static_cast<size_t>(level + 1));
        }
        newline_indent = "\n";
        for (int i = 0; i <= level; ++i) newline_indent += *o.indent;
        out += newline_indent;
      }
      bool first = true;
      for (const auto* e : entries) {
        if (!first) absl::StrAppend(&out, item_sep, newline_indent);
        first = false;
        AppendJsonString(out, e->first, o.ensure_ascii);
        out += o.key_separator;
        absl::Status st = DumpAt(out, e->second, o, item_sep, level + 1);
        if (!st.ok()) return st;
      }
      if (o.indent) {
        out.push_back('\n');
        for (int i = 0; i < level; ++i) out += *o.indent;
      }
      out.push_back('}');
      return absl::OkStatus();
    }
    default:
      if (v.is_undefined() && !v.undefined_hint().empty()) return absl::InvalidArgumentError(v.undefined_hint());
      return absl::InvalidArgumentError(
          absl::StrCat("tojson: Object of type ", TypeName(v), " is not JSON serializable"));
  }
}

}  // namespace

absl::StatusOr<std::string> JsonDumps(const Value& v, const JsonDumpOptions& options) {
  const std::string item_sep = options.item_separator ? *options.item_separator : (options.indent ? "," : ", ");
  std::string out;
  absl::Status st = DumpAt(out, v, options, item_sep, 0);
  if (!st.ok()) return st;
  return out;
}

// ---------------------------------------------------------------------------
// JSON input
// ---------------------------------------------------------------------------

absl::StatusOr<Value> FromJson(const boost::json::value& json, int max_depth) {
  if (max_depth < 0) return absl::InvalidArgumentError("chat template input: JSON nested too deeply");
  switch (json.kind()) {
    case boost::json::kind::null: return Value::None();
    case boost::json::kind::bool_: return Value::Bool(json.get_bool());
    case boost::json::kind::int64: return Value::Int(json.get_int64());
    case boost::json::kind::uint64: {
      const uint64_t u = json.get_uint64();
      if (u > static_cast<uint64_t>(INT64_MAX)) {
        return absl::InvalidArgumentError(absl::StrCat("chat template input: integer ", u, " is too large"));
      }
      return Value::Int(static_cast<int64_t>(u));
    }
    case boost::json::kind::double_: return Value::Float(json.get_double());
    case boost::json::kind::string: return Value::Str(std::string(json.get_string()));
    case boost::json::kind::array: {
      std::vector<Value> items;
      items.reserve(json.get_array().size());
      for (const auto& item : json.get_array()) {
        auto v = FromJson(item, max_depth - 1);
        if (!v.ok()) return v.status();
        items.push_back(std::move(*v));
      }
      return Value::List(std::move(items));
    }
    case boost::json::kind::object: {
      DictData d;
      for (const auto& kv : json.get_object()) {
        auto v = FromJson(kv.value(), max_depth - 1);
        if (!v.ok()) return v.status();
        d.Set(std::string(kv.key()), std::move(*v));
      }
      return Value::Dict(std::move(d));
    }
  }
  return absl::InvalidArgumentError("chat template input: unknown JSON kind");
}

}  // namespace deepshard::jinja
