"""An etcd outage behind the control-plane VIP: lower the preference, keep the route.

`bgpvip run` (ExaBGP + bgpvip) on n1..n3 against FRR on r1. On every node gracesrv.py stands
in for kube-apiserver: HTTPS on 6443 with a serving certificate for `kubernetes` from the
lab's CA, `/readyz` with kube-apiserver's named checks and `exclude`, and an "etcd" that is
down while a file exists (one file shared by every node: the cluster's etcd fails; one per
node: that node's apiserver loses its etcd). Its etcd check, like kube-apiserver's, takes its
timeout (2 s) to fail, so the probe (timeout 1 s) times out. The speakers use the set-up of
docs/control-plane-vip.md: a `withdraw` check of `/readyz?exclude=etcd&exclude=etcd-readiness`
and a `lower-preference` check of the whole `/readyz`.

A client in the client namespace opens a new TLS connection to the VIP every 10 ms and asks
`GET /version` (1 s timeout); r1 hashes ECMP on layer 4 and the nodes forward, as in
test_withdraw_lab. A watcher samples r1's kernel route for the VIP every 5 ms.

- One node's etcd fails: its route gets MED 1000 at r1, r1 installs the other two next hops
  only, and no new connection reaches that node until its etcd returns; then ECMP over three.
- Every node's etcd fails for `OUTAGE` seconds: the route never leaves r1 (ECMP over the three
  degraded nodes), every connection is answered.

A connection in flight while r1's next hops change can be moved to another node by
hash-threshold ECMP and reset there (docs/performance.md): such resets are counted apart;
any other failure fails the test.
- The same outage with the single `/readyz` check (the set-up before): the VIP is unroutable
  for most of the outage. For the figures.

Counts are printed (`pytest -s`) and recorded in docs/performance.md.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nslab
import pytest
from bgpvip_lab import Speaker, node_config, start_speaker

from tests.pki import serving_certificate

VIP = "198.51.100.10"
PREFIX = f"{VIP}/32"
NODES = ("n1", "n2", "n3")
API = 6443
OUTAGE = 20.0
"""Seconds every node's etcd stays down."""

pytestmark = pytest.mark.timeout(600)


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


# ---------------------------------------------------------------------------- the router's view


def gateways(lab: nslab.Lab) -> frozenset[str]:
    route = lab.route(PREFIX)
    if not route:
        return frozenset()
    return frozenset(h["gateway"] for h in route.get("nexthops", []) if "gateway" in h)


def meds(lab: nslab.Lab) -> dict[str, int | None]:
    """node → MED of its path in r1's BGP table (None: no MED attribute)."""
    node_of = {lab.node_ip(n): n for n in NODES}
    out: dict[str, int | None] = {}
    for path in lab.bgp_prefix(PREFIX).get("paths", []):
        peer = path.get("peer", {}).get("peerId") or path["nexthops"][0]["ip"]
        out[node_of.get(peer, peer)] = path.get("metric")
    return out


@dataclass
class RouteWatch:
    """Samples r1's kernel route for the VIP every `period` seconds, keeping every change."""

    lab: nslab.Lab
    period: float = 0.005
    changes: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            now, hops = time.monotonic(), gateways(self.lab)
            if not self.changes or self.changes[-1][1] != hops:
                self.changes.append((now, hops))
            time.sleep(self.period)

    def __enter__(self) -> RouteWatch:
        self.changes.append((time.monotonic(), gateways(self.lab)))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)
        self.end = time.monotonic()

    @property
    def now(self) -> frozenset[str]:
        return self.changes[-1][1]

    def unroutable(self) -> float:
        """Seconds r1 had no route for the VIP while watching."""
        total = 0.0
        for (t, hops), (t_next, _) in zip(
            self.changes, [*self.changes[1:], (self.end, frozenset())], strict=True
        ):
            if not hops:
                total += t_next - t
        return total

    def fewest(self) -> int:
        return min(len(hops) for _, hops in self.changes)

    def changed_between(self, start: float, end: float) -> bool:
        """Whether r1's next hops changed (as sampled) between `start` and `end`."""
        return any(start <= t <= end for t, _ in self.changes[1:])


# ---------------------------------------------------------------------------- clients


