#include "telemetry/trace_provider.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/string_view_compat.h"
#include "telemetry/timestamp.h"

namespace carbon::telemetry {
namespace {

absl::Status CsvError(const std::string& file, size_t line, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(file, ":", line, ": ", message));
}

}  // namespace

absl::StatusOr<std::vector<IntensityReading>> ParseIntensityCsv(std::string_view text,
                                                                const std::string& file,
                                                                const TraceColumns& columns) {
  std::vector<IntensityReading> readings;
  std::optional<size_t> time_col, value_col;
  size_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(ToAbsl(text), '\n')) {
    ++line_no;
    line = absl::StripSuffix(line, "\r");
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> cells = absl::StrSplit(line, ',');
    if (!time_col) {
      const auto find = [&](const std::string& name, size_t fallback) -> std::optional<size_t> {
        if (name.empty()) return cells.size() > fallback ? std::optional<size_t>(fallback) : std::nullopt;
        for (size_t i = 0; i < cells.size(); ++i) {
          if (absl::StripAsciiWhitespace(cells[i]) == name) return i;
        }
        return std::nullopt;
      };
      time_col = find(columns.time, 0);
      value_col = find(columns.value, 1);
      if (!time_col || !value_col) {
        return CsvError(file, line_no,
                        absl::StrCat("header has no column '",
                                     !time_col ? (columns.time.empty() ? "#1" : columns.time)
                                               : (columns.value.empty() ? "#2" : columns.value),
                                     "'"));
      }
      continue;
    }
    if (cells.size() <= std::max(*time_col, *value_col)) {
      return CsvError(file, line_no, absl::StrCat("expected at least ",
                                                  std::max(*time_col, *value_col) + 1, " columns"));
    }
    IntensityReading r;
    const std::optional<absl::Time> at = ParseTimestamp(ToStd(absl::StripAsciiWhitespace(cells[*time_col])));
    if (!at) return CsvError(file, line_no, absl::StrCat("cannot read time '", cells[*time_col], "'"));
    r.at = *at;
    if (!absl::SimpleAtod(cells[*value_col], &r.gco2_per_kwh) || !std::isfinite(r.gco2_per_kwh) ||
        r.gco2_per_kwh < 0) {
      return CsvError(file, line_no,
                      absl::StrCat("intensity '", cells[*value_col],
                                   "' is not a non-negative number of gCO2/kWh"));
    }
    if (!readings.empty() && r.at <= readings.back().at) {
      return CsvError(file, line_no, "rows must be in strictly increasing time order");
    }
    readings.push_back(r);
  }
  if (readings.empty()) return absl::InvalidArgumentError(absl::StrCat(file, ": no readings"));
  return readings;
}

absl::StatusOr<std::vector<IntensityReading>> LoadIntensityTrace(const std::string& path,
                                                                 const TraceColumns& columns) {
  std::vector<std::string> files;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
      if (entry.path().extension() == ".csv") files.push_back(entry.path().string());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) return absl::NotFoundError(absl::StrCat(path, ": no *.csv files"));
  } else {
    files.push_back(path);
  }
  std::vector<IntensityReading> all;
  for (const std::string& file : files) {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat(file, ": cannot open file"));
    std::stringstream text;
    text << in.rdbuf();
    auto part = ParseIntensityCsv(text.str(), file, columns);
    if (!part.ok()) return part.status();
    if (!all.empty() && part->front().at <= all.back().at) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": overlaps the file before it (files must tile in time order)"));
    }
    all.insert(all.end(), part->begin(), part->end());
  }
  return all;
}

absl::StatusOr<std::unique_ptr<TraceProvider>> TraceProvider::Create(
    std::vector<IntensityReading> readings, double speedup, bool loop,
    std::optional<absl::Time> start, Clock wall_clock) {
  if (readings.empty()) return absl::InvalidArgumentError("trace has no readings");
  if (!(speedup > 0)) return absl::InvalidArgumentError("trace speedup must be positive");
  const absl::Time first = readings.front().at;
  if (start && (*start < first || *start > readings.back().at)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trace start ", absl::FormatTime(*start), " lies outside the trace (",
        absl::FormatTime(first), " to ", absl::FormatTime(readings.back().at), ")"));
  }
  return std::unique_ptr<TraceProvider>(new TraceProvider(std::move(readings), speedup, loop,
                                                          start.value_or(first),
                                                          std::move(wall_clock)));
}

TraceProvider::TraceProvider(std::vector<IntensityReading> readings, double speedup, bool loop,
                             absl::Time start, Clock wall_clock)
    : readings_(std::move(readings)),
      speedup_(speedup),
      loop_(loop),
      start_(start),
      wall_clock_(std::move(wall_clock)),
      wall_start_(wall_clock_()) {
  const absl::Duration step = readings_.size() > 1 ? readings_[1].at - readings_[0].at
                                                   : absl::Minutes(30);
  period_ = readings_.back().at - readings_.front().at + step;
}

absl::Time TraceProvider::Now() const {
  return start_ + (wall_clock_() - wall_start_) * speedup_;
}

absl::Duration TraceProvider::PeriodShift(absl::Time t) const {
  const absl::Time first = readings_.front().at;
  if (!loop_ || t < first + period_) return absl::ZeroDuration();
  return period_ * std::floor(absl::FDivDuration(t - first, period_));
}

std::optional<IntensityReading> TraceProvider::At(absl::Time t) const {
  const absl::Duration shift = PeriodShift(t);
  const absl::Time local = t - shift;
  auto it = std::upper_bound(readings_.begin(), readings_.end(), local,
                             [](absl::Time x, const IntensityReading& r) { return x < r.at; });
  if (it == readings_.begin()) return std::nullopt;
  --it;
  return IntensityReading{it->gco2_per_kwh, it->at + shift};
}

absl::StatusOr<IntensityReading> TraceProvider::Latest() {
  auto r = At(Now());
  if (!r) return absl::UnavailableError("the trace has no reading before its start time");
  return *r;
}

absl::StatusOr<std::vector<IntensityReading>> TraceProvider::History(absl::Time from,
                                                                      absl::Time to) {
  std::vector<IntensityReading> out;
  // Walk reading by reading, so a looping trace yields its shifted repeats too.
  std::optional<IntensityReading> r = At(from);
  absl::Time t = r ? r->at : readings_.front().at;
  while (t <= to) {
    r = At(t);
    if (r && r->at >= from && (out.empty() || r->at > out.back().at)) out.push_back(*r);
    // Step to the next reading after t, in t's period or at the start of the next one.
    const absl::Duration shift = PeriodShift(t);
    auto it = std::upper_bound(readings_.begin(), readings_.end(), t - shift,
                               [](absl::Time x, const IntensityReading& y) { return x < y.at; });
    if (it == readings_.end()) {
      if (!loop_) break;
      t = readings_.front().at + shift + period_;
    } else {
      t = it->at + shift;
    }
  }
  return out;
}

}  // namespace carbon::telemetry
