#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "selector/energy_fit.h"
#include "selector/pool.h"
#include "selector/snapshot_cell.h"
#include "telemetry/energy_meter.h"

namespace carbon::telemetry {

// How a route's energy per inference is learned (routes[].energy; docs/configuration.md).
struct EnergyCalibration {
  std::shared_ptr<const EnergyMeterSpec> meter;  // null: the pool's table, nothing measured
  absl::Duration interval = absl::Seconds(15);   // between reads of the meter
  absl::Duration half_life = absl::Minutes(30);  // an interval this old counts half in the fit
  int64_t max_intervals = 240;                   // the oldest are dropped beyond this
  double min_inferences = 20;                    // an interval with fewer (all variants) is not used
  double max_relative_error = 0.1;               // a looser estimate is not used: the table is
  std::vector<std::string> devices;              // the meter's devices serving the route (empty: all)
};

// One variant's energy per inference: the table's, and what the meter says of it.
struct VariantEnergy {
  double table_joules = 0;
  std::optional<double> measured_joules;  // the fit's estimate, once there is one
  double stderr_joules = 0;               // its standard error (infinite: cannot be told)
  bool measured = false;                  // the estimate is good enough to use
  std::string table_because;              // when not measured: why the table stands
};

// What the calibrator knows now. Immutable.
struct CalibrationReport {
  std::string source;  // the meter's kind
  std::vector<VariantEnergy> variants;  // indexed like the pool
  std::optional<double> idle_watts;
  double residual_rms_joules = 0;
  double explained = 0;
  int64_t intervals = 0;     // in the fit
  absl::Status last_read;    // of the meter, or of the last pair of readings compared
  std::optional<absl::Time> last_success;
  uint64_t reads = 0, read_failures = 0, resets = 0, quiet_intervals = 0;
};

// Reads a meter at an interval on its own thread and attributes the energy to the route's variants
// (selector::FitEnergy over the intervals kept, the older weighted less). Inferences per variant
// come from the meter when it counts them per model (Triton), else — and for a variant the meter
// does not report — from the sidecar's own ledger (`ledger_counts`: cumulative inferences per
// variant). Nothing here is on the request path: a slow or failing meter delays no request, and
// a failed read keeps the last good report. Thread-safe.
class EnergyCalibrator {
 public:
  EnergyCalibrator(EnergyCalibration config, std::shared_ptr<const selector::Pool> pool,
                   std::function<std::vector<double>()> ledger_counts, std::unique_ptr<EnergyMeter> meter);
  ~EnergyCalibrator();

  void Start();
  void Stop();
  // One read of the meter and a new report; what the thread does each interval. The reading is
  // taken to be of `now`, or without one, of the middle of the read (the server renders it some
  // time between the request and the answer, and a busy server answers later).
  void ReadOnce(std::optional<absl::Time> now = std::nullopt);
  std::shared_ptr<const CalibrationReport> Report() const { return report_.Load(); }
  const EnergyCalibration& config() const { return config_; }

 private:
  void Refit(absl::Time now, CalibrationReport& report) const;

  const EnergyCalibration config_;
  const std::shared_ptr<const selector::Pool> pool_;
  const std::function<std::vector<double>()> ledger_counts_;
  const std::string source_;
  // Owned by whoever calls ReadOnce (the thread, or a test before Start).
  std::unique_ptr<EnergyMeter> meter_;
  struct Baseline {
    MeterReading reading;
    std::vector<double> ledger;
    absl::Time at;
  };
  std::optional<Baseline> baseline_;
  struct TimedInterval {
    selector::EnergyInterval interval;
    absl::Time end;
  };
  std::deque<TimedInterval> intervals_;
  CalibrationReport counters_;  // reads, failures, last_read, …, carried from report to report
  selector::SnapshotCell<CalibrationReport> report_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace carbon::telemetry
