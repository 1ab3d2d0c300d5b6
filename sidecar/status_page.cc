#include "sidecar/status_page.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/string_view_compat.h"
#include "sidecar/status_page_assets.h"  // generated from status_page/

namespace carbon::sidecar {

std::string HtmlEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

// A figure in an element that also carries it for programs: data-route, data-field and data-value
// (the exact value); `shown` is already HTML. `big`: styled as a headline figure.
std::string Tagged(std::string_view route, std::string_view field, std::string_view value, std::string_view shown,
                   bool big) {
  return absl::StrCat("<span ", big ? "class=\"fig\" " : "", "data-route=\"", HtmlEscape(route), "\" data-field=\"",
                      HtmlEscape(field), "\" data-value=\"", HtmlEscape(value), "\">", ToAbsl(shown), "</span>");
}

// A text (a name, a reason) as it is, for a person and for a program.
std::string TextFigure(std::string_view route, std::string_view field, std::string_view text, bool big = false) {
  return Tagged(route, field, text, HtmlEscape(text), big);
}

// A number for a person, and the exact one for a program (data-value), in one element.
// `signed_figure`: a difference, shown with its sign.
std::string Figure(std::string_view route, std::string_view field, double value, int decimals,
                   std::string_view unit = "", bool signed_figure = false) {
  const bool known = std::isfinite(value);
  const std::string shown = !known          ? "—"
                            : signed_figure ? absl::StrFormat("%+.*f", decimals, value)
                                            : absl::StrFormat("%.*f", decimals, value);
  return Tagged(route, field, known ? absl::StrFormat("%.17g", value) : "",
                absl::StrCat(shown, unit.empty() ? "" : absl::StrCat("<small> ", ToAbsl(unit), "</small>")),
                /*big=*/true);
}

// The part of the page about one route.
void RenderRoute(const RoutingSnapshot& snapshot, const RouteView& route, std::string* html) {
  const std::string& route_name = route.route->config.name;
  const std::string name = HtmlEscape(route_name);
  const selector::Pool& pool = route.pool();
  const selector::Decision& d = route.decision;
  const telemetry::RouteReport report = route.Report();
  const ClusterStatus& cluster = snapshot.clusters()[route.served_in().index];
  const SourceStatus& source = cluster.source;
  const double largest = report.counterfactual_grams.empty() ? NAN : report.counterfactual_grams[pool.most_accurate()];
  absl::StrAppend(html, "<section><h2>Route <code>", name, "</code> <small class=\"k\">policy ",
                  HtmlEscape(route.route->policy->kind()), "</small></h2><div class=\"grid\">");

  absl::StrAppend(html, "<div><div class=\"k\">serving now</div>",
                  TextFigure(route_name, "model", pool[d.primary].name, /*big=*/true));
  if (snapshot.clusters().size() > 1) {
    absl::StrAppend(html, "<div class=\"k\">in ", TextFigure(route_name, "cluster", cluster.upstream->name), "</div>");
  }
  absl::StrAppend(html, "<div class=\"k\">because ", TextFigure(route_name, "reason", d.reason));
  for (const selector::ExplanationTerm& t : d.explanation) {
    absl::StrAppend(html, " · ", HtmlEscape(t.name), " ", absl::StrFormat("%.4g", t.value));
  }
  if (!route.policy_weights.empty()) {
    absl::StrAppend(html, " · shares moved by ", ToAbsl(telemetry::SpillReasonName(route.moved_by)));
  }
  absl::StrAppend(html, "</div></div>");

  const double intensity = d.intensity ? d.intensity->gco2_per_kwh : NAN;
  absl::StrAppend(html, "<div><div class=\"k\">grid intensity (", HtmlEscape(source.source), " ",
                  HtmlEscape(source.region), ")</div>", Figure(route_name, "intensity", intensity, 0, "gCO2/kWh"));
  if (source.latest) {
    absl::StrAppend(html, "<div class=\"k\">", absl::StrFormat("%.0f", absl::ToDoubleMinutes(source.now - source.latest->at)),
                    " min old · ", ToAbsl(SourceStateName(source.counters.state)), "</div>");
  }
  if (d.bounds && d.intensity && d.bounds->high > d.bounds->low) {
    const double at = std::clamp((intensity - d.bounds->low) / (d.bounds->high - d.bounds->low), 0.0, 1.0);
    absl::StrAppend(html, "<div class=\"bar\" role=\"img\" aria-label=\"", absl::StrFormat("%.0f", 100 * at),
                    " % of the way from the window's low to its high\"><i style=\"left:calc(", absl::StrFormat("%.1f", 100 * at),
                    "% - 2px)\"></i></div><div class=\"k\">window ", absl::StrFormat("%.0f – %.0f", d.bounds->low, d.bounds->high),
                    " gCO2/kWh</div>");
  }
  absl::StrAppend(html, "</div>");

  absl::StrAppend(html, "<div><div class=\"k\">emitted</div>", Figure(route_name, "grams", report.grams, 4, "g"),
                  "<div class=\"k\">", Figure(route_name, "inferences", static_cast<double>(report.items), 0),
                  " inferences</div></div>");
  absl::StrAppend(html, "<div><div class=\"k\">against always ", HtmlEscape(pool[route.route->config.baseline].name),
                  " (baseline)</div>", Figure(route_name, "extra_grams", report.extra_grams, 4, "g", /*signed_figure=*/true),
                  "<div class=\"k\">against always ", HtmlEscape(pool[pool.most_accurate()].name), " ",
                  Figure(route_name, "grams_vs_largest", report.grams - largest, 4, "g", /*signed_figure=*/true), "</div></div>");
  absl::StrAppend(html, "<div><div class=\"k\">mean top-1 error</div>",
                  Figure(route_name, "mean_error", report.items > 0 ? report.mean_error_percent : NAN, 3, "%"),
                  "<div class=\"k\">carbon-emission efficiency ",
                  Figure(route_name, "efficiency", report.efficiency, 5, "%/g"),
                  report.beats_baseline ? " · better than the baseline on both" : "", "</div></div>");
  absl::StrAppend(html, "</div>");

  nlohmann::json models = nlohmann::json::array();
  for (size_t v = 0; v < pool.size(); ++v) models.push_back(pool[v].name);
  absl::StrAppend(html, "<div class=\"scroll\"><svg data-chart=\"", name, "\" data-models=\"",
                  HtmlEscape(models.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)),
                  "\" data-points=\"0\" viewBox=\"0 0 900 240\" role=\"img\" ",
                  "aria-label=\"the model served, the intensity and the requests per second over the history\"></svg></div>");

