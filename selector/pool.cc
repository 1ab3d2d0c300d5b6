#include "selector/pool.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace carbon::selector {

absl::StatusOr<Pool> Pool::Create(std::vector<Variant> variants) {
  if (variants.empty()) return absl::InvalidArgumentError("a pool needs at least one variant");
  if (variants.size() > kMaxVariants) {
    return absl::InvalidArgumentError(
        absl::StrCat("a pool holds at most ", kMaxVariants, " variants, got ", variants.size()));
  }
  absl::flat_hash_set<std::string_view> names;
  for (const Variant& v : variants) {
    if (v.name.empty()) return absl::InvalidArgumentError("a variant has an empty name");
    if (!names.insert(v.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("variant '", v.name, "' appears twice"));
    }
    if (!std::isfinite(v.energy_mj) || v.energy_mj <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "variant '", v.name, "': energy_mj must be a positive number, got ", v.energy_mj));
    }
    if (!std::isfinite(v.error_percent) || v.error_percent < 0 || v.error_percent > 100) {
      return absl::InvalidArgumentError(absl::StrCat(
          "variant '", v.name, "': error_percent must lie in [0, 100], got ", v.error_percent));
    }
  }
  return Pool(std::move(variants));
}

Pool::Pool(std::vector<Variant> variants) : variants_(std::move(variants)) {
  std::stable_sort(variants_.begin(), variants_.end(), [](const Variant& a, const Variant& b) {
    return a.energy_mj < b.energy_mj;
  });
  for (size_t i = 1; i < variants_.size(); ++i) {
    if (variants_[i].error_percent < variants_[most_accurate_].error_percent) most_accurate_ = i;
  }
}

std::optional<size_t> Pool::IndexOf(std::string_view name) const {
  for (size_t i = 0; i < variants_.size(); ++i) {
    if (variants_[i].name == name) return i;
  }
  return std::nullopt;
}

uint64_t Pool::all_variants_mask() const {
  return variants_.size() == 64 ? ~uint64_t{0} : (uint64_t{1} << variants_.size()) - 1;
}

}  // namespace carbon::selector
