"""ExaBgpSession inside a real ExaBGP 5, peering with a real FRR bgpd, in two network namespaces.

ExaBGP spawns the API helper itself (as in production); the helper runs `ExaBgpSession` and
serves a small JSON-lines control socket so the test can drive it step by step and compare
with FRR's BGP table. Namespaces `bvx-<id>-a` (ExaBGP) and `bvx-<id>-b` (FRR) are joined by
a veth pair; everything started here is stopped and removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bgpvip.adapters.exabgp import canonical_route, exabgp_environment, render_config
from bgpvip.core.config import ExabgpConfig, load
from bgpvip.core.model import Attributes, Route

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
FRR_BIN = Path("/usr/lib/frr")
FRR_RUN = Path("/var/run/frr")

T = TypeVar("T")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("exabgp") is None or shutil.which("vtysh") is None or shutil.which("ip") is None:
        return "needs exabgp, vtysh and iproute2"
    if not (FRR_BIN / "bgpd").exists():
        return "FRR is not installed"
    return None


if reason := _skip_reason():
    pytestmark.append(pytest.mark.skip(reason=reason))

FRR_CONF = """\
frr defaults traditional
hostname bvx-r1
!
route-map NOTHING deny 10
exit
!
router bgp 65000
 bgp router-id 10.0.1.1
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 neighbor 10.0.1.2 remote-as 65100
 neighbor 10.0.1.2 timers 1 3
 neighbor 10.0.1.2 timers connect 1
 neighbor fd00:1::2 remote-as 65100
 neighbor fd00:1::2 timers 1 3
 neighbor fd00:1::2 timers connect 1
 address-family ipv4 unicast
  neighbor 10.0.1.2 activate
  neighbor 10.0.1.2 route-map NOTHING out
 exit-address-family
 address-family ipv6 unicast
  neighbor fd00:1::2 activate
  neighbor fd00:1::2 route-map NOTHING out
 exit-address-family
exit
"""

HELPER = """\
import asyncio, json, os, sys, time
from ipaddress import ip_network
from bgpvip.adapters.exabgp import Eof, ExaBgpSession
from bgpvip.core.model import Attributes, Route

def to_route(d):
    return Route(prefix=ip_network(d["prefix"]), next_hop=d.get("next_hop", "self"), attributes=Attributes(
        med=d.get("med"), local_preference=d.get("local_preference"), communities=tuple(d.get("communities", ())),
        large_communities=tuple(d.get("large_communities", ())), as_path=tuple(d.get("as_path", ()))))

def from_route(r):
    a = r.attributes
    return {"prefix": str(r.prefix), "next_hop": r.next_hop, "med": a.med, "local_preference": a.local_preference,
            "communities": list(a.communities), "large_communities": list(a.large_communities),
            "as_path": list(a.as_path)}

async def main(path):
    async with ExaBgpSession(window=int(os.environ.get("BVX_WINDOW", "2"))) as session:
        events, stop = [], asyncio.Event()

        async def collect():
            async for event in session.events():
                events.append(repr(event))
            stop.set()

        async def handle(reader, writer):
            request = json.loads(await reader.readline())
            op, started = request["op"], time.monotonic()
            try:
                if op == "hello":
                    result = os.getpid()
                elif op == "announce":
                    result = await session.announce([to_route(d) for d in request["routes"]])
                elif op == "withdraw":
                    result = await session.withdraw([to_route(d) for d in request["routes"]])
                elif op == "adj_rib_out":
                    result = [from_route(r) for r in await session.adj_rib_out()]
                elif op == "events":
                    result = events
                elif op == "exit":
                    result = os.getpid()
                    stop.set()
                reply = {"ok": True, "result": result, "seconds": time.monotonic() - started}
            except Exception as e:
                reply = {"ok": False, "error": repr(e)}
            writer.write(json.dumps(reply).encode() + b"\\n")
            await writer.drain()
            writer.close()

        with_parent = asyncio.create_task(session.wait_parent_gone())
        collector = asyncio.create_task(collect())
        if os.path.exists(path):
            os.unlink(path)
        server = await asyncio.start_unix_server(handle, path, limit=2**26)
        await asyncio.wait([asyncio.create_task(stop.wait()), with_parent], return_when=asyncio.FIRST_COMPLETED)
        server.close()
        collector.cancel()

