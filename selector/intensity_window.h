#pragma once

#include <deque>
#include <optional>

#include "absl/time/time.h"

namespace carbon::selector {

// A grid carbon-intensity value and the moment it describes.
struct IntensityReading {
  double gco2_per_kwh = 0;
  absl::Time at;
};

// The lowest and highest intensity the heuristic interpolates between.
struct WindowBounds {
  double low = 0;
  double high = 0;
};

// `bounds` widened to take in `more` (a forecast's range, or one more reading as {C, C}); either
// may be absent.
std::optional<WindowBounds> Widened(std::optional<WindowBounds> bounds, std::optional<WindowBounds> more);

// Trailing minimum and maximum of intensity over a span of time (docs/design.md §1: C_low and C_high),
// or fixed bounds when an operator sets them. Readings must arrive in time order; amortised O(1)
// per reading. Not thread-safe: one owner feeds it and publishes what it computes.
class IntensityWindow {
 public:
  explicit IntensityWindow(absl::Duration span) : span_(span) {}

  // Fixed bounds replace the trailing ones; nullopt returns to trailing bounds.
  void SetFixedBounds(std::optional<WindowBounds> bounds) { fixed_ = bounds; }

  // A reading at the same instant as the newest replaces it (providers revise values); one older
  // than the newest is ignored and false is returned.
  bool Add(const IntensityReading& reading);

  // Bounds over readings in (now - span, now]; nullopt when none is left and no fixed bounds are set.
  std::optional<WindowBounds> Bounds(absl::Time now);

  std::optional<IntensityReading> latest() const { return latest_; }
  absl::Duration span() const { return span_; }

 private:
  void Expire(absl::Time now);

  absl::Duration span_;
  std::optional<WindowBounds> fixed_;
  std::optional<IntensityReading> latest_;
  // Monotonic queues: front of min_ is the window's minimum, front of max_ its maximum.
  std::deque<IntensityReading> min_;
  std::deque<IntensityReading> max_;
};

}  // namespace carbon::selector
