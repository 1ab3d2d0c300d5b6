#pragma once

#include <functional>
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
#include "selector/linear_interpolation_policy.h"
#include "selector/snapshot_cell.h"
#include "sidecar/config.h"
#include "telemetry/intensity_provider.h"

namespace carbon::sidecar {

// A route as configured, with what the request path needs precomputed: one ready-made override
// slice per variant, so a rewrite allocates nothing. Immutable.
struct CompiledRoute {
  CompiledRoute(RouteConfig route_config, absl::Duration stale_after);

  RouteConfig config;
  selector::LinearInterpolationPolicy policy;
  std::vector<grpc::Slice> overrides;  // indexed like the pool
};

// A route and what the policy currently selects for it.
struct RouteView {
  std::shared_ptr<const CompiledRoute> route;
  selector::Selection selection;
  uint64_t ready = 0;  // variants the upstream can serve

  const selector::Pool& pool() const { return *route->config.pool; }
};

// Everything the request path reads, swapped whole when intensity or config changes. Immutable.
class RoutingSnapshot {
 public:
  explicit RoutingSnapshot(std::vector<RouteView> routes);
  // The route a client's model name selects, or null for names the sidecar passes through.
  const RouteView* Find(std::string_view model_name) const;
  const std::vector<RouteView>& routes() const { return routes_; }

 private:
  std::vector<RouteView> routes_;
  absl::flat_hash_map<std::string_view, size_t> by_name_;  // keys point into routes_
};

// Builds the provider that `intensity.provider` names.
absl::StatusOr<std::unique_ptr<telemetry::IntensityProvider>> MakeProvider(const IntensityConfig& config);

// Answers, per variant name, whether the upstream can serve it now (nullopt: cannot tell).
using ReadinessProbe =
    std::function<std::vector<std::optional<bool>>(const std::vector<std::string>& names)>;

// Polls the intensity provider on a background thread at `intensity.refresh`, and the variants'
// readiness at `upstream.readiness_interval`, keeps the trailing window, runs each route's policy
// and publishes a new RoutingSnapshot. The request path only reads snapshots, so a slow or failing
// provider or upstream never delays a request. Thread-safe.
class SelectionPublisher {
 public:
  // Without a readiness probe every variant counts as ready.
  static absl::StatusOr<std::unique_ptr<SelectionPublisher>> Create(const SidecarConfig& config,
                                                                    ReadinessProbe readiness = nullptr);
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
  static absl::StatusOr<std::unique_ptr<State>> MakeState(const SidecarConfig& config);
  SelectionPublisher(std::unique_ptr<State> state, ReadinessProbe readiness);
  void Run();
  void PollAndPublish(bool poll_intensity, bool ask_readiness) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AskReadiness() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ReadinessProbe readiness_;
  absl::Mutex mu_;
  std::unique_ptr<State> state_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  selector::SnapshotCell<RoutingSnapshot> snapshots_;
  std::thread thread_;
};

}  // namespace carbon::sidecar
