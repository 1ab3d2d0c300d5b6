#!/usr/bin/env bash
# The demo: installs what is needed, builds, then runs a fake inference server and carbon-sidecar
# on loopback with the bundled South West England carbon-intensity trace (June 2023) replayed at
# one simulated hour per second, and sends a request every half second with a stock gRPC client.
# Each line shows which ResNet variant served the request and why. No network or API key needed.
#   --seconds N   how long to send requests (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "usage: scripts/demo.sh [--seconds N]" >&2; exit 2 ;;
  esac
done

bash scripts/setup.sh
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build_dir" -j2 --target carbon-sidecar fake-upstream inference_proto_python

logs=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 8001 8011; do
  if port_in_use "$port"; then
    echo "demo: port $port on 127.0.0.1 is in use; stop whatever holds it and retry" >&2
    exit 1
  fi
done

"$build_dir/bench/fake-upstream" --listen 127.0.0.1:8011 >"$logs/upstream.log" 2>&1 &
pids+=($!)
"$build_dir/sidecar/carbon-sidecar" --config config/sidecar.yaml 2>"$logs/sidecar.log" &
pids+=($!)

for _ in $(seq 100); do
  if port_in_use 8001 && port_in_use 8011; then break; fi
  sleep 0.1
done

cat <<TEXT
carbon-sidecar is on 127.0.0.1:8001 in front of a fake Triton on 127.0.0.1:8011.
Grid: South West England, June 2023, one simulated hour per second (logs: $logs).
Pool: resnet34 (frugal) .. resnet152 (accurate); the window is the last 24 simulated hours.
Clean grid -> bigger model; dirty grid -> smaller model.

TEXT
count=$((seconds * 2))
/usr/bin/python3 scripts/carbon_client.py --stubs "$build_dir/proto/python" \
  --target 127.0.0.1:8001 --model resnet --count "$count" --interval 0.5
echo
echo "Selections the sidecar made (from its log):"
grep -o 'event=selection route=resnet .*' "$logs/sidecar.log" | tail -n 15 || true
echo
echo "The sidecar's carbon ledger (from http://127.0.0.1:9464/metrics):"
curl -s http://127.0.0.1:9464/metrics | /usr/bin/python3 scripts/ledger_summary.py --route resnet
