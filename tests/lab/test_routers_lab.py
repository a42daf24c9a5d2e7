"""`bgpvip run` against each upstream router the docs cover: FRR 8.4, BIRD 2 and GoBGP 3.

The same lab topology (lab/bgpvip.clab.yml), with the router node running each software in
turn (`nslab.Lab(router_software=...)`). Assertions are made on each router's own view (FRR
`vtysh ... json`, `birdc show route ... all`, `gobgp ... -j`), on the router's kernel table
where it programs one (FRR, BIRD `protocol kernel`), with real packets from the client, and
on `bgpvip routes -o json` on the node.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nslab
import pytest
from bgpvip_lab import (
    HEALTH_PORT,
    Speaker,
    http_vip,
    node_config,
    node_workdir,
    start_health_server,
    start_speaker,
)

from tests.lab.conftest import new_prefix

VIP4, VIP6 = "198.51.100.10", "fd00:cafe::10"
P4, P6 = f"{VIP4}/32", f"{VIP6}/128"
SERVICE_VIP = "203.0.113.10"  # a second VIP range: the one a policy change drops and brings back


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    __tracebackhide__ = True
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


def nexthops(lab: nslab.Lab, prefix: str) -> set[str]:
    """The next hops of the paths the router holds for `prefix`, in its own RIB."""
    return {p["nexthop"] for p in lab.routing().paths(prefix)}


def wait_paths(lab: nslab.Lab, prefix: str, hops: set[str], timeout: float = 20.0) -> float:
    """Wait for the router's RIB (and its kernel, where it programs one) to hold exactly `hops`."""
    __tracebackhide__ = True
    waited = wait_until(
        lambda: nexthops(lab, prefix) == hops, timeout, f"{prefix} via {sorted(hops)} at the router"
    )
    if lab.routing().programs_kernel:
        waited += lab.wait_prefix(prefix, present=bool(hops), nexthops=hops or None, timeout=timeout)
    return waited


def software_present(name: str) -> str | None:
    needs = {
        "bird": [nslab.BIRD_BIN / "bird", nslab.BIRD_BIN / "birdc"],
        "gobgp": [nslab.GOBGP_BIN / "gobgpd"],
    }
    for path in needs.get(name, []):
        if not Path(path).exists():
            return f"{name} is not installed ({path} is missing)"
    return None


@pytest.fixture(scope="module", params=["frr", "bird", "gobgp"])
def lab(request: pytest.FixtureRequest) -> Iterator[nslab.Lab]:
    """The lab with the router running FRR, BIRD or GoBGP; torn down after the module's tests."""
    if reason := software_present(request.param):
        pytest.skip(reason)
    instance = nslab.Lab(nslab.DEFAULT_TOPOLOGY, new_prefix(), router_software=request.param)
    try:
        instance.up()
        for node in ("n1", "n2"):
            start_health_server(instance, node)
        yield instance
    finally:
        instance.down()


@pytest.fixture
def run_speaker(lab: nslab.Lab) -> Iterator[Callable[..., Speaker]]:
    """`bgpvip run` on a node; stopped, its addresses removed and its routes gone after the test."""
    started: list[Speaker] = []

    def start(node: str, vips: list[dict[str, Any]], **over: Any) -> Speaker:
        speaker = start_speaker(lab, node, node_config(lab, node, vips, **over))
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
        for node in ("n1", "n2"):
            lab.exec(
                node,
                "ip -4 addr flush dev lo scope global; ip -6 addr flush dev lo scope global",
                check=False,
            )
        for prefix in (P4, P6, f"{SERVICE_VIP}/32"):
            wait_until(lambda p=prefix: not nexthops(lab, p), 30, f"{prefix} gone after the test")


def decisions(speaker: Speaker) -> dict[str, dict[str, Any]]:
    return {d["address"]: d for d in speaker.wait_status()["decisions"]}


def peers(speaker: Speaker) -> dict[str, dict[str, Any]]:
    return {p["address"]: p for p in speaker.wait_status()["peers"]}


# --------------------------------------------------------------------------- announce, withdraw


