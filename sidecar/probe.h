#pragma once

#include <cstdio>

#include "sidecar/config.h"

namespace carbon::sidecar {

// `carbon-sidecar --probe_intensity`: asks the configured provider for its latest reading and the
// history of the window, then prints what it returned, the window the heuristic would use and the
// model each route would choose, for an SRE checking a provider before deploying. Returns the
// process exit code: 0 when the provider answered with a fresh reading, 1 otherwise (the reason
// is printed).
int RunIntensityProbe(const SidecarConfig& config, std::FILE* out);

}  // namespace carbon::sidecar
