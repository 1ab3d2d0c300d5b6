#pragma once

#include <charconv>
#include <string>

namespace carbon {

// The shortest text that reads back as exactly `v` (absl::StrCat keeps only six significant
// digits, too few for the grams of one inference). For finite values.
inline std::string ShortestDecimal(double v) {
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, result.ptr);
}

}  // namespace carbon
