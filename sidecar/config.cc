#include "sidecar/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "common/host_port.h"
#include "common/string_view_compat.h"
#include "sidecar/tls.h"
#include "yaml-cpp/yaml.h"

namespace carbon::sidecar {
namespace {

absl::Status ErrorAt(const std::string& file, const YAML::Mark& mark, absl::string_view message) {
  if (mark.is_null()) return absl::InvalidArgumentError(absl::StrCat(file, ": ", message));
  return absl::InvalidArgumentError(
      absl::StrCat(file, ":", mark.line + 1, ":", mark.column + 1, ": ", message));
}

std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Scalar: return absl::StrCat("'", node.Scalar(), "'");
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    default: return "an undefined value";
  }
}

// Reads one YAML mapping field by field, remembering which keys were read, so that unknown
// (misspelt) keys and duplicates are reported with their location rather than ignored.
class MapReader final : public ConfigBlock {
 public:
  MapReader(const YAML::Node& node, const std::string& file, std::string where, std::string base_dir = "")
      : node_(node), file_(file), where_(std::move(where)), base_dir_(std::move(base_dir)) {
    if (!node.IsMap()) {
      Fail(node, absl::StrCat(where_, " must be a mapping, got ", Describe(node)));
      return;
    }
    std::vector<std::string> seen;
    for (const auto& kv : node) {
      const std::string key = kv.first.Scalar();
      if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
        Fail(kv.first, absl::StrCat("duplicate key '", key, "' in ", where_));
        return;
      }
      seen.push_back(key);
    }
  }

  const absl::Status& status() const override { return status_; }
  const YAML::Node& node() const { return node_; }
  const std::string& file() const { return file_; }

  // The child node, or an undefined node (and an error if `required`).
  YAML::Node Get(std::string_view key_view, bool required) {
    const std::string key(key_view);
    allowed_.push_back(key);
    if (!status_.ok() || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    YAML::Node child = node_[key];
    if (!child.IsDefined() && required) {
      Fail(node_, absl::StrCat(where_, " is missing required key '", key, "'"));
    }
    return child;
  }

  bool String(std::string_view key, std::string* out, bool required = false) override {
    YAML::Node n = Get(key, required);
    if (!n.IsDefined() || !status_.ok()) return false;
    if (!n.IsScalar() || n.Scalar().empty()) {
      return Fail(n, absl::StrCat(Path(key), " must be a non-empty string, got ", Describe(n)));
    }
    *out = n.Scalar();
    return true;
  }

  bool Number(std::string_view key, double* out, bool required = false) override {
    YAML::Node n = Get(key, required);
    if (!n.IsDefined() || !status_.ok()) return false;
    double v;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, v) || !std::isfinite(v)) {
      return Fail(n, absl::StrCat(Path(key), " must be a finite number, got ", Describe(n)));
    }
    *out = v;
    return true;
  }

  bool Integer(std::string_view key, int64_t* out, bool required = false) override {
    YAML::Node n = Get(key, required);
    if (!n.IsDefined() || !status_.ok()) return false;
    int64_t v;
    if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, v)) {
      return Fail(n, absl::StrCat(Path(key), " must be a whole number, got ", Describe(n)));
    }
    *out = v;
    return true;
  }

  bool Bool(std::string_view key, bool* out) override {
    YAML::Node n = Get(key, false);
    if (!n.IsDefined() || !status_.ok()) return false;
    bool v;
    if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v)) {
      return Fail(n, absl::StrCat(Path(key), " must be true or false, got ", Describe(n)));
    }
    *out = v;
    return true;
  }

  bool Duration(std::string_view key, absl::Duration* out, bool allow_zero) override {
    YAML::Node n = Get(key, false);
    if (!n.IsDefined() || !status_.ok()) return false;
    absl::Duration d;
    if (!n.IsScalar() || !absl::ParseDuration(n.Scalar(), &d) || d < absl::ZeroDuration() ||
        d == absl::InfiniteDuration() || (!allow_zero && d == absl::ZeroDuration())) {
      return Fail(n, absl::StrCat(Path(key), " must be a ", allow_zero ? "" : "positive ",
                                  "duration such as 30s, 5m or 24h, got ", Describe(n)));
    }
    *out = d;
    return true;
  }

  bool Time(std::string_view key, std::optional<absl::Time>* out) override {
    YAML::Node n = Get(key, false);
    if (!n.IsDefined() || !status_.ok()) return false;
    absl::Time t;
    std::string err;
    if (!n.IsScalar() || !absl::ParseTime(absl::RFC3339_full, n.Scalar(), &t, &err)) {
      return Fail(n, absl::StrCat(Path(key), " must be an RFC 3339 time such as ",
                                  "2023-06-01T00:00:00Z, got ", Describe(n)));
    }
    *out = t;
    return true;
  }

  bool Blocks(std::string_view key, std::vector<std::unique_ptr<ConfigBlock>>* out, bool required) override {
    YAML::Node list = Get(key, required);
    if (!list.IsDefined() || !status_.ok()) return false;
    if (!list.IsSequence() || list.size() == 0) {
      return Fail(list, absl::StrCat(Path(key), " must be a non-empty list of mappings"));
    }
    for (size_t i = 0; i < list.size(); ++i) {
      out->push_back(std::make_unique<MapReader>(list[i], file_, absl::StrCat(Path(key), "[", i, "]"), base_dir_));
    }
    return true;
  }

  bool Fail(std::string_view key, std::string_view message) override {
    const YAML::Node at = key.empty() || !node_.IsMap() ? YAML::Node(YAML::NodeType::Undefined) : node_[std::string(key)];
    return Fail(at.IsDefined() ? at : node_, message);
  }

  bool FailWith(const absl::Status& located) override {
    if (status_.ok()) status_ = located;
    return false;
  }

  // Reports keys that no getter asked for.
  absl::Status Finish() override {
    if (!status_.ok() || !node_.IsMap()) return status_;
    for (const auto& kv : node_) {
      const std::string key = kv.first.Scalar();
      if (std::find(allowed_.begin(), allowed_.end(), key) == allowed_.end()) {
        return ErrorAt(file_, kv.first.Mark(),
                       absl::StrCat("unknown key '", key, "' in ", where_, " (known keys: ",
                                    absl::StrJoin(allowed_, ", "), ")"));
      }
    }
    return status_;
  }

  bool Fail(const YAML::Node& at, std::string_view message) {
    if (status_.ok()) status_ = ErrorAt(file_, at.Mark(), ToAbsl(message));
    return false;
  }

  std::string Path(std::string_view key) const override {
    return where_ == "the config" ? std::string(key) : absl::StrCat(where_, ".", ToAbsl(key));
  }

  std::string Resolve(const std::string& path) const override;

 private:
  YAML::Node node_;
  const std::string& file_;
  std::string where_;
  std::string base_dir_;
  std::vector<std::string> allowed_;
  absl::Status status_;
};