def test_ipv4_and_ipv6_announce_health_withdraw_and_recover(
    lab: nslab.Lab, run_speaker: Callable[..., Speaker]
) -> None:
    speaker = run_speaker(
        "n1", [http_vip(VIP4, name="web4"), http_vip(VIP6, name="web6")], families=("ipv4", "ipv6")
    )
    n1v4, n1v6 = lab.node_ip("n1", 4), lab.node_ip("n1", 6)
    wait_paths(lab, P4, {n1v4})
    wait_paths(lab, P6, {n1v6})
    if lab.routing().programs_kernel:
        assert lab.http_get("client", VIP4, HEALTH_PORT).strip() == "n1"
        assert lab.http_get("client", VIP6, HEALTH_PORT).strip() == "n1"
    sessions = peers(speaker)
    assert (
        sessions[lab.peer_ip("n1", 4)]["state"],
        sessions[lab.peer_ip("n1", 4)]["families_negotiated"],
    ) == (
        "up",
        ["ipv4"],
    )
    assert sessions[lab.peer_ip("n1", 6)]["families_negotiated"] == ["ipv6"]
    assert {a: (d["announced"], d["reason"]) for a, d in decisions(speaker).items()} == {
        VIP4: (True, "healthy"),
        VIP6: (True, "healthy"),
    }

    speaker.set_healthy(False)
    wait_paths(lab, P4, set())
    wait_paths(lab, P6, set())
    assert {d["reason"] for d in decisions(speaker).values()} == {"checkFailing"}

    speaker.set_healthy(True)
    wait_paths(lab, P4, {n1v4})
    wait_paths(lab, P6, {n1v6})
    # each announcement went only to the neighbors of its family: ExaBGP logs an error for
    # every route sent to a neighbor without the family
    assert "is not configured on neighbor" not in speaker.log_text()


def test_sigterm_withdraws_then_ends_the_session_with_cease(
    lab: nslab.Lab, run_speaker: Callable[..., Speaker]
) -> None:
    speaker = run_speaker("n1", [http_vip(VIP4)])
    n1 = lab.node_ip("n1", 4)
    wait_paths(lab, P4, {n1})
    routing = lab.routing()
    notifications = (
        routing.neighbor(n1)["state"]["messages"]["received"].get("notification", 0)
        if isinstance(routing, nslab.GobgpRouter)
        else 0
    )
    assert speaker.stop(timeout=30) == 0
    assert not nexthops(lab, P4), "withdrawn before the speaker exits"
    log = speaker.log_text()
    assert "event=cease peers=10.0.1.1 notified=True" in log
    assert log.index("event=withdraw") < log.index("event=address-remove") < log.index("event=cease")
    # the router saw a Cease / Administrative Shutdown, not a dropped connection
    if isinstance(routing, nslab.FrrRouter):
        assert routing.neighbor(n1)["lastNotificationReason"] == "Cease/Administrative Shutdown"
    elif isinstance(routing, nslab.BirdRouter):
        assert routing.neighbor(n1)["Last error"] == "Received: Administrative shutdown"
    else:
        received = routing.neighbor(n1)["state"]["messages"]["received"]
        assert received.get("notification") == notifications + 1
        assert 'Code=6 Communicated-Reason="Administrative Shutdown"' in (routing.dir / "r1.log").read_text()
    # a new speaker on the same node is taken back (GoBGP holds every peer idle 5 s after
    # any session ends, NOTIFICATION or not: docs/gobgp.md)
    started = time.monotonic()
    run_speaker("n1", [http_vip(VIP4)])
    wait_paths(lab, P4, {n1}, timeout=30)
    print(f"{lab.router_software}: route back {time.monotonic() - started:.2f}s after the speaker restarted")


# --------------------------------------------------------------------------- router outage


def refused_syns(lab: nslab.Lab) -> int:
    """TCP resets the router's kernel sent (Tcp OutRsts): with its BGP daemon stopped, one per
    connection attempt from the node."""
    text = lab.exec(lab.router or "r1", ["cat", "/proc/net/snmp"]).stdout.splitlines()
    names, values = [line.split() for line in text if line.startswith("Tcp:")][:2]
    return int(dict(zip(names, values, strict=True))["OutRsts"])


