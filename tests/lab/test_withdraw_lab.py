"""Withdrawals, reloads and next-hop changes with real packets: what clients lose, if anything.

`bgpvip run` (ExaBGP + bgpvip) on n1..n3 against FRR on r1; clients in the client namespace.
r1 hashes ECMP flows on layer 4 (`fib_multipath_hash_policy=1`, as most routers do), so new
connections from one client spread over every next hop; the nodes forward
(`net.ipv4.ip_forward=1`, as kubeadm requires), so a packet that reaches a node after it
dropped the VIP loops back to r1 instead of being answered.

- A new-connection client loop through the VIP loses nothing over repeated health-check
  withdrawals and over repeated graceful server stops (500 while still serving, then gone);
  a killed server's address is dropped with the withdraw.
- Editing a check on every node at once (a reload) keeps every next hop.
- Established connections: how many break when a node leaves or joins, with ECMP and with
  one active node chosen by MED. The counts are printed (`pytest -s`) and recorded in
  docs/performance.md.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import nslab
import pytest
import yaml
from bgpvip_lab import Speaker, http_vip, node_config, start_health_server, start_speaker

VIP = "198.51.100.10"
PREFIX = f"{VIP}/32"
NODES = ("n1", "n2", "n3")
WEB = 8080  # namesrv: /healthz 503 while the health file exists, / always serves
API = 6443  # gracesrv: kube-apiserver-like graceful stop

pytestmark = pytest.mark.timeout(600)


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


def gateways(lab: nslab.Lab) -> set[str]:
    route = lab.route(PREFIX)
    if not route:
        return set()
    return {h["gateway"] for h in route.get("nexthops", []) if "gateway" in h}


def node_of(lab: nslab.Lab) -> dict[str, str]:
    return {lab.node_ip(n): n for n in NODES}


# ---------------------------------------------------------------------------- clients


@dataclass
class NewConnections:
    """A client that opens a new TCP connection to the VIP every `pause` seconds, sends one
    request and reads the answer. Bounded: stops after `limit` seconds by itself."""

    lab: nslab.Lab
    port: int
    pause: float = 0.01
    timeout: float = 1.0
    limit: float = 300.0
    served: Counter[str] = field(default_factory=Counter)
    lost: list[tuple[float, str]] = field(default_factory=list)
    """Connections that never reached a server (connect failed or timed out): what holding the
    address after a withdrawal prevents."""
    remapped: list[tuple[float, str]] = field(default_factory=list)
    """Connections a server accepted and then reset: the router's hash-threshold ECMP sent the
    rest of the flow to another node when the set of next hops changed (a node left or joined).
    Not bgpvip's to prevent; docs/operations.md says what the router can do about it."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _one(self) -> None:
        connected = False
        try:
            with self.lab.socket("client") as s:
                s.settimeout(self.timeout)
                s.connect((VIP, self.port))
                connected = True
                s.sendall(f"GET / HTTP/1.0\r\nHost: {VIP}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                raise OSError(f"answer {head[:40]!r}")
            self.served[body.decode().strip()] += 1
        except OSError as e:
            failure = (time.monotonic(), f"{type(e).__name__}: {e}")
            if connected and isinstance(e, ConnectionResetError):
                self.remapped.append(failure)
            else:
                self.lost.append(failure)

    def _run(self) -> None:
        end = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < end:
            self._one()
            time.sleep(self.pause)

    def __enter__(self) -> NewConnections:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)

    @property
    def total(self) -> int:
        return sum(self.served.values()) + len(self.lost) + len(self.remapped)


