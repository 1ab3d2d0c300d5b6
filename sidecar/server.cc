#include "sidecar/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/string_view_compat.h"
#include "sidecar/status_page.h"
#include "sidecar/tls.h"
#include "spdlog/spdlog.h"
#include "telemetry/exposition.h"

namespace carbon::sidecar {
absl::StatusOr<std::unique_ptr<SidecarServer>> SidecarServer::Start(const SidecarConfig& config) {
  std::unique_ptr<SidecarServer> s(new SidecarServer());
  {
    absl::MutexLock lock(&s->config_mu_);
    s->config_ = WithClusters(config);
  }
  const int max_bytes = static_cast<int>(config.upstream.max_message_bytes);
  auto publisher = SelectionPublisher::Create(
      config,
      [](const UpstreamCluster& cluster, const std::vector<std::string>& names) {
        return cluster.readiness ? cluster.readiness->Ask(names) : ReadinessAnswer{};
      },
      &s->ledger_,
      // The message limit is restart-only: every cluster, including those a reload adds, gets
      // the one the listener was built with.
      [max_bytes = config.upstream.max_message_bytes](const ClusterConfig& cluster) {
        return ConnectCluster(cluster, max_bytes);
      });
  if (!publisher.ok()) return publisher.status();
  s->publisher_ = *std::move(publisher);
  s->reloads_.last_success_timestamp = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  if (config.data_plane == SidecarConfig::DataPlane::kH2) {
    // The sidecar's own services run on a loopback gRPC server; the h2 plane forwards their calls.
    grpc::ServerBuilder local;
    int local_port = 0;
    local.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &local_port);
    s->local_services_ = local.BuildAndStart();
    if (!s->local_services_ || local_port == 0) return absl::UnavailableError("cannot start the local services");
    s->h2_calls_ = std::make_unique<RoutedCallFactory>(&s->publisher_->snapshots(),
                                                       absl::StrCat("127.0.0.1:", local_port));
    dataplane::H2ProxyOptions options;
    options.listen = config.listen;
    options.threads = static_cast<int>(config.data_plane_threads);
    options.max_message_bytes = static_cast<uint32_t>(max_bytes);
    options.memory_limit_bytes = static_cast<uint64_t>(config.memory_limit_bytes);
    options.stream_window_bytes = static_cast<uint32_t>(config.data_plane_stream_window_bytes);
    options.connection_window_bytes = static_cast<uint32_t>(config.data_plane_connection_window_bytes);
    options.upstream_max_concurrent_streams = static_cast<uint32_t>(config.data_plane_upstream_max_concurrent_streams);
    options.upstream_idle_timeout = config.data_plane_upstream_idle_timeout;
    if (config.tls) {
      absl::Status loaded;
      options.listener_tls = H2Tls(*config.tls, TlsSide::kListener, &loaded);
      if (!loaded.ok()) return loaded;
    }
    auto h2 = dataplane::H2Proxy::Start(options, s->h2_calls_.get());
    if (!h2.ok()) return h2.status();
    s->h2_ = *std::move(h2);
    s->port_ = s->h2_->port();
  } else {
    s->proxy_ = std::make_unique<InferenceProxy>(&s->publisher_->snapshots());
    grpc::ServerBuilder builder;
    builder.AddListeningPort(config.listen, ListenerCredentials(config.tls), &s->port_);
    builder.SetMaxReceiveMessageSize(max_bytes);
    builder.SetMaxSendMessageSize(max_bytes);
    if (config.memory_limit_bytes > 0) {
      grpc::ResourceQuota quota("carbon-sidecar-listener");
      quota.Resize(static_cast<size_t>(config.memory_limit_bytes));
      builder.SetResourceQuota(quota);  // the builder keeps a reference
    }
    builder.RegisterCallbackGenericService(s->proxy_.get());
    s->server_ = builder.BuildAndStart();
    if (!s->server_ || s->port_ == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen));
    }
  }
  s->history_ = std::make_unique<StatusHistory>(static_cast<size_t>(config.history_points));
  s->history_interval_ = config.history_interval;
  s->history_->Record(*s->publisher_->snapshots().Load(), absl::Now());
  s->sampler_ = std::thread([server = s.get()] {
    while (!server->stop_sampling_.WaitForNotificationWithTimeout(server->history_interval_)) {
      server->history_->Record(*server->publisher_->snapshots().Load(), absl::Now());
    }
  });
  auto admin = telemetry::AdminServer::Start(config.admin_listen, s->AdminHandlers());
  if (!admin.ok()) return admin.status();
  s->admin_ = *std::move(admin);
  s->publisher_->Start();
  std::vector<std::string> clusters;
  for (const ClusterConfig& c : WithClusters(config).clusters) {
    clusters.push_back(absl::StrCat(c.name, "=", c.target, c.tls ? "(tls)" : ""));
  }
  spdlog::info("event=listening address={} port={} admin_port={} data_plane={} tls={} clusters={} routes={}",
               config.listen, s->port_, s->admin_->port(), DataPlaneName(config.data_plane), !config.tls ? "off" : config.tls->ca_file.empty() ? "on" : "mutual",
               absl::StrJoin(clusters, ","), config.routes.size());
  return s;
}

SidecarServer::~SidecarServer() { Shutdown(absl::ZeroDuration()); }

