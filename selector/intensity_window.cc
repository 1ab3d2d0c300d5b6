#include "selector/intensity_window.h"

#include <algorithm>

namespace carbon::selector {

std::optional<WindowBounds> Widened(std::optional<WindowBounds> bounds, std::optional<WindowBounds> more) {
  if (!bounds) return more;
  if (!more) return bounds;
  return WindowBounds{std::min(bounds->low, more->low), std::max(bounds->high, more->high)};
}

bool IntensityWindow::Add(const IntensityReading& reading) {
  if (latest_ && reading.at < latest_->at) return false;
  if (latest_ && reading.at == latest_->at) {
    // A revision: drop the old value of this instant from both queues before pushing the new one.
    if (!min_.empty() && min_.back().at == reading.at) min_.pop_back();
    if (!max_.empty() && max_.back().at == reading.at) max_.pop_back();
  }
  while (!min_.empty() && min_.back().gco2_per_kwh >= reading.gco2_per_kwh) min_.pop_back();
  while (!max_.empty() && max_.back().gco2_per_kwh <= reading.gco2_per_kwh) max_.pop_back();
  min_.push_back(reading);
  max_.push_back(reading);
  latest_ = reading;
  return true;
}

void IntensityWindow::Expire(absl::Time now) {
  const absl::Time oldest_kept = now - span_;
  while (!min_.empty() && min_.front().at <= oldest_kept) min_.pop_front();
  while (!max_.empty() && max_.front().at <= oldest_kept) max_.pop_front();
}

std::optional<WindowBounds> IntensityWindow::Bounds(absl::Time now) {
  if (fixed_) return fixed_;
  Expire(now);
  if (min_.empty()) return std::nullopt;
  return WindowBounds{min_.front().gco2_per_kwh, max_.front().gco2_per_kwh};
}

}  // namespace carbon::selector
