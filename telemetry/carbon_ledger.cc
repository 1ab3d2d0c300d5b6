#include "telemetry/carbon_ledger.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/thread_slot.h"
#include "telemetry/latency_histogram.h"

namespace carbon::telemetry {

size_t ThisThreadShard() { return ThisThreadSlot(kLedgerShards); }

VariantLedger::VariantLedger() : latency_(std::make_unique<LatencyHistogram>()) {}
VariantLedger::~VariantLedger() = default;

void VariantLedger::RecordServed(uint64_t requests, uint64_t items, double gco2_per_kwh, double measured_joules) {
  Shard& s = shards_[ThisThreadShard()];
  s.requests.fetch_add(requests, std::memory_order_relaxed);
  s.items.fetch_add(items, std::memory_order_relaxed);
  const double n = static_cast<double>(items);
  if (gco2_per_kwh >= 0) {
    s.items_with_intensity.fetch_add(items, std::memory_order_relaxed);
    s.item_intensity.fetch_add(n * gco2_per_kwh, std::memory_order_relaxed);
  }
  if (measured_joules > 0) {
    s.measured_items.fetch_add(items, std::memory_order_relaxed);
    s.measured_joules.fetch_add(n * measured_joules, std::memory_order_relaxed);
    if (gco2_per_kwh >= 0) {
      s.measured_item_intensity.fetch_add(n * gco2_per_kwh, std::memory_order_relaxed);
      s.measured_joule_intensity.fetch_add(n * measured_joules * gco2_per_kwh, std::memory_order_relaxed);
    }
  }
}

void VariantLedger::RecordFailed(int code, uint64_t requests) {
  failed_[GrpcCodeIndex(code)].fetch_add(requests, std::memory_order_relaxed);
}

void VariantLedger::RecordRefused() {
  RecordFailed(static_cast<int>(absl::StatusCode::kResourceExhausted));
  refused_.fetch_add(1, std::memory_order_relaxed);
}

std::string_view SpillReasonName(SpillReason reason) {
  switch (reason) {
    case SpillReason::kInFlightLimit: return "in_flight_limit";
    case SpillReason::kLatencySlo: return "latency_slo";
    case SpillReason::kRamp: return "ramp";
  }
  return "unknown";
}

int64_t VariantLedger::in_flight() const {
  // A call may end on another thread's shard than it started on: only the sum means anything.
  int64_t n = limited_in_flight_.load(std::memory_order_relaxed);
  for (const Shard& s : shards_) n += s.in_flight.load(std::memory_order_relaxed);
  return n;
}

VariantTotals VariantLedger::Totals() const {
  VariantTotals t;
  for (const Shard& s : shards_) {
    t.requests += s.requests.load(std::memory_order_relaxed);
    t.items += s.items.load(std::memory_order_relaxed);
    t.items_with_intensity += s.items_with_intensity.load(std::memory_order_relaxed);
    t.item_intensity += s.item_intensity.load(std::memory_order_relaxed);
    t.measured_items += s.measured_items.load(std::memory_order_relaxed);
    t.measured_joules += s.measured_joules.load(std::memory_order_relaxed);
    t.measured_item_intensity += s.measured_item_intensity.load(std::memory_order_relaxed);
    t.measured_joule_intensity += s.measured_joule_intensity.load(std::memory_order_relaxed);
  }
  for (size_t c = 0; c < kGrpcCodes; ++c) t.failed[c] = failed_[c].load(std::memory_order_relaxed);
  return t;
}

RouteLedger::RouteLedger(std::string route, std::shared_ptr<const selector::Pool> pool,
                         size_t baseline, std::vector<VariantLedger*> variants)
    : route_(std::move(route)), pool_(std::move(pool)), baseline_(baseline), variants_(std::move(variants)) {}

double JoulesFor(const selector::Variant& v, uint64_t items) {
  return static_cast<double>(items) * v.energy_mj * 1e-3;
}

double GramsFor(const selector::Variant& v, double item_intensity) {
  // mJ -> J, J -> kWh, × g/kWh.
  return item_intensity * v.energy_mj * 1e-3 / 3.6e6;
}

RouteReport Report(const RouteLedger& route, const Accounting& accounting) {
  const selector::Pool& pool = route.pool();
  RouteReport r;
  double item_intensity = 0;
  for (size_t i = 0; i < pool.size(); ++i) {
    VariantTotals t = route.variant(i).Totals();
    r.requests += t.requests;
    r.items += t.items;
    // The items not measured are charged at the table; a shard read between two of a measured
    // charge's adds could make a difference a rounding below zero.
    const std::array<double, 2> joules = {JoulesFor(pool[i], t.items - std::min(t.items, t.measured_items)),
                                          t.measured_joules};
    const std::array<double, 2> grams = {
        GramsFor(pool[i], std::max(0.0, t.item_intensity - t.measured_item_intensity)) * accounting.pue,
        t.measured_joule_intensity / 3.6e6 * accounting.pue};
    r.variant_joules.push_back(joules);
    r.variant_grams.push_back(grams);
    r.joules += joules[0] + joules[1];
    r.grams += grams[0] + grams[1];
    r.error_percent_sum += static_cast<double>(t.items) * pool[i].error_percent;
    item_intensity += t.item_intensity;
    r.variants.push_back(t);
  }
  for (size_t i = 0; i < pool.size(); ++i) {
    const double measured = i < accounting.measured_joules.size() ? accounting.measured_joules[i] : 0;
    r.counterfactual_grams.push_back(
        (measured > 0 ? item_intensity * measured / 3.6e6 : GramsFor(pool[i], item_intensity)) * accounting.pue);
  }
  if (r.items > 0) r.mean_error_percent = r.error_percent_sum / static_cast<double>(r.items);
  const double baseline_error = pool[route.baseline()].error_percent;
  if (r.items > 0 && baseline_error > 0) {
    r.relative_quality_improvement_percent = (baseline_error - r.mean_error_percent) / baseline_error * 100;
  }
  r.extra_grams = r.grams - r.counterfactual_grams[route.baseline()];
  r.efficiency = r.extra_grams > 0 ? r.relative_quality_improvement_percent / r.extra_grams
                                   : std::numeric_limits<double>::quiet_NaN();
  r.beats_baseline = r.relative_quality_improvement_percent > 0 && r.extra_grams < 0;
  return r;
}

double SciPerInference(double operational_grams, double embodied_grams, uint64_t inferences) {
  if (inferences == 0) return std::numeric_limits<double>::quiet_NaN();
  return (operational_grams + embodied_grams) / static_cast<double>(inferences);
}

double EmbodiedGrams(double embodied_grams, absl::Duration in_use, absl::Duration lifespan, double share) {
  if (lifespan <= absl::ZeroDuration()) return 0;
  return embodied_grams * absl::FDivDuration(in_use, lifespan) * share;
}

std::shared_ptr<const RouteLedger> CarbonLedger::Route(const std::string& route,
                                                       std::shared_ptr<const selector::Pool> pool,
                                                       size_t baseline) {
  std::vector<VariantLedger*> cells;
  std::vector<std::atomic<uint64_t>*> spilled;
  absl::MutexLock lock(&mu_);
  // Keys no route or variant name can forge: names are non-empty and the separator is NUL.
  const std::string nul(1, '\0');
  for (const selector::Variant& v : pool->variants()) {
    std::unique_ptr<VariantLedger>& cell = variants_[absl::StrCat(route, nul, v.name)];
    if (cell == nullptr) cell = std::make_unique<VariantLedger>();
    cells.push_back(cell.get());
    for (const selector::Variant& to : pool->variants()) {
      for (size_t reason = 0; reason < kSpillReasons; ++reason) {
        std::unique_ptr<std::atomic<uint64_t>>& n =
            spilled_[absl::StrCat(route, nul, v.name, nul, to.name, nul, reason)];
        if (n == nullptr) n = std::make_unique<std::atomic<uint64_t>>(0);
        spilled.push_back(n.get());
      }
    }
  }
  auto ledger = std::make_shared<RouteLedger>(route, std::move(pool), baseline, std::move(cells));
  ledger->spilled_ = std::move(spilled);
  return ledger;
}

ClusterLedger* CarbonLedger::Cluster(const std::string& route, const std::string& cluster) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<ClusterLedger>& cell = clusters_[absl::StrCat(route, std::string(1, '\0'), cluster)];
  if (cell == nullptr) cell = std::make_unique<ClusterLedger>();
  return cell.get();
}

