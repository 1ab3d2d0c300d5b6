#include "telemetry/energy_meter.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/string_view_compat.h"
#include "telemetry/http_client.h"
#include "telemetry/prometheus_text.h"

namespace carbon::telemetry {
namespace {

absl::Status CheckCounter(double value, std::string_view what) {
  if (!std::isfinite(value) || value < 0) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(what), " is ", value, ", not a count"));
  }
  return absl::OkStatus();
}

// Adds `joules` for `device`, refusing the same device twice.
absl::Status AddDevice(MeterReading& reading, const std::string& device, double joules) {
  if (absl::Status s = CheckCounter(joules, absl::StrCat("the energy of device '", device, "'")); !s.ok()) return s;
  for (const auto& [d, j] : reading.device_joules) {
    if (d == device) return absl::InvalidArgumentError(absl::StrCat("device '", device, "' is reported twice"));
  }
  reading.device_joules.emplace_back(device, joules);
  return absl::OkStatus();
}

void SortDevices(MeterReading& reading) { std::sort(reading.device_joules.begin(), reading.device_joules.end()); }

}  // namespace

absl::StatusOr<MeterReading> ReadTritonMetrics(std::string_view text) {
  auto samples = ParsePrometheusText(text);
  if (!samples.ok()) return samples.status();
  MeterReading reading;
  reading.inferences.emplace();
  for (const TextSample& s : *samples) {
    if (s.name == "nv_energy_consumption") {
      const std::string* gpu = s.Label("gpu_uuid");
      if (gpu == nullptr) return absl::InvalidArgumentError("an nv_energy_consumption sample has no gpu_uuid label");
      if (absl::Status st = AddDevice(reading, *gpu, s.value); !st.ok()) return st;
    } else if (s.name == "nv_inference_count") {
      const std::string* model = s.Label("model");
      if (model == nullptr) return absl::InvalidArgumentError("an nv_inference_count sample has no model label");
      if (absl::Status st = CheckCounter(s.value, absl::StrCat("nv_inference_count of '", *model, "'")); !st.ok()) {
        return st;
      }
      (*reading.inferences)[*model] += s.value;  // all versions of the model
    }
  }
  if (reading.device_joules.empty()) {
    return absl::NotFoundError(
        "no nv_energy_consumption sample: the server reports no GPU energy (no GPU, or GPU metrics off)");
  }
  SortDevices(reading);
  return reading;
}

absl::StatusOr<MeterReading> ReadDcgmExporterMetrics(std::string_view text) {
  auto samples = ParsePrometheusText(text);
  if (!samples.ok()) return samples.status();
  MeterReading reading;
  for (const TextSample& s : *samples) {
    if (s.name != "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") continue;
    const std::string* uuid = s.Label("UUID");
    const std::string* gpu = uuid != nullptr ? uuid : s.Label("gpu");
    if (gpu == nullptr) return absl::InvalidArgumentError("a DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION sample names no GPU");
    if (absl::Status st = AddDevice(reading, *gpu, s.value / 1000); !st.ok()) return st;  // mJ
  }
  if (reading.device_joules.empty()) {
    return absl::NotFoundError("no DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION sample (is the field in the exporter's list?)");
  }
  SortDevices(reading);
  return reading;
}

