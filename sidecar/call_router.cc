#include "sidecar/call_router.h"

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/number_text.h"
#include "common/string_view_compat.h"

namespace carbon::sidecar {

MethodKind ClassifyMethod(std::string_view method) {
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

void CallRouter::ReadHeader(std::string_view key, std::string_view value) {
  if (key == kPinModelHeader) {
    controls_.pin = value;
  } else if (key == kMaxErrorHeader) {
    double v;
    if (!absl::SimpleAtod(ToAbsl(value), &v) || !(v >= 0 && v <= 100)) {
      controls_.error = absl::InvalidArgumentError(
          absl::StrCat(kMaxErrorHeader, " must be a number of percent in [0, 100], got '", ToAbsl(value), "'"));
    } else {
      controls_.max_error_percent = v;
    }
  }
}

absl::Status CallRouter::Route(const ScannedRequest& scanned, const grpc::Slice** override_bytes) {
  *override_bytes = nullptr;
  if (!controls_.error.ok()) {
    counters_->bad_controls.fetch_add(1, std::memory_order_relaxed);
    return controls_.error;
  }
  const std::shared_ptr<const RoutingSnapshot>& snapshot = routes_->Load();
  const RouteView* route = snapshot->Find(scanned.model_name);
  // Only the call's first message decides the response headers; later messages of a stream
  // never touch them, since the headers may be sent concurrently.
  const bool first_message = !decided_first_;
  decided_first_ = true;
  if (route == nullptr) {
    return absl::OkStatus();
  }
  const selector::Pool& pool = route->pool();
  size_t variant = 0;
  std::string_view reason = route->decision.reason;
  if (!controls_.pin.empty()) {
    auto pinned = pool.IndexOf(controls_.pin);
    if (!pinned) {
      counters_->bad_controls.fetch_add(1, std::memory_order_relaxed);
      std::vector<absl::string_view> names;
      for (const auto& v : pool.variants()) names.push_back(v.name);
      return absl::InvalidArgumentError(
          absl::StrCat(kPinModelHeader, " '", ToAbsl(controls_.pin), "' is not a variant of route '",
                       route->route->config.name, "' (", absl::StrJoin(names, ", "), ")"));
    }
    variant = *pinned;
    reason = "pinned";
    if (!StartCall(*route, variant)) {
      RecordRefused(*route, variant);
      return absl::ResourceExhaustedError(
          absl::StrCat(kPinModelHeader, " '", ToAbsl(controls_.pin), "' is at its limit of ",
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
    if (controls_.max_error_percent) {
      const size_t floored = selector::ApplyQualityFloor(pool, variant, route->decision.aim_energy_mj,
                                                         *controls_.max_error_percent, route->ready);
      if (floored != variant) reason = "quality_floor";
      variant = floored;
    }
    // The capacity guard: a variant at its in-flight limit takes no more calls; the call goes to
    // the nearest lower-energy ready variant with room (one that still meets a quality floor).
    const size_t drawn = variant;
    std::optional<size_t> with_room;
    for (size_t v = drawn + 1; v-- > 0;) {
      if (v != drawn && ((route->ready >> v & 1) == 0 ||
                         (controls_.max_error_percent && pool[v].error_percent > *controls_.max_error_percent))) {
        continue;
      }
      if (StartCall(*route, v)) {
        with_room = v;
        break;
      }
    }
    if (!with_room) {
      RecordRefused(*route, drawn);
      return absl::ResourceExhaustedError(absl::StrCat(
          "route '", route->route->config.name, "': ", pool[drawn].name, " and every ready variant of lower energy",
          controls_.max_error_percent ? " within the requested error" : "", " are at their in-flight limits"));
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
  *override_bytes = &route->route->overrides[variant];

  const int64_t dim = scanned.first_input_leading_dim.value_or(1);
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

const UpstreamCluster& CallRouter::Upstream() {
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

bool CallRouter::MayFailOver(grpc::StatusCode code) const {
  if (code != grpc::StatusCode::UNAVAILABLE || failed_over_ || kind_ != MethodKind::kInfer || !first_) return false;
  const RouteView& route = *first_->route;
  const size_t next = first_->cluster_pos + 1;
  return route.route->config.failover && route.clusters.size() > next &&
         route.clusters[next].rank <= ClusterRank::kOverBudget;
}

const UpstreamCluster& CallRouter::FailOver() {
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
bool CallRouter::EnterCluster(const RouteCluster& rc) {
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
bool CallRouter::StartCall(const RouteView& route, size_t variant) {
  if (kind_ != MethodKind::kInfer) return true;
  started_ = route.route->ledger->variant(variant).TryStartCall(route.InFlightLimit(variant));
  return started_.has_value();
}

// A call refused for capacity: charged as failed to the variant it wanted.
void CallRouter::RecordRefused(const RouteView& route, size_t variant) const {
  route.route->ledger->variant(variant).RecordRefused();
}

void CallRouter::Finish(grpc::StatusCode code, std::optional<double> seconds) {
  if (!routed()) {
    counters_->CountPassthrough(code);
    return;
  }
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

void CallRouter::ForEachTag(absl::FunctionRef<void(std::string_view, std::string_view)> add) const {
  if (!first_) return;
  const RouteView& route = *first_->route;
  const selector::Variant& v = route.pool()[first_->variant];
  add(kModelHeader, v.name);
  add(kRouteHeader, route.route->config.name);
  add(kReasonHeader, first_->reason);
  if (route.clusters.size() > 1) add(kClusterHeader, upstream_->name);
  if (const double c = first_->charge.intensity; c >= 0) {
    add(kIntensityHeader, ShortestDecimal(c));
    // E × PUE × I for this request, at the energy it is charged at.
    const double grams = first_->charge.joules_per_item * static_cast<double>(first_->items) / 3.6e6 * c * route.pue;
    add(kGramsHeader, ShortestDecimal(grams));
  }
}

}  // namespace carbon::sidecar
