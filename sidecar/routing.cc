#include "sidecar/routing.h"

#include "absl/strings/str_cat.h"
#include "selector/energy_overlay.h"
#include "common/string_view_compat.h"
#include "sidecar/request_wire.h"
#include "spdlog/spdlog.h"
#include "absl/random/random.h"
#include "telemetry/http_client.h"

namespace carbon::sidecar {

CompiledRoute::CompiledRoute(RouteConfig route_config, absl::Duration stale_after,
                             std::shared_ptr<const telemetry::RouteLedger> route_ledger)
    : config(std::move(route_config)),
      policy(config.policy_spec().Build(*config.pool, {config.default_variant, stale_after, config.min_dwell})),
      ledger(std::move(route_ledger)) {
  for (const auto& v : config.pool->variants()) {
    const std::string bytes = EncodeModelOverride(v.name);
    overrides.emplace_back(bytes.data(), bytes.size());
  }
}

double RouteView::PolicyWeightOf(size_t variant) const {
  if (policy_weights.empty()) return decision.WeightOf(variant);
  double weight = 0;
  for (const selector::VariantWeight& w : policy_weights) weight += w.variant == variant ? w.weight : 0;
  return weight;
}

RoutingSnapshot::RoutingSnapshot(std::vector<RouteView> routes, std::vector<ClusterStatus> clusters,
                                 AccountingStatus accounting)
    : routes_(std::move(routes)), clusters_(std::move(clusters)), accounting_(std::move(accounting)) {
  if (clusters_.empty()) clusters_.emplace_back();
  for (size_t i = 0; i < routes_.size(); ++i) by_name_[routes_[i].route->config.name] = i;
}

const RouteView* RoutingSnapshot::Find(std::string_view model_name) const {
  auto it = by_name_.find(model_name);
  return it == by_name_.end() ? nullptr : &routes_[it->second];
}

namespace {

// ±10 % of `d`, so that sidecars started together spread their polls instead of calling the
// provider in step.
absl::Duration Jittered(absl::Duration d) {
  thread_local absl::BitGen gen;
  return d * absl::Uniform(gen, 0.9, 1.1);
}

// The provider's forecast over the horizon, or nullopt without one (not asked for, or failed).
std::optional<std::vector<selector::IntensityReading>> ReadForecast(telemetry::IntensityProvider& provider,
                                                                    const IntensityConfig& config) {
  if (!config.include_forecast) return std::nullopt;
  const absl::Time now = provider.Now();
  auto forecast = provider.Forecast(now, now + config.forecast_horizon);
  if (!forecast.ok()) {
    spdlog::debug("event=intensity_forecast_failed provider={} error=\"{}\"", provider.source(),
                  ToStd(forecast.status().message()));
    return std::nullopt;
  }
  return *std::move(forecast);
}

// The lowest and highest intensity of a forecast; nullopt when it is empty.
std::optional<selector::WindowBounds> ForecastBounds(const std::vector<selector::IntensityReading>& forecast) {
  std::optional<selector::WindowBounds> b;
  for (const auto& r : forecast) b = selector::Widened(b, selector::WindowBounds{r.gco2_per_kwh, r.gco2_per_kwh});
  return b;
}

// What a route's ledger has counted, as its policy reads it.
selector::ServedTotals Served(const telemetry::RouteLedger& ledger, const telemetry::Accounting& accounting) {
  const telemetry::RouteReport report = telemetry::Report(ledger, accounting);
  return {static_cast<double>(report.items), report.error_percent_sum, report.grams};
}

// The ready mask of `after`: each variant's bit as `before` had it under the same name; variants
// new to the pool count as ready until the upstream is asked (a reload asks at once).
uint64_t CarryReady(const selector::Pool& before, uint64_t ready, const selector::Pool& after) {
  uint64_t out = after.all_variants_mask();
  for (size_t v = 0; v < after.size(); ++v) {
    const std::optional<size_t> old = before.IndexOf(after[v].name);
    if (old && (ready >> *old & 1) == 0) out &= ~(uint64_t{1} << v);
  }
  return out;
}

// `decision` (made for `before`) with its variants renumbered by name for `after`; nullopt when a
// variant it names is gone, so the new pool starts afresh.
std::optional<selector::Decision> CarryDecision(const selector::Pool& before, selector::Decision decision,
                                                const selector::Pool& after) {
  const auto renumber = [&](size_t v) { return after.IndexOf(before[v].name); };
  const std::optional<size_t> primary = renumber(decision.primary);
  if (!primary) return std::nullopt;
  decision.primary = *primary;
  for (selector::VariantWeight& w : decision.weights) {
    const std::optional<size_t> v = renumber(w.variant);
    if (!v) return std::nullopt;
    w.variant = *v;
  }
  std::sort(decision.weights.begin(), decision.weights.end(),
            [](const auto& a, const auto& b) { return a.variant < b.variant; });
  return decision;
}

// The route's calibrator when its energy names a meter; null for the table alone, or when the
// meter cannot be built (logged: the table stands).
std::shared_ptr<telemetry::EnergyCalibrator> MakeCalibrator(const RouteConfig& route,
                                                           std::shared_ptr<const telemetry::RouteLedger> ledger) {
  if (route.energy.meter == nullptr) return nullptr;
  auto meter = route.energy.meter->Build();
  if (!meter.ok()) {
    spdlog::warn("event=energy_meter_unusable route={} error=\"{}\"", route.name, ToStd(meter.status().message()));
    return nullptr;
  }
  // Inferences as the ledger counts them (served, with their batch sizes), for meters that do not
  // count them per model.
  auto counts = [ledger] {
    std::vector<double> items;
    for (size_t v = 0; v < ledger->pool().size(); ++v) items.push_back(static_cast<double>(ledger->variant(v).Totals().items));
    return items;
  };
  return std::make_shared<telemetry::EnergyCalibrator>(route.energy, route.pool, counts, *std::move(meter));
}

bool SameCalibration(const telemetry::EnergyCalibration& a, const telemetry::EnergyCalibration& b) {
  return a.meter && b.meter && a.meter->Render() == b.meter->Render() && a.interval == b.interval &&
         a.half_life == b.half_life && a.max_intervals == b.max_intervals && a.min_inferences == b.min_inferences &&
         a.max_relative_error == b.max_relative_error && a.devices == b.devices;
}

// Calls to variant `v` that met its in-flight limit so far: spilled elsewhere or refused.
uint64_t LimitHits(const telemetry::RouteLedger& ledger, size_t v) {
  uint64_t hits = ledger.variant(v).refused();
  for (size_t to = 0; to < ledger.pool().size(); ++to) {
    hits += ledger.spilled(v, to, telemetry::SpillReason::kInFlightLimit).load(std::memory_order_relaxed);
  }
  return hits;
}

// One line per change of a route's decision, with the policy's own explanation.
void LogDecision(const CompiledRoute& route, const selector::Decision& d, const selector::Decision* previous) {
  const selector::Pool& pool = *route.config.pool;
  std::string detail;
  for (const selector::ExplanationTerm& term : d.explanation) absl::StrAppend(&detail, " ", ToAbsl(term.name), "=", term.value);
  if (d.weights.size() > 1) {
    absl::StrAppend(&detail, " weights=");
    for (size_t k = 0; k < d.weights.size(); ++k) {
      absl::StrAppend(&detail, k == 0 ? "" : ",", pool[d.weights[k].variant].name, ":", d.weights[k].weight);
    }
  }
  spdlog::info("event=selection route={} model={} previous={} reason={} policy={} intensity_gco2_per_kwh={} "
               "window_low={} window_high={}{}",
               route.config.name, pool[d.primary].name, previous ? pool[previous->primary].name : "none",
               d.reason, route.policy->kind(), d.intensity ? absl::StrCat(d.intensity->gco2_per_kwh) : "none",
               d.bounds ? absl::StrCat(d.bounds->low) : "none", d.bounds ? absl::StrCat(d.bounds->high) : "none",
               detail);
}

}  // namespace

std::string_view SourceStateName(SourceState state) {
  switch (state) {
    case SourceState::kOk: return "ok";
    case SourceState::kFailing: return "failing";
    case SourceState::kStale: return "stale";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<telemetry::IntensityProvider>> MakeProvider(const IntensityConfig& config) {
  if (config.provider == nullptr) return absl::InvalidArgumentError("no intensity provider is configured");
  return config.provider->Build({config.stale_after});
}

struct SelectionPublisher::ClusterSource {
  ClusterConfig config;
  std::shared_ptr<const UpstreamCluster> upstream;
  std::unique_ptr<telemetry::IntensityProvider> provider;
  selector::IntensityWindow window{absl::Hours(24)};
  absl::Status last_poll;                                     // of the provider
  std::vector<selector::IntensityReading> forecast;           // include_forecast: what is coming
  std::optional<absl::StatusOr<selector::IntensityReading>> first_reading;  // from MakeState
  std::atomic<int64_t>* in_flight = nullptr;  // kept by the ledger, by name: a reload keeps counting
};

struct SelectionPublisher::ClusterAnswers {
  std::vector<std::vector<std::optional<bool>>> per_route;  // indexed like the routes; empty: not asked
  std::optional<absl::Duration> round_trip;
};

struct SelectionPublisher::State {
  absl::Duration readiness_interval;
  std::vector<ClusterSource> clusters;  // in the config's order
  std::vector<std::shared_ptr<const CompiledRoute>> routes;
  std::vector<std::optional<selector::Decision>> previous;  // per route
  std::vector<std::vector<uint64_t>> ready;                   // per route, per cluster
  std::vector<std::vector<telemetry::ClusterLedger*>> cluster_ledgers;  // per route, per cluster
  // Per route with an SLO: each variant's load window and the guard's caps.
  std::vector<std::vector<telemetry::LoadWindow>> load;
  std::vector<selector::GuardCaps> caps;
  std::vector<std::vector<std::optional<absl::Duration>>> window_p99;
  std::vector<std::vector<double>> served_share;  // the weights last published, per variant
  // Per route with an SLO, per variant without a configured max_in_flight: the limit learned, and
  // how many calls had met it (spilled or refused) at the last guard tick.
  std::vector<std::vector<selector::LearnedLimit>> learned;
  std::vector<std::vector<uint64_t>> limit_hits;
  // Per route: its energy calibrator, or null (the table alone).
  std::vector<std::shared_ptr<telemetry::EnergyCalibrator>> energy;
  // The calibrators' reports the last publish used: a newer one is published at the next check.
  std::vector<std::shared_ptr<const telemetry::CalibrationReport>> energy_published;
  // Per route: its policy over the measured energies, while there are any (else the pool's).
  std::vector<std::optional<selector::EnergyOverlay>> overlays;
  // Per route: the cluster it was served in at the last publish (logged when it changes).
  std::vector<std::optional<size_t>> chosen;
  AccountingConfig accounting;
  absl::Duration stale_after;  // the top-level intensity's: the routes' policies are built with it

  // How often to look for new calibrations: the shortest meter interval; nullopt without meters.
  std::optional<absl::Duration> EnergyInterval() const {
    std::optional<absl::Duration> shortest;
    for (const auto& c : energy) {
      if (c) shortest = std::min(shortest.value_or(absl::InfiniteDuration()), c->config().interval);
    }
    return shortest;
  }
  bool NewCalibration() const {
    for (size_t i = 0; i < energy.size(); ++i) {
      if (energy[i] && energy[i]->Report() != energy_published[i]) return true;
    }
    return false;
  }
  // Per route with a ramp: where the traffic is moving from and to, and since when (wall clock).
  struct Ramp {
    std::vector<selector::VariantWeight> from, to, current;
    absl::Time start = absl::InfinitePast();
  };
  std::vector<Ramp> ramps;
};

absl::StatusOr<std::unique_ptr<SelectionPublisher>> SelectionPublisher::Create(
    const SidecarConfig& config, ReadinessProbe readiness, telemetry::CarbonLedger* ledger, ClusterConnector connect) {
  std::unique_ptr<telemetry::CarbonLedger> own_ledger;
  if (ledger == nullptr) {
    own_ledger = std::make_unique<telemetry::CarbonLedger>();
    ledger = own_ledger.get();
  }
  auto state = MakeState(config, *ledger, connect);
  if (!state.ok()) return state.status();
  std::unique_ptr<SelectionPublisher> publisher(new SelectionPublisher(
      *std::move(state), std::move(readiness), std::move(connect), ledger, std::move(own_ledger)));
  publisher->PollOnce({}, /*ask_readiness=*/true);
  return publisher;
}

SelectionPublisher::SelectionPublisher(std::shared_ptr<State> state, ReadinessProbe readiness, ClusterConnector connect,
                                       telemetry::CarbonLedger* ledger,
                                       std::unique_ptr<telemetry::CarbonLedger> own_ledger)
    : readiness_(std::move(readiness)),
      connect_(std::move(connect)),
      own_ledger_(std::move(own_ledger)),
      ledger_(ledger),
      state_(std::move(state)),
      snapshots_(std::make_shared<const RoutingSnapshot>(std::vector<RouteView>{})) {}

SelectionPublisher::~SelectionPublisher() { Stop(); }

void SelectionPublisher::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  for (const auto& calibrator : state_->energy) {
    if (calibrator) calibrator->Start();
  }
  thread_ = std::thread([this] { Run(); });
}

void SelectionPublisher::Stop() {
  std::vector<std::shared_ptr<telemetry::EnergyCalibrator>> calibrators;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    calibrators = state_->energy;
  }
  if (thread_.joinable()) thread_.join();
  for (const auto& calibrator : calibrators) {
    if (calibrator) calibrator->Stop();
  }
}

void SelectionPublisher::RefreshNow() {
  size_t clusters;
  {
    absl::MutexLock lock(&mu_);
    clusters = state_->clusters.size();
  }
  PollOnce(std::vector<bool>(clusters, true), /*ask_readiness=*/true);
}

bool SelectionPublisher::ShouldWake() const {
  return stopping_ || reloads_ != reloads_seen_;
}

namespace {

// How often the latency guard samples its windows and steps: four times a window (the shortest
// of the routes'), so that a breach is acted on within a quarter of it; and a ramp moves in twenty
// steps. Never when no route has an SLO or a ramp.
std::optional<absl::Duration> GuardInterval(const std::vector<std::shared_ptr<const CompiledRoute>>& routes) {
  std::optional<absl::Duration> interval;
  const auto take = [&](absl::Duration d) { interval = interval ? std::min(*interval, d) : d; };
  for (const auto& route : routes) {
    if (route->config.slo) take(std::max(absl::Milliseconds(250), route->config.slo->window / 4));
    if (route->config.ramp > absl::ZeroDuration()) take(std::max(absl::Milliseconds(100), route->config.ramp / 20));
  }
  return interval;
}

}  // namespace

void SelectionPublisher::Run() {
  std::vector<absl::Time> next_poll;
  absl::Time next_ask, next_guard, next_energy;
  const auto schedule_polls = [&](const State& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    next_poll.clear();
    for (const ClusterSource& c : s.clusters) next_poll.push_back(absl::Now() + NextPollDelay(c));
  };
  {
    absl::MutexLock lock(&mu_);
    schedule_polls(*state_);
    next_ask = absl::Now() + state_->readiness_interval;
    next_guard = absl::Now() + GuardInterval(state_->routes).value_or(absl::ZeroDuration());
    next_energy = absl::Now() + state_->EnergyInterval().value_or(absl::ZeroDuration());
  }
  while (true) {
    std::vector<bool> poll;
    bool ask, guard;
    {
      absl::MutexLock lock(&mu_);
      const bool asks = readiness_ && state_->readiness_interval > absl::ZeroDuration();
      const std::optional<absl::Duration> guard_interval = GuardInterval(state_->routes);
      const std::optional<absl::Duration> energy_interval = state_->EnergyInterval();
      absl::Time wake = *std::min_element(next_poll.begin(), next_poll.end());
      if (asks) wake = std::min(wake, next_ask);
      if (guard_interval) wake = std::min(wake, next_guard);
      if (energy_interval) wake = std::min(wake, next_energy);
      // Waits for the next poll, question or guard step, waking early to stop or after a reload
      // (whose new intervals then apply; the reload itself has just read the providers).
      mu_.AwaitWithDeadline(absl::Condition(this, &SelectionPublisher::ShouldWake), wake);
      if (stopping_) return;
      const absl::Time now = absl::Now();
      if (reloads_ != reloads_seen_) {
        reloads_seen_ = reloads_;
        schedule_polls(*state_);
        next_ask = now + state_->readiness_interval;
        next_guard = now + guard_interval.value_or(absl::ZeroDuration());
        next_energy = now + energy_interval.value_or(absl::ZeroDuration());
        continue;
      }
      // A new calibration is published on its own: no provider to ask.
      if (energy_interval && now >= next_energy) {
        next_energy = now + *energy_interval;
        if (state_->NewCalibration()) Publish(*state_);
      }
      bool any_poll = false;
      for (const absl::Time t : next_poll) {
        poll.push_back(now >= t);
        any_poll = any_poll || poll.back();
      }
      ask = asks && now >= next_ask;
      guard = guard_interval && now >= next_guard;
      if (ask) next_ask = now + state_->readiness_interval;
      if (guard) next_guard = now + *guard_interval;
      if (!any_poll && !ask && !guard) continue;
    }
    const std::vector<absl::Duration> delays = PollOnce(poll, ask, guard);
    for (size_t c = 0; c < poll.size() && c < delays.size() && c < next_poll.size(); ++c) {
      if (poll[c]) next_poll[c] = absl::Now() + delays[c];
    }
  }
}

namespace {

bool SameConnection(const ClusterConfig& a, const ClusterConfig& b) {
  return a.name == b.name && a.target == b.target && a.tls == b.tls;
}

}  // namespace

absl::Status SelectionPublisher::Reload(const SidecarConfig& config) {
  auto state = MakeState(config, *ledger_, connect_);  // provider I/O, no lock held
  if (!state.ok()) return state.status();
  {
    absl::MutexLock lock(&mu_);
    // A cluster that keeps its name, target and TLS keeps its channel: the calls in flight on it
    // and its connections carry on. The others are closed when their last call ends.
    for (ClusterSource& next : (*state)->clusters) {
      for (const ClusterSource& before : state_->clusters) {
        if (SameConnection(before.config, next.config)) next.upstream = before.upstream;
      }
    }
    // Routes that survive a reload keep, by variant name, their previous decision (so dwell carries
    // over) and what the upstream said of each variant: a pool whose variants were renamed or
    // re-sorted (new energies change the order) must not hold them on the wrong model.
    for (size_t i = 0; i < (*state)->routes.size(); ++i) {
      for (size_t j = 0; j < state_->routes.size(); ++j) {
        if (state_->routes[j]->config.name != (*state)->routes[i]->config.name) continue;
        const selector::Pool& before = *state_->routes[j]->config.pool;
        const selector::Pool& after = *(*state)->routes[i]->config.pool;
        for (size_t c = 0; c < (*state)->clusters.size(); ++c) {
          for (size_t old = 0; old < state_->clusters.size(); ++old) {
            if (state_->clusters[old].config.name != (*state)->clusters[c].config.name) continue;
            (*state)->ready[i][c] = CarryReady(before, state_->ready[j][old], after);
          }
        }
        // A ramp in progress goes on when the pool is unchanged (its weights name variants by index).
        bool same_pool = before.size() == after.size();
        for (size_t v = 0; same_pool && v < after.size(); ++v) same_pool = before[v].name == after[v].name;
        if (same_pool) (*state)->ramps[i] = state_->ramps[j];
        // The guard's caps follow the variants by name, so a reload does not undo a spill the
        // upstream still needs.
        for (size_t v = 0; v < after.size(); ++v) {
          if (const std::optional<size_t> old = before.IndexOf(after[v].name)) {
            (*state)->caps[i].cap[v] = state_->caps[j].cap[*old];
            (*state)->caps[i].over[v] = state_->caps[j].over[*old];
            (*state)->learned[i][v] = state_->learned[j][*old];
            (*state)->limit_hits[i][v] = state_->limit_hits[j][*old];
          }
        }
        if (state_->previous[j]) (*state)->previous[i] = CarryDecision(before, *state_->previous[j], after);
        // An unchanged meter over an unchanged pool keeps its calibrator, and what it has learned.
        bool same_table = same_pool;
        for (size_t v = 0; same_table && v < after.size(); ++v) same_table = before[v].energy_mj == after[v].energy_mj;
        if (same_table && state_->energy[j] && (*state)->energy[i] &&
            SameCalibration(state_->routes[j]->config.energy, (*state)->routes[i]->config.energy)) {
          (*state)->energy[i] = state_->energy[j];
        }
      }
    }
    // Calibrators no route keeps are stopped here, not by whichever thread drops the last snapshot.
    for (const auto& old : state_->energy) {
      if (old && std::find((*state)->energy.begin(), (*state)->energy.end(), old) == (*state)->energy.end()) {
        old->Stop();
      }
    }
    if (thread_.joinable()) {
      for (const auto& calibrator : (*state)->energy) {
        if (calibrator) calibrator->Start();
      }
    }
    state_ = *state;
    ++reloads_;
    Apply(**state, FirstReadings(**state), {});
  }
  // New routes, pools or clusters: ask about their variants now rather than at the next tick.
  PollOnce({}, /*ask_readiness=*/true);
  return absl::OkStatus();
}

std::vector<std::optional<absl::StatusOr<selector::IntensityReading>>> SelectionPublisher::FirstReadings(
    const State& s) {
  std::vector<std::optional<absl::StatusOr<selector::IntensityReading>>> readings;
  for (const ClusterSource& c : s.clusters) readings.push_back(c.first_reading);
  return readings;
}

std::vector<absl::Duration> SelectionPublisher::PollOnce(const std::vector<bool>& poll_intensity, bool ask_readiness,
                                                         bool guard) {
  absl::MutexLock poll_lock(&poll_mu_);
  std::shared_ptr<State> s;
  {
    absl::MutexLock lock(&mu_);
    s = state_;
  }
  const size_t n = s->clusters.size();
  std::vector<std::optional<absl::StatusOr<selector::IntensityReading>>> readings(n);
  std::vector<std::optional<std::vector<selector::IntensityReading>>> forecasts(n);
  for (size_t c = 0; c < n && c < poll_intensity.size(); ++c) {
    if (!poll_intensity[c]) continue;
    readings[c] = s->clusters[c].provider->Latest();
    forecasts[c] = ReadForecast(*s->clusters[c].provider, s->clusters[c].config.intensity);
  }
  std::vector<std::optional<ClusterAnswers>> answers(n);
  if (ask_readiness && readiness_ && s->readiness_interval > absl::ZeroDuration()) {
    // Each cluster is asked on its own thread (the first on this one), so an unreachable cluster's
    // timeout does not hold up the questions to the others.
    const auto ask = [&](size_t c) {
      bool listed = false;
      for (const auto& route : s->routes) {
        const std::vector<size_t>& in = route->config.clusters;
        listed = listed || std::find(in.begin(), in.end(), c) != in.end();
      }
      if (!listed) return;  // no route uses it: nothing to ask
      ClusterAnswers a;
      for (size_t i = 0; i < s->routes.size(); ++i) {
        const RouteConfig& route = s->routes[i]->config;
        if (std::find(route.clusters.begin(), route.clusters.end(), c) == route.clusters.end()) {
          a.per_route.emplace_back();
          continue;
        }
        std::vector<std::string> names;
        for (const auto& v : route.pool->variants()) names.push_back(v.name);
        ReadinessAnswer answer = readiness_(*s->clusters[c].upstream, names);
        if (answer.round_trip) a.round_trip = std::min(a.round_trip.value_or(*answer.round_trip), *answer.round_trip);
        a.per_route.push_back(std::move(answer.ready));
      }
      answers[c] = std::move(a);
    };
    std::vector<std::thread> askers;
    for (size_t c = 1; c < n; ++c) askers.emplace_back(ask, c);
    if (n > 0) ask(0);
    for (std::thread& t : askers) t.join();
  }
  absl::MutexLock lock(&mu_);
  std::vector<absl::Duration> delays;
  // A reload replaced the state meanwhile; it has published for itself, and these answers
  // belong to routes that are gone.
  if (state_ != s) {
    for (const ClusterSource& c : state_->clusters) delays.push_back(NextPollDelay(c));
    return delays;
  }
  for (size_t c = 0; c < n; ++c) {
    if (forecasts[c]) s->clusters[c].forecast = *std::move(forecasts[c]);  // a failed forecast keeps the last one
  }
  if (guard) StepGuards(*s);
  Apply(*s, readings, answers);
  for (const ClusterSource& c : s->clusters) delays.push_back(NextPollDelay(c));
  return delays;
}

void SelectionPublisher::Apply(State& s,
                               const std::vector<std::optional<absl::StatusOr<selector::IntensityReading>>>& readings,
                               const std::vector<std::optional<ClusterAnswers>>& answers) {
  for (size_t c = 0; c < s.clusters.size(); ++c) {
    ClusterSource& cluster = s.clusters[c];
    ClusterHealth& health = health_[cluster.config.name];
    if (c < answers.size() && answers[c]) {
      bool answered = false;
      for (size_t i = 0; i < answers[c]->per_route.size() && i < s.routes.size(); ++i) {
        const CompiledRoute& route = *s.routes[i];
        const selector::Pool& pool = *route.config.pool;
        uint64_t ready = s.ready[i][c];
        const std::vector<std::optional<bool>>& said = answers[c]->per_route[i];
        for (size_t v = 0; v < said.size() && v < pool.size(); ++v) {
          if (!said[v]) continue;  // no answer: what was known stands
          answered = true;
          const uint64_t bit = uint64_t{1} << v;
          ready = *said[v] ? (ready | bit) : (ready & ~bit);
          if ((ready & bit) != (s.ready[i][c] & bit)) {
            spdlog::info("event=variant_readiness route={} cluster={} model={} ready={}", route.config.name,
                         cluster.config.name, pool[v].name, (ready & bit) != 0);
          }
        }
        s.ready[i][c] = ready;
      }
      // Reachable when any question of this round got an answer.
      if (health.reachable != answered && (health.reachable.has_value() || !answered)) {
        spdlog::log(answered ? spdlog::level::info : spdlog::level::warn, "event=cluster_reachable cluster={} reachable={}",
                    cluster.config.name, answered);
      }
      health.reachable = answered;
      if (const std::optional<absl::Duration> rtt = answers[c]->round_trip) {
        // Smoothed as TCP smooths its round trip (RFC 6298): one eighth of each new sample.
        health.measured_rtt = health.measured_rtt ? *health.measured_rtt * 7 / 8 + *rtt / 8 : *rtt;
      }
    }
    if (c < readings.size() && readings[c]) {
      const absl::StatusOr<selector::IntensityReading>& reading = *readings[c];
      if (reading.ok()) {
        ++health.counters.fetch_successes;
        health.counters.last_success = absl::Now();
        health.consecutive_failures = 0;
        cluster.window.Add(*reading);
        cluster.last_poll = absl::OkStatus();
      } else {
        ++health.counters.fetch_failures;
        ++health.consecutive_failures;
        // A new kind of failure is worth a warning even when the state does not change (a provider
        // that never answered stays stale); the same failure again only at debug level.
        const auto level = reading.status() == cluster.last_poll ? spdlog::level::debug : spdlog::level::warn;
        spdlog::log(level, "event=intensity_poll_failed cluster={} provider={} consecutive={} error=\"{}\"",
                    cluster.config.name, cluster.provider->source(), health.consecutive_failures,
                    ToStd(reading.status().message()));
        cluster.last_poll = reading.status();
      }
    }
    UpdateSourceState(cluster);
  }
  Publish(s);
}

void SelectionPublisher::UpdateSourceState(ClusterSource& c) {
  SourceCounters& counters = health_[c.config.name].counters;
  const absl::Time now = c.provider->Now();
  const std::optional<selector::IntensityReading> latest = c.window.latest();
  SourceState next = SourceState::kOk;
  if (!latest || now - latest->at > c.config.intensity.stale_after) {
    next = SourceState::kStale;
  } else if (!c.last_poll.ok()) {
    next = SourceState::kFailing;
  }
  if (next == counters.state) return;
  // Logged once per change, not once per poll.
  const auto log = next == SourceState::kOk ? spdlog::level::info : spdlog::level::warn;
  spdlog::log(log, "event=intensity_state cluster={} provider={} from={} to={} error=\"{}\"", c.config.name,
              c.provider->source(), SourceStateName(counters.state), SourceStateName(next),
              ToStd(c.last_poll.message()));
  counters.state = next;
  ++counters.entered[static_cast<size_t>(next)];
}

absl::Duration SelectionPublisher::NextPollDelay(const ClusterSource& c) {
  const absl::Status& last = c.last_poll;
  const IntensityConfig& intensity = c.config.intensity;
  if (last.ok()) return Jittered(intensity.refresh);
  // Retry sooner than the refresh while failing, doubling from a few seconds up to max_backoff,
  // and never before the service's Retry-After.
  const absl::Duration first = std::min(intensity.refresh, absl::Seconds(5));
  const int doublings = std::clamp(health_[c.config.name].consecutive_failures - 1, 0, 20);
  absl::Duration delay = std::min(intensity.max_backoff, first * (int64_t{1} << doublings));
  if (auto retry_after = telemetry::RetryAfter(last)) delay = std::max(delay, *retry_after);
  return Jittered(delay);
}

void SelectionPublisher::UpdateOverlay(State& s, size_t i, const std::vector<double>& measured_joules) {
  const CompiledRoute& route = *s.routes[i];
  const selector::Pool& pool = *route.config.pool;
  std::vector<double> energies;
  bool any = false;
  for (size_t v = 0; v < pool.size(); ++v) {
    const bool measured = v < measured_joules.size() && measured_joules[v] > 0;
    any = any || measured;
    energies.push_back(measured ? measured_joules[v] * 1000 : pool[v].energy_mj);
  }
  if (!any) {
    s.overlays[i].reset();
    return;
  }
  // Rebuilt only when an energy moved by more than a percent: the estimates wander a little with
  // every read, and a rebuilt policy is a new one.
  if (s.overlays[i]) {
    bool close = true;
    for (size_t v = 0; v < pool.size(); ++v) {
      close = close && std::abs(energies[v] - s.overlays[i]->energies_mj()[v]) <= 0.01 * s.overlays[i]->energies_mj()[v];
    }
    if (close) return;
  }
  auto overlay = selector::EnergyOverlay::Create(
      pool, energies, route.config.policy_spec(),
      {route.config.default_variant, s.stale_after, route.config.min_dwell});
  if (!overlay.ok()) {
    spdlog::warn("event=decision_energies_unusable route={} error=\"{}\"", route.config.name,
                 ToStd(overlay.status().message()));
    s.overlays[i].reset();
    return;
  }
  std::string listed;
  for (size_t v = 0; v < pool.size(); ++v) absl::StrAppend(&listed, v ? "," : "", pool[v].name, ":", energies[v]);
  spdlog::info("event=decision_energies route={} energies_mj={}", route.config.name, listed);
  s.overlays[i] = *std::move(overlay);
}

void SelectionPublisher::StepGuards(State& s) {
  const absl::Time now = absl::Now();  // calls are timed on the wall clock, not the provider's
  for (size_t i = 0; i < s.routes.size(); ++i) {
    const CompiledRoute& route = *s.routes[i];
    if (!route.config.slo) continue;
    std::vector<selector::VariantLoad> load;
    for (size_t v = 0; v < route.config.pool->size(); ++v) {
      load.push_back(s.load[i][v].Sample(route.ledger->variant(v), now, route.config.slo->window));
      s.window_p99[i][v] = load.back().p99;
    }
    const selector::GuardCaps next = selector::LatencyGuard::Next(s.caps[i], load, s.served_share[i], *route.config.slo);
    for (size_t v = 0; v < load.size(); ++v) {
      if (!route.config.max_in_flight.empty() && route.config.max_in_flight[v] > 0) continue;
      const uint64_t hits = LimitHits(*route.ledger, v);
      const selector::LearnedLimit learned =
          selector::NextLearnedLimit(s.learned[i][v], load[v], hits > s.limit_hits[i][v], *route.config.slo, now);
      if (learned.limit != s.learned[i][v].limit) {
        spdlog::info("event=learned_in_flight_limit route={} model={} from={} to={} p99_seconds={}", route.config.name,
                     (*route.config.pool)[v].name,
                     s.learned[i][v].limit ? absl::StrCat(*s.learned[i][v].limit) : "none", *learned.limit,
                     load[v].p99 ? absl::StrCat(absl::ToDoubleSeconds(*load[v].p99)) : "unknown");
      }
      s.learned[i][v] = learned;
      s.limit_hits[i][v] = hits;
    }
    for (size_t v = 0; v < next.over.size(); ++v) {
      if (next.over[v] != s.caps[i].over[v]) {
        spdlog::log(next.over[v] ? spdlog::level::warn : spdlog::level::info,
                    "event=latency_guard route={} model={} over_slo={} cap={} p99_seconds={} overload_answers={}",
                    route.config.name, (*route.config.pool)[v].name, next.over[v], next.cap[v],
                    load[v].p99 ? absl::StrCat(absl::ToDoubleSeconds(*load[v].p99)) : "unknown",
                    load[v].overload_answers);
      }
    }
    s.caps[i] = next;
  }
}

namespace {

// One cluster's grid at a publish, as its routes read it.
struct ClusterGrid {
  absl::Time now;
  std::optional<selector::IntensityReading> latest;
  std::optional<selector::WindowBounds> bounds;
  std::span<const selector::IntensityReading> forecast;  // the part still ahead
  std::optional<double> ranking_intensity;  // nullopt: stale with none assumed
  bool assumed = false;
};

// A route's clusters, best first (selector::RankPlaces).
std::vector<RouteCluster> RankClusters(const RouteConfig& route, const std::vector<ClusterGrid>& grids,
                                       const std::vector<std::optional<bool>>& reachable,
                                       const std::vector<std::optional<absl::Duration>>& rtt,
                                       const std::vector<uint64_t>& ready) {
  std::vector<selector::PlaceState> places;
  for (const size_t c : route.clusters) places.push_back({reachable[c], ready[c] != 0, rtt[c], grids[c].ranking_intensity});
  std::vector<RouteCluster> ranked;
  for (const selector::RankedPlace& p : selector::RankPlaces(places, route.latency_budget)) {
    RouteCluster rc;
    rc.index = route.clusters[p.place];
    rc.rank = p.rank;
    rc.intensity = grids[rc.index].latest ? grids[rc.index].latest->gco2_per_kwh : -1;
    ranked.push_back(rc);
  }
  return ranked;
}

}  // namespace


void SelectionPublisher::Publish(State& s) {
  std::vector<ClusterGrid> grids;
  std::vector<ClusterStatus> statuses;
  std::vector<std::optional<bool>> reachable;
  std::vector<std::optional<absl::Duration>> rtt;
  for (ClusterSource& c : s.clusters) {
    const ClusterHealth& health = health_[c.config.name];
    ClusterGrid g;
    g.now = c.provider->Now();
    g.latest = c.window.latest();
    g.bounds = c.window.Bounds(g.now);
    if (!c.config.intensity.fixed_bounds) {
      // docs/design.md §1: the trailing window, widened by what the forecast says is coming.
      g.bounds = selector::Widened(g.bounds, ForecastBounds(c.forecast));
    }
    const auto ahead = std::lower_bound(c.forecast.begin(), c.forecast.end(), g.now,
                                        [](const selector::IntensityReading& r, absl::Time t) { return r.at < t; });
    g.forecast = std::span<const selector::IntensityReading>(ahead, c.forecast.end());
    if (health.counters.state != SourceState::kStale && g.latest) {
      g.ranking_intensity = g.latest->gco2_per_kwh;
    } else if (c.config.stale_intensity) {
      g.ranking_intensity = c.config.stale_intensity;
      g.assumed = true;
    }
    reachable.push_back(health.reachable);
    rtt.push_back(c.config.rtt ? c.config.rtt : health.measured_rtt);
    ClusterStatus status;
    status.upstream = c.upstream;
    status.source = SourceStatus{std::string(c.config.intensity.provider_kind()),
                                 std::string(c.provider->source()),
                                 c.config.intensity.region(),
                                 g.latest,
                                 g.bounds,
                                 g.now,
                                 c.last_poll.ok() ? "" : std::string(c.last_poll.message()),
                                 health.counters,
                                 health.reachable};
    status.rtt = rtt.back();
    status.rtt_configured = c.config.rtt.has_value();
    status.ranking_intensity = g.ranking_intensity;
    status.intensity_assumed = g.assumed;
    status.max_in_flight = c.config.max_in_flight;
    status.in_flight = c.in_flight;
    statuses.push_back(std::move(status));
    grids.push_back(std::move(g));
  }
  std::vector<RouteView> views;
  for (size_t i = 0; i < s.routes.size(); ++i) {
    const CompiledRoute& route = *s.routes[i];
    std::vector<RouteCluster> clusters = RankClusters(route.config, grids, reachable, rtt, s.ready[i]);
    for (RouteCluster& rc : clusters) {
      rc.ledger = s.cluster_ledgers[i][rc.index];
      rc.max_in_flight = s.clusters[rc.index].config.max_in_flight;
      rc.in_flight = s.clusters[rc.index].in_flight;
    }
    const size_t where = clusters.front().index;
    const ClusterGrid& grid = grids[where];
    if (s.chosen[i] != where && s.clusters.size() > 1) {
      spdlog::info("event=cluster_choice route={} cluster={} previous={} rank={} intensity_gco2_per_kwh={}",
                   route.config.name, s.clusters[where].config.name,
                   s.chosen[i] ? s.clusters[*s.chosen[i]].config.name : "none", ClusterRankName(clusters.front().rank),
                   grid.ranking_intensity ? absl::StrCat(*grid.ranking_intensity) : "unknown");
    }
    s.chosen[i] = where;
    const uint64_t ready = s.ready[i][where];
    // The calibrator's estimates that are certain enough; the table for the others.
    std::vector<double> measured_joules;
    if (s.energy[i]) {
      const std::shared_ptr<const telemetry::CalibrationReport> calibration = s.energy[i]->Report();
      s.energy_published[i] = calibration;
      for (const telemetry::VariantEnergy& e : calibration->variants) {
        measured_joules.push_back(e.measured ? *e.measured_joules : 0.0);
      }
    }
    UpdateOverlay(s, i, measured_joules);
    const selector::PolicyInputs inputs{grid.latest, grid.bounds, grid.now, ready, s.previous[i] ? &*s.previous[i] : nullptr,
                                        Served(*route.ledger, {s.accounting.pue, measured_joules}), grid.forecast};
    selector::Decision decision = s.overlays[i] ? s.overlays[i]->Decide(inputs) : route.policy->Decide(inputs);
    if (!s.previous[i] || s.previous[i]->primary != decision.primary || s.previous[i]->reason != decision.reason ||
        s.previous[i]->weights.size() != decision.weights.size()) {
      LogDecision(route, decision, s.previous[i] ? &*s.previous[i] : nullptr);
    }
    // The policy remembers its own decision; the view serves the ramped and guarded one.
    s.previous[i] = decision;
    std::vector<selector::VariantWeight> policy_weights;
    std::optional<double> ramp_progress;
    if (route.config.ramp > absl::ZeroDuration()) {
      State::Ramp& ramp = s.ramps[i];
      const absl::Time wall = absl::Now();  // a server warms in real time, whatever the provider's clock
      if (!selector::SameWeights(ramp.to, decision.weights)) {
        // A new decision: from what is served now (mid-ramp, the blend) towards it. The first
        // decision of a route has nothing to move from.
        if (!ramp.current.empty()) {
          ramp.from = ramp.current;
          ramp.start = wall;
        }
        ramp.to = decision.weights;
      }
      const double progress =
          ramp.start == absl::InfinitePast() ? 1.0 : std::min(1.0, absl::FDivDuration(wall - ramp.start, route.config.ramp));
      if (progress < 1) {
        ramp_progress = progress;
        policy_weights = decision.weights;
        decision.weights = selector::RampedWeights(ramp.from, ramp.to, progress);
        decision.primary = std::max_element(decision.weights.begin(), decision.weights.end(),
                                            [](const auto& a, const auto& b) { return a.weight < b.weight; })
                               ->variant;
      }
      ramp.current = decision.weights;
    }
    bool guard_moved = false;
    if (route.config.slo) {
      std::vector<selector::VariantWeight> capped = selector::CappedWeights(decision.weights, s.caps[i].cap, ready);
      const bool changed = capped.size() != decision.weights.size() ||
                           !std::equal(capped.begin(), capped.end(), decision.weights.begin(),
                                       [](const auto& a, const auto& b) {
                                         return a.variant == b.variant && std::abs(a.weight - b.weight) < 1e-9;
                                       });
      if (changed) {
        guard_moved = true;
        if (policy_weights.empty()) policy_weights = std::move(decision.weights);
        decision.weights = std::move(capped);
        decision.primary = std::max_element(decision.weights.begin(), decision.weights.end(),
                                            [](const auto& a, const auto& b) { return a.weight < b.weight; })
                               ->variant;
      }
      std::fill(s.served_share[i].begin(), s.served_share[i].end(), 0.0);
      for (const selector::VariantWeight& w : decision.weights) s.served_share[i][w.variant] = w.weight;
    }
    const telemetry::SpillReason moved_by = guard_moved ? telemetry::SpillReason::kLatencySlo : telemetry::SpillReason::kRamp;
    std::shared_ptr<const selector::WeightedDraw> draw;
    if (decision.weights.size() > 1 || !policy_weights.empty()) {
      draw = std::make_shared<const selector::WeightedDraw>(decision.weights, policy_weights);
    }
    RouteView view;
    view.route = s.routes[i];
    view.decision = std::move(decision);
    view.policy_weights = std::move(policy_weights);
    view.ramp_progress = ramp_progress;
    view.draw = std::move(draw);
    view.ready = ready;
    view.moved_by = moved_by;
    view.max_in_flight = route.config.max_in_flight;
    view.energy = s.energy[i];
    view.measured_joules = std::move(measured_joules);
    view.decided_on_measured = s.overlays[i].has_value();
    view.pue = s.accounting.pue;
    view.home = route.config.clusters.front();
    view.home_intensity = grids[view.home].latest ? grids[view.home].latest->gco2_per_kwh : -1;
    for (const size_t from : route.config.clusters) {
      for (const size_t to : route.config.clusters) {
        if (from == to) continue;
        std::atomic<uint64_t>* count =
            ledger_->Failovers(route.config.name, s.clusters[from].config.name, s.clusters[to].config.name);
        view.failover_counts.push_back({from, to, count});
      }
    }
    view.clusters = std::move(clusters);
    if (route.config.slo) {
      view.guard_caps = s.caps[i].cap;
      view.window_p99 = s.window_p99[i];
      view.max_in_flight.resize(route.config.pool->size(), 0);
      view.learned_limit.assign(route.config.pool->size(), false);
      for (size_t v = 0; v < view.max_in_flight.size(); ++v) {
        if (view.max_in_flight[v] > 0) continue;
        view.max_in_flight[v] = s.learned[i][v].limit.value_or(RouteView::kNotLearnedYet);
        view.learned_limit[v] = s.learned[i][v].limit.has_value();
      }
    }
    views.push_back(std::move(view));
  }
  snapshots_.Publish(std::make_shared<const RoutingSnapshot>(std::move(views), std::move(statuses),
                                                             AccountingStatus{s.accounting, started_}));
}

absl::StatusOr<std::shared_ptr<SelectionPublisher::State>> SelectionPublisher::MakeState(
    const SidecarConfig& given, telemetry::CarbonLedger& ledger, const ClusterConnector& connect) {
  const SidecarConfig config = WithClusters(given);
  auto state = std::make_shared<State>();
  state->readiness_interval = config.upstream.readiness_interval;
  state->accounting = config.accounting;
  state->stale_after = config.intensity.stale_after;
  for (const ClusterConfig& cluster : config.clusters) {
    auto provider = MakeProvider(cluster.intensity);
    if (!provider.ok()) {
      if (!config.clusters_listed) return provider.status();
      return absl::Status(provider.status().code(),
                          absl::StrCat("cluster '", cluster.name, "': ", provider.status().message()));
    }
    ClusterSource& c = state->clusters.emplace_back();
    c.config = cluster;
    c.upstream = connect ? connect(cluster) : std::make_shared<const UpstreamCluster>(cluster.name, cluster.target, nullptr);
    c.provider = *std::move(provider);
    c.in_flight = ledger.ClusterInFlight(cluster.name);
    c.window = selector::IntensityWindow(cluster.intensity.window);
    c.window.SetFixedBounds(cluster.intensity.fixed_bounds);
    const absl::Time now = c.provider->Now();
    auto history = c.provider->History(now - cluster.intensity.window, now);
    if (history.ok()) {
      for (const auto& r : *history) c.window.Add(r);
    } else {
      spdlog::warn("event=intensity_history_failed cluster={} provider={} error=\"{}\"", cluster.name,
                   c.provider->source(), ToStd(history.status().message()));
    }
    c.first_reading = c.provider->Latest();
    c.forecast = ReadForecast(*c.provider, cluster.intensity).value_or(std::vector<selector::IntensityReading>{});
    if (c.first_reading->ok()) {
      c.window.Add(**c.first_reading);
    } else {
      c.last_poll = c.first_reading->status();
    }
  }
  for (const RouteConfig& route : config.routes) {
    state->routes.push_back(std::make_shared<const CompiledRoute>(
        route, config.intensity.stale_after, ledger.Route(route.name, route.pool, route.baseline)));
    state->previous.emplace_back();
    state->ready.emplace_back(config.clusters.size(), route.pool->all_variants_mask());
    std::vector<telemetry::ClusterLedger*> cells;
    for (const ClusterConfig& cluster : config.clusters) cells.push_back(ledger.Cluster(route.name, cluster.name));
    state->cluster_ledgers.push_back(std::move(cells));
    state->load.emplace_back(route.pool->size());
    state->caps.push_back({std::vector<double>(route.pool->size(), 1.0), std::vector<bool>(route.pool->size(), false)});
    state->window_p99.emplace_back(route.pool->size());
    state->served_share.emplace_back(route.pool->size(), 0.0);
    state->learned.emplace_back(route.pool->size());
    state->limit_hits.emplace_back(route.pool->size(), 0);
    state->energy.push_back(MakeCalibrator(route, state->routes.back()->ledger));
    state->energy_published.emplace_back();
    state->overlays.emplace_back();
    state->ramps.emplace_back();
    state->chosen.emplace_back();
  }
  return state;
}

}  // namespace carbon::sidecar
