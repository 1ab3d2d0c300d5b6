#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dataplane/request_framer.h"
#include "dataplane/tls_context.h"

namespace carbon::dataplane {

struct HeaderField {
  std::string name;
  std::string value;
};

// Where a call goes.
struct UpstreamAddress {
  std::string_view target;  // "host:port"
  // Null: plaintext HTTP/2 (h2c, prior knowledge). Else TLS made by this context, which the handler
  // keeps alive while the call lasts; upstream connections are shared by calls naming the same
  // target and the same context.
  const std::shared_ptr<TlsContext>* tls = nullptr;
};

// What the data plane asks the application about one call (one HTTP/2 stream). Used only on the
// worker thread that owns the call, never after Finished.
class CallHandler {
 public:
  virtual ~CallHandler() = default;
  // Which request messages go through Decide.
  virtual RequestFramer::Options::Route route() const = 0;
  // The upstream the call goes to: asked once, after the first routed message was decided when the
  // call routes messages, else as soon as the request headers are in.
  virtual UpstreamAddress Upstream() = 0;
  // A routed message's head: the bytes to append to it, or the status to end the call with.
  virtual absl::StatusOr<std::string_view> Decide(std::string_view head) = 0;
  // Whether the call could be sent again elsewhere (FailOver), so its request bytes are kept until
  // it ends. Asked once, when the upstream stream opens.
  virtual bool MayFailOver() const { return false; }
  // The upstream ended the call with `grpc_status` before any of its answer reached the client, and
  // the whole request was kept: the next upstream to send it to, or nullopt to end the call so.
  virtual std::optional<UpstreamAddress> FailOver(int /*grpc_status*/) { return std::nullopt; }
  // Headers to add to the response's first HEADERS frame.
  virtual void ForEachResponseHeader(absl::FunctionRef<void(std::string_view, std::string_view)> add) const = 0;
  // The call ended with this grpc-status (CANCELLED when the client reset it). Called once.
  virtual void Finished(int grpc_status) = 0;
};

// A call forwarded untouched to one plaintext upstream: no message routed, no header added.
class PassThroughCall final : public CallHandler {
 public:
  // `target` ("host:port") outlives the call.
  explicit PassThroughCall(std::string_view target) : target_(target) {}
  RequestFramer::Options::Route route() const override { return RequestFramer::Options::Route::kNone; }
  UpstreamAddress Upstream() override { return {.target = target_}; }
  absl::StatusOr<std::string_view> Decide(std::string_view) override { return std::string_view(); }
  void ForEachResponseHeader(absl::FunctionRef<void(std::string_view, std::string_view)>) const override {}
  void Finished(int) override {}

 private:
  std::string_view target_;
};

// Makes the handler of each new call. Called concurrently from every worker thread.
class CallHandlerFactory {
 public:
  virtual ~CallHandlerFactory() = default;
  // `headers` are the request's regular headers (no pseudo-headers); they outlive the handler.
  virtual std::unique_ptr<CallHandler> NewCall(std::string_view path, std::span<const HeaderField> headers) = 0;
};

struct H2ProxyOptions {
  std::string listen = "0.0.0.0:8001";  // host:port; port 0 picks a free one
  int threads = 0;                       // workers; 0: one per core
  uint32_t max_message_bytes = 64u << 20;
  // HTTP/2 flow-control windows the sidecar gives each peer (both sides): what one stream, and one
  // connection, may have in flight towards the sidecar before it forwards them. They bound memory.
  uint32_t stream_window_bytes = 256 * 1024;
  uint32_t connection_window_bytes = 2 * 1024 * 1024;
  uint32_t max_concurrent_streams = 16384;  // per client connection (window-bounded, so memory is too)
  // Calls one upstream connection carries before a worker opens another to the same target, as
  // Envoy's upstream max_concurrent_streams: a gRPC server serves each connection's frames on one
  // thread, so large messages spread over several connections go through faster. 0: no limit
  // (one connection per target and worker, as gRPC clients do). The upstream's own
  // SETTINGS_MAX_CONCURRENT_STREAMS is always respected.
  uint32_t upstream_max_concurrent_streams = 0;
  // An upstream connection that has carried no call for this long is closed with GOAWAY (Envoy's
  // upstream idle_timeout and its default): the connections a burst opened do not stay forever.
  // The next call to that target dials again. Zero: never.
  absl::Duration upstream_idle_timeout = absl::Hours(1);
  // What calls may hold past flow control, all workers together (each gets an equal share): routed
  // messages held whole for a late model name, requests kept for a failover. A call that would
  // hold more ends RESOURCE_EXHAUSTED. 0: no limit (each call is still bounded by max_message_bytes).
  uint64_t memory_limit_bytes = 0;
  // DNS servers ("ip" or "ip:port") upstream names are looked up with, besides /etc/hosts; empty:
  // those of /etc/resolv.conf. Lookups never block a worker.
  std::vector<std::string> nameservers;
  // Null: the listener speaks plaintext HTTP/2 (h2c). Else TLS (mutual when the context has a CA).
  std::shared_ptr<TlsContext> listener_tls;
};

// What the plane is doing, summed over its workers (each figure read on its own: not one instant).
struct H2ProxyStats {
  int64_t open_client_connections = 0;
  int64_t open_upstream_connections = 0;
  uint64_t client_connections_total = 0;    // accepted since start
  uint64_t upstream_connections_total = 0;  // dialled since start
  uint64_t client_tls_failures_total = 0;   // client handshakes that failed (no or an untrusted certificate, no h2...)
  uint64_t upstream_tls_failures_total = 0;
  int64_t calls_in_flight = 0;
  uint64_t held_request_bytes = 0;  // held past flow control (see memory_limit_bytes)
};

// A gRPC proxy that moves HTTP/2 frames between connections (libnghttp2 for the protocol,
// libevent for the sockets), the way nginx and Envoy do, instead of receiving and re-sending whole
// messages through a gRPC library. Each worker thread accepts on its own SO_REUSEPORT socket and
// owns its client connections, its upstream connections (per upstream target and TLS context, one
// or as many as upstream_max_concurrent_streams needs; h2c with prior knowledge, or TLS with ALPN h2) and every call on them, so a call never changes threads and nothing is locked on the
// request path. Request and response bodies are flow-controlled end to end: the sidecar gives a
// peer window only as it forwards the bytes it received, so a slow reader holds back its writer
// and each stream holds at most its window in each direction. Request bodies go through a
// RequestFramer per call (routing); responses pass frame by frame, with the handler's headers added.
// Headers keep every field but the connection-specific ones; trailers and status pass as sent.
// A call whose upstream resets or whose connection fails ends UNAVAILABLE; a client's reset
// (RST_STREAM) resets the upstream stream.
class H2Proxy {
 public:
  static absl::StatusOr<std::unique_ptr<H2Proxy>> Start(const H2ProxyOptions& options, CallHandlerFactory* factory);
  ~H2Proxy();  // Shutdown(zero) if not yet

  int port() const;
  // Calls not yet ended and freed, on every worker.
  int active_calls() const;
  H2ProxyStats stats() const;
  // Stops accepting, sends GOAWAY to every client, lets calls in flight end for up to `drain`,
  // then closes every connection and joins the workers.
  void Shutdown(absl::Duration drain);

  struct Worker;

 private:
  H2Proxy() = default;
  std::vector<std::unique_ptr<Worker>> workers_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace carbon::dataplane
