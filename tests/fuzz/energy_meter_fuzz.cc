// libFuzzer harness: the energy meters' readers (Prometheus text as Triton and DCGM's exporter
// serve it, a Prometheus query answer) on arbitrary bytes. An accepted reading has finite,
// non-negative energies on distinct devices, and compared with itself is an empty interval.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "telemetry/energy_meter.h"
#include "telemetry/prometheus_text.h"

namespace {

void Check(const absl::StatusOr<carbon::telemetry::MeterReading>& reading) {
  if (!reading.ok()) return;
  for (size_t i = 0; i < reading->device_joules.size(); ++i) {
    const double j = reading->device_joules[i].second;
    if (!std::isfinite(j) || j < 0) __builtin_trap();
    if (i > 0 && !(reading->device_joules[i - 1].first < reading->device_joules[i].first)) __builtin_trap();
  }
  auto delta = carbon::telemetry::Difference(*reading, *reading);
  if (!delta.ok() || delta->joules != 0) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto samples = carbon::telemetry::ParsePrometheusText(text, 10'000);
  if (samples.ok() && samples->size() > 10'000) __builtin_trap();
  Check(carbon::telemetry::ReadTritonMetrics(text));
  Check(carbon::telemetry::ReadDcgmExporterMetrics(text));
  Check(carbon::telemetry::ReadPrometheusQueryAnswer(text));
  return 0;
}
