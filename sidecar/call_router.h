#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include <grpcpp/support/slice.h>
#include <grpcpp/support/status.h>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "selector/snapshot_cell.h"
#include "sidecar/request_wire.h"
#include "sidecar/routing.h"
#include "telemetry/carbon_ledger.h"

namespace carbon::sidecar {

// Response metadata keys the sidecar adds to routed calls.
inline constexpr char kModelHeader[] = "x-carbon-model";
inline constexpr char kRouteHeader[] = "x-carbon-route";
inline constexpr char kReasonHeader[] = "x-carbon-reason";
inline constexpr char kIntensityHeader[] = "x-carbon-intensity-gco2-per-kwh";
inline constexpr char kGramsHeader[] = "x-carbon-grams";
// The cluster that served the call, on routes with more than one.
inline constexpr char kClusterHeader[] = "x-carbon-cluster";
// The reason of a call its route's first cluster failed and the next one served.
inline constexpr char kFailoverReason[] = "failover";
// The reason of a call its route's first cluster had no room for (max_in_flight) and the next took.
inline constexpr char kClusterCapacityReason[] = "cluster_capacity";
// Request metadata keys clients may set.
inline constexpr char kPinModelHeader[] = "x-carbon-pin-model";
inline constexpr char kMaxErrorHeader[] = "x-carbon-max-error-percent";

// What the proxy counts outside the carbon ledger. Thread-safe.
struct ProxyCounters {
  // Calls other than routed inferences, by final gRPC code.
  std::array<std::atomic<uint64_t>, telemetry::kGrpcCodes> passthrough{};
  std::atomic<uint64_t> malformed{0};     // request bytes that are not a valid message
  std::atomic<uint64_t> bad_controls{0};  // bad x-carbon-pin-model / x-carbon-max-error-percent

  void CountPassthrough(grpc::StatusCode code) {
    passthrough[telemetry::GrpcCodeIndex(static_cast<int>(code))].fetch_add(1, std::memory_order_relaxed);
  }
};

// How a method's messages are treated; the same on every data plane.
enum class MethodKind {
  kOpaqueUnary,   // a known unary method that names no model: forwarded as is
  kOpaqueStream,  // anything unknown: forwarded as a bidi stream, whatever its real shape
  kInfer,         // ModelInfer
  kStreamInfer,   // ModelStreamInfer: every request message is routed
  kModelQuery,    // ModelMetadata, ModelReady, ModelConfig, ModelStatistics
};
MethodKind ClassifyMethod(std::string_view path);
// Whether the messages of a method of this kind name a model the sidecar may route.
inline bool NamesModels(MethodKind kind) {
  return kind == MethodKind::kInfer || kind == MethodKind::kStreamInfer || kind == MethodKind::kModelQuery;
}

// Decides and applies the variant for the model-named messages of one call, counts it in and out
// of the in-flight limits, charges the ledger when it ends, and remembers the first decision for
// the response headers. Knows nothing of how the bytes travel: both data planes use it. One per
// call; not thread-safe (a call's messages are routed one at a time).
class CallRouter {
 public:
  CallRouter(const selector::SnapshotCell<RoutingSnapshot>* routes, ProxyCounters* counters, MethodKind kind)
      : routes_(routes), counters_(counters), kind_(kind) {}

  // Reads one request header; the per-request controls (docs/design.md §3) among them are
  // remembered for Route. A bad value is reported by the next Route.
  void ReadHeader(std::string_view key, std::string_view value);

  // Decides the variant of a message that names `scanned.model_name`. When it names a route,
  // `*override_bytes` is what to append to the message (see EncodeModelOverride); otherwise null.
  // Errors (INVALID_ARGUMENT, RESOURCE_EXHAUSTED) mean the message must not be forwarded.
  absl::Status Route(const ScannedRequest& scanned, const grpc::Slice** override_bytes);
  // Counts a message whose bytes are not a valid request.
  void CountMalformed() { counters_->malformed.fetch_add(1, std::memory_order_relaxed); }

  // The cluster the call goes to, chosen once: the route's for a routed call, else the snapshot's
  // first cluster. The call holds the snapshot that holds it (a routed call already does), so a
  // cluster a reload removes lives until its last call ends, at no extra reference count per call.
  const UpstreamCluster& Upstream();

  // Whether a unary inference call that ended with `code`, nothing answered, may be sent on to the
  // route's next cluster: once, when the route allows it and that cluster looked able to serve.
  bool MayFailOver(grpc::StatusCode code) const;
  // Moves the call to the route's next cluster and counts the move; the charge follows.
  const UpstreamCluster& FailOver();

  // Whether the call carried routed inferences, which the ledger charges (model metadata and
  // readiness queries are routed too, but are not inferences).
  bool routed() const {
    return (kind_ == MethodKind::kInfer || kind_ == MethodKind::kStreamInfer) &&
           (first_.has_value() || !more_charges_.empty());
  }
  // Charges the ledger for the routed messages of a call that ended with `code` (served when OK,
  // failed with that code otherwise) or, for any other call, counts it as passed through.
  // `seconds` is the call's duration (unary calls only).
  void Finish(grpc::StatusCode code, std::optional<double> seconds);

  // The x-carbon-* response headers of the call's first routed message, if any.
  void ForEachTag(absl::FunctionRef<void(std::string_view key, std::string_view value)> add) const;

 private:
  bool EnterCluster(const RouteCluster& rc);
  bool StartCall(const RouteView& route, size_t variant);
  void RecordRefused(const RouteView& route, size_t variant) const;

  // What to charge for routed messages once the call's outcome is known. Ledger cells live as
  // long as the server.
  struct Charge {
    telemetry::VariantLedger* cell;
    telemetry::ClusterLedger* cluster;
    double intensity;  // gCO2/kWh in force where served; negative: none known
    double home_intensity;  // the route's home cluster's then; negative: none known
    uint64_t requests;
    uint64_t items;
    double measured_joules;  // per inference when measured; 0: the table's
    double joules_per_item;  // what it is charged at: measured, else the table's
  };

  struct RequestControls {
    std::string_view pin;  // points into the call's headers, which outlive the router
    std::optional<double> max_error_percent;
    absl::Status error;  // of a bad control value
  };

  // Where a unary inference call is counted in flight, until Finish.
  std::optional<telemetry::VariantLedger::CallTicket> started_;

  struct Decision {
    std::shared_ptr<const RoutingSnapshot> snapshot;  // keeps `route` alive
    const RouteView* route = nullptr;
    size_t variant = 0;
    std::string_view reason;
    int64_t items = 1;
    Charge charge;
    size_t cluster_pos = 0;  // in route->clusters: where the call is sent
  };

  const selector::SnapshotCell<RoutingSnapshot>* routes_;
  ProxyCounters* counters_;
  MethodKind kind_;
  const UpstreamCluster* upstream_ = nullptr;
  std::shared_ptr<const RoutingSnapshot> passthrough_snapshot_;  // keeps upstream_ alive when not routed
  bool failed_over_ = false;
  std::atomic<int64_t>* cluster_ticket_ = nullptr;  // the cluster count the call is in, until Finish
  RequestControls controls_;
  bool decided_first_ = false;
  std::optional<Decision> first_;
  std::vector<Charge> more_charges_;  // streams only
};

}  // namespace carbon::sidecar
