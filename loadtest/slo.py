"""The SLO gate over Locust's CSV output: p99 latency and error ratio of the whole run.

Pure: reads ``<prefix>_stats.csv`` (Locust's ``--csv``) and decides pass/fail.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_P99_MS = 500.0
DEFAULT_ERROR_RATIO = 0.001


@dataclass(frozen=True)
class SloResult:
    requests: int
    failures: int
    error_ratio: float
    p50_ms: float
    p99_ms: float
    rps: float
    slo_p99_ms: float
    slo_error_ratio: float
    passed: bool
    reasons: list[str]
    per_task: dict[str, dict]

    def as_dict(self) -> dict:
        return asdict(self)


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def evaluate(
    stats_csv: Path, p99_ms: float = DEFAULT_P99_MS, error_ratio: float = DEFAULT_ERROR_RATIO
) -> SloResult:
    rows = list(csv.DictReader(stats_csv.open()))
    total = next((r for r in rows if r["Name"] == "Aggregated"), None)
    if total is None:
        raise ValueError(f"{stats_csv} has no Aggregated row")
    requests = int(total["Request Count"])
    failures = int(total["Failure Count"])
    ratio = failures / requests if requests else 1.0
    p99 = _num(total["99%"])
    reasons = []
    if requests == 0:
        reasons.append("no requests were made")
    if ratio >= error_ratio:
        reasons.append(f"error ratio {ratio:.4%} >= {error_ratio:.4%}")
    if not p99 < p99_ms:  # NaN (no successful request) fails too
        reasons.append(f"p99 {p99:.0f} ms >= {p99_ms:g} ms")
    per_task = {
        r["Name"]: {
            "requests": int(r["Request Count"]),
            "failures": int(r["Failure Count"]),
            "p50_ms": _num(r["50%"]),
            "p99_ms": _num(r["99%"]),
            "rps": _num(r["Requests/s"]),
        }
        for r in rows
        if r["Name"] != "Aggregated"
    }
    return SloResult(
        requests=requests,
        failures=failures,
        error_ratio=ratio,
        p50_ms=_num(total["50%"]),
        p99_ms=p99,
        rps=_num(total["Requests/s"]),
        slo_p99_ms=p99_ms,
        slo_error_ratio=error_ratio,
        passed=not reasons,
        reasons=reasons,
        per_task=per_task,
    )
