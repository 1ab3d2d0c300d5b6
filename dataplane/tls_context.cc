#include "dataplane/tls_context.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <array>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/string_view_compat.h"

namespace carbon::dataplane {
namespace {

// What one read() from a TLS connection's socket may take (OpenSSL's read-ahead buffer). Under
// glibc's 128 KiB mmap threshold: with SSL_MODE_RELEASE_BUFFERS the buffer is allocated again for
// each burst, and from the heap that is cheap (at 128 KiB each would be an mmap and page faults).
constexpr size_t kTlsReadAhead = 64 * 1024;

// gRPC's own TLS 1.2 suites: forward-secret AEAD only, none of them on HTTP/2's block list
// (RFC 7540 appendix A). TLS 1.3 keeps OpenSSL's defaults, all AEAD.
constexpr char kTls12Ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Bio = std::unique_ptr<BIO, BioFree>;

// cert_file, key_file, ca_file, as read.
using FileContents = std::array<std::string, 3>;

absl::StatusOr<std::string> ReadFile(std::string_view what, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  if (!in || !(bytes << in.rdbuf())) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(what), " '", path, "' cannot be read"));
  }
  return bytes.str();
}

// Every certificate of a PEM text, in order; none is an error.
absl::StatusOr<std::vector<X509*>> ReadCertificates(std::string_view what, const std::string& path,
                                                    const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<X509*> certs;
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) certs.push_back(cert);
  ERR_clear_error();  // the end of the text reads as an error
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(what), " '", path, "' holds no PEM certificate"));
  }
  return certs;
}

// Chooses "h2" from what a client offers; a client that offers only other protocols is refused
// (gRPC needs HTTP/2). A client that offers none is served (and speaks HTTP/2 or fails).
int SelectH2(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
             void*) {
  for (unsigned int i = 0; i < inlen;) {
    const unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == 2 && std::memcmp(in + i + 1, "h2", 2) == 0) {
      *out = in + i + 1;
      *outlen = 2;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

bool IsIpLiteral(const std::string& host) {
  in6_addr addr6;
  in_addr addr4;
  return inet_pton(AF_INET, host.c_str(), &addr4) == 1 || inet_pton(AF_INET6, host.c_str(), &addr6) == 1;
}

absl::StatusOr<FileContents> ReadFiles(const TlsFiles& files) {
  FileContents contents;
  const std::pair<const char*, const std::string*> named[] = {
      {"cert_file", &files.cert_file}, {"key_file", &files.key_file}, {"ca_file", &files.ca_file}};
  for (size_t i = 0; i < 3; ++i) {
    if (named[i].second->empty()) continue;
    auto bytes = ReadFile(named[i].first, *named[i].second);
    if (!bytes.ok()) return bytes.status();
    contents[i] = *std::move(bytes);
  }
  return contents;
}

absl::StatusOr<SSL_CTX*> Build(TlsContext::Side side, const TlsFiles& files, const FileContents& contents) {
  const bool server = side == TlsContext::Side::kServer;
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == nullptr) return absl::ResourceExhaustedError("cannot make an OpenSSL context");
  auto fail = [ctx](absl::Status s) {
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return s;
  };
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  // Idle connections give their record buffers back; output is handed over from a buffer that
  // may move between a write that would block and its retry.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // One read() takes what the socket has, up to kTlsReadAhead bytes, not one record's header and
  // then its body (two reads per 16 KiB record without read-ahead). The buffer is given back when
  // empty (SSL_MODE_RELEASE_BUFFERS).
  SSL_CTX_set_read_ahead(ctx, 1);
  SSL_CTX_set_default_read_buffer_len(ctx, kTlsReadAhead);
  SSL_CTX_set_cipher_list(ctx, kTls12Ciphers);

  if (!contents[0].empty()) {
    auto chain = ReadCertificates("cert_file", files.cert_file, contents[0]);
    if (!chain.ok()) return fail(chain.status());
    const bool used = SSL_CTX_use_certificate(ctx, (*chain)[0]) == 1;
    X509_free((*chain)[0]);
    for (size_t i = 1; i < chain->size(); ++i) {
      if (used) {
        SSL_CTX_add0_chain_cert(ctx, (*chain)[i]);  // takes it
      } else {
        X509_free((*chain)[i]);
      }
    }
    if (!used) return fail(absl::InvalidArgumentError(absl::StrCat("cert_file '", files.cert_file, "' is not usable")));
    Bio bio(BIO_new_mem_buf(contents[1].data(), static_cast<int>(contents[1].size())));
    EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr);
    if (key == nullptr) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("key_file '", files.key_file, "' holds no unencrypted PEM private key")));
    }
    const bool key_used = SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    EVP_PKEY_free(key);
    if (!key_used) {
      return fail(absl::InvalidArgumentError(absl::StrCat("key_file '", files.key_file,
                                                          "' is not the key of the certificate in '", files.cert_file,
                                                          "'")));
    }
  } else if (server) {
    return fail(absl::InvalidArgumentError("a TLS listener needs cert_file and key_file"));
  }

  if (!contents[2].empty()) {
    auto cas = ReadCertificates("ca_file", files.ca_file, contents[2]);
    if (!cas.ok()) return fail(cas.status());
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    for (X509* ca : *cas) {
      X509_STORE_add_cert(store, ca);
      if (server) SSL_CTX_add_client_CA(ctx, ca);  // the names a client is told to pick a certificate by
      X509_free(ca);
    }
    ERR_clear_error();  // a CA listed twice is not an error
  } else if (!server) {
    SSL_CTX_set_default_verify_paths(ctx);
  }
  if (server) {
    if (!contents[2].empty()) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    SSL_CTX_set_alpn_select_cb(ctx, SelectH2, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    static constexpr unsigned char kH2[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(ctx, kH2, sizeof kH2);
  }
  return ctx;
}

}  // namespace

