// JsonNode: a Boost.JSON value together with the file it came from and its JSON path,
// so that every error names both ("tokenizer.json: model.merges[3]: ...") (internal).
// Accessors never throw: wrong types and missing keys become absl::Status errors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <boost/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "text/tokenizer/string_util.h"

namespace deepshard::tokenizer_internal {

class JsonNode {
 public:
  JsonNode(const boost::json::value* value, std::string file, std::string path)
      : value_(value), file_(std::move(file)), path_(std::move(path)) {}

  const boost::json::value* value() const { return value_; }
  const std::string& path() const { return path_; }
  const std::string& file() const { return file_; }
  bool missing() const { return value_ == nullptr; }
  bool is_null() const { return value_ == nullptr || value_->is_null(); }

  // Member `key` of an object (missing when absent or when this is not an object).
  JsonNode operator[](std::string_view key) const {
    const boost::json::value* child = nullptr;
    if (value_ != nullptr) {
      if (const auto* obj = value_->if_object()) {
        auto it = obj->find(key);
        if (it != obj->end()) child = &it->value();
      }
    }
    return JsonNode(child, file_, path_.empty() ? std::string(key) : absl::StrCat(path_, ".", AsAbsl(key)));
  }

  // Element `i` of an array.
  JsonNode operator[](size_t i) const {
    const boost::json::value* child = nullptr;
    if (value_ != nullptr) {
      if (const auto* arr = value_->if_array(); arr != nullptr && i < arr->size()) child = &(*arr)[i];
    }
    return JsonNode(child, file_, absl::StrCat(path_, "[", i, "]"));
  }

  absl::Status Error(std::string_view message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(file_, ": ", path_.empty() ? "(top level)" : path_, ": ", AsAbsl(message)));
  }

  absl::StatusOr<const boost::json::object*> Object() const {
    if (value_ == nullptr) return Error("missing (expected an object)");
    if (const auto* o = value_->if_object()) return o;
    return Error(absl::StrCat("expected an object, got ", Kind()));
  }
  absl::StatusOr<const boost::json::array*> Array() const {
    if (value_ == nullptr) return Error("missing (expected an array)");
    if (const auto* a = value_->if_array()) return a;
    return Error(absl::StrCat("expected an array, got ", Kind()));
  }
  absl::StatusOr<std::string> String() const {
    if (value_ == nullptr) return Error("missing (expected a string)");
    if (const auto* s = value_->if_string()) return std::string(s->data(), s->size());
    return Error(absl::StrCat("expected a string, got ", Kind()));
  }
  // A string, or `fallback` when the key is absent or null.
  absl::StatusOr<std::string> StringOr(std::string fallback) const {
    if (is_null()) return fallback;
    return String();
  }
  absl::StatusOr<bool> BoolOr(bool fallback) const {
    if (is_null()) return fallback;
    if (const auto* b = value_->if_bool()) return *b;
    return Error(absl::StrCat("expected a boolean, got ", Kind()));
  }
  absl::StatusOr<int64_t> Int() const {
    if (value_ == nullptr) return Error("missing (expected an integer)");
    if (const auto* i = value_->if_int64()) return *i;
    if (const auto* u = value_->if_uint64()) {
      if (*u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(*u);
    }
    return Error(absl::StrCat("expected an integer, got ", Kind()));
  }
  absl::StatusOr<int64_t> IntOr(int64_t fallback) const {
    if (is_null()) return fallback;
    return Int();
  }
  absl::StatusOr<double> NumberOr(double fallback) const {
    if (is_null()) return fallback;
    if (const auto* d = value_->if_double()) return *d;
    if (const auto* i = value_->if_int64()) return static_cast<double>(*i);
    if (const auto* u = value_->if_uint64()) return static_cast<double>(*u);
    return Error(absl::StrCat("expected a number, got ", Kind()));
  }

  const char* Kind() const {
    if (value_ == nullptr) return "nothing";
    switch (value_->kind()) {
      case boost::json::kind::null: return "null";
      case boost::json::kind::bool_: return "a boolean";
      case boost::json::kind::int64:
      case boost::json::kind::uint64: return "an integer";
      case boost::json::kind::double_: return "a number";
      case boost::json::kind::string: return "a string";
      case boost::json::kind::array: return "an array";
      case boost::json::kind::object: return "an object";
    }
    return "a value";
  }

 private:
  const boost::json::value* value_;
  std::string file_;
  std::string path_;
};

}  // namespace deepshard::tokenizer_internal
