// Tree-walking evaluation of chat templates (see jinja_renderer.h).
#include "text/chat/jinja_renderer.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "text/chat/jinja_builtins.h"

namespace deepshard::jinja {
namespace {

absl::Status UndefinedError(const Value& v) {
  return absl::InvalidArgumentError(v.undefined_hint().empty() ? "value is undefined" : v.undefined_hint());
}

absl::Status OperandError(std::string_view op, const Value& a, const Value& b) {
  if (a.is_undefined()) return UndefinedError(a);
  if (b.is_undefined()) return UndefinedError(b);
  return absl::InvalidArgumentError(absl::StrCat("unsupported operand type(s) for ", AV(op), ": '", TypeName(a),
                                                 "' and '", TypeName(b), "'"));
}

bool AddOverflows(int64_t a, int64_t b, int64_t* r) { return __builtin_add_overflow(a, b, r); }
bool SubOverflows(int64_t a, int64_t b, int64_t* r) { return __builtin_sub_overflow(a, b, r); }
bool MulOverflows(int64_t a, int64_t b, int64_t* r) { return __builtin_mul_overflow(a, b, r); }

absl::Status IntOverflow() { return absl::OutOfRangeError("integer result does not fit in 64 bits"); }

// Python's float % and //.
double PyFloatMod(double a, double b) {
  double mod = std::fmod(a, b);
  if (mod != 0) {
    if ((b < 0) != (mod < 0)) mod += b;
  } else {
    mod = std::copysign(0.0, b);
  }
  return mod;
}

double PyFloatFloorDiv(double a, double b) {
  double mod = std::fmod(a, b);
  double div = (a - mod) / b;
  if (mod != 0 && ((b < 0) != (mod < 0))) div -= 1.0;
  if (div != 0) {
    double floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
    return floordiv;
  }
  return std::copysign(0.0, a / b);
}

}  // namespace

Value* Scope::Find(std::string_view name) {
  for (Scope* s = this; s != nullptr; s = s->parent.get()) {
    auto it = s->vars.find(AV(name));
    if (it != s->vars.end()) return &it->second;
  }
  return nullptr;
}

Renderer::~Renderer() {
  // Break namespace reference cycles, one namespace at a time.
  for (Value& ns : namespaces_) ns.ns_attrs() = DictData();
}

absl::Status Renderer::Charge(int64_t units) {
  steps_ += units;
  if (steps_ > limits_.max_steps) {
    return absl::ResourceExhaustedError(
        absl::StrCat("render budget exceeded (", limits_.max_steps, " steps); the template loops too long"));
  }
  return absl::OkStatus();
}

absl::Status Renderer::ChargeString(size_t bytes) {
  if (bytes > limits_.max_string_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("string of ", bytes, " bytes exceeds the limit of ", limits_.max_string_bytes,
                     " bytes (RenderLimits::max_string_bytes)"));
  }
  return Charge(static_cast<int64_t>(bytes / 64));
}

absl::Status Renderer::ChargeList(size_t items) {
  if (items > limits_.max_list_items) {
    return absl::ResourceExhaustedError(
        absl::StrCat("list of ", items, " items exceeds the limit of ", limits_.max_list_items));
  }
  return Charge(static_cast<int64_t>(items / 8));
}

absl::Status Renderer::CheckDepth(const Value& v) {
  if (v.depth() > limits_.max_value_depth) {
    return absl::ResourceExhaustedError(
        absl::StrCat("value nested deeper than ", limits_.max_value_depth, " levels"));
  }
  return absl::OkStatus();
}

absl::Status Renderer::Append(std::string& out, std::string_view text) {
  if (out.size() + text.size() > limits_.max_string_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("rendered output exceeds the limit of ", limits_.max_string_bytes,
                     " bytes (RenderLimits::max_string_bytes)"));
  }
  RETURN_IF_ERROR(Charge(static_cast<int64_t>(text.size() / 64)));
  out.append(text);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Renderer::Render(DictData context) {
  // str()/repr()/tojson/replace stop building past the limit (see ReprCap).
  ReprCapScope repr_cap(limits_.max_string_bytes + 1);
  DictData globals;
  AddGlobals(globals);
  auto builtins = std::make_shared<Scope>(nullptr);
  for (auto& [k, v] : globals.items()) builtins->vars[k] = v;
  auto root = std::make_shared<Scope>(builtins);
  for (auto& [k, v] : context.items()) root->vars[k] = v;
  std::string out;
  ASSIGN_OR_RETURN(Flow flow, Exec(ast_.body, root, out));
  (void)flow;
  return out;
}

