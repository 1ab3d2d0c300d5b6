#include "sidecar/upstream_cluster.h"

#include "sidecar/readiness.h"
#include "sidecar/tls.h"

namespace carbon::sidecar {
namespace {

// A readiness question waits this long before the cluster counts as unreachable this round.
constexpr absl::Duration kReadinessTimeout = absl::Seconds(1);

}  // namespace

UpstreamCluster::UpstreamCluster(std::string name_in, std::string target_in, std::shared_ptr<grpc::Channel> channel_in)
    : name(std::move(name_in)), target(std::move(target_in)), channel(std::move(channel_in)) {
  if (channel) {
    stub = std::make_unique<grpc::GenericStub>(channel);
    // The readiness questions share the calls' channel, so they see the cluster the calls see.
    readiness = std::make_unique<UpstreamReadiness>(channel, kReadinessTimeout);
  }
}

UpstreamCluster::~UpstreamCluster() = default;

std::shared_ptr<const UpstreamCluster> ConnectCluster(const ClusterConfig& cluster, int64_t max_message_bytes) {
  grpc::ChannelArguments args = UpstreamChannelArguments(static_cast<int>(max_message_bytes));
  auto credentials = UpstreamCredentials(cluster.tls, &args);
  auto connected = std::make_shared<UpstreamCluster>(cluster.name, cluster.target,
                                                     grpc::CreateCustomChannel(cluster.target, credentials, args));
  if (cluster.tls) connected->h2_tls = H2Tls(*cluster.tls, TlsSide::kUpstream);
  return connected;
}

grpc::ChannelArguments UpstreamChannelArguments(int max_message_bytes) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  // A lost upstream is retried soon (100 ms, backing off to 1 s)...
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // ...but each attempt may take as long as a slow network or TLS handshake needs: gRPC reads
  // this argument as the minimum connect timeout, and at 100 ms it cut off any upstream whose
  // TCP + TLS handshake and SETTINGS took longer, attempt after attempt. 5 s, as Envoy's default.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5000);
  return args;
}

}  // namespace carbon::sidecar