@dataclass
class ApiClients:
    """A client that opens a new TLS connection to the VIP every `pause` seconds and asks
    `GET /version`, as kubectl or a restarting controller would. Records when each started,
    the node that answered (gracesrv's `X-Lab-Node`) or how it failed."""

    lab: nslab.Lab
    ca: Path
    pause: float = 0.01
    timeout: float = 1.0
    limit: float = 300.0
    answered: list[tuple[float, str, int]] = field(default_factory=list)
    """(start, node, HTTP status)"""
    failed: list[tuple[float, str]] = field(default_factory=list)
    """(start, what happened)"""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _one(self, tls: ssl.SSLContext) -> None:
        start = time.monotonic()
        try:
            with self.lab.socket("client") as raw:
                raw.settimeout(self.timeout)
                raw.connect((VIP, API))
                with tls.wrap_socket(raw, server_hostname="kubernetes") as s:
                    s.sendall(
                        f"GET /version HTTP/1.1\r\nHost: {VIP}:{API}\r\nConnection: close\r\n\r\n".encode()
                    )
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
            head = data.partition(b"\r\n\r\n")[0].decode(errors="replace").split("\r\n")
            status = int(head[0].split(" ")[1])
            node = next(h.split(":", 1)[1].strip() for h in head if h.lower().startswith("x-lab-node:"))
            self.answered.append((start, node, status))
        except (OSError, ValueError, IndexError, StopIteration) as e:
            self.failed.append((start, describe(e)))

    def _run(self) -> None:
        tls = ssl.create_default_context(cafile=str(self.ca))
        end = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < end:
            self._one(tls)
            time.sleep(self.pause)

    def __enter__(self) -> ApiClients:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)

    @property
    def total(self) -> int:
        return len(self.answered) + len(self.failed)

    def by_node(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        return Counter(n for t, n, _ in self.answered if since <= t < until)

    def failures(self) -> Counter[str]:
        return Counter(what for _, what in self.failed)

    def rehashed(self, watch: RouteWatch) -> list[tuple[float, str]]:
        """Connections reset while r1's next hops changed during their lifetime: hash-threshold
        ECMP re-cuts the flow space at every change, and a flow moved to another node mid-way
        is answered with a reset by it (docs/performance.md, "Established connections across
        next-hop changes"). Under TLS such a flow can also end as an unexpected EOF. Not a failure of
        the route itself, so counted apart."""
        slack = self.timeout + 2 * watch.period
        return [
            (t, w) for t, w in self.failed if w in ("reset", "eof") and watch.changed_between(t, t + slack)
        ]

    def other_failures(self, watch: RouteWatch) -> list[tuple[float, str]]:
        rehashed = self.rehashed(watch)
        return [f for f in self.failed if f not in rehashed]


def describe(e: BaseException) -> str:
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ssl.SSLEOFError):
        # the connection ended under the TLS handshake or the answer (a remapped flow's segments
        # reach a node that has no such connection), not a certificate or protocol problem
        return "eof"
    if isinstance(e, ssl.SSLError):
        return f"TLS {e.reason}"
    if isinstance(e, OSError) and e.errno is not None:
        return f"errno {e.errno} ({e.strerror})"
    return type(e).__name__


# ---------------------------------------------------------------------------- the lab set-up


@pytest.fixture(scope="module")
def routed(lab: nslab.Lab) -> Iterator[nslab.Lab]:
    """r1 hashes on layer 4; the nodes forward (kubeadm). Restored afterwards."""
    saved = {}
    for node, key in [
        ("r1", "net.ipv4.fib_multipath_hash_policy"),
        *((n, "net.ipv4.ip_forward") for n in NODES),
    ]:
        saved[(node, key)] = lab.exec(node, ["sysctl", "-n", key]).stdout.strip()
        lab.exec(node, ["sysctl", "-qw", f"{key}=1"])
    try:
        yield lab
    finally:
        for (node, key), value in saved.items():
            lab.exec(node, ["sysctl", "-qw", f"{key}={value}"], check=False)


@pytest.fixture(scope="module")
def pki(lab: nslab.Lab) -> Path:
    """The lab cluster's CA (`ca.crt`) and the apiservers' serving certificate for `kubernetes`."""
    return serving_certificate(lab.state_dir / "pki", dns=("kubernetes",))


