#include "dataplane/h2_proxy.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <limits>
#include <list>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/string_view_compat.h"

namespace carbon::dataplane {
namespace {

constexpr int kGrpcCancelled = 1;
constexpr int kGrpcUnknown = 2;
constexpr int kGrpcDeadlineExceeded = 4;
constexpr int kGrpcResourceExhausted = 8;
constexpr int kGrpcUnavailable = 14;
// Output a connection may queue before the sidecar stops producing frames for it.
constexpr size_t kOutputHighWater = 256 * 1024;
// One read() takes up to this much. Reads go straight from the socket into one buffer per worker
// and from there into nghttp2: no FIONREAD, no copy into an input buffer first.
constexpr size_t kReadBufferBytes = 256 * 1024;
// The most plaintext one TLS record carries (RFC 8446 §5.1).
constexpr size_t kMaxTlsRecord = 16384;

// Fields HTTP/2 forbids or that describe one hop only (RFC 9113 §8.2.2).
bool IsConnectionSpecific(std::string_view name) {
  static constexpr std::string_view kNames[] = {"connection", "keep-alive", "proxy-connection",
                                                "transfer-encoding", "upgrade", "host"};
  return std::find(std::begin(kNames), std::end(kNames), name) != std::end(kNames);
}

nghttp2_nv Nv(std::string_view name, std::string_view value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};
}

// grpc-message is percent-encoded (gRPC over HTTP/2: Status-Message).
std::string PercentEncode(std::string_view message) {
  std::string out;
  for (char c : message) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u > 0x7e || c == '%') {
      static constexpr char kHex[] = "0123456789ABCDEF";
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

std::optional<int> ParseGrpcStatus(const std::vector<HeaderField>& fields) {
  for (const HeaderField& f : fields) {
    if (f.name == "grpc-status") {
      int code;
      if (absl::SimpleAtoi(f.value, &code)) return code;
      return kGrpcUnknown;
    }
  }
  return std::nullopt;
}

// A grpc-timeout value (gRPC over HTTP/2: up to 8 digits and a unit, H M S m u n) in nanoseconds;
// none for a malformed value, or one too long to count in nanoseconds (centuries), passed as sent.
std::optional<int64_t> ParseGrpcTimeout(std::string_view value) {
  if (value.size() < 2 || value.size() > 9) return std::nullopt;
  int64_t amount = 0;
  for (char c : value.substr(0, value.size() - 1)) {
    if (c < '0' || c > '9') return std::nullopt;
    amount = amount * 10 + (c - '0');
  }
  int64_t unit = 0;
  switch (value.back()) {
    case 'H': unit = 3600'000'000'000; break;
    case 'M': unit = 60'000'000'000; break;
    case 'S': unit = 1'000'000'000; break;
    case 'm': unit = 1'000'000; break;
    case 'u': unit = 1'000; break;
    case 'n': unit = 1; break;
    default: return std::nullopt;
  }
  if (amount > std::numeric_limits<int64_t>::max() / unit) return std::nullopt;
  return amount * unit;
}

// The finest unit whose amount fits the 8 digits, rounded up (a deadline is never made earlier
// than the time left).
std::string FormatGrpcTimeout(int64_t nanos) {
  constexpr std::pair<int64_t, char> kUnits[] = {
      {1, 'n'}, {1'000, 'u'}, {1'000'000, 'm'}, {1'000'000'000, 'S'}, {60'000'000'000, 'M'}, {3600'000'000'000, 'H'}};
  for (const auto& [unit, letter] : kUnits) {
    const int64_t amount = (nanos + unit - 1) / unit;
    if (amount <= 99'999'999) return absl::StrCat(amount, std::string(1, letter));
  }
  return "99999999H";
}

// A gRPC server shutting down ends the calls it has not answered CANCELLED, with no message of its
// own. The client did not cancel, and may retry: it gets UNAVAILABLE (as Envoy answers an upstream
// reset, and as the gRPC plane does). A CANCELLED status sent on purpose, with a message, passes.
bool IsUpstreamReset(const std::vector<HeaderField>& fields) {
  if (ParseGrpcStatus(fields) != kGrpcCancelled) return false;
  for (const HeaderField& f : fields) {
    if ((f.name == "grpc-message" && f.value != "CANCELLED") || f.name == "grpc-status-details-bin") return false;
  }
  return true;
}

absl::StatusOr<std::pair<std::string, std::string>> SplitHostPort(std::string_view target) {
  if (target.starts_with("dns:///")) target.remove_prefix(7);
  const size_t colon = target.rfind(':');
  if (colon == std::string_view::npos) return absl::InvalidArgumentError(absl::StrCat("no port in '", ToAbsl(target), "'"));
  std::string host(target.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "0.0.0.0";
  return std::make_pair(host, std::string(target.substr(colon + 1)));
}

struct Connection;
struct ClientConnection;
struct UpstreamConnection;

// One proxied call: a client stream and, once opened, its upstream stream.
struct Call {
  H2Proxy::Worker* worker = nullptr;
  ClientConnection* client = nullptr;  // not to be touched once client_closed
  int32_t client_id = 0;
  UpstreamConnection* upstream = nullptr;
  int32_t upstream_id = -1;
  std::list<Call*>::iterator in_upstream;  // in upstream->calls, while upstream is set
  std::list<Call*>::iterator in_client;    // in client->calls, until client_closed

  std::string path;
  std::chrono::steady_clock::time_point started;  // when its headers were in
  std::vector<HeaderField> request_headers;
  std::vector<HeaderField> response_headers;
  std::vector<HeaderField> trailers;
  std::unique_ptr<CallHandler> handler;
  std::optional<RequestFramer> framer;

  evbuffer* to_upstream = evbuffer_new();
  bool keep_request = false;  // for a replay elsewhere (CallHandler::MayFailOver)
  std::string kept_request;
  evbuffer* to_client = evbuffer_new();
  // Bytes received from each side and not yet given back as window (nghttp2_session_consume).
  size_t unconsumed_from_client = 0;
  size_t unconsumed_from_upstream = 0;
  // Of the worker's held_bytes, this call's share (see Recount).
  size_t held_counted = 0;
  // Where the response is in its gRPC messages (ResponseMessagesFit): the prefix bytes seen of the
  // next message, or what is left of the current one.
  std::array<uint8_t, 5> response_prefix{};
  size_t response_prefix_seen = 0;
  uint64_t response_message_left = 0;

  bool client_ended = false;     // END_STREAM from the client
  bool upstream_ended = false;   // END_STREAM from the upstream (trailers in)
  bool upstream_failed = false;  // reset, or its connection failed, before it ended
  bool response_submitted = false;
  bool trailers_submitted = false;
  bool client_closed = false;
  bool upstream_closed = false;
  bool finished = false;                      // handler->Finished called
  std::optional<int> sent_status;             // the grpc-status given to the client
  std::optional<std::pair<int, std::string>> local_status;  // the sidecar's own verdict

  ~Call() {
    evbuffer_free(to_upstream);
    evbuffer_free(to_client);
  }
};

using Worker = H2Proxy::Worker;

// What client and upstream connections share: a non-blocking socket, its output buffer and an
// nghttp2 session. Output is written as soon as it is produced (one writev, usually complete); only
// what the socket does not take waits for a write event, so a busy connection costs a read, a
// write and an epoll_wait per round, not the two epoll_ctl calls of toggling write interest.
struct Connection {
  Worker* worker = nullptr;
  evutil_socket_t fd = -1;
  event* read_event = nullptr;
  event* write_event = nullptr;
  evbuffer* out = evbuffer_new();
  nghttp2_session* session = nullptr;
  bool write_armed = false;
  // Streams whose DATA waits for the socket to take what is already queued (see OutputFull).
  std::vector<int32_t> waiting_for_socket;
  bool connected = true;  // upstream connections: once the non-blocking connect has completed
  bool flush_scheduled = false;
  bool closing = false;
  // TLS, when the listener or the upstream has it: frames wait in `out` until the handshake is done.
  SSL* ssl = nullptr;
  std::shared_ptr<TlsContext> tls;  // what `ssl` was made from (upstream connections are matched by it)
  bool handshake_done = false;
  bool handshake_wants_write = false;
  std::string failure;  // why the connection failed, when the socket's end does not say it
  virtual ~Connection() {
    if (session) nghttp2_session_del(session);
    if (read_event) event_free(read_event);
    if (write_event) event_free(write_event);
    evbuffer_free(out);
    if (ssl) SSL_free(ssl);
    if (fd >= 0) close(fd);
  }
  virtual bool is_upstream() const = 0;
  void ScheduleFlush();
  // Whether a stream's next DATA must wait: the socket has not taken what is queued. Bodies are
  // given back to their sender as window when queued here, so without this bound the queue could
  // grow to the peer's whole window, not the sidecar's.
  bool OutputFull(int32_t stream_id) {
    if (evbuffer_get_length(out) < kOutputHighWater) return false;
    waiting_for_socket.push_back(stream_id);
    return true;
  }
  // Reads what the socket has and feeds it to nghttp2; false when the connection must close.
  bool Receive(uint8_t* buffer);
  bool ReceiveTls(uint8_t* buffer);
  // Takes the TLS handshake as far as the socket allows; false when it failed.
  bool Handshake();
  // Lets nghttp2 produce what it has and writes it; false when the connection is done (or broken).
  bool Send() {
    if (nghttp2_session_send(session) != 0) return false;
    if (!WriteOut()) return false;
    return nghttp2_session_want_read(session) || nghttp2_session_want_write(session) ||
           evbuffer_get_length(out) > 0;
  }
  bool WriteOut();
  void WantWrite(bool want) {
    if (want == write_armed) return;
    write_armed = want;
    if (want) {
      event_add(write_event, nullptr);
    } else {
      event_del(write_event);
    }
  }
};

struct TransparentStringHash {
  using is_transparent = void;
  size_t operator()(std::string_view key) const { return std::hash<std::string_view>{}(key); }
};

struct ClientConnection final : Connection {
  std::list<Call*> calls;  // whose client stream is open
  bool is_upstream() const override { return false; }
};

// One name lookup for an upstream connection. libevent may call back after the connection is gone
// (a cancelled lookup is answered from the loop): the worker owns these until they are answered.
struct Resolution {
  H2Proxy::Worker* worker = nullptr;
  UpstreamConnection* up = nullptr;  // null once the connection no longer waits for it
  evdns_getaddrinfo_request* request = nullptr;
  bool answered = false;
  int error = 0;  // when answered inline, what evdns said
  evutil_addrinfo* addresses = nullptr;
};

struct UpstreamConnection final : Connection {
  std::string target;
  std::string host, port;
  std::list<Call*> calls;
  bool retired = false;  // no longer the one new calls to its target use
  Resolution* resolving = nullptr;  // while its name is being looked up (no socket yet)
  // What the name resolved to, tried in order until one connects (as gRPC's pick_first does): a
  // name with an IPv6 and an IPv4 address works whichever of them the upstream listens on.
  std::vector<std::pair<sockaddr_storage, socklen_t>> addresses;
  size_t next_address = 0;
  std::string connect_errors;  // each address that refused, and why
  std::chrono::steady_clock::time_point idle_since;  // when its last call ended (or it was made)
  bool is_upstream() const override { return true; }
};

}  // namespace

struct H2Proxy::Worker {
  H2ProxyOptions options;
  CallHandlerFactory* factory = nullptr;
  event_base* base = nullptr;
  evconnlistener* listener = nullptr;
  event* drain_event = nullptr;
  event* stop_event = nullptr;
  event* idle_sweep = nullptr;  // every half upstream_idle_timeout, when there is one
  std::thread thread;
  std::vector<Connection*> to_flush;
  std::vector<ClientConnection*> clients;
  // Per target, the connections new calls may use (a call goes to the least busy one with room).
  // Keyed with a transparent hash so a call's lookup makes no string.
  std::unordered_map<std::string, std::vector<UpstreamConnection*>, TransparentStringHash, std::equal_to<>> upstreams;
  std::vector<UpstreamConnection*> all_upstreams;
  std::unique_ptr<uint8_t[]> read_buffer{new uint8_t[kReadBufferBytes]};
  std::unique_ptr<uint8_t[]> tls_record{new uint8_t[kMaxTlsRecord]};  // what one SSL_write encrypts
  // Upstream names are looked up without blocking the loop (made when first needed).
  evdns_base* dns = nullptr;
  std::unordered_map<Resolution*, std::unique_ptr<Resolution>> resolutions;
  bool draining = false;
  bool stopping = false;  // no new upstream connections: the worker is closing everything
  std::atomic<int> active_calls{0};  // read by Shutdown from another thread
  // Request bytes the calls hold past flow control (their window already given back): routed
  // messages held for their name, requests kept for a failover. Bounded by held_budget, this
  // worker's share of memory_limit_bytes.
  // Written by the worker only; atomic so that stats() may read them from another thread.
  std::atomic<size_t> held_bytes{0};
  size_t held_budget = SIZE_MAX;
  std::atomic<int64_t> open_clients{0}, open_upstreams{0};
  std::atomic<uint64_t> clients_total{0}, upstreams_total{0}, client_tls_failures{0}, upstream_tls_failures{0};
  nghttp2_session_callbacks* server_callbacks = nullptr;
  nghttp2_session_callbacks* client_callbacks = nullptr;
  nghttp2_option* session_option = nullptr;

  ~Worker();
  void FlushPending();
  void Accept(evutil_socket_t fd);
  void CloseConnection(Connection* c);
  UpstreamConnection* UpstreamFor(const UpstreamAddress& address, std::string* error);
  // Starts connecting to the first of `addresses`; false (and `failure` set) if none can be tried.
  bool Dial(UpstreamConnection* up, const evutil_addrinfo* addresses);
  // Starts connecting to the next address not yet tried; false (and `failure` set) when none is left.
  bool DialNext(UpstreamConnection* up);
  // Records why the address last tried did not connect, and closes its socket.
  void NoteConnectError(UpstreamConnection* up, std::string_view why);
  void Resolved(Resolution* resolution, int error, evutil_addrinfo* addresses);
  void Drain();
  // An upstream connection new calls no longer use: closed when its last call has ended.
  void Retire(UpstreamConnection* up);
  void ForgetFromPool(UpstreamConnection* up);
  // How many calls a connection takes before another is opened to its target: the option, and
  // never more than the upstream's SETTINGS_MAX_CONCURRENT_STREAMS (nghttp2 would queue them).
  size_t StreamsAllowed(UpstreamConnection* up) const;
  void CloseAll();  // after the loop has stopped
  // Retires the upstream connections idle for upstream_idle_timeout.
  void CloseIdleUpstreams();
};

namespace {

bool Connection::WriteOut() {
  if (!connected) return true;
  if (ssl != nullptr && !handshake_done) {
    WantWrite(handshake_wants_write);
    return true;
  }
  while (evbuffer_get_length(out) > 0) {
    if (ssl != nullptr) {
      // One record at a time from a copy: a write that would block is retried with the same bytes
      // (the front of `out` does not change until it is drained).
      uint8_t* record = worker->tls_record.get();
      const ev_ssize_t n = evbuffer_copyout(out, record, kMaxTlsRecord);
      ERR_clear_error();
      const int written = SSL_write(ssl, record, static_cast<int>(n));
      if (written > 0) {
        evbuffer_drain(out, static_cast<size_t>(written));
        continue;
      }
      const int error = SSL_get_error(ssl, written);
      if (error == SSL_ERROR_WANT_WRITE || error == SSL_ERROR_WANT_READ) break;
      ERR_clear_error();
      return false;
    }
    const int n = evbuffer_write(out, fd);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
  if (!waiting_for_socket.empty() && evbuffer_get_length(out) < kOutputHighWater / 2) {
    for (int32_t id : waiting_for_socket) nghttp2_session_resume_data(session, id);
    waiting_for_socket.clear();
    ScheduleFlush();
  }
  WantWrite(evbuffer_get_length(out) > 0);
  return true;
}

// For counters only their worker writes: a plain load and store, no locked instruction.
template <typename T>
void Add(std::atomic<T>& counter, T delta) {
  counter.store(counter.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}

void Connection::ScheduleFlush() {
  if (!flush_scheduled) {
    flush_scheduled = true;
    worker->to_flush.push_back(this);
  }
}

bool Connection::Receive(uint8_t* buffer) {
  if (ssl != nullptr) return ReceiveTls(buffer);
  // A few reads per wake-up at most, so one busy connection does not starve the others.
  for (int round = 0; round < 4; ++round) {
    const ssize_t n = read(fd, buffer, kReadBufferBytes);
    if (n == 0) return false;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    if (nghttp2_session_mem_recv(session, buffer, static_cast<size_t>(n)) < 0) return false;
    if (closing) return false;
    if (static_cast<size_t>(n) < kReadBufferBytes) return true;
  }
  return true;
}

bool Connection::Handshake() {
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl);
  if (rc != 1) {
    const int error = SSL_get_error(ssl, rc);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
      handshake_wants_write = error == SSL_ERROR_WANT_WRITE;
      WantWrite(handshake_wants_write);
      return true;
    }
    failure = absl::StrCat("the TLS handshake failed: ", TlsErrorText(ssl));
    Add<uint64_t>(is_upstream() ? worker->upstream_tls_failures : worker->client_tls_failures, 1);
    return false;
  }
  handshake_done = true;
  handshake_wants_write = false;
  const unsigned char* protocol = nullptr;
  unsigned int length = 0;
  SSL_get0_alpn_selected(ssl, &protocol, &length);
  if (is_upstream() && !(length == 2 && std::memcmp(protocol, "h2", 2) == 0)) {
    failure = "the upstream's TLS did not agree to HTTP/2 (ALPN h2)";
    return false;
  }
  ScheduleFlush();  // what waited for the handshake (the preface, SETTINGS, requests) goes now
  // OpenSSL may have read ahead past the handshake (the peer's SETTINGS, say) when the handshake
  // ended on a write event: those bytes are no longer in the socket to wake a read.
  if (read_event != nullptr) event_active(read_event, EV_READ, 0);
  return true;
}

bool Connection::ReceiveTls(uint8_t* buffer) {
  if (!handshake_done) {
    if (!Handshake()) return false;
    if (!handshake_done) return true;
  }
  // Whole records only, while a full record still fits. OpenSSL reads ahead: when the loop stops for
  // room, what it holds may already be out of the socket, which then wakes no one: come back for it.
  size_t have = 0;
  bool open = true;
  bool waits_for_socket = false;
  while (kReadBufferBytes - have >= kMaxTlsRecord) {
    ERR_clear_error();
    const int n = SSL_read(ssl, buffer + have, static_cast<int>(kReadBufferBytes - have));
    if (n > 0) {
      have += static_cast<size_t>(n);
      continue;
    }
    const int error = SSL_get_error(ssl, n);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
      waits_for_socket = true;
      break;
    }
    if (error == SSL_ERROR_SSL) failure = absl::StrCat("TLS failed: ", TlsErrorText(ssl));
    ERR_clear_error();
    open = false;  // close_notify, a reset, or a TLS error: after what was read is passed on
    break;
  }
  if (have > 0 && nghttp2_session_mem_recv(session, buffer, have) < 0) return false;
  if (open && !closing && !waits_for_socket) event_active(read_event, EV_READ, 0);
  return open && !closing;
}

// Watches a connection's socket: reads always, writes while output waits.
void WatchSocket(Connection* c, event_base* base, bool read_now);

// ---- The call's life, independent of which side an event came from.

// Brings the worker's held_bytes up to date with what the call holds now.
void Recount(Call* call) {
  const size_t held = (call->framer ? call->framer->held_bytes() : 0) + call->kept_request.size();
  Add(call->worker->held_bytes, held - call->held_counted);  // modulo 2^64: a decrease too
  call->held_counted = held;
}

// Frees what a call holds of its request once it has ended with its own status (nothing more of
// the request is read: TakeRequestBytes and the END_STREAM path stop at local_status).
void ReleaseRequest(Call* call) {
  call->framer.reset();
  std::string().swap(call->kept_request);
  call->keep_request = false;
  Recount(call);
}

void MaybeDelete(Call* call) {
  if (!call->client_closed || (call->upstream_id >= 0 && !call->upstream_closed)) return;
  Add(call->worker->held_bytes, 0 - call->held_counted);
  if (call->upstream != nullptr) {
    UpstreamConnection* up = call->upstream;
    up->calls.erase(call->in_upstream);
    call->upstream = nullptr;
    if (up->calls.empty()) up->idle_since = std::chrono::steady_clock::now();
    if (up->retired && up->calls.empty()) call->worker->Retire(up);
  }
  call->worker->active_calls.fetch_sub(1, std::memory_order_release);
  delete call;
}

// Gives window back to the side the bytes came from, as they are passed on (or dropped). A stream
// that has closed on that side still holds its share of the connection's window: that is given back.
void Credit(Connection* from, int32_t stream_id, bool stream_closed, size_t* unconsumed, size_t sent) {
  const size_t n = std::min(*unconsumed, sent);
  if (n == 0 || from == nullptr || stream_id < 0) return;
  *unconsumed -= n;
  if (stream_closed) {
    nghttp2_session_consume_connection(from->session, n);
  } else {
    nghttp2_session_consume(from->session, stream_id, n);
  }
  from->ScheduleFlush();
}

void CreditClient(Call* call, size_t sent) {
  if (call->client_closed) return;  // its connection may be gone; its window went with the stream
  Credit(call->client, call->client_id, false, &call->unconsumed_from_client, sent);
}

void CreditUpstream(Call* call, size_t sent) {
  Credit(call->upstream, call->upstream_id, call->upstream_closed, &call->unconsumed_from_upstream, sent);
}

ssize_t ReadToClient(nghttp2_session*, int32_t stream_id, uint8_t*, size_t length, uint32_t* flags,
                     nghttp2_data_source* source, void* user_data);
ssize_t ReadToUpstream(nghttp2_session*, int32_t stream_id, uint8_t*, size_t length, uint32_t* flags,
                       nghttp2_data_source* source, void* user_data);

bool TryFailOver(Call* call, int grpc_status);

void SubmitResponse(Call* call) {
  if (call->response_submitted || call->client_closed) return;
  call->response_submitted = true;
  std::vector<nghttp2_nv> nv;
  nv.reserve(call->response_headers.size() + 8);
  bool has_status = false;
  for (const HeaderField& f : call->response_headers) {
    if (f.name == ":status") has_status = true;
    if (!f.name.starts_with(':') || f.name == ":status") nv.push_back(Nv(f.name, f.value));
  }
  if (!has_status) {
    nv.insert(nv.begin(), Nv(":status", "200"));
    nv.push_back(Nv("content-type", "application/grpc"));
  }
  // The handler's values may be built on the fly: they live in `extra` until nghttp2 copied them
  // (nghttp2_submit_response copies every name and value).
  std::vector<std::string> extra;
  call->handler->ForEachResponseHeader([&](std::string_view name, std::string_view value) {
    extra.emplace_back(name);
    extra.emplace_back(value);
  });
  for (size_t i = 0; i + 1 < extra.size(); i += 2) nv.push_back(Nv(extra[i], extra[i + 1]));
  nghttp2_data_provider provider{};
  provider.source.ptr = call;
  provider.read_callback = ReadToClient;
  nghttp2_submit_response(call->client->session, call->client_id, nv.data(), nv.size(), &provider);
  call->client->ScheduleFlush();
}

// The trailers to end the client's stream with: the upstream's, or the sidecar's own verdict.
void SubmitTrailers(Call* call) {
  if (call->trailers_submitted || call->client_closed) return;
  call->trailers_submitted = true;
  if (!call->local_status && IsUpstreamReset(call->trailers)) {
    call->local_status = {kGrpcUnavailable, "the upstream reset the call"};
  }
  std::vector<nghttp2_nv> nv;
  std::string code_text, message;
  if (call->local_status) {
    code_text = std::to_string(call->local_status->first);
    message = PercentEncode(call->local_status->second);
    nv.push_back(Nv("grpc-status", code_text));
    if (!message.empty()) nv.push_back(Nv("grpc-message", message));
    call->sent_status = call->local_status->first;
  } else {
    for (const HeaderField& f : call->trailers) {
      if (!f.name.starts_with(':') && !IsConnectionSpecific(f.name)) nv.push_back(Nv(f.name, f.value));
    }
    std::optional<int> code = ParseGrpcStatus(call->trailers);
    if (!code) {
      code_text = std::to_string(kGrpcUnknown);
      nv.push_back(Nv("grpc-status", code_text));
      nv.push_back(Nv("grpc-message", "the upstream ended the call without a grpc-status"));
      code = kGrpcUnknown;
    }
    call->sent_status = *code;
  }
  nghttp2_submit_trailer(call->client->session, call->client_id, nv.data(), nv.size());
  call->client->ScheduleFlush();
}

// Ends the call with the sidecar's own status: as a trailers-only response when nothing was sent
// yet, else as trailers after what is already on its way. The upstream stream, if any, is reset.
void FailCall(Call* call, int code, std::string message) {
  if (call->local_status || call->trailers_submitted) return;
  call->local_status = {code, std::move(message)};
  if (call->upstream != nullptr && call->upstream_id >= 0 && !call->upstream_closed) {
    nghttp2_submit_rst_stream(call->upstream->session, NGHTTP2_FLAG_NONE, call->upstream_id, NGHTTP2_CANCEL);
    call->upstream->ScheduleFlush();
  }
  if (call->client_closed) return;
  if (!call->response_submitted) {
    call->response_submitted = true;
    call->trailers_submitted = true;
    call->sent_status = code;
    const std::string code_text = std::to_string(code);
    const std::string encoded = PercentEncode(call->local_status->second);
    nghttp2_nv nv[] = {Nv(":status", "200"), Nv("content-type", "application/grpc"), Nv("grpc-status", code_text),
                       Nv("grpc-message", encoded)};
    nghttp2_submit_response(call->client->session, call->client_id, nv, encoded.empty() ? 3 : 4, nullptr);
    // What the client still sends is read and dropped (OnClientData) until the stream is reset once
    // these headers are out (OnClientFrameSent): a RST_STREAM submitted now could overtake them in
    // nghttp2's queue, and gRPC clients then report INTERNAL.
  } else {
    evbuffer_drain(call->to_client, evbuffer_get_length(call->to_client));
    nghttp2_session_resume_data(call->client->session, call->client_id);
  }
  call->client->ScheduleFlush();
}

void OpenUpstream(Call* call, std::optional<UpstreamAddress> failover = std::nullopt) {
  const UpstreamAddress address = failover ? *failover : call->handler->Upstream();
  if (!failover) call->keep_request = call->handler->MayFailOver();
  std::string error;
  UpstreamConnection* up = call->client->worker->UpstreamFor(address, &error);
  if (up == nullptr) {
    FailCall(call, kGrpcUnavailable, error);
    return;
  }
  std::vector<nghttp2_nv> nv;
  nv.reserve(call->request_headers.size() + 4);
  nv.push_back(Nv(":method", "POST"));
  nv.push_back(Nv(":scheme", up->ssl != nullptr ? "https" : "http"));
  nv.push_back(Nv(":path", call->path));
  nv.push_back(Nv(":authority", up->target));
  // The upstream gets the time left of the client's deadline, as each gRPC hop sends it: the call
  // may have waited here for its first message (and, on a failover, for the first upstream).
  std::string timeout_left;
  for (const HeaderField& f : call->request_headers) {
    if (f.name == "grpc-timeout") {
      if (const std::optional<int64_t> timeout = ParseGrpcTimeout(f.value)) {
        const int64_t left = *timeout - std::chrono::duration_cast<std::chrono::nanoseconds>(
                                             std::chrono::steady_clock::now() - call->started)
                                             .count();
        if (left <= 0) {
          FailCall(call, kGrpcDeadlineExceeded, "the deadline passed before the call reached the upstream");
          return;
        }
        timeout_left = FormatGrpcTimeout(left);
        nv.push_back(Nv(f.name, timeout_left));
        continue;
      }
    }
    nv.push_back(Nv(f.name, f.value));
  }
  nghttp2_data_provider provider{};
  provider.source.ptr = call;
  provider.read_callback = ReadToUpstream;
  const int32_t id = nghttp2_submit_request(up->session, nullptr, nv.data(), nv.size(), &provider, call);
  if (id < 0) {
    FailCall(call, kGrpcUnavailable,
             absl::StrCat("cannot open a stream to ", ToAbsl(address.target), ": ", nghttp2_strerror(id)));
    return;
  }
  call->upstream = up;
  call->upstream_id = id;
  call->in_upstream = up->calls.insert(up->calls.end(), call);
  up->ScheduleFlush();
}

// Passes request bytes through the call's framer into to_upstream.
void TakeRequestBytes(Call* call, std::string_view bytes) {
  if (call->local_status) return;
  const bool was_open = call->upstream_id >= 0;
  absl::Status s = call->framer->Feed(
      bytes, [call](std::string_view head) { return call->handler->Decide(head); },
      [call](std::string_view out) {
        if (call->upstream_id < 0 && !call->local_status) OpenUpstream(call);
        evbuffer_add(call->to_upstream, out.data(), out.size());
        if (call->keep_request) call->kept_request.append(out);
      });
  if (!s.ok()) {
    FailCall(call, static_cast<int>(s.code()), std::string(s.message()));
    ReleaseRequest(call);
    return;
  }
  // Held bytes (a routed message's head) are given back as window at once: they are bounded by
  // max_message_bytes per call, and a window that never reopened could leave a long name stuck.
  // Over all calls they are bounded by the worker's share of memory_limit_bytes: the call that
  // would hold more past it ends RESOURCE_EXHAUSTED, as gRPC's resource quota ends streams.
  const size_t held = call->framer->held_bytes();
  const size_t counted_before = call->held_counted;
  Recount(call);
  Worker* worker = call->worker;
  const size_t worker_held = worker->held_bytes.load(std::memory_order_relaxed);
  if (call->held_counted > counted_before && worker_held > worker->held_budget) {
    FailCall(call, kGrpcResourceExhausted,
             absl::StrCat("the sidecar holds ", worker_held, " bytes of requests not yet passed on, past its ",
                          "memory_limit_bytes share of ", worker->held_budget));
    ReleaseRequest(call);
    return;
  }
  if (held > 0) CreditClient(call, held);
  if (call->upstream_id >= 0 && (was_open || evbuffer_get_length(call->to_upstream) > 0)) {
    nghttp2_session_resume_data(call->upstream->session, call->upstream_id);
    call->upstream->ScheduleFlush();
  }
}

// ---- nghttp2 data providers: bodies are moved, not copied, into the socket's output.

ssize_t ReadToUpstream(nghttp2_session*, int32_t stream_id, uint8_t*, size_t length, uint32_t* flags,
                       nghttp2_data_source* source, void* user_data) {
  Call* call = static_cast<Call*>(source->ptr);
  if (static_cast<Connection*>(user_data)->OutputFull(stream_id)) return NGHTTP2_ERR_DEFERRED;
  const size_t have = evbuffer_get_length(call->to_upstream);
  const size_t n = std::min(have, length);
  if (n == 0 && !call->client_ended) return NGHTTP2_ERR_DEFERRED;
  *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (call->client_ended && n == have) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

ssize_t ReadToClient(nghttp2_session*, int32_t stream_id, uint8_t*, size_t length, uint32_t* flags,
                     nghttp2_data_source* source, void* user_data) {
  Call* call = static_cast<Call*>(source->ptr);
  if (static_cast<Connection*>(user_data)->OutputFull(stream_id)) return NGHTTP2_ERR_DEFERRED;
  if (call->local_status) {
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    SubmitTrailers(call);
    return 0;
  }
  const size_t have = evbuffer_get_length(call->to_client);
  const size_t n = std::min(have, length);
  const bool done = call->upstream_ended || call->upstream_failed;
  if (n == 0 && !done) return NGHTTP2_ERR_DEFERRED;
  *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (done && n == have) {
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    SubmitTrailers(call);
  }
  return static_cast<ssize_t>(n);
}

int SendData(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd, size_t length,
             nghttp2_data_source* source, void* user_data) {
  auto* conn = static_cast<Connection*>(user_data);
  Call* call = static_cast<Call*>(source->ptr);
  evbuffer* out = conn->out;
  evbuffer_add(out, framehd, 9);
  if (frame->data.padlen > 0) {
    const uint8_t pad = static_cast<uint8_t>(frame->data.padlen - 1);
    evbuffer_add(out, &pad, 1);
  }
  if (conn->is_upstream()) {
    evbuffer_remove_buffer(call->to_upstream, out, length);
    CreditClient(call, length);
  } else {
    evbuffer_remove_buffer(call->to_client, out, length);
    CreditUpstream(call, length);
  }
  if (frame->data.padlen > 1) {
    static constexpr uint8_t kZeros[256] = {};
    evbuffer_add(out, kZeros, frame->data.padlen - 1);
  }
  return 0;
}

ssize_t SendBytes(nghttp2_session*, const uint8_t* data, size_t length, int, void* user_data) {
  auto* conn = static_cast<Connection*>(user_data);
  evbuffer* out = conn->out;
  if (evbuffer_get_length(out) >= kOutputHighWater) {
    // Let the socket take some first; only if it cannot does the connection wait for it.
    if (!conn->WriteOut() || evbuffer_get_length(out) >= kOutputHighWater) return NGHTTP2_ERR_WOULDBLOCK;
  }
  evbuffer_add(out, data, length);
  return static_cast<ssize_t>(length);
}

// ---- Client (server-side session) callbacks.

int OnClientBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto* conn = static_cast<ClientConnection*>(user_data);
  auto* call = new Call();
  call->client = conn;
  call->worker = conn->worker;
  call->in_client = conn->calls.insert(conn->calls.end(), call);
  call->client_id = frame->hd.stream_id;
  conn->worker->active_calls.fetch_add(1, std::memory_order_relaxed);
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, call);
  return 0;
}

int OnClientHeader(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                   const uint8_t* value, size_t valuelen, uint8_t, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (call == nullptr || call->handler) return 0;  // trailers from a client are not forwarded
  std::string_view n(reinterpret_cast<const char*>(name), namelen);
  std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":path") {
    call->path.assign(v);
  } else if (!n.starts_with(':') && !IsConnectionSpecific(n)) {
    call->request_headers.push_back({std::string(n), std::string(v)});
  }
  return 0;
}

