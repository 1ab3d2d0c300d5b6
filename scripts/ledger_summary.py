#!/usr/bin/python3
"""Reads a carbon-sidecar /metrics scrape on stdin and prints one route's ledger as a table."""
import argparse
import re
import sys


def parse(text):
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--route", default="resnet")
    args = parser.parse_args()
    samples = parse(sys.stdin.read())

    def value(name, **want):
        return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == w for k, w in want.items()))

    models = [labels["model"] for labels, _ in samples.get("carbon_sidecar_model_energy_joules", [])
              if labels["route"] == args.route]
    print(f"{'model':<10} {'requests':>9} {'inferences':>11} {'mg CO2':>10} {'mg if all here':>15}")
    for model in models:
        print(f"{model:<10} {value('carbon_sidecar_requests_total', route=args.route, model=model, code='OK'):>9.0f} "
              f"{value('carbon_sidecar_inferences_total', route=args.route, model=model):>11.0f} "
              f"{1000 * value('carbon_sidecar_emissions_grams_total', route=args.route, model=model):>10.4f} "
              f"{1000 * value('carbon_sidecar_counterfactual_emissions_grams_total', route=args.route, model=model):>15.4f}")
    baseline = [labels["baseline"] for labels, _ in samples.get("carbon_sidecar_carbon_emission_efficiency", [])
                if labels["route"] == args.route]
    if baseline:
        b = baseline[0]
        print(f"\nagainst {b}: relative quality improvement "
              f"{value('carbon_sidecar_relative_quality_improvement_percent', route=args.route):.2f} %, "
              f"extra {1000 * value('carbon_sidecar_extra_emissions_grams', route=args.route):.4f} mg CO2, "
              f"efficiency {value('carbon_sidecar_carbon_emission_efficiency', route=args.route):.6g} %/g")
    return 0


if __name__ == "__main__":
    sys.exit(main())
