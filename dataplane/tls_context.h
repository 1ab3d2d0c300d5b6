#pragma once

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

using SSL = struct ssl_st;
using SSL_CTX = struct ssl_ctx_st;

namespace carbon::dataplane {

// The files one side's TLS is made of.
struct TlsFiles {
  // Server: the certificate chain (leaf first) and its key, both required. Client: an optional
  // client certificate, both or neither.
  std::string cert_file;
  std::string key_file;
  // Server: the CA client certificates must chain to; set, every client must present one (mutual
  // TLS). Client: the roots that verify the server; empty, the system's.
  std::string ca_file;
  // Client: the name the server's certificate must carry (and the SNI sent); empty, the host of
  // the target dialled.
  std::string server_name;
  // How often, at most, the files are read again to pick up rotated certificates.
  absl::Duration refresh_interval = absl::Seconds(10);
};

// OpenSSL for one side of the data plane, HTTP/2 only (ALPN "h2", TLS 1.2 or later), as gRPC's
// own transport does it. The files are read again when a connection is made and refresh_interval
// has passed since they were last read; a changed set that loads becomes the context of new
// handshakes (rotated certificates need no restart), one that does not load is ignored and the
// last good one kept. Connections already made keep the context they were made with.
class TlsContext {
 public:
  enum class Side { kServer, kClient };

  // Reads the files now. When they cannot be read or do not fit together, `load_status` says why
  // and the context is made all the same: each NewSession then reads them again and fails with the
  // reason until they load, so a peer is never dialled in plaintext instead.
  static std::shared_ptr<TlsContext> Create(Side side, TlsFiles files, absl::Status* load_status = nullptr);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // A new, unconnected SSL for one connection (accept state for a server, connect state with the
  // name to verify for a client dialling `host`).
  absl::StatusOr<SSL*> NewSession(std::string_view host);

 private:
  TlsContext(Side side, TlsFiles files) : side_(side), files_(std::move(files)) {}
  // Reads the files and, when they changed, makes them the current context.
  absl::Status Reload() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Side side_;
  const TlsFiles files_;
  absl::Mutex mu_;  // taken once per new connection, never per request
  SSL_CTX* current_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::string current_contents_ ABSL_GUARDED_BY(mu_);
  absl::Time next_read_ ABSL_GUARDED_BY(mu_);
  absl::Status last_load_ ABSL_GUARDED_BY(mu_);
};

// After a failed TLS call: OpenSSL's reasons (and a failed certificate check's), for a message.
// Empties the thread's OpenSSL error queue.
std::string TlsErrorText(SSL* ssl);

}  // namespace carbon::dataplane
