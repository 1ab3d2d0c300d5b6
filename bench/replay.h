#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "selector/intensity_window.h"
#include "selector/pool.h"
#include "telemetry/carbon_ledger.h"

namespace carbon::bench {

// One intensity period of the replay: the intensity in force from `at` and the requests that
// arrived before the next period.
struct ReplayPeriod {
  absl::Time at;
  double gco2_per_kwh = 0;
  uint64_t requests = 0;
};

// How the heuristic's C_low and C_high are found.
struct WindowMode {
  enum class Kind { kWholeTrace, kTrailing } kind = Kind::kWholeTrace;
  absl::Duration span = absl::Hours(24);  // kTrailing
  bool forecast = false;                   // kTrailing: widened by the next `span` of the trace
  std::string Name() const;                // "whole-trace", "trailing-24h", "trailing-24h+forecast"
};

// Parses "whole-trace", "trailing:24h" or "trailing:24h+forecast".
absl::StatusOr<WindowMode> ParseWindowMode(const std::string& text);

// What one policy did over the trace, from the same CarbonLedger the sidecar keeps.
struct PolicyResult {
  std::string policy;  // a variant's name for a fixed policy, else "heuristic (<window>)"
  telemetry::RouteReport report;
  std::vector<size_t> choices;  // per period, the variant that served it
};

// Runs the sidecar's LinearInterpolationPolicy (through the same selector library) over the
// periods with the given window, charging a ledger as the sidecar would; every request is one
// inference. `default_variant` serves while the window is flat.
PolicyResult ReplayHeuristic(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool,
                             size_t baseline, size_t default_variant, const WindowMode& window);

// Sends every request to one variant.
PolicyResult ReplayFixed(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool, size_t baseline,
                         size_t variant);

// Joins an intensity series with a per-minute (or per-anything) request-count series: the counts
// whose time, after adding `request_offset`, falls in [period start, next period start) belong to
// that period. Periods are as long as the series' step; a period longer than `max_gap` (a hole in
// the data) takes only `step` worth of requests. Readings without requests are kept with 0.
std::vector<ReplayPeriod> JoinTraces(const std::vector<selector::IntensityReading>& intensity,
                                     const std::vector<selector::IntensityReading>& request_counts,
                                     absl::Duration request_offset);

// Scales request counts so that Σ requests × C equals `target_item_intensity` (rounding per period).
void ScaleRequests(std::vector<ReplayPeriod>* periods, double target_item_intensity);

// The table of docs/EVALUATION.md for the given results, in Markdown and CSV.
std::string ResultsMarkdown(const std::vector<PolicyResult>& results, const selector::Pool& pool, size_t baseline);
std::string ResultsCsv(const std::vector<PolicyResult>& results, const selector::Pool& pool, size_t baseline);

}  // namespace carbon::bench