absl::StatusOr<YAML::Node> ParseYamlFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  std::stringstream text;
  text << in.rdbuf();
  try {
    return YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    return ErrorAt(path, e.mark, absl::StrCat("invalid YAML: ", e.msg));
  }
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (std::filesystem::path(base_dir) / path).lexically_normal().string();
}

std::string MapReader::Resolve(const std::string& path) const { return sidecar::Resolve(base_dir_, path); }

absl::StatusOr<selector::Pool> ReadPool(const YAML::Node& variants_node, const std::string& file,
                                        const std::string& where) {
  if (!variants_node.IsSequence() || variants_node.size() == 0) {
    return ErrorAt(file, variants_node.Mark(),
                   absl::StrCat(where, " must be a non-empty list of variants"));
  }
  std::vector<selector::Variant> variants;
  for (size_t i = 0; i < variants_node.size(); ++i) {
    MapReader v(variants_node[i], file, absl::StrCat(where, "[", i, "]"));
    selector::Variant variant;
    v.String("name", &variant.name, true);
    v.Number("energy_mj", &variant.energy_mj, true);
    v.Number("error_percent", &variant.error_percent, true);
    if (auto s = v.Finish(); !s.ok()) return s;
    variants.push_back(variant);
  }
  auto pool = selector::Pool::Create(variants);
  if (!pool.ok()) return ErrorAt(file, variants_node.Mark(), pool.status().message());
  return pool;
}

absl::StatusOr<selector::Pool> ReadPoolDocument(const YAML::Node& root, const std::string& file) {
  MapReader top(root, file, "the pool file");
  std::string ignored;
  top.String("name", &ignored);
  top.String("source", &ignored);
  YAML::Node variants = top.Get("variants", true);
  if (auto s = top.Finish(); !s.ok()) return s;
  return ReadPool(variants, file, "variants");
}