class Established:
    """`count` keep-alive connections to the VIP, each asking `GET /` every `period` seconds.
    A connection that fails once is broken (TCP cannot move to another node); each remembers
    the node that answered first."""

    def __init__(self, lab: nslab.Lab, count: int, *, port: int = WEB, period: float = 0.05) -> None:
        self.period = period
        self.socks: list[socket.socket] = []
        self.node: list[str] = []
        self.broken: dict[int, str] = {}
        for _ in range(count):
            s = lab.socket("client")
            s.settimeout(1.0)
            s.connect((VIP, port))
            self.socks.append(s)
            self.node.append(self._ask(s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _ask(s: socket.socket) -> str:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {VIP}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionResetError("closed by the peer")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
        )
        while len(body) < length:
            body += s.recv(4096)
        return body.decode().strip()

    def _run(self) -> None:
        deadline = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            for i, s in enumerate(self.socks):
                if i in self.broken:
                    continue
                try:
                    answer = self._ask(s)
                    if answer != self.node[i]:
                        self.broken[i] = f"answered by {answer}"
                except OSError as e:
                    self.broken[i] = type(e).__name__
            time.sleep(self.period)

    def start(self) -> Established:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for s in self.socks:
            s.close()

    def count(self) -> dict[str, tuple[int, int]]:
        """node → (connections it served, how many of those broke)."""
        out: dict[str, tuple[int, int]] = {}
        for n in sorted(set(self.node)):
            mine = [i for i, m in enumerate(self.node) if m == n]
            out[n] = (len(mine), sum(1 for i in mine if i in self.broken))
        return out


# ---------------------------------------------------------------------------- the lab set-up


@pytest.fixture(scope="module")
def routed(lab: nslab.Lab) -> Iterator[nslab.Lab]:
    """r1 hashes on layer 4; the nodes forward. Restored afterwards."""
    saved = {}
    for node, key in [
        ("r1", "net.ipv4.fib_multipath_hash_policy"),
        *((n, "net.ipv4.ip_forward") for n in NODES),
    ]:
        saved[(node, key)] = lab.exec(node, ["sysctl", "-n", key]).stdout.strip()
        lab.exec(node, ["sysctl", "-qw", f"{key}={1}"])
    try:
        yield lab
    finally:
        for (node, key), value in saved.items():
            lab.exec(node, ["sysctl", "-qw", f"{key}={value}"], check=False)


@pytest.fixture(scope="module")
def web_servers(routed: nslab.Lab) -> dict[str, subprocess.Popen[bytes]]:
    return {node: start_health_server(routed, node) for node in NODES}


def start_gracesrv(lab: nslab.Lab, node: str, delay: float = 3.0) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(nslab.HELPERS_DIR / "gracesrv.py"), "--name", node, "--port", str(API)]
    proc = lab.popen(node, [*argv, "--shutdown-delay", str(delay)], name="gracesrv")
    lab.wait_tcp(node, "127.0.0.1", API, timeout=10)
    return proc


@pytest.fixture
def speakers(routed: nslab.Lab, web_servers: Any) -> Iterator[Callable[..., list[Speaker]]]:
    """Start `bgpvip run` on every node; stopped and cleaned up after the test."""
    started: list[Speaker] = []

    def start(
        vips: list[dict[str, Any]] | None = None,
        *,
        per_node: dict[str, dict[str, Any]] | None = None,
        **over: Any,
    ) -> list[Speaker]:
        for node in NODES:
            conf = node_config(
                routed, node, vips or [http_vip(VIP)], **{**over, **(per_node or {}).get(node, {})}
            )
            started.append(start_speaker(routed, node, conf))
        return started

    try:
        yield start
    finally:
        for speaker in started:
            try:
                speaker.stop(timeout=30)
            except subprocess.TimeoutExpired:
                speaker.process.kill()
            speaker.set_healthy(True)
        for node in NODES:
            routed.exec(node, ["ip", "addr", "del", PREFIX, "dev", "lo"], check=False)
        routed.wait_prefix(PREFIX, present=False, timeout=30)


def api_vip(**check: Any) -> dict[str, Any]:
    return {
        "name": "api",
        "address": VIP,
        "interface": "lo",
        "checks": [{"type": "http", "url": f"http://127.0.0.1:{API}/readyz", "interval": 0.1, **check}],
    }


def all_up(lab: nslab.Lab) -> None:
    wait_until(lambda: len(gateways(lab)) == 3, timeout=60, what="three next hops at r1")


# ---------------------------------------------------------------------------- new connections


def health_withdrawals(lab: nslab.Lab, speakers: list[Speaker], rounds: int) -> NewConnections:
    with NewConnections(lab, WEB) as client:
        time.sleep(0.5)
        for i in range(rounds):
            node = NODES[i % 3]
            speaker = speakers[i % 3]
            speaker.set_healthy(False)
            wait_until(lambda n=node: lab.node_ip(n) not in gateways(lab), what=f"{node} withdrawn")
            time.sleep(1.5)  # past release_delay: the address is gone by now
            speaker.set_healthy(True)
            all_up(lab)
            time.sleep(0.3)
    return client


def test_health_withdrawals_lose_no_new_connection(
    routed: nslab.Lab, speakers: Callable[..., list[Speaker]]
) -> None:
    started = speakers()
    all_up(routed)
    client = health_withdrawals(routed, started, rounds=6)
    print(
        f"\nhealth withdrawals x6, release_delay 1.0: {len(client.lost)} of {client.total} new connections lost, {len(client.remapped)} reset by an ECMP remap; served {dict(client.served)}"
    )
    assert client.lost == [], client.lost[:5]
    assert len(client.served) == 3
    for speaker in started:
        log = speaker.log_text()
        assert "event=withdraw prefix=198.51.100.10/32 ok=True" in log
        assert "event=address-remove" in log


