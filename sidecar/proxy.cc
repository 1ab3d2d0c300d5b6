#include "sidecar/proxy.h"

#include <atomic>
#include <charconv>
#include <chrono>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/happens_before.h"
#include "common/number_text.h"
#include "common/string_view_compat.h"
#include "sidecar/request_bytes.h"
#include "telemetry/latency_histogram.h"

namespace carbon::sidecar {
namespace {

enum class MethodKind {
  kOpaqueUnary,   // a known unary method that names no model: forwarded as is
  kOpaqueStream,  // anything unknown: forwarded as a bidi stream, whatever its real shape
  kInfer,         // ModelInfer
  kStreamInfer,   // ModelStreamInfer: every request message is routed
  kModelQuery,    // ModelMetadata, ModelReady, ModelConfig, ModelStatistics
};

MethodKind Classify(std::string_view method) {
  static const auto* kinds = new absl::flat_hash_map<std::string_view, MethodKind>{
      {"/inference.GRPCInferenceService/ModelInfer", MethodKind::kInfer},
      {"/inference.GRPCInferenceService/ModelStreamInfer", MethodKind::kStreamInfer},
      {"/inference.GRPCInferenceService/ModelMetadata", MethodKind::kModelQuery},
      {"/inference.GRPCInferenceService/ModelReady", MethodKind::kModelQuery},
      {"/inference.GRPCInferenceService/ModelConfig", MethodKind::kModelQuery},
      {"/inference.GRPCInferenceService/ModelStatistics", MethodKind::kModelQuery},
      {"/inference.GRPCInferenceService/ServerLive", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/ServerReady", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/ServerMetadata", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/RepositoryIndex", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/RepositoryModelLoad", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/RepositoryModelUnload", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/SystemSharedMemoryStatus", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/SystemSharedMemoryRegister", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/SystemSharedMemoryUnregister", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/CudaSharedMemoryStatus", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/CudaSharedMemoryRegister", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/CudaSharedMemoryUnregister", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/TraceSetting", MethodKind::kOpaqueUnary},
      {"/inference.GRPCInferenceService/LogSettings", MethodKind::kOpaqueUnary},
  };
  auto it = kinds->find(method);
  return it == kinds->end() ? MethodKind::kOpaqueStream : it->second;
}

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

// The per-request controls (docs/design.md §3), read once per call from the client's metadata.
struct RequestControls {
  std::string_view pin;  // points into the server context's metadata
  std::optional<double> max_error_percent;
};

absl::StatusOr<RequestControls> ReadControls(const grpc::GenericCallbackServerContext& ctx) {
  RequestControls controls;
  for (const auto& [key, value] : ctx.client_metadata()) {
    const std::string_view k = View(key);
    if (k == kPinModelHeader) {
      controls.pin = View(value);
    } else if (k == kMaxErrorHeader) {
      double v;
      if (!absl::SimpleAtod(ToAbsl(View(value)), &v) || !(v >= 0 && v <= 100)) {
        return absl::InvalidArgumentError(absl::StrCat(
            kMaxErrorHeader, " must be a number of percent in [0, 100], got '", ToAbsl(View(value)), "'"));
      }
      controls.max_error_percent = v;
    }
  }
  return controls;
}

// Decides and applies the variant for the model-named messages of one call, and remembers the
// first decision for the response headers.
class RequestRouter {
 public:
  RequestRouter(const selector::SnapshotCell<RoutingSnapshot>* routes, ProxyCounters* counters,
                MethodKind kind)
      : routes_(routes), counters_(counters), kind_(kind) {}