void StartCall(Call* call) {
  Worker* worker = call->client->worker;
  call->started = std::chrono::steady_clock::now();
  call->handler = worker->factory->NewCall(call->path, call->request_headers);
  RequestFramer::Options options;
  options.route = call->handler->route();
  options.max_message_bytes = worker->options.max_message_bytes;
  for (const HeaderField& f : call->request_headers) {
    if (f.name == "grpc-encoding") options.encoding = ParseMessageEncoding(f.value);
  }
  call->framer.emplace(options);
  if (options.route == RequestFramer::Options::Route::kNone) OpenUpstream(call);
}

int OnClientFrame(nghttp2_session* session, const nghttp2_frame* frame, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (call == nullptr) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS && !call->handler) StartCall(call);
  if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !call->client_ended) {
    call->client_ended = true;
    if (call->local_status) return 0;
    if (absl::Status s = call->framer->Finish(); !s.ok()) {
      FailCall(call, static_cast<int>(s.code()), std::string(s.message()));
      return 0;
    }
    // A routed call whose body held no message still goes upstream (and ends there).
    if (call->upstream_id < 0) OpenUpstream(call);
    if (call->upstream_id >= 0) {
      nghttp2_session_resume_data(call->upstream->session, call->upstream_id);
      call->upstream->ScheduleFlush();
    }
  }
  return 0;
}

