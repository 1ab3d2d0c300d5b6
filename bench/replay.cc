#include "bench/replay.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "selector/placement.h"
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

namespace {

// Splits `requests` by `weights` (largest remainder) and charges each share, as the weighted draw
// does over many requests.
PeriodOutcome Charge(const selector::Pool& pool, const telemetry::RouteLedger& ledger,
                     const std::vector<selector::VariantWeight>& weights, uint64_t requests, double gco2_per_kwh) {
  PeriodOutcome out;
  if (requests == 0) return out;
  std::vector<uint64_t> shares(weights.size());
  std::vector<std::pair<double, size_t>> remainders;
  uint64_t given = 0;
  for (size_t k = 0; k < weights.size(); ++k) {
    const double exact = weights[k].weight * static_cast<double>(requests);
    shares[k] = static_cast<uint64_t>(std::floor(exact));
    given += shares[k];
    remainders.push_back({exact - std::floor(exact), k});
  }
  std::sort(remainders.begin(), remainders.end(), std::greater<>());
  for (size_t k = 0; given < requests; ++k, ++given) ++shares[remainders[k % remainders.size()].second];
  for (size_t k = 0; k < weights.size(); ++k) {
    if (shares[k] == 0) continue;
    const selector::Variant& v = pool[weights[k].variant];
    ledger.variant(weights[k].variant).RecordServed(shares[k], shares[k], gco2_per_kwh);
    const double n = static_cast<double>(shares[k]);
    out.items += n;
    out.error_percent_sum += n * v.error_percent;
    out.grams += n * selector::GramsPerInference(v.energy_mj, gco2_per_kwh);
  }
  return out;
}

}  // namespace

PolicyResult ReplayPolicy(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool, size_t baseline,
                          const selector::RoutingPolicy& policy, std::string label, const WindowMode& window) {
  PolicyResult result;
  result.policy = std::move(label);
  PolicyLedger charged(result.policy, pool, baseline);
  selector::IntensityWindow trailing(window.span);
  if (window.kind == WindowMode::Kind::kWholeTrace && !periods.empty()) {
    std::optional<selector::WindowBounds> whole;
    for (const auto& p : periods) whole = selector::Widened(whole, selector::WindowBounds{p.gco2_per_kwh, p.gco2_per_kwh});
    trailing.SetFixedBounds(whole);
  }
  std::optional<selector::Decision> previous;
  selector::ServedTotals served;
  std::vector<selector::IntensityReading> forecast;
  for (size_t i = 0; i < periods.size(); ++i) {
    const ReplayPeriod& p = periods[i];
    const selector::IntensityReading reading{p.gco2_per_kwh, p.at};
    trailing.Add(reading);
    std::optional<selector::WindowBounds> bounds = trailing.Bounds(p.at);
    if (!bounds) bounds = selector::WindowBounds{p.gco2_per_kwh, p.gco2_per_kwh};
    forecast.clear();
    if (window.forecast) {
      // A perfect forecast: the trace's own next `span`.
      for (size_t j = i + 1; j < periods.size() && periods[j].at <= p.at + window.span; ++j) {
        forecast.push_back({periods[j].gco2_per_kwh, periods[j].at});
        bounds = selector::Widened(bounds, selector::WindowBounds{periods[j].gco2_per_kwh, periods[j].gco2_per_kwh});
      }
    }
    selector::Decision decision = policy.Decide({reading, bounds, p.at, pool.all_variants_mask(),
                                                 previous ? &*previous : nullptr, served, forecast});
    result.choices.push_back(decision.primary);
    const PeriodOutcome outcome = Charge(pool, *charged.route, decision.weights, p.requests, p.gco2_per_kwh);
    result.weights.push_back(decision.weights);
    served.items += outcome.items;
    served.error_percent_sum += outcome.error_percent_sum;
    served.grams += outcome.grams;
    result.periods.push_back(outcome);
    previous = std::move(decision);
  }
  result.report = telemetry::Report(*charged.route);
  return result;
}

PolicyResult ReplayHeuristic(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool,
                             size_t baseline, size_t default_variant, const WindowMode& window) {
  // Readings never go stale in a replay: each period's reading is the one in force.
  const selector::LinearInterpolationPolicy policy(
      pool, selector::PolicySettings{default_variant, absl::InfiniteDuration(), absl::ZeroDuration()});
  return ReplayPolicy(periods, pool, baseline, policy, absl::StrCat("heuristic (", window.Name(), ")"), window);
}

