// The provider kinds. Adding one: a file in this folder with the provider, its spec and its
// reader (see docs/design.md, "Adding a policy or a provider"), its functions declared in kinds.h,
// and one line here.
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/string_view_compat.h"
#include "telemetry/providers/kinds.h"

namespace carbon::telemetry {
namespace {

constexpr ProviderRegistration kProviders[] = {
    {"static", &ReadStaticProvider},
    {"trace", &ReadTraceProvider},
    {"uk-carbon-intensity", &ReadUkCarbonIntensityProvider, &ParseUkCarbonIntensityReply},
    {"electricity-maps", &ReadElectricityMapsProvider, &ParseElectricityMapsReply},
    {"watttime", &ReadWattTimeProvider, &ParseWattTimeReply},
    {"carbon-aware-sdk", &ReadCarbonAwareSdkProvider, &ParseCarbonAwareSdkReply},
    {"fallback", &ReadFallbackProvider},
};

}  // namespace

std::span<const ProviderRegistration> RegisteredProviders() { return kProviders; }

std::unique_ptr<ProviderSpec> ReadProviderSpec(ConfigBlock& block, bool nested) {
  std::string kind, region;
  block.String("provider", &kind, /*required=*/true);
  block.String("region", &region);
  if (!block.ok()) return nullptr;
  std::vector<absl::string_view> known;
  for (const ProviderRegistration& r : RegisteredProviders()) {
    if (nested && r.kind == "fallback") continue;
    if (r.kind == kind) {
      std::unique_ptr<ProviderSpec> spec = r.read(block, region);
      if (!block.ok() || spec == nullptr) return nullptr;
      spec->region = region;
      return spec;
    }
    known.push_back(ToAbsl(r.kind));
  }
  block.Fail("provider", absl::StrCat(block.Path("provider"), " '", kind, "' is not known (known providers: ",
                                      absl::StrJoin(known, ", "), ")"));
  return nullptr;
}

}  // namespace carbon::telemetry
