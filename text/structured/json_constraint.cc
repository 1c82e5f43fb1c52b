#include "text/structured/json_constraint.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace deepshard::structured {

using structured_internal::Frame;
using structured_internal::GrammarNode;
using structured_internal::LiteralTrie;
using structured_internal::NodeKind;
using structured_internal::StackSet;

namespace {

// Frame sub-states.
enum : uint8_t {
  kStart = 0,  // before the first byte of the value
  // object
  kObjOpen,        // after '{'
  kObjKey,         // inside a listed key (a: key trie node)
  kObjAfterKey,    // before ':'
  kObjAfterColon,  // before the value
  kObjAfterValue,  // before ',' or '}'
  kObjAfterComma,  // before the next key
  // array
  kArrOpen,        // after '['
  kArrAfterValue,  // before ',' or ']'
  kArrAfterComma,  // before the next item
  // string (a: characters so far, saturated)
  kStrIn,
  kStrEsc,          // after '\'
  kStrHex,          // in \uXXXX (aux: digits seen; b: surrogate tracking)
  kStrUtf8,         // in a multi-byte character (aux: bytes left; b: lo << 8 | hi of the next)
  kStrLowBackslash, // after a high surrogate escape: '\' of the low one
  kStrLowU,         // 'u' of the low one
  // number
  kNumMinus,
  kNumZero,
  kNumInt,
  kNumDot,
  kNumFrac,
  kNumE,
  kNumESign,
  kNumExp,
  // literal set (a: trie node)
  kLit,
};

// kStrHex surrogate tracking in Frame::b.
constexpr int32_t kHexPlain = 0, kHexFirstD = 1, kHexHigh = 2, kHexWantLow = 4;
constexpr int32_t kUtf8Any = 0x80BF;
constexpr int32_t kMaxIntDigits = 15, kMaxFracDigits = 15, kMaxExpDigits = 2;

enum class Step { kDead, kConsumed, kPop, kRefeedPop, kPush };

inline bool IsWs(uint8_t c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
inline bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }
inline int HexValue(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The byte-level pushdown automaton over a grammar (stateless; states are StackSets).
class Machine {
 public:
  explicit Machine(const JsonGrammar& g) : g_(g), nodes_(g.nodes()), max_ws_(g.max_whitespace()) {}

  StackSet Initial() const {
    StackSet s;
    for (int32_t alt : nodes_[static_cast<size_t>(g_.root())].expansion) {
      const size_t i = s.Add();
      s.stacks[i] = {Frame{}, Frame{alt}};
    }
    return s;
  }

  // out = the stacks of `in` after byte c, dead ones dropped, equal ones merged.
  void Feed(const StackSet& in, uint8_t c, StackSet* out) const {
    out->n = 0;
    for (size_t i = 0; i < in.n; ++i) {
      const size_t idx = out->Add();
      out->stacks[idx] = in.stacks[i];
      Run(out, idx, c);
    }
    // Compact: drop empty (dead) stacks and duplicates.
    size_t w = 0;
    for (size_t r = 0; r < out->n; ++r) {
      std::vector<Frame>& s = out->stacks[r];
      if (s.empty()) continue;
      bool dup = false;
      for (size_t k = 0; k < w && !dup; ++k) dup = SameStack(out->stacks[k], s);
      if (dup) continue;
      if (r != w) std::swap(out->stacks[w], out->stacks[r]);
      ++w;
    }
    out->n = w;
  }

  bool Feed(std::string_view bytes, StackSet* state) const {
    StackSet next;
    for (char ch : bytes) {
      Feed(*state, static_cast<uint8_t>(ch), &next);
      if (next.n == 0) return false;
      std::swap(*state, next);
    }
    return true;
  }

  // The value on top can end here without another byte.
  bool CanEnd(const Frame& f) const {
    const GrammarNode& n = nodes_[static_cast<size_t>(f.node)];
    switch (n.kind) {
      case NodeKind::kNumber:
      case NodeKind::kInteger: return f.st == kNumZero || f.st == kNumInt || f.st == kNumFrac || f.st == kNumExp;
      case NodeKind::kLiterals: return f.st == kLit && n.literals.nodes[static_cast<size_t>(f.a)].value >= 0;
      default: return false;
    }
  }

  bool Complete(const StackSet& s) const {
    for (size_t i = 0; i < s.n; ++i) {
      const auto& st = s.stacks[i];
      if (st.size() == 1 || (st.size() == 2 && CanEnd(st[1]))) return true;
    }
    return false;
  }

 private:
  static bool SameStack(const std::vector<Frame>& x, const std::vector<Frame>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(Frame)) == 0;
  }

  // Feeds c to out->stacks[idx]; a dead stack is left empty.
  void Run(StackSet* out, size_t idx, uint8_t c) const {
    while (true) {
      std::vector<Frame>& s = out->stacks[idx];
      int32_t push = -1;
      switch (StepFrame(s.back(), c, &push)) {
        case Step::kDead: s.clear(); return;
        case Step::kConsumed: return;
        case Step::kPop: s.pop_back(); return;
        case Step::kRefeedPop: s.pop_back(); continue;
        case Step::kPush: {
          const std::vector<int32_t>& alts = nodes_[static_cast<size_t>(push)].expansion;
          for (size_t k = 1; k < alts.size(); ++k) {
            const size_t j = out->Add();
            out->stacks[j] = out->stacks[idx];
            out->stacks[j].push_back(Frame{alts[k]});
            Run(out, j, c);
          }
          out->stacks[idx].push_back(Frame{alts[0]});
          continue;
        }
      }
    }
  }

  Step Ws(Frame& f) const {
    if (f.ws >= max_ws_) return Step::kDead;
    ++f.ws;
    return Step::kConsumed;
  }
  static void Go(Frame& f, uint8_t st) {
    f.st = st;
    f.ws = 0;
  }

  Step StepFrame(Frame& f, uint8_t c, int32_t* push) const {
    if (f.node < 0) return IsWs(c) ? Ws(f) : Step::kDead;  // root: trailing whitespace
    const GrammarNode& n = nodes_[static_cast<size_t>(f.node)];
    switch (n.kind) {
      case NodeKind::kObject: return StepObject(f, n, c, push);
      case NodeKind::kArray: return StepArray(f, n, c, push);
      case NodeKind::kString: return StepString(f, n, c);
      case NodeKind::kNumber: return StepNumber(f, c, /*integer=*/false);
      case NodeKind::kInteger: return StepNumber(f, c, /*integer=*/true);
      case NodeKind::kLiterals: return StepLiteral(f, n.literals, c);
      case NodeKind::kUnion: break;  // never on a stack: expanded when pushed
    }
    return Step::kDead;
  }

  static bool CanClose(const Frame& f, const GrammarNode& n) {
    return n.properties.empty() || f.b >= n.last_required;
  }

  Step StartKey(Frame& f, const GrammarNode& n, int32_t* push) const {
    if (n.properties.empty()) {
      if (n.additional < 0) return Step::kDead;
      Go(f, kObjAfterKey);
      f.b = 0;
      *push = g_.key_string_node();
      return Step::kPush;
    }
    const int32_t child = n.key_tries[static_cast<size_t>(f.b + 1)].Child(0, '"');
    if (child < 0) return Step::kDead;
    Go(f, kObjKey);
    f.a = child;
    return Step::kConsumed;
  }

  Step StepObject(Frame& f, const GrammarNode& n, uint8_t c, int32_t* push) const {
    switch (f.st) {
      case kStart:
        if (c != '{') return Step::kDead;
        Go(f, kObjOpen);
        f.b = -1;
        return Step::kConsumed;
      case kObjOpen:
        if (IsWs(c)) return Ws(f);
        if (c == '}') return CanClose(f, n) ? Step::kPop : Step::kDead;
        if (c == '"') return StartKey(f, n, push);
        return Step::kDead;
      case kObjAfterComma:
        if (IsWs(c)) return Ws(f);
        if (c == '"') return StartKey(f, n, push);
        return Step::kDead;
      case kObjKey: {
        const LiteralTrie& t = n.key_tries[static_cast<size_t>(f.b + 1)];
        const int32_t child = t.Child(f.a, c);
        if (child < 0) return Step::kDead;
        const int32_t v = t.nodes[static_cast<size_t>(child)].value;
        if (v >= 0) {  // keys end with '"': a leaf
          Go(f, kObjAfterKey);
          f.b = v;
          f.a = 0;
        } else {
          f.a = child;
        }
        return Step::kConsumed;
      }
      case kObjAfterKey:
        if (IsWs(c)) return Ws(f);
        if (c != ':') return Step::kDead;
        Go(f, kObjAfterColon);
        return Step::kConsumed;
      case kObjAfterColon:
        if (IsWs(c)) return Ws(f);
        Go(f, kObjAfterValue);
        *push = n.properties.empty() ? n.additional : n.properties[static_cast<size_t>(f.b)].value;
        return Step::kPush;
      case kObjAfterValue:
        if (IsWs(c)) return Ws(f);
        if (c == ',') {
          const bool more = n.properties.empty() ? n.additional >= 0
                                                 : f.b + 1 < static_cast<int32_t>(n.properties.size());
          if (!more) return Step::kDead;
          Go(f, kObjAfterComma);
          return Step::kConsumed;
        }
        if (c == '}') return CanClose(f, n) ? Step::kPop : Step::kDead;
        return Step::kDead;
      default: return Step::kDead;
    }
  }

  Step StepArray(Frame& f, const GrammarNode& n, uint8_t c, int32_t* push) const {
    const int32_t cap = n.max_items >= 0 ? n.max_items : n.min_items;  // counts saturate
    switch (f.st) {
      case kStart:
        if (c != '[') return Step::kDead;
        Go(f, kArrOpen);
        f.a = 0;
        return Step::kConsumed;
      case kArrOpen:
        if (IsWs(c)) return Ws(f);
        if (c == ']') return n.min_items == 0 ? Step::kPop : Step::kDead;
        if (n.max_items == 0) return Step::kDead;
        f.a = std::min(1, cap);
        Go(f, kArrAfterValue);
        *push = n.items;
        return Step::kPush;
      case kArrAfterValue:
        if (IsWs(c)) return Ws(f);
        if (c == ',') {
          if (n.max_items >= 0 && f.a >= n.max_items) return Step::kDead;
          Go(f, kArrAfterComma);
          return Step::kConsumed;
        }
        if (c == ']') return f.a >= n.min_items ? Step::kPop : Step::kDead;
        return Step::kDead;
      case kArrAfterComma:
        if (IsWs(c)) return Ws(f);
        f.a = std::min(f.a + 1, cap);
        Go(f, kArrAfterValue);
        *push = n.items;
        return Step::kPush;
      default: return Step::kDead;
    }
  }

  static Step StepString(Frame& f, const GrammarNode& n, uint8_t c) {
    switch (f.st) {
      case kStart:
        if (c != '"') return Step::kDead;
        f.st = kStrIn;
        f.a = 0;
        return Step::kConsumed;
      case kStrIn: {
        if (c == '"') return f.a >= n.min_length ? Step::kPop : Step::kDead;
        if (c < 0x20) return Step::kDead;
        if (n.max_length >= 0 && f.a >= n.max_length) return Step::kDead;
        const int32_t cap = n.max_length >= 0 ? n.max_length : n.min_length;
        if (c < 0x80) {
          f.a = std::min(f.a + 1, cap);
          if (c == '\\') f.st = kStrEsc;
          return Step::kConsumed;
        }
        int32_t range = kUtf8Any;
        uint8_t left;
        if (c >= 0xC2 && c <= 0xDF) {
          left = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
          left = 2;
          if (c == 0xE0) range = 0xA0BF;
          if (c == 0xED) range = 0x809F;  // no UTF-16 surrogates
        } else if (c >= 0xF0 && c <= 0xF4) {
          left = 3;
          if (c == 0xF0) range = 0x90BF;
          if (c == 0xF4) range = 0x808F;  // <= U+10FFFF
        } else {
          return Step::kDead;
        }
        f.a = std::min(f.a + 1, cap);
        f.st = kStrUtf8;
        f.aux = left;
        f.b = range;
        return Step::kConsumed;
      }
      case kStrUtf8:
        if (c < (f.b >> 8) || c > (f.b & 0xFF)) return Step::kDead;
        if (--f.aux == 0) {
          f.st = kStrIn;
          f.b = 0;
        } else {
          f.b = kUtf8Any;
        }
        return Step::kConsumed;
      case kStrEsc:
        switch (c) {
          case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            f.st = kStrIn;
            return Step::kConsumed;
          case 'u':
            f.st = kStrHex;
            f.aux = 0;
            f.b = kHexPlain;
            return Step::kConsumed;
          default: return Step::kDead;
        }
      case kStrHex: {
        const int h = HexValue(c);
        if (h < 0) return Step::kDead;
        if (f.aux == 0) {
          if (f.b == kHexWantLow) {
            if (h != 0xD) return Step::kDead;
          } else if (h == 0xD) {
            f.b = kHexFirstD;
          }
        } else if (f.aux == 1) {
          if (f.b == kHexWantLow) {
            if (h < 0xC) return Step::kDead;
          } else if (f.b == kHexFirstD) {
            if (h >= 0xC) return Step::kDead;  // a lone low surrogate
            f.b = h >= 0x8 ? kHexHigh : kHexPlain;
          }
        }
        if (++f.aux == 4) {
          f.st = f.b == kHexHigh ? kStrLowBackslash : kStrIn;
          f.aux = 0;
          f.b = 0;
        }
        return Step::kConsumed;
      }
      case kStrLowBackslash:
        if (c != '\\') return Step::kDead;
        f.st = kStrLowU;
        return Step::kConsumed;
      case kStrLowU:
        if (c != 'u') return Step::kDead;
        f.st = kStrHex;
        f.aux = 0;
        f.b = kHexWantLow;
        return Step::kConsumed;
      default: return Step::kDead;
    }
  }

  // Digits are bounded so that every number parses (as an int64 or a finite double)
  // and a model cannot loop on digits: kMaxIntDigits before the point,
  // kMaxFracDigits after it, kMaxExpDigits in the exponent (f.a counts them).
  static Step StepNumber(Frame& f, uint8_t c, bool integer) {
    const bool frac_ok = !integer;
    auto digit = [&](uint8_t st, int32_t max) {
      if (f.st != st) {
        f.st = st;
        f.a = 0;
      }
      if (f.a >= max) return Step::kDead;
      ++f.a;
      return Step::kConsumed;
    };
    switch (f.st) {
      case kStart:
      case kNumMinus:
        if (c == '-' && f.st == kStart) {
          f.st = kNumMinus;
          return Step::kConsumed;
        }
        if (c == '0') {
          f.st = kNumZero;
          return Step::kConsumed;
        }
        if (c >= '1' && c <= '9') return digit(kNumInt, kMaxIntDigits);
        return Step::kDead;
      case kNumZero:
      case kNumInt:
        if (f.st == kNumInt && IsDigit(c)) return digit(kNumInt, kMaxIntDigits);
        if (frac_ok && c == '.') {
          f.st = kNumDot;
          f.a = 0;
          return Step::kConsumed;
        }
        if (frac_ok && (c == 'e' || c == 'E')) {
          f.st = kNumE;
          f.a = 0;
          return Step::kConsumed;
        }
        return Step::kRefeedPop;
      case kNumDot:
        if (!IsDigit(c)) return Step::kDead;
        return digit(kNumFrac, kMaxFracDigits);
      case kNumFrac:
        if (IsDigit(c)) return digit(kNumFrac, kMaxFracDigits);
        if (c == 'e' || c == 'E') {
          f.st = kNumE;
          f.a = 0;
          return Step::kConsumed;
        }
        return Step::kRefeedPop;
      case kNumE:
        if (c == '+' || c == '-') {
          f.st = kNumESign;
          return Step::kConsumed;
        }
        [[fallthrough]];
      case kNumESign:
        if (!IsDigit(c)) return Step::kDead;
        return digit(kNumExp, kMaxExpDigits);
      case kNumExp:
        if (IsDigit(c)) return digit(kNumExp, kMaxExpDigits);
        return Step::kRefeedPop;
      default: return Step::kDead;
    }
  }

  static Step StepLiteral(Frame& f, const LiteralTrie& t, uint8_t c) {
    if (f.st == kStart) {
      f.st = kLit;
      f.a = 0;
    }
    const int32_t child = t.Child(f.a, c);
    if (child >= 0) {
      f.a = child;
      return t.nodes[static_cast<size_t>(child)].children.empty() ? Step::kPop : Step::kConsumed;
    }
    // The literal may end here (e.g. enum [1, 12] after "1"): the byte is the parent's.
    if (f.a != 0 && t.nodes[static_cast<size_t>(f.a)].value >= 0) return Step::kRefeedPop;
    return Step::kDead;
  }

  const JsonGrammar& g_;
  const std::vector<GrammarNode>& nodes_;
  int max_ws_;
};

}  // namespace

