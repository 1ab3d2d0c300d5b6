#pragma once

#include <array>
#include <atomic>
#include <memory>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "selector/snapshot_cell.h"
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


// Forwards every method it receives to an upstream cluster: a routed call to its route's first
// cluster (failing over once to the next, see RequestRouter), any other to the first cluster. Model-named requests of the inference
// service whose name is a route are rewritten to the variant the current RoutingSnapshot selects;
// everything else passes through byte for byte: payload, metadata (but hop-by-hop and grpc-
// reserved keys), deadline, cancellation, status, status details and trailers.
// Thread-safe; one instance serves a whole server.
class InferenceProxy final : public grpc::CallbackGenericService {
 public:
  explicit InferenceProxy(const selector::SnapshotCell<RoutingSnapshot>* routes);
  // Only once the server serving it has shut down.
  ~InferenceProxy() override;

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override;

  const ProxyCounters& counters() const { return counters_; }

 private:
  friend class UnaryProxyCall;
  friend class StreamingProxyCall;
  const selector::SnapshotCell<RoutingSnapshot>* routes_;
  ProxyCounters counters_;
};

}  // namespace carbon::sidecar