int OnClientData(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data, size_t len, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call == nullptr || call->local_status) {
    nghttp2_session_consume(session, stream_id, len);
    return 0;
  }
  call->unconsumed_from_client += len;
  TakeRequestBytes(call, std::string_view(reinterpret_cast<const char*>(data), len));
  if (call->local_status && call->unconsumed_from_client > 0) {
    nghttp2_session_consume(session, stream_id, call->unconsumed_from_client);
    call->unconsumed_from_client = 0;
  }
  return 0;
}

// The client's side of a call is over: closed by nghttp2, or cut with its connection.
void CloseClientSide(Call* call, uint32_t error_code) {
  if (call->client_closed) return;
  // What the upstream sent that will not reach the client now is given back to its connection.
  evbuffer_drain(call->to_client, evbuffer_get_length(call->to_client));
  CreditUpstream(call, call->unconsumed_from_upstream);
  // The client's connection still counts what the stream received and the sidecar has not passed on.
  Credit(call->client, call->client_id, /*stream_closed=*/true, &call->unconsumed_from_client,
         call->unconsumed_from_client);
  call->client_closed = true;
  call->client->calls.erase(call->in_client);
  const bool completed = call->trailers_submitted && call->sent_status && error_code == NGHTTP2_NO_ERROR;
  // An upstream stream still open now is reset even when the call completed: an upstream that
  // answered before the request ended (and did not reset the stream itself, as gRPC servers do)
  // would otherwise keep it, and the call, open for good.
  if (call->upstream != nullptr && !call->upstream_closed) {
    nghttp2_submit_rst_stream(call->upstream->session, NGHTTP2_FLAG_NONE, call->upstream_id,
                              completed ? NGHTTP2_NO_ERROR : NGHTTP2_CANCEL);
    call->upstream->ScheduleFlush();
  }
  if (call->handler && !call->finished) {
    call->finished = true;
    call->handler->Finished(completed ? *call->sent_status : kGrpcCancelled);
  }
  MaybeDelete(call);
}

