"""End to end through the lab: real ExaBGP on the nodes, real FRR on r1, real packets from the client.

These tests check the lab itself (topology, router policy, ECMP, the namespace runner) with
a minimal API process; the bgpvip speaker's own lab tests build on the same fixtures.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nslab
import pytest

PORT = 8080


def _start_name_server(lab: nslab.Lab, node: str) -> None:
    """Start the node's name server unless an earlier test left one running (it serves v4 and v6)."""
    with lab.socket(node) as probe:
        probe.settimeout(1)
        try:
            probe.connect(("127.0.0.1", PORT))
            return
        except OSError:
            pass
    lab.popen(
        node,
        [sys.executable, nslab.HELPERS_DIR / "namesrv.py", "--name", node, "--port", str(PORT)],
        name="namesrv",
    )


def _start_vip_api(
    lab: nslab.Lab, node: str, helpers_dir: Path, prefix: str, med: int | None = None
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """ExaBGP on ``node`` with tests/lab/helpers/vip_api.py announcing ``prefix``."""
    trigger = lab.state_dir / f"{node}-withdraw"
    events = lab.state_dir / f"{node}-events.log"
    cmd = [sys.executable, str(helpers_dir / "vip_api.py"), "--prefix", prefix]
    cmd += ["--withdraw-file", str(trigger), "--events", str(events)]
    if med is not None:
        cmd += ["--med", str(med)]
    lab.register_log(f"{node}/vip_api events", events)
    return nslab.start_exabgp(lab, node, cmd), trigger, events


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def test_vip_announced_installed_served_and_withdrawn(lab: nslab.Lab, helpers_dir: Path) -> None:
    # Processes started here are left running on failure, so the attached lab logs show the
    # live state; the lab fixture stops everything at the end of the module.
    vip, prefix = "198.51.100.10", "198.51.100.10/32"
    n1 = lab.node_ip("n1")
    assert n1 == "10.0.1.2"
    lab.exec("n1", ["ip", "addr", "add", prefix, "dev", "lo"])
    _start_name_server(lab, "n1")
    exabgp, trigger, events = _start_vip_api(lab, "n1", helpers_dir, prefix)

    lab.wait_established([n1], timeout=30)
    lab.wait_prefix(prefix, nexthops=[n1], timeout=30)

    # FRR learned it from n1: one path, next hop n1, AS path of the nodes, best
    entry = lab.bgp_prefix(prefix)
    shown = json.dumps(entry, indent=1)
    paths = entry.get("paths", [])
    assert len(paths) == 1, f"expected one path for {prefix} at r1:\n{shown}"
    path = paths[0]
    assert [hop["ip"] for hop in path["nexthops"]] == [n1], shown
    assert path["peer"]["peerId"] == n1, shown
    assert path["aspath"]["string"] == "65100", shown
    assert path["bestpath"]["overall"] is True, shown

    # zebra installed it in r1's kernel: via n1 on eth1, and iproute2 agrees with the netlink reader
    route = lab.route(prefix)
    assert route is not None and route["protocol"] == "bgp", route
    assert [(hop["gateway"], hop["dev"]) for hop in route["nexthops"]] == [(n1, "eth1")], route
    ip_view = [r for r in lab.kernel_routes() if r["dst"] == vip]
    assert len(ip_view) == 1 and ip_view[0]["gateway"] == n1 and ip_view[0]["protocol"] == "bgp", ip_view

    # a real TCP connection from the client is answered by n1
    lab.wait_tcp("n1", vip, PORT, timeout=15)
    assert lab.http_get("client", vip, PORT).strip() == "n1"

    # withdraw: gone from r1's BGP table and kernel, and the client can no longer connect
    trigger.touch()
    lab.wait_prefix(prefix, present=False, timeout=15)
    assert lab.bgp_prefix(prefix).get("paths", []) == []
    with pytest.raises(OSError):
        lab.tcp_request("client", vip, PORT, timeout=2)

    # the API process saw ExaBGP's acks (announce and withdraw) and the session come up
    def acks() -> list[str]:
        return [line for line in events.read_text().splitlines() if line == "done"]

    _wait_for(lambda: len(acks()) >= 2, 5, f"two 'done' acks in {events}")
    states = [
        json.loads(line)["neighbor"]["state"]
        for line in events.read_text().splitlines()
        if line.startswith("{") and '"type": "state"' in line
    ]
    assert "up" in states, events.read_text()
    _stop(exabgp)


def test_ecmp_over_two_nodes_and_graceful_stop(lab: nslab.Lab, helpers_dir: Path) -> None:
    prefix = "203.0.113.20/32"
    n2, n3 = lab.node_ip("n2"), lab.node_ip("n3")
    for node in ("n2", "n3"):
        lab.exec(node, ["ip", "addr", "add", prefix, "dev", "lo"])
    exa2, _, _ = _start_vip_api(lab, "n2", helpers_dir, prefix)
    exa3, _, _ = _start_vip_api(lab, "n3", helpers_dir, prefix)

    lab.wait_prefix(prefix, nexthops=[n2, n3], timeout=30)
    ip_view = [r for r in lab.kernel_routes() if r["dst"] == "203.0.113.20"]
    assert len(ip_view) == 1, ip_view
    assert sorted(hop["gateway"] for hop in ip_view[0]["nexthops"]) == [n2, n3], ip_view

    # ExaBGP stopping cleanly closes its session; r1 keeps only n2's path, then none
    _stop(exa3)
    lab.wait_prefix(prefix, nexthops=[n2], timeout=15)
    _stop(exa2)
    lab.wait_prefix(prefix, present=False, timeout=15)


def test_ipv6_vip_over_ipv6_session(lab: nslab.Lab, helpers_dir: Path) -> None:
    vip, prefix = "fd00:cafe::10", "fd00:cafe::10/128"
    n1 = lab.node_ip("n1", 6)
    lab.exec("n1", ["ip", "-6", "addr", "add", prefix, "dev", "lo"])
    _start_name_server(lab, "n1")
    trigger = lab.state_dir / "n1-v6-withdraw"
    events = lab.state_dir / "n1-v6-events.log"
    cmd = [sys.executable, str(helpers_dir / "vip_api.py"), "--prefix", prefix]
    cmd += ["--withdraw-file", str(trigger), "--events", str(events)]
    exabgp = nslab.start_exabgp(lab, "n1", cmd, name="exabgp6", ipv4=False, ipv6=True)

    lab.wait_prefix(prefix, nexthops=[n1], timeout=30)
    route = lab.route(prefix)
    assert route is not None and route["protocol"] == "bgp", route
    lab.wait_tcp("client", vip, PORT, timeout=15)
    assert lab.http_get("client", vip, PORT).strip() == "n1"
    trigger.touch()
    lab.wait_prefix(prefix, present=False, timeout=15)
    _stop(exabgp)


def test_down_is_complete_idempotent_and_labs_coexist(
    lab: nslab.Lab, lab_factory: Callable[..., nslab.Lab]
) -> None:
    other = lab_factory()
    assert other.prefix != lab.prefix
    other.up()
    # two labs side by side, same addresses, separate namespaces and FRR pathspaces
    assert lab.is_up() and other.is_up()
    assert other.bgp_peer_states().keys() == lab.bgp_peer_states().keys()
    other.exec("client", ["ping", "-c1", "-W2", "10.0.1.2"])
    other.wait_tcp("client", "10.0.100.1", 179, timeout=10)  # other's bgpd, reached through its own veths
    sleeper = other.popen("n2", ["sleep", "600"], name="sleeper")
    pids = [p["pid"] for p in other.status()["processes"]]
    assert len(pids) >= 3 and all(p["alive"] for p in other.status()["processes"])

    # a runner that crashed and lost its state file: a fresh Lab for the prefix still cleans up
    other.state_file.unlink()
    nslab.Lab(other.topology.path, other.prefix).down()

    def leftovers() -> list[str]:
        found = [f"netns {n}" for n in nslab._netns_list() if n.startswith(other.prefix)]
        links = json.loads(
            subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
        )
        found += [f"link {x['ifname']}" for x in links if x["ifname"].startswith(other.prefix)]
        found += [f"pid {p}" for p in pids if nslab._alive(p)]
        found += [f"path {p}" for p in (other.state_dir, nslab.FRR_RUN / other.frr_pathspace()) if p.exists()]
        return found

    assert leftovers() == []
    assert sleeper.poll() is not None
    # idempotent, from the original object and a fresh one
    other.down()
    nslab.Lab(other.topology.path, other.prefix).down()
    assert leftovers() == []
    # the module's lab was not touched
    assert lab.is_up()
    assert lab.bgp_peer_states()


def test_topology_facts_come_from_the_clab_file() -> None:
    topo = nslab.load_topology(nslab.DEFAULT_TOPOLOGY)
    assert topo.name == "bgpvip"
    assert topo.routers == ["r1"]
    assert {n: topo.nodes[n].role for n in topo.nodes} == {
        "r1": "router",
        "n1": "node",
        "n2": "node",
        "n3": "node",
        "client": "client",
    }
    assert topo.nodes["r1"].bind("/etc/frr/frr.conf") == nslab.LAB_DIR / "r1" / "frr.conf"
    lab = nslab.Lab(nslab.DEFAULT_TOPOLOGY, "bvunused-")
    assert lab.node_ip("n3") == "10.0.3.2" and lab.node_ip("n3", 6) == "fd00:3::2"
    assert lab.peer_ip("n2") == "10.0.2.1" and lab.peer_ip("client", 6) == "fd00:100::1"
    assert lab.node_ip("client") == "10.0.100.2"
    with pytest.raises(nslab.LabError, match="prefix"):
        nslab.Lab(nslab.DEFAULT_TOPOLOGY, "this-prefix-is-too-long-")


def test_socket_in_netns_lives_in_the_node(lab: nslab.Lab) -> None:
    so_netns_cookie = 71  # Linux >= 5.14
    with lab.socket("client") as inside, lab.socket("n1") as other, socket.socket() as here:
        cookies = {s.getsockopt(socket.SOL_SOCKET, so_netns_cookie, 8) for s in (inside, other, here)}
        assert len(cookies) == 3, "sockets of two nodes and the test process share a namespace"
        inside.settimeout(5)
        inside.connect(("10.0.100.1", 179))  # r1's bgpd, from the client's address
        assert inside.getsockname()[0] == "10.0.100.2"
