#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "selector/pool.h"

namespace carbon::telemetry {

// Request counters are split over this many cache-line-sized shards; each thread writes to one, and
// readers add them up. Recording never takes a lock and threads rarely share a line.
inline constexpr size_t kLedgerShards = 16;
// gRPC status codes 0 (OK) … 16 (UNAUTHENTICATED).
inline constexpr size_t kGrpcCodes = 17;

// The counter index of gRPC status code `code`: itself for 0 … 16, UNKNOWN (2) for anything else,
// as gRPC treats codes it does not know.
inline size_t GrpcCodeIndex(int code) {
  return code >= 0 && static_cast<size_t>(code) < kGrpcCodes ? static_cast<size_t>(code) : 2;
}

// The shard the calling thread records into.
size_t ThisThreadShard();

// What one (route, variant) has accumulated. Energy, grams and counterfactual grams follow from
// `items` and `item_intensity`, with the variant's energy per inference E:
//   joules           = items × E
//   grams            = item_intensity × E / 3.6e6 × PUE
// where item_intensity = Σ items × C over the served requests (C in gCO2/kWh at the time), so
// one request costs three relaxed atomic adds however many variants the pool has. Items charged at
// a measured energy (a calibrated meter's estimate at the time) are counted apart as well, with
// their own joules and Σ items × E × C, so a changing estimate charges each item what it was
// estimated at when it was served; the rest are charged at the pool's table.
struct VariantTotals {
  uint64_t requests = 0;             // served successfully
  uint64_t items = 0;                // inferences: batch size × requests
  uint64_t items_with_intensity = 0; // those served while an intensity was known
  double item_intensity = 0;         // Σ items × C, gCO2/kWh
  uint64_t measured_items = 0;            // of `items`, those charged at a measured energy
  double measured_joules = 0;             // Σ items × E over those
  double measured_item_intensity = 0;     // Σ items × C over those
  double measured_joule_intensity = 0;    // Σ items × E × C over those, J·gCO2/kWh
  std::array<uint64_t, kGrpcCodes> failed{};  // requests routed here that ended with that code
};

class LatencyHistogram;

// Why a call went to another variant than the policy's weights would have sent it to.
enum class SpillReason : uint8_t {
  kInFlightLimit,  // the variant drawn was at its in-flight limit
  kLatencySlo,     // the latency guard capped the variant's share
  kRamp,           // a change of decision was still being ramped in
};
inline constexpr size_t kSpillReasons = 3;
std::string_view SpillReasonName(SpillReason reason);

// The ledger of one (route, variant), identified by name, kept across reloads so counters only
// ever grow, with the duration histogram of the requests routed to it. Thread-safe; Record* and
// the histogram never block.
class VariantLedger {
 public:
  VariantLedger();
  ~VariantLedger();

  // `requests` served successfully, `items` inferences in all, at intensity `gco2_per_kwh`
  // (negative: no intensity known, so no grams are charged for them), at the measured energy
  // `measured_joules` per inference (0: the pool's table).
  void RecordServed(uint64_t requests, uint64_t items, double gco2_per_kwh, double measured_joules = 0);
  // `requests` routed here that did not succeed; `code` is their gRPC status code.
  void RecordFailed(int code, uint64_t requests = 1);
  // A call the sidecar itself refused for capacity (RESOURCE_EXHAUSTED, recorded as failed too):
  // counted apart, so that the guard does not read its own refusals as the upstream's overload.
  void RecordRefused();
  uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }
  VariantTotals Totals() const;
  LatencyHistogram& latency() const { return *latency_; }

  // Unary inference calls sent to this variant and not yet answered. A call under a limit is counted
  // on one counter that every thread shares, so that the draw can check the limit with the count it
  // takes; without a limit, on the calling thread's shard (no cache line moves between cores).
  //
  // Counts a call in unless `limit` (> 0) calls are in flight already; false, and nothing counted,
  // when at the limit. Exact under concurrency: the count is taken, then given back. Returns the
  // ticket CallEnded needs.
  struct CallTicket {
    std::atomic<int64_t>* counter = nullptr;
  };
  std::optional<CallTicket> TryStartCall(int64_t limit) {
    if (limit <= 0) {
      std::atomic<int64_t>& mine = shards_[ThisThreadShard()].in_flight;
      mine.fetch_add(1, std::memory_order_relaxed);
      return CallTicket{&mine};
    }
    const int64_t before = limited_in_flight_.fetch_add(1, std::memory_order_relaxed);
    if (before >= limit) {
      limited_in_flight_.fetch_sub(1, std::memory_order_relaxed);
      return std::nullopt;
    }
    return CallTicket{&limited_in_flight_};
  }
  static void CallEnded(CallTicket ticket) { ticket.counter->fetch_sub(1, std::memory_order_relaxed); }
  int64_t in_flight() const;

