#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "telemetry/energy_calibrator.h"
#include "selector/intensity_window.h"
#include "selector/latency_guard.h"
#include "selector/policy_spec.h"
#include "selector/pool.h"
#include "telemetry/providers/provider_spec.h"

namespace carbon::sidecar {

// Certificates and keys for one side of the sidecar, read from PEM files. The files are re-read
// every `refresh_interval`, so rotated certificates take effect without a restart.
struct TlsConfig {
  std::string cert_file;  // this side's certificate chain (required on the listener)
  std::string key_file;   // its private key
  // Listener: the CA that client certificates must chain to; set, clients must present one (mTLS).
  // Upstream: the CA of the upstream's certificate; empty, the system's roots.
  std::string ca_file;
  std::string server_name;  // upstream only: the name to verify instead of the target's host
  absl::Duration refresh_interval = absl::Seconds(10);
  bool operator==(const TlsConfig&) const = default;
};

struct UpstreamConfig {
  std::string target;                          // host:port of the inference server
  int64_t max_message_bytes = 64 * 1024 * 1024;  // both directions, both sides of the sidecar
  // How often the variants' readiness is asked (ModelReady); zero: never, all count as ready.
  absl::Duration readiness_interval = absl::Seconds(10);
  std::optional<TlsConfig> tls;  // absent: plaintext (h2c)
};

// Where the grid's intensity comes from and how it is used.
struct IntensityConfig {
  // The provider and its options (docs/providers.md); read through the provider registry.
  std::shared_ptr<const telemetry::ProviderSpec> provider;
  absl::Duration refresh = absl::Minutes(5);
  // A failing provider is retried sooner than `refresh`, backing off exponentially up to this.
  absl::Duration max_backoff = absl::Minutes(5);
  absl::Duration stale_after = absl::Hours(2);
  absl::Duration window = absl::Hours(24);
  std::optional<selector::WindowBounds> fixed_bounds;
  // Widen the window with the provider's forecast for the next `forecast_horizon`.
  bool include_forecast = false;
  absl::Duration forecast_horizon = absl::Hours(24);

