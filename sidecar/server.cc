#include "sidecar/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "sidecar/readiness.h"
#include "spdlog/spdlog.h"

namespace carbon::sidecar {
namespace {

constexpr absl::Duration kReadinessTimeout = absl::Seconds(1);

}  // namespace

absl::StatusOr<std::unique_ptr<SidecarServer>> SidecarServer::Start(const SidecarConfig& config) {
  std::unique_ptr<SidecarServer> s(new SidecarServer());
  s->config_ = config;
  const int max_bytes = static_cast<int>(config.upstream.max_message_bytes);
  auto channel = grpc::CreateCustomChannel(config.upstream.target, grpc::InsecureChannelCredentials(),
                                           UpstreamChannelArguments(max_bytes));
  // The readiness questions share the proxy's channel, so they see the upstream the calls see.
  s->readiness_ = std::make_unique<UpstreamReadiness>(channel, kReadinessTimeout);
  auto publisher = SelectionPublisher::Create(
      config, [readiness = s->readiness_.get()](const std::vector<std::string>& names) {
        return readiness->Ask(names);
      });
  if (!publisher.ok()) return publisher.status();
  s->publisher_ = *std::move(publisher);

  s->proxy_ = std::make_unique<InferenceProxy>(channel, &s->publisher_->snapshots());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  builder.RegisterCallbackGenericService(s->proxy_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen));
  }
  s->publisher_->Start();
  spdlog::info("event=listening address={} port={} upstream={} routes={}", config.listen, s->port_,
               config.upstream.target, config.routes.size());
  return s;
}

SidecarServer::~SidecarServer() { Shutdown(absl::ZeroDuration()); }

absl::Status SidecarServer::Reload(const SidecarConfig& config) {
  if (config.listen != config_.listen || config.upstream.target != config_.upstream.target ||
      config.upstream.max_message_bytes != config_.upstream.max_message_bytes) {
    spdlog::warn("event=reload_needs_restart detail=\"listen and upstream changes take effect on "
                 "restart; keeping listen={} upstream={}\"",
                 config_.listen, config_.upstream.target);
  }
  if (absl::Status s = publisher_->Reload(config); !s.ok()) return s;
  config_.intensity = config.intensity;
  config_.routes = config.routes;
  config_.drain_timeout = config.drain_timeout;
  return absl::OkStatus();
}

void SidecarServer::Shutdown(absl::Duration drain) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(drain));
  server_->Wait();
  publisher_->Stop();
}

}  // namespace carbon::sidecar
