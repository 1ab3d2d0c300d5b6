#include "sidecar/status_page.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/string_view_compat.h"

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

// A number for a person, and the exact one for a program (data-value), in one element.
std::string Figure(std::string_view route, std::string_view field, double value, const char* format,
                   std::string_view unit = "") {
  const std::string shown = std::isfinite(value) ? absl::StrFormat(format, value) : "—";
  return absl::StrCat("<span class=\"fig\" data-route=\"", HtmlEscape(route), "\" data-field=\"", HtmlEscape(field),
                      "\" data-value=\"", std::isfinite(value) ? absl::StrFormat("%.17g", value) : "", "\">",
                      shown, unit.empty() ? "" : absl::StrCat("<small> ", ToAbsl(unit), "</small>"), "</span>");
}

constexpr char kStyle[] = R"(
:root{--fg:#1b1f23;--muted:#57606a;--line:#d0d7de;--bg:#fff;--clean:#1a7f37;--dirty:#9a6700;--card:#f6f8fa}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#8d96a0;--line:#30363d;--bg:#0d1117;--card:#161b22}}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
header,main{max-width:1100px;margin:0 auto;padding:12px 16px}header h1{font-size:20px;margin:0}
header p{margin:4px 0;color:var(--muted)}section{border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:12px 0;background:var(--card)}
h2{font-size:18px;margin:0 0 8px}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:8px 16px}
.k{color:var(--muted);font-size:13px}.fig{font-size:20px;font-variant-numeric:tabular-nums}.fig small{font-size:13px;color:var(--muted)}td .fig{font-size:inherit}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}th,td{text-align:left;padding:3px 6px;border-bottom:1px solid var(--line)}
.bar{position:relative;height:10px;border-radius:5px;background:linear-gradient(90deg,var(--clean),var(--dirty));margin:6px 0}
.bar i{position:absolute;top:-4px;width:4px;height:18px;background:var(--fg);border-radius:2px}
.scroll{overflow-x:auto}.share{display:inline-block;height:10px;background:var(--clean);border-radius:2px;vertical-align:middle}
svg{width:100%;min-width:600px;height:auto}svg text{fill:var(--muted);font-size:11px}.ok{color:var(--clean)}.bad{color:var(--dirty)}
)";

// Refresh and the charts: every 5 s the page fetches itself and swaps in the server-rendered <main>
// (one renderer for every figure, with or without JavaScript), then draws each route's chart from
// /v1/history.
constexpr char kScript[] = R"(
function chart(svg,points,route){
 const w=900,h=240,top=44,bottom=28,side=40;const models=JSON.parse(svg.dataset.models||'[]');
 const pts=[];for(const p of points){const r=p.routes.find(x=>x.route===route);if(r)pts.push({t:p.unix_seconds,ci:r.intensity_gco2_per_kwh,m:r.model,n:r.requests});}
 svg.setAttribute('data-points',String(pts.length));while(svg.firstChild)svg.removeChild(svg.firstChild);if(pts.length===0)return;
 const t0=pts[0].t,t1=Math.max(pts[pts.length-1].t,t0+1);const cmax=Math.max(1,...pts.map(p=>p.ci).filter(v=>v!=null));
 const rps=pts.map((p,i)=>i===0?0:Math.max(0,(p.n-pts[i-1].n)/Math.max(1e-9,p.t-pts[i-1].t)));const rmax=Math.max(1,...rps);
 const X=t=>side+(w-2*side)*(t-t0)/(t1-t0),Y=f=>h-bottom-(h-top-bottom)*f;
 const colour=m=>{const i=models.indexOf(m);return 'hsl('+(i<0?0:120*i/Math.max(1,models.length-1))+',60%,40%)';};
 const ns=svg.namespaceURI;const add=(tag,attrs,text)=>{const e=document.createElementNS(ns,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);if(text)e.textContent=text;svg.appendChild(e);return e;};
 models.forEach((m,i)=>{add('circle',{cx:side+130*i+4,cy:10,r:4,fill:colour(m)});add('text',{x:side+130*i+12,y:14},m);});
 pts.forEach((p,i)=>{const bh=Y(0)-Y(rps[i]/rmax);add('rect',{x:X(p.t)-1,y:Y(0)-bh,width:2,height:bh,fill:'#8c959f',opacity:0.5});});
 add('polyline',{points:pts.filter(p=>p.ci!=null).map(p=>X(p.t)+','+Y(p.ci/cmax)).join(' '),fill:'none',stroke:'#9a6700','stroke-width':2});
 pts.forEach(p=>add('circle',{class:'pt',cx:X(p.t),cy:30,r:3,fill:colour(p.m)}));
 add('line',{x1:side,x2:w-side,y1:Y(0),y2:Y(0),stroke:'#8c959f'});
 add('text',{x:side,y:h-8},new Date(t0*1000).toISOString().slice(11,19)+' UTC');
 add('text',{x:w/2-150,y:h-8},'model served (dots) · gCO2/kWh (line) · requests/s (bars)');
 add('text',{x:w-side,y:h-8,'text-anchor':'end'},new Date(t1*1000).toISOString().slice(11,19));
 add('text',{x:side-4,y:top+4,'text-anchor':'end'},cmax.toFixed(0));add('text',{x:w-2,y:top+4,'text-anchor':'end'},rmax.toFixed(1)+'/s');}
