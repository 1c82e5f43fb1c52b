// Syntax tree of a parsed chat template. Built once by jinja_parser.cc,
// walked by jinja_renderer.cc for every render; never changed after parsing.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/chat/jinja_lexer.h"
#include "text/chat/jinja_value.h"

namespace deepshard::jinja {

struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class ExprKind {
  kConst,    // value
  kName,     // name
  kGetattr,  // a.name
  kGetitem,  // a[b]
  kSlice,    // a:b:c inside [], each part optional
  kCall,     // a(args, kwargs)
  kFilter,   // a | name(args, kwargs); `a` is null in filter blocks
  kTest,     // a is name(args, kwargs)
  kNeg,      // -a
  kPos,      // +a
  kNot,      // not a
  kBinary,   // a op b, op one of + - * / // % **
  kAnd,      // a and b
  kOr,       // a or b
  kConcat,   // args[0] ~ args[1] ~ ...
  kCompare,  // a (op b)...: chained comparisons
  kCond,     // b if a else c (c may be null)
  kList,     // [args]
  kTuple,    // (args)
  kDict,     // {pairs}
};

enum class BinaryOp { kAdd, kSub, kMul, kDiv, kFloorDiv, kMod, kPow };
enum class CompareOp { kEq, kNe, kLt, kLe, kGt, kGe, kIn, kNotIn };

struct Expr {
  ExprKind kind;
  SourcePos pos;
  int height = 1;    // 1 + the height of the tallest child
  Value value;       // kConst
  std::string name;  // kName, kGetattr, kFilter, kTest
  BinaryOp op = BinaryOp::kAdd;
  ExprPtr a, b, c;
  std::vector<ExprPtr> args;                             // call/filter/test arguments, list items, concat parts
  std::vector<std::pair<std::string, ExprPtr>> kwargs;   // call/filter/test keyword arguments
  std::vector<std::pair<CompareOp, ExprPtr>> compares;   // kCompare
  std::vector<std::pair<ExprPtr, ExprPtr>> pairs;        // kDict
};

// The left side of `set` / `for`: a name, `ns.attr`, or a tuple of them.
struct AssignTarget {
  struct Item {
    std::string name;
    std::string attr;  // non-empty for `set ns.attr = ...`
    SourcePos pos;
  };
  std::vector<Item> items;
  bool is_tuple = false;
};

enum class StmtKind {
  kText,         // text
  kOutput,       // {{ expr }} or {% print expr %}
  kIf,           // branches, else_body
  kFor,          // target, expr (iterable), cond (for ... if), body, else_body
  kSet,          // target = expr
  kSetBlock,     // {% set target | filter %}body{% endset %}; filter in expr (may be null)
  kMacro,        // name(params) body
  kCallBlock,    // {% call(params) expr %}body{% endcall %}: body becomes `caller`
  kFilterBlock,  // {% filter expr %}body{% endfilter %}
  kWith,         // {% with params=defaults %}body{% endwith %}
  kBreak,
  kContinue,
  kGeneration,   // {% generation %}body{% endgeneration %} (transformers' assistant mask tag)
};

struct Stmt {
  StmtKind kind;
  SourcePos pos;
  std::string text;  // kText
  ExprPtr expr;
  ExprPtr cond;
  AssignTarget target;
  Body body;
  Body else_body;
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf: (test, body) for if and each elif

  // kMacro / kCallBlock / kWith.
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // kMacro/kCallBlock: for the last defaults.size() params; kWith: one per param
  bool uses_varargs = false;      // the body reads `varargs`
  bool uses_kwargs = false;       // the body reads `kwargs`
  bool uses_caller = false;       // the body reads `caller`
  bool uses_loop = false;         // kFor: the body reads `loop` (else no loop object is built)
};

struct TemplateAst {
  std::string source;  // normalised source
  Body body;
};

}  // namespace deepshard::jinja
