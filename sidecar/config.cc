#include "sidecar/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
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
class MapReader {
 public:
  MapReader(const YAML::Node& node, const std::string& file, std::string where)
      : node_(node), file_(file), where_(std::move(where)) {
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

  const absl::Status& status() const { return status_; }
  const YAML::Node& node() const { return node_; }
  const std::string& file() const { return file_; }

  // The child node, or an undefined node (and an error if `required`).
  YAML::Node Get(const std::string& key, bool required) {
    allowed_.push_back(key);
    if (!status_.ok() || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    YAML::Node child = node_[key];
    if (!child.IsDefined() && required) {
      Fail(node_, absl::StrCat(where_, " is missing required key '", key, "'"));
    }
    return child;
  }

  bool String(const std::string& key, std::string* out, bool required = false) {
    YAML::Node n = Get(key, required);
    if (!n.IsDefined() || !status_.ok()) return false;
    if (!n.IsScalar() || n.Scalar().empty()) {
      return Fail(n, absl::StrCat(Path(key), " must be a non-empty string, got ", Describe(n)));
    }
    *out = n.Scalar();
    return true;
  }

  bool Number(const std::string& key, double* out, bool required = false) {
    YAML::Node n = Get(key, required);
    if (!n.IsDefined() || !status_.ok()) return false;
    double v;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, v) || !std::isfinite(v)) {
      return Fail(n, absl::StrCat(Path(key), " must be a finite number, got ", Describe(n)));
    }
    *out = v;
    return true;
  }

  bool Integer(const std::string& key, int64_t* out, bool required = false) {
    YAML::Node n = Get(key, required);
    if (!n.IsDefined() || !status_.ok()) return false;
    int64_t v;
    if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, v)) {
      return Fail(n, absl::StrCat(Path(key), " must be a whole number, got ", Describe(n)));
    }
    *out = v;
    return true;
  }

  bool Bool(const std::string& key, bool* out) {
    YAML::Node n = Get(key, false);
    if (!n.IsDefined() || !status_.ok()) return false;
    bool v;
    if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v)) {
      return Fail(n, absl::StrCat(Path(key), " must be true or false, got ", Describe(n)));
    }
    *out = v;
    return true;
  }

  bool Duration(const std::string& key, absl::Duration* out, bool allow_zero) {
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

  bool Time(const std::string& key, std::optional<absl::Time>* out) {
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

  // Reports keys that no getter asked for.
  absl::Status Finish() {
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

  bool Fail(const YAML::Node& at, absl::string_view message) {
    if (status_.ok()) status_ = ErrorAt(file_, at.Mark(), message);
    return false;
  }

  std::string Path(const std::string& key) const {
    return where_ == "the config" ? key : absl::StrCat(where_, ".", key);
  }

 private:
  YAML::Node node_;
  const std::string& file_;
  std::string where_;
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

bool LooksLikeHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port;
  return colon != std::string::npos && colon > 0 &&
         absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), &port) && port >= 0 && port <= 65535;
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (std::filesystem::path(base_dir) / path).lexically_normal().string();
}

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

constexpr char kKnownProviders[] = "static, trace, uk-carbon-intensity, electricity-maps, watttime, carbon-aware-sdk";

// Checks that a named secret can be read now, so that a missing token stops start-up (or a
// reload) with its location rather than failing every poll.
void CheckSecret(MapReader& m, const std::string& what, const std::string& env_key, const std::string& file_key,
                 const std::string& env, const std::string& file) {
  if (!m.status().ok()) return;
  if (env.empty() == file.empty()) {
    m.Fail(m.node(), absl::StrCat(m.Path(what), " needs exactly one of '", env_key, "' (an environment variable) or '",
                                  file_key, "' (a file)"));
    return;
  }
  auto secret = ReadSecret(env, file);
  if (!secret.ok()) m.Fail(m.node()[env.empty() ? file_key : env_key], secret.status().message());
}

