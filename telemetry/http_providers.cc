#include "telemetry/http_providers.h"

#include "telemetry/provider_json.h"
#include "telemetry/providers/provider_spec.h"

namespace carbon::telemetry {

absl::Status ParseEveryProviderReply(const std::string& body) {
  auto doc = ParseJsonBody(body, "fuzz");
  if (!doc.ok()) return doc.status();
  absl::Status last;
  for (const ProviderRegistration& kind : RegisteredProviders()) {
    if (kind.parse_reply != nullptr) last.Update(kind.parse_reply(*doc));
  }
  return last;
}

}  // namespace carbon::telemetry
