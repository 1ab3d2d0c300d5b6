#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "selector/horizon_plan.h"
#include "selector/intensity_window.h"
#include "selector/policies/horizon_target.h"
#include "selector/pool.h"
#include "selector/routing_policy.h"
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

// What one period cost under a policy (the requests split by its decision's weights).
struct PeriodOutcome {
  double items = 0;
  double error_percent_sum = 0;
  double grams = 0;
};

// What one policy did over the trace, from the same CarbonLedger the sidecar keeps.
struct PolicyResult {
  std::string policy;  // a variant's name for a fixed policy, else a description
  telemetry::RouteReport report;
  std::vector<size_t> choices;  // per period, the decision's primary variant
  std::vector<PeriodOutcome> periods;
  std::vector<std::vector<selector::VariantWeight>> weights;  // per period, the split charged
};

// Runs `policy` (built from the sidecar's selector library) over the periods, one decision per
// period from what the live sidecar would know then: the period's reading, the window `window`
// gives, the route's served totals so far, and, with `window.forecast`, the trace's own next
// `window.span` (a perfect forecast). Each period's requests are split by the decision's weights
// (largest remainder, as the weighted draw does over many requests) and charged to a ledger as the
// sidecar would; every request is one inference.
PolicyResult ReplayPolicy(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool, size_t baseline,
                          const selector::RoutingPolicy& policy, std::string label, const WindowMode& window);

// The paper's heuristic: the sidecar's LinearInterpolationPolicy through ReplayPolicy.
// `default_variant` serves while the window is flat.
PolicyResult ReplayHeuristic(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool,
                             size_t baseline, size_t default_variant, const WindowMode& window);

// Sends every request to one variant.
PolicyResult ReplayFixed(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool, size_t baseline,
                         size_t variant);

// The optimum with hindsight: every horizon planned (selector::PlanHorizon) knowing each of its
// periods' intensity and requests exactly. The bound an online policy with the same limit and
// horizons is measured against.
PolicyResult ReplayHindsight(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool, size_t baseline,
                             const selector::PlanLimit& limit, const selector::Horizon& horizon, std::string label);

// The same decisions charged on another pool: `result` was decided on `decided_with`; each period's
// split is charged on `charged_with` (variants matched by name), whose baseline is `baseline`. What a
// sidecar deciding on a table costs when the hardware's true energies are `charged_with`'s.
absl::StatusOr<telemetry::RouteReport> Recost(const std::vector<ReplayPeriod>& periods, const PolicyResult& result,
                                              const selector::Pool& decided_with, const selector::Pool& charged_with,
                                              size_t baseline);

// `pool` with each variant's energy multiplied by its factor (1 when absent; by name).
absl::StatusOr<selector::Pool> ScaledPool(const selector::Pool& pool,
                                          const std::vector<std::pair<std::string, double>>& factors);

// A result's totals over each horizon the periods fall in.
struct HorizonOutcome {
  absl::Time start;
  double items = 0;
  double error_percent_sum = 0;
  double grams = 0;
  double mean_error_percent() const { return items > 0 ? error_percent_sum / items : 0; }
};
std::vector<HorizonOutcome> ByHorizon(const std::vector<ReplayPeriod>& periods, const PolicyResult& result,
                                      const selector::Horizon& horizon);

// Joins an intensity series with a per-minute (or per-anything) request-count series: the counts
// whose time, after adding `request_offset`, falls in [period start, next period start) belong to
// that period. Periods are as long as the series' step; a period longer than `max_gap` (a hole in
// the data) takes only `step` worth of requests. Readings without requests are kept with 0.
std::vector<ReplayPeriod> JoinTraces(const std::vector<selector::IntensityReading>& intensity,
                                     const std::vector<selector::IntensityReading>& request_counts,
                                     absl::Duration request_offset);

// Scales request counts so that Σ requests × C equals `target_item_intensity` (rounding per period).
void ScaleRequests(std::vector<ReplayPeriod>* periods, double target_item_intensity);

// Where as well as which (docs/EVALUATION.md, "Where and which"): one place (a cluster on its own
// grid) of a several-place replay. Every place's periods have the same times and requests.
struct ReplayPlace {
  std::string name;
  std::vector<ReplayPeriod> periods;
  absl::Duration rtt;  // its latency cost from the gateway
};

// The intensity in force at each step of [from, to): the last reading at or before it (the first
// reading before the series begins). For putting series of different steps on one clock.
std::vector<selector::IntensityReading> Resample(const std::vector<selector::IntensityReading>& readings, absl::Time from,
                                                 absl::Time to, absl::Duration step);

enum class PlaceMode {
  kWhichOnly,      // the home place; the variant by the heuristic on the home's grid (the sidecar before clusters)
  kWhereOnly,      // the baseline variant, at the cleanest place within the budget
  kWhereAndWhich,  // the cleanest place within the budget; the heuristic on that place's grid
};
std::string PlaceModeName(PlaceMode mode);

struct PlacesResult {
  PolicyResult result;               // charged at the intensity of the place that served each period
  std::vector<double> requests;      // per place, the requests it served
  double home_grams = 0;             // the same variants' inferences all at the home's intensity
};

// Replays `mode` over `places` (home first) with the sidecar's own ranking (selector::RankPlaces:
// every place reachable and ready, its rtt against `latency_budget`) and the heuristic with a
// trailing window of `window` per place, as the sidecar keeps one per cluster.
PlacesResult ReplayPlaces(const std::vector<ReplayPlace>& places, const selector::Pool& pool, size_t baseline,
                          size_t default_variant, PlaceMode mode, std::optional<absl::Duration> latency_budget,
                          absl::Duration window);

// The table of docs/EVALUATION.md for the given results, in Markdown and CSV.
std::string ResultsMarkdown(const std::vector<PolicyResult>& results, const selector::Pool& pool, size_t baseline);
std::string ResultsCsv(const std::vector<PolicyResult>& results, const selector::Pool& pool, size_t baseline);

}  // namespace carbon::bench
