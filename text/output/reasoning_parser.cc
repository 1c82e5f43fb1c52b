#include "text/output/reasoning_parser.h"

#include <string>
#include <string_view>

#include "text/output/marker.h"

namespace deepshard {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

}  // namespace

ReasoningParser::ReasoningParser(bool starts_in_reasoning)
    : starts_in_reasoning_(starts_in_reasoning), state_(State::kStart) {}

ReasoningDelta ReasoningParser::Feed(std::string_view text) {
  held_.append(text);
  ReasoningDelta out;
  Process(out);
  return out;
}

ReasoningDelta ReasoningParser::Finish() {
  ReasoningDelta out;
  Process(out);
  // What is left is a proper prefix of a tag that never completed: plain text of
  // the side it would have been on.
  const bool reasoning =
      state_ == State::kReasoning || (state_ == State::kStart && starts_in_reasoning_);
  (reasoning ? out.reasoning : out.content).append(held_);
  held_.clear();
  state_ = State::kStart;
  return out;
}

void ReasoningParser::Process(ReasoningDelta& out) {
  while (true) {
    switch (state_) {
      case State::kStart:
        if (held_.starts_with(kThinkOpen)) {
          held_.erase(0, kThinkOpen.size());
          state_ = State::kReasoning;
        } else if (output_internal::IsProperPrefix(held_, kThinkOpen)) {
          return;  // "", "<", "<th", ...: the next piece decides
        } else {
          state_ = starts_in_reasoning_ ? State::kReasoning : State::kContent;
        }
        break;
      case State::kReasoning: {
        const size_t close = held_.find(kThinkClose);
        if (close != std::string::npos) {
          out.reasoning.append(held_, 0, close);
          held_.erase(0, close + kThinkClose.size());
          state_ = State::kContent;
          break;
        }
        const size_t keep = output_internal::PartialMarkerSuffix(held_, kThinkClose);
        out.reasoning.append(held_, 0, held_.size() - keep);
        held_.erase(0, held_.size() - keep);
        return;
      }
      case State::kContent:
        out.content.append(held_);
        held_.clear();
        return;
    }
  }
}

ReasoningDelta ParseReasoning(std::string_view output, bool starts_in_reasoning) {
  ReasoningParser parser(starts_in_reasoning);
  ReasoningDelta out = parser.Feed(output);
  ReasoningDelta last = parser.Finish();
  out.reasoning += last.reasoning;
  out.content += last.content;
  return out;
}

bool PromptOpensThink(std::string_view rendered_prompt) {
  size_t end = rendered_prompt.size();
  while (end > 0 && output_internal::IsAsciiSpace(rendered_prompt[end - 1])) --end;
  return rendered_prompt.substr(0, end).ends_with(kThinkOpen);
}

}  // namespace deepshard