// A response that ended before its request did: the rest of the request is not wanted. As gRPC
// servers do (RFC 9113 §8.1), the stream is reset with NO_ERROR, after the trailers so that it
// cannot overtake them, and the call is freed without waiting for a client that may never finish.
int OnClientFrameSent(nghttp2_session* session, const nghttp2_frame* frame, void*) {
  if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
      !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    return 0;
  }
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (call != nullptr && !call->client_ended) {
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
  }
  return 0;
}

int OnClientStreamClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call != nullptr) CloseClientSide(call, error_code);
  return 0;
}

// ---- Upstream (client-side session) callbacks.

int OnUpstreamHeader(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                     const uint8_t* value, size_t valuelen, uint8_t, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (call == nullptr) return 0;
  std::string_view n(reinterpret_cast<const char*>(name), namelen);
  if (IsConnectionSpecific(n)) return 0;
  HeaderField field{std::string(n), std::string(reinterpret_cast<const char*>(value), valuelen)};
  if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE && !call->response_submitted) {
    call->response_headers.push_back(std::move(field));
  } else {
    call->trailers.push_back(std::move(field));
  }
  return 0;
}

int OnUpstreamFrame(nghttp2_session* session, const nghttp2_frame* frame, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (call == nullptr || call->local_status || call->client_closed) return 0;
  const bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE && end &&
      (ParseGrpcStatus(call->response_headers) == kGrpcUnavailable || IsUpstreamReset(call->response_headers)) &&
      TryFailOver(call, kGrpcUnavailable)) {
    return 0;
  }
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE && end) {
    // Trailers-only: the status is in the headers. The client gets headers (with the sidecar's
    // tags) and then trailers, as a gRPC server sends them.
    std::vector<HeaderField> keep;
    for (HeaderField& f : call->response_headers) {
      if (f.name == ":status" || f.name == "content-type") {
        keep.push_back(std::move(f));
      } else {
        call->trailers.push_back(std::move(f));
      }
    }
    call->response_headers = std::move(keep);
  }
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) SubmitResponse(call);
  if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) && end) {
    call->upstream_ended = true;
    SubmitResponse(call);
    nghttp2_session_resume_data(call->client->session, call->client_id);
    call->client->ScheduleFlush();
  }
  return 0;
}

