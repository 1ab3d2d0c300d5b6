#!/usr/bin/python3
"""Summarises bench/compare.sh's raw.jsonl (and h2load output) into Markdown: medians over repetitions,
added latency over the direct path, and the sidecar's ratios to the direct path and to nginx."""
import json
import re
import statistics
import sys
from collections import defaultdict


def main():
    if sys.argv[1] == "--line":  # one loadgen result on stdin, as a progress line
        d = json.load(sys.stdin)
        lat = d["latency_us"]
        print(f"{d['throughput_rps']:.0f} req/s, p50 {lat['p50']:.0f} µs, p99 {lat['p99']:.0f} µs, errors {d['errors']}")
        return
    raw, h2 = sys.argv[1], sys.argv[2]
    runs = defaultdict(list)
    for line in open(raw):
        r = json.loads(line)
        runs[(r.get("mode", "unary"), r["target"], r["payload"], r["concurrency"])].append(r)

    def med(key, f):
        values = [f(r) for r in runs.get(key, [])]
        return statistics.median(values) if values else float("nan")

    def cpu_per_1000(r):
        ok = r["load"]["ok"]
        return 1000 * r["proxy_cpu_s"] / ok if ok else float("nan")

    def ratio(a, b):
        return a / b if b > 0 else float("nan")

    print("| call | payload | concurrency | target | throughput (req/s) | p50 µs | p99 µs | added p50 µs | added p99 µs "
          "| proxy CPU s / 1000 req | proxy peak RSS MB | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for mode in ("unary", "stream"):
        for payload in sorted({k[2] for k in runs if k[0] == mode}):
            for c in sorted({k[3] for k in runs if k[0] == mode}):
                base_p50 = med((mode, "direct", payload, c), lambda r: r["load"]["latency_us"]["p50"])
                base_p99 = med((mode, "direct", payload, c), lambda r: r["load"]["latency_us"]["p99"])
                row = {}
                for target in ("direct", "sidecar", "nginx", "grpc-floor"):
                    key = (mode, target, payload, c)
                    if key not in runs:
                        continue
                    rps = med(key, lambda r: r["load"]["throughput_rps"])
                    p50 = med(key, lambda r: r["load"]["latency_us"]["p50"])
                    p99 = med(key, lambda r: r["load"]["latency_us"]["p99"])
                    cpu = med(key, cpu_per_1000)
                    rss = med(key, lambda r: r["proxy_peak_rss_kb"]) / 1024
                    errors = sum(sum(r["load"]["errors"].values()) for r in runs[key])
                    row[target] = dict(rps=rps, p50=p50, p99=p99, cpu=cpu, add50=p50 - base_p50, add99=p99 - base_p99)
                    if target == "direct":
                        print(f"| {mode} | {payload} | {c} | {target} | {rps:.0f} | {p50:.0f} | {p99:.0f} | — | — | — | — | {errors} |")
                    else:
                        print(f"| {mode} | {payload} | {c} | {target} | {rps:.0f} | {p50:.0f} | {p99:.0f} | "
                              f"{p50 - base_p50:.0f} | {p99 - base_p99:.0f} | {cpu:.4f} | {rss:.1f} | {errors} |")
                if "sidecar" in row and "nginx" in row:
                    s, n, d = row["sidecar"], row["nginx"], row["direct"]
                    f = row.get("grpc-floor")
                    ratios.append((mode, payload, c, ratio(s["rps"], d["rps"]), ratio(s["rps"], n["rps"]),
                                   ratio(s["add50"], n["add50"]), ratio(s["add99"], n["add99"]), ratio(s["cpu"], n["cpu"]),
                                   ratio(f["add50"], n["add50"]) if f else None, ratio(f["cpu"], n["cpu"]) if f else None))
    print()
    print("| call | payload | concurrency | throughput sidecar/direct | throughput sidecar/nginx | added p50 sidecar/nginx "
          "| added p99 sidecar/nginx | CPU per request sidecar/nginx | added p50 grpc-floor/nginx "
          "| CPU per request grpc-floor/nginx |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, payload, c, a, b, l50, l99, cpu, f50, fcpu in ratios:
        floor = f"{f50:.2f} | {fcpu:.2f}" if f50 is not None else "— | —"
        print(f"| {mode} | {payload} | {c} | {a:.2f} | {b:.2f} | {l50:.2f} | {l99:.2f} | {cpu:.2f} | {floor} |")

    print("\nh2load cross-check (1 KB, 1 connection, 16 streams, 20,000 requests):\n")
    print("| target | req/s | succeeded |")
    print("|---|---|---|")
    target = None
    for line in open(h2):
        if line.startswith("== "):
            target = line[3:].strip()
        m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", line)
        if m:
            rate = m.group(1)
        m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", line)
        if m and target:
            print(f"| {target} | {rate} | {m.group(1)} |")


if __name__ == "__main__":
    main()
