#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "sidecar/routing.h"

namespace carbon::sidecar {

// Text for HTML (element content and quoted attributes): & < > " ' escaped.
std::string HtmlEscape(std::string_view text);

// A reload the sidecar refused, for the page (the running config stayed).
struct RejectedReload {
  absl::Time at;
  std::string message;
};

struct StatusPageInputs {
  const RoutingSnapshot& snapshot;
  absl::Time now;            // wall clock
  absl::Time config_loaded;  // when the config in force was loaded (start or last applied reload)
  uint64_t reloads_ok = 0;
  uint64_t reloads_failed = 0;
  std::optional<RejectedReload> last_reload_error;
};

// GET /: one self-contained page (no external resource) with every route's figures rendered in it,
// each figure also as data-route/data-field/data-value for programs; its script only refreshes them
// from /v1/selection and draws the charts from /v1/history.
std::string RenderStatusPage(const StatusPageInputs& in);

}  // namespace carbon::sidecar