// Follows the response's 5-byte message prefixes through `data` (the payload is only counted, not
// read) so that a message over max_message_bytes ends the call before any of it is passed on, as
// the gRPC plane's channel does. False, with the message's size, if one is over.
bool ResponseMessagesFit(Call* call, const uint8_t* data, size_t len, uint32_t max, uint64_t* oversized) {
  while (len > 0) {
    if (call->response_message_left > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(len, call->response_message_left));
      call->response_message_left -= n;
      data += n;
      len -= n;
      continue;
    }
    const size_t n = std::min(len, call->response_prefix.size() - call->response_prefix_seen);
    std::memcpy(call->response_prefix.data() + call->response_prefix_seen, data, n);
    call->response_prefix_seen += n;
    data += n;
    len -= n;
    if (call->response_prefix_seen < call->response_prefix.size()) break;
    call->response_prefix_seen = 0;
    const uint8_t* p = call->response_prefix.data() + 1;
    const uint32_t size = uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
    if (size > max) {
      *oversized = size;
      return false;
    }
    call->response_message_left = size;
  }
  return true;
}

int OnUpstreamData(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data, size_t len, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call == nullptr || call->local_status || call->client_closed) {
    nghttp2_session_consume(session, stream_id, len);
    return 0;
  }
  const uint32_t max = call->worker->options.max_message_bytes;
  if (uint64_t oversized = 0; !ResponseMessagesFit(call, data, len, max, &oversized)) {
    nghttp2_session_consume(session, stream_id, len);
    FailCall(call, kGrpcResourceExhausted,
             absl::StrCat("the upstream's response message is larger than max (", oversized, " vs. ", max, " bytes)"));
    return 0;
  }
  call->unconsumed_from_upstream += len;
  evbuffer_add(call->to_client, data, len);
  SubmitResponse(call);
  nghttp2_session_resume_data(call->client->session, call->client_id);
  call->client->ScheduleFlush();
  return 0;
}