PolicyResult ReplayFixed(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool, size_t baseline,
                         size_t variant) {
  PolicyResult result;
  result.policy = pool[variant].name;
  PolicyLedger charged(result.policy, pool, baseline);
  for (const ReplayPeriod& p : periods) {
    result.choices.push_back(variant);
    result.periods.push_back(Charge(pool, *charged.route, {{variant, 1.0}}, p.requests, p.gco2_per_kwh));
    result.weights.push_back({{variant, 1.0}});
  }
  result.report = telemetry::Report(*charged.route);
  return result;
}

absl::StatusOr<telemetry::RouteReport> Recost(const std::vector<ReplayPeriod>& periods, const PolicyResult& result,
                                              const selector::Pool& decided_with, const selector::Pool& charged_with,
                                              size_t baseline) {
  if (result.weights.size() != periods.size()) {
    return absl::InvalidArgumentError(absl::StrCat(result.policy, " has ", result.weights.size(), " decisions for ",
                                                   periods.size(), " periods"));
  }
  std::vector<size_t> to(decided_with.size());
  for (size_t v = 0; v < decided_with.size(); ++v) {
    const std::optional<size_t> i = charged_with.IndexOf(decided_with[v].name);
    if (!i) return absl::NotFoundError(absl::StrCat("'", decided_with[v].name, "' is not in the pool charged"));
    to[v] = *i;
  }
  PolicyLedger charged(result.policy, charged_with, baseline);
  for (size_t i = 0; i < periods.size(); ++i) {
    std::vector<selector::VariantWeight> weights = result.weights[i];
    for (auto& w : weights) w.variant = to[w.variant];
    Charge(charged_with, *charged.route, weights, periods[i].requests, periods[i].gco2_per_kwh);
  }
  return telemetry::Report(*charged.route);
}

absl::StatusOr<selector::Pool> ScaledPool(const selector::Pool& pool,
                                          const std::vector<std::pair<std::string, double>>& factors) {
  std::vector<selector::Variant> variants = pool.variants();
  for (const auto& [name, factor] : factors) {
    const std::optional<size_t> v = pool.IndexOf(name);
    if (!v) return absl::NotFoundError(absl::StrCat("'", name, "' is not a variant of the pool"));
    variants[*v].energy_mj *= factor;
  }
  return selector::Pool::Create(std::move(variants));
}

PolicyResult ReplayHindsight(const std::vector<ReplayPeriod>& periods, const selector::Pool& pool, size_t baseline,
                             const selector::PlanLimit& limit, const selector::Horizon& horizon, std::string label) {
  PolicyResult result;
  result.policy = std::move(label);
  PolicyLedger charged(result.policy, pool, baseline);
  const std::vector<size_t> hull = selector::LowerHull(pool, pool.all_variants_mask());
  for (size_t first = 0; first < periods.size();) {
    const absl::Time start = horizon.StartOf(periods[first].at);
    size_t last = first;
    std::vector<selector::PlanSlot> slots;
    for (; last < periods.size() && horizon.StartOf(periods[last].at) == start; ++last) {
      slots.push_back({static_cast<double>(periods[last].requests), periods[last].gco2_per_kwh});
    }
    const selector::HorizonPlan plan = selector::PlanHorizon(pool, hull, slots, {}, limit);
    for (size_t i = first; i < last; ++i) {
      const double level = plan.level[i - first];
      const size_t low = static_cast<size_t>(level);
      const double up = level - static_cast<double>(low);
      std::vector<selector::VariantWeight> weights = {{hull[low], 1 - up}};
      if (up > 0 && low + 1 < hull.size()) weights.push_back({hull[low + 1], up});
      result.choices.push_back(up > 0.5 && low + 1 < hull.size() ? hull[low + 1] : hull[low]);
      result.periods.push_back(Charge(pool, *charged.route, weights, periods[i].requests, periods[i].gco2_per_kwh));
      result.weights.push_back(std::move(weights));
    }
    first = last;
  }
  result.report = telemetry::Report(*charged.route);
  return result;
}

