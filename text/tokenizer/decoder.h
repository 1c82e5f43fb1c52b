// Decoders from tokenizer.json's "decoder" (internal).
//
// Supported: ByteLevel, Sequence, Replace, Strip, Fuse, ByteFallback. Any other type
// is an error that names it. As in Hugging Face, a decoder turns the list of token
// strings into a new list (`DecodeChain`), and the text is their concatenation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "text/tokenizer/json_node.h"

namespace deepshard::tokenizer_internal {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
  // True when the decoder (or one in its chain) is ByteFallback: a run of "<0xXX>"
  // tokens decodes as a unit, so a stream must not cut inside one.
  virtual bool HasByteFallback() const { return false; }
  // True when the decoder (or one in its chain) is ByteLevel: token strings spell
  // bytes through the GPT-2 byte<->unicode table.
  virtual bool IsByteLevel() const { return false; }
};

// Parses one decoder object (`node` must not be null).
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const JsonNode& node);

// True when `token` has the byte-fallback form "<0xXX>" (two hex digits).
bool IsByteFallbackToken(std::string_view token);

}  // namespace deepshard::tokenizer_internal
