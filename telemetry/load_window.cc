#include "telemetry/load_window.h"

#include <cmath>

#include "absl/status/status.h"

namespace carbon::telemetry {
namespace {

// The answers that say the upstream is overloaded rather than the request wrong; the sidecar's own
// refusals at an in-flight limit are not the upstream's.
uint64_t OverloadAnswers(const VariantLedger& variant) {
  // Refusals are counted as failed first: read them first, and never take more than were failed.
  const uint64_t refused = variant.refused();
  const VariantTotals t = variant.Totals();
  const uint64_t exhausted = t.failed[static_cast<size_t>(absl::StatusCode::kResourceExhausted)];
  return (exhausted > refused ? exhausted - refused : 0) +
         t.failed[static_cast<size_t>(absl::StatusCode::kUnavailable)] +
         t.failed[static_cast<size_t>(absl::StatusCode::kDeadlineExceeded)];
}

}  // namespace

std::optional<absl::Duration> P99(const LatencyHistogram::Counts& counts) {
  if (counts.count == 0) return std::nullopt;
  const double wanted = 0.99 * static_cast<double>(counts.count);
  for (size_t b = 0; b < LatencyHistogram::kBounds.size(); ++b) {
    if (static_cast<double>(counts.cumulative[b]) >= wanted) return absl::Seconds(LatencyHistogram::kBounds[b]);
  }
  return absl::InfiniteDuration();
}

selector::VariantLoad LoadWindow::Sample(const VariantLedger& variant, absl::Time now, absl::Duration window) {
  snapshots_.push_back({now, variant.latency().Read(), OverloadAnswers(variant)});
  // Keep one snapshot at or before the window's start as the base.
  while (snapshots_.size() > 2 && snapshots_[1].at <= now - window) snapshots_.pop_front();
  const Snapshot& base = snapshots_.front();
  const Snapshot& last = snapshots_.back();
  LatencyHistogram::Counts in_window;
  for (size_t b = 0; b < in_window.cumulative.size(); ++b) {
    in_window.cumulative[b] = last.latency.cumulative[b] - base.latency.cumulative[b];
  }
  in_window.count = last.latency.count - base.latency.count;
  in_window.sum = last.latency.sum - base.latency.sum;
  selector::VariantLoad load;
  load.completions = in_window.count;
  load.busy_seconds = in_window.sum;
  load.span = last.at - base.at;
  load.overload_answers = last.overload_answers - base.overload_answers;
  if (in_window.count >= kMinCompletions) load.p99 = P99(in_window);
  return load;
}

}  // namespace carbon::telemetry
