// The policy kinds. Adding one: a file in this folder with the policy, its spec and its reader
// (see docs/design.md, "Adding a policy"), its reader declared in kinds.h, and one line here.
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/string_view_compat.h"
#include "selector/policies/kinds.h"

namespace carbon::selector {
namespace {

constexpr PolicyRegistration kPolicies[] = {
    {"linear-interpolation", &ReadLinearInterpolationPolicy},
    {"accuracy-target", &ReadAccuracyTargetPolicy},
    {"carbon-budget", &ReadCarbonBudgetPolicy},
};

}  // namespace

std::span<const PolicyRegistration> RegisteredPolicies() { return kPolicies; }

std::unique_ptr<PolicySpec> ReadPolicySpec(ConfigBlock& block, const PolicyContext& context) {
  std::string kind;
  if (!block.String("kind", &kind, /*required=*/true)) return nullptr;
  std::vector<absl::string_view> known;
  for (const PolicyRegistration& r : RegisteredPolicies()) {
    if (r.kind == kind) {
      std::unique_ptr<PolicySpec> spec = r.read(block, context);
      return block.ok() ? std::move(spec) : nullptr;
    }
    known.push_back(ToAbsl(r.kind));
  }
  block.Fail("kind", absl::StrCat(block.Path("kind"), " '", kind, "' is not known (known policies: ",
                                  absl::StrJoin(known, ", "), ")"));
  return nullptr;
}

std::shared_ptr<const PolicySpec> DefaultPolicySpec() {
  static const std::shared_ptr<const PolicySpec> spec = MakeLinearInterpolationSpec();
  return spec;
}

}  // namespace carbon::selector