def test_without_the_hold_health_withdrawals_lose_connections(
    routed: nslab.Lab, speakers: Callable[..., list[Speaker]]
) -> None:
    """The same with `release_delay: 0` (the behaviour before the hold): for the figures."""
    started = speakers(release_delay=0)
    all_up(routed)
    client = health_withdrawals(routed, started, rounds=6)
    print(
        f"\nhealth withdrawals x6, release_delay 0: {len(client.lost)} of {client.total} new connections lost"
    )


def graceful_stops(lab: nslab.Lab, rounds: int, *, kill: bool = False) -> NewConnections:
    servers = {n: start_gracesrv(lab, n) for n in NODES}
    try:
        all_up(lab)
        with NewConnections(lab, API) as client:
            time.sleep(0.5)
            for i in range(rounds):
                node = NODES[i % 3]
                servers[node].send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                wait_until(lambda n=node: lab.node_ip(n) not in gateways(lab), what=f"{node} withdrawn")
                servers[node].wait(timeout=30)
                servers[node] = start_gracesrv(lab, node)
                all_up(lab)
                time.sleep(0.3)
        return client
    finally:
        for proc in servers.values():
            proc.kill()
            proc.wait()


def test_graceful_server_stops_lose_no_new_connection(
    routed: nslab.Lab, speakers: Callable[..., list[Speaker]]
) -> None:
    """kube-apiserver's graceful stop: /readyz 500 (its shutdown check fails) while serving for a
    few seconds, then gone."""
    started = speakers([api_vip()])
    client = graceful_stops(routed, rounds=4)
    print(
        f"\ngraceful stops x4: {len(client.lost)} of {client.total} new connections lost, {len(client.remapped)} reset by an ECMP remap; served {dict(client.served)}"
    )
    assert client.lost == [], client.lost[:5]
    log = started[0].log_text()
    withdraw = log.index("event=withdraw prefix=198.51.100.10/32 ok=True")
    assert "event=address-remove" in log[withdraw:], "the address went once routers had converged"


def test_without_the_hold_graceful_stops_lose_connections(
    routed: nslab.Lab, speakers: Callable[..., list[Speaker]]
) -> None:
    """The same with `release_delay: 0` (the behaviour before the hold): for the figures."""
    speakers([api_vip()], release_delay=0)
    client = graceful_stops(routed, rounds=4)
    print(f"\ngraceful stops x4, release_delay 0: {len(client.lost)} of {client.total} new connections lost")


def test_killed_server_drops_the_address_with_the_withdraw(
    routed: nslab.Lab, speakers: Callable[..., list[Speaker]]
) -> None:
    started = speakers([api_vip()])
    client = graceful_stops(routed, rounds=3, kill=True)
    print(f"\nkilled servers x3: {len(client.lost)} of {client.total} new connections lost")
    for speaker in started:
        lines = speaker.log_text().splitlines()
        withdraw = next(
            i for i, x in enumerate(lines) if "event=withdraw prefix=198.51.100.10/32 ok=True" in x
        )
        remove = next(i for i, x in enumerate(lines) if "event=address-remove" in x)
        # nothing else happened in between: no hold, no timer
        assert remove == withdraw + 1, lines[withdraw : remove + 1]


def test_the_first_announcement_does_not_wait_for_netlink(
    routed: nslab.Lab, speakers: Callable[..., list[Speaker]]
) -> None:
    """Start-up work at start-up: netlink is ready before the loop's first reconcile, so the
    first `address-add` follows the first `check ... state=up` as closely as later ones do."""
    started = speakers()
    all_up(routed)
    gaps = []
    for speaker in started:
        lines = speaker.log_text().splitlines()
        ready = next(i for i, x in enumerate(lines) if "event=netlink-ready" in x)
        up = next(i for i, x in enumerate(lines) if "event=check" in x and "state=up" in x)
        add = next(i for i, x in enumerate(lines) if "event=address-add" in x)
        assert ready < up < add, lines[ready : add + 1]
        stamp = [
            time.mktime(time.strptime(lines[i][:19], "%Y-%m-%dT%H:%M:%S")) + float(lines[i][19:23])
            for i in (up, add)
        ]
        gaps.append(round(stamp[1] - stamp[0], 3))
    print(f"\nfirst check up -> address-add: {gaps} s")


# ---------------------------------------------------------------------------- reloads