std::map<std::string, telemetry::AdminHandler> SidecarServer::AdminHandlers() {
  std::map<std::string, telemetry::AdminHandler> handlers;
  handlers["/metrics"] = [this](const telemetry::AdminRequest& request) {
    const bool open_metrics = telemetry::WantsOpenMetrics(request.accept);
    // One snapshot for the whole scrape: a reload mid-scrape shows either side, never a mix.
    const std::shared_ptr<const RoutingSnapshot> snapshot = publisher_->snapshots().Load();
    telemetry::AdminResponse response;
    response.content_type = open_metrics ? telemetry::kOpenMetricsType : telemetry::kPrometheusTextType;
    response.body = RenderMetrics({*snapshot, counters(), reloads_, h2_.get()}, open_metrics);
    return response;
  };
  handlers["/healthz"] = [](const telemetry::AdminRequest&) {
    return telemetry::AdminResponse{200, "text/plain; charset=utf-8", "ok\n"};
  };
  handlers["/readyz"] = [this](const telemetry::AdminRequest&) {
    const std::shared_ptr<const RoutingSnapshot> snapshot = publisher_->snapshots().Load();
    std::string why;
    const bool ready = IsReady(*snapshot, &why);
    return telemetry::AdminResponse{ready ? 200 : 503, "text/plain; charset=utf-8", why + "\n"};
  };
  handlers["/v1/selection"] = [this](const telemetry::AdminRequest&) {
    const std::shared_ptr<const RoutingSnapshot> snapshot = publisher_->snapshots().Load();
    return telemetry::AdminResponse{200, "application/json", RenderSelectionJson(*snapshot, absl::Now())};
  };
  handlers["/"] = [this](const telemetry::AdminRequest&) {
    const std::shared_ptr<const RoutingSnapshot> snapshot = publisher_->snapshots().Load();
    const double loaded = reloads_.last_success_timestamp.load();
    std::optional<RejectedReload> rejected;
    {
      absl::MutexLock lock(&config_mu_);
      rejected = last_rejected_reload_;
    }
    const StatusPageInputs in{*snapshot,
                              absl::Now(),
                              absl::FromUnixNanos(static_cast<int64_t>(loaded * 1e9)),
                              reloads_.success.load(),
                              reloads_.failure.load(),
                              std::move(rejected)};
    return telemetry::AdminResponse{200, "text/html; charset=utf-8", RenderStatusPage(in)};
  };
  handlers["/v1/history"] = [this](const telemetry::AdminRequest&) {
    return telemetry::AdminResponse{200, "application/json",
                                    RenderHistoryJson(history_->Points(), history_->capacity(), history_interval_)};
  };
  handlers["/v1/config"] = [this](const telemetry::AdminRequest&) {
    absl::MutexLock lock(&config_mu_);
    return telemetry::AdminResponse{200, "application/json", RenderConfigJson(config_)};
  };
  return handlers;
}

absl::Duration SidecarServer::drain_timeout() const {
  absl::MutexLock lock(&config_mu_);
  return config_.drain_timeout;
}

int SidecarServer::admin_port() const { return admin_ ? admin_->port() : 0; }

absl::Status SidecarServer::Reload(const SidecarConfig& config) {
  SidecarConfig current;
  {
    absl::MutexLock lock(&config_mu_);
    current = config_;
  }
  std::vector<std::string> restart_only;
  const SidecarConfig applied = ConfigForReload(current, WithClusters(config), &restart_only);
  if (!restart_only.empty()) {
    // Rotated certificates need no restart: the files named are re-read (tls.refresh_interval).
    spdlog::warn("event=reload_needs_restart keys={} detail=\"these take effect on restart; the running "
                 "values are kept\"",
                 absl::StrJoin(restart_only, ","));
  }
  if (absl::Status s = publisher_->Reload(applied); !s.ok()) return s;
  absl::MutexLock lock(&config_mu_);
  config_ = applied;
  return absl::OkStatus();
}

absl::Status SidecarServer::ReloadFromFile(const std::string& path) {
  auto next = LoadConfig(path);
  absl::Status result = next.ok() ? Reload(*next) : next.status();
  if (result.ok()) {
    reloads_.success.fetch_add(1);
    reloads_.last_success_timestamp = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
    spdlog::info("event=config_reloaded result=success path={}", path);
  } else {
    reloads_.failure.fetch_add(1);
    {
      absl::MutexLock lock(&config_mu_);
      last_rejected_reload_ = RejectedReload{absl::Now(), std::string(result.message())};
    }
    spdlog::error("event=config_reloaded result=failure error=\"{}\" detail=\"old config kept\"",
                  ToStd(result.message()));
  }
  return result;
}

void SidecarServer::Shutdown(absl::Duration drain) {
  if (shut_down_ || (server_ == nullptr && h2_ == nullptr)) return;
  shut_down_ = true;
  if (h2_) {
    h2_->Shutdown(drain);
    local_services_->Shutdown(std::chrono::system_clock::now());
  } else {
    server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(drain));
    server_->Wait();
  }
  if (admin_) admin_->Stop();
  stop_sampling_.Notify();
  if (sampler_.joinable()) sampler_.join();
  publisher_->Stop();
}

}  // namespace carbon::sidecar
