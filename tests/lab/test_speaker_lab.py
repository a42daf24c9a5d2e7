"""The health-driven speaker for real: `bgpvip run` (ExaBGP + bgpvip) on n1..n3 against FRR.

Every assertion is made where an operator would look: r1's kernel table, real TCP requests
from the client, addresses on the node's `lo`, and `bgpvip routes -o json`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bgpvip_lab
import nslab
import pytest
from bgpvip_lab import HEALTH_PORT, Speaker, http_vip, node_config, start_health_server, start_speaker

VIP = "198.51.100.10"
PREFIX = f"{VIP}/32"
NODES = ("n1", "n2", "n3")


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


def gateways(lab: nslab.Lab, prefix: str = PREFIX) -> set[str]:
    route = lab.route(prefix)
    if not route:
        return set()
    return {h["gateway"] for h in route.get("nexthops", []) if "gateway" in h}


def lo_addresses(lab: nslab.Lab, node: str) -> set[str]:
    out = lab.exec(node, ["ip", "-j", "addr", "show", "dev", "lo"]).stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


def answered_by(lab: nslab.Lab, vip: str = VIP) -> str:
    return lab.http_get("client", vip, HEALTH_PORT).strip()


@pytest.fixture(scope="module")
def health_servers(lab: nslab.Lab) -> dict[str, subprocess.Popen[bytes]]:
    return {node: start_health_server(lab, node) for node in NODES}


@pytest.fixture
def run_speaker(lab: nslab.Lab, health_servers: Any) -> Iterator[Callable[..., Speaker]]:
    """Start `bgpvip run` on a node with a config; stopped and cleaned up after the test."""
    started: list[Speaker] = []

    def start(node: str, vips: list[dict[str, Any]] | None = None, **over: Any) -> Speaker:
        speaker = start_speaker(lab, node, node_config(lab, node, vips or [http_vip(VIP)], **over))
        started.append(speaker)
        return speaker

    try:
        yield start
    finally:
        for speaker in started:
            try:
                speaker.stop(timeout=30)
            except subprocess.TimeoutExpired:
                speaker.process.kill()
            speaker.set_healthy(True)
            (speaker.workdir / "drain").unlink(missing_ok=True)
        for node in NODES:
            for addr in lo_addresses(lab, node) - {"127.0.0.1", "::1"}:
                lab.exec(node, ["ip", "addr", "del", f"{addr}/32", "dev", "lo"], check=False)
        lab.wait_prefix(PREFIX, present=False, timeout=30)


def all_three(lab: nslab.Lab, run_speaker: Callable[..., Speaker], **over: Any) -> list[Speaker]:
    speakers = [run_speaker(node, **over) for node in NODES]
    lab.wait_prefix(PREFIX, nexthops=[lab.node_ip(n) for n in NODES], timeout=60)
    return speakers


def test_ecmp_and_failover_moves_client_traffic(lab: nslab.Lab, run_speaker: Callable[..., Speaker]) -> None:
    speakers = all_three(lab, run_speaker)
    serving = answered_by(lab)
    assert serving in NODES
    for node in NODES:
        assert VIP in lo_addresses(lab, node), f"{node} must hold the VIP while announcing it"

    failing = speakers[NODES.index(serving)]
    failing.set_healthy(False)
    rest = {lab.node_ip(n) for n in NODES if n != serving}
    wait_until(lambda: gateways(lab) == rest, what=f"{serving} removed from r1's ECMP route")
    # the server still answers (503 on /healthz only): the address stays release_delay (1 s)
    # after the withdraw, while routers converge, then goes
    assert VIP in lo_addresses(lab, serving), "the address stays while routers converge"
    wait_until(lambda: VIP not in lo_addresses(lab, serving), timeout=5, what="the address released")
    decision = failing.status()["decisions"][0]
    assert (decision["announced"], decision["reason"]) == (False, "checkFailing")
    assert "HTTP 503" in decision["detail"]
    for _ in range(5):
        assert answered_by(lab) in set(NODES) - {serving}

    failing.set_healthy(True)
    wait_until(lambda: len(gateways(lab)) == 3, what=f"{serving} back in r1's ECMP route")
    assert answered_by(lab) in NODES


def test_med_primary_backup_without_multipath(lab: nslab.Lab, run_speaker: Callable[..., Speaker]) -> None:
    """A router without ECMP (Yamaha RTX) installs the lowest MED: the highest priority."""
    set_paths = ["configure terminal", "router bgp 65000", "address-family ipv4 unicast"]
    lab.vtysh([*set_paths, "maximum-paths 1"])
    try:
        priorities = {"n1": 150, "n2": 200, "n3": 100}
        speakers = {n: run_speaker(n, priority=p) for n, p in priorities.items()}
        n2 = lab.node_ip("n2")
        wait_until(lambda: gateways(lab) == {n2}, what="n2 (priority 200, MED 55) as the only path")
        wait_until(lambda: len(lab.bgp_prefix(PREFIX).get("paths", [])) == 3, what="3 paths at r1")
        meds = sorted(p.get("metric") for p in lab.bgp_prefix(PREFIX)["paths"])
        assert meds == [55, 105, 155]
        assert answered_by(lab) == "n2"

        speakers["n2"].set_healthy(False)
        wait_until(lambda: gateways(lab) == {lab.node_ip("n1")}, what="failover to n1 (next lowest MED)")
        assert answered_by(lab) == "n1"
        speakers["n2"].set_healthy(True)
        wait_until(lambda: gateways(lab) == {n2}, what="n2 back as primary")
    finally:
        lab.vtysh([*set_paths, "maximum-paths 8"])


def test_sigterm_to_speaker_withdraws_before_it_exits(
    lab: nslab.Lab, run_speaker: Callable[..., Speaker]
) -> None:
    speaker = run_speaker("n1")
    lab.wait_prefix(PREFIX, timeout=30)
    pid = speaker.speaker_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    lab.wait_prefix(PREFIX, present=False, timeout=5)
    assert os.path.exists(f"/proc/{pid}"), "the route must be gone while the speaker is still running"
    wait_until(lambda: speaker.speaker_pid() not in (None, pid), what="ExaBGP respawning the speaker")
    log = speaker.log_text()
    assert "event=withdraw prefix=198.51.100.10/32 ok=True" in log
    assert "event=exit code=0" in log
    # the respawned speaker announces again: the service is still healthy
    lab.wait_prefix(PREFIX, timeout=30)


def test_sigterm_to_bgpvip_run_withdraws_removes_address_and_exits_0(
    lab: nslab.Lab, run_speaker: Callable[..., Speaker]
) -> None:
    speaker = run_speaker("n1")
    lab.wait_prefix(PREFIX, timeout=30)
    assert VIP in lo_addresses(lab, "n1")
    assert speaker.stop(timeout=30) == 0
    assert lab.route(PREFIX) is None
    assert VIP not in lo_addresses(lab, "n1")
    log = speaker.log_text()
    order = [
        log.index(s)
        for s in ("event=withdraw", "event=stop-wait", "event=address-remove", "event=exabgp-stop")
    ]
    assert order == sorted(order), "withdraw, wait, remove the address, then stop ExaBGP"


def test_killed_speaker_is_respawned_without_a_withdrawal(
    lab: nslab.Lab, run_speaker: Callable[..., Speaker]
) -> None:
    speaker = run_speaker("n1")
    lab.wait_prefix(PREFIX, timeout=30)
    lab.wait_established([lab.node_ip("n1")])
    missing: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if lab.route(PREFIX) is None:
                missing.append(time.monotonic())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for _ in range(2):
            pid = speaker.speaker_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda p=pid: speaker.speaker_pid() not in (None, p), what="respawned speaker")
            wait_until(lambda: speaker.wait_status()["routes_announced"] == 1, what="new speaker in charge")
            time.sleep(0.5)
    finally:
        stop.set()
        watcher.join()
    assert missing == [], f"the route vanished from r1 {len(missing)} times while the speaker restarted"
    assert VIP in lo_addresses(lab, "n1")
    log = speaker.log_text()
    assert "routes_in_exabgp=1" in log, "the new speaker read the route from ExaBGP's Adj-RIB-Out"


def test_drain_and_undrain(lab: nslab.Lab, run_speaker: Callable[..., Speaker]) -> None:
    speakers = all_three(lab, run_speaker)
    speakers[0].drain()
    others = {lab.node_ip("n2"), lab.node_ip("n3")}
    wait_until(lambda: gateways(lab) == others, what="n1 drained")
    assert VIP in lo_addresses(lab, "n1"), "a drained node keeps the address for established connections"
    d = speakers[0].status()
    assert d["drained"] is True and d["decisions"][0]["reason"] == "drained"
    assert "DRAINED" in speakers[0].routes_table()
    speakers[0].undrain()
    wait_until(lambda: len(gateways(lab)) == 3, what="n1 undrained")


def test_killed_service_is_withdrawn(
    lab: nslab.Lab, run_speaker: Callable[..., Speaker], health_servers: Any
) -> None:
    all_three(lab, run_speaker)
    server = health_servers["n2"]
    server.kill()
    server.wait()
    try:
        waited = wait_until(
            lambda: gateways(lab) == {lab.node_ip("n1"), lab.node_ip("n3")}, timeout=10, what="n2 withdrawn"
        )
        print(f"killed service -> withdrawn at r1 after {waited:.3f}s")
    finally:
        health_servers["n2"] = start_health_server(lab, "n2")


def test_bad_config_is_refused_before_exabgp_starts(lab: nslab.Lab) -> None:
    work = bgpvip_lab.node_workdir(lab, "n3")
    bad = work / "bad.yaml"
    doc = node_config(lab, "n3", [http_vip(VIP, interval=0)])
    bad.write_text(json.dumps(doc))
    run = lab.exec(
        "n3", [sys.executable, "-m", "bgpvip", "run", "--config", str(bad)], check=False, timeout=30
    )
    assert run.returncode == 2
    assert "vips[0].checks[0].interval: must be >= 0.005" in run.stderr
    assert "exabgp-start" not in run.stderr
    check = lab.exec("n3", [sys.executable, "-m", "bgpvip", "check-config", str(bad)], check=False)
    assert check.returncode == 1
    assert "vips[0].checks[0].interval: must be >= 0.005" in check.stderr


def test_hanging_check_is_cut_off_at_its_timeout(lab: nslab.Lab, run_speaker: Callable[..., Speaker]) -> None:
    vip = "198.51.100.20"
    hang = {
        "name": "hang",
        "address": vip,
        "checks": [{"type": "exec", "command": ["sleep", "30"], "timeout": 0.3, "interval": 0.5}],
    }
    speaker = run_speaker("n3", vips=[hang])

    def failing() -> bool:
        decisions = speaker.wait_status()["decisions"]
        return bool(decisions) and decisions[0]["reason"] == "checkFailing"

    wait_until(failing, timeout=20, what="the hanging check reported as failing")
    detail = speaker.status()["decisions"][0]["detail"]
    assert "timed out after 0.3s" in detail
    assert lab.route(f"{vip}/32") is None
    speaker.stop(timeout=30)
    sleepers = []
    for pid in nslab._netns_pids(lab.ns("n3")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"sleep\x0030"):
            sleepers.append(pid)
    assert sleepers == [], "every probe process is killed at its timeout"
