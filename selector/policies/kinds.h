#pragma once

// The readers of the policy kinds registry.cc lists: one declaration per kind.
#include <memory>

#include "selector/policy_spec.h"

namespace carbon::selector {

std::unique_ptr<PolicySpec> ReadLinearInterpolationPolicy(ConfigBlock& block, const PolicyContext& context);
std::unique_ptr<PolicySpec> ReadAccuracyTargetPolicy(ConfigBlock& block, const PolicyContext& context);
std::unique_ptr<PolicySpec> ReadCarbonBudgetPolicy(ConfigBlock& block, const PolicyContext& context);
std::unique_ptr<PolicySpec> MakeLinearInterpolationSpec();

}  // namespace carbon::selector