def test_router_back_after_an_outage_is_reconnected_by_the_router(
    lab: nslab.Lab, run_speaker: Callable[..., Speaker]
) -> None:
    """ExaBGP's own retries back off (0, 1, 2, 3, 4, 5, 7, ... up to 60 s) while the router is
    down, so after a long outage its next attempt can be a minute away. The session must come
    back when the router does, whatever the outage's length: ExaBGP accepts the router's own
    connection. The outage here lasts until ExaBGP has failed 5 times (its next attempt is then
    5 s away), and the session must be back well before that attempt, initiated by the router."""
    run_speaker("n1", [http_vip(VIP4)])
    n1 = lab.node_ip("n1", 4)
    wait_paths(lab, P4, {n1})
    routing = lab.routing()
    before = refused_syns(lab)
    routing.stop()
    if routing.programs_kernel:
        lab.wait_prefix(P4, present=False, timeout=10)
    # ExaBGP tries at 0, 1, 3, 6, 10, 15 s; the speaker's own connection test at 2-3 and 7-8 s
    wait_until(lambda: refused_syns(lab) - before >= 7, 30, "seven refused connection attempts")
    routing.start()
    wait_paths(lab, P4, {n1}, timeout=30)
    waited = time.monotonic() - routing.started_at
    print(f"{lab.router_software}: route back {waited:.2f}s after the router started")
    if isinstance(routing, nslab.GobgpRouter):
        # GoBGP's first connection after a start waits 5-10 s (its minimum connect-retry,
        # randomised, not configurable below 5 s), so whichever side tries first wins:
        # docs/gobgp.md
        assert waited < 11.0
        return
    # the router's connection is the one that carries the session: ExaBGP's end is port 179
    sockets = lab.exec("n1", ["ss", "-Htn", "state", "established", "( sport = :179 )"]).stdout
    assert f"{n1}:179" in sockets, f"the session is ExaBGP's own reconnection, not the router's: {sockets!r}"
    assert waited < 2.5, "FRR connects at once, BIRD after its `connect delay time 1`"


# --------------------------------------------------------------------------- policy changes


def session_started(lab: nslab.Lab, neighbor: str) -> object:
    """When the router's session with `neighbor` came up, in the router's own words."""
    routing = lab.routing()
    if isinstance(routing, nslab.FrrRouter):
        return routing.neighbor(neighbor)["connectionsEstablished"]
    if isinstance(routing, nslab.BirdRouter):
        return routing.neighbor(neighbor)["since"]
    assert isinstance(routing, nslab.GobgpRouter)
    return routing.neighbor(neighbor)["timers"]["state"]["uptime"]


def set_service_range(lab: nslab.Lab, neighbor: str, accepted: bool) -> None:
    """Accept 203.0.113.0/24 from the nodes or not, and have the router apply it to what it
    already received: route refresh, never a session reset."""
    routing = lab.routing()
    if isinstance(routing, nslab.FrrRouter):
        change = "" if accepted else "no "
        lab.vtysh(["configure terminal", f"{change}ip prefix-list VIPS seq 20 permit 203.0.113.0/24 le 32"])
        lab.vtysh(f"clear bgp ipv4 unicast {neighbor} soft in")
    elif isinstance(routing, nslab.BirdRouter):
        text = routing.config_text()
        if not accepted:
            text = text.replace(", 203.0.113.0/24{32,32}", "")
        routing.configure(text)  # BIRD asks the peers for a route refresh itself
    else:
        assert isinstance(routing, nslab.GobgpRouter)
        routing.gobgp("policy", "prefix", "add" if accepted else "del", "vips4", "203.0.113.0/24", "32..32")
        routing.gobgp("neighbor", neighbor, "softresetin")


def test_an_import_policy_change_applies_without_a_session_reset(
    lab: nslab.Lab, run_speaker: Callable[..., Speaker]
) -> None:
    """Route refresh: a tightened import policy removes an accepted VIP, a loosened one brings
    a VIP it refused, and the session stays up throughout."""
    run_speaker("n1", [http_vip(VIP4, name="web"), http_vip(SERVICE_VIP, name="svc")])
    n1 = lab.node_ip("n1")
    wait_paths(lab, P4, {n1})
    wait_paths(lab, f"{SERVICE_VIP}/32", {n1})
    session = session_started(lab, n1)
    try:
        set_service_range(lab, n1, accepted=False)
        wait_paths(lab, f"{SERVICE_VIP}/32", set(), timeout=5)
        assert nexthops(lab, P4) == {n1}
        set_service_range(lab, n1, accepted=True)
        wait_paths(lab, f"{SERVICE_VIP}/32", {n1}, timeout=5)
    finally:
        if not nexthops(lab, f"{SERVICE_VIP}/32"):
            set_service_range(lab, n1, accepted=True)
    assert session_started(lab, n1) == session, "the policy change must not reset the session"


# --------------------------------------------------------------------------- MD5

PASSWORD = "lab-md5-s3cret"


