#include "sidecar/admin_endpoints.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "selector/routing_policy.h"
#include "telemetry/exposition.h"
#include "telemetry/latency_histogram.h"

#ifndef CARBON_VERSION
#define CARBON_VERSION "unknown"
#endif
#ifndef CARBON_REVISION
#define CARBON_REVISION "unknown"
#endif

namespace carbon::sidecar {
namespace {

using telemetry::Label;
using telemetry::MetricType;

// Status code names as gRPC spells them, for the `code` label (Abseil's codes are gRPC's).
std::string CodeName(size_t code) { return absl::StatusCodeToString(static_cast<absl::StatusCode>(code)); }

double UnixSeconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }

}  // namespace

namespace {

// Renders /metrics from one snapshot, one group of families per method. One instance per scrape.
class MetricsRenderer {
 public:
  MetricsRenderer(const MetricsSources& sources, bool open_metrics)
      : sources_(sources), snapshot_(sources.snapshot), w_(open_metrics) {
    // One report per route, computed once for the families that share it.
    for (const RouteView& route : snapshot_.routes()) reports_.push_back(route.Report());
  }

  std::string Render() {
    Ledger();
    Pools();
    Horizons();
    Energy();
    Accounting();
    Latency();
    Intensity(snapshot_.source());
    Clusters();
    Proxy();
    H2Plane();
    ReloadsAndBuild();
    return w_.Finish();
  }

 private:
  // One sample per (route, model), valued by value_of(report, route, variant index).
  template <typename ValueOf>
  void PerVariant(std::string_view name, MetricType type, std::string_view help, const ValueOf& value_of) {
    w_.Family(name, type, help);
    for (size_t r = 0; r < reports_.size(); ++r) {
      const RouteView& route = snapshot_.routes()[r];
      for (size_t v = 0; v < route.pool().size(); ++v) {
        w_.Sample({{"route", route.route->config.name}, {"model", route.pool()[v].name}},
                  value_of(reports_[r], route, v));
      }
    }
  }

  // One gauge sample per route, labelled with its baseline model.
  template <typename ValueOf>
  void PerRouteVsBaseline(std::string_view name, std::string_view help, const ValueOf& value_of) {
    w_.Family(name, MetricType::kGauge, help);
    for (size_t r = 0; r < reports_.size(); ++r) {
      const RouteView& route = snapshot_.routes()[r];
      w_.Sample({{"route", route.route->config.name}, {"baseline", route.pool()[route.route->config.baseline].name}},
                value_of(reports_[r]));
    }
  }

  // What each route served and emitted, and how it compares with its baseline.
  void Ledger() {
    w_.Family("carbon_sidecar_requests_total", MetricType::kCounter,
              "Requests routed to a model, by final gRPC status code. Only OK requests are charged in "
              "the ledger.");
    for (size_t r = 0; r < reports_.size(); ++r) {
      const RouteView& route = snapshot_.routes()[r];
      for (size_t v = 0; v < route.pool().size(); ++v) {
        const telemetry::VariantTotals& t = reports_[r].variants[v];
        for (size_t code = 0; code < telemetry::kGrpcCodes; ++code) {
          const uint64_t n = code == 0 ? t.requests : t.failed[code];
          // OK always, so the series exists from the start; other codes once they happen.
          if (code != 0 && n == 0) continue;
          w_.Sample({{"route", route.route->config.name}, {"model", route.pool()[v].name}, {"code", CodeName(code)}},
                    static_cast<double>(n));
        }
      }
    }
    PerVariant("carbon_sidecar_inferences_total", MetricType::kCounter,
               "Inferences served (requests times batch size when the route has a batch dimension).",
               [](const telemetry::RouteReport& rep, const RouteView&, size_t v) {
                 return static_cast<double>(rep.variants[v].items);
               });
    // By where each inference's energy came from: the table always, a meter's estimate on routes
    // that have a meter.
    const auto by_source = [&](std::string_view name, std::string_view help,
                               std::vector<std::array<double, 2>> telemetry::RouteReport::*field) {
      w_.Family(name, MetricType::kCounter, help);
      for (size_t r = 0; r < reports_.size(); ++r) {
        const RouteView& route = snapshot_.routes()[r];
        for (size_t v = 0; v < route.pool().size(); ++v) {
          for (size_t source = 0; source < (route.energy ? 2u : 1u); ++source) {
            w_.Sample({{"route", route.route->config.name},
                       {"model", route.pool()[v].name},
                       {"energy_source", source == 0 ? "table" : "measured"}},
                      (reports_[r].*field)[v][source]);
          }
        }
      }
    };
    by_source("carbon_sidecar_energy_joules_total",
              "Energy of the inferences served (the devices', before PUE), by where the energy per "
              "inference came from: the pool's table, or the route's meter once calibrated.",
              &telemetry::RouteReport::variant_joules);
    by_source("carbon_sidecar_emissions_grams_total",
              "Operational CO2 of the inferences served, E x PUE x I at the grid intensity in force when "
              "each was served, by where E came from.",
              &telemetry::RouteReport::variant_grams);
    PerVariant("carbon_sidecar_counterfactual_emissions_grams_total", MetricType::kCounter,
               "CO2 the route would have emitted had every inference gone to this model, at the same "
               "intensities.",
               [](const telemetry::RouteReport& rep, const RouteView&, size_t v) {
                 return rep.counterfactual_grams[v];
               });

    w_.Family("carbon_sidecar_error_percent_sum_total", MetricType::kCounter,
              "Sum over inferences served of the serving model's top-1 error in percent; divided by "
              "carbon_sidecar_inferences_total it is the mean expected error.");
    for (size_t r = 0; r < reports_.size(); ++r) {
      w_.Sample({{"route", snapshot_.routes()[r].route->config.name}}, reports_[r].error_percent_sum);
    }

    PerRouteVsBaseline("carbon_sidecar_carbon_emission_efficiency",
                       "Relative quality improvement (percent) over the baseline model per extra gram "
                       "of CO2, since start (Jung's carbon-emission efficiency). NaN while the route "
                       "has emitted no more than the baseline would have: the ratio measures a gain "
                       "bought with extra carbon.",
                       [](const telemetry::RouteReport& rep) { return rep.efficiency; });
    PerRouteVsBaseline("carbon_sidecar_beats_baseline",
                       "1 when the route, since start, is both more accurate than the baseline model "
                       "and emitted fewer grams than the baseline would have; else 0.",
                       [](const telemetry::RouteReport& rep) { return rep.beats_baseline ? 1.0 : 0.0; });
    PerRouteVsBaseline("carbon_sidecar_relative_quality_improvement_percent",
                       "Reduction of the mean top-1 error relative to the baseline model, in percent, "
                       "since start.",
                       [](const telemetry::RouteReport& rep) { return rep.relative_quality_improvement_percent; });
    PerRouteVsBaseline("carbon_sidecar_extra_emissions_grams",
                       "CO2 emitted beyond what the baseline model would have emitted, since start "
                       "(negative: saved).",
                       [](const telemetry::RouteReport& rep) { return rep.extra_grams; });
  }