std::shared_ptr<TlsContext> TlsContext::Create(Side side, TlsFiles files, absl::Status* load_status) {
  std::shared_ptr<TlsContext> tls(new TlsContext(side, std::move(files)));
  absl::MutexLock lock(&tls->mu_);
  absl::Status loaded = tls->Reload();
  if (load_status != nullptr) *load_status = loaded;
  return tls;
}

TlsContext::~TlsContext() {
  absl::MutexLock lock(&mu_);
  SSL_CTX_free(current_);
}

absl::Status TlsContext::Reload() {
  next_read_ = absl::Now() + files_.refresh_interval;
  auto contents = ReadFiles(files_);
  if (!contents.ok()) return last_load_ = contents.status();
  std::string joined = (*contents)[0] + '\0' + (*contents)[1] + '\0' + (*contents)[2];
  if (current_ != nullptr && joined == current_contents_) return last_load_ = absl::OkStatus();
  auto ctx = Build(side_, files_, *contents);
  if (!ctx.ok()) return last_load_ = ctx.status();
  SSL_CTX_free(current_);  // sessions made from it keep their own reference
  current_ = *ctx;
  current_contents_ = std::move(joined);
  return last_load_ = absl::OkStatus();
}

absl::StatusOr<SSL*> TlsContext::NewSession(std::string_view host) {
  SSL* ssl;
  {
    absl::MutexLock lock(&mu_);
    // Files half-written by a rotation, or not matching yet, are tried again next time; until
    // then the last good context serves. With none yet, every new connection tries them.
    if (current_ == nullptr || absl::Now() >= next_read_) Reload().IgnoreError();
    if (current_ == nullptr) return absl::FailedPreconditionError(std::string(last_load_.message()));
    ssl = SSL_new(current_);
  }
  if (ssl == nullptr) return absl::ResourceExhaustedError(absl::StrCat("cannot start TLS: ", TlsErrorText(nullptr)));
  if (side_ == Side::kServer) {
    SSL_set_accept_state(ssl);
    return ssl;
  }
  const std::string name = files_.server_name.empty() ? std::string(host) : files_.server_name;
  if (IsIpLiteral(name)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl, name.c_str());
    SSL_set1_host(ssl, name.c_str());
  }
  SSL_set_connect_state(ssl);
  return ssl;
}

std::string TlsErrorText(SSL* ssl) {
  std::string text;
  if (ssl != nullptr) {
    const long verified = SSL_get_verify_result(ssl);
    if (verified != X509_V_OK) text = absl::StrCat("certificate not trusted: ", X509_verify_cert_error_string(verified));
  }
  while (const unsigned long e = ERR_get_error()) {
    char reason[256];
    ERR_error_string_n(e, reason, sizeof reason);
    absl::StrAppend(&text, text.empty() ? "" : "; ", reason);
  }
  return text.empty() ? "the connection closed during the TLS handshake" : text;
}

}  // namespace carbon::dataplane