def set_router_password(lab: nslab.Lab, neighbor: str, password: str | None) -> None:
    routing = lab.routing()
    if isinstance(routing, nslab.FrrRouter):
        prefix = "" if password else "no "
        lab.vtysh(
            [
                "configure terminal",
                "router bgp 65000",
                f"{prefix}neighbor {neighbor} password {password or ''}",
            ]
        )
    elif isinstance(routing, nslab.BirdRouter):
        text = routing.config_text()
        if password:
            text = text.replace(
                f"neighbor {neighbor} as 65100; }}",
                f'neighbor {neighbor} as 65100; password "{password}"; }}',
            )
        routing.configure(text)
    else:
        assert isinstance(routing, nslab.GobgpRouter)
        text = routing.config_text()
        if password:
            text = text.replace(
                f'neighbor-address = "{neighbor}"',
                f'neighbor-address = "{neighbor}"\n    auth-password = "{password}"',
            )
        routing.configure(text)


def test_md5_right_and_wrong(lab: nslab.Lab, run_speaker: Callable[..., Speaker]) -> None:
    """The right password: the session and the route. A wrong one: no session, and the node
    says why (TCP never completes, the MD5 password named) instead of staying silent."""
    n2, router = lab.node_ip("n2"), lab.peer_ip("n2")
    work = node_workdir(lab, "n2")
    (work / "right.password").write_text(PASSWORD + "\n")
    (work / "wrong.password").write_text("not-" + PASSWORD + "\n")
    set_router_password(lab, n2, PASSWORD)
    try:
        right = run_speaker("n2", [http_vip(VIP4)], peer={"password_file": str(work / "right.password")})
        wait_paths(lab, P4, {n2}, timeout=30)
        assert peers(right)[router]["state"] == "up"
        right.stop(timeout=30)
        wait_paths(lab, P4, set())

        wrong = run_speaker("n2", [http_vip(VIP4)], peer={"password_file": str(work / "wrong.password")})

        def explained() -> bool:
            # a status read before the speaker's first pass lists no peer yet
            return "MD5 password" in peers(wrong).get(router, {}).get("reason", "")

        wait_until(explained, 30, "the peer's reason naming the MD5 password")
        session = peers(wrong)[router]
        assert session["state"] == "down"
        assert "never completes" in session["reason"]
        decision = decisions(wrong)[VIP4]
        assert (decision["announce"], decision["announced"], decision["reason"]) == (True, False, "peersDown")
        assert "MD5 password" in decision["detail"]
        assert not nexthops(lab, P4)
        assert lab.bgp_peer_states().get(n2) != "Established"
    finally:
        set_router_password(lab, n2, None)


# --------------------------------------------------------------------------- capabilities


def test_a_router_open_without_capabilities_is_shown_as_a_problem(
    lab: nslab.Lab, run_speaker: Callable[..., Speaker]
) -> None:
    """FRR `dont-capability-negotiate` (what a router ignoring capabilities sends): the session
    is established, ExaBGP settles on no family and sends nothing. bgpvip must not claim the
    route is announced."""
    if not isinstance(lab.routing(), nslab.FrrRouter):
        pytest.skip("reproduced with FRR's dont-capability-negotiate")
    n1, router = lab.node_ip("n1"), lab.peer_ip("n1")
    lab.vtysh(["configure terminal", "router bgp 65000", f"neighbor {n1} dont-capability-negotiate"])
    try:
        speaker = run_speaker("n1", [http_vip(VIP4)])
        wait_until(
            lambda: lab.bgp_peer_states().get(n1) == "Established", 30, "the session, without capabilities"
        )

        def reported() -> bool:
            return decisions(speaker).get(VIP4, {}).get("reason") == "familyNotNegotiated"

        wait_until(reported, 20, "familyNotNegotiated in bgpvip routes")
        decision = decisions(speaker)[VIP4]
        assert (decision["announce"], decision["announced"]) == (True, False)
        assert peers(speaker)[router]["reason"].startswith("up without ipv4 unicast")
        assert lab.routing().neighbor(n1)["bgpState"] == "Established"
        assert not nexthops(lab, P4), "the router has nothing from this session"
        metrics = lab.exec("n1", ["curl", "-s", "http://127.0.0.1:9474/metrics"]).stdout
        assert f'bgpvip_peer_up{{peer="{router}"}} 0.0' in metrics
        assert f'bgpvip_peer_established{{peer="{router}"}} 1.0' in metrics
        assert f'bgpvip_vip_announced{{address="{VIP4}",vip="web"}} 0.0' in metrics
        table = speaker.routes_table()
        assert "familyNotNegotiated" in table and "up without ipv4 unicast" in table
    finally:
        lab.vtysh(["configure terminal", "router bgp 65000", f"no neighbor {n1} dont-capability-negotiate"])
        lab.vtysh(f"clear bgp {n1}")
    wait_paths(lab, P4, {n1}, timeout=30)
    assert decisions(speaker)[VIP4]["reason"] == "healthy"