// ---------------------------------------------------------------------------
// Statements
// ---------------------------------------------------------------------------

absl::StatusOr<Renderer::Flow> Renderer::Exec(const Body& body, const ScopePtr& scope, std::string& out) {
  for (const StmtPtr& s : body) {
    ASSIGN_OR_RETURN(Flow flow, ExecStmt(*s, scope, out));
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

absl::StatusOr<Renderer::Flow> Renderer::ExecStmt(const Stmt& s, const ScopePtr& scope, std::string& out) {
  if (++recursion_ > limits_.max_recursion) {
    --recursion_;
    return ErrorAt(s.pos, "template recursion too deep");
  }
  struct Exit {
    int* r;
    ~Exit() { --*r; }
  } exit{&recursion_};
  RETURN_IF_ERROR(WithPos(s.pos, Charge(1)));

  switch (s.kind) {
    case StmtKind::kText:
      RETURN_IF_ERROR(WithPos(s.pos, Append(out, s.text)));
      return Flow::kNormal;
    case StmtKind::kOutput: {
      ASSIGN_OR_RETURN(Value v, Eval(*s.expr, scope));
      if (v.is_string()) {
        RETURN_IF_ERROR(WithPos(s.expr->pos, Append(out, v.as_string())));
      } else {
        RETURN_IF_ERROR(WithPos(s.expr->pos, Append(out, PyStr(v))));
      }
      return Flow::kNormal;
    }
    case StmtKind::kIf:
      for (const auto& [test, body] : s.branches) {
        ASSIGN_OR_RETURN(Value t, Eval(*test, scope));
        if (Truthy(t)) return Exec(body, scope, out);
      }
      return Exec(s.else_body, scope, out);
    case StmtKind::kFor:
      RETURN_IF_ERROR(ExecFor(s, scope, out));
      return Flow::kNormal;
    case StmtKind::kSet: {
      ASSIGN_OR_RETURN(Value v, Eval(*s.expr, scope));
      RETURN_IF_ERROR(Assign(s.target, v, *scope, s.pos));
      return Flow::kNormal;
    }
    case StmtKind::kSetBlock: {
      std::string buf;
      auto inner = std::make_shared<Scope>(scope);
      RETURN_IF_ERROR(Exec(s.body, inner, buf).status());
      Value v = Value::Str(std::move(buf));
      if (s.expr) {
        ASSIGN_OR_RETURN(v, EvalFilter(*s.expr, scope, std::move(v)));
      }
      RETURN_IF_ERROR(Assign(s.target, v, *scope, s.pos));
      return Flow::kNormal;
    }
    case StmtKind::kMacro:
      scope->vars[s.name] = MakeMacro(s, scope);
      return Flow::kNormal;
    case StmtKind::kCallBlock: {
      const Expr& call = *s.expr;
      ASSIGN_OR_RETURN(Value callee, Eval(*call.a, scope));
      CallArgs args;
      RETURN_IF_ERROR(EvalArgs(call, scope, args));
      args.kwargs.emplace_back("caller", MakeMacro(s, scope));
      if (callee.kind() != Kind::kCallable) {
        if (callee.is_undefined()) return WithPos(call.pos, UndefinedError(callee));
        return ErrorAt(call.pos, absl::StrCat("'", TypeName(callee), "' object is not callable"));
      }
      auto r = Call(callee, args);
      if (!r.ok()) return WithPos(call.pos, r.status());
      RETURN_IF_ERROR(WithPos(s.pos, Append(out, PyStr(*r))));
      return Flow::kNormal;
    }
    case StmtKind::kFilterBlock: {
      std::string buf;
      auto inner = std::make_shared<Scope>(scope);
      RETURN_IF_ERROR(Exec(s.body, inner, buf).status());
      ASSIGN_OR_RETURN(Value v, EvalFilter(*s.expr, scope, Value::Str(std::move(buf))));
      RETURN_IF_ERROR(WithPos(s.pos, Append(out, PyStr(v))));
      return Flow::kNormal;
    }
    case StmtKind::kWith: {
      auto inner = std::make_shared<Scope>(scope);
      for (size_t i = 0; i < s.params.size(); ++i) {
        ASSIGN_OR_RETURN(Value v, Eval(*s.defaults[i], scope));
        inner->vars[s.params[i]] = std::move(v);
      }
      RETURN_IF_ERROR(Exec(s.body, inner, out).status());
      return Flow::kNormal;
    }
    case StmtKind::kBreak:
      return Flow::kBreak;
    case StmtKind::kContinue:
      return Flow::kContinue;
    case StmtKind::kGeneration: {
      auto inner = std::make_shared<Scope>(scope);
      RETURN_IF_ERROR(Exec(s.body, inner, out).status());
      return Flow::kNormal;
    }
  }
  return Flow::kNormal;
}

absl::Status Renderer::ExecFor(const Stmt& s, const ScopePtr& scope, std::string& out) {
  ASSIGN_OR_RETURN(Value iterable, Eval(*s.expr, scope));
  auto items_or = Iterate(iterable);
  if (!items_or.ok()) return WithPos(s.expr->pos, items_or.status());
  std::vector<Value> items = std::move(*items_or);
  RETURN_IF_ERROR(WithPos(s.pos, Charge(static_cast<int64_t>(items.size()))));
  if (s.cond) {
    // `for x in xs if cond`: filter first, so that loop.length and friends
    // count only the kept items.
    std::vector<Value> kept;
    for (Value& item : items) {
      auto probe = std::make_shared<Scope>(scope);
      RETURN_IF_ERROR(Assign(s.target, item, *probe, s.pos));
      ASSIGN_OR_RETURN(Value keep, Eval(*s.cond, probe));
      if (Truthy(keep)) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  const int64_t n = static_cast<int64_t>(items.size());
  // loop.cycle reads the current index through this shared cell, so that one
  // function serves every iteration.
  auto index = std::make_shared<int64_t>(0);
  bool completed_an_iteration = false;
  Value cycle = Value::Function("loop.cycle", [index](Renderer&, CallArgs& args) -> absl::StatusOr<Value> {
    if (args.args.empty()) return absl::InvalidArgumentError("loop.cycle: no items given");
    return args.args[static_cast<size_t>(*index) % args.args.size()];
  });
  for (int64_t i = 0; i < n; ++i) {
    // An iteration (a scope, the target, maybe the loop object) costs several steps.
    RETURN_IF_ERROR(WithPos(s.pos, Charge(s.uses_loop ? 8 : 4)));
    auto iter_scope = std::make_shared<Scope>(scope);
    RETURN_IF_ERROR(Assign(s.target, items[i], *iter_scope, s.pos));
    if (s.uses_loop) {
      *index = i;
      DictData loop;
      loop.Set("index", Value::Int(i + 1));
      loop.Set("index0", Value::Int(i));
      loop.Set("revindex", Value::Int(n - i));
      loop.Set("revindex0", Value::Int(n - i - 1));
      loop.Set("first", Value::Bool(i == 0));
      loop.Set("last", Value::Bool(i == n - 1));
      loop.Set("length", Value::Int(n));
      loop.Set("depth", Value::Int(1));
      loop.Set("depth0", Value::Int(0));
      if (i > 0) loop.Set("previtem", items[i - 1]);
      if (i + 1 < n) loop.Set("nextitem", items[i + 1]);
      loop.Set("cycle", cycle);
      iter_scope->vars["loop"] = Value::Dict(std::move(loop));
    }
    ASSIGN_OR_RETURN(Flow flow, Exec(s.body, iter_scope, out));
    if (flow == Flow::kNormal) completed_an_iteration = true;
    if (flow == Flow::kBreak) break;
  }
  // jinja2 runs `else` unless some iteration reached the end of the body: so
  // also when every iteration ended in break or continue.
  if (!completed_an_iteration && !s.else_body.empty()) {
    auto inner = std::make_shared<Scope>(scope);
    RETURN_IF_ERROR(Exec(s.else_body, inner, out).status());
  }
  return absl::OkStatus();
}

absl::Status Renderer::Assign(const AssignTarget& target, const Value& value, Scope& scope, SourcePos pos) {
  RETURN_IF_ERROR(WithPos(pos, CheckDepth(value)));
  auto assign_one = [&](const AssignTarget::Item& item, const Value& v) -> absl::Status {
    if (item.attr.empty()) {
      scope.vars[item.name] = v;
      return absl::OkStatus();
    }
    Value* ns = scope.Find(item.name);
    if (ns == nullptr || ns->kind() != Kind::kNamespace) {
      return ErrorAt(item.pos, absl::StrCat("cannot assign attribute '", item.attr, "' on non-namespace object '",
                                            item.name, "'"));
    }
    ns->ns_attrs().Set(item.attr, v);
    return absl::OkStatus();
  };
  if (!target.is_tuple) return assign_one(target.items[0], value);
  auto parts = Iterate(value);
  if (!parts.ok()) {
    return ErrorAt(pos, absl::StrCat("cannot unpack non-iterable ", TypeName(value), " object"));
  }
  if (parts->size() != target.items.size()) {
    return ErrorAt(pos, parts->size() > target.items.size()
                            ? absl::StrCat("too many values to unpack (expected ", target.items.size(), ")")
                            : absl::StrCat("not enough values to unpack (expected ", target.items.size(),
                                           ", got ", parts->size(), ")"));
  }
  for (size_t i = 0; i < parts->size(); ++i) RETURN_IF_ERROR(assign_one(target.items[i], (*parts)[i]));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Macros
// ---------------------------------------------------------------------------

Value Renderer::MakeMacro(const Stmt& s, const ScopePtr& scope) {
  std::weak_ptr<Scope> weak = scope;
  const Stmt* stmt = &s;
  const std::string name = s.kind == StmtKind::kMacro ? absl::StrCat("macro '", s.name, "'") : "caller";
  return Value::Function(name, [stmt, weak](Renderer& r, CallArgs& args) -> absl::StatusOr<Value> {
    ScopePtr defining = weak.lock();
    if (!defining) return absl::FailedPreconditionError("macro called after the scope it was defined in ended");
    return r.CallMacro(*stmt, defining, args);
  });
}

absl::StatusOr<Value> Renderer::CallMacro(const Stmt& s, const ScopePtr& defining_scope, CallArgs& args) {
  const std::string display = s.kind == StmtKind::kMacro ? absl::StrCat("macro '", s.name, "'") : "caller";
  auto scope = std::make_shared<Scope>(defining_scope);
  const size_t n = s.params.size();
  const size_t first_default = n - s.defaults.size();
  std::vector<bool> given(n, false);
  for (size_t i = 0; i < args.args.size() && i < n; ++i) {
    scope->vars[s.params[i]] = args.args[i];
    given[i] = true;
  }
  if (args.args.size() > n) {
    if (!s.uses_varargs) {
      return absl::InvalidArgumentError(
          absl::StrCat(display, " takes not more than ", n, " argument(s)"));
    }
    scope->vars["varargs"] =
        Value::Tuple(std::vector<Value>(args.args.begin() + static_cast<std::ptrdiff_t>(n), args.args.end()));
  } else if (s.uses_varargs) {
    scope->vars["varargs"] = Value::Tuple({});
  }
  DictData extra;
  Value caller;
  for (auto& [key, v] : args.kwargs) {
    bool matched = false;
    for (size_t i = 0; i < n; ++i) {
      if (s.params[i] == key) {
        if (given[i]) return absl::InvalidArgumentError(absl::StrCat(display, " got multiple values for argument '", key, "'"));
        scope->vars[key] = v;
        given[i] = true;
        matched = true;
        break;
      }
    }
    if (matched) continue;
    if (key == "caller") {
      if (!s.uses_caller) {
        return absl::InvalidArgumentError(
            absl::StrCat(display, " was invoked with two values for the special caller argument"));
      }
      caller = v;
    } else if (s.uses_kwargs) {
      extra.Set(key, v);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(display, " takes no keyword argument '", key, "'"));
    }
  }
  if (s.uses_kwargs) scope->vars["kwargs"] = Value::Dict(std::move(extra));
  if (s.kind == StmtKind::kMacro && !caller.is_undefined()) scope->vars["caller"] = caller;
  for (size_t i = 0; i < n; ++i) {
    if (given[i]) continue;
    if (i >= first_default) {
      ASSIGN_OR_RETURN(Value d, Eval(*s.defaults[i - first_default], scope));
      scope->vars[s.params[i]] = std::move(d);
    } else {
      scope->vars[s.params[i]] = Value::Undefined(absl::StrCat("parameter '", s.params[i], "' was not provided"));
    }
  }
  std::string out;
  RETURN_IF_ERROR(Exec(s.body, scope, out).status());
  return Value::Str(std::move(out));
}

absl::StatusOr<Value> Renderer::Call(const Value& fn, CallArgs& args) {
  if (fn.kind() != Kind::kCallable) {
    if (fn.is_undefined()) return UndefinedError(fn);
    return absl::InvalidArgumentError(absl::StrCat("'", TypeName(fn), "' object is not callable"));
  }
  RETURN_IF_ERROR(Charge(1));
  if (++recursion_ > limits_.max_recursion) {
    --recursion_;
    return absl::ResourceExhaustedError("template recursion too deep");
  }
  auto r = fn.callable().fn(*this, args);
  --recursion_;
  return r;
}

absl::StatusOr<Value> Renderer::ApplyFilter(std::string_view name, const Value& value, CallArgs& args) {
  FilterFn f = FindFilter(name);
  if (f == nullptr) return absl::InvalidArgumentError(absl::StrCat("unsupported filter '", AV(name), "'"));
  RETURN_IF_ERROR(Charge(1));
  return f(*this, value, args);
}

absl::StatusOr<bool> Renderer::ApplyTest(std::string_view name, const Value& value, CallArgs& args) {
  TestFn t = FindTest(name);
  if (t == nullptr) return absl::InvalidArgumentError(absl::StrCat("unsupported test '", AV(name), "'"));
  RETURN_IF_ERROR(Charge(1));
  return t(*this, value, args);
}

// ---------------------------------------------------------------------------
// Expressions
// ---------------------------------------------------------------------------

absl::StatusOr<Value> Renderer::Eval(const Expr& e, const ScopePtr& scope) {
  if (++recursion_ > limits_.max_recursion) {
    --recursion_;
    return ErrorAt(e.pos, "template recursion too deep");
  }
  auto r = EvalInner(e, scope);
  --recursion_;
  return r;
}

absl::Status Renderer::EvalArgs(const Expr& e, const ScopePtr& scope, CallArgs& args) {
  args.args.reserve(e.args.size());
  for (const ExprPtr& a : e.args) {
    ASSIGN_OR_RETURN(Value v, Eval(*a, scope));
    args.args.push_back(std::move(v));
  }
  for (const auto& [k, a] : e.kwargs) {
    ASSIGN_OR_RETURN(Value v, Eval(*a, scope));
    args.kwargs.emplace_back(k, std::move(v));
  }
  return absl::OkStatus();
}

absl::StatusOr<Value> Renderer::EvalFilter(const Expr& e, const ScopePtr& scope, Value input) {
  // Filter blocks and `set x | f` chains have no input expression at their
  // root; `input` is fed in there.
  Value value;
  if (e.a == nullptr) {
    value = std::move(input);
  } else if (e.a->kind == ExprKind::kFilter) {
    ASSIGN_OR_RETURN(value, EvalFilter(*e.a, scope, std::move(input)));
  } else {
    ASSIGN_OR_RETURN(value, Eval(*e.a, scope));
  }
  CallArgs args;
  RETURN_IF_ERROR(EvalArgs(e, scope, args));
  auto r = ApplyFilter(e.name, value, args);
  if (!r.ok()) return WithPos(e.pos, r.status());
  return r;
}

absl::StatusOr<Value> Renderer::EvalInner(const Expr& e, const ScopePtr& scope) {
  RETURN_IF_ERROR(WithPos(e.pos, Charge(1)));
  switch (e.kind) {
    case ExprKind::kConst:
      return e.value;
    case ExprKind::kName: {
      const Value* v = scope->Find(e.name);
      if (v != nullptr) return *v;
      return Value::Undefined(absl::StrCat("'", e.name, "' is undefined"));
    }
    case ExprKind::kGetattr: {
      ASSIGN_OR_RETURN(Value obj, Eval(*e.a, scope));
      auto r = GetAttr(obj, e.name);
      if (!r.ok()) return WithPos(e.pos, r.status());
      return r;
    }
    case ExprKind::kGetitem: {
      ASSIGN_OR_RETURN(Value obj, Eval(*e.a, scope));
      if (e.b->kind == ExprKind::kSlice) {
        Value parts[3] = {Value::None(), Value::None(), Value::None()};
        const ExprPtr* exprs[3] = {&e.b->a, &e.b->b, &e.b->c};
        for (int i = 0; i < 3; ++i) {
          if (*exprs[i]) {
            ASSIGN_OR_RETURN(parts[i], Eval(**exprs[i], scope));
          }
        }
        auto r = GetSlice(obj, parts[0], parts[1], parts[2]);
        if (!r.ok()) return WithPos(e.pos, r.status());
        if (r->is_string()) RETURN_IF_ERROR(WithPos(e.pos, ChargeString(r->as_string().size())));
        return r;
      }
      ASSIGN_OR_RETURN(Value key, Eval(*e.b, scope));
      auto r = GetItem(obj, key);
      if (!r.ok()) return WithPos(e.pos, r.status());
      return r;
    }
    case ExprKind::kSlice:
      return ErrorAt(e.pos, "slice outside of []");
    case ExprKind::kCall: {
      ASSIGN_OR_RETURN(Value callee, Eval(*e.a, scope));
      CallArgs args;
      RETURN_IF_ERROR(EvalArgs(e, scope, args));
      auto r = Call(callee, args);
      if (!r.ok()) return WithPos(e.pos, r.status());
      return r;
    }
    case ExprKind::kFilter:
      return EvalFilter(e, scope, Value());
    case ExprKind::kTest: {
      ASSIGN_OR_RETURN(Value value, Eval(*e.a, scope));
      CallArgs args;
      RETURN_IF_ERROR(EvalArgs(e, scope, args));
      auto r = ApplyTest(e.name, value, args);
      if (!r.ok()) return WithPos(e.pos, r.status());
      return Value::Bool(*r);
    }
    case ExprKind::kNeg:
    case ExprKind::kPos: {
      ASSIGN_OR_RETURN(Value v, Eval(*e.a, scope));
      const bool neg = e.kind == ExprKind::kNeg;
      if (v.kind() == Kind::kFloat) return Value::Float(neg ? -v.as_double() : v.as_double());
      if (v.is_integral()) {
        if (!neg) return Value::Int(v.as_int());
        if (v.as_int() == std::numeric_limits<int64_t>::min()) return WithPos(e.pos, IntOverflow());
        return Value::Int(-v.as_int());
      }
      if (v.is_undefined()) return WithPos(e.pos, UndefinedError(v));
      return ErrorAt(e.pos, absl::StrCat("bad operand type for unary ", neg ? "-" : "+", ": '", TypeName(v), "'"));
    }
    case ExprKind::kNot: {
      ASSIGN_OR_RETURN(Value v, Eval(*e.a, scope));
      return Value::Bool(!Truthy(v));
    }
    case ExprKind::kBinary: {
      ASSIGN_OR_RETURN(Value a, Eval(*e.a, scope));
      ASSIGN_OR_RETURN(Value b, Eval(*e.b, scope));
      auto r = Binary(e.op, a, b);
      if (!r.ok()) return WithPos(e.pos, r.status());
      return r;
    }
    case ExprKind::kAnd:
    case ExprKind::kOr: {
      // Python semantics: the result is one of the operands.
      ASSIGN_OR_RETURN(Value a, Eval(*e.a, scope));
      if (Truthy(a) == (e.kind == ExprKind::kOr)) return a;
      return Eval(*e.b, scope);
    }
    case ExprKind::kConcat: {
      std::string s;
      for (const ExprPtr& part : e.args) {
        ASSIGN_OR_RETURN(Value v, Eval(*part, scope));
        s += PyStr(v);
        RETURN_IF_ERROR(WithPos(e.pos, ChargeString(s.size())));
      }
      return Value::Str(std::move(s));
    }
    case ExprKind::kCompare: {
      ASSIGN_OR_RETURN(Value left, Eval(*e.a, scope));
      for (const auto& [op, expr] : e.compares) {
        ASSIGN_OR_RETURN(Value right, Eval(*expr, scope));
        auto r = Compare(op, left, right);
        if (!r.ok()) return WithPos(expr->pos, r.status());
        if (!*r) return Value::Bool(false);
        left = std::move(right);
      }
      return Value::Bool(true);
    }
    case ExprKind::kCond: {
      ASSIGN_OR_RETURN(Value test, Eval(*e.a, scope));
      if (Truthy(test)) return Eval(*e.b, scope);
      if (e.c) return Eval(*e.c, scope);
      return Value::Undefined(absl::StrCat("the inline if-expression on line ", e.pos.line,
                                           " evaluated to false and no else section was defined."));
    }
    case ExprKind::kList:
    case ExprKind::kTuple: {
      std::vector<Value> items;
      items.reserve(e.args.size());
      for (const ExprPtr& item : e.args) {
        ASSIGN_OR_RETURN(Value v, Eval(*item, scope));
        items.push_back(std::move(v));
      }
      Value v = e.kind == ExprKind::kList ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
      RETURN_IF_ERROR(WithPos(e.pos, CheckDepth(v)));
      return v;
    }
    case ExprKind::kDict: {
      DictData d;
      for (const auto& [k, v] : e.pairs) {
        ASSIGN_OR_RETURN(Value key, Eval(*k, scope));
        if (!key.is_string()) {
          return ErrorAt(k->pos, absl::StrCat("unsupported dict key of type '", TypeName(key),
                                              "' (only string keys are supported)"));
        }
        ASSIGN_OR_RETURN(Value value, Eval(*v, scope));
        d.Set(key.as_string(), std::move(value));
      }
      Value v = Value::Dict(std::move(d));
      RETURN_IF_ERROR(WithPos(e.pos, CheckDepth(v)));
      return v;
    }
  }
  return ErrorAt(e.pos, "unknown expression");
}

absl::StatusOr<Value> Renderer::Binary(BinaryOp op, const Value& a, const Value& b) {
  const bool ints = a.is_integral() && b.is_integral();
  const bool nums = a.is_number() && b.is_number();
  switch (op) {
    case BinaryOp::kAdd: {
      if (ints) {
        int64_t r;
        if (AddOverflows(a.as_int(), b.as_int(), &r)) return IntOverflow();
        return Value::Int(r);
      }
      if (nums) return Value::Float(a.as_double() + b.as_double());
      if (a.is_string() && b.is_string()) {
        RETURN_IF_ERROR(ChargeString(a.as_string().size() + b.as_string().size()));
        return Value::Str(a.as_string() + b.as_string());
      }
      if (a.is_list_like() && a.kind() == b.kind()) {
        RETURN_IF_ERROR(ChargeList(a.items().size() + b.items().size()));
        std::vector<Value> items = a.items();
        items.insert(items.end(), b.items().begin(), b.items().end());
        return a.kind() == Kind::kList ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
      }
      return OperandError("+", a, b);
    }
    case BinaryOp::kSub:
      if (ints) {
        int64_t r;
        if (SubOverflows(a.as_int(), b.as_int(), &r)) return IntOverflow();
        return Value::Int(r);
      }
      if (nums) return Value::Float(a.as_double() - b.as_double());
      return OperandError("-", a, b);
    case BinaryOp::kMul: {
      if (ints) {
        int64_t r;
        if (MulOverflows(a.as_int(), b.as_int(), &r)) return IntOverflow();
        return Value::Int(r);
      }
      if (nums) return Value::Float(a.as_double() * b.as_double());
      // Sequence repetition: "ab" * 3, [x] * 2 (either order).
      const Value* seq = a.is_integral() ? &b : &a;
      const Value* count = a.is_integral() ? &a : &b;
      if (count->is_integral() && (seq->is_string() || seq->is_list_like())) {
        const int64_t k = std::max<int64_t>(0, count->as_int());
        if (seq->is_string()) {
          const size_t unit = seq->as_string().size();
          if (unit != 0 && static_cast<uint64_t>(k) > limits_.max_string_bytes / unit + 1) {
            return ChargeString(limits_.max_string_bytes + 1);
          }
          RETURN_IF_ERROR(ChargeString(unit * static_cast<size_t>(k)));
          std::string s;
          s.reserve(unit * static_cast<size_t>(k));
          for (int64_t i = 0; i < k; ++i) s += seq->as_string();
          return Value::Str(std::move(s));
        }
        const size_t unit = seq->items().size();
        if (unit != 0 && static_cast<uint64_t>(k) > limits_.max_list_items / unit + 1) {
          return ChargeList(limits_.max_list_items + 1);
        }
        RETURN_IF_ERROR(ChargeList(unit * static_cast<size_t>(k)));
        std::vector<Value> items;
        for (int64_t i = 0; i < k; ++i) items.insert(items.end(), seq->items().begin(), seq->items().end());
        return seq->kind() == Kind::kList ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
      }
      return OperandError("*", a, b);
    }
    case BinaryOp::kDiv:
      if (nums) {
        if (b.as_double() == 0) return absl::InvalidArgumentError("division by zero");
        return Value::Float(a.as_double() / b.as_double());
      }
      return OperandError("/", a, b);
    case BinaryOp::kFloorDiv:
      if (ints) {
        const int64_t x = a.as_int(), y = b.as_int();
        if (y == 0) return absl::InvalidArgumentError("integer division or modulo by zero");
        if (x == std::numeric_limits<int64_t>::min() && y == -1) return IntOverflow();
        int64_t q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
        return Value::Int(q);
      }
      if (nums) {
        if (b.as_double() == 0) return absl::InvalidArgumentError("float floor division by zero");
        return Value::Float(PyFloatFloorDiv(a.as_double(), b.as_double()));
      }
      return OperandError("//", a, b);
    case BinaryOp::kMod:
      if (ints) {
        const int64_t x = a.as_int(), y = b.as_int();
        if (y == 0) return absl::InvalidArgumentError("integer division or modulo by zero");
        if (y == -1) return Value::Int(0);
        int64_t r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) r += y;
        return Value::Int(r);
      }
      if (nums) {
        if (b.as_double() == 0) return absl::InvalidArgumentError("float modulo");
        return Value::Float(PyFloatMod(a.as_double(), b.as_double()));
      }
      if (a.is_string()) {
        ASSIGN_OR_RETURN(std::string out, PyPercentFormat(a.as_string(), b));
        RETURN_IF_ERROR(ChargeString(out.size()));
        return Value::Str(std::move(out));
      }
      return OperandError("%", a, b);
    case BinaryOp::kPow:
      if (ints && b.as_int() >= 0) {
        int64_t base = a.as_int(), exp = b.as_int(), result = 1;
        while (exp > 0) {
          if (exp & 1) {
            if (MulOverflows(result, base, &result)) return IntOverflow();
          }
          exp >>= 1;
          if (exp > 0 && MulOverflows(base, base, &base)) return IntOverflow();
        }
        return Value::Int(result);
      }
      if (nums) {
        const double x = a.as_double(), y = b.as_double();
        if (x == 0 && y < 0) return absl::InvalidArgumentError("0.0 cannot be raised to a negative power");
        if (x < 0 && y != std::floor(y)) {
          return absl::UnimplementedError("negative number raised to a fractional power (complex result)");
        }
        const double r = std::pow(x, y);
        if (std::isinf(r) && !std::isinf(x) && !std::isinf(y)) return absl::OutOfRangeError("numerical result out of range");
        return Value::Float(r);
      }
      return OperandError("**", a, b);
  }
  return absl::InternalError("unknown operator");
}

absl::StatusOr<bool> Renderer::Compare(CompareOp op, const Value& a, const Value& b) {
  switch (op) {
    case CompareOp::kEq: return PyEquals(a, b);
    case CompareOp::kNe: return !PyEquals(a, b);
    case CompareOp::kLt: return PyLess(a, b);
    case CompareOp::kGt: return PyLess(b, a);
    case CompareOp::kLe: {
      ASSIGN_OR_RETURN(bool lt, PyLess(a, b));
      return lt || PyEquals(a, b);
    }
    case CompareOp::kGe: {
      ASSIGN_OR_RETURN(bool gt, PyLess(b, a));
      return gt || PyEquals(a, b);
    }
    case CompareOp::kIn:
    case CompareOp::kNotIn: {
      RETURN_IF_ERROR(Charge(b.is_list_like() ? static_cast<int64_t>(b.items().size()) : 1));
      if (b.is_string()) RETURN_IF_ERROR(ChargeString(b.as_string().size()));
      ASSIGN_OR_RETURN(bool in, PyContains(b, a));
      return op == CompareOp::kIn ? in : !in;
    }
  }
  return false;
}

}  // namespace deepshard::jinja
