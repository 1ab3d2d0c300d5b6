#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "selector/routing_policy.h"

namespace carbon::selector {

// Serves a decision's weights one request at a time, deterministically. The weights are rounded to
// thousandths and laid out once, at construction, as a sequence of kPeriod positions by smooth
// weighted round robin (each step takes the variant furthest behind its share, the lower index on a
// tie). Next() takes the next position with one relaxed atomic increment: no lock, no allocation.
// Every request takes a distinct position of one sequence, so after N requests, whichever threads
// made them, each variant has served within one request of N × its rounded weight.
// Thread-safe.
class WeightedDraw {
 public:
  static constexpr uint32_t kPeriod = 1000;

  // `weights` as a Decision holds them (sum 1, none zero); at most Pool::kMaxVariants variants.
  explicit WeightedDraw(const std::vector<VariantWeight>& weights);

  size_t Next() const {
    if (sequence_.size() == 1) return sequence_[0];
    const uint64_t n = next_.fetch_add(1, std::memory_order_relaxed);
    return sequence_[n % kPeriod];
  }

  // Each variant's share after rounding, in thousandths (what Next() serves over a period).
  const std::vector<std::pair<size_t, uint32_t>>& shares() const { return shares_; }

 private:
  std::vector<uint8_t> sequence_;  // kPeriod positions, or one for a single variant
  std::vector<std::pair<size_t, uint32_t>> shares_;
  alignas(64) mutable std::atomic<uint64_t> next_{0};
};

}  // namespace carbon::selector
