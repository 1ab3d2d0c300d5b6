// Offline replay of the heuristic on recorded traces (docs/EVALUATION.md):
//   build/bench/replay --out_dir bench/results/replay
// runs every fixed variant and the heuristic with each window mode over the bundled June 2023 South
// West England intensity and the June 1998 World Cup request trace, and writes table.md, table.csv,
// choices.dat and, when gnuplot is installed, intensity.svg and efficiency.svg.
#include <cstdio>
#include <tuple>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/flags/flag.h"
#include "common/command_line.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "bench/replay.h"
#include "sidecar/config.h"
#include "telemetry/trace_provider.h"

ABSL_FLAG(std::string, intensity, "data/carbon/sw_england_2023_06", "Intensity CSV file or directory of CSVs.");
ABSL_FLAG(std::string, time_column, "from", "Time column of the intensity CSV.");
ABSL_FLAG(std::string, value_column, "regions.intensity.forecast", "gCO2/kWh column of the intensity CSV.");
ABSL_FLAG(std::string, from, "2023-06-01T00:00:00Z", "First period replayed (RFC 3339; empty: the trace's start).");
ABSL_FLAG(std::string, to, "2023-07-01T00:00:00Z", "End of the replay, exclusive (RFC 3339; empty: the trace's end).");
ABSL_FLAG(std::string, requests, "data/requests/worldcup98_june_requests_per_minute.csv",
          "Request counts per interval: CSV of time and count.");
ABSL_FLAG(std::string, requests_time_column, "period", "Time column of the request CSV.");
ABSL_FLAG(std::string, requests_value_column, "count", "Count column of the request CSV.");
ABSL_FLAG(std::string, requests_start, "2023-06-01T00:00:00Z",
          "The time the request trace's first row is laid onto (RFC 3339).");
ABSL_FLAG(double, scale_item_intensity, 0,
          "If positive, scale request counts so that the sum of requests x intensity equals this "
          "(gCO2/kWh x requests), e.g. to match the paper's traffic volume.");
ABSL_FLAG(std::string, pool, "config/pools/resnet-v100.yaml", "Pool YAML.");
ABSL_FLAG(std::string, baseline, "resnet50", "Baseline variant.");
ABSL_FLAG(std::string, default_variant, "resnet50", "Variant used while the window is flat.");
ABSL_FLAG(std::vector<std::string>, window, std::vector<std::string>({"whole-trace", "trailing:24h",
                                                                        "trailing:24h+forecast"}),
          "Window modes for the heuristic: whole-trace, trailing:<duration>[+forecast].");
ABSL_FLAG(std::vector<std::string>, frontier_targets,
          std::vector<std::string>({"6.1", "6.3", "6.5", "6.7", "6.9", "7.1"}),
          "Mean-error targets (%) the accuracy-target policy and the hindsight optimum are swept over.");
ABSL_FLAG(std::string, out_dir, "bench/results/replay", "Where the tables and plots go.");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "replay: %s\n", message.c_str());
  return 1;
}

