#pragma once

#include <array>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <grpcpp/support/slice.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "selector/intensity_window.h"
#include "selector/placement.h"
#include "selector/routing_policy.h"
#include "selector/weighted_draw.h"
#include "selector/snapshot_cell.h"
#include "sidecar/config.h"
#include "sidecar/upstream_cluster.h"
#include "telemetry/carbon_ledger.h"
#include "telemetry/energy_calibrator.h"
#include "telemetry/intensity_provider.h"
#include "telemetry/load_window.h"

namespace carbon::sidecar {

// A route as configured, with what the request path needs precomputed: one ready-made override
// slice per variant, so a rewrite allocates nothing. Immutable.
struct CompiledRoute {
  CompiledRoute(RouteConfig route_config, absl::Duration stale_after,
                std::shared_ptr<const telemetry::RouteLedger> route_ledger);

  RouteConfig config;
  std::unique_ptr<const selector::RoutingPolicy> policy;
  std::vector<grpc::Slice> overrides;  // indexed like the pool
  std::shared_ptr<const telemetry::RouteLedger> ledger;
};

// Why a route ranks a cluster where it does (selector/placement.h).
using ClusterRank = selector::PlaceRank;
inline std::string_view ClusterRankName(ClusterRank rank) { return selector::PlaceRankName(rank); }

// One cluster as a route sees it.
struct RouteCluster {
  size_t index = 0;  // into RoutingSnapshot::clusters()
  ClusterRank rank = ClusterRank::kCleanest;
  // The intensity calls served there are charged at (gCO2/kWh); negative: none known.
  double intensity = -1;
  // Where the calls served there are counted (kept by the CarbonLedger, valid for its life).
  telemetry::ClusterLedger* ledger = nullptr;
  // The cluster's max_in_flight (0: none) and its count of unary calls in flight, all routes.
  int64_t max_in_flight = 0;
  std::atomic<int64_t>* in_flight = nullptr;
};

// A route and what its policy currently decides for it.
struct RouteView {
  std::shared_ptr<const CompiledRoute> route;
  selector::Decision decision;
  // The policy's own weights when the latency guard changed them (`decision.weights` are then the
  // guarded ones, which the draw serves); empty otherwise.
  std::vector<selector::VariantWeight> policy_weights;
  // Per variant, the guard's cap on its share (empty without an SLO) and its windowed p99.
  std::vector<double> guard_caps;
  std::vector<std::optional<absl::Duration>> window_p99;
  // While a change of decision is being ramped in: how far (0 to 1).
  std::optional<double> ramp_progress;
  // Serves a decision of several variants, or one the guard or a ramp moved from the policy's
  // weights; null when one variant takes everything as the policy said.
  std::shared_ptr<const selector::WeightedDraw> draw;
  uint64_t ready = 0;  // variants the upstream can serve
  // Why the served weights differ from the policy's, when they do: the guard's caps (latency_slo)
  // or else a ramp.
  telemetry::SpillReason moved_by = telemetry::SpillReason::kRamp;
  // Per variant, the in-flight limit each call is checked against: the configured max_in_flight, or
  // on a route with an slo one learned from latency (kNotLearnedYet until the variant first goes
  // over); 0: not limited, and not counted on the shared counter. Empty: none at all.
  static constexpr int64_t kNotLearnedYet = std::numeric_limits<int64_t>::max();
  std::vector<int64_t> max_in_flight;
  std::vector<bool> learned_limit;  // per variant: whether max_in_flight was learned
  // The route's energy calibrator, when its `energy` names a meter (its report is read when asked).
  std::shared_ptr<const telemetry::EnergyCalibrator> energy;
  // Per variant, the energy per inference its calls are charged at when measured (the calibrator's
  // estimate, once certain enough); 0: the pool's table. Empty: all from the table.
  std::vector<double> measured_joules;
  double pue = 1;  // accounting.pue
  // Whether the policy decided on measured energies (for the variants that have one).
  bool decided_on_measured = false;
  // The clusters the route may use, best first: its calls go to the first, and a unary call the
  // first fails before answering goes to the second (when failover is on). Never empty.
  std::vector<RouteCluster> clusters;
  size_t home = 0;             // the route's home cluster (index into the snapshot's clusters)
  double home_intensity = -1;  // its intensity now; negative: unknown
  // Every (from, to) pair of the route's clusters with its count (snapshot indices), for /metrics.
  struct FailoverCount {
    size_t from, to;
    std::atomic<uint64_t>* count;
  };
  std::vector<FailoverCount> failover_counts;
  const RouteCluster& served_in() const { return clusters.front(); }

