#include "telemetry/energy_calibrator.h"

#include <cmath>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/string_view_compat.h"

namespace carbon::telemetry {
namespace {

std::shared_ptr<const CalibrationReport> TableReport(const selector::Pool& pool, std::string_view source) {
  auto report = std::make_shared<CalibrationReport>();
  report->source = std::string(source);
  for (const selector::Variant& v : pool.variants()) {
    report->variants.push_back({v.energy_mj / 1000, std::nullopt, HUGE_VAL, false, "no reading of the meter yet"});
  }
  return report;
}

}  // namespace

EnergyCalibrator::EnergyCalibrator(EnergyCalibration config, std::shared_ptr<const selector::Pool> pool,
                                   std::function<std::vector<double>()> ledger_counts,
                                   std::unique_ptr<EnergyMeter> meter)
    : config_(std::move(config)),
      pool_(std::move(pool)),
      ledger_counts_(std::move(ledger_counts)),
      source_(config_.meter ? std::string(config_.meter->kind()) : "table"),
      meter_(std::move(meter)),
      report_(TableReport(*pool_, source_)) {
  counters_.source = source_;
}

EnergyCalibrator::~EnergyCalibrator() { Stop(); }

void EnergyCalibrator::Start() {
  if (thread_.joinable() || meter_ == nullptr) return;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = false;
  }
  thread_ = std::thread([this] {
    while (true) {
      ReadOnce();
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), config_.interval)) return;
    }
  });
}

void EnergyCalibrator::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void EnergyCalibrator::ReadOnce(std::optional<absl::Time> at) {
  if (meter_ == nullptr) return;
  ++counters_.reads;
  const absl::Time asked = absl::Now();
  absl::StatusOr<MeterReading> reading = meter_->Read();
  const absl::Time now = at.value_or(asked + (absl::Now() - asked) / 2);
  // The ledger is read right after the meter, so both describe the same moment.
  const std::vector<double> ledger = ledger_counts_ ? ledger_counts_() : std::vector<double>(pool_->size(), 0.0);
  if (!reading.ok()) {
    ++counters_.read_failures;
    if (reading.status() != counters_.last_read) {
      spdlog::warn("event=energy_meter_failed source={} error=\"{}\"", source_, ToStd(reading.status().message()));
    }
    counters_.last_read = reading.status();
  } else {
    absl::Status compared = absl::OkStatus();
    if (baseline_) {
      absl::StatusOr<MeterDelta> delta = Difference(baseline_->reading, *reading, config_.devices);
      if (!delta.ok()) {
        // A reset or a changed set of devices: this pair says nothing; start again from here.
        ++counters_.resets;
        compared = delta.status();
        spdlog::warn("event=energy_meter_reset source={} error=\"{}\"", source_, ToStd(delta.status().message()));
      } else {
        selector::EnergyInterval interval;
        interval.seconds = absl::ToDoubleSeconds(now - baseline_->at);
        interval.joules = delta->joules;
        double total = 0;
        for (size_t v = 0; v < pool_->size(); ++v) {
          double n = std::max(0.0, ledger[v] - baseline_->ledger[v]);
          if (delta->inferences) {
            const auto it = delta->inferences->find((*pool_)[v].name);
            if (it != delta->inferences->end()) n = it->second;
          }
          interval.inferences.push_back(n);
          total += n;
        }
        if (interval.seconds <= 0) {
          // Two reads at the same instant: nothing to learn.
        } else if (total < config_.min_inferences) {
          ++counters_.quiet_intervals;
        } else {
          intervals_.push_back({std::move(interval), now});
          while (static_cast<int64_t>(intervals_.size()) > config_.max_intervals) intervals_.pop_front();
        }
      }
    } else if (config_.devices.size() > 0) {
      // The first reading: check the configured devices are there.
      absl::StatusOr<MeterDelta> self = Difference(*reading, *reading, config_.devices);
      if (!self.ok()) compared = self.status();
    }
    // A configured device missing: keep the last reading, to compare with once it is back. Any other
    // change (a reset, devices come or gone): start again from this reading.
    if (compared.ok() || compared.code() != absl::StatusCode::kNotFound || config_.devices.empty()) {
      baseline_ = Baseline{*reading, ledger, now};
    }
    if (compared.ok()) counters_.last_success = now;
    counters_.last_read = compared;
  }
  auto report = std::make_shared<CalibrationReport>(counters_);
  Refit(now, *report);
  report_.Publish(std::move(report));
}

void EnergyCalibrator::Refit(absl::Time now, CalibrationReport& report) const {
  const selector::Pool& pool = *pool_;
  report.variants.clear();
  for (const selector::Variant& v : pool.variants()) {
    report.variants.push_back({v.energy_mj / 1000, std::nullopt, HUGE_VAL, false, ""});
  }
  std::vector<selector::EnergyInterval> weighted;
  for (const TimedInterval& t : intervals_) {
    selector::EnergyInterval in = t.interval;
    in.weight = std::exp2(-absl::FDivDuration(now - t.end, config_.half_life));
    weighted.push_back(std::move(in));
  }
  report.intervals = static_cast<int64_t>(weighted.size());
  // At least two intervals more than unknowns, so the residual says something about the fit.
  const size_t needed = pool.size() + 3;
  absl::StatusOr<selector::EnergyEstimate> fit =
      weighted.empty() ? absl::FailedPreconditionError("no interval") : selector::FitEnergy(weighted, pool.size());
  if (!fit.ok()) {
    for (VariantEnergy& v : report.variants) {
      v.table_because = absl::StrCat("no interval with at least ", config_.min_inferences, " inferences yet");
    }
    return;
  }
  report.idle_watts = fit->idle_watts;
  report.residual_rms_joules = fit->residual_rms_joules;
  report.explained = fit->explained;
  for (size_t v = 0; v < pool.size(); ++v) {
    VariantEnergy& e = report.variants[v];
    double seen = 0;
    for (const selector::EnergyInterval& in : weighted) seen += in.inferences[v];
    if (seen == 0) {
      e.table_because = "no inferences of this variant in the intervals kept";
      continue;
    }
    e.measured_joules = fit->joules_per_inference[v];
    e.stderr_joules = fit->stderr_joules[v];
    if (weighted.size() < needed) {
      e.table_because = absl::StrCat(weighted.size(), " intervals of the ", needed, " needed");
    } else if (!(fit->joules_per_inference[v] > 0) || !std::isfinite(fit->stderr_joules[v])) {
      e.table_because = "the fit cannot tell this variant's energy apart (too little of it, or too even a mix)";
    } else if (fit->stderr_joules[v] > config_.max_relative_error * fit->joules_per_inference[v]) {
      e.table_because = absl::StrFormat("the estimate is uncertain by %.1f %%, over the %.1f %% allowed",
                                        100 * fit->stderr_joules[v] / fit->joules_per_inference[v],
                                        100 * config_.max_relative_error);
    } else {
      e.measured = true;
    }
  }
}

}  // namespace carbon::telemetry
