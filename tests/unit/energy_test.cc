// The energy meters' formats, the fit that attributes metered energy to variants, and the
// calibrator between them.
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "selector/energy_fit.h"
#include "selector/energy_overlay.h"
#include "selector/policy_spec.h"
#include "telemetry/energy_calibrator.h"
#include "telemetry/energy_meter.h"
#include "telemetry/prometheus_text.h"
#include "tests/support/paper_pool.h"

namespace carbon::telemetry {
namespace {

using ::testing::HasSubstr;

std::string Fixture(const std::string& name) {
  std::ifstream in(std::string(CARBON_SOURCE_DIR) + "/tests/fixtures/energy/" + name);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(PrometheusTextTest, ReadsSamplesLabelsEscapesAndSpecialValues) {
  auto samples = ParsePrometheusText(
      "# HELP a_total A counter.\n# TYPE a_total counter\n"
      "a_total{path=\"/x\",msg=\"say \\\"hi\\\"\\\\\\n\"} 12.5 1700000000000\n"
      "\n  b NaN\nc{} +Inf\nd{l=\"v\",} -Inf\r\ne 1e3\n");
  ASSERT_TRUE(samples.ok()) << samples.status();
  ASSERT_EQ(samples->size(), 5u);
  EXPECT_EQ((*samples)[0].name, "a_total");
  EXPECT_EQ(*(*samples)[0].Label("path"), "/x");
  EXPECT_EQ(*(*samples)[0].Label("msg"), "say \"hi\"\\\n");
  EXPECT_EQ((*samples)[0].Label("other"), nullptr);
  EXPECT_DOUBLE_EQ((*samples)[0].value, 12.5);
  EXPECT_TRUE(std::isnan((*samples)[1].value));
  EXPECT_EQ((*samples)[2].value, HUGE_VAL);
  EXPECT_EQ((*samples)[3].value, -HUGE_VAL);
  EXPECT_EQ(*(*samples)[3].Label("l"), "v");
  EXPECT_DOUBLE_EQ((*samples)[4].value, 1000);
}

TEST(PrometheusTextTest, SaysWhereTheTextIsWrong) {
  const auto error = [](std::string_view text) { return std::string(ParsePrometheusText(text).status().message()); };
  EXPECT_EQ(error("ok 1\n{x=\"1\"} 2\n"), "line 2, column 1: expected a metric name");
  EXPECT_EQ(error("m{x=1} 2"), "line 1, column 5: expected '\"' to open a label value");
  EXPECT_EQ(error("m{x=\"1\" 2"), "line 1, column 9: expected ',' or '}' after a label");
  EXPECT_EQ(error("m{x=\"1} 2"), "line 1, column 10: label value not closed");
  EXPECT_EQ(error("m{x=\"\\t\"} 2"), "line 1, column 6: unknown escape in a label value (only \\\\, \\\" and \\n)");
  EXPECT_EQ(error("m 12x"), "line 1, column 3: '12x' is not a number");
  EXPECT_EQ(error("m"), "line 1, column 2: expected a value");
  EXPECT_EQ(error("m{a=\"1\",a=\"2\"} 1"), "line 1, column 14: label 'a' given twice");
  EXPECT_EQ(error("m 1 soon"), "line 1, column 5: expected a timestamp in milliseconds or the end of the line");
  EXPECT_EQ(ParsePrometheusText("a 1\nb 2\nc 3", 2).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(error("<html><body>502 Bad Gateway</body></html>"), "line 1, column 1: expected a metric name");
}

TEST(EnergyMeterTest, TritonsMetricsPageGivesEnergyPerGpuAndInferencesPerModel) {
  auto reading = ReadTritonMetrics(Fixture("triton-metrics.txt"));
  ASSERT_TRUE(reading.ok()) << reading.status();
  ASSERT_EQ(reading->device_joules.size(), 2u);
  EXPECT_EQ(reading->device_joules[0].first, "GPU-0e9fdafb-5adb-91cd-26a8-308d34357efc");
  EXPECT_DOUBLE_EQ(reading->device_joules[0].second, 9380.053);
  EXPECT_DOUBLE_EQ(reading->device_joules[1].second, 4120.5);
  ASSERT_TRUE(reading->inferences);
  EXPECT_DOUBLE_EQ(reading->inferences->at("resnet50"), 3200);  // both versions
  EXPECT_DOUBLE_EQ(reading->inferences->at("resnet152"), 1200);
  // A CPU-only server, or one started with --allow-gpu-metrics=false, has no energy to read.
  auto no_gpu = ReadTritonMetrics("nv_inference_count{model=\"m\",version=\"1\"} 3\n");
  EXPECT_EQ(no_gpu.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_gpu.status().message(), HasSubstr("no nv_energy_consumption sample"));
  EXPECT_EQ(ReadTritonMetrics("nv_energy_consumption 3\n").status().message(),
            "an nv_energy_consumption sample has no gpu_uuid label");
  EXPECT_THAT(ReadTritonMetrics("nv_energy_consumption{gpu_uuid=\"g\"} -3\n").status().message(), HasSubstr("not a count"));
  EXPECT_THAT(ReadTritonMetrics("nv_energy_consumption{gpu_uuid=\"g\"} 3\nnv_energy_consumption{gpu_uuid=\"g\"} 4\n")
                  .status()
                  .message(),
              HasSubstr("reported twice"));
}

TEST(EnergyMeterTest, DcgmExporterAndPrometheusQueriesGiveEnergyPerDevice) {
  auto dcgm = ReadDcgmExporterMetrics(Fixture("dcgm-exporter.txt"));
  ASSERT_TRUE(dcgm.ok()) << dcgm.status();
  ASSERT_EQ(dcgm->device_joules.size(), 2u);
  EXPECT_DOUBLE_EQ(dcgm->device_joules[0].second, 9380.053);  // from millijoules
  EXPECT_FALSE(dcgm->inferences);
  auto query = ReadPrometheusQueryAnswer(Fixture("prometheus-query.json"));
  ASSERT_TRUE(query.ok()) << query.status();
  ASSERT_EQ(query->device_joules.size(), 2u);
  EXPECT_EQ(query->device_joules[0].first, "{container_namespace=inference,pod_name=triton-0}");
  EXPECT_DOUBLE_EQ(query->device_joules[1].second, 4120.5);
  EXPECT_THAT(ReadPrometheusQueryAnswer("{\"status\":\"error\",\"error\":\"parse error at char 4\"}").status().message(),
              HasSubstr("parse error at char 4"));
  EXPECT_THAT(ReadPrometheusQueryAnswer("{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[]}}")
                  .status()
                  .message(),
              HasSubstr("not an instant vector"));
  EXPECT_EQ(ReadPrometheusQueryAnswer("[1,").status().message(), "the query answer is not JSON");
  // Fields of the wrong type are a status, not an exception (found by tests/fuzz/energy_meter_fuzz).
  EXPECT_THAT(ReadPrometheusQueryAnswer("{\"status\":{\"resultType\":\"vector\"}}").status().message(),
              HasSubstr("did not succeed"));
  EXPECT_THAT(ReadPrometheusQueryAnswer("{\"status\":\"success\",\"data\":{\"resultType\":7,\"result\":[]}}")
                  .status()
                  .message(),
              HasSubstr("not an instant vector"));
}

TEST(EnergyMeterTest, DifferencesRefuseResetsAndChangedDevices) {
  const MeterReading before{{{"a", 100}, {"b", 50}}, absl::flat_hash_map<std::string, double>{{"m", 10}}};
  const MeterReading after{{{"a", 130}, {"b", 60}}, absl::flat_hash_map<std::string, double>{{"m", 25}, {"n", 4}}};
  auto delta = Difference(before, after);
  ASSERT_TRUE(delta.ok()) << delta.status();
  EXPECT_DOUBLE_EQ(delta->joules, 40);
  EXPECT_DOUBLE_EQ(delta->inferences->at("m"), 15);
  EXPECT_DOUBLE_EQ(delta->inferences->at("n"), 4);  // a model new since: counted from zero
  const std::string only_a[] = {"a"};
  EXPECT_DOUBLE_EQ(Difference(before, after, only_a)->joules, 30);

  const MeterReading restarted{{{"a", 3}, {"b", 1}}, absl::flat_hash_map<std::string, double>{{"m", 1}}};
  EXPECT_THAT(Difference(before, restarted).status().message(), HasSubstr("went down from 100 to 3 J"));
  const MeterReading counts_reset{{{"a", 130}, {"b", 60}}, absl::flat_hash_map<std::string, double>{{"m", 2}}};
  EXPECT_THAT(Difference(before, counts_reset).status().message(), HasSubstr("inference count of 'm' went down"));
  const MeterReading lost_b{{{"a", 130}}, std::nullopt};
  EXPECT_EQ(Difference(before, lost_b).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Difference(lost_b, after).status().code(), absl::StatusCode::kFailedPrecondition);  // b is new
  const std::string only_c[] = {"c"};
  EXPECT_THAT(Difference(before, after, only_c).status().message(), HasSubstr("device 'c' is no longer reported"));
}

// Intervals of a server with `idle` watts and per-inference `joules`, random mixes, with relative
// `noise` on each interval's energy.
std::vector<selector::EnergyInterval> Simulated(const std::vector<double>& joules, double idle, double noise, int n,
                                                uint64_t seed) {
  std::mt19937_64 random(seed);
  std::uniform_real_distribution<double> count(0, 200), jitter(-noise, noise), seconds(9, 11);
  std::vector<selector::EnergyInterval> out;
  for (int k = 0; k < n; ++k) {
    selector::EnergyInterval in;
    in.seconds = seconds(random);
    in.joules = idle * in.seconds;
    for (double e : joules) {
      in.inferences.push_back(std::round(count(random)));
      in.joules += e * in.inferences.back();
    }
    in.joules *= 1 + jitter(random);
    out.push_back(std::move(in));
  }
  return out;
}

TEST(EnergyFitTest, RecoversIdlePowerAndEnergyPerInference) {
  const std::vector<double> truth = {0.36, 0.42, 0.80, 1.12};
  auto exact = selector::FitEnergy(Simulated(truth, 50, 0, 30, 1), 4);
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_NEAR(exact->idle_watts, 50, 1e-6);
  for (size_t v = 0; v < 4; ++v) EXPECT_NEAR(exact->joules_per_inference[v], truth[v], 1e-8) << v;
  EXPECT_NEAR(exact->residual_rms_joules, 0, 1e-6);
  EXPECT_NEAR(exact->explained, 1, 1e-9);

  auto noisy = selector::FitEnergy(Simulated(truth, 50, 0.01, 120, 2), 4);
  ASSERT_TRUE(noisy.ok());
  for (size_t v = 0; v < 4; ++v) {
    EXPECT_NEAR(noisy->joules_per_inference[v], truth[v], 0.05 * truth[v]) << v;
    // The standard error is of the size of the actual error, not infinitely small or large.
    EXPECT_GT(noisy->stderr_joules[v], 0);
    EXPECT_LT(noisy->stderr_joules[v], 0.05 * truth[v]);
    EXPECT_LT(std::abs(noisy->joules_per_inference[v] - truth[v]), 4 * noisy->stderr_joules[v]) << v;
  }
  EXPECT_GT(noisy->residual_rms_joules, 0);
}

TEST(EnergyFitTest, KeepsEstimatesNonNegativeAndSaysWhatItCannotTell) {
  // Variant 1 costs nothing and its counts are noise-correlated: an unconstrained fit could go
  // negative; this one holds it at zero, with no error to tell.
  std::vector<selector::EnergyInterval> intervals = Simulated({0.5, 0.0}, 20, 0.05, 40, 3);
  auto fit = selector::FitEnergy(intervals, 2);
  ASSERT_TRUE(fit.ok());
  EXPECT_GE(fit->joules_per_inference[1], 0);
  EXPECT_NEAR(fit->joules_per_inference[0], 0.5, 0.05);
  // A variant never run: out of the fit, estimate 0 and error infinite.
  for (auto& in : intervals) in.inferences.push_back(0);
  fit = selector::FitEnergy(intervals, 3);
  ASSERT_TRUE(fit.ok());
  EXPECT_EQ(fit->joules_per_inference[2], 0);
  EXPECT_EQ(fit->stderr_joules[2], HUGE_VAL);
  // Fewer intervals than unknowns: estimates, but no error to tell.
  auto few = selector::FitEnergy(std::span(intervals).first(2), 3);
  ASSERT_TRUE(few.ok());
  EXPECT_EQ(few->stderr_joules[0], HUGE_VAL);

  EXPECT_EQ(selector::FitEnergy({}, 2).status().code(), absl::StatusCode::kFailedPrecondition);
  intervals[3].joules = -1;
  EXPECT_THAT(selector::FitEnergy(intervals, 3).status().message(), HasSubstr("interval 3 has a negative"));
  EXPECT_THAT(selector::FitEnergy(intervals, 2).status().message(), HasSubstr("counts 3 variants, not 2"));
}

// A meter that answers what the test scripts.
class ScriptedMeter final : public EnergyMeter {
 public:
  explicit ScriptedMeter(std::vector<absl::StatusOr<MeterReading>>* script) : script_(script) {}
  absl::StatusOr<MeterReading> Read() override {
    auto next = script_->front();
    script_->erase(script_->begin());
    return next;
  }

 private:
  std::vector<absl::StatusOr<MeterReading>>* script_;
};

TEST(EnergyCalibratorTest, LearnsFromIntervalsKeepsTheLastGoodReportOnGarbageAndStartsAgainAfterAReset) {
  const std::shared_ptr<const selector::Pool> pool = testing::PaperResnetPool();
  const std::vector<double> truth = {0.30, 0.45, 0.90, 1.30};
  // The server's cumulative counters, advanced interval by interval.
  double joules = 1000;
  absl::flat_hash_map<std::string, double> counts;
  std::mt19937_64 random(7);
  std::uniform_int_distribution<int> n(0, 80);
  std::vector<absl::StatusOr<MeterReading>> script;
  const auto advance = [&] {
    joules += 40 * 10;  // idle: 40 W over a 10 s interval
    for (size_t v = 0; v < pool->size(); ++v) {
      const int k = n(random);
      counts[(*pool)[v].name] += k;
      joules += truth[v] * k;
    }
    script.push_back(MeterReading{{{"GPU-1", joules}}, counts});
  };
  for (int k = 0; k < 12; ++k) advance();
  EnergyCalibration config;
  config.meter = nullptr;  // the meter is given directly below
  config.min_inferences = 10;
  config.max_relative_error = 0.05;
  EnergyCalibrator calibrator(config, pool, nullptr, std::make_unique<ScriptedMeter>(&script));
  EXPECT_EQ(calibrator.Report()->variants[0].table_because, "no reading of the meter yet");
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  for (int k = 0; k < 12; ++k, now += absl::Seconds(10)) calibrator.ReadOnce(now);
  std::shared_ptr<const CalibrationReport> report = calibrator.Report();
  EXPECT_EQ(report->intervals, 11);
  ASSERT_TRUE(report->idle_watts);
  EXPECT_NEAR(*report->idle_watts, 40, 1e-6);
  for (size_t v = 0; v < pool->size(); ++v) {
    EXPECT_TRUE(report->variants[v].measured) << report->variants[v].table_because;
    EXPECT_NEAR(*report->variants[v].measured_joules, truth[v], 1e-6);
    EXPECT_DOUBLE_EQ(report->variants[v].table_joules, (*pool)[v].energy_mj / 1000);
  }

  // Garbage: the read fails, the report stands.
  script.push_back(absl::InvalidArgumentError("line 1, column 1: expected a metric name"));
  calibrator.ReadOnce(now);
  now += absl::Seconds(10);
  report = calibrator.Report();
  EXPECT_EQ(report->read_failures, 1u);
  EXPECT_EQ(report->last_read.message(), "line 1, column 1: expected a metric name");
  EXPECT_TRUE(report->variants[3].measured);
  EXPECT_EQ(report->intervals, 11);

  // The server restarts: the pair across it is not used; counting goes on from the new reading.
  joules = 5;
  counts.clear();
  script.push_back(MeterReading{{{"GPU-1", joules}}, counts});
  calibrator.ReadOnce(now);
  now += absl::Seconds(10);
  report = calibrator.Report();
  EXPECT_EQ(report->resets, 1u);
  EXPECT_THAT(report->last_read.message(), HasSubstr("went down"));
  EXPECT_EQ(report->intervals, 11);
  advance();
  calibrator.ReadOnce(now);
  report = calibrator.Report();
  EXPECT_TRUE(report->last_read.ok());
  EXPECT_EQ(report->intervals, 12);
  EXPECT_NEAR(*report->variants[2].measured_joules, truth[2], 1e-6);
}

TEST(EnergyCalibratorTest, TooFewOrTooUncertainIntervalsLeaveTheTableInPlaceAndSaySo) {
  const std::shared_ptr<const selector::Pool> pool = testing::PaperResnetPool();
  std::vector<absl::StatusOr<MeterReading>> script;
  absl::flat_hash_map<std::string, double> counts;
  double joules = 0;
  std::mt19937_64 random(9);
  std::uniform_real_distribution<double> noise(-200, 200);
  for (int k = 0; k < 12; ++k) {
    joules += 400 + noise(random) + 2 * (k % 3);
    counts["resnet34"] += 5 + k % 3;  // resnet34 alone, and little of it; the others never run
    script.push_back(MeterReading{{{"GPU-1", joules}}, counts});
  }
  EnergyCalibration config;
  config.min_inferences = 5.5;
  EnergyCalibrator calibrator(config, pool, nullptr, std::make_unique<ScriptedMeter>(&script));
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  for (int k = 0; k < 4; ++k, now += absl::Seconds(10)) calibrator.ReadOnce(now);
  std::shared_ptr<const CalibrationReport> report = calibrator.Report();
  EXPECT_EQ(report->quiet_intervals, 1u);  // 5 inferences: under the minimum
  EXPECT_THAT(report->variants[0].table_because, HasSubstr("2 intervals of the 7 needed"));
  for (int k = 4; k < 12; ++k, now += absl::Seconds(10)) calibrator.ReadOnce(now);
  report = calibrator.Report();
  EXPECT_FALSE(report->variants[0].measured);
  EXPECT_THAT(report->variants[0].table_because, HasSubstr("over the 10.0 % allowed"));
  EXPECT_EQ(report->variants[3].table_because, "no inferences of this variant in the intervals kept");
  EXPECT_FALSE(report->variants[3].measured_joules);
}

// Measured energies that reorder the pool: resnet101 measured at 0.40 J, below resnet50's table
// 0.42 J. The heuristic decides on the measured order and the route sees its own indices.
TEST(EnergyOverlayTest, DecidesOnMeasuredEnergiesInTheRoutesOwnOrder) {
  const std::shared_ptr<const selector::Pool> pool = testing::PaperResnetPool();  // 34, 50, 101, 152
  const std::vector<double> energies = {359.9321833, 420.6213298, 400.0, 1238.147188};
  const selector::PolicySettings settings{1, absl::Hours(2), absl::ZeroDuration()};
  auto overlay = selector::EnergyOverlay::Create(*pool, energies, *selector::DefaultPolicySpec(), settings);
  ASSERT_TRUE(overlay.ok()) << overlay.status();
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  const selector::WindowBounds bounds{100, 300};
  const auto decide = [&](double intensity, uint64_t ready, const selector::Decision* previous) {
    return overlay->Decide({selector::IntensityReading{intensity, now}, bounds, now, ready, previous, std::nullopt, {}});
  };
  // At 200 g/kWh, halfway through the 100-300 window, the heuristic aims at 799 mJ: resnet101 on the
  // table (803 mJ); resnet50 once resnet101 is measured at 400 mJ (421 is then the nearest).
  const selector::Decision at_200 = decide(200, pool->all_variants_mask(), nullptr);
  EXPECT_EQ((*pool)[at_200.primary].name, "resnet50");
  ASSERT_EQ(at_200.weights.size(), 1u);
  EXPECT_EQ(at_200.weights[0].variant, at_200.primary);
  // Readiness in the route's order: resnet50 (route index 1) not ready.
  const selector::Decision unready = decide(200, 0b1101, &at_200);
  EXPECT_NE((*pool)[unready.primary].name, "resnet50");
  EXPECT_TRUE((0b1101 >> unready.primary) & 1);
  // The route's default, in its own order, when the reading is missing.
  const selector::Decision none = overlay->Decide({std::nullopt, bounds, now, pool->all_variants_mask(), nullptr, std::nullopt, {}});
  EXPECT_EQ(none.primary, 1u);
  EXPECT_EQ(overlay->energies_mj()[2], 400.0);
  EXPECT_FALSE(selector::EnergyOverlay::Create(*pool, {1, 2}, *selector::DefaultPolicySpec(), settings).ok());
}

}  // namespace
}  // namespace carbon::telemetry