std::optional<absl::Time> FlagTime(const std::string& text) {
  if (text.empty()) return std::nullopt;
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, text, &t, &err)) return std::nullopt;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  carbon::StartBinary(
      "replays carbon-sidecar's policies over recorded traces (docs/EVALUATION.md).\n"
      "Usage: replay [--out_dir DIR] [flags below]",
      __FILE__, argc, argv);
  using carbon::bench::PolicyResult;

  auto intensity = carbon::telemetry::LoadIntensityTrace(
      absl::GetFlag(FLAGS_intensity), {absl::GetFlag(FLAGS_time_column), absl::GetFlag(FLAGS_value_column)});
  if (!intensity.ok()) return Fail(std::string(intensity.status().message()));
  const auto from = FlagTime(absl::GetFlag(FLAGS_from));
  const auto to = FlagTime(absl::GetFlag(FLAGS_to));
  std::erase_if(*intensity, [&](const auto& r) { return (from && r.at < *from) || (to && r.at >= *to); });
  if (intensity->empty()) return Fail("no intensity readings in the chosen range");

  // The request trace is a (time, count) series: the same CSV reader serves.
  auto requests = carbon::telemetry::LoadIntensityTrace(
      absl::GetFlag(FLAGS_requests),
      {absl::GetFlag(FLAGS_requests_time_column), absl::GetFlag(FLAGS_requests_value_column)});
  if (!requests.ok()) return Fail(std::string(requests.status().message()));
  const auto requests_start = FlagTime(absl::GetFlag(FLAGS_requests_start));
  if (!requests_start) return Fail("--requests_start is not an RFC 3339 time");
  const absl::Duration offset = *requests_start - requests->front().at;

  auto periods = carbon::bench::JoinTraces(*intensity, *requests, offset);
  if (absl::GetFlag(FLAGS_scale_item_intensity) > 0) {
    carbon::bench::ScaleRequests(&periods, absl::GetFlag(FLAGS_scale_item_intensity));
  }
  auto pool = carbon::sidecar::LoadPoolFile(absl::GetFlag(FLAGS_pool));
  if (!pool.ok()) return Fail(std::string(pool.status().message()));
  const auto baseline = pool->IndexOf(absl::GetFlag(FLAGS_baseline));
  const auto default_variant = pool->IndexOf(absl::GetFlag(FLAGS_default_variant));
  if (!baseline || !default_variant) return Fail("--baseline and --default_variant must name variants of the pool");

  std::vector<PolicyResult> results;
  for (size_t v = 0; v < pool->size(); ++v) results.push_back(carbon::bench::ReplayFixed(periods, *pool, *baseline, v));
  for (const std::string& text : absl::GetFlag(FLAGS_window)) {
    auto mode = carbon::bench::ParseWindowMode(text);
    if (!mode.ok()) return Fail(std::string(mode.status().message()));
    results.push_back(carbon::bench::ReplayHeuristic(periods, *pool, *baseline, *default_variant, *mode));
  }

  // The aimed policies, at the heuristic's own month (whole-trace window): its mean error as the
  // accuracy target, its grams as the carbon budget.
  const PolicyResult* heuristic = nullptr;
  for (const auto& r : results) {
    if (r.policy == "heuristic (whole-trace)") heuristic = &r;
  }
  if (heuristic == nullptr) return Fail("--window must include whole-trace: the targets are set from it");
  const double target_error = heuristic->report.mean_error_percent;
  const double budget_grams = heuristic->report.grams;
  const absl::Time first_day = absl::FromUnixSeconds(absl::ToUnixSeconds(periods.front().at) / 86400 * 86400);
  const int64_t days = (absl::ToUnixSeconds(periods.back().at) - absl::ToUnixSeconds(first_day)) / 86400 + 1;
  const carbon::selector::Horizon whole{absl::Hours(24 * days), first_day};
  const carbon::selector::Horizon daily{absl::Hours(24), absl::UnixEpoch()};
  using Kind = carbon::selector::PlanLimit::Kind;
  const auto aimed = [&](Kind kind, double value, const carbon::selector::Horizon& horizon, bool forecast,
                         const std::string& what) {
    const auto spec = carbon::selector::MakeHorizonTargetSpec({kind, value}, horizon);
    const auto policy = spec->Build(*pool, {*default_variant, absl::InfiniteDuration(), absl::ZeroDuration()});
    carbon::bench::WindowMode mode;
    mode.kind = carbon::bench::WindowMode::Kind::kTrailing;
    mode.forecast = forecast;
    return carbon::bench::ReplayPolicy(periods, *pool, *baseline, *policy,
                                       absl::StrCat(what, forecast ? ", perfect 24h forecast" : "", ")"), mode);
  };
  const std::string month = absl::StrCat(days, "-day horizon");
  const std::string error_text = absl::StrFormat("%.3f %%", target_error);
  const std::string grams_text = absl::StrFormat("%.0f g", budget_grams);
  results.push_back(aimed(Kind::kMeanErrorPercent, target_error, whole, false,
                          absl::StrCat("accuracy-target ", error_text, " (", month)));
  results.push_back(aimed(Kind::kMeanErrorPercent, target_error, whole, true,
                          absl::StrCat("accuracy-target ", error_text, " (", month)));
  results.push_back(carbon::bench::ReplayHindsight(periods, *pool, *baseline, {Kind::kMeanErrorPercent, target_error},
                                                   whole, absl::StrCat("hindsight optimum ", error_text, " (", month, ")")));
  results.push_back(aimed(Kind::kMeanErrorPercent, target_error, daily, false,
                          absl::StrCat("accuracy-target ", error_text, " (daily")));
  results.push_back(aimed(Kind::kMeanErrorPercent, target_error, daily, true,
                          absl::StrCat("accuracy-target ", error_text, " (daily")));
  results.push_back(carbon::bench::ReplayHindsight(periods, *pool, *baseline, {Kind::kMeanErrorPercent, target_error},
                                                   daily, absl::StrCat("hindsight optimum ", error_text, " (daily)")));
  results.push_back(aimed(Kind::kGrams, budget_grams, whole, false, absl::StrCat("carbon-budget ", grams_text, " (", month)));
  {
    // The same with expected_inferences_per_horizon set to the month's total (its volume, not its
    // shape): what an operator who knows the month's traffic can give the policy.
    double total = 0;
    for (const auto& p : periods) total += static_cast<double>(p.requests);
    carbon::selector::Horizon hinted = whole;
    hinted.expected_inferences = total;
    results.push_back(aimed(Kind::kGrams, budget_grams, hinted, false, absl::StrCat("carbon-budget ", grams_text, " (", month, ", the month's volume given")));
  }
  results.push_back(carbon::bench::ReplayHindsight(periods, *pool, *baseline, {Kind::kGrams, budget_grams}, whole,
                                                   absl::StrCat("hindsight optimum ", grams_text, " (", month, ")")));
  const double daily_budget = budget_grams / static_cast<double>(days);
  results.push_back(aimed(Kind::kGrams, daily_budget, daily, false,
                          absl::StrFormat("carbon-budget %.0f g a day (daily", daily_budget)));

  const std::filesystem::path out = absl::GetFlag(FLAGS_out_dir);
  std::filesystem::create_directories(out);
  // The mean-error vs extra-grams plane: fixed variants and heuristics as points, the online
  // accuracy-target and the hindsight optimum swept over targets (whole-trace horizon).
  {
    std::ofstream points(out / "frontier_points.dat");
    for (size_t v = 0; v < pool->size(); ++v) {
      points << "\"" << results[v].policy << "\" " << results[v].report.extra_grams << " "
             << results[v].report.mean_error_percent << "\n";
    }
    std::ofstream heuristics(out / "frontier_heuristics.dat");
    for (const auto& r : results) {
      if (r.policy.rfind("heuristic", 0) == 0) {
        heuristics << "\"" << r.policy << "\" " << r.report.extra_grams << " " << r.report.mean_error_percent << "\n";
      }
    }
    std::ofstream frontier(out / "frontier.dat");
    frontier << "# target_percent online_extra_g online_mean_error hindsight_extra_g hindsight_mean_error\n";
    for (const std::string& text : absl::GetFlag(FLAGS_frontier_targets)) {
      double target = 0;
      if (!absl::SimpleAtod(text, &target)) return Fail(absl::StrCat("--frontier_targets: '", text, "' is not a number"));
      const PolicyResult online = aimed(Kind::kMeanErrorPercent, target, whole, false, "sweep");
      const PolicyResult best = carbon::bench::ReplayHindsight(periods, *pool, *baseline,
                                                               {Kind::kMeanErrorPercent, target}, whole, "sweep");
      frontier << target << " " << online.report.extra_grams << " " << online.report.mean_error_percent << " "
               << best.report.extra_grams << " " << best.report.mean_error_percent << "\n";
    }
  }
  // Each day of the daily horizons: the target or budget, what was reached, and why a miss missed.
  {
    const auto hindsight_error = carbon::bench::ReplayHindsight(periods, *pool, *baseline,
                                                                {Kind::kMeanErrorPercent, target_error}, daily, "");
    const auto hindsight_budget = carbon::bench::ReplayHindsight(periods, *pool, *baseline,
                                                                 {Kind::kGrams, daily_budget}, daily, "");
    const PolicyResult* error_daily = nullptr;
    const PolicyResult* budget_daily = nullptr;
    for (const auto& r : results) {
      if (r.policy.rfind("accuracy-target", 0) == 0 && absl::EndsWith(r.policy, "(daily)")) error_daily = &r;
      if (r.policy.rfind("carbon-budget", 0) == 0 && absl::EndsWith(r.policy, "(daily)")) budget_daily = &r;
    }
    const auto e = carbon::bench::ByHorizon(periods, *error_daily, daily);
    const auto eh = carbon::bench::ByHorizon(periods, hindsight_error, daily);
    const auto b = carbon::bench::ByHorizon(periods, *budget_daily, daily);
    const auto bh = carbon::bench::ByHorizon(periods, hindsight_budget, daily);
    std::string table = absl::StrFormat(
        "| day (UTC) | requests | accuracy-target %.3f %%: mean error %% | hindsight | carbon-budget %.0f g: grams | "
        "mean error %% | hindsight grams | why a miss missed |\n|---|---|---|---|---|---|---|---|\n",
        target_error, daily_budget);
    int error_misses = 0, budget_misses = 0;
    for (size_t d = 0; d < e.size(); ++d) {
      const bool error_miss = e[d].mean_error_percent() > target_error + 0.01;
      const bool budget_miss = b[d].grams > daily_budget * 1.0001;
      error_misses += error_miss;
      budget_misses += budget_miss;
      std::string why;
      if (error_miss) why = eh[d].mean_error_percent() > target_error + 0.01 ? "target out of reach that day" : "outlook";
      if (budget_miss) {
        absl::StrAppend(&why, why.empty() ? "" : "; ",
                        bh[d].grams > daily_budget * 1.0001
                            ? "budget below the day's floor (the cheapest variant all day overspends)"
                            : "outlook: more traffic, or dirtier, than the days before");
      }
      absl::StrAppend(&table, absl::StrFormat("| %s | %.0f | %.3f%s | %.3f | %.1f%s | %.3f | %.1f | %s |\n",
                                              absl::FormatTime("%Y-%m-%d", e[d].start, absl::UTCTimeZone()), e[d].items,
                                              e[d].mean_error_percent(), error_miss ? " **miss**" : "",
                                              eh[d].mean_error_percent(), b[d].grams, budget_miss ? " **miss**" : "",
                                              b[d].mean_error_percent(), bh[d].grams, why));
    }
    absl::StrAppend(&table, absl::StrFormat("\nDays missed: accuracy-target %d of %zu, carbon-budget %d of %zu.\n",
                                            error_misses, e.size(), budget_misses, b.size()));
    std::ofstream(out / "days.md") << table;
  }
  // Sensitivity to the energy table (issue 17): the sidecar decides on the table; the hardware's
  // true energies are off by ±20 % (all variants, or one). Each policy's decisions charged at the
  // true energies, against the same policy deciding on the true energies (a calibrated table).
  {
    std::vector<std::pair<std::string, std::vector<std::pair<std::string, double>>>> scenarios;
    for (double f : {0.8, 1.2}) {
      std::vector<std::pair<std::string, double>> all;
      for (const auto& v : pool->variants()) all.emplace_back(v.name, f);
      scenarios.push_back({absl::StrFormat("every variant ×%.1f", f), all});
    }
    for (const auto& v : pool->variants()) {
      for (double f : {0.8, 1.2}) scenarios.push_back({absl::StrFormat("%s ×%.1f", v.name, f), {{v.name, f}}});
    }
    const auto heuristic_on = [&](const carbon::selector::Pool& p, size_t base) {
      carbon::bench::WindowMode mode;
      const std::optional<size_t> d = p.IndexOf((*pool)[*default_variant].name);
      return carbon::bench::ReplayHeuristic(periods, p, base, *d, mode);
    };
    const auto target_on = [&](const carbon::selector::Pool& p, size_t base) {
      const auto spec = carbon::selector::MakeHorizonTargetSpec({Kind::kMeanErrorPercent, target_error}, whole);
      const std::optional<size_t> d = p.IndexOf((*pool)[*default_variant].name);
      const auto policy = spec->Build(p, {*d, absl::InfiniteDuration(), absl::ZeroDuration()});
      carbon::bench::WindowMode mode;
      mode.kind = carbon::bench::WindowMode::Kind::kTrailing;
      return carbon::bench::ReplayPolicy(periods, p, base, *policy, "accuracy-target", mode);
    };
    const PolicyResult table_heuristic = heuristic_on(*pool, *baseline);
    const PolicyResult table_target = target_on(*pool, *baseline);
    std::string table = absl::StrFormat(
        "| true energies | policy | periods decided otherwise with the true table | grams, decided on the table | "
        "grams, decided on the true table | extra grams vs %s (table / true) | mean error %% (table / true) | "
        "efficiency %%/g (table / true) |\n|---|---|---|---|---|---|---|---|\n",
        (*pool)[*baseline].name);
    const auto efficiency = [](const carbon::telemetry::RouteReport& r) {
      return std::isfinite(r.efficiency) ? absl::StrFormat("%.5f", r.efficiency) : std::string("n/a");
    };
    for (const auto& [label, factors] : scenarios) {
      auto truth = carbon::bench::ScaledPool(*pool, factors);
      if (!truth.ok()) return Fail(std::string(truth.status().message()));
      const size_t true_baseline = *truth->IndexOf((*pool)[*baseline].name);
      for (const auto& [name, decided, calibrated] :
           {std::tuple<std::string, const PolicyResult*, PolicyResult>{"heuristic (whole-trace)", &table_heuristic,
                                                                       heuristic_on(*truth, true_baseline)},
            std::tuple<std::string, const PolicyResult*, PolicyResult>{
                absl::StrCat("accuracy-target ", error_text, " (", month, ")"), &table_target,
                target_on(*truth, true_baseline)}}) {
        auto recosted = carbon::bench::Recost(periods, *decided, *pool, *truth, true_baseline);
        if (!recosted.ok()) return Fail(std::string(recosted.status().message()));
        size_t differ = 0;
        for (size_t i = 0; i < periods.size(); ++i) {
          differ += (*pool)[decided->choices[i]].name != (*truth)[calibrated.choices[i]].name;
        }
        absl::StrAppend(&table, absl::StrFormat("| %s | %s | %.1f %% | %.0f | %.0f | %+.0f / %+.0f | %.3f / %.3f | %s / %s |\n",
                                                label, name, 100.0 * static_cast<double>(differ) / static_cast<double>(periods.size()),
                                                recosted->grams, calibrated.report.grams, recosted->extra_grams,
                                                calibrated.report.extra_grams, recosted->mean_error_percent,
                                                calibrated.report.mean_error_percent, efficiency(*recosted),
                                                efficiency(calibrated.report)));
      }
    }
    std::ofstream(out / "sensitivity.md") << table;
  }
  uint64_t total_requests = 0;
  double item_intensity = 0;
  for (const auto& p : periods) {
    total_requests += p.requests;
    item_intensity += static_cast<double>(p.requests) * p.gco2_per_kwh;
  }
  const std::string markdown = carbon::bench::ResultsMarkdown(results, *pool, *baseline);
  std::ofstream(out / "table.md") << markdown;
  std::ofstream(out / "table.csv") << carbon::bench::ResultsCsv(results, *pool, *baseline);
  {
    // Per period: time, intensity, requests, then the variant each heuristic chose (by index).
    std::ofstream dat(out / "choices.dat");
    dat << "# time intensity_gco2_per_kwh requests";
    for (size_t r = pool->size(); r < results.size(); ++r) dat << " \"" << results[r].policy << "\"";
    dat << "\n";
    for (size_t i = 0; i < periods.size(); ++i) {
      // A blank line where the data has a hole, so the plot does not draw across it.
      if (i > 0 && periods[i].at - periods[i - 1].at > absl::Hours(1)) dat << "\n";
      dat << absl::FormatTime("%Y-%m-%dT%H:%M", periods[i].at, absl::UTCTimeZone()) << " "
          << periods[i].gco2_per_kwh << " " << periods[i].requests;
      for (size_t r = pool->size(); r < results.size(); ++r) dat << " " << results[r].choices[i];
      dat << "\n";
    }
    // Only policies that buy accuracy with extra carbon: for one that saves carbon by losing
    // accuracy, the ratio of two negatives says nothing the paper's comparison means.
    std::ofstream eff(out / "efficiency.dat");
    for (const auto& r : results) {
      if (r.report.extra_grams > 0) eff << "\"" << r.policy << "\" " << r.report.efficiency << "\n";
    }
  }
  std::printf("%zu periods of %s, %llu requests, sum of requests x intensity %.4g\n\n%s", periods.size(),
              absl::GetFlag(FLAGS_intensity).c_str(), static_cast<unsigned long long>(total_requests),
              item_intensity, markdown.c_str());

  // Plots, when gnuplot is there (scripts/setup.sh installs gnuplot-nox).
  const std::string script = absl::StrFormat(
      R"gp(set terminal svg size 1100,500 dynamic background rgb "white"
set datafile separator whitespace
set output "%1$s/intensity.svg"
set title "Grid intensity and the variant the heuristic (whole-trace window) chose"
set xdata time; set timefmt "%%Y-%%m-%%dT%%H:%%M"; set format x "%%d %%b"; set autoscale xfixmin; set autoscale xfixmax
set key outside bottom center horizontal
set ylabel "gCO2/kWh"; set y2label "variant"; set y2range [-0.5:%2$d]
set y2tics (%3$s)
plot "%1$s/choices.dat" using 1:2 with lines lw 1 title "intensity", \
     "%1$s/choices.dat" using 1:4 axes x1y2 with steps lw 1 title "variant (heuristic, whole-trace)"
unset xdata; unset y2tics; unset y2label; unset y2range; set format x "%%g"; unset key
set output "%1$s/efficiency.svg"
set title "Carbon-emission efficiency vs %4$s (relative quality improvement %% per extra gram)"
set style fill solid 0.6; set boxwidth 0.6; set ylabel "%%/g"; set xtics rotate by -20
plot "%1$s/efficiency.dat" using 0:2:xtic(1) with boxes notitle
set output "%1$s/frontier.svg"
set style fill empty; set xtics norotate; set key inside top right vertical
set title "Mean top-1 error against extra grams over %4$s, the whole month"
set xlabel "extra g CO2 vs %4$s"; set ylabel "mean top-1 error %%"
plot "%1$s/frontier.dat" using 4:5 with linespoints lw 2 title "hindsight optimum (bound)", \
     "%1$s/frontier.dat" using 2:3 with linespoints lw 2 title "accuracy-target (online)", \
     "%1$s/frontier_heuristics.dat" using 2:3 with points pt 9 ps 1.5 title "the paper's heuristic (three windows)", \
     "%1$s/frontier_points.dat" using 2:3 with points pt 7 ps 1.2 title "fixed variants", \
     "%1$s/frontier_points.dat" using 2:3:1 with labels offset 0,1 font ",9" notitle
)gp",
      out.string(), static_cast<int>(pool->size()),
      [&] {
        std::string tics;
        for (size_t v = 0; v < pool->size(); ++v) absl::StrAppend(&tics, v ? ", " : "", "\"", (*pool)[v].name, "\" ", v);
        return tics;
      }(),
      (*pool)[*baseline].name);
  std::ofstream(out / "plots.gp") << script;
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    const std::string command = absl::StrCat("gnuplot ", (out / "plots.gp").string());
    if (std::system(command.c_str()) == 0) {
      std::printf("\nplots: %s/intensity.svg, %s/efficiency.svg, %s/frontier.svg\n", out.c_str(), out.c_str(),
                  out.c_str());
    } else {
      std::fprintf(stderr, "replay: gnuplot failed on %s/plots.gp\n", out.c_str());
    }
  }
  return 0;
}
