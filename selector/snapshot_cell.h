#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace carbon::selector {

namespace internal {
// Versions are unique across every cell in the process, so one thread-local cache entry per type
// can never mistake another cell's snapshot for this one's.
inline std::atomic<uint64_t> next_snapshot_version{1};
}  // namespace internal

// Holds the current immutable snapshot of T. Writers (intensity updates, config reloads: rare)
// publish under a mutex; readers on the request path pay one atomic load and a compare while the
// snapshot is unchanged, and take the mutex once per thread after each publish.
// Thread-safe.
template <typename T>
class SnapshotCell {
 public:
  explicit SnapshotCell(std::shared_ptr<const T> initial) { Publish(std::move(initial)); }

  void Publish(std::shared_ptr<const T> next) {
    absl::MutexLock lock(&mu_);
    current_ = std::move(next);
    version_.store(internal::next_snapshot_version.fetch_add(1, std::memory_order_relaxed),
                   std::memory_order_release);
  }

  // The current snapshot. The reference stays valid until this thread's next Load of any cell of
  // type T; copy the shared_ptr to hold the snapshot longer.
  const std::shared_ptr<const T>& Load() const {
    thread_local Cached cached;
    const uint64_t version = version_.load(std::memory_order_acquire);
    if (cached.version != version) {
      absl::MutexLock lock(&mu_);
      cached.snapshot = current_;
      cached.version = version_.load(std::memory_order_relaxed);
    }
    return cached.snapshot;
  }

 private:
  struct Cached {
    uint64_t version = 0;
    std::shared_ptr<const T> snapshot;
  };

  mutable absl::Mutex mu_;
  std::shared_ptr<const T> current_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> version_{0};
};

}  // namespace carbon::selector
