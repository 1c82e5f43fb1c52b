#include "text/tokenizer/post_processor.h"

#include <algorithm>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "base/status_macros.h"

namespace deepshard::tokenizer_internal {
namespace {

class NoopPostProcessor : public PostProcessor {
 public:
  void Process(std::vector<int32_t>*, bool) const override {}
};

// One element of a template: the input sequence, or a run of special-token ids.
struct TemplatePiece {
  bool is_sequence = false;
  std::vector<int32_t> ids;  // special tokens only
};

class TemplatePostProcessor : public PostProcessor {
 public:
  explicit TemplatePostProcessor(std::vector<TemplatePiece> single) : single_(std::move(single)) {}
  void Process(std::vector<int32_t>* ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    out.reserve(ids->size() + 4);
    for (const TemplatePiece& p : single_) {
      if (p.is_sequence) {
        out.insert(out.end(), ids->begin(), ids->end());
      } else {
        out.insert(out.end(), p.ids.begin(), p.ids.end());
      }
    }
    *ids = std::move(out);
  }
  int32_t max_id() const override {
    int32_t m = -1;
    for (const TemplatePiece& p : single_) {
      for (int32_t id : p.ids) m = std::max(m, id);
    }
    return m;
  }

 private:
  std::vector<TemplatePiece> single_;
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
  void Process(std::vector<int32_t>* ids, bool add_special_tokens) const override {
    for (const auto& p : parts_) p->Process(ids, add_special_tokens);
  }
  int32_t max_id() const override {
    int32_t m = -1;
    for (const auto& p : parts_) m = std::max(m, p->max_id());
    return m;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

absl::StatusOr<int32_t> ParseTokenPairId(const JsonNode& node) {
  // ["[CLS]", 101]
  ASSIGN_OR_RETURN(const boost::json::array* arr, node.Array());
  if (arr->size() != 2) return node.Error("expected [token, id]");
  RETURN_IF_ERROR(node[0].String().status());
  ASSIGN_OR_RETURN(int64_t id, node[1].Int());
  if (id < 0 || id > INT32_MAX) return node[1].Error("id out of range");
  return static_cast<int32_t>(id);
}

absl::StatusOr<std::unique_ptr<PostProcessor>> ParseTemplate(const JsonNode& node) {
  // special_tokens: {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}, ...}
  JsonNode specials = node["special_tokens"];
  absl::flat_hash_map<std::string, std::vector<int32_t>> special_ids;
  if (!specials.is_null()) {
    ASSIGN_OR_RETURN(const boost::json::object* obj, specials.Object());
    for (const auto& kv : *obj) {
      std::string key(kv.key().data(), kv.key().size());
      JsonNode entry = specials[key];
      JsonNode ids_node = entry["ids"];
      ASSIGN_OR_RETURN(const boost::json::array* ids, ids_node.Array());
      JsonNode tokens_node = entry["tokens"];
      ASSIGN_OR_RETURN(const boost::json::array* tokens, tokens_node.Array());
      if (ids->size() != tokens->size()) return entry.Error("ids and tokens must have the same length");
      std::vector<int32_t> list;
      for (size_t i = 0; i < ids->size(); ++i) {
        ASSIGN_OR_RETURN(int64_t id, ids_node[i].Int());
        if (id < 0 || id > INT32_MAX) return ids_node[i].Error("id out of range");
        list.push_back(static_cast<int32_t>(id));
      }
      special_ids[key] = std::move(list);
    }
  }
  JsonNode single = node["single"];
  ASSIGN_OR_RETURN(const boost::json::array* pieces, single.Array());
  std::vector<TemplatePiece> out;
  for (size_t i = 0; i < pieces->size(); ++i) {
    JsonNode piece = single[i];
    RETURN_IF_ERROR(piece.Object().status());
    if (!piece["Sequence"].missing()) {
      ASSIGN_OR_RETURN(std::string id, piece["Sequence"]["id"].String());
      if (id != "A") return piece["Sequence"]["id"].Error("the single template can only use sequence A");
      out.push_back({true, {}});
    } else if (!piece["SpecialToken"].missing()) {
      ASSIGN_OR_RETURN(std::string id, piece["SpecialToken"]["id"].String());
      auto it = special_ids.find(id);
      if (it == special_ids.end()) {
        return piece["SpecialToken"]["id"].Error(absl::StrCat("special token \"", id, "\" is not in special_tokens"));
      }
      out.push_back({false, it->second});
    } else {
      return piece.Error("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return std::make_unique<TemplatePostProcessor>(std::move(out));
}

}  // namespace

std::unique_ptr<PostProcessor> MakeBosEosTemplate(std::optional<int32_t> bos, std::optional<int32_t> eos) {
  std::vector<TemplatePiece> single;
  if (bos) single.push_back({false, {*bos}});
  single.push_back({true, {}});
  if (eos) single.push_back({false, {*eos}});
  return std::make_unique<TemplatePostProcessor>(std::move(single));
}

absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const JsonNode& node) {
  RETURN_IF_ERROR(node.Object().status());
  ASSIGN_OR_RETURN(std::string type, node["type"].String());
  if (type == "ByteLevel") return std::make_unique<NoopPostProcessor>();
  if (type == "TemplateProcessing") return ParseTemplate(node);
  if (type == "Sequence") {
    JsonNode list = node["processors"];
    ASSIGN_OR_RETURN(const boost::json::array* arr, list.Array());
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < arr->size(); ++i) {
      ASSIGN_OR_RETURN(auto part, ParsePostProcessor(list[i]));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePostProcessor>(std::move(parts));
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    ASSIGN_OR_RETURN(int32_t cls, ParseTokenPairId(node["cls"]));
    ASSIGN_OR_RETURN(int32_t sep, ParseTokenPairId(node["sep"]));
    return MakeBosEosTemplate(cls, sep);
  }
  return node["type"].Error(absl::StrCat("unsupported post-processor \"", type,
                                         "\" (supported: TemplateProcessing, ByteLevel, Sequence, "
                                         "BertProcessing, RobertaProcessing)"));
}

}  // namespace deepshard::tokenizer_internal
