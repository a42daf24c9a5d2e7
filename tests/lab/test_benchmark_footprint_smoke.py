"""Smoke test of benchmarks/footprint.py: a short run end to end, figures printed, JSON and docs written.

No thresholds: the benchmark reports figures, it does not judge them here. This proves that
both phases (the bgpvip stack, keepalived) and the import breakdown still measure, that every
process of each stack is found, and that the text report, the JSON and the docs block carry the
same figures, with verdicts that follow from them. About 40 s.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import pytest

from tests.lab.benchrun import run_benchmark

pytestmark = [
    pytest.mark.slow,
    pytest.mark.bench,
    pytest.mark.skipif(not Path("/usr/sbin/keepalived").exists(), reason="keepalived is not installed"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


def test_quick_run_prints_figures_and_writes_json_and_docs(tmp_path: Path) -> None:
    args = ["--seconds", "2", "--settle", "0"]
    out, report, text = run_benchmark(
        "footprint.py", "f", args, tmp_path, other_section="## Health failover", timeout=110
    )
    phases = report["phases"]
    assert list(phases) == ["bgpvip", "keepalived"]
    assert list(phases["bgpvip"]["roles"]) == ["bgpvip run", "exabgp", "speaker"]
    assert list(phases["keepalived"]["roles"]) == ["keepalived"]
    assert len(phases["keepalived"]["roles"]["keepalived"]["pids"]) >= 2  # the parent and its VRRP child
    assert f"load average before/after {report['loadavg_before']} / {report['loadavg_after']}" in out

    for name, phase in phases.items():
        assert phase["seconds"] >= 2, phase
        roles, total = phase["roles"], phase["total"]
        for role, r in roles.items():
            assert 0 < r["pss"] <= r["rss"] and abs(r["anon"] + r["file"] - r["rss"]) <= 0.5, (role, r)
            assert 0 <= r["cpu_percent"] <= 100 * len(r["pids"]), (role, r)
            # the mean over the window, and the highest of its one-second samples
            assert r["cpu_percent"] == pytest.approx(statistics.fmean(r["per_second"]), abs=0.2), (role, r)
            assert r["max_1s_percent"] == max(r["per_second"]), (role, r)
            line = f"  {role:<16}{r['cpu_percent']:>11.2f}{r['max_1s_percent']:>11.1f}{r['rss']:>11.1f}{r['pss']:>11.1f}"
            assert line in out, f"{line!r} not in:\n{out}"
        assert total["rss"] == pytest.approx(sum(r["rss"] for r in roles.values()), abs=0.05), (name, total)
        assert total["cpu_percent"] == pytest.approx(sum(r["cpu_percent"] for r in roles.values()), abs=0.01)

    # the verdicts follow from the totals they print
    total = phases["bgpvip"]["total"]
    cpu, rss = total["cpu_percent"], total["rss"]
    assert f"[{'PASS' if cpu <= 1.5 else 'MISS'}] whole stack idle CPU <= 1.5 % of a core: {cpu:.2f} %" in out
    assert f"[{'PASS' if rss <= 100 else 'MISS'}] whole stack RSS <= 100 MB: {rss:.1f} MB" in out

    # the speaker's imports: both ways of loading pyroute2, ending in more memory than they start with
    imports = report["speaker_imports"]
    assert list(imports) == ["bgpvip's loader", "a plain import"]
    for variant, steps in imports.items():
        assert steps[0][0] == "the interpreter" and steps[-1][0] == f"pyroute2 ({variant})"
        assert steps[-1][1]["VmRSS"] > steps[0][1]["VmRSS"], steps

    assert "## Footprint of a VIP node" in text and text.count("<!-- BEGIN footprint-results") == 1
    assert report["date"] in text and f"`{report['command']}`" in text
    r = phases["bgpvip"]["roles"]["speaker"]
    assert (
        f"| speaker | {r['cpu_percent']:.2f} | {r['max_1s_percent']:.1f} | {r['rss']:.1f} | {r['pss']:.1f} |"
        in text
    )
