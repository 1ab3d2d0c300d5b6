#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "sidecar/routing.h"

namespace carbon::sidecar {

// One route at one sample of the history.
struct RouteHistoryPoint {
  std::string route;
  std::string model;       // the decision's primary variant
  std::string cluster;     // where its calls went
  double intensity = -1;   // gCO2/kWh the decision was made at; negative: none known
  uint64_t requests = 0;   // served so far (a counter: the page differentiates)
  double grams = 0;        // emitted so far (a counter)
};

struct HistoryPoint {
  absl::Time at;  // wall clock
  std::vector<RouteHistoryPoint> routes;
};

// The last `capacity` samples of what each route did, for the status page's chart (/v1/history).
// Memory is bounded: about capacity × routes × 150 bytes (names longer than 15 characters add their
// length). Thread-safe: the sampler records while the admin port reads.
class StatusHistory {
 public:
  explicit StatusHistory(size_t capacity) : capacity_(capacity) {}

  // Adds a sample of `snapshot` taken at `at`, dropping the oldest once full.
  void Record(const RoutingSnapshot& snapshot, absl::Time at);
  std::vector<HistoryPoint> Points() const;
  size_t capacity() const { return capacity_; }

 private:
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::deque<HistoryPoint> points_ ABSL_GUARDED_BY(mu_);
};

// /v1/history: {"capacity", "interval_seconds", "points": [{"at", "routes": [...]}, ...]}.
std::string RenderHistoryJson(const std::vector<HistoryPoint>& points, size_t capacity, absl::Duration interval);

}  // namespace carbon::sidecar
