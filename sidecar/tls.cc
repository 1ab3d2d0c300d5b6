#include "sidecar/tls.h"

#include <algorithm>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

namespace carbon::sidecar {
namespace {

unsigned int RefreshSeconds(const TlsConfig& tls) {
  // gRPC's file watcher counts whole seconds and re-reads at least every second.
  const int64_t seconds = absl::ToInt64Seconds(tls.refresh_interval);
  return static_cast<unsigned int>(std::clamp<int64_t>(seconds, 1, 86400));
}

}  // namespace

absl::Status CheckTlsFiles(const TlsConfig& tls, TlsSide side) {
  if (side == TlsSide::kListener && (tls.cert_file.empty() || tls.key_file.empty())) {
    return absl::InvalidArgumentError("the listener needs both cert_file and key_file");
  }
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError("cert_file and key_file go together: give both or neither");
  }
  // The files are loaded as the h2 plane loads them: every file read, each certificate parsed, the
  // key matched to its certificate.
  absl::Status loaded;
  H2Tls(tls, side, &loaded);
  return loaded;
}

std::shared_ptr<grpc::ServerCredentials> ListenerCredentials(const std::optional<TlsConfig>& tls) {
  if (!tls) return grpc::InsecureServerCredentials();
  auto files = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls->key_file, tls->cert_file, tls->ca_file, RefreshSeconds(*tls));
  grpc::experimental::TlsServerCredentialsOptions options(files);
  options.watch_identity_key_cert_pairs();
  if (tls->ca_file.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> UpstreamCredentials(const std::optional<TlsConfig>& tls,
                                                              grpc::ChannelArguments* args) {
  if (!tls) return grpc::InsecureChannelCredentials();
  grpc::experimental::TlsChannelCredentialsOptions options;
  if (!tls->ca_file.empty() || !tls->cert_file.empty()) {
    options.set_certificate_provider(std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        tls->key_file, tls->cert_file, tls->ca_file, RefreshSeconds(*tls)));
  }
  // Without a CA file the system's roots verify the upstream.
  if (!tls->ca_file.empty()) options.watch_root_certs();
  if (!tls->cert_file.empty()) options.watch_identity_key_cert_pairs();
  if (!tls->server_name.empty()) args->SetSslTargetNameOverride(tls->server_name);
  return grpc::experimental::TlsCredentials(options);
}

std::shared_ptr<dataplane::TlsContext> H2Tls(const TlsConfig& tls, TlsSide side, absl::Status* load_status) {
  dataplane::TlsFiles files{.cert_file = tls.cert_file,
                            .key_file = tls.key_file,
                            .ca_file = tls.ca_file,
                            .server_name = tls.server_name,
                            .refresh_interval = tls.refresh_interval};
  return dataplane::TlsContext::Create(
      side == TlsSide::kListener ? dataplane::TlsContext::Side::kServer : dataplane::TlsContext::Side::kClient,
      std::move(files), load_status);
}

}  // namespace carbon::sidecar
