#include "text/tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <boost/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "text/tokenizer/added_vocabulary.h"
#include "text/tokenizer/bpe.h"
#include "text/tokenizer/decoder.h"
#include "text/tokenizer/json_node.h"
#include "text/tokenizer/normalizer.h"
#include "text/tokenizer/post_processor.h"
#include "text/tokenizer/pre_tokenizer.h"
#include "text/tokenizer/unicode.h"

namespace deepshard {
namespace ti = tokenizer_internal;

namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return ss.str();
}

bool FileExists(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return static_cast<bool>(in);
}

// Parses JSON text; errors give the line and column.
absl::StatusOr<boost::json::value> ParseJson(std::string_view text, const std::string& name) {
  boost::json::stream_parser parser;
  boost::system::error_code ec;
  size_t consumed = parser.write(text.data(), text.size(), ec);
  if (!ec) parser.finish(ec);
  if (ec) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < std::min(consumed, text.size()); ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": invalid JSON at line ", line, ", column ", col, ": ", ec.message()));
  }
  return parser.release();
}

// {"content": "...", "single_word": ..., ...} or, where allowed, a plain string.
absl::StatusOr<ti::AddedToken> ParseAddedToken(const ti::JsonNode& node, bool special_default) {
  ti::AddedToken t;
  t.special = special_default;
  t.normalized = !special_default;
  if (node.value() != nullptr && node.value()->is_string()) {
    ASSIGN_OR_RETURN(t.content, node.String());
    return t;
  }
  RETURN_IF_ERROR(node.Object().status());
  ASSIGN_OR_RETURN(t.content, node["content"].String());
  ASSIGN_OR_RETURN(t.single_word, node["single_word"].BoolOr(false));
  ASSIGN_OR_RETURN(t.lstrip, node["lstrip"].BoolOr(false));
  ASSIGN_OR_RETURN(t.rstrip, node["rstrip"].BoolOr(false));
  ASSIGN_OR_RETURN(t.special, node["special"].BoolOr(special_default));
  ASSIGN_OR_RETURN(t.normalized, node["normalized"].BoolOr(!t.special));
  return t;
}

// transformers tokenizer classes whose update_post_processor() turns add_bos_token /
// add_eos_token into "[bos] $A [eos]", with their constructor defaults (slow names map
// to the same fast class). CodeLlama's fill-in-the-middle tokens are not emulated.
struct TemplateClass {
  const char* name;
  bool add_bos;
  const char *bos, *eos, *unk, *pad;
};
constexpr TemplateClass kTemplateClasses[] = {
    {"LlamaTokenizer", true, "<s>", "</s>", "<unk>", nullptr},
    {"CodeLlamaTokenizer", true, "<s>", "</s>", "<unk>", nullptr},
    {"GemmaTokenizer", true, "<bos>", "<eos>", "<unk>", "<pad>"},
    {"CohereTokenizer", true, "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<UNK>", nullptr},
    {"GPTNeoXTokenizer", false, "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", nullptr},
};

