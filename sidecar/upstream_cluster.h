#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "dataplane/tls_context.h"
#include "sidecar/config.h"

namespace carbon::sidecar {

class UpstreamReadiness;

// What one round of readiness questions to a cluster found.
struct ReadinessAnswer {
  ReadinessAnswer() = default;
  // Per name asked (see UpstreamReadiness::Ask).
  ReadinessAnswer(std::vector<std::optional<bool>> ready) : ready(std::move(ready)) {}  // NOLINT: implicit on purpose
  std::vector<std::optional<bool>> ready;
  // The quickest answer's round trip; nullopt when none came.
  std::optional<absl::Duration> round_trip;
};

// One inference cluster's connection: the channel every call to it and every readiness question
// shares. Immutable; shared by the snapshots that name it and by the calls in flight to it, so a
// cluster removed by a reload is closed once its last call has ended.
struct UpstreamCluster {
  UpstreamCluster(std::string name, std::string target, std::shared_ptr<grpc::Channel> channel);
  ~UpstreamCluster();

  std::string name;
  std::string target;
  std::shared_ptr<grpc::Channel> channel;  // null when the publisher runs without connections (tests)
  std::unique_ptr<grpc::GenericStub> stub;
  std::unique_ptr<UpstreamReadiness> readiness;
  // The h2 data plane's TLS to the cluster (its own OpenSSL, not the channel's); null: plaintext.
  std::shared_ptr<dataplane::TlsContext> h2_tls;
};

// Opens the channel to a cluster: its target, its TLS, the upstream's message limit.
std::shared_ptr<const UpstreamCluster> ConnectCluster(const ClusterConfig& cluster, int64_t max_message_bytes);

// Grpc arguments of every upstream channel: message limits, no transparent retries (the client
// decides), and a short reconnect backoff so a restarted inference server is used again promptly.
grpc::ChannelArguments UpstreamChannelArguments(int max_message_bytes);

}  // namespace carbon::sidecar
