#include "sidecar/probe.h"

#include <string>

#include "sidecar/routing.h"

namespace carbon::sidecar {

int RunIntensityProbe(const SidecarConfig& config, std::FILE* out) {
  auto publisher = SelectionPublisher::Create(config);
  if (!publisher.ok()) {
    std::fprintf(out, "probe failed: %s\n", std::string(publisher.status().message()).c_str());
    return 1;
  }
  const std::shared_ptr<const RoutingSnapshot> snapshot = (*publisher)->snapshots().Load();
  const SourceStatus& source = snapshot->source();
  std::fprintf(out, "provider: %s (answered: %s)%s%s\n", source.provider.c_str(), source.source.c_str(),
               source.region.empty() ? "" : ", region ", source.region.c_str());
  if (source.latest) {
    std::fprintf(out, "latest:   %.1f gCO2/kWh at %s (%s old)\n", source.latest->gco2_per_kwh,
                 absl::FormatTime(absl::RFC3339_sec, source.latest->at, absl::UTCTimeZone()).c_str(),
                 absl::FormatDuration(absl::Trunc(source.now - source.latest->at, absl::Seconds(1))).c_str());
  } else {
    std::fprintf(out, "latest:   none\n");
  }
  if (source.window) {
    std::fprintf(out, "window:   %.1f to %.1f gCO2/kWh (%s)\n", source.window->low, source.window->high,
                 config.intensity.fixed_bounds ? "fixed bounds"
                                               : ("last " + absl::FormatDuration(config.intensity.window)).c_str());
  } else {
    std::fprintf(out, "window:   none yet\n");
  }
  for (const RouteView& route : snapshot->routes()) {
    const selector::Decision& d = route.decision;
    std::fprintf(out, "route %s: %s (%s", route.route->config.name.c_str(), route.pool()[d.primary].name.c_str(),
                 std::string(d.reason).c_str());
    for (const selector::ExplanationTerm& term : d.explanation) {
      std::fprintf(out, ", %s = %.3f", std::string(term.name).c_str(), term.value);
    }
    if (d.weights.size() > 1) {
      for (const selector::VariantWeight& w : d.weights) {
        std::fprintf(out, ", %s %.1f %%", route.pool()[w.variant].name.c_str(), w.weight * 100);
      }
    }
    std::fprintf(out, "; policy %s)\n", std::string(route.route->policy->kind()).c_str());
  }
  std::fprintf(out, "state:    %s\n", std::string(SourceStateName(source.counters.state)).c_str());
  if (!source.last_error.empty()) {
    std::fprintf(out, "error:    %s\n", source.last_error.c_str());
    return 1;
  }
  return source.counters.state == SourceState::kOk ? 0 : 1;
}

}  // namespace carbon::sidecar
