#include "sidecar/routing.h"

#include "absl/strings/str_cat.h"
#include "common/string_view_compat.h"
#include "sidecar/request_wire.h"
#include "spdlog/spdlog.h"
#include "telemetry/static_provider.h"
#include "telemetry/trace_provider.h"

namespace carbon::sidecar {

CompiledRoute::CompiledRoute(RouteConfig route_config, absl::Duration stale_after,
                             std::shared_ptr<const telemetry::RouteLedger> route_ledger)
    : config(std::move(route_config)),
      policy(*config.pool,
             selector::PolicySettings{config.default_variant, stale_after, config.min_dwell}),
      ledger(std::move(route_ledger)) {
  for (const auto& v : config.pool->variants()) {
    const std::string bytes = EncodeModelOverride(v.name);
    overrides.emplace_back(bytes.data(), bytes.size());
  }
}

RoutingSnapshot::RoutingSnapshot(std::vector<RouteView> routes, SourceStatus source)
    : routes_(std::move(routes)), source_(std::move(source)) {
  for (size_t i = 0; i < routes_.size(); ++i) by_name_[routes_[i].route->config.name] = i;
}

const RouteView* RoutingSnapshot::Find(std::string_view model_name) const {
  auto it = by_name_.find(model_name);
  return it == by_name_.end() ? nullptr : &routes_[it->second];
}

absl::StatusOr<std::unique_ptr<telemetry::IntensityProvider>> MakeProvider(
    const IntensityConfig& config) {
  if (config.provider == "static") {
    return std::make_unique<telemetry::StaticProvider>(config.gco2_per_kwh);
  }
  if (config.provider == "trace") {
    auto readings = telemetry::LoadIntensityTrace(
        config.trace_path, {config.trace_time_column, config.trace_value_column});
    if (!readings.ok()) return readings.status();
    auto trace = telemetry::TraceProvider::Create(*std::move(readings), config.trace_speedup,
                                                  config.trace_loop, config.trace_start);
    if (!trace.ok()) return trace.status();
    return std::unique_ptr<telemetry::IntensityProvider>(*std::move(trace));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown intensity provider '", config.provider, "'"));
}

struct SelectionPublisher::State {
  IntensityConfig intensity;
  absl::Duration readiness_interval;
  std::unique_ptr<telemetry::IntensityProvider> provider;
  selector::IntensityWindow window;
  std::vector<std::shared_ptr<const CompiledRoute>> routes;
  std::vector<std::optional<selector::Selection>> previous;  // per route
  std::vector<uint64_t> ready;                                // per route
  bool provider_failing = false;
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
  publisher->RefreshNow();
  return publisher;
}

SelectionPublisher::SelectionPublisher(std::unique_ptr<State> state, ReadinessProbe readiness,
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
  thread_ = std::thread([this] { Run(); });
}

void SelectionPublisher::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void SelectionPublisher::RefreshNow() {
  absl::MutexLock lock(&mu_);
  PollAndPublish(/*poll_intensity=*/true, /*ask_readiness=*/true);
}

bool SelectionPublisher::ShouldWake() const {
  return stopping_ || reloads_ != reloads_seen_;
}

void SelectionPublisher::Run() {
  absl::MutexLock lock(&mu_);
  absl::Time next_poll = absl::Now() + state_->intensity.refresh;
  absl::Time next_ask = absl::Now() + state_->readiness_interval;
  while (!stopping_) {
    const bool asks = readiness_ && state_->readiness_interval > absl::ZeroDuration();
    // Waits for the next poll or question, waking early to stop or after a reload (whose new
    // intervals then apply; the reload itself has just polled).
    mu_.AwaitWithDeadline(absl::Condition(this, &SelectionPublisher::ShouldWake),
                          asks ? std::min(next_poll, next_ask) : next_poll);
    if (stopping_) break;
    const absl::Time now = absl::Now();
    if (reloads_ != reloads_seen_) {
      reloads_seen_ = reloads_;
      next_poll = now + state_->intensity.refresh;
      next_ask = now + state_->readiness_interval;
      continue;
    }
    const bool poll = now >= next_poll;
    const bool ask = asks && now >= next_ask;
    if (poll) next_poll = now + state_->intensity.refresh;
    if (ask) next_ask = now + state_->readiness_interval;
    PollAndPublish(poll, ask);
  }
}

absl::Status SelectionPublisher::Reload(const SidecarConfig& config) {
  auto state = MakeState(config, *ledger_);
  if (!state.ok()) return state.status();
  absl::MutexLock lock(&mu_);
  // Routes that survive a reload keep their previous selection, so dwell carries over.
  for (size_t i = 0; i < (*state)->routes.size(); ++i) {
    for (size_t j = 0; j < state_->routes.size(); ++j) {
      if (state_->routes[j]->config.name == (*state)->routes[i]->config.name &&
          state_->routes[j]->config.pool->variants().size() ==
              (*state)->routes[i]->config.pool->variants().size()) {
        (*state)->previous[i] = state_->previous[j];
      }
    }
  }
  state_ = *std::move(state);
  ++reloads_;
  PollAndPublish(/*poll_intensity=*/true, /*ask_readiness=*/true);
  return absl::OkStatus();
}

void SelectionPublisher::AskReadiness() {
  State& s = *state_;
  for (size_t i = 0; i < s.routes.size(); ++i) {
    const CompiledRoute& route = *s.routes[i];
    const selector::Pool& pool = *route.config.pool;
    std::vector<std::string> names;
    for (const auto& v : pool.variants()) names.push_back(v.name);
    const std::vector<std::optional<bool>> answers = readiness_(names);
    upstream_reachable_ = false;
    for (const auto& a : answers) {
      if (a) upstream_reachable_ = true;
    }
    uint64_t ready = s.ready[i];
    for (size_t v = 0; v < answers.size() && v < names.size(); ++v) {
      if (!answers[v]) continue;  // no answer: what was known stands
      const uint64_t bit = uint64_t{1} << v;
      ready = *answers[v] ? (ready | bit) : (ready & ~bit);
    }
    for (size_t v = 0; v < names.size(); ++v) {
      const uint64_t bit = uint64_t{1} << v;
      if ((ready & bit) != (s.ready[i] & bit)) {
        spdlog::info("event=variant_readiness route={} model={} ready={}", route.config.name, names[v],
                     (ready & bit) != 0);
      }
    }
    s.ready[i] = ready;
  }
}

void SelectionPublisher::PollAndPublish(bool poll_intensity, bool ask_readiness) {
  State& s = *state_;
  if (ask_readiness && readiness_ && s.readiness_interval > absl::ZeroDuration()) AskReadiness();
  if (poll_intensity) {
    auto reading = s.provider->Latest();
    if (reading.ok()) {
      ++fetch_successes_;
      last_success_ = absl::Now();
      s.window.Add(*reading);
      if (s.provider_failing) spdlog::info("event=intensity_recovered provider={}", s.provider->kind());
      s.provider_failing = false;
    } else {
      ++fetch_failures_;
      if (!s.provider_failing) {
        spdlog::warn("event=intensity_failing provider={} error=\"{}\"", s.provider->kind(),
                     ToStd(reading.status().message()));
        s.provider_failing = true;
      }
    }
  }
  const absl::Time now = s.provider->Now();
  const std::optional<selector::WindowBounds> bounds = s.window.Bounds(now);
  std::vector<RouteView> views;
  for (size_t i = 0; i < s.routes.size(); ++i) {
    const CompiledRoute& route = *s.routes[i];
    const uint64_t ready = s.ready[i];
    selector::Selection sel =
        route.policy.Select(s.window.latest(), bounds, now, ready, s.previous[i] ? &*s.previous[i] : nullptr);
    if (!s.previous[i] || s.previous[i]->variant != sel.variant || s.previous[i]->reason != sel.reason) {
      const auto& pool = *route.config.pool;
      spdlog::info(
          "event=selection route={} model={} previous={} reason={} intensity_gco2_per_kwh={} "
          "window_low={} window_high={} t={}",
          route.config.name, pool[sel.variant].name,
          s.previous[i] ? pool[s.previous[i]->variant].name : "none",
          selector::SelectionReasonName(sel.reason),
          sel.intensity ? absl::StrCat(sel.intensity->gco2_per_kwh) : "none",
          sel.bounds ? absl::StrCat(sel.bounds->low) : "none",
          sel.bounds ? absl::StrCat(sel.bounds->high) : "none",
          sel.t ? absl::StrCat(*sel.t) : "none");
    }
    s.previous[i] = sel;
    views.push_back(RouteView{s.routes[i], sel, ready});
  }
  SourceStatus source{std::string(s.provider->kind()), s.intensity.region, s.window.latest(), bounds, now,
                      s.provider_failing, fetch_successes_, fetch_failures_, last_success_,
                      upstream_reachable_};
  snapshots_.Publish(std::make_shared<const RoutingSnapshot>(std::move(views), std::move(source)));
}

absl::StatusOr<std::unique_ptr<SelectionPublisher::State>> SelectionPublisher::MakeState(
    const SidecarConfig& config, telemetry::CarbonLedger& ledger) {
  auto provider = MakeProvider(config.intensity);
  if (!provider.ok()) return provider.status();
  auto state = std::unique_ptr<State>(new State{
      config.intensity, config.upstream.readiness_interval, *std::move(provider),
      selector::IntensityWindow(config.intensity.window), {}, {}, {}, false});
  state->window.SetFixedBounds(config.intensity.fixed_bounds);
  const absl::Time now = state->provider->Now();
  auto history = state->provider->History(now - config.intensity.window, now);
  if (history.ok()) {
    for (const auto& r : *history) state->window.Add(r);
  } else {
    spdlog::warn("event=intensity_history_failed provider={} error=\"{}\"", state->provider->kind(),
                 ToStd(history.status().message()));
  }
  for (const RouteConfig& route : config.routes) {
    state->routes.push_back(std::make_shared<const CompiledRoute>(
        route, config.intensity.stale_after, ledger.Route(route.name, route.pool, route.baseline)));
    state->previous.emplace_back();
    state->ready.push_back(route.pool->all_variants_mask());
  }
  return state;
}

}  // namespace carbon::sidecar
