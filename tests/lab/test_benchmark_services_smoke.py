"""Smoke test of benchmarks/services.py: a small run end to end, figures printed, JSON and docs written.

No timing thresholds: the benchmark reports figures, it does not judge them here. This only
proves that every phase (raw ExaBGP anchor, bgpvip convergence against the fake API, memory,
idle CPU, Service changes under churn, stop) still runs, measures and cleans up, including the
prefix-list entry it adds to r1. About 30 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nslab
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "services.py"

pytestmark = [pytest.mark.slow]


def test_quick_run_prints_figures_and_writes_json_and_docs(tmp_path: Path) -> None:
    prefix = f"bvt{os.getpid() % 10000}s-"  # "bvt": the lab tests' reaper removes it if we die
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nIntro.\n\n## Health failover (issue 3)\n\nSomeone else's section.\n")
    argv = [sys.executable, str(SCRIPT), "--quick", "--services", "200", "--changes", "8"]
    argv += ["--idle-seconds", "2", "--settle", "0.5", "--prefix", prefix, "--results-dir", str(tmp_path)]
    argv += ["--write-docs", "--docs", str(docs), "--seed", "1"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=100, check=False)
    finally:
        nslab.Lab(nslab.DEFAULT_TOPOLOGY, prefix).down()  # a no-op unless the run died half-way
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    out = proc.stdout
    assert "raw ExaBGP" in out and "bgpvip" in out
    assert "targets:" in out
    assert "[PASS]" in out or "[MISS]" in out
    assert "versions:" in out and "exabgp: 5." in out

    (result_file,) = tmp_path.glob("services-*.json")
    report = json.loads(result_file.read_text())
    assert report["services"] == 200
    assert report["api"].startswith("HTTPS with a bearer token, credentials from the in-cluster loader")
    (rnd,) = report["rounds"]
    assert rnd["raw"]["routes_confirmed"] == 200 and rnd["raw"]["seconds"] > 0
    assert rnd["bgpvip"]["routes_confirmed"] == 200 and rnd["bgpvip"]["seconds"] > 0
    assert rnd["lister"]["routes_confirmed"] == 200 and "acked" in rnd["lister"]["marks"]
    assert "acked" in rnd["raw"]["marks"]
    assert rnd["bgpvip_stop_seconds"] >= 0
    assert report["convergence"]["ratio"] > 0
    assert report["memory"]["after_convergence"]["speaker"]["rss_mb"] > 0
    assert report["memory"]["after_convergence"]["exabgp"]["rss_mb"] > 0
    assert "percent" in report["idle_cpu"]["speaker"]
    changes = report["changes"]
    assert len(changes["samples"]) + len(changes["timeouts"]) == 8
    assert {s["kind"] for s in changes["samples"]} <= {"create", "delete", "local-away", "local-back"}
    assert all(s["seconds"] > 0 for s in changes["samples"])

    text = docs.read_text()
    assert text.startswith("# Performance\n\nIntro.")
    assert "## Health failover (issue 3)\n\nSomeone else's section." in text
    assert "## 10,000 Service IPs (issue 4)" in text
    assert text.count("<!-- BEGIN services-results") == 1

    leftovers = [n for n in nslab._netns_list() if n.startswith(prefix)]
    assert not leftovers, f"namespaces left behind: {leftovers}"
