#include "text/structured/json_schema.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "boost/json/serialize.hpp"
#include "boost/json/string.hpp"

namespace deepshard::structured {

namespace json = ::boost::json;
using structured_internal::GrammarNode;
using structured_internal::LiteralTrie;
using structured_internal::NodeKind;
using structured_internal::Property;

namespace structured_internal {

void LiteralTrie::Insert(std::string_view s, int32_t value) {
  int32_t node = 0;
  for (char ch : s) {
    const auto b = static_cast<uint8_t>(ch);
    int32_t next = Child(node, b);
    if (next < 0) {
      next = static_cast<int32_t>(nodes.size());
      nodes[static_cast<size_t>(node)].children.emplace_back(b, next);
      nodes.emplace_back();
    }
    node = next;
  }
  if (nodes[static_cast<size_t>(node)].value < 0) nodes[static_cast<size_t>(node)].value = value;
}

std::shared_ptr<const std::vector<uint64_t>> MaskCache::Find(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = map_.find(key);
  return it == map_.end() ? nullptr : it->second;
}

void MaskCache::Insert(std::string key, std::shared_ptr<const std::vector<uint64_t>> mask) {
  std::lock_guard<std::mutex> lock(mu_);
  if (map_.size() >= max_entries_) map_.clear();
  map_.emplace(std::move(key), std::move(mask));
}

}  // namespace structured_internal

namespace {

const absl::flat_hash_set<std::string_view>& Annotations() {
  static const auto* s = new absl::flat_hash_set<std::string_view>{
      "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
      "readOnly", "writeOnly", "$defs", "definitions"};
  return *s;
}

const absl::flat_hash_set<std::string_view>& Structural() {
  static const auto* s = new absl::flat_hash_set<std::string_view>{
      "type", "properties", "required", "additionalProperties", "enum", "const", "items", "minItems",
      "maxItems", "minLength", "maxLength", "anyOf", "oneOf", "allOf", "$ref"};
  return *s;
}

std::string EscapePointerToken(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Debian's Abseil has its own string_view: StrCat takes std::string_view through this.
absl::string_view A(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string ShowPointer(const std::string& ptr) { return ptr.empty() ? "the root" : ptr; }

}  // namespace

class SchemaCompiler {
 public:
  SchemaCompiler(const json::value& root, const JsonGrammarOptions& options, JsonGrammar* g)
      : root_(root), options_(options), g_(g) {}

  absl::Status Run() {
    g_->max_whitespace_ = std::max(0, options_.max_whitespace);
    g_->cache_ = std::make_unique<structured_internal::MaskCache>(options_.max_cached_masks);
    g_->key_string_ = NewNode(NodeKind::kString);
    ASSIGN_OR_RETURN(g_->root_, Compile(root_, ""));
    return Finish();
  }

  // json_object mode: an object with any keys and any values.
  void RunAnyObject() {
    g_->max_whitespace_ = std::max(0, options_.max_whitespace);
    g_->cache_ = std::make_unique<structured_internal::MaskCache>(options_.max_cached_masks);
    g_->key_string_ = NewNode(NodeKind::kString);
    const int32_t any = AnyValue();
    const int32_t obj = NewNode(NodeKind::kObject);
    node(obj).additional = any;
    g_->root_ = obj;
    (void)Finish();
  }

 private:
  GrammarNode& node(int32_t id) { return g_->nodes_[static_cast<size_t>(id)]; }

  int32_t NewNode(NodeKind kind) {
    g_->nodes_.emplace_back();
    g_->nodes_.back().kind = kind;
    return static_cast<int32_t>(g_->nodes_.size() - 1);
  }

  absl::Status Error(std::string_view what, const std::string& ptr) {
    return absl::InvalidArgumentError(absl::StrCat(options_.error_context, ": ", A(what), " at ", ShowPointer(ptr)));
  }
  absl::Status Unsupported(std::string_view keyword, const std::string& ptr) {
    return Error(absl::StrCat("unsupported keyword '", A(keyword), "'"), ptr);
  }

  int32_t Literals(const std::vector<std::string>& values) {
    const int32_t id = NewNode(NodeKind::kLiterals);
    for (size_t i = 0; i < values.size(); ++i) node(id).literals.Insert(values[i], static_cast<int32_t>(i));
    return id;
  }

  // Any JSON value (memoized; the object and array inside refer back to it).
  int32_t AnyValue() {
    if (any_ >= 0) return any_;
    any_ = NewNode(NodeKind::kUnion);
    const int32_t obj = NewNode(NodeKind::kObject);
    node(obj).additional = any_;
    const int32_t arr = NewNode(NodeKind::kArray);
    node(arr).items = any_;
    const int32_t str = NewNode(NodeKind::kString);
    const int32_t num = NewNode(NodeKind::kNumber);
    const int32_t lit = Literals({"true", "false", "null"});
    node(any_).alternatives = {obj, arr, str, num, lit};
    return any_;
  }

  absl::StatusOr<int32_t> NonNegative(const json::object& o, std::string_view key, const std::string& ptr,
                                      int32_t absent) {
    const json::value* v = o.if_contains(key);
    if (v == nullptr) return absent;
    double d = -1;
    if (v->is_int64()) {
      d = static_cast<double>(v->as_int64());
    } else if (v->is_uint64()) {
      d = static_cast<double>(v->as_uint64());
    } else if (v->is_double() && std::floor(v->as_double()) == v->as_double()) {
      d = v->as_double();
    }
    if (d < 0) return Error(absl::StrCat("'", A(key), "' must be a non-negative integer"), ptr);
    return static_cast<int32_t>(std::min(d, static_cast<double>(std::numeric_limits<int32_t>::max())));
  }

  absl::StatusOr<int32_t> Compile(const json::value& v, const std::string& ptr) {
    if (v.is_bool()) {
      if (v.as_bool()) return AnyValue();
      return Error("schema 'false' (no value is valid)", ptr);
    }
    if (!v.is_object()) return Error("a schema must be an object or a boolean", ptr);
    const json::object& o = v.as_object();
    for (const auto& kv : o) {
      const std::string_view k = kv.key();
      if (!Annotations().contains(k) && !Structural().contains(k)) return Unsupported(k, ptr);
    }
    auto structural_sibling = [&](std::string_view self) -> std::string_view {
      for (const auto& kv : o) {
        if (kv.key() != self && Structural().contains(kv.key())) return kv.key();
      }
      return {};
    };

    if (const json::value* ref = o.if_contains("$ref")) {
      if (auto s = structural_sibling("$ref"); !s.empty()) {
        return Error(absl::StrCat("unsupported keyword '", A(s), "' beside '$ref'"), ptr);
      }
      if (!ref->is_string()) return Error("'$ref' must be a string", ptr);
      return Ref(std::string(ref->as_string()), ptr);
    }
    if (const json::value* all = o.if_contains("allOf")) {
      if (!all->is_array() || all->as_array().size() != 1 || !structural_sibling("allOf").empty()) {
        return Error("unsupported keyword 'allOf' (only one subschema, alone)", ptr);
      }
      return Compile(all->as_array()[0], ptr + "/allOf/0");
    }
    for (std::string_view kw : {"anyOf", "oneOf"}) {
      const json::value* alts = o.if_contains(kw);
      if (alts == nullptr) continue;
      if (auto s = structural_sibling(kw); !s.empty()) {
        return Error(absl::StrCat("unsupported keyword '", A(s), "' beside '", A(kw), "'"), ptr);
      }
      if (!alts->is_array() || alts->as_array().empty()) {
        return Error(absl::StrCat("'", A(kw), "' must be a non-empty array"), ptr);
      }
      std::vector<int32_t> ids;
      for (size_t i = 0; i < alts->as_array().size(); ++i) {
        ASSIGN_OR_RETURN(int32_t id, Compile(alts->as_array()[i], absl::StrCat(ptr, "/", A(kw), "/", i)));
        ids.push_back(id);
      }
      const int32_t u = NewNode(NodeKind::kUnion);
      node(u).alternatives = std::move(ids);
      return u;
    }

    std::vector<std::string> types;
    if (const json::value* t = o.if_contains("type")) {
      if (t->is_string()) {
        types.emplace_back(t->as_string());
      } else if (t->is_array() && !t->as_array().empty()) {
        for (const json::value& e : t->as_array()) {
          if (!e.is_string()) return Error("'type' must be a string or a list of strings", ptr);
          types.emplace_back(e.as_string());
        }
      } else {
        return Error("'type' must be a string or a list of strings", ptr);
      }
      for (const std::string& name : types) {
        if (name != "object" && name != "array" && name != "string" && name != "number" && name != "integer" &&
            name != "boolean" && name != "null") {
          return Error(absl::StrCat("unknown type '", name, "'"), ptr);
        }
      }
    }

    if (o.contains("enum") || o.contains("const")) return EnumNode(o, types, ptr);

    if (types.empty()) {
      if (o.contains("properties") || o.contains("required") || o.contains("additionalProperties")) {
        types = {"object"};
      } else if (o.contains("items") || o.contains("minItems") || o.contains("maxItems")) {
        types = {"array"};
      } else if (o.contains("minLength") || o.contains("maxLength")) {
        types = {"string"};
      } else {
        return AnyValue();
      }
    }
    if (types.size() == 1) return Typed(o, types[0], ptr);
    std::vector<int32_t> ids;
    for (const std::string& t : types) {
      ASSIGN_OR_RETURN(int32_t id, Typed(o, t, ptr));
      ids.push_back(id);
    }
    const int32_t u = NewNode(NodeKind::kUnion);
    node(u).alternatives = std::move(ids);
    return u;
  }

  static bool ValueHasType(const json::value& v, std::string_view t) {
    switch (v.kind()) {
      case json::kind::null: return t == "null";
      case json::kind::bool_: return t == "boolean";
      case json::kind::int64:
      case json::kind::uint64: return t == "integer" || t == "number";
      case json::kind::double_:
        return t == "number" || (t == "integer" && std::floor(v.as_double()) == v.as_double());
      case json::kind::string: return t == "string";
      case json::kind::array: return t == "array";
      case json::kind::object: return t == "object";
    }
    return false;
  }

  absl::StatusOr<int32_t> EnumNode(const json::object& o, const std::vector<std::string>& types,
                                   const std::string& ptr) {
    std::vector<const json::value*> values;
    if (const json::value* c = o.if_contains("const")) {
      values.push_back(c);
    } else {
      const json::value& e = o.at("enum");
      if (!e.is_array() || e.as_array().empty()) return Error("'enum' must be a non-empty array", ptr);
      for (const json::value& x : e.as_array()) values.push_back(&x);
    }
    std::vector<std::string> literals;
    absl::flat_hash_set<std::string> seen;
    for (const json::value* x : values) {
      bool ok = types.empty();
      for (const std::string& t : types) ok = ok || ValueHasType(*x, t);
      if (!ok) continue;
      std::string s = json::serialize(*x);
      if (seen.insert(s).second) literals.push_back(std::move(s));
    }
    if (literals.empty()) return Error("no 'enum'/'const' value has the schema's 'type'", ptr);
    return Literals(literals);
  }

  absl::StatusOr<int32_t> Typed(const json::object& o, std::string_view type, const std::string& ptr) {
    if (type == "string") {
      ASSIGN_OR_RETURN(int32_t min, NonNegative(o, "minLength", ptr, 0));
      ASSIGN_OR_RETURN(int32_t max, NonNegative(o, "maxLength", ptr, -1));
      if (max >= 0 && min > max) return Error("'minLength' is greater than 'maxLength'", ptr);
      const int32_t id = NewNode(NodeKind::kString);
      node(id).min_length = min;
      node(id).max_length = max;
      return id;
    }
    if (type == "number") return NewNode(NodeKind::kNumber);
    if (type == "integer") return NewNode(NodeKind::kInteger);
    if (type == "boolean") return Literals({"true", "false"});
    if (type == "null") return Literals({"null"});
    if (type == "array") {
      int32_t items = -1;
      if (const json::value* it = o.if_contains("items")) {
        if (it->is_array()) return Unsupported("items (a list: tuple validation)", ptr);
        ASSIGN_OR_RETURN(items, Compile(*it, ptr + "/items"));
      } else {
        items = AnyValue();
      }
      ASSIGN_OR_RETURN(int32_t min, NonNegative(o, "minItems", ptr, 0));
      ASSIGN_OR_RETURN(int32_t max, NonNegative(o, "maxItems", ptr, -1));
      if (max >= 0 && min > max) return Error("'minItems' is greater than 'maxItems'", ptr);
      const int32_t id = NewNode(NodeKind::kArray);
      node(id).items = items;
      node(id).min_items = min;
      node(id).max_items = max;
      return id;
    }
    // object
    std::vector<Property> props;
    if (const json::value* p = o.if_contains("properties")) {
      if (!p->is_object()) return Error("'properties' must be an object", ptr);
      for (const auto& kv : p->as_object()) {
        Property prop;
        prop.name = std::string(kv.key());
        ASSIGN_OR_RETURN(prop.value,
                         Compile(kv.value(), absl::StrCat(ptr, "/properties/", EscapePointerToken(kv.key()))));
        props.push_back(std::move(prop));
      }
    }
    if (const json::value* r = o.if_contains("required")) {
      if (!r->is_array()) return Error("'required' must be an array of strings", ptr);
      for (const json::value& name : r->as_array()) {
        if (!name.is_string()) return Error("'required' must be an array of strings", ptr);
        auto it = std::find_if(props.begin(), props.end(), [&](const Property& q) { return q.name == name.as_string(); });
        if (it == props.end()) {
          return Error(absl::StrCat("required property '", A(std::string_view(name.as_string())),
                                    "' is not in 'properties'"),
                       ptr);
        }
        it->required = true;
      }
    }
    int32_t additional = -1;
    if (props.empty()) {
      const json::value* a = o.if_contains("additionalProperties");
      if (a == nullptr || (a->is_bool() && a->as_bool())) {
        additional = AnyValue();
      } else if (a->is_object()) {
        ASSIGN_OR_RETURN(additional, Compile(*a, ptr + "/additionalProperties"));
      } else if (!a->is_bool()) {
        return Error("'additionalProperties' must be a boolean or a schema", ptr);
      }
    }
    const int32_t id = NewNode(NodeKind::kObject);
    GrammarNode& n = node(id);
    n.additional = additional;
    const auto count = static_cast<int32_t>(props.size());
    for (int32_t last = -1; last < count; ++last) {
      LiteralTrie trie;
      for (int32_t j = last + 1; j < count; ++j) {
        trie.Insert(json::serialize(json::string(props[static_cast<size_t>(j)].name)), j);
        if (props[static_cast<size_t>(j)].required) break;
      }
      n.key_tries.push_back(std::move(trie));
    }
    for (int32_t j = 0; j < count; ++j) {
      if (props[static_cast<size_t>(j)].required) n.last_required = j;
    }
    n.properties = std::move(props);
    return id;
  }

  absl::StatusOr<int32_t> Ref(const std::string& ref, const std::string& ptr) {
    if (auto it = refs_.find(ref); it != refs_.end()) return it->second;
    if (ref.empty() || ref[0] != '#') return Error(absl::StrCat("unsupported '$ref' \"", ref, "\" (only local refs)"), ptr);
    // Resolve the JSON pointer after '#'.
    const json::value* target = &root_;
    std::string_view rest = std::string_view(ref).substr(1);
    if (!rest.empty() && rest[0] != '/') return Error(absl::StrCat("unsupported '$ref' \"", ref, "\""), ptr);
    while (!rest.empty()) {
      rest.remove_prefix(1);
      const size_t slash = rest.find('/');
      std::string_view raw = rest.substr(0, slash);
      rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
      std::string token;
      for (size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '~' && i + 1 < raw.size() && (raw[i + 1] == '0' || raw[i + 1] == '1')) {
          token.push_back(raw[i + 1] == '0' ? '~' : '/');
          ++i;
        } else {
          token.push_back(raw[i]);
        }
      }
      const json::value* next = nullptr;
      if (target->is_object()) {
        next = target->as_object().if_contains(token);
      } else if (target->is_array()) {
        char* end = nullptr;
        const unsigned long idx = std::strtoul(token.c_str(), &end, 10);
        if (!token.empty() && *end == '\0' && idx < target->as_array().size()) next = &target->as_array()[idx];
      }
      if (next == nullptr) return Error(absl::StrCat("unresolved '$ref' \"", ref, "\""), ptr);
      target = next;
    }
    // A placeholder union of one alternative, so that recursive refs find it.
    const int32_t id = NewNode(NodeKind::kUnion);
    refs_[ref] = id;
    ASSIGN_OR_RETURN(int32_t body, Compile(*target, ref.substr(1)));
    node(id).alternatives = {body};
    return id;
  }

  // Fills each node's expansion; a union that reaches itself through unions only
  // (a $ref or anyOf cycle that consumes nothing) is an error.
  absl::Status Finish() {
    const size_t n = g_->nodes_.size();
    std::vector<int> mark(n, 0);  // 0 new, 1 in progress, 2 done
    std::function<absl::Status(int32_t)> expand = [&](int32_t id) -> absl::Status {
      GrammarNode& nd = node(id);
      if (mark[static_cast<size_t>(id)] == 2) return absl::OkStatus();
      if (mark[static_cast<size_t>(id)] == 1) {
        return absl::InvalidArgumentError(
            absl::StrCat(options_.error_context, ": a '$ref'/'anyOf' cycle that generates nothing"));
      }
      if (nd.kind != NodeKind::kUnion) {
        nd.expansion = {id};
        mark[static_cast<size_t>(id)] = 2;
        return absl::OkStatus();
      }
      mark[static_cast<size_t>(id)] = 1;
      std::vector<int32_t> out;
      for (int32_t alt : std::vector<int32_t>(nd.alternatives)) {
        RETURN_IF_ERROR(expand(alt));
        for (int32_t e : node(alt).expansion) {
          if (std::find(out.begin(), out.end(), e) == out.end()) out.push_back(e);
        }
      }
      node(id).expansion = std::move(out);
      mark[static_cast<size_t>(id)] = 2;
      return absl::OkStatus();
    };
    for (size_t i = 0; i < n; ++i) RETURN_IF_ERROR(expand(static_cast<int32_t>(i)));
    return absl::OkStatus();
  }

  const json::value& root_;
  const JsonGrammarOptions& options_;
  JsonGrammar* g_;
  int32_t any_ = -1;
  absl::flat_hash_map<std::string, int32_t> refs_;
};

std::shared_ptr<const JsonGrammar> JsonGrammar::AnyObject() {
  static const std::shared_ptr<const JsonGrammar> g = [] {
    std::shared_ptr<JsonGrammar> out(new JsonGrammar());
    json::value none;
    JsonGrammarOptions options;
    SchemaCompiler(none, options, out.get()).RunAnyObject();
    return out;
  }();
  return g;
}

absl::StatusOr<std::shared_ptr<const JsonGrammar>> JsonGrammar::FromSchema(const json::value& schema,
                                                                          const JsonGrammarOptions& options) {
  std::shared_ptr<JsonGrammar> out(new JsonGrammar());
  RETURN_IF_ERROR(SchemaCompiler(schema, options, out.get()).Run());
  return std::shared_ptr<const JsonGrammar>(std::move(out));
}

}  // namespace deepshard::structured