// A `tls:` block of the listener (`tls`) or of the upstream (`upstream.tls`); the files are checked
// now, and a problem with them is reported at the block.
absl::Status ReadTls(const YAML::Node& node, const std::string& file, const std::string& base_dir,
                     const std::string& where, TlsSide side, TlsConfig* out) {
  MapReader t(node, file, where);
  t.String("cert_file", &out->cert_file);
  t.String("key_file", &out->key_file);
  t.String(side == TlsSide::kListener ? "client_ca_file" : "ca_file", &out->ca_file);
  if (side == TlsSide::kUpstream) t.String("server_name", &out->server_name);
  if (t.Duration("refresh_interval", &out->refresh_interval, false) && out->refresh_interval < absl::Seconds(1)) {
    t.Fail(node["refresh_interval"], absl::StrCat(where, ".refresh_interval must be at least 1s"));
  }
  if (auto s = t.Finish(); !s.ok()) return s;
  for (std::string* path : {&out->cert_file, &out->key_file, &out->ca_file}) *path = Resolve(base_dir, *path);
  if (absl::Status s = CheckTlsFiles(*out, side); !s.ok()) {
    return ErrorAt(file, node.Mark(), absl::StrCat(where, ": ", s.message()));
  }
  return absl::OkStatus();
}

absl::Status ReadIntensity(MapReader& m, IntensityConfig* out) {
  m.Duration("refresh", &out->refresh, /*allow_zero=*/false);
  m.Duration("max_backoff", &out->max_backoff, false);
  m.Duration("stale_after", &out->stale_after, false);
  m.Duration("window", &out->window, false);
  m.Bool("include_forecast", &out->include_forecast);
  m.Duration("forecast_horizon", &out->forecast_horizon, false);
  YAML::Node bounds = m.Get("window_bounds", false);
  if (!m.status().ok()) return m.status();
  if (bounds.IsDefined()) {
    MapReader b(bounds, m.file(), "intensity.window_bounds");
    selector::WindowBounds wb;
    b.Number("low", &wb.low, true);
    b.Number("high", &wb.high, true);
    if (auto s = b.Finish(); !s.ok()) return s;
    if (!(wb.high > wb.low)) return ErrorAt(m.file(), bounds.Mark(), "intensity.window_bounds: high must exceed low");
    out->fixed_bounds = wb;
  }
  // The provider's own keys sit in the same mapping: its reader asks for them, so that Finish
  // knows every key that belongs.
  out->provider = telemetry::ReadProviderSpec(m);
  return m.Finish();
}

// routes[].energy: `source` names the meter (or `table`), whose reader takes its own keys; the
// calibration's keys are common to every meter.
absl::Status ReadEnergy(const YAML::Node& node, size_t index, const std::string& file, telemetry::EnergyCalibration* out) {
  MapReader e(node, file, absl::StrCat("routes[", index, "].energy"));
  std::string source = "table";
  e.String("source", &source);
  e.Duration("interval", &out->interval, /*allow_zero=*/false);
  e.Duration("half_life", &out->half_life, /*allow_zero=*/false);
  e.Integer("max_intervals", &out->max_intervals);
  e.Number("min_inferences", &out->min_inferences);
  e.Number("max_relative_error", &out->max_relative_error);
  YAML::Node devices = e.Get("devices", false);
  if (!e.ok()) return e.status();
  if (source != "table") {
    std::vector<absl::string_view> known = {"table"};
    for (const telemetry::EnergyMeterRegistration& m : telemetry::RegisteredEnergyMeters()) {
      known.push_back(ToAbsl(m.kind));
      if (m.kind == source) out->meter = m.read(e);
    }
    if (out->meter == nullptr && e.ok()) {
      e.Fail("source", absl::StrCat(e.Path("source"), " '", source, "' is not known (known sources: ",
                                    absl::StrJoin(known, ", "), ")"));
    }
  }
  if (auto s = e.Finish(); !s.ok()) return s;
  const auto fail = [&](const char* key, std::string_view message) {
    return ErrorAt(file, node[key].Mark(), absl::StrCat("routes[", index, "].energy.", key, " ", ToAbsl(message)));
  };
  if (out->max_intervals < 3) return fail("max_intervals", "must be at least 3");
  if (out->min_inferences < 0) return fail("min_inferences", "must not be negative");
  if (!(out->max_relative_error > 0)) return fail("max_relative_error", "must be positive (0.1: ±10 %)");
  if (devices.IsDefined()) {
    if (!devices.IsSequence() || devices.size() == 0) return fail("devices", "must be a non-empty list of device ids");
    for (const YAML::Node& d : devices) {
      if (!d.IsScalar() || d.Scalar().empty()) {
        return ErrorAt(file, d.Mark(), absl::StrCat("routes[", index, "].energy.devices must hold device ids (strings)"));
      }
      out->devices.push_back(d.Scalar());
    }
  }
  if (out->meter == nullptr && (devices.IsDefined() || node["interval"].IsDefined())) {
    return ErrorAt(file, node.Mark(),
                   absl::StrCat("routes[", index, "].energy: source 'table' reads no meter; interval and devices "
                                "need a meter (triton-metrics, dcgm-exporter or prometheus)"));
  }
  return absl::OkStatus();
}

