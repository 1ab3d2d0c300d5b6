#include "telemetry/providers/web_spec.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/string_view_compat.h"

namespace carbon::telemetry {

void WebSpec::Read(ConfigBlock& block, bool base_url_required) {
  block.String("base_url", &base_url, base_url_required);
  block.Duration("connect_timeout", &connect_timeout, false);
  block.Duration("timeout", &timeout, false);
  if (block.Integer("max_response_bytes", &max_response_bytes) && max_response_bytes <= 0) {
    block.Fail("max_response_bytes", absl::StrCat(block.Path("max_response_bytes"), " must be positive"));
  }
  if (block.String("ca_file", &ca_file)) {
    ca_file = block.Resolve(ca_file);
    if (!std::ifstream(ca_file)) {
      block.Fail("ca_file", absl::StrCat(block.Path("ca_file"), " '", ca_file, "' cannot be read"));
    }
  }
}

void WebSpec::Render(nlohmann::json& out) const {
  out["base_url"] = base_url.empty() ? nlohmann::json("(the service's public address)") : nlohmann::json(base_url);
  out["connect_timeout"] = absl::FormatDuration(connect_timeout);
  out["timeout"] = absl::FormatDuration(timeout);
  out["max_response_bytes"] = max_response_bytes;
  if (!ca_file.empty()) out["ca_file"] = ca_file;
}

WebProviderOptions WebSpec::Options(const ProviderContext& context) const {
  WebProviderOptions web;
  web.base_url = base_url;
  web.http.connect_timeout = connect_timeout;
  web.http.timeout = timeout;
  web.http.max_response_bytes = max_response_bytes;
  web.http.ca_file = ca_file;
  web.max_age = context.max_age;
  return web;
}

absl::StatusOr<std::string> ReadSecret(const std::string& env, const std::string& file) {
  std::string secret;
  if (!env.empty()) {
    const char* value = std::getenv(env.c_str());
    if (value == nullptr || *value == '\0') {
      return absl::NotFoundError(absl::StrCat("environment variable ", env, " is not set"));
    }
    secret = value;
  } else {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat("secret file '", file, "' cannot be read"));
    std::stringstream text;
    text << in.rdbuf();
    secret = text.str();
    while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
    if (secret.empty()) return absl::InvalidArgumentError(absl::StrCat("secret file '", file, "' is empty"));
  }
  return secret;
}

void ReadSecretSource(ConfigBlock& block, const std::string& what, const std::string& env_key,
                      const std::string& file_key, std::string* env, std::string* file) {
  block.String(env_key, env);
  if (block.String(file_key, file)) *file = block.Resolve(*file);
  if (!block.ok()) return;
  if (env->empty() == file->empty()) {
    block.Fail("", absl::StrCat(block.Path(what), " needs exactly one of '", env_key,
                                "' (an environment variable) or '", file_key, "' (a file)"));
    return;
  }
  auto secret = ReadSecret(*env, *file);
  if (!secret.ok()) block.Fail(env->empty() ? file_key : env_key, ToStd(secret.status().message()));
}

}  // namespace carbon::telemetry
