// Values of the chat-template interpreter: the Python objects a Jinja template
// sees when Hugging Face `transformers` renders it, and the Python behaviours
// that decide the rendered bytes (str()/repr(), truthiness, ==, <, json.dumps).
//
// A `Value` is cheap to copy: strings, lists, dicts and functions are shared,
// immutable payloads (the template runs in Jinja's ImmutableSandboxedEnvironment,
// so nothing but a `namespace` can be changed after it is made). A namespace is
// the one mutable, shared object.
//
// Strings are UTF-8. Operations that Python defines on code points (len, [i],
// slicing, strip) decode to UTF-32 first. Bytes that are not valid UTF-8 are
// carried through as "surrogate escapes" (U+DC80 + byte) so that they come back
// out unchanged.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "boost/json.hpp"

namespace deepshard::jinja {

// Debian's Abseil has its own absl::string_view (not std::string_view); this
// bridges the two for absl::StrCat and heterogeneous hash-map lookups.
inline absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

class Renderer;  // jinja_renderer.h: the per-render interpreter state.
class Value;
class DictData;

// The Python type a value stands for. Tuples are lists that print with ().
enum class Kind : uint8_t {
  kUndefined,  // jinja2.Undefined: a missing variable, key or attribute
  kNone,
  kBool,
  kInt,  // 64-bit; Python's unbounded ints overflow into an error here
  kFloat,
  kString,
  kList,
  kTuple,
  kDict,       // string keys only, insertion-ordered like a Python dict
  kNamespace,  // jinja2's namespace(): mutable attributes, shared by reference
  kCallable,   // macros, globals such as range(), bound methods like s.strip
};

// Positional and keyword arguments of a call, already evaluated.
struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
};

// A callable value. `fn` gets the renderer so that macros can render and
// builtins can charge their work to the render budget.
using NativeFn = std::function<absl::StatusOr<Value>(Renderer&, CallArgs&)>;
struct Callable {
  std::string name;  // for messages: "range", "str.strip", "macro 'm'"
  NativeFn fn;
};

class Value {
 public:
  Value() = default;  // undefined, no hint

  // `hint` is the message an operation that needs a real value reports, e.g.
  // "'foo' is undefined" or "'dict object' has no attribute 'x'".
  static Value Undefined(std::string hint = {});
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  static Value Str(std::string s);
  static Value List(std::vector<Value> items);
  static Value Tuple(std::vector<Value> items);
  static Value Dict(DictData d);
  static Value Dict(std::shared_ptr<const DictData> d);
  static Value NewNamespace(DictData attrs);
  static Value Function(std::string name, NativeFn fn);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list_like() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  // int, float or bool (Python's bool is an int).
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool; }
  // int or bool.
  bool is_integral() const { return kind_ == Kind::kInt || kind_ == Kind::kBool; }

  bool as_bool() const { return b_; }
  // For kInt and kBool.
  int64_t as_int() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }
  // For any number.
  double as_double() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(as_int()); }
  const std::string& as_string() const;
  const std::vector<Value>& items() const;  // list or tuple
  const DictData& dict() const;
  DictData& ns_attrs() const;  // namespace attributes (mutable: namespaces are shared)
  const Callable& callable() const;
  const std::string& undefined_hint() const;
  // Identity of a shared payload (namespaces, functions), for `is sameas`.
  const void* identity() const { return ptr_.get(); }
  // Nesting depth: 0 for scalars, 1 + the deepest item for lists, tuples and
  // dicts; 1 for namespaces (their contents change after construction).
  int depth() const { return depth_; }

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  uint16_t depth_ = 0;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<void> ptr_;  // string, vector<Value>, DictData, Callable, hint
};

// An insertion-ordered map from string keys to values (a Python dict, or the
// attributes of a namespace).
class DictData {
 public:
  const Value* Find(std::string_view key) const;
  // Inserts, or overwrites in place (keeping the key's position).
  void Set(std::string key, Value value);
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }

 private:
  std::vector<std::pair<std::string, Value>> items_;
  absl::flat_hash_map<std::string, size_t> index_;
};