  // Rewrites `message` when it names a route; leaves it untouched otherwise. Errors are
  // INVALID_ARGUMENT and the message must then not be forwarded.
  absl::Status Route(const grpc::GenericCallbackServerContext& ctx, grpc::ByteBuffer* message) {
    if (!controls_) {
      auto controls = ReadControls(ctx);
      if (!controls.ok()) {
        counters_->bad_controls.fetch_add(1, std::memory_order_relaxed);
        return controls.status();
      }
      controls_ = *controls;
    }
    // Reused per thread: after the first call on a thread, a rewrite allocates nothing.
    thread_local RequestBytes bytes;
    const bool wants_batch = kind_ == MethodKind::kInfer || kind_ == MethodKind::kStreamInfer;
    auto scanned = bytes.Scan(message, wants_batch);
    if (!scanned.ok()) {
      bytes.Clear();
      counters_->malformed.fetch_add(1, std::memory_order_relaxed);
      return scanned.status();
    }
    const std::shared_ptr<const RoutingSnapshot>& snapshot = routes_->Load();
    const RouteView* route = snapshot->Find(scanned->model_name);
    // Only the call's first message decides the response headers; later messages of a stream
    // never touch them, since the headers may be sent concurrently.
    const bool first_message = !decided_first_;
    decided_first_ = true;
    if (route == nullptr) {
      bytes.Clear();
      return absl::OkStatus();
    }
    const selector::Pool& pool = route->pool();
    size_t variant = 0;
    std::string_view reason = route->decision.reason;
    if (!controls_->pin.empty()) {
      auto pinned = pool.IndexOf(controls_->pin);
      if (!pinned) {
        bytes.Clear();
        counters_->bad_controls.fetch_add(1, std::memory_order_relaxed);
        std::vector<absl::string_view> names;
        for (const auto& v : pool.variants()) names.push_back(v.name);
        return absl::InvalidArgumentError(
            absl::StrCat(kPinModelHeader, " '", ToAbsl(controls_->pin), "' is not a variant of route '",
                         route->route->config.name, "' (", absl::StrJoin(names, ", "), ")"));
      }
      variant = *pinned;
      reason = "pinned";
      if (!StartCall(*route, variant)) {
        bytes.Clear();
        RecordRefused(*route, variant);
        return absl::ResourceExhaustedError(
            absl::StrCat(kPinModelHeader, " '", ToAbsl(controls_->pin), "' is at its limit of ",
                         route->InFlightLimit(variant),
                         " calls in flight; pinned calls are not moved to another variant"));
      }
    } else {
      // Pinned requests take no turn of the draw, so the others still follow the weights.
      const selector::WeightedDraw::Pick pick = route->Draw();
      variant = pick.variant;
      if (pick.origin != pick.variant) {
        // The latency guard or a ramp moved this share of the route from what the policy wants.
        route->route->ledger->spilled(pick.origin, pick.variant, route->moved_by).fetch_add(1, std::memory_order_relaxed);
        reason = telemetry::SpillReasonName(route->moved_by);
      }
      if (controls_->max_error_percent) {
        const size_t floored = selector::ApplyQualityFloor(pool, variant, route->decision.aim_energy_mj,
                                                           *controls_->max_error_percent, route->ready);
        if (floored != variant) reason = "quality_floor";
        variant = floored;
      }
      // The capacity guard: a variant at its in-flight limit takes no more calls; the call goes to
      // the nearest lower-energy ready variant with room (one that still meets a quality floor).
      const size_t drawn = variant;
      std::optional<size_t> with_room;
      for (size_t v = drawn + 1; v-- > 0;) {
        if (v != drawn && ((route->ready >> v & 1) == 0 ||
                           (controls_->max_error_percent && pool[v].error_percent > *controls_->max_error_percent))) {
          continue;
        }
        if (StartCall(*route, v)) {
          with_room = v;
          break;
        }
      }
      if (!with_room) {
        bytes.Clear();
        RecordRefused(*route, drawn);
        return absl::ResourceExhaustedError(absl::StrCat(
            "route '", route->route->config.name, "': ", pool[drawn].name, " and every ready variant of lower energy",
            controls_->max_error_percent ? " within the requested error" : "", " are at their in-flight limits"));
      }
      if (*with_room != drawn) {
        route->route->ledger->spilled(drawn, *with_room, telemetry::SpillReason::kInFlightLimit)
            .fetch_add(1, std::memory_order_relaxed);
        reason = telemetry::SpillReasonName(telemetry::SpillReason::kInFlightLimit);
      }
      variant = *with_room;
    }
    // The cluster: the route's first with room for a unary call (a cluster with a max_in_flight),
    // else the next one that can serve. Later messages of a stream stay where the stream is.
    size_t cluster_pos = 0;
    if (first_message && kind_ == MethodKind::kInfer) {
      std::optional<size_t> with_room;
      for (size_t k = 0; k < route->clusters.size(); ++k) {
        if (k > 0 && route->clusters[k].rank > ClusterRank::kOverBudget) break;
        if (EnterCluster(route->clusters[k])) {
          with_room = k;
          break;
        }
      }
      if (!with_room) {
        bytes.Clear();
        if (started_) telemetry::VariantLedger::CallEnded(*started_);
        started_.reset();
        RecordRefused(*route, variant);
        return absl::ResourceExhaustedError(absl::StrCat("route '", route->route->config.name,
                                                         "': every cluster that can serve it is at its max_in_flight"));
      }
      cluster_pos = *with_room;
      if (cluster_pos > 0) {
        route->clusters.front().ledger->RecordSpilledOut();
        reason = kClusterCapacityReason;
      }
    }
    bytes.AppendTo(message, route->route->overrides[variant]);

    const int64_t dim = scanned->first_input_leading_dim.value_or(1);
    const uint64_t items = route->route->config.batch_dimension && dim > 0 ? static_cast<uint64_t>(dim) : 1;
    // The cluster it is served in: the route's first for a call's first message; for later
    // messages of a stream, the one the stream already goes to (when this snapshot still has it).
    const RouteCluster* served_in = &route->clusters[cluster_pos];
    if (!first_message && upstream_ != nullptr) {
      for (const RouteCluster& rc : route->clusters) {
        if (snapshot->clusters()[rc.index].upstream.get() == upstream_) served_in = &rc;
      }
    }
    const double intensity = served_in == &route->clusters.front() && route->decision.intensity
                                 ? route->decision.intensity->gco2_per_kwh
                                 : served_in->intensity;
    telemetry::VariantLedger* cell = &route->route->ledger->variant(variant);
    const Charge charge{cell,  served_in->ledger, intensity, route->home_intensity, 1, items, route->MeasuredJoules(variant),
                        route->JoulesPerInference(variant)};
    if (first_message) {
      first_ = Decision{snapshot, route, variant, reason, static_cast<int64_t>(items), charge, cluster_pos};
    } else {
      // Later messages of a stream: merged per (variant, intensity), so a long stream keeps a
      // handful of entries, not one per message.
      bool merged = false;
      for (Charge& c : more_charges_) {
        if (c.cell == cell && c.cluster == charge.cluster && c.intensity == intensity &&
            c.home_intensity == charge.home_intensity && c.measured_joules == charge.measured_joules) {
          ++c.requests;
          c.items += items;
          merged = true;
          break;
        }
      }
      if (!merged) more_charges_.push_back(charge);
    }
    return absl::OkStatus();
  }