const TemplateClass* FindTemplateClass(std::string_view name) {
  if (name.ends_with("Fast")) name.remove_suffix(4);
  for (const TemplateClass& c : kTemplateClasses) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromDirectory(const std::string& model_dir) {
  std::string config = model_dir + "/tokenizer_config.json";
  return FromFiles(model_dir + "/tokenizer.json", FileExists(config) ? config : std::string());
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFiles(const std::string& tokenizer_json_path,
                                                                const std::string& config_path) {
  ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFile(tokenizer_json_path));
  std::string config_json;
  if (!config_path.empty()) {
    ASSIGN_OR_RETURN(config_json, ReadFile(config_path));
  }
  return FromJson(tokenizer_json, config_json, tokenizer_json_path, config_path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                               std::string_view config_json,
                                                               const std::string& tokenizer_json_name,
                                                               const std::string& config_json_name) {
  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());

  // ---- tokenizer.json
  ASSIGN_OR_RETURN(boost::json::value root_value, ParseJson(tokenizer_json, tokenizer_json_name));
  ti::JsonNode root(&root_value, tokenizer_json_name, "");
  RETURN_IF_ERROR(root.Object().status());
  if (!root["version"].is_null()) {
    ASSIGN_OR_RETURN(std::string version, root["version"].String());
    if (version != "1.0") return root["version"].Error(absl::StrCat("unknown tokenizer version \"", version, "\""));
  }
  ASSIGN_OR_RETURN(tok->model_, ti::BpeModel::Parse(root["model"]));
  if (!root["normalizer"].is_null()) {
    ASSIGN_OR_RETURN(tok->normalizer_, ti::ParseNormalizer(root["normalizer"]));
    if (tok->normalizer_->IsNoop()) tok->normalizer_.reset();
  }
  if (!root["pre_tokenizer"].is_null()) {
    ASSIGN_OR_RETURN(tok->pre_tokenizer_, ti::ParsePreTokenizer(root["pre_tokenizer"]));
  }
  if (!root["post_processor"].is_null()) {
    ASSIGN_OR_RETURN(tok->post_processor_, ti::ParsePostProcessor(root["post_processor"]));
  }
  if (!root["decoder"].is_null()) {
    ASSIGN_OR_RETURN(tok->decoder_, ti::ParseDecoder(root["decoder"]));
  }
  // "truncation" and "padding" are not applied: transformers turns both off unless a
  // call asks for them.

  tok->added_ = std::make_unique<ti::AddedVocabulary>();
  std::vector<ti::AddedToken> added;
  ti::JsonNode added_node = root["added_tokens"];
  if (!added_node.is_null()) {
    ASSIGN_OR_RETURN(const boost::json::array* arr, added_node.Array());
    for (size_t i = 0; i < arr->size(); ++i) {
      RETURN_IF_ERROR(added_node[i].Object().status());
      ASSIGN_OR_RETURN(ti::AddedToken t, ParseAddedToken(added_node[i], /*special_default=*/false));
      if (!added_node[i]["id"].is_null()) RETURN_IF_ERROR(added_node[i]["id"].Int().status());
      added.push_back(std::move(t));
    }
  }
  tok->added_->AddTokens(added, *tok->model_, tok->normalizer_.get());

  // ---- tokenizer_config.json
  boost::json::value config_value;
  if (!config_json.empty()) {
    ASSIGN_OR_RETURN(config_value, ParseJson(config_json, config_json_name));
  }
  ti::JsonNode config(config_json.empty() ? nullptr : &config_value, config_json_name, "");
  if (!config.missing()) RETURN_IF_ERROR(config.Object().status());

  ASSIGN_OR_RETURN(std::string tokenizer_class, config["tokenizer_class"].StringOr(""));
  const TemplateClass* template_class = FindTemplateClass(tokenizer_class);

  // Special tokens named by the config: bos/eos/... and additional_special_tokens. Keys
  // that are absent (not null) take the class defaults of transformers.
  struct NamedSpecial {
    const char* key;
    const char* class_default;
    std::optional<ti::AddedToken> token;
  };
  NamedSpecial named[] = {{"bos_token", template_class ? template_class->bos : nullptr, {}},
                          {"eos_token", template_class ? template_class->eos : nullptr, {}},
                          {"unk_token", template_class ? template_class->unk : nullptr, {}},
                          {"sep_token", nullptr, {}},
                          {"pad_token", template_class ? template_class->pad : nullptr, {}},
                          {"cls_token", nullptr, {}},
                          {"mask_token", nullptr, {}}};
  std::vector<ti::AddedToken> specials;
  for (NamedSpecial& n : named) {
    ti::JsonNode node = config[n.key];
    ti::AddedToken t;
    if (node.missing() && n.class_default != nullptr) {
      t.content = n.class_default;
      t.normalized = false;
    } else if (node.is_null()) {
      continue;
    } else {
      ASSIGN_OR_RETURN(t, ParseAddedToken(node, /*special_default=*/true));
    }
    t.special = true;
    n.token = t;
    specials.push_back(t);
  }
  ti::JsonNode extra = config["additional_special_tokens"];
  if (!extra.is_null()) {
    ASSIGN_OR_RETURN(const boost::json::array* arr, extra.Array());
    for (size_t i = 0; i < arr->size(); ++i) {
      ASSIGN_OR_RETURN(ti::AddedToken t, ParseAddedToken(extra[i], /*special_default=*/true));
      t.special = true;
      specials.push_back(t);
    }
  }
  auto is_named_special = [&](const std::string& content) {
    for (const auto& s : specials) {
      if (s.content == content) return true;
    }
    return false;
  };

  // transformers adds added_tokens_decoder entries that are not already identical
  // added tokens (in id order), then the special tokens that are not added tokens yet.
  std::vector<ti::AddedToken> to_add;
  ti::JsonNode decoder_tokens = config["added_tokens_decoder"];
  if (!decoder_tokens.is_null()) {
    ASSIGN_OR_RETURN(const boost::json::object* obj, decoder_tokens.Object());
    std::vector<std::pair<int64_t, std::string>> keys;
    for (const auto& kv : *obj) {
      std::string key(kv.key().data(), kv.key().size());
      int64_t id = 0;
      if (!absl::SimpleAtoi(key, &id)) return decoder_tokens[key].Error("key must be an integer id");
      keys.emplace_back(id, key);
    }
    std::sort(keys.begin(), keys.end());
    for (const auto& [id, key] : keys) {
      ASSIGN_OR_RETURN(ti::AddedToken t, ParseAddedToken(decoder_tokens[key], /*special_default=*/false));
      t.special = t.special || is_named_special(t.content);
      auto existing = tok->added_->TokenToId(t.content);
      const ti::AddedToken* same = existing ? tok->added_->Find(*existing) : nullptr;
      if (same != nullptr && *same == t) continue;
      to_add.push_back(std::move(t));
    }
  }
  for (const ti::AddedToken& s : specials) {
    bool known = tok->added_->Contains(s.content);
    for (const auto& t : to_add) known = known || t.content == s.content;
    if (!known) to_add.push_back(s);
  }
  if (!to_add.empty()) tok->added_->AddTokens(to_add, *tok->model_, tok->normalizer_.get());

  if (named[0].token) tok->bos_token_ = named[0].token->content;
  if (named[1].token) tok->eos_token_ = named[1].token->content;
  if (!tok->bos_token_.empty()) tok->bos_id_ = tok->TokenToId(tok->bos_token_);
  if (!tok->eos_token_.empty()) tok->eos_id_ = tok->TokenToId(tok->eos_token_);

  // BOS/EOS through the LlamaTokenizerFast template: for the classes that install it,
  // and, when tokenizer_class is not given, whenever the keys are present. transformers
  // ignores the keys for every other class, and so does deepshard.
  const bool has_bos_key = !config["add_bos_token"].is_null();
  const bool has_eos_key = !config["add_eos_token"].is_null();
  ASSIGN_OR_RETURN(tok->add_bos_, config["add_bos_token"].BoolOr(template_class && template_class->add_bos));
  ASSIGN_OR_RETURN(tok->add_eos_, config["add_eos_token"].BoolOr(false));
  if (template_class != nullptr || (tokenizer_class.empty() && (has_bos_key || has_eos_key))) {
    if (tok->add_bos_ && !tok->bos_id_) {
      return config["add_bos_token"].Error("add_bos_token is true but there is no bos_token");
    }
    if (tok->add_eos_ && !tok->eos_id_) {
      return config["add_eos_token"].Error("add_eos_token is true but there is no eos_token");
    }
    tok->post_processor_ = ti::MakeBosEosTemplate(tok->add_bos_ ? tok->bos_id_ : std::nullopt,
                                                  tok->add_eos_ ? tok->eos_id_ : std::nullopt);
  } else {
    tok->add_bos_ = tok->add_eos_ = false;  // the post-processor of tokenizer.json decides
  }

  ASSIGN_OR_RETURN(tok->clean_up_spaces_, config["clean_up_tokenization_spaces"].BoolOr(false));

  ti::JsonNode tmpl = config["chat_template"];
  if (!tmpl.is_null()) {
    if (tmpl.value()->is_string()) {
      ASSIGN_OR_RETURN(tok->chat_template_, tmpl.String());
    } else {
      ASSIGN_OR_RETURN(const boost::json::array* arr, tmpl.Array());
      for (size_t i = 0; i < arr->size(); ++i) {
        ASSIGN_OR_RETURN(std::string name, tmpl[i]["name"].String());
        ASSIGN_OR_RETURN(std::string text, tmpl[i]["template"].String());
        tok->named_chat_templates_[name] = text;
      }
      auto it = tok->named_chat_templates_.find("default");
      if (it != tok->named_chat_templates_.end()) tok->chat_template_ = it->second;
    }
  }

  tok->vocab_size_ = static_cast<int64_t>(std::max(tok->model_->max_id(), tok->added_->max_id())) + 1;
  // Encode must only return ids of the vocabulary: a template naming an id beyond it
  // (found by tests/fuzz/tokenizer_fuzz) is a broken file, not a token.
  if (tok->post_processor_ != nullptr && tok->post_processor_->max_id() >= tok->vocab_size_) {
    return absl::InvalidArgumentError(absl::StrCat(tokenizer_json_name, ": post_processor adds token id ",
                                                   tok->post_processor_->max_id(), ", outside the vocabulary [0, ",
                                                   tok->vocab_size_, ")"));
  }
  return tok;
}

// transformers' PreTrainedTokenizerBase.clean_up_tokenization.
std::string Tokenizer::CleanUpTokenizationSpaces(std::string s) {
  static constexpr std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},   {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
  };
  for (const auto& [from, to] : kRules) {
    if (s.find(from) == std::string::npos) continue;
    std::string out;
    out.reserve(s.size());
    size_t pos = 0;
    for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
      out.append(s, pos, hit - pos);
      out.append(to);
    }
    out.append(s, pos, std::string::npos);
    s = std::move(out);
  }
  return s;
}

