#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "telemetry/carbon_ledger.h"

namespace carbon::telemetry {

// A histogram of durations in seconds with fixed buckets, recorded without locks into per-thread
// shards that readers add up (Prometheus-style cumulative buckets on read). Thread-safe.
class LatencyHistogram {
 public:
  // Upper bounds in seconds, from 100 µs (a loopback call) to 10 s.
  static constexpr std::array<double, 15> kBounds = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                     0.005,  0.01,    0.025,  0.05,  0.1,
                                                     0.25,   0.5,     1,      2.5,   10};

  void Observe(double seconds);

  struct Counts {
    std::array<uint64_t, kBounds.size()> cumulative{};  // observations ≤ each bound
    uint64_t count = 0;
    double sum = 0;
  };
  Counts Read() const;

 private:
  struct alignas(64) Shard {
    std::array<std::atomic<uint64_t>, kBounds.size() + 1> buckets{};  // the last one: over 10 s
    std::atomic<double> sum{0};
  };
  std::array<Shard, kLedgerShards> shards_;
};

}  // namespace carbon::telemetry