  // The measured energy per inference a call to `variant` is charged at; 0: the table's.
  double MeasuredJoules(size_t variant) const {
    return variant < measured_joules.size() ? measured_joules[variant] : 0;
  }
  // The energy per inference a call to `variant` is charged at, measured or the table's.
  double JoulesPerInference(size_t variant) const {
    const double m = MeasuredJoules(variant);
    return m > 0 ? m : pool()[variant].energy_mj / 1000;
  }
  // The ledger's reading of this route, with the accounting in force.
  telemetry::RouteReport Report() const { return telemetry::Report(*route->ledger, {pue, measured_joules}); }

  const selector::Pool& pool() const { return *route->config.pool; }
  // The share the policy itself gives `variant`, before any ramp or guard.
  double PolicyWeightOf(size_t variant) const;
  // The variant for the next request, and the one the policy's weights would have given it:
  // lock-free and allocation-free.
  selector::WeightedDraw::Pick Draw() const {
    return draw ? draw->NextPick() : selector::WeightedDraw::Pick{decision.primary, decision.primary};
  }
  // The limit a call to `variant` is checked against (see max_in_flight).
  int64_t InFlightLimit(size_t variant) const { return max_in_flight.empty() ? 0 : max_in_flight[variant]; }
};

// How the intensity source is doing: ok (fresh readings), failing (polls fail but the last reading is
// still fresh), stale (no reading younger than stale_after: routes use their default).
enum class SourceState { kOk, kFailing, kStale };
std::string_view SourceStateName(SourceState state);

// Counts that last across reloads.
struct SourceCounters {
  uint64_t fetch_successes = 0;
  uint64_t fetch_failures = 0;
  std::array<uint64_t, 3> entered{};  // times each SourceState was entered
  std::optional<absl::Time> last_success;  // wall clock
  SourceState state = SourceState::kStale;
};

// What the intensity source and the upstream looked like when a snapshot was made.
struct SourceStatus {
  std::string provider;  // intensity.provider
  std::string source;    // the provider that answered (the member of a fallback chain)
  std::string region;
  std::optional<selector::IntensityReading> latest;
  std::optional<selector::WindowBounds> window;
  absl::Time now;  // the provider's clock (simulated for a replayed trace)
  std::string last_error;  // of the last failed poll, if the last poll failed
  SourceCounters counters;
  // Whether the upstream answered the last readiness questions; nullopt when never asked.
  std::optional<bool> upstream_reachable;
};

// One cluster when a snapshot was made: its connection, its grid and its latency cost.
struct ClusterStatus {
  std::shared_ptr<const UpstreamCluster> upstream;
  SourceStatus source;
  std::optional<absl::Duration> rtt;  // configured, else measured; nullopt: not known yet
  bool rtt_configured = false;
  // The intensity the cluster is ranked at now; nullopt when stale with none assumed.
  std::optional<double> ranking_intensity;
  bool intensity_assumed = false;  // stale, ranked at its configured stale_intensity
  int64_t max_in_flight = 0;       // 0: none
  const std::atomic<int64_t>* in_flight = nullptr;  // counted only with a max_in_flight
};

// Everything the request path and the admin port read, swapped whole when intensity or config
// changes, so that no reader sees half an update. Immutable.
// The accounting in force when a snapshot was made.
struct AccountingStatus {
  AccountingConfig config;
  absl::Time started = absl::Now();  // the sidecar's start: its hardware is reserved from then
};

class RoutingSnapshot {
 public:
  explicit RoutingSnapshot(std::vector<RouteView> routes, std::vector<ClusterStatus> clusters = {},
                           AccountingStatus accounting = {});
  const AccountingStatus& accounting() const { return accounting_; }
  // In the config's order; the first takes the calls no route names. Never empty once published.
  const std::vector<ClusterStatus>& clusters() const { return clusters_; }
  // The first cluster's connection: where the calls no route names go.
  const std::shared_ptr<const UpstreamCluster>& default_upstream() const { return clusters_.front().upstream; }
  // The route a client's model name selects, or null for names the sidecar passes through.
  const RouteView* Find(std::string_view model_name) const;
  const std::vector<RouteView>& routes() const { return routes_; }
  // The first cluster's intensity source.
  const SourceStatus& source() const { return clusters_.front().source; }