  // The pools as configured and what each route's policy does with them now.
  void Pools() {
    PerVariant("carbon_sidecar_model_energy_joules", MetricType::kGauge,
               "Energy per inference of each model of the pool, as configured.",
               [](const telemetry::RouteReport&, const RouteView& route, size_t v) {
                 return route.pool()[v].energy_mj * 1e-3;
               });
    PerVariant("carbon_sidecar_model_error_percent", MetricType::kGauge,
               "Top-1 error of each model of the pool, as configured, in percent.",
               [](const telemetry::RouteReport&, const RouteView& route, size_t v) {
                 return route.pool()[v].error_percent;
               });
    PerVariant("carbon_sidecar_selected_model_info", MetricType::kGauge,
               "1 for the model each route sends most of its requests to now (the decision's primary "
               "model), 0 for the others.",
               [](const telemetry::RouteReport&, const RouteView& route, size_t v) {
                 return route.decision.primary == v ? 1.0 : 0.0;
               });
    PerVariant("carbon_sidecar_model_weight_ratio", MetricType::kGauge,
               "The share of each route's requests its policy sends to each model now (0 to 1; the "
               "shares of a route sum to 1).",
               [](const telemetry::RouteReport&, const RouteView& route, size_t v) {
                 return route.decision.WeightOf(v);
               });
    // Routes with an slo only, one family at a time.
    const auto guarded = [&](std::string_view name, std::string_view help, const auto& value_of) {
      w_.Family(name, MetricType::kGauge, help);
      for (const RouteView& route : snapshot_.routes()) {
        if (route.guard_caps.empty()) continue;
        for (size_t v = 0; v < route.pool().size(); ++v) {
          if (const std::optional<double> value = value_of(route, v)) {
            w_.Sample({{"route", route.route->config.name}, {"model", route.pool()[v].name}}, *value);
          }
        }
      }
    };
    guarded("carbon_sidecar_policy_weight_ratio",
            "The share the route's policy gives each model, before the latency guard (routes with an slo "
            "only; carbon_sidecar_model_weight_ratio is what is served).",
            [](const RouteView& route, size_t v) -> std::optional<double> { return route.PolicyWeightOf(v); });
    guarded("carbon_sidecar_guard_cap_ratio",
            "The latency guard's cap on each model's share of the route (1: none), halved while the model "
            "is over the route's SLO and grown back as it recovers.",
            [](const RouteView& route, size_t v) -> std::optional<double> { return route.guard_caps[v]; });
    guarded("carbon_sidecar_request_duration_window_p99_seconds",
            "The 99th percentile of each model's call durations over the route's SLO window, as the guard "
            "last measured it (a histogram bucket's upper bound; +Inf past 10 s); absent with too few calls.",
            [](const RouteView& route, size_t v) -> std::optional<double> {
              if (!route.window_p99[v]) return std::nullopt;
              return absl::ToDoubleSeconds(*route.window_p99[v]);
            });
    PerVariant("carbon_sidecar_in_flight_requests", MetricType::kGauge,
               "Unary inference calls sent to each model and not yet answered, from this sidecar.",
               [](const telemetry::RouteReport&, const RouteView& route, size_t v) {
                 return static_cast<double>(route.route->ledger->variant(v).in_flight());
               });
    w_.Family("carbon_sidecar_max_in_flight_requests", MetricType::kGauge,
              "The in-flight limit of a model of a route: configured (routes[].max_in_flight) or learned "
              "from its latency on a route with an slo; models without one have no sample.");
    for (const RouteView& route : snapshot_.routes()) {
      for (size_t v = 0; v < route.max_in_flight.size(); ++v) {
        const int64_t limit = route.max_in_flight[v];
        if (limit <= 0 || limit == RouteView::kNotLearnedYet) continue;
        const bool learned = !route.learned_limit.empty() && route.learned_limit[v];
        w_.Sample({{"route", route.route->config.name},
                   {"model", route.pool()[v].name},
                   {"source", learned ? "learned" : "configured"}},
                  static_cast<double>(limit));
      }
    }
    w_.Family("carbon_sidecar_spilled_requests_total", MetricType::kCounter,
              "Calls served by another model than the route's policy gave them, by reason: in_flight_limit "
              "(the model drawn was at its in-flight limit; moved to a lower-energy one), latency_slo (the "
              "latency guard capped the model's share), ramp (a change of decision was being ramped in). "
              "Pairs that can occur on the route only.");
    for (const RouteView& route : snapshot_.routes()) {
      const std::string& name = route.route->config.name;
      const telemetry::RouteLedger& ledger = *route.route->ledger;
      const auto sample = [&](size_t from, size_t to, telemetry::SpillReason reason) {
        w_.Sample({{"route", name},
                   {"from", route.pool()[from].name},
                   {"to", route.pool()[to].name},
                   {"reason", telemetry::SpillReasonName(reason)}},
                  static_cast<double>(ledger.spilled(from, to, reason).load(std::memory_order_relaxed)));
      };
      for (size_t from = 0; from < route.pool().size(); ++from) {
        for (size_t to = 0; to < route.pool().size(); ++to) {
          if (to < from && route.InFlightLimit(from) > 0) sample(from, to, telemetry::SpillReason::kInFlightLimit);
          if (to < from && route.route->config.slo) sample(from, to, telemetry::SpillReason::kLatencySlo);
          if (to != from && route.route->config.ramp > absl::ZeroDuration()) sample(from, to, telemetry::SpillReason::kRamp);
        }
      }
    }
    PerVariant("carbon_sidecar_baseline_model_info", MetricType::kGauge,
               "1 for each route's baseline model (the one efficiency is measured against), 0 for the "
               "others; join on it to pick the baseline's series.",
               [](const telemetry::RouteReport&, const RouteView& route, size_t v) {
                 return route.route->config.baseline == v ? 1.0 : 0.0;
               });
    PerVariant("carbon_sidecar_model_ready", MetricType::kGauge,
               "1 when the upstream last reported the model ready (or was not asked), else 0.",
               [](const telemetry::RouteReport&, const RouteView& route, size_t v) {
                 return (route.ready >> v & 1) != 0 ? 1.0 : 0.0;
               });
  }