  std::string_view provider_kind() const { return provider ? provider->kind() : "none"; }
  std::string region() const { return provider ? provider->region : ""; }
};

// One inference cluster a route's calls can be sent to: where it is and the grid it runs on.
struct ClusterConfig {
  std::string name;
  std::string target;            // host:port of its inference server (or load balancer)
  std::optional<TlsConfig> tls;  // absent: plaintext (h2c)
  IntensityConfig intensity;     // its grid: its own `intensity:`, else the top-level one
  // The latency cost of sending a call there; absent: measured, as the round trip of the
  // sidecar's readiness questions.
  std::optional<absl::Duration> rtt;
  // The intensity it is ranked at while its own is stale; absent: after every cluster with a fresh
  // reading (and, when no cluster has one, the route's policy serves its default there).
  std::optional<double> stale_intensity;
  // The unary inference calls this sidecar may have in flight to it, all routes together; 0: no
  // limit. A route whose first cluster is full sends the call to its next one that can serve.
  int64_t max_in_flight = 0;
};

struct RouteConfig {
  std::string name;         // the model name clients send
  std::string pool_source;  // the pool file, or "inline"
  std::shared_ptr<const selector::Pool> pool;
  size_t baseline = 0;
  size_t default_variant = 0;
  absl::Duration min_dwell = absl::ZeroDuration();
  // The route's policy; null: the default (linear-interpolation).
  std::shared_ptr<const selector::PolicySpec> policy;
  // The policy in force: `policy`, or the default when none is set.
  const selector::PolicySpec& policy_spec() const { return policy ? *policy : *selector::DefaultPolicySpec(); }
  // Whether the first input's shape[0] counts inferences per request.
  bool batch_dimension = false;
  // Per variant (indexed like the pool), the unary inference calls it may have in flight from this
  // sidecar; 0: no limit. Empty: no variant has one.
  std::vector<int64_t> max_in_flight;
  // A change of the policy's decision moves the route's traffic over this long (0: at once).
  absl::Duration ramp = absl::ZeroDuration();
  // The route's latency objective; absent: no latency guard.
  std::optional<selector::LatencySlo> slo;
  // Where its energy per inference is learned from; no meter: the pool's table alone.
  telemetry::EnergyCalibration energy;
  // The clusters it may be served in (indices into SidecarConfig::clusters), the first its home:
  // the one its counterfactual "all served at home" is charged at. Default: every cluster.
  std::vector<size_t> clusters;
  // Clusters whose latency cost (rtt) exceeds this are not chosen while one within it can serve.
  std::optional<absl::Duration> latency_budget;
  // A unary inference call the chosen cluster fails with UNAVAILABLE before answering (unreachable,
  // reset, shutting down) is sent once to the next cluster in the route's order.
  bool failover = true;
};

// How the ledger's energy becomes carbon beyond the grid's intensity (docs/metrics.md, "Accounting").
struct AccountingConfig {
  // Power usage effectiveness of the facility: operational grams are E × PUE × I. 1.0: the devices'
  // energy alone (no facility overhead counted).
  double pue = 1.0;
  // The hardware's total embodied emissions (SCI's TE, from a life-cycle assessment), its expected
  // lifespan (EL) and the share of it this deployment reserves (RR/TR). The default is one server
  // without accelerators, 763.23 kg over six years: Tailpipe's published worked example of a
  // c6gd.metal (https://tailpipe.ai/methodology/embodied-emissions-methodology-example) and its
  // six-year lifespan (https://tailpipe.ai/methodology/lifespan). GPU servers embody more: set yours.
  double embodied_kg = 763.23;
  absl::Duration lifespan = absl::Hours(6 * 8760);
  double share = 1.0;
};

struct SidecarConfig {
  std::string path;  // the file it came from
  std::string listen = "0.0.0.0:8001";
  // The admin HTTP port (/metrics, /healthz, /readyz, /v1/selection, /v1/config). Loopback by
  // default: exposing it further is an explicit choice.
  std::string admin_listen = "127.0.0.1:9464";
  // The status page's history (/v1/history): one sample of every route this often, the last
  // `history_points` kept (default: two hours).
  absl::Duration history_interval = absl::Seconds(10);
  int64_t history_points = 720;
  std::optional<TlsConfig> tls;  // the client-facing listener; absent: plaintext (h2c)
  UpstreamConfig upstream;
  // Never empty: the `clusters:` listed, or one cluster named "default" made of `upstream.target`,
  // `upstream.tls` and the top-level `intensity`.
  std::vector<ClusterConfig> clusters;
  bool clusters_listed = false;
  absl::Duration drain_timeout = absl::Seconds(30);
  // grpc plane: what the gRPC listener's connections may hold in buffers together (a gRPC resource
  // quota). Past it, gRPC resets streams with RESOURCE_EXHAUSTED instead of reading on: gRPC 1.51
  // reads a message whole before checking max_message_bytes, so without a limit a client could
  // make the sidecar hold any amount. h2 plane: what calls hold past flow control. 0: no limit.
  int64_t memory_limit_bytes = int64_t{512} * 1024 * 1024;
  // How client calls are proxied: through gRPC C++'s generic service, message by message ("grpc"),
  // or as HTTP/2 streams, frame by frame (dataplane/h2_proxy.h, "h2").
  enum class DataPlane { kGrpc, kH2 };
  DataPlane data_plane = DataPlane::kGrpc;
  int64_t data_plane_threads = 0;  // the h2 plane's workers; 0: one per core
  // The h2 plane's HTTP/2 flow-control windows towards each peer (client and upstream): what one
  // stream, and one connection, may have in flight to the sidecar before it passes them on.
  int64_t data_plane_stream_window_bytes = 256 * 1024;
  int64_t data_plane_connection_window_bytes = 2 * 1024 * 1024;
  // Calls one h2-plane upstream connection carries before another is opened; 0: no limit.
  int64_t data_plane_upstream_max_concurrent_streams = 0;
  // An h2-plane upstream connection that has carried no call for this long is closed (Envoy's
  // upstream idle_timeout, whose default this is); zero: never.
  absl::Duration data_plane_upstream_idle_timeout = absl::Hours(1);
  IntensityConfig intensity;
  std::vector<RouteConfig> routes;
  AccountingConfig accounting;
};

// How a reload (SIGHUP) treats each setting, declared here beside the schema. Restart-only settings
// are built into the running process at start (the listeners, the upstream channel, the memory
// quota): a reload that changes one keeps the running value and says so. The others are applied.
// LoadConfig reads exactly the keys of these two lists (config_test checks that no key it accepts
// is missing from both), so a new key has to be placed in one of them.
inline constexpr std::string_view kReloadableKeys[] = {"accounting", "clusters", "drain_timeout", "intensity", "routes",
                                                       "upstream.readiness_interval"};
struct RestartOnlySetting {
  std::string_view key;
  bool (*same)(const SidecarConfig& a, const SidecarConfig& b);
  void (*keep)(const SidecarConfig& running, SidecarConfig* next);
};
extern const RestartOnlySetting kRestartOnlySettings[13];

std::string_view DataPlaneName(SidecarConfig::DataPlane plane);

// The config a reload puts in force: `next`, with every restart-only setting as `running` has it.
// `changed` receives the keys of the restart-only settings `next` would have changed.
SidecarConfig ConfigForReload(const SidecarConfig& running, const SidecarConfig& next,
                              std::vector<std::string>* changed);

// `config` with its clusters filled in as LoadConfig fills them: one cluster "default" of `upstream`
// and `intensity` when none are listed, and every cluster for a route that names none. For configs
// built in code.
SidecarConfig WithClusters(SidecarConfig config);

// Reads and validates a sidecar config. Every problem is INVALID_ARGUMENT with a message of the
// form "file:line:column: what is wrong", naming the pool file when the problem is in one.
// Relative paths in the config (pools, traces) are resolved against the config's directory.
absl::StatusOr<SidecarConfig> LoadConfig(const std::string& path);

// Reads a pool file: `variants:` with name, energy_mj and error_percent each.
absl::StatusOr<selector::Pool> LoadPoolFile(const std::string& path);

}  // namespace carbon::sidecar
