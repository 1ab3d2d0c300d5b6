#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace carbon::selector {

// One servable model of a family, with what it costs and how well it does.
struct Variant {
  std::string name;
  double energy_mj = 0;      // energy per inference, millijoules
  double error_percent = 0;  // top-1 error, percent
};

// A set of interchangeable variants, ordered by energy (cheapest first). Immutable once created and
// therefore safe to share between threads.
class Pool {
 public:
  // Selections carry candidate sets as 64-bit masks.
  static constexpr size_t kMaxVariants = 64;

  // Rejects an empty pool, duplicate or empty names, and energies or errors that are not finite,
  // not positive (energy) or outside [0, 100] (error). The message names the offending variant.
  static absl::StatusOr<Pool> Create(std::vector<Variant> variants);

  const std::vector<Variant>& variants() const { return variants_; }
  size_t size() const { return variants_.size(); }
  const Variant& operator[](size_t i) const { return variants_[i]; }

  std::optional<size_t> IndexOf(std::string_view name) const;
  double min_energy_mj() const { return variants_.front().energy_mj; }
  double max_energy_mj() const { return variants_.back().energy_mj; }
  // The variant with the lowest error; between equals, the cheaper one.
  size_t most_accurate() const { return most_accurate_; }
  // A mask with one bit set per variant.
  uint64_t all_variants_mask() const;

 private:
  explicit Pool(std::vector<Variant> variants);
  std::vector<Variant> variants_;
  size_t most_accurate_ = 0;
};

}  // namespace carbon::selector
