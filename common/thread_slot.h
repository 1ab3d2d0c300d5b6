#pragma once

#include <atomic>
#include <cstddef>

namespace carbon {

// The slot of `slots` the calling thread writes to: threads are numbered in the order they first
// ask and spread round robin, so per-thread counters (the ledger's shards, the weighted draw's
// cursors) rarely share a cache line. Lock-free.
inline size_t ThisThreadSlot(size_t slots) {
  static std::atomic<size_t> next{0};
  thread_local const size_t number = next.fetch_add(1, std::memory_order_relaxed);
  return number % slots;
}

}  // namespace carbon
