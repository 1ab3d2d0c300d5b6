#include "bench/replay.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "selector/policies/linear_interpolation.h"

namespace carbon::bench {
namespace {

// The ledger a policy is charged in: one route, the pool, the baseline — as in the sidecar.
struct PolicyLedger {
  PolicyLedger(const std::string& name, const selector::Pool& pool, size_t baseline)
      : route(ledger.Route(name, std::make_shared<const selector::Pool>(pool), baseline)) {}
  telemetry::CarbonLedger ledger;
  std::shared_ptr<const telemetry::RouteLedger> route;
};

}  // namespace

std::string WindowMode::Name() const {
  if (kind == Kind::kWholeTrace) return "whole-trace";
  return absl::StrCat("trailing-", absl::FormatDuration(span), forecast ? "+forecast" : "");
}

absl::StatusOr<WindowMode> ParseWindowMode(const std::string& text) {
  WindowMode mode;
  if (text == "whole-trace") return mode;
  if (absl::StartsWith(text, "trailing:")) {
    std::string span = text.substr(9);
    mode.kind = WindowMode::Kind::kTrailing;
    if (absl::EndsWith(span, "+forecast")) {
      mode.forecast = true;
      span.resize(span.size() - 9);
    }
    if (absl::ParseDuration(span, &mode.span) && mode.span > absl::ZeroDuration()) return mode;
  }
  return absl::InvalidArgumentError(absl::StrCat("window mode '", text,
                                                 "' is not whole-trace, trailing:<duration> or "
                                                 "trailing:<duration>+forecast"));
}

PolicyResult ReplayHeuristic(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool,
                             size_t baseline, size_t default_variant, const WindowMode& window) {
  PolicyResult result;
  result.policy = absl::StrCat("heuristic (", window.Name(), ")");
  PolicyLedger charged(result.policy, pool, baseline);
  // Readings never go stale in a replay: each period's reading is the one in force.
  const selector::LinearInterpolationPolicy policy(
      pool, selector::PolicySettings{default_variant, absl::InfiniteDuration(), absl::ZeroDuration()});
  selector::IntensityWindow trailing(window.span);
  if (window.kind == WindowMode::Kind::kWholeTrace && !periods.empty()) {
    std::optional<selector::WindowBounds> whole;
    for (const auto& p : periods) whole = selector::Widened(whole, selector::WindowBounds{p.gco2_per_kwh, p.gco2_per_kwh});
    trailing.SetFixedBounds(whole);
  }
  std::optional<selector::Decision> previous;
  size_t ahead = 0;  // the first period past the forecast horizon
  for (size_t i = 0; i < periods.size(); ++i) {
    const ReplayPeriod& p = periods[i];
    const selector::IntensityReading reading{p.gco2_per_kwh, p.at};
    trailing.Add(reading);
    std::optional<selector::WindowBounds> bounds = trailing.Bounds(p.at);
    if (!bounds) bounds = selector::WindowBounds{p.gco2_per_kwh, p.gco2_per_kwh};
    if (window.forecast) {
      // A perfect forecast: the trace's own next `span`.
      ahead = std::max(ahead, i + 1);
      while (ahead < periods.size() && periods[ahead].at <= p.at + window.span) ++ahead;
      for (size_t j = i + 1; j < ahead; ++j) {
        bounds = selector::Widened(bounds, selector::WindowBounds{periods[j].gco2_per_kwh, periods[j].gco2_per_kwh});
      }
    }
    selector::Decision decision =
        policy.Decide({reading, bounds, p.at, pool.all_variants_mask(), previous ? &*previous : nullptr});
    // The heuristic's decisions are single variants; a period's requests go to the primary one.
    result.choices.push_back(decision.primary);
    if (p.requests > 0) {
      charged.route->variant(decision.primary).RecordServed(p.requests, p.requests, p.gco2_per_kwh);
    }
    previous = std::move(decision);
  }
  result.report = telemetry::Report(*charged.route);
  return result;
}

PolicyResult ReplayFixed(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool, size_t baseline,
                         size_t variant) {
  PolicyResult result;
  result.policy = pool[variant].name;
  PolicyLedger charged(result.policy, pool, baseline);
  for (const ReplayPeriod& p : periods) {
    result.choices.push_back(variant);
    if (p.requests > 0) charged.route->variant(variant).RecordServed(p.requests, p.requests, p.gco2_per_kwh);
  }
  result.report = telemetry::Report(*charged.route);
  return result;
}

std::vector<ReplayPeriod> JoinTraces(const std::vector<selector::IntensityReading>& intensity,
                                     const std::vector<selector::IntensityReading>& request_counts,
                                     absl::Duration request_offset) {
  std::vector<ReplayPeriod> periods;
  if (intensity.empty()) return periods;
  const absl::Duration step = intensity.size() > 1 ? intensity[1].at - intensity[0].at : absl::Minutes(30);
  size_t r = 0;
  for (size_t i = 0; i < intensity.size(); ++i) {
    const absl::Time from = intensity[i].at;
    absl::Time to = i + 1 < intensity.size() ? intensity[i + 1].at : from + step;
    if (to - from > step) to = from + step;  // a hole in the intensity data: the traffic there is not counted
    ReplayPeriod p{from, intensity[i].gco2_per_kwh, 0};
    while (r < request_counts.size() && request_counts[r].at + request_offset < from) ++r;
    for (size_t k = r; k < request_counts.size() && request_counts[k].at + request_offset < to; ++k) {
      p.requests += static_cast<uint64_t>(std::llround(request_counts[k].gco2_per_kwh));
    }
    periods.push_back(p);
  }
  return periods;
}

void ScaleRequests(std::vector<ReplayPeriod>* periods, double target_item_intensity) {
  double current = 0;
  for (const auto& p : *periods) current += static_cast<double>(p.requests) * p.gco2_per_kwh;
  if (current <= 0) return;
  const double factor = target_item_intensity / current;
  for (auto& p : *periods) p.requests = static_cast<uint64_t>(std::llround(static_cast<double>(p.requests) * factor));
}

namespace {

struct Row {
  std::string policy;
  double mean_error, grams, extra, rqi, efficiency;
};

std::vector<Row> Rows(const std::vector<PolicyResult>& results) {
  std::vector<Row> rows;
  for (const auto& r : results) {
    // Rounding residue (the baseline against itself) prints as 0, not -0.00.
    const auto clean = [](double v) { return std::abs(v) < 1e-9 ? 0.0 : v; };
    rows.push_back({r.policy, r.report.mean_error_percent, r.report.grams, clean(r.report.extra_grams),
                    clean(r.report.relative_quality_improvement_percent), r.report.efficiency});
  }
  return rows;
}

}  // namespace

std::string ResultsMarkdown(const std::vector<PolicyResult>& results, const selector::Pool& pool, size_t baseline) {
  std::string out = absl::StrCat("| policy | mean error % | total g CO2 | extra g vs ", pool[baseline].name,
                                 " | relative quality improvement % | efficiency (%/g) |\n|---|---|---|---|---|---|\n");
  for (const Row& row : Rows(results)) {
    absl::StrAppend(&out, absl::StrFormat("| %s | %.3f | %.0f | %+.0f | %.2f | %s |\n", row.policy, row.mean_error,
                                          row.grams, row.extra, row.rqi,
                                          std::isnan(row.efficiency) ? "—" : absl::StrFormat("%.5f", row.efficiency)));
  }
  return out;
}

std::string ResultsCsv(const std::vector<PolicyResult>& results, const selector::Pool&, size_t) {
  std::string out = "policy,mean_error_percent,total_grams,extra_grams,relative_quality_improvement_percent,efficiency\n";
  for (const Row& row : Rows(results)) {
    absl::StrAppend(&out, absl::StrFormat("%s,%.6f,%.6f,%.6f,%.6f,%.8g\n", row.policy, row.mean_error, row.grams,
                                          row.extra, row.rqi, row.efficiency));
  }
  return out;
}

}  // namespace carbon::bench
