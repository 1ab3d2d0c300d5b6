#pragma once

// gRPC guarantees that whatever a thread did before starting an operation (StartRead, StartWrite,
// StartCall, Finish, RemoveHold…) happens before that operation's reaction (OnReadDone, …) runs,
// on whichever thread. It keeps that promise with its own synchronisation, which ThreadSanitizer
// cannot see in Debian's uninstrumented gRPC, so every hand-off between reactions would look like
// a race. HappensBefore(tag) before starting an operation and HappensAfter(tag) first thing in its
// reaction tell ThreadSanitizer about the ordering; outside ThreadSanitizer builds they are nothing.

#if defined(__SANITIZE_THREAD__)
#define CARBON_THREAD_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CARBON_THREAD_SANITIZER 1
#endif
#endif

#ifdef CARBON_THREAD_SANITIZER
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace carbon {

inline void HappensBefore([[maybe_unused]] const void* tag) {
#ifdef CARBON_THREAD_SANITIZER
  __tsan_release(const_cast<void*>(tag));
#endif
}

inline void HappensAfter([[maybe_unused]] const void* tag) {
#ifdef CARBON_THREAD_SANITIZER
  __tsan_acquire(const_cast<void*>(tag));
#endif
}

// HappensBefore(tag) when the scope ends: for a reaction that gRPC promises to finish before a
// later one (OnDone) begins.
class HappensBeforeOnExit {
 public:
  explicit HappensBeforeOnExit(const void* tag) : tag_(tag) {}
  ~HappensBeforeOnExit() { HappensBefore(tag_); }
  HappensBeforeOnExit(const HappensBeforeOnExit&) = delete;
  HappensBeforeOnExit& operator=(const HappensBeforeOnExit&) = delete;

 private:
  const void* tag_;
};

}  // namespace carbon
