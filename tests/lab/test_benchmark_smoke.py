"""Smoke test of benchmarks/failover.py: a short run end to end, figures printed, JSON and docs written.

No timing thresholds: the benchmark reports figures, it does not judge them here. This only
proves that every kind of contender (the floor, bgpvip, a killed checked process, the
false-withdrawal watch, ExaBGP's healthcheck, keepalived over an extra link) still runs,
measures and cleans up. About 45 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nslab
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "failover.py"
CONTENDERS = ["floor", "bgpvip-defaults", "bgpvip-kill", "slow-probes", "exabgp-fast", "keepalived"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/usr/sbin/keepalived").exists(), reason="keepalived is not installed"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


def test_quick_run_prints_figures_and_writes_json_and_docs(tmp_path: Path) -> None:
    prefix = f"bvt{os.getpid() % 10000}b-"  # "bvt": the lab tests' reaper removes it if we die
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nIntro.\n\n## 10,000 Service IPs\n\nSomeone else's section.\n")
    argv = [sys.executable, str(SCRIPT), "--quick", "--runs", "2", "--slow-window", "3"]
    argv += ["--only", ",".join(CONTENDERS), "--prefix", prefix, "--results-dir", str(tmp_path)]
    argv += ["--write-docs", "--docs", str(docs), "--seed", "1"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=110, check=False)
    finally:
        nslab.Lab(nslab.DEFAULT_TOPOLOGY, prefix).down()  # a no-op unless the run died half-way
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    out = proc.stdout

    for name in CONTENDERS:
        assert name in out, f"{name} missing from the report:\n{out}"
    assert "targets:" in out
    assert "[PASS]" in out or "[MISS]" in out
    assert "versions:" in out and "exabgp: 5." in out

    (result_file,) = tmp_path.glob("failover-*.json")
    report = json.loads(result_file.read_text())
    assert report["runs"] == 2
    for name in CONTENDERS:
        res = report["results"][name]
        assert "error" not in res, f"{name}: {res['error']}"
        if res["kind"] == "failover":
            measured = len(res["samples"]["fail"]) + res["timeouts"]["fail"]
            assert measured == 2, f"{name}: {res}"
            assert all(x > 0 for x in res["samples"]["fail"] + res["samples"]["recover"])
    assert report["results"]["slow-probes"]["withdrawals"] >= 0
    assert report["results"]["bgpvip-kill"]["namesrv_startup_seconds"]

    text = docs.read_text()
    assert text.startswith("# Performance\n\nIntro.")
    assert "## 10,000 Service IPs\n\nSomeone else's section." in text
    assert "## Health failover (issue 3)" in text
    assert "| bgpvip-defaults | health failure → route gone at r1 | 2 |" in text
    assert text.count("<!-- BEGIN failover-results") == 1

    leftovers = [n for n in nslab._netns_list() if n.startswith(prefix)]
    assert not leftovers, f"namespaces left behind: {leftovers}"
