#include "sidecar/status_page.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

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
  return absl::StrCat("<span class=\"fig\" data-route=\"", HtmlEscape(route), "\" data-field=\"", field,
                      "\" data-value=\"", std::isfinite(value) ? absl::StrFormat("%.17g", value) : "", "\">",
                      shown, unit.empty() ? "" : absl::StrCat("<small> ", unit, "</small>"), "</span>");
}

constexpr char kStyle[] = R"(
:root{--fg:#1b1f23;--muted:#57606a;--line:#d0d7de;--bg:#fff;--clean:#1a7f37;--dirty:#9a6700;--card:#f6f8fa}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#8d96a0;--line:#30363d;--bg:#0d1117;--card:#161b22}}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
header,main{max-width:1100px;margin:0 auto;padding:12px 16px}header h1{font-size:20px;margin:0}
header p{margin:4px 0;color:var(--muted)}section{border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:12px 0;background:var(--card)}
h2{font-size:18px;margin:0 0 8px}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:8px 16px}
.k{color:var(--muted);font-size:13px}.fig{font-size:20px;font-variant-numeric:tabular-nums}.fig small{font-size:13px;color:var(--muted)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}th,td{text-align:left;padding:3px 6px;border-bottom:1px solid var(--line)}
.bar{position:relative;height:10px;border-radius:5px;background:linear-gradient(90deg,var(--clean),var(--dirty));margin:6px 0}
.bar i{position:absolute;top:-4px;width:4px;height:18px;background:var(--fg);border-radius:2px}
.share{display:inline-block;height:10px;background:var(--clean);border-radius:2px;vertical-align:middle}
svg{width:100%;height:auto}svg text{fill:var(--muted);font-size:11px}.ok{color:var(--clean)}.bad{color:var(--dirty)}
)";

// Refresh (every 5 s) and the chart; the numbers are in the page without it.
constexpr char kScript[] = R"(
const fmt={g:v=>v.toFixed(4),pct:v=>v.toFixed(3),eff:v=>v.toFixed(5),ci:v=>v.toFixed(0),n:v=>String(v)};
function put(route,field,value,f){for(const el of document.querySelectorAll('[data-route="'+CSS.escape(route)+'"][data-field="'+field+'"]')){
 el.dataset.value=value==null?'':String(value);const unit=el.querySelector('small');el.textContent=value==null?'—':f(value);if(unit)el.appendChild(unit);}}
function chart(svg,points,route){
 const w=900,h=220,pad=36;const pts=[];for(const p of points){const r=p.routes.find(x=>x.route===route);if(r)pts.push({t:p.unix_seconds,ci:r.intensity_gco2_per_kwh,m:r.model,n:r.requests});}
 svg.setAttribute('data-points',String(pts.length));svg.innerHTML='';if(pts.length===0)return;
 const t0=pts[0].t,t1=Math.max(pts[pts.length-1].t,t0+1);const cis=pts.map(p=>p.ci).filter(v=>v!=null);const cmax=Math.max(1,...cis);
 const rps=pts.map((p,i)=>i===0?0:Math.max(0,(p.n-pts[i-1].n)/Math.max(1e-9,p.t-pts[i-1].t)));const rmax=Math.max(1,...rps);
 const models=[...new Set(pts.map(p=>p.m))];const X=t=>pad+(w-2*pad)*(t-t0)/(t1-t0);
 const ns=svg.namespaceURI;const add=(tag,attrs,text)=>{const e=document.createElementNS(ns,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);if(text)e.textContent=text;svg.appendChild(e);return e;};
 add('text',{x:2,y:12},'gCO2/kWh (line), requests/s (bars), model (dots)');
 pts.forEach((p,i)=>{const bh=(h-2*pad)*rps[i]/rmax;add('rect',{x:X(p.t)-1,y:h-pad-bh,width:2,height:bh,fill:'#8c959f',opacity:0.5});});
 add('polyline',{points:pts.filter(p=>p.ci!=null).map(p=>X(p.t)+','+(h-pad-(h-2*pad)*p.ci/cmax)).join(' '),fill:'none',stroke:'#9a6700','stroke-width':2});
 pts.forEach(p=>add('circle',{class:'pt',cx:X(p.t),cy:pad/2+8,r:3,fill:'hsl('+(120*models.indexOf(p.m)/Math.max(1,models.length-1))+',60%,40%)'}));
 add('text',{x:pad,y:h-8},new Date(t0*1000).toISOString().slice(11,19));add('text',{x:w-pad-50,y:h-8},new Date(t1*1000).toISOString().slice(11,19));
 add('text',{x:w-pad-60,y:pad},cmax.toFixed(0)+' g/kWh');add('text',{x:w-pad-60,y:pad+14},rmax.toFixed(1)+' req/s');
 models.forEach((m,i)=>add('text',{x:pad+110*i,y:pad/2-2,fill:'hsl('+(120*i/Math.max(1,models.length-1))+',60%,40%)'},m));}