  // What the aimed policies (accuracy-target, carbon-budget) report of the horizon in progress,
  // from their decisions' explanation terms: only routes whose policy gives them have samples.
  void Horizons() {
    const auto per_term = [&](std::string_view family, std::string_view help,
                              std::initializer_list<std::pair<std::string_view, std::string_view>> terms) {
      w_.Family(family, MetricType::kGauge, help);
      for (const RouteView& route : snapshot_.routes()) {
        for (const auto& [term, value] : terms) {
          if (auto v = route.decision.Explained(term)) {
            if (value.empty()) {
              w_.Sample({{"route", route.route->config.name}}, *v);
            } else {
              w_.Sample({{"route", route.route->config.name}, {"value", value}}, *v);
            }
          }
        }
      }
    };
    per_term("carbon_sidecar_horizon_error_percent",
             "Traffic-weighted mean top-1 error over the policy's horizon in progress: the target "
             "(accuracy-target), achieved so far, and projected at the horizon's end.",
             {{"target_error_percent", "target"},
              {"achieved_error_percent", "achieved"},
              {"projected_error_percent", "projected"}});
    per_term("carbon_sidecar_horizon_emissions_grams",
             "CO2 over the policy's horizon in progress: the budget (carbon-budget), emitted so far, and "
             "projected at the horizon's end.",
             {{"budget_grams", "budget"}, {"achieved_grams", "achieved"}, {"projected_grams", "projected"}});
    per_term("carbon_sidecar_horizon_inferences",
             "Inferences counted in the policy's horizon in progress.", {{"horizon_inferences", ""}});
    per_term("carbon_sidecar_horizon_remaining_seconds", "Time left in the policy's horizon in progress.",
             {{"horizon_left_seconds", ""}});
    per_term("carbon_sidecar_policy_lambda_grams_per_error_percent",
             "The aimed policy's marginal price: each half-hour takes the hull variant that minimises "
             "grams + lambda x top-1 error per inference (0: the cheapest meets the target).",
             {{"lambda_grams_per_error_percent", ""}});
  }

  // The Software Carbon Intensity: operational grams plus the hardware's embodied grams amortised
  // over the time in use, per inference. The embodied grams are shared between the routes' models
  // by their share of the devices' energy.
  void Accounting() {
    const AccountingStatus& a = snapshot_.accounting();
    const double embodied =
        telemetry::EmbodiedGrams(a.config.embodied_kg * 1000, absl::Now() - a.started, a.config.lifespan, a.config.share);
    double joules = 0;
    for (const auto& r : reports_) joules += r.joules;
    w_.Family("carbon_sidecar_pue_ratio", MetricType::kGauge,
              "The facility's power usage effectiveness applied to the devices' energy (accounting.pue).");
    w_.Sample({}, a.config.pue);
    w_.Family("carbon_sidecar_embodied_emissions_grams", MetricType::kGauge,
              "The hardware's embodied emissions amortised over the time this sidecar has run: "
              "accounting.embodied_kg x time in use / lifespan x share (SCI's M).");
    w_.Sample({}, embodied);
    const auto allotted = [&](const telemetry::RouteReport& r, size_t v) {
      return joules > 0 ? embodied * (r.variant_joules[v][0] + r.variant_joules[v][1]) / joules : 0.0;
    };
    w_.Family("carbon_sidecar_sci_grams_per_inference", MetricType::kGauge,
              "Software Carbon Intensity per inference of each model since start, (E x PUE x I + M) / R, "
              "with M shared by energy; models that served nothing have no sample.");
    for (size_t r = 0; r < reports_.size(); ++r) {
      const RouteView& route = snapshot_.routes()[r];
      for (size_t v = 0; v < route.pool().size(); ++v) {
        const telemetry::RouteReport& rep = reports_[r];
        if (rep.variants[v].items == 0) continue;
        w_.Sample({{"route", route.route->config.name}, {"model", route.pool()[v].name}},
                  telemetry::SciPerInference(rep.variant_grams[v][0] + rep.variant_grams[v][1], allotted(rep, v),
                                             rep.variants[v].items));
      }
    }
    w_.Family("carbon_sidecar_route_sci_grams_per_inference", MetricType::kGauge,
              "Software Carbon Intensity per inference of each route since start, over all its models.");
    for (size_t r = 0; r < reports_.size(); ++r) {
      const telemetry::RouteReport& rep = reports_[r];
      if (rep.items == 0) continue;
      double m = 0;
      for (size_t v = 0; v < rep.variants.size(); ++v) m += allotted(rep, v);
      w_.Sample({{"route", snapshot_.routes()[r].route->config.name}}, telemetry::SciPerInference(rep.grams, m, rep.items));
    }
  }