absl::Status ReadRoute(const YAML::Node& node, size_t index, const std::string& file, const std::string& base_dir,
                       absl::Duration intensity_refresh, const std::vector<ClusterConfig>& clusters,
                       RouteConfig* out) {
  MapReader r(node, file, absl::StrCat("routes[", index, "]"));
  r.String("name", &out->name, true);
  std::string pool_file;
  const bool has_pool_file = r.String("pool", &pool_file);
  YAML::Node inline_variants = r.Get("variants", false);
  std::string baseline, default_variant;
  r.String("baseline", &baseline, true);
  r.String("default", &default_variant, true);
  r.Duration("min_dwell", &out->min_dwell, /*allow_zero=*/true);
  r.Duration("ramp", &out->ramp, /*allow_zero=*/true);
  r.Bool("batch_dimension", &out->batch_dimension);
  YAML::Node policy = r.Get("policy", false);
  YAML::Node max_in_flight = r.Get("max_in_flight", false);
  YAML::Node slo = r.Get("slo", false);
  YAML::Node energy = r.Get("energy", false);
  YAML::Node route_clusters = r.Get("clusters", false);
  absl::Duration budget;
  if (r.Duration("latency_budget", &budget, /*allow_zero=*/false)) out->latency_budget = budget;
  r.Bool("failover", &out->failover);
  if (auto s = r.Finish(); !s.ok()) return s;
  if (route_clusters.IsDefined() && clusters.empty()) {
    return ErrorAt(file, route_clusters.Mark(),
                   absl::StrCat("routes[", index, "].clusters names clusters, but the config lists none (top-level 'clusters:')"));
  }
  if (route_clusters.IsDefined()) {
    const std::string where = absl::StrCat("routes[", index, "].clusters");
    if (!route_clusters.IsSequence() || route_clusters.size() == 0) {
      return ErrorAt(file, route_clusters.Mark(), absl::StrCat(where, " must be a non-empty list of cluster names"));
    }
    std::vector<std::string> known;
    for (const ClusterConfig& c : clusters) known.push_back(c.name);
    for (const YAML::Node& n : route_clusters) {
      const auto found = std::find(known.begin(), known.end(), n.IsScalar() ? n.Scalar() : "");
      if (!n.IsScalar() || found == known.end()) {
        return ErrorAt(file, n.Mark(), absl::StrCat(where, ": ", Describe(n), " is not a cluster (",
                                                    absl::StrJoin(known, ", "), ")"));
      }
      const size_t c = static_cast<size_t>(found - known.begin());
      if (std::find(out->clusters.begin(), out->clusters.end(), c) != out->clusters.end()) {
        return ErrorAt(file, n.Mark(), absl::StrCat(where, ": cluster '", n.Scalar(), "' is listed twice"));
      }
      out->clusters.push_back(c);
    }
  } else {
    for (size_t c = 0; c < clusters.size(); ++c) out->clusters.push_back(c);
  }
  if (energy.IsDefined()) {
    if (auto s = ReadEnergy(energy, index, file, &out->energy); !s.ok()) return s;
  }
  if (slo.IsDefined()) {
    MapReader o(slo, file, absl::StrCat("routes[", index, "].slo"));
    selector::LatencySlo read;
    o.Duration("latency_p99", &read.latency_p99, /*allow_zero=*/false);
    o.Duration("window", &read.window, /*allow_zero=*/false);
    if (auto s = o.Finish(); !s.ok()) return s;
    if (!slo["latency_p99"].IsDefined()) {
      return ErrorAt(file, slo.Mark(), absl::StrCat("routes[", index, "].slo is missing required key 'latency_p99'"));
    }
    if (read.window < absl::Seconds(1)) {
      return ErrorAt(file, slo["window"].Mark(),
                     absl::StrCat("routes[", index, "].slo.window must be at least 1s: a shorter one holds too "
                                  "few calls for a 99th percentile"));
    }
    out->slo = read;
  }

  if (has_pool_file == inline_variants.IsDefined()) {
    return ErrorAt(file, node.Mark(),
                   absl::StrCat("routes[", index, "] needs exactly one of 'pool' (a file) or ",
                                "'variants' (inline)"));
  }
  if (has_pool_file) {
    out->pool_source = Resolve(base_dir, pool_file);
    auto pool = LoadPoolFile(out->pool_source);
    if (!pool.ok()) {
      return ErrorAt(file, node["pool"].Mark(),
                     absl::StrCat("routes[", index, "].pool: ", pool.status().message()));
    }
    out->pool = std::make_shared<const selector::Pool>(*std::move(pool));
  } else {
    out->pool_source = "inline";
    auto pool = ReadPool(inline_variants, file, absl::StrCat("routes[", index, "].variants"));
    if (!pool.ok()) return pool.status();
    out->pool = std::make_shared<const selector::Pool>(*std::move(pool));
  }
  std::vector<std::string> names;
  for (const auto& v : out->pool->variants()) names.push_back(v.name);
  const auto lookup = [&](const std::string& key, const std::string& name, size_t* index_out) {
    auto i = out->pool->IndexOf(name);
    if (!i) {
      return ErrorAt(file, node[key].Mark(),
                     absl::StrCat("routes[", index, "].", key, " '", name,
                                  "' is not a variant of the pool (", absl::StrJoin(names, ", "),
                                  ")"));
    }
    *index_out = *i;
    return absl::OkStatus();
  };
  if (auto s = lookup("baseline", baseline, &out->baseline); !s.ok()) return s;
  if (auto s = lookup("default", default_variant, &out->default_variant); !s.ok()) return s;
  if (max_in_flight.IsDefined()) {
    const std::string where = absl::StrCat("routes[", index, "].max_in_flight");
    if (!max_in_flight.IsMap()) {
      return ErrorAt(file, max_in_flight.Mark(),
                     absl::StrCat(where, " must map variant names to call limits, e.g. { resnet152: 8 }"));
    }
    out->max_in_flight.assign(out->pool->size(), 0);
    for (const auto& kv : max_in_flight) {
      const std::string name = kv.first.as<std::string>();
      const std::optional<size_t> v = out->pool->IndexOf(name);
      if (!v) {
        return ErrorAt(file, kv.first.Mark(),
                       absl::StrCat(where, ": '", name, "' is not a variant of the pool (", absl::StrJoin(names, ", "),
                                    ")"));
      }
      int64_t limit = 0;
      if (!YAML::convert<int64_t>::decode(kv.second, limit) || limit < 1) {
        return ErrorAt(file, kv.second.Mark(),
                       absl::StrCat(where, ".", name, " must be a whole number of calls, at least 1"));
      }
      out->max_in_flight[*v] = limit;
    }
  }
  // Read after the pool: a target is checked against the variants it can use.
  out->policy = selector::DefaultPolicySpec();
  if (policy.IsDefined()) {
    MapReader p(policy, file, absl::StrCat("routes[", index, "].policy"), base_dir);
    out->policy = selector::ReadPolicySpec(p, {*out->pool, intensity_refresh});
    if (auto s = p.Finish(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// `clusters:`, or the one cluster `upstream` and `intensity` make when none are listed.
absl::Status ReadClusters(const YAML::Node& node, const std::string& file, const std::string& base_dir,
                          SidecarConfig* config) {
  if (!node.IsDefined()) return absl::OkStatus();  // WithClusters makes the one of `upstream`
  if (!node.IsSequence() || node.size() == 0) {
    return ErrorAt(file, node.Mark(), "clusters must be a non-empty list of clusters (name, target, intensity)");
  }
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string where = absl::StrCat("clusters[", i, "]");
    MapReader c(node[i], file, where);
    ClusterConfig cluster;
    cluster.intensity = config->intensity;
    c.String("name", &cluster.name, true);
    if (c.String("target", &cluster.target, true) && !ParseHostPort(cluster.target).ok()) {
      c.Fail("target", absl::StrCat(where, ".target must be host:port, got '", cluster.target, "'"));
    }
    absl::Duration rtt;
    if (c.Duration("rtt", &rtt, /*allow_zero=*/true)) cluster.rtt = rtt;
    double stale = 0;
    if (c.Number("stale_intensity", &stale)) {
      if (stale < 0) c.Fail("stale_intensity", absl::StrCat(where, ".stale_intensity must not be negative (gCO2/kWh)"));
      cluster.stale_intensity = stale;
    }
    if (c.Integer("max_in_flight", &cluster.max_in_flight) && cluster.max_in_flight < 1) {
      c.Fail("max_in_flight", absl::StrCat(where, ".max_in_flight must be a whole number of calls, at least 1"));
    }
    YAML::Node tls = c.Get("tls", false);
    YAML::Node intensity = c.Get("intensity", false);
    if (auto s = c.Finish(); !s.ok()) return s;
    for (const ClusterConfig& other : config->clusters) {
      if (other.name == cluster.name) {
        return ErrorAt(file, node[i]["name"].Mark(), absl::StrCat("cluster name '", cluster.name, "' is used twice"));
      }
    }
    if (tls.IsDefined()) {
      cluster.tls.emplace();
      if (auto s = ReadTls(tls, file, base_dir, where + ".tls", TlsSide::kUpstream, &*cluster.tls); !s.ok()) return s;
    }
    if (intensity.IsDefined()) {
      cluster.intensity = IntensityConfig{};
      MapReader m(intensity, file, where + ".intensity", base_dir);
      if (auto s = ReadIntensity(m, &cluster.intensity); !s.ok()) return s;
    }
    config->clusters.push_back(std::move(cluster));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<selector::Pool> LoadPoolFile(const std::string& path) {
  auto root = ParseYamlFile(path);
  if (!root.ok()) return root.status();
  try {
    return ReadPoolDocument(*root, path);
  } catch (const YAML::Exception& e) {
    return ErrorAt(path, e.mark, e.msg);
  }
}

// Below this a busy sidecar would reset its own healthy streams.
constexpr int64_t kMinMemoryLimitBytes = int64_t{16} * 1024 * 1024;

absl::StatusOr<SidecarConfig> LoadConfig(const std::string& path) {
  auto root = ParseYamlFile(path);
  if (!root.ok()) return root.status();
  const std::string base_dir = std::filesystem::path(path).parent_path().string();
  SidecarConfig config;
  config.path = path;
  try {
    MapReader top(*root, path, "the config");
    top.String("listen", &config.listen);
    top.Duration("drain_timeout", &config.drain_timeout, /*allow_zero=*/true);
    if (top.Integer("memory_limit_bytes", &config.memory_limit_bytes) && config.memory_limit_bytes != 0 &&
        config.memory_limit_bytes < kMinMemoryLimitBytes) {
      return ErrorAt(path, (*root)["memory_limit_bytes"].Mark(),
                     absl::StrCat("memory_limit_bytes must be 0 (no limit) or at least ", kMinMemoryLimitBytes));
    }
    std::string data_plane = "grpc";
    if (top.String("data_plane", &data_plane) && data_plane != "grpc" && data_plane != "h2") {
      return ErrorAt(path, (*root)["data_plane"].Mark(),
                     absl::StrCat("data_plane must be grpc or h2, got '", data_plane, "'"));
    }
    config.data_plane = data_plane == "h2" ? SidecarConfig::DataPlane::kH2 : SidecarConfig::DataPlane::kGrpc;
    if (top.Integer("data_plane_threads", &config.data_plane_threads) &&
        (config.data_plane_threads < 0 || config.data_plane_threads > 256)) {
      return ErrorAt(path, (*root)["data_plane_threads"].Mark(),
                     "data_plane_threads must lie between 0 (one per core) and 256");
    }
    // HTTP/2 allows windows up to 2^31 - 1 bytes (RFC 9113 §6.9.1); below 64 KiB a 16 KiB frame
    // could not keep a link busy.
    constexpr int64_t kMinWindow = 65535, kMaxWindow = (int64_t{1} << 31) - 1;
    if (top.Integer("data_plane_stream_window_bytes", &config.data_plane_stream_window_bytes) &&
        (config.data_plane_stream_window_bytes < kMinWindow || config.data_plane_stream_window_bytes > kMaxWindow)) {
      return ErrorAt(path, (*root)["data_plane_stream_window_bytes"].Mark(),
                     absl::StrCat("data_plane_stream_window_bytes must lie between ", kMinWindow, " and ", kMaxWindow));
    }
    if (top.Integer("data_plane_connection_window_bytes", &config.data_plane_connection_window_bytes) &&
        (config.data_plane_connection_window_bytes < config.data_plane_stream_window_bytes ||
         config.data_plane_connection_window_bytes > kMaxWindow)) {
      return ErrorAt(path, (*root)["data_plane_connection_window_bytes"].Mark(),
                     absl::StrCat("data_plane_connection_window_bytes must lie between the stream window (",
                                  config.data_plane_stream_window_bytes, ") and ", kMaxWindow));
    }
    if (top.Integer("data_plane_upstream_max_concurrent_streams", &config.data_plane_upstream_max_concurrent_streams) &&
        (config.data_plane_upstream_max_concurrent_streams < 0 ||
         config.data_plane_upstream_max_concurrent_streams > kMaxWindow)) {
      return ErrorAt(path, (*root)["data_plane_upstream_max_concurrent_streams"].Mark(),
                     absl::StrCat("data_plane_upstream_max_concurrent_streams must lie between 0 (no limit) and ",
                                  kMaxWindow));
    }
    top.Duration("data_plane_upstream_idle_timeout", &config.data_plane_upstream_idle_timeout, /*allow_zero=*/true);
    YAML::Node admin = top.Get("admin", false);
    YAML::Node tls = top.Get("tls", false);
    YAML::Node upstream = top.Get("upstream", true);
    YAML::Node intensity = top.Get("intensity", true);
    YAML::Node routes = top.Get("routes", true);
    YAML::Node accounting = top.Get("accounting", false);
    YAML::Node clusters = top.Get("clusters", false);
    if (auto s = top.Finish(); !s.ok()) return s;
    config.clusters_listed = clusters.IsDefined();

    if (accounting.IsDefined()) {
      MapReader a(accounting, path, "accounting");
      a.Number("pue", &config.accounting.pue);
      a.Number("embodied_kg", &config.accounting.embodied_kg);
      a.Duration("lifespan", &config.accounting.lifespan, /*allow_zero=*/false);
      a.Number("share", &config.accounting.share);
      if (auto s = a.Finish(); !s.ok()) return s;
      if (config.accounting.pue < 1) {
        return ErrorAt(path, accounting["pue"].Mark(), "accounting.pue must be at least 1 (facility energy over IT energy)");
      }
      if (config.accounting.embodied_kg < 0) {
        return ErrorAt(path, accounting["embodied_kg"].Mark(), "accounting.embodied_kg must not be negative");
      }
      if (!(config.accounting.share > 0 && config.accounting.share <= 1)) {
        return ErrorAt(path, accounting["share"].Mark(), "accounting.share must be in (0, 1]: the share of the hardware reserved");
      }
    }

    if (admin.IsDefined()) {
      MapReader a(admin, path, "admin");
      if (a.String("listen", &config.admin_listen, true) && !ParseHostPort(config.admin_listen).ok()) {
        return ErrorAt(path, admin["listen"].Mark(),
                       absl::StrCat("admin.listen must be host:port, such as 127.0.0.1:9464, got '",
                                    config.admin_listen, "'"));
      }
      if (a.Duration("history_interval", &config.history_interval, /*allow_zero=*/false) &&
          config.history_interval < absl::Milliseconds(100)) {
        a.Fail("history_interval", "admin.history_interval must be at least 100ms");
      }
      if (a.Integer("history_points", &config.history_points) &&
          (config.history_points < 1 || config.history_points > 100000)) {
        a.Fail("history_points", "admin.history_points must lie between 1 and 100000");
      }
      if (auto s = a.Finish(); !s.ok()) return s;
    }

    if (tls.IsDefined()) {
      config.tls.emplace();
      if (auto s = ReadTls(tls, path, base_dir, "tls", TlsSide::kListener, &*config.tls); !s.ok()) return s;
    }

    MapReader u(upstream, path, "upstream");
    // With clusters listed, each names its own target; `upstream` keeps what they share.
    u.String("target", &config.upstream.target, !config.clusters_listed);
    if (config.clusters_listed && !config.upstream.target.empty()) {
      return ErrorAt(path, upstream["target"].Mark(),
                     "upstream.target and clusters: name the targets in one place (each cluster has its own)");
    }
    if (u.Integer("max_message_bytes", &config.upstream.max_message_bytes) &&
        (config.upstream.max_message_bytes <= 0 ||
         config.upstream.max_message_bytes > int64_t{2147483647})) {
      return ErrorAt(path, upstream["max_message_bytes"].Mark(),
                     "upstream.max_message_bytes must lie between 1 and 2147483647");
    }
    u.Duration("readiness_interval", &config.upstream.readiness_interval, /*allow_zero=*/true);
    YAML::Node upstream_tls = u.Get("tls", false);
    if (auto s = u.Finish(); !s.ok()) return s;
    if (upstream_tls.IsDefined()) {
      config.upstream.tls.emplace();
      if (auto s = ReadTls(upstream_tls, path, base_dir, "upstream.tls", TlsSide::kUpstream, &*config.upstream.tls);
          !s.ok()) {
        return s;
      }
    }

    MapReader i(intensity, path, "intensity", base_dir);
    if (auto s = ReadIntensity(i, &config.intensity); !s.ok()) return s;

    if (auto s = ReadClusters(clusters, path, base_dir, &config); !s.ok()) return s;

    if (!routes.IsSequence() || routes.size() == 0) {
      return ErrorAt(path, routes.Mark(), "routes must be a non-empty list");
    }
    for (size_t r = 0; r < routes.size(); ++r) {
      RouteConfig route;
      if (auto s = ReadRoute(routes[r], r, path, base_dir, config.intensity.refresh, config.clusters, &route); !s.ok()) return s;
      for (const RouteConfig& other : config.routes) {
        if (other.name == route.name) {
          return ErrorAt(path, routes[r]["name"].Mark(),
                         absl::StrCat("route name '", route.name, "' is used twice"));
        }
      }
      config.routes.push_back(std::move(route));
    }
  } catch (const YAML::Exception& e) {
    return ErrorAt(path, e.mark, e.msg);
  }
  return WithClusters(std::move(config));
}

SidecarConfig WithClusters(SidecarConfig config) {
  if (config.clusters.empty()) {
    config.clusters_listed = false;
    ClusterConfig home;
    home.name = "default";
    home.target = config.upstream.target;
    home.tls = config.upstream.tls;
    home.intensity = config.intensity;
    config.clusters.push_back(std::move(home));
  }
  for (RouteConfig& route : config.routes) {
    if (!route.clusters.empty()) continue;
    for (size_t c = 0; c < config.clusters.size(); ++c) route.clusters.push_back(c);
  }
  return config;
}

// A restart-only setting by its key and the member that holds it.
#define CARBON_RESTART_ONLY(key, member)                                                           \
  RestartOnlySetting {                                                                             \
    key, [](const SidecarConfig& a, const SidecarConfig& b) { return a.member == b.member; },      \
        [](const SidecarConfig& running, SidecarConfig* next) { next->member = running.member; }   \
  }

const RestartOnlySetting kRestartOnlySettings[13] = {
    CARBON_RESTART_ONLY("listen", listen),
    CARBON_RESTART_ONLY("data_plane", data_plane),
    CARBON_RESTART_ONLY("data_plane_threads", data_plane_threads),
    CARBON_RESTART_ONLY("data_plane_stream_window_bytes", data_plane_stream_window_bytes),
    CARBON_RESTART_ONLY("data_plane_connection_window_bytes", data_plane_connection_window_bytes),
    CARBON_RESTART_ONLY("data_plane_upstream_max_concurrent_streams", data_plane_upstream_max_concurrent_streams),
    CARBON_RESTART_ONLY("data_plane_upstream_idle_timeout", data_plane_upstream_idle_timeout),
    RestartOnlySetting{"admin",
                       [](const SidecarConfig& a, const SidecarConfig& b) {
                         return a.admin_listen == b.admin_listen && a.history_interval == b.history_interval &&
                                a.history_points == b.history_points;
                       },
                       [](const SidecarConfig& running, SidecarConfig* next) {
                         next->admin_listen = running.admin_listen;
                         next->history_interval = running.history_interval;
                         next->history_points = running.history_points;
                       }},
    CARBON_RESTART_ONLY("tls", tls),
    // The one cluster made of `upstream` keeps its target until a restart; listed clusters are
    // reloaded like routes.
    RestartOnlySetting{"upstream.target",
                       [](const SidecarConfig& a, const SidecarConfig& b) {
                         return a.clusters_listed || b.clusters_listed || a.upstream.target == b.upstream.target;
                       },
                       [](const SidecarConfig& running, SidecarConfig* next) {
                         if (!running.clusters_listed && !next->clusters_listed) next->upstream.target = running.upstream.target;
                       }},
    CARBON_RESTART_ONLY("upstream.max_message_bytes", upstream.max_message_bytes),
    RestartOnlySetting{"upstream.tls",
                       [](const SidecarConfig& a, const SidecarConfig& b) {
                         return a.clusters_listed || b.clusters_listed || a.upstream.tls == b.upstream.tls;
                       },
                       [](const SidecarConfig& running, SidecarConfig* next) {
                         if (!running.clusters_listed && !next->clusters_listed) next->upstream.tls = running.upstream.tls;
                       }},
    CARBON_RESTART_ONLY("memory_limit_bytes", memory_limit_bytes),
};
#undef CARBON_RESTART_ONLY

std::string_view DataPlaneName(SidecarConfig::DataPlane plane) {
  return plane == SidecarConfig::DataPlane::kH2 ? "h2" : "grpc";
}

SidecarConfig ConfigForReload(const SidecarConfig& running, const SidecarConfig& next,
                              std::vector<std::string>* changed) {
  SidecarConfig applied = next;
  for (const RestartOnlySetting& setting : kRestartOnlySettings) {
    if (!setting.same(running, next)) changed->emplace_back(setting.key);
    setting.keep(running, &applied);
  }
  if (!applied.clusters_listed && !applied.clusters.empty()) {
    applied.clusters[0].target = applied.upstream.target;
    applied.clusters[0].tls = applied.upstream.tls;
  }
  return applied;
}

}  // namespace carbon::sidecar