// Sends the whole request again to the next upstream the handler names, when the one it went to
// ended the call with `grpc_status` before any of its answer was passed on. The old stream is
// forgotten (reset if still open).
bool TryFailOver(Call* call, int grpc_status) {
  if (!call->keep_request || !call->client_ended || call->response_submitted || call->local_status ||
      call->client_closed) {
    return false;
  }
  const std::optional<UpstreamAddress> next = call->handler->FailOver(grpc_status);
  if (!next) return false;
  if (call->upstream != nullptr) {
    UpstreamConnection* old = call->upstream;
    old->calls.erase(call->in_upstream);
    if (old->retired && old->calls.empty()) call->worker->Retire(old);
    nghttp2_session_set_stream_user_data(old->session, call->upstream_id, nullptr);
    if (!call->upstream_closed) {
      nghttp2_submit_rst_stream(old->session, NGHTTP2_FLAG_NONE, call->upstream_id, NGHTTP2_CANCEL);
    }
    Credit(old, call->upstream_id, /*stream_closed=*/true, &call->unconsumed_from_upstream,
           call->unconsumed_from_upstream);
    old->ScheduleFlush();
  }
  call->upstream = nullptr;
  call->upstream_id = -1;
  call->upstream_closed = false;
  call->upstream_ended = false;
  call->upstream_failed = false;
  call->unconsumed_from_upstream = 0;
  call->response_headers.clear();
  call->trailers.clear();
  evbuffer_drain(call->to_client, evbuffer_get_length(call->to_client));
  evbuffer_drain(call->to_upstream, evbuffer_get_length(call->to_upstream));
  evbuffer_add(call->to_upstream, call->kept_request.data(), call->kept_request.size());
  call->keep_request = false;  // once
  std::string().swap(call->kept_request);
  Recount(call);
  OpenUpstream(call, next);
  return true;
}

void UpstreamGone(Call* call, std::string_view why) {
  call->upstream_closed = true;
  if (!call->upstream_ended && TryFailOver(call, kGrpcUnavailable)) return;
  if (!call->upstream_ended && !call->local_status && !call->client_closed) {
    call->upstream_failed = true;
    FailCall(call, kGrpcUnavailable, std::string(why));
  }
}

int OnUpstreamStreamClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call == nullptr) return 0;
  // What the client sent that will not reach the upstream now is given back to its connection.
  evbuffer_drain(call->to_upstream, evbuffer_get_length(call->to_upstream));
  CreditClient(call, call->unconsumed_from_client);
  UpstreamGone(call, error_code == NGHTTP2_REFUSED_STREAM ? "the upstream refused the call (it is going away)"
                                                          : "the upstream reset the call");
  MaybeDelete(call);
  return 0;
}

// ---- Sockets.

void OnReadable(evutil_socket_t, short, void* arg) {
  auto* conn = static_cast<Connection*>(arg);
  Worker* worker = conn->worker;
  if (!conn->Receive(worker->read_buffer.get())) {
    worker->CloseConnection(conn);
  } else {
    conn->ScheduleFlush();
  }
  worker->FlushPending();
}

void OnWritable(evutil_socket_t fd, short, void* arg) {
  auto* conn = static_cast<Connection*>(arg);
  Worker* worker = conn->worker;
  if (!conn->connected) {
    int error = 0;
    socklen_t len = sizeof error;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
      // Only upstream connections connect; the next of their addresses is tried.
      auto* up = static_cast<UpstreamConnection*>(conn);
      worker->NoteConnectError(up, std::strerror(error != 0 ? error : errno));
      if (!worker->DialNext(up)) worker->CloseConnection(conn);
      worker->FlushPending();
      return;
    }
    conn->connected = true;
    event_add(conn->read_event, nullptr);
  }
  if (conn->ssl != nullptr && !conn->handshake_done && !conn->Handshake()) {
    worker->CloseConnection(conn);
    worker->FlushPending();
    return;
  }
  conn->ScheduleFlush();
  worker->FlushPending();
}

void WatchSocket(Connection* c, event_base* base, bool read_now) {
  c->read_event = event_new(base, c->fd, EV_READ | EV_PERSIST, OnReadable, c);
  c->write_event = event_new(base, c->fd, EV_WRITE | EV_PERSIST, OnWritable, c);
  if (read_now) event_add(c->read_event, nullptr);
}

nghttp2_session_callbacks* MakeCallbacks(bool server) {
  nghttp2_session_callbacks* cb;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_send_callback(cb, SendBytes);
  nghttp2_session_callbacks_set_send_data_callback(cb, SendData);
  if (server) {
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, OnClientBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(cb, OnClientHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, OnClientFrame);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, OnClientData);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, OnClientStreamClose);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, OnClientFrameSent);
  } else {
    nghttp2_session_callbacks_set_on_header_callback(cb, OnUpstreamHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, OnUpstreamFrame);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, OnUpstreamData);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, OnUpstreamStreamClose);
  }
  return cb;
}

void SubmitSettings(nghttp2_session* session, const H2ProxyOptions& options, bool server) {
  std::vector<nghttp2_settings_entry> settings = {
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, options.stream_window_bytes},
  };
  if (server) settings.push_back({NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams});
  else settings.push_back({NGHTTP2_SETTINGS_ENABLE_PUSH, 0});
  nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, settings.data(), settings.size());
  nghttp2_session_set_local_window_size(session, NGHTTP2_FLAG_NONE, 0,
                                        static_cast<int32_t>(options.connection_window_bytes));
}

void OnAccept(evconnlistener*, evutil_socket_t fd, sockaddr*, int, void* arg) {
  static_cast<Worker*>(arg)->Accept(fd);
}

void OnDrain(evutil_socket_t, short, void* arg) { static_cast<Worker*>(arg)->Drain(); }
void OnStop(evutil_socket_t, short, void* arg) { event_base_loopbreak(static_cast<Worker*>(arg)->base); }
void OnIdleSweep(evutil_socket_t, short, void* arg) { static_cast<Worker*>(arg)->CloseIdleUpstreams(); }

absl::StatusOr<evutil_socket_t> BindReusePort(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_text = std::to_string(port);
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &res); rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  const evutil_socket_t fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  const int rc = bind(fd, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (rc != 0 || listen(fd, 1024) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", port, ": ", why));
  }
  return fd;
}

}  // namespace

H2Proxy::Worker::~Worker() {
  for (ClientConnection* c : clients) delete c;
  for (UpstreamConnection* u : all_upstreams) delete u;
  if (dns) evdns_base_free(dns, /*fail_requests=*/0);
  for (auto& [r, owned] : resolutions) {
    if (owned->addresses) evutil_freeaddrinfo(owned->addresses);
  }
  if (listener) evconnlistener_free(listener);
  if (drain_event) event_free(drain_event);
  if (stop_event) event_free(stop_event);
  if (idle_sweep) event_free(idle_sweep);
  if (base) event_base_free(base);
  if (server_callbacks) nghttp2_session_callbacks_del(server_callbacks);
  if (client_callbacks) nghttp2_session_callbacks_del(client_callbacks);
  if (session_option) nghttp2_option_del(session_option);
}

void H2Proxy::Worker::FlushPending() {
  while (!to_flush.empty()) {
    Connection* c = to_flush.back();
    to_flush.pop_back();
    c->flush_scheduled = false;
    if (c->closing) continue;
    if (!c->Send()) CloseConnection(c);
  }
}

void H2Proxy::Worker::Accept(evutil_socket_t fd) {
  auto* conn = new ClientConnection();
  conn->worker = this;
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  evutil_make_socket_nonblocking(fd);
  conn->fd = fd;
  if (options.listener_tls != nullptr) {
    auto ssl = options.listener_tls->NewSession("");
    if (!ssl.ok()) {
      delete conn;  // closes the socket: the client sees its connection refused
      return;
    }
    conn->ssl = *ssl;
    SSL_set_fd(conn->ssl, fd);
  }
  WatchSocket(conn, base, /*read_now=*/true);
  nghttp2_session_server_new2(&conn->session, server_callbacks, conn, session_option);
  SubmitSettings(conn->session, options, /*server=*/true);
  if (draining) {
    nghttp2_submit_goaway(conn->session, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);
  }
  clients.push_back(conn);
  Add<int64_t>(open_clients, 1);
  Add<uint64_t>(clients_total, 1);
  conn->ScheduleFlush();
  FlushPending();
}