  // Routes whose energy names a meter: what the calibrator has learned, and how well.
  void Energy() {
    std::vector<std::pair<const RouteView*, std::shared_ptr<const telemetry::CalibrationReport>>> calibrated;
    for (const RouteView& route : snapshot_.routes()) {
      if (route.energy) calibrated.emplace_back(&route, route.energy->Report());
    }
    const auto per_variant = [&](std::string_view name, std::string_view help, const auto& value_of) {
      w_.Family(name, MetricType::kGauge, help);
      for (const auto& [route, report] : calibrated) {
        for (size_t v = 0; v < route->pool().size(); ++v) {
          const telemetry::VariantEnergy& e = report->variants[v];
          if (const std::optional<double> value = value_of(e)) {
            w_.Sample({{"route", route->route->config.name},
                       {"model", route->pool()[v].name},
                       {"energy_source", e.measured ? "measured" : "table"}},
                      *value);
          }
        }
      }
    };
    per_variant("carbon_sidecar_calibrated_energy_joules",
                "Energy per inference of each model as the route's calibrator has it: the meter's estimate "
                "(energy_source=\"measured\") when it is certain enough, else the pool's table "
                "(energy_source=\"table\"): what the route's policy decides on and its ledger charges.",
                [](const telemetry::VariantEnergy& e) -> std::optional<double> {
                  return e.measured ? *e.measured_joules : e.table_joules;
                });
    per_variant("carbon_sidecar_measured_energy_joules",
                "The calibrator's estimate of each model's energy per inference from the meter, whether or "
                "not certain enough to use; absent before the model has run in a fitted interval.",
                [](const telemetry::VariantEnergy& e) { return e.measured_joules; });
    per_variant("carbon_sidecar_measured_energy_stderr_joules",
                "The standard error of that estimate (absent when it cannot be told).",
                [](const telemetry::VariantEnergy& e) -> std::optional<double> {
                  if (!e.measured_joules || !std::isfinite(e.stderr_joules)) return std::nullopt;
                  return e.stderr_joules;
                });
    const auto per_route = [&](std::string_view name, MetricType type, std::string_view help, const auto& value_of) {
      w_.Family(name, type, help);
      for (const auto& [route, report] : calibrated) {
        if (const std::optional<double> value = value_of(*report)) {
          w_.Sample({{"route", route->route->config.name}, {"source", report->source}}, *value);
        }
      }
    };
    per_route("carbon_sidecar_energy_idle_power_watts", MetricType::kGauge,
              "The meter's devices' power with no inference running, as the calibrator's fit has it.",
              [](const telemetry::CalibrationReport& r) { return r.idle_watts; });
    per_route("carbon_sidecar_energy_fit_residual_joules", MetricType::kGauge,
              "Root mean square of the metered joules per interval the fit does not explain.",
              [](const telemetry::CalibrationReport& r) -> std::optional<double> {
                if (!r.idle_watts) return std::nullopt;
                return r.residual_rms_joules;
              });
    per_route("carbon_sidecar_energy_fit_intervals", MetricType::kGauge,
              "Intervals between meter readings that the calibrator's fit uses now.",
              [](const telemetry::CalibrationReport& r) { return std::optional<double>(static_cast<double>(r.intervals)); });
    w_.Family("carbon_sidecar_energy_meter_reads_total", MetricType::kCounter,
              "Reads of the route's energy meter, by result: ok, failed (no answer, or not the format), "
              "reset (a counter went down or the devices changed: the pair was not used), quiet (an "
              "interval with too few inferences to use).");
    for (const auto& [route, report] : calibrated) {
      const uint64_t ok = report->reads - report->read_failures - report->resets - report->quiet_intervals;
      for (const auto& [result, n] : {std::pair<const char*, uint64_t>{"ok", ok},
                                      {"failed", report->read_failures},
                                      {"reset", report->resets},
                                      {"quiet", report->quiet_intervals}}) {
        w_.Sample({{"route", route->route->config.name}, {"source", report->source}, {"result", result}},
                  static_cast<double>(n));
      }
    }
  }

  void Latency() {
    w_.Family("carbon_sidecar_request_duration_seconds", MetricType::kHistogram,
              "Duration of routed unary calls through the sidecar, upstream included.");
    for (size_t r = 0; r < reports_.size(); ++r) {
      const RouteView& route = snapshot_.routes()[r];
      for (size_t v = 0; v < route.pool().size(); ++v) {
        const telemetry::LatencyHistogram::Counts c = route.route->ledger->variant(v).latency().Read();
        const Label labels[] = {{"route", route.route->config.name}, {"model", route.pool()[v].name}};
        w_.Histogram(labels, telemetry::LatencyHistogram::kBounds, c.cumulative, c.count, c.sum);
      }
    }
  }

  // The intensity source: the reading, the window, the polls and the state.
  void Intensity(const SourceStatus& source) {
    const SourceCounters& counters = source.counters;
    w_.Family("carbon_sidecar_grid_intensity_gco2_per_kwh", MetricType::kGauge,
              "The latest grid carbon intensity, in grams of CO2 per kilowatt-hour (WattTime's lbs CO2/MWh "
              "converted with 0.45359237), labelled with the provider that gave it.");
    if (source.latest) {
      w_.Sample({{"source", source.source}, {"region", source.region}}, source.latest->gco2_per_kwh);
    }
    w_.Family("carbon_sidecar_grid_intensity_timestamp_seconds", MetricType::kGauge,
              "When the latest intensity reading applies from, in Unix seconds on the provider's clock "
              "(simulated time for a replayed trace).");
    if (source.latest) w_.Sample({{"source", source.source}, {"region", source.region}}, UnixSeconds(source.latest->at));
    w_.Family("carbon_sidecar_grid_intensity_age_seconds", MetricType::kGauge,
              "Age of the latest intensity reading on the provider's clock; the last good value is kept "
              "while the provider fails, and routes fall back to their default once it is older than "
              "intensity.stale_after.");
    if (source.latest) {
      w_.Sample({{"source", source.source}, {"region", source.region}},
                absl::ToDoubleSeconds(source.now - source.latest->at));
    }
    w_.Family("carbon_sidecar_intensity_window_gco2_per_kwh", MetricType::kGauge,
              "The lowest and highest intensity of the window the heuristic interpolates between.");
    if (source.window) {
      w_.Sample({{"bound", "low"}}, source.window->low);
      w_.Sample({{"bound", "high"}}, source.window->high);
    }
    w_.Family("carbon_sidecar_intensity_fetches_total", MetricType::kCounter,
              "Polls of the intensity provider, by result.");
    w_.Sample({{"provider", source.provider}, {"result", "success"}}, static_cast<double>(counters.fetch_successes));
    w_.Sample({{"provider", source.provider}, {"result", "failure"}}, static_cast<double>(counters.fetch_failures));
    w_.Family("carbon_sidecar_intensity_last_success_timestamp_seconds", MetricType::kGauge,
              "Wall-clock Unix time of the last successful poll of the intensity provider.");
    if (counters.last_success) w_.Sample({{"provider", source.provider}}, UnixSeconds(*counters.last_success));
    w_.Family("carbon_sidecar_intensity_state", MetricType::kGauge,
              "1 for the intensity source's current state: ok, failing (polls fail, the last reading is "
              "still fresh) or stale (no fresh reading: routes use their default model).");
    for (SourceState st : {SourceState::kOk, SourceState::kFailing, SourceState::kStale}) {
      w_.Sample({{"provider", source.provider}, {"state", SourceStateName(st)}}, counters.state == st ? 1.0 : 0.0);
    }
    w_.Family("carbon_sidecar_intensity_state_changes_total", MetricType::kCounter,
              "Changes of the intensity source's state, by the state entered.");
    for (SourceState st : {SourceState::kOk, SourceState::kFailing, SourceState::kStale}) {
      w_.Sample({{"provider", source.provider}, {"state", SourceStateName(st)}},
                static_cast<double>(counters.entered[static_cast<size_t>(st)]));
    }
  }