  // The cluster the call goes to, chosen once: the route's for a routed call, else the snapshot's
  // first cluster. The call holds the snapshot that holds it (a routed call already does), so a
  // cluster a reload removes lives until its last call ends, at no extra reference count per call.
  const UpstreamCluster& Upstream() {
    if (upstream_ == nullptr) {
      if (first_) {
        upstream_ = first_->snapshot->clusters()[first_->route->clusters[first_->cluster_pos].index].upstream.get();
      } else {
        passthrough_snapshot_ = routes_->Load();
        upstream_ = passthrough_snapshot_->default_upstream().get();
      }
    }
    return *upstream_;
  }

  // Whether a unary inference call that ended with `code`, nothing answered, may be sent on to the
  // route's next cluster: once, when the route allows it and that cluster looked able to serve.
  bool MayFailOver(grpc::StatusCode code) const {
    if (code != grpc::StatusCode::UNAVAILABLE || failed_over_ || kind_ != MethodKind::kInfer || !first_) return false;
    const RouteView& route = *first_->route;
    const size_t next = first_->cluster_pos + 1;
    return route.route->config.failover && route.clusters.size() > next &&
           route.clusters[next].rank <= ClusterRank::kOverBudget;
  }

  // Moves the call to the route's next cluster and counts the move; the charge follows.
  const UpstreamCluster& FailOver() {
    failed_over_ = true;
    const RouteView& route = *first_->route;
    const RouteCluster& from = route.clusters[first_->cluster_pos];
    const RouteCluster& to = route.clusters[++first_->cluster_pos];
    from.ledger->RecordFailedOver();
    for (const RouteView::FailoverCount& f : route.failover_counts) {
      if (f.from == from.index && f.to == to.index) f.count->fetch_add(1, std::memory_order_relaxed);
    }
    // The call moves its place in the clusters' counts (past a full one's limit: it was let in).
    if (cluster_ticket_) cluster_ticket_->fetch_sub(1, std::memory_order_relaxed);
    cluster_ticket_ = nullptr;
    if (to.max_in_flight > 0) {
      to.in_flight->fetch_add(1, std::memory_order_relaxed);
      cluster_ticket_ = to.in_flight;
    }
    first_->charge.cluster = to.ledger;
    first_->charge.intensity = to.intensity;
    first_->reason = kFailoverReason;
    upstream_ = first_->snapshot->clusters()[to.index].upstream.get();
    return *upstream_;
  }

