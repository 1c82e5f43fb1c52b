#include "text/tokenizer/streaming_detokenizer.h"

#include "text/tokenizer/decoder.h"
#include "text/tokenizer/tokenizer.h"

namespace deepshard {
namespace {

// Context kept before a window, in ids (whole windows are dropped beyond this).
constexpr size_t kMaxContextIds = 32;

bool EndsWithReplacementChar(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer),
      skip_special_tokens_(skip_special_tokens),
      byte_fallback_(tokenizer.decoder_has_byte_fallback()),
      clean_up_(tokenizer.clean_up_tokenization_spaces()) {}

std::string StreamingDetokenizer::Add(int32_t id) {
  if (tokenizer_.TokenOf(id) == nullptr) return "";  // Decode skips it too
  if (skip_special_tokens_ && tokenizer_.IsSpecialId(id)) return "";
  window_.push_back(id);
  if (byte_fallback_ && tokenizer_internal::IsByteFallbackToken(*tokenizer_.TokenOf(id))) return "";
  // An incomplete character decodes as U+FFFD for now: wait for more tokens.
  if (EndsWithReplacementChar(tokenizer_.DecodeRaw(window_, skip_special_tokens_))) return "";
  return CleanUp(EmitWindow(), /*final=*/false);
}

std::string StreamingDetokenizer::Flush() {
  std::string out = window_.empty() ? std::string() : EmitWindow();
  out = CleanUp(std::move(out), /*final=*/true);
  window_.clear();
  context_.clear();
  context_windows_.clear();
  context_text_.clear();
  held_.clear();
  return out;
}

std::string StreamingDetokenizer::EmitWindow() {
  std::vector<int32_t> all = context_;
  all.insert(all.end(), window_.begin(), window_.end());
  std::string text = tokenizer_.DecodeRaw(all, skip_special_tokens_);
  std::string out;
  if (text.compare(0, context_text_.size(), context_text_) == 0) {
    out = text.substr(context_text_.size());
  } else {
    // Only a decoder that rewrites the end of the text (e.g. Strip with stop > 0 after
    // Fuse) gets here; fall back to the window on its own.
    out = tokenizer_.DecodeRaw(window_, skip_special_tokens_);
  }
  context_ = std::move(all);
  context_windows_.push_back(window_.size());
  window_.clear();
  // Keep a bounded context, cut at window boundaries, that still decodes to
  // something (decoders such as Strip look at the start of the text).
  while (context_.size() > kMaxContextIds && context_windows_.size() > 1) {
    std::vector<int32_t> shorter(context_.begin() + static_cast<ptrdiff_t>(context_windows_.front()), context_.end());
    std::string shorter_text = tokenizer_.DecodeRaw(shorter, skip_special_tokens_);
    if (shorter_text.empty()) break;
    context_ = std::move(shorter);
    context_windows_.erase(context_windows_.begin());
    text = std::move(shorter_text);
  }
  context_text_ = std::move(text);  // Decode of context_
  return out;
}

std::string StreamingDetokenizer::CleanUp(std::string raw, bool final) {
  if (!clean_up_) return raw;
  held_ += raw;
  size_t cut = held_.size();
  if (!final) {
    // Every clean-up pattern starts with a space and is at most 4 bytes long, so a
    // match can only cross the cut if a space lies in the 3 bytes before it: move the
    // cut back until there is none.
    while (cut > 0) {
      size_t space = held_.rfind(' ', cut - 1);
      if (space == std::string::npos || space + 3 < cut) break;
      cut = space;
    }
  }
  std::string out = Tokenizer::CleanUpTokenizationSpaces(held_.substr(0, cut));
  held_.erase(0, cut);
  return out;
}

}  // namespace deepshard
