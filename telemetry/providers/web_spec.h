#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "common/config_block.h"
#include "telemetry/http_providers.h"
#include "telemetry/providers/provider_spec.h"

namespace carbon::telemetry {

// The options every web provider takes: where the service is and how long to wait for it.
struct WebSpec {
  std::string base_url;  // empty: the service's public address
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration timeout = absl::Seconds(10);
  int64_t max_response_bytes = 4 * 1024 * 1024;
  std::string ca_file;  // empty: the system CA bundle

  // Reads them from a provider's block; a ca_file must be readable now.
  void Read(ConfigBlock& block, bool base_url_required);
  void Render(nlohmann::json& out) const;
  WebProviderOptions Options(const ProviderContext& context) const;
};

// Reads a secret named by an environment variable or a file (trailing newline trimmed).
absl::StatusOr<std::string> ReadSecret(const std::string& env, const std::string& file);

// Reads the pair of keys that name a secret (`<env_key>`: an environment variable, `<file_key>`: a
// file, resolved against the config's directory) and checks that exactly one is set and that it can
// be read now, so that a missing token stops start-up (or a reload) with its location rather than
// failing every poll. `what` names the secret in messages.
void ReadSecretSource(ConfigBlock& block, const std::string& what, const std::string& env_key,
                      const std::string& file_key, std::string* env, std::string* file);

}  // namespace carbon::telemetry
