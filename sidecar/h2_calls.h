#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "dataplane/h2_proxy.h"
#include "selector/snapshot_cell.h"
#include "sidecar/call_router.h"
#include "sidecar/routing.h"

namespace carbon::sidecar {

// Plugs the sidecar's routing into the HTTP/2 data plane (data_plane: h2): each call gets a
// CallRouter, as on the gRPC plane, so both route, tag, limit and charge alike. Calls to the
// sidecar's own services (grpc.health.v1, reflection) go to `local_target`, a gRPC server in
// the process that serves only those. Thread-safe.
class RoutedCallFactory final : public dataplane::CallHandlerFactory {
 public:
  RoutedCallFactory(const selector::SnapshotCell<RoutingSnapshot>* routes, std::string local_target)
      : routes_(routes), local_target_(std::move(local_target)) {}

  std::unique_ptr<dataplane::CallHandler> NewCall(std::string_view path,
                                                  std::span<const dataplane::HeaderField> headers) override;

  const ProxyCounters& counters() const { return counters_; }

 private:
  const selector::SnapshotCell<RoutingSnapshot>* routes_;
  const std::string local_target_;
  ProxyCounters counters_;
};

// Whether a method is one of the services the sidecar answers itself.
bool IsLocalService(std::string_view path);

}  // namespace carbon::sidecar
