#include "telemetry/latency_histogram.h"

#include <algorithm>

namespace carbon::telemetry {

void LatencyHistogram::Observe(double seconds) {
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(kBounds.begin(), kBounds.end(), seconds) - kBounds.begin());
  Shard& s = shards_[ThisThreadShard()];
  s.buckets[bucket].fetch_add(1, std::memory_order_relaxed);
  s.sum.fetch_add(seconds, std::memory_order_relaxed);
}

LatencyHistogram::Counts LatencyHistogram::Read() const {
  std::array<uint64_t, kBounds.size() + 1> per_bucket{};
  Counts c;
  for (const Shard& s : shards_) {
    for (size_t b = 0; b < per_bucket.size(); ++b) per_bucket[b] += s.buckets[b].load(std::memory_order_relaxed);
    c.sum += s.sum.load(std::memory_order_relaxed);
  }
  uint64_t running = 0;
  for (size_t b = 0; b < kBounds.size(); ++b) {
    running += per_bucket[b];
    c.cumulative[b] = running;
  }
  c.count = running + per_bucket.back();
  return c;
}

}  // namespace carbon::telemetry
