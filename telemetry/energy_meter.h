#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config_block.h"

namespace carbon::telemetry {

// What one read of an energy meter says: the energy each device has used since some start, and,
// where the source counts them, the inferences each model has run since its start.
struct MeterReading {
  std::vector<std::pair<std::string, double>> device_joules;  // by device id, sorted
  // Per model name, all versions together; nullopt when the source does not count inferences (the
  // calibrator then counts them from the sidecar's own ledger).
  std::optional<absl::flat_hash_map<std::string, double>> inferences;
};

// Triton's metrics endpoint (https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/user_guide/metrics.html):
// nv_energy_consumption{gpu_uuid} in joules since the server started, per GPU, and
// nv_inference_count{model,version}. NOT_FOUND without an energy sample (no GPU metrics: a CPU-only
// server, or --allow-gpu-metrics=false); INVALID_ARGUMENT for text that is not the format.
absl::StatusOr<MeterReading> ReadTritonMetrics(std::string_view text);
// NVIDIA's DCGM exporter (https://github.com/NVIDIA/dcgm-exporter):
// DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu,UUID,...} in millijoules since boot, per GPU. No
// inference counts.
absl::StatusOr<MeterReading> ReadDcgmExporterMetrics(std::string_view text);
// A Prometheus server's instant-query answer (/api/v1/query,
// https://prometheus.io/docs/prometheus/latest/querying/api/): a vector whose series are
// cumulative joules, one per device (e.g. Kepler's kepler_container_joules_total summed by
// container). No inference counts.
absl::StatusOr<MeterReading> ReadPrometheusQueryAnswer(std::string_view json);

// What happened between two readings of the same meter.
struct MeterDelta {
  double joules = 0;  // all devices together
  std::optional<absl::flat_hash_map<std::string, double>> inferences;
};
// FAILED_PRECONDITION when the two cannot be compared: a counter went down (the server or the GPU
// restarted: a reset), or a device appeared or disappeared. `devices` (when not empty) keeps only
// those device ids; NOT_FOUND when one of them is missing from `after`.
absl::StatusOr<MeterDelta> Difference(const MeterReading& before, const MeterReading& after,
                                      std::span<const std::string> devices = {});

// A meter the calibrator reads from its own thread; blocking. Not thread-safe.
class EnergyMeter {
 public:
  virtual ~EnergyMeter() = default;
  virtual absl::StatusOr<MeterReading> Read() = 0;
};

// One kind of energy source, as configured in a route's `energy:` block (docs/configuration.md).
// Immutable once read.
class EnergyMeterSpec {
 public:
  virtual ~EnergyMeterSpec() = default;
  virtual std::string_view kind() const = 0;
  virtual nlohmann::json Render() const = 0;
  virtual absl::StatusOr<std::unique_ptr<EnergyMeter>> Build() const = 0;
};

// How one kind is read from its block (the `source` key already read).
struct EnergyMeterRegistration {
  std::string_view kind;
  std::unique_ptr<EnergyMeterSpec> (*read)(ConfigBlock& block);
};
// A triton-metrics meter reading `url`, as `source: triton-metrics` configures it.
std::shared_ptr<const EnergyMeterSpec> TritonMetricsMeter(std::string url);

// Every kind but `table` (which needs no meter), in the order docs and messages list them.
std::span<const EnergyMeterRegistration> RegisteredEnergyMeters();

}  // namespace carbon::telemetry
