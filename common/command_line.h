#pragma once

#include <string>
#include <string_view>

#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace carbon {

// Sets a binary's usage text and makes --help list the flags defined in `main_file` (pass
// __FILE__): Abseil's --help lists only files named like the program, which ours are not, and
// printed nothing but "No flags matched".
inline void SetUsage(std::string_view usage, std::string_view main_file) {
  absl::FlagsUsageConfig config;
  const std::string file(main_file);
  const auto in_main = [file](absl::string_view flag_file) {
    return absl::EndsWith(file, flag_file) || absl::EndsWith(flag_file, file);
  };
  config.contains_help_flags = in_main;
  config.contains_helpshort_flags = in_main;
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(absl::string_view(usage.data(), usage.size()));
}

}  // namespace carbon