  // Counts a unary inference call in to a cluster with a max_in_flight; false when it is full.
  bool EnterCluster(const RouteCluster& rc) {
    if (rc.max_in_flight <= 0) return true;
    if (rc.in_flight->fetch_add(1, std::memory_order_relaxed) >= rc.max_in_flight) {
      rc.in_flight->fetch_sub(1, std::memory_order_relaxed);
      return false;
    }
    cluster_ticket_ = rc.in_flight;
    return true;
  }

  // Counts a unary inference call in to `variant`, against its in-flight limit; false when the
  // variant is at it. Other calls (streams, metadata) are not counted and always start.
  bool StartCall(const RouteView& route, size_t variant) {
    if (kind_ != MethodKind::kInfer) return true;
    started_ = route.route->ledger->variant(variant).TryStartCall(route.InFlightLimit(variant));
    return started_.has_value();
  }

  // A call refused for capacity: charged as failed to the variant it wanted.
  void RecordRefused(const RouteView& route, size_t variant) const {
    route.route->ledger->variant(variant).RecordRefused();
  }

  // Whether the call carried routed inferences, which the ledger charges (model metadata and
  // readiness queries are routed too, but are not inferences).
  bool routed() const {
    return (kind_ == MethodKind::kInfer || kind_ == MethodKind::kStreamInfer) &&
           (first_.has_value() || !more_charges_.empty());
  }

  // Charges the ledger for the routed messages of a call that ended with `code`: served when OK,
  // failed with that code otherwise. `seconds` is the call's duration (unary calls only).
  void Settle(grpc::StatusCode code, std::optional<double> seconds) const {
    const auto settle = [code](const Charge& c) {
      if (code == grpc::StatusCode::OK) {
        c.cell->RecordServed(c.requests, c.items, c.intensity, c.measured_joules);
        c.cluster->RecordServed(c.requests, c.items, c.joules_per_item, c.intensity, c.home_intensity);
      } else {
        c.cell->RecordFailed(static_cast<int>(code), c.requests);
      }
    };
    if (first_) settle(first_->charge);
    for (const Charge& c : more_charges_) settle(c);
    if (started_) telemetry::VariantLedger::CallEnded(*started_);
    if (cluster_ticket_) cluster_ticket_->fetch_sub(1, std::memory_order_relaxed);
    if (first_ && seconds) first_->charge.cell->latency().Observe(*seconds);
  }

