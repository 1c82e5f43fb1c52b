#include "text/structured/json_constraint.h"

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "boost/json.hpp"
#include "gtest/gtest.h"
#include "text/structured/json_schema.h"
#include "text/structured/token_vocabulary.h"
#include "text/tokenizer/tokenizer.h"

namespace deepshard::structured {
namespace {

namespace json = ::boost::json;

// ---------------------------------------------------------------------------
// An independent validator for the schema subset (types, properties, required,
// additionalProperties, enum, const, items, min/maxItems, min/maxLength, anyOf,
// oneOf, allOf, $ref).

const json::value* ResolveRef(const json::value& root, std::string_view ref) {
  if (ref.empty() || ref[0] != '#') return nullptr;
  const json::value* v = &root;
  std::string_view rest = ref.substr(1);
  while (!rest.empty()) {
    rest.remove_prefix(1);
    size_t slash = rest.find('/');
    std::string token(rest.substr(0, slash));
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
    if (!v->is_object() || !v->as_object().contains(token)) return nullptr;
    v = &v->as_object().at(token);
  }
  return v;
}

size_t CodePoints(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool HasType(const json::value& v, std::string_view t) {
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  if (t == "integer") return v.is_int64() || v.is_uint64();
  if (t == "number") return v.is_number();
  if (t == "boolean") return v.is_bool();
  if (t == "null") return v.is_null();
  return false;
}

bool Validate(const json::value& v, const json::value& schema, const json::value& root, std::string* why) {
  if (schema.is_bool()) return schema.as_bool();
  const json::object& s = schema.as_object();
  auto fail = [&](std::string msg) {
    *why = msg + " in " + json::serialize(v);
    return false;
  };
  if (const json::value* r = s.if_contains("$ref")) {
    const json::value* target = ResolveRef(root, r->as_string());
    if (target == nullptr) return fail("bad ref");
    return Validate(v, *target, root, why);
  }
  for (const char* kw : {"anyOf", "oneOf"}) {
    if (const json::value* alts = s.if_contains(kw)) {
      for (const json::value& alt : alts->as_array()) {
        std::string ignored;
        if (Validate(v, alt, root, &ignored)) return true;
      }
      return fail(std::string("no ") + kw + " alternative matches");
    }
  }
  if (const json::value* all = s.if_contains("allOf")) {
    for (const json::value& sub : all->as_array()) {
      if (!Validate(v, sub, root, why)) return false;
    }
  }
  if (const json::value* c = s.if_contains("const")) {
    if (v != *c) return fail("const");
  }
  if (const json::value* e = s.if_contains("enum")) {
    bool found = false;
    for (const json::value& x : e->as_array()) found = found || x == v;
    if (!found) return fail("enum");
  }
  if (const json::value* t = s.if_contains("type")) {
    bool ok = false;
    if (t->is_string()) {
      ok = HasType(v, t->as_string());
    } else {
      for (const json::value& x : t->as_array()) ok = ok || HasType(v, x.as_string());
    }
    if (!ok) return fail("type");
  }
  if (v.is_object()) {
    const json::object& o = v.as_object();
    const json::object* props = s.contains("properties") ? &s.at("properties").as_object() : nullptr;
    if (const json::value* req = s.if_contains("required")) {
      for (const json::value& name : req->as_array()) {
        if (!o.contains(name.as_string())) return fail("required " + std::string(name.as_string()));
      }
    }
    for (const auto& kv : o) {
      if (props != nullptr && props->contains(kv.key())) {
        if (!Validate(kv.value(), props->at(kv.key()), root, why)) return false;
      } else if (const json::value* add = s.if_contains("additionalProperties")) {
        if (add->is_bool() && !add->as_bool()) return fail("additional property");
        if (add->is_object() && !Validate(kv.value(), *add, root, why)) return false;
      }
    }
  }
  if (v.is_array()) {
    const json::array& a = v.as_array();
    if (const json::value* m = s.if_contains("minItems"); m && a.size() < m->to_number<uint64_t>()) {
      return fail("minItems");
    }
    if (const json::value* m = s.if_contains("maxItems"); m && a.size() > m->to_number<uint64_t>()) {
      return fail("maxItems");
    }
    if (const json::value* items = s.if_contains("items")) {
      for (const json::value& x : a) {
        if (!Validate(x, *items, root, why)) return false;
      }
    }
  }
  if (v.is_string()) {
    const size_t n = CodePoints(v.as_string());
    if (const json::value* m = s.if_contains("minLength"); m && n < m->to_number<uint64_t>()) return fail("minLength");
    if (const json::value* m = s.if_contains("maxLength"); m && n > m->to_number<uint64_t>()) return fail("maxLength");
  }
  return true;
}

// ---------------------------------------------------------------------------
// Vocabularies.

// Every printable ASCII byte, whitespace, and pieces spanning grammar elements and
// UTF-8 characters; the last id is EOS, the one before it a control token.
std::shared_ptr<const TokenVocabulary> TinyVocab() {
  std::vector<std::string> t;
  for (int c = 0x20; c < 0x7F; ++c) t.emplace_back(1, static_cast<char>(c));
  for (const char* s :
       {"\n", "\t", "\r", "  ", "\n  ", "{\"", "\":", "\": ", "\",", "\", \"", "},", "}}", "\"}", "]}", "[{", "true",
        "false", "null", "nu", "ll", "12", "-0.5e", "e+", "00", "\\u", "d83d", "D83D", "\\ude00", "de00", "00e9",
        "\\n", "\\\"", "name", "\"name\":", "\"id\"", "age", "tags", "\xC3\xA9", "\xC3", "\xA9", "\xE2\x82", "\xAC",
        "\xE2\x82\xAC", "\xF0\x9F", "\x98\x80", "\xF0\x9F\x98\x80", "\xC0", "\xED\xA0\x80", "\xFF", "a\"b", "\"a"}) {
    t.emplace_back(s);
  }
  t.emplace_back("");  // a control token: no bytes, never allowed
  t.emplace_back("");  // EOS
  const auto eos = static_cast<int32_t>(t.size() - 1);
  return TokenVocabulary::FromBytes(std::move(t), eos);
}

int32_t IdOf(const TokenVocabulary& v, std::string_view bytes) {
  for (int32_t i = 0; i < v.size(); ++i) {
    if (v.token_bytes(i) == bytes) return i;
  }
  ADD_FAILURE() << "no token " << bytes;
  return -1;
}

bool Bit(const std::vector<uint64_t>& mask, int32_t id) { return (mask[id >> 6] >> (id & 63)) & 1; }

std::vector<int32_t> Allowed(const std::vector<uint64_t>& mask, int64_t size) {
  std::vector<int32_t> out;
  for (int32_t i = 0; i < size; ++i) {
    if (Bit(mask, i)) out.push_back(i);
  }
  return out;
}

// Checks the mask against the brute-force reference: a token is allowed iff
// feeding its bytes one by one keeps the automaton alive; EOS iff Complete().
void CheckMaskAgainstBruteForce(JsonConstraint& c, const TokenVocabulary& v) {
  const std::vector<uint64_t>& mask = c.AllowedTokens();
  for (int32_t i = 0; i < v.size(); ++i) {
    const bool expected = i == v.eos_id() ? c.Complete() : !v.token_bytes(i).empty() && c.CanAcceptBytes(v.token_bytes(i));
    ASSERT_EQ(Bit(mask, i), expected) << "token " << i << " '" << v.token_bytes(i) << "'";
  }
}

struct Walk {
  std::string text;
  int steps = 0;
  bool finished = false;
};

// Chooses uniformly among the allowed tokens until EOS. Past `budget` steps, tokens
// made only of closing bytes ('"', '}', ']') and EOS are preferred when allowed.
Walk RandomWalk(JsonConstraint& c, const TokenVocabulary& v, std::mt19937& rng, int budget, bool brute_force) {
  Walk w;
  for (; w.steps < budget * 4; ++w.steps) {
    if (brute_force) CheckMaskAgainstBruteForce(c, v);
    const std::vector<uint64_t>& mask = c.AllowedTokens();
    std::vector<int32_t> allowed = Allowed(mask, v.size());
    EXPECT_FALSE(allowed.empty()) << "empty mask after: " << w.text;
    if (allowed.empty()) return w;
    EXPECT_EQ(Bit(mask, v.eos_id()), c.Complete());
    if (w.steps >= budget) {
      std::vector<int32_t> closing;
      for (int32_t id : allowed) {
        const std::string& b = v.token_bytes(id);
        bool all = id == v.eos_id();
        if (!b.empty()) {
          all = true;
          for (char ch : b) all = all && (ch == '"' || ch == '}' || ch == ']');
        }
        if (all) closing.push_back(id);
      }
      if (!closing.empty()) allowed = closing;
    }
    const int32_t id = allowed[std::uniform_int_distribution<size_t>(0, allowed.size() - 1)(rng)];
    EXPECT_TRUE(c.Accept(id).ok()) << "token " << id << " after " << w.text;
    if (id == v.eos_id()) {
      w.finished = true;
      EXPECT_TRUE(c.Finished());
      return w;
    }
    w.text += v.token_bytes(id);
  }
  return w;
}

// Runs `walks` seeded random walks on `schema` and validates each output.
void WalkAndValidate(const json::value& schema, const std::shared_ptr<const JsonGrammar>& g,
                     const std::shared_ptr<const TokenVocabulary>& v, int walks, int budget, bool brute_force,
                     uint32_t seed) {
  std::mt19937 rng(seed);
  for (int i = 0; i < walks; ++i) {
    JsonConstraint c(g, v);
    Walk w = RandomWalk(c, *v, rng, budget, brute_force);
    ASSERT_TRUE(w.finished) << "walk " << i << " did not finish: " << w.text;
    boost::system::error_code ec;
    json::value parsed = json::parse(w.text, ec);
    ASSERT_FALSE(ec) << "not JSON: " << w.text;
    std::string why;
    EXPECT_TRUE(Validate(parsed, schema, schema, &why)) << why << "\ntext: " << w.text;
  }
}

std::shared_ptr<const JsonGrammar> Compile(const json::value& schema) {
  auto g = JsonGrammar::FromSchema(schema);
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? *g : nullptr;
}

const char* kPersonSchema = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 12},
    "age": {"type": "integer"},
    "score": {"type": ["number", "null"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1, "maxItems": 3},
    "kind": {"enum": ["a\"b", "é€😀", "line\nbreak", 7, null]},
    "ok": {"type": "boolean"}
  },
  "required": ["name", "tags", "ok"],
  "additionalProperties": false
})";

