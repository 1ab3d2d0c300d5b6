#include "telemetry/providers/web_provider.h"

namespace carbon::telemetry {
namespace {

std::string TrimSlash(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

}  // namespace

WebProvider::WebProvider(WebProviderOptions web)
    : web_(std::move(web)), base_(TrimSlash(web_.base_url)), http_(web_.http) {}

}  // namespace carbon::telemetry