std::atomic<uint64_t>* CarbonLedger::Failovers(const std::string& route, const std::string& from, const std::string& to) {
  absl::MutexLock lock(&mu_);
  const std::string nul(1, '\0');
  std::unique_ptr<std::atomic<uint64_t>>& n = failovers_[absl::StrCat(route, nul, from, nul, to)];
  if (n == nullptr) n = std::make_unique<std::atomic<uint64_t>>(0);
  return n.get();
}

std::atomic<int64_t>* CarbonLedger::ClusterInFlight(const std::string& cluster) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<std::atomic<int64_t>>& n = cluster_in_flight_[cluster];
  if (n == nullptr) n = std::make_unique<std::atomic<int64_t>>(0);
  return n.get();
}

void ClusterLedger::RecordServed(uint64_t requests, uint64_t items, double joules_per_item, double gco2_per_kwh,
                                 double home_gco2_per_kwh) {
  Shard& s = shards_[ThisThreadShard()];
  const double joules = joules_per_item * static_cast<double>(items);
  s.requests.fetch_add(requests, std::memory_order_relaxed);
  s.items.fetch_add(items, std::memory_order_relaxed);
  s.joules.fetch_add(joules, std::memory_order_relaxed);
  if (gco2_per_kwh >= 0) {
    s.grams.fetch_add(joules / 3.6e6 * gco2_per_kwh, std::memory_order_relaxed);
    s.home_grams.fetch_add(joules / 3.6e6 * (home_gco2_per_kwh >= 0 ? home_gco2_per_kwh : gco2_per_kwh),
                           std::memory_order_relaxed);
  }
}

ClusterTotals ClusterLedger::Totals() const {
  ClusterTotals t;
  for (const Shard& s : shards_) {
    t.requests += s.requests.load(std::memory_order_relaxed);
    t.items += s.items.load(std::memory_order_relaxed);
    t.joules += s.joules.load(std::memory_order_relaxed);
    t.grams += s.grams.load(std::memory_order_relaxed);
    t.home_grams += s.home_grams.load(std::memory_order_relaxed);
  }
  t.failed_over = failed_over_.load(std::memory_order_relaxed);
  t.spilled_out = spilled_out_.load(std::memory_order_relaxed);
  return t;
}

}  // namespace carbon::telemetry
