#!/usr/bin/python3
"""Summarises bench/compare.sh's raw.jsonl (and h2load output) into Markdown: medians over repetitions,
added latency over the direct path, and the sidecar's ratios to the direct path and to nginx; with
--growth, the cost-growth tables and plot."""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict


def read_runs(*paths):
    """loadgen runs from compare.sh's .jsonl files, by (call, target, payload, response, concurrency);
    runs recorded before responses were varied had small responses (0)."""
    runs = defaultdict(list)
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            runs[(r.get("mode", "unary"), r["target"], r["payload"], r.get("response", 0), r["concurrency"])].append(r)
    return runs


def median(runs, key, f):
    """The median of f over the repetitions of one run; NaN when there are none."""
    values = [f(r) for r in runs.get(key, [])]
    return statistics.median(values) if values else float("nan")


def p50_us(r):
    return r["load"]["latency_us"]["p50"]


def cpu_s_per_request(r):
    ok = r["load"]["ok"]
    return r["proxy_cpu_s"] / ok if ok else float("nan")


def growth(raw, growth_file, out_dir):
    """Cost growth: added p50 latency and proxy CPU per request by payload size (concurrency 1) and by
    concurrency (1 KB), for the sidecar and nginx, as Markdown, .dat files and a gnuplot SVG."""
    runs = read_runs(raw, growth_file)

    def point(payload, c):
        direct = median(runs, ("unary", "direct", payload, 0, c), p50_us)
        row = []
        for target in ("sidecar", "nginx"):
            key = ("unary", target, payload, 0, c)
            row += [median(runs, key, p50_us) - direct, 1e6 * median(runs, key, cpu_s_per_request)]
        return row

    unary = [k for k in runs if k[0] == "unary" and k[3] == 0]
    sweeps = {
        "payload": [(p, point(p, 1)) for p in sorted({k[2] for k in unary if k[4] == 1})],
        "concurrency": [(c, point(1024, c)) for c in sorted({k[4] for k in unary if k[2] == 1024})],
    }
    for name, rows in sweeps.items():
        label = "payload bytes (concurrency 1)" if name == "payload" else "concurrency (1 KB payload)"
        print(f"\nCost growth by {label}:\n")
        print(f"| {name} | sidecar added p50 µs | nginx added p50 µs | sidecar CPU µs / req | nginx CPU µs / req |")
        print("|---|---|---|---|---|")
        with open(f"{out_dir}/growth_{name}.dat", "w") as dat:
            dat.write(f"# {name} sidecar_added_p50_us sidecar_cpu_us_per_req nginx_added_p50_us nginx_cpu_us_per_req\n")
            for x, (s50, scpu, n50, ncpu) in rows:
                print(f"| {x} | {s50:.0f} | {n50:.0f} | {scpu:.0f} | {ncpu:.0f} |")
                dat.write(f"{x} {s50:.1f} {scpu:.1f} {n50:.1f} {ncpu:.1f}\n")
    script = f"""set terminal svg size 900,640 dynamic font 'sans,11'
set output '{out_dir}/growth.svg'
set multiplot layout 2,2 title 'carbon-sidecar vs nginx grpc\\_pass: cost over the direct path'
set key top left
set grid
set logscale x 2
set logscale y 10
set xtics ('1K' 1024, '4K' 4096, '16K' 16384, '64K' 65536, '256K' 262144, '1M' 1048576, '4M' 4194304)
set xlabel 'payload (bytes), concurrency 1'
set ylabel 'added p50 latency (µs)'
plot '{out_dir}/growth_payload.dat' using 1:2 with linespoints title 'carbon-sidecar', '' using 1:4 with linespoints title 'nginx'
set ylabel 'proxy CPU per request (µs)'
plot '{out_dir}/growth_payload.dat' using 1:3 with linespoints title 'carbon-sidecar', '' using 1:5 with linespoints title 'nginx'
unset logscale y
set xtics autofreq
set yrange [0:*]
set xlabel 'concurrency, 1 KB payload'
set ylabel 'added p50 latency (µs)'
plot '{out_dir}/growth_concurrency.dat' using 1:2 with linespoints title 'carbon-sidecar', '' using 1:4 with linespoints title 'nginx'
set ylabel 'proxy CPU per request (µs)'
plot '{out_dir}/growth_concurrency.dat' using 1:3 with linespoints title 'carbon-sidecar', '' using 1:5 with linespoints title 'nginx'
unset multiplot
"""
    with open(f"{out_dir}/growth.gp", "w") as gp:
        gp.write(script)
    if shutil.which("gnuplot"):
        subprocess.run(["gnuplot", f"{out_dir}/growth.gp"], check=False)