JsonConstraint::JsonConstraint(std::shared_ptr<const JsonGrammar> grammar, std::shared_ptr<const TokenVocabulary> vocab)
    : grammar_(std::move(grammar)), vocab_(std::move(vocab)) {
  state_ = Machine(*grammar_).Initial();
}

bool JsonConstraint::Complete() const { return !finished_ && Machine(*grammar_).Complete(state_); }

bool JsonConstraint::CanAcceptBytes(std::string_view bytes) const {
  if (finished_) return false;
  StackSet s = state_;
  return Machine(*grammar_).Feed(bytes, &s);
}

absl::Status JsonConstraint::Accept(int32_t token) {
  if (token < 0 || token >= vocab_->size()) {
    return absl::FailedPreconditionError(absl::StrCat("JsonConstraint: token ", token, " is out of the vocabulary"));
  }
  if (finished_) return absl::FailedPreconditionError("JsonConstraint: EOS was already accepted");
  const Machine m(*grammar_);
  if (token == vocab_->eos_id()) {
    if (!m.Complete(state_)) {
      return absl::FailedPreconditionError("JsonConstraint: EOS before the JSON value is complete");
    }
    finished_ = true;
    mask_.reset();
    return absl::OkStatus();
  }
  const std::string& bytes = vocab_->token_bytes(token);
  StackSet s = state_;
  if (bytes.empty() || !m.Feed(bytes, &s)) {
    return absl::FailedPreconditionError(absl::StrCat("JsonConstraint: token ", token, " is not allowed here"));
  }
  state_ = std::move(s);
  mask_.reset();
  return absl::OkStatus();
}

