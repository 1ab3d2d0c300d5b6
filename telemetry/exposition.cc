#include "telemetry/exposition.h"

#include <cmath>
#include <vector>

#include "common/number_text.h"

namespace carbon::telemetry {
namespace {

void AppendEscaped(std::string* out, std::string_view s, bool quotes) {
  for (char c : s) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '"' && quotes) {
      out->append("\\\"");
    } else {
      out->push_back(c);
    }
  }
}

std::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
  }
  return "untyped";
}

}  // namespace

void AppendNumber(std::string* out, double v) {
  if (std::isnan(v)) {
    out->append("NaN");
  } else if (std::isinf(v)) {
    out->append(v > 0 ? "+Inf" : "-Inf");
  } else {
    out->append(ShortestDecimal(v));
  }
}

bool WantsOpenMetrics(std::string_view accept) {
  return accept.find("application/openmetrics-text") != std::string_view::npos;
}

void ExpositionWriter::Family(std::string_view name, MetricType type, std::string_view help) {
  family_.assign(name);
  std::string_view family_name = name;
  if (open_metrics_ && type == MetricType::kCounter && family_name.ends_with("_total")) {
    family_name.remove_suffix(6);
  }
  if (open_metrics_) {
    out_.append("# TYPE ").append(family_name).append(" ").append(TypeName(type)).append("\n");
    out_.append("# HELP ").append(family_name).append(" ");
  } else {
    out_.append("# HELP ").append(family_name).append(" ");
  }
  AppendEscaped(&out_, help, /*quotes=*/false);
  out_.append("\n");
  if (!open_metrics_) {
    out_.append("# TYPE ").append(family_name).append(" ").append(TypeName(type)).append("\n");
  }
}

void ExpositionWriter::Line(std::string_view name, std::span<const Label> labels, const Label* extra,
                            double value) {
  out_.append(name);
  if (!labels.empty() || extra != nullptr) {
    out_.push_back('{');
    bool first = true;
    const auto add = [&](const Label& l) {
      if (!first) out_.push_back(',');
      first = false;
      out_.append(l.first).append("=\"");
      AppendEscaped(&out_, l.second, /*quotes=*/true);
      out_.push_back('"');
    };
    for (const Label& l : labels) add(l);
    if (extra != nullptr) add(*extra);
    out_.push_back('}');
  }
  out_.push_back(' ');
  AppendNumber(&out_, value);
  out_.push_back('\n');
}

void ExpositionWriter::Sample(std::initializer_list<Label> labels, double value) {
  Line(family_, std::span<const Label>(labels.begin(), labels.size()), nullptr, value);
}

void ExpositionWriter::Sample(std::span<const Label> labels, double value) {
  Line(family_, labels, nullptr, value);
}

void ExpositionWriter::Histogram(std::span<const Label> labels, std::span<const double> bounds,
                                 std::span<const uint64_t> cumulative, uint64_t count, double sum) {
  const std::string bucket = family_ + "_bucket";
  std::string le;
  for (size_t i = 0; i < bounds.size(); ++i) {
    le.clear();
    AppendNumber(&le, bounds[i]);
    // OpenMetrics wants canonical numbers: 1.0, not 1.
    if (open_metrics_ && le.find_first_of(".eE") == std::string::npos) le.append(".0");
    const Label bound{"le", le};
    Line(bucket, labels, &bound, static_cast<double>(cumulative[i]));
  }
  const Label inf{"le", "+Inf"};
  Line(bucket, labels, &inf, static_cast<double>(count));
  Line(family_ + "_sum", labels, nullptr, sum);
  Line(family_ + "_count", labels, nullptr, static_cast<double>(count));
}

std::string ExpositionWriter::Finish() {
  if (open_metrics_) out_.append("# EOF\n");
  return std::move(out_);
}

}  // namespace carbon::telemetry
