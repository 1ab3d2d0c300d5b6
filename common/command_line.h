#pragma once

#include <string>
#include <string_view>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

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

// What every binary of the project does first: its usage text (see SetUsage), the command line
// parsed (--help answered), and Abseil's mutex deadlock detection off: Debian builds Abseil with it
// on, and gRPC's locks are absl::Mutex, so every lock would walk a cycle graph (about 3 % of the
// proxy's CPU in a perf profile).
inline void StartBinary(std::string_view usage, std::string_view main_file, int argc, char** argv) {
  SetUsage(usage, main_file);
  absl::ParseCommandLine(argc, argv);
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

}  // namespace carbon
