#pragma once

#include <memory>
#include <optional>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "sidecar/config.h"

namespace carbon::sidecar {

// Which side a TlsConfig is for: the rules for its files differ.
enum class TlsSide { kListener, kUpstream };

// Checks the files now, so that a wrong path, a file that is not PEM, or a key that does not
// belong to its certificate stops start-up (or a reload) with a clear message instead of failing
// every handshake later. The message names the file; the caller adds the config location.
absl::Status CheckTlsFiles(const TlsConfig& tls, TlsSide side);

// Credentials for the listener: plaintext without `tls`; TLS with it, mutual TLS when it names a
// client CA. The certificate files are watched (re-read every refresh_interval).
std::shared_ptr<grpc::ServerCredentials> ListenerCredentials(const std::optional<TlsConfig>& tls);

// Credentials for the upstream channel, and the channel arguments they need (the name to verify).
std::shared_ptr<grpc::ChannelCredentials> UpstreamCredentials(const std::optional<TlsConfig>& tls,
                                                              grpc::ChannelArguments* args);

}  // namespace carbon::sidecar