void H2Proxy::Worker::CloseConnection(Connection* c) {
  if (c->closing) return;
  c->closing = true;
  if (c->is_upstream()) {
    auto* up = static_cast<UpstreamConnection*>(c);
    if (up->resolving != nullptr) {
      Resolution* lookup = up->resolving;
      up->resolving = nullptr;
      lookup->up = nullptr;
      if (lookup->request != nullptr && !lookup->answered) evdns_getaddrinfo_cancel(lookup->request);
    }
    ForgetFromPool(up);
    // Every call on it ends UNAVAILABLE; their client streams live on until their trailers go.
    std::list<Call*> calls;
    calls.swap(up->calls);
    for (Call* call : calls) {
      call->upstream = nullptr;
      UpstreamGone(call, !up->failure.empty() ? absl::StrCat("the upstream ", up->target, ": ", up->failure)
                         : up->connected      ? "the connection to the upstream failed"
                                              : absl::StrCat("cannot connect to the upstream ", up->target));
      MaybeDelete(call);
    }
    all_upstreams.erase(std::find(all_upstreams.begin(), all_upstreams.end(), up));
    Add<int64_t>(open_upstreams, -1);
  } else {
    auto* client = static_cast<ClientConnection*>(c);
    // nghttp2_session_del does not close streams through callbacks: close them here.
    // (By the call, not the stream id: a stream nghttp2 ignored after it sent GOAWAY is not in the
    // session, but its call is in the list.)
    std::list<Call*> calls = client->calls;
    for (Call* call : calls) CloseClientSide(call, NGHTTP2_CANCEL);
    clients.erase(std::find(clients.begin(), clients.end(), client));
    Add<int64_t>(open_clients, -1);
  }
  to_flush.erase(std::remove(to_flush.begin(), to_flush.end(), c), to_flush.end());
  if (c->ssl != nullptr && c->handshake_done) {
    SSL_shutdown(c->ssl);  // close_notify, if the socket takes it; no wait for the peer's
    ERR_clear_error();
  }
  delete c;
}

UpstreamConnection* H2Proxy::Worker::UpstreamFor(const UpstreamAddress& address, std::string* error) {
  if (stopping) {
    *error = "the sidecar is shutting down";
    return nullptr;
  }
  const std::string_view target = address.target;
  TlsContext* const tls = address.tls != nullptr ? address.tls->get() : nullptr;
  auto it = upstreams.find(target);
  if (it != upstreams.end()) {
    std::vector<UpstreamConnection*>& pool = it->second;
    UpstreamConnection* least_busy = nullptr;
    for (size_t i = 0; i < pool.size();) {
      UpstreamConnection* current = pool[i];
      if (current->tls.get() != tls || !nghttp2_session_check_request_allowed(current->session)) {
        // Going away, or made with TLS a reload replaced: new calls get another connection; this
        // one closes once its calls have ended.
        pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(i));
        Retire(current);
        continue;
      }
      if (current->calls.size() < StreamsAllowed(current) &&
          (least_busy == nullptr || current->calls.size() < least_busy->calls.size())) {
        least_busy = current;
      }
      ++i;
    }
    if (least_busy != nullptr) return least_busy;
  }
  auto host_port = SplitHostPort(target);
  if (!host_port.ok()) {
    *error = std::string(host_port.status().message());
    return nullptr;
  }
  auto* up = new UpstreamConnection();
  up->worker = this;
  up->target = std::string(target);
  up->host = host_port->first;
  up->port = host_port->second;
  up->connected = false;  // until the name is known and the connect has completed
  up->idle_since = std::chrono::steady_clock::now();
  if (tls != nullptr) {
    auto ssl = tls->NewSession(up->host);
    if (!ssl.ok()) {
      *error = absl::StrCat("cannot start TLS to the upstream ", ToAbsl(target), ": ", ssl.status().message());
      delete up;
      return nullptr;
    }
    up->ssl = *ssl;
    up->tls = *address.tls;
  }
  // Frames wait in the output until the connection is up.
  nghttp2_session_client_new2(&up->session, client_callbacks, up, session_option);
  SubmitSettings(up->session, options, /*server=*/false);

  evutil_addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  // What is known at once: a numeric address, or (inside evdns_getaddrinfo) an /etc/hosts name.
  // Names that need a DNS server are answered later, from the loop (Resolved), while the worker
  // serves on.
  int lookup_error = 0;
  evutil_addrinfo* addresses = nullptr;
  bool known_now = true;
  evutil_addrinfo numeric_hints = hints;
  numeric_hints.ai_flags = EVUTIL_AI_NUMERICHOST;
  if (evutil_getaddrinfo(up->host.c_str(), up->port.c_str(), &numeric_hints, &addresses) != 0) {
    addresses = nullptr;
    if (dns == nullptr) {
      dns = evdns_base_new(base, options.nameservers.empty() ? EVDNS_BASE_INITIALIZE_NAMESERVERS : 0);
      if (dns != nullptr && !options.nameservers.empty()) {
        evdns_base_load_hosts(dns, "/etc/hosts");
        for (const std::string& server : options.nameservers) evdns_base_nameserver_ip_add(dns, server.c_str());
      }
    }
    if (dns == nullptr) {
      lookup_error = EVUTIL_EAI_FAIL;
    } else {
      auto owned = std::make_unique<Resolution>();
      Resolution* lookup = owned.get();
      resolutions.emplace(lookup, std::move(owned));
      lookup->worker = this;
      lookup->up = up;
      up->resolving = lookup;
      auto answered = [](int result, evutil_addrinfo* found, void* arg) {
        auto* r = static_cast<Resolution*>(arg);
        if (r->up == nullptr) {  // cancelled: the connection is gone
          if (found) evutil_freeaddrinfo(found);
          r->worker->resolutions.erase(r);
          return;
        }
        const bool inline_answer = r->request == nullptr && !r->answered;
        r->answered = true;
        if (inline_answer) {  // inside evdns_getaddrinfo: UpstreamFor takes it from here
          r->error = result;
          r->addresses = found;
          return;
        }
        r->up->worker->Resolved(r, result, found);
      };
      lookup->request = evdns_getaddrinfo(dns, up->host.c_str(), up->port.c_str(), &hints, answered, lookup);
      known_now = lookup->answered;
      if (known_now) {
        up->resolving = nullptr;
        lookup_error = lookup->error;
        addresses = lookup->addresses;
        resolutions.erase(lookup);
      }
    }
  }
  if (known_now) {
    // Dial now, or refuse the call with why.
    if (lookup_error != 0) {
      *error = absl::StrCat("cannot resolve the upstream ", ToAbsl(target), ": ", evutil_gai_strerror(lookup_error));
      delete up;
      return nullptr;
    }
    const bool dialled = Dial(up, addresses);
    if (addresses) evutil_freeaddrinfo(addresses);
    if (!dialled) {
      *error = absl::StrCat("the upstream ", ToAbsl(target), ": ", up->failure);
      delete up;
      return nullptr;
    }
  }
  upstreams[up->target].push_back(up);
  all_upstreams.push_back(up);
  Add<int64_t>(open_upstreams, 1);
  Add<uint64_t>(upstreams_total, 1);
  return up;
}

bool H2Proxy::Worker::Dial(UpstreamConnection* up, const evutil_addrinfo* addresses) {
  for (const evutil_addrinfo* a = addresses; a != nullptr; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(sockaddr_storage)) continue;
    auto& [address, length] = up->addresses.emplace_back();
    std::memcpy(&address, a->ai_addr, a->ai_addrlen);
    length = static_cast<socklen_t>(a->ai_addrlen);
  }
  if (up->addresses.empty()) {
    up->failure = "no address";
    return false;
  }
  return DialNext(up);
}

namespace {
std::string AddressText(const sockaddr_storage& address) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (address.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
    inet_ntop(AF_INET6, &v6.sin6_addr, host, sizeof host);
    return absl::StrCat("[", host, "]:", ntohs(v6.sin6_port));
  }
  const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
  inet_ntop(AF_INET, &v4.sin_addr, host, sizeof host);
  return absl::StrCat(host, ":", ntohs(v4.sin_port));
}
}  // namespace

