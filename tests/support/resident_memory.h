#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"

namespace carbon::testing {

// Memory a test's process may keep beyond what it holds on purpose: allocator slack, and under a
// sanitizer its bookkeeping — AddressSanitizer's quarantine keeps freed blocks resident, and
// ThreadSanitizer shadows every byte touched (a flood of 256 KiB messages grew an ASan build by
// 80-100 MiB more than a plain one, a TSan build by 25-40 MiB more).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CARBON_TEST_SANITIZED_MEMORY 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define CARBON_TEST_SANITIZED_MEMORY 1
#endif
#endif
#ifdef CARBON_TEST_SANITIZED_MEMORY
inline constexpr int64_t kAllocatorSlackKiB = 192 * 1024;
#else
inline constexpr int64_t kAllocatorSlackKiB = 32 * 1024;
#endif

// This process's resident set size (VmRSS), in KiB; -1 if /proc cannot tell.
inline int64_t ResidentKiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    int64_t kib = 0;
    if (absl::StartsWith(line, "VmRSS:") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(line.substr(6), "kB")), &kib)) {
      return kib;
    }
  }
  return -1;
}

}  // namespace carbon::testing
