#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sidecar/config.h"
#include "dataplane/h2_proxy.h"
#include "sidecar/h2_calls.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "sidecar/admin_endpoints.h"
#include "sidecar/proxy.h"
#include "sidecar/readiness.h"
#include "sidecar/routing.h"
#include "sidecar/status_history.h"
#include "sidecar/status_page.h"
#include "telemetry/admin_server.h"
#include "telemetry/carbon_ledger.h"

namespace carbon::sidecar {

// The running sidecar: the gRPC listener with the proxy, grpc.health.v1 and reflection, the
// upstream channel, the selection publisher, the carbon ledger and the admin HTTP port.
// Thread-safe.
class SidecarServer {
 public:
  // Binds `config.listen` (port 0 picks a free port) and starts serving and polling.
  static absl::StatusOr<std::unique_ptr<SidecarServer>> Start(const SidecarConfig& config);
  ~SidecarServer();

  int port() const { return port_; }
  // The drain timeout of the config in force (reloads change it).
  absl::Duration drain_timeout() const;
  SelectionPublisher& publisher() { return *publisher_; }

  // Applies a new config. Restart-only settings (kRestartOnlySettings in config.h) keep their
  // running values; a change to one is logged.
  absl::Status Reload(const SidecarConfig& config);
  // Loads `path` and applies it; counts the result for /metrics either way.
  absl::Status ReloadFromFile(const std::string& path);
  // The admin HTTP port actually bound.
  int admin_port() const;

  // Stops accepting calls, lets in-flight calls finish for up to `drain`, cancels the rest.
  void Shutdown(absl::Duration drain);

 private:
  SidecarServer() = default;
  std::map<std::string, telemetry::AdminHandler> AdminHandlers();

  mutable absl::Mutex config_mu_;
  SidecarConfig config_ ABSL_GUARDED_BY(config_mu_);
  std::optional<RejectedReload> last_rejected_reload_ ABSL_GUARDED_BY(config_mu_);  // for the status page
  // Declared before what records into it, so it outlives them.
  telemetry::CarbonLedger ledger_;
  ReloadCounters reloads_;
  std::unique_ptr<SelectionPublisher> publisher_;
  // The data plane in force: proxy_ and server_ (grpc), or h2_calls_, local_services_ and h2_ (h2).
  std::unique_ptr<InferenceProxy> proxy_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<RoutedCallFactory> h2_calls_;
  std::unique_ptr<grpc::Server> local_services_;  // health and reflection, behind the h2 plane
  std::unique_ptr<dataplane::H2Proxy> h2_;
  const ProxyCounters& counters() const { return proxy_ ? proxy_->counters() : h2_calls_->counters(); }
  std::unique_ptr<StatusHistory> history_;
  absl::Duration history_interval_;
  absl::Notification stop_sampling_;
  std::thread sampler_;  // records history_ every history_interval_
  std::unique_ptr<telemetry::AdminServer> admin_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace carbon::sidecar