// The options of one provider, from the mapping that names it.
void ReadProvider(MapReader& m, const std::string& base_dir, bool top_level, ProviderConfig* out) {
  m.String("provider", &out->provider, true);
  m.String("region", &out->region);
  if (!m.status().ok()) return;
  const YAML::Node provider_node = m.node()["provider"];
  const std::string& p = out->provider;
  const bool web = p == "uk-carbon-intensity" || p == "electricity-maps" || p == "watttime" || p == "carbon-aware-sdk";
  if (p == "static") {
    if (m.Number("gco2_per_kwh", &out->gco2_per_kwh, true) && out->gco2_per_kwh < 0) {
      m.Fail(m.node()["gco2_per_kwh"], absl::StrCat(m.Path("gco2_per_kwh"), " must not be negative"));
    }
  } else if (p == "trace") {
    if (m.String("file", &out->trace_path, true)) out->trace_path = Resolve(base_dir, out->trace_path);
    m.String("time_column", &out->trace_time_column);
    m.String("value_column", &out->trace_value_column);
    if (m.Number("speedup", &out->trace_speedup) && !(out->trace_speedup > 0)) {
      m.Fail(m.node()["speedup"], absl::StrCat(m.Path("speedup"), " must be positive"));
    }
    m.Bool("loop", &out->trace_loop);
    m.Time("start", &out->trace_start);
  } else if (web) {
    m.String("base_url", &out->base_url, /*required=*/p == "carbon-aware-sdk");
    m.Duration("connect_timeout", &out->connect_timeout, false);
    m.Duration("timeout", &out->timeout, false);
    if (m.Integer("max_response_bytes", &out->max_response_bytes) && out->max_response_bytes <= 0) {
      m.Fail(m.node()["max_response_bytes"], absl::StrCat(m.Path("max_response_bytes"), " must be positive"));
    }
    if (m.String("ca_file", &out->ca_file)) {
      out->ca_file = Resolve(base_dir, out->ca_file);
      if (!std::ifstream(out->ca_file)) {
        m.Fail(m.node()["ca_file"], absl::StrCat(m.Path("ca_file"), " '", out->ca_file, "' cannot be read"));
      }
    }
    if (p == "uk-carbon-intensity") {
      int64_t id = 0;
      if (m.Integer("region_id", &id) && (id < 1 || id > 17)) {
        m.Fail(m.node()["region_id"], absl::StrCat(m.Path("region_id"),
                                                   " must be a region of the API, 1 to 17 (11: South West England)"));
      }
      out->region_id = static_cast<int>(id);
      m.String("postcode", &out->postcode);
      if (out->region_id != 0 && !out->postcode.empty()) {
        m.Fail(m.node()["postcode"], absl::StrCat(m.Path("postcode"), " and region_id exclude each other"));
      }
    } else if (p == "electricity-maps") {
      m.String("zone", &out->zone, true);
      m.String("token_env", &out->token_env);
      m.String("token_file", &out->token_file);
      if (m.status().ok() && !out->token_file.empty()) out->token_file = Resolve(base_dir, out->token_file);
      CheckSecret(m, "token", "token_env", "token_file", out->token_env, out->token_file);
    } else if (p == "watttime") {
      if (m.status().ok() && out->region.empty()) {
        m.Fail(m.node(), absl::StrCat(m.Path("region"), " (the WattTime region, e.g. CAISO_NORTH) is required"));
      }
      m.String("username", &out->username, true);
      m.String("password_env", &out->password_env);
      m.String("password_file", &out->password_file);
      if (m.status().ok() && !out->password_file.empty()) out->password_file = Resolve(base_dir, out->password_file);
      CheckSecret(m, "password", "password_env", "password_file", out->password_env, out->password_file);
    } else {
      m.String("location", &out->location, true);
    }
  } else if (!(top_level && p == "fallback")) {
    m.Fail(provider_node, absl::StrCat(m.Path("provider"), " '", p, "' is not known (known providers: ",
                                       kKnownProviders, top_level ? ", fallback" : "", ")"));
  }
}

