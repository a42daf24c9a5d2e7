"""Smoke test of benchmarks/failover.py: a short run end to end, figures printed, JSON and docs written.

No timing thresholds: the benchmark reports figures, it does not judge them here. This proves
that every kind of contender (the floor, bgpvip, a killed checked process, the
false-withdrawal watch, ExaBGP's healthcheck, keepalived over an extra link) still runs,
measures and cleans up, and that what the report prints, the JSON and the docs block are the
same figures, with verdicts that follow from them. About 45 s.
"""

from __future__ import annotations

import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest

from tests.lab.benchrun import run_benchmark

CONTENDERS = ["floor", "bgpvip-defaults", "bgpvip-kill", "slow-probes", "exabgp-fast", "keepalived"]
FAILOVERS = [c for c in CONTENDERS if c != "slow-probes"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.bench,
    pytest.mark.skipif(not Path("/usr/sbin/keepalived").exists(), reason="keepalived is not installed"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


def expected_stats(samples: list[float]) -> list[str]:
    """median, p90, min, max as the report prints them (linear interpolation between ranks)."""
    p90 = statistics.quantiles(samples, n=10, method="inclusive")[8] if len(samples) > 1 else samples[0]
    return [f"{x:.3f}" for x in (statistics.median(samples), p90, min(samples), max(samples))]


def table_rows(out: str) -> dict[tuple[str, str], list[str]]:
    """(contender, what is measured) -> [n, t/o, median, p90, min, max] of the text table,
    whose columns are 20 and 52 characters wide before the figures."""
    rows: dict[tuple[str, str], list[str]] = {}
    table = out.split("-" * 40, 1)[1].split("(seconds;", 1)[0]
    for line in table.strip("\n").splitlines():
        rows[(line[:20].strip(), line[21:73].strip())] = line[73:].split()[:-1]
    return rows


def test_quick_run_prints_figures_and_writes_json_and_docs(tmp_path: Path) -> None:
    args = ["--quick", "--runs", "2", "--slow-window", "3", "--only", ",".join(CONTENDERS), "--seed", "1"]
    out, report, text = run_benchmark(
        "failover.py", "b", args, tmp_path, other_section="## 10,000 Service IPs", timeout=110
    )
    results: dict[str, Any] = report["results"]
    assert report["runs"] == 2 and list(results) == CONTENDERS
    for name in CONTENDERS:
        assert "error" not in results[name], f"{name}: {results[name]['error']}"
    assert report["versions"]["exabgp"].startswith("5.") and "exabgp: 5." in out
    assert re.fullmatch(r"[\d.]+ [\d.]+ [\d.]+", report["loadavg_before"]), report["loadavg_before"]
    assert f"load average before/after {report['loadavg_before']} / {report['loadavg_after']}" in out

    # every failover contender measured both directions twice; the table shows the JSON's figures
    rows = table_rows(out)
    for name in FAILOVERS:
        res = results[name]
        for phase in ("fail", "recover"):
            samples = res["samples"][phase]
            assert len(samples) + res["timeouts"][phase] == 2, f"{name} {phase}: {res}"
            assert all(x > 0 for x in samples), f"{name} {phase}: {samples}"
            if not samples:
                continue
            what = res["measures"][phase][:52].strip()
            assert rows[(name, what)] == [
                str(len(samples)),
                str(res["timeouts"][phase]),
                *expected_stats(samples),
            ]

    # the false-withdrawal watch: its figures in the text are the JSON's
    slow = results["slow-probes"]
    assert slow["seconds"] == 3 and slow["probes"] > 0 and 0 <= slow["probe_timeouts"] <= slow["probes"]
    assert (
        f"3 s, every 25th probe slow: {slow['withdrawals']} withdrawals at r1, "
        f"{slow['probe_timeouts']} probe timeouts of {slow['probes']} probes"
    ) in out
    startup = results["bgpvip-kill"]["namesrv_startup_seconds"]
    assert len(startup) == 5 and all(x > 0 for x in startup)

    # each verdict follows from the figure it prints
    p90 = float(expected_stats(results["bgpvip-defaults"]["samples"]["fail"])[1])
    target = "bgpvip defaults: failure -> route gone, p90 <= 0.25 s"
    verdict = "PASS" if p90 <= 0.25 else "MISS"
    assert f"[{verdict}] {target}: p90 {p90:.3f} s" in out
    target = "bgpvip defaults: zero false withdrawals with occasional probe timeouts"
    verdict = "PASS" if slow["withdrawals"] == 0 else "MISS"
    assert f"[{verdict}] {target}: {slow['withdrawals']} withdrawals" in out

    # the docs block: written once, into its own section, with this run's figures
    assert "## Health failover" in text
    assert text.count("<!-- BEGIN failover-results") == 1
    assert report["date"] in text and f"`{report['command']}`" in text
    defaults = results["bgpvip-defaults"]["samples"]["fail"]
    cells = " | ".join(expected_stats(defaults))
    assert f"| bgpvip-defaults | health failure → route gone at r1 | 2 | 0 | {cells} | 1.00x |" in text
