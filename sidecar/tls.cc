#include "sidecar/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "absl/strings/str_cat.h"

namespace carbon::sidecar {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Certificate = std::unique_ptr<X509, X509Free>;
using PrivateKey = std::unique_ptr<EVP_PKEY, KeyFree>;

Bio OpenFile(const std::string& path) { return Bio(BIO_new_file(path.c_str(), "r")); }

// The first certificate of a PEM file.
absl::StatusOr<Certificate> ReadCertificate(const std::string& what, const std::string& path) {
  Bio bio = OpenFile(path);
  if (!bio) return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' cannot be read"));
  Certificate cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (!cert) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' holds no PEM certificate"));
  }
  return cert;
}

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
  if (!tls.ca_file.empty()) {
    if (auto ca = ReadCertificate("ca_file", tls.ca_file); !ca.ok()) return ca.status();
  }
  if (tls.cert_file.empty()) return absl::OkStatus();
  auto cert = ReadCertificate("cert_file", tls.cert_file);
  if (!cert.ok()) return cert.status();
  Bio bio = OpenFile(tls.key_file);
  if (!bio) return absl::InvalidArgumentError(absl::StrCat("key_file '", tls.key_file, "' cannot be read"));
  PrivateKey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (!key) {
    return absl::InvalidArgumentError(
        absl::StrCat("key_file '", tls.key_file, "' holds no unencrypted PEM private key"));
  }
  if (X509_check_private_key(cert->get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("key_file '", tls.key_file,
                                                   "' is not the key of the certificate in '", tls.cert_file, "'"));
  }
  return absl::OkStatus();
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