absl::StatusOr<MeterReading> ReadPrometheusQueryAnswer(std::string_view json) {
  const nlohmann::json doc = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return absl::InvalidArgumentError("the query answer is not JSON");
  // Fields read by type first: nlohmann's value() throws on a field of another type.
  const auto string_field = [](const nlohmann::json& object, const char* key) -> std::string {
    return object.is_object() && object.contains(key) && object[key].is_string() ? object[key].get<std::string>() : "";
  };
  if (string_field(doc, "status") != "success") {
    const std::string error = doc.is_object() && doc.contains("error") && doc["error"].is_string() ? doc["error"].get<std::string>() : "";
    return absl::InvalidArgumentError(absl::StrCat("the query did not succeed", error.empty() ? "" : ": ", error));
  }
  const nlohmann::json* data = doc.contains("data") && doc["data"].is_object() ? &doc["data"] : nullptr;
  if (data == nullptr || string_field(*data, "resultType") != "vector" || !data->contains("result") ||
      !(*data)["result"].is_array()) {
    return absl::InvalidArgumentError("the query answer is not an instant vector (resultType must be \"vector\")");
  }
  MeterReading reading;
  for (const nlohmann::json& series : (*data)["result"]) {
    if (!series.is_object() || !series.contains("value") || !series["value"].is_array() || series["value"].size() != 2 ||
        !series["value"][1].is_string()) {
      return absl::InvalidArgumentError("a series of the answer has no [time, \"value\"] pair");
    }
    // The series' labels, as Prometheus prints them, name the device.
    std::string device = "{";
    if (series.contains("metric") && series["metric"].is_object()) {
      bool first = true;
      for (const auto& [k, v] : series["metric"].items()) {
        absl::StrAppend(&device, first ? "" : ",", k, "=", v.is_string() ? v.get<std::string>() : v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
        first = false;
      }
    }
    device += "}";
    const std::string text = series["value"][1].get<std::string>();
    char* end = nullptr;
    const double joules = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size()) {
      return absl::InvalidArgumentError(absl::StrCat("series ", device, " has the value '", text, "', not a number"));
    }
    if (absl::Status st = AddDevice(reading, device, joules); !st.ok()) return st;
  }
  if (reading.device_joules.empty()) return absl::NotFoundError("the query answered no series");
  SortDevices(reading);
  return reading;
}

absl::StatusOr<MeterDelta> Difference(const MeterReading& before, const MeterReading& after,
                                      std::span<const std::string> devices) {
  const auto find = [](const MeterReading& r, const std::string& device) -> const double* {
    for (const auto& [d, j] : r.device_joules) {
      if (d == device) return &j;
    }
    return nullptr;
  };
  MeterDelta delta;
  const auto add = [&](const std::string& device) -> absl::Status {
    const double* was = find(before, device);
    const double* now = find(after, device);
    if (now == nullptr) return absl::NotFoundError(absl::StrCat("device '", device, "' is no longer reported"));
    if (was == nullptr) return absl::FailedPreconditionError(absl::StrCat("device '", device, "' is new"));
    if (*now < *was) {
      return absl::FailedPreconditionError(absl::StrCat("the energy counter of device '", device, "' went down from ",
                                                        *was, " to ", *now, " J (a restart)"));
    }
    delta.joules += *now - *was;
    return absl::OkStatus();
  };
  if (devices.empty()) {
    for (const auto& [d, j] : before.device_joules) {
      if (absl::Status s = add(d); !s.ok()) return s;
    }
    for (const auto& [d, j] : after.device_joules) {
      if (find(before, d) == nullptr) return absl::FailedPreconditionError(absl::StrCat("device '", d, "' is new"));
    }
  } else {
    for (const std::string& d : devices) {
      if (absl::Status s = add(d); !s.ok()) return s;
    }
  }
  if (before.inferences && after.inferences) {
    delta.inferences.emplace();
    for (const auto& [model, now] : *after.inferences) {
      const auto was = before.inferences->find(model);
      const double base = was == before.inferences->end() ? 0 : was->second;
      if (now < base) {
        return absl::FailedPreconditionError(absl::StrCat("the inference count of '", model, "' went down from ", base,
                                                          " to ", now, " (a restart)"));
      }
      (*delta.inferences)[model] = now - base;
    }
  }
  return delta;
}