asyncio.run(main(sys.argv[1]))
"""


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def route(prefix: str, **attributes: Any) -> Route:
    return Route(prefix=ip_network(prefix), attributes=Attributes(**attributes))


def as_json(routes: list[Route]) -> list[dict[str, Any]]:
    return [
        {
            "prefix": str(r.prefix),
            "next_hop": r.next_hop,
            "med": r.attributes.med,
            "local_preference": r.attributes.local_preference,
            "communities": list(r.attributes.communities),
            "large_communities": list(r.attributes.large_communities),
            "as_path": list(r.attributes.as_path),
        }
        for r in routes
    ]


def from_json(items: list[dict[str, Any]]) -> set[Route]:
    return {
        Route(
            prefix=ip_network(d["prefix"]),
            next_hop=d["next_hop"],
            attributes=Attributes(
                med=d["med"],
                local_preference=d["local_preference"],
                communities=tuple(d["communities"]),
                large_communities=tuple(d["large_communities"]),
                as_path=tuple(d["as_path"]),
            ),
        )
        for d in items
    }


@dataclass
class Lab:
    name: str
    ns_exabgp: str
    ns_frr: str
    control: Path
    exabgp_log: Path

    def helper(self, op: str, timeout: float = 60.0, **request: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.control))
            sock.sendall(json.dumps({"op": op, **request}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
        assert reply["ok"], reply
        self.last_seconds = float(reply["seconds"])
        return reply["result"]

    def helper_pid(self, not_pid: int | None = None) -> int:
        def probe() -> int | None:
            try:
                pid = int(self.helper("hello", timeout=2))
            except (OSError, ValueError):
                return None
            return None if pid == not_pid else pid

        return wait_for("the API helper", probe)

    def vtysh(self, command: str) -> Any:
        return json.loads(run("vtysh", "-N", self.ns_frr, "-c", command))

    def frr_prefixes(self, family: int) -> set[str]:
        table = self.vtysh(f"show bgp {'ipv4' if family == 4 else 'ipv6'} unicast json")
        return set(table.get("routes", {}))

    def frr_path(self, prefix: str) -> dict[str, Any]:
        family = "ipv6" if ":" in prefix else "ipv4"
        paths: list[dict[str, Any]] = self.vtysh(f"show bgp {family} unicast {prefix} json")["paths"]
        assert len(paths) == 1, paths
        return paths[0]

    def frr_med(self, prefix: str) -> int | None:
        paths = self.vtysh(f"show bgp ipv4 unicast {prefix} json").get("paths", [])
        return int(paths[0]["metric"]) if len(paths) == 1 and "metric" in paths[0] else None

    def wait_frr(
        self,
        family: int,
        present: set[str],
        absent: frozenset[str] | set[str] = frozenset(),
        timeout: float = 20,
    ) -> None:
        def probe() -> bool | None:
            table = self.frr_prefixes(family)
            return True if present <= table and not (absent & table) else None

        wait_for(f"FRR to hold {len(present)} and drop {len(absent)} IPv{family} prefixes", probe, timeout)

    def sessions_up(self) -> bool | None:
        summary = self.vtysh("show bgp summary json")
        states = [
            peer.get("state")
            for family in ("ipv4Unicast", "ipv6Unicast")
            for peer in summary.get(family, {}).get("peers", {}).values()
        ]
        return True if states == ["Established", "Established"] else None


def _kill_namespace_processes(namespace: str) -> None:
    with contextlib.suppress(subprocess.SubprocessError):
        pids = [int(p) for p in run("ip", "netns", "pids", namespace).split()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 3
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if Path(f"/proc/{p}").exists()]
                time.sleep(0.05)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    token = secrets.token_hex(3)
    name = f"bvx-{token}"
    ns_a, ns_b = f"{name}-a", f"{name}-b"
    veth_a, veth_b = f"bvx{token}a", f"bvx{token}b"
    work = tmp_path_factory.mktemp("exabgp-real")
    frr_dir = FRR_RUN / ns_b
    exabgp: subprocess.Popen[bytes] | None = None
    lab = Lab(name, ns_a, ns_b, work / "control.sock", work / "exabgp.log")
    try:
        for ns in (ns_a, ns_b):
            run("ip", "netns", "add", ns)
        run("ip", "link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b, "netns", ns_b)
        for ns, veth, v4, v6 in (
            (ns_a, veth_a, "10.0.1.2/24", "fd00:1::2/64"),
            (ns_b, veth_b, "10.0.1.1/24", "fd00:1::1/64"),
        ):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", v4, "dev", veth)
            run("ip", "-n", ns, "-6", "addr", "add", v6, "dev", veth, "nodad")
            run("ip", "-n", ns, "link", "set", veth, "up")

        # FRR drops to user frr: its files live in its own pathspace directory, not in tmp_path
        frr_dir.mkdir(parents=True)
        shutil.chown(frr_dir, "frr", "frr")
        (frr_dir / "frr.conf").write_text(FRR_CONF)
        for daemon in ("zebra", "bgpd"):
            run(
                "ip", "netns", "exec", ns_b, str(FRR_BIN / daemon), "-N", ns_b, "-d", "-u", "frr", "-g", "frr",
                "-f", str(frr_dir / "frr.conf"), "-i", str(frr_dir / f"{daemon}.pid"), "-P", "0",
                "--log", f"file:{frr_dir / daemon}.log",
            )  # fmt: skip

        config = load(
            {
                "bgp": {
                    "local_as": 65100,
                    "router_id": "10.0.1.2",
                    "peers": [
                        {"address": "10.0.1.1", "peer_as": 65000},
                        {"address": "fd00:1::1", "peer_as": 65000, "families": ["ipv6"]},
                    ],
                }
            }
        )
        helper = work / "helper.py"
        helper.write_text(HELPER)
        conf = work / "exabgp.conf"
        conf.write_text(
            render_config(
                config,
                process_command=[sys.executable, str(helper), str(lab.control)],
                local_addresses={"10.0.1.1": "10.0.1.2", "fd00:1::1": "fd00:1::2"},
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("exabgp")}
        env |= exabgp_environment(ExabgpConfig(), work) | {"PYTHONPATH": str(REPO)}
        with lab.exabgp_log.open("wb") as log:
            exabgp = subprocess.Popen(
                ["ip", "netns", "exec", ns_a, "exabgp", "server", str(conf)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for("both BGP sessions to be established", lab.sessions_up, timeout=30)
        lab.helper_pid()
        yield lab
    except BaseException:
        for path in (lab.exabgp_log, frr_dir / "bgpd.log"):
            if path.exists():
                sys.stderr.write(f"----- {path}\n{path.read_text()[-4000:]}\n")
        raise
    finally:
        if exabgp is not None:
            exabgp.terminate()
            try:
                exabgp.wait(10)
            except subprocess.TimeoutExpired:
                exabgp.kill()
                exabgp.wait()
        for ns in (ns_a, ns_b):
            _kill_namespace_processes(ns)
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(frr_dir, ignore_errors=True)


ROUTES_V4 = [
    route(
        f"198.51.100.{i}/32",
        med=100,
        communities=("65000:2", "no-export", "65000:1"),
        large_communities=("65000:1:2",),
        as_path=(65100, 65100),
    )
    for i in range(1, 51)
] + [route("203.0.113.5/32")]
ROUTES_V6 = [route(f"fd00:cafe::{i:x}/128", med=50, communities=("65000:7",)) for i in range(1, 4)]


def test_announce_reaches_frr_with_attributes_and_withdraw_removes(lab: Lab) -> None:
    assert lab.helper("announce", routes=as_json(ROUTES_V4 + ROUTES_V6)) is True
    v4 = {str(r.prefix) for r in ROUTES_V4}
    v6 = {str(r.prefix) for r in ROUTES_V6}
    lab.wait_frr(4, v4)
    lab.wait_frr(6, v6)

    path = lab.frr_path("198.51.100.7/32")
    assert path["metric"] == 100
    assert path["aspath"]["string"] == "65100 65100"
    assert path["community"]["string"] == "65000:1 65000:2 no-export"
    assert path["largeCommunity"]["string"] == "65000:1:2"
    assert path["nexthops"][0]["ip"] == "10.0.1.2"
    path = lab.frr_path("fd00:cafe::2/128")
    assert path["metric"] == 50
    assert path["community"]["string"] == "65000:7"
    assert path["aspath"]["string"] == "65100"

    announced = {canonical_route(r) for r in ROUTES_V4 + ROUTES_V6}
    assert from_json(lab.helper("adj_rib_out")) == announced

    gone = ROUTES_V4[:10] + ROUTES_V6[:1]
    assert lab.helper("withdraw", routes=as_json(gone)) is True
    lab.wait_frr(4, v4 - {str(r.prefix) for r in gone}, absent={str(r.prefix) for r in gone})
    lab.wait_frr(6, v6 - {str(ROUTES_V6[0].prefix)}, absent={str(ROUTES_V6[0].prefix)})
    assert from_json(lab.helper("adj_rib_out")) == announced - {canonical_route(r) for r in gone}

    assert lab.helper("withdraw", routes=as_json(ROUTES_V4 + ROUTES_V6)) is True
    lab.wait_frr(4, set(), absent=v4)
    lab.wait_frr(6, set(), absent=v6)
    assert lab.helper("adj_rib_out") == []


def test_helper_saw_both_sessions_come_up(lab: Lab) -> None:
    events = lab.helper("events")
    for peer in ("10.0.1.1", "fd00:1::1"):
        assert f"NeighborEvent(peer='{peer}', state='up', reason='')" in events


def test_routes_outlive_the_helper(lab: Lab) -> None:
    routes = ROUTES_V4[:5] + ROUTES_V6[:2]
    assert lab.helper("announce", routes=as_json(routes)) is True
    old = lab.helper("exit")
    new = lab.helper_pid(not_pid=old)  # ExaBGP respawned the helper
    assert new != old
    assert from_json(lab.helper("adj_rib_out")) == {canonical_route(r) for r in routes}
    assert {str(r.prefix) for r in routes[:5]} <= lab.frr_prefixes(4)
    assert lab.helper("withdraw", routes=as_json(routes)) is True
    lab.wait_frr(4, set(), absent={str(r.prefix) for r in routes})


def test_announcing_new_attributes_replaces_the_route(lab: Lab) -> None:
    first, second = (
        route("198.51.100.99/32", med=10),
        route("198.51.100.99/32", med=20, communities=("65000:9",)),
    )
    assert lab.helper("announce", routes=as_json([first])) is True
    wait_for("MED 10 at FRR", lambda: True if lab.frr_med("198.51.100.99/32") == 10 else None)
    assert lab.helper("announce", routes=as_json([second])) is True  # no withdraw in between
    wait_for("MED 20 at FRR", lambda: True if lab.frr_med("198.51.100.99/32") == 20 else None)
    assert from_json(lab.helper("adj_rib_out")) == {second}
    assert lab.helper("withdraw", routes=as_json([second])) is True
    lab.wait_frr(4, set(), absent={"198.51.100.99/32"})


def test_ten_thousand_routes(lab: Lab, record_property: Callable[[str, object], None]) -> None:
    routes = [route(f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32", med=10) for i in range(10_000)]
    prefixes = {str(r.prefix) for r in routes}
    started = time.monotonic()
    assert lab.helper("announce", routes=as_json(routes)) is True
    acked = lab.last_seconds
    lab.wait_frr(4, prefixes, timeout=60)
    in_frr = time.monotonic() - started
    dump_started = time.monotonic()
    assert len(lab.helper("adj_rib_out")) == 10_000
    dumped = time.monotonic() - dump_started
    assert lab.helper("withdraw", routes=as_json(routes)) is True
    withdrawn = lab.last_seconds
    lab.wait_frr(4, set(), absent=prefixes, timeout=60)
    for key, value in (
        ("acked_s", acked),
        ("in_frr_s", in_frr),
        ("adj_rib_out_s", dumped),
        ("withdraw_s", withdrawn),
    ):
        record_property(key, round(value, 2))
    sys.stderr.write(
        f"10k routes: acked {acked:.2f}s, in FRR {in_frr:.2f}s, dump {dumped:.2f}s, withdraw {withdrawn:.2f}s\n"
    )
