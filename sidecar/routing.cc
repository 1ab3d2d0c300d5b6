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

RoutingSnapshot::RoutingSnapshot(std::vector<RouteView> routes, SourceStatus source, AccountingStatus accounting)
    : routes_(std::move(routes)), source_(std::move(source)), accounting_(std::move(accounting)) {
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

struct SelectionPublisher::State {
  IntensityConfig intensity;
  absl::Duration readiness_interval;
  std::unique_ptr<telemetry::IntensityProvider> provider;
  selector::IntensityWindow window{absl::Hours(24)};
  std::vector<std::shared_ptr<const CompiledRoute>> routes;
  std::vector<std::optional<selector::Decision>> previous;  // per route
  std::vector<uint64_t> ready;                                // per route
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
  AccountingConfig accounting;

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
  absl::Status last_poll;                                     // of the provider
  std::vector<selector::IntensityReading> forecast;           // include_forecast: what is coming
  std::optional<absl::StatusOr<selector::IntensityReading>> first_reading;  // from MakeState
};

absl::StatusOr<std::unique_ptr<SelectionPublisher>> SelectionPublisher::Create(
    const SidecarConfig& config, ReadinessProbe readiness, telemetry::CarbonLedger* ledger) {
  std::unique_ptr<telemetry::CarbonLedger> own_ledger;
  if (ledger == nullptr) {
    own_ledger = std::make_unique<telemetry::CarbonLedger>();
    ledger = own_ledger.get();
  }
  auto state = MakeState(config, *ledger);
  if (!state.ok()) return state.status();
  std::unique_ptr<SelectionPublisher> publisher(new SelectionPublisher(
      *std::move(state), std::move(readiness), ledger, std::move(own_ledger)));
  publisher->PollOnce(/*poll_intensity=*/false, /*ask_readiness=*/true);
  return publisher;
}

SelectionPublisher::SelectionPublisher(std::shared_ptr<State> state, ReadinessProbe readiness,
                                       telemetry::CarbonLedger* ledger,
                                       std::unique_ptr<telemetry::CarbonLedger> own_ledger)
    : readiness_(std::move(readiness)),
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

void SelectionPublisher::RefreshNow() { PollOnce(/*poll_intensity=*/true, /*ask_readiness=*/true); }

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
  absl::Time next_poll, next_ask, next_guard, next_energy;
  {
    absl::MutexLock lock(&mu_);
    next_poll = absl::Now() + NextPollDelay(*state_, state_->last_poll);
    next_ask = absl::Now() + state_->readiness_interval;
    next_guard = absl::Now() + GuardInterval(state_->routes).value_or(absl::ZeroDuration());
    next_energy = absl::Now() + state_->EnergyInterval().value_or(absl::ZeroDuration());
  }
  while (true) {
    bool poll, ask, guard;
    {
      absl::MutexLock lock(&mu_);
      const bool asks = readiness_ && state_->readiness_interval > absl::ZeroDuration();
      const std::optional<absl::Duration> guard_interval = GuardInterval(state_->routes);
      const std::optional<absl::Duration> energy_interval = state_->EnergyInterval();
      absl::Time wake = next_poll;
      if (asks) wake = std::min(wake, next_ask);
      if (guard_interval) wake = std::min(wake, next_guard);
      if (energy_interval) wake = std::min(wake, next_energy);
      // Waits for the next poll, question or guard step, waking early to stop or after a reload
      // (whose new intervals then apply; the reload itself has just read the provider).
      mu_.AwaitWithDeadline(absl::Condition(this, &SelectionPublisher::ShouldWake), wake);
      if (stopping_) return;
      const absl::Time now = absl::Now();
      if (reloads_ != reloads_seen_) {
        reloads_seen_ = reloads_;
        next_poll = now + NextPollDelay(*state_, state_->last_poll);
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
      poll = now >= next_poll;
      ask = asks && now >= next_ask;
      guard = guard_interval && now >= next_guard;
      if (ask) next_ask = now + state_->readiness_interval;
      if (guard) next_guard = now + *guard_interval;
      if (!poll && !ask && !guard) continue;
    }
    const absl::Duration delay = PollOnce(poll, ask, guard);
    if (poll) next_poll = absl::Now() + delay;
  }
}

absl::Status SelectionPublisher::Reload(const SidecarConfig& config) {
  auto state = MakeState(config, *ledger_);  // provider I/O, no lock held
  if (!state.ok()) return state.status();
  {
    absl::MutexLock lock(&mu_);
    // Routes that survive a reload keep, by variant name, their previous decision (so dwell carries
    // over) and what the upstream said of each variant: a pool whose variants were renamed or
    // re-sorted (new energies change the order) must not hold them on the wrong model.
    for (size_t i = 0; i < (*state)->routes.size(); ++i) {
      for (size_t j = 0; j < state_->routes.size(); ++j) {
        if (state_->routes[j]->config.name != (*state)->routes[i]->config.name) continue;
        const selector::Pool& before = *state_->routes[j]->config.pool;
        const selector::Pool& after = *(*state)->routes[i]->config.pool;
        (*state)->ready[i] = CarryReady(before, state_->ready[j], after);
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
    Apply(**state, (*state)->first_reading, {});
  }
  // New routes or pools: ask the upstream about their variants now rather than at the next tick.
  PollOnce(/*poll_intensity=*/false, /*ask_readiness=*/true);
  return absl::OkStatus();
}

absl::Duration SelectionPublisher::PollOnce(bool poll_intensity, bool ask_readiness, bool guard) {
  absl::MutexLock poll_lock(&poll_mu_);
  std::shared_ptr<State> s;
  {
    absl::MutexLock lock(&mu_);
    s = state_;
  }
  std::optional<absl::StatusOr<selector::IntensityReading>> reading;
  std::optional<std::vector<selector::IntensityReading>> forecast;
  if (poll_intensity) {
    reading = s->provider->Latest();
    forecast = ReadForecast(*s->provider, s->intensity);
  }
  std::vector<std::vector<std::optional<bool>>> answers;
  if (ask_readiness && readiness_ && s->readiness_interval > absl::ZeroDuration()) {
    for (const auto& route : s->routes) {
      std::vector<std::string> names;
      for (const auto& v : route->config.pool->variants()) names.push_back(v.name);
      answers.push_back(readiness_(names));
    }
  }
  absl::MutexLock lock(&mu_);
  // A reload replaced the state meanwhile; it has published for itself, and these answers
  // belong to routes that are gone.
  if (state_ != s) return NextPollDelay(*state_, state_->last_poll);
  if (forecast) s->forecast = *std::move(forecast);  // a failed forecast keeps the last one
  if (guard) StepGuards(*s);
  Apply(*s, reading, answers);
  return NextPollDelay(*s, s->last_poll);
}

void SelectionPublisher::Apply(State& s, const std::optional<absl::StatusOr<selector::IntensityReading>>& reading,
                               const std::vector<std::vector<std::optional<bool>>>& answers) {
  bool answered = false;
  for (size_t i = 0; i < answers.size() && i < s.routes.size(); ++i) {
    const CompiledRoute& route = *s.routes[i];
    const selector::Pool& pool = *route.config.pool;
    uint64_t ready = s.ready[i];
    for (size_t v = 0; v < answers[i].size() && v < pool.size(); ++v) {
      if (!answers[i][v]) continue;  // no answer: what was known stands
      answered = true;
      const uint64_t bit = uint64_t{1} << v;
      ready = *answers[i][v] ? (ready | bit) : (ready & ~bit);
      if ((ready & bit) != (s.ready[i] & bit)) {
        spdlog::info("event=variant_readiness route={} model={} ready={}", route.config.name, pool[v].name,
                     (ready & bit) != 0);
      }
    }
    s.ready[i] = ready;
  }
  // Reachable when any question of this round got an answer; unchanged when none was asked.
  if (!answers.empty()) upstream_reachable_ = answered;
  if (reading) {
    if (reading->ok()) {
      ++counters_.fetch_successes;
      counters_.last_success = absl::Now();
      consecutive_failures_ = 0;
      s.window.Add(**reading);
      s.last_poll = absl::OkStatus();
    } else {
      ++counters_.fetch_failures;
      ++consecutive_failures_;
      // A new kind of failure is worth a warning even when the state does not change (a provider
      // that never answered stays stale); the same failure again only at debug level.
      const auto level = reading->status() == s.last_poll ? spdlog::level::debug : spdlog::level::warn;
      spdlog::log(level, "event=intensity_poll_failed provider={} consecutive={} error=\"{}\"", s.provider->source(),
                  consecutive_failures_, ToStd(reading->status().message()));
      s.last_poll = reading->status();
    }
  }
  UpdateSourceState(s);
  Publish(s);
}

void SelectionPublisher::UpdateSourceState(State& s) {
  const absl::Time now = s.provider->Now();
  const std::optional<selector::IntensityReading> latest = s.window.latest();
  SourceState next = SourceState::kOk;
  if (!latest || now - latest->at > s.intensity.stale_after) {
    next = SourceState::kStale;
  } else if (!s.last_poll.ok()) {
    next = SourceState::kFailing;
  }
  if (next == counters_.state) return;
  // Logged once per change, not once per poll.
  const auto log = next == SourceState::kOk ? spdlog::level::info : spdlog::level::warn;
  spdlog::log(log, "event=intensity_state provider={} from={} to={} error=\"{}\"", s.provider->source(),
              SourceStateName(counters_.state), SourceStateName(next), ToStd(s.last_poll.message()));
  counters_.state = next;
  ++counters_.entered[static_cast<size_t>(next)];
}

absl::Duration SelectionPublisher::NextPollDelay(const State& s, const absl::Status& last) {
  if (last.ok()) return Jittered(s.intensity.refresh);
  // Retry sooner than the refresh while failing, doubling from a few seconds up to max_backoff,
  // and never before the service's Retry-After.
  const absl::Duration first = std::min(s.intensity.refresh, absl::Seconds(5));
  const int doublings = std::clamp(consecutive_failures_ - 1, 0, 20);
  absl::Duration delay = std::min(s.intensity.max_backoff, first * (int64_t{1} << doublings));
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
      {route.config.default_variant, s.intensity.stale_after, route.config.min_dwell});
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

void SelectionPublisher::Publish(State& s) {
  const absl::Time now = s.provider->Now();
  std::optional<selector::WindowBounds> bounds = s.window.Bounds(now);
  if (!s.intensity.fixed_bounds) {
    // docs/design.md §1: the trailing window, widened by what the forecast says is coming.
    bounds = selector::Widened(bounds, ForecastBounds(s.forecast));
  }
  // The part of the forecast still ahead.
  const auto ahead = std::lower_bound(s.forecast.begin(), s.forecast.end(), now,
                                      [](const selector::IntensityReading& r, absl::Time t) { return r.at < t; });
  const std::span<const selector::IntensityReading> forecast(ahead, s.forecast.end());
  std::vector<RouteView> views;
  for (size_t i = 0; i < s.routes.size(); ++i) {
    const CompiledRoute& route = *s.routes[i];
    const uint64_t ready = s.ready[i];
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
    const selector::PolicyInputs inputs{s.window.latest(), bounds, now, ready, s.previous[i] ? &*s.previous[i] : nullptr,
                                        Served(*route.ledger, {s.accounting.pue, measured_joules}), forecast};
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
  SourceStatus source{std::string(s.intensity.provider_kind()),
                      std::string(s.provider->source()),
                      s.intensity.region(),
                      s.window.latest(),
                      bounds,
                      now,
                      s.last_poll.ok() ? "" : std::string(s.last_poll.message()),
                      counters_,
                      upstream_reachable_};
  snapshots_.Publish(std::make_shared<const RoutingSnapshot>(std::move(views), std::move(source),
                                                             AccountingStatus{s.accounting, started_}));
}

absl::StatusOr<std::shared_ptr<SelectionPublisher::State>> SelectionPublisher::MakeState(
    const SidecarConfig& config, telemetry::CarbonLedger& ledger) {
  auto provider = MakeProvider(config.intensity);
  if (!provider.ok()) return provider.status();
  auto state = std::make_shared<State>();
  state->intensity = config.intensity;
  state->readiness_interval = config.upstream.readiness_interval;
  state->accounting = config.accounting;
  state->provider = *std::move(provider);
  state->window = selector::IntensityWindow(config.intensity.window);
  state->window.SetFixedBounds(config.intensity.fixed_bounds);
  const absl::Time now = state->provider->Now();
  auto history = state->provider->History(now - config.intensity.window, now);
  if (history.ok()) {
    for (const auto& r : *history) state->window.Add(r);
  } else {
    spdlog::warn("event=intensity_history_failed provider={} error=\"{}\"", state->provider->source(),
                 ToStd(history.status().message()));
  }
  state->first_reading = state->provider->Latest();
  state->forecast = ReadForecast(*state->provider, config.intensity).value_or(std::vector<selector::IntensityReading>{});
  if (state->first_reading->ok()) {
    state->window.Add(**state->first_reading);
  } else {
    state->last_poll = state->first_reading->status();
  }
  for (const RouteConfig& route : config.routes) {
    state->routes.push_back(std::make_shared<const CompiledRoute>(
        route, config.intensity.stale_after, ledger.Route(route.name, route.pool, route.baseline)));
    state->previous.emplace_back();
    state->ready.push_back(route.pool->all_variants_mask());
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
  }
  return state;
}

}  // namespace carbon::sidecar