class Etcd:
    """The shared etcd (`fail()`), or one node's view of it (`fail("n1")`): down while its file exists."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def file(self, who: str = "all") -> Path:
        return self.directory / f"down-{who}"

    def fail(self, who: str = "all") -> None:
        self.file(who).touch()

    def recover(self, who: str = "all") -> None:
        self.file(who).unlink(missing_ok=True)

    def recover_all(self) -> None:
        for f in self.directory.glob("down-*"):
            f.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def etcd_state(lab: nslab.Lab) -> Etcd:
    return Etcd(lab.state_dir / "etcd")


@pytest.fixture
def etcd(etcd_state: Etcd) -> Iterator[Etcd]:
    """etcd is up when a test starts, and again when it ends, whatever happened."""
    etcd_state.recover_all()
    try:
        yield etcd_state
    finally:
        etcd_state.recover_all()


@pytest.fixture(scope="module")
def apiservers(
    routed: nslab.Lab, pki: Path, etcd_state: Etcd
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs = {}
    try:
        for node in NODES:
            argv = [
                sys.executable, str(nslab.HELPERS_DIR / "gracesrv.py"), "--name", node, "--port", str(API),
                "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
                "--etcd-down-file", str(etcd_state.file()), "--etcd-down-file", str(etcd_state.file(node)),
            ]  # fmt: skip
            procs[node] = routed.popen(node, argv, name="apiserver")
            routed.wait_tcp(node, "127.0.0.1", API, timeout=10)
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture
def speakers(routed: nslab.Lab, apiservers: Any) -> Iterator[Callable[..., list[Speaker]]]:
    """Start `bgpvip run` on every node; stopped and cleaned up after the test."""
    started: list[Speaker] = []

    def start(checks: list[dict[str, Any]]) -> list[Speaker]:
        vip = {"name": "api", "address": VIP, "interface": "lo", "checks": checks}
        for node in NODES:
            started.append(start_speaker(routed, node, node_config(routed, node, [vip])))
        return started

    try:
        yield start
    finally:
        for speaker in started:
            try:
                speaker.stop(timeout=30)
            except subprocess.TimeoutExpired:
                speaker.process.kill()
        for node in NODES:
            routed.exec(node, ["ip", "addr", "del", PREFIX, "dev", "lo"], check=False)
        routed.wait_prefix(PREFIX, present=False, timeout=30)


def metrics(lab: nslab.Lab, node: str) -> str:
    """The node's speaker's /metrics (the status endpoint on its loopback)."""
    answer: bytes = lab.tcp_request(node, "127.0.0.1", 9474, b"GET /metrics HTTP/1.0\r\n\r\n")
    return answer.decode()


def withdraw_check(pki: Path) -> dict[str, Any]:
    """The apiserver itself: `/readyz` without its etcd checks."""
    return {"type": "kube-apiserver", "ca_file": str(pki / "ca.crt"), "exclude": ["etcd", "etcd-readiness"]}


def lower_preference_check(pki: Path) -> dict[str, Any]:
    """The whole `/readyz`, etcd included: its failure lowers the preference."""
    return {"type": "kube-apiserver", "ca_file": str(pki / "ca.crt"), "on_failure": "lower-preference"}


def ready_everywhere(lab: nslab.Lab, med: int | None) -> None:
    ips = {lab.node_ip(n) for n in NODES}
    wait_until(
        lambda: gateways(lab) == ips and meds(lab) == dict.fromkeys(NODES, med),
        timeout=60,
        what=f"three next hops at r1, every path with MED {med}",
    )


# ---------------------------------------------------------------------------- one node


def test_one_node_losing_etcd_lowers_only_its_preference(
    routed: nslab.Lab, pki: Path, etcd: Etcd, speakers: Callable[..., list[Speaker]]
) -> None:
    started = speakers([withdraw_check(pki), lower_preference_check(pki)])
    ready_everywhere(routed, 0)
    n2_n3 = {routed.node_ip("n2"), routed.node_ip("n3")}
    with RouteWatch(routed) as watch, ApiClients(routed, pki / "ca.crt") as client:
        time.sleep(1.0)
        t_fail = time.monotonic()
        etcd.fail("n1")
        wait_until(lambda: meds(routed) == {"n1": 1000, "n2": 0, "n3": 0}, what="n1's MED raised at r1")
        wait_until(lambda: watch.now == n2_n3, what="r1 forwarding to n2 and n3 only")
        t_moved = time.monotonic()
        d = started[0].status()["decisions"][0]
        assert (d["announced"], d["reason"], d["attributes"]["med"]) == (True, "degraded", 1000)
        assert "checks[1] (kube-apiserver /readyz): timed out after 1.0s" in d["detail"], d["detail"]
        assert 'bgpvip_vip_degraded{address="198.51.100.10",vip="api"} 1.0' in metrics(routed, "n1")
        assert 'bgpvip_vip_degraded{address="198.51.100.10",vip="api"} 0.0' in metrics(routed, "n2")
        time.sleep(2.0)
        t_recover = time.monotonic()
        etcd.recover("n1")
        ready_everywhere(routed, 0)
        wait_until(lambda: len(watch.now) == 3, what="three next hops again")
        t_back = time.monotonic()
        time.sleep(1.5)
    degraded = client.by_node(t_moved, t_recover)
    after = client.by_node(t_back)
    print(
        f"\none node's etcd fails: r1 moved new connections off n1 {t_moved - t_fail:.2f}s after, "
        f"MED 1000; while degraded n1 served {degraded['n1']} of {sum(degraded.values())} new connections "
        f"({dict(degraded)}); three next hops {t_back - t_recover:.2f}s after etcd returned, then "
        f"{dict(after)}; {len(client.failed)} of {client.total} failed {dict(client.failures())}, "
        f"{len(client.rehashed(watch))} of them reset by an ECMP re-hash; "
        f"fewest next hops {watch.fewest()}"
    )
    assert client.other_failures(watch) == [], client.failed[:5]
    assert degraded["n1"] == 0 and degraded["n2"] > 0 and degraded["n3"] > 0
    assert after["n1"] > 0, "n1 is preferred again once its etcd returned"
    assert watch.fewest() == 2
    assert "event=withdraw" not in started[0].log_text()


# ---------------------------------------------------------------------------- every node


def outage_on_every_node(
    lab: nslab.Lab, pki: Path, etcd: Etcd, *, reacted: Callable[[], object], recovered: Callable[[], object]
) -> tuple[RouteWatch, ApiClients, float]:
    """etcd fails for every node for `OUTAGE` seconds while clients connect. `reacted` waits
    for (and checks) the state the nodes reach in the outage, `recovered` for the state after
    it. Returns the route watch, the clients, and the seconds from etcd's return to `recovered`."""
    with RouteWatch(lab) as watch, ApiClients(lab, pki / "ca.crt") as client:
        time.sleep(1.0)
        t_fail = time.monotonic()
        etcd.fail()
        reacted()
        time.sleep(max(0.0, t_fail + OUTAGE - time.monotonic()))
        etcd.recover()
        t_recover = time.monotonic()
        recovered()
        back = time.monotonic() - t_recover
        time.sleep(1.0)
    return watch, client, back


