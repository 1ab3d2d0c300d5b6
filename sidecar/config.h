#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "selector/intensity_window.h"
#include "selector/pool.h"

namespace carbon::sidecar {

struct UpstreamConfig {
  std::string target;                          // host:port of the inference server
  int64_t max_message_bytes = 64 * 1024 * 1024;  // both directions, both sides of the sidecar
  // How often the variants' readiness is asked (ModelReady); zero: never, all count as ready.
  absl::Duration readiness_interval = absl::Seconds(10);
};

struct IntensityConfig {
  std::string provider;  // "static" or "trace"
  std::string region;    // a label for logs and metrics; providers may also use it
  absl::Duration refresh = absl::Minutes(5);
  absl::Duration stale_after = absl::Hours(2);
  absl::Duration window = absl::Hours(24);
  std::optional<selector::WindowBounds> fixed_bounds;
  // static
  double gco2_per_kwh = 0;
  // trace
  std::string trace_path;  // a CSV file, or a directory whose *.csv files are read in name order
  std::string trace_time_column;
  std::string trace_value_column;
  double trace_speedup = 1;
  bool trace_loop = true;
  std::optional<absl::Time> trace_start;
};

struct RouteConfig {
  std::string name;         // the model name clients send
  std::string pool_source;  // the pool file, or "inline"
  std::shared_ptr<const selector::Pool> pool;
  size_t baseline = 0;
  size_t default_variant = 0;
  absl::Duration min_dwell = absl::ZeroDuration();
  // Whether the first input's shape[0] counts inferences per request.
  bool batch_dimension = false;
};

struct SidecarConfig {
  std::string path;  // the file it came from
  std::string listen = "0.0.0.0:8001";
  // The admin HTTP port (/metrics, /healthz, /readyz, /v1/selection, /v1/config). Loopback by
  // default: exposing it further is an explicit choice.
  std::string admin_listen = "127.0.0.1:9464";
  UpstreamConfig upstream;
  absl::Duration drain_timeout = absl::Seconds(30);
  IntensityConfig intensity;
  std::vector<RouteConfig> routes;
};

// Reads and validates a sidecar config. Every problem is INVALID_ARGUMENT with a message of the
// form "file:line:column: what is wrong", naming the pool file when the problem is in one.
// Relative paths in the config (pools, traces) are resolved against the config's directory.
absl::StatusOr<SidecarConfig> LoadConfig(const std::string& path);

// Reads a pool file: `variants:` with name, energy_mj and error_percent each.
absl::StatusOr<selector::Pool> LoadPoolFile(const std::string& path);

}  // namespace carbon::sidecar
