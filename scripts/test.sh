#!/usr/bin/env bash
# Installs what is needed, builds, and runs the whole ctest suite; then (unless --quick) the same
# suite built with AddressSanitizer and UndefinedBehaviorSanitizer, the integration tests built with
# ThreadSanitizer, and each libFuzzer harness for about a minute under ASan and UBSan.
#   --quick     only the plain build and suite
#   BUILD_DIR   build directory, reused between runs (default: build; the sanitizer and fuzz builds
#               go to $BUILD_DIR-asan, $BUILD_DIR-tsan and $BUILD_DIR-fuzz)
#   CTEST_ARGS  extra ctest arguments for the plain suite, e.g. "-L unit" or "-R proxy"
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; fi

bash scripts/setup.sh
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j2
# shellcheck disable=SC2086  # CTEST_ARGS is a list of arguments
ctest --test-dir "$build_dir" --output-on-failure -j2 --timeout 300 ${CTEST_ARGS:-}
if [ "$quick" = 1 ]; then exit 0; fi

# Any sanitizer report fails the test that triggered it.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cmake -S . -B "$build_dir-asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCARBON_SANITIZE=ON
cmake --build "$build_dir-asan" -j2
# (The package and container tests build from the sources whatever the build directory; running them
# again with sanitized binaries beside them adds nothing.)
ctest --test-dir "$build_dir-asan" --output-on-failure -j2 --timeout 300 -LE fuzz -E 'DebianPackage|ContainerImage'

# The integration tests again under ThreadSanitizer, built with clang (a g++ 12 TSan build of
# this tree crashed in a plain struct copy at start-up). Debian's gRPC and Abseil are not
# instrumented: tests/tsan.supp says what that costs and what is suppressed; the libraries' own
# interceptor calls are left out by one called_from_lib line per library the binaries load. Three
# tests are left out here because what they measure is the sanitizer's, not ours: the memory of
# 2,000 idle streams (TSan's shadow memory is several times the application's), a 50 MB provider
# reply inside a 2 s timeout, and the energy calibrator's accuracy through the sidecar within 5 %,
# whose meter reads TSan slows unevenly. The calibration command's test runs the built
# binary as a child process, whose threads are not the test's: races are looked for in-process.
# The plain and ASan runs check all four.
tsan_targets=(proxy_test admin_test provider_test tls_test fault_test)
CC=clang CXX=clang++ cmake -S . -B "$build_dir-tsan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCARBON_TSAN=ON
cmake --build "$build_dir-tsan" -j2 --target "${tsan_targets[@]}"
{
  cat tests/tsan.supp
  for t in "${tsan_targets[@]}"; do ldd "$build_dir-tsan/tests/integration/$t"; done | awk '{print $1}' | sort -u |
    grep -E '^lib(grpc|gpr|upb|protobuf|absl_|ssl|crypto|cares|re2|address_sorting)' | sed 's/^/called_from_lib:/'
} >"$build_dir-tsan/tsan.supp"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/$build_dir-tsan/tsan.supp" \
  ctest --test-dir "$build_dir-tsan" --output-on-failure -j2 --timeout 300 -L integration \
  -E 'FaultTest.ThousandsOfIdleStreamsCostBoundedMemory|ProviderTest.EveryBadReplyIsAClearStatus|CalibrateCommandTest|EnergyCalibrationTest'

CC=clang CXX=clang++ cmake -S . -B "$build_dir-fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCARBON_FUZZ=ON -DCARBON_FUZZ_SECONDS=60
cmake --build "$build_dir-fuzz" -j2 --target fuzz_all
ctest --test-dir "$build_dir-fuzz" --output-on-failure -j2 -L fuzz
