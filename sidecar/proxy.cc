#include "sidecar/proxy.h"

#include <atomic>
#include <chrono>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "common/happens_before.h"
#include "common/string_view_compat.h"
#include "sidecar/request_bytes.h"

namespace carbon::sidecar {
namespace {

std::string_view View(grpc::string_ref s) { return {s.data(), s.size()}; }

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// The status to give the client for what the upstream call ended with. When the upstream resets
// the stream (a server shutting down or killed), gRPC ends the call CANCELLED with the message
// "CANCELLED" and no details. The client did not cancel, and may retry, so it gets UNAVAILABLE, as
// Envoy answers an upstream reset. A CANCELLED status the upstream sends on purpose, with a
// message of its own, passes through as sent.
grpc::Status ForClient(const grpc::Status& upstream, grpc::ServerContextBase& ctx) {
  if (upstream.error_code() != grpc::StatusCode::CANCELLED || upstream.error_message() != "CANCELLED" ||
      !upstream.error_details().empty() || ctx.IsCancelled()) {
    return upstream;
  }
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the upstream reset the call");
}

// Keys a proxy must not copy from one hop to the next: HTTP/2 pseudo-headers, hop-by-hop
// headers, and grpc- keys, which the gRPC library sets itself on each hop.
bool IsForwardable(std::string_view key) {
  if (key.empty() || key.front() == ':' || absl::StartsWith(ToAbsl(key), "grpc-")) return false;
  static constexpr std::string_view kHopByHop[] = {
      "connection", "keep-alive", "proxy-connection", "te",         "transfer-encoding",
      "upgrade",    "host",       "content-type",     "user-agent", "content-length"};
  for (std::string_view h : kHopByHop) {
    if (key == h) return false;
  }
  return true;
}

void CopyRequestMetadata(const grpc::GenericCallbackServerContext& from, grpc::ClientContext* to) {
  for (const auto& [key, value] : from.client_metadata()) {
    if (IsForwardable(View(key))) to->AddMetadata(std::string(View(key)), std::string(View(value)));
  }
}

void CopyResponseHeaders(const grpc::ClientContext& from, grpc::GenericCallbackServerContext* to) {
  for (const auto& [key, value] : from.GetServerInitialMetadata()) {
    if (IsForwardable(View(key))) to->AddInitialMetadata(std::string(View(key)), std::string(View(value)));
  }
}

void CopyTrailers(const grpc::ClientContext& from, grpc::GenericCallbackServerContext* to) {
  for (const auto& [key, value] : from.GetServerTrailingMetadata()) {
    if (IsForwardable(View(key))) to->AddTrailingMetadata(std::string(View(key)), std::string(View(value)));
  }
}

// Routes `message` when it names a model: rewritten when it names a route, untouched otherwise.
// Errors are INVALID_ARGUMENT or RESOURCE_EXHAUSTED, and the message must then not be forwarded.
absl::Status RouteMessage(const grpc::GenericCallbackServerContext& ctx, CallRouter* router,
                          bool* read_headers, MethodKind kind, grpc::ByteBuffer* message) {
  if (!*read_headers) {
    for (const auto& [key, value] : ctx.client_metadata()) router->ReadHeader(View(key), View(value));
    *read_headers = true;
  }
  // Reused per thread: after the first call on a thread, a rewrite allocates nothing.
  thread_local RequestBytes bytes;
  const bool wants_batch = kind == MethodKind::kInfer || kind == MethodKind::kStreamInfer;
  auto scanned = bytes.Scan(message, wants_batch);
  if (!scanned.ok()) {
    bytes.Clear();
    router->CountMalformed();
    return scanned.status();
  }
  const grpc::Slice* override_bytes = nullptr;
  absl::Status routed = router->Route(*scanned, &override_bytes);
  if (routed.ok() && override_bytes != nullptr) {
    bytes.AppendTo(message, *override_bytes);
  } else {
    bytes.Clear();
  }
  return routed;
}

void AddTags(const CallRouter& router, grpc::GenericCallbackServerContext* ctx) {
  router.ForEachTag([ctx](std::string_view key, std::string_view value) {
    ctx->AddInitialMetadata(std::string(key), std::string(value));
  });
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

// One unary call: read the request, route it, one UnaryCall upstream, write the response and
// status back. No lock: each step starts only after the previous one completed.
class UnaryProxyCall final : public grpc::ServerGenericBidiReactor {
 public:
  UnaryProxyCall(InferenceProxy* proxy, grpc::GenericCallbackServerContext* ctx, MethodKind kind)
      : proxy_(proxy),
        ctx_(ctx),
        kind_(kind),
        router_(proxy->routes_, &proxy->counters_, kind),
        start_(std::chrono::steady_clock::now()) {
    HappensBefore(this);
    StartRead(&request_);
  }

  // Each step starts only from the previous step's reaction; `this` tags the hand-over.
  void OnReadDone(bool ok) override {
    HappensAfter(this);
    if (!ok) {
      HappensBefore(this);
      Finish(ctx_->IsCancelled() ? grpc::Status::CANCELLED
                                 : grpc::Status(grpc::StatusCode::INTERNAL,
                                                "the client sent no request message"));
      return;
    }
    if (kind_ != MethodKind::kOpaqueUnary) {
      if (absl::Status routed = RouteMessage(*ctx_, &router_, &read_headers_, kind_, &request_); !routed.ok()) {
        HappensBefore(this);
        Finish(ToGrpc(routed));
        return;
      }
    }
    CallUpstream(router_.Upstream());
  }

  void OnDone() override {
    HappensAfter(this);
    HappensBefore(proxy_);  // gRPC's server shutdown, then ~InferenceProxy, follow OnDone
    delete this;
  }

 private:
  // The request is sent as routed (already rewritten): a failover sends the same bytes again.
  void CallUpstream(const UpstreamCluster& cluster) {
    upstream_ctx_ = grpc::ClientContext::FromCallbackServerContext(*ctx_);
    CopyRequestMetadata(*ctx_, upstream_ctx_.get());
    HappensBefore(this);
    cluster.stub->UnaryCall(upstream_ctx_.get(), ctx_->method(), grpc::StubOptions(), &request_, &response_,
                            [this](grpc::Status status) { OnUpstreamDone(status); });
  }

  void OnUpstreamDone(const grpc::Status& upstream_status) {
    HappensAfter(this);
    const grpc::Status status = ForClient(upstream_status, *ctx_);
    // Nothing of the answer reached the client (a unary response is held until the end), and none
    // of it came from the cluster: the call can be sent to the next one, with the client's deadline.
    if (router_.MayFailOver(status.error_code()) && !ctx_->IsCancelled() &&
        upstream_ctx_->GetServerInitialMetadata().empty()) {
      CallUpstream(router_.FailOver());
      return;
    }
    router_.Finish(status.error_code(), SecondsSince(start_));
    CopyResponseHeaders(*upstream_ctx_, ctx_);
    AddTags(router_, ctx_);
    CopyTrailers(*upstream_ctx_, ctx_);
    HappensBefore(this);
    if (status.ok()) {
      StartWriteAndFinish(&response_, grpc::WriteOptions(), status);
    } else {
      Finish(status);
    }
  }

  InferenceProxy* proxy_;
  grpc::GenericCallbackServerContext* ctx_;
  MethodKind kind_;
  CallRouter router_;
  bool read_headers_ = false;  // into router_
  const std::chrono::steady_clock::time_point start_;
  std::unique_ptr<grpc::ClientContext> upstream_ctx_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
};

// A streaming (or unknown) call: two pipelines run at once, client -> upstream ("forward") and
// upstream -> client ("backward"), each with one operation in flight at a time. Each pipeline
// holds the upstream reactor open (AddHold) while it may still start an upstream operation from
// outside an upstream reaction, so the upstream's OnDone, which finishes the server side, runs
// only once both have let go. When the upstream ends while the forward pipeline is parked on a
// client read, the backward pipeline lets go of the forward hold too; the per-call mutex makes
// that hand-over safe. It is never shared between calls.
class StreamingProxyCall final : public grpc::ServerGenericBidiReactor {
 public:
  StreamingProxyCall(InferenceProxy* proxy, grpc::GenericCallbackServerContext* ctx, MethodKind kind)
      : proxy_(proxy),
        ctx_(ctx),
        kind_(kind),
        router_(proxy->routes_, &proxy->counters_, kind),
        upstream_(this) {
    // A routed stream waits for its first message, so the variant is known before the upstream
    // call (and its headers) start, and a bad first message never reaches the upstream.
    if (kind_ != MethodKind::kStreamInfer) StartUpstream();
    HappensBefore(&request_);
    StartRead(&request_);
  }

  // Tags for ThreadSanitizer (common/happens_before.h): &request_ follows the forward pipeline,
  // &response_ the backward one, `this` the call's start and end; &refs_ orders the server side's
  // reactions before its OnDone, &upstream_ the upstream's before UpstreamDone.
  void OnReadDone(bool ok) override {
    HappensAfter(&request_);
    HappensBeforeOnExit done(&refs_);
    if (!upstream_started_) {
      if (!ok && ctx_->IsCancelled()) {
        HappensBefore(this);
        Finish(grpc::Status::CANCELLED);
        return;
      }
      if (ok) {
        if (absl::Status routed = RouteMessage(*ctx_, &router_, &read_headers_, kind_, &request_); !routed.ok()) {
          HappensBefore(this);
          Finish(ToGrpc(routed));
          return;
        }
      }
      StartUpstream();
    } else if (ok && kind_ == MethodKind::kStreamInfer) {
      if (absl::Status routed = RouteMessage(*ctx_, &router_, &read_headers_, kind_, &request_); !routed.ok()) {
        // A bad message mid-stream ends the whole call with its reason.
        bool release;
        {
          absl::MutexLock lock(&mu_);
          override_status_ = ToGrpc(routed);
          release = ReleaseForwardLocked();
        }
        upstream_ctx_->TryCancel();
        HappensBefore(this);
        if (release) upstream_.RemoveHold();
        return;
      }
    } else if (!ok && ctx_->IsCancelled()) {
      // The client cancelled: so is the upstream call. A half-close instead could reach the
      // upstream before the cancellation does, and end its stream as if the client had finished.
      bool release;
      {
        absl::MutexLock lock(&mu_);
        release = ReleaseForwardLocked();
      }
      upstream_ctx_->TryCancel();
      HappensBefore(this);
      if (release) upstream_.RemoveHold();
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (!forward_active_) return;  // the upstream has ended; nothing more goes to it
      ++forward_busy_;
    }
    HappensBefore(&request_);
    if (ok) {
      upstream_.StartWrite(&request_);
    } else {
      upstream_.StartWritesDone();
    }
  }

  void OnWriteDone(bool ok) override {
    HappensAfter(&response_);
    HappensBeforeOnExit done(&refs_);
    if (ok) {
      HappensBefore(&response_);
      upstream_.StartRead(&response_);
    } else {
      // The client is gone: stop the upstream and end the backward pipeline.
      upstream_ctx_->TryCancel();
      EndBackward();
    }
  }

  void OnDone() override {
    HappensAfter(this);
    HappensAfter(&refs_);
    HappensBefore(proxy_);  // gRPC's server shutdown, then ~InferenceProxy, follow OnDone
    Unref();
  }

 private:
  class Upstream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    // call_ is set before any reaction can run; &call_ tags that for ThreadSanitizer.
    explicit Upstream(StreamingProxyCall* call) : call_(call) { HappensBefore(&call_); }
    // (The call outlives these: only OnDone, after all of them, gives up the upstream's ref.)
    void OnReadInitialMetadataDone(bool ok) override {
      HappensAfter(&call_);
      HappensBeforeOnExit done(this);
      call_->UpstreamHeaders(ok);
    }
    void OnReadDone(bool ok) override {
      HappensAfter(&call_);
      HappensBeforeOnExit done(this);
      call_->UpstreamRead(ok);
    }
    void OnWriteDone(bool ok) override {
      HappensAfter(&call_);
      HappensBeforeOnExit done(this);
      call_->UpstreamWriteDone(ok);
    }
    void OnWritesDoneDone(bool) override {
      HappensAfter(&call_);
      HappensBeforeOnExit done(this);
      call_->UpstreamWritesDoneDone();
    }
    void OnDone(const grpc::Status& status) override {
      HappensAfter(&call_);
      HappensAfter(this);
      call_->UpstreamDone(status);
    }

   private:
    StreamingProxyCall* call_;
  };

  void StartUpstream() {
    upstream_started_ = true;
    refs_.fetch_add(1, std::memory_order_relaxed);
    upstream_ctx_ = grpc::ClientContext::FromCallbackServerContext(*ctx_);
    CopyRequestMetadata(*ctx_, upstream_ctx_.get());
    router_.Upstream().stub->PrepareBidiStreamingCall(upstream_ctx_.get(), ctx_->method(), grpc::StubOptions(),
                                                      &upstream_);
    upstream_.AddMultipleHolds(2);  // forward and backward
    {
      absl::MutexLock lock(&mu_);
      forward_active_ = true;
    }
    HappensBefore(this);
    upstream_.StartCall();
  }

  void UpstreamHeaders(bool ok) {
    HappensAfter(this);
    if (ok) {
      CopyResponseHeaders(*upstream_ctx_, ctx_);
      AddTags(router_, ctx_);
      StartSendInitialMetadata();
    }
    HappensBefore(&response_);
    upstream_.StartRead(&response_);
  }

  void UpstreamRead(bool ok) {
    HappensAfter(&response_);
    if (ok) {
      HappensBefore(&response_);
      StartWrite(&response_);
    } else {
      EndBackward();
    }
  }

  void UpstreamWriteDone(bool ok) {
    HappensAfter(&request_);
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      stop = !ok || backward_ended_;
      if (stop) {
        --forward_busy_;
        stop = ReleaseForwardLocked();
        if (!stop) return;  // already released by the backward pipeline
      }
    }
    if (stop) {
      HappensBefore(this);
      upstream_.RemoveHold();
      return;
    }
    // Still counted busy while the next client read is issued, so the backward pipeline cannot
    // let go of the forward hold (and the server side finish) before StartRead has run.
    HappensBefore(&request_);
    StartRead(&request_);
    bool release;
    {
      absl::MutexLock lock(&mu_);
      --forward_busy_;
      release = backward_ended_ && ReleaseForwardLocked();
    }
    HappensBefore(this);
    if (release) upstream_.RemoveHold();
  }

