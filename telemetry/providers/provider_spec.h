#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config_block.h"
#include "telemetry/intensity_provider.h"

namespace carbon::telemetry {

// What every provider is built with, besides its own options.
struct ProviderContext {
  absl::Duration max_age = absl::Hours(2);  // web providers refuse readings older than this
};

// One intensity source as configured: its options read and checked from its YAML block (see
// docs/providers.md). Immutable once read; shared between the config and the running sidecar.
class ProviderSpec {
 public:
  virtual ~ProviderSpec() = default;
  // The `provider:` value that selects it.
  virtual std::string_view kind() const = 0;
  // The options as /v1/config shows them; secrets appear only as where they are read from.
  virtual nlohmann::json Render() const = 0;
  // A provider to poll. Secrets are read here, so a reload picks up a rotated token.
  virtual absl::StatusOr<std::unique_ptr<IntensityProvider>> Build(const ProviderContext& context) const = 0;

  // A label for logs and metrics (and, for WattTime, its region); may be empty.
  std::string region;
};

// How one kind of provider is read from its block. `read` gets the block whose `provider` key named
// the kind (already read, like `region`) and reads the rest of its options; problems go to the
// block's status, and then the result is ignored.
struct ProviderRegistration {
  std::string_view kind;
  std::unique_ptr<ProviderSpec> (*read)(ConfigBlock& block, const std::string& region);
  // A web provider's reply parsers run over one JSON document (no I/O), for the fuzz harness;
  // null for kinds that parse no replies.
  absl::Status (*parse_reply)(const nlohmann::json& doc) = nullptr;
};

// Every provider kind, in the order docs and messages list them (providers/registry.cc).
std::span<const ProviderRegistration> RegisteredProviders();

// Reads `provider`, `region` and the named kind's options from `block`. `nested`: inside a
// fallback chain, which may not nest another. Null when the block has a problem (see its status).
std::unique_ptr<ProviderSpec> ReadProviderSpec(ConfigBlock& block, bool nested = false);

}  // namespace carbon::telemetry