def test_editing_a_check_on_every_node_keeps_every_next_hop(
    routed: nslab.Lab, speakers: Callable[..., list[Speaker]]
) -> None:
    started = speakers()
    all_up(routed)
    fewest = [3]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            fewest[0] = min(fewest[0], len(gateways(routed)))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    with NewConnections(routed, WEB) as client:
        watcher.start()
        try:
            for round_no, timeout in enumerate((0.9, 0.8), start=1):
                for speaker in started:
                    doc = yaml.safe_load(speaker.config_path.read_text())
                    doc["vips"][0]["checks"][0]["timeout"] = timeout
                    speaker.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
                for speaker in started:
                    os.kill(speaker.process.pid, signal.SIGHUP)
                wait_until(
                    lambda r=round_no: all(s.log_text().count("event=reload ") >= r for s in started),
                    what="every node reloaded",
                )
                time.sleep(1.0)
        finally:
            stop.set()
            watcher.join()
    print(
        f"\ncheck edited on 3 nodes x2: fewest next hops {fewest[0]}, {len(client.lost)} of {client.total} lost"
    )
    assert fewest[0] == 3, "a reload withdrew a node"
    assert client.lost == []
    for speaker in started:
        assert "event=withdraw" not in speaker.log_text()


# ---------------------------------------------------------------------------- established connections


def leave_and_join(
    lab: nslab.Lab,
    speakers: list[Speaker],
    node: str,
    *,
    want_after_leave: set[str],
    want_after_join: set[str],
    count: int = 90,
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Established connections across `node` leaving, then (fresh ones) across it joining."""
    speaker = speakers[NODES.index(node)]
    conns = Established(lab, count).start()
    time.sleep(0.3)
    speaker.set_healthy(False)
    wait_until(lambda: gateways(lab) == want_after_leave, what=f"{node} left")
    time.sleep(1.5)
    conns.stop()
    leave = conns.count()
    conns = Established(lab, count).start()
    time.sleep(0.3)
    speaker.set_healthy(True)
    wait_until(lambda: gateways(lab) == want_after_join, what=f"{node} joined")
    time.sleep(1.5)
    conns.stop()
    return leave, conns.count()


def show(counts: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{n}: {b}/{c} broken" for n, (c, b) in counts.items())


def test_established_connections_across_next_hop_changes_with_ecmp(
    routed: nslab.Lab, speakers: Callable[..., list[Speaker]]
) -> None:
    started = speakers()
    all_up(routed)
    ips = {routed.node_ip(n) for n in NODES}
    leave, join = leave_and_join(
        routed, started, "n3", want_after_leave=ips - {routed.node_ip("n3")}, want_after_join=ips
    )
    print(f"\nECMP, n3 leaves: {show(leave)}\nECMP, n3 joins: {show(join)}")
    # hash-threshold ECMP: the leaving node's connections break, and so do some of the others'
    assert leave["n3"][1] == leave["n3"][0]
    assert sum(b for n, (_, b) in join.items()) > 0, "a join moves flows under hash-threshold ECMP"


def test_established_connections_with_one_active_node_by_med(
    routed: nslab.Lab, speakers: Callable[..., list[Speaker]]
) -> None:
    """priority → MED: one best path, the others are backups. Backups leaving or joining move
    no flow; the active node leaving breaks only its own connections."""
    started = speakers(per_node={"n1": {"priority": 200}, "n2": {"priority": 150}, "n3": {"priority": 100}})
    n1, n2 = routed.node_ip("n1"), routed.node_ip("n2")
    wait_until(lambda: gateways(routed) == {n1}, timeout=60, what="n1 alone (lowest MED)")
    wait_until(lambda: len(routed.bgp_prefix(PREFIX).get("paths", [])) == 3, what="3 paths at r1")
    backup_leave, backup_join = leave_and_join(
        routed, started, "n3", want_after_leave={n1}, want_after_join={n1}
    )
    active_leave, active_join = leave_and_join(
        routed, started, "n1", want_after_leave={n2}, want_after_join={n1}
    )
    print(
        f"\nMED, backup n3 leaves: {show(backup_leave)}\nMED, backup n3 joins: {show(backup_join)}"
        f"\nMED, active n1 leaves: {show(active_leave)}\nMED, active n1 returns: {show(active_join)}"
    )
    assert set(backup_leave) == {"n1"} and backup_leave["n1"][1] == 0
    assert set(backup_join) == {"n1"} and backup_join["n1"][1] == 0
    assert active_leave["n1"][1] == active_leave["n1"][0], "the active node's connections go with it"
