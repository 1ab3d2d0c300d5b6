#include "telemetry/prometheus_text.h"

#include <charconv>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/string_view_compat.h"

namespace carbon::telemetry {
namespace {

bool IsNameStart(char c) { return absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':'; }
bool IsNameChar(char c) { return IsNameStart(c) || absl::ascii_isdigit(static_cast<unsigned char>(c)); }
bool IsBlank(char c) { return c == ' ' || c == '\t'; }

// Reads one line; `pos` is the column (0-based) of the next character.
class LineReader {
 public:
  LineReader(std::string_view line, size_t line_number) : line_(line), line_number_(line_number) {}

  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("line ", line_number_, ", column ", pos_ + 1, ": ", ToAbsl(what)));
  }
  bool AtEnd() const { return pos_ >= line_.size(); }
  char Peek() const { return AtEnd() ? '\0' : line_[pos_]; }
  void SkipBlanks() {
    while (!AtEnd() && IsBlank(line_[pos_])) ++pos_;
  }

  absl::StatusOr<std::string> Name(bool label) {
    if (AtEnd() || !IsNameStart(line_[pos_]) || (label && line_[pos_] == ':')) {
      return Error(label ? "expected a label name" : "expected a metric name");
    }
    const size_t start = pos_;
    while (!AtEnd() && IsNameChar(line_[pos_]) && !(label && line_[pos_] == ':')) ++pos_;
    return std::string(line_.substr(start, pos_ - start));
  }

  absl::StatusOr<std::string> QuotedValue() {
    if (Peek() != '"') return Error("expected '\"' to open a label value");
    ++pos_;
    std::string value;
    while (!AtEnd() && line_[pos_] != '"') {
      if (line_[pos_] == '\\') {
        ++pos_;
        switch (Peek()) {
          case '\\': value += '\\'; break;
          case '"': value += '"'; break;
          case 'n': value += '\n'; break;
          default:
            --pos_;  // at the backslash
            return Error("unknown escape in a label value (only \\\\, \\\" and \\n)");
        }
        ++pos_;
        continue;
      }
      value += line_[pos_++];
    }
    if (AtEnd()) return Error("label value not closed");
    ++pos_;
    return value;
  }

  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Labels() {
    std::vector<std::pair<std::string, std::string>> labels;
    if (Peek() != '{') return labels;
    ++pos_;
    SkipBlanks();
    while (Peek() != '}') {
      auto name = Name(/*label=*/true);
      if (!name.ok()) return name.status();
      SkipBlanks();
      if (Peek() != '=') return Error("expected '=' after a label name");
      ++pos_;
      SkipBlanks();
      auto value = QuotedValue();
      if (!value.ok()) return value.status();
      for (const auto& [k, v] : labels) {
        if (k == *name) return Error(absl::StrCat("label '", *name, "' given twice"));
      }
      labels.emplace_back(*std::move(name), *std::move(value));
      SkipBlanks();
      if (Peek() == ',') {
        ++pos_;
        SkipBlanks();
      } else if (Peek() != '}') {
        return Error("expected ',' or '}' after a label");
      }
    }
    ++pos_;
    return labels;
  }

  absl::StatusOr<double> Value() {
    const size_t start = pos_;
    while (!AtEnd() && !IsBlank(line_[pos_])) ++pos_;
    const std::string_view text = line_.substr(start, pos_ - start);
    if (text.empty()) {
      pos_ = start;
      return Error("expected a value");
    }
    if (text == "NaN") return std::numeric_limits<double>::quiet_NaN();
    if (text == "+Inf" || text == "Inf") return HUGE_VAL;
    if (text == "-Inf") return -HUGE_VAL;
    std::string_view digits = text;
    if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
    double value = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec != std::errc() || end != digits.data() + digits.size()) {
      pos_ = start;
      return Error(absl::StrCat("'", ToAbsl(text), "' is not a number"));
    }
    return value;
  }

  absl::Status Timestamp() {
    SkipBlanks();
    if (AtEnd()) return absl::OkStatus();
    const size_t start = pos_;
    while (!AtEnd() && !IsBlank(line_[pos_])) ++pos_;
    const std::string_view text = line_.substr(start, pos_ - start);
    int64_t ms = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ms);
    if (ec != std::errc() || end != text.data() + text.size()) {
      pos_ = start;
      return Error("expected a timestamp in milliseconds or the end of the line");
    }
    SkipBlanks();
    if (!AtEnd()) return Error("unexpected text after the timestamp");
    return absl::OkStatus();
  }

 private:
  std::string_view line_;
  size_t line_number_;
  size_t pos_ = 0;
};

}  // namespace

const std::string* TextSample::Label(std::string_view key) const {
  for (const auto& [k, v] : labels) {
    if (k == key) return &v;
  }
  return nullptr;
}

absl::StatusOr<std::vector<TextSample>> ParsePrometheusText(std::string_view text, size_t max_samples) {
  std::vector<TextSample> samples;
  size_t line_number = 0;
  while (!text.empty()) {
    ++line_number;
    const size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    LineReader reader(line, line_number);
    reader.SkipBlanks();
    if (reader.AtEnd() || reader.Peek() == '#') continue;
    if (samples.size() >= max_samples) {
      return absl::ResourceExhaustedError(absl::StrCat("more than ", max_samples, " samples"));
    }
    TextSample sample;
    auto name = reader.Name(/*label=*/false);
    if (!name.ok()) return name.status();
    sample.name = *std::move(name);
    auto labels = reader.Labels();
    if (!labels.ok()) return labels.status();
    sample.labels = *std::move(labels);
    reader.SkipBlanks();
    auto value = reader.Value();
    if (!value.ok()) return value.status();
    sample.value = *value;
    if (absl::Status ts = reader.Timestamp(); !ts.ok()) return ts;
    samples.push_back(std::move(sample));
  }
  return samples;
}

}  // namespace carbon::telemetry
