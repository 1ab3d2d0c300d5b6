#pragma once

#include <memory>
#include <span>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/config_block.h"
#include "selector/routing_policy.h"

namespace carbon::selector {

// A route's `policy:` block as configured: its options read and checked. Immutable once read.
class PolicySpec {
 public:
  virtual ~PolicySpec() = default;
  // The `kind` that selects it.
  virtual std::string_view kind() const = 0;
  // The options beyond `kind`, as /v1/config shows them.
  virtual nlohmann::json Render() const { return nlohmann::json::object(); }
  // The policy for one route's pool, which must outlive it.
  virtual std::unique_ptr<const RoutingPolicy> Build(const Pool& pool, const PolicySettings& settings) const = 0;
};

// What a policy's options are checked against when read: the route's pool and how often the
// intensity is polled.
struct PolicyContext {
  const Pool& pool;
  absl::Duration intensity_refresh;
};

// How one kind of policy is read. `read` gets the `policy:` block (its `kind` already read) and
// reads the rest; problems go to the block's status, and then the result is ignored.
struct PolicyRegistration {
  std::string_view kind;
  std::unique_ptr<PolicySpec> (*read)(ConfigBlock& block, const PolicyContext& context);
};

// Every policy kind (policies/registry.cc).
std::span<const PolicyRegistration> RegisteredPolicies();

// Reads `kind` and the named policy's options from `block`; null when the block has a problem.
std::unique_ptr<PolicySpec> ReadPolicySpec(ConfigBlock& block, const PolicyContext& context);

// The policy of a route that names none: linear-interpolation.
std::shared_ptr<const PolicySpec> DefaultPolicySpec();

}  // namespace carbon::selector
