// Tokenizer: text <-> token ids, read from a model's `tokenizer.json` and
// `tokenizer_config.json` exactly as Hugging Face `tokenizers` + `transformers` read
// them (a difference of one id changes what the model sees).
//
// Pipeline of Encode, as in Hugging Face:
//   1. invalid UTF-8 is repaired (each maximal ill-formed subpart -> U+FFFD, like
//      Python's bytes.decode("utf-8", errors="replace"));
//   2. added tokens are cut out (leftmost-longest; normalized ones after
//      normalization), the text between them is normalized;
//   3. pre-tokenizers split the text into words; BPE turns each word into ids;
//   4. the post-processor adds special tokens when `add_special_tokens` is true.
// Decode maps ids to token strings (unknown ids are skipped), runs the decoder chain
// and, when tokenizer_config.json asks for it, transformers' clean-up of spaces.
//
// tokenizer_config.json (optional) adds what transformers does on load:
//   - `add_bos_token` / `add_eos_token` replace the post-processor by
//     "[bos] $A [eos]" (LlamaTokenizerFast's template) when tokenizer_class is one of
//     the transformers classes that do so (Llama, CodeLlama, Gemma, Cohere, GPTNeoX;
//     absent keys take their defaults, e.g. add_bos_token=true and bos "<s>" for
//     Llama), or when tokenizer_class is absent and the keys are present. Other classes
//     ignore the keys, as in transformers;
//   - `bos_token`, `eos_token`, ... (strings or {"content": ...} AddedToken objects),
//     `additional_special_tokens` and `added_tokens_decoder` become added tokens when
//     they are not yet;
//   - `clean_up_tokenization_spaces` (default false);
//   - `chat_template`: a string, or a list of {"name", "template"}.
//
// Supported components (anything else is an error naming it and the file):
//   model BPE; normalizers Sequence, NFC, NFKC, NFD, NFKD, Lowercase, Replace,
//   Prepend, Strip, StripAccents; pre-tokenizers Sequence, Split, ByteLevel, Digits;
//   post-processors TemplateProcessing, ByteLevel, Sequence, BertProcessing,
//   RobertaProcessing; decoders ByteLevel, Sequence, Replace, Strip, Fuse, ByteFallback.
//
// Untrusted input (docs/reliability.md, "Tokenizer and templates"): sizes in the
// files are bounded by the files before anything is allocated, each error naming
// the file and key: vocab ids below 2 x entries + 65536 (and 2^26), normalizers
// (and the Replace decoder) growing text at most 64x, Prepend at most 256 bytes.
// Encode is linear in its input (added tokens match through an Aho-Corasick
// automaton, see added_vocabulary.h).
//
// Thread safety: Encode and Decode may be called from several threads at once (the
// only mutable state, the BPE word cache, is locked).
//
// Details, verification and the known differences: docs/tokenizer.md.
//
// Example:
//   ASSIGN_OR_RETURN(auto tok, Tokenizer::FromDirectory("/models/DeepSeek-V3"));
//   std::vector<int32_t> ids = tok->Encode("Hello world", /*add_special_tokens=*/true);
//   // ids = {0, 19923, 2058}: BOS, "Hello", " world"
//   std::string text = tok->Decode(ids, /*skip_special_tokens=*/true);  // "Hello world"
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace deepshard {

namespace tokenizer_internal {
class AddedVocabulary;
class BpeModel;
class Decoder;
class Normalizer;
class PostProcessor;
class PreTokenizer;
}  // namespace tokenizer_internal

class Tokenizer {
 public:
  // Loads `model_dir`/tokenizer.json and, if present, `model_dir`/tokenizer_config.json.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromDirectory(const std::string& model_dir);
  // Same with explicit paths; `config_path` may be empty (no tokenizer_config.json).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFiles(const std::string& tokenizer_json_path,
                                                              const std::string& config_path);
  // Same from file contents; the names only label error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                             std::string_view config_json,
                                                             const std::string& tokenizer_json_name = "tokenizer.json",
                                                             const std::string& config_json_name = "tokenizer_config.json");

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text` (any bytes; invalid UTF-8 is repaired as described above).
  // `add_special_tokens` applies the post-processor's template (e.g. prepends BOS).
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const;

  // Text of `ids`. Ids without a token are skipped; with `skip_special_tokens`, added
  // tokens marked special are skipped too.
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const;

  // Ids span [0, vocab_size()): one more than the largest id of the vocabulary and
  // the added tokens (transformers' len(tokenizer) when ids are dense).
  int64_t vocab_size() const { return vocab_size_; }
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  const std::string& bos_token() const { return bos_token_; }  // "" when none
  const std::string& eos_token() const { return eos_token_; }  // "" when none
  // Whether Encode(..., true) adds BOS / EOS through tokenizer_config.json.
  bool add_bos_token() const { return add_bos_; }
  bool add_eos_token() const { return add_eos_; }

  // The default chat template (raw Jinja text) from tokenizer_config.json: the string,
  // or the entry named "default" of a list; "" when there is none.
  const std::string& chat_template() const { return chat_template_; }
  // A named template from a list-form chat_template (e.g. "tool_use").
  std::optional<std::string> chat_template_named(std::string_view name) const;

  // Added tokens first, then the model vocabulary.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token string of `id` ("" when there is none). For byte-level BPE this is the
  // byte-level spelling, e.g. "Ġworld".
  std::string IdToToken(int32_t id) const;
  // True when `id` is an added token marked special (skipped by skip_special_tokens).
  bool IsSpecialId(int32_t id) const;
  // True when `id` is an added token (special or not, e.g. "<｜User｜>"): its string
  // is literal text, not spelled in the model's byte alphabet.
  bool IsAddedId(int32_t id) const;
  // The decoder chain's kind, for code that maps token strings to bytes itself
  // (text/structured/token_vocabulary.h): ByteLevel spells bytes through the GPT-2
  // table; ByteFallback decodes "<0xXX>" tokens as one byte.
  bool decoder_is_byte_level() const;
  bool decoder_has_byte_fallback() const;

 private:
  friend class StreamingDetokenizer;
  Tokenizer();

  // Decode without transformers' clean-up (the decoder chain only).
  std::string DecodeRaw(std::span<const int32_t> ids, bool skip_special_tokens) const;
  // Token string of `id` as Decode sees it, or nullptr.
  const std::string* TokenOf(int32_t id) const;
  bool clean_up_tokenization_spaces() const { return clean_up_spaces_; }
  // transformers' PreTrainedTokenizerBase.clean_up_tokenization (" ." -> ".", ...).
  static std::string CleanUpTokenizationSpaces(std::string text);

  std::unique_ptr<tokenizer_internal::BpeModel> model_;
  std::unique_ptr<tokenizer_internal::Normalizer> normalizer_;  // null: none
  std::unique_ptr<tokenizer_internal::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tokenizer_internal::PostProcessor> post_processor_;
  std::unique_ptr<tokenizer_internal::Decoder> decoder_;
  std::unique_ptr<tokenizer_internal::AddedVocabulary> added_;

  int64_t vocab_size_ = 0;
  std::optional<int32_t> bos_id_, eos_id_;
  std::string bos_token_, eos_token_;
  bool add_bos_ = false, add_eos_ = false;
  bool clean_up_spaces_ = false;
  std::string chat_template_;
  absl::flat_hash_map<std::string, std::string> named_chat_templates_;
};

}  // namespace deepshard
