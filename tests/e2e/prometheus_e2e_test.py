"""End to end with Prometheus: the built sidecar serves known requests at known intensities, a real
Prometheus server (Debian's package) scrapes its admin port with the project's rules loaded, and
PromQL answers must equal the grams and counts computed here independently. Also: promtool accepts
a live scrape, and the Grafana dashboard uses only metrics the sidecar or the rules provide.
"""
import json
import os
import re
import signal
import socket
import subprocess
import unittest
import urllib.parse
import urllib.request

from e2e_support import SOURCE_DIR, Process, SidecarTestCase, infer_request, poll

E = {"resnet34": 359.9321833, "resnet50": 420.6213298, "resnet101": 803.0948846, "resnet152": 1238.147188}
ERR = {"resnet34": 8.58, "resnet50": 7.138, "resnet101": 6.454, "resnet152": 5.954}


def grams(model, items, intensity):
    return E[model] * 1e-3 / 3.6e6 * intensity * items


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


class PrometheusEndToEnd(SidecarTestCase):
    def serve_known_requests(self):
        """3 requests of batch 2 at 200 g/kWh (resnet101), then 2 of batch 1 at 300 (resnet34)."""
        port = self.start_upstream()
        config = self.write_config(port, self.static(200))
        sidecar, stub = self.start_sidecar(config)
        for _ in range(3):
            response = stub.ModelInfer(infer_request("resnet", batch=2), timeout=10)
            self.assertEqual(response.model_name, "resnet101")
        self.write_config(port, self.static(300))
        sidecar.proc.send_signal(signal.SIGHUP)
        admin = f"http://127.0.0.1:{sidecar.admin_port}"
        self.assertTrue(poll(lambda: json.loads(http_get(f"{admin}/v1/selection"))["routes"][0]["model"]
                             == "resnet34"), sidecar.output())
        for _ in range(2):
            response = stub.ModelInfer(infer_request("resnet", batch=1), timeout=10)
            self.assertEqual(response.model_name, "resnet34")
        return sidecar, admin

    def test_promtool_accepts_a_live_scrape(self):
        _, admin = self.serve_known_requests()
        scrape = http_get(f"{admin}/metrics")
        check = subprocess.run(["promtool", "check", "metrics"], input=scrape, capture_output=True, text=True,
                               timeout=30)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertEqual(check.stdout + check.stderr, "")  # not even a lint warning

    def test_prometheus_sees_exactly_what_was_served(self):
        _, admin = self.serve_known_requests()
        admin_port = admin.rsplit(":", 1)[1]
        web_port = free_port()
        rules = os.path.join(SOURCE_DIR, "config/prometheus/carbon-sidecar.rules.yml")
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: carbon-sidecar
    static_configs: [{{ targets: ["127.0.0.1:{admin_port}"] }}]
""")
        prometheus = Process(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.dir}/tsdb",
                              f"--web.listen-address=127.0.0.1:{web_port}"])
        self.processes.append(prometheus)

        def query(expr):
            try:
                body = http_get(f"http://127.0.0.1:{web_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
            except OSError:
                return None
            result = json.loads(body)["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        expected_grams = grams("resnet101", 6, 200) + grams("resnet34", 2, 300)
        # Σ items × C = 6 × 200 + 2 × 300 = 1800 g/kWh·items.
        expected_baseline = E["resnet50"] * 1e-3 / 3.6e6 * 1800
        expected_errors = 6 * ERR["resnet101"] + 2 * ERR["resnet34"]

        self.assertIsNotNone(poll(lambda: query("sum(carbon_sidecar_emissions_grams_total)"), timeout=60),
                             prometheus.output()[-3000:])
        self.assertAlmostEqual(query("sum(carbon_sidecar_emissions_grams_total)"), expected_grams, delta=1e-15)
        self.assertEqual(query('sum(carbon_sidecar_requests_total{code="OK"})'), 5)
        self.assertEqual(query('carbon_sidecar_requests_total{model="resnet101",code="OK"}'), 3)
        self.assertEqual(query("sum(carbon_sidecar_inferences_total)"), 8)
        self.assertAlmostEqual(query('carbon_sidecar_counterfactual_emissions_grams_total{model="resnet50"}'),
                               expected_baseline, delta=1e-15)
        self.assertAlmostEqual(query("carbon_sidecar_error_percent_sum_total"), expected_errors, delta=1e-9)
        mean_error = expected_errors / 8
        rqi = (ERR["resnet50"] - mean_error) / ERR["resnet50"] * 100
        efficiency = rqi / (expected_grams - expected_baseline)
        self.assertAlmostEqual(query("carbon_sidecar_carbon_emission_efficiency") / efficiency, 1, places=9)
        # The recording rules are loaded and evaluated.
        self.assertEqual(poll(lambda: query("route:carbon_sidecar_baseline_error_percent"), timeout=30), 7.138)
        self.assertEqual(query('carbon_sidecar_selected_model_info{model="resnet34"}'), 1)

    def test_the_dashboard_uses_only_metrics_that_exist(self):
        _, admin = self.serve_known_requests()
        scrape = http_get(f"{admin}/metrics")
        exposed = set(re.findall(r"^(carbon_sidecar_\w+?)(?:_bucket|_sum|_count)?[{ ]", scrape, re.M))
        exposed |= set(re.findall(r"^(carbon_sidecar_\w+)[{ ]", scrape, re.M))
        with open(os.path.join(SOURCE_DIR, "config/prometheus/carbon-sidecar.rules.yml")) as f:
            recorded = set(re.findall(r"record: (\S+)", f.read()))
        with open(os.path.join(SOURCE_DIR, "config/prometheus/grafana-dashboard.json")) as f:
            dashboard = json.load(f)
        used = set()
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                used |= set(re.findall(r"\b((?:route|route_model):[\w:]+|carbon_sidecar_\w+)", target["expr"]))
        self.assertTrue(used)
        self.assertEqual(used - exposed - recorded, set())


if __name__ == "__main__":
    unittest.main()
