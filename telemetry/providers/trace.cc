#include "absl/strings/str_cat.h"
#include "telemetry/providers/kinds.h"
#include "telemetry/trace_provider.h"

namespace carbon::telemetry {

std::unique_ptr<ProviderSpec> ReadTraceProvider(ConfigBlock& block, const std::string&) {
  auto spec = std::make_unique<TraceSpec>();
  if (block.String("file", &spec->path, /*required=*/true)) spec->path = block.Resolve(spec->path);
  block.String("time_column", &spec->time_column);
  block.String("value_column", &spec->value_column);
  if (block.Number("speedup", &spec->speedup) && !(spec->speedup > 0)) {
    block.Fail("speedup", absl::StrCat(block.Path("speedup"), " must be positive"));
  }
  block.Bool("loop", &spec->loop);
  block.Time("start", &spec->start);
  return spec;
}

nlohmann::json TraceSpec::Render() const {
  nlohmann::json j = {{"file", path},       {"time_column", time_column}, {"value_column", value_column},
                      {"speedup", speedup}, {"loop", loop}};
  if (start) j["start"] = absl::FormatTime(absl::RFC3339_sec, *start, absl::UTCTimeZone());
  return j;
}

absl::StatusOr<std::unique_ptr<IntensityProvider>> TraceSpec::Build(const ProviderContext&) const {
  auto readings = LoadIntensityTrace(path, {time_column, value_column});
  if (!readings.ok()) return readings.status();
  auto trace = TraceProvider::Create(*std::move(readings), speedup, loop, start);
  if (!trace.ok()) return trace.status();
  return std::unique_ptr<IntensityProvider>(*std::move(trace));
}

}  // namespace carbon::telemetry