async function refresh(first){try{
 const [page,hist]=await Promise.all([first?null:fetch('/',{cache:'no-store'}).then(r=>r.text()),fetch('/v1/history',{cache:'no-store'}).then(r=>r.json())]);
 if(page){const fresh=new DOMParser().parseFromString(page,'text/html');document.querySelector('main').replaceWith(fresh.querySelector('main'));
  document.getElementById('updated').textContent=fresh.getElementById('updated').textContent;}
 for(const svg of document.querySelectorAll('svg[data-chart]'))chart(svg,hist.points,svg.dataset.chart);
 document.body.dataset.refreshed=String(Number(document.body.dataset.refreshed||0)+1);
}catch(e){document.getElementById('updated').textContent='refresh failed: '+e;}}
refresh(true);setInterval(refresh,5000);
)";

// The part of the page about one route.
void RenderRoute(const RoutingSnapshot& snapshot, const RouteView& route, std::string* html) {
  const std::string name = HtmlEscape(route.route->config.name);
  const selector::Pool& pool = route.pool();
  const selector::Decision& d = route.decision;
  const telemetry::RouteReport report = route.Report();
  const ClusterStatus& cluster = snapshot.clusters()[route.served_in().index];
  const SourceStatus& source = cluster.source;
  const double largest = report.counterfactual_grams.empty() ? NAN : report.counterfactual_grams[pool.most_accurate()];
  const std::string& model = pool[d.primary].name;
  absl::StrAppend(html, "<section><h2>Route <code>", name, "</code> <small class=\"k\">policy ",
                  HtmlEscape(route.route->policy->kind()), "</small></h2><div class=\"grid\">");

  absl::StrAppend(html, "<div><div class=\"k\">serving now</div><span class=\"fig\" data-route=\"", name,
                  "\" data-field=\"model\" data-value=\"", HtmlEscape(model), "\">", HtmlEscape(model), "</span>");
  if (snapshot.clusters().size() > 1) {
    const std::string cluster_name = HtmlEscape(cluster.upstream->name);
    absl::StrAppend(html, "<div class=\"k\">in <span data-route=\"", name, "\" data-field=\"cluster\" data-value=\"",
                    cluster_name, "\">", cluster_name, "</span></div>");
  }
  absl::StrAppend(html, "<div class=\"k\">because <span data-route=\"", name, "\" data-field=\"reason\" data-value=\"",
                  HtmlEscape(d.reason), "\">", HtmlEscape(d.reason), "</span>");
  for (const selector::ExplanationTerm& t : d.explanation) {
    absl::StrAppend(html, " · ", HtmlEscape(t.name), " ", absl::StrFormat("%.4g", t.value));
  }
  if (!route.policy_weights.empty()) {
    absl::StrAppend(html, " · shares moved by ", ToAbsl(telemetry::SpillReasonName(route.moved_by)));
  }
  absl::StrAppend(html, "</div></div>");

  absl::StrAppend(html, "<div><div class=\"k\">grid intensity (", HtmlEscape(source.source), " ", HtmlEscape(source.region),
                  ")</div>", Figure(route.route->config.name, "intensity", d.intensity ? d.intensity->gco2_per_kwh : NAN, "%.0f", "gCO2/kWh"));
  if (source.latest) {
    absl::StrAppend(html, "<div class=\"k\">", absl::StrFormat("%.0f", absl::ToDoubleMinutes(source.now - source.latest->at)),
                    " min old · ", ToAbsl(SourceStateName(source.counters.state)), "</div>");
  }
  if (d.bounds && d.intensity && d.bounds->high > d.bounds->low) {
    const double at = std::clamp((d.intensity->gco2_per_kwh - d.bounds->low) / (d.bounds->high - d.bounds->low), 0.0, 1.0);
    absl::StrAppend(html, "<div class=\"bar\" role=\"img\" aria-label=\"", absl::StrFormat("%.0f", 100 * at),
                    " % of the way from the window's low to its high\"><i style=\"left:calc(", absl::StrFormat("%.1f", 100 * at),
                    "% - 2px)\"></i></div><div class=\"k\">window ", absl::StrFormat("%.0f – %.0f", d.bounds->low, d.bounds->high),
                    " gCO2/kWh</div>");
  }
  absl::StrAppend(html, "</div>");

  absl::StrAppend(html, "<div><div class=\"k\">emitted</div>", Figure(route.route->config.name, "grams", report.grams, "%.4f", "g"),
                  "<div class=\"k\">", Figure(route.route->config.name, "inferences", static_cast<double>(report.items), "%.0f"),
                  " inferences</div></div>");
  absl::StrAppend(html, "<div><div class=\"k\">against always ", HtmlEscape(pool[route.route->config.baseline].name),
                  " (baseline)</div>", Figure(route.route->config.name, "extra_grams", report.extra_grams, "%+.4f", "g"),
                  "<div class=\"k\">against always ", HtmlEscape(pool[pool.most_accurate()].name), " ",
                  Figure(route.route->config.name, "grams_vs_largest", report.grams - largest, "%+.4f", "g"), "</div></div>");
  absl::StrAppend(html, "<div><div class=\"k\">mean top-1 error</div>",
                  Figure(route.route->config.name, "mean_error", report.items > 0 ? report.mean_error_percent : NAN, "%.3f", "%"),
                  "<div class=\"k\">carbon-emission efficiency ",
                  Figure(route.route->config.name, "efficiency", report.efficiency, "%.5f", "%/g"),
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
    const double served_share = report.items > 0 ? static_cast<double>(served) / static_cast<double>(report.items) : NAN;
    const int64_t limit = route.InFlightLimit(v);
    absl::StrAppend(html, "<tr><td>", variant, "</td><td><span class=\"share\" style=\"width:",
                    absl::StrFormat("%.0f", 60 * weight), "px\"></span> ",
                    Figure(route.route->config.name, absl::StrCat("weight_percent:", pool[v].name), 100 * weight, "%.1f", "%"),
                    "</td><td>", Figure(route.route->config.name, absl::StrCat("served:", pool[v].name), static_cast<double>(served), "%.0f"),
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
      "<title>carbon-sidecar</title><style>", kStyle, "</style></head><body data-refreshed=\"0\">",
      "<header><h1>carbon-sidecar</h1><p>Picks the model (and the cluster) for every inference call from the grid's "
      "carbon intensity. Updated <span id=\"updated\">",
      absl::FormatTime(absl::RFC3339_sec, in.now, absl::UTCTimeZone()), "</span> · ",
      "<a href=\"/metrics\">/metrics</a> · <a href=\"/v1/selection\">/v1/selection</a> · ",
      "<a href=\"/v1/history\">/v1/history</a> · <a href=\"/v1/config\">/v1/config</a></p></header><main>");
  for (const RouteView& route : snapshot.routes()) RenderRoute(snapshot, route, &html);
  RenderSources(snapshot, in, &html);
  absl::StrAppend(&html, "</main><script>", kScript, "</script></body></html>\n");
  return html;
}

}  // namespace carbon::sidecar
