// Post-processors from tokenizer.json's "post_processor" (internal).
//
// Supported: TemplateProcessing (its "single" template), ByteLevel (no effect on
// ids), Sequence, BertProcessing and RobertaProcessing (single sequence: cls, ids,
// sep). Any other type is an error that names it. Only single sequences are
// encoded, so pair templates are read but unused.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "text/tokenizer/json_node.h"

namespace deepshard::tokenizer_internal {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Rewrites the ids of one encoded sequence. Special tokens are only added when
  // `add_special_tokens` is true.
  virtual void Process(std::vector<int32_t>* ids, bool add_special_tokens) const = 0;
  // The largest id it can add (-1: none), checked against the vocabulary at load.
  virtual int32_t max_id() const { return -1; }
};

// Parses one post-processor object (`node` must not be null).
absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const JsonNode& node);

// The template that transformers' LlamaTokenizerFast installs for add_bos_token /
// add_eos_token: "[bos] $A [eos]", each part present when its id is given.
std::unique_ptr<PostProcessor> MakeBosEosTemplate(std::optional<int32_t> bos, std::optional<int32_t> eos);

}  // namespace deepshard::tokenizer_internal
