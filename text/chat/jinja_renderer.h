// The tree-walking interpreter of chat templates: one Renderer per render.
//
// Scoping follows jinja2: `set` inside a `for` body is local to that
// iteration (each iteration starts again from the enclosing values; use a
// namespace to carry state out), `if` has no scope, macros see the variables
// of the scope they were defined in (as they are when called).
//
// Every render runs under budgets so that no template or input can hang or
// exhaust memory: a count of evaluation steps (bytes of strings built are
// charged too), an output size, a nesting depth for values, and a recursion
// depth for macro calls and evaluation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "text/chat/jinja_ast.h"
#include "text/chat/jinja_value.h"

namespace deepshard::jinja {

struct RenderLimits {
  int64_t max_steps = 30'000'000;          // expression evaluations, loop iterations, 64-byte chunks built
  size_t max_string_bytes = 64u << 20;     // the output, and any one string value
  size_t max_list_items = 1u << 22;        // any one list
  int max_value_depth = 512;               // nesting of lists/dicts a template builds
  int max_recursion = 400;                 // nested evaluations/statements, macro calls included
};

// A variable scope. Iteration scopes and macro calls chain to their parent.
struct Scope {
  explicit Scope(std::shared_ptr<Scope> p) : parent(std::move(p)) {}
  std::shared_ptr<Scope> parent;
  absl::flat_hash_map<std::string, Value> vars;
  Value* Find(std::string_view name);
};

class Renderer {
 public:
  Renderer(const TemplateAst& ast, const RenderLimits& limits) : ast_(ast), limits_(limits) {}
  ~Renderer();

  // Renders with `context` as the template's variables (they shadow the
  // globals range, namespace, ...).
  absl::StatusOr<std::string> Render(DictData context);

  // --- for built-ins ---
  // Charges `units` steps; an error once the budget is spent.
  absl::Status Charge(int64_t units);
  // Charges for building a string of `bytes` and checks the size limit.
  absl::Status ChargeString(size_t bytes);
  absl::Status ChargeList(size_t items);
  // Calls a callable value (macro, global, bound method).
  absl::StatusOr<Value> Call(const Value& fn, CallArgs& args);
  // Applies a filter / test by name (for map(), select(), ...).
  absl::StatusOr<Value> ApplyFilter(std::string_view name, const Value& value, CallArgs& args);
  absl::StatusOr<bool> ApplyTest(std::string_view name, const Value& value, CallArgs& args);
  // Registers a namespace made by namespace(): its attributes are cleared when
  // the render ends, which breaks reference cycles (ns.self = ns).
  void TrackNamespace(const Value& ns) { namespaces_.push_back(ns); }
  const RenderLimits& limits() const { return limits_; }

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  using ScopePtr = std::shared_ptr<Scope>;

  absl::StatusOr<Flow> Exec(const Body& body, const ScopePtr& scope, std::string& out);
  absl::StatusOr<Flow> ExecStmt(const Stmt& s, const ScopePtr& scope, std::string& out);
  absl::Status ExecFor(const Stmt& s, const ScopePtr& scope, std::string& out);
  absl::Status Assign(const AssignTarget& target, const Value& value, Scope& scope, SourcePos pos);
  absl::Status Append(std::string& out, std::string_view text);

  absl::StatusOr<Value> Eval(const Expr& e, const ScopePtr& scope);
  absl::StatusOr<Value> EvalInner(const Expr& e, const ScopePtr& scope);
  absl::Status EvalArgs(const Expr& e, const ScopePtr& scope, CallArgs& args);
  absl::StatusOr<Value> EvalFilter(const Expr& e, const ScopePtr& scope, Value input);
  absl::StatusOr<Value> Binary(BinaryOp op, const Value& a, const Value& b);
  absl::StatusOr<bool> Compare(CompareOp op, const Value& a, const Value& b);
  absl::Status CheckDepth(const Value& v);

  Value MakeMacro(const Stmt& s, const ScopePtr& scope);
  absl::StatusOr<Value> CallMacro(const Stmt& s, const ScopePtr& defining_scope, CallArgs& args);

  const TemplateAst& ast_;
  RenderLimits limits_;
  int64_t steps_ = 0;
  int recursion_ = 0;
  std::vector<Value> namespaces_;
};

}  // namespace deepshard::jinja