 private:
  std::vector<RouteView> routes_;
  std::vector<ClusterStatus> clusters_;
  AccountingStatus accounting_;
  absl::flat_hash_map<std::string_view, size_t> by_name_;  // keys point into routes_
};

// Builds the configured provider; web providers refuse readings older than `stale_after`. Secrets
// are read here, so a reload picks up a rotated token.
absl::StatusOr<std::unique_ptr<telemetry::IntensityProvider>> MakeProvider(const IntensityConfig& config);

// Answers, per variant name, whether a cluster can serve it now (nullopt: cannot tell).
using ReadinessProbe =
    std::function<ReadinessAnswer(const UpstreamCluster& cluster, const std::vector<std::string>& names)>;
// Opens a cluster's connection; null: the publisher makes clusters without channels (tests).
using ClusterConnector = std::function<std::shared_ptr<const UpstreamCluster>(const ClusterConfig& cluster)>;

// Polls each cluster's intensity provider on a background thread at its `intensity.refresh`, and the
// variants' readiness in each cluster at `upstream.readiness_interval`, keeps each cluster's
// trailing window, ranks each route's clusters, runs the route's policy on the grid of the one
// ranked first and publishes a new RoutingSnapshot. The request path only reads snapshots, so a slow or failing
// provider or upstream never delays a request. Thread-safe.
class SelectionPublisher {
 public:
  // Without a readiness probe every variant counts as ready. `ledger` (which must outlive the
  // publisher) gives each route its counters; null: a ledger of the publisher's own.
  static absl::StatusOr<std::unique_ptr<SelectionPublisher>> Create(
      const SidecarConfig& config, ReadinessProbe readiness = nullptr,
      telemetry::CarbonLedger* ledger = nullptr, ClusterConnector connect = nullptr);
  ~SelectionPublisher();

  const selector::SnapshotCell<RoutingSnapshot>& snapshots() const { return snapshots_; }

  // Starts polling; the first poll has already happened in Create.
  void Start();
  void Stop();
  // Polls intensity (and readiness) once now and publishes.
  void RefreshNow();
  // Switches to a new config: new routes, provider and window (backfilled from the provider's
  // history). On error nothing changes.
  absl::Status Reload(const SidecarConfig& config);

 private:
  struct State;
  struct ClusterSource;
  struct ClusterAnswers;
  // What lasts of a cluster across reloads, by name.
  struct ClusterHealth {
    SourceCounters counters;
    int consecutive_failures = 0;
    std::optional<bool> reachable;  // answered the last readiness questions; nullopt: never asked
    std::optional<absl::Duration> measured_rtt;  // smoothed round trip of those answers
  };
  // Builds a state for `config` and fills it from the provider (history backfill and a first
  // reading): network I/O, done before any lock is taken.
  static absl::StatusOr<std::shared_ptr<State>> MakeState(const SidecarConfig& config,
                                                          telemetry::CarbonLedger& ledger,
                                                          const ClusterConnector& connect);
  SelectionPublisher(std::shared_ptr<State> state, ReadinessProbe readiness, ClusterConnector connect,
                     telemetry::CarbonLedger* ledger, std::unique_ptr<telemetry::CarbonLedger> own_ledger);
  void Run();
  static std::vector<std::optional<absl::StatusOr<selector::IntensityReading>>> FirstReadings(const State& s);
  // Polls without holding mu_ (a slow provider must not hold up reloads or readers), then applies
  // the result and publishes. Returns when the next intensity poll is due.
  // `poll_intensity` per cluster (empty: none); returns per cluster when its next poll is due.
  std::vector<absl::Duration> PollOnce(const std::vector<bool>& poll_intensity, bool ask_readiness,
                                       bool guard = false) ABSL_LOCKS_EXCLUDED(mu_);
  // Samples each guarded route's load over its SLO window and steps its caps.
  void StepGuards(State& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Keeps route `i`'s policy over its measured energies up to date (none without any).
  void UpdateOverlay(State& s, size_t i, const std::vector<double>& measured_joules) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Per cluster: a reading polled (or none) and the readiness answers (or none asked).
  void Apply(State& s, const std::vector<std::optional<absl::StatusOr<selector::IntensityReading>>>& readings,
             const std::vector<std::optional<ClusterAnswers>>& answers) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateSourceState(ClusterSource& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish(State& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration NextPollDelay(const ClusterSource& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool ShouldWake() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ReadinessProbe readiness_;
  const ClusterConnector connect_;
  std::unique_ptr<telemetry::CarbonLedger> own_ledger_;
  telemetry::CarbonLedger* const ledger_;
  // Serialises polls: a provider is used by one poll at a time.
  absl::Mutex poll_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  absl::Mutex mu_;
  std::shared_ptr<State> state_ ABSL_GUARDED_BY(mu_);
  const absl::Time started_ = absl::Now();
  absl::flat_hash_map<std::string, ClusterHealth> health_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t reloads_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t reloads_seen_ ABSL_GUARDED_BY(mu_) = 0;  // by the polling thread
  selector::SnapshotCell<RoutingSnapshot> snapshots_;
  std::thread thread_;
};

}  // namespace carbon::sidecar
