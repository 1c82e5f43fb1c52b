// ChatTemplate: the public face of the Jinja interpreter in jinja_*.cc.
#include "text/chat/chat_template.h"

#include <utility>

#include "base/status_macros.h"
#include "text/chat/jinja_ast.h"
#include "text/chat/jinja_parser.h"
#include "text/chat/jinja_renderer.h"
#include "text/chat/jinja_value.h"

namespace deepshard {

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  ASSIGN_OR_RETURN(jinja::TemplateAst ast, jinja::ParseTemplate(source));
  return ChatTemplate(std::make_shared<const jinja::TemplateAst>(std::move(ast)));
}

absl::StatusOr<std::string> ChatTemplate::Render(const boost::json::object& context) const {
  return Render(context, jinja::RenderLimits{});
}

absl::StatusOr<std::string> ChatTemplate::Render(const boost::json::object& context,
                                                 const jinja::RenderLimits& limits) const {
  jinja::DictData vars;
  for (const auto& kv : context) {
    ASSIGN_OR_RETURN(jinja::Value v, jinja::FromJson(kv.value()));
    vars.Set(std::string(kv.key()), std::move(v));
  }
  jinja::Renderer renderer(*ast_, limits);
  return renderer.Render(std::move(vars));
}

absl::StatusOr<std::string> ApplyChatTemplate(std::string_view chat_template, const boost::json::array& messages,
                                              bool add_generation_prompt, const std::string& bos_token,
                                              const std::string& eos_token, const boost::json::value* tools) {
  ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::Parse(chat_template));
  boost::json::object context;
  context["messages"] = messages;
  context["tools"] = tools != nullptr ? *tools : boost::json::value(nullptr);
  context["documents"] = nullptr;
  context["add_generation_prompt"] = add_generation_prompt;
  context["bos_token"] = bos_token;
  context["eos_token"] = eos_token;
  return t.Render(context);
}

}  // namespace deepshard