namespace {

// A meter behind one HTTP GET.
class HttpMeter final : public EnergyMeter {
 public:
  using Parse = absl::StatusOr<MeterReading> (*)(std::string_view);
  HttpMeter(std::string url, absl::Duration timeout, Parse parse)
      : url_(std::move(url)), client_(HttpOptions{timeout, timeout, 16 * 1024 * 1024, ""}), parse_(parse) {}

  absl::StatusOr<MeterReading> Read() override {
    auto response = client_.Get({url_, {}, ""});
    if (!response.ok()) return response.status();
    if (response->status != 200) {
      return absl::UnavailableError(absl::StrCat(RedactUrl(url_), " answered HTTP ", response->status));
    }
    auto reading = parse_(response->body);
    if (!reading.ok()) {
      return absl::Status(reading.status().code(), absl::StrCat(RedactUrl(url_), ": ", reading.status().message()));
    }
    return reading;
  }

 private:
  std::string url_;
  HttpClient client_;
  Parse parse_;
};

class HttpMeterSpec final : public EnergyMeterSpec {
 public:
  HttpMeterSpec(std::string_view kind, HttpMeter::Parse parse) : kind_(kind), parse_(parse) {}
  std::string_view kind() const override { return kind_; }
  nlohmann::json Render() const override {
    nlohmann::json out = {{"source", kind_}, {"url", RedactUrl(url)}, {"timeout", absl::FormatDuration(timeout)}};
    if (!query.empty()) out["query"] = query;
    return out;
  }
  absl::StatusOr<std::unique_ptr<EnergyMeter>> Build() const override {
    std::string target = url;
    if (!query.empty()) {
      target = absl::StrCat(absl::StripSuffix(url, "/"), "/api/v1/query?query=", UrlEscape(query));
    }
    return std::make_unique<HttpMeter>(target, timeout, parse_);
  }

  std::string url;
  std::string query;  // prometheus only
  absl::Duration timeout = absl::Seconds(5);

 private:
  std::string_view kind_;
  HttpMeter::Parse parse_;
};

std::unique_ptr<HttpMeterSpec> ReadHttpMeter(ConfigBlock& block, std::string_view kind, HttpMeter::Parse parse,
                                             bool with_query) {
  auto spec = std::make_unique<HttpMeterSpec>(kind, parse);
  block.String("url", &spec->url, /*required=*/true);
  if (block.ok() && !absl::StartsWith(spec->url, "http://") && !absl::StartsWith(spec->url, "https://")) {
    block.Fail("url", absl::StrCat(block.Path("url"), " must be an http:// or https:// URL"));
  }
  if (with_query) block.String("query", &spec->query, /*required=*/true);
  block.Duration("timeout", &spec->timeout, /*allow_zero=*/false);
  return spec;
}

std::unique_ptr<EnergyMeterSpec> ReadTritonMeter(ConfigBlock& block) {
  return ReadHttpMeter(block, "triton-metrics", &ReadTritonMetrics, false);
}
std::unique_ptr<EnergyMeterSpec> ReadDcgmMeter(ConfigBlock& block) {
  return ReadHttpMeter(block, "dcgm-exporter", &ReadDcgmExporterMetrics, false);
}
std::unique_ptr<EnergyMeterSpec> ReadPrometheusMeter(ConfigBlock& block) {
  return ReadHttpMeter(block, "prometheus", &ReadPrometheusQueryAnswer, true);
}

constexpr EnergyMeterRegistration kMeters[] = {
    {"triton-metrics", &ReadTritonMeter},
    {"dcgm-exporter", &ReadDcgmMeter},
    {"prometheus", &ReadPrometheusMeter},
};

}  // namespace

std::span<const EnergyMeterRegistration> RegisteredEnergyMeters() { return kMeters; }

std::shared_ptr<const EnergyMeterSpec> TritonMetricsMeter(std::string url) {
  auto spec = std::make_shared<HttpMeterSpec>("triton-metrics", &ReadTritonMetrics);
  spec->url = std::move(url);
  return spec;
}

}  // namespace carbon::telemetry