def test_an_etcd_outage_on_every_node_keeps_the_vip_routable(
    routed: nslab.Lab, pki: Path, etcd: Etcd, speakers: Callable[..., list[Speaker]]
) -> None:
    started = speakers([withdraw_check(pki), lower_preference_check(pki)])
    ready_everywhere(routed, 0)
    seen: dict[str, Any] = {}

    def reacted() -> None:
        ready_everywhere(routed, 1000)  # ECMP among the degraded nodes, as before the outage
        seen["reasons"] = [s.status()["decisions"][0]["reason"] for s in started]

    watch, client, back = outage_on_every_node(
        routed, pki, etcd, reacted=reacted, recovered=lambda: ready_everywhere(routed, 0)
    )
    print(
        f"\netcd down on every node for {OUTAGE:.0f}s, withdraw check /readyz?exclude=etcd + lower-preference "
        f"/readyz: VIP unroutable {watch.unroutable():.2f}s, fewest next hops {watch.fewest()}; "
        f"{len(client.failed)} of {client.total} new connections failed {dict(client.failures())}, "
        f"{len(client.rehashed(watch))} of them reset by an ECMP re-hash; answered by {dict(client.by_node())}; every path back to MED 0 {back:.2f}s after etcd returned; "
        f"next hops at r1 over time {[len(h) for _, h in watch.changes]}"
    )
    assert seen["reasons"] == ["degraded"] * 3
    assert watch.unroutable() == 0.0 and watch.fewest() >= 1
    assert client.other_failures(watch) == [], client.failed[:5]
    assert all(status == 200 for _, _, status in client.answered)
    for speaker in started:
        assert "event=withdraw" not in speaker.log_text()


def test_before_an_etcd_outage_on_every_node_made_the_vip_vanish(
    routed: nslab.Lab, pki: Path, etcd: Etcd, speakers: Callable[..., list[Speaker]]
) -> None:
    """The same outage with the single `/readyz` check (`withdraw`): for the figures."""
    started = speakers([{"type": "kube-apiserver", "ca_file": str(pki / "ca.crt")}])
    wait_until(lambda: len(gateways(routed)) == 3, timeout=60, what="three next hops at r1")
    watch, client, back = outage_on_every_node(
        routed,
        pki,
        etcd,
        reacted=lambda: wait_until(lambda: not gateways(routed), what="the VIP gone from r1"),
        recovered=lambda: wait_until(lambda: len(gateways(routed)) == 3, what="three next hops again"),
    )
    print(
        f"\netcd down on every node for {OUTAGE:.0f}s, single /readyz check: VIP unroutable "
        f"{watch.unroutable():.2f}s; {len(client.failed)} of {client.total} new connections failed "
        f"{dict(client.failures())}; three next hops {back:.2f}s after etcd returned"
    )
    assert watch.unroutable() > OUTAGE / 2, "every node withdrew: the VIP vanished"
    assert client.failed
    for speaker in started:
        assert "event=withdraw prefix=198.51.100.10/32 ok=True" in speaker.log_text()
