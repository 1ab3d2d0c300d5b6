// Where and which, replayed (docs/EVALUATION.md, "Where and which"):
//   build/bench/replay_places --out_dir docs/evaluation/places
// replays the same traffic over several grids at once (Great Britain, France and Germany, June 2020)
// with the sidecar's own cluster ranking and heuristic: which-only (the home grid, the variant by the
// heuristic: the sidecar with one cluster), where-only (the baseline variant at the cleanest place
// within the latency budget) and where+which (the cleanest place, the heuristic on its grid), for each
// latency budget; and the single-region case (South West England, June 2023), where the three agree.
// Writes places.md, places.dat and, with gnuplot, places.svg.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/replay.h"
#include "common/command_line.h"
#include "sidecar/config.h"
#include "telemetry/trace_provider.h"

ABSL_FLAG(std::vector<std::string>, places,
          std::vector<std::string>({"GB=data/carbon/places_2020_06/gb.csv@2ms", "FR=data/carbon/places_2020_06/fr.csv@12ms",
                                    "DE=data/carbon/places_2020_06/de.csv@20ms"}),
          "NAME=CSV@RTT per place, the home first: its intensity series (columns Time, Carbon Intensity) and "
          "its assumed latency cost from the gateway.");
ABSL_FLAG(std::vector<std::string>, budgets, std::vector<std::string>({"none", "15ms", "5ms"}),
          "Latency budgets to replay each mode with ('none': every place).");
ABSL_FLAG(std::vector<std::string>, subsets, std::vector<std::string>({"GB+DE"}),
          "Further sets of the places (NAME+NAME…, home first), each replayed with no latency budget: e.g. "
          "the clusters left when one is not deployed or is full.");
ABSL_FLAG(std::string, from, "2020-06-01T00:00:00Z", "First half-hour replayed.");
ABSL_FLAG(std::string, to, "2020-07-01T00:00:00Z", "End of the replay, exclusive.");
ABSL_FLAG(std::string, single, "data/carbon/sw_england_2023_06",
          "The single-region case: one intensity series (the sidecar's demo trace), or empty to skip.");
ABSL_FLAG(std::string, single_from, "2023-06-01T00:00:00Z", "First half-hour of the single-region case.");
ABSL_FLAG(std::string, requests, "data/requests/worldcup98_june_requests_per_minute.csv",
          "Request counts per minute (CSV: period, count), laid onto --from (and --single_from).");
ABSL_FLAG(std::string, pool, "config/pools/resnet-v100.yaml", "Pool YAML.");
ABSL_FLAG(std::string, baseline, "resnet50", "Baseline variant (where-only serves it).");
ABSL_FLAG(std::string, default_variant, "resnet50", "Variant used while a window is flat.");
ABSL_FLAG(std::string, window, "24h", "The heuristic's trailing window, per place.");
ABSL_FLAG(std::string, out_dir, "bench/results/places", "Where the table and plot go.");

namespace {

using carbon::bench::PlaceMode;
using carbon::bench::ReplayPeriod;
using carbon::bench::ReplayPlace;
using carbon::selector::IntensityReading;

int Fail(const std::string& message) {
  std::fprintf(stderr, "replay_places: %s\n", message.c_str());
  return 1;
}

std::optional<absl::Time> ParseTime(const std::string& text) {
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, text, &t, &err)) return std::nullopt;
  return t;
}

// The places' half-hours from `from` to `to`, each with the requests of the same half-hour.
absl::StatusOr<std::vector<ReplayPlace>> LoadPlaces(const std::vector<std::string>& specs,
                                                    const std::vector<IntensityReading>& requests, absl::Time from,
                                                    absl::Time to) {
  std::vector<ReplayPlace> places;
  for (const std::string& spec : specs) {
    const std::vector<std::string> name_rest = absl::StrSplit(spec, absl::MaxSplits('=', 1));
    const std::vector<std::string> file_rtt = name_rest.size() == 2 ? absl::StrSplit(name_rest[1], '@')
                                                                    : std::vector<std::string>{};
    ReplayPlace place;
    if (file_rtt.size() != 2 || !absl::ParseDuration(file_rtt[1], &place.rtt)) {
      return absl::InvalidArgumentError(absl::StrCat("--places: '", spec, "' is not NAME=CSV@RTT"));
    }
    place.name = name_rest[0];
    auto series = carbon::telemetry::LoadIntensityTrace(file_rtt[0], {"Time", "Carbon Intensity"});
    if (!series.ok()) return series.status();
    const auto half_hours = carbon::bench::Resample(*series, from, to, absl::Minutes(30));
    place.periods = carbon::bench::JoinTraces(half_hours, requests, from - requests.front().at);
    places.push_back(std::move(place));
  }
  return places;
}

