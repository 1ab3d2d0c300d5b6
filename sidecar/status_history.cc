#include "sidecar/status_history.h"

#include <nlohmann/json.hpp>

namespace carbon::sidecar {

void StatusHistory::Record(const RoutingSnapshot& snapshot, absl::Time at) {
  HistoryPoint point;
  point.at = at;
  for (const RouteView& route : snapshot.routes()) {
    const telemetry::RouteReport report = route.Report();
    point.routes.push_back({route.route->config.name, route.pool()[route.decision.primary].name,
                            snapshot.clusters()[route.served_in().index].upstream->name,
                            route.decision.intensity ? route.decision.intensity->gco2_per_kwh : -1, report.requests,
                            report.grams});
  }
  absl::MutexLock lock(&mu_);
  if (capacity_ == 0) return;
  if (points_.size() == capacity_) points_.pop_front();
  points_.push_back(std::move(point));
}

std::vector<HistoryPoint> StatusHistory::Points() const {
  absl::MutexLock lock(&mu_);
  return {points_.begin(), points_.end()};
}

std::string RenderHistoryJson(const std::vector<HistoryPoint>& points, size_t capacity, absl::Duration interval) {
  using nlohmann::json;
  json out = json::array();
  for (const HistoryPoint& p : points) {
    json routes = json::array();
    for (const RouteHistoryPoint& r : p.routes) {
      routes.push_back({{"route", r.route},
                        {"model", r.model},
                        {"cluster", r.cluster},
                        {"intensity_gco2_per_kwh", r.intensity >= 0 ? json(r.intensity) : json(nullptr)},
                        {"requests", r.requests},
                        {"grams", r.grams}});
    }
    out.push_back({{"at", absl::FormatTime(absl::RFC3339_full, p.at, absl::UTCTimeZone())},
                   {"unix_seconds", absl::ToDoubleSeconds(p.at - absl::UnixEpoch())},
                   {"routes", routes}});
  }
  json doc = {{"capacity", capacity}, {"interval_seconds", absl::ToDoubleSeconds(interval)}, {"points", out}};
  return doc.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace carbon::sidecar