// ---------------------------------------------------------------------------
// Python semantics
// ---------------------------------------------------------------------------

// Python's type(x).__name__ ("str", "NoneType", ...; "Undefined" for undefined).
std::string TypeName(const Value& v);

// bool(x). Undefined is false.
bool Truthy(const Value& v);

// str(x): what {{ x }} prints. Undefined prints as "", None as "None", floats
// as Python's repr ("1.0", "1e-05"), containers as Python's repr of them.
// Text that str()/repr()/json.dumps() of a container, or a string built by the
// built-ins (replace), may reach before building stops: the renderer sets it to
// RenderLimits::max_string_bytes + 1 for the duration of a render (ReprCapScope),
// so that an oversized result stops growing there and is then refused by the
// renderer's size check with an error naming the limit (rather than allocating
// gigabytes first). Unlimited outside a render.
size_t ReprCap();
class ReprCapScope {
 public:
  explicit ReprCapScope(size_t cap);
  ~ReprCapScope();
  ReprCapScope(const ReprCapScope&) = delete;
  ReprCapScope& operator=(const ReprCapScope&) = delete;

 private:
  size_t saved_;
};

std::string PyStr(const Value& v);
// repr(x).
std::string PyRepr(const Value& v);
// repr() of a float.
std::string FloatRepr(double d);

// x == y. Undefined equals only undefined; 1 == 1.0 == True.
bool PyEquals(const Value& a, const Value& b);
// x < y: numbers, strings, and lists/tuples of comparable items. Other pairs
// are a TypeError (returned as an error without a position).
absl::StatusOr<bool> PyLess(const Value& a, const Value& b);
// x in container (str: substring; list/tuple: ==; dict: key; undefined: false).
absl::StatusOr<bool> PyContains(const Value& container, const Value& x);

// Python's json.dumps, as transformers' `tojson` filter calls it.
struct JsonDumpOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // nullopt: single line
  std::optional<std::string> item_separator;  // default ", " (or "," with indent)
  std::string key_separator = ": ";
  bool sort_keys = false;
};
absl::StatusOr<std::string> JsonDumps(const Value& v, const JsonDumpOptions& options);

// Converts request JSON into template values (null -> None, objects -> dicts).
// Nesting deeper than `max_depth` is an error.
absl::StatusOr<Value> FromJson(const boost::json::value& json, int max_depth = 256);

// ---------------------------------------------------------------------------
// Unicode helpers (Python's str semantics on UTF-8)
// ---------------------------------------------------------------------------
namespace utf8 {
// Decodes UTF-8; an invalid byte b becomes U+DC80+b (a surrogate escape).
std::u32string Decode(std::string_view s);
// Encodes; surrogate escapes become their original byte again.
std::string Encode(std::u32string_view s);
void Append(std::string& out, char32_t c);
size_t Length(std::string_view s);  // number of code points
}  // namespace utf8

// str.isspace() for one code point.
bool PyIsSpace(char32_t c);

// Python's full case mappings (Unicode SpecialCasing, the final-sigma rule),
// through ICU's root locale (jinja_unicode.cc). Surrogate escapes stay as is.
std::string PyUpper(std::string_view s);
std::string PyLower(std::string_view s);
std::string PyTitle(std::string_view s);       // str.title()
std::string PyCapitalize(std::string_view s);  // str.capitalize()

// Character properties behind Python's str.is*() and repr().
bool IsCasedChar(char32_t c);      // Cased
bool IsUpperChar(char32_t c);      // Uppercase
bool IsLowerChar(char32_t c);      // Lowercase
bool IsTitleChar(char32_t c);      // category Lt
bool IsAlphaChar(char32_t c);      // categories L*
bool IsDecimalChar(char32_t c);    // Numeric_Type=Decimal
bool IsDigitChar(char32_t c);      // Numeric_Type=Decimal or Digit
bool IsNumericChar(char32_t c);    // any Numeric_Type
bool IsPrintableChar(char32_t c);  // str.isprintable()

}  // namespace deepshard::jinja
