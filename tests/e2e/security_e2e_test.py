"""Secrets and labels, end to end: the built sidecar, a real HTTP server posing as the providers (one
that echoes the credentials it is sent back in its error bodies), and a real gRPC client."""
import base64
import datetime
import http.server
import json
import os
import signal
import threading
import unittest
import urllib.request

import grpc

from e2e_support import SidecarTestCase, infer_request, poll

TOKEN = "em-token-7f3a9c2e51"
PASSWORD = "wt-password-4b8d0e6f"


class LeakyProviders(http.server.BaseHTTPRequestHandler):
    """WattTime refuses every login, quoting the Authorization header it got; Electricity Maps
    refuses the first two calls quoting the token, then answers with a fresh reading."""

    lock = threading.Lock()
    seen = []  # (path, auth-token, Authorization)
    refusals_left = 2

    def do_GET(self):
        with self.lock:
            self.seen.append((self.path, self.headers.get("auth-token"), self.headers.get("Authorization")))
            refuse = self.path.startswith("/v3/carbon-intensity/latest") and LeakyProviders.refusals_left > 0
            if refuse:
                LeakyProviders.refusals_left -= 1
        if self.path.startswith("/login"):
            self.reply(403, {"error": f"credentials {self.headers.get('Authorization')} refused"})
        elif refuse:
            self.reply(401, {"error": f"token {self.headers.get('auth-token')} is not valid"})
        elif self.path.startswith("/v3/carbon-intensity/latest"):
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            self.reply(200, {"zone": "DE", "carbonIntensity": 180, "datetime": now})
        else:
            self.reply(404, {"error": f"nothing here for {self.headers.get('auth-token')}"})

    def reply(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


class SecurityEndToEnd(SidecarTestCase):
    def test_secrets_never_reach_logs_config_or_metrics(self):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LeakyProviders)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.shutdown)
        base = f"http://127.0.0.1:{server.server_port}"
        password_file = os.path.join(self.dir, "watttime-password")
        with open(password_file, "w") as f:
            f.write(PASSWORD + "\n")
        os.environ["CARBON_E2E_EM_TOKEN"] = TOKEN
        port = self.start_upstream()
        config = self.write_config(port, f"""  provider: fallback
  refresh: 1s
  max_backoff: 1s
  window_bounds: {{ low: 100, high: 300 }}
  providers:
    - {{ provider: watttime, region: CAISO_NORTH, base_url: "{base}", username: carbon,
        password_file: watttime-password }}
    - {{ provider: electricity-maps, zone: DE, base_url: "{base}", token_env: CARBON_E2E_EM_TOKEN }}""")
        sidecar, stub = self.start_sidecar(config, log_level="trace")
        # The electricity-maps reading (180 g/kWh in 100..300) takes over once its refusals are over.
        self.assertTrue(poll(lambda: self.served(stub)[0] == "resnet101", timeout=20), sidecar.output())
        sidecar.proc.send_signal(signal.SIGHUP)
        self.assertTrue(poll(lambda: sidecar.find("event=config_reloaded result=success")), sidecar.output())
        pages = {path: get(sidecar.admin_port, path) for path in ("/v1/config", "/metrics", "/v1/selection")}
        sidecar.proc.send_signal(signal.SIGTERM)
        self.assertEqual(sidecar.proc.wait(timeout=15), 0, sidecar.output())
        sidecar.reader.join(timeout=5)

        # The secrets were sent, and echoed back, so the test could catch a leak.
        with LeakyProviders.lock:
            self.assertIn(TOKEN, [token for _, token, _ in LeakyProviders.seen])
            self.assertTrue(any(auth and auth.startswith("Basic ") for _, _, auth in LeakyProviders.seen))
        self.assertIn("refused", sidecar.output())
        self.assertIn("[redacted]", sidecar.output())
        basic = base64.b64encode(f"carbon:{PASSWORD}".encode()).decode()
        for name, text in [("the log", sidecar.output()), *pages.items()]:
            for secret in (TOKEN, PASSWORD, basic):
                self.assertNotIn(secret, text, f"{secret} appears in {name}")
        self.assertIn('"token_env": "CARBON_E2E_EM_TOKEN"', pages["/v1/config"])

    def test_request_values_never_become_metric_labels(self):
        port = self.start_upstream()
        sidecar, stub = self.start_sidecar(self.write_config(port, self.static(150)))
        self.served(stub)
        planted = "planted-label-value-91c"
        with self.assertRaises(grpc.RpcError) as unknown_model:  # passed through; the upstream says NOT_FOUND
            stub.ModelInfer(infer_request(planted), timeout=10)
        self.assertEqual(unknown_model.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as bad_pin:  # refused by the sidecar
            stub.ModelInfer(infer_request("resnet"), timeout=10, metadata=(("x-carbon-pin-model", planted),))
        self.assertEqual(bad_pin.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        stub.ModelInfer(infer_request("resnet"), timeout=10,
                        metadata=(("x-tenant", planted), ("x-request-id", planted)))
        metrics = get(sidecar.admin_port, "/metrics")
        self.assertIn("carbon_sidecar_requests_total", metrics)
        self.assertNotIn(planted, metrics)


if __name__ == "__main__":
    unittest.main()
