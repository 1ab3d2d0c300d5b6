#pragma once

#include <deque>

#include "absl/time/time.h"
#include "selector/latency_guard.h"
#include "telemetry/carbon_ledger.h"
#include "telemetry/latency_histogram.h"

namespace carbon::telemetry {

// The last `window` of one variant's calls, from snapshots of its cumulative counters taken at each
// guard tick (the request path only ever adds to the counters). Not thread-safe: the publisher owns it.
class LoadWindow {
 public:
  // Fewer completions than this in a window say too little about a 99th percentile.
  static constexpr uint64_t kMinCompletions = 10;

  // Takes a snapshot of `variant` at `now` and returns the load over (now - window, now]: the
  // difference from the oldest snapshot still inside it (or the newest one before it).
  selector::VariantLoad Sample(const VariantLedger& variant, absl::Time now, absl::Duration window);

 private:
  struct Snapshot {
    absl::Time at;
    LatencyHistogram::Counts latency;
    uint64_t overload_answers = 0;
  };
  std::deque<Snapshot> snapshots_;
};

// The smallest bucket bound that holds 99 % of `counts` (Prometheus's histogram_quantile, without
// interpolation: an upper bound); nullopt when there are none, or past the last bound when the
// slowest one percent took longer than it.
std::optional<absl::Duration> P99(const LatencyHistogram::Counts& counts);

}  // namespace carbon::telemetry
