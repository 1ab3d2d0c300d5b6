"""The status page in a real browser: the built carbon-sidecar and fake-upstream, a replayed grid,
load from a grpcio client, then Debian's headless Chromium against GET / on the admin port.

Run by ctest with the environment of e2e_support, plus CARBON_CHROMIUM (the browser) and optionally
CARBON_SCREENSHOT (where the screenshot goes; default: the test's temporary directory).
Must run under Debian's /usr/bin/python3 (python3-grpcio).
"""
import html.parser
import json
import os
import signal
import subprocess
import threading
import time
import unittest
import urllib.request

from e2e_support import SOURCE_DIR, SidecarTestCase, infer_request, poll

CHROMIUM = os.environ.get("CARBON_CHROMIUM", "chromium")


class Figures(html.parser.HTMLParser):
    """Every element with data-field: (route, field) -> data-value, and each chart's data-points."""

    def __init__(self):
        super().__init__()
        self.values = {}
        self.charts = {}
        self.scripts_with_src = 0
        self.external = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-field" in a:
            self.values[(a.get("data-route"), a["data-field"])] = a.get("data-value")
        if tag == "svg" and "data-chart" in a:
            self.charts[a["data-chart"]] = int(a.get("data-points", "0"))
        for key in ("src", "href"):
            if key in a and a[key].startswith(("http:", "https:", "//")):
                self.external.append(a[key])


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode(), r.headers.get("Content-Type")


def metric_sum(text, name, label):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class StatusPage(SidecarTestCase):
    def chromium(self, *args):
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--virtual-time-budget=7000", *args],
                              capture_output=True, text=True, timeout=60)

    def test_the_page_shows_what_the_sidecar_does_and_agrees_with_its_endpoints(self):
        port = self.start_upstream()
        trace = os.path.join(SOURCE_DIR, "data/carbon/sw_england_2023_06")
        config = self.write_config(port, f"""  provider: trace
  region: GB-SW
  file: {trace}
  time_column: from
  value_column: regions.intensity.forecast
  start: 2023-06-02T00:00:00Z
  speedup: 3600
  loop: true
  refresh: 200ms
  window: 24h""")
        with open(config) as f:
            text = f.read().replace('admin: { listen: "127.0.0.1:0" }',
                                    'admin: { listen: "127.0.0.1:0", history_interval: 200ms, history_points: 40 }')
        with open(config, "w") as f:
            f.write(text)
        sidecar, stub = self.start_sidecar(config)
        admin = sidecar.admin_port

        # Load for a while, so the chart has points and the choice has followed the grid.
        stop = threading.Event()
        served = []

        def load():
            while not stop.is_set():
                served.append(stub.ModelInfer(infer_request("resnet"), timeout=10).model_name)

        thread = threading.Thread(target=load)
        thread.start()
        try:
            self.assertTrue(poll(lambda: len(json.loads(get(admin, "/v1/history")[0])["points"]) >= 40, timeout=20))

            # The screenshots (README) while the load still runs.
            shot = os.environ.get("CARBON_SCREENSHOT") or os.path.join(self.dir, "status-page.png")
            result = self.chromium("--window-size=1100,1000", f"--screenshot={shot}", f"http://127.0.0.1:{admin}/")
            self.assertEqual(result.returncode, 0, result.stderr)
            # And at a phone's width (the README's second picture).
            phone = shot[:-len(".png")] + "-phone.png"
            result = self.chromium("--window-size=390,1800", f"--screenshot={phone}", f"http://127.0.0.1:{admin}/")
            self.assertEqual(result.returncode, 0, result.stderr)
            for path in (shot, phone):
                with open(path, "rb") as f:
                    self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        finally:
            stop.set()
            thread.join()
        self.assertGreater(len(set(served)), 1, "the replayed grid should have moved the choice")

        body, content_type = get(admin, "/")
        self.assertTrue(content_type.startswith("text/html"))
        plain = Figures()
        plain.feed(body)
        # Without JavaScript the figures are in the page already.
        self.assertEqual(plain.values[("resnet", "inferences")], str(len(served)))
        self.assertEqual(plain.external, [], "the page must load nothing from elsewhere")

        dom = self.chromium("--dump-dom", f"http://127.0.0.1:{admin}/")
        self.assertEqual(dom.returncode, 0, dom.stderr)
        selection = json.loads(get(admin, "/v1/selection")[0])
        metrics = get(admin, "/metrics")[0]
        history = json.loads(get(admin, "/v1/history")[0])
        page = Figures()
        page.feed(dom.stdout)
        # The script drew the charts, then (5 s later, in Chromium's virtual time) fetched the page
        # again and swapped in its figures.
        refreshed = int(dom.stdout.split('data-refreshed="', 1)[1].split('"', 1)[0])
        self.assertGreaterEqual(refreshed, 2, "the script did not refresh the page")
        route = selection["routes"][0]
        # The ledger stopped moving with the load: the page and the endpoints agree exactly.
        self.assertEqual(int(page.values[("resnet", "inferences")]), route["ledger"]["inferences"])
        self.assertEqual(int(page.values[("resnet", "inferences")]), len(served))
        self.assertAlmostEqual(float(page.values[("resnet", "grams")]), route["ledger"]["grams"], delta=1e-12)
        self.assertAlmostEqual(float(page.values[("resnet", "grams")]),
                               metric_sum(metrics, "carbon_sidecar_emissions_grams_total", 'route="resnet"'),
                               delta=1e-9)
        self.assertAlmostEqual(float(page.values[("resnet", "mean_error")]), route["ledger"]["mean_error_percent"],
                               delta=1e-12)
        for candidate in route["candidates"]:
            model = candidate["model"]
            self.assertEqual(float(page.values[("resnet", "served:" + model)]),
                             metric_sum(metrics, "carbon_sidecar_inferences_total", f'model="{model}"'))
            self.assertEqual(float(page.values[("resnet", "served:" + model)]), served.count(model))
        # The grid keeps moving: the page's model is one the selection shows for that moment's intensity.
        self.assertIn(page.values[("resnet", "model")], [c["model"] for c in route["candidates"]])
        # The history is full (its bound), and the chart drew every point of it.
        self.assertEqual(len(history["points"]), 40)
        self.assertEqual(page.charts["resnet"], 40)

    def test_names_from_the_config_are_escaped(self):
        port = self.start_upstream()
        config = self.write_config(port, self.static(200))
        with open(config) as f:
            text = f.read().replace("  - name: resnet\n", '  - name: "<b>r&d</b>\\"x"\n')
        with open(config, "w") as f:
            f.write(text)
        sidecar, _ = self.start_sidecar(config)
        body, _ = get(sidecar.admin_port, "/")
        self.assertNotIn("<b>r&d</b>", body)
        self.assertIn("&lt;b&gt;r&amp;d&lt;/b&gt;&quot;x", body)

        # A reload the sidecar rejects: the page says so, with the error (escaped), and keeps the route.
        with open(config, "a") as f:
            f.write("bogus_key: <i>\n")
        sidecar.proc.send_signal(signal.SIGHUP)
        self.assertTrue(poll(lambda: "1 rejected" in get(sidecar.admin_port, "/")[0]), sidecar.output())
        body, _ = get(sidecar.admin_port, "/")
        self.assertIn("unknown key &#39;bogus_key&#39;", body)
        self.assertIn("&lt;b&gt;r&amp;d&lt;/b&gt;&quot;x", body)


if __name__ == "__main__":
    unittest.main()