bool H2Proxy::Worker::DialNext(UpstreamConnection* up) {
  // A socket from an address that refused goes first, with its events.
  if (up->read_event) event_free(std::exchange(up->read_event, nullptr));
  if (up->write_event) event_free(std::exchange(up->write_event, nullptr));
  up->write_armed = false;
  if (up->fd >= 0) close(std::exchange(up->fd, -1));
  while (up->next_address < up->addresses.size()) {
    const auto& [address, length] = up->addresses[up->next_address++];
    up->fd = socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (up->fd >= 0) {
      const int one = 1;
      setsockopt(up->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (connect(up->fd, reinterpret_cast<const sockaddr*>(&address), length) == 0 || errno == EINPROGRESS) {
        if (up->ssl != nullptr) SSL_set_fd(up->ssl, up->fd);
        // The connect completes when the socket turns writable (even if connect() already
        // returned 0); the TLS handshake, then the frames waiting in the output, go then.
        WatchSocket(up, base, /*read_now=*/false);
        up->write_armed = true;
        event_add(up->write_event, nullptr);
        return true;
      }
    }
    NoteConnectError(up, std::strerror(errno));
  }
  up->failure = absl::StrCat("cannot connect to ", up->connect_errors);
  return false;
}

void H2Proxy::Worker::NoteConnectError(UpstreamConnection* up, std::string_view why) {
  const sockaddr_storage& address = up->addresses[up->next_address - 1].first;
  absl::StrAppend(&up->connect_errors, up->connect_errors.empty() ? "" : ", ", AddressText(address), " (",
                  ToAbsl(why), ")");
  if (up->fd >= 0) close(std::exchange(up->fd, -1));
}

void H2Proxy::Worker::Resolved(Resolution* lookup, int error, evutil_addrinfo* addresses) {
  UpstreamConnection* up = lookup->up;
  up->resolving = nullptr;
  resolutions.erase(lookup);
  bool dialled = false;
  if (error != 0) {
    up->failure = absl::StrCat("cannot resolve ", up->host, ": ", evutil_gai_strerror(error));
  } else {
    dialled = Dial(up, addresses);
  }
  if (addresses) evutil_freeaddrinfo(addresses);
  if (!dialled) CloseConnection(up);
  FlushPending();
}

void H2Proxy::Worker::ForgetFromPool(UpstreamConnection* up) {
  auto it = upstreams.find(up->target);
  if (it == upstreams.end()) return;
  std::erase(it->second, up);
  if (it->second.empty()) upstreams.erase(it);
}

size_t H2Proxy::Worker::StreamsAllowed(UpstreamConnection* up) const {
  const uint32_t peer = nghttp2_session_get_remote_settings(up->session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  const uint32_t own = options.upstream_max_concurrent_streams == 0 ? UINT32_MAX : options.upstream_max_concurrent_streams;
  return std::min(peer, own);
}

void H2Proxy::Worker::Retire(UpstreamConnection* up) {
  up->retired = true;
  if (up->calls.empty()) {
    // GOAWAY, and the connection is closed once it is written (Send turns false).
    nghttp2_session_terminate_session(up->session, NGHTTP2_NO_ERROR);
    up->ScheduleFlush();
  }
}

void H2Proxy::Worker::CloseAll() {
  stopping = true;

  while (!clients.empty()) CloseConnection(clients.back());
  while (!all_upstreams.empty()) CloseConnection(all_upstreams.back());
}

void H2Proxy::Worker::CloseIdleUpstreams() {
  const auto idle_before = std::chrono::steady_clock::now() - absl::ToChronoNanoseconds(options.upstream_idle_timeout);
  std::vector<UpstreamConnection*> idle;
  for (UpstreamConnection* up : all_upstreams) {
    if (up->calls.empty() && up->connected && !up->retired && up->idle_since <= idle_before) idle.push_back(up);
  }
  for (UpstreamConnection* up : idle) {
    ForgetFromPool(up);
    Retire(up);
  }
  FlushPending();
}

void H2Proxy::Worker::Drain() {
  draining = true;
  // Closed, not just paused: connections the kernel would still accept are refused at once.
  if (listener) evconnlistener_free(listener);
  listener = nullptr;
  for (ClientConnection* c : clients) {
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->session),
                          NGHTTP2_NO_ERROR, nullptr, 0);
    c->ScheduleFlush();
  }
  FlushPending();
}

absl::StatusOr<std::unique_ptr<H2Proxy>> H2Proxy::Start(const H2ProxyOptions& options, CallHandlerFactory* factory) {
  static std::once_flag threads_once;
  std::call_once(threads_once, [] {
    evthread_use_pthreads();
    // Bodies pass through as 16 KiB buffers that live for microseconds. glibc would give the top
    // of the heap back to the kernel after each burst and fault it in again for the next (measured:
    // a third of the plane's CPU with 602 KB responses). Keeping up to 64 MiB of freed heap costs
    // no more than the flow-control windows already allow.
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    // A write to a peer that has gone must fail with EPIPE, not end the process (OpenSSL and
    // evbuffer write with plain write/writev, without MSG_NOSIGNAL).
    signal(SIGPIPE, SIG_IGN);
  });
  auto host_port = SplitHostPort(options.listen);
  if (!host_port.ok()) return host_port.status();
  int port;
  if (!absl::SimpleAtoi(host_port->second, &port)) return absl::InvalidArgumentError("bad listen port");
  std::unique_ptr<H2Proxy> proxy(new H2Proxy());
  const int threads = options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  for (int i = 0; i < threads; ++i) {
    auto fd = BindReusePort(host_port->first, port);
    if (!fd.ok()) return fd.status();
    if (port == 0) {
      sockaddr_storage addr{};
      socklen_t len = sizeof addr;
      getsockname(*fd, reinterpret_cast<sockaddr*>(&addr), &len);
      port = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    }
    auto w = std::make_unique<Worker>();
    w->options = options;
    if (options.memory_limit_bytes > 0) w->held_budget = static_cast<size_t>(options.memory_limit_bytes / threads);
    w->factory = factory;
    w->base = event_base_new();
    w->listener = evconnlistener_new(w->base, OnAccept, w.get(), LEV_OPT_CLOSE_ON_FREE, -1, *fd);
    w->drain_event = event_new(w->base, -1, 0, OnDrain, w.get());
    w->stop_event = event_new(w->base, -1, 0, OnStop, w.get());
    if (options.upstream_idle_timeout > absl::ZeroDuration()) {
      w->idle_sweep = event_new(w->base, -1, EV_PERSIST, OnIdleSweep, w.get());
      const timeval every = absl::ToTimeval(std::max(options.upstream_idle_timeout / 2, absl::Milliseconds(10)));
      event_add(w->idle_sweep, &every);
    }
    w->server_callbacks = MakeCallbacks(true);
    w->client_callbacks = MakeCallbacks(false);
    nghttp2_option_new(&w->session_option);
    // The sidecar gives window back itself, as it forwards (flow control end to end).
    nghttp2_option_set_no_auto_window_update(w->session_option, 1);
    proxy->workers_.push_back(std::move(w));
  }
  proxy->port_ = port;
  for (auto& w : proxy->workers_) {
    w->thread = std::thread([worker = w.get()] { event_base_loop(worker->base, EVLOOP_NO_EXIT_ON_EMPTY); });
  }
  return proxy;
}

int H2Proxy::port() const { return port_; }

int H2Proxy::active_calls() const {
  int n = 0;
  for (const auto& w : workers_) n += w->active_calls.load(std::memory_order_acquire);
  return n;
}

H2ProxyStats H2Proxy::stats() const {
  H2ProxyStats s;
  constexpr auto kRelaxed = std::memory_order_relaxed;
  for (const auto& w : workers_) {
    s.open_client_connections += w->open_clients.load(kRelaxed);
    s.open_upstream_connections += w->open_upstreams.load(kRelaxed);
    s.client_connections_total += w->clients_total.load(kRelaxed);
    s.upstream_connections_total += w->upstreams_total.load(kRelaxed);
    s.client_tls_failures_total += w->client_tls_failures.load(kRelaxed);
    s.upstream_tls_failures_total += w->upstream_tls_failures.load(kRelaxed);
    s.calls_in_flight += w->active_calls.load(kRelaxed);
    s.held_request_bytes += w->held_bytes.load(kRelaxed);
  }
  return s;
}

void H2Proxy::Shutdown(absl::Duration drain) {
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& w : workers_) event_active(w->drain_event, EV_READ, 0);
  // Calls in flight end by themselves; the workers are stopped once they have, or at the deadline.
  const absl::Time deadline = absl::Now() + drain;
  while (active_calls() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  for (auto& w : workers_) {
    event_active(w->stop_event, EV_READ, 0);
    w->thread.join();
  }
  // What is still open is cut: each call ends (CANCELLED for its handler) and is freed.
  for (auto& w : workers_) w->CloseAll();
}

H2Proxy::~H2Proxy() { Shutdown(absl::ZeroDuration()); }

}  // namespace carbon::dataplane
