// Parser of the chat-template interpreter: Jinja source -> TemplateAst.
//
// The grammar and operator precedence are jinja2's (parser.py), including its
// quirks: `**` is left-associative, unary minus binds tighter than `**`
// (-2**2 == 4), filters bind tighter than arithmetic, `x is test arg` takes
// one argument without parentheses, and `a if b` without else yields
// undefined. Unknown filters and tests, and statements this interpreter does
// not implement, are errors here, naming the construct and its line:column.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "text/chat/jinja_ast.h"

namespace deepshard::jinja {

// Nesting limit for expressions and statements (jinja2 has none short of
// Python's recursion limit; real templates nest a handful of levels).
inline constexpr int kMaxParseDepth = 100;
// Height limit of one expression tree (long operator chains count too).
inline constexpr int kMaxExprHeight = 250;

absl::StatusOr<TemplateAst> ParseTemplate(std::string_view source);

}  // namespace deepshard::jinja
