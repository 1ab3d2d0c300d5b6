#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "inference/grpc_service.grpc.pb.h"
#include "sidecar/upstream_cluster.h"

namespace carbon::sidecar {

// Asks the inference server, with ModelReady, which variants it can serve now, so that the policy
// leaves out those it reports not ready (docs/design.md §1). All questions go out at once.
class UpstreamReadiness {
 public:
  UpstreamReadiness(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout);

  // Per name: true or false as the upstream answers (a model it does not know, NOT_FOUND, counts
  // as not ready); nullopt when it could not be asked (unreachable, timed out), since that says
  // nothing about the model and calls will fail or succeed on their own. With the quickest
  // answer's round trip, the cluster's measured latency cost.
  ReadinessAnswer Ask(const std::vector<std::string>& names);

 private:
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
  absl::Duration timeout_;
};

}  // namespace carbon::sidecar
