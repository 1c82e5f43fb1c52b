// Recursive-descent parser for chat templates, following jinja2's parser.py
// rule for rule (parse_tuple, parse_condexpr, parse_or, ... parse_primary).
#include "text/chat/jinja_parser.h"

#include <algorithm>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "text/chat/jinja_builtins.h"

namespace deepshard::jinja {
namespace {

// Statements jinja2 knows that this interpreter does not implement.
constexpr std::string_view kUnsupportedStatements[] = {"block",   "extends", "include", "import", "from",
                                                       "autoescape", "do",   "trans",   "pluralize"};

std::string Describe(const Token& t) {
  switch (t.type) {
    case TokenType::kData: return "template data";
    case TokenType::kVariableBegin: return "'{{'";
    case TokenType::kVariableEnd: return "'}}'";
    case TokenType::kBlockBegin: return "'{%'";
    case TokenType::kBlockEnd: return "'%}'";
    case TokenType::kName: return absl::StrCat("'", t.value, "'");
    case TokenType::kString: return "string literal";
    case TokenType::kInteger: return "integer literal";
    case TokenType::kFloat: return "float literal";
    case TokenType::kOperator: return absl::StrCat("'", t.value, "'");
    case TokenType::kEof: return "end of template";
  }
  return "token";
}

ExprPtr NewExpr(ExprKind kind, SourcePos pos) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->pos = pos;
  return e;
}

// Sets the height of a finished node from its children and enforces
// kMaxExprHeight, which bounds the recursion of rendering and of destroying
// the tree (chains like a+b+c+... grow it without nesting).
absl::StatusOr<ExprPtr> Done(ExprPtr e) {
  int h = 0;
  auto see = [&h](const ExprPtr& c) {
    if (c) h = std::max(h, c->height);
  };
  see(e->a);
  see(e->b);
  see(e->c);
  for (const auto& x : e->args) see(x);
  for (const auto& x : e->kwargs) see(x.second);
  for (const auto& x : e->compares) see(x.second);
  for (const auto& x : e->pairs) {
    see(x.first);
    see(x.second);
  }
  e->height = h + 1;
  if (e->height > kMaxExprHeight) return ErrorAt(e->pos, "expression too deeply nested or too long a chain");
  return e;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  absl::StatusOr<Body> ParseAll() {
    ASSIGN_OR_RETURN(Body body, Subparse({}));
    if (cur().type != TokenType::kEof) return Fail(cur(), absl::StrCat("unexpected ", Describe(cur())));
    return body;
  }

 private:
  // Guards the recursion of the parser (and so of the renderer, which walks
  // the tree it builds).
  class DepthGuard {
   public:
    explicit DepthGuard(Parser* p) : p_(p) { ++p_->depth_; }
    ~DepthGuard() { --p_->depth_; }
    bool too_deep() const { return p_->depth_ > kMaxParseDepth; }

   private:
    Parser* p_;
  };

  // --- token stream ---------------------------------------------------------
  const Token& cur() const { return tokens_[i_]; }
  const Token& look() const { return tokens_[i_ + 1 < tokens_.size() ? i_ + 1 : i_]; }
  const Token& next() {
    const Token& t = tokens_[i_];
    if (i_ + 1 < tokens_.size()) ++i_;
    return t;
  }
  static bool IsName(const Token& t, std::string_view name) {
    return t.type == TokenType::kName && t.value == name;
  }
  static bool IsOp(const Token& t, std::string_view op) { return t.type == TokenType::kOperator && t.value == op; }
  bool SkipName(std::string_view name) {
    if (!IsName(cur(), name)) return false;
    next();
    return true;
  }
  bool SkipOp(std::string_view op) {
    if (!IsOp(cur(), op)) return false;
    next();
    return true;
  }
  absl::Status Fail(const Token& t, std::string_view message) const { return ErrorAt(t.pos, message); }
  absl::Status ExpectOp(std::string_view op) {
    if (SkipOp(op)) return absl::OkStatus();
    return Fail(cur(), absl::StrCat("expected '", AV(op), "', got ", Describe(cur())));
  }
  absl::StatusOr<Token> ExpectName() {
    if (cur().type != TokenType::kName) return Fail(cur(), absl::StrCat("expected a name, got ", Describe(cur())));
    return next();
  }
  absl::Status ExpectName(std::string_view name) {
    if (SkipName(name)) return absl::OkStatus();
    return Fail(cur(), absl::StrCat("expected '", AV(name), "', got ", Describe(cur())));
  }
  absl::Status ExpectType(TokenType type) {
    if (cur().type == type) {
      next();
      return absl::OkStatus();
    }
    Token want;
    want.type = type;
    return Fail(cur(), absl::StrCat("expected ", Describe(want), ", got ", Describe(cur())));
  }

  // --- statements -------------------------------------------------------------

  // Parses template data, {{ }} and statements until a block whose first name
  // is one of `end_tokens`; the stream is left on that name.
  absl::StatusOr<Body> Subparse(std::vector<std::string_view> end_tokens) {
    DepthGuard guard(this);
    if (guard.too_deep()) return Fail(cur(), "statements nested too deeply");
    Body body;
    while (cur().type != TokenType::kEof) {
      const Token& t = cur();
      if (t.type == TokenType::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kText;
        s->pos = t.pos;
        s->text = t.value;
        body.push_back(std::move(s));
        next();
      } else if (t.type == TokenType::kVariableBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kOutput;
        s->pos = cur().pos;
        ASSIGN_OR_RETURN(s->expr, ParseTuple(/*simplified=*/false, /*with_condexpr=*/true, {}, false));
        RETURN_IF_ERROR(ExpectType(TokenType::kVariableEnd));
        body.push_back(std::move(s));
      } else if (t.type == TokenType::kBlockBegin) {
        next();
        if (cur().type == TokenType::kName) {
          for (std::string_view end : end_tokens) {
            if (cur().value == end) return body;
          }
        }
        RETURN_IF_ERROR(ParseStatement(body, end_tokens));
        RETURN_IF_ERROR(ExpectType(TokenType::kBlockEnd));
      } else {
        return Fail(t, absl::StrCat("unexpected ", Describe(t)));
      }
    }
    return body;
  }

  // `:`? `%}` body `{% end...`; leaves the stream on the end name unless
  // `drop_needle`.
  absl::StatusOr<Body> ParseStatements(std::vector<std::string_view> end_tokens, bool drop_needle) {
    SkipOp(":");
    RETURN_IF_ERROR(ExpectType(TokenType::kBlockEnd));
    ASSIGN_OR_RETURN(Body body, Subparse(end_tokens));
    if (cur().type == TokenType::kEof) {
      std::string want;
      for (std::string_view e : end_tokens) absl::StrAppend(&want, want.empty() ? "" : " or ", "'", AV(e), "'");
      return Fail(cur(), absl::StrCat("unexpected end of template, expected ", want));
    }
    if (drop_needle) next();
    return body;
  }

  absl::Status ParseStatement(Body& body, const std::vector<std::string_view>& enclosing_ends) {
    const Token tag = cur();
    if (tag.type != TokenType::kName) return Fail(tag, absl::StrCat("tag name expected, got ", Describe(tag)));
    const std::string& name = tag.value;
    auto stmt = std::make_unique<Stmt>();
    stmt->pos = tag.pos;
    if (name == "for") {
      RETURN_IF_ERROR(ParseFor(*stmt));
    } else if (name == "if") {
      RETURN_IF_ERROR(ParseIf(*stmt));
    } else if (name == "set") {
      RETURN_IF_ERROR(ParseSet(*stmt));
    } else if (name == "macro") {
      RETURN_IF_ERROR(ParseMacro(*stmt));
    } else if (name == "call") {
      RETURN_IF_ERROR(ParseCallBlock(*stmt));
    } else if (name == "filter") {
      next();
      stmt->kind = StmtKind::kFilterBlock;
      ASSIGN_OR_RETURN(stmt->expr, ParseFilter(nullptr, /*start_inline=*/true));
      ASSIGN_OR_RETURN(stmt->body, ParseStatements({"endfilter"}, true));
    } else if (name == "with") {
      RETURN_IF_ERROR(ParseWith(*stmt));
    } else if (name == "print") {
      next();
      bool first = true;
      while (cur().type != TokenType::kBlockEnd) {
        if (!first) RETURN_IF_ERROR(ExpectOp(","));
        first = false;
        auto out = std::make_unique<Stmt>();
        out->kind = StmtKind::kOutput;
        out->pos = cur().pos;
        ASSIGN_OR_RETURN(out->expr, ParseExpression(true));
        body.push_back(std::move(out));
      }
      return absl::OkStatus();
    } else if (name == "break" || name == "continue") {
      next();
      if (loop_depth_ == 0) return Fail(tag, absl::StrCat("'", name, "' outside of a loop"));
      stmt->kind = name == "break" ? StmtKind::kBreak : StmtKind::kContinue;
    } else if (name == "generation") {
      next();
      stmt->kind = StmtKind::kGeneration;
      ASSIGN_OR_RETURN(stmt->body, ParseStatements({"endgeneration"}, true));
    } else {
      for (std::string_view u : kUnsupportedStatements) {
        if (name == u) return Fail(tag, absl::StrCat("unsupported statement '", name, "'"));
      }
      if (name.rfind("end", 0) == 0 || name == "else" || name == "elif") {
        std::string msg = absl::StrCat("unexpected '", name, "'");
        if (!enclosing_ends.empty()) {
          absl::StrAppend(&msg, " (expected '", AV(enclosing_ends.front()), "')");
        }
        return Fail(tag, msg);
      }
      return Fail(tag, absl::StrCat("unsupported statement '", name, "'"));
    }
    body.push_back(std::move(stmt));
    return absl::OkStatus();
  }

  absl::Status ParseFor(Stmt& s) {
    next();
    s.kind = StmtKind::kFor;
    ASSIGN_OR_RETURN(s.target, ParseAssignTarget(/*with_namespace=*/false, {"in"}));
    RETURN_IF_ERROR(ExpectName("in"));
    ASSIGN_OR_RETURN(s.expr, ParseTuple(false, /*with_condexpr=*/false, {"recursive"}, false));
    if (SkipName("if")) {
      ASSIGN_OR_RETURN(s.cond, ParseExpression(true));
    }
    if (IsName(cur(), "recursive")) return Fail(cur(), "unsupported recursive for loop");
    ++loop_depth_;
    for_stack_.push_back(&s);
    auto body = ParseStatements({"endfor", "else"}, false);
    for_stack_.pop_back();
    --loop_depth_;
    if (!body.ok()) return body.status();
    s.body = std::move(*body);
    if (next().value == "else") {
      ASSIGN_OR_RETURN(s.else_body, ParseStatements({"endfor"}, true));
    }
    return absl::OkStatus();
  }

  absl::Status ParseIf(Stmt& s) {
    next();
    s.kind = StmtKind::kIf;
    while (true) {
      ASSIGN_OR_RETURN(ExprPtr test, ParseTuple(false, /*with_condexpr=*/false, {}, false));
      ASSIGN_OR_RETURN(Body body, ParseStatements({"elif", "else", "endif"}, false));
      s.branches.emplace_back(std::move(test), std::move(body));
      const Token& t = next();
      if (t.value == "elif") continue;
      if (t.value == "else") {
        ASSIGN_OR_RETURN(s.else_body, ParseStatements({"endif"}, true));
      }
      return absl::OkStatus();
    }
  }

  absl::Status ParseSet(Stmt& s) {
    next();
    ASSIGN_OR_RETURN(s.target, ParseAssignTarget(/*with_namespace=*/true, {}));
    if (SkipOp("=")) {
      s.kind = StmtKind::kSet;
      ASSIGN_OR_RETURN(s.expr, ParseTuple(false, true, {}, false));
      return absl::OkStatus();
    }
    s.kind = StmtKind::kSetBlock;
    ASSIGN_OR_RETURN(s.expr, ParseFilter(nullptr, /*start_inline=*/false));
    ASSIGN_OR_RETURN(s.body, ParseStatements({"endset"}, true));
    return absl::OkStatus();
  }

  // Parses a macro body with its own loop context and name-use tracking.
  absl::StatusOr<Body> ParseMacroBody(Stmt& s, std::string_view end) {
    const int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;
    macro_stack_.push_back(&s);
    auto body = ParseStatements({end}, true);
    macro_stack_.pop_back();
    loop_depth_ = saved_loop_depth;
    return body;
  }

  absl::Status ParseSignature(Stmt& s) {
    RETURN_IF_ERROR(ExpectOp("("));
    while (!IsOp(cur(), ")")) {
      if (!s.params.empty()) RETURN_IF_ERROR(ExpectOp(","));
      ASSIGN_OR_RETURN(Token name, ExpectName());
      s.params.push_back(name.value);
      if (SkipOp("=")) {
        ASSIGN_OR_RETURN(ExprPtr def, ParseExpression(true));
        s.defaults.push_back(std::move(def));
      } else if (!s.defaults.empty()) {
        return Fail(name, "non-default argument follows default argument");
      }
    }
    return ExpectOp(")");
  }

  absl::Status ParseMacro(Stmt& s) {
    next();
    s.kind = StmtKind::kMacro;
    ASSIGN_OR_RETURN(Token name, ExpectName());
    s.name = name.value;
    RETURN_IF_ERROR(ParseSignature(s));
    ASSIGN_OR_RETURN(s.body, ParseMacroBody(s, "endmacro"));
    return absl::OkStatus();
  }

  absl::Status ParseCallBlock(Stmt& s) {
    const Token call_tok = next();
    s.kind = StmtKind::kCallBlock;
    s.name = "caller";
    if (IsOp(cur(), "(")) RETURN_IF_ERROR(ParseSignature(s));
    ASSIGN_OR_RETURN(s.expr, ParseExpression(true));
    if (s.expr->kind != ExprKind::kCall) return Fail(call_tok, "expected a call after 'call'");
    ASSIGN_OR_RETURN(s.body, ParseMacroBody(s, "endcall"));
    return absl::OkStatus();
  }

  absl::Status ParseWith(Stmt& s) {
    next();
    s.kind = StmtKind::kWith;
    while (cur().type != TokenType::kBlockEnd) {
      if (!s.params.empty()) RETURN_IF_ERROR(ExpectOp(","));
      ASSIGN_OR_RETURN(Token name, ExpectName());
      s.params.push_back(name.value);
      RETURN_IF_ERROR(ExpectOp("="));
      ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
      s.defaults.push_back(std::move(value));
    }
    ASSIGN_OR_RETURN(s.body, ParseStatements({"endwith"}, true));
    return absl::OkStatus();
  }

  bool IsTupleEnd(const std::vector<std::string_view>& extra_end) const {
    const Token& t = cur();
    if (t.type == TokenType::kVariableEnd || t.type == TokenType::kBlockEnd || IsOp(t, ")")) return true;
    if (t.type == TokenType::kEof) return true;
    for (std::string_view e : extra_end) {
      if (IsName(t, e)) return true;
    }
    return false;
  }

  // One target: a name, `ns.attr` (with_namespace), or a parenthesised tuple.
  absl::Status ParseTargetItem(AssignTarget& target, bool with_namespace, bool allow_parens) {
    const Token t = cur();
    if (allow_parens && IsOp(t, "(")) {
      next();
      AssignTarget inner;
      while (!IsOp(cur(), ")")) {
        if (!inner.items.empty()) RETURN_IF_ERROR(ExpectOp(","));
        if (IsOp(cur(), ")")) break;
        RETURN_IF_ERROR(ParseTargetItem(inner, with_namespace, false));
      }
      RETURN_IF_ERROR(ExpectOp(")"));
      if (!target.items.empty() || inner.items.size() < 2) {
        return Fail(t, "unsupported assignment target (nested tuple)");
      }
      target = std::move(inner);
      target.is_tuple = true;
      return absl::OkStatus();
    }
    if (t.type != TokenType::kName) return Fail(t, absl::StrCat("can't assign to ", Describe(t)));
    if (t.value == "true" || t.value == "false" || t.value == "none" || t.value == "True" || t.value == "False" ||
        t.value == "None") {
      return Fail(t, absl::StrCat("can't assign to constant '", t.value, "'"));
    }
    next();
    AssignTarget::Item item{t.value, "", t.pos};
    if (with_namespace && IsOp(cur(), ".")) {
      next();
      ASSIGN_OR_RETURN(Token attr, ExpectName());
      item.attr = attr.value;
    }
    target.items.push_back(std::move(item));
    return absl::OkStatus();
  }

  absl::StatusOr<AssignTarget> ParseAssignTarget(bool with_namespace, const std::vector<std::string_view>& extra_end) {
    AssignTarget target;
    bool parenthesised = false;
    while (true) {
      if (!target.items.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (IsTupleEnd(extra_end) && !target.items.empty()) break;
      const bool was_empty = target.items.empty();
      RETURN_IF_ERROR(ParseTargetItem(target, with_namespace, was_empty));
      if (was_empty && target.is_tuple) {
        parenthesised = true;
        break;
      }
      if (IsOp(cur(), ",")) {
        target.is_tuple = true;
      } else {
        break;
      }
    }
    (void)parenthesised;
    return target;
  }

  // --- expressions ------------------------------------------------------------

  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr) {
    DepthGuard guard(this);
    if (guard.too_deep()) return Fail(cur(), "expression nested too deeply");
    return with_condexpr ? ParseCondExpr() : ParseOr();
  }

  absl::StatusOr<ExprPtr> ParseCondExpr() {
    const SourcePos pos = cur().pos;
    ASSIGN_OR_RETURN(ExprPtr expr1, ParseOr());
    while (SkipName("if")) {
      ASSIGN_OR_RETURN(ExprPtr expr2, ParseOr());
      ExprPtr expr3;
      if (SkipName("else")) {
        DepthGuard guard(this);
        if (guard.too_deep()) return Fail(cur(), "expression nested too deeply");
        ASSIGN_OR_RETURN(expr3, ParseCondExpr());
      }
      auto e = NewExpr(ExprKind::kCond, pos);
      e->a = std::move(expr2);
      e->b = std::move(expr1);
      e->c = std::move(expr3);
      ASSIGN_OR_RETURN(expr1, Done(std::move(e)));
    }
    return expr1;
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseAnd());
    while (IsName(cur(), "or")) {
      const SourcePos pos = next().pos;
      ASSIGN_OR_RETURN(ExprPtr right, ParseAnd());
      auto e = NewExpr(ExprKind::kOr, pos);
      e->a = std::move(left);
      e->b = std::move(right);
      ASSIGN_OR_RETURN(left, Done(std::move(e)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseNot());
    while (IsName(cur(), "and")) {
      const SourcePos pos = next().pos;
      ASSIGN_OR_RETURN(ExprPtr right, ParseNot());
      auto e = NewExpr(ExprKind::kAnd, pos);
      e->a = std::move(left);
      e->b = std::move(right);
      ASSIGN_OR_RETURN(left, Done(std::move(e)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName(cur(), "not")) {
      DepthGuard guard(this);
      if (guard.too_deep()) return Fail(cur(), "expression nested too deeply");
      const SourcePos pos = next().pos;
      ASSIGN_OR_RETURN(ExprPtr inner, ParseNot());
      auto e = NewExpr(ExprKind::kNot, pos);
      e->a = std::move(inner);
      return Done(std::move(e));
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    const SourcePos pos = cur().pos;
    ASSIGN_OR_RETURN(ExprPtr expr, ParseMath1());
    std::vector<std::pair<CompareOp, ExprPtr>> ops;
    while (true) {
      const Token& t = cur();
      CompareOp op;
      if (IsOp(t, "==")) {
        op = CompareOp::kEq;
      } else if (IsOp(t, "!=")) {
        op = CompareOp::kNe;
      } else if (IsOp(t, "<")) {
        op = CompareOp::kLt;
      } else if (IsOp(t, "<=")) {
        op = CompareOp::kLe;
      } else if (IsOp(t, ">")) {
        op = CompareOp::kGt;
      } else if (IsOp(t, ">=")) {
        op = CompareOp::kGe;
      } else if (IsName(t, "in")) {
        op = CompareOp::kIn;
      } else if (IsName(t, "not") && IsName(look(), "in")) {
        next();
        op = CompareOp::kNotIn;
      } else {
        break;
      }
      next();
      ASSIGN_OR_RETURN(ExprPtr right, ParseMath1());
      ops.emplace_back(op, std::move(right));
    }
    if (ops.empty()) return expr;
    auto e = NewExpr(ExprKind::kCompare, pos);
    e->a = std::move(expr);
    e->compares = std::move(ops);
    return Done(std::move(e));
  }

  absl::StatusOr<ExprPtr> MakeBinary(BinaryOp op, SourcePos pos, ExprPtr a, ExprPtr b) {
    auto e = NewExpr(ExprKind::kBinary, pos);
    e->op = op;
    e->a = std::move(a);
    e->b = std::move(b);
    return Done(std::move(e));
  }

  absl::StatusOr<ExprPtr> ParseMath1() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseConcat());
    while (IsOp(cur(), "+") || IsOp(cur(), "-")) {
      const Token& t = next();
      const BinaryOp op = t.value == "+" ? BinaryOp::kAdd : BinaryOp::kSub;
      ASSIGN_OR_RETURN(ExprPtr right, ParseConcat());
      ASSIGN_OR_RETURN(left, MakeBinary(op, t.pos, std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseConcat() {
    const SourcePos pos = cur().pos;
    ASSIGN_OR_RETURN(ExprPtr first, ParseMath2());
    if (!IsOp(cur(), "~")) return first;
    auto e = NewExpr(ExprKind::kConcat, pos);
    e->args.push_back(std::move(first));
    while (SkipOp("~")) {
      ASSIGN_OR_RETURN(ExprPtr part, ParseMath2());
      e->args.push_back(std::move(part));
    }
    return Done(std::move(e));
  }

  absl::StatusOr<ExprPtr> ParseMath2() {
    ASSIGN_OR_RETURN(ExprPtr left, ParsePow());
    while (IsOp(cur(), "*") || IsOp(cur(), "/") || IsOp(cur(), "//") || IsOp(cur(), "%")) {
      const Token& t = next();
      const BinaryOp op = t.value == "*"   ? BinaryOp::kMul
                          : t.value == "/" ? BinaryOp::kDiv
                          : t.value == "//" ? BinaryOp::kFloorDiv
                                            : BinaryOp::kMod;
      ASSIGN_OR_RETURN(ExprPtr right, ParsePow());
      ASSIGN_OR_RETURN(left, MakeBinary(op, t.pos, std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParsePow() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseUnary(true));
    while (IsOp(cur(), "**")) {
      const Token& t = next();
      ASSIGN_OR_RETURN(ExprPtr right, ParseUnary(true));
      ASSIGN_OR_RETURN(left, MakeBinary(BinaryOp::kPow, t.pos, std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    DepthGuard guard(this);
    if (guard.too_deep()) return Fail(cur(), "expression nested too deeply");
    ExprPtr node;
    if (IsOp(cur(), "-") || IsOp(cur(), "+")) {
      const Token& t = next();
      ASSIGN_OR_RETURN(ExprPtr inner, ParseUnary(false));
      node = NewExpr(t.value == "-" ? ExprKind::kNeg : ExprKind::kPos, t.pos);
      node->a = std::move(inner);
      ASSIGN_OR_RETURN(node, Done(std::move(node)));
    } else {
      ASSIGN_OR_RETURN(node, ParsePrimary());
    }
    ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
    if (with_filter) {
      ASSIGN_OR_RETURN(node, ParseFilterExpr(std::move(node)));
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token t = cur();
    switch (t.type) {
      case TokenType::kName: {
        next();
        auto e = NewExpr(ExprKind::kConst, t.pos);
        if (t.value == "true" || t.value == "True") {
          e->value = Value::Bool(true);
        } else if (t.value == "false" || t.value == "False") {
          e->value = Value::Bool(false);
        } else if (t.value == "none" || t.value == "None") {
          e->value = Value::None();
        } else {
          e->kind = ExprKind::kName;
          e->name = t.value;
          if (t.value == "loop" && !for_stack_.empty()) for_stack_.back()->uses_loop = true;
          if (!macro_stack_.empty()) {
            Stmt* m = macro_stack_.back();
            if (t.value == "varargs") m->uses_varargs = true;
            if (t.value == "kwargs") m->uses_kwargs = true;
            if (t.value == "caller") m->uses_caller = true;
          }
        }
        return e;
      }
      case TokenType::kString: {
        std::string s;
        while (cur().type == TokenType::kString) s += next().value;  // adjacent literals concatenate
        auto e = NewExpr(ExprKind::kConst, t.pos);
        e->value = Value::Str(std::move(s));
        return e;
      }
      case TokenType::kInteger:
      case TokenType::kFloat: {
        next();
        auto e = NewExpr(ExprKind::kConst, t.pos);
        e->value = t.type == TokenType::kInteger ? Value::Int(t.int_value) : Value::Float(t.float_value);
        return e;
      }
      case TokenType::kOperator:
        if (t.value == "(") {
          next();
          ASSIGN_OR_RETURN(ExprPtr e, ParseTuple(false, true, {}, /*explicit_parentheses=*/true));
          RETURN_IF_ERROR(ExpectOp(")"));
          return e;
        }
        if (t.value == "[") return ParseList();
        if (t.value == "{") return ParseDict();
        break;
      default:
        break;
    }
    return Fail(t, absl::StrCat("unexpected ", Describe(t)));
  }

  absl::StatusOr<ExprPtr> ParseTuple(bool simplified, bool with_condexpr, const std::vector<std::string_view>& extra_end,
                                     bool explicit_parentheses) {
    const SourcePos pos = cur().pos;
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (IsTupleEnd(extra_end)) break;
      if (simplified) {
        ASSIGN_OR_RETURN(ExprPtr e, ParsePrimary());
        args.push_back(std::move(e));
      } else {
        ASSIGN_OR_RETURN(ExprPtr e, ParseExpression(with_condexpr));
        args.push_back(std::move(e));
      }
      if (IsOp(cur(), ",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parentheses) return Fail(cur(), absl::StrCat("expected an expression, got ", Describe(cur())));
    }
    auto e = NewExpr(ExprKind::kTuple, pos);
    e->args = std::move(args);
    return Done(std::move(e));
  }

  absl::StatusOr<ExprPtr> ParseList() {
    const Token t = next();
    auto e = NewExpr(ExprKind::kList, t.pos);
    while (!IsOp(cur(), "]")) {
      if (!e->args.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (IsOp(cur(), "]")) break;
      ASSIGN_OR_RETURN(ExprPtr item, ParseExpression(true));
      e->args.push_back(std::move(item));
    }
    RETURN_IF_ERROR(ExpectOp("]"));
    return Done(std::move(e));
  }

  absl::StatusOr<ExprPtr> ParseDict() {
    const Token t = next();
    auto e = NewExpr(ExprKind::kDict, t.pos);
    while (!IsOp(cur(), "}")) {
      if (!e->pairs.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (IsOp(cur(), "}")) break;
      ASSIGN_OR_RETURN(ExprPtr key, ParseExpression(true));
      RETURN_IF_ERROR(ExpectOp(":"));
      ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
      e->pairs.emplace_back(std::move(key), std::move(value));
    }
    RETURN_IF_ERROR(ExpectOp("}"));
    return Done(std::move(e));
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(cur(), ".") || IsOp(cur(), "[")) {
        ASSIGN_OR_RETURN(node, ParseSubscript(std::move(node)));
      } else if (IsOp(cur(), "(")) {
        ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp(cur(), "|")) {
        ASSIGN_OR_RETURN(node, ParseFilter(std::move(node), false));
      } else if (IsName(cur(), "is")) {
        ASSIGN_OR_RETURN(node, ParseTest(std::move(node)));
      } else if (IsOp(cur(), "(")) {
        ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node) {
    const Token t = next();
    if (t.value == ".") {
      const Token attr = next();
      if (attr.type == TokenType::kName) {
        auto e = NewExpr(ExprKind::kGetattr, t.pos);
        e->a = std::move(node);
        e->name = attr.value;
        return Done(std::move(e));
      }
      if (attr.type != TokenType::kInteger) return Fail(attr, "expected name or number after '.'");
      auto index = NewExpr(ExprKind::kConst, attr.pos);
      index->value = Value::Int(attr.int_value);
      auto e = NewExpr(ExprKind::kGetitem, t.pos);
      e->a = std::move(node);
      e->b = std::move(index);
      return Done(std::move(e));
    }
    // '['
    std::vector<ExprPtr> args;
    while (!IsOp(cur(), "]")) {
      if (!args.empty()) RETURN_IF_ERROR(ExpectOp(","));
      ASSIGN_OR_RETURN(ExprPtr arg, ParseSubscribed());
      args.push_back(std::move(arg));
    }
    RETURN_IF_ERROR(ExpectOp("]"));
    auto e = NewExpr(ExprKind::kGetitem, t.pos);
    e->a = std::move(node);
    if (args.size() == 1) {
      e->b = std::move(args[0]);
    } else {
      auto tuple = NewExpr(ExprKind::kTuple, t.pos);
      tuple->args = std::move(args);
      ASSIGN_OR_RETURN(e->b, Done(std::move(tuple)));
    }
    return Done(std::move(e));
  }

  absl::StatusOr<ExprPtr> ParseSubscribed() {
    const SourcePos pos = cur().pos;
    ExprPtr parts[3];
    if (IsOp(cur(), ":")) {
      next();
    } else {
      ASSIGN_OR_RETURN(ExprPtr node, ParseExpression(true));
      if (!IsOp(cur(), ":")) return node;
      next();
      parts[0] = std::move(node);
    }
    auto slice = NewExpr(ExprKind::kSlice, pos);
    if (!IsOp(cur(), ":") && !IsOp(cur(), "]") && !IsOp(cur(), ",")) {
      ASSIGN_OR_RETURN(parts[1], ParseExpression(true));
    }
    if (IsOp(cur(), ":")) {
      next();
      if (!IsOp(cur(), "]") && !IsOp(cur(), ",")) {
        ASSIGN_OR_RETURN(parts[2], ParseExpression(true));
      }
    }
    slice->a = std::move(parts[0]);
    slice->b = std::move(parts[1]);
    slice->c = std::move(parts[2]);
    return Done(std::move(slice));
  }

  absl::Status ParseCallArgs(Expr& e) {
    const Token open = cur();
    RETURN_IF_ERROR(ExpectOp("("));
    bool require_comma = false;
    while (!IsOp(cur(), ")")) {
      if (require_comma) {
        RETURN_IF_ERROR(ExpectOp(","));
        if (IsOp(cur(), ")")) break;
      }
      if (IsOp(cur(), "*") || IsOp(cur(), "**")) {
        return Fail(cur(), absl::StrCat("unsupported '", cur().value, "' argument unpacking in a call"));
      }
      if (cur().type == TokenType::kName && IsOp(look(), "=")) {
        const std::string key = next().value;
        next();
        ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
        e.kwargs.emplace_back(key, std::move(value));
      } else {
        if (!e.kwargs.empty()) return Fail(open, "invalid syntax for function call expression");
        ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
        e.args.push_back(std::move(value));
      }
      require_comma = true;
    }
    return ExpectOp(")");
  }

  absl::StatusOr<ExprPtr> ParseCall(ExprPtr node) {
    auto e = NewExpr(ExprKind::kCall, cur().pos);
    e->a = std::move(node);
    RETURN_IF_ERROR(ParseCallArgs(*e));
    return Done(std::move(e));
  }

  absl::StatusOr<ExprPtr> ParseFilter(ExprPtr node, bool start_inline) {
    while (IsOp(cur(), "|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      ASSIGN_OR_RETURN(Token name, ExpectName());
      if (IsOp(cur(), ".")) return Fail(name, absl::StrCat("unsupported dotted filter name '", name.value, ".'"));
      if (FindFilter(name.value) == nullptr) return Fail(name, absl::StrCat("unsupported filter '", name.value, "'"));
      auto e = NewExpr(ExprKind::kFilter, name.pos);
      e->a = std::move(node);
      e->name = name.value;
      if (IsOp(cur(), "(")) RETURN_IF_ERROR(ParseCallArgs(*e));
      ASSIGN_OR_RETURN(node, Done(std::move(e)));
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParseTest(ExprPtr node) {
    const Token is = next();
    const bool negated = SkipName("not");
    ASSIGN_OR_RETURN(Token name, ExpectName());
    if (IsOp(cur(), ".")) return Fail(name, absl::StrCat("unsupported dotted test name '", name.value, ".'"));
    if (FindTest(name.value) == nullptr) return Fail(name, absl::StrCat("unsupported test '", name.value, "'"));
    auto e = NewExpr(ExprKind::kTest, name.pos);
    e->a = std::move(node);
    e->name = name.value;
    const Token& t = cur();
    if (IsOp(t, "(")) {
      RETURN_IF_ERROR(ParseCallArgs(*e));
    } else if ((t.type == TokenType::kName || t.type == TokenType::kString || t.type == TokenType::kInteger ||
                t.type == TokenType::kFloat || IsOp(t, "[") || IsOp(t, "{")) &&
               !IsName(t, "else") && !IsName(t, "or") && !IsName(t, "and")) {
      if (IsName(t, "is")) return Fail(t, "you cannot chain multiple tests with 'is'");
      ASSIGN_OR_RETURN(ExprPtr arg, ParsePrimary());
      ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
      e->args.push_back(std::move(arg));
    }
    if (!negated) return Done(std::move(e));
    auto n = NewExpr(ExprKind::kNot, is.pos);
    n->a = std::move(e);
    return Done(std::move(n));
  }

  std::vector<Token> tokens_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  std::vector<Stmt*> macro_stack_;
  std::vector<Stmt*> for_stack_;
};

}  // namespace

absl::StatusOr<TemplateAst> ParseTemplate(std::string_view source) {
  TemplateAst ast;
  ast.source = NormalizeSource(source);
  ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(ast.source));
  ASSIGN_OR_RETURN(ast.body, Parser(std::move(tokens)).ParseAll());
  return ast;
}

}  // namespace deepshard::jinja
