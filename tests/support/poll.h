#pragma once

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace carbon::testing {

// Polls `pred` every 10 ms until it holds or `timeout` passes; returns its last value. Tests wait
// for conditions this way rather than sleeping for a guessed time.
template <typename Pred>
bool PollUntil(Pred pred, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return pred();
}

}  // namespace carbon::testing