  absl::StrAppend(html, "<div class=\"scroll\"><table><thead><tr><th>model</th><th>share now</th><th>served</th>",
                  "<th>ready</th><th>in flight</th><th>p99 (window)</th><th>energy (mJ)</th><th>top-1 error (%)</th>",
                  "</tr></thead><tbody>");
  for (size_t v = 0; v < pool.size(); ++v) {
    const std::string variant = HtmlEscape(pool[v].name);
    const double weight = d.WeightOf(v);
    const uint64_t served = report.variants[v].items;
    const double served_share =
        report.items > 0 ? static_cast<double>(served) / static_cast<double>(report.items) : NAN;
    const int64_t limit = route.InFlightLimit(v);
    absl::StrAppend(html, "<tr><td>", variant, "</td><td><span class=\"share\" style=\"width:",
                    absl::StrFormat("%.0f", 60 * weight), "px\"></span> ",
                    Figure(route_name, absl::StrCat("weight_percent:", pool[v].name), 100 * weight, 1, "%"),
                    "</td><td>", Figure(route_name, absl::StrCat("served:", pool[v].name), static_cast<double>(served), 0),
                    std::isfinite(served_share) ? absl::StrFormat(" <small class=\"k\">(%.1f %%)</small>", 100 * served_share) : "",
                    "</td><td>", (route.ready >> v & 1) ? "<span class=\"ok\">ready</span>" : "<span class=\"bad\">not ready</span>",
                    "</td><td>", route.route->ledger->variant(v).in_flight(),
                    limit > 0 && limit != RouteView::kNotLearnedYet ? absl::StrCat(" / ", limit) : "", "</td><td>",
                    route.window_p99.size() > v && route.window_p99[v]
                        ? absl::StrFormat("%.1f ms", absl::ToDoubleMilliseconds(*route.window_p99[v]))
                        : "—",
                    "</td><td>", absl::StrFormat("%.1f", pool[v].energy_mj), "</td><td>",
                    absl::StrFormat("%.3f", pool[v].error_percent), "</td></tr>");
  }
  absl::StrAppend(html, "</tbody></table></div>");
  if (route.decided_on_measured) absl::StrAppend(html, "<p class=\"k\">Decided on measured energies.</p>");
  if (route.clusters.size() > 1) {
    absl::StrAppend(html, "<p class=\"k\">Clusters in order: ");
    for (size_t k = 0; k < route.clusters.size(); ++k) {
      const RouteCluster& rc = route.clusters[k];
      absl::StrAppend(html, k > 0 ? " → " : "", HtmlEscape(snapshot.clusters()[rc.index].upstream->name), " (",
                      ToAbsl(ClusterRankName(rc.rank)),
                      rc.intensity >= 0 ? absl::StrFormat(", %.0f gCO2/kWh", rc.intensity) : "", ")");
    }
    absl::StrAppend(html, "</p>");
  }
  absl::StrAppend(html, "</section>");
}