 private:
  struct alignas(64) Shard {
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> items{0};
    std::atomic<uint64_t> items_with_intensity{0};
    std::atomic<double> item_intensity{0};
    std::atomic<int64_t> in_flight{0};  // unlimited calls started on this shard, less those ended on it
    std::atomic<uint64_t> measured_items{0};
    std::atomic<double> measured_joules{0};
    std::atomic<double> measured_item_intensity{0};
    std::atomic<double> measured_joule_intensity{0};
  };
  std::array<Shard, kLedgerShards> shards_;
  // Failures are rare enough to share one line per code.
  std::array<std::atomic<uint64_t>, kGrpcCodes> failed_{};
  alignas(64) std::atomic<int64_t> limited_in_flight_{0};
  std::atomic<uint64_t> refused_{0};
  std::unique_ptr<LatencyHistogram> latency_;
};

// The ledger of one route with its pool: a view onto per-variant ledgers, indexed like the pool.
// Immutable apart from the counters; safe to share.
class RouteLedger {
 public:
  RouteLedger(std::string route, std::shared_ptr<const selector::Pool> pool, size_t baseline,
              std::vector<VariantLedger*> variants);

  const std::string& route() const { return route_; }
  const selector::Pool& pool() const { return *pool_; }
  size_t baseline() const { return baseline_; }
  VariantLedger& variant(size_t i) const { return *variants_[i]; }
  // Requests moved from variant `from` (the one the policy's weights gave) to `to`, for `reason`.
  std::atomic<uint64_t>& spilled(size_t from, size_t to, SpillReason reason) const {
    return *spilled_[(from * variants_.size() + to) * kSpillReasons + static_cast<size_t>(reason)];
  }

 private:
  friend class CarbonLedger;
  std::string route_;
  std::shared_ptr<const selector::Pool> pool_;
  size_t baseline_;
  std::vector<VariantLedger*> variants_;
  std::vector<std::atomic<uint64_t>*> spilled_;  // size × size × reasons, kept by the CarbonLedger
};

// What one route's calls served in one cluster came to. Grams are before the PUE (device energy ×
// intensity), as the ledger's own sums are.
struct ClusterTotals {
  uint64_t requests = 0;
  uint64_t items = 0;
  double joules = 0;            // Σ items × E
  double grams = 0;             // Σ items × E × C / 3.6e6, at this cluster's intensity
  double home_grams = 0;        // the same items at the route's home cluster's intensity then
  uint64_t failed_over = 0;     // calls this cluster failed (UNAVAILABLE) that were sent on
  uint64_t spilled_out = 0;     // calls that found it at its max_in_flight and went to the next
};

// The ledger of one (route, cluster), by name, kept across reloads. Thread-safe; never blocks.
class ClusterLedger {
 public:
  // `items` inferences at `joules_per_item` served at intensity `gco2_per_kwh` (negative: unknown,
  // no grams), where the home cluster stood at `home_gco2_per_kwh` (negative: unknown, charged as
  // served: no difference is claimed).
  void RecordServed(uint64_t requests, uint64_t items, double joules_per_item, double gco2_per_kwh,
                    double home_gco2_per_kwh);
  void RecordFailedOver() { failed_over_.fetch_add(1, std::memory_order_relaxed); }
  void RecordSpilledOut() { spilled_out_.fetch_add(1, std::memory_order_relaxed); }
  ClusterTotals Totals() const;

 private:
  struct alignas(64) Shard {
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> items{0};
    std::atomic<double> joules{0};
    std::atomic<double> grams{0};
    std::atomic<double> home_grams{0};
  };
  std::array<Shard, kLedgerShards> shards_;
  std::atomic<uint64_t> failed_over_{0};
  std::atomic<uint64_t> spilled_out_{0};
};