// Pydantic v2 style: nested models through $defs / $ref, Optional as anyOf.
const char* kPydanticSchema = R"({
  "$defs": {
    "Address": {
      "properties": {
        "street": {"title": "Street", "type": "string", "maxLength": 8},
        "zip": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": null, "title": "Zip"}
      },
      "required": ["street"], "title": "Address", "type": "object"
    },
    "Color": {"enum": ["red", "green"], "title": "Color", "type": "string"}
  },
  "properties": {
    "id": {"title": "Id", "type": "integer", "description": "the id"},
    "home": {"$ref": "#/$defs/Address"},
    "others": {"items": {"$ref": "#/$defs/Address"}, "title": "Others", "type": "array", "maxItems": 2},
    "color": {"$ref": "#/$defs/Color", "default": "red"},
    "meta": {"additionalProperties": {"type": "integer"}, "type": "object", "maxProperties_not_here": 0}
  },
  "required": ["id", "home", "color"],
  "title": "Person", "type": "object"
})";

// ---------------------------------------------------------------------------
// Tiny vocabulary.

TEST(TokenVocabularyTest, TrieHoldsEveryTokenOnce) {
  auto v = TinyVocab();
  std::vector<int> seen(static_cast<size_t>(v->size()), 0);
  for (size_t i = 0; i < v->trie().size(); ++i) {
    for (int32_t id : v->TokensAt(i)) {
      ++seen[static_cast<size_t>(id)];
      EXPECT_EQ(v->token_bytes(id).size(), v->trie()[i].depth);
    }
  }
  for (int32_t i = 0; i < v->size(); ++i) EXPECT_EQ(seen[static_cast<size_t>(i)], v->token_bytes(i).empty() ? 0 : 1);
}

