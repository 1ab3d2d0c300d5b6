#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace carbon {

// One mapping of the config file, as a policy or a provider reads its own options from it. The
// getters remember which keys were asked for, so keys nobody asked for are reported as unknown;
// every problem becomes an INVALID_ARGUMENT "file:line:column: what is wrong" at the offending
// value. The first problem wins and makes later getters no-ops. The YAML reader of
// sidecar/config.cc implements it; the library reading its options needs no YAML.
// Not thread-safe: one reader at a time.
class ConfigBlock {
 public:
  virtual ~ConfigBlock() = default;

  // Each getter returns true when the key is present and its value valid (and then sets `out`);
  // false when it is absent (an error if `required`) or invalid (an error).
  virtual bool String(std::string_view key, std::string* out, bool required = false) = 0;
  virtual bool Number(std::string_view key, double* out, bool required = false) = 0;
  virtual bool Integer(std::string_view key, int64_t* out, bool required = false) = 0;
  virtual bool Bool(std::string_view key, bool* out) = 0;
  // A duration such as 30s, 5m or 24h; never negative or infinite, zero only when `allow_zero`.
  virtual bool Duration(std::string_view key, absl::Duration* out, bool allow_zero) = 0;
  // An RFC 3339 time such as 2023-06-01T00:00:00Z.
  virtual bool Time(std::string_view key, std::optional<absl::Time>* out) = 0;
  // A non-empty list of mappings, one block each; the caller finishes each with Finish().
  virtual bool Blocks(std::string_view key, std::vector<std::unique_ptr<ConfigBlock>>* out, bool required) = 0;

  // Records `message` as the block's problem, located at `key`'s value (or at the block when the
  // key is absent or empty). Returns false, so a check can `return block.Fail(…)`.
  virtual bool Fail(std::string_view key, std::string_view message) = 0;
  // Records a problem that already carries its location (from a block nested in this one).
  virtual bool FailWith(const absl::Status& located) = 0;
  // `key` as a reader of the file finds it, e.g. "intensity.providers[1].zone".
  virtual std::string Path(std::string_view key) const = 0;
  // `path` made absolute against the config file's directory (empty stays empty).
  virtual std::string Resolve(const std::string& path) const = 0;

  virtual const absl::Status& status() const = 0;
  bool ok() const { return status().ok(); }
  // Reports the first key no getter asked for, or the first problem recorded.
  virtual absl::Status Finish() = 0;
};

}  // namespace carbon