  // Each cluster's grid, reachability and latency cost, and what each route's calls came to there.
  void Clusters() {
    const std::vector<ClusterStatus>& clusters = snapshot_.clusters();
    const auto name = [&](size_t c) -> const std::string& { return clusters[c].upstream->name; };
    w_.Family("carbon_sidecar_cluster_grid_intensity_gco2_per_kwh", MetricType::kGauge,
              "The latest carbon intensity of each cluster's grid, from its own intensity source.");
    for (const ClusterStatus& c : clusters) {
      if (c.source.latest) {
        w_.Sample({{"cluster", c.upstream->name}, {"source", c.source.source}, {"region", c.source.region}},
                  c.source.latest->gco2_per_kwh);
      }
    }
    w_.Family("carbon_sidecar_cluster_ranked_intensity_gco2_per_kwh", MetricType::kGauge,
              "The intensity each cluster is ranked at: its latest while fresh, its stale_intensity while "
              "stale (assumed=\"true\"); absent while stale with none assumed.");
    for (const ClusterStatus& c : clusters) {
      if (c.ranking_intensity) {
        w_.Sample({{"cluster", c.upstream->name}, {"assumed", c.intensity_assumed ? "true" : "false"}},
                  *c.ranking_intensity);
      }
    }
    w_.Family("carbon_sidecar_cluster_intensity_state", MetricType::kGauge,
              "1 for each cluster's intensity source's current state: ok, failing or stale.");
    for (const ClusterStatus& c : clusters) {
      for (SourceState st : {SourceState::kOk, SourceState::kFailing, SourceState::kStale}) {
        w_.Sample({{"cluster", c.upstream->name}, {"state", SourceStateName(st)}},
                  c.source.counters.state == st ? 1.0 : 0.0);
      }
    }
    w_.Family("carbon_sidecar_cluster_up", MetricType::kGauge,
              "1 when the cluster answered the last readiness questions, 0 when it did not; absent before "
              "it was first asked.");
    for (const ClusterStatus& c : clusters) {
      if (c.source.upstream_reachable) w_.Sample({{"cluster", c.upstream->name}}, *c.source.upstream_reachable ? 1 : 0);
    }
    w_.Family("carbon_sidecar_cluster_rtt_seconds", MetricType::kGauge,
              "Each cluster's latency cost: configured (rtt), or measured as the smoothed round trip of "
              "the readiness questions.");
    for (const ClusterStatus& c : clusters) {
      if (c.rtt) {
        w_.Sample({{"cluster", c.upstream->name}, {"source", c.rtt_configured ? "configured" : "measured"}},
                  absl::ToDoubleSeconds(*c.rtt));
      }
    }
    w_.Family("carbon_sidecar_route_cluster_serving", MetricType::kGauge,
              "1 for the cluster each route's calls go to now, 0 for its others; `rank` says why each "
              "stands where it does.");
    for (const RouteView& route : snapshot_.routes()) {
      for (size_t k = 0; k < route.clusters.size(); ++k) {
        w_.Sample({{"route", route.route->config.name},
                   {"cluster", name(route.clusters[k].index)},
                   {"rank", ClusterRankName(route.clusters[k].rank)}},
                  k == 0 ? 1 : 0);
      }
    }
    const auto per_cluster = [&](std::string_view family, std::string_view help, auto value_of) {
      w_.Family(family, MetricType::kCounter, help);
      for (const RouteView& route : snapshot_.routes()) {
        for (const RouteCluster& rc : route.clusters) {
          w_.Sample({{"route", route.route->config.name}, {"cluster", name(rc.index)}},
                    value_of(rc.ledger->Totals(), route));
        }
      }
    };
    per_cluster("carbon_sidecar_cluster_requests_total", "Inference requests each route served in each cluster.",
                [](const telemetry::ClusterTotals& t, const RouteView&) { return static_cast<double>(t.requests); });
    per_cluster("carbon_sidecar_cluster_inferences_total", "Inferences (batch items) each route served in each cluster.",
                [](const telemetry::ClusterTotals& t, const RouteView&) { return static_cast<double>(t.items); });
    per_cluster("carbon_sidecar_cluster_emissions_grams_total",
                "Operational emissions (E × PUE × the cluster's intensity) of what each route served in each cluster.",
                [](const telemetry::ClusterTotals& t, const RouteView& r) { return t.grams * r.pue; });
    per_cluster("carbon_sidecar_cluster_home_emissions_grams_total",
                "The counterfactual: the same inferences at the route's home cluster's intensity at the time. "
                "Summed over clusters and less the emissions, what choosing the place saved.",
                [](const telemetry::ClusterTotals& t, const RouteView& r) { return t.home_grams * r.pue; });
    per_cluster("carbon_sidecar_cluster_spilled_requests_total",
                "Unary inference calls that found the route's first cluster at its max_in_flight and were sent "
                "to the next cluster that could serve them.",
                [](const telemetry::ClusterTotals& t, const RouteView&) { return static_cast<double>(t.spilled_out); });
    w_.Family("carbon_sidecar_cluster_in_flight_requests", MetricType::kGauge,
              "Unary inference calls in flight to each cluster with a max_in_flight, all routes together.");
    for (const ClusterStatus& c : clusters) {
      if (c.max_in_flight > 0) {
        w_.Sample({{"cluster", c.upstream->name}}, static_cast<double>(c.in_flight->load(std::memory_order_relaxed)));
      }
    }
    w_.Family("carbon_sidecar_cluster_max_in_flight_requests", MetricType::kGauge,
              "Each cluster's configured max_in_flight (clusters with one only).");
    for (const ClusterStatus& c : clusters) {
      if (c.max_in_flight > 0) w_.Sample({{"cluster", c.upstream->name}}, static_cast<double>(c.max_in_flight));
    }
    w_.Family("carbon_sidecar_failovers_total", MetricType::kCounter,
              "Unary inference calls a cluster failed (UNAVAILABLE before answering) and the route's next "
              "cluster was sent, by route and the clusters from and to.");
    for (const RouteView& route : snapshot_.routes()) {
      for (const RouteView::FailoverCount& f : route.failover_counts) {
        w_.Sample({{"route", route.route->config.name}, {"from", name(f.from)}, {"to", name(f.to)}},
                  static_cast<double>(f.count->load(std::memory_order_relaxed)));
      }
    }
  }

  // Calls the ledger does not charge: pass-through calls and refused requests.
  void Proxy() {
    w_.Family("carbon_sidecar_passthrough_requests_total", MetricType::kCounter,
              "Calls other than routed inferences (other methods, model names that are no route, "
              "model metadata and readiness queries), by final gRPC status code.");
    for (size_t code = 0; code < telemetry::kGrpcCodes; ++code) {
      const uint64_t n = sources_.proxy.passthrough[code].load(std::memory_order_relaxed);
      if (code != 0 && n == 0) continue;
      w_.Sample({{"code", CodeName(code)}}, static_cast<double>(n));
    }
    w_.Family("carbon_sidecar_invalid_requests_total", MetricType::kCounter,
              "Requests refused with INVALID_ARGUMENT before reaching the upstream, by reason.");
    const ProxyCounters& proxy = sources_.proxy;
    w_.Sample({{"reason", "malformed"}}, static_cast<double>(proxy.malformed.load(std::memory_order_relaxed)));
    w_.Sample({{"reason", "bad_control"}}, static_cast<double>(proxy.bad_controls.load(std::memory_order_relaxed)));
  }