std::string JsonConstraint::StateKey() const {
  std::vector<size_t> order(state_.n);
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto bytes = [&](size_t i) {
    const auto& s = state_.stacks[i];
    return std::string_view(reinterpret_cast<const char*>(s.data()), s.size() * sizeof(Frame));
  };
  if (order.size() > 1) std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return bytes(x) < bytes(y); });
  std::string key;
  const uint64_t uid = vocab_->uid();
  key.append(reinterpret_cast<const char*>(&uid), sizeof(uid));
  for (size_t i : order) {
    const auto size = static_cast<uint32_t>(state_.stacks[i].size());
    key.append(reinterpret_cast<const char*>(&size), sizeof(size));
    key.append(bytes(i));
  }
  return key;
}

void JsonConstraint::ComputeMask(std::vector<uint64_t>* mask) {
  const Machine m(*grammar_);
  const auto& trie = vocab_->trie();
  if (levels_.size() < static_cast<size_t>(vocab_->max_depth()) + 1) levels_.resize(vocab_->max_depth() + 1);
  uint64_t* words = mask->data();
  for (size_t i = 0; i < trie.size();) {
    const TokenVocabulary::TrieNode& t = trie[i];
    const StackSet& parent = t.depth == 1 ? state_ : levels_[t.depth - 1];
    StackSet& here = levels_[t.depth];
    m.Feed(parent, t.byte, &here);
    if (here.n == 0) {
      i = t.subtree_end;
      continue;
    }
    for (int32_t id : vocab_->TokensAt(i)) words[id >> 6] |= uint64_t{1} << (id & 63);
    ++i;
  }
  if (m.Complete(state_) && vocab_->eos_id() >= 0) {
    const int32_t e = vocab_->eos_id();
    words[e >> 6] |= uint64_t{1} << (e & 63);
  }
}

const std::vector<uint64_t>& JsonConstraint::AllowedTokens() {
  if (mask_ != nullptr) return *mask_;
  const size_t n_words = static_cast<size_t>((vocab_->size() + 63) / 64);
  if (finished_) {
    auto m = std::make_shared<std::vector<uint64_t>>(n_words, 0);
    if (const int32_t e = vocab_->eos_id(); e >= 0) (*m)[e >> 6] |= uint64_t{1} << (e & 63);
    mask_ = std::move(m);
    return *mask_;
  }
  std::string key = StateKey();
  if (auto hit = grammar_->cache().Find(key)) {
    ++cache_hits_;
    mask_ = std::move(hit);
    return *mask_;
  }
  auto m = std::make_shared<std::vector<uint64_t>>(n_words, 0);
  ComputeMask(m.get());
  ++masks_computed_;
  mask_ = m;
  grammar_->cache().Insert(std::move(key), std::move(m));
  return *mask_;
}

}  // namespace deepshard::structured