  // Adds the x-carbon-* headers for the first routed message, if any.
  void AddTags(grpc::GenericCallbackServerContext* ctx) const {
    if (!first_) return;
    const RouteView& route = *first_->route;
    const selector::Variant& v = route.pool()[first_->variant];
    ctx->AddInitialMetadata(kModelHeader, v.name);
    ctx->AddInitialMetadata(kRouteHeader, route.route->config.name);
    ctx->AddInitialMetadata(kReasonHeader, std::string(first_->reason));
    if (route.clusters.size() > 1) ctx->AddInitialMetadata(kClusterHeader, upstream_->name);
    if (const double c = first_->charge.intensity; c >= 0) {
      ctx->AddInitialMetadata(kIntensityHeader, ShortestDecimal(c));
      // E × PUE × I for this request, at the energy it is charged at.
      const double grams = first_->charge.joules_per_item * static_cast<double>(first_->items) / 3.6e6 * c * route.pue;
      ctx->AddInitialMetadata(kGramsHeader, ShortestDecimal(grams));
    }
  }

 private:
  // What to charge for routed messages once the call's outcome is known. Ledger cells live as
  // long as the server.
  struct Charge {
    telemetry::VariantLedger* cell;
    telemetry::ClusterLedger* cluster;
    double intensity;  // gCO2/kWh in force where served; negative: none known
    double home_intensity;  // the route's home cluster's then; negative: none known
    uint64_t requests;
    uint64_t items;
    double measured_joules;  // per inference when measured; 0: the table's
    double joules_per_item;  // what it is charged at: measured, else the table's
  };

  // Where a unary inference call is counted in flight, until Settle.
  std::optional<telemetry::VariantLedger::CallTicket> started_;

  struct Decision {
    std::shared_ptr<const RoutingSnapshot> snapshot;  // keeps `route` alive
    const RouteView* route = nullptr;
    size_t variant = 0;
    std::string_view reason;
    int64_t items = 1;
    Charge charge;
    size_t cluster_pos = 0;  // in route->clusters: where the call is sent
  };

  const selector::SnapshotCell<RoutingSnapshot>* routes_;
  ProxyCounters* counters_;
  MethodKind kind_;
  const UpstreamCluster* upstream_ = nullptr;
  std::shared_ptr<const RoutingSnapshot> passthrough_snapshot_;  // keeps upstream_ alive when not routed
  bool failed_over_ = false;
  std::atomic<int64_t>* cluster_ticket_ = nullptr;  // the cluster count the call is in, until Settle
  std::optional<RequestControls> controls_;
  bool decided_first_ = false;
  std::optional<Decision> first_;
  std::vector<Charge> more_charges_;  // streams only
};

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
      if (absl::Status routed = router_.Route(*ctx_, &request_); !routed.ok()) {
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
    if (router_.routed()) {
      router_.Settle(status.error_code(), SecondsSince(start_));
    } else {
      proxy_->counters_.CountPassthrough(status.error_code());
    }
    CopyResponseHeaders(*upstream_ctx_, ctx_);
    router_.AddTags(ctx_);
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
  RequestRouter router_;
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
        if (absl::Status routed = router_.Route(*ctx_, &request_); !routed.ok()) {
          HappensBefore(this);
          Finish(ToGrpc(routed));
          return;
        }
      }
      StartUpstream();
    } else if (ok && kind_ == MethodKind::kStreamInfer) {
      if (absl::Status routed = router_.Route(*ctx_, &request_); !routed.ok()) {
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
      router_.AddTags(ctx_);
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
    if (router_.routed()) {
      router_.Settle(final_status.error_code(), std::nullopt);
    } else {
      proxy_->counters_.CountPassthrough(final_status.error_code());
    }
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
  RequestRouter router_;
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
  const MethodKind kind = Classify(ctx->method());
  if (kind == MethodKind::kOpaqueStream || kind == MethodKind::kStreamInfer) {
    return new StreamingProxyCall(this, ctx, kind);
  }
  return new UnaryProxyCall(this, ctx, kind);
}

}  // namespace carbon::sidecar
