#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "dataplane/h2_proxy.h"
#include "sidecar/config.h"
#include "sidecar/proxy.h"
#include "sidecar/routing.h"

namespace carbon::sidecar {

// Config reloads by result. Thread-safe.
struct ReloadCounters {
  std::atomic<uint64_t> success{0};
  std::atomic<uint64_t> failure{0};
  std::atomic<double> last_success_timestamp{0};  // Unix seconds; 0: never
};

// Everything /metrics shows, read from one routing snapshot so that a scrape during a reload sees
// either the old state or the new one, never half of each.
struct MetricsSources {
  const RoutingSnapshot& snapshot;
  const ProxyCounters& proxy;
  const ReloadCounters& reloads;
  const dataplane::H2Proxy* h2 = nullptr;  // set on the h2 data plane
};

// The Prometheus exposition (text 0.0.4, or OpenMetrics 1.0 when `open_metrics`); docs/metrics.md lists the families.
std::string RenderMetrics(const MetricsSources& sources, bool open_metrics);

// /v1/selection: per route, the intensity with its source and age, the window, t, the target
// energy, the chosen variant and why, and every candidate with its energy, error and readiness.
std::string RenderSelectionJson(const RoutingSnapshot& snapshot, absl::Time wall_now);

// /v1/config: the effective config, rendered from the parsed settings. Provider secrets appear only
// as where they are read from (an environment variable or a file), never as their values.
std::string RenderConfigJson(const SidecarConfig& config);

// /readyz: ready when the upstream answered the last readiness questions (or was never asked) —
// the intensity needs no check, since every route has a default variant to fall back on.
bool IsReady(const RoutingSnapshot& snapshot, std::string* why);

}  // namespace carbon::sidecar
