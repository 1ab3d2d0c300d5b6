#pragma once

#include <memory>
#include <optional>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "dataplane/tls_context.h"
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

// The same files for the h2 data plane's own OpenSSL. Files that do not load (they were checked
// when the config was) make every handshake fail with the reason, never a plaintext connection;
// `load_status` says why.
std::shared_ptr<dataplane::TlsContext> H2Tls(const TlsConfig& tls, TlsSide side, absl::Status* load_status = nullptr);

}  // namespace carbon::sidecar
