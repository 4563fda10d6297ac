"""Helpers for tests that talk to the served application over real HTTP."""

from __future__ import annotations

import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.images import CAT_LABELS


def predict_file(http: requests.Session, base_url: str, data: bytes, **params) -> requests.Response:
    return http.post(f"{base_url}/predict", files={"file": ("img", data)}, params=params, timeout=60)


def top1(result: dict) -> str:
    return result["predictions"][0]["label"]


def assert_serving_normally(http: requests.Session, base_url: str, cat_png: bytes) -> None:
    """The server answers readiness and classifies the cat as a cat."""
    assert http.get(f"{base_url}/ready", timeout=30).status_code == 200
    response = predict_file(http, base_url, cat_png)
    assert response.status_code == 200, response.text
    assert top1(response.json()) in CAT_LABELS


def metric_samples(metrics_port: int, name: str) -> list:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def metric_total(metrics_port: int, name: str, **labels) -> float:
    return sum(
        s.value
        for s in metric_samples(metrics_port, name)
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


def wait_for_metric(metrics_port: int, name: str, at_least: float, timeout_s: float = 60, **labels) -> float:
    """Ray exports metrics every few seconds; wait until ``name`` reaches ``at_least``."""
    deadline = time.monotonic() + timeout_s
    value = 0.0
    while time.monotonic() < deadline:
        value = metric_total(metrics_port, name, **labels)
        if value >= at_least:
            return value
        time.sleep(1)
    raise AssertionError(f"{name}{labels} stayed at {value} < {at_least} for {timeout_s}s")


def settled_metric(
    metrics_port: int, name: str, quiet_s: float = 12, timeout_s: float = 45, **labels
) -> float:
    """The value once earlier traffic has been exported: unchanged for ``quiet_s`` (Ray exports on an
    interval, so a read right after a burst can miss part of it)."""
    deadline = time.monotonic() + timeout_s
    value, since = metric_total(metrics_port, name, **labels), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1)
        current = metric_total(metrics_port, name, **labels)
        if current != value:
            value, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return value
