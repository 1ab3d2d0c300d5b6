// libFuzzer harness: the intensity/request trace CSV parser on arbitrary text, with named and
// positional columns. Accepted readings must be finite, non-negative and strictly increasing in time.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "telemetry/trace_provider.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const carbon::telemetry::TraceColumns& columns :
       {carbon::telemetry::TraceColumns{}, carbon::telemetry::TraceColumns{"from", "regions.intensity.forecast"}}) {
    auto readings = carbon::telemetry::ParseIntensityCsv(text, "fuzz.csv", columns);
    if (!readings.ok()) continue;
    for (size_t i = 0; i < readings->size(); ++i) {
      const auto& r = (*readings)[i];
      if (!std::isfinite(r.gco2_per_kwh) || r.gco2_per_kwh < 0) __builtin_trap();
      if (i > 0 && !((*readings)[i - 1].at < r.at)) __builtin_trap();
    }
  }
  return 0;
}