  // The HTTP/2 data plane's connections and what it holds; absent on the gRPC plane.
  void H2Plane() {
    if (sources_.h2 == nullptr) return;
    const dataplane::H2ProxyStats s = sources_.h2->stats();
    w_.Family("carbon_sidecar_h2_open_connections", MetricType::kGauge,
              "HTTP/2 connections open now on the h2 data plane: from clients, and to upstreams.");
    w_.Sample({{"side", "client"}}, static_cast<double>(s.open_client_connections));
    w_.Sample({{"side", "upstream"}}, static_cast<double>(s.open_upstream_connections));
    w_.Family("carbon_sidecar_h2_connections_total", MetricType::kCounter,
              "HTTP/2 connections the h2 data plane accepted from clients, and dialled to upstreams.");
    w_.Sample({{"side", "client"}}, static_cast<double>(s.client_connections_total));
    w_.Sample({{"side", "upstream"}}, static_cast<double>(s.upstream_connections_total));
    w_.Family("carbon_sidecar_h2_tls_handshake_failures_total", MetricType::kCounter,
              "TLS handshakes that failed: clients refused (no certificate, one from another CA, no h2), "
              "or upstreams not trusted or refusing the sidecar.");
    w_.Sample({{"side", "client"}}, static_cast<double>(s.client_tls_failures_total));
    w_.Sample({{"side", "upstream"}}, static_cast<double>(s.upstream_tls_failures_total));
    w_.Family("carbon_sidecar_h2_calls_in_flight", MetricType::kGauge,
              "Calls (HTTP/2 streams from clients) the h2 data plane has not yet ended and freed.");
    w_.Sample({}, static_cast<double>(s.calls_in_flight));
    w_.Family("carbon_sidecar_h2_held_request_bytes", MetricType::kGauge,
              "Request bytes held past flow control (messages held whole for a late model name, requests "
              "kept for a failover); bounded by memory_limit_bytes.");
    w_.Sample({}, static_cast<double>(s.held_request_bytes));
  }

  void ReloadsAndBuild() {
    w_.Family("carbon_sidecar_config_reloads_total", MetricType::kCounter, "Config reloads (SIGHUP), by result.");
    w_.Sample({{"result", "success"}}, static_cast<double>(sources_.reloads.success.load()));
    w_.Sample({{"result", "failure"}}, static_cast<double>(sources_.reloads.failure.load()));
    w_.Family("carbon_sidecar_config_last_reload_success_timestamp_seconds", MetricType::kGauge,
              "Unix time of the last successful config load (start-up or reload).");
    w_.Sample({}, sources_.reloads.last_success_timestamp.load());
    w_.Family("carbon_sidecar_build_info", MetricType::kGauge, "Always 1; the build's version and revision.");
    w_.Sample({{"version", CARBON_VERSION}, {"revision", CARBON_REVISION}}, 1);
  }

  const MetricsSources& sources_;
  const RoutingSnapshot& snapshot_;
  telemetry::ExpositionWriter w_;
  std::vector<telemetry::RouteReport> reports_;
};

}  // namespace

std::string RenderMetrics(const MetricsSources& sources, bool open_metrics) {
  return MetricsRenderer(sources, open_metrics).Render();
}

namespace {

// A route's clusters, best first, with why each stands where it does and what each served.
nlohmann::json RouteClustersJson(const RoutingSnapshot& snapshot, const RouteView& route) {
  using nlohmann::json;
  json out = json::array();
  for (size_t k = 0; k < route.clusters.size(); ++k) {
    const RouteCluster& rc = route.clusters[k];
    const telemetry::ClusterTotals t = rc.ledger->Totals();
    out.push_back({{"name", snapshot.clusters()[rc.index].upstream->name},
                   {"rank", ClusterRankName(rc.rank)},
                   {"serving", k == 0},
                   {"failover_target", k == 1 && route.route->config.failover && rc.rank <= ClusterRank::kOverBudget},
                   {"intensity_gco2_per_kwh", rc.intensity >= 0 ? json(rc.intensity) : json(nullptr)},
                   {"ledger", {{"requests", t.requests},
                               {"inferences", t.items},
                               {"grams", t.grams * route.pue},
                               {"home_grams", t.home_grams * route.pue},
                               {"failed_over", t.failed_over},
                               {"spilled_out", t.spilled_out}}}});
  }
  return out;
}

}  // namespace