def main():
    if sys.argv[1] == "--growth":
        growth(*sys.argv[2:5])
        return
    if sys.argv[1] == "--line":  # one loadgen result on stdin, as a progress line
        d = json.load(sys.stdin)
        lat = d["latency_us"]
        print(f"{d['throughput_rps']:.0f} req/s, p50 {lat['p50']:.0f} µs, p99 {lat['p99']:.0f} µs, errors {d['errors']}")
        return
    raw, h2 = sys.argv[1], sys.argv[2]
    runs = read_runs(raw)

    def med(key, f):
        return median(runs, key, f)

    def cpu_per_1000(r):
        return 1000 * cpu_s_per_request(r)

    def ratio(a, b):
        return a / b if b > 0 else float("nan")

    print("| call | request | response | concurrency | target | throughput (req/s) | p50 µs | p99 µs | added p50 µs "
          "| added p99 µs | proxy CPU s / 1000 req | proxy peak RSS MB | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for mode in ("unary", "stream"):
        sizes = sorted({(k[3], k[2]) for k in runs if k[0] == mode})  # small responses first
        for response, payload in sizes:
            for c in sorted({k[4] for k in runs if k[0] == mode}):
                direct = (mode, "direct", payload, response, c)
                base_p50 = med(direct, lambda r: r["load"]["latency_us"]["p50"])
                base_p99 = med(direct, lambda r: r["load"]["latency_us"]["p99"])
                row = {}
                for target in ("direct", "sidecar", "sidecar-h2", "sidecar-h2-wide", "sidecar-h2-alt", "nginx", "grpc-floor"):
                    key = (mode, target, payload, response, c)
                    if key not in runs:
                        continue
                    rps = med(key, lambda r: r["load"]["throughput_rps"])
                    p50 = med(key, lambda r: r["load"]["latency_us"]["p50"])
                    p99 = med(key, lambda r: r["load"]["latency_us"]["p99"])
                    cpu = med(key, cpu_per_1000)
                    rss = med(key, lambda r: r["proxy_peak_rss_kb"]) / 1024
                    errors = sum(sum(r["load"]["errors"].values()) for r in runs[key])
                    row[target] = dict(rps=rps, p50=p50, p99=p99, cpu=cpu, add50=p50 - base_p50, add99=p99 - base_p99)
                    sizes_cells = f"| {mode} | {payload} | {response or 'small'} | {c} | {target} |"
                    if target == "direct":
                        print(f"{sizes_cells} {rps:.0f} | {p50:.0f} | {p99:.0f} | — | — | — | — | {errors} |")
                    else:
                        print(f"{sizes_cells} {rps:.0f} | {p50:.0f} | {p99:.0f} | "
                              f"{p50 - base_p50:.0f} | {p99 - base_p99:.0f} | {cpu:.4f} | {rss:.1f} | {errors} |")
                for plane in ("sidecar", "sidecar-h2", "sidecar-h2-wide", "sidecar-h2-alt"):
                    if plane not in row or "nginx" not in row:
                        continue
                    s, n, d = row[plane], row["nginx"], row["direct"]
                    f = row.get("grpc-floor")
                    ratios.append((mode, payload, response, c, plane, ratio(s["rps"], d["rps"]), ratio(s["rps"], n["rps"]),
                                   ratio(s["add50"], n["add50"]), ratio(s["add99"], n["add99"]), ratio(s["cpu"], n["cpu"]),
                                   ratio(f["add50"], n["add50"]) if f else None, ratio(f["cpu"], n["cpu"]) if f else None))
    print()
    print("sidecar: data_plane grpc (gRPC C++ generic service); sidecar-h2: data_plane h2 (nghttp2 + libevent); "
          "sidecar-h2-wide: data_plane h2 with the windows of --h2-wide; sidecar-h2-alt: data_plane h2 with the keys of --h2-alt.\n")
    print("| call | request | response | concurrency | plane | throughput plane/direct | throughput plane/nginx "
          "| added p50 plane/nginx | added p99 plane/nginx | CPU per request plane/nginx "
          "| added p50 grpc-floor/nginx | CPU per request grpc-floor/nginx |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, payload, response, c, plane, a, b, l50, l99, cpu, f50, fcpu in ratios:
        floor = f"{f50:.2f} | {fcpu:.2f}" if f50 is not None else "— | —"
        print(f"| {mode} | {payload} | {response or 'small'} | {c} | {plane} | {a:.2f} | {b:.2f} | {l50:.2f} | {l99:.2f} "
              f"| {cpu:.2f} | {floor} |")

    if os.path.getsize(h2) == 0:
        return
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
