#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/thread_slot.h"
#include "selector/routing_policy.h"

namespace carbon::selector {

// Serves a decision's weights one request at a time, deterministically. The weights are rounded to
// thousandths and laid out once, at construction, as a sequence of kPeriod positions by smooth
// weighted round robin (each step takes the variant furthest behind its share, the lower index on a
// tie), whose every prefix holds each variant within one of its share. Each thread walks that
// sequence with a cursor of its own (threads are spread over kCursors cache-line-sized cursors, as
// the ledger spreads them over its shards): one relaxed atomic increment a request, no lock, no
// allocation, and no cache line shared with another core. So each thread's requests match the
// weights within one request; a route's within one per cursor in use. Thread-safe.
class WeightedDraw {
 public:
  static constexpr uint32_t kPeriod = 1000;
  static constexpr size_t kCursors = 16;

  // `weights` as a Decision holds them (sum 1, none zero); at most Pool::kMaxVariants variants.
  // `origin`, when given, are the weights the draw's were made from (the policy's, before a guard or
  // a ramp moved them): each position then also says which variant the origin would have served
  // there, so that every moved request can be counted as it is drawn.
  explicit WeightedDraw(const std::vector<VariantWeight>& weights,
                        const std::vector<VariantWeight>& origin = {});

  size_t Next() const {
    if (sequence_.size() == 1) return sequence_[0];
    return sequence_[NextPosition()];
  }

  // The variant for the next request, and the one the origin weights would have served instead.
  struct Pick {
    size_t variant;
    size_t origin;
  };
  Pick NextPick() const {
    if (sequence_.size() == 1) return {sequence_[0], origins_.empty() ? sequence_[0] : origins_[0]};
    const uint32_t n = NextPosition();
    return {sequence_[n], origins_.empty() ? sequence_[n] : origins_[n]};
  }

  // Each variant's share after rounding, in thousandths (what Next() serves over a period).
  const std::vector<std::pair<size_t, uint32_t>>& shares() const { return shares_; }

 private:
  uint32_t NextPosition() const {
    return static_cast<uint32_t>(cursors_[ThisThreadSlot(kCursors)].next.fetch_add(1, std::memory_order_relaxed) %
                                 kPeriod);
  }

  struct alignas(64) Cursor {
    mutable std::atomic<uint64_t> next{0};
  };
  std::vector<uint8_t> sequence_;  // kPeriod positions, or one for a single variant
  std::vector<uint8_t> origins_;   // like sequence_, when origin weights were given
  std::vector<std::pair<size_t, uint32_t>> shares_;
  std::array<Cursor, kCursors> cursors_;
};

}  // namespace carbon::selector
