#pragma once

#include <memory>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "selector/snapshot_cell.h"
#include "sidecar/routing.h"

namespace carbon::sidecar {

// Response metadata keys the sidecar adds to routed calls.
inline constexpr char kModelHeader[] = "x-carbon-model";
inline constexpr char kRouteHeader[] = "x-carbon-route";
inline constexpr char kReasonHeader[] = "x-carbon-reason";
inline constexpr char kIntensityHeader[] = "x-carbon-intensity-gco2-per-kwh";
inline constexpr char kGramsHeader[] = "x-carbon-grams";
// Request metadata keys clients may set.
inline constexpr char kPinModelHeader[] = "x-carbon-pin-model";
inline constexpr char kMaxErrorHeader[] = "x-carbon-max-error-percent";

// Channel arguments for the upstream channel: message limits, no transparent retries (the client
// decides), and a short reconnect backoff so a restarted inference server is used again promptly.
grpc::ChannelArguments UpstreamChannelArguments(int max_message_bytes);

// Forwards every method it receives to the upstream channel. Model-named requests of the inference
// service whose name is a route are rewritten to the variant the current RoutingSnapshot selects;
// everything else passes through byte for byte: payload, metadata (but hop-by-hop and grpc-
// reserved keys), deadline, cancellation, status, status details and trailers.
// Thread-safe; one instance serves a whole server.
class InferenceProxy final : public grpc::CallbackGenericService {
 public:
  InferenceProxy(std::shared_ptr<grpc::Channel> upstream,
                 const selector::SnapshotCell<RoutingSnapshot>* routes);

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override;

 private:
  friend class UnaryProxyCall;
  friend class StreamingProxyCall;
  std::shared_ptr<grpc::Channel> channel_;
  grpc::GenericStub stub_;
  const selector::SnapshotCell<RoutingSnapshot>* routes_;
};

}  // namespace carbon::sidecar