// How a report turns the ledger into grams beyond what the ledger holds.
struct Accounting {
  double pue = 1;  // facility energy over IT energy: operational grams are E × PUE × I
  // Per variant (indexed like the pool; empty: none), the energy per inference to use for the
  // counterfactuals "had every item gone to this variant" (a measured estimate; 0: the table's).
  std::vector<double> measured_joules;
};

// A route's totals at one moment and what follows from them (docs/design.md §5, "The
// ledger and the paper's efficiency").
struct RouteReport {
  std::vector<VariantTotals> variants;  // indexed like the pool
  // Per variant, energy (device joules) and operational grams (with the PUE), by where the energy
  // per inference came from: [0] the pool's table, [1] a measured estimate.
  std::vector<std::array<double, 2>> variant_joules, variant_grams;
  uint64_t requests = 0;
  uint64_t items = 0;
  double joules = 0;
  double grams = 0;
  // Per pool variant: the grams had every item of the route (served with an intensity known) gone
  // to that variant at the same intensities.
  std::vector<double> counterfactual_grams;
  double error_percent_sum = 0;    // Σ items × error of the variant that served them
  double mean_error_percent = 0;   // error_percent_sum / items (0 without items)
  // Against the baseline variant:
  double relative_quality_improvement_percent = 0;  // (err_b - mean) / err_b × 100
  double extra_grams = 0;                            // grams - counterfactual_grams[baseline]
  // Jung's carbon-emission efficiency, relative_quality_improvement_percent / extra_grams: a gain
  // bought with extra carbon. NaN while extra_grams <= 0, where the ratio means nothing (near zero
  // it explodes; below zero a gain over a saving is negative, a loss over a saving positive).
  double efficiency = 0;
  // More accurate than the baseline and fewer grams than it would have emitted: better on both.
  bool beats_baseline = false;
};

// Per-variant figures of one served variant, for callers that need them directly.
double JoulesFor(const selector::Variant& v, uint64_t items);
double GramsFor(const selector::Variant& v, double item_intensity);

RouteReport Report(const RouteLedger& route, const Accounting& accounting = {});

// The Software Carbon Intensity (Green Software Foundation, ISO/IEC 21031:2024) per inference:
// (operational grams + embodied grams) / inferences; NaN without inferences.
double SciPerInference(double operational_grams, double embodied_grams, uint64_t inferences);

// The embodied emissions amortised over `in_use` (SCI's M = TE × TR/EL × RR/TR): `embodied_grams`
// (TE) × `in_use` / `lifespan` (TR/EL) × `share` (RR/TR).
double EmbodiedGrams(double embodied_grams, absl::Duration in_use, absl::Duration lifespan, double share);

// Owns every VariantLedger ever made, keyed by (route, variant) name, so that a reload that keeps a
// route and variant keeps counting where it was. Thread-safe: Route() (config time) takes a lock;
// recording through the returned RouteLedger does not.
class CarbonLedger {
 public:
  std::shared_ptr<const RouteLedger> Route(const std::string& route,
                                           std::shared_ptr<const selector::Pool> pool, size_t baseline);
  // The cell of (route, cluster); the pointer stays valid as long as the ledger.
  ClusterLedger* Cluster(const std::string& route, const std::string& cluster);
  // Calls of `route` failed over from cluster `from` to `to`; valid as long as the ledger.
  std::atomic<uint64_t>* Failovers(const std::string& route, const std::string& from, const std::string& to);
  // The unary inference calls in flight to a cluster with a max_in_flight, all routes together.
  std::atomic<int64_t>* ClusterInFlight(const std::string& cluster);

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<VariantLedger>> variants_ ABSL_GUARDED_BY(mu_);
  // By (route, from, to, reason) names, so that a reload keeps counting.
  absl::flat_hash_map<std::string, std::unique_ptr<std::atomic<uint64_t>>> spilled_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<ClusterLedger>> clusters_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<std::atomic<uint64_t>>> failovers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<std::atomic<int64_t>>> cluster_in_flight_ ABSL_GUARDED_BY(mu_);
};

}  // namespace carbon::telemetry
