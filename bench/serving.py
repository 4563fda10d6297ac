"""Serving benchmark: the pipeline limit of this machine vs what the real HTTP path serves.

    python -m bench.serving [--config serve_config.yaml | --url http://127.0.0.1:8000 [--temp-dir D]]
                            [--concurrency 8 32 64] [--overload 256] [--body multipart|raw]
                            [--duration 15] [--repeat 1] [--env K=V ...] [--profile]
                            [--out artifacts/bench] [--label NAME] [--smoke]

Measures, on the machine it runs on:
  (a) the pipeline limit (``bench.pipeline``): decode+preprocess + forward per image at the best batch
      size, outside Ray, with the same total cores the server gets;
  (b) served images/s and p50/p99 at each concurrency through the real HTTP path (a real Ray cluster
      from ``harness/ray_cluster.py`` with the Serve config deployed as KubeRay does, or ``--url``),
      driven by a separate closed-loop client process (``bench.loadgen``: multipart uploads, as
      ``curl -F`` sends, unless ``--body raw``; clients honour ``Retry-After``) whose own CPU use is
      reported; the server's CPU per served image, whole and by process role;
  (c) served / limit; (d) the same for a 12 MP JPEG vs a 500×375 JPEG; (e) RSS per replica and the
      cluster's idle CPU; (f) overload (``--overload`` clients): what is admitted, its latency, and the
      503s that refuse the rest (how fast, and with ``Retry-After``).
Prints a table, the targets of issue 11 (met or missed), and writes ``<label>.json`` and
``<label>.png`` (throughput and p99 vs concurrency) into ``--out``. ``--smoke`` runs everything for
seconds (CI); it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import requests
import yaml

from bench.pipeline import BATCH_SIZES, PipelineSpec, measure
from harness.ray_cluster import RayCluster, cluster_processes, serve_env
from loadtest.images import phone_jpeg, small_jpeg

REPO = Path(__file__).resolve().parents[1]

DEFAULT_CONFIG = REPO / "serve_config.yaml"
APP = "classifier"
MODEL_DEPLOYMENT = "ImageClassifier"

ROLES = (  # substring of a process's command line -> role, first match wins
    ("ServeReplica:classifier:ImageClassifier", "model replica"),
    ("ServeReplica:classifier:ImageIngress", "ingress replica"),
    ("ServeController", "serve controller"),
    ("ProxyActor", "serve proxy"),
    ("haproxy", "haproxy"),
    ("gcs_server", "gcs"),
    ("raylet", "raylet"),
    ("dashboard/agent.py", "dashboard agent"),
    ("dashboard.py", "dashboard"),
    ("runtime_env/agent", "runtime env agent"),
    ("log_monitor", "log monitor"),
    ("monitor.py", "autoscaler monitor"),
)


# ---- cluster processes -------------------------------------------------------------------------


def role_of(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    for needle, role in ROLES:
        if needle in cmd:
            return role
    return "other ray worker" if cmd.startswith("ray::") else "other"


def cpu_snapshot(procs: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    snap = {}
    for p in procs:
        try:
            t = p.cpu_times()
            snap[p.pid] = (role_of(p), t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return snap


def cpu_delta(before: dict, after: dict, wall_s: float) -> dict[str, float]:
    """Cores used per role (and ``total``) between two snapshots."""
    by_role: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        used = cpu - before.get(pid, (role, 0.0))[1]
        by_role[role] = by_role.get(role, 0.0) + used / wall_s
    by_role = {k: round(v, 3) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])}
    by_role["total"] = round(sum(v for v in by_role.values()), 3)
    return by_role


def cpu_probe_ms() -> float:
    """Milliseconds for a fixed single-core job (best of 5): tracks the host's speed between runs,
    since on a shared VM the same code runs measurably slower at some hours than others."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        table = {}
        for i in range(300_000):  # interpreter-bound, like most of the serving path's overhead
            table[i & 1023] = table.get(i & 1023, 0) + i
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 2)


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def rss_table(procs: list[psutil.Process]) -> list[dict]:
    rows = []
    for p in procs:
        try:
            mem = p.memory_full_info()
            rows.append(
                {
                    "role": role_of(p),
                    "pid": p.pid,
                    "rss_mib": round(mem.rss / 2**20, 1),
                    "uss_mib": round(mem.uss / 2**20, 1),
                }
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(rows, key=lambda r: -r["rss_mib"])


# ---- profiling (py-spy) -------------------------------------------------------------------------

PROFILED_ROLES = ("serve proxy", "ingress replica", "model replica")


def start_profiles(temp_dir: str, out: Path, seconds: float) -> list[tuple[str, Path, subprocess.Popen]]:
    """py-spy (sampling, non-blocking) on the proxy, the ingress and one model replica, of the thread
    holding the GIL only (``--gil``): on a saturated node a wall-clock profile counts every wait for
    the GIL or a core as time in the function waiting, so it overstates cheap calls (a Ray metric
    ``observe`` costs ~2 µs, yet showed 10 % of the ingress's wall samples). GIL samples are the
    Python work; what runs without the GIL (the torch forward, PIL's decoder) is not in them."""
    py_spy = Path(sys.executable).with_name("py-spy")
    started, seen = [], set()
    for proc in cluster_processes(temp_dir):
        role = role_of(proc)
        if role not in PROFILED_ROLES or role in seen:
            continue
        seen.add(role)
        path = out / f"profile-{role.replace(' ', '-')}.txt"
        cmd = [
            str(py_spy),
            "record",
            "--pid",
            str(proc.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "100",
            "--gil",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(path),
        ]
        started.append(
            (role, path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        )
    return started


def summarize_profile(path: Path, top: int = 12) -> dict:
    """Self and inclusive share of samples per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + n

    def share(d):
        return [
            {"frame": f, "share": round(c / total, 3)}
            for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]
        ]

    return {"samples": total, "self": share(own) if total else [], "inclusive": share(incl) if total else []}


# ---- measurements ------------------------------------------------------------------------------


def run_loadgen(
    url: str,
    image: Path,
    concurrency: int,
    warmup: float,
    duration: float,
    temp_dir: str | None,
    profile_dir: Path | None = None,
    body: str = "multipart",
    honor_retry_after: bool = False,
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        f"{url}/predict",
        "--image",
        str(image),
        "--body",
        body,
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        *(["--honor-retry-after"] if honor_retry_after else []),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    procs = cluster_processes(temp_dir) if temp_dir else []
    before = after = None
    profilers: list = []
    t_start = t_end = 0.0
    result = None
    deadline = time.monotonic() + warmup + duration + 120
    try:
        for line in proc.stdout:
            line = line.strip()
            if line == "START":
                procs = cluster_processes(temp_dir) if temp_dir else []
                before, t_start, sys0 = cpu_snapshot(procs), time.perf_counter(), machine_busy_s()
                if profile_dir and temp_dir:
                    profilers = start_profiles(temp_dir, profile_dir, max(1.0, duration - 1))
            elif line == "END":
                after, t_end, sys1 = cpu_snapshot(procs), time.perf_counter(), machine_busy_s()
            elif line.startswith("{"):
                result = json.loads(line)
            if time.monotonic() > deadline:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if result is None:
        raise RuntimeError(f"load generator failed (exit {proc.returncode})")
    if profilers:
        result["profiles"] = {}
        for role, path, spy in profilers:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
            if path.exists():
                result["profiles"][role] = {"file": str(path), **summarize_profile(path)}
    if before is not None and after is not None:
        result["machine_busy_cores"] = round((sys1 - sys0) / (t_end - t_start), 3)
        if temp_dir:
            result["server_cpu_cores"] = cpu_delta(before, after, t_end - t_start)
            # What neither the server nor the client used: other work on the machine (noise).
            result["other_cpu_cores"] = round(
                result["machine_busy_cores"]
                - result["server_cpu_cores"]["total"]
                - result["client_cpu_cores"],
                3,
            )
    return result


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/ready did not answer 200 within {timeout_s}s")


def warm_up(url: str, images: list[bytes], rounds: int) -> None:
    with requests.Session() as http:
        for _ in range(rounds):
            for data in images:
                r = http.post(f"{url}/predict", data=data, headers={"Content-Type": "image/jpeg"}, timeout=60)
                r.raise_for_status()


def app_layout(config: dict) -> tuple[dict, dict]:
    app = next(a for a in config["applications"] if a["name"] == APP)
    model = next((d for d in app.get("deployments", []) if d["name"] == MODEL_DEPLOYMENT), {})
    return app.get("args", {}), model


def summarize(result: dict) -> dict:
    limit = result["pipeline"]["small"]["images_per_s"] if result.get("pipeline") else None
    served = result["served"]
    by_c: dict[int, list[dict]] = {}
    for run in served:
        by_c.setdefault(run["concurrency"], []).append(run)
    levels = []
    for c, runs in sorted(by_c.items()):
        ips = [r["images_per_s"] for r in runs]
        p99 = [r["p99_ms"] for r in runs]
        levels.append(
            {
                "concurrency": c,
                "runs": len(runs),
                "images_per_s": sum(ips) / len(ips),
                "images_per_s_min": min(ips),
                "images_per_s_max": max(ips),
                "p50_ms": sum(r["p50_ms"] for r in runs) / len(runs),
                "p99_ms": sum(p99) / len(p99),
                "p99_ms_min": min(p99),
                "p99_ms_max": max(p99),
                "errors": sum(sum(r["errors"].values()) for r in runs),
                "shed": sum(r.get("shed", 0) for r in runs),
                "client_cpu_cores": sum(r["client_cpu_cores"] for r in runs) / len(runs),
                "server_cpu_cores": (
                    sum(r.get("server_cpu_cores", {}).get("total", 0) for r in runs) / len(runs)
                )
                if "server_cpu_cores" in runs[0]
                else None,
                "other_cpu_cores": (sum(r.get("other_cpu_cores", 0) for r in runs) / len(runs)),
                "ratio_to_limit": (sum(ips) / len(ips) / limit) if limit else None,
                "cpu_ms_per_image": cpu_ms_per_image(runs),
            }
        )
    peak = max(levels, key=lambda lv: lv["images_per_s"]) if levels else None
    knee = next((lv for lv in levels if peak and lv["images_per_s"] >= 0.8 * peak["images_per_s"]), None)
    summary = {
        "levels": levels,
        "pipeline_limit_images_per_s": limit,
        "peak_images_per_s": peak and peak["images_per_s"],
        "knee_concurrency": knee and knee["concurrency"],
        "knee_p99_ms": knee and knee["p99_ms"],
    }
    ref_c = result.get("reference_concurrency")
    ref = next((lv for lv in levels if lv["concurrency"] == ref_c), None)
    if ref and limit:
        summary["ratio_at_reference"] = ref["images_per_s"] / limit
    if ref:
        summary["cpu_ms_per_image_by_role"] = cpu_ms_per_image_by_role(
            [r for r in served if r["concurrency"] == ref_c]
        )
    over = result.get("overload")
    if over:
        summary["overload"] = {
            "concurrency": over[0]["concurrency"],
            "admitted_images_per_s": sum(r["images_per_s"] for r in over) / len(over),
            "admitted_p50_ms": sum(r["p50_ms"] for r in over) / len(over),
            "admitted_p99_ms": max(r["p99_ms"] for r in over),
            "shed": sum(r["shed"] for r in over),
            "shed_without_retry_after": sum(r["shed"] - r["shed_with_retry_after"] for r in over),
            "shed_p99_ms": max(r["shed_p99_ms"] for r in over) if any(r["shed"] for r in over) else None,
            "errors": sum(sum(r["errors"].values()) for r in over),
        }
    summary["targets"] = targets(summary, ref_c)
    big = result.get("served_12mp")
    if big and ref:
        ips = sum(r["images_per_s"] for r in big) / len(big)
        summary["served_12mp_images_per_s"] = ips
        summary["served_12mp_p99_ms"] = sum(r["p99_ms"] for r in big) / len(big)
        summary["ratio_12mp_to_small"] = ips / ref["images_per_s"] if ref["images_per_s"] else None
        if result.get("pipeline", {}).get("phone"):
            summary["ratio_12mp_to_limit"] = ips / result["pipeline"]["phone"]["images_per_s"]
    return summary


def cpu_ms_per_image(runs: list[dict]) -> float | None:
    """The whole server's CPU milliseconds per served image (all its processes)."""
    if not runs or "server_cpu_cores" not in runs[0]:
        return None
    cores = sum(r["server_cpu_cores"]["total"] for r in runs)
    images = sum(r["images_per_s"] for r in runs)
    return 1000 * cores / images if images else None


def cpu_ms_per_image_by_role(runs: list[dict]) -> dict[str, float]:
    if not runs or "server_cpu_cores" not in runs[0]:
        return {}
    images = sum(r["images_per_s"] for r in runs)
    roles: dict[str, float] = {}
    for run in runs:
        for role, cores in run["server_cpu_cores"].items():
            roles[role] = roles.get(role, 0.0) + cores
    return {role: round(1000 * cores / images, 2) for role, cores in roles.items()} if images else {}


# The objectives of issue 11, checked (and printed) by every full run; a benchmark, not a test.
RATIO_TARGET = 0.7
P99_TARGETS_MS = {8: 150.0, 32: 500.0}
# "Fast": a refusal is answered in a fifth of the latency objective, not queued behind the model.
FAST_503_MS = 100.0


def targets(summary: dict, ref_c: int | None) -> list[dict]:
    rows = []
    by_c = {lv["concurrency"]: lv for lv in summary["levels"]}
    if summary.get("ratio_at_reference") is not None:
        rows.append(
            {
                "target": f"served >= {RATIO_TARGET} x pipeline limit at c={ref_c}",
                "measured": round(summary["ratio_at_reference"], 3),
                "met": summary["ratio_at_reference"] >= RATIO_TARGET,
            }
        )
    for c, bound in P99_TARGETS_MS.items():
        if c in by_c:
            lv = by_c[c]
            rows.append(
                {
                    "target": f"p99 <= {bound:.0f} ms at c={c}, 0 errors, nothing shed",
                    "measured": f"{lv['p99_ms']:.0f} ms, {lv['errors']} errors, {lv['shed']} shed",
                    "met": lv["p99_ms"] <= bound and lv["errors"] == 0 and lv["shed"] == 0,
                }
            )
    over = summary.get("overload")
    if over:
        fast = over["shed_p99_ms"] is None or over["shed_p99_ms"] <= FAST_503_MS
        rows.append(
            {
                "target": f"overload c={over['concurrency']}: admitted p99 <= 500 ms, the rest a 503 "
                f"with Retry-After in <= {FAST_503_MS:.0f} ms, no other error",
                "measured": f"admitted {over['admitted_images_per_s']:.1f} img/s p99 "
                f"{over['admitted_p99_ms']:.0f} ms; {over['shed']} shed, p99 "
                f"{over['shed_p99_ms'] or 0:.1f} ms, {over['shed_without_retry_after']} without "
                f"Retry-After; {over['errors']} errors",
                "met": over["admitted_p99_ms"] <= 500
                and fast
                and over["shed_without_retry_after"] == 0
                and over["errors"] == 0,
            }
        )
    return rows


# ---- output ------------------------------------------------------------------------------------


def print_table(result: dict) -> None:
    s = result["summary"]
    pl = result.get("pipeline") or {}
    print("\n== pipeline limit (outside Ray) ==")
    for name, p in pl.items():
        print(
            f"{name:6s} {p['processes']} proc x {p['threads_per_process']} thread: best bs="
            f"{p['best_batch_size']:<3d} {p['images_per_s']:7.1f} img/s   "
            + "  ".join(f"bs{b}={v['images_per_s']:.0f}" for b, v in p["by_batch_size"].items())
        )
    print(f"\n== served (500x375 JPEG, {result.get('body', 'raw')} POST /predict) ==")
    print(
        f"{'conc':>5s} {'img/s':>8s} {'(min-max)':>15s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'ratio':>6s} {'client':>7s} {'server':>7s} {'other':>6s} {'errors':>6s} {'shed':>6s}"
    )
    for lv in s["levels"]:
        ratio = f"{lv['ratio_to_limit']:.2f}" if lv["ratio_to_limit"] else "-"
        srv = f"{lv['server_cpu_cores']:.2f}" if lv["server_cpu_cores"] is not None else "-"
        print(
            f"{lv['concurrency']:5d} {lv['images_per_s']:8.1f} "
            f"{lv['images_per_s_min']:7.1f}-{lv['images_per_s_max']:<7.1f} {lv['p50_ms']:8.1f} "
            f"{lv['p99_ms']:8.1f} {ratio:>6s} {lv['client_cpu_cores']:7.2f} {srv:>7s} "
            f"{lv['other_cpu_cores']:6.2f} "
            f"{lv['errors']:6d} {lv['shed']:6d}"
        )
    if "served_12mp_images_per_s" in s:
        print(
            f"\n12 MP JPEG at concurrency {result['reference_concurrency']}: "
            f"{s['served_12mp_images_per_s']:.1f} img/s, p99 {s['served_12mp_p99_ms']:.0f} ms, "
            f"{s['ratio_12mp_to_small']:.2f} x the 500x375 rate"
        )
    if result.get("rss"):
        print("\n== memory ==")
        for row in result["rss"]:
            if row["role"] in ("model replica", "ingress replica", "serve proxy", "haproxy"):
                print(
                    f"{row['role']:16s} pid {row['pid']:<8d} RSS {row['rss_mib']:7.1f} MiB  "
                    f"USS {row['uss_mib']:7.1f} MiB"
                )
    if result.get("idle_cpu_cores"):
        print(
            f"idle CPU of the whole cluster: {result['idle_cpu_cores']['total']:.3f} cores "
            f"({result['idle_cpu_cores']})"
        )
    for run in result["served"]:
        for role, prof in run.get("profiles", {}).items():
            print(
                f"\n== py-spy {role} at c={run['concurrency']} ({prof['samples']} samples), top self time =="
            )
            for row in prof["self"][:8]:
                print(f"  {row['share']:6.1%}  {row['frame'][:110]}")
    if s.get("cpu_ms_per_image_by_role"):
        print(f"\n== server CPU per served image at c={result['reference_concurrency']} (ms) ==")
        for role, ms in s["cpu_ms_per_image_by_role"].items():
            print(f"  {role:20s} {ms:6.2f}")
    if s.get("targets"):
        print("\n== targets ==")
        for row in s["targets"]:
            print(f"  [{'met' if row['met'] else 'MISSED':6s}] {row['target']}: {row['measured']}")
    print(f"\nhost speed probe (fixed Python loop, lower is faster): {result.get('cpu_probe_ms')} ms")
    print(
        f"\nserved/limit at concurrency {result['reference_concurrency']}: "
        f"{s.get('ratio_at_reference') or float('nan'):.3f}; peak {s['peak_images_per_s'] or 0:.1f}"
        f" img/s; p99 at the knee (c={s['knee_concurrency']}): {s['knee_p99_ms'] or 0:.0f} ms"
    )


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    conc = [lv["concurrency"] for lv in s["levels"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.errorbar(
        conc,
        [lv["images_per_s"] for lv in s["levels"]],
        yerr=[
            [lv["images_per_s"] - lv["images_per_s_min"] for lv in s["levels"]],
            [lv["images_per_s_max"] - lv["images_per_s"] for lv in s["levels"]],
        ],
        marker="o",
        capsize=3,
        label="served (500x375 JPEG)",
    )
    limit = s.get("pipeline_limit_images_per_s")
    if limit:
        ax1.axhline(limit, color="k", ls="--", label=f"pipeline limit {limit:.0f}")
        ax1.axhline(RATIO_TARGET * limit, color="grey", ls=":", label=f"target {RATIO_TARGET} x limit")
    ax1.set_xlabel("concurrency")
    ax1.set_ylabel("images/s")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    ax2.errorbar(
        conc,
        [lv["p99_ms"] for lv in s["levels"]],
        yerr=[
            [lv["p99_ms"] - lv["p99_ms_min"] for lv in s["levels"]],
            [lv["p99_ms_max"] - lv["p99_ms"] for lv in s["levels"]],
        ],
        marker="o",
        capsize=3,
        color="C1",
        label="p99",
    )
    ax2.plot(conc, [lv["p50_ms"] for lv in s["levels"]], marker=".", color="C2", label="p50")
    ax2.axhline(500, color="r", ls="--", label="SLO p99 500 ms")
    ax2.set_xlabel("concurrency")
    ax2.set_ylabel("latency (ms)")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    fig.suptitle(
        f"{result['label']}: {result['hardware']['cpu']} ({result['hardware']['cores']} "
        f"cores), {result['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hardware() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config to deploy")
    p.add_argument("--url", help="benchmark an already running server instead of starting one")
    p.add_argument("--temp-dir", help="with --url: the cluster's Ray temp dir (for CPU and RSS)")
    p.add_argument(
        "--cores", type=int, default=2, help="CPUs of the Ray node, and of the pipeline limit (default 2)"
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the Ray cluster started here (e.g. RAY_SERVE_ENABLE_HA_PROXY=1)",
    )
    p.add_argument(
        "--env-note",
        default="",
        help="with --url: the environment the cluster was started with, for the record",
    )
    p.add_argument("--concurrency", type=int, nargs="+")
    p.add_argument(
        "--reference-concurrency",
        type=int,
        default=32,
        help="the level for the served/limit ratio and the 12 MP comparison",
    )
    p.add_argument(
        "--body",
        choices=("multipart", "raw"),
        default="multipart",
        help="how the image is sent: a multipart upload (curl -F; default) or a raw image/jpeg body",
    )
    p.add_argument(
        "--overload",
        type=int,
        help="concurrency of the overload level, clients honouring Retry-After (256; 0: none)",
    )
    p.add_argument("--duration", type=float, help="measured seconds per level (15)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each level (3)")
    p.add_argument("--repeat", type=int, default=1, help="runs per level (spread is reported)")
    p.add_argument("--pipeline-seconds", type=float, help="seconds per batch size (4)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="pipeline limit sweep")
    p.add_argument("--idle-seconds", type=float, help="idle CPU window (10)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the proxy, ingress and a model replica at the reference level "
        "(adds ~0.1 core of sampling overhead to that level)",
    )
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--skip-12mp", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench")
    p.add_argument("--label", default="serving")
    p.add_argument("--smoke", action="store_true", help="seconds, not minutes (CI); no timing checks")
    a = p.parse_args(argv)
    smoke = a.smoke
    a.concurrency = a.concurrency or ([2, 4] if smoke else [8, 32, 64])
    if smoke and a.reference_concurrency not in a.concurrency:
        a.reference_concurrency = a.concurrency[-1]
    a.overload = a.overload if a.overload is not None else (8 if smoke else 256)
    a.duration = a.duration or (1.5 if smoke else 15.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if smoke else 3.0)
    a.pipeline_seconds = a.pipeline_seconds or (0.5 if smoke else 4.0)
    a.batch_sizes = a.batch_sizes or ([1, 4] if smoke else list(BATCH_SIZES))
    a.idle_seconds = a.idle_seconds or (1.0 if smoke else 10.0)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(args.config.read_text())
    app_args, model = app_layout(config)
    small_path, phone_path = args.out / "bench_500x375.jpg", args.out / "bench_4032x3024.jpg"
    small_path.write_bytes(small_jpeg())
    phone_path.write_bytes(phone_jpeg())
    threads = int(app_args.get("num_threads", 1))
    result: dict = {
        "label": args.label,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "command": " ".join(["python -m bench.serving", *sys.argv[1:]]),
        "config": str(args.config),
        "url": args.url,
        "cluster_env": dict(kv.split("=", 1) for kv in [*args.env, *filter(None, args.env_note.split(","))]),
        "model_deployment": {
            k: model.get(k)
            for k in (
                "num_replicas",
                "autoscaling_config",
                "max_ongoing_requests",
                "user_config",
                "ray_actor_options",
            )
        },
        "app_args": app_args,
        "reference_concurrency": args.reference_concurrency,
        "concurrency": args.concurrency,
        "overload_concurrency": args.overload,
        "body": args.body,
        "duration_s": args.duration,
        "smoke": args.smoke,
    }
    if not args.skip_pipeline:
        # Measured before the cluster starts, so nothing else competes for the cores.
        procs = max(1, args.cores // threads)
        print(f"pipeline limit: {procs} processes x {threads} threads ...", flush=True)
        result["pipeline"] = {
            "small": measure(
                PipelineSpec(
                    app_args,
                    small_jpeg(),
                    procs,
                    tuple(args.batch_sizes),
                    args.pipeline_seconds,
                    1.0 if not args.smoke else 0.2,
                )
            )
        }
        if not args.skip_12mp:
            result["pipeline"]["phone"] = measure(
                PipelineSpec(
                    app_args,
                    phone_jpeg(),
                    procs,
                    tuple(b for b in args.batch_sizes if b <= 16),
                    args.pipeline_seconds,
                    1.0 if not args.smoke else 0.2,
                )
            )
    cluster = None
    temp_dir = args.temp_dir
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            env = {
                **serve_env(),
                **dict(kv.split("=", 1) for kv in args.env),
            }  # production defaults + overrides
            print(
                f"starting a Ray cluster ({args.cores} CPUs, env {env}) and deploying {args.config} ...",
                flush=True,
            )
            cluster = RayCluster(num_cpus=args.cores, env=env).start()
            cluster.deploy(config)
            url, temp_dir = cluster.serve_url, cluster.temp_dir
        wait_ready(url)
        warm_up(url, [small_jpeg(), phone_jpeg()], 2 if args.smoke else 10)
        if temp_dir:
            time.sleep(1 if args.smoke else 5)  # let deploy-time work settle
            procs = cluster_processes(temp_dir)
            before = cpu_snapshot(procs)
            time.sleep(args.idle_seconds)
            result["idle_cpu_cores"] = cpu_delta(before, cpu_snapshot(procs), args.idle_seconds)
        result["cpu_probe_ms"] = cpu_probe_ms()
        result["served"] = []
        for rep in range(args.repeat):
            for c in args.concurrency:
                profile = (
                    args.out / args.label
                    if args.profile and rep == 0 and c == args.reference_concurrency
                    else None
                )
                if profile:
                    profile.mkdir(parents=True, exist_ok=True)
                run = run_loadgen(
                    url,
                    small_path,
                    c,
                    args.warmup,
                    args.duration,
                    temp_dir,
                    profile,
                    body=args.body,
                    honor_retry_after=True,
                )
                run["repeat"] = rep
                result["served"].append(run)
                print(
                    f"  c={c:<3d} {run['images_per_s']:7.1f} img/s  p50 {run['p50_ms']:6.1f} ms  "
                    f"p99 {run['p99_ms']:6.1f} ms  errors {sum(run['errors'].values())}  shed "
                    f"{run['shed']}  client "
                    f"{run['client_cpu_cores']:.2f} cores  server "
                    f"{run.get('server_cpu_cores', {}).get('total', float('nan')):.2f} cores",
                    flush=True,
                )

        def served_at(image: Path, c: int) -> dict:
            # Clients that honour Retry-After, as well-behaved ones do.
            return run_loadgen(
                url, image, c, args.warmup, args.duration, temp_dir, body=args.body, honor_retry_after=True
            )

        if args.overload:
            # What is admitted must still meet the objective, and what is not must be refused at once.
            result["overload"] = []
            for _ in range(args.repeat):
                run = served_at(small_path, args.overload)
                result["overload"].append(run)
                print(
                    f"  overload c={args.overload} admitted {run['images_per_s']:7.1f} img/s  p50 "
                    f"{run['p50_ms']:6.1f} ms  p99 {run['p99_ms']:6.1f} ms  shed {run['shed']} "
                    f"(p99 {run['shed_p99_ms']:.1f} ms)  errors {sum(run['errors'].values())}",
                    flush=True,
                )
        if not args.skip_12mp:
            result["served_12mp"] = []
            for _ in range(args.repeat):
                run = served_at(phone_path, args.reference_concurrency)
                result["served_12mp"].append(run)
                print(
                    f"  12MP c={args.reference_concurrency} {run['images_per_s']:7.1f} img/s  "
                    f"p99 {run['p99_ms']:6.1f} ms",
                    flush=True,
                )
        if temp_dir:
            result["rss"] = rss_table(cluster_processes(temp_dir))
    finally:
        if cluster is not None:
            cluster.stop()
    result["summary"] = summarize(result)
    json_path, png_path = args.out / f"{args.label}.json", args.out / f"{args.label}.png"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, png_path)
    print_table(result)
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
