// JsonConstraint: one request's constrained-decoding state for OpenAI
// `response_format` (json_object, json_schema).
//
// The server keeps one JsonConstraint per request; before each step it asks for
// AllowedTokens() (a bitset over the vocabulary), the sampler masks the logits with
// it, and the sampled id goes back through Accept(). EOS is allowed exactly when a
// complete value has been produced (then only EOS and up to max_whitespace trailing
// whitespace bytes, or more digits when the root value is a number).
//
// Design
// ------
// The grammar (json_schema.h) is a graph of nodes: object, array, string, number,
// integer, literal set (enum/const/true/false/null, a byte trie), and unions
// (anyOf, oneOf, type lists, $ref). The automaton runs byte by byte. Its state is a
// set of stacks of frames; a frame is (node, sub-state, counters), e.g. "object node
// 7, after the value of property 2, 1 whitespace byte seen" or "string node 4,
// inside a 3-byte UTF-8 character, 1 continuation byte left". Feeding a byte steps
// the top frame, which may consume it, consume it and pop (a closing quote, '}',
// ']'), pop and hand the byte to its parent (a number ends at the ',' after it), or
// push a child (the value after ':'). Pushing a union pushes each alternative on a
// copy of the stack; copies that die are dropped, equal copies merged. Recursive
// schemas ($ref to an enclosing definition) just grow the stack.
//
// Tokens are byte strings that may span several grammar elements ("},\n", "\":\"")
// or cut a UTF-8 character: the automaton does not care, it sees bytes.
//
// Masks: a mask is computed by walking the vocabulary's byte trie
// (token_vocabulary.h) from the current state: each trie node is one automaton step
// from its parent's state, and a dead state prunes the whole subtree, so tokens that
// share a prefix share the work, and e.g. after `{"na` only the tokens that can
// continue a key are visited. Masks are cached by the exact automaton state (its
// canonical serialization) in the grammar's MaskCache, shared by every constraint
// on that grammar and vocabulary: "inside an unconstrained string value of property
// `name` of the 2nd-level object" recurs at every step of that string and across
// requests, so most steps are a cache hit and cost a hash of ~100 bytes. String
// length and array item counters saturate at the largest bound that matters, which
// keeps the number of distinct states small.
//
// Example (a tiny vocabulary):
//   auto vocab = TokenVocabulary::FromBytes({"{", "}", "\"", "a", "\":", "1", ","}, -1);
//   JsonConstraint c(JsonGrammar::AnyObject(), vocab);
//   c.AllowedTokens();   // bits of "{" only
//   c.Accept(0);         // "{"
//   c.AllowedTokens();   // "}", "\"" (a key) and whitespace: none here
//   ...
//
// Not thread-safe: one request, one thread at a time (the MaskCache behind it is
// shared and locked).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "text/structured/json_schema.h"
#include "text/structured/token_vocabulary.h"

namespace deepshard::structured {

namespace structured_internal {

// One frame of a stack (16 bytes, no padding: frames are hashed as bytes).
struct Frame {
  int32_t node = -1;  // grammar node; -1: the root frame (after the value)
  int32_t a = 0;      // trie node, char or item count
  int32_t b = 0;      // last property, UTF-8 range, surrogate state
  uint8_t st = 0;     // sub-state
  uint8_t ws = 0;     // consecutive whitespace bytes in this sub-state
  uint8_t aux = 0;    // UTF-8 bytes / hex digits left
  uint8_t pad = 0;
};
static_assert(sizeof(Frame) == 16);

// A set of stacks; slots keep their capacity when reused.
struct StackSet {
  std::vector<std::vector<Frame>> stacks;
  size_t n = 0;
  size_t Add() {
    if (n == stacks.size()) stacks.emplace_back();
    return n++;
  }
};

}  // namespace structured_internal

class JsonConstraint {
 public:
  JsonConstraint(std::shared_ptr<const JsonGrammar> grammar, std::shared_ptr<const TokenVocabulary> vocab);

  // Allowed next tokens: bit i of word i / 64 is token i. Never empty while the
  // grammar can still produce something (after EOS: EOS only). The reference is
  // valid until the next Accept.
  const std::vector<uint64_t>& AllowedTokens();
  // Advances by a sampled token. FailedPrecondition if it is not allowed (the state
  // is then unchanged).
  absl::Status Accept(int32_t token);
  // A full value has been produced (EOS is allowed).
  bool Complete() const;
  // EOS has been accepted.
  bool Finished() const { return finished_; }

  // Whether feeding `bytes` one by one keeps the automaton alive (the reference the
  // mask is checked against in tests; does not change the state).
  bool CanAcceptBytes(std::string_view bytes) const;

  // Counters for benchmarks: masks computed by walking the trie, and cache hits.
  int64_t masks_computed() const { return masks_computed_; }
  int64_t mask_cache_hits() const { return cache_hits_; }

 private:
  std::string StateKey() const;
  void ComputeMask(std::vector<uint64_t>* mask);

  std::shared_ptr<const JsonGrammar> grammar_;
  std::shared_ptr<const TokenVocabulary> vocab_;
  structured_internal::StackSet state_;
  std::vector<structured_internal::StackSet> levels_;  // scratch: one state per trie depth
  std::shared_ptr<const std::vector<uint64_t>> mask_;  // null: not computed for this state
  bool finished_ = false;
  int64_t masks_computed_ = 0;
  int64_t cache_hits_ = 0;
};

}  // namespace deepshard::structured