std::optional<std::string> Tokenizer::chat_template_named(std::string_view name) const {
  auto it = named_chat_templates_.find(std::string(name));
  if (it == named_chat_templates_.end()) return std::nullopt;
  return it->second;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto id = added_->TokenToId(token)) return id;
  return model_->TokenToId(token);
}

const std::string* Tokenizer::TokenOf(int32_t id) const {
  if (const ti::AddedToken* t = added_->Find(id)) return &t->content;
  return model_->IdToToken(id);
}

std::string Tokenizer::IdToToken(int32_t id) const {
  const std::string* t = TokenOf(id);
  return t == nullptr ? std::string() : *t;
}

bool Tokenizer::IsSpecialId(int32_t id) const {
  const std::string* t = TokenOf(id);
  return t != nullptr && added_->IsSpecial(*t);
}

bool Tokenizer::IsAddedId(int32_t id) const { return added_->Find(id) != nullptr; }

bool Tokenizer::decoder_is_byte_level() const { return decoder_ != nullptr && decoder_->IsByteLevel(); }

bool Tokenizer::decoder_has_byte_fallback() const { return decoder_ != nullptr && decoder_->HasByteFallback(); }

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::string repaired;
  if (!ti::IsValidUtf8(text)) {
    ti::AppendUtf8Lossy(text, &repaired);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  auto on_word = [&](std::string_view word) { model_->Tokenize(word, &ids); };
  auto on_text = [&](std::string_view piece) {
    if (pre_tokenizer_ != nullptr) {
      pre_tokenizer_->PreTokenize(piece, on_word);
    } else {
      on_word(piece);
    }
  };
  added_->Split(text, normalizer_.get(), [&](int32_t id) { ids.push_back(id); }, on_text);
  if (post_processor_ != nullptr) post_processor_->Process(&ids, add_special_tokens);
  return ids;
}

std::string Tokenizer::DecodeRaw(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* t = TokenOf(id);
    if (t == nullptr) continue;
    if (skip_special_tokens && added_->IsSpecial(*t)) continue;
    tokens.push_back(*t);
  }
  if (decoder_ != nullptr) {
    decoder_->DecodeChain(&tokens);
    std::string text;
    for (const auto& t : tokens) text += t;
    return text;
  }
  std::string text;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) text.push_back(' ');
    text += tokens[i];
  }
  return text;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string text = DecodeRaw(ids, skip_special_tokens);
  if (clean_up_spaces_) text = CleanUpTokenizationSpaces(std::move(text));
  return text;
}

}  // namespace deepshard