absl::Status ReadIntensity(MapReader& m, const std::string& base_dir, IntensityConfig* out) {
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
  ReadProvider(m, base_dir, /*top_level=*/true, out);
  if (m.status().ok() && out->provider == "fallback") {
    YAML::Node list = m.Get("providers", true);
    if (!m.status().ok()) return m.Finish();
    if (!list.IsSequence() || list.size() == 0) {
      return ErrorAt(m.file(), list.Mark(), "intensity.providers must be a non-empty list of providers");
    }
    for (size_t i = 0; i < list.size(); ++i) {
      MapReader member(list[i], m.file(), absl::StrCat("intensity.providers[", i, "]"));
      ProviderConfig p;
      ReadProvider(member, base_dir, /*top_level=*/false, &p);
      if (auto s = member.Finish(); !s.ok()) return s;
      out->fallback.push_back(std::move(p));
    }
  }
  return m.Finish();
}

absl::Status ReadRoute(const YAML::Node& node, size_t index, const std::string& file,
                       const std::string& base_dir, RouteConfig* out) {
  MapReader r(node, file, absl::StrCat("routes[", index, "]"));
  r.String("name", &out->name, true);
  std::string pool_file;
  const bool has_pool_file = r.String("pool", &pool_file);
  YAML::Node inline_variants = r.Get("variants", false);
  std::string baseline, default_variant;
  r.String("baseline", &baseline, true);
  r.String("default", &default_variant, true);
  r.Duration("min_dwell", &out->min_dwell, /*allow_zero=*/true);
  r.Bool("batch_dimension", &out->batch_dimension);
  if (auto s = r.Finish(); !s.ok()) return s;

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
  return lookup("default", default_variant, &out->default_variant);
}

}  // namespace

absl::StatusOr<std::string> ReadSecret(const std::string& env, const std::string& file) {
  std::string secret;
  if (!env.empty()) {
    const char* value = std::getenv(env.c_str());
    if (value == nullptr || *value == '\0') {
      return absl::NotFoundError(absl::StrCat("environment variable ", env, " is not set"));
    }
    secret = value;
  } else {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat("secret file '", file, "' cannot be read"));
    std::stringstream text;
    text << in.rdbuf();
    secret = text.str();
    while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
    if (secret.empty()) return absl::InvalidArgumentError(absl::StrCat("secret file '", file, "' is empty"));
  }
  return secret;
}

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
    YAML::Node admin = top.Get("admin", false);
    YAML::Node tls = top.Get("tls", false);
    YAML::Node upstream = top.Get("upstream", true);
    YAML::Node intensity = top.Get("intensity", true);
    YAML::Node routes = top.Get("routes", true);
    if (auto s = top.Finish(); !s.ok()) return s;

    if (admin.IsDefined()) {
      MapReader a(admin, path, "admin");
      if (a.String("listen", &config.admin_listen, true) && !LooksLikeHostPort(config.admin_listen)) {
        return ErrorAt(path, admin["listen"].Mark(),
                       absl::StrCat("admin.listen must be host:port, such as 127.0.0.1:9464, got '",
                                    config.admin_listen, "'"));
      }
      if (auto s = a.Finish(); !s.ok()) return s;
    }

    if (tls.IsDefined()) {
      config.tls.emplace();
      if (auto s = ReadTls(tls, path, base_dir, "tls", TlsSide::kListener, &*config.tls); !s.ok()) return s;
    }

    MapReader u(upstream, path, "upstream");
    u.String("target", &config.upstream.target, true);
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

    MapReader i(intensity, path, "intensity");
    if (auto s = ReadIntensity(i, base_dir, &config.intensity); !s.ok()) return s;

    if (!routes.IsSequence() || routes.size() == 0) {
      return ErrorAt(path, routes.Mark(), "routes must be a non-empty list");
    }
    for (size_t r = 0; r < routes.size(); ++r) {
      RouteConfig route;
      if (auto s = ReadRoute(routes[r], r, path, base_dir, &route); !s.ok()) return s;
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
  return config;
}

}  // namespace carbon::sidecar
