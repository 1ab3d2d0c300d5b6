#pragma once

#include <array>
#include <atomic>
#include <memory>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "selector/snapshot_cell.h"
#include "sidecar/call_router.h"
#include "sidecar/routing.h"
#include "telemetry/carbon_ledger.h"

namespace carbon::sidecar {

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
