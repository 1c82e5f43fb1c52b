// Built-ins of the chat-template interpreter: filters, tests, global functions,
// methods of str/dict/list, and jinja2's sandboxed attribute and item lookup.
// The list of what is implemented is in chat_template.h and
// docs/chat-templates.md.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "text/chat/jinja_value.h"

namespace deepshard::jinja {

// `value | name(args)`. Errors carry no position; the renderer adds it.
using FilterFn = absl::StatusOr<Value> (*)(Renderer& r, const Value& value, CallArgs& args);
// `value is name(args)`.
using TestFn = absl::StatusOr<bool> (*)(Renderer& r, const Value& value, CallArgs& args);

// nullptr when the filter / test is not implemented.
FilterFn FindFilter(std::string_view name);
TestFn FindTest(std::string_view name);

// obj.name, as jinja2's sandbox resolves it: a method of str/dict/list (bound
// to obj), else a dict key or namespace attribute, else undefined. Undefined
// obj is an error; modifying methods (list.append, dict.update, ...) are
// errors as in ImmutableSandboxedEnvironment.
absl::StatusOr<Value> GetAttr(const Value& obj, std::string_view name);
// obj[key]: dict key, list/str index (negative from the end), else the
// attribute of that name, else undefined.
absl::StatusOr<Value> GetItem(const Value& obj, const Value& key);
// obj[start:stop:step] on str, list and tuple (missing parts are None).
absl::StatusOr<Value> GetSlice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// Python iteration: list/tuple items, dict keys, str characters; undefined
// iterates as empty. Other types are an error.
absl::StatusOr<std::vector<Value>> Iterate(const Value& v);

// Python's str.format: fields {}, {0}, {name}, with .attr / [key] lookups,
// !s / !r, and specs [[fill]align][sign][#][0][width][.precision][type] with
// types s d x X o f F e E g G %.
absl::StatusOr<std::string> PyStrFormat(const std::string& fmt, const CallArgs& args);
// Python's printf-style `fmt % args`: %s %r %d %i %u %o %x %X %e %E %f %F %g %G
// %c %%, %(key)s with a dict, flags - + space # 0, width and precision.
absl::StatusOr<std::string> PyPercentFormat(const std::string& fmt, const Value& args);

// The global functions: range, dict, namespace, raise_exception, strftime_now.
void AddGlobals(DictData& globals);

}  // namespace deepshard::jinja