std::vector<HorizonOutcome> ByHorizon(const std::vector<ReplayPeriod>& periods, const PolicyResult& result,
                                      const selector::Horizon& horizon) {
  std::vector<HorizonOutcome> out;
  for (size_t i = 0; i < periods.size() && i < result.periods.size(); ++i) {
    const absl::Time start = horizon.StartOf(periods[i].at);
    if (out.empty() || out.back().start != start) out.push_back({start});
    out.back().items += result.periods[i].items;
    out.back().error_percent_sum += result.periods[i].error_percent_sum;
    out.back().grams += result.periods[i].grams;
  }
  return out;
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
    // RFC 4180: a name with a comma is quoted, quotes doubled.
    const std::string name = absl::StrContains(row.policy, ',') || absl::StrContains(row.policy, '"')
                                 ? absl::StrCat("\"", absl::StrReplaceAll(row.policy, {{"\"", "\"\""}}), "\"")
                                 : row.policy;
    absl::StrAppend(&out, absl::StrFormat("%s,%.6f,%.6f,%.6f,%.6f,%.8g\n", name, row.mean_error, row.grams,
                                          row.extra, row.rqi, row.efficiency));
  }
  return out;
}

std::vector<selector::IntensityReading> Resample(const std::vector<selector::IntensityReading>& readings, absl::Time from,
                                                 absl::Time to, absl::Duration step) {
  std::vector<selector::IntensityReading> out;
  if (readings.empty()) return out;
  size_t next = 0;
  for (absl::Time t = from; t < to; t += step) {
    while (next < readings.size() && readings[next].at <= t) ++next;
    out.push_back({readings[next == 0 ? 0 : next - 1].gco2_per_kwh, t});
  }
  return out;
}

std::string PlaceModeName(PlaceMode mode) {
  switch (mode) {
    case PlaceMode::kWhichOnly: return "which-only";
    case PlaceMode::kWhereOnly: return "where-only";
    case PlaceMode::kWhereAndWhich: return "where+which";
  }
  return "unknown";
}

PlacesResult ReplayPlaces(const std::vector<ReplayPlace>& places, const selector::Pool& pool, size_t baseline,
                          size_t default_variant, PlaceMode mode, std::optional<absl::Duration> latency_budget,
                          absl::Duration window) {
  PlacesResult out;
  out.result.policy = PlaceModeName(mode);
  out.requests.assign(places.size(), 0);
  PolicyLedger charged(out.result.policy, pool, baseline);
  const selector::LinearInterpolationPolicy policy(
      pool, selector::PolicySettings{default_variant, absl::InfiniteDuration(), absl::ZeroDuration()});
  std::vector<selector::IntensityWindow> windows(places.size(), selector::IntensityWindow(window));
  std::optional<selector::Decision> previous;
  selector::ServedTotals served;
  const size_t n = places.empty() ? 0 : places.front().periods.size();
  for (size_t i = 0; i < n; ++i) {
    std::vector<selector::PlaceState> states;
    for (size_t p = 0; p < places.size(); ++p) {
      const ReplayPeriod& period = places[p].periods[i];
      windows[p].Add({period.gco2_per_kwh, period.at});
      states.push_back({true, true, places[p].rtt, period.gco2_per_kwh});
    }
    const size_t where = mode == PlaceMode::kWhichOnly ? 0 : selector::RankPlaces(states, latency_budget).front().place;
    const ReplayPeriod& p = places[where].periods[i];
    std::vector<selector::VariantWeight> weights = {{baseline, 1.0}};
    size_t primary = baseline;
    if (mode != PlaceMode::kWhereOnly) {
      std::optional<selector::WindowBounds> bounds = windows[where].Bounds(p.at);
      if (!bounds) bounds = selector::WindowBounds{p.gco2_per_kwh, p.gco2_per_kwh};
      selector::Decision decision = policy.Decide({selector::IntensityReading{p.gco2_per_kwh, p.at}, bounds, p.at,
                                                   pool.all_variants_mask(), previous ? &*previous : nullptr, served, {}});
      weights = decision.weights;
      primary = decision.primary;
      previous = std::move(decision);
    }
    const PeriodOutcome outcome = Charge(pool, *charged.route, weights, p.requests, p.gco2_per_kwh);
    served.items += outcome.items;
    served.error_percent_sum += outcome.error_percent_sum;
    served.grams += outcome.grams;
    out.requests[where] += static_cast<double>(p.requests);
    out.home_grams += p.gco2_per_kwh > 0 ? outcome.grams * places[0].periods[i].gco2_per_kwh / p.gco2_per_kwh : 0;
    out.result.choices.push_back(primary);
    out.result.weights.push_back(weights);
    out.result.periods.push_back(outcome);
  }
  out.result.report = telemetry::Report(*charged.route);
  return out;
}

}  // namespace carbon::bench
