"""The README's local run, inspected the way it says: `make run` (``serve run serve_config.yaml`` with
serve.env) in one shell; from another, `make status` shows Serve's status and deployed config with the
token Ray 2.60 made for the local cluster, and the dashboard's API answers with that token.

The run gets a private HOME, so its token (~/.ray/auth_token) is its own (torch's cache stays put); it binds the README's ports
(8000 serve, 8265 dashboard) and every process it started is stopped by pid afterwards, Serve's haproxy
child included.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from harness.ray_cluster import serve_env

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / ".venv" / "bin" / "serve"
PORTS = {"serve": 8000, "dashboard": 8265}
READY_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def stop_tree(proc: subprocess.Popen) -> list[str]:
    """Interrupt ``serve run`` as Ctrl-C does, then stop by pid whatever it started and left behind."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    survivors = []
    for p in tree:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                survivors.append(" ".join(p.cmdline()[:2]))
                p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(tree, timeout=30)
    return survivors


@pytest.fixture()
def readme_run(tmp_path):
    """`make run`'s command with a private HOME; yields that environment once /ready answers."""
    busy = [f"{name} {port}" for name, port in PORTS.items() if not port_free(port)]
    assert not busy, f"ports the README's make run binds are in use on 127.0.0.1: {busy}"
    home = tmp_path / "home"
    home.mkdir()
    # torch's cache (the weights `make setup` installed) stays where it is: under the real HOME by default.
    torch_home = os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
    env = {
        **os.environ,
        **serve_env(),
        "HOME": str(home),
        "TORCH_HOME": torch_home,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(name, None)
    log = (tmp_path / "serve-run.log").open("wb")
    proc = subprocess.Popen(
        [str(SERVE), "run", "serve_config.yaml"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve-run.log").read_text()[-4000:]
            try:
                if requests.get(f"http://127.0.0.1:{PORTS['serve']}/ready", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                seen = subprocess.run(
                    [str(SERVE), "status"],
                    cwd=REPO,
                    env={**env, "RAY_AUTH_MODE": "token"},
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                log_tail = "\n".join(
                    line
                    for line in (tmp_path / "serve-run.log").read_text().splitlines()
                    if "file_system_monitor" not in line
                )[-4000:]
                pytest.fail(
                    f"/ready not 200 within {READY_TIMEOUT_S} s; serve status:\n{seen.stdout}{seen.stderr}\n"
                    f"serve run's log:\n{log_tail}"
                )
            time.sleep(2)
        yield env
    finally:
        left = stop_tree(proc)
        log.close()
        print(f"\nserve run stopped; processes stopped by pid after Ctrl-C: {left or 'none'}")


def test_make_status_shows_the_local_run_and_the_dashboard_takes_its_token(readme_run):
    env = readme_run
    # What a user saw before make status: the bare CLI is refused, although the token is on disk.
    bare = subprocess.run(
        [str(SERVE), "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert bare.returncode != 0 and "authentication" in (bare.stdout + bare.stderr).lower(), bare

    # /ready answers once one replica of each deployment serves; the others may still be starting, so
    # make status is read until the application says RUNNING, as a user watching it would.
    deadline = time.monotonic() + 180
    while True:
        status = subprocess.run(
            ["make", "-s", "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
        )
        assert status.returncode == 0, status.stdout + status.stderr
        out = status.stdout
        serve_status = yaml.safe_load(
            out.split("== serve status", 1)[1].split("\n", 1)[1].split("\n== ", 1)[0]
        )
        app = serve_status["applications"]["classifier"]
        if app["status"] == "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert app["status"] == "RUNNING", app
    assert {name: d["status"] for name, d in app["deployments"].items()} == {
        "ImageIngress": "HEALTHY",
        "ImageClassifier": "HEALTHY",
    }, app
    config = yaml.safe_load(out.split("== serve config", 1)[1].split("\n", 1)[1].split("\n== ", 1)[0])
    assert config["import_path"] == "serve_app.app:build_app", config
    assert "ray get-auth-token" in out

    token = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ray"), "get-auth-token"],
        cwd=REPO,
        env={**env, "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert token.returncode == 0 and token.stdout.strip(), token
    assert token.stdout.strip() not in out, "make status must not print the token itself"
    api = f"http://127.0.0.1:{PORTS['dashboard']}/api/serve/applications/"
    refused = requests.get(api, timeout=30)
    assert refused.status_code in (401, 403), (refused.status_code, refused.text[:200])
    allowed = requests.get(api, headers={"Authorization": f"Bearer {token.stdout.strip()}"}, timeout=30)
    assert allowed.status_code == 200, (allowed.status_code, allowed.text[:200])
    assert allowed.json()["applications"]["classifier"]["status"] == "RUNNING"