async function refresh(){try{
 const [sel,hist]=await Promise.all([fetch('/v1/selection').then(r=>r.json()),fetch('/v1/history').then(r=>r.json())]);
 for(const r of sel.routes){put(r.route,'model',r.model,fmt.n);put(r.route,'reason',r.reason,fmt.n);put(r.route,'intensity',r.intensity_gco2_per_kwh,fmt.ci);
  put(r.route,'grams',r.ledger.grams,fmt.g);put(r.route,'extra_grams',r.ledger.extra_grams,fmt.g);put(r.route,'mean_error',r.ledger.mean_error_percent,fmt.pct);
  put(r.route,'efficiency',r.ledger.efficiency,fmt.eff);put(r.route,'inferences',r.ledger.inferences,fmt.n);
  for(const c of r.candidates)put(r.route,'weight:'+c.model,c.weight,v=>(100*v).toFixed(1)+' %');}
 for(const svg of document.querySelectorAll('svg[data-chart]'))chart(svg,hist.points,svg.dataset.chart);
 document.getElementById('updated').textContent=sel.generated_at;document.body.dataset.refreshed=String(Number(document.body.dataset.refreshed||0)+1);
}catch(e){document.getElementById('updated').textContent='refresh failed: '+e;}}
refresh();setInterval(refresh,5000);
)";

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
  for (const RouteView& route : snapshot.routes()) {
    const std::string& name = route.route->config.name;
    const selector::Pool& pool = route.pool();
    const selector::Decision& d = route.decision;
    const telemetry::RouteReport report = route.Report();
    const ClusterStatus& cluster = snapshot.clusters()[route.clusters.front().index];
    const SourceStatus& source = cluster.source;
    const double largest = report.counterfactual_grams.empty() ? NAN : report.counterfactual_grams[pool.most_accurate()];
    absl::StrAppend(&html, "<section><h2>Route <code>", HtmlEscape(name), "</code></h2><div class=\"grid\">");
    absl::StrAppend(&html, "<div><div class=\"k\">serving now</div>",
                    "<span class=\"fig\" data-route=\"", HtmlEscape(name), "\" data-field=\"model\" data-value=\"",
                    HtmlEscape(pool[d.primary].name), "\">", HtmlEscape(pool[d.primary].name), "</span>",
                    "<div class=\"k\">because <span data-route=\"", HtmlEscape(name), "\" data-field=\"reason\">",
                    HtmlEscape(d.reason), "</span>");
    for (const selector::ExplanationTerm& t : d.explanation) {
      absl::StrAppend(&html, " · ", HtmlEscape(t.name), " ", absl::StrFormat("%.4g", t.value));
    }
    absl::StrAppend(&html, "</div></div>");
    absl::StrAppend(&html, "<div><div class=\"k\">grid intensity (", HtmlEscape(source.source), " ",
                    HtmlEscape(source.region), snapshot.clusters().size() > 1 ? absl::StrCat(", cluster ", HtmlEscape(cluster.upstream->name)) : "",
                    ")</div>",
                    Figure(name, "intensity", d.intensity ? d.intensity->gco2_per_kwh : NAN, "%.0f", "gCO2/kWh"));
    if (source.latest) {
      absl::StrAppend(&html, "<div class=\"k\">", absl::StrFormat("%.0f", absl::ToDoubleMinutes(source.now - source.latest->at)),
                      " min old · ", SourceStateName(source.counters.state), "</div>");
    }
    if (d.bounds && d.intensity && d.bounds->high > d.bounds->low) {
      const double at = std::clamp((d.intensity->gco2_per_kwh - d.bounds->low) / (d.bounds->high - d.bounds->low), 0.0, 1.0);
      absl::StrAppend(&html, "<div class=\"bar\" role=\"img\" aria-label=\"where the intensity sits in its window\"><i style=\"left:calc(",
                      absl::StrFormat("%.1f", 100 * at), "% - 2px)\"></i></div><div class=\"k\">window ",
                      absl::StrFormat("%.0f – %.0f", d.bounds->low, d.bounds->high), " gCO2/kWh</div>");
    }
    absl::StrAppend(&html, "</div>");
    absl::StrAppend(&html, "<div><div class=\"k\">emitted</div>", Figure(name, "grams", report.grams, "%.4f", "g"),
                    "<div class=\"k\">", Figure(name, "inferences", static_cast<double>(report.items), "%.0f"),
                    " inferences</div></div>");
    absl::StrAppend(&html, "<div><div class=\"k\">against always ", HtmlEscape(pool[route.route->config.baseline].name),
                    " (baseline)</div>", Figure(name, "extra_grams", report.extra_grams, "%+.4f", "g"),
                    "<div class=\"k\">against always ", HtmlEscape(pool[pool.most_accurate()].name), ": ",
                    absl::StrFormat("%+.4f g", report.grams - largest), "</div></div>");
    absl::StrAppend(&html, "<div><div class=\"k\">mean top-1 error</div>",
                    Figure(name, "mean_error", report.items > 0 ? report.mean_error_percent : NAN, "%.3f", "%"),
                    "<div class=\"k\">carbon-emission efficiency ",
                    Figure(name, "efficiency", report.efficiency, "%.5f", "%/g"), "</div></div>");
    absl::StrAppend(&html, "</div><svg data-chart=\"", HtmlEscape(name), "\" data-points=\"0\" viewBox=\"0 0 900 220\" ",
                    "role=\"img\" aria-label=\"intensity, model and requests over the last hours\"></svg>");
    absl::StrAppend(&html, "<table><thead><tr><th>model</th><th>share now</th><th>ready</th><th>energy (mJ)</th>",
                    "<th>top-1 error (%)</th><th>served</th></tr></thead><tbody>");
    for (size_t v = 0; v < pool.size(); ++v) {
      const double w = d.WeightOf(v);
      absl::StrAppend(&html, "<tr><td>", HtmlEscape(pool[v].name), "</td><td><span class=\"share\" style=\"width:",
                      absl::StrFormat("%.0f", 60 * w), "px\"></span> <span data-route=\"", HtmlEscape(name),
                      "\" data-field=\"weight:", HtmlEscape(pool[v].name), "\" data-value=\"", absl::StrFormat("%.17g", w),
                      "\">", absl::StrFormat("%.1f %%", 100 * w), "</span></td><td>",
                      (route.ready >> v & 1) ? "<span class=\"ok\">ready</span>" : "<span class=\"bad\">not ready</span>",
                      "</td><td>", absl::StrFormat("%.1f", pool[v].energy_mj), "</td><td>",
                      absl::StrFormat("%.3f", pool[v].error_percent), "</td><td>", report.variants[v].items, "</td></tr>");
    }
    absl::StrAppend(&html, "</tbody></table></section>");
  }
  absl::StrAppend(&html, "<section><h2>Sources and config</h2><table><thead><tr><th>cluster</th><th>target</th>",
                  "<th>intensity source</th><th>state</th><th>reachable</th><th>last error</th></tr></thead><tbody>");
  for (const ClusterStatus& c : snapshot.clusters()) {
    absl::StrAppend(&html, "<tr><td>", HtmlEscape(c.upstream ? c.upstream->name : ""), "</td><td>",
                    HtmlEscape(c.upstream ? c.upstream->target : ""), "</td><td>", HtmlEscape(c.source.source), " ",
                    HtmlEscape(c.source.region), "</td><td>", SourceStateName(c.source.counters.state), "</td><td>",
                    !c.source.upstream_reachable ? "not asked" : *c.source.upstream_reachable ? "yes" : "<span class=\"bad\">no</span>",
                    "</td><td>", HtmlEscape(c.source.last_error), "</td></tr>");
  }
  absl::StrAppend(&html, "</tbody></table><p class=\"k\">Config reloads: ", in.reloads_ok, " succeeded, ",
                  in.reloads_failed, " failed", in.last_reload ? absl::StrCat(" · last success ",
                  absl::FormatTime(absl::RFC3339_sec, *in.last_reload, absl::UTCTimeZone())) : "",
                  "</p></section></main><script>", kScript, "</script></body></html>\n");
  return html;
}

}  // namespace carbon::sidecar