struct Row {
  std::string places;  // which places could serve
  std::string budget;
  PlaceMode mode;
  carbon::bench::PlacesResult outcome;
};

}  // namespace

int main(int argc, char** argv) {
  carbon::StartBinary(
      "replays carbon-sidecar's choice of place and model over several grids at once (docs/EVALUATION.md).\n"
      "Usage: replay_places [--out_dir DIR] [flags below]",
      __FILE__, argc, argv);
  const auto from = ParseTime(absl::GetFlag(FLAGS_from));
  const auto to = ParseTime(absl::GetFlag(FLAGS_to));
  const auto single_from = ParseTime(absl::GetFlag(FLAGS_single_from));
  if (!from || !to || !single_from || *to <= *from) return Fail("--from, --to and --single_from must be RFC 3339 times, from before to");
  absl::Duration window;
  if (!absl::ParseDuration(absl::GetFlag(FLAGS_window), &window) || window <= absl::ZeroDuration()) {
    return Fail("--window must be a positive duration");
  }
  auto requests = carbon::telemetry::LoadIntensityTrace(absl::GetFlag(FLAGS_requests), {"period", "count"});
  if (!requests.ok() || requests->empty()) return Fail(requests.ok() ? "no requests" : std::string(requests.status().message()));
  auto pool = carbon::sidecar::LoadPoolFile(absl::GetFlag(FLAGS_pool));
  if (!pool.ok()) return Fail(std::string(pool.status().message()));
  const auto baseline = pool->IndexOf(absl::GetFlag(FLAGS_baseline));
  const auto default_variant = pool->IndexOf(absl::GetFlag(FLAGS_default_variant));
  if (!baseline || !default_variant) return Fail("--baseline and --default_variant must name variants of the pool");

  auto places = LoadPlaces(absl::GetFlag(FLAGS_places), *requests, *from, *to);
  if (!places.ok()) return Fail(std::string(places.status().message()));
  std::string names;
  for (const ReplayPlace& p : *places) absl::StrAppend(&names, names.empty() ? "" : "+", p.name);

  std::vector<Row> rows;
  const auto run = [&](const std::vector<ReplayPlace>& over, const std::string& label, const std::string& budget_text) {
    std::optional<absl::Duration> budget;
    absl::Duration d;
    if (budget_text != "none") {
      if (!absl::ParseDuration(budget_text, &d)) return false;
      budget = d;
    }
    for (PlaceMode mode : {PlaceMode::kWhichOnly, PlaceMode::kWhereOnly, PlaceMode::kWhereAndWhich}) {
      rows.push_back({label, budget_text, mode,
                      carbon::bench::ReplayPlaces(over, *pool, *baseline, *default_variant, mode, budget, window)});
    }
    return true;
  };
  for (const std::string& budget : absl::GetFlag(FLAGS_budgets)) {
    if (!run(*places, names, budget)) return Fail(absl::StrCat("--budgets: '", budget, "' is not a duration or none"));
  }
  for (const std::string& subset : absl::GetFlag(FLAGS_subsets)) {
    std::vector<ReplayPlace> over;
    for (absl::string_view name : absl::StrSplit(subset, '+')) {
      for (const ReplayPlace& p : *places) {
        if (p.name == name) over.push_back(p);
      }
    }
    if (over.empty()) return Fail(absl::StrCat("--subsets: '", subset, "' names none of --places"));
    run(over, subset, "none");
  }
  if (!absl::GetFlag(FLAGS_single).empty()) {
    auto series = carbon::telemetry::LoadIntensityTrace(absl::GetFlag(FLAGS_single), {"from", "regions.intensity.forecast"});
    if (!series.ok()) return Fail(std::string(series.status().message()));
    ReplayPlace sw{"SW England 2023", {}, absl::ZeroDuration()};
    const auto half_hours = carbon::bench::Resample(*series, *single_from, *single_from + (*to - *from), absl::Minutes(30));
    sw.periods = carbon::bench::JoinTraces(half_hours, *requests, *single_from - requests->front().at);
    run({sw}, sw.name, "none");
  }

  // Against the baseline variant at home, the same traffic: the sidecar's own yardstick.
  const auto baseline_at_home = [&](const Row& row) {
    double grams = 0;
    for (const Row& r : rows) {
      if (r.places == row.places && r.mode == PlaceMode::kWhichOnly) {
        // which-only's home grams for the baseline: every inference of the baseline at home.
        grams = r.outcome.result.report.counterfactual_grams[*baseline];
      }
    }
    return grams;
  };
  std::string md = absl::StrCat(
      "# Where and which: ", names, ", ", absl::FormatTime("%Y-%m-%d", *from, absl::UTCTimeZone()), " to ",
      absl::FormatTime("%Y-%m-%d", *to, absl::UTCTimeZone()), "\n\n",
      "Generated by `build/bench/replay_places --out_dir ", absl::GetFlag(FLAGS_out_dir), "` (bench/replay_places_main.cc). ",
      "The same traffic (the World Cup 1998 trace laid onto the month, one request one inference) over the ",
      "national intensity series of each place; the first place is home. Assumed: every place serves every ",
      "variant, with no capacity limit and always reachable; a place's latency cost is fixed (",
      "--places); the heuristic keeps a trailing ", absl::FormatDuration(window), " window per place, as the ",
      "sidecar does per cluster; where-only serves the baseline (", (*pool)[*baseline].name, "). ",
      "Grams are operational (E × I, PUE 1), on the pool's table.\n\n",
      "| places | latency budget | mode | grams | vs baseline at home | mean error (%) | served at |\n",
      "|---|---|---|---|---|---|---|\n");
  for (const Row& row : rows) {
    const carbon::telemetry::RouteReport& r = row.outcome.result.report;
    const double reference = baseline_at_home(row);
    std::string served;
    const std::vector<std::string> over = absl::StrSplit(row.places == names ? names : row.places, '+');
    double total = 0;
    for (double n : row.outcome.requests) total += n;
    for (size_t p = 0; p < row.outcome.requests.size(); ++p) {
      const std::string name = p < over.size() ? over[p] : "?";
      absl::StrAppend(&served, served.empty() ? "" : ", ", name, " ",
                      absl::StrFormat("%.0f%%", total > 0 ? 100 * row.outcome.requests[p] / total : 0));
    }
    absl::StrAppend(&md, absl::StrFormat("| %s | %s | %s | %.1f | %+.1f%% | %.3f | %s |\n", row.places, row.budget,
                                         carbon::bench::PlaceModeName(row.mode), r.grams,
                                         reference > 0 ? 100 * (r.grams - reference) / reference : 0,
                                         r.mean_error_percent, served));
  }
  const std::filesystem::path out = absl::GetFlag(FLAGS_out_dir);
  std::filesystem::create_directories(out);
  std::ofstream(out / "places.md") << md;

  // Per half-hour: each place's intensity, and where+which's place and variant (no budget).
  std::string dat = "# time";
  for (const ReplayPlace& p : *places) absl::StrAppend(&dat, " ", p.name);
  absl::StrAppend(&dat, " where_which_intensity where_which_variant which_only_variant\n");
  const Row* both = nullptr;
  const Row* which = nullptr;
  for (const Row& r : rows) {
    if (r.places == names && r.budget == absl::GetFlag(FLAGS_budgets).front()) {
      if (r.mode == PlaceMode::kWhereAndWhich) both = &r;
      if (r.mode == PlaceMode::kWhichOnly) which = &r;
    }
  }
  for (size_t i = 0; both && which && i < places->front().periods.size(); ++i) {
    absl::StrAppend(&dat, absl::ToUnixSeconds(places->front().periods[i].at));
    double lowest = 1e300;
    for (const ReplayPlace& p : *places) {
      absl::StrAppend(&dat, " ", p.periods[i].gco2_per_kwh);
      lowest = std::min(lowest, p.periods[i].gco2_per_kwh);
    }
    absl::StrAppend(&dat, " ", lowest, " ", both->outcome.result.choices[i], " ", which->outcome.result.choices[i], "\n");
  }
  std::ofstream(out / "places.dat") << dat;
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0 && places->size() == 3) {
    const std::string script = absl::StrCat(
        "set terminal svg size 1100,520 dynamic; set output '", (out / "places.svg").string(), "'\n",
        "set xdata time; set timefmt '%s'; set format x '%d %b'; set key outside right\n",
        "set multiplot layout 2,1\n",
        "set ylabel 'gCO2/kWh'; plot '", (out / "places.dat").string(), "' using 1:2 with lines title '",
        (*places)[0].name, "', '' using 1:3 with lines title '", (*places)[1].name, "', '' using 1:4 with lines title '",
        (*places)[2].name, "'\n",
        "set ylabel 'variant (0 = smallest)'; set yrange [-0.5:", pool->size() - 0.5, "]\n",
        "plot '", (out / "places.dat").string(), "' using 1:6 with steps title 'where+which', '' using 1:7 with steps ",
        "title 'which-only (home)'\n", "unset multiplot\n");
    const std::filesystem::path gp = out / "places.gp";
    std::ofstream(gp) << script;
    if (std::system(absl::StrCat("gnuplot ", gp.string()).c_str()) != 0) std::fprintf(stderr, "replay_places: gnuplot failed\n");
    std::filesystem::remove(gp);
  }
  std::fputs(md.c_str(), stdout);
  return 0;
}
