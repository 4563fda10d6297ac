"""The Locust wrapper end to end: a real headless Locust process against the real Serve app.

Locust runs as a subprocess (``python -m loadtest.run``); it is never imported here because it
monkey-patches the standard library. No timing is asserted (CI machines vary); the SLO gate is
checked with thresholds that a run cannot meet or cannot miss.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TASKS = {"/predict multipart", "/predict raw", "/predict x4", "/v2 infer"}


def run_wrapper(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_smoke_run_against_the_real_app_passes_and_writes_reports(base_url, tmp_path):
    # A generous p99 bound: the smoke run checks correctness of every answer, not speed.
    proc = run_wrapper("--host", base_url, "--smoke", "--out", str(tmp_path), "--slo-p99-ms", "60000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in (
        "locust_stats.csv",
        "locust_stats_history.csv",
        "locust_failures.csv",
        "report.html",
        "slo.json",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    slo = json.loads((tmp_path / "slo.json").read_text())
    assert slo["passed"] is True and slo["failures"] == 0 and slo["requests"] > 0
    assert slo["locust_cpu_cores"] > 0
    assert set(slo["per_task"]) == TASKS  # every weighted task ran
    assert all(t["requests"] > 0 and t["failures"] == 0 for t in slo["per_task"].values())
    assert "<html" in (tmp_path / "report.html").read_text()[:2000].lower()


def test_gate_fails_when_the_latency_slo_cannot_be_met(base_url, tmp_path):
    proc = run_wrapper(
        "--host", base_url, "--smoke", "--duration", "3", "--out", str(tmp_path), "--slo-p99-ms", "0.001"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    slo = json.loads((tmp_path / "slo.json").read_text())
    assert slo["passed"] is False and slo["failures"] == 0
    assert any(r.startswith("p99") for r in slo["reasons"])
    assert "SLO FAIL" in proc.stdout


def test_gate_fails_when_nothing_answers(tmp_path):
    with __import__("socket").socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_wrapper(
        "--host", f"http://127.0.0.1:{port}", "--smoke", "--duration", "2", "--out", str(tmp_path)
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    slo = json.loads((tmp_path / "slo.json").read_text())
    assert slo["error_ratio"] == 1.0 and any("error ratio" in r for r in slo["reasons"])


class _Malformed(BaseHTTPRequestHandler):
    """Answers every POST with 200 and a body that is JSON but not a valid prediction."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps(
            {
                "model": "mobilenet_v2",
                "model_version": "x",
                "predictions": [{"label": "tabby", "class_id": 1, "score": 1.5}],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def malformed_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Malformed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_200_with_a_malformed_body_counts_as_a_failure(malformed_server, tmp_path):
    proc = run_wrapper(
        "--host",
        malformed_server,
        "--smoke",
        "--users",
        "2",
        "--duration",
        "2",
        "--out",
        str(tmp_path),
        "--slo-p99-ms",
        "60000",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    slo = json.loads((tmp_path / "slo.json").read_text())
    assert slo["requests"] > 0 and slo["failures"] == slo["requests"]
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert "malformed answer" in failures