std::string RenderSelectionJson(const RoutingSnapshot& snapshot, absl::Time wall_now) {
  using nlohmann::json;
  const SourceStatus& source = snapshot.source();
  json intensity = {
      {"provider", source.provider},
      {"source", source.source},
      {"region", source.region},
      {"state", SourceStateName(source.counters.state)},
      {"last_error", source.last_error.empty() ? json(nullptr) : json(source.last_error)},
      {"now", absl::FormatTime(absl::RFC3339_sec, source.now, absl::UTCTimeZone())},
      {"last_success", source.counters.last_success
                           ? json(absl::FormatTime(absl::RFC3339_sec, *source.counters.last_success,
                                                   absl::UTCTimeZone()))
                           : json(nullptr)},
  };
  if (source.latest) {
    intensity["gco2_per_kwh"] = source.latest->gco2_per_kwh;
    intensity["at"] = absl::FormatTime(absl::RFC3339_sec, source.latest->at, absl::UTCTimeZone());
    intensity["age_seconds"] = absl::ToDoubleSeconds(source.now - source.latest->at);
  } else {
    intensity["gco2_per_kwh"] = nullptr;
  }
  intensity["window"] = source.window ? json{{"low", source.window->low}, {"high", source.window->high}} : json(nullptr);
  json routes = json::array();
  for (const RouteView& route : snapshot.routes()) {
    const selector::Decision& d = route.decision;
    json candidates = json::array();
    for (size_t v = 0; v < route.pool().size(); ++v) {
      const selector::Variant& variant = route.pool()[v];
      const int64_t limit = route.InFlightLimit(v);
      candidates.push_back({{"model", variant.name},
                            {"energy_mj", variant.energy_mj},
                            {"error_percent", variant.error_percent},
                            {"ready", (route.ready >> v & 1) != 0},
                            {"weight", d.WeightOf(v)},
                            {"in_flight", route.route->ledger->variant(v).in_flight()},
                            {"policy_weight", route.PolicyWeightOf(v)},
                            {"guard_cap", route.guard_caps.empty() ? json(nullptr) : json(route.guard_caps[v])},
                            {"window_p99_seconds", route.window_p99.empty() || !route.window_p99[v]
                                                       ? json(nullptr)
                                                       : json(absl::ToDoubleSeconds(*route.window_p99[v]))},
                            {"max_in_flight", limit > 0 && limit != RouteView::kNotLearnedYet ? json(limit) : json(nullptr)},
                            {"max_in_flight_source", limit <= 0                          ? json(nullptr)
                                                     : !route.learned_limit.empty() && route.learned_limit[v] ? json("learned")
                                                     : route.learned_limit.empty() || limit != RouteView::kNotLearnedYet
                                                         ? json("configured")
                                                         : json("learning")}});
    }
    std::shared_ptr<const telemetry::CalibrationReport> calibration;
    if (route.energy) calibration = route.energy->Report();
    if (calibration) {
      for (size_t v = 0; v < route.pool().size(); ++v) {
        const telemetry::VariantEnergy& e = calibration->variants[v];
        candidates[v]["energy"] = {
            {"source", e.measured ? "measured" : "table"},
            {"table_joules", e.table_joules},
            {"measured_joules", e.measured_joules ? json(*e.measured_joules) : json(nullptr)},
            {"stderr_joules", e.measured_joules && std::isfinite(e.stderr_joules) ? json(e.stderr_joules) : json(nullptr)},
            {"table_because", e.measured ? json(nullptr) : json(e.table_because)}};
      }
    }
    const telemetry::RouteReport report = route.Report();
    const auto finite_or_null = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
    json ledger = {{"inferences", report.items},
                   {"grams", report.grams},
                   {"mean_error_percent", report.items > 0 ? json(report.mean_error_percent) : json(nullptr)},
                   {"extra_grams", report.extra_grams},
                   {"relative_quality_improvement_percent", report.relative_quality_improvement_percent},
                   {"efficiency", finite_or_null(report.efficiency)},
                   {"beats_baseline", report.beats_baseline}};
    json explanation = json::object();
    for (const selector::ExplanationTerm& term : d.explanation) explanation[std::string(term.name)] = term.value;
    routes.push_back({
        {"route", route.route->config.name},
        {"policy", route.route->policy->kind()},
        {"ramp_progress", route.ramp_progress ? json(*route.ramp_progress) : json(nullptr)},
        {"decision_energies", route.decided_on_measured ? "measured" : "table"},
        {"energy_calibration",
         calibration == nullptr
             ? json(nullptr)
             : json{{"source", calibration->source},
                    {"idle_watts", calibration->idle_watts ? json(*calibration->idle_watts) : json(nullptr)},
                    {"residual_rms_joules", calibration->idle_watts ? json(calibration->residual_rms_joules) : json(nullptr)},
                    {"explained", calibration->idle_watts ? json(calibration->explained) : json(nullptr)},
                    {"intervals", calibration->intervals},
                    {"last_error", calibration->last_read.ok() ? json(nullptr) : json(std::string(calibration->last_read.message()))},
                    {"last_success", calibration->last_success
                                         ? json(absl::FormatTime(absl::RFC3339_sec, *calibration->last_success, absl::UTCTimeZone()))
                                         : json(nullptr)}}},
        // Why the weights served differ from the policy's (latency_slo or ramp); null when they do not.
        {"weights_moved_by", route.policy_weights.empty() ? json(nullptr)
                                                          : json(std::string(telemetry::SpillReasonName(route.moved_by)))},
        {"model", route.pool()[d.primary].name},
        {"reason", d.reason},
        {"explanation", explanation},
        {"intensity_gco2_per_kwh", d.intensity ? json(d.intensity->gco2_per_kwh) : json(nullptr)},
        {"window", d.bounds ? json{{"low", d.bounds->low}, {"high", d.bounds->high}} : json(nullptr)},
        {"selected_since", d.since == absl::InfinitePast()
                               ? json(nullptr)
                               : json(absl::FormatTime(absl::RFC3339_sec, d.since, absl::UTCTimeZone()))},
        {"default", route.pool()[route.route->config.default_variant].name},
        {"baseline", route.pool()[route.route->config.baseline].name},
        {"candidates", candidates},
        {"ledger", ledger},
        {"cluster", snapshot.clusters()[route.served_in().index].upstream->name},
        {"home_cluster", snapshot.clusters()[route.home].upstream->name},
        {"clusters", RouteClustersJson(snapshot, route)},
    });
  }
  json clusters = json::array();
  for (const ClusterStatus& c : snapshot.clusters()) {
    const SourceStatus& cs = c.source;
    clusters.push_back({
        {"name", c.upstream->name},
        {"target", c.upstream->target},
        {"provider", cs.provider},
        {"source", cs.source},
        {"region", cs.region},
        {"state", SourceStateName(cs.counters.state)},
        {"gco2_per_kwh", cs.latest ? json(cs.latest->gco2_per_kwh) : json(nullptr)},
        {"age_seconds", cs.latest ? json(absl::ToDoubleSeconds(cs.now - cs.latest->at)) : json(nullptr)},
        {"window", cs.window ? json{{"low", cs.window->low}, {"high", cs.window->high}} : json(nullptr)},
        {"ranked_at_gco2_per_kwh", c.ranking_intensity ? json(*c.ranking_intensity) : json(nullptr)},
        {"intensity_assumed", c.intensity_assumed},
        {"last_error", cs.last_error.empty() ? json(nullptr) : json(cs.last_error)},
        {"reachable", cs.upstream_reachable ? json(*cs.upstream_reachable) : json(nullptr)},
        {"rtt_seconds", c.rtt ? json(absl::ToDoubleSeconds(*c.rtt)) : json(nullptr)},
        {"rtt_source", c.rtt_configured ? "configured" : "measured"},
        {"max_in_flight", c.max_in_flight > 0 ? json(c.max_in_flight) : json(nullptr)},
        {"in_flight", c.max_in_flight > 0 ? json(c.in_flight->load(std::memory_order_relaxed)) : json(nullptr)},
    });
  }
  json doc = {{"generated_at", absl::FormatTime(absl::RFC3339_sec, wall_now, absl::UTCTimeZone())},
              {"intensity", intensity},
              {"clusters", clusters},
              {"upstream_reachable", source.upstream_reachable ? json(*source.upstream_reachable) : json(nullptr)},
              {"routes", routes}};
  return doc.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

namespace {

std::string Duration(absl::Duration d) { return absl::FormatDuration(d); }

// The provider's own options, as its spec renders them, with the keys every provider has.
nlohmann::json ProviderJson(const telemetry::ProviderSpec& spec) {
  nlohmann::json j = spec.Render();
  j["provider"] = spec.kind();
  if (!spec.region.empty()) j["region"] = spec.region;
  return j;
}

nlohmann::json IntensityJson(const IntensityConfig& i) {
  nlohmann::json j = i.provider ? ProviderJson(*i.provider) : nlohmann::json::object();
  j["refresh"] = Duration(i.refresh);
  j["max_backoff"] = Duration(i.max_backoff);
  j["stale_after"] = Duration(i.stale_after);
  j["window"] = Duration(i.window);
  j["include_forecast"] = i.include_forecast;
  if (i.include_forecast) j["forecast_horizon"] = Duration(i.forecast_horizon);
  if (i.fixed_bounds) j["window_bounds"] = {{"low", i.fixed_bounds->low}, {"high", i.fixed_bounds->high}};
  return j;
}

nlohmann::json EnergyJson(const telemetry::EnergyCalibration& e) {
  if (e.meter == nullptr) return {{"source", "table"}};
  nlohmann::json j = e.meter->Render();
  j["interval"] = Duration(e.interval);
  j["half_life"] = Duration(e.half_life);
  j["max_intervals"] = e.max_intervals;
  j["min_inferences"] = e.min_inferences;
  j["max_relative_error"] = e.max_relative_error;
  if (!e.devices.empty()) j["devices"] = e.devices;
  return j;
}

nlohmann::json RouteJson(const RouteConfig& r) {
  nlohmann::json variants = nlohmann::json::array();
  for (const auto& v : r.pool->variants()) {
    variants.push_back({{"name", v.name}, {"energy_mj", v.energy_mj}, {"error_percent", v.error_percent}});
  }
  nlohmann::json policy_json = r.policy_spec().Render();
  policy_json["kind"] = r.policy_spec().kind();
  nlohmann::json limits = nlohmann::json::object();
  for (size_t v = 0; v < r.max_in_flight.size(); ++v) {
    if (r.max_in_flight[v] > 0) limits[(*r.pool)[v].name] = r.max_in_flight[v];
  }
  return {{"name", r.name},
          {"pool", r.pool_source},
          {"variants", variants},
          {"baseline", (*r.pool)[r.baseline].name},
          {"default", (*r.pool)[r.default_variant].name},
          {"policy", policy_json},
          {"min_dwell", Duration(r.min_dwell)},
          {"max_in_flight", limits},
          {"energy", EnergyJson(r.energy)},
          {"ramp", Duration(r.ramp)},
          {"slo", r.slo ? nlohmann::json{{"latency_p99", Duration(r.slo->latency_p99)}, {"window", Duration(r.slo->window)}}
                        : nlohmann::json(nullptr)},
          {"batch_dimension", r.batch_dimension}};
}

// Paths only: what the files hold is never shown.
nlohmann::json TlsJson(const std::optional<TlsConfig>& t, const char* ca_key) {
  if (!t) return nullptr;
  nlohmann::json j = {{"refresh_interval", Duration(t->refresh_interval)}};
  if (!t->cert_file.empty()) j["cert_file"] = t->cert_file;
  if (!t->key_file.empty()) j["key_file"] = t->key_file;
  if (!t->ca_file.empty()) j[ca_key] = t->ca_file;
  if (!t->server_name.empty()) j["server_name"] = t->server_name;
  return j;
}

}  // namespace

std::string RenderConfigJson(const SidecarConfig& config) {
  using nlohmann::json;
  json routes = json::array();
  json clusters = json::array();
  for (size_t i = 0; i < config.routes.size(); ++i) {
    routes.push_back(RouteJson(config.routes[i]));
    json names = json::array();
    for (const size_t c : config.routes[i].clusters) {
      if (c < config.clusters.size()) names.push_back(config.clusters[c].name);
    }
    routes[i]["clusters"] = names;
    routes[i]["latency_budget"] =
        config.routes[i].latency_budget ? json(Duration(*config.routes[i].latency_budget)) : json(nullptr);
    routes[i]["failover"] = config.routes[i].failover;
  }
  for (const ClusterConfig& c : config.clusters) {
    clusters.push_back({{"name", c.name},
                        {"target", c.target},
                        {"tls", TlsJson(c.tls, "ca_file")},
                        {"intensity", IntensityJson(c.intensity)},
                        {"rtt", c.rtt ? json(Duration(*c.rtt)) : json(nullptr)},
                        {"stale_intensity", c.stale_intensity ? json(*c.stale_intensity) : json(nullptr)}});
  }
  json doc = {{"path", config.path},
              {"clusters", clusters},
              {"clusters_listed", config.clusters_listed},
              {"listen", config.listen},
              {"tls", TlsJson(config.tls, "client_ca_file")},
              {"admin",
               {{"listen", config.admin_listen},
                {"history_interval", Duration(config.history_interval)},
                {"history_points", config.history_points}}},
              {"upstream",
               {{"target", config.upstream.target},
                {"max_message_bytes", config.upstream.max_message_bytes},
                {"readiness_interval", Duration(config.upstream.readiness_interval)},
                {"tls", TlsJson(config.upstream.tls, "ca_file")}}},
              {"drain_timeout", Duration(config.drain_timeout)},
              {"memory_limit_bytes", config.memory_limit_bytes},
              {"data_plane", DataPlaneName(config.data_plane)},
              {"data_plane_threads", config.data_plane_threads},
              {"data_plane_stream_window_bytes", config.data_plane_stream_window_bytes},
              {"data_plane_connection_window_bytes", config.data_plane_connection_window_bytes},
              {"data_plane_upstream_max_concurrent_streams", config.data_plane_upstream_max_concurrent_streams},
              {"data_plane_upstream_idle_timeout", Duration(config.data_plane_upstream_idle_timeout)},
              {"intensity", IntensityJson(config.intensity)},
              {"accounting",
               {{"pue", config.accounting.pue},
                {"embodied_kg", config.accounting.embodied_kg},
                {"lifespan", Duration(config.accounting.lifespan)},
                {"share", config.accounting.share}}},
              {"routes", routes}};
  return doc.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

bool IsReady(const RoutingSnapshot& snapshot, std::string* why) {
  // Ready while any cluster can take calls: a route fails over or moves to the others.
  bool any_reachable = false;
  for (const ClusterStatus& c : snapshot.clusters()) any_reachable = any_reachable || c.source.upstream_reachable != false;
  if (!any_reachable) {
    *why = snapshot.clusters().size() == 1 ? "the upstream did not answer the last readiness questions"
                                           : "no cluster answered the last readiness questions";
    return false;
  }
  *why = snapshot.source().latest ? "ok" : "ok (no intensity yet: routes use their default model)";
  return true;
}

}  // namespace carbon::sidecar