  void UpstreamWritesDoneDone() {
    HappensAfter(&request_);
    bool release;
    {
      absl::MutexLock lock(&mu_);
      --forward_busy_;
      release = ReleaseForwardLocked();
    }
    HappensBefore(this);
    if (release) upstream_.RemoveHold();
  }

  // True when the caller must drop the forward hold: the pipeline was active and is idle.
  bool ReleaseForwardLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!forward_active_ || forward_busy_ != 0) return false;
    forward_active_ = false;
    return true;
  }

  // The upstream sends nothing more. A forward pipeline parked on a client read would never
  // touch the upstream again: let go of its hold too, so the status can come through.
  void EndBackward() {
    bool release_forward;
    {
      absl::MutexLock lock(&mu_);
      backward_ended_ = true;
      release_forward = ReleaseForwardLocked();
    }
    HappensBefore(this);
    if (release_forward) upstream_.RemoveHold();
    upstream_.RemoveHold();
  }

  void UpstreamDone(const grpc::Status& status) {
    HappensAfter(this);
    CopyTrailers(*upstream_ctx_, ctx_);
    std::optional<grpc::Status> override_status;
    {
      absl::MutexLock lock(&mu_);
      override_status = override_status_;
    }
    const grpc::Status final_status = override_status ? *override_status : ForClient(status, *ctx_);
    router_.Finish(final_status.error_code(), std::nullopt);
    HappensBefore(this);
    Finish(final_status);
    Unref();
  }

  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  InferenceProxy* proxy_;
  grpc::GenericCallbackServerContext* ctx_;
  MethodKind kind_;
  CallRouter router_;
  bool read_headers_ = false;  // into router_
  Upstream upstream_;
  std::unique_ptr<grpc::ClientContext> upstream_ctx_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  // Written only by the forward pipeline, or before any callback can run.
  bool upstream_started_ = false;
  std::atomic<int> refs_{1};  // the server side, plus the upstream side once started

  absl::Mutex mu_;
  bool forward_active_ ABSL_GUARDED_BY(mu_) = false;  // the forward hold is still held
  int forward_busy_ ABSL_GUARDED_BY(mu_) = 0;         // forward steps under way
  bool backward_ended_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> override_status_ ABSL_GUARDED_BY(mu_);
};


InferenceProxy::InferenceProxy(const selector::SnapshotCell<RoutingSnapshot>* routes) : routes_(routes) {}

InferenceProxy::~InferenceProxy() { HappensAfter(this); }  // every call's OnDone came first

grpc::ServerGenericBidiReactor* InferenceProxy::CreateReactor(
    grpc::GenericCallbackServerContext* ctx) {
  const MethodKind kind = ClassifyMethod(ctx->method());
  if (kind == MethodKind::kOpaqueStream || kind == MethodKind::kStreamInfer) {
    return new StreamingProxyCall(this, ctx, kind);
  }
  return new UnaryProxyCall(this, ctx, kind);
}

}  // namespace carbon::sidecar
