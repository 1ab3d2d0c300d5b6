#!/usr/bin/env bash
# The latency guard against a step of the grid from dirty to clean (bench/RESULTS.md):
#   bench/slo_step.sh [--build_dir build] [--out_dir bench/results/slo-step] [--rate 300] [--seconds 24]
# A fake upstream with a real capacity (two instances per model, service time in proportion to the
# paper's energy per inference: 0.01 ms per mJ) sits behind the sidecar. The intensity steps from
# 250 gCO2/kWh (resnet50) to 100 (resnet152) halfway through; open-loop load at --rate calls a
# second, which two instances of resnet50 serve comfortably (476/s) and of resnet152 cannot (161/s).
# Two runs, the policy alone and with `slo: { latency_p99: 50ms, window: 2s }`, each measured second
# by second: p50/p99 latency, errors, and which model served. Writes steps.csv, summary.md and, with
# gnuplot, slo_step.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

build_dir=build
out_dir=bench/results/slo-step  # bench/slo-step/ holds the run bench/RESULTS.md reports
rate=300
seconds=24
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build_dir) build_dir=$2; shift 2 ;;
    --out_dir) out_dir=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "slo_step.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cmake --build "$build_dir" -j2 --target carbon-sidecar fake-upstream loadgen >/dev/null
mkdir -p "$out_dir"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The step: the trace's second half-hour starts after seconds/2 of wall time.
speedup=$(echo "scale=6; 1800 / ($seconds / 2)" | bc)
printf 'from,intensity\n2023-06-01T00:00Z,250\n2023-06-01T00:30Z,100\n2023-06-01T01:00Z,100\n' >"$work/step.csv"

run() {  # name, extra route YAML
  local name=$1 extra=$2 upstream_port port admin_port
  upstream_port=$(free_port)
  "$build_dir/bench/fake-upstream" --listen "127.0.0.1:$upstream_port" --models resnet34,resnet50,resnet101,resnet152 \
    --service_time resnet34=3.6ms,resnet50=4.2ms,resnet101=8.0ms,resnet152=12.4ms \
    --instances resnet34=2,resnet50=2,resnet101=2,resnet152=2 >/dev/null &
  pids+=($!)
  wait_port "$upstream_port"
  port=$(free_port)
  admin_port=$(free_port)
  cat >"$work/$name.yaml" <<EOF
listen: 127.0.0.1:$port
admin: { listen: 127.0.0.1:$admin_port }
upstream: { target: 127.0.0.1:$upstream_port, readiness_interval: 0s }
intensity:
  provider: trace
  file: $work/step.csv
  time_column: from
  value_column: intensity
  speedup: $speedup
  loop: false
  start: 2023-06-01T00:00:00Z
  refresh: 1s
  window_bounds: { low: 100, high: 300 }
routes:
  - name: resnet
    pool: $PWD/config/pools/resnet-v100.yaml
    baseline: resnet50
    default: resnet50
$extra
EOF
  "$build_dir/sidecar/carbon-sidecar" --config "$work/$name.yaml" 2>"$work/$name.log" &
  pids+=($!)
  wait_port "$port"
  for ((s = 1; s <= seconds; s++)); do
    "$build_dir/bench/loadgen" --target "127.0.0.1:$port" --rate "$rate" --duration 1s --warmup 0s --timeout 2s |
      /usr/bin/python3 -c '
import json, sys
r = json.load(sys.stdin)
served = r.get("models", {})
errors = sum(r.get("errors", {}).values())
print(",".join(str(x) for x in [sys.argv[1], sys.argv[2], r["latency_us"]["p50"] / 1000, r["latency_us"]["p99"] / 1000, errors] +
      [served.get(m, 0) for m in ("resnet34", "resnet50", "resnet101", "resnet152")]))' "$name" "$s" >>"$work/steps.csv"
  done
  curl -s "http://127.0.0.1:$admin_port/v1/selection" >"$work/$name.selection.json"
  kill "${pids[-1]}" "${pids[-2]}"
  wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
}

echo "run,second,p50_ms,p99_ms,errors,resnet34,resnet50,resnet101,resnet152" >"$work/steps.csv"
run policy-alone ""
run guarded "    slo: { latency_p99: 50ms, window: 2s }"
cp "$work/steps.csv" "$out_dir/steps.csv"

/usr/bin/python3 - "$work" "$out_dir" "$seconds" <<'PY'
import csv, json, sys
work, out, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = list(csv.DictReader(open(f"{work}/steps.csv")))
half = seconds // 2
lines = ["| run | p99 before the step (ms, worst second) | p99 after (worst second) | p99 in the last half of the run after the step (worst second) | errors | share on resnet152 after the step | grams | mean error % |",
         "|---|---|---|---|---|---|---|---|"]
for run in ("policy-alone", "guarded"):
    r = [x for x in rows if x["run"] == run]
    before = [float(x["p99_ms"]) for x in r if int(x["second"]) <= half]
    after = [x for x in r if int(x["second"]) > half]
    late = [float(x["p99_ms"]) for x in after if int(x["second"]) > half + half // 2]
    errors = sum(int(x["errors"]) for x in r)
    served_after = sum(int(x[m]) for x in after for m in ("resnet34", "resnet50", "resnet101", "resnet152"))
    big_after = sum(int(x["resnet152"]) for x in after)
    ledger = json.load(open(f"{work}/{run}.selection.json"))["routes"][0]["ledger"]
    lines.append(f"| {run} | {max(before):.1f} | {max(float(x['p99_ms']) for x in after):.1f} | {max(late):.1f} | {errors} | "
                 f"{100 * big_after / max(served_after, 1):.0f} % | {ledger['grams']:.4f} | {ledger['mean_error_percent']:.3f} |")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

if command -v gnuplot >/dev/null; then
  gnuplot <<EOF
set terminal svg size 1000,450 dynamic background rgb "white"
set output "$out_dir/slo_step.svg"
set datafile separator ","
set title "p99 latency per second, intensity stepping from 250 to 100 gCO2/kWh at second $((seconds / 2)) ($rate calls/s)"
set xlabel "second"; set ylabel "p99 (ms)"; set logscale y; set key top left
set arrow from $((seconds / 2)),graph 0 to $((seconds / 2)),graph 1 nohead dt 2
plot "< grep '^policy-alone' $out_dir/steps.csv" using 2:4 with linespoints lw 2 title "policy alone", \
     "< grep '^guarded' $out_dir/steps.csv" using 2:4 with linespoints lw 2 title "with slo { latency_p99: 50ms, window: 2s }", \
     50 with lines dt 3 title "objective"
EOF
  echo "plot: $out_dir/slo_step.svg"
fi
