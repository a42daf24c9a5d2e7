"""Smoke test of benchmarks/services.py: a small run end to end, figures printed, JSON and docs written.

No timing thresholds: the benchmark reports figures, it does not judge them here. This proves
that every phase (raw ExaBGP anchor, the stdlib lister floor, bgpvip convergence against the
fake API, memory, idle CPU, Service changes under churn, stop) still runs, measures and cleans
up, including the prefix-list entry it adds to r1, and that the text report, the JSON and the
docs block carry the same figures, with verdicts that follow from them. About 30 s.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.lab.benchrun import run_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.bench]


def test_quick_run_prints_figures_and_writes_json_and_docs(tmp_path: Path) -> None:
    args = ["--quick", "--services", "200", "--changes", "8", "--idle-seconds", "2"]
    args += ["--settle", "0.5", "--seed", "1"]
    out, report, text = run_benchmark(
        "services.py", "s", args, tmp_path, other_section="## Health failover", timeout=100
    )
    assert report["services"] == 200
    assert report["api"].startswith("HTTPS with a bearer token, credentials from the in-cluster loader")
    assert report["versions"]["exabgp"].startswith("5.") and "exabgp: 5." in out
    assert f"load average before/after {report['loadavg_before']} / {report['loadavg_after']}" in out

    # each anchor and bgpvip put all 200 routes in r1's kernel; the table shows the JSON's seconds
    (rnd,) = report["rounds"]
    for phase in ("raw", "lister", "bgpvip"):
        assert rnd[phase]["routes_confirmed"] == 200, (phase, rnd[phase])
    assert "acked" in rnd["raw"]["marks"] and "acked" in rnd["lister"]["marks"]
    raw, lister, bgpvip = (rnd[p]["seconds"] for p in ("raw", "lister", "bgpvip"))
    row = f"{1:>5} {raw:>11.3f} {lister:>7.3f} {bgpvip:>9.3f} {bgpvip / raw:>6.2f}"
    assert row in out.splitlines(), f"{row!r} not in:\n{out}"
    conv = report["convergence"]
    assert conv["ratio"] == round(bgpvip / raw, 3) and conv["bgpvip_over_lister"] == round(bgpvip / lister, 3)
    stop = rnd["bgpvip_stop_seconds"]
    assert f"bgpvip SIGTERM -> all 200 routes gone at r1: {stop:.2f} s" in out

    # memory and idle CPU of the three processes of `bgpvip run`
    for when in ("after_convergence", "after_events", "after_changes"):
        roles = report["memory"][when]
        assert set(roles) == {"bgpvip run", "exabgp", "speaker"}, (when, roles)
        for role, m in roles.items():
            assert 0 < m["rss_mb"] <= m["hwm_mb"] and m["pss_mb"] <= m["rss_mb"], (when, role, m)
            assert abs(m["anon_mb"] + m["file_mb"] - m["rss_mb"]) <= 0.5, (when, role, m)
    idle = report["idle_cpu"]
    assert {"bgpvip run", "exabgp", "speaker"} <= set(idle)
    assert all(1 <= len(idle[r]["per_second"]) <= 2 for r in ("bgpvip run", "exabgp", "speaker")), idle

    # the changes: every one measured or counted as a timeout, and summarised as printed
    changes = report["changes"]
    assert len(changes["samples"]) + len(changes["timeouts"]) == 8
    assert {s["kind"] for s in changes["samples"]} <= {"create", "delete", "local-away", "local-back"}
    assert all(s["seconds"] > 0 for s in changes["samples"])
    s = changes["summary"]
    assert s["n"] == len(changes["samples"])
    assert re.search(rf"^  all +{s['n']} +{s['p50'] * 1000:.0f} +{s['p90'] * 1000:.0f} ", out, re.M), out

    # each verdict follows from the figure it prints
    rss = report["memory"]["after_convergence"]["speaker"]["rss_mb"]
    assert f"[{'PASS' if rss <= 80 else 'MISS'}] speaker RSS <= 80 MB: {rss:.1f} MB" in out
    over = conv["bgpvip_over_lister"]
    assert (
        f"[{'PASS' if over <= 1.25 else 'MISS'}] convergence bgpvip/stdlib lister <= 1.25x: {over:.2f}x"
        in out
    )

    # the docs block: once, in its own section, with this run's figures
    assert "## 10,000 Service IPs" in text
    assert text.count("<!-- BEGIN services-results") == 1
    assert report["date"] in text and f"`{report['command']}`" in text
    assert f"| 1 | {raw:.3f} | {lister:.3f} | {bgpvip:.3f} | {bgpvip / raw:.2f} |" in text
    assert f"| speaker RSS <= 80 MB | {rss:.1f} MB |" in text
