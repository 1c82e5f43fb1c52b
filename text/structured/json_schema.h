// JsonGrammar: a JSON Schema (subset) compiled into the node graph that
// JsonConstraint (json_constraint.h) runs as a byte-level pushdown automaton.
//
// Supported schema keywords (anything else is InvalidArgument naming the keyword and
// its JSON pointer, e.g. "response_format.json_schema.schema: unsupported keyword
// 'pattern' at /properties/id"):
//   type            "object", "array", "string", "number", "integer", "boolean",
//                   "null", or a list of them (alternatives). Without `type`, the kind
//                   is taken from `properties` (object) or `items` (array), else any
//                   JSON value.
//   properties      emitted in schema order; required ones always, optional ones may
//   required        be skipped (vLLM / xgrammar / outlines practice). Every name in
//                   `required` must be in `properties`.
//   additionalProperties
//                   with `properties`: ignored, only the listed properties are
//                   generated (whether false, true, absent or a schema). Without
//                   `properties`: false -> only {}, true/absent -> any keys with any
//                   values, a schema -> any keys with values of that schema (pydantic's
//                   dict[str, X]).
//   enum, const     the values, serialized compactly as boost::json does (strings
//                   with the escapes JSON requires, other characters as UTF-8); with
//                   `type`, values of other types are dropped.
//   items           one schema (absent: any value); minItems, maxItems.
//   minLength, maxLength   for strings, in code points (an escape is one).
//   anyOf, oneOf    alternatives (oneOf is not checked for exclusivity); not combined
//                   with structural keywords beside them. allOf with one subschema.
//   $ref            "#", "#/$defs/Name", "#/definitions/Name" or any JSON pointer into
//                   the document; recursion is allowed (the pushdown stack holds it).
//   $defs, definitions, title, description, default, examples, $schema, $id,
//   $comment, deprecated, readOnly, writeOnly: annotations, ignored.
//   A schema `true` (or {}) is any value; `false` is an error.
//
// Generated text: whitespace is allowed between tokens (after '{' '[' ':' ',' and
// before '}' ']' ':' ','), at most `max_whitespace` consecutive bytes of ' ', '\n',
// '\t', '\r' at each place (default 2), so a model cannot loop on whitespace; none
// before the root value, up to `max_whitespace` after it. Strings accept any UTF-8
// (checked byte by byte: no overlongs, no surrogates) and every JSON escape; \u
// escapes of surrogates must form a pair. Numbers follow JSON's grammar; "integer"
// has neither fraction nor exponent.
//
// Example:
//   ASSIGN_OR_RETURN(auto g, JsonGrammar::FromSchema(boost::json::parse(R"({
//     "type": "object",
//     "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
//     "required": ["name"]})")));
//   // accepts {"name":"x"} and { "name": "x", "age": 3 }, not {"age":3,"name":"x"}.
//
// A JsonGrammar is immutable apart from its mask cache (thread-safe): share one
// among requests with the same schema, so that they share cached masks too.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "boost/json/value.hpp"

namespace deepshard::structured {

struct JsonGrammarOptions {
  // Most consecutive whitespace bytes at each place where JSON allows whitespace.
  int max_whitespace = 2;
  // Prefixes error messages.
  std::string error_context = "response_format.json_schema.schema";
  // Most masks kept in the grammar's cache (each is vocab_size / 8 bytes: 16 KiB
  // for DeepSeek-V3); the cache is emptied when it is full.
  size_t max_cached_masks = 4096;
};

namespace structured_internal {

// A byte trie over a set of literal byte strings (enum values, object keys). Node 0
// is the root; `value` >= 0 marks the end of a literal.
struct LiteralTrie {
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;
    int32_t value = -1;
  };
  std::vector<Node> nodes{1};

  int32_t Child(int32_t node, uint8_t b) const {
    for (const auto& [c, n] : nodes[static_cast<size_t>(node)].children) {
      if (c == b) return n;
    }
    return -1;
  }
  void Insert(std::string_view s, int32_t value);
  bool empty() const { return nodes[0].children.empty(); }
};

enum class NodeKind : uint8_t { kObject, kArray, kString, kNumber, kInteger, kLiterals, kUnion };

struct Property {
  std::string name;
  int32_t value = -1;  // node
  bool required = false;
};

struct GrammarNode {
  NodeKind kind = NodeKind::kUnion;
  // kObject. With properties: key_tries[last + 1] holds the quoted keys that may
  // follow property `last` (-1: none yet), valued by property index. Without:
  // `additional` is the value node of any key (-1: no key at all).
  std::vector<Property> properties;
  std::vector<LiteralTrie> key_tries;
  int32_t last_required = -1;
  int32_t additional = -1;
  // kArray
  int32_t items = -1;
  int32_t min_items = 0, max_items = -1;  // -1: unbounded
  // kString
  int32_t min_length = 0, max_length = -1;
  // kLiterals: the serialized values.
  LiteralTrie literals;
  // kUnion
  std::vector<int32_t> alternatives;
  // The non-union nodes this node stands for (itself when not a union).
  std::vector<int32_t> expansion;
};

// Masks by (vocabulary, automaton state), shared by the constraints of a grammar.
class MaskCache {
 public:
  explicit MaskCache(size_t max_entries) : max_entries_(max_entries) {}
  std::shared_ptr<const std::vector<uint64_t>> Find(const std::string& key) const;
  void Insert(std::string key, std::shared_ptr<const std::vector<uint64_t>> mask);

 private:
  size_t max_entries_;
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<const std::vector<uint64_t>>> map_;
};

}  // namespace structured_internal

class JsonGrammar {
 public:
  // Any JSON object (response_format {"type": "json_object"}); one shared instance.
  static std::shared_ptr<const JsonGrammar> AnyObject();
  static absl::StatusOr<std::shared_ptr<const JsonGrammar>> FromSchema(const boost::json::value& schema,
                                                                      const JsonGrammarOptions& options = {});

  // For JsonConstraint.
  const std::vector<structured_internal::GrammarNode>& nodes() const { return nodes_; }
  int32_t root() const { return root_; }
  int32_t key_string_node() const { return key_string_; }
  int max_whitespace() const { return max_whitespace_; }
  structured_internal::MaskCache& cache() const { return *cache_; }

 private:
  friend class SchemaCompiler;
  JsonGrammar() = default;

  std::vector<structured_internal::GrammarNode> nodes_;
  int32_t root_ = -1;
  int32_t key_string_ = -1;  // a plain string: object keys without `properties`
  int max_whitespace_ = 2;
  std::unique_ptr<structured_internal::MaskCache> cache_;
};

}  // namespace deepshard::structured
