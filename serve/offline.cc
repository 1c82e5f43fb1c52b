#include "serve/offline.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deepshard::serve {

absl::StatusOr<std::vector<OfflineResult>> RunOffline(Engine& engine, std::vector<GenerationRequest> requests,
                                                      const std::function<void(size_t, int32_t)>& on_token) {
  std::vector<OfflineResult> results(requests.size());
  std::string error;
  for (size_t i = 0; i < requests.size(); ++i) {
    // The sink runs on this thread (the engine's driver), or on the control
    // plane's thread when a rank is lost; then only `error` is written.
    auto id = engine.Submit(std::move(requests[i]), [&results, &error, &on_token, i](TokenEvent ev) {
      OfflineResult& r = results[i];
      if (ev.reason == FinishReason::kError) {
        if (error.empty()) error = absl::StrCat("prompt ", i, ": ", ev.error);
        r.reason = ev.reason;
        return;
      }
      for (int32_t t : ev.tokens) {
        r.tokens.push_back(t);
        if (on_token) on_token(i, t);
      }
      r.logits.insert(r.logits.end(), ev.logits.begin(), ev.logits.end());
      if (ev.finished) r.reason = ev.reason;
    });
    if (!id.ok()) return absl::Status(id.status().code(), absl::StrCat("prompt ", i, ": ", id.status().message()));
  }
  RETURN_IF_ERROR(engine.Run(/*until_idle=*/true));
  if (!error.empty()) return absl::InternalError(error);
  return results;
}

}  // namespace deepshard::serve
