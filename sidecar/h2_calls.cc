#include "sidecar/h2_calls.h"

#include <chrono>
#include <optional>

#include "sidecar/request_wire.h"

namespace carbon::sidecar {
namespace {

using dataplane::RequestFramer;

dataplane::UpstreamAddress AddressOf(const UpstreamCluster& cluster) {
  return {.target = cluster.target, .tls = cluster.h2_tls ? &cluster.h2_tls : nullptr};
}

class RoutedCall final : public dataplane::CallHandler {
 public:
  RoutedCall(const selector::SnapshotCell<RoutingSnapshot>* routes, ProxyCounters* counters, MethodKind kind,
             std::span<const dataplane::HeaderField> headers)
      : kind_(kind), router_(routes, counters, kind), start_(std::chrono::steady_clock::now()) {
    for (const dataplane::HeaderField& h : headers) router_.ReadHeader(h.name, h.value);
  }

  RequestFramer::Options::Route route() const override {
    switch (kind_) {
      case MethodKind::kInfer:
      case MethodKind::kModelQuery:
        return RequestFramer::Options::Route::kFirst;
      case MethodKind::kStreamInfer:
        return RequestFramer::Options::Route::kEvery;
      default:
        return RequestFramer::Options::Route::kNone;
    }
  }

  dataplane::UpstreamAddress Upstream() override { return AddressOf(router_.Upstream()); }

  absl::StatusOr<std::string_view> Decide(std::string_view head) override {
    const bool wants_batch = kind_ == MethodKind::kInfer || kind_ == MethodKind::kStreamInfer;
    const std::string_view segments[] = {head};
    auto scanned = ScanModelNamedRequest(segments, wants_batch, &scratch_);
    if (!scanned.ok()) {
      router_.CountMalformed();
      return scanned.status();
    }
    const grpc::Slice* override_bytes = nullptr;
    if (absl::Status s = router_.Route(*scanned, &override_bytes); !s.ok()) return s;
    if (override_bytes == nullptr) return std::string_view();
    return std::string_view(reinterpret_cast<const char*>(override_bytes->begin()), override_bytes->size());
  }

  bool MayFailOver() const override { return router_.MayFailOver(grpc::StatusCode::UNAVAILABLE); }

  std::optional<dataplane::UpstreamAddress> FailOver(int grpc_status) override {
    if (!router_.MayFailOver(static_cast<grpc::StatusCode>(grpc_status))) return std::nullopt;
    return AddressOf(router_.FailOver());
  }

  void ForEachResponseHeader(absl::FunctionRef<void(std::string_view, std::string_view)> add) const override {
    router_.ForEachTag(add);
  }

  void Finished(int grpc_status) override {
    std::optional<double> seconds;
    if (kind_ == MethodKind::kInfer) {
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }
    router_.Finish(static_cast<grpc::StatusCode>(grpc_status), seconds);
  }

 private:
  MethodKind kind_;
  CallRouter router_;
  std::string scratch_;
  const std::chrono::steady_clock::time_point start_;
};

}  // namespace

bool IsLocalService(std::string_view path) {
  return path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/") ||
         path.starts_with("/grpc.reflection.v1.ServerReflection/");
}

std::unique_ptr<dataplane::CallHandler> RoutedCallFactory::NewCall(std::string_view path,
                                                                   std::span<const dataplane::HeaderField> headers) {
  // The sidecar's own services: forwarded untouched to the in-process server that answers them.
  if (IsLocalService(path)) return std::make_unique<dataplane::PassThroughCall>(local_target_);
  return std::make_unique<RoutedCall>(routes_, &counters_, ClassifyMethod(path), headers);
}

}  // namespace carbon::sidecar
