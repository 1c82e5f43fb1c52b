// Tokenizer of the chat-template interpreter: splits Jinja source into text
// and tag tokens exactly as jinja2's lexer does with transformers' settings
// (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False).
//
// Whitespace rules it applies, in jinja2's order:
//  * all newlines (\r\n, \r) become \n, and one trailing newline is dropped;
//  * `{%-`, `{{-`, `{#-` strip all whitespace before the tag; `-%}`, `-}}`,
//    `-#}` strip all whitespace after it;
//  * lstrip_blocks: spaces/tabs between the start of a line and a `{%` or `{#`
//    are removed, unless the tag is written `{%+`;
//  * trim_blocks: the first newline after `%}` or `#}` is removed, unless the
//    tag is written `+%}`;
//  * `{% raw %}...{% endraw %}` is text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deepshard::jinja {

// 1-based line and column (in code points) of a place in the template source,
// after newline normalisation.
struct SourcePos {
  int line = 1;
  int col = 1;
};

// "chat template line L col C: <message>" as an InvalidArgument error.
absl::Status ErrorAt(SourcePos pos, std::string_view message);
// Adds the position to an error that has none yet.
absl::Status WithPos(SourcePos pos, const absl::Status& status);

enum class TokenType {
  kData,           // template text (value: the text)
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kName,           // identifier or keyword (value: the name)
  kString,         // string literal (value: unescaped contents)
  kInteger,        // int_value
  kFloat,          // float_value
  kOperator,       // value: "+", "//", "(", "|", ...
  kEof,
};

struct Token {
  TokenType type = TokenType::kEof;
  std::string value;
  int64_t int_value = 0;
  double float_value = 0;
  SourcePos pos;
};

// Newline normalisation and removal of one trailing newline (jinja2 does this
// before lexing; positions refer to the result).
std::string NormalizeSource(std::string_view source);

// Tokenizes normalised source. The last token is kEof.
absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source);

}  // namespace deepshard::jinja
