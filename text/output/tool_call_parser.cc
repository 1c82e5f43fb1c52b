#include "text/output/tool_call_parser.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "boost/json.hpp"
#include "text/output/marker.h"

namespace deepshard {
namespace {

using output_internal::IsAsciiSpace;
using output_internal::IsProperPrefix;
using output_internal::PartialMarkerSuffix;

constexpr std::string_view kCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kSep = "<｜tool▁sep｜>";
constexpr std::string_view kV3Type = "function";
constexpr std::string_view kFenceOpen = "```json";
constexpr std::string_view kFenceClose = "```";

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsAsciiSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsAsciiSpace(s.back())) s.remove_suffix(1);
  return s;
}

bool IsValidName(std::string_view name) {
  return !name.empty() && std::none_of(name.begin(), name.end(), IsAsciiSpace);
}

bool IsJsonObject(std::string_view text) {
  boost::json::parse_options options;
  options.max_depth = 256;  // arguments nest more than the default 32 at times
  std::error_code ec;
  const boost::json::value value =
      boost::json::parse(text, ec, boost::json::storage_ptr(), options);
  return !ec && value.is_object();
}

// V3 / R1: function<｜tool▁sep｜>NAME\n```json\nARGS\n```
bool ParseV3Body(std::string_view body, ToolCall& call) {
  const size_t sep = body.find(kSep);
  if (sep == std::string_view::npos || body.substr(0, sep) != kV3Type) return false;
  std::string_view rest = body.substr(sep + kSep.size());
  const size_t newline = rest.find('\n');
  if (newline == std::string_view::npos) return false;
  const std::string_view name = rest.substr(0, newline);
  rest.remove_prefix(newline + 1);
  if (!rest.starts_with(kFenceOpen)) return false;
  rest.remove_prefix(kFenceOpen.size());
  rest = Trim(rest);
  if (!rest.ends_with(kFenceClose)) return false;
  rest.remove_suffix(kFenceClose.size());
  const std::string_view args = Trim(rest);
  if (!IsValidName(name) || !IsJsonObject(args)) return false;
  call.name = name;
  call.arguments = args;
  return true;
}

// V3.1: NAME<｜tool▁sep｜>ARGS
bool ParseV31Body(std::string_view body, ToolCall& call) {
  const size_t sep = body.find(kSep);
  if (sep == std::string_view::npos) return false;
  const std::string_view name = body.substr(0, sep);
  const std::string_view args = Trim(body.substr(sep + kSep.size()));
  if (!IsValidName(name) || !IsJsonObject(args)) return false;
  call.name = name;
  call.arguments = args;
  return true;
}

// The text between <｜tool▁call▁begin｜> and <｜tool▁call▁end｜>, V3 layout first:
// a V3.1 call of a tool named "function" does not fit the V3 layout, so the order
// decides nothing that both could read.
bool ParseCallBody(std::string_view body, ToolCall& call) {
  return ParseV3Body(body, call) || ParseV31Body(body, call);
}

}  // namespace

ParsedToolCalls ParseToolCalls(std::string_view text) {
  ToolCallStreamParser parser;
  ToolCallStreamParser::Delta all = parser.Feed(text);
  ToolCallStreamParser::Delta last = parser.Finish();
  ParsedToolCalls parsed;
  parsed.content = std::move(all.content) + last.content;
  for (auto* delta : {&all, &last}) {
    for (ToolCallDelta& call : delta->calls) {
      parsed.calls.push_back({std::move(call.name), std::move(call.arguments)});
    }
  }
  return parsed;
}

ToolCallStreamParser::Delta ToolCallStreamParser::Feed(std::string_view piece) {
  input_.append(piece);
  Delta out;
  Process(out);
  return out;
}

ToolCallStreamParser::Delta ToolCallStreamParser::Finish() {
  Delta out;
  Process(out);
  switch (state_) {
    case State::kContent:
      out.content += input_;  // a prefix of <｜tool▁calls▁begin｜> that never completed
      break;
    case State::kBlock:
      // The block ends with the output. Whitespace after kept calls is part of
      // the block; anything else (or a block with no call) is content.
      if (!input_.empty() || block_calls_ == 0) out.content += pending_ + input_;
      break;
    case State::kCall:
      out.content += pending_;  // a call that never closed validly
      break;
  }
  *this = ToolCallStreamParser();
  return out;
}

void ToolCallStreamParser::Fail(Delta& out) {
  out.content += pending_;
  pending_.clear();
  state_ = State::kContent;
}

void ToolCallStreamParser::Process(Delta& out) {
  while (true) {
    switch (state_) {
      case State::kContent: {
        const size_t begin = input_.find(kCallsBegin);
        if (begin != std::string::npos) {
          out.content.append(input_, 0, begin);
          input_.erase(0, begin + kCallsBegin.size());
          pending_ = kCallsBegin;
          block_calls_ = 0;
          state_ = State::kBlock;
          break;
        }
        const size_t keep = PartialMarkerSuffix(input_, kCallsBegin);
        out.content.append(input_, 0, input_.size() - keep);
        input_.erase(0, input_.size() - keep);
        return;
      }
      case State::kBlock: {
        size_t spaces = 0;
        while (spaces < input_.size() && IsAsciiSpace(input_[spaces])) ++spaces;
        pending_.append(input_, 0, spaces);
        input_.erase(0, spaces);
        if (input_.starts_with(kCallBegin)) {
          input_.erase(0, kCallBegin.size());
          pending_ += kCallBegin;
          body_start_ = search_from_ = pending_.size();
          state_ = State::kCall;
        } else if (input_.starts_with(kCallsEnd) && block_calls_ > 0) {
          input_.erase(0, kCallsEnd.size());
          pending_.clear();
          state_ = State::kContent;
        } else if (IsProperPrefix(input_, kCallBegin) || IsProperPrefix(input_, kCallsEnd)) {
          return;  // empty, or a marker cut by the piece's end
        } else {
          Fail(out);  // input_ is looked at again, as content
        }
        break;
      }
      case State::kCall: {
        pending_ += input_;
        input_.clear();
        while (true) {
          const size_t end = pending_.find(kCallEnd, search_from_);
          if (end == std::string::npos) {
            // A later piece may complete a marker begun in the last bytes.
            search_from_ = std::max(
                body_start_, pending_.size() - std::min(pending_.size(), kCallEnd.size() - 1));
            return;
          }
          ToolCall call;
          const std::string_view body =
              std::string_view(pending_).substr(body_start_, end - body_start_);
          if (ParseCallBody(body, call)) {
            out.calls.push_back({next_index_++, std::move(call.name), std::move(call.arguments)});
            ++block_calls_;
            input_ = pending_.substr(end + kCallEnd.size());
            pending_.clear();
            state_ = State::kBlock;
            break;
          }
          // Not valid yet: the marker may sit inside a JSON string; look further.
          search_from_ = end + kCallEnd.size();
        }
        break;
      }
    }
  }
}

}  // namespace deepshard