TEST(JsonConstraintTest, AnyObjectStartsWithBraceAndEndsWithEos) {
  auto v = TinyVocab();
  JsonConstraint c(JsonGrammar::AnyObject(), v);
  std::vector<int32_t> first = Allowed(c.AllowedTokens(), v->size());
  for (int32_t id : first) EXPECT_EQ(v->token_bytes(id)[0], '{') << v->token_bytes(id);
  EXPECT_FALSE(c.Complete());
  ASSERT_TRUE(c.Accept(IdOf(*v, "{\"")).ok());
  ASSERT_TRUE(c.Accept(IdOf(*v, "a")).ok());
  ASSERT_TRUE(c.Accept(IdOf(*v, "\": ")).ok());
  ASSERT_TRUE(c.Accept(IdOf(*v, "12")).ok());
  EXPECT_FALSE(Bit(c.AllowedTokens(), v->eos_id()));
  ASSERT_TRUE(c.Accept(IdOf(*v, "}")).ok());
  EXPECT_TRUE(c.Complete());
  // Only EOS and a little whitespace are left.
  for (int32_t id : Allowed(c.AllowedTokens(), v->size())) {
    if (id == v->eos_id()) continue;
    for (char ch : v->token_bytes(id)) EXPECT_TRUE(ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r');
  }
  EXPECT_TRUE(Bit(c.AllowedTokens(), v->eos_id()));
  ASSERT_TRUE(c.Accept(v->eos_id()).ok());
  EXPECT_TRUE(c.Finished());
  EXPECT_EQ(Allowed(c.AllowedTokens(), v->size()), std::vector<int32_t>{v->eos_id()});
}

TEST(JsonConstraintTest, DisallowedTokenFailsAndKeepsState) {
  auto v = TinyVocab();
  JsonConstraint c(JsonGrammar::AnyObject(), v);
  absl::Status s = c.Accept(IdOf(*v, "["));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.Accept(v->eos_id()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.Accept(static_cast<int32_t>(v->size() - 2)).code(), absl::StatusCode::kFailedPrecondition);  // control
  EXPECT_EQ(c.Accept(-1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(c.Accept(IdOf(*v, "{")).ok());
  EXPECT_TRUE(c.Accept(IdOf(*v, "}")).ok());
}

TEST(JsonConstraintTest, WhitespaceIsBounded) {
  auto v = TinyVocab();
  JsonConstraint c(JsonGrammar::AnyObject(), v);
  EXPECT_FALSE(c.CanAcceptBytes(" {"));  // none before the value
  ASSERT_TRUE(c.Accept(IdOf(*v, "{")).ok());
  EXPECT_TRUE(c.CanAcceptBytes("  }"));
  EXPECT_FALSE(c.CanAcceptBytes("   }"));
  EXPECT_TRUE(c.CanAcceptBytes("\n \"a\"  :  1  ,  \"b\"  :  [  1  ]  }  "));
  EXPECT_FALSE(c.CanAcceptBytes("\n  \""));
  EXPECT_FALSE(c.CanAcceptBytes("}   "));
}

TEST(JsonConstraintTest, NumbersFollowJsonGrammar) {
  auto v = TinyVocab();
  auto g = Compile(json::parse(R"({"type":"object","properties":{"n":{"type":"number"},"i":{"type":"integer"}}})"));
  JsonConstraint c(g, v);
  EXPECT_TRUE(c.CanAcceptBytes("{\"n\":-0.5e+3,\"i\":-12}"));
  EXPECT_TRUE(c.CanAcceptBytes("{\"n\":1E9}"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"n\":01"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"n\":-}"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"n\":1.}"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"n\":1e}"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"n\":.5"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"i\":1.5"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"i\":1e3"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"i\":1,\"n\":2"));  // schema order
  // Bounded digits: 15 before the point, 15 after, 2 in the exponent.
  EXPECT_TRUE(c.CanAcceptBytes("{\"n\":-123456789012345.123456789012345e-99}"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"n\":1234567890123456"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"n\":1.1234567890123456"));
  EXPECT_FALSE(c.CanAcceptBytes("{\"n\":1e123"));
  EXPECT_TRUE(c.CanAcceptBytes("{\"i\":-123456789012345}"));
}

TEST(JsonConstraintTest, StringsAcceptEscapesAndSplitUtf8) {
  auto v = TinyVocab();
  auto g = Compile(json::parse(R"({"type":"string"})"));
  JsonConstraint c(g, v);
  EXPECT_TRUE(c.CanAcceptBytes("\"\\n\\\"\\\\\\/\\b\\f\\r\\t\\u00e9\\ud83d\\ude00\""));
  EXPECT_FALSE(c.CanAcceptBytes("\"\\x"));
  EXPECT_FALSE(c.CanAcceptBytes("\"\\ude00"));    // lone low surrogate
  EXPECT_FALSE(c.CanAcceptBytes("\"\\ud83d\""));  // high surrogate without its pair
  EXPECT_FALSE(c.CanAcceptBytes("\"\\ud83d\\u0041"));
  EXPECT_FALSE(c.CanAcceptBytes("\"\x01"));  // control characters must be escaped
  EXPECT_FALSE(c.CanAcceptBytes("\"\xC0"));  // overlong lead
  EXPECT_FALSE(c.CanAcceptBytes("\"\xED\xA0\x80"));  // UTF-8 surrogate
  EXPECT_FALSE(c.CanAcceptBytes("\"\xFF"));
  // A euro sign and an emoji split across tokens.
  ASSERT_TRUE(c.Accept(IdOf(*v, "\"")).ok());
  ASSERT_TRUE(c.Accept(IdOf(*v, "\xE2\x82")).ok());
  EXPECT_FALSE(Bit(c.AllowedTokens(), IdOf(*v, "\"")));  // inside a character
  EXPECT_FALSE(Bit(c.AllowedTokens(), IdOf(*v, "\xE2\x82")));
  EXPECT_TRUE(Bit(c.AllowedTokens(), IdOf(*v, "\xAC")));
  ASSERT_TRUE(c.Accept(IdOf(*v, "\xAC")).ok());
  ASSERT_TRUE(c.Accept(IdOf(*v, "\xF0\x9F")).ok());
  EXPECT_EQ(c.Accept(IdOf(*v, "\xC3\xA9")).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(c.Accept(IdOf(*v, "\x98\x80")).ok());
  ASSERT_TRUE(c.Accept(IdOf(*v, "\"")).ok());
  EXPECT_TRUE(c.Complete());
}

TEST(JsonConstraintTest, StringLengthBounds) {
  auto v = TinyVocab();
  auto g = Compile(json::parse(R"({"type":"string","minLength":2,"maxLength":3})"));
  JsonConstraint c(g, v);
  EXPECT_FALSE(c.CanAcceptBytes("\"a\""));
  EXPECT_TRUE(c.CanAcceptBytes("\"a\xC3\xA9\""));
  EXPECT_TRUE(c.CanAcceptBytes("\"\\u00e9\\n\\ud83d\\ude00\""));
  EXPECT_FALSE(c.CanAcceptBytes("\"abcd"));
}

TEST(JsonConstraintTest, MaskEqualsBruteForceOnTinyVocab) {
  auto v = TinyVocab();
  // Any object, with the reference checked at every step.
  WalkAndValidate(json::parse(R"({"type":"object"})"), JsonGrammar::AnyObject(), v, 20, 40, /*brute_force=*/true, 1);
  json::value person = json::parse(kPersonSchema);
  WalkAndValidate(person, Compile(person), v, 20, 60, /*brute_force=*/true, 2);
}

TEST(JsonConstraintTest, RandomWalksOnTinyVocabValidate) {
  auto v = TinyVocab();
  WalkAndValidate(json::parse(R"({"type":"object"})"), JsonGrammar::AnyObject(), v, 200, 60, false, 3);
  json::value person = json::parse(kPersonSchema);
  WalkAndValidate(person, Compile(person), v, 200, 80, false, 4);
  json::value arr = json::parse(R"({"type":"array","items":{"type":["integer","boolean"]},"minItems":2,"maxItems":4})");
  WalkAndValidate(arr, Compile(arr), v, 100, 40, true, 5);
}

TEST(JsonConstraintTest, PydanticDefsAndRefs) {
  auto v = TinyVocab();
  std::string pyd = kPydanticSchema;
  pyd.replace(pyd.find(", \"maxProperties_not_here\": 0"), std::string(", \"maxProperties_not_here\": 0").size(), "");
  json::value schema = json::parse(pyd);
  auto g = Compile(schema);
  ASSERT_NE(g, nullptr);
  WalkAndValidate(schema, g, v, 100, 80, false, 6);
  WalkAndValidate(schema, g, v, 10, 80, true, 7);
  JsonConstraint c(g, v);
  EXPECT_TRUE(c.CanAcceptBytes(R"({"id": 1, "home": {"street": "x", "zip": null}, "color": "red", "meta": {"k": 1}})"));
  EXPECT_FALSE(c.CanAcceptBytes(R"({"id": 1, "home": {"zip": 1)"));
  EXPECT_FALSE(c.CanAcceptBytes(R"({"id": 1, "home": {"street": "x"}, "color": "blue")"));
  EXPECT_FALSE(c.CanAcceptBytes(R"({"id": 1, "home": {"street": "x"}})"));  // color is required
}

TEST(JsonConstraintTest, RecursiveRef) {
  auto v = TinyVocab();
  json::value schema = json::parse(R"({
    "$ref": "#/definitions/Node",
    "definitions": {"Node": {"type": "object", "properties": {
      "v": {"type": "integer"},
      "kids": {"type": "array", "items": {"$ref": "#/definitions/Node"}, "maxItems": 2}},
      "required": ["v"]}}})");
  auto g = Compile(schema);
  ASSERT_NE(g, nullptr);
  JsonConstraint c(g, v);
  EXPECT_TRUE(c.CanAcceptBytes(R"({"v":1,"kids":[{"v":2,"kids":[{"v":3}]},{"v":4}]})"));
  EXPECT_FALSE(c.CanAcceptBytes(R"({"v":1,"kids":[{"kids":[]}]})"));
  WalkAndValidate(schema, g, v, 100, 80, false, 8);
}

TEST(JsonConstraintTest, EnumWithEscapesAndUnicode) {
  auto v = TinyVocab();
  json::value schema = json::parse(R"({"enum": ["a\"b", "é€😀", "line\nbreak", "\u0001", 12, [1, {"x": null}]]})");
  auto g = Compile(schema);
  ASSERT_NE(g, nullptr);
  JsonConstraint c(g, v);
  EXPECT_TRUE(c.CanAcceptBytes("\"a\\\"b\""));
  EXPECT_TRUE(c.CanAcceptBytes("\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\""));
  EXPECT_TRUE(c.CanAcceptBytes("\"line\\nbreak\""));
  EXPECT_TRUE(c.CanAcceptBytes("\"\\u0001\""));
  EXPECT_TRUE(c.CanAcceptBytes("[1,{\"x\":null}]"));
  EXPECT_FALSE(c.CanAcceptBytes("\"a\"b"));
  EXPECT_FALSE(c.CanAcceptBytes("1 2"));
  std::mt19937 rng(9);
  for (int i = 0; i < 100; ++i) {
    JsonConstraint w(g, v);
    Walk r = RandomWalk(w, *v, rng, 100, /*brute_force=*/i < 10);
    ASSERT_TRUE(r.finished);
    std::string why;
    json::value parsed = json::parse(r.text);
    EXPECT_TRUE(Validate(parsed, schema, schema, &why)) << r.text;
  }
}

TEST(JsonGrammarTest, UnsupportedKeywordsAreNamed) {
  auto err = [](const char* schema) {
    auto g = JsonGrammar::FromSchema(json::parse(schema));
    EXPECT_FALSE(g.ok()) << schema;
    EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(g.status().message());
  };
  EXPECT_EQ(err(R"({"type":"object","properties":{"id":{"type":"string","pattern":"^a"}}})"),
            "response_format.json_schema.schema: unsupported keyword 'pattern' at /properties/id");
  EXPECT_NE(err(R"({"type":"string","format":"date"})").find("'format' at the root"), std::string::npos);
  EXPECT_NE(err(R"({"type":"array","items":{"type":"number","minimum":0}})").find("'minimum' at /items"),
            std::string::npos);
  EXPECT_NE(err(R"({"$defs":{"A":{"type":"integer","multipleOf":2}},"$ref":"#/$defs/A"})").find("'multipleOf' at /$defs/A"),
            std::string::npos);
  EXPECT_NE(err(R"({"properties":{"a/b":{"not":{}}}})").find("'not' at /properties/a~1b"), std::string::npos);
  EXPECT_NE(err(R"({"type":"object","required":["x"]})").find("required property 'x'"), std::string::npos);
  EXPECT_NE(err(R"({"type":"array","minItems":3,"maxItems":2})").find("minItems"), std::string::npos);
  EXPECT_NE(err(R"({"$ref":"#/$defs/Missing"})").find("unresolved"), std::string::npos);
  EXPECT_NE(err(R"({"$ref":"#/$defs/A","$defs":{"A":{"$ref":"#/$defs/A"}}})").find("cycle"), std::string::npos);
  EXPECT_NE(err(R"({"type":"strin"})").find("unknown type"), std::string::npos);
  EXPECT_NE(err(R"({"type":"string","enum":[1]})").find("enum"), std::string::npos);
  EXPECT_NE(err(R"({"type":"object","anyOf":[{"required":["a"]}]})").find("beside 'anyOf'"), std::string::npos);
  EXPECT_NE(err(R"({"type":"array","items":[{"type":"string"}]})").find("items"), std::string::npos);
  EXPECT_NE(err(kPydanticSchema).find("'maxProperties_not_here' at /properties/meta"), std::string::npos);
  JsonGrammarOptions options;
  options.error_context = "schema";
  auto g = JsonGrammar::FromSchema(json::parse(R"({"minimum":1})"), options);
  EXPECT_EQ(g.status().message(), "schema: unsupported keyword 'minimum' at the root");
}

TEST(JsonGrammarTest, AnnotationsAndBooleanSchemas) {
  auto v = TinyVocab();
  auto g = Compile(json::parse(R"({"title":"T","description":"d","default":{},"examples":[{}],
      "$schema":"https://json-schema.org/draft/2020-12/schema","type":"object",
      "properties":{"a":true,"b":{"type":"null"}},"additionalProperties":false})"));
  ASSERT_NE(g, nullptr);
  JsonConstraint c(g, v);
  EXPECT_TRUE(c.CanAcceptBytes(R"({"a":[1,"x",{}],"b":null})"));
  EXPECT_TRUE(c.CanAcceptBytes(R"({})"));
  EXPECT_FALSE(c.CanAcceptBytes(R"({"c")"));
  auto empty = Compile(json::parse(R"({"type":"object","additionalProperties":false})"));
  JsonConstraint e(empty, v);
  EXPECT_TRUE(e.CanAcceptBytes("{}"));
  EXPECT_FALSE(e.CanAcceptBytes("{\""));
}

// ---------------------------------------------------------------------------
// The DeepSeek-V3 tokenizer.

class DeepSeekV3Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto t = Tokenizer::FromDirectory(std::string(DS_SOURCE_DIR) + "/tests/data/tokenizers/deepseek-v3");
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = std::move(*t).release();
    auto v = TokenVocabulary::FromTokenizer(*tokenizer_);
    ASSERT_TRUE(v.ok()) << v.status();
    vocab_ = new std::shared_ptr<const TokenVocabulary>(*v);
  }
  static Tokenizer* tokenizer_;
  static std::shared_ptr<const TokenVocabulary>* vocab_;
};
Tokenizer* DeepSeekV3Test::tokenizer_ = nullptr;
std::shared_ptr<const TokenVocabulary>* DeepSeekV3Test::vocab_ = nullptr;

TEST_F(DeepSeekV3Test, VocabularyBytes) {
  const TokenVocabulary& v = **vocab_;
  EXPECT_EQ(v.size(), tokenizer_->vocab_size());
  EXPECT_EQ(v.eos_id(), *tokenizer_->eos_id());
  EXPECT_EQ(v.token_bytes(*tokenizer_->TokenToId("Ġworld")), " world");
  EXPECT_EQ(v.token_bytes(*tokenizer_->bos_id()), "");
  EXPECT_EQ(v.token_bytes(*tokenizer_->TokenToId("<｜User｜>")), "");  // added, not special
  // Decoding a text's ids gives back its bytes.
  const std::string text = "{\"név\": \"€😀\", \"x\": [1, 2.5e-3]}";
  std::string bytes;
  for (int32_t id : tokenizer_->Encode(text, false)) bytes += v.token_bytes(id);
  EXPECT_EQ(bytes, text);
}

TEST_F(DeepSeekV3Test, EncodedJsonIsAccepted) {
  json::value schema = json::parse(kPersonSchema);
  auto g = Compile(schema);
  JsonConstraint c(g, *vocab_);
  const std::string text = "{\"name\": \"Zoë 😀\", \"age\": 41, \"tags\": [\"ab\"], \"kind\": \"é€😀\", \"ok\": true}";
  for (int32_t id : tokenizer_->Encode(text, false)) {
    ASSERT_TRUE(Bit(c.AllowedTokens(), id)) << tokenizer_->IdToToken(id);
    ASSERT_TRUE(c.Accept(id).ok());
  }
  EXPECT_TRUE(c.Complete());
  EXPECT_TRUE(Bit(c.AllowedTokens(), (*vocab_)->eos_id()));
}

TEST_F(DeepSeekV3Test, MaskEqualsBruteForce) {
  json::value schema = json::parse(kPersonSchema);
  auto g = Compile(schema);
  std::mt19937 rng(11);
  JsonConstraint c(g, *vocab_);
  // Check a few states of one walk against the reference over all 129k tokens.
  for (int step = 0; step < 12 && !c.Finished(); ++step) {
    CheckMaskAgainstBruteForce(c, **vocab_);
    std::vector<int32_t> allowed = Allowed(c.AllowedTokens(), (*vocab_)->size());
    ASSERT_FALSE(allowed.empty());
    ASSERT_TRUE(c.Accept(allowed[std::uniform_int_distribution<size_t>(0, allowed.size() - 1)(rng)]).ok());
  }
}

TEST_F(DeepSeekV3Test, RandomWalksValidate) {
  WalkAndValidate(json::parse(R"({"type":"object"})"), JsonGrammar::AnyObject(), *vocab_, 20, 60, false, 12);
  json::value person = json::parse(kPersonSchema);
  WalkAndValidate(person, Compile(person), *vocab_, 30, 60, false, 13);
  std::string pyd = kPydanticSchema;
  pyd.replace(pyd.find(", \"maxProperties_not_here\": 0"), std::string(", \"maxProperties_not_here\": 0").size(), "");
  json::value p = json::parse(pyd);
  WalkAndValidate(p, Compile(p), *vocab_, 30, 60, false, 14);
}

}  // namespace
}  // namespace deepshard::structured
