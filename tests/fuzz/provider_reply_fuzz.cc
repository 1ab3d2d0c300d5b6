// libFuzzer harness: every web provider's reply parser (UK Carbon Intensity national/regional,
// current/forecast; Electricity Maps latest/history; WattTime data; Carbon Aware SDK bylocation and
// forecasts/current) on arbitrary bodies, plus the time parser. Nothing may crash or throw, whatever the JSON.
#include <cstddef>
#include <cstdint>
#include <string>

#include "telemetry/http_providers.h"
#include "telemetry/provider_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  (void)carbon::telemetry::ParseEveryProviderReply(body);
  (void)carbon::telemetry::ParseTimestamp(body);
  return 0;
}
