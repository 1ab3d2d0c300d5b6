#pragma once

#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sidecar/config.h"
#include "sidecar/proxy.h"
#include "sidecar/readiness.h"
#include "sidecar/routing.h"

namespace carbon::sidecar {

// The running sidecar: the gRPC listener with the proxy, grpc.health.v1 and reflection, the
// upstream channel, and the selection publisher. Thread-safe.
class SidecarServer {
 public:
  // Binds `config.listen` (port 0 picks a free port) and starts serving and polling.
  static absl::StatusOr<std::unique_ptr<SidecarServer>> Start(const SidecarConfig& config);
  ~SidecarServer();

  int port() const { return port_; }
  // The drain timeout of the config in force (reloads change it).
  absl::Duration drain_timeout() const { return config_.drain_timeout; }
  SelectionPublisher& publisher() { return *publisher_; }

  // Applies a new config's routes and intensity settings. Changing `listen`, `upstream` or the
  // message limit needs a restart: such changes are reported and the old values kept.
  absl::Status Reload(const SidecarConfig& config);

  // Stops accepting calls, lets in-flight calls finish for up to `drain`, cancels the rest.
  void Shutdown(absl::Duration drain);

 private:
  SidecarServer() = default;

  SidecarConfig config_;
  std::unique_ptr<UpstreamReadiness> readiness_;
  std::unique_ptr<SelectionPublisher> publisher_;
  std::unique_ptr<InferenceProxy> proxy_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace carbon::sidecar
