#pragma once

// Debian 12 builds Abseil with ABSL_OPTION_USE_STD_STRING_VIEW=0, so absl::string_view is a type of
// its own rather than an alias of std::string_view. The project speaks std::string_view in its
// interfaces; these convert at the Abseil boundary without copying.

#include <string_view>

#include "absl/strings/string_view.h"

namespace carbon {

inline absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }
inline std::string_view ToStd(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace carbon
