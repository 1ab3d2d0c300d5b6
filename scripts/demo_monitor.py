#!/usr/bin/python3
"""Watches a carbon-sidecar's /metrics during the demo: a table row every few seconds (simulated time,
intensity, window, model in use, requests per model, grams so far, efficiency vs the baseline), then
a summary and a plot of intensity and model choice over the run."""
import argparse
import datetime
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request


def scrape(url):
    samples = {}
    with urllib.request.urlopen(url, timeout=2) as response:
        for line in response.read().decode().splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if m:
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                samples.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return samples


def value(samples, name, **want):
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == w for k, w in want.items()))


def efficiency_text(samples, route):
    """The paper's efficiency where it means something (a gain bought with extra grams); otherwise
    "better" when the route beats the baseline on both accuracy and carbon, else "—"."""
    eff = value(samples, "carbon_sidecar_carbon_emission_efficiency", route=route)
    if not math.isnan(eff):
        return f"{eff:.4g}"
    return "better" if value(samples, "carbon_sidecar_beats_baseline", route=route) == 1 else "—"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", default="http://127.0.0.1:9464/metrics")
    parser.add_argument("--route", default="resnet")
    parser.add_argument("--duration", type=float, default=90)
    parser.add_argument("--interval", type=float, default=3)
    parser.add_argument("--out_dir", default="")
    args = parser.parse_args()

    rows = []
    header = (f"{'simulated time':<17} {'gCO2/kWh':>8} {'window':>11} {'model':<10} {'req/model':<44} "
              f"{'g CO2':>8} {'eff %/g':>9}")
    print(header)
    end = time.monotonic() + args.duration
    last = None
    while True:
        try:
            m = scrape(args.metrics)
        except OSError as e:
            print(f"(metrics unavailable: {e})", flush=True)
            m = None
        if m:
            last = m
            models = [l["model"] for l, _ in m.get("carbon_sidecar_model_energy_joules", []) if l["route"] == args.route]
            selected = [l["model"] for l, v in m.get("carbon_sidecar_selected_model_info", [])
                        if l["route"] == args.route and v == 1]
            sim = value(m, "carbon_sidecar_grid_intensity_timestamp_seconds")
            sim_text = datetime.datetime.fromtimestamp(sim, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M") if sim else "-"
            c = value(m, "carbon_sidecar_grid_intensity_gco2_per_kwh")
            low = value(m, "carbon_sidecar_intensity_window_gco2_per_kwh", bound="low")
            high = value(m, "carbon_sidecar_intensity_window_gco2_per_kwh", bound="high")
            counts = " ".join(f"{name.replace('resnet', 'r')}:{value(m, 'carbon_sidecar_requests_total', route=args.route, model=name, code='OK'):.0f}"
                              for name in models)
            grams = value(m, "carbon_sidecar_emissions_grams_total", route=args.route)
            eff = efficiency_text(m, args.route)
            model = selected[0] if selected else "-"
            print(f"{sim_text:<17} {c:>8.0f} {low:>5.0f}-{high:<5.0f} {model:<10} {counts:<44} {grams:>8.4f} {eff:>9}",
                  flush=True)
            if sim:
                rows.append((sim, c, models.index(model) if model in models else -1, models))
        if time.monotonic() >= end:
            break
        time.sleep(max(0.0, min(args.interval, end - time.monotonic())))

    if not last:
        print("no metrics were read", file=sys.stderr)
        return 1
    models = [l["model"] for l, _ in last.get("carbon_sidecar_model_energy_joules", []) if l["route"] == args.route]
    baseline = [l["baseline"] for l, _ in last.get("carbon_sidecar_carbon_emission_efficiency", [])
                if l["route"] == args.route]
    print("\nSummary")
    served = {name: value(last, "carbon_sidecar_requests_total", route=args.route, model=name, code="OK") for name in models}
    for name in models:
        print(f"  {name:<10} {served[name]:>8.0f} requests, "
              f"{value(last, 'carbon_sidecar_emissions_grams_total', route=args.route, model=name):.4f} g CO2")
    print(f"  models that served requests: {sum(1 for n in served.values() if n > 0)}")
    if baseline:
        print(f"  against {baseline[0]}: relative quality improvement "
              f"{value(last, 'carbon_sidecar_relative_quality_improvement_percent', route=args.route):.2f} %, extra "
              f"{value(last, 'carbon_sidecar_extra_emissions_grams', route=args.route):+.4f} g CO2, efficiency "
              f"{efficiency_text(last, args.route)} %/g")
        if value(last, "carbon_sidecar_beats_baseline", route=args.route) == 1:
            print(f"  more accurate than {baseline[0]} and fewer grams: better on both counts (efficiency "
                  "measures a gain bought with extra carbon, so there is none to show)")
    if args.out_dir and rows and shutil.which("gnuplot"):
        os.makedirs(args.out_dir, exist_ok=True)
        data = os.path.join(args.out_dir, "demo.dat")
        with open(data, "w") as f:
            for sim, c, index, _ in rows:
                f.write(f"{int(sim)} {c} {index}\n")
        tics = ", ".join(f'"{name}" {i}' for i, name in enumerate(models))
        plot = os.path.join(args.out_dir, "demo.svg")
        script = f"""set terminal svg size 1000,450 dynamic background rgb "white"
set output "{plot}"
set title "carbon-sidecar demo: grid intensity and the model in use"
set xdata time; set timefmt "%s"; set format x "%d %b %H:%M"
set ylabel "gCO2/kWh"; set y2range [-0.5:{len(models) - 0.5}]; set y2tics ({tics})
set key outside bottom center horizontal
plot "{data}" using 1:2 with linespoints title "intensity", "{data}" using 1:3 axes x1y2 with steps lw 2 title "model"
"""
        subprocess.run(["gnuplot"], input=script, text=True, check=False)
        print(f"  plot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