void RenderSources(const RoutingSnapshot& snapshot, const StatusPageInputs& in, std::string* html) {
  absl::StrAppend(html, "<section><h2>Clusters, intensity sources and config</h2><div class=\"scroll\"><table><thead><tr>",
                  "<th>cluster</th><th>target</th><th>intensity source</th><th>state</th><th>reachable</th>",
                  "<th>round trip</th><th>last error</th></tr></thead><tbody>");
  for (const ClusterStatus& c : snapshot.clusters()) {
    absl::StrAppend(html, "<tr><td>", HtmlEscape(c.upstream->name), "</td><td>", HtmlEscape(c.upstream->target),
                    "</td><td>", HtmlEscape(c.source.source), " ", HtmlEscape(c.source.region), "</td><td>",
                    ToAbsl(SourceStateName(c.source.counters.state)), "</td><td>",
                    !c.source.upstream_reachable ? "not asked yet"
                    : *c.source.upstream_reachable ? "<span class=\"ok\">yes</span>"
                                                   : "<span class=\"bad\">no</span>",
                    "</td><td>", c.rtt ? absl::StrFormat("%.1f ms", absl::ToDoubleMilliseconds(*c.rtt)) : "—",
                    c.rtt && c.rtt_configured ? " (configured)" : "", "</td><td>", HtmlEscape(c.source.last_error),
                    "</td></tr>");
  }
  absl::StrAppend(html, "</tbody></table></div><p class=\"k\">Config loaded ",
                  absl::FormatTime(absl::RFC3339_sec, in.config_loaded, absl::UTCTimeZone()), " · reloads: ",
                  in.reloads_ok, " applied, ", in.reloads_failed, " rejected");
  if (in.last_reload_error) {
    absl::StrAppend(html, "</p><p class=\"bad\">Last rejected reload (",
                    absl::FormatTime(absl::RFC3339_sec, in.last_reload_error->at, absl::UTCTimeZone()),
                    ", the config before it kept): <code>", HtmlEscape(in.last_reload_error->message), "</code>");
  }
  absl::StrAppend(html, "</p></section>");
}

}  // namespace

std::string RenderStatusPage(const StatusPageInputs& in) {
  const RoutingSnapshot& snapshot = in.snapshot;
  std::string html = absl::StrCat(
      "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
      "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
      "<title>carbon-sidecar</title><style>", kStatusPageStyle, "</style></head><body data-refreshed=\"0\">",
      "<header><h1>carbon-sidecar</h1><p>Picks the model (and the cluster) for every inference call from the grid's "
      "carbon intensity. Updated <span id=\"updated\">",
      absl::FormatTime(absl::RFC3339_sec, in.now, absl::UTCTimeZone()), "</span> · ",
      "<a href=\"/metrics\">/metrics</a> · <a href=\"/v1/selection\">/v1/selection</a> · ",
      "<a href=\"/v1/history\">/v1/history</a> · <a href=\"/v1/config\">/v1/config</a></p></header><main>");
  for (const RouteView& route : snapshot.routes()) RenderRoute(snapshot, route, &html);
  RenderSources(snapshot, in, &html);
  absl::StrAppend(&html, "</main><script>", kStatusPageScript, "</script></body></html>\n");
  return html;
}

}  // namespace carbon::sidecar
