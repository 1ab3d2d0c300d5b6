#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/time/time.h"
#include "selector/routing_policy.h"

namespace carbon::selector {

// A route's latency objective: the 99th percentile of its calls' duration over a sliding window.
struct LatencySlo {
  absl::Duration latency_p99 = absl::Milliseconds(250);
  absl::Duration window = absl::Seconds(10);
};

// What one variant looked like over the last window, as the sidecar measured its own calls.
struct VariantLoad {
  uint64_t completions = 0;                 // calls that ended in the window
  std::optional<absl::Duration> p99;        // their 99th percentile (nullopt: too few to tell)
  uint64_t overload_answers = 0;            // RESOURCE_EXHAUSTED, UNAVAILABLE or DEADLINE_EXCEEDED
  double busy_seconds = 0;                  // the sum of those calls' durations
  absl::Duration span;                      // how much time the figures cover (up to the window)
};

// Per variant, the largest share of the route's calls the guard lets it have (1: no cap), and
// why it was last lowered. Adjusted once per guard tick.
struct GuardCaps {
  std::vector<double> cap;  // indexed like the pool
  std::vector<bool> over;   // whether the variant was over its objective at the last tick
};

// The guard's step: additive increase, multiplicative decrease of each variant's cap.
//  - over the objective (p99 above the SLO, or any overload answer in the window): the cap halves,
//    from the share the variant actually had (`served_share`), never below `kFloor`;
//  - well inside it (p99 under `kRecoverBelow` × the SLO, no overload answers): the cap grows by
//    `kStep` a tick, up to 1;
//  - in between, or without enough completions to tell: unchanged.
// The band between the two thresholds keeps a variant near its limit from flapping.
class LatencyGuard {
 public:
  static constexpr double kFloor = 0.02;
  static constexpr double kStep = 0.05;
  static constexpr double kRecoverBelow = 0.8;

  static GuardCaps Next(const GuardCaps& previous, const std::vector<VariantLoad>& load,
                        const std::vector<double>& served_share, const LatencySlo& slo);
};

// A variant's in-flight limit learned from its own latency, on a route with an slo where the operator
// set no max_in_flight. In the spirit of Envoy's adaptive concurrency filter (a limit scaled by the
// ratio of a target latency to the measured one), with the route's objective as the target:
//  - none until the variant first goes over the objective (p99 above it, or overload answers); then
//    the calls it had in flight on average over the window (Little's law: busy seconds / span),
//    times objective / p99 (at least one half);
//  - while over, cut again the same way (from the limit, or the calls in flight when fewer), at most
//    once a window (the window still holds the calls
//    that made it slow, and cutting on every tick would collapse the limit);
//  - well inside the objective while the limit was reached (calls spilled at it), grown by a tenth,
//    at least one call, a tick;
//  - otherwise unchanged. Never below one call.
struct LearnedLimit {
  std::optional<int64_t> limit;
  absl::Time last_cut = absl::InfinitePast();
};
LearnedLimit NextLearnedLimit(const LearnedLimit& previous, const VariantLoad& load, bool limit_reached,
                              const LatencySlo& slo, absl::Time now);

// The weights actually served: each variant's weight held to its cap, the excess passed down to the
// next lower-energy ready variant (and on down; the cheapest ready variant takes what is left).
// Weights stay ascending by variant and sum to 1.
std::vector<VariantWeight> CappedWeights(const std::vector<VariantWeight>& weights, const std::vector<double>& caps,
                                         uint64_t ready);

// The weights a fraction `progress` (0 to 1) of the way from `from` to `to`, variant by variant:
// a change of decision moved over a ramp instead of at once. Ascending by variant, zeros dropped.
std::vector<VariantWeight> RampedWeights(const std::vector<VariantWeight>& from, const std::vector<VariantWeight>& to,
                                         double progress);

// Whether two weight lists give every variant the same share (within a millionth).
bool SameWeights(const std::vector<VariantWeight>& a, const std::vector<VariantWeight>& b);

}  // namespace carbon::selector
